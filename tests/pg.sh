#!/usr/bin/env bash
# Throwaway PostgreSQL server for tests.
#
#   tests/pg.sh start   start a server (or reuse the running one); prints its URL on stdout
#   tests/pg.sh url     print the URL of the running server (exit 1 if none)
#   tests/pg.sh stop    stop the server and delete its data folder (no-op if none)
#   tests/pg.sh pause   stop the server but keep its data folder and port (an outage)
#   tests/pg.sh restart start the paused (or stop and start the running) server again on the
#                       same port with the same data; prints its URL (exit 1 if there is none)
#
# Only the URL goes to stdout (`postgres://postgres@127.0.0.1:PORT/troupe`); everything else
# goes to stderr. State lives in $PG_STATE_DIR (default /tmp/troupe-pg), so several
# independent servers can coexist by using different state dirs.
#
# initdb refuses to run as root, so as root the server runs as the `postgres` OS user
# (created if missing) in a temp folder that user owns. Auth is `trust` on 127.0.0.1 only.
set -euo pipefail

STATE_DIR="${PG_STATE_DIR:-/tmp/troupe-pg}"
STATE_FILE="$STATE_DIR/state"
DB_NAME="troupe"
DB_USER="postgres"

log() { echo "pg.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- locating / installing the server binaries --------------------------------------------

find_bin_dir() {
    local d best=""
    # Highest installed major version wins.
    # shellcheck disable=SC2012 # the paths are /usr/lib/postgresql/<version>/bin
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
        [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && best="$d"
    done
    [ -n "$best" ] && echo "$best"
}

ensure_bin_dir() {
    local d
    if d="$(find_bin_dir)"; then echo "$d"; return; fi
    [ "$(id -u)" -eq 0 ] || die "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin and not root to install them"
    log "installing PostgreSQL server (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
    # The Debian package starts a cluster on 5432 via a service on some setups; we never use it.
    d="$(find_bin_dir)" || die "PostgreSQL installed but no server binaries found"
    echo "$d"
}

# --- running things as the server's OS user ------------------------------------------------

RUN_USER=""   # empty: run as ourselves (non-root)

ensure_run_user() {
    if [ "$(id -u)" -ne 0 ]; then RUN_USER=""; return; fi
    RUN_USER="postgres"
    if ! id -u postgres >/dev/null 2>&1; then
        log "creating OS user postgres"
        getent group postgres >/dev/null 2>&1 || groupadd --system postgres
        useradd --system --gid postgres --home-dir /var/lib/postgresql --no-create-home \
            --shell /bin/bash postgres
    fi
}

# as_pg CMD ARGS...: run a command as the server's OS user, from a directory it can read.
as_pg() {
    if [ -z "$RUN_USER" ]; then
        (cd / && "$@" 9>&-)
    elif command -v runuser >/dev/null 2>&1; then
        (cd / && runuser -u "$RUN_USER" -- "$@" 9>&-)
    else
        local q
        q="$(printf '%q ' "$@")"
        (cd / && su -s /bin/sh "$RUN_USER" -c "$q" 9>&-)
    fi
}

# --- state ------------------------------------------------------------------------------

# Sets PG_BIN, PG_DATA, PG_DB, PG_PORT, PG_RUN_USER from the state file; returns 1 if there is none.
load_state() {
    [ -f "$STATE_FILE" ] || return 1
    PG_BIN="" PG_DATA="" PG_PORT="" PG_RUN_USER="" PG_PAUSED=""
    local k v
    while IFS='=' read -r k v; do
        case "$k" in
            bin) PG_BIN="$v" ;;
            data) PG_DATA="$v" ;;
            port) PG_PORT="$v" ;;
            user) PG_RUN_USER="$v" ;;
            paused) PG_PAUSED="$v" ;;
        esac
    done <"$STATE_FILE"
    [ -n "$PG_BIN" ] && [ -n "$PG_DATA" ] && [ -n "$PG_PORT" ] || return 1
    # $PG_DATA is our wrapper folder (logs + cluster); the cluster itself is $PG_DATA/db.
    PG_DB="$PG_DATA/db"
}

url_for() { echo "postgres://$DB_USER@127.0.0.1:$1/$DB_NAME"; }

# pg_start BIN CLUSTER LOGFILE PORT: start the cluster on 127.0.0.1:PORT and wait for it.
pg_start() {
    as_pg "$1/pg_ctl" start -D "$2" -l "$3" -w -t 60 -s -o \
        "-p $4 -c listen_addresses=127.0.0.1 -c unix_socket_directories=/tmp -c fsync=on -c max_connections=300 -c shared_buffers=64MB" \
        >&2
}

