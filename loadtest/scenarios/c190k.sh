#!/usr/bin/env bash
# c190k: CONNS (190,000) concurrent subscribers on this box: a nats-server
# (JetStream, file storage) and NODES (11) herald nodes in cluster mode,
# each below the 20,000 open files a process may hold here (190k / 11 =
# 17,273 connections per node); herald-load with WORKERS worker processes
# (each < 19,000 connections) binding SOURCE_IPS source addresses, opening
# the connections at CONNECT_RATE/s; all subscribe to one topic, then one
# feed (ingest on node 1) publishes MSGS (20) broadcasts at RATE (1)/s.
#
# Reports: connect time (total, connections/s, per connection p50/p99),
# herald RSS per connection over all nodes (sum of the nodes' VmRSS growth /
# connections), the kernel's share (growth of Slab + TCP socket buffer
# pages from /proc/meminfo and /proc/net/sockstat, per connection: both ends
# of a loopback connection live on this box), MemAvailable's drop per
# connection (everything: nodes, workers, kernel), the time until the last
# of the subscribers has each broadcast (p50/p99/max over the broadcasts of
# the per-broadcast "last receive"), deliveries/s (over the run, and one
# broadcast's subscribers / its median last receive), completeness and order.
#
#   loadtest/scenarios/c190k.sh                    # full size
#   CONNS=60000 NODES=4 loadtest/scenarios/c190k.sh
#   loadtest/scenarios/c190k.sh --apply-sysctl     # raise what is too small
#
# System settings are checked first (net.ipv4.ip_local_port_range decides
# how many source addresses are needed; fs.file-max, fs.nr_open,
# net.core.somaxconn, net.netfilter.nf_conntrack_max, free memory): what is
# too small is printed with the command that fixes it, and the run stops,
# unless --apply-sysctl is given: then the script applies exactly those
# `sysctl -w` changes (printed; they last until reboot, nothing is
# written to /etc) and goes on. The open-files limit is not a sysctl: each
# process must stay under `ulimit -n` (checked; the run is sized for it).
#
# Knobs (defaults): CONNS 190000, NODES 11, SHARDS 1 (per node), WORKERS
# ⌈CONNS / 16000⌉, SOURCE_IPS (computed: at least 4, enough that no
# (source, node) pair needs more than 80% of the ephemeral ports),
# CONNECT_RATE 5000, MSGS 20, RATE 1, PAYLOAD 100, STORAGE file,
# DEADLINE_S 900 (hard timeout on the whole script; herald-load gets its
# own cap within it). Results: $OUT/c190k.json (herald-load's summary),
# $OUT/kmem.tsv (memory samples, 1/s), $OUT/metrics-n*.txt,
# $OUT/summary.txt.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
APPLY_SYSCTL=0
for arg in "$@"; do
    case $arg in
        --apply-sysctl) APPLY_SYSCTL=1 ;;
        *) die "unknown argument $arg (only --apply-sysctl)" ;;
    esac
done
DEADLINE_S=${DEADLINE_S:-900}
bound_script "$DEADLINE_S" "$@"
T_START=$(date +%s)

CONNS=${CONNS:-190000}
NODES=${NODES:-11}
SHARDS=${SHARDS:-1}
WORKERS=${WORKERS:-$(((CONNS + 15999) / 16000))}
CONNECT_RATE=${CONNECT_RATE:-5000}
MSGS=${MSGS:-20}
RATE=${RATE:-0.25}
PAYLOAD=${PAYLOAD:-100}
STORAGE=${STORAGE:-file}
need_bins
command -v curl > /dev/null || die "needs curl"
[ -z "${URL:-}" ] || die "c190k.sh starts its own nodes (unset URL)"

