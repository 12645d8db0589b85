#!/usr/bin/env bash
# game_rooms: rooms of ROOM subscribers (connection i is in room i/ROOM),
# each room gets its state HZ times a second through the TCP ingest.
#
#   CONNS=10000 ROOM=50 HZ=20 SECS=10 PAYLOAD=200 loadtest/scenarios/game_rooms.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
CONNS=${CONNS:-10000}
ROOM=${ROOM:-50}
HZ=${HZ:-20}
SECS=${SECS:-10}
PAYLOAD=${PAYLOAD:-200}
WORKERS=${WORKERS:-2}
SOURCE_IPS=${SOURCE_IPS:-4}
need_bins
rooms=$(( (CONNS + ROOM - 1) / ROOM ))
rate=$((rooms * HZ))
msgs=$((rate * SECS))
start_herald rooms
"$HL_BIN" fanout --url "$WS_URL" --secret "$SECRET" --feed-token "$FEED_TOKEN" --ingest "$INGEST" \
    --conns "$CONNS" --topics "$rooms" --dist rooms --room-size "$ROOM" \
    --msgs "$msgs" --rate "$rate" --payload "$PAYLOAD" --workers "$WORKERS" --source-ips "$SOURCE_IPS" \
    --connect-rate 10000 --duration-s $((SECS + 60)) --drain-s 15 \
    --herald-metrics "$METRICS" ${HERALD_PID:+--server-pid $HERALD_PID} \
    --label "game_rooms" --report "$OUT/report" --json > "$OUT/rooms.json"
f="$OUT/rooms.json"
echo "game_rooms: $(fmt_int "$rooms") rooms x $ROOM players, $HZ Hz x $PAYLOAD B ($(fmt_int "$rate") msgs/s in, $(fmt_int $((rate * ROOM))) deliveries/s planned) for ${SECS}s: $(fmt_int "$(jget "$f" .delivered_per_s)") delivered msgs/s, $(jget "$f" '.delivered')/$(jget "$f" '.expected') delivered$(jq -r 'if .complete then "" else " INCOMPLETE" end' "$f"), gaps $(jget "$f" .seq_gaps); latency p50 $(jget "$f" .latency.p50_ms) ms, p99 $(jget "$f" .latency.p99_ms) ms, max $(jget "$f" .latency.max_ms) ms; $(jq -r 'if .server then "server " + (.server.cpu_s_per_1m_deliveries * 100 | round / 100 | tostring) + " us CPU/delivery" else "server n/a" end' "$f"), $(jq -r 'if .herald then (.herald.write_syscalls_per_delivery * 1000 | round / 1000 | tostring) else "n/a" end' "$f") write syscalls/delivery"