# pg_halt BIN CLUSTER: stop the cluster (fast, else immediate); its data stays.
pg_halt() {
    as_pg "$1/pg_ctl" status -D "$2" >/dev/null 2>&1 || return 0
    if ! as_pg "$1/pg_ctl" stop -D "$2" -m fast -w -t 20 >&2; then
        log "fast stop failed; trying immediate"
        as_pg "$1/pg_ctl" stop -D "$2" -m immediate -w -t 30 >&2 || true
    fi
}

is_running() {
    # $1 = bin dir, $2 = data dir, $3 = port
    [ -d "$2" ] || return 1
    as_pg "$1/pg_ctl" status -D "$2" >/dev/null 2>&1 || return 1
    "$1/pg_isready" -q -h 127.0.0.1 -p "$3" -U "$DB_USER" -d "$DB_NAME" >/dev/null 2>&1
}

# Stop whatever the state file describes and forget it. Never fails.
stop_from_state() {
    if load_state; then
        RUN_USER="$PG_RUN_USER"
        if [ -d "$PG_DATA" ]; then
            local pm_pid=""
            [ -f "$PG_DB/postmaster.pid" ] && pm_pid="$(head -n1 "$PG_DB/postmaster.pid" 2>/dev/null || true)"
            if as_pg "$PG_BIN/pg_ctl" status -D "$PG_DB" >/dev/null 2>&1; then
                log "stopping server on port $PG_PORT"
                pg_halt "$PG_BIN" "$PG_DB"
            fi
            # Last resort: a postmaster that pg_ctl could not stop.
            if [ -f "$PG_DB/postmaster.pid" ]; then
                local pid
                pid="$(head -n1 "$PG_DB/postmaster.pid" 2>/dev/null || true)"
                if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
                    log "killing postmaster $pid"
                    kill -9 "$pid" 2>/dev/null || true
                    sleep 0.5
                fi
            fi
            # Remove our socket files if the server died without cleaning them up.
            local sock="/tmp/.s.PGSQL.$PG_PORT"
            if [ -n "$pm_pid" ] && [ -f "$sock.lock" ] && ! kill -0 "$pm_pid" 2>/dev/null \
                && [ "$(head -n1 "$sock.lock" 2>/dev/null)" = "$pm_pid" ]; then
                rm -f "$sock" "$sock.lock"
            fi
            rm -rf "$PG_DATA"
        fi
    fi
    rm -f "$STATE_FILE"
}

# --- ports ------------------------------------------------------------------------------