# ---- sizing and system settings -------------------------------------------
per_node=$(((CONNS + NODES - 1) / NODES))
per_worker=$(((CONNS + WORKERS - 1) / WORKERS))
nofile=$(ulimit -n)
read -r port_lo port_hi < /proc/sys/net/ipv4/ip_local_port_range
ports=$((port_hi - port_lo + 1))
# (source, node) pairs: each needs per_node / SOURCE_IPS ports of the range
# (IP_BIND_ADDRESS_NO_PORT: ports are per 4-tuple).
need_sips=$(((per_node * 10 + ports * 8 - 1) / (ports * 8)))
SOURCE_IPS=${SOURCE_IPS:-$((need_sips > 4 ? need_sips : 4))}
per_pair=$(((per_node + SOURCE_IPS - 1) / SOURCE_IPS))
log "sizing: $CONNS connections = $NODES nodes x ~$per_node, $WORKERS workers x ~$per_worker, $SOURCE_IPS source addresses (~$per_pair connections per (source, node) pair; $ports ephemeral ports $port_lo-$port_hi); open files per process: $nofile"
[ "$per_node" -le $((nofile - 500)) ] || die "$per_node connections per node need more than ulimit -n ($nofile) - 500 open files: raise NODES"
[ "$per_worker" -le 19000 ] && [ "$per_worker" -le $((nofile - 500)) ] || die "$per_worker connections per worker: raise WORKERS"
[ "$per_pair" -le $((ports * 9 / 10)) ] || die "$per_pair connections per (source address, node) with $ports ephemeral ports: raise SOURCE_IPS"

fixes=()
check_min() { # check_min KEY MIN WHY
    local v
    v=$(sysctl -n "$1" 2> /dev/null) || { log "sysctl $1: not present (skipped)"; return 0; }
    if [ "$v" -lt "$2" ]; then
        log "sysctl $1 = $v is below $2 ($3)"
        fixes+=("$1=$2")
    else
        log "sysctl $1 = $v (>= $2: ok)"
    fi
}
check_min fs.file-max $((CONNS * 2 + 100000)) "both ends of every connection are open files on this box"
check_min fs.nr_open $((per_node + 1000)) "a node's descriptors"
check_min net.core.somaxconn 1024 "accept backlog of each node at $CONNECT_RATE connections/s"
check_min net.ipv4.tcp_max_syn_backlog 1024 "half-open connections while connecting"
if [ -e /proc/sys/net/netfilter/nf_conntrack_max ]; then
    ct_now=$(cat /proc/sys/net/netfilter/nf_conntrack_count 2> /dev/null || echo 0)
    check_min net.netfilter.nf_conntrack_max $((CONNS + ct_now + 20000)) "if connection tracking follows loopback, one entry per connection"
fi
mem_avail_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
need_kb=$((CONNS * 16))
if [ "$mem_avail_kb" -lt "$need_kb" ]; then
    die "MemAvailable $((mem_avail_kb / 1024)) MiB < ~$((need_kb / 1024)) MiB estimated (16 KiB per connection, both ends and both processes): run smaller (CONNS=...)"
fi
log "MemAvailable $((mem_avail_kb / 1024)) MiB (estimate needed ~$((need_kb / 1024)) MiB)"
if [ "${#fixes[@]}" -gt 0 ]; then
    if [ "$APPLY_SYSCTL" = 1 ]; then
        for f in "${fixes[@]}"; do
            log "applying (--apply-sysctl): sysctl -w $f"
            sysctl -w "$f" > /dev/null || die "sysctl -w $f failed"
        done
    else
        log "too small for this run; change with (as root; until reboot):"
        for f in "${fixes[@]}"; do log "    sysctl -w $f"; done
        die "or run with --apply-sysctl to let this script apply exactly those"
    fi
fi

