#!/usr/bin/env bash
# Troupe vs the y-websocket reference server and the floor, under the same load, in the
# same run.
#
#   chaos/bench.sh [troupe-chaos load flags…]
#   chaos/bench.sh --scenes 20 --editors 5 --rate 2 --duration 30 --warmup 5
#
# Builds release binaries, starts PostgreSQL (tests/pg.sh), troupe-node, the reference
# server (chaos/reference: npm y-websocket 1.5, bin/server.js, in-memory) and the bare
# relay (`troupe-chaos relay`: frames passed along, no document, no storage — the floor),
# then runs `troupe-chaos load` against each in turn, rotating the order every round, and
# prints the medians side by side with the CPU ratio and each server's CPU as a multiple of
# the relay's (`troupe-chaos compare`). Every process it starts is stopped on exit.
#
# Environment:
#   ROUNDS=2                  rounds per server
#   TARGETS="troupe reference relay"  which servers to bench (one alone skips the
#                             comparison); `relay` is the floor;
#                             `baseline` is a second troupe-node, from BASELINE_NODE
#   BASELINE_NODE=PATH        another build of troupe-node (e.g. of an older commit) to bench
#                             side by side: TARGETS="troupe baseline" BASELINE_NODE=…/troupe-node
#   BENCH_OUT=DIR             where the reports go, one folder per run with report.json and
#                             latency.svg (default target/bench-reports/<time>)
#   KEEP_LOGS=1               keep the server logs and data (printed path) after exit
#   PROFILE=release           the cargo profile of the binaries benched (troupe-node and the
#                             relay alike); `production` is what deploy/Dockerfile ships
#                             (optimised as one program: slower to build, faster to run)
# troupe-node reads its other settings from TROUPE_* variables in the environment.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROUNDS="${ROUNDS:-2}"
PROFILE="${PROFILE:-release}"
TARGETS="${TARGETS:-troupe reference relay}"
OUT="${BENCH_OUT:-$ROOT/target/bench-reports/$(date +%Y%m%d-%H%M%S)}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/troupe-load.XXXXXX")"
SECRET="${TROUPE_JWT_SECRET:-bench-secret-$(od -An -N16 -tx8 /dev/urandom | tr -d ' \n')}"
STARTED_PIDS=()
PG_STARTED=""

log() { echo "bench.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        for i in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ -n "$PG_STARTED" ]; then
        PG_STATE_DIR="$WORK/pg" "$ROOT/tests/pg.sh" stop >/dev/null 2>&1 || true
    fi
    if [ "${KEEP_LOGS:-}" = 1 ]; then
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wants() { [[ " $TARGETS " == *" $1 "* ]]; }
for t in $TARGETS; do
    case "$t" in
        troupe | baseline | reference | relay) ;;
        *) die "TARGETS: unknown target $t (troupe, baseline, reference, relay)" ;;
    esac
done

free_port() {
    local p i
    for i in $(seq 1 100); do
        p=$(( 20000 + RANDOM % 40000 ))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    die "no free port"
}

# wait_for_line PID FILE PATTERN SECONDS: until FILE has a line matching PATTERN.
wait_for_line() {
    local pid="$1" file="$2" pattern="$3" secs="$4" i
    for i in $(seq 1 $(( secs * 10 ))); do
        if grep -qE "$pattern" "$file" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "process $pid exited; last lines of $file:"
            tail -n 30 "$file" >&2 || true
            return 1
        fi
        sleep 0.1
    done
    log "timed out after ${secs}s waiting for /$pattern/ in $file:"
    tail -n 30 "$file" >&2 || true
    return 1
}

# --- build -------------------------------------------------------------------------------
cd "$ROOT"
packages=(-p troupe-chaos)
(wants troupe || wants baseline) && packages+=(-p troupe-node)
log "building $PROFILE binaries (${packages[*]})"
cargo build --profile "$PROFILE" --bins "${packages[@]}" >&2
BIN="$ROOT/target/$PROFILE"
CHAOS="$BIN/troupe-chaos"
mkdir -p "$OUT"

# --- servers -----------------------------------------------------------------------------
if wants troupe || wants baseline; then
    [ -x "$ROOT/tests/pg.sh" ] || die "tests/pg.sh is missing"
    DB_URL="$(PG_STATE_DIR="$WORK/pg" "$ROOT/tests/pg.sh" start)"
    PG_STARTED=1
    [ -n "$DB_URL" ] || die "tests/pg.sh start printed no URL"
    pg_port="${DB_URL##*:}"
    pg_port="${pg_port%%/*}"
    PG_PID="$(ss -Htlnp "sport = :$pg_port" 2>/dev/null | grep -oE 'pid=[0-9]+' | head -n1 | cut -d= -f2 || true)"
    if [ -z "$PG_PID" ]; then
        PG_PID="$(pgrep -o -f -- "-p $pg_port" || true)"
    fi
    log "PostgreSQL at $DB_URL (postmaster pid ${PG_PID:-unknown})"
fi

