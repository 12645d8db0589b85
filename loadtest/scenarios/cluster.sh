#!/usr/bin/env bash
# cluster: herald's cluster mode (NATS JetStream) on this box: a nats-server
# with JetStream (file storage) and 3 herald nodes (1 shard each), fresh for
# every run, against one herald node on its own where a comparison is asked
# for. RUNS rounds (medians and every round reported):
#
#  (a) peak1     publications/s through the cluster on ONE topic from ONE
#                feed (TCP ingest on node 2), SUBS_PER_NODE subscriber(s)
#                on every node so every node applies every record, each in
#                its own worker process: paced at PEAK_RATE (300k/s), and
#                unpaced (--rate 0: what the cluster takes; the feed is not
#                held back by the subscribers, who may then be cut off with
#                4008). "Sustained" = PEAK_MSGS (1M) messages at that rate,
#                all delivered to every subscriber, no seq gap, no duplicate.
#                The nodes run with limits.max_outbox_bytes = PEAK_OUTBOX
#                (8 MiB; herald's default is 1 MiB) in (a) and (b): at 300k
#                msgs/s a subscriber takes ~36 MB/s, so 1 MiB is ~30 ms of
#                backlog, and the subscribers here share the 2 cores with 3
#                nodes, nats-server and the feed: stalls of 50-70 ms (max
#                latency seen) cut one of the 3 off with 4008 in about one
#                run of four (measured at 250k/s and 300k/s). Set
#                PEAK_OUTBOX=1048576 to measure with the default.
#  (b) peak1000  the same over 1000 topics (each subscriber on all 1000),
#                unpaced only: the feed's PING barriers (one per 8192
#                messages) hold it to what NATS stores, which is far below
#                (a) here (paced at 100k/s the subscribers were cut off).
#  (c) latency   LAT_CONNS (10k) subscribers of one topic spread over the 3
#                nodes, LAT_RATE (10) msg/s, LAT_MSGS (300) messages:
#                publish→deliver p50/p99 and the per-message "last receive"
#                (publish → the last of the 10k has it); the SAME load on one
#                herald without cluster.
#  (d) cpu       server CPU per delivery, CPU_CONNS (10k) subscribers, one
#                topic, CPU_RATE (20) msg/s for CPU_SECS (10) s: the 3 nodes
#                summed, without and with nats-server's CPU, vs one herald.
#  (e) follow    interest vs wildcard follow mode: a dense feed (1000 topics,
#                3000 subscribers, one per topic per node: every node follows
#                every topic) at DENSE_RATE (5000) msg/s for DENSE_SECS (10)
#                s (CPU per delivery, latency) and unpaced (DENSE_PEAK_MSGS
#                200k: publications/s); a sparse feed (1000 topics, each on
#                ONE node) at DENSE_RATE (CPU per delivery: what wildcard
#                nodes spend on records nobody of theirs wants).
#
# Every node runs without --demo (the demo credentials come from the
# environment, no demo feed) and with limits.client_msgs_per_s = 0 (a
# subscriber of 1000 topics sends 1000 SUBSCRIBEs at once).
#
#   RUNS=3 PHASES="peak1 peak1000 latency cpu follow" loadtest/scenarios/cluster.sh
#
# Knobs (defaults): RUNS 3, PHASES (all five), PAYLOAD 100, PEAK_MSGS
# 1000000, PEAK_RATE 300000, PEAK_OUTBOX 8388608, SUBS_PER_NODE 1, TOPICS_MSGS 1000000, LAT_CONNS 10000, LAT_RATE
# 10, LAT_MSGS 300, CPU_CONNS 10000, CPU_RATE 20, CPU_SECS 10, DENSE_RATE
# 5000, DENSE_SECS 10, DENSE_PEAK_MSGS 200000, STORAGE file, SHARDS 1 (per
# cluster node), SINGLE_SHARDS 2 (the single node: one per core, herald's
# default here), WORKERS 2, SOURCE_IPS 4, DEADLINE_S 2700 (the whole
# script; phases not started by then are skipped, a hard timeout 120 s
# later stops everything); TABLE_ONLY=1 OUT=<an earlier run's directory>
# prints the table again from its JSON files, running nothing. Results: $OUT/<phase>-<what>-r<round>.json,
# each node's herald_broker_* counters after each run
# ($OUT/<...>.metrics), the command lines ($OUT/commands.txt), the table
# ($OUT/table.txt).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DEADLINE_S=${DEADLINE_S:-2700}
bound_script $((DEADLINE_S + 120)) "$@"
T_START=$(date +%s)

