#!/usr/bin/env bash
# A three-node herald cluster on this machine, in one command:
#
#   scripts/cluster-local.sh          # Ctrl-C stops everything
#
# Starts a nats-server with JetStream (store in a temporary directory) and
# three herald nodes (release binary, demo credentials) that share it:
#
#   node-1: ws://127.0.0.1:8780/ws   ingest 127.0.0.1:8781   admin http://127.0.0.1:8782
#   node-2: ws://127.0.0.1:9780/ws   ingest 127.0.0.1:9781   admin http://127.0.0.1:9782
#   node-3: ws://127.0.0.1:10780/ws  ingest 127.0.0.1:10781  admin http://127.0.0.1:10782
#
# Only node-1 runs the demo feed (herald --demo: ticks on demo.BTC-USD, ...):
# three demo feeds would interleave three unrelated random walks on the same
# topics. Nodes 2 and 3 get the same demo credentials through the
# environment, so one token and one API key work on every node, and a
# subscriber on node 3 receives what a feed on node 1 publishes.
#
# Environment (all optional):
#   BASE_PORT   node-1's WebSocket port; node N uses BASE_PORT + 1000*(N-1),
#               ingest +1, admin +2                            (default 8780)
#   NATS_PORT   nats-server's client port       (default: first free from 14222)
#   SHARDS      shards per node                                (default 1)
#   NO_BUILD=1  don't run cargo build --release --bin herald first
#   KEEP_LOGS=1 keep the logs and the NATS store when stopping
#   HERALD_BIN, NATS_BIN   the binaries to use
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERALD_BIN="${HERALD_BIN:-$ROOT/target/release/herald}"
NATS_BIN="${NATS_BIN:-$(command -v nats-server || echo /usr/sbin/nats-server)}"
BASE_PORT="${BASE_PORT:-8780}"
SHARDS="${SHARDS:-1}"
NODES=3

# herald --demo's credentials (src/demo.rs): public, for local use only.
SECRET="herald-demo-secret-not-for-production"
FEED_TOKEN="demo-feed-token"
API_KEY="demo-api-key"

log() { echo "[cluster-local] $*" >&2; }
die() { log "error: $*"; exit 1; }

# A TCP port no socket uses (listening or not), from $1 upwards.
free_port() {
    local p=$1
    while ss -Htan "sport = :$p" | grep -q .; do p=$((p + 1)); done
    echo "$p"
}
listening() { ss -Htln "sport = :$1" | grep -q .; }

command -v curl >/dev/null || die "needs curl"
command -v ss >/dev/null || die "needs ss (iproute2)"
[ -x "$NATS_BIN" ] || die "no nats-server (apt-get install nats-server, or set NATS_BIN)"
if [ "${NO_BUILD:-}" != 1 ]; then
    log "cargo build --release --bin herald"
    (cd "$ROOT" && cargo build --release --bin herald --quiet) || die "build failed"
fi
[ -x "$HERALD_BIN" ] || die "no $HERALD_BIN (cargo build --release)"

NATS_PORT="${NATS_PORT:-$(free_port 14222)}"
NATS_HTTP="$(free_port $((NATS_PORT + 4000)))"
for i in $(seq 1 $NODES); do
    base=$((BASE_PORT + 1000 * (i - 1)))
    for p in $base $((base + 1)) $((base + 2)); do
        listening "$p" && die "port $p is in use (set BASE_PORT)"
    done
done
listening "$NATS_PORT" && die "port $NATS_PORT is in use (set NATS_PORT)"

WORK="$(mktemp -d -t herald-cluster.XXXXXX)"
PIDS=()      # herald nodes, in order
NATS_PID=""
STOPPING=""

