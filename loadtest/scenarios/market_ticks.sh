#!/usr/bin/env bash
# market_ticks: 1000 symbols, each client subscribed to 1–50 of them drawn
# with Zipf popularity (a few symbols are on nearly every screen), ticks
# round-robin over all symbols at RATE msg/s through the TCP ingest.
#
#   CONNS=10000 TOPICS=1000 SUBS=1-50 RATE=400 SECS=10 PAYLOAD=100 loadtest/scenarios/market_ticks.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
CONNS=${CONNS:-10000}
TOPICS=${TOPICS:-1000}
SUBS=${SUBS:-1-50}
RATE=${RATE:-400}
SECS=${SECS:-10}
PAYLOAD=${PAYLOAD:-100}
WORKERS=${WORKERS:-2}
SOURCE_IPS=${SOURCE_IPS:-4}
need_bins
start_herald market
msgs=$(awk -v r="$RATE" -v s="$SECS" 'BEGIN {print int(r * s)}')
"$HL_BIN" fanout --url "$WS_URL" --secret "$SECRET" --feed-token "$FEED_TOKEN" --ingest "$INGEST" \
    --conns "$CONNS" --topics "$TOPICS" --dist zipf --subs-per-conn-range "$SUBS" \
    --msgs "$msgs" --rate "$RATE" --payload "$PAYLOAD" --workers "$WORKERS" --source-ips "$SOURCE_IPS" \
    --connect-rate 5000 --connect-timeout-s 20 --duration-s $((SECS + 60)) --drain-s 15 \
    --herald-metrics "$METRICS" ${HERALD_PID:+--server-pid $HERALD_PID} \
    --label "market_ticks" --report "$OUT/report" --json > "$OUT/market.json"
f="$OUT/market.json"
echo "market_ticks: $(fmt_int "$CONNS") clients x $SUBS of $TOPICS symbols (zipf; $(fmt_int "$(jget "$f" .subscriptions)") subscriptions), $RATE ticks/s x $PAYLOAD B for ${SECS}s: $(fmt_int "$(jget "$f" .delivered_per_s)") delivered msgs/s, $(jget "$f" '.delivered')/$(jget "$f" '.expected') delivered$(jq -r 'if .complete then "" else " INCOMPLETE" end' "$f"), gaps $(jget "$f" .seq_gaps); latency p50 $(jget "$f" .latency.p50_ms) ms, p99 $(jget "$f" .latency.p99_ms) ms; $(jq -r 'if .server then "server " + (.server.cpu_s_per_1m_deliveries * 100 | round / 100 | tostring) + " us CPU/delivery" else "server n/a" end' "$f"), $(jq -r 'if .herald then (.herald.write_syscalls_per_delivery * 1000 | round / 1000 | tostring) else "n/a" end' "$f") write syscalls/delivery; connect failures $(jget "$f" '.connect.attempted - .connect.connected')"