# ---- memory sampler ------------------------------------------------------
# One line a second: time, Slab kB, SUnreclaim kB, MemAvailable kB, TCP
# sockets in use, TCP buffer pages (sockstat "mem").
ksample() {
    local slab sunr avail inuse mem
    read -r slab sunr avail < <(awk '/^Slab:/ {s = $2} /^SUnreclaim:/ {u = $2} /^MemAvailable:/ {a = $2} END {print s, u, a}' /proc/meminfo)
    read -r inuse mem < <(awk '/^TCP:/ {for (i = 2; i < NF; i++) {if ($i == "inuse") n = $(i + 1); if ($i == "mem") m = $(i + 1)}; print n, m}' /proc/net/sockstat)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date +%s.%N)" "$slab" "$sunr" "$avail" "$inuse" "$mem"
}
start_sampler() {
    printf 'time\tslab_kb\tsunreclaim_kb\tmemavail_kb\ttcp_inuse\ttcp_mem_pages\n' > "$OUT/kmem.tsv"
    ( while [ ! -e "$OUT/.stop-sampler" ]; do ksample >> "$OUT/kmem.tsv"; sleep 1; done ) &
    SAMPLER_PID=$!
    STARTED+=("$SAMPLER_PID")
}
stop_sampler() {
    touch "$OUT/.stop-sampler"
    wait "$SAMPLER_PID" 2> /dev/null || true
    forget "$SAMPLER_PID"
    rm -f "$OUT/.stop-sampler"
}

# ---- run ------------------------------------------------------------------
# herald-load's cap: connecting, the broadcasts, 90 s to spare (rates may
# be fractional).
run_s=$(awk -v c="$CONNS" -v cr="$CONNECT_RATE" -v m="$MSGS" -v r="$RATE" \
    'BEGIN { if (cr <= 0 || r <= 0) { print -1; exit } printf "%d", c / cr + m / r + 91 }')
[ "$run_s" -gt 0 ] || die "CONNECT_RATE and RATE must be > 0"
budget=$((DEADLINE_S - ($(date +%s) - T_START) - 60))
[ "$run_s" -le "$budget" ] || die "the run needs ~$run_s s, only $budget s left of DEADLINE_S=$DEADLINE_S"
start_nats c190k
start_nodes c190k "$NODES" HERALD_CLUSTER__STORAGE="$STORAGE" HERALD_SHARDS__COUNT="$SHARDS"
log "nats-server $NATS_PID, $NODES nodes ready: $NODE_PIDS ($(($(date +%s) - T_START)) s)"
base=$(ksample)
start_sampler
cmd=("$HL_BIN" fanout --url "$NODE_URLS" --secret "$SECRET" --feed-token "$FEED_TOKEN"
    --ingest "$(node_ingest 1)" --conns "$CONNS" --topics 1 --msgs "$MSGS" --rate "$RATE"
    --payload "$PAYLOAD" --workers "$WORKERS" --source-ips "$SOURCE_IPS" --connect-rate "$CONNECT_RATE"
    --connect-timeout-s 30 --settle-ms 2000 --duration-s "$run_s" --drain-s 30
    --server-pid "$NODE_PIDS" --broker-pid "$NATS_PID" --label c190k --json)
echo "${cmd[*]}" > "$OUT/command.txt"
log "herald-load: ${cmd[*]}"
st=0
run_bounded $((run_s + 30)) "$OUT/c190k.json" "${cmd[@]}" || st=$?
stop_sampler
[ "$st" = 0 ] || log "herald-load exited with status $st"
for i in "${!NODE_ADMIN[@]}"; do
    curl -s "http://127.0.0.1:${NODE_ADMIN[$i]}/metrics" | grep -v _bucket > "$OUT/metrics-n$((i + 1)).txt" || true
done
stop_nodes
stop_nats
[ -s "$OUT/c190k.json" ] || die "no summary from herald-load (see stderr above)"

