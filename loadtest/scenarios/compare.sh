#!/usr/bin/env bash
# compare: herald, the box's own limit (examples/write_loop) and the peers
# (uws, bun, ws, nchan; those that don't start are skipped) on the same
# scenarios, with the same client (herald-load, raw mode for the others)
# and the same publisher: HTTP POST per message (herald: its operator API,
# --publish api; the others: POST /pub/<topic>).
#
# RUNS rounds; in each, every server fresh, one after the other: RSS per
# idle connection (CONNS, 1 subscription), the peak on one topic (CONNS
# subscribers, rate 0, sized to ~PEAK_S seconds after a probe), the peak on
# TOPICS topics x CONNS/TOPICS subscribers (TOPIC_MSGS at rate 0), the
# market-tick peak (MARKET_TOPICS symbols, each connection on one symbol
# drawn with Zipf popularity, ticks round-robin over the symbols,
# MARKET_MSGS at rate 0; one symbol per connection because the peers take
# one topic per socket), all from PUBLISHERS parallel HTTP publishers, and
# the latency at FIXED_RATE msg/s on one topic (stamped with the scheduled
# send time: a server that holds the publisher up shows it as latency).
# Then, RUNS times, herald and the best peer (highest median one-topic
# peak) fresh at half of herald's median one-topic peak.
# herald's TCP-ingest peaks are measured too and reported apart (the peers
# have no ingest), with herald's write syscalls per delivery from /metrics.
#
# Prints the medians over the runs, every run's peaks, a table of ratios
# herald / other (of medians), then one summary line.
# Reports: $OUT/<server>-<run>-<scenario>/report.html.
#
#   SERVERS="herald limit uws bun ws nchan" RUNS=3 CONNS=10000 PAYLOAD=100 PEAK_S=5 \
#   TOPICS=1000 TOPIC_MSGS=30000 MARKET_TOPICS=1000 MARKET_MSGS=30000 PUBLISHERS=4 \
#   FIXED_RATE=10 FIXED_SECS=5 HALF_SECS=5 loadtest/scenarios/compare.sh
#
# `base` in SERVERS is herald again from another binary, BASE_BIN (e.g. a
# build of the commit before a change to the hot path): measured exactly as
# herald, it gives the before/after ratios in one run, e.g.
#   SERVERS="herald base limit" BASE_BIN=/tmp/herald-before RUNS=3 loadtest/scenarios/compare.sh
#
# Takes ~5 minutes per round with every server (the only scenario over 2
# minutes); SERVERS="herald uws" RUNS=1 for a quick one (~1.5 min).
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
MARKET_TOPICS=${MARKET_TOPICS:-1000}
MARKET_MSGS=${MARKET_MSGS:-30000}
INGEST_TOPIC_MSGS=${INGEST_TOPIC_MSGS:-100000}
RUNS=${RUNS:-3}
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

declare -A NOTE

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
    log "$name idle: $(num "$(jnum "$OUT/$name-idle.json" .bytes_per_conn)") B per connection"
}

fixed_msgs=$(awk -v r="$FIXED_RATE" -v s="$FIXED_SECS" 'BEGIN { print int(r * s) }')

