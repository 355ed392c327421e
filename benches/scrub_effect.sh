#!/usr/bin/env bash
# What a scrub costs the foreground: a primary (release build) loaded with N SETs of
# 1,000-byte values (default 250000, about a 1 GB page file), then `replidb bench --target`
# with 16 clients at `local`, ROUNDS times (default 3) without a scrub and with SCRUB
# running, alternately; first at the default --scrub-rate (16MiB/s), then unbounded.
# Prints each run's commits/s and p99 and the medians.
#
#   benches/scrub_effect.sh [N] [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-250000}
rounds=${2:-3}
secs=${3:-5}
. benches/lib.sh
make_work scrub
port=6794
serve() {
    "$bin" serve --dir "$work/a" --port "$port" --name a --log-level warn \
        --scrub-interval 0 "$@" &
    pid=$!
    until redis-cli -p "$port" INFO persistence 2>/dev/null | grep -q '^loading:0'; do sleep 0.05; done
}
serve
redis-benchmark -p "$port" -t set -n "$n" -c 32 -P 16 -r "$n" -d 1000 -q >/dev/null 2>&1
redis-cli -p "$port" CHECKPOINT >/dev/null
echo "page file: $(( $(stat -c %s "$work/a/pages.db") / 1000000 )) MB"
run() { # prints "commits/s p99_us"
    "$bin" bench --target "127.0.0.1:$port" --clients 16 --seconds "$secs" --modes local \
        --json --log-level error |
        python3 -c 'import json,sys; r=json.load(sys.stdin)[0]; print(int(r["commits_per_s"]), r["p99_us"])'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for rate in default unbounded; do
    if [ "$rate" = unbounded ]; then
        kill "$pid"; wait "$pid" 2>/dev/null || true
        serve --scrub-rate 0
    fi
    : >"$work/idle"
    : >"$work/scrub"
    for r in $(seq "$rounds"); do
        read -r cps p99 < <(run)
        echo "$rate round $r idle:  $cps commits/s, p99 $p99 µs"
        echo "$cps $p99" >>"$work/idle"
        # Scrubs back to back for the whole run; the one running at its end is waited for,
        # so no scrub spills into the next idle run.
        rm -f "$work/stop"
        ( until [ -e "$work/stop" ]; do redis-cli -p "$port" SCRUB >/dev/null 2>&1 || true; done ) &
        scrubber=$!
        read -r cps p99 < <(run)
        touch "$work/stop"
        wait "$scrubber" 2>/dev/null || true
        echo "$rate round $r scrub: $cps commits/s, p99 $p99 µs"
        echo "$cps $p99" >>"$work/scrub"
    done
    for k in idle scrub; do
        echo "$rate $k medians: $(cut -d' ' -f1 "$work/$k" | median) commits/s, p99 $(cut -d' ' -f2 "$work/$k" | median) µs"
    done
    echo "$rate: scrubs finished $(field "$port" persistence scrubs); last: $(field "$port" persistence last_scrub)"
done