RUNS=${RUNS:-3}
PHASES=${PHASES:-peak1 peak1000 latency cpu follow}
PAYLOAD=${PAYLOAD:-100}
PEAK_MSGS=${PEAK_MSGS:-1000000}
PEAK_RATE=${PEAK_RATE:-300000}
PEAK_OUTBOX=${PEAK_OUTBOX:-8388608}
SUBS_PER_NODE=${SUBS_PER_NODE:-1}
TOPICS_MSGS=${TOPICS_MSGS:-1000000}
LAT_CONNS=${LAT_CONNS:-10000}
LAT_RATE=${LAT_RATE:-10}
LAT_MSGS=${LAT_MSGS:-300}
CPU_CONNS=${CPU_CONNS:-10000}
CPU_RATE=${CPU_RATE:-20}
CPU_SECS=${CPU_SECS:-10}
DENSE_RATE=${DENSE_RATE:-5000}
DENSE_SECS=${DENSE_SECS:-10}
DENSE_PEAK_MSGS=${DENSE_PEAK_MSGS:-200000}
STORAGE=${STORAGE:-file}
SHARDS=${SHARDS:-1}
SINGLE_SHARDS=${SINGLE_SHARDS:-2}
WORKERS=${WORKERS:-2}
SOURCE_IPS=${SOURCE_IPS:-4}
NODES=3
need_bins
command -v curl > /dev/null || die "needs curl"
[ -z "${URL:-}" ] || die "cluster.sh starts its own nodes (unset URL)"
CMDS="$OUT/commands.txt"   # appended to: a later PHASES=... run into the same OUT adds its own

left() { echo $((T_START + DEADLINE_S - $(date +%s))); }

# A fresh nats-server and 3 nodes, following in mode $2 (extra VAR=VALUE
# settings may follow).
fresh_cluster() {
    local name=$1 mode=$2; shift 2
    start_nats "$name"
    start_nodes "$name" "$NODES" HERALD_CLUSTER__STORAGE="$STORAGE" HERALD_CLUSTER__FOLLOW="$mode" \
        HERALD_SHARDS__COUNT="$SHARDS" HERALD_LIMITS__CLIENT_MSGS_PER_S=0 "$@"
}
fresh_single() {
    NATS_URL=""
    start_nodes "$1" 1 HERALD_SHARDS__COUNT="$SINGLE_SHARDS" HERALD_LIMITS__CLIENT_MSGS_PER_S=0
}
stop_all() { stop_nodes; stop_nats; }

