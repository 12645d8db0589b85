#!/usr/bin/env bash
# compare: herald, the box's own limit (examples/write_loop) and the peers
# (uws, bun, ws, nchan; those that don't start are skipped) on the same
# scenarios, with the same client (herald-load, raw mode for the others)
# and the same publisher: HTTP POST per message (herald: its operator API,
# --publish api; the others: POST /pub/<topic>).
#
# Per server, fresh: RSS per idle connection (CONNS, 1 subscription), the
# peak on one topic (CONNS subscribers, rate 0, sized to ~PEAK_S seconds
# after a probe), the peak on TOPICS topics x CONNS/TOPICS subscribers
# (TOPIC_MSGS at rate 0); both peaks (and the half-peak runs) from
# PUBLISHERS parallel HTTP publishers (one lets herald's API fall into
# lockstep with its fan-out, see the README), and the
# latency at FIXED_RATE msg/s on one topic (stamped with the scheduled
# send time: a server that holds the publisher up shows it as latency). Then herald and the best peer (highest
# one-topic peak) again, fresh, at half of herald's one-topic peak.
# herald's TCP-ingest peaks are measured too and reported apart (the peers
# have no ingest), with herald's write syscalls per delivery from /metrics.
#
# Prints a table of the measurements, a table of ratios herald / other,
# then one summary line. Reports: $OUT/<server>-<run>/report.html.
#
#   SERVERS="herald limit uws bun ws nchan" CONNS=10000 PAYLOAD=100 PEAK_S=5 \
#   TOPICS=1000 TOPIC_MSGS=30000 PUBLISHERS=4 FIXED_RATE=10 FIXED_SECS=5 HALF_SECS=5 \
#     loadtest/scenarios/compare.sh
#
# Takes ~4 minutes with every server (the only scenario over 2 minutes);
# SERVERS="herald uws" for a quick one (~1.5 min).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SERVERS=${SERVERS:-herald limit uws bun ws nchan}
CONNS=${CONNS:-10000}
PAYLOAD=${PAYLOAD:-100}
WORKERS=${WORKERS:-2}
SOURCE_IPS=${SOURCE_IPS:-4}
PEAK_S=${PEAK_S:-5}
PROBE_MSGS=${PROBE_MSGS:-100}
MAX_PEAK_MSGS=${MAX_PEAK_MSGS:-5000}
TOPICS=${TOPICS:-1000}
PUBLISHERS=${PUBLISHERS:-4}
TOPIC_MSGS=${TOPIC_MSGS:-30000}
INGEST_TOPIC_MSGS=${INGEST_TOPIC_MSGS:-100000}
FIXED_RATE=${FIXED_RATE:-10}
FIXED_SECS=${FIXED_SECS:-5}
HALF_SECS=${HALF_SECS:-5}
[ -z "${URL:-}" ] || die "compare.sh starts its own servers (unset URL)"
need_bins

# jnum FILE FILTER: a value, or "" when the run or the field is missing.
jnum() { [ -s "$1" ] && jq -r "($2) // empty" "$1" 2>/dev/null || true; }
# calc EXPR: awk arithmetic, "" if an operand is empty.
calc() { awk "BEGIN { printf \"%s\", ($1) }" 2>/dev/null || true; }
num() { # num VALUE DECIMALS: a table cell
    [ -n "$1" ] || { echo "-"; return; }
    if [ "${2:-0}" = 0 ]; then fmt_int "$1"; else printf "%.${2}f" "$1"; fi
}

declare -A PEAK1 PEAKT P99 P99OK CPU_PEAK CPU_FIXED RSS NOTE

