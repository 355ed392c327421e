#!/usr/bin/env bash
# Replay throughput: how fast a replica works off a WAL backlog, against how fast the primary
# produced it. A primary and a replica (release build); the replica is stopped (SIGSTOP) while
# `redis-benchmark -t set -c 64` writes at full speed until the primary's WAL has grown by
# TARGET bytes (default 1 GiB); then the replica resumes and the time until its apply LSN
# reaches the primary's flush LSN is taken. Both rates are WAL bytes per second.
#
#   benches/replay_backlog.sh [target-bytes]
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-1073741824}
. benches/lib.sh
make_work replay
start_pair 6590 6591 --max-retained-wal 4GiB
replica=$pid_b
start=$(field 6590 replication flush_lsn)
kill -STOP "$replica"
t0=$(date +%s.%N)
redis-benchmark -p 6590 -t set -n 100000000 -c 64 -r 1000000 -d 100 -q >/dev/null 2>&1 &
bench=$!
while [ $(( $(field 6590 replication flush_lsn) - start )) -lt "$target" ]; do sleep 0.2; done
kill "$bench"; wait "$bench" 2>/dev/null || true
t1=$(date +%s.%N)
end=$(field 6590 replication flush_lsn)
kill -CONT "$replica"
while [ "$(field 6591 replication apply_lsn)" -lt "$end" ]; do sleep 0.05; done
t2=$(date +%s.%N)
python3 - "$start" "$end" "$t0" "$t1" "$t2" <<'PY'
import sys
s, e, t0, t1, t2 = int(sys.argv[1]), int(sys.argv[2]), *map(float, sys.argv[3:])
b = e - s
print(f"backlog {b/1e6:.0f} MB: produced in {t1-t0:.1f} s ({b/(t1-t0)/1e6:.1f} MB/s), "
      f"replayed in {t2-t1:.1f} s ({b/(t2-t1)/1e6:.1f} MB/s): replay/produce = {(t2-t1) and (t1-t0)/(t2-t1):.2f}x")
PY
