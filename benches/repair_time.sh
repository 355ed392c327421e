#!/usr/bin/env bash
# Repair and scrub on a data set of about 1 GB (release build): a primary `a` and a replica
# `b` loaded with N SETs of 1,000-byte values (default 1000000, random keys), checkpointed.
#   1. one damaged page: `b` stopped, one leaf page flipped, restarted; the time of a GET of
#      a key on that page (the read waits for the repair from `a`);
#   2. 1 MiB of damaged WAL: `b` killed with that much log past its restartpoint, 1 MiB in
#      its middle zeroed, restarted; the time until it has caught up again;
#   3. scrub: SCRUB on `b` unbounded (its report's elapsed_ms and the bytes read).
# Ends with the digests of `a` and `b` compared.
#
#   benches/repair_time.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
. benches/lib.sh
make_work repair
start_pair 6792 6793 --scrub-interval 0
restart_b() {
    "$bin" serve --dir "$work/b" --port 6793 --replicaof 127.0.0.1:6792 --name b \
        --log-level warn --scrub-interval 0 &
    pid_b=$!
    until redis-cli -p 6793 INFO persistence 2>/dev/null | grep -q '^loading:0'; do sleep 0.02; done
}
caught_up() {
    local end
    end=$(field 6792 replication flush_lsn)
    while [ "$(field 6793 replication apply_lsn 2>/dev/null || echo 0)" != "$end" ]; do sleep 0.02; done
}
redis-benchmark -p 6792 -t set -n "$n" -c 32 -P 16 -r "$n" -d 1000 -q >/dev/null 2>&1
redis-cli -p 6792 CHECKPOINT >/dev/null
caught_up
redis-cli -p 6793 CHECKPOINT >/dev/null
echo "data set: $(( $(stat -c %s "$work/b/pages.db") / 1000000 )) MB page file"

# 1. One damaged page.
kill "$pid_b"; wait "$pid_b" 2>/dev/null || true
key=$(python3 - "$work/b/pages.db" <<'EOF'
import re, sys
path = sys.argv[1]
data = open(path, 'rb').read()
leaves = [i for i in range(1, len(data) // 4096) if data[i * 4096 + 4] == 3]
leaf = leaves[len(leaves) // 2]
page = data[leaf * 4096:(leaf + 1) * 4096]
key = re.search(rb'key:\d{12}', page).group().decode()
with open(path, 'r+b') as f:
    f.seek(leaf * 4096 + 2000)
    b = f.read(1)
    f.seek(leaf * 4096 + 2000)
    f.write(bytes([b[0] ^ 0x10]))
print(key)
EOF
)
restart_b
until field 6793 replication primary_link | grep -q up; do sleep 0.02; done
t=$(date +%s%N)
redis-cli -p 6793 GET "$key" >/dev/null
echo "one damaged page: the GET that hit it answered in $(( ($(date +%s%N) - t) / 1000 )) µs (pages_repaired:$(field 6793 replication pages_repaired))"

# 2. 1 MiB of damaged WAL.
redis-cli -p 6793 CHECKPOINT >/dev/null
redis-benchmark -p 6792 -t set -n 6000 -c 8 -r "$n" -d 1000 -q >/dev/null 2>&1
caught_up
flush=$(field 6793 replication flush_lsn)
kill -9 "$pid_b"; wait "$pid_b" 2>/dev/null || true
# 1 MiB of log ending 2 MiB before the replica's end (inside what its recovery replays),
# zeroed in whichever segment files hold it (spare segments ahead are not the log).
python3 - "$work/b/wal" "$flush" <<'EOF'
import os, sys
d, flush = sys.argv[1], int(sys.argv[2])
seg_bytes = 16 << 20
start, end = flush - (3 << 20), flush - (2 << 20)
lsn = start
while lsn < end:
    seg = lsn - lsn % seg_bytes
    n = min(end, seg + seg_bytes) - lsn
    with open(os.path.join(d, '%016x.wal' % seg), 'r+b') as f:
        f.seek(512 + lsn - seg)
        f.write(b'\0' * n)
    lsn += n
EOF
t=$(date +%s%N)
restart_b
caught_up
echo "1 MiB of damaged WAL: restart to caught up in $(( ($(date +%s%N) - t) / 1000000 )) ms (wal_repairs:$(field 6793 replication wal_repairs))"

# 3. Scrub, unbounded.
kill "$pid_b"; wait "$pid_b" 2>/dev/null || true
"$bin" serve --dir "$work/b" --port 6793 --replicaof 127.0.0.1:6792 --name b \
    --log-level warn --scrub-interval 0 --scrub-rate 0 &
pid_b=$!
until redis-cli -p 6793 INFO persistence 2>/dev/null | grep -q '^loading:0'; do sleep 0.02; done
report=$(redis-cli -p 6793 SCRUB)
echo "scrub: $report"
echo "$report" | tr ' ' '\n' | awk -F= -v mb="$(stat -c %s "$work/b/pages.db")" \
    '$1 == "elapsed_ms" { printf "scrub: %.0f MB/s of page file\n", mb / 1e6 / ($2 / 1000) }'
caught_up
[ "$(redis-cli -p 6792 DIGEST)" = "$(redis-cli -p 6793 DIGEST)" ] && echo "digests agree"
