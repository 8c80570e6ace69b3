#!/usr/bin/env bash
# Throwaway Redis server for tests.
#
#   tests/redis.sh start   start a server (or reuse the running one); prints its URL on stdout
#   tests/redis.sh url     print the URL of the running server (exit 1 if none)
#   tests/redis.sh stop    stop the server and delete its folder (no-op if none)
#
# Only the URL goes to stdout (`redis://127.0.0.1:PORT`); everything else goes to stderr.
# State lives in $REDIS_STATE_DIR (default /tmp/troupe-redis), so several independent servers
# can coexist by using different state dirs. The server keeps nothing on disk (no RDB, no
# AOF), listens on 127.0.0.1 only, and is never the system service: we start it ourselves.
set -euo pipefail

STATE_DIR="${REDIS_STATE_DIR:-/tmp/troupe-redis}"
STATE_FILE="$STATE_DIR/state"

log() { echo "redis.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- locating / installing the server binary ----------------------------------------------

find_bin() {
    local b
    if b="$(command -v redis-server 2>/dev/null)"; then echo "$b"; return 0; fi
    for b in /usr/bin/redis-server /usr/local/bin/redis-server /usr/sbin/redis-server; do
        [ -x "$b" ] && { echo "$b"; return 0; }
    done
    return 1
}

ensure_bin() {
    local b
    if b="$(find_bin)"; then echo "$b"; return; fi
    [ "$(id -u)" -eq 0 ] || die "no redis-server binary and not root to install it (apt-get install redis-server)"
    log "installing redis-server (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends redis-server >&2
    # The Debian package may start a service on 6379 on some setups; we never use it.
    b="$(find_bin)" || die "redis-server installed but not found"
    echo "$b"
}

# --- state ------------------------------------------------------------------------------

# Sets R_BIN, R_DIR, R_PORT from the state file; returns 1 if there is none.
load_state() {
    [ -f "$STATE_FILE" ] || return 1
    R_BIN="" R_DIR="" R_PORT=""
    local k v
    while IFS='=' read -r k v; do
        case "$k" in
            bin) R_BIN="$v" ;;
            dir) R_DIR="$v" ;;
            port) R_PORT="$v" ;;
        esac
    done <"$STATE_FILE"
    [ -n "$R_BIN" ] && [ -n "$R_DIR" ] && [ -n "$R_PORT" ]
}

url_for() { echo "redis://127.0.0.1:$1"; }

# The server's pid if its pidfile names a live redis-server; else nothing (and status 1).
server_pid() {
    local dir="$1" pid
    [ -f "$dir/redis.pid" ] || return 1
    pid="$(head -n1 "$dir/redis.pid" 2>/dev/null || true)"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    # Never signal a recycled pid: it must still be a redis-server.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q redis-server || return 1
    echo "$pid"
}

# ping PORT: does a server answer PING there? (RESP over bash's /dev/tcp, no redis-cli needed)
ping() {
    local reply=""
    # (The braces keep the 2>/dev/null from sticking to the shell, as it would with exec.)
    { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
    # shellcheck disable=SC2016 # a literal `$4` (RESP: a 4-byte bulk string)
    printf '*1\r\n$4\r\nPING\r\n' >&3
    IFS= read -r -t 2 reply <&3 || true
    exec 3>&- 3<&-
    [ "${reply%$'\r'}" = "+PONG" ]
}

is_running() { # DIR PORT
    server_pid "$1" >/dev/null && ping "$2"
}

# Stop whatever the state file describes and forget it. Never fails.
stop_from_state() {
    if load_state; then
        local pid
        if pid="$(server_pid "$R_DIR")"; then
            log "stopping server $pid on port $R_PORT"
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$pid" 2>/dev/null; then
                log "server $pid did not stop within 10 s; killing it"
                kill -9 "$pid" 2>/dev/null || true
                sleep 0.2
            fi
        fi
        rm -rf "$R_DIR"
    fi
    rm -f "$STATE_FILE"
}

# --- ports ------------------------------------------------------------------------------

port_in_use() {
    local p="$1"
    if command -v ss >/dev/null 2>&1; then
        ss -Htan "sport = :$p" 2>/dev/null | grep -q . && return 0
    fi
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && return 0
    return 1
}

pick_port() {
    local p
    for _ in $(seq 1 200); do
        p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
        port_in_use "$p" || { echo "$p"; return 0; }
    done
    die "no free port found"
}

lock_state() {
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$STATE_DIR/lock"
        flock -w 60 9 || die "timed out waiting for the lock on $STATE_DIR"
    fi
}

# --- commands ---------------------------------------------------------------------------

cmd_start() {
    mkdir -p "$STATE_DIR"
    # Serialise concurrent start/stop on the same state dir.
    lock_state

    # Already running? Reuse it (idempotent).
    if load_state; then
        if is_running "$R_DIR" "$R_PORT"; then
            log "server already running on port $R_PORT"
            url_for "$R_PORT"
            return 0
        fi
        log "found stale state; cleaning it up"
        stop_from_state
    fi

    local bin dir port attempt started=""
    bin="$(ensure_bin)"
    dir="$STATE_DIR/server"
    rm -rf "$dir"
    mkdir -p "$dir"

    for attempt in 1 2 3 4 5; do
        port="$(pick_port)"
        # Record state before starting, so a `stop` always finds what we created.
        printf 'bin=%s\ndir=%s\nport=%s\n' "$bin" "$dir" "$port" >"$STATE_FILE.tmp"
        mv "$STATE_FILE.tmp" "$STATE_FILE"
        rm -f "$dir/redis.pid" "$dir/redis.log"
        log "starting $bin on 127.0.0.1:$port (attempt $attempt)"
        # Daemonized with a pidfile; fd 9 (the lock) must not leak into the server.
        (cd "$dir" && "$bin" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
            --dir "$dir" --daemonize yes --pidfile "$dir/redis.pid" \
            --logfile "$dir/redis.log" 9>&-) >&2 || true
        for _ in $(seq 1 100); do
            if is_running "$dir" "$port"; then started=1; break; fi
            # A server that cannot bind says so and exits (before writing its pidfile).
            grep -q "Failed listening" "$dir/redis.log" 2>/dev/null && break
            sleep 0.05
        done
        [ -n "$started" ] && break
        log "server failed to start on port $port; log tail:"
        tail -n 5 "$dir/redis.log" >&2 2>/dev/null || true
        local pid
        if pid="$(server_pid "$dir")"; then kill -9 "$pid" 2>/dev/null || true; fi
    done
    if [ -z "$started" ]; then
        stop_from_state
        die "could not start redis-server"
    fi
    log "ready: $(url_for "$port") (pid $(server_pid "$dir"))"
    url_for "$port"
}

cmd_url() {
    load_state || die "no server (no state in $STATE_DIR)"
    is_running "$R_DIR" "$R_PORT" || die "server in $STATE_DIR is not running"
    url_for "$R_PORT"
}

cmd_stop() {
    [ -d "$STATE_DIR" ] || return 0
    lock_state
    if ! load_state; then
        rm -f "$STATE_FILE"
        return 0
    fi
    stop_from_state
    log "stopped"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    url) cmd_url ;;
    *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
