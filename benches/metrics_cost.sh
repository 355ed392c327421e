#!/usr/bin/env bash
# What /metrics costs: commit throughput and p50 at 1 and 64 clients (`replidb bench
# --target`, sync-commit local) with and without a scraper hitting /metrics every 100 ms (150
# times Prometheus's default rate), alternated round by round on one server; then the time of
# one scrape (median of 200, curl's time_total).
#
#   benches/metrics_cost.sh [rounds] [seconds]
#
# Needs a release build (cargo build --release) and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-4}
secs=${2:-5}
bin=target/release/replidb
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d -p "$PWD/target" metrics.XXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT
"$bin" serve --dir "$work/d" --port 6398 --metrics-addr 127.0.0.1:9398 --log-level warn &
for _ in $(seq 100); do redis-cli -p 6398 INFO persistence 2>/dev/null | grep -q '^loading:0' && break; sleep 0.1; done
: > "$work/rows"
for round in $(seq "$rounds"); do
    for scrape in off on; do
        if [ $scrape = on ]; then
            ( while true; do curl -s -o /dev/null http://127.0.0.1:9398/metrics; sleep 0.1; done ) &
            scraper=$!
        fi
        "$bin" bench --target 127.0.0.1:6398 --clients 1,64 --seconds "$secs" --modes local --json --log-level warn 2>/dev/null |
            python3 -c 'import json,sys; [print(sys.argv[1], r["clients"], r["commits_per_s"], r["p50_us"]) for r in json.load(sys.stdin)]' "$scrape" |
            tee -a "$work/rows"
        if [ $scrape = on ]; then kill $scraper; wait $scraper 2>/dev/null || true; fi
    done
done
echo
python3 - "$work/rows" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
for c in ("1", "64"):
    med = {}
    for s in ("off", "on"):
        xs = [(float(r[2]), float(r[3])) for r in rows if r[0] == s and r[1] == c]
        med[s] = (statistics.median(a for a, _ in xs), statistics.median(b for _, b in xs))
    (a, pa), (b, pb) = med["off"], med["on"]
    print(f"{c:>2} clients: without a scraper {a:8.0f} commits/s p50 {pa:5.0f} us | with {b:8.0f} commits/s p50 {pb:5.0f} us | ratio {b/a:.2f}x, p50 {pb/pa:.2f}x")
PY
for _ in $(seq 200); do curl -s -o /dev/null -w '%{time_total}\n' http://127.0.0.1:9398/metrics; done |
    python3 -c 'import sys,statistics; xs=[float(l) for l in sys.stdin]; print(f"one scrape: median {statistics.median(xs)*1e3:.2f} ms, p99 {sorted(xs)[int(len(xs)*0.99)-1]*1e3:.2f} ms (curl time_total, {len(xs)} scrapes)")'
curl -s http://127.0.0.1:9398/metrics | wc -c | xargs -I{} echo "scrape size: {} bytes"