# start_node NAME BINARY DATABASE: starts a troupe-node on its own database; sets NODE_PID
# and NODE_URL.
start_node() {
    local name="$1" bin="$2" db="$3" port addr
    [ -x "$bin" ] || die "$bin is not an executable troupe-node"
    port="$(free_port)"
    mkdir -p "$WORK/data-$name"
    # The internal port's certificate (the node is a cluster of its own, id 1).
    if [ ! -f "$WORK/certs/node-1.crt" ]; then
        "$BIN/troupectl" certs --dir "$WORK/certs" init >/dev/null
        "$BIN/troupectl" certs --dir "$WORK/certs" node --id 1 >/dev/null
    fi
    TROUPE_INTERNAL_CA="$WORK/certs/ca.crt" \
    TROUPE_INTERNAL_CERT="$WORK/certs/node-1.crt" \
    TROUPE_INTERNAL_KEY="$WORK/certs/node-1.key" \
    TROUPE_LISTEN="127.0.0.1:$port" \
    TROUPE_RPC_LISTEN="127.0.0.1:0" \
    TROUPE_DATABASE_URL="$db" \
    TROUPE_JWT_SECRET="$SECRET" \
    TROUPE_DATA_DIR="$WORK/data-$name" \
    TROUPE_LOG="${TROUPE_LOG:-warn}" \
        "$bin" >"$WORK/$name.log" 2>&1 &
    NODE_PID=$!
    STARTED_PIDS+=("$NODE_PID")
    wait_for_line "$NODE_PID" "$WORK/$name.log" "troupe-node listening on" 60 \
        || die "$name did not start"
    addr="$(grep -oE 'troupe-node listening on [^ ]+' "$WORK/$name.log" | head -n1 | awk '{print $4}')"
    addr="${addr#*://}"
    addr="${addr%%/*}"
    [ -n "$addr" ] || addr="127.0.0.1:$port"
    NODE_URL="ws://$addr/ws/scenes"
    log "$name (pid $NODE_PID) at $NODE_URL"
}

if wants troupe; then
    start_node troupe "$BIN/troupe-node" "$DB_URL"
    TROUPE_PID="$NODE_PID" TROUPE_URL="$NODE_URL"
fi
if wants baseline; then
    [ -n "${BASELINE_NODE:-}" ] || die "TARGETS has baseline: set BASELINE_NODE to a troupe-node binary"
    # Its own database, so that the two nodes never fence each other's scenes.
    psql -q "$DB_URL" -c "CREATE DATABASE troupe_baseline" >&2 || die "cannot create the baseline database"
    start_node baseline "$BASELINE_NODE" "${DB_URL%/*}/troupe_baseline"
    BASELINE_PID="$NODE_PID" BASELINE_URL="$NODE_URL"
fi

if wants reference; then
    if [ ! -f "$ROOT/chaos/reference/node_modules/y-websocket/bin/server.js" ]; then
        log "installing the reference server (npm ci)"
        (cd "$ROOT/chaos/reference" && npm ci --no-audit --no-fund >&2)
    fi
    ref_port="$(free_port)"
    (cd "$ROOT/chaos/reference" && HOST=127.0.0.1 PORT="$ref_port" \
        exec node node_modules/y-websocket/bin/server.js) >"$WORK/reference.log" 2>&1 &
    REF_PID=$!
    STARTED_PIDS+=("$REF_PID")
    wait_for_line "$REF_PID" "$WORK/reference.log" "running at" 30 \
        || die "the reference server did not start"
    REF_URL="ws://127.0.0.1:$ref_port"
    log "reference server (pid $REF_PID) at $REF_URL"
fi

if wants relay; then
    relay_port="$(free_port)"
    "$CHAOS" relay --listen "127.0.0.1:$relay_port" >"$WORK/relay.log" 2>&1 &
    RELAY_PID=$!
    STARTED_PIDS+=("$RELAY_PID")
    wait_for_line "$RELAY_PID" "$WORK/relay.log" "relay listening on" 30 \
        || die "the relay did not start"
    RELAY_URL="$(grep -oE 'relay listening on [^ ]+' "$WORK/relay.log" | head -n1 | awk '{print $4}')"
    log "relay (pid $RELAY_PID) at $RELAY_URL"
fi

# --- rounds ------------------------------------------------------------------------------
run_one() {
    local target="$1" round="$2" out="$OUT/$1-$2"
    shift 2
    log "round $round: $target"
    case "$target" in
        troupe | baseline)
            local aux=() url pid
            [ -n "${PG_PID:-}" ] && aux=(--aux-pid "$PG_PID")
            if [ "$target" = troupe ]; then url="$TROUPE_URL" pid="$TROUPE_PID"; else url="$BASELINE_URL" pid="$BASELINE_PID"; fi
            "$CHAOS" load --url "$url" --jwt-secret "$SECRET" --label "$target" \
                --pid "$pid" "${aux[@]}" --out "$out" "$@"
            ;;
        reference)
            "$CHAOS" load --url "$REF_URL" --label reference --pid "$REF_PID" \
                --out "$out" "$@"
            ;;
        relay)
            "$CHAOS" load --url "$RELAY_URL" --label relay --pid "$RELAY_PID" \
                --out "$out" "$@"
            ;;
    esac
    echo
}

read -r -a order <<<"$TARGETS"
for round in $(seq 1 "$ROUNDS"); do
    for target in "${order[@]}"; do
        run_one "$target" "$round" "$@"
    done
    # Rotate who goes first, so drift (caches, thermal, page cache) hits all alike.
    order=("${order[@]:1}" "${order[0]}")
done

reports() { local t="$1" r list=""; for r in $(seq 1 "$ROUNDS"); do list+="${list:+,}$OUT/$t-$r"; done; echo "$list"; }
# One table, columns in this order; the ratio column is the first two other than the relay
# (troupe/baseline, else troupe/reference), the relay's column is the floor.
groups=() names=()
for t in troupe baseline reference relay; do
    if wants "$t"; then
        groups+=("$t=$(reports "$t")")
        names+=("$t")
    fi
done
if [ "${#groups[@]}" -ge 2 ]; then
    title="${names[*]}"
    title="${title// / vs }"
    if wants baseline; then title+=" (baseline: $BASELINE_NODE)"; fi
    if wants relay; then title+="; the relay is the floor"; fi
    echo "=== $title ==="
    "$CHAOS" compare --floor relay "${groups[@]}"
fi
log "reports (report.json, latency.svg) in $OUT"