# hl NAME CAP_S ARGS...: herald-load fanout against the running nodes,
# JSON to $OUT/NAME.json, its command line to commands.txt, each node's
# broker counters to $OUT/NAME.metrics afterwards. Never fails the script
# (a failed run shows as incomplete in the table).
hl() {
    local name=$1 cap=$2 i; shift 2
    local cmd=("$HL_BIN" fanout --secret "$SECRET" --feed-token "$FEED_TOKEN" --api-key "$API_KEY"
        --payload "$PAYLOAD" --server-pid "$NODE_PIDS" ${NATS_PID:+--broker-pid "$NATS_PID"}
        --label "cluster $name" --json "$@")
    echo "$name: ${cmd[*]}" >> "$CMDS"
    log "$name: herald-load fanout $*"
    run_bounded "$cap" "$OUT/$name.json" "${cmd[@]}" || log "$name: herald-load exited with status $?"
    [ -s "$OUT/$name.json" ] || echo '{}' > "$OUT/$name.json"
    for i in "${!NODE_ADMIN[@]}"; do
        echo "# node $((i + 1))"
        curl -s "http://127.0.0.1:${NODE_ADMIN[$i]}/metrics" | grep -E '^herald_(broker|delivered_total|closes_total|dropped_total|write_syscalls_total)' | grep -v _bucket
    done > "$OUT/$name.metrics" 2>/dev/null || true
    log "$name: $(jq -r '"published \(.published) in \(.publish_s * 100 | round / 100) s = \(.publish_per_s | round)/s; delivered \(.delivered)/\(.expected) complete=\(.complete) gaps \(.seq_gaps) dups \(.duplicates) closes \(.closes); \(.delivered_per_s | round) deliveries/s; p50 \(.latency.p50_ms) p99 \(.latency.p99_ms) ms; cpu \(.server.cpu_s_per_1m_deliveries // "n/a") us/delivery (+broker \(.broker.cpu_s_per_1m_deliveries // "n/a"))"' "$OUT/$name.json" 2> /dev/null || echo "no summary")"
}

run_peak1() {
    local subs=$((NODES * SUBS_PER_NODE))
    fresh_cluster "peak1-r$1" interest HERALD_LIMITS__MAX_OUTBOX_BYTES="$PEAK_OUTBOX"
    hl "peak1-r$1" 180 --url "$NODE_URLS" --ingest "$(node_ingest 2)" --conns "$subs" \
        --topics 1 --msgs "$PEAK_MSGS" --rate "$PEAK_RATE" --workers "$subs" --duration-s 150
    stop_all
    fresh_cluster "peak1max-r$1" interest HERALD_LIMITS__MAX_OUTBOX_BYTES="$PEAK_OUTBOX"
    hl "peak1max-r$1" 180 --url "$NODE_URLS" --ingest "$(node_ingest 2)" --conns "$subs" \
        --topics 1 --msgs "$PEAK_MSGS" --rate 0 --workers "$subs" --duration-s 150
    stop_all
}

run_peak1000() {
    local subs=$((NODES * SUBS_PER_NODE))
    fresh_cluster "peak1000-r$1" interest HERALD_LIMITS__MAX_OUTBOX_BYTES="$PEAK_OUTBOX"
    hl "peak1000-r$1" 240 --url "$NODE_URLS" --ingest "$(node_ingest 2)" --conns "$subs" \
        --topics 1000 --subs-per-conn 1000 --msgs "$TOPICS_MSGS" --rate 0 --workers "$subs" --duration-s 210
    stop_all
}

# Same load on the cluster and on one node; the order alternates by round.
run_latency() {
    local common=(--conns "$LAT_CONNS" --topics 1 --msgs "$LAT_MSGS" --rate "$LAT_RATE"
        --workers "$WORKERS" --source-ips "$SOURCE_IPS" --connect-rate 10000
        --duration-s $((LAT_MSGS / LAT_RATE + 60)) --drain-s 10)
    local order=(cluster single)
    [ $(($1 % 2)) = 0 ] && order=(single cluster)
    for what in "${order[@]}"; do
        if [ "$what" = cluster ]; then
            fresh_cluster "latency-cluster-r$1" interest
            hl "latency-cluster-r$1" $((LAT_MSGS / LAT_RATE + 90)) --url "$NODE_URLS" --ingest "$(node_ingest 2)" "${common[@]}"
            stop_all
        else
            fresh_single "latency-single-r$1"
            hl "latency-single-r$1" $((LAT_MSGS / LAT_RATE + 90)) --url "$NODE_URLS" --ingest "$(node_ingest 1)" "${common[@]}"
            stop_all
        fi
    done
}

run_cpu() {
    local msgs=$((CPU_RATE * CPU_SECS))
    local common=(--conns "$CPU_CONNS" --topics 1 --msgs "$msgs" --rate "$CPU_RATE"
        --workers "$WORKERS" --source-ips "$SOURCE_IPS" --connect-rate 10000
        --duration-s $((CPU_SECS + 60)) --drain-s 10)
    local order=(cluster single)
    [ $(($1 % 2)) = 0 ] && order=(single cluster)
    for what in "${order[@]}"; do
        if [ "$what" = cluster ]; then
            fresh_cluster "cpu-cluster-r$1" interest
            hl "cpu-cluster-r$1" $((CPU_SECS + 90)) --url "$NODE_URLS" --ingest "$(node_ingest 2)" "${common[@]}"
        else
            fresh_single "cpu-single-r$1"
            hl "cpu-single-r$1" $((CPU_SECS + 90)) --url "$NODE_URLS" --ingest "$(node_ingest 1)" "${common[@]}"
        fi
        stop_all
    done
}

# Dense: conn i on node i mod 3 and topic i mod 1000 (rooms of 1): every
# node has one subscriber of each of the 1000 topics. Sparse: 1000
# connections, conn i on topic i: each topic has subscribers on one node.
run_follow() {
    local mode dense_msgs=$((DENSE_RATE * DENSE_SECS))
    local modes=(interest wildcard)
    [ $(($1 % 2)) = 0 ] && modes=(wildcard interest)
    for mode in "${modes[@]}"; do
        fresh_cluster "follow-$mode-r$1" "$mode"
        hl "follow-$mode-dense-r$1" $((DENSE_SECS + 90)) --url "$NODE_URLS" --ingest "$(node_ingest 2)" \
            --conns 3000 --topics 1000 --dist rooms --room-size 1 --msgs "$dense_msgs" --rate "$DENSE_RATE" \
            --workers 1 --duration-s $((DENSE_SECS + 60)) --drain-s 10
        stop_all
        fresh_cluster "follow-$mode-peak-r$1" "$mode"
        hl "follow-$mode-peak-r$1" 150 --url "$NODE_URLS" --ingest "$(node_ingest 2)" \
            --conns 3000 --topics 1000 --dist rooms --room-size 1 --msgs "$DENSE_PEAK_MSGS" --rate 0 \
            --workers 1 --duration-s 120
        stop_all
        fresh_cluster "follow-$mode-sparse-r$1" "$mode"
        hl "follow-$mode-sparse-r$1" $((DENSE_SECS + 90)) --url "$NODE_URLS" --ingest "$(node_ingest 2)" \
            --conns 1000 --topics 1000 --dist rooms --room-size 1 --msgs "$dense_msgs" --rate "$DENSE_RATE" \
            --workers 1 --duration-s $((DENSE_SECS + 60)) --drain-s 10
        stop_all
    done
}

[ "${TABLE_ONLY:-0}" = 1 ] && RUNS_TO_DO=0 || RUNS_TO_DO=$RUNS
log "results in $OUT; deadline ${DEADLINE_S} s"
for r in $(seq 1 "$RUNS_TO_DO"); do
    for ph in $PHASES; do
        if [ "$(left)" -le 0 ]; then
            log "deadline reached: $ph round $r and later skipped"
            continue
        fi
        log "== round $r: $ph"
        "run_$ph" "$r"
    done
done

# ---- the table ------------------------------------------------------------

# vals PATTERN FILTER: FILTER over every round's JSON, one line each.
vals() {
    local r f
    for r in $(seq 1 "$RUNS"); do
        f="$OUT/${1//@/$r}.json"
        if [ -s "$f" ]; then jq -r "$2 // \"null\"" "$f" 2> /dev/null || echo null; else echo null; fi
    done
}
# row LABEL PATTERN FILTER [DECIMALS]: "LABEL  median  (round values)".
row() {
    local v med
    v=$(vals "$2" "$3")
    med=$(echo "$v" | median)
    printf '%-66s %12s   rounds: %s\n' "$1" "$(fmtn "$med" "${4:-0}")" \
        "$(echo "$v" | while read -r x; do fmtn "$x" "${4:-0}"; done | paste -sd' ' -)"
}
fmtn() { # number with DECIMALS digits (0: thousands separators)
    [ "$1" = null ] && { echo "n/a"; return; }
    if [ "$2" = 0 ]; then fmt_int "$1"; else printf "%.${2}f\n" "$1"; fi
}
# ok PATTERN: each round's "complete, gaps, dups" verdict.
ok() {
    vals "$1" 'if .complete == null then "none" elif .complete and .seq_gaps == 0 and .duplicates == 0 then "ok" else "INCOMPLETE(\(.delivered)/\(.expected),gaps \(.seq_gaps),dups \(.duplicates),\(.closes|tostring))" end' | paste -sd' ' -
}
ratio() { # median A / median B
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "null" || b == "null" || b == 0) print "n/a"; else printf "%.2f", a / b }'
}
med() { vals "$1" "$2" | median; }
has() { [[ " $PHASES " == *" $1 "* ]]; }

