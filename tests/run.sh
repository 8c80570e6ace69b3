#!/usr/bin/env bash
# The project's test command: `tests/run.sh` (CI runs it through .ci/run).
#
# On a fresh Debian machine as root it installs what is missing (Node/npm, PostgreSQL,
# redis-server, a C toolchain, cargo-fuzz), starts a throwaway PostgreSQL (tests/pg.sh) and a
# throwaway Redis (tests/redis.sh), both stopped again on exit, builds the binaries and runs
# every check:
#
#   build        cargo build --workspace --bins        (target/debug/troupe-node, troupectl)
#   nextest      cargo nextest run --workspace          (falls back to cargo test)
#   doctests     cargo test --workspace --doc
#   fmt          cargo fmt --all -- --check
#   clippy       cargo clippy --workspace --all-targets -- -D warnings
#   interop      node --test tests/interop/             (stock yjs + y-websocket clients)
#   web          cd web && npm run build && npm test    (the browser client and demo editor)
#   e2e          cd web && node --test e2e/             (the demo in headless Chromium)
#   deploy       promtool check rules + test rules      (deploy/prometheus; Debian's prometheus),
#                the dashboards' queries parsed as PromQL (deploy/grafana), the Compose
#                stack's Prometheus config (promtool) and compose.yml against the Compose
#                specification's schema (check-jsonschema from PyPI, in target/tools/pyvenv);
#                deploy/kubernetes against the Kubernetes 1.30 schemas, offline
#                (kubernetes-validate --strict, same venv): base/ and ops/, and with kubectl
#                the rendered overlays and a real make-secrets.sh run; the image
#                (deploy/Dockerfile) where docker or podman answers, else a line why not
#   fuzz         cargo +nightly fuzz run <target> for each target, bounded (on request, see below)
#
# Every check runs even if an earlier one failed; the exit status is non-zero if any failed.
#
# Environment:
#   TROUPE_TEST_DATABASE_URL  use this PostgreSQL instead of starting one
#   TROUPE_TEST_REDIS_URL     use this Redis (redis://host:port) instead of starting one; the
#                             tests that stop and restart Redis still start their own
#                             redis-server, so it must be installed either way
#   TROUPE_FUZZ_SECONDS       seconds per fuzz target (default 0: skipped, since building the
#                             sanitized fuzz binaries alone takes ~10 minutes; the decoders'
#                             seeded mutation tests run in nextest every time)
#   CARGO_TARGET_DIR          respected when locating the built binaries
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT="$(pwd)"

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
# A one-shot run gains nothing from incremental caches, and they double the debug target's size
# (a full run then needs ~6 GB free instead of ~12).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export DEBIAN_FRONTEND=noninteractive
FUZZ_SECONDS="${TROUPE_FUZZ_SECONDS:-0}"

RUN_START=$SECONDS
declare -a RESULTS=()
FAILED=0

# --- output helpers ----------------------------------------------------------------------

section() {
    echo
    echo "=================================================================================="
    echo "== $*"
    echo "=================================================================================="
}
note() { echo "run.sh: $*"; }

fmt_secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

record() { # record NAME STATUS SECONDS [DETAIL]
    RESULTS+=("$(printf '%-10s %-5s %8s  %s' "$1" "$2" "$(fmt_secs "$3")" "${4:-}")")
    [ "$2" = "FAIL" ] && FAILED=$((FAILED + 1))
    return 0
}

# step NAME CMD...: run a check, record PASS/FAIL with its duration.
step() {
    local name="$1"; shift
    section "$name: $*"
    local t0=$SECONDS
    "$@"
    local rc=$?
    if [ $rc -eq 0 ]; then
        record "$name" PASS $((SECONDS - t0))
    else
        note "$name FAILED (exit $rc)"
        record "$name" FAIL $((SECONDS - t0)) "exit $rc"
    fi
    return $rc
}

skip() { # skip NAME REASON
    section "$1: skipped"
    note "skipping $1: $2"
    record "$1" SKIP 0 "$2"
}

