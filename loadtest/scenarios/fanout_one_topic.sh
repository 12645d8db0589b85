#!/usr/bin/env bash
# fanout_one_topic: 10k subscribers of one topic, 100 B payloads.
# 1. peak: MSGS messages through the TCP ingest as fast as it takes them;
# 2. latency: RATE msg/s for SECS seconds.
# Reports (HTML + JSON) land in $OUT/peak and $OUT/rate.
#
#   CONNS=10000 MSGS=2000 RATE=10 SECS=5 PAYLOAD=100 loadtest/scenarios/fanout_one_topic.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
CONNS=${CONNS:-10000}
MSGS=${MSGS:-2000}
RATE=${RATE:-10}
SECS=${SECS:-5}
PAYLOAD=${PAYLOAD:-100}
WORKERS=${WORKERS:-2}
SOURCE_IPS=${SOURCE_IPS:-4}
need_bins
start_herald one-topic
common=(--url "$WS_URL" --secret "$SECRET" --feed-token "$FEED_TOKEN" --ingest "$INGEST"
    --conns "$CONNS" --topics 1 --payload "$PAYLOAD" --workers "$WORKERS" --source-ips "$SOURCE_IPS"
    --connect-rate 10000 --herald-metrics "$METRICS" ${HERALD_PID:+--server-pid $HERALD_PID} --json)

"$HL_BIN" fanout "${common[@]}" --msgs "$MSGS" --rate 0 --duration-s 60 --sample-ms 250 \
    --label "fanout_one_topic peak" --report "$OUT/peak" > "$OUT/peak.json"
p="$OUT/peak.json"
log "peak: $(fmt_int "$(jget "$p" .delivered_per_s)") delivered/s, $(jget "$p" .delivered)/$(jget "$p" .expected) delivered, p99 $(jget "$p" .latency.p99_ms) ms (queueing), gaps $(jget "$p" .seq_gaps)"

msgs=$(awk -v r="$RATE" -v s="$SECS" 'BEGIN {print int(r * s)}')
"$HL_BIN" fanout "${common[@]}" --msgs "$msgs" --rate "$RATE" --duration-s $((SECS + 40)) --drain-s 10 \
    --label "fanout_one_topic at $RATE msg/s" --report "$OUT/rate" > "$OUT/rate.json"
r="$OUT/rate.json"
log "rate $RATE: p50 $(jget "$r" .latency.p50_ms) p99 $(jget "$r" .latency.p99_ms) max $(jget "$r" .latency.max_ms) ms, $(jget "$r" .delivered)/$(jget "$r" .expected)"

ok() { jq -r 'if .complete and .seq_gaps == 0 and .duplicates == 0 then "complete, in order" else "INCOMPLETE or out of order: \(.delivered)/\(.expected), gaps \(.seq_gaps), dups \(.duplicates)" end' "$1"; }
cpu=$(jq -r 'if .server then (.server.cpu_s_per_1m_deliveries * 1000 | round / 1000 | tostring) + " us server CPU" else "server CPU n/a" end' "$p")
sys=$(jq -r 'if .herald then (.herald.write_syscalls_per_delivery * 10000 | round / 10000 | tostring) else "n/a" end' "$p")
echo "fanout_one_topic: $(fmt_int "$CONNS") subscribers, 1 topic, $PAYLOAD B: peak $(fmt_int "$(jget "$p" .delivered_per_s)") delivered msgs/s via ingest ($(ok "$p"); $cpu and $sys write syscalls per delivery); at $RATE msg/s ($(fmt_int $((RATE * CONNS))) deliveries/s): p50 $(jget "$r" .latency.p50_ms) ms, p99 $(jget "$r" .latency.p99_ms) ms, max $(jget "$r" .latency.max_ms) ms ($(ok "$r"))"