# Stops the nodes first (SIGTERM: they drain and exit 0), then NATS.
cleanup() {
    local rc=$?
    [ -n "$STOPPING" ] && return
    STOPPING=1
    trap - INT TERM
    log "stopping"
    local pid i
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for i in "${!PIDS[@]}"; do
        pid=${PIDS[$i]}
        # drain_ms is 2 s below; give it 10.
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null && log "node-$((i + 1)) did not stop in time: killed"
        local st=0
        wait "$pid" 2>/dev/null || st=$?
        log "node-$((i + 1)) exited with status $st"
    done
    if [ -n "$NATS_PID" ]; then
        kill -TERM "$NATS_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$NATS_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$NATS_PID" 2>/dev/null || true
        wait "$NATS_PID" 2>/dev/null || true
        log "nats-server stopped"
    fi
    # 130/143: stopped by Ctrl-C / SIGTERM, the normal end.
    if [ "${KEEP_LOGS:-}" = 1 ] || { [ "$rc" -ne 0 ] && [ "$rc" -ne 130 ] && [ "$rc" -ne 143 ]; }; then
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- NATS ----------------------------------------------------------------
"$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_HTTP" -js -sd "$WORK/nats" \
    >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$NATS_HTTP/healthz?js-enabled-only=true" >/dev/null 2>&1 && break
    kill -0 "$NATS_PID" 2>/dev/null || { tail -20 "$WORK/nats.log" >&2; die "nats-server exited"; }
    sleep 0.1
done
curl -sf "http://127.0.0.1:$NATS_HTTP/healthz?js-enabled-only=true" >/dev/null ||
    { tail -20 "$WORK/nats.log" >&2; die "nats-server did not come up"; }
log "nats-server (JetStream) on 127.0.0.1:$NATS_PORT, store $WORK/nats"

# ---- herald nodes --------------------------------------------------------
for i in $(seq 1 $NODES); do
    base=$((BASE_PORT + 1000 * (i - 1)))
    demo=()
    [ "$i" = 1 ] && demo=(--demo)
    env HERALD_LISTEN__WS="127.0.0.1:$base" \
        HERALD_LISTEN__INGEST="127.0.0.1:$((base + 1))" \
        HERALD_LISTEN__ADMIN="127.0.0.1:$((base + 2))" \
        HERALD_AUTH__HS256_SECRET="$SECRET" \
        HERALD_INGEST__TOKENS="[\"$FEED_TOKEN\"]" \
        HERALD_API__KEYS="[\"$API_KEY\"]" \
        HERALD_SHARDS__COUNT="$SHARDS" \
        HERALD_TIMEOUTS__DRAIN_MS=2000 \
        HERALD_CLUSTER__NATS_URL="nats://127.0.0.1:$NATS_PORT" \
        HERALD_CLUSTER__NODE_ID="node-$i" \
        HERALD_LOG__FORMAT=text NO_COLOR=1 \
        "$HERALD_BIN" "${demo[@]}" >"$WORK/node-$i.log" 2>&1 &
    PIDS+=($!)
done
for i in $(seq 1 $NODES); do
    admin="127.0.0.1:$((BASE_PORT + 1000 * (i - 1) + 2))"
    for _ in $(seq 300); do
        curl -sf "http://$admin/readyz" >/dev/null 2>&1 && break
        kill -0 "${PIDS[$((i - 1))]}" 2>/dev/null ||
            { tail -20 "$WORK/node-$i.log" >&2; die "node-$i exited"; }
        sleep 0.1
    done
    curl -sf "http://$admin/readyz" >/dev/null ||
        { tail -20 "$WORK/node-$i.log" >&2; die "node-$i is not ready after 30 s"; }
done
log "3 nodes ready"

ws() { echo "ws://127.0.0.1:$((BASE_PORT + 1000 * ($1 - 1)))/ws"; }
admin() { echo "http://127.0.0.1:$((BASE_PORT + 1000 * ($1 - 1) + 2))"; }
ingest() { echo "127.0.0.1:$((BASE_PORT + 1000 * ($1 - 1) + 1))"; }

cat <<EOF

herald cluster: 3 nodes on nats://127.0.0.1:$NATS_PORT (stream HERALD_herald)

  node-1  $(ws 1)   ingest $(ingest 1)   admin $(admin 1)   (runs the demo feed)
  node-2  $(ws 2)   ingest $(ingest 2)   admin $(admin 2)
  node-3  $(ws 3)  ingest $(ingest 3)  admin $(admin 3)

Any node takes publications for every subscriber, and all agree on seqs.

  watch on node-2 what node-1's demo feed publishes:
    cargo run --release --example watch -- --url $(ws 2) --secret $SECRET demo.BTC-USD cluster.hello
  publish through node-3:
    curl -X POST -H 'Authorization: Bearer $API_KEY' --data-binary 'hi' $(admin 3)/api/publish/cluster.hello
  stats and metrics of a node:
    curl -H 'Authorization: Bearer $API_KEY' $(admin 1)/api/stats
    curl -s $(admin 1)/metrics | grep herald_broker
  NATS: http://127.0.0.1:$NATS_HTTP/jsz?streams=true
  logs: $WORK/{nats,node-1,node-2,node-3}.log

EOF

# One publication through node-1 and one through node-3 to the same topic:
# the second continues the first one's sequence.
for i in 1 3; do
    reply="$(curl -s -X POST -H "Authorization: Bearer $API_KEY" \
        --data-binary "hello from node-$i" "$(admin $i)/api/publish/cluster.hello")"
    echo "published 'hello from node-$i' to cluster.hello through node-$i: $reply"
done

echo
echo "running; Ctrl-C stops the nodes (they drain) and NATS"
# Until Ctrl-C, or until a process ends by itself (then stop the rest).
set +e
wait -n "${PIDS[@]}" "$NATS_PID"
st=$?
set -e
log "a process exited on its own (status $st); see the logs"
exit 1
