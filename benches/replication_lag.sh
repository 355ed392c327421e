#!/usr/bin/env bash
# Replication lag under a saturating write load: a primary and one replica (release build),
# `redis-benchmark -t set -c 64` against the primary, and INFO replication polled every 50 ms
# on both sides. Prints lag_ms and lag_bytes percentiles and the first-half / second-half
# means (an upward trend means the replica falls behind).
#
#   benches/replication_lag.sh [requests]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
. benches/lib.sh
make_work lag
start_pair 6490 6491
redis-benchmark -p 6490 -t set -n "$n" -c 64 -r 100000 -d 100 -q > "$work/bench.txt" 2>&1 &
bench=$!
: > "$work/samples"
while kill -0 $bench 2>/dev/null; do
    p=$(redis-cli -p 6490 INFO replication | tr -d '\r' | grep '^replica0:' | sed 's/.*lag_bytes=\([0-9]*\),lag_ms=\([0-9]*\).*/\1 \2/')
    r=$(redis-cli -p 6491 INFO replication | tr -d '\r' | awk -F: '/^lag_ms:/ {print $2}')
    echo "$p $r" >> "$work/samples"
    sleep 0.05
done
cat "$work/bench.txt" | tr '\r' '\n' | grep -E "SET:" | tail -1
python3 - "$work/samples" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if len(l.split()) == 3]
lb = sorted(int(r[0]) for r in rows); lm = sorted(int(r[1]) for r in rows); rm = [int(r[2]) for r in rows]
q = lambda v, p: v[min(len(v) - 1, int(p * len(v)))]
print(f"{len(rows)} samples: primary-side lag_ms p50 {q(lm,.5)} p99 {q(lm,.99)} max {lm[-1]}; lag_bytes p50 {q(lb,.5)} p99 {q(lb,.99)} max {lb[-1]}")
h = len(rows) // 2
print(f"replica-side lag_ms p50 {q(sorted(rm),.5)} p99 {q(sorted(rm),.99)}; primary-side lag_ms mean first half {statistics.mean(int(r[1]) for r in rows[:h]):.1f}, second half {statistics.mean(int(r[1]) for r in rows[h:]):.1f}")
PY
