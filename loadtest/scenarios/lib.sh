# Shared by the scenario scripts: binaries, free ports, starting and
# stopping herald, the peers and write_loop, cleanup. Sourced, not run.
#
# Environment (all optional):
#   HERALD_BIN      herald binary          (default: <repo>/target/release/herald)
#   HL_BIN          herald-load binary     (default: <repo>/target/release/herald-load)
#   WRITE_LOOP_BIN  write_loop example     (default: <repo>/target/release/examples/write_loop)
#   PEERS_DIR       installed peers        (default: /tmp/herald-peers)
#   OUT             where JSON summaries, HTML reports and logs go
#                   (default: <repo>/loadtest/reports/<scenario>-<time>)
#   NATS_BIN        nats-server            (default: nats-server on PATH, else /usr/sbin/nats-server)
#   URL             an already running herald (ws://host:port/ws): the
#                   scenario then starts none (set SECRET, FEED_TOKEN,
#                   INGEST, ADMIN to match it; server CPU/RSS need HERALD_PID)

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
HERALD_BIN="${HERALD_BIN:-$ROOT/target/release/herald}"
HL_BIN="${HL_BIN:-$ROOT/target/release/herald-load}"
WRITE_LOOP_BIN="${WRITE_LOOP_BIN:-$ROOT/target/release/examples/write_loop}"
PEERS_DIR="${PEERS_DIR:-/tmp/herald-peers}"
NATS_BIN="${NATS_BIN:-$(command -v nats-server || echo /usr/sbin/nats-server)}"
SCENARIO="$(basename "$0" .sh)"
OUT="${OUT:-$ROOT/loadtest/reports/$SCENARIO-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"

# herald --demo's credentials (override with an external URL's).
SECRET="${SECRET:-herald-demo-secret-not-for-production}"
FEED_TOKEN="${FEED_TOKEN:-demo-feed-token}"
API_KEY="${API_KEY:-demo-api-key}"

# PIDs this script started; all are stopped on exit.
STARTED=()

log() { echo "[$SCENARIO] $*" >&2; }
die() { log "error: $*"; exit 1; }

need_bins() {
    command -v jq > /dev/null || die "needs jq"
    [ -x "$HL_BIN" ] || die "no $HL_BIN: cargo build --release -p herald-load"
    if [ -z "${URL:-}" ]; then
        [ -x "$HERALD_BIN" ] || die "no $HERALD_BIN: cargo build --release -p herald"
    fi
}

# A TCP port no socket uses (listening or not: a client's local end in
# FIN_WAIT2 blocks a bind too), from $1 upwards. (Not `ss | grep -q`: with
# pipefail, grep leaving early makes a long ss listing die of SIGPIPE and
# the busiest port look free.)
free_port() {
    local p=$1
    # Not `ss | grep -q`: grep quits at the first line, ss then dies of
    # SIGPIPE and, under pipefail, a busy port would look free.
    while [ -n "$(ss -Htan "sport = :$p" | head -c1)" ]; do p=$((p + 1)); done
    echo "$p"
}

# Waits until something accepts on 127.0.0.1:$1 (at most $2 seconds).
wait_port() {
    local port=$1 limit=${2:-10} i=0
    while ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        i=$((i + 1))
        [ "$i" -le $((limit * 20)) ] || return 1
        sleep 0.05
    done
}

alive() { # running, not a zombie
    local st
    st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "${st:0:1}" != Z ]
}

stop_pid() {
    local pid=$1 i=0
    kill "$pid" 2>/dev/null || return 0
    while alive "$pid"; do
        i=$((i + 1))
        if [ "$i" -gt 100 ]; then kill -9 "$pid" 2>/dev/null || true; break; fi
        sleep 0.05
    done
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local i
    # Newest first (herald nodes before the nats-server they use), every
    # one told at once, then each waited for (killed after 5 s).
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do kill "${STARTED[$i]}" 2>/dev/null || true; done
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop_pid "${STARTED[$i]}"; done
    STARTED=()
    [ -z "${NATS_DIR:-}" ] || rm -rf "$NATS_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget() { # drop $1 from STARTED once stopped by hand
    local keep=() pid
    for pid in "${STARTED[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
    STARTED=("${keep[@]}")
}

