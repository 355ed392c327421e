#!/usr/bin/env bash
# Two or more builds (or settings) of replidb, and redis-server if asked, under
# redis-benchmark, alternated round by round: per test the median requests/s, its ratio to
# the last system named, and the machine's CPU time per request (all processes — the
# benchmark's own included — from /proc/stat) with the share of idle time. CPU per request
# is what decides on a 2-core machine that the server shares with redis-benchmark.
#
#   benches/builds_compare.sh ROUNDS TESTS SYSTEM...
#
#   SYSTEM: NAME=BINARY[,VAR=VALUE...]   a replidb binary, with environment variables
#           redis                         redis-server, appendonly yes, appendfsync always
#
#   benches/builds_compare.sh 4 incr,sadd,zadd now=target/release/replidb \
#       old=/tmp/old/replidb ring=target/release/replidb,REPLIDB_WAL_IO=uring redis
#
# Each round starts every system afresh (empty directory) and runs the tests in order, one
# redis-benchmark per test (-n ${N:-100000} -c 50 -r 100000 -d 100). Figures go to
# docs/benchmarks.md with the date and machine.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n 2,18p "$0" >&2; exit 2; }
rounds=$1
tests=$2
shift 2
n=${N:-100000}
work=$(mktemp -d -p "$PWD/target" builds.XXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
. benches/redis_pair.sh

busy_idle() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat; }

: > "$work/results"
for _ in $(seq "$rounds"); do
    for sys in "$@"; do
        name=${sys%%=*}
        if [ "$sys" = redis ]; then
            start_redis
            port=6391
            pid="$work/d.pid"
        else
            spec=${sys#*=}
            IFS=, read -r -a parts <<< "$spec"
            [ -x "${parts[0]}" ] || { echo "not an executable: ${parts[0]}" >&2; exit 1; }
            start_replidb "${parts[@]}"
            port=6390
            pid="$work/r.pid"
        fi
        for t in ${tests//,/ }; do
            read -r b0 i0 < <(busy_idle)
            rows=$(redis-benchmark -p $port -t "$t" -n "$n" -c 50 -r 100000 -d 100 --csv 2>/dev/null |
                tr -d '"' | awk -F, 'NR > 1 { print $1 "|" $2 }')
            read -r b1 i1 < <(busy_idle)
            while IFS= read -r row; do
                [ -n "$row" ] && echo "$name|$row|$((b1 - b0))|$((i1 - i0))" >> "$work/results"
            done <<< "$rows"
        done
        stop "$pid"
    done
done

echo "medians over $rounds rounds (requests: $n per test, 50 clients, values 100 bytes, keyspace 100k);"
echo "cpu: the whole machine's busy time per request; ratios to the last system named"
python3 - "$work/results" "$n" "$(getconf CLK_TCK)" <<'PY'
import collections, statistics, sys
rps, cpu, idle = (collections.defaultdict(list) for _ in range(3))
order, tests = [], []
n, hz = int(sys.argv[2]), int(sys.argv[3])
for line in open(sys.argv[1]):
    s, t, r, busy, idl = line.rstrip("\n").split("|")
    busy, idl = int(busy), int(idl)
    rps[t, s].append(float(r))
    cpu[t, s].append(busy * 1e6 / hz / n)
    idle[t, s].append(idl / max(1, busy + idl))
    order += [s] if s not in order else []
    tests += [t] if t not in tests else []
base = order[-1]
for t in tests:
    cols = []
    for s in order:
        if not rps[t, s]:
            continue
        m = statistics.median(rps[t, s])
        ratio = m / statistics.median(rps[t, base]) if rps[t, base] else float("nan")
        cols.append(f"{s} {m:7.0f} ({ratio:.2f}) cpu {statistics.median(cpu[t, s]):5.1f} µs idle {100 * statistics.median(idle[t, s]):3.0f}%")
    print(f"{t[:12]:<12} " + " | ".join(cols))
PY
