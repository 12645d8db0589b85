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
# FIN_WAIT2 blocks a bind too), from $1 upwards.
free_port() {
    local p=$1
    while ss -Htan "sport = :$p" | grep -q . ; do p=$((p + 1)); done
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
    local pid
    for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
    STARTED=()
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
# may follow the name.
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
    local ws ing adm
    ws=$(free_port 18780); ing=$(free_port $((ws + 1))); adm=$(free_port $((ing + 1)))
    env HERALD_LISTEN__WS="127.0.0.1:$ws" HERALD_LISTEN__INGEST="127.0.0.1:$ing" \
        HERALD_LISTEN__ADMIN="127.0.0.1:$adm" "$@" \
        "$HERALD_BIN" --demo > "$OUT/herald-$name.log" 2>&1 &
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
