#!/usr/bin/env bash
# replidb vs redis-server (appendonly yes, appendfsync always: Redis's durable setting) under
# redis-benchmark, alternating the two servers round by round on the same machine.
#
#   benches/redis_compare.sh [rounds] [requests]
#
# Needs redis-server and redis-benchmark (apt-get install redis-server redis-tools) and a
# release build of replidb (cargo build --release). Prints one line per run and a summary of
# medians; the numbers go to docs/benchmarks.md with the date and machine.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
n=${2:-200000}
bin=target/release/replidb
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d -p "$PWD/target" cmp.XXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

. benches/redis_pair.sh

# One redis-benchmark run; prints "rps p50_ms" for the test named $2.
# CSV columns: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",...
run() { # port test clients pipeline
    redis-benchmark -p "$1" -t "$2" -n "$n" -c "$3" -P "$4" -r 100000 -d 100 --csv 2>/dev/null |
        tr -d '"' | awk -F, -v t="$(echo "$2" | tr a-z A-Z)" '$1 == t { print $2, $5 }'
}

printf '%-8s %-6s %-4s %-3s %12s %9s\n' system test c P rps p50_ms
: > "$work/results"
for round in $(seq "$rounds"); do
    for sys in replidb redis; do
        if [ $sys = replidb ]; then start_replidb; port=6390; pid="$work/r.pid"; else start_redis; port=6391; pid="$work/d.pid"; fi
        for spec in "set 50 1" "get 50 1" "get 50 16" "set 1 1"; do
            set -- $spec
            r=$(run $port "$1" "$2" "$3")
            printf '%-8s %-6s %-4s %-3s %12s %9s\n' $sys "$1" "$2" "$3" $r
            echo "$sys $1 $2 $3 $r" >> "$work/results"
        done
        stop "$pid"
    done
done
echo
echo "medians over $rounds rounds (requests: $n, values: 100 bytes, keyspace 100k)"
python3 - "$work/results" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if len(l.split()) == 6]
specs = [("set", "50", "1"), ("get", "50", "1"), ("get", "50", "16"), ("set", "1", "1")]
for t, c, p in specs:
    med = {}
    for sysname in ("replidb", "redis"):
        rs = [(float(r[4]), float(r[5])) for r in rows if r[0] == sysname and r[1:4] == [t, c, p]]
        if rs:
            med[sysname] = (statistics.median(x for x, _ in rs), statistics.median(y for _, y in rs))
    if len(med) == 2:
        (ra, la), (rb, lb) = med["replidb"], med["redis"]
        print(f"{t.upper():<4} -c {c:<3} -P {p:<3}  replidb {ra:>9.0f} rps p50 {la:.3f} ms | redis {rb:>9.0f} rps p50 {lb:.3f} ms | rps ratio {ra/rb:.2f}x, p50 ratio {la/lb:.2f}x")
PY
