#!/usr/bin/env bash
# `replidb backup` of a large data set while 16 clients write: the copy's MB/s (page file
# bytes over the whole backup's time, WAL catch-up included) and the writers' commits/s and
# p99 during it, beside the same writers without a backup (alternated).
#
#   benches/backup_speed.sh [keys] [value bytes] [rounds] [writer seconds]
#
# Defaults: 2,500,000 keys of 400 bytes (about 1 GB of keys and values). Needs a release
# build and redis-benchmark (to load).
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${1:-2500000}
size=${2:-400}
rounds=${3:-3}
window=${4:-4}
bin=target/release/replidb
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d -p "$PWD/target" backup.XXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT
"$bin" serve --dir "$work/p" --port 6399 --log-level warn &
for _ in $(seq 100); do redis-cli -p 6399 INFO persistence 2>/dev/null | grep -q '^loading:0' && break; sleep 0.1; done
echo "loading $keys keys of $size bytes..."
redis-benchmark -p 6399 -t set -n "$keys" -r "$keys" -d "$size" -P 64 -c 8 -q >/dev/null 2>&1
redis-cli -p 6399 CHECKPOINT >/dev/null
bytes=$(redis-cli -p 6399 INFO persistence | tr -d '\r' | awk -F: '$1 == "page_file_bytes" { print $2 }')
echo "page file: $bytes bytes; keys: $(redis-cli -p 6399 DBSIZE)"
bench() { "$bin" bench --target 127.0.0.1:6399 --clients 16 --seconds "$1" --modes local --json --log-level warn 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin)[0]; print(r["commits_per_s"], r["p50_us"], r["p99_us"])'; }
for round in $(seq "$rounds"); do
    rm -rf "$work/copy"
    # Writers measured over about the backup's own time (a 1 GB copy takes a few seconds
    # here): the backup starts as their 1 s warm-up ends.
    bench "$window" > "$work/during" &
    writers=$!
    sleep 1
    t0=$(date +%s.%N)
    "$bin" backup --from 127.0.0.1:6399 --out "$work/copy" | tail -1
    t1=$(date +%s.%N)
    wait $writers
    python3 - "$bytes" "$t0" "$t1" "$(cat "$work/during")" <<'PY'
import sys
b, t0, t1 = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
rate, p50, p99 = sys.argv[4].split()
print(f"backup: {b/1e6:.0f} MB in {t1-t0:.1f} s = {b/1e6/(t1-t0):.0f} MB/s; 16 writers meanwhile: {float(rate):.0f} commits/s, p50 {p50} us, p99 {p99} us")
PY
    echo "without a backup: $(bench "$window" | awk '{printf "%.0f commits/s, p50 %s us, p99 %s us", $1, $2, $3}')"
done
