#!/usr/bin/env bash
# Makes the Secrets the Kubernetes manifests use and prints them on stdout, for
#
#   deploy/kubernetes/make-secrets.sh --namespace troupe --database-url postgres://… | kubectl apply -f -
#
# Options:
#   --namespace NS       the namespace the overlay deploys to (the nodes' certificates name it)
#   --database-url URL   the Postgres the nodes store scenes in (postgres://user:pass@host/db)
#   --nodes N            the most node pods you will ever scale to (default 8): node ids 1..N,
#                        pods troupe-node-0 … troupe-node-(N-1), each get a certificate
#   --jwt-secret S       the HS256 secret your app's backend signs editors' tokens with
#                        (default: the one made on an earlier run, else a new random one)
#   --metrics-token T    require this bearer token on /metrics of nodes and routers
#   --dir DIR            where the CA and the operator's files are kept (default
#                        ~/.troupe/NS); made if missing, reused if present
#
# It prints three Secrets:
#   troupe-secrets          database-url, jwt-secret (and metrics-token): nodes and routers
#   troupe-internal-certs   ca.crt and node-<id>.crt/.key for ids 1..N: the nodes only
#   troupe-router-certs     ca.crt and reader-router.crt/.key (may read the membership only)
#
# What stays on this machine, in DIR (mode 0700), and never goes into the cluster:
#   ca.key                  the cluster CA's key: whoever holds it can mint an admin
#                           certificate. Keep DIR (or at least ca.crt and ca.key) safe and
#                           backed up: it is needed to make certificates for more nodes.
#   admin-ops.crt/.key      the operator's admin certificate, for troupectl (drain, remove,
#                           flags …); ops/troupectl.yaml runs troupectl in the cluster with it,
#                           for as long as you need it
#   jwt-secret              the JWT secret, so that a later run keeps it
#
# Scaling beyond N: a pod whose id has no certificate in troupe-internal-certs cannot start
# (the node refuses to run without its certificate). Run this again with a larger --nodes and
# the same DIR: the CA and the certificates made before are kept, the missing ids are added,
# and `kubectl apply` updates the Secret (pods see the new files within a minute or so). Then
# scale. The same applies to renewing: certificates are valid for 365 days; delete the old
# node-*.crt and reader-router.crt files from DIR, run again, apply, and restart the pods.
#
# Needs troupectl (from the image, or `cargo build`; TROUPE_BIN_DIR or PATH) and kubectl (it
# only formats the Secrets: --dry-run=client, no cluster is contacted).
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}
die() {
    echo "make-secrets.sh: $*" >&2
    exit 2
}

NAMESPACE=""
NODES=8
DATABASE_URL=""
JWT_SECRET=""
METRICS_TOKEN=""
DIR=""
while [ $# -gt 0 ]; do
    case "$1" in
        --namespace) NAMESPACE="${2:?--namespace needs a value}"; shift 2 ;;
        --namespace=*) NAMESPACE="${1#*=}"; shift ;;
        --nodes) NODES="${2:?--nodes needs a value}"; shift 2 ;;
        --nodes=*) NODES="${1#*=}"; shift ;;
        --database-url) DATABASE_URL="${2:?--database-url needs a value}"; shift 2 ;;
        --database-url=*) DATABASE_URL="${1#*=}"; shift ;;
        --jwt-secret) JWT_SECRET="${2:?--jwt-secret needs a value}"; shift 2 ;;
        --jwt-secret=*) JWT_SECRET="${1#*=}"; shift ;;
        --metrics-token) METRICS_TOKEN="${2:?--metrics-token needs a value}"; shift 2 ;;
        --metrics-token=*) METRICS_TOKEN="${1#*=}"; shift ;;
        --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
        --dir=*) DIR="${1#*=}"; shift ;;
        -h | --help) usage 0 ;;
        *) echo "make-secrets.sh: unknown argument $1" >&2; usage 2 ;;
    esac
done

