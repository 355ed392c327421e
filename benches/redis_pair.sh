# Shared by the scripts that compare replidb with redis-server (sourced): start either one
# on its port in the work directory $work, and stop it.
# start_replidb [BINARY [VAR=VALUE...]]: $bin unless another binary (and environment) is named.
start_replidb() {
    local b=${1:-$bin}; [ $# -gt 0 ] && shift
    rm -rf "$work/r"; env "$@" "$b" serve --dir "$work/r" --port 6390 --log-level warn & echo $! > "$work/r.pid"
    for _ in $(seq 100); do redis-cli -p 6390 INFO persistence 2>/dev/null | grep -q '^loading:0' && return; sleep 0.1; done
    echo "replidb did not start" >&2; exit 1
}
# redis-server with appendonly yes, appendfsync always: Redis's durable setting.
start_redis() {
    rm -rf "$work/d"; mkdir -p "$work/d"
    redis-server --port 6391 --dir "$work/d" --appendonly yes --appendfsync always --save '' \
        --daemonize no --logfile "$work/redis.log" & echo $! > "$work/d.pid"
    for _ in $(seq 100); do redis-cli -p 6391 INFO persistence 2>/dev/null | grep -q '^loading:0' && return; sleep 0.1; done
    echo "redis-server did not start" >&2; exit 1
}
stop() { kill "$(cat "$1")"; wait "$(cat "$1")" 2>/dev/null || true; }
