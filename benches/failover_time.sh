#!/usr/bin/env bash
# Time to a first accepted write after `FAILOVER TO` (planned switchover) and after
# `REPLICAOF NO ONE` (promotion), with a data set of SIZE_MB (default 1024) on loopback.
# A primary and one replica (release build); the primary is loaded with redis-benchmark
# (1000-byte values) until its page file holds the data set; the replica catches up; then
#   1. FAILOVER TO the replica, and a SET on it: time from the command to the SET's reply;
#   2. on the old primary (now a replica of the new one): REPLICAOF NO ONE, then a SET.
#
#   benches/failover_time.sh [SIZE_MB]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-1024}
. benches/lib.sh
make_work failover
start_pair 6690 6691
n=$(( size_mb * 1000 ))
t0=$(date +%s)
redis-benchmark -p 6690 -t set -n "$n" -c 50 -r "$n" -d 1000 -q >/dev/null 2>&1
echo "loaded $(du -sm "$work/a/pages.db" | cut -f1) MB page file ($(field 6690 keyspace db0)) in $(( $(date +%s) - t0 )) s" >&2
end=$(field 6690 replication flush_lsn)
while [ "$(field 6691 replication apply_lsn)" -lt "$end" ]; do sleep 0.1; done
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
t=$(date +%s%N)
redis-cli -p 6690 FAILOVER TO 127.0.0.1 6691 >/dev/null
redis-cli -p 6691 SET first-after-failover 1 >/dev/null
echo "FAILOVER TO -> first write on the new primary: $(ms "$t") ms"
[ "$(field 6691 replication role)" = primary ] && [ "$(field 6690 replication role)" = replica ]
t=$(date +%s%N)
redis-cli -p 6690 REPLICAOF NO ONE >/dev/null
redis-cli -p 6690 SET first-after-promotion 1 >/dev/null
echo "REPLICAOF NO ONE -> first accepted write: $(ms "$t") ms (epoch $(field 6690 replication epoch))"
