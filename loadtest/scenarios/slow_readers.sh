#!/usr/bin/env bash
# slow_readers: one topic, a share of the clients read slowly (READ_BYTES
# per read, a DELAY_MS sleep after each, a small SO_RCVBUF). Two runs on
# the same herald: a baseline without slow readers, then with them. Checks
# that the fast clients' p99 stays put and counts the slow ones herald
# closed with 4008 (slow consumer). Slow readers drain at full speed once
# the publisher is done, so the run ends when they reach their close.
#
# A slow reader is only detected once the kernel's send buffer (autotuned
# up to net.ipv4.tcp_wmem's max, 4 MiB here) and herald's outbox
# (limits.max_outbox_bytes, 1 MiB) are full, so RATE x PAYLOAD sets how
# soon that happens: ~5 s at the defaults.
#
#   CONNS=500 FRACTION=0.05 RATE=250 PAYLOAD=4000 SECS=12 DELAY_MS=100 READ_BYTES=4096 \
#     loadtest/scenarios/slow_readers.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
CONNS=${CONNS:-500}
FRACTION=${FRACTION:-0.05}
RATE=${RATE:-250}
PAYLOAD=${PAYLOAD:-4000}
SECS=${SECS:-12}
DELAY_MS=${DELAY_MS:-100}
READ_BYTES=${READ_BYTES:-4096}
WORKERS=${WORKERS:-2}
SOURCE_IPS=${SOURCE_IPS:-4}
need_bins
start_herald slow
msgs=$(awk -v r="$RATE" -v s="$SECS" 'BEGIN {print int(r * s)}')
run() { # run NAME FRACTION
    "$HL_BIN" fanout --url "$WS_URL" --secret "$SECRET" --feed-token "$FEED_TOKEN" --ingest "$INGEST" \
        --conns "$CONNS" --topics 1 --msgs "$msgs" --rate "$RATE" --payload "$PAYLOAD" \
        --workers "$WORKERS" --source-ips "$SOURCE_IPS" --connect-rate 5000 \
        --slow-fraction "$2" --slow-read-delay-ms "$DELAY_MS" --slow-read-bytes "$READ_BYTES" \
        --duration-s $((SECS + 60)) --drain-s 30 --sample-ms 250 \
        --herald-metrics "$METRICS" ${HERALD_PID:+--server-pid $HERALD_PID} \
        --label "slow_readers $1" --report "$OUT/$1" --json > "$OUT/$1.json"
}
run baseline 0
b="$OUT/baseline.json"
log "baseline: p99 $(jget "$b" .latency.p99_ms) ms, $(jget "$b" .delivered)/$(jget "$b" .expected)"
run slow "$FRACTION"
s="$OUT/slow.json"
log "slow: fast p99 $(jget "$s" .latency.p99_ms) ms, fast $(jget "$s" .slow.fast_delivered)/$(jget "$s" .slow.fast_expected), slow ended: $(jget "$s" '.slow.closes | tojson'), herald: $(jget "$s" '.herald | tojson')"
slow_n=$(jget "$s" .slow.conns)
seen_4008=$(jget "$s" '.slow.closes.close_4008 // 0')
slow_closed=$(jget "$s" '[.slow.closes | to_entries[] | .value] | add // 0')
fast_closed=$(jget "$s" '[.closes | to_entries[] | .value] | add // 0')
verdict=$(awk -v a="$(jget "$b" .latency.p99_ms)" -v c="$(jget "$s" .latency.p99_ms)" \
    'BEGIN { r = (a > 0) ? c / a : 0; if (c <= a * 1.5 + 5) printf "unaffected: %.2fx, within 1.5x + 5 ms", r; else printf "AFFECTED: %.2fx", r }')
echo "slow_readers: $CONNS clients, 1 topic, $RATE msg/s x $PAYLOAD B for ${SECS}s; $slow_n slow ($FRACTION, $READ_BYTES B every $DELAY_MS ms): fast p99 $(jget "$s" .latency.p99_ms) ms vs $(jget "$b" .latency.p99_ms) ms without slow readers ($verdict; fast delivered $(jget "$s" .slow.fast_delivered)/$(jget "$s" .slow.fast_expected), fast closed $fast_closed); slow readers closed by herald: $slow_closed/$slow_n (herald counted $(jget "$s" '.herald.closes_4008 // "n/a"') x 4008; clients saw $(jget "$s" '.slow.closes | to_entries | map("\(.key) \(.value)") | join(", ")'); 4008 frames received: $seen_4008), $(jget "$s" '.herald.dropped_slow_consumer // "n/a"') frames dropped"
