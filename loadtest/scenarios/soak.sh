#!/usr/bin/env bash
# soak: DURATION_S (30 min) at about half of this box's capacity with churn,
# slow readers of every slow-consumer policy and a feed restart, sampled
# every SAMPLE_S: herald's RSS, open descriptors and CPU, the steady
# subscribers' p50/p99 per interval, deliveries, errors, herald's drops by
# reason and closes by code. Verdict (exit 0 / 3): RSS flat, descriptors
# flat and back to the baseline once the clients left, no unexpected
# error, p99 steady, every fault exercised. Writes $OUT/report.html (RSS,
# fds, p99 over time, the verdict, the parameters), samples.csv and
# summary.json. Everything stops by itself (a hard cap of DURATION_S + 5 min).
#
# herald runs with a config (written to $OUT/herald-soak.toml) that maps
# soak.disconnect.* to `disconnect`, soak.drop.* to `drop_oldest` and
# soak.conflate.* to `conflate`; the steady topics soak.steady.* are under
# the default (disconnect). The load (herald-load soak):
#
# - STEADY_CONNS subscribers, one of STEADY_TOPICS topics each, RATE
#   publications/s over those topics through the TCP ingest: RATE /
#   STEADY_TOPICS × STEADY_CONNS deliveries/s (defaults: 4000 × 15/s =
#   60k/s, about one write per delivery; measured on this box: herald ~0.5
#   core and herald-load ~0.45, i.e. about half of its 2 cores, see README
#   "Soak");
# - churn: CHURN_RATE connects/s, each subscribes to a steady topic, reads
#   CHURN_HOLD_MS, closes (1000) and waits for the echo;
# - slow readers, per policy: SLOW_PAUSERS that read SLOW_READ_MS then stop
#   reading for SLOW_PAUSE_MS (SO_RCVBUF 16 KiB), and SLOW_STALLED that never
#   read (drop_oldest and conflate); SLOW_TOPICS topics per policy at
#   SLOW_RATE msg/s × SLOW_PAYLOAD B each;
# - the feed disconnects at FEED_RESTART_AT (fractions of the run) and
#   reconnects FEED_GAP_MS later.
#
# Thresholds: RSS_PCT / RSS_MIB (last-quarter median RSS at most max(pct,
# MiB) above the second quarter's), P99_RATIO / P99_FLOOR_MS (last-quarter
# median p99 at most max(ratio ×, + floor ms) of the second quarter's),
# FD_END_SLACK (descriptors after the clients left ≤ before + slack).
#
#   DURATION_S=1800 SAMPLE_S=5 STEADY_CONNS=4000 STEADY_TOPICS=40 RATE=600 \
#     CHURN_RATE=20 SLOW_PAUSERS=8 loadtest/scenarios/soak.sh
#   DURATION_S=60 SAMPLE_S=2 STEADY_CONNS=1000 RATE=200 ...  # CI: the full line is in .ci/run
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DURATION_S=${DURATION_S:-1800}
bound_script $((DURATION_S + 300)) "$@"
SAMPLE_S=${SAMPLE_S:-5}
WORKERS=${WORKERS:-2}
SOURCE_IPS=${SOURCE_IPS:-4}
STEADY_CONNS=${STEADY_CONNS:-4000}
STEADY_TOPICS=${STEADY_TOPICS:-40}
RATE=${RATE:-600}
PAYLOAD=${PAYLOAD:-100}
CHURN_RATE=${CHURN_RATE:-20}
CHURN_HOLD_MS=${CHURN_HOLD_MS:-2000}
SLOW_PAUSERS=${SLOW_PAUSERS:-8}
SLOW_STALLED=${SLOW_STALLED:-2}
SLOW_TOPICS=${SLOW_TOPICS:-4}
SLOW_RATE=${SLOW_RATE:-25}
SLOW_PAYLOAD=${SLOW_PAYLOAD:-2000}
SLOW_READ_MS=${SLOW_READ_MS:-10000}
SLOW_PAUSE_MS=${SLOW_PAUSE_MS:-20000}
FEED_RESTART_AT=${FEED_RESTART_AT:-0.5}
FEED_GAP_MS=${FEED_GAP_MS:-2000}
RSS_PCT=${RSS_PCT:-10}
RSS_MIB=${RSS_MIB:-16}
P99_RATIO=${P99_RATIO:-1.5}
P99_FLOOR_MS=${P99_FLOOR_MS:-10}
FD_END_SLACK=${FD_END_SLACK:-8}
NOTES=${NOTES:-}
need_bins
[ -z "${URL:-}" ] || [ -n "${HERALD_PID:-}" ] || die "with URL, set HERALD_PID (RSS and descriptors come from /proc)"