# ---- summary --------------------------------------------------------------
f="$OUT/c190k.json"
connected=$(jget "$f" .connect.connected)
# The sample with the most TCP sockets in use: all connections up.
peak=$(tail -n +2 "$OUT/kmem.tsv" | sort -t$'\t' -k5,5n | tail -1)
read -r _ b_slab b_unr b_avail b_inuse b_mem <<< "$base"
read -r _ p_slab p_unr p_avail p_inuse p_mem <<< "$peak"
unr_b=$(awk -v u0="$b_unr" -v u1="$p_unr" -v n="$connected" 'BEGIN { if (n > 0) printf "%.0f", (u1 - u0) * 1024 / n; else print "n/a" }')
kernel_b=$(awk -v s0="$b_slab" -v s1="$p_slab" -v m0="$b_mem" -v m1="$p_mem" -v n="$connected" \
    'BEGIN { if (n > 0) printf "%.0f", ((s1 - s0) * 1024 + (m1 - m0) * 4096) / n; else print "n/a" }')
avail_b=$(awk -v a0="$b_avail" -v a1="$p_avail" -v n="$connected" 'BEGIN { if (n > 0) printf "%.0f", (a0 - a1) * 1024 / n; else print "n/a" }')
{
    echo "== c190k: $(fmt_int "$CONNS") connections, $NODES herald nodes (cluster, $SHARDS shard(s) each) + nats-server ($STORAGE), $WORKERS herald-load workers, $SOURCE_IPS source addresses; $(nproc) cores"
    jq -r --arg kb "$kernel_b" --arg ub "$unr_b" --arg ab "$avail_b" --arg tcp "$b_inuse -> $p_inuse" '
      def r(x): (x * 100 | round) / 100;
      def n(x): (x | round | tostring) as $s | reduce range(0; $s | length) as $i (""; . + (if $i > 0 and (($s | length) - $i) % 3 == 0 then "," else "" end) + $s[$i:$i + 1]);
      "connected          \(n(.connect.connected)) / \(n(.connect.attempted)), failures \(.connect.failures | tostring)",
      "connect time       \(r(.connect.seconds)) s = \(n(.connect.per_s)) connections/s (paced at '"$CONNECT_RATE"'/s); per connection p50 \(.connect.latency.p50_ms) ms, p99 \(.connect.latency.p99_ms) ms, max \(.connect.latency.max_ms) ms",
      "herald RSS         \(n(.server.rss_after_connect // 0)) B over all nodes connected (\(n(.server.rss_before_connect // 0)) before) = \(n(.server.rss_per_conn // 0)) B per connection",
      "kernel             \($kb) B per connection (Slab + TCP buffer pages growth; both ends on this box), \($ub) B of it unreclaimable slab; TCP sockets in use \($tcp)",
      "MemAvailable drop  \($ab) B per connection (herald + herald-load + kernel; the kernel counts reclaimable slab as available)",
      "broadcasts         \(.published) / \(.msgs) at '"$RATE"'/s; delivered \(n(.delivered)) / \(n(.expected)) complete=\(.complete); seq gaps \(.seq_gaps), duplicates \(.duplicates); closes \(.closes | tostring)",
      "last receive       p50 \(.last_receive.latency.p50_ms // "n/a") ms, p99 \(.last_receive.latency.p99_ms // "n/a") ms, max \(.last_receive.latency.max_ms // "n/a") ms (per broadcast: publish -> the last subscriber has it); \(.last_receive.complete_msgs // 0) of \(.last_receive.msgs // 0) reached every subscriber",
      "latency            every delivery: p50 \(.latency.p50_ms) ms, p99 \(.latency.p99_ms) ms, max \(.latency.max_ms) ms",
      "deliveries/s       \(n(.delivered_per_s)) over the run (paced by the broadcasts); one broadcast: \(if (.last_receive.latency.p50_ms // 0) > 0 then n(.connect.connected / .last_receive.latency.p50_ms * 1000) else "n/a" end)/s (subscribers / median last receive); busiest 1 s: \(n(.delivered_per_s_peak_bucket))",
      "server CPU         \(r(.server.cpu_s // 0)) s over the publish phase = \(r(.server.cpu_s_per_1m_deliveries // 0)) us per delivery (nodes), nats-server \(r(.broker.cpu_s // 0)) s"
    ' "$f"
    echo "command            $(cat "$OUT/command.txt")"
} | tee "$OUT/summary.txt"