# fan NAME ARGS...: one fanout run → $OUT/NAME.json (+ NAME/report.html).
fan() {
    local name=$1; shift
    "$HL_BIN" fanout "$@" --payload "$PAYLOAD" --workers "$WORKERS" --source-ips "$SOURCE_IPS" \
        --connect-rate 10000 --connect-timeout-s 20 --sample-ms 250 --json \
        --label "compare $name" --report "$OUT/$name" > "$OUT/$name.json" 2> "$OUT/$name.err" || true
    local f="$OUT/$name.json"
    log "$name: $(num "$(jnum "$f" .delivered_per_s)") delivered/s, $(jnum "$f" .delivered)/$(jnum "$f" .expected), published $(num "$(jnum "$f" .publish_per_s)")/s, p99 $(jnum "$f" .latency.p99_ms) ms, cpu $(num "$(jnum "$f" .server.cpu_s_per_1m_deliveries)" 3) s/1M$( [ -n "$(jnum "$f" .herald)" ] && echo ", $(num "$(jnum "$f" .herald.write_syscalls_per_delivery)" 4) syscalls/delivery")"
}

# peak NAME PROBE MAX ARGS...: a probe; while a run was shorter than
# PEAK_S/2 (at most twice more), again with as many messages as fill
# ~PEAK_S at the last run's rate (the first second is often slower).
peak() {
    local name=$1 probe=$2 max=$3; shift 3
    fan "$name" "$@" --msgs "$probe" --rate 0 --duration-s 90
    local f="$OUT/$name.json" ds rate per msgs=$probe try
    for try in 1 2; do
        ds=$(jnum "$f" .delivery_s); rate=$(jnum "$f" .delivered_per_s)
        per=$(jnum "$f" '.expected / .msgs')
        [ -n "$ds" ] && [ -n "$rate" ] && [ -n "$per" ] || return 0
        awk -v d="$ds" -v p="$PEAK_S" 'BEGIN { exit !(d < p / 2) }' || return 0
        [ "$msgs" -lt "$max" ] || return 0
        msgs=$(awk -v r="$rate" -v p="$PEAK_S" -v per="$per" -v lo="$msgs" -v hi="$max" \
            'BEGIN { m = int(r * p / per); if (m < 2 * lo) m = 2 * lo; if (m > hi) m = hi; print m }')
        mv "$f" "$OUT/$name-try$try.json"
        fan "$name" "$@" --msgs "$msgs" --rate 0 --duration-s 90
    done
}

idle() { # idle NAME PIDS TARGET-ARGS...
    local name=$1 pids=$2; shift 2
    "$HL_BIN" idle "$@" --conns "$CONNS" --workers "$WORKERS" --source-ips "$SOURCE_IPS" \
        --connect-rate 5000 --settle-s 2 --duration-s 60 --server-pid "$pids" --json \
        > "$OUT/$name-idle.json" 2> "$OUT/$name-idle.err" || true
    RSS[$name]=$(jnum "$OUT/$name-idle.json" .bytes_per_conn)
    log "$name idle: $(num "${RSS[$name]}") B per connection"
}

fixed_msgs=$(awk -v r="$FIXED_RATE" -v s="$FIXED_SECS" 'BEGIN { print int(r * s) }')