cat > "$OUT/herald-soak.toml" <<'EOF'
# soak.sh: one slow-consumer policy per topic prefix.
[[slow_consumer]]
topics = ["soak.drop.*"]
policy = "drop_oldest"

[[slow_consumer]]
topics = ["soak.conflate.*"]
policy = "conflate"

[[slow_consumer]]
topics = ["soak.disconnect.*", "soak.steady.*"]
policy = "disconnect"
EOF
"$HERALD_BIN" --config "$OUT/herald-soak.toml" --demo --check-config > /dev/null ||
    die "herald refuses $OUT/herald-soak.toml"
HERALD_CONFIG="$OUT/herald-soak.toml" HERALD_ARGS=--no-demo-feed start_herald soak
log "herald pid $HERALD_PID on $WS_URL, ingest $INGEST; ${DURATION_S}s, report in $OUT/report.html"

st=0
run_bounded $((DURATION_S + 240)) "$OUT/soak.out" \
    "$HL_BIN" soak --url "$WS_URL" --secret "$SECRET" --ingest "$INGEST" --feed-token "$FEED_TOKEN" \
    --herald-metrics "$METRICS" --server-pid "$HERALD_PID" --out "$OUT" \
    --duration-s "$DURATION_S" --sample-s "$SAMPLE_S" --workers "$WORKERS" --source-ips "$SOURCE_IPS" \
    --steady-conns "$STEADY_CONNS" --steady-topics "$STEADY_TOPICS" --rate "$RATE" --payload "$PAYLOAD" \
    --churn-rate "$CHURN_RATE" --churn-hold-ms "$CHURN_HOLD_MS" \
    --slow-pausers "$SLOW_PAUSERS" --slow-stalled "$SLOW_STALLED" --slow-topics "$SLOW_TOPICS" \
    --slow-rate "$SLOW_RATE" --slow-payload "$SLOW_PAYLOAD" \
    --slow-read-ms "$SLOW_READ_MS" --slow-pause-ms "$SLOW_PAUSE_MS" \
    --feed-restart-at "$FEED_RESTART_AT" --feed-gap-ms "$FEED_GAP_MS" \
    --rss-pct "$RSS_PCT" --rss-mib "$RSS_MIB" --p99-ratio "$P99_RATIO" --p99-floor-ms "$P99_FLOOR_MS" \
    --fd-end-slack "$FD_END_SLACK" \
    --param "herald=$("$HERALD_BIN" --version 2>/dev/null | head -1), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), release, 2 shards" \
    --param "box=$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr)" \
    --notes "$NOTES" || st=$?
s="$OUT/summary.json"
[ -s "$s" ] || die "no summary (herald-load exited $st; see $OUT)"
alive "$HERALD_PID" || log "herald is gone (see $OUT/herald-soak.log)"
q() { jget "$s" "[.quarters[] | $1 // \"-\" | if type == \"number\" then (. * 100 | round / 100) else . end] | map(tostring) | join(\" / \")"; }
echo "soak: $(jget "$s" 'if .pass then "PASS" else "FAIL" end') after $(jget "$s" '.run_s | round')s: RSS $(jget "$s" '.baseline.rss_bytes / 1048576 | . * 10 | round / 10') MiB before, quarters $(q .rss_mib) MiB, end $(jget "$s" '(.end.rss_bytes // 0) / 1048576 | . * 10 | round / 10') MiB; fds $(jget "$s" '.baseline.fds') before, quarters $(q .fds), after $(jget "$s" '.end.fds'); p99 per quarter $(q .p99_ms) ms; errors $(jget "$s" '[.errors[]] | add // 0'); 4008 closes $(jget "$s" '.herald.closes["4008"] // 0') (expected, disconnect policy); dropped $(jget "$s" '.herald.dropped | to_entries | map("\(.key) \(.value)") | join(", ")'); feed restarts $(jget "$s" '.publisher.feed_restarts'); churn $(jget "$s" '.clients.churn_clean') connections; report $OUT/report.html"
exit "$st"
