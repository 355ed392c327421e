#!/usr/bin/env bash
# The Redis data model under redis-benchmark: replidb vs redis-server (appendonly yes,
# appendfsync always: Redis's durable setting), alternating the two servers round by round on
# the same machine, one redis-benchmark run of every test per server per round.
#
#   [TESTS=set,zadd,...] benches/types_compare.sh [rounds] [requests] [clients]
#
# Needs redis-server and redis-benchmark and a release build of replidb (cargo build
# --release). Prints the medians per test and the rps ratio; the numbers go to
# docs/benchmarks.md with the date and machine.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
n=${2:-100000}
clients=${3:-50}
tests=${TESTS:-set,get,incr,hset,lpush,rpush,lpop,rpop,sadd,spop,zadd,zpopmin,lrange_100,lrange_600,mset}
bin=target/release/replidb
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d -p "$PWD/target" types.XXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

. benches/redis_pair.sh

: > "$work/results"
for round in $(seq "$rounds"); do
    for sys in replidb redis; do
        if [ $sys = replidb ]; then start_replidb; port=6390; pid="$work/r.pid"; else start_redis; port=6391; pid="$work/d.pid"; fi
        # CSV: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",...
        redis-benchmark -p $port -t $tests -n "$n" -c "$clients" -r 100000 -d 100 --csv 2>/dev/null |
            tr -d '"' | awk -F, -v s=$sys 'NR > 1 { print s "|" $1 "|" $2 "|" $5 }' | tee -a "$work/results"
        stop "$pid"
    done
done
echo
echo "medians over $rounds rounds (requests: $n, clients: $clients, values: 100 bytes, keyspace 100k)"
python3 - "$work/results" <<'PY'
import sys, statistics
rows = [l.strip().split("|") for l in open(sys.argv[1])]
tests = []
for r in rows:
    if len(r) == 4 and r[1] not in tests:
        tests.append(r[1])
for t in tests:
    med = {}
    for s in ("replidb", "redis"):
        xs = [(float(r[2]), float(r[3])) for r in rows if len(r) == 4 and r[0] == s and r[1] == t]
        if xs:
            med[s] = (statistics.median(a for a, _ in xs), statistics.median(b for _, b in xs))
    if len(med) == 2:
        (ra, la), (rb, lb) = med["replidb"], med["redis"]
        print(f"{t:<28} replidb {ra:>9.0f} rps p50 {la:6.3f} ms | redis {rb:>9.0f} rps p50 {lb:6.3f} ms | {ra/rb:.2f}x")
PY
