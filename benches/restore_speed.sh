#!/usr/bin/env bash
# Point-in-time restore replay speed: a primary archived from the start and backed up while
# nearly empty, then loaded (so the restore replays the whole load from the archive); the
# replay's MB/s is WAL bytes replayed over the restore's wall time (the page copy of the small
# backup included).
#
#   benches/restore_speed.sh [keys] [value bytes] [rounds]
#
# Needs a release build and redis-benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${1:-1000000}
size=${2:-400}
rounds=${3:-3}
bin=target/release/replidb
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d -p "$PWD/target" restore.XXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT
"$bin" serve --dir "$work/p" --port 6400 --log-level warn &
for _ in $(seq 100); do redis-cli -p 6400 INFO persistence 2>/dev/null | grep -q '^loading:0' && break; sleep 0.1; done
"$bin" archive --from 127.0.0.1:6400 --dir "$work/arch" --log-level warn > /dev/null &
archiver=$!
for _ in $(seq 100); do redis-cli -p 6400 INFO replication | grep -q "name=archive" && break; sleep 0.1; done
redis-cli -p 6400 SET seed 1 > /dev/null
point=$("$bin" backup --from 127.0.0.1:6400 --out "$work/backup" | tail -1 | sed -E 's/.*consistent at LSN ([0-9]+).*/\1/')
echo "backup at LSN $point"
echo "loading $keys keys of $size bytes..."
redis-benchmark -p 6400 -t set -n "$keys" -r "$keys" -d "$size" -P 64 -c 8 -q > /dev/null 2>&1
end=$(redis-cli -p 6400 INFO replication | tr -d '\r' | awk -F: '$1 == "flush_lsn" { print $2 }')
for _ in $(seq 600); do
    redis-cli -p 6400 INFO replication | tr -d '\r' | grep -q "name=archive,.*flush_lsn=$end," && break
    sleep 0.1
done
kill $archiver; wait $archiver 2>/dev/null || true
echo "archive: $(du -sb "$work/arch" | cut -f1) bytes, primary at LSN $end"
for round in $(seq "$rounds"); do
    rm -rf "$work/out"
    t0=$(date +%s.%N)
    line=$("$bin" restore --backup "$work/backup" --wal "$work/arch" --out "$work/out" | tail -1)
    t1=$(date +%s.%N)
    python3 - "$line" "$t0" "$t1" "$point" <<'PY'
import re, sys
line, t0, t1, point = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
to = int(re.search(r"LSN (\d+)", line).group(1))
mb = (to - point) / 1e6
print(f"restore: {mb:.0f} MB of WAL (LSN {point} to {to}) in {t1-t0:.2f} s = {mb/(t1-t0):.0f} MB/s")
PY
done