# start_herald NAME [VAR=VALUE ...]: a fresh `herald --demo` on free ports.
# Sets WS_URL, INGEST, ADMIN, METRICS, HERALD_PID. Extra HERALD_* overrides
# may follow the name. HERALD_CONFIG=FILE adds `--config FILE` (the demo
# fills in only the credentials it leaves unset), HERALD_ARGS more
# arguments (e.g. --no-demo-feed).
start_herald() {
    local name=$1; shift
    if [ -n "${URL:-}" ]; then
        WS_URL=$URL
        INGEST=${INGEST:-127.0.0.1:8781}
        ADMIN=${ADMIN:-127.0.0.1:8782}
        METRICS="http://$ADMIN/metrics"
        HERALD_PID=${HERALD_PID:-}
        return 0
    fi
    local ws ing adm extra=()
    [ -z "${HERALD_ARGS:-}" ] || read -ra extra <<< "$HERALD_ARGS"
    ws=$(free_port 18780); ing=$(free_port $((ws + 1))); adm=$(free_port $((ing + 1)))
    env HERALD_LISTEN__WS="127.0.0.1:$ws" HERALD_LISTEN__INGEST="127.0.0.1:$ing" \
        HERALD_LISTEN__ADMIN="127.0.0.1:$adm" "$@" \
        "$HERALD_BIN" --demo ${HERALD_CONFIG:+--config "$HERALD_CONFIG"} "${extra[@]}" \
        > "$OUT/herald-$name.log" 2>&1 &
    HERALD_PID=$!
    STARTED+=("$HERALD_PID")
    wait_port "$adm" 10 || die "herald did not start (see $OUT/herald-$name.log)"
    wait_port "$ws" 5 || die "herald's ws port did not open"
    WS_URL="ws://127.0.0.1:$ws/ws"
    INGEST="127.0.0.1:$ing"
    ADMIN="127.0.0.1:$adm"
    METRICS="http://$ADMIN/metrics"
}

stop_herald() {
    [ -n "${URL:-}" ] && return 0
    stop_pid "$HERALD_PID"; forget "$HERALD_PID"
}

# start_peer NAME: uws | bun | ws | nchan | limit. Sets PEER_URL and
# PEER_PIDS (comma-separated, for --server-pid); returns 1 if it can't start.
start_peer() {
    local name=$1 port pid
    port=$(free_port 17100)
    PEER_URL="ws://127.0.0.1:$port"
    case $name in
        limit)
            [ -x "$WRITE_LOOP_BIN" ] || { log "limit: no $WRITE_LOOP_BIN (cargo build --release --example write_loop)"; return 1; }
            "$WRITE_LOOP_BIN" --listen "127.0.0.1:$port" --threads "${LIMIT_THREADS:-2}" \
                > "$OUT/peer-limit.log" 2>&1 &
            pid=$!
            ;;
        bun)
            [ -x "$PEERS_DIR/node_modules/.bin/bun" ] || { log "bun: not installed"; return 1; }
            pid=$(LOGDIR="$OUT" "$PEERS_DIR/bun/start.sh" "$port") || return 1
            ;;
        uws|ws|nchan)
            [ -x "$PEERS_DIR/$name/start.sh" ] || { log "$name: no $PEERS_DIR/$name/start.sh"; return 1; }
            if [ "$name" = nchan ]; then
                command -v nginx > /dev/null || { log "nchan: no nginx"; return 1; }
                export NCHAN_PREFIX="$OUT/nchan-$port"
            fi
            pid=$(LOGDIR="$OUT" "$PEERS_DIR/$name/start.sh" "$port") || return 1
            ;;
        *) log "unknown peer $name"; return 1 ;;
    esac
    STARTED+=("$pid")
    if ! wait_port "$port" 10; then
        log "$name did not start (see $OUT/peer-$name.log)"
        stop_pid "$pid"; forget "$pid"
        return 1
    fi
    PEER_MAIN_PID=$pid
    PEER_PIDS=$pid
    if [ "$name" = nchan ]; then
        # nginx: the master and its worker(s).
        local kids
        kids=$(pgrep -P "$pid" | paste -sd, -)
        [ -n "$kids" ] && PEER_PIDS="$pid,$kids"
    fi
}