summary() {
    section "summary"
    local r passed=0 skipped=0
    for r in "${RESULTS[@]}"; do
        echo "  $r"
        case "$r" in *" PASS "*) passed=$((passed + 1)) ;; *" SKIP "*) skipped=$((skipped + 1)) ;; esac
    done
    echo
    if [ "$FAILED" -eq 0 ]; then
        echo "run.sh: OK: $passed steps passed, $FAILED steps failed, $skipped steps skipped in $(fmt_secs $((SECONDS - RUN_START)))"
    else
        echo "run.sh: FAILED: $passed steps passed, $FAILED steps failed, $skipped steps skipped in $(fmt_secs $((SECONDS - RUN_START)))"
    fi
}

# --- setup helpers -----------------------------------------------------------------------

APT_UPDATED=""
apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        note "need $* but not root: install it yourself"
        return 1
    fi
    if [ -z "$APT_UPDATED" ]; then
        apt-get update -qq || return 1
        APT_UPDATED=1
    fi
    apt-get install -y -qq --no-install-recommends "$@"
}

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        note "cargo not found: install a Rust toolchain (rustup) first"
        return 1
    fi
    cargo --version
    if ! command -v cc >/dev/null 2>&1; then
        note "no C compiler/linker: installing build-essential"
        apt_install build-essential pkg-config || return 1
    fi
    if command -v rustup >/dev/null 2>&1; then
        local comp
        for comp in rustfmt clippy; do
            if ! rustup component list --installed 2>/dev/null | grep -q "^$comp"; then
                note "installing rustup component $comp"
                rustup component add "$comp" || note "could not add $comp"
            fi
        done
    fi
    return 0
}

HAVE_NEXTEST=""
ensure_nextest() {
    if cargo nextest --version >/dev/null 2>&1; then
        HAVE_NEXTEST=1
        cargo nextest --version | head -n1
    else
        note "cargo-nextest not installed: falling back to cargo test"
    fi
    return 0
}

ensure_node() {
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        note "installing nodejs and npm (Debian packages)"
        apt_install nodejs npm || return 1
    fi
    local major
    major="$(node -p 'process.versions.node.split(".")[0]')" || return 1
    if [ "$major" -lt 18 ]; then
        note "node $(node --version) is too old for node:test (need >= 18)"
        return 1
    fi
    echo "node $(node --version), npm $(npm --version)"
}

