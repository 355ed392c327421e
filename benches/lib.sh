# Shared by the replication benchmark scripts (sourced): the release binary, a work
# directory removed on exit, a primary `a` with a replica `b`, and INFO fields.
# REPLIDB_BIN chooses another build (to compare two, alternately).
bin=${REPLIDB_BIN:-target/release/replidb}
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }

# make_work NAME: a fresh work directory under target/ ($work), removed (and every server
# started here stopped) on exit.
make_work() {
    work=$(mktemp -d -p "$PWD/target" "$1.XXXX")
    # SIGCONT first: a stopped server would not act on the SIGTERM.
    trap 'kill -CONT $(jobs -p) 2>/dev/null || true; kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
}

# start_pair PORT_A PORT_B [PRIMARY-OPTION...]: node `a` on PORT_A (with the options given)
# and its replica `b` on PORT_B, link up; their PIDs in $pid_a and $pid_b.
start_pair() {
    local pa=$1 pb=$2
    shift 2
    "$bin" serve --dir "$work/a" --port "$pa" --name a --log-level warn "$@" &
    pid_a=$!
    "$bin" serve --dir "$work/b" --port "$pb" --replicaof "127.0.0.1:$pa" --name b --log-level warn &
    pid_b=$!
    for _ in $(seq 200); do
        redis-cli -p "$pb" INFO replication 2>/dev/null | grep -q primary_link:up && return
        sleep 0.1
    done
    echo "the replica's link did not come up" >&2
    exit 1
}

# field PORT SECTION KEY: the value of KEY in INFO SECTION (all of it, colons included).
field() {
    redis-cli -p "$1" INFO "$2" | tr -d '\r' |
        awk -F: -v k="$3" '$1 == k {print substr($0, length(k) + 2)}'
}