measure() { # measure SERVER RUN: everything for one server, fresh
    local s=$1 r=$2 t=() ing=()
    local n="$s-$r"
    if [ "$s" = herald ] || [ "$s" = base ]; then
        local bin=$HERALD_BIN
        [ "$s" = base ] && bin=${BASE_BIN:?SERVERS has base: set BASE_BIN to the other herald binary}
        HERALD_BIN=$bin start_herald "compare-$s-$r"
        t=(--url "$WS_URL" --secret "$SECRET" --server-pid "$HERALD_PID" --herald-metrics "$METRICS")
        idle "$n" "$HERALD_PID" --url "$WS_URL" --secret "$SECRET"
        ing=("${t[@]}" --publish ingest --feed-token "$FEED_TOKEN" --ingest "$INGEST")
        t+=(--publish api --api "http://$ADMIN" --api-key "$API_KEY")
    else
        start_peer "$s" || { NOTE[$s]="did not start"; return 0; }
        t=(--raw-url "$PEER_URL" --server-pid "$PEER_PIDS")
        idle "$n" "$PEER_PIDS" --raw-url "$PEER_URL"
    fi
    peak "$n-peak1" "$PROBE_MSGS" "$MAX_PEAK_MSGS" "${t[@]}" --conns "$CONNS" --topics 1 \
        --publishers "$PUBLISHERS"
    fan "$n-peakT" "${t[@]}" --conns "$CONNS" --topics "$TOPICS" --dist rooms \
        --publishers "$PUBLISHERS" --msgs "$TOPIC_MSGS" --rate 0 --duration-s 60
    fan "$n-market" "${t[@]}" --conns "$CONNS" --topics "$MARKET_TOPICS" --dist zipf \
        --publishers "$PUBLISHERS" --msgs "$MARKET_MSGS" --rate 0 --duration-s 60
    fan "$n-fixed" "${t[@]}" --conns "$CONNS" --topics 1 --msgs "$fixed_msgs" --rate "$FIXED_RATE" \
        --duration-s $((FIXED_SECS + 40)) --drain-s 10
    if [ "$s" = herald ] || [ "$s" = base ]; then
        peak "$n-ingest1" "$PROBE_MSGS" 20000 "${ing[@]}" --conns "$CONNS" --topics 1
        fan "$n-ingestT" "${ing[@]}" --conns "$CONNS" --topics "$TOPICS" --dist rooms \
            --msgs "$INGEST_TOPIC_MSGS" --rate 0 --duration-s 60
        fan "$n-ingestM" "${ing[@]}" --conns "$CONNS" --topics "$MARKET_TOPICS" --dist zipf \
            --msgs "$INGEST_TOPIC_MSGS" --rate 0 --duration-s 60
        stop_herald
    else
        stop_peer
    fi
    local inc=""
    for k in peak1 peakT market fixed; do
        [ "$(jnum "$OUT/$n-$k.json" .complete)" = true ] || inc="$inc $r:$k"
    done
    [ -z "$inc" ] || NOTE[$s]="${NOTE[$s]:-incomplete:}$inc"
}