stop_peer() {
    stop_pid "$PEER_MAIN_PID"; forget "$PEER_MAIN_PID"
}

# jq over a JSON summary file: jget FILE FILTER
jget() { jq -r "$2" "$1"; }

# fmt_int 1234567.8 → 1,234,568
fmt_int() {
    local n s=""
    n=$(printf "%.0f" "$1")
    while [ ${#n} -gt 3 ]; do s=",${n: -3}$s"; n=${n:0:${#n}-3}; done
    echo "$n$s"
}

# run_bounded SECS FILE CMD...: CMD with stdout to FILE under a hard
# timeout (SIGINT at SECS, SIGKILL 15 s later), in the background so that
# Ctrl-C reaches this script's trap at once (cleanup then stops it too).
# Returns CMD's status.
run_bounded() {
    local secs=$1 file=$2 pid st=0; shift 2
    timeout -s INT -k 15 "$secs" "$@" > "$file" &
    pid=$!
    STARTED+=("$pid")
    wait "$pid" || st=$?
    forget "$pid"
    return "$st"
}

# ---- cluster mode: nats-server (JetStream) and herald nodes ---------------

# start_nats NAME [ARGS...]: a fresh nats-server with JetStream on free
# ports (never 4222: the box's own), its store in a new directory under
# $OUT. Sets NATS_URL, NATS_PID, NATS_MON (monitoring http base), NATS_DIR.
start_nats() {
    local name=$1 port mon i; shift
    [ -x "$NATS_BIN" ] || die "no nats-server (set NATS_BIN)"
    port=$(free_port 24222); mon=$(free_port $((port + 1)))
    NATS_DIR=$(mktemp -d "$OUT/nats-store-XXXX")
    "$NATS_BIN" -a 127.0.0.1 -p "$port" -m "$mon" -js -sd "$NATS_DIR" "$@" \
        > "$OUT/nats-$name.log" 2>&1 &
    NATS_PID=$!
    STARTED+=("$NATS_PID")
    for i in $(seq 100); do
        curl -sf "http://127.0.0.1:$mon/healthz?js-enabled-only=true" > /dev/null 2>&1 && break
        alive "$NATS_PID" || die "nats-server exited (see $OUT/nats-$name.log)"
        sleep 0.1
    done
    curl -sf "http://127.0.0.1:$mon/healthz?js-enabled-only=true" > /dev/null ||
        die "nats-server is not healthy (see $OUT/nats-$name.log)"
    NATS_URL="nats://127.0.0.1:$port"
    NATS_MON="http://127.0.0.1:$mon"
}

stop_nats() {
    [ -n "${NATS_PID:-}" ] || return 0
    stop_pid "$NATS_PID"; forget "$NATS_PID"
    rm -rf "$NATS_DIR"
    NATS_PID=""; NATS_DIR=""; NATS_URL=""
}

# start_nodes NAME N [VAR=VALUE ...]: N herald nodes on free ports, in
# cluster mode on $NATS_URL when it is set (else N independent servers).
# No --demo: the demo's credentials come from the environment and no demo
# feed runs (it would publish on every node). Waits for /readyz on each.
# Sets NODE_PIDS (comma-separated), NODE_URLS / NODE_INGESTS / NODE_APIS
# (comma-separated lists for herald-load), NODE_ADMIN (array), and
# node_ws / node_ingest / node_admin I (1-based) print one node's.
NODE_WS=(); NODE_ING=(); NODE_ADMIN=(); NODE_PID_LIST=()
start_nodes() {
    local name=$1 n=$2 i ws ing adm port=18780 pid; shift 2
    NODE_WS=(); NODE_ING=(); NODE_ADMIN=(); NODE_PID_LIST=()
    for i in $(seq 1 "$n"); do
        ws=$(free_port $port); ing=$(free_port $((ws + 1))); adm=$(free_port $((ing + 1)))
        port=$((adm + 1))
        env HERALD_LISTEN__WS="127.0.0.1:$ws" HERALD_LISTEN__INGEST="127.0.0.1:$ing" \
            HERALD_LISTEN__ADMIN="127.0.0.1:$adm" \
            HERALD_AUTH__HS256_SECRET="$SECRET" HERALD_INGEST__TOKENS="[\"$FEED_TOKEN\"]" \
            HERALD_API__KEYS="[\"$API_KEY\"]" HERALD_TIMEOUTS__DRAIN_MS=2000 \
            ${NATS_URL:+HERALD_CLUSTER__NATS_URL=$NATS_URL HERALD_CLUSTER__NODE_ID=n$i} \
            "$@" "$HERALD_BIN" > "$OUT/herald-$name-n$i.log" 2>&1 &
        pid=$!
        STARTED+=("$pid")
        NODE_PID_LIST+=("$pid"); NODE_WS+=("$ws"); NODE_ING+=("$ing"); NODE_ADMIN+=("$adm")
    done
    for i in $(seq 0 $((n - 1))); do
        local t=0
        until curl -sf "http://127.0.0.1:${NODE_ADMIN[$i]}/readyz" > /dev/null 2>&1; do
            alive "${NODE_PID_LIST[$i]}" || die "node $((i + 1)) exited (see $OUT/herald-$name-n$((i + 1)).log)"
            t=$((t + 1)); [ "$t" -le 300 ] || die "node $((i + 1)) not ready after 30 s"
            sleep 0.1
        done
        wait_port "${NODE_WS[$i]}" 5 || die "node $((i + 1))'s ws port did not open"
    done
    NODE_PIDS=$(IFS=,; echo "${NODE_PID_LIST[*]}")
    NODE_URLS=$(for p in "${NODE_WS[@]}"; do echo "ws://127.0.0.1:$p/ws"; done | paste -sd, -)
    NODE_INGESTS=$(for p in "${NODE_ING[@]}"; do echo "127.0.0.1:$p"; done | paste -sd, -)
    NODE_APIS=$(for p in "${NODE_ADMIN[@]}"; do echo "http://127.0.0.1:$p"; done | paste -sd, -)
}
node_ws() { echo "ws://127.0.0.1:${NODE_WS[$(($1 - 1))]}/ws"; }
node_ingest() { echo "127.0.0.1:${NODE_ING[$(($1 - 1))]}"; }
node_admin() { echo "http://127.0.0.1:${NODE_ADMIN[$(($1 - 1))]}"; }

# Stops every node (all told at once), then waits.
stop_nodes() {
    local pid
    for pid in "${NODE_PID_LIST[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${NODE_PID_LIST[@]}"; do stop_pid "$pid"; forget "$pid"; done
    NODE_PID_LIST=(); NODE_PIDS=""
}

# median of the numbers on stdin (one a line; "null" and empty lines skipped)
median() {
    grep -v -e '^null$' -e '^$' | sort -g | awk '{a[NR] = $1} END {
        if (NR == 0) { print "null"; exit }
        if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# bound_script SECS ARGS...: (at the top of a script) runs the script again
# under a hard `timeout` of SECS (TERM, then KILL 30 s later) unless it
# already runs under one, so a stuck phase cannot hold the box: on
# expiry the script gets TERM and its EXIT trap
# stops what it started. Keeps $OUT.
bound_script() {
    local secs=$1; shift
    [ -z "${HL_BOUNDED:-}" ] || return 0
    export HL_BOUNDED=1 OUT
    trap - EXIT INT TERM
    exec timeout --foreground -s TERM -k 30 "$secs" bash "$0" "$@"
}