[ -n "$NAMESPACE" ] || die "--namespace is required"
[[ "$NAMESPACE" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || die "--namespace $NAMESPACE is not a namespace name"
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive number"
[ "$NODES" -ge 3 ] || echo "make-secrets.sh: note: --nodes $NODES is fewer than the 3 initial voters the manifests start" >&2
[ -n "$DATABASE_URL" ] || die "--database-url is required (postgres://user:password@host:5432/db)"
case "$DATABASE_URL" in postgres://* | postgresql://*) ;; *) die "--database-url must start with postgres://" ;; esac
if [ -n "$JWT_SECRET" ] && [ "${#JWT_SECRET}" -lt 32 ]; then
    die "--jwt-secret must be at least 32 bytes (make one with: openssl rand -hex 32)"
fi

# troupectl: beside a cargo build (TROUPE_BIN_DIR, as tests/run.sh sets it), else on PATH.
TROUPECTL=""
if [ -n "${TROUPE_BIN_DIR:-}" ] && [ -x "$TROUPE_BIN_DIR/troupectl" ]; then
    TROUPECTL="$TROUPE_BIN_DIR/troupectl"
elif command -v troupectl >/dev/null 2>&1; then
    TROUPECTL="$(command -v troupectl)"
else
    die "troupectl not found: set TROUPE_BIN_DIR to the folder of a built troupectl, or put it on PATH"
fi
command -v kubectl >/dev/null 2>&1 || die "kubectl not found (it formats the Secrets; no cluster is contacted)"

DIR="${DIR:-$HOME/.troupe/$NAMESPACE}"
mkdir -p "$DIR"
chmod 0700 "$DIR"

certs() { "$TROUPECTL" certs --dir "$DIR" "$@" >/dev/null; }

if [ ! -f "$DIR/ca.crt" ]; then
    certs init
    echo "make-secrets.sh: made the cluster CA in $DIR (keep ca.key there, out of the cluster)" >&2
fi
# Each node's certificate names its id and the names peers dial it at (TROUPE_RPC_ADVERTISE is
# <pod>.troupe-node:4100; the longer names are for clients outside the namespace).
for id in $(seq 1 "$NODES"); do
    [ -f "$DIR/node-$id.crt" ] && continue
    pod="troupe-node-$((id - 1))"
    certs node --id "$id" \
        --host "$pod.troupe-node" \
        --host "$pod.troupe-node.$NAMESPACE.svc" \
        --host "$pod.troupe-node.$NAMESPACE.svc.cluster.local"
done
[ -f "$DIR/reader-router.crt" ] || certs client --name router --role reader
[ -f "$DIR/admin-ops.crt" ] || certs client --name ops --role admin

if [ -z "$JWT_SECRET" ]; then
    if [ -f "$DIR/jwt-secret" ]; then
        JWT_SECRET="$(cat "$DIR/jwt-secret")"
    else
        JWT_SECRET="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
        echo "make-secrets.sh: made a new JWT secret ($DIR/jwt-secret): your app's backend must sign editors' tokens with it" >&2
    fi
fi
(umask 077 && printf '%s' "$JWT_SECRET" >"$DIR/jwt-secret")

# kubectl create secret … --dry-run=client prints a Secret without contacting a cluster; the
# values are read from files so that they appear in no process's arguments.
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
chmod 0700 "$TMP"
secret() { # secret NAME ARGS…: one Secret's manifest, with a document separator
    echo "---"
    kubectl create secret generic "$1" --namespace "$NAMESPACE" "${@:2}" --dry-run=client -o yaml |
        sed '/^  creationTimestamp: null$/d'
}

printf '%s' "$DATABASE_URL" >"$TMP/database-url"
printf '%s' "$JWT_SECRET" >"$TMP/jwt-secret"
app=(--from-file=database-url="$TMP/database-url" --from-file=jwt-secret="$TMP/jwt-secret")
if [ -n "$METRICS_TOKEN" ]; then
    printf '%s' "$METRICS_TOKEN" >"$TMP/metrics-token"
    app+=(--from-file=metrics-token="$TMP/metrics-token")
fi
secret troupe-secrets "${app[@]}"

nodes=(--from-file=ca.crt="$DIR/ca.crt")
for id in $(seq 1 "$NODES"); do
    nodes+=("--from-file=node-$id.crt=$DIR/node-$id.crt" "--from-file=node-$id.key=$DIR/node-$id.key")
done
secret troupe-internal-certs "${nodes[@]}"

secret troupe-router-certs \
    --from-file=ca.crt="$DIR/ca.crt" \
    --from-file=reader-router.crt="$DIR/reader-router.crt" \
    --from-file=reader-router.key="$DIR/reader-router.key"

echo "make-secrets.sh: printed troupe-secrets, troupe-internal-certs (node ids 1..$NODES) and troupe-router-certs for namespace $NAMESPACE; the CA key and the admin certificate stay in $DIR" >&2