measure() { # measure SERVER: everything for one server, fresh
    local s=$1 t=() ing=()
    if [ "$s" = herald ]; then
        start_herald compare
        t=(--url "$WS_URL" --secret "$SECRET" --server-pid "$HERALD_PID" --herald-metrics "$METRICS")
        idle herald "$HERALD_PID" --url "$WS_URL" --secret "$SECRET"
        ing=("${t[@]}" --publish ingest --feed-token "$FEED_TOKEN" --ingest "$INGEST")
        t+=(--publish api --api "http://$ADMIN" --api-key "$API_KEY")
    else
        start_peer "$s" || { NOTE[$s]="did not start"; return 0; }
        t=(--raw-url "$PEER_URL" --server-pid "$PEER_PIDS")
        idle "$s" "$PEER_PIDS" --raw-url "$PEER_URL"
    fi
    peak "$s-peak1" "$PROBE_MSGS" "$MAX_PEAK_MSGS" "${t[@]}" --conns "$CONNS" --topics 1 \
        --publishers "$PUBLISHERS"
    fan "$s-peakT" "${t[@]}" --conns "$CONNS" --topics "$TOPICS" --dist rooms \
        --publishers "$PUBLISHERS" --msgs "$TOPIC_MSGS" --rate 0 --duration-s 60
    fan "$s-fixed" "${t[@]}" --conns "$CONNS" --topics 1 --msgs "$fixed_msgs" --rate "$FIXED_RATE" \
        --duration-s $((FIXED_SECS + 40)) --drain-s 10
    if [ "$s" = herald ]; then
        peak herald-ingest1 "$PROBE_MSGS" 20000 "${ing[@]}" --conns "$CONNS" --topics 1
        fan herald-ingestT "${ing[@]}" --conns "$CONNS" --topics "$TOPICS" --dist rooms \
            --msgs "$INGEST_TOPIC_MSGS" --rate 0 --duration-s 60
        stop_herald
    else
        stop_peer
    fi
    PEAK1[$s]=$(jnum "$OUT/$s-peak1.json" .delivered_per_s)
    PEAKT[$s]=$(jnum "$OUT/$s-peakT.json" .delivered_per_s)
    CPU_PEAK[$s]=$(jnum "$OUT/$s-peak1.json" .server.cpu_s_per_1m_deliveries)
    CPU_FIXED[$s]=$(jnum "$OUT/$s-fixed.json" .server.cpu_s_per_1m_deliveries)
    P99[$s]=$(jnum "$OUT/$s-fixed.json" .latency.p99_ms)
    P99OK[$s]=$(jnum "$OUT/$s-fixed.json" 'if .complete then "" else "*" end')
    local inc=""
    for r in peak1 peakT fixed; do
        [ "$(jnum "$OUT/$s-$r.json" .complete)" = true ] || inc="$inc $r"
    done
    [ -z "$inc" ] || NOTE[$s]="incomplete:$inc"
}

ran=()
for s in $SERVERS; do
    log "== $s"
    measure "$s"
    [ "${NOTE[$s]:-}" = "did not start" ] || ran+=("$s")
done

# Half of herald's one-topic peak, herald vs the best peer (not limit).
best="" best_rate=0
for s in "${ran[@]}"; do
    case $s in herald|limit) continue ;; esac
    r=${PEAK1[$s]:-0}
    if awk -v a="$r" -v b="$best_rate" 'BEGIN { exit !(a > b) }'; then best=$s; best_rate=$r; fi
done
half_line="half-peak comparison skipped (needs herald and a peer)"
if [ -n "${PEAK1[herald]:-}" ] && [ -n "$best" ]; then
    half=$(awk -v p="${PEAK1[herald]}" -v c="$CONNS" 'BEGIN { printf "%.1f", p / 2 / c }')
    half_msgs=$(awk -v r="$half" -v s="$HALF_SECS" 'BEGIN { m = int(r * s); print (m < 1 ? 1 : m) }')
    log "== half of herald's peak: $half msg/s x $(fmt_int "$CONNS") subscribers"
    start_herald half
    fan herald-half --url "$WS_URL" --secret "$SECRET" --server-pid "$HERALD_PID" \
        --herald-metrics "$METRICS" --publish api --api "http://$ADMIN" --api-key "$API_KEY" \
        --conns "$CONNS" --topics 1 --msgs "$half_msgs" --rate "$half" --publishers "$PUBLISHERS" \
        --duration-s $((HALF_SECS + 40)) --drain-s 15
    stop_herald
    if start_peer "$best"; then
        fan "$best-half" --raw-url "$PEER_URL" --server-pid "$PEER_PIDS" --conns "$CONNS" --topics 1 \
            --msgs "$half_msgs" --rate "$half" --publishers "$PUBLISHERS" \
            --duration-s $((HALF_SECS + 40)) --drain-s 15
        stop_peer
    fi
    hf="$OUT/herald-half.json" bf="$OUT/$best-half.json"
    desc() { # desc FILE: "p99 X ms (complete)" or with the delivered share
        jq -r '"p99 \(.latency.p99_ms) ms, p50 \(.latency.p50_ms) ms" + (if .complete then "" else " (only \(.delivered) of \(.expected) delivered by the cap)" end)' "$1" 2>/dev/null || echo "no result"
    }
    half_line="at half of herald's peak ($half msg/s = $(fmt_int "$(calc "$half * $CONNS")") deliveries/s): herald $(desc "$hf"); best peer $best $(desc "$bf")"