{
    echo "== herald cluster mode: 3 nodes + nats-server $("$NATS_BIN" --version 2>/dev/null | awk '{print $NF}') (JetStream, $STORAGE storage) on $(nproc) cores; medians of $RUNS round(s); payload $PAYLOAD B"
    if has peak1; then
        echo "(a) 1 topic, 1 feed (ingest on node 2), $((NODES * SUBS_PER_NODE)) subscriber(s) ($SUBS_PER_NODE per node, each in its own worker), $(fmt_int "$PEAK_MSGS") msgs; max_outbox_bytes $PEAK_OUTBOX"
        row "    paced at $(fmt_int "$PEAK_RATE")/s: publications/s (published / publish_s)" "peak1-r@" .publish_per_s
        row "    paced: deliveries/s (deliveries / (last receive - first publish))" "peak1-r@" .delivered_per_s
        row "    paced: publish->deliver p99 ms" "peak1-r@" .latency.p99_ms 1
        echo "    paced: complete, no gap/dup:  $(ok "peak1-r@")"
        row "    unpaced (rate 0): publications/s" "peak1max-r@" .publish_per_s
        row "    unpaced: deliveries/s" "peak1max-r@" .delivered_per_s
        row "    unpaced: publish->deliver p99 ms (queueing)" "peak1max-r@" .latency.p99_ms 1
        echo "    unpaced: complete, no gap/dup:  $(ok "peak1max-r@")"
        p=$(med "peak1-r@" .publish_per_s)
        good=$(vals "peak1-r@" 'if .complete and .seq_gaps == 0 and .duplicates == 0 then 1 else 0 end' | grep -c '^1$' || true)
        echo "    target >= 250,000 publications/s sustained: $(awk -v p="$p" -v g="$good" -v n="$RUNS" 'BEGIN { print (p != "null" && p >= 250000 && g == n) ? "MET" : "MISSED" }') (paced median $(fmtn "$p" 0)/s; $good of $RUNS rounds complete without gap or duplicate)"
    fi
    if has peak1000; then
        echo "(b) 1000 topics, 1 feed (node 2, rate 0, a PING barrier per 8192 msgs), $((NODES * SUBS_PER_NODE)) subscriber(s) each on all 1000 topics, $(fmt_int "$TOPICS_MSGS") msgs; max_outbox_bytes $PEAK_OUTBOX"
        row "    publications/s" "peak1000-r@" .publish_per_s
        row "    deliveries/s" "peak1000-r@" .delivered_per_s
        row "    publish->deliver p99 ms" "peak1000-r@" .latency.p99_ms 1
        echo "    complete, no gap/dup:  $(ok "peak1000-r@")"
    fi
    if has latency; then
        echo "(c) $(fmt_int "$LAT_CONNS") subscribers, 1 topic, $LAT_RATE msg/s, $LAT_MSGS msgs (ingest on node 2 / the single node)"
        for w in cluster single; do
            row "    $w: publish->deliver p50 ms" "latency-$w-r@" .latency.p50_ms 2
            row "    $w: publish->deliver p99 ms" "latency-$w-r@" .latency.p99_ms 2
            row "    $w: last receive p50 ms (per message: its last subscriber)" "latency-$w-r@" .last_receive.latency.p50_ms 2
            row "    $w: last receive p99 ms" "latency-$w-r@" .last_receive.latency.p99_ms 2
            echo "    $w: complete, no gap/dup:  $(ok "latency-$w-r@")"
        done
    fi
    if has cpu; then
        echo "(d) server CPU per delivery: $(fmt_int "$CPU_CONNS") subscribers, 1 topic, $CPU_RATE msg/s x $CPU_SECS s ($(fmt_int $((CPU_CONNS * CPU_RATE))) deliveries/s)"
        row "    cluster: 3 herald nodes, us per delivery" "cpu-cluster-r@" .server.cpu_s_per_1m_deliveries 3
        row "    cluster: nats-server alone, us per delivery" "cpu-cluster-r@" .broker.cpu_s_per_1m_deliveries 3
        row "    cluster: 3 nodes + nats-server, us per delivery" "cpu-cluster-r@" .broker.cpu_s_per_1m_deliveries_with_broker 3
        row "    single node: us per delivery" "cpu-single-r@" .server.cpu_s_per_1m_deliveries 3
        row "    cluster: publish->deliver p99 ms" "cpu-cluster-r@" .latency.p99_ms 2
        row "    single node: publish->deliver p99 ms" "cpu-single-r@" .latency.p99_ms 2
        c=$(med "cpu-cluster-r@" .server.cpu_s_per_1m_deliveries)
        cb=$(med "cpu-cluster-r@" .broker.cpu_s_per_1m_deliveries_with_broker)
        s=$(med "cpu-single-r@" .server.cpu_s_per_1m_deliveries)
        echo "    cluster / single: $(ratio "$c" "$s")x without nats-server, $(ratio "$cb" "$s")x with it (target <= 1.2x: $(awk -v a="$c" -v b="$s" 'BEGIN { if (a == "null" || b == "null" || b == 0) print "n/a"; else print (a / b <= 1.2) ? "MET" : "MISSED" }') without, $(awk -v a="$cb" -v b="$s" 'BEGIN { if (a == "null" || b == "null" || b == 0) print "n/a"; else print (a / b <= 1.2) ? "MET" : "MISSED" }') with nats-server)"
        echo "    complete: cluster $(ok "cpu-cluster-r@"); single $(ok "cpu-single-r@")"
    fi
    if has follow; then
        echo "(e) follow mode: 1000 topics, ingest on node 2; dense = 3000 subscribers, one per topic per node; sparse = 1000, each topic on one node"
        for mode in interest wildcard; do
            row "    $mode: dense $DENSE_RATE msg/s: herald us per delivery" "follow-$mode-dense-r@" .server.cpu_s_per_1m_deliveries 2
            row "    $mode: dense $DENSE_RATE msg/s: + nats-server, us per delivery" "follow-$mode-dense-r@" .broker.cpu_s_per_1m_deliveries_with_broker 2
            row "    $mode: dense $DENSE_RATE msg/s: p50 ms" "follow-$mode-dense-r@" .latency.p50_ms 2
            row "    $mode: dense $DENSE_RATE msg/s: p99 ms" "follow-$mode-dense-r@" .latency.p99_ms 2
            row "    $mode: dense unpaced: publications/s" "follow-$mode-peak-r@" .publish_per_s
            row "    $mode: sparse $DENSE_RATE msg/s: herald us per delivery" "follow-$mode-sparse-r@" .server.cpu_s_per_1m_deliveries 2
            row "    $mode: sparse $DENSE_RATE msg/s: + nats-server, us per delivery" "follow-$mode-sparse-r@" .broker.cpu_s_per_1m_deliveries_with_broker 2
            row "    $mode: sparse $DENSE_RATE msg/s: p99 ms" "follow-$mode-sparse-r@" .latency.p99_ms 2
            echo "    $mode: complete: dense $(ok "follow-$mode-dense-r@"); unpaced $(ok "follow-$mode-peak-r@"); sparse $(ok "follow-$mode-sparse-r@")"
        done
    fi
    echo "command lines (round 1; ports differ per run): $CMDS"
    grep -- '-r1: ' "$CMDS" | tac | awk -F': ' '!seen[$1]++' | tac | sed 's/^/    /'
} | tee "$OUT/table.txt"
echo "cluster: results above and in $OUT/table.txt (JSON per run in $OUT)"
