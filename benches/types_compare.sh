#!/usr/bin/env bash
# The Redis data model under redis-benchmark: replidb vs redis-server (appendonly yes,
# appendfsync always: Redis's durable setting), in pairs: both servers run side by side,
# fresh each round, and every test runs on one and then at once on the other (which goes
# first alternates by round), the one not measured stopped (SIGSTOP) so that neither its
# background work nor its idle wake-ups fall in the other's time. Both see the same earlier
# tests, so the same data. On a shared machine the load of other tenants changes over tens
# of seconds: a ratio taken within one pair, seconds apart, is much steadier than one of
# medians taken minutes apart.
#
#   [TESTS=set,zadd,...] benches/types_compare.sh [rounds] [requests] [clients]
#
# Needs redis-server and redis-benchmark and a release build of replidb (cargo build
# --release). Prints per test the median requests/s of each server, the median of the
# per-pair ratios and their range; the numbers go to docs/benchmarks.md with the date and
# machine.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
n=${2:-100000}
clients=${3:-50}
tests=${TESTS:-set,get,incr,hset,lpush,rpush,lpop,rpop,sadd,spop,zadd,zpopmin,lrange_100,lrange_600,mset}
bin=target/release/replidb
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d -p "$PWD/target" types.XXXX)
cleanup() {
    for p in "$work"/*.pid; do [ -f "$p" ] && kill -CONT "$(cat "$p")" 2>/dev/null; done
    kill $(jobs -p) 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

. benches/redis_pair.sh

: > "$work/results"
for round in $(seq "$rounds"); do
    start_replidb
    start_redis
    if [ $((round % 2)) = 1 ]; then order="replidb redis"; else order="redis replidb"; fi
    for t in ${tests//,/ }; do
        for sys in $order; do
            if [ $sys = replidb ]; then port=6390; other="$work/d.pid"; else port=6391; other="$work/r.pid"; fi
            kill -STOP "$(cat "$other")"
            # CSV: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",...
            redis-benchmark -p $port -t "$t" -n "$n" -c "$clients" -r 100000 -d 100 --csv 2>/dev/null |
                tr -d '"' | awk -F, -v s=$sys -v r=$round 'NR > 1 { print r "|" s "|" $1 "|" $2 "|" $5 }' |
                tee -a "$work/results"
            kill -CONT "$(cat "$other")"
        done
    done
    stop "$work/r.pid"
    stop "$work/d.pid"
done
echo
echo "over $rounds rounds (requests: $n, clients: $clients, values: 100 bytes, keyspace 100k):"
echo "medians of each server's requests/s and p50, and of the ratios within each pair [their range]"
python3 - "$work/results" <<'PY'
import sys, statistics
rows = [l.rstrip("\n").split("|") for l in open(sys.argv[1])]
rows = [r for r in rows if len(r) == 5]
tests = []
for r in rows:
    if r[2] not in tests:
        tests.append(r[2])
for t in tests:
    got = {(r[0], r[1]): (float(r[3]), float(r[4])) for r in rows if r[2] == t}
    rounds = sorted({k[0] for k in got})
    pairs = [got[x, "replidb"][0] / got[x, "redis"][0] for x in rounds if (x, "replidb") in got and (x, "redis") in got]
    if not pairs:
        continue
    med = lambda s, i: statistics.median(v[i] for k, v in got.items() if k[1] == s)
    print(f"{t[:28]:<28} replidb {med('replidb', 0):>7.0f} rps p50 {med('replidb', 1):5.3f} ms | "
          f"redis {med('redis', 0):>7.0f} rps p50 {med('redis', 1):5.3f} ms | "
          f"{statistics.median(pairs):.2f}x [{min(pairs):.2f}-{max(pairs):.2f}]")
PY