fi

# Tables.
col() { printf "%-8s | %16s | %16s | %14s | %14s | %14s | %12s | %s\n" "$@"; }
echo
echo "== compare: $(fmt_int "$CONNS") subscribers, $PAYLOAD B payloads; same client (herald-load: $WORKERS workers, $SOURCE_IPS source IPs); HTTP POST publishers (herald: --publish api) =="
col server "peak 1 topic/s" "peak ${TOPICS}x$((CONNS / TOPICS)) /s" "p99 @${FIXED_RATE}msg/s" "CPU s/1M peak" "CPU s/1M @${FIXED_RATE}" "RSS B/conn" note
for s in $SERVERS; do
    col "$s" "$(num "${PEAK1[$s]:-}")" "$(num "${PEAKT[$s]:-}")" "$(num "${P99[$s]:-}" 1)${P99OK[$s]:-}" \
        "$(num "${CPU_PEAK[$s]:-}" 3)" "$(num "${CPU_FIXED[$s]:-}" 3)" "$(num "${RSS[$s]:-}")" "${NOTE[$s]:-}"
done
echo "(delivered msgs/s = deliveries / (last receive - first publish); * = not every delivery arrived)"
echo
echo "== ratios herald / other (msgs/s: > 1 = herald ahead; p99, CPU, RSS: < 1 = herald ahead) =="
ratio() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }' || echo "-"; }
rcol() { printf "%-8s | %14s | %16s | %12s | %14s | %14s | %10s\n" "$@"; }
rcol vs "peak 1 topic" "peak ${TOPICS} topics" "p99" "CPU peak" "CPU @${FIXED_RATE}" "RSS"
for s in "${ran[@]}"; do
    [ "$s" = herald ] && continue
    rcol "$s" "$(ratio "${PEAK1[herald]:-}" "${PEAK1[$s]:-}")" "$(ratio "${PEAKT[herald]:-}" "${PEAKT[$s]:-}")" \
        "$(ratio "${P99[herald]:-}" "${P99[$s]:-}")" "$(ratio "${CPU_PEAK[herald]:-}" "${CPU_PEAK[$s]:-}")" \
        "$(ratio "${CPU_FIXED[herald]:-}" "${CPU_FIXED[$s]:-}")" "$(ratio "${RSS[herald]:-}" "${RSS[$s]:-}")"
done
echo
ingest_line="herald ingest: not measured"
if [ -s "$OUT/herald-ingest1.json" ]; then
    sc() { jnum "$1" '.herald.write_syscalls_per_delivery * 10000 | round / 10000'; }
    ingest_line="herald via TCP ingest (apart: the peers have no ingest): peak 1 topic $(num "$(jnum "$OUT/herald-ingest1.json" .delivered_per_s)") delivered msgs/s ($(sc "$OUT/herald-ingest1.json") write syscalls/delivery, ingest took $(num "$(jnum "$OUT/herald-ingest1.json" .publish_per_s)") msgs/s); ${TOPICS} topics $(num "$(jnum "$OUT/herald-ingestT.json" .delivered_per_s)") delivered msgs/s ($(sc "$OUT/herald-ingestT.json") syscalls/delivery, ingest took $(num "$(jnum "$OUT/herald-ingestT.json" .publish_per_s)") msgs/s); via API: 1 topic $(sc "$OUT/herald-peak1.json"), ${TOPICS} topics $(sc "$OUT/herald-peakT.json") write syscalls/delivery at peak"
fi
echo "$ingest_line"
echo "$half_line"
echo
summary="compare: ${#ran[@]} servers ($(IFS=,; echo "${ran[*]}")), $(fmt_int "$CONNS") subs x $PAYLOAD B, HTTP publishers: herald peak 1 topic $(num "${PEAK1[herald]:-}")/s"
for s in "${ran[@]}"; do
    [ "$s" = herald ] && continue
    summary="$summary, $s $(num "${PEAK1[$s]:-}")/s (x$(ratio "${PEAK1[herald]:-}" "${PEAK1[$s]:-}"))"
done
echo "$summary; best peer: ${best:-none}; reports in $OUT"