# med SERVER KIND FILTER: the median of FILTER over the runs' KIND files
# ("" if none has it).
med() {
    local s=$1 k=$2 f=$3 r v vals=()
    for r in $(seq "$RUNS"); do
        v=$(jnum "$OUT/$s-$r-$k.json" "$f")
        [ -n "$v" ] && vals+=("$v")
    done
    [ ${#vals[@]} -gt 0 ] || return 0
    printf "%s\n" "${vals[@]}" | sort -g | awk '{ a[NR] = $1 } END {
        if (NR % 2) printf "%s", a[(NR + 1) / 2]; else printf "%s", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
# runs SERVER KIND FILTER: every run's value, "a / b / c" (integers).
runs() {
    local s=$1 k=$2 f=$3 r v out=""
    for r in $(seq "$RUNS"); do
        v=$(jnum "$OUT/$s-$r-$k.json" "$f")
        out="$out${out:+ / }$(num "$v")"
    done
    echo "$out"
}

ran=()
for r in $(seq "$RUNS"); do
    for s in $SERVERS; do
        [ "${NOTE[$s]:-}" = "did not start" ] && continue
        log "== run $r/$RUNS: $s"
        measure "$s" "$r"
    done
done
for s in $SERVERS; do
    [ "${NOTE[$s]:-}" = "did not start" ] || ran+=("$s")
done

declare -A PEAK1 PEAKT PEAKM P99 P99OK CPU_PEAK CPU_FIXED RSS
for s in "${ran[@]}"; do
    PEAK1[$s]=$(med "$s" peak1 .delivered_per_s)
    PEAKT[$s]=$(med "$s" peakT .delivered_per_s)
    PEAKM[$s]=$(med "$s" market .delivered_per_s)
    CPU_PEAK[$s]=$(med "$s" peak1 .server.cpu_s_per_1m_deliveries)
    CPU_FIXED[$s]=$(med "$s" fixed .server.cpu_s_per_1m_deliveries)
    P99[$s]=$(med "$s" fixed .latency.p99_ms)
    RSS[$s]=$(med "$s" idle .bytes_per_conn)
    P99OK[$s]=""
    for r in $(seq "$RUNS"); do
        [ "$(jnum "$OUT/$s-$r-fixed.json" .complete)" = true ] || P99OK[$s]="*"
    done
done

# Half of herald's one-topic peak, herald vs the best peer (not limit).
best="" best_rate=0
for s in "${ran[@]}"; do
    case $s in herald|base|limit) continue ;; esac
    v=${PEAK1[$s]:-0}
    if awk -v a="$v" -v b="$best_rate" 'BEGIN { exit !(a > b) }'; then best=$s; best_rate=$v; fi
done
half_line="half-peak comparison skipped (needs herald and a peer)"
if [ -n "${PEAK1[herald]:-}" ] && [ -n "$best" ]; then
    half=$(awk -v p="${PEAK1[herald]}" -v c="$CONNS" 'BEGIN { printf "%.1f", p / 2 / c }')
    half_msgs=$(awk -v r="$half" -v s="$HALF_SECS" 'BEGIN { m = int(r * s); print (m < 1 ? 1 : m) }')
    for r in $(seq "$RUNS"); do
        log "== run $r/$RUNS: half of herald's peak, $half msg/s x $(fmt_int "$CONNS") subscribers"
        start_herald "half-$r"
        fan "herald-$r-half" --url "$WS_URL" --secret "$SECRET" --server-pid "$HERALD_PID" \
            --herald-metrics "$METRICS" --publish api --api "http://$ADMIN" --api-key "$API_KEY" \
            --conns "$CONNS" --topics 1 --msgs "$half_msgs" --rate "$half" --publishers "$PUBLISHERS" \
            --duration-s $((HALF_SECS + 40)) --drain-s 15
        stop_herald
        if start_peer "$best"; then
            fan "$best-$r-half" --raw-url "$PEER_URL" --server-pid "$PEER_PIDS" --conns "$CONNS" \
                --topics 1 --msgs "$half_msgs" --rate "$half" --publishers "$PUBLISHERS" \
                --duration-s $((HALF_SECS + 40)) --drain-s 15
            stop_peer
        fi
    done
    desc() { # desc SERVER: median p99/p50 over the runs, and what did not arrive
        local inc="" r
        for r in $(seq "$RUNS"); do
            [ "$(jnum "$OUT/$1-$r-half.json" .complete)" = true ] ||
                inc="$inc${inc:+; }run $r: $(num "$(jnum "$OUT/$1-$r-half.json" .delivered)") of $(num "$(jnum "$OUT/$1-$r-half.json" .expected)") delivered by the cap"
        done
        echo "p99 $(num "$(med "$1" half .latency.p99_ms)" 1) ms, p50 $(num "$(med "$1" half .latency.p50_ms)" 1) ms (runs: p99 $(runs "$1" half .latency.p99_ms) ms)${inc:+ ($inc)}"
    }
    half_line="at half of herald's peak ($half msg/s = $(fmt_int "$(calc "$half * $CONNS")") deliveries/s), medians of $RUNS: herald $(desc herald); best peer $best $(desc "$best")"
fi

# Tables.
col() { printf "%-8s | %16s | %16s | %16s | %14s | %14s | %14s | %12s | %s\n" "$@"; }
echo
echo "== compare: $(fmt_int "$CONNS") subscribers, $PAYLOAD B payloads; same client (herald-load: $WORKERS workers, $SOURCE_IPS source IPs); $PUBLISHERS HTTP POST publishers (herald: --publish api); medians of $RUNS runs =="
col server "peak 1 topic/s" "peak ${TOPICS}x$((CONNS / TOPICS)) /s" "market ${MARKET_TOPICS} /s" "p99 @${FIXED_RATE}msg/s" "CPU s/1M peak" "CPU s/1M @${FIXED_RATE}" "RSS B/conn" note
for s in $SERVERS; do
    col "$s" "$(num "${PEAK1[$s]:-}")" "$(num "${PEAKT[$s]:-}")" "$(num "${PEAKM[$s]:-}")" \
        "$(num "${P99[$s]:-}" 1)${P99OK[$s]:-}" "$(num "${CPU_PEAK[$s]:-}" 3)" "$(num "${CPU_FIXED[$s]:-}" 3)" \
        "$(num "${RSS[$s]:-}")" "${NOTE[$s]:-}"
done
echo "(delivered msgs/s = deliveries / (last receive - first publish); * = not every delivery arrived in some run)"
echo
echo "== every run (delivered msgs/s) =="
for s in "${ran[@]}"; do
    echo "$s: 1 topic $(runs "$s" peak1 .delivered_per_s); ${TOPICS} topics $(runs "$s" peakT .delivered_per_s); market $(runs "$s" market .delivered_per_s)"
done
echo
echo "== ratios herald / other, of the medians (msgs/s: > 1 = herald ahead; p99, CPU, RSS: < 1 = herald ahead) =="
ratio() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }' || echo "-"; }
rcol() { printf "%-8s | %14s | %16s | %12s | %12s | %14s | %14s | %10s\n" "$@"; }
rcol vs "peak 1 topic" "peak ${TOPICS} topics" "market" "p99" "CPU peak" "CPU @${FIXED_RATE}" "RSS"
for s in "${ran[@]}"; do
    [ "$s" = herald ] && continue
    rcol "$s" "$(ratio "${PEAK1[herald]:-}" "${PEAK1[$s]:-}")" "$(ratio "${PEAKT[herald]:-}" "${PEAKT[$s]:-}")" \
        "$(ratio "${PEAKM[herald]:-}" "${PEAKM[$s]:-}")" "$(ratio "${P99[herald]:-}" "${P99[$s]:-}")" \
        "$(ratio "${CPU_PEAK[herald]:-}" "${CPU_PEAK[$s]:-}")" \
        "$(ratio "${CPU_FIXED[herald]:-}" "${CPU_FIXED[$s]:-}")" "$(ratio "${RSS[herald]:-}" "${RSS[$s]:-}")"
done
echo
ingest_line="herald ingest: not measured"
if [ -s "$OUT/herald-1-ingest1.json" ]; then
    sc() { num "$(med herald "$1" .herald.write_syscalls_per_delivery)" 4; }
    ing() { echo "$(num "$(med herald "$1" .delivered_per_s)") delivered msgs/s ($(sc "$1") write syscalls/delivery, ingest took $(num "$(med herald "$1" .publish_per_s)") msgs/s)"; }
    ingest_line="herald via TCP ingest (apart: the peers have no ingest), medians: 1 topic $(ing ingest1); ${TOPICS} topics $(ing ingestT); market $(ing ingestM); via API: write syscalls/delivery 1 topic $(sc peak1), ${TOPICS} topics $(sc peakT), market $(sc market)"
fi
echo "$ingest_line"
if [ -s "$OUT/base-1-ingest1.json" ]; then
    ingb() { echo "$(num "$(med base "$1" .delivered_per_s)") delivered msgs/s ($(num "$(med base "$1" .herald.write_syscalls_per_delivery)" 4) write syscalls/delivery)"; }
    echo "base via TCP ingest, medians: 1 topic $(ingb ingest1); ${TOPICS} topics $(ingb ingestT); market $(ingb ingestM)"
fi
echo "$half_line"
echo
summary="compare ($RUNS runs, medians): ${#ran[@]} servers ($(IFS=,; echo "${ran[*]}")), $(fmt_int "$CONNS") subs x $PAYLOAD B, HTTP publishers: herald 1 topic $(num "${PEAK1[herald]:-}")/s, ${TOPICS} topics $(num "${PEAKT[herald]:-}")/s, market $(num "${PEAKM[herald]:-}")/s"
for s in "${ran[@]}"; do
    [ "$s" = herald ] && continue
    summary="$summary; $s x$(ratio "${PEAK1[herald]:-}" "${PEAK1[$s]:-}") / x$(ratio "${PEAKT[herald]:-}" "${PEAKT[$s]:-}") / x$(ratio "${PEAKM[herald]:-}" "${PEAKM[$s]:-}")"
done
echo "$summary; best peer: ${best:-none}; reports in $OUT"