port_in_use() {
    local p="$1"
    if command -v ss >/dev/null 2>&1; then
        ss -Htan "sport = :$p" 2>/dev/null | grep -q . && return 0
    fi
    # Something accepting connections on it?
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && return 0
    # A stale or foreign socket file for this port in /tmp?
    [ -e "/tmp/.s.PGSQL.$p" ] && return 0
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

# --- commands ---------------------------------------------------------------------------

cmd_start() {
    mkdir -p "$STATE_DIR"
    # Serialise concurrent start/stop on the same state dir.
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$STATE_DIR/lock"
        flock -w 120 9 || die "timed out waiting for the lock on $STATE_DIR"
    fi

    # Already running? Reuse it (idempotent).
    if load_state; then
        RUN_USER="$PG_RUN_USER"
        if is_running "$PG_BIN" "$PG_DB" "$PG_PORT"; then
            log "server already running on port $PG_PORT (data $PG_DATA)"
            url_for "$PG_PORT"
            return 0
        fi
        if [ -n "$PG_PAUSED" ]; then
            log "server on port $PG_PORT is paused; starting it again"
            restart_from_state
            return
        fi
        log "found stale state; cleaning it up"
        stop_from_state
    fi

    local bin data port attempt logfile
    bin="$(ensure_bin_dir)"
    ensure_run_user

    data="$(mktemp -d "${TMPDIR:-/tmp}/troupe-pgdata.XXXXXX")"
    [ -n "$RUN_USER" ] && chown "$RUN_USER:" "$data"
    chmod 700 "$data"
    logfile="$data/server.log"

    log "initdb in $data ($bin)"
    if ! as_pg "$bin/initdb" -D "$data/db" -A trust -U "$DB_USER" -E UTF8 --locale=C.UTF-8 \
        --no-instructions >"$data/initdb.log" 2>&1; then
        # Older initdb may not know C.UTF-8 or --no-instructions: retry plainly.
        rm -rf "$data/db"
        if ! as_pg "$bin/initdb" -D "$data/db" -A trust -U "$DB_USER" -E UTF8 --locale=C \
            >"$data/initdb.log" 2>&1; then
            cat "$data/initdb.log" >&2
            rm -rf "$data"
            die "initdb failed"
        fi
    fi

    local started=""
    for attempt in 1 2 3 4 5; do
        port="$(pick_port)"
        # Record state before starting, so a `stop` always finds what we created.
        write_state "$bin" "$data" "$port" "$RUN_USER"
        log "starting server on 127.0.0.1:$port (attempt $attempt)"
        if pg_start "$bin" "$data/db" "$logfile" "$port"; then
            started=1
            break
        fi
        log "server failed to start on port $port; log tail:"
        tail -n 20 "$logfile" >&2 || true
        as_pg "$bin/pg_ctl" stop -D "$data/db" -m immediate -w >/dev/null 2>&1 || true
    done
    if [ -z "$started" ]; then
        stop_from_state
        rm -rf "$data"
        die "could not start PostgreSQL"
    fi

    for _ in $(seq 1 100); do
        "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U "$DB_USER" >/dev/null 2>&1 && break
        sleep 0.1
    done
    if ! "$bin/psql" -h 127.0.0.1 -p "$port" -U "$DB_USER" -d postgres -tAqc \
        "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" | grep -q 1; then
        "$bin/createdb" -h 127.0.0.1 -p "$port" -U "$DB_USER" "$DB_NAME" >&2 \
            || { stop_from_state; die "createdb failed"; }
    fi
    log "ready: $(url_for "$port")"
    url_for "$port"
}

# write_state BIN DATA PORT USER [PAUSED]
write_state() {
    printf 'bin=%s\ndata=%s\nport=%s\nuser=%s\npaused=%s\n' "$1" "$2" "$3" "$4" "${5:-}" \
        >"$STATE_FILE.tmp"
    mv "$STATE_FILE.tmp" "$STATE_FILE"
}

# Starts the server the (loaded) state describes on its port and data, retrying for a while
# in case the port is briefly taken. Prints the URL.
restart_from_state() {
    local logfile="$PG_DATA/server.log" attempt
    [ -d "$PG_DB" ] || die "the data folder $PG_DB is gone"
    for attempt in $(seq 1 20); do
        log "starting server on 127.0.0.1:$PG_PORT with data $PG_DATA (attempt $attempt)"
        if pg_start "$PG_BIN" "$PG_DB" "$logfile" "$PG_PORT"; then
            write_state "$PG_BIN" "$PG_DATA" "$PG_PORT" "$PG_RUN_USER"
            for _ in $(seq 1 100); do
                "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" >/dev/null 2>&1 && break
                sleep 0.1
            done
            log "ready: $(url_for "$PG_PORT")"
            url_for "$PG_PORT"
            return 0
        fi
        log "server failed to start on port $PG_PORT; log tail:"
        tail -n 5 "$logfile" >&2 || true
        as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DB" -m immediate -w >/dev/null 2>&1 || true
        sleep 0.5
    done
    die "could not start PostgreSQL again on port $PG_PORT"
}

lock_state() {
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$STATE_DIR/lock"
        flock -w 120 9 || die "timed out waiting for the lock on $STATE_DIR"
    fi
}

cmd_pause() {
    [ -d "$STATE_DIR" ] || die "no server (no state in $STATE_DIR)"
    lock_state
    load_state || die "no server (no state in $STATE_DIR)"
    RUN_USER="$PG_RUN_USER"
    write_state "$PG_BIN" "$PG_DATA" "$PG_PORT" "$PG_RUN_USER" 1
    log "pausing server on port $PG_PORT (data kept in $PG_DATA)"
    pg_halt "$PG_BIN" "$PG_DB"
    log "paused"
}

cmd_restart() {
    [ -d "$STATE_DIR" ] || die "no server (no state in $STATE_DIR)"
    lock_state
    load_state || die "no server (no state in $STATE_DIR)"
    RUN_USER="$PG_RUN_USER"
    if as_pg "$PG_BIN/pg_ctl" status -D "$PG_DB" >/dev/null 2>&1; then
        log "stopping server on port $PG_PORT for a restart"
        pg_halt "$PG_BIN" "$PG_DB"
    fi
    restart_from_state
}

cmd_url() {
    load_state || die "no server (no state in $STATE_DIR)"
    RUN_USER="$PG_RUN_USER"
    is_running "$PG_BIN" "$PG_DB" "$PG_PORT" || die "server in $STATE_DIR is not running"
    url_for "$PG_PORT"
}

cmd_stop() {
    [ -d "$STATE_DIR" ] || return 0
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$STATE_DIR/lock"
        flock -w 120 9 || die "timed out waiting for the lock on $STATE_DIR"
    fi
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
    pause) cmd_pause ;;
    restart) cmd_restart ;;
    *) echo "usage: $0 start|stop|url|pause|restart" >&2; exit 2 ;;
esac
