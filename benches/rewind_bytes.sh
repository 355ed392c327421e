#!/usr/bin/env bash
# How much a rewind moves compared with a reseed. A primary `a` and a replica `b` (release
# build), loaded with N SETs (default 1500000, 100-byte values, random keys); then `b` is
# promoted while `a` goes on taking writes until its log has diverged by DIVERGE_MB (default
# 10) of WAL (random keys again: the worst case, every write may touch another page); `b`
# takes a few writes too; then `a` is pointed at `b`. Prints the pages `a` refetched against
# the pages a reseed would have copied.
#
#   benches/rewind_bytes.sh [N] [DIVERGE_MB]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1500000}
diverge=$(( ${2:-10} * 1048576 ))
. benches/lib.sh
make_work rewind
start_pair 6790 6791
redis-benchmark -p 6790 -t set -n "$n" -c 50 -r "$n" -d 100 -q >/dev/null 2>&1
end=$(field 6790 replication flush_lsn)
while [ "$(field 6791 replication apply_lsn)" -lt "$end" ]; do sleep 0.1; done
redis-cli -p 6791 REPLICAOF NO ONE >/dev/null
start=$(field 6790 replication flush_lsn)
redis-benchmark -p 6790 -t set -n 100000000 -c 20 -r "$n" -d 100 -q >/dev/null 2>&1 &
bench=$!
while [ $(( $(field 6790 replication flush_lsn) - start )) -lt "$diverge" ]; do sleep 0.05; done
kill "$bench"; wait "$bench" 2>/dev/null || true
diverged=$(( $(field 6790 replication flush_lsn) - start ))
redis-benchmark -p 6791 -t set -n 1000 -c 4 -r "$n" -d 100 -q >/dev/null 2>&1
t=$(date +%s%N)
redis-cli -p 6790 REPLICAOF 127.0.0.1 6791 >/dev/null
until field 6790 replication last_join | grep -q "^rewound\|^reseeded"; do sleep 0.05; done
join=$(field 6790 replication last_join)
ms=$(( ($(date +%s%N) - t) / 1000000 ))
echo "diverged by $(( diverged / 1048576 )) MB of WAL; a rejoined in ${ms} ms: ${join%% (*}"
echo "$join" | awk '{ for (i = 1; i <= NF; i++) if ($i == "refetched") { f = $(i+1); t = $(i+3) } }
    END { if (t) printf "moved %.1f MB of %.1f MB a reseed would copy: %.2f%%\n", f*4096/1e6, t*4096/1e6, 100*f/t }'
end=$(field 6791 replication flush_lsn)
while [ "$(field 6790 replication apply_lsn)" -lt "$end" ]; do sleep 0.1; done
[ "$(redis-cli -p 6790 DIGEST)" = "$(redis-cli -p 6791 DIGEST)" ] && echo "digests agree"
