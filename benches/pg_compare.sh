#!/usr/bin/env bash
# Commit latency of replidb against PostgreSQL (Debian's, 15 here) with two streaming
# standbys and the same quorum, `ANY 1` of the two, row by row in one run: for every
# (level, clients) pair, `replidb bench --target` against a running replidb cluster, then
# pgbench against the PostgreSQL cluster, alternating so both see the same machine weather.
#
#   benches/pg_compare.sh [SECONDS] [CLIENTS] [LEVELS]
#   benches/pg_compare.sh 10 "1 16 64" "off local remote_write remote_flush remote_apply"
#
# Needs root (PostgreSQL runs as the `postgres` user), the postgresql package
# (apt-get install postgresql) and a release build (cargo build --release -p replidb-server).
# The workload on both: single-row upserts of a 100-byte value, each client cycling over 1024
# keys of its own, one statement per transaction, one in flight per client. PostgreSQL's
# level is set per session (PGOPTIONS=-c synchronous_commit=...: off, local, remote_write, on
# = remote_flush, remote_apply), replidb's per connection (DURABILITY). Prints a Markdown
# table; logs and data stay under the printed work directory until it is removed.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-10}
CLIENTS=${2:-"1 16 64"}
LEVELS=${3:-"off local remote_write remote_flush remote_apply"}
# REPLIDB_BIN chooses another build (to compare two, alternately).
BIN=${REPLIDB_BIN:-target/release/replidb}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ -x "$BIN" ] || { echo "build first: cargo build --release -p replidb-server" >&2; exit 1; }
[ -x "$PGBIN/postgres" ] || { echo "install PostgreSQL first: apt-get install postgresql" >&2; exit 1; }

WORK=$(mktemp -d /tmp/replidb-pgcmp.XXXXXX)
chmod 755 "$WORK"
chown postgres "$WORK"
as_pg() { runuser -u postgres -- "$@"; }
PIDS=()
cleanup() {
    for i in 2 1 0; do
        [ -d "$WORK/pg$i" ] && as_pg "$PGBIN/pg_ctl" -D "$WORK/pg$i" -m fast stop >/dev/null 2>&1 || true
    done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
echo "work directory: $WORK" >&2

# --- PostgreSQL: a primary on 5440 and standbys s1, s2 on 5441, 5442 -------------------------
as_pg "$PGBIN/initdb" -D "$WORK/pg0" -U postgres --auth=trust >/dev/null
cat >>"$WORK/pg0/postgresql.conf" <<EOF
port = 5440
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = replica
max_wal_senders = 8
synchronous_standby_names = 'ANY 1 (s1, s2)'
shared_buffers = 256MB
max_connections = 200
EOF
echo "host replication all 127.0.0.1/32 trust" >>"$WORK/pg0/pg_hba.conf"
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg0" -l "$WORK/pg0.log" -w start >/dev/null
for i in 1 2; do
    as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p 5440 -U postgres -D "$WORK/pg$i" -R -X stream
    cat >>"$WORK/pg$i/postgresql.auto.conf" <<EOF
port = 544$i
primary_conninfo = 'host=127.0.0.1 port=5440 user=postgres application_name=s$i'
EOF
    as_pg "$PGBIN/pg_ctl" -D "$WORK/pg$i" -l "$WORK/pg$i.log" -w start >/dev/null
done
psql_() { as_pg psql -h 127.0.0.1 -p 5440 -U postgres -qAt -c "$1" postgres; }
psql_ "CREATE TABLE kv (k bigint PRIMARY KEY, v text)"
until [ "$(psql_ "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")" = 2 ]; do sleep 0.2; done
cat >"$WORK/upsert.sql" <<'EOF'
\set k :client_id * 1024 + random(0, 1023)
INSERT INTO kv VALUES (:k, repeat('x', 100)) ON CONFLICT (k) DO UPDATE SET v = excluded.v;
EOF
chown postgres "$WORK/upsert.sql"

# --- replidb: a primary on 6390 and replicas r1, r2 on 6391, 6392 -----------------------------
start_node() { # dir port args...
    local dir=$1 port=$2
    shift 2
    "$BIN" serve --dir "$WORK/$dir" --port "$port" "$@" 2>"$WORK/$dir.log" &
    PIDS+=($!)
    until grep -q "ready to accept connections" "$WORK/$dir.log" 2>/dev/null; do sleep 0.1; done
}
start_node rp 6390 --name primary --sync-standbys 'ANY 1 (r1, r2)'
start_node r1 6391 --name r1 --replicaof 127.0.0.1:6390
start_node r2 6392 --name r2 --replicaof 127.0.0.1:6390
until redis-cli -p 6390 INFO replication | grep -c "state=streaming" | grep -q 2; do sleep 0.2; done

pg_level() {
    case $1 in remote_flush) echo on ;; *) echo "$1" ;; esac
}

# pgbench row: commits/s p50 p99 p99.9 (µs, from the per-transaction log).
pg_row() { # level clients
    local jobs=$(($2 < 2 ? $2 : 2))
    rm -f "$WORK"/pglog*
    as_pg env PGOPTIONS="-c synchronous_commit=$(pg_level "$1")" \
        pgbench -h 127.0.0.1 -p 5440 -U postgres -n -f "$WORK/upsert.sql" -c "$2" -j "$jobs" \
        -T "$SECS" -l --log-prefix="$WORK/pglog" postgres >"$WORK/pgbench.out" 2>&1
    local tps
    tps=$(grep -E "^tps" "$WORK/pgbench.out" | grep -oE "[0-9]+\.[0-9]+" | head -1)
    cat "$WORK"/pglog* | awk '{print $3}' | sort -n >"$WORK/lat"
    local n
    n=$(wc -l <"$WORK/lat")
    q() { sed -n "$(awk -v n="$n" -v p="$1" 'BEGIN { i = int(n * p); if (i < 1) i = 1; print i }')p" "$WORK/lat"; }
    printf "%.0f %s %s %s" "$tps" "$(q 0.5)" "$(q 0.99)" "$(q 0.999)"
}

# replidb row: commits/s p50 p99 p99.9.
rd_row() { # level clients
    "$BIN" bench --target 127.0.0.1:6390 --modes "$1" --clients "$2" --seconds "$SECS" --json 2>/dev/null |
        tr '{' '\n' | grep '"mode"' |
        sed -E 's/.*"commits_per_s":([0-9.]+),"p50_us":([0-9]+),"p99_us":([0-9]+),"p999_us":([0-9]+).*/\1 \2 \3 \4/' |
        awk '{ printf "%.0f %s %s %s", $1, $2, $3, $4 }'
}

echo "| level | clients | replidb commits/s | PostgreSQL tps | ratio | replidb p50/p99/p99.9 µs | PostgreSQL p50/p99/p99.9 µs |"
echo "|---|---:|---:|---:|---:|---|---|"
for level in $LEVELS; do
    for c in $CLIENTS; do
        read -r rc rp50 rp99 rp999 <<<"$(rd_row "$level" "$c")"
        read -r pc pp50 pp99 pp999 <<<"$(pg_row "$level" "$c")"
        ratio=$(awk -v a="$rc" -v b="$pc" 'BEGIN { printf "%.2f", a / b }')
        echo "| $level | $c | $rc | $pc | $ratio× | $rp50 / $rp99 / $rp999 | $pp50 / $pp99 / $pp999 |"
    done
done