npm_ci() {
    local dir
    for dir in tests/interop chaos/reference web; do
        if [ -f "$dir/package-lock.json" ]; then
            note "npm ci in $dir"
            (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || return 1
        fi
    done
}

target_dir() {
    if [ -n "${CARGO_TARGET_DIR:-}" ]; then
        (mkdir -p "$CARGO_TARGET_DIR" && cd "$CARGO_TARGET_DIR" && pwd)
        return
    fi
    local meta
    meta="$(cargo metadata --format-version 1 --no-deps 2>/dev/null)" || true
    local dir
    dir="$(printf '%s' "$meta" | grep -o '"target_directory":"[^"]*"' | head -n1 | sed 's/.*:"\(.*\)"/\1/')"
    echo "${dir:-$ROOT/target}"
}

# --- PostgreSQL --------------------------------------------------------------------------

PG_STARTED=""
REDIS_STARTED=""
BOUNDED_PID=""
cleanup() {
    local rc=$?
    # Finish cleaning up even if another Ctrl-C or TERM arrives meanwhile.
    trap - EXIT
    trap '' INT TERM
    if [ -n "$PG_STARTED" ]; then
        echo
        note "stopping the test PostgreSQL"
        "$ROOT/tests/pg.sh" stop || true
        rm -rf "$PG_STATE_DIR"
    fi
    if [ -n "$REDIS_STARTED" ]; then
        echo
        note "stopping the test Redis"
        "$ROOT/tests/redis.sh" stop || true
        rm -rf "$REDIS_STATE_DIR"
    fi
    exit $rc
}
trap cleanup EXIT
on_signal() {
    echo
    note "$1"
    [ -n "$BOUNDED_PID" ] && kill -TERM "$BOUNDED_PID" 2>/dev/null
    exit "$2"
}
trap 'on_signal interrupted 130' INT
trap 'on_signal terminated 143' TERM

# run_bounded SECS CMD...: run CMD under a time limit. `timeout` puts CMD in a process group of
# its own and signals the whole group (so processes a test spawned go too); it runs in the
# background here so that a Ctrl-C reaches our trap, which then stops it.
run_bounded() {
    local secs="$1"; shift
    timeout -k 30 "$secs" "$@" &
    BOUNDED_PID=$!
    wait "$BOUNDED_PID"
    local rc=$?
    BOUNDED_PID=""
    return $rc
}

start_pg() {
    if [ -n "${TROUPE_TEST_DATABASE_URL:-}" ]; then
        note "using TROUPE_TEST_DATABASE_URL from the environment"
        return 0
    fi
    # A state dir of our own, so we never reuse or stop a server someone else started.
    PG_STATE_DIR="$(mktemp -d /tmp/troupe-run-pg.XXXXXX)"
    export PG_STATE_DIR
    PG_STARTED=1
    local url
    url="$("$ROOT/tests/pg.sh" start)" || return 1
    export TROUPE_TEST_DATABASE_URL="$url"
    note "TROUPE_TEST_DATABASE_URL=$TROUPE_TEST_DATABASE_URL"
}

# --- Redis -------------------------------------------------------------------------------

redis_server_bin() {
    local b
    if b="$(command -v redis-server 2>/dev/null)"; then echo "$b"; return 0; fi
    for b in /usr/bin/redis-server /usr/local/bin/redis-server; do
        [ -x "$b" ] && { echo "$b"; return 0; }
    done
    return 1
}

ensure_redis() {
    # Needed even with TROUPE_TEST_REDIS_URL: outage tests start their own redis-server.
    if ! redis_server_bin >/dev/null; then
        note "installing redis-server (Debian package; its system service is never used)"
        apt_install redis-server || return 1
    fi
    "$(redis_server_bin)" --version
}

start_redis() {
    if [ -n "${TROUPE_TEST_REDIS_URL:-}" ]; then
        note "using TROUPE_TEST_REDIS_URL from the environment"
        return 0
    fi
    # A state dir of our own, so we never reuse or stop a server someone else started.
    REDIS_STATE_DIR="$(mktemp -d /tmp/troupe-run-redis.XXXXXX)"
    export REDIS_STATE_DIR
    REDIS_STARTED=1
    local url
    url="$("$ROOT/tests/redis.sh" start)" || return 1
    export TROUPE_TEST_REDIS_URL="$url"
    note "TROUPE_TEST_REDIS_URL=$TROUPE_TEST_REDIS_URL"
}

# --- checks ------------------------------------------------------------------------------

run_nextest() {
    if [ -n "$HAVE_NEXTEST" ]; then
        cargo nextest run --workspace --profile ci --no-tests=warn
    else
        cargo test --workspace --no-fail-fast
    fi
}

run_doctests() {
    # nextest does not run doc tests.
    cargo test --workspace --doc --no-fail-fast
}

run_interop() {
    local files=()
    local f
    for f in tests/interop/*.test.mjs; do [ -f "$f" ] && files+=("$f"); done
    if [ ${#files[@]} -eq 0 ]; then
        note "no interop test files"
        return 1
    fi
    run_bounded 900 node --test "${files[@]}"
}

run_web() {
    (cd web && npm run build && run_bounded 600 npm test)
}

ensure_chromium() {
    if [ -x /usr/bin/chromium ]; then
        return 0
    fi
    note "installing chromium (Debian package) for the end-to-end test"
    apt_install chromium
}

run_e2e() {
    (cd web && run_bounded 600 node --test e2e/)
}

ensure_promtool() {
    if command -v promtool >/dev/null 2>&1; then
        return 0
    fi
    note "installing prometheus (Debian package) for promtool"
    apt_install prometheus
}

# check-jsonschema (PyPI), which carries the Compose specification's schema, in a venv of
# its own under target/.
ensure_compose_checker() {
    COMPOSE_CHECKER="$(target_dir)/tools/pyvenv/bin/check-jsonschema"
    [ -x "$COMPOSE_CHECKER" ] && return 0
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        note "installing python3-venv (Debian package) for the Compose check"
        apt_install python3 python3-venv || return 1
    fi
    local venv="${COMPOSE_CHECKER%/bin/check-jsonschema}"
    python3 -m venv "$venv" && "$venv/bin/pip" install --quiet check-jsonschema
}

run_deploy() {
    (cd deploy/prometheus && promtool check rules alerts.yml && promtool test rules alerts_test.yml) || return 1
    node deploy/grafana/check-queries.mjs || return 1
    # The Compose stack's Prometheus configuration, with the rules beside it.
    local tmp
    tmp="$(mktemp -d)"
    cp deploy/compose/prometheus.yml deploy/prometheus/alerts.yml "$tmp/"
    sed -i 's#/etc/prometheus/alerts.yml#alerts.yml#' "$tmp/prometheus.yml"
    (cd "$tmp" && promtool check config prometheus.yml) || { rm -rf "$tmp"; return 1; }
    rm -rf "$tmp"
    ensure_compose_checker || return 1
    "$COMPOSE_CHECKER" --builtin-schema vendor.compose-spec deploy/compose/compose.yml || return 1
    run_deploy_kubernetes || return 1
    run_deploy_image
}

# The image, built where a container engine answers; otherwise one line says why it was not.
run_deploy_image() {
    local engine why
    for engine in docker podman; do
        command -v "$engine" >/dev/null 2>&1 || continue
        if why="$("$engine" info 2>&1 >/dev/null)"; then
            note "image: building deploy/Dockerfile with $engine"
            "$engine" build -q -f deploy/Dockerfile -t troupe:ci . || return 1
            "$engine" run --rm troupe:ci troupe-node --version || return 1
            return 0
        fi
        note "image: not built: $engine does not answer here ($(tail -n1 <<<"$why"))"
        return 0
    done
    note "image: not built: no container engine (docker, podman) on this machine"
}

# kubernetes-validate (PyPI), which bundles the Kubernetes JSON schemas, in the same venv.
KUBE_VERSION=1.30.0
ensure_kube_validator() {
    ensure_compose_checker || return 1
    KUBE_VALIDATE="${COMPOSE_CHECKER%/check-jsonschema}/kubernetes-validate"
    [ -x "$KUBE_VALIDATE" ] && return 0
    note "installing kubernetes-validate (PyPI) into ${COMPOSE_CHECKER%/bin/check-jsonschema}"
    "${COMPOSE_CHECKER%/check-jsonschema}/pip" install --quiet 'kubernetes-validate>=1.30'
}

# kube_validate LABEL FILE: every resource in FILE against the Kubernetes schemas, strictly (an
# unknown field fails), with no network (in a network namespace of its own where one can be
# made: the schemas must be the bundled ones). A kind it has no schema for fails too (the tool
# itself only warns), and so does a file with no resource in it.
kube_validate() {
    local offline=()
    unshare -n true >/dev/null 2>&1 && offline=(unshare -n)
    local out rc=0
    out="$(${offline[@]+"${offline[@]}"} "$KUBE_VALIDATE" --strict -k "$KUBE_VERSION" "$2" 2>&1)" || rc=$?
    printf '%s\n' "$out" | grep -v '^INFO ' | grep -v '^$'
    local n
    n="$(printf '%s\n' "$out" | grep -c '^INFO .* passed for resource ')"
    if [ "$rc" -ne 0 ] || printf '%s\n' "$out" | grep -q '^\(WARN\|ERROR\|FATAL\)' || [ "$n" -eq 0 ]; then
        note "$1: NOT valid against Kubernetes $KUBE_VERSION"
        return 1
    fi
    note "$1: $n resources valid against Kubernetes $KUBE_VERSION (strict${offline[*]:+, offline})"
}

run_deploy_kubernetes() {
    local dir=deploy/kubernetes rc=0 f o
    ensure_kube_validator || return 1
    for f in "$dir"/base/*.yaml "$dir"/ops/*.yaml; do
        [ "$(basename "$f")" = kustomization.yaml ] && continue
        kube_validate "$f" "$f" || rc=1
    done
    bash -n "$dir/make-secrets.sh" || rc=1
    if ! command -v kubectl >/dev/null 2>&1; then
        note "kubectl not installed (Debian does not package it): the overlays were not rendered and make-secrets.sh was not run"
        return $rc
    fi
    local tmp
    tmp="$(mktemp -d)"
    for o in "$dir"/overlays/*/; do
        o="${o%/}"
        if kubectl kustomize "$o" >"$tmp/$(basename "$o").yaml"; then
            kube_validate "kubectl kustomize $o" "$tmp/$(basename "$o").yaml" || rc=1
        else
            note "kubectl kustomize $o failed"
            rc=1
        fi
    done
    # make-secrets.sh for real, with the troupectl just built and a throwaway --dir.
    if [ ! -x "${TROUPE_BIN_DIR:-}/troupectl" ]; then
        note "no troupectl in TROUPE_BIN_DIR (${TROUPE_BIN_DIR:-unset}): make-secrets.sh not run"
        rm -rf "$tmp"
        return 1
    fi
    if TROUPE_BIN_DIR="$TROUPE_BIN_DIR" "$dir/make-secrets.sh" --namespace troupe-check --nodes 2 \
        --database-url postgres://troupe:troupe@postgres:5432/troupe --dir "$tmp/keep" \
        >"$tmp/secrets.yaml" 2>"$tmp/secrets.err"; then
        kube_validate "make-secrets.sh --nodes 2" "$tmp/secrets.yaml" || rc=1
        # The Secrets hold exactly what the rendered pods read from them (every secretKeyRef
        # that is not optional, every /certs file a container names, for node ids 1..2), and
        # no CA key or admin certificate.
        "${KUBE_VALIDATE%/kubernetes-validate}/python" - "$tmp/secrets.yaml" "$tmp"/local.yaml <<'PY' || rc=1
import sys, yaml
secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
want = {
    "troupe-secrets": {"database-url", "jwt-secret"},
    "troupe-internal-certs": {"ca.crt", "node-1.crt", "node-1.key", "node-2.crt", "node-2.key"},
    "troupe-router-certs": {"ca.crt", "reader-router.crt", "reader-router.key"},
}
bad = []
for name, keys in want.items():
    s = secrets.get(name)
    if s is None:
        bad.append(f"no Secret {name}")
        continue
    if s["metadata"].get("namespace") != "troupe-check":
        bad.append(f"{name}: namespace {s['metadata'].get('namespace')}")
    if set(s.get("data", {})) != keys:
        bad.append(f"{name} holds {sorted(s.get('data', {}))}, expected {sorted(keys)}")
for doc in yaml.safe_load_all(open(sys.argv[2])):
    if not doc or doc["kind"] not in ("StatefulSet", "Deployment"):
        continue
    pod = doc["spec"]["template"]["spec"]
    vols = {v["name"]: v.get("secret", {}).get("secretName") for v in pod.get("volumes", [])}
    for c in pod["containers"]:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        mounts = {m["mountPath"]: vols.get(m["name"]) for m in c.get("volumeMounts", [])}
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and not ref.get("optional"):
                if ref["key"] not in secrets.get(ref["name"], {}).get("data", {}):
                    bad.append(f"{where}: {e['name']} needs {ref['name']}/{ref['key']}")
            value = e.get("value", "")
            if value.startswith("/certs/"):
                secret = mounts.get("/certs")
                ids = ["1", "2"] if "{id}" in value else [""]
                for i in ids:
                    key = value[len("/certs/"):].replace("{id}", i)
                    if key not in secrets.get(secret, {}).get("data", {}):
                        bad.append(f"{where}: {e['name']} names /certs/{key}, not in Secret {secret}")
for b in bad:
    print("make-secrets.sh: " + b)
if bad:
    sys.exit(1)
print("run.sh: make-secrets.sh: the Secrets hold what the pods read, and no CA key or admin certificate")
PY
    else
        cat "$tmp/secrets.err"
        note "make-secrets.sh failed"
        rc=1
    fi
    rm -rf "$tmp"
    return $rc
}

FUZZ_SKIP_REASON=""
ensure_fuzz_tools() {
    if ! command -v rustup >/dev/null 2>&1; then
        FUZZ_SKIP_REASON="rustup not available (nightly needed)"; return 1
    fi
    if ! rustup toolchain list | grep -q '^nightly'; then
        note "installing the nightly toolchain (minimal profile)"
        if ! rustup toolchain install nightly --profile minimal; then
            FUZZ_SKIP_REASON="nightly toolchain not available"; return 1
        fi
    fi
    if ! cargo fuzz --version >/dev/null 2>&1; then
        note "installing cargo-fuzz"
        if ! cargo install cargo-fuzz --locked; then
            FUZZ_SKIP_REASON="cargo-fuzz could not be installed"; return 1
        fi
    fi
    cargo fuzz --version
}

run_fuzz() {
    local targets t rc=0
    targets="$(cargo +nightly fuzz list)" || return 1
    if [ -z "$targets" ]; then
        note "fuzz/ has no targets"
        return 0
    fi
    for t in $targets; do
        note "fuzzing $t for ${FUZZ_SECONDS}s"
        # -max_total_time bounds the run; timeout also bounds the (release + ASan) build.
        # New inputs go to corpus/<target> (kept locally); the committed seeds/<target> are
        # read too (and replayed by every test run: node/tests/fuzz_seeds.rs).
        local seeds=()
        [ -d "fuzz/seeds/$t" ] && seeds=("seeds/$t")
        mkdir -p "fuzz/corpus/$t"
        if ! run_bounded $((FUZZ_SECONDS + 900)) cargo +nightly fuzz run "$t" "corpus/$t" "${seeds[@]}" -- \
            -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=4096 -print_final_stats=1; then
            note "fuzz target $t FAILED (artifacts under fuzz/artifacts/$t)"
            rc=1
        fi
    done
    return $rc
}

# --- main --------------------------------------------------------------------------------

section "setup"
SETUP_T0=$SECONDS
if ! ensure_rust || ! ensure_node; then
    record setup FAIL $((SECONDS - SETUP_T0)) "missing toolchain"
    summary
    exit 1
fi
ensure_nextest
if ! npm_ci; then
    record setup FAIL $((SECONDS - SETUP_T0)) "npm ci failed"
    summary
    exit 1
fi
record setup PASS $((SECONDS - SETUP_T0))

TROUPE_BIN_DIR="$(target_dir)/debug"
export TROUPE_BIN_DIR

# A full disk shows up later as a compiler error deep in the log; say it first.
FREE_KB="$(df -Pk "$(dirname "$TROUPE_BIN_DIR")" 2>/dev/null | awk 'NR == 2 { print $4 }')"
if [ -n "$FREE_KB" ] && [ "$FREE_KB" -lt $((8 * 1024 * 1024)) ]; then
    note "warning: only $((FREE_KB / 1024)) MiB free under $(dirname "$TROUPE_BIN_DIR"); a full run needs ~8 GB (build, test binaries, PostgreSQL)"
fi

BUILD_OK=""
step build cargo build --workspace --bins && BUILD_OK=1
note "TROUPE_BIN_DIR=$TROUPE_BIN_DIR"

section "postgres"
PG_T0=$SECONDS
PG_OK=""
if start_pg; then
    PG_OK=1
    record postgres PASS $((SECONDS - PG_T0))
else
    record postgres FAIL $((SECONDS - PG_T0)) "could not start PostgreSQL"
fi

section "redis"
REDIS_T0=$SECONDS
REDIS_OK=""
if ensure_redis && start_redis; then
    REDIS_OK=1
    record redis PASS $((SECONDS - REDIS_T0))
else
    record redis FAIL $((SECONDS - REDIS_T0)) "could not install or start Redis"
fi

if [ -z "$BUILD_OK" ]; then
    skip nextest "build failed"
    skip doctests "build failed"
else
    if [ -z "$PG_OK" ]; then
        skip nextest "no PostgreSQL"
    elif [ -z "$REDIS_OK" ]; then
        skip nextest "no Redis"
    else
        step nextest run_nextest
    fi
    step doctests run_doctests
fi

step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
if ensure_promtool; then
    step deploy run_deploy
else
    step deploy false
fi

if [ -n "$BUILD_OK" ]; then
    step interop run_interop
    step web run_web
    if ensure_chromium; then
        step e2e run_e2e
    else
        # Counted as a failure: the browser test is part of the product's proof.
        step e2e false
    fi
else
    skip interop "build failed"
    skip web "build failed"
    skip e2e "build failed"
fi

if [ ! -d fuzz ]; then
    skip fuzz "no fuzz/ folder"
elif [ "$FUZZ_SECONDS" = "0" ]; then
    skip fuzz "on request: TROUPE_FUZZ_SECONDS=60 tests/run.sh (see fuzz/README.md)"
elif ensure_fuzz_tools; then
    step fuzz run_fuzz
else
    skip fuzz "$FUZZ_SKIP_REASON"
fi

summary
[ "$FAILED" -eq 0 ]
