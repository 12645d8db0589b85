#!/usr/bin/env bash
# idle_hold: herald's RSS per idle connection (one subscription each) at
# 10k and 19k connections, a fresh herald for each (freed memory would be
# reused and hide growth). 19k keeps the server under its 20k open files.
#
#   COUNTS="10000 19000" WORKERS=2 SOURCE_IPS=4 SETTLE_S=2 loadtest/scenarios/idle_hold.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
COUNTS=${COUNTS:-10000 19000}
WORKERS=${WORKERS:-2}
SOURCE_IPS=${SOURCE_IPS:-4}
SETTLE_S=${SETTLE_S:-2}
RATE=${RATE:-5000}
need_bins
[ -z "${URL:-}" ] || [ -n "${HERALD_PID:-}" ] || die "with URL, set HERALD_PID (RSS is read from /proc)"
parts=()
for n in $COUNTS; do
    start_herald "idle-$n"
    "$HL_BIN" idle --url "$WS_URL" --secret "$SECRET" --conns "$n" --workers "$WORKERS" \
        --source-ips "$SOURCE_IPS" --connect-rate "$RATE" --settle-s "$SETTLE_S" --duration-s 90 \
        --server-pid "$HERALD_PID" --json > "$OUT/idle-$n.json"
    f="$OUT/idle-$n.json"
    per=$(jget "$f" '.bytes_per_conn // 0')
    fails=$(jget "$f" '.connect.attempted - .connect.connected')
    log "$n: $(fmt_int "$per") B per connection ($(jget "$f" '.rss_before') -> $(jget "$f" '.rss_after') B), failed $fails, open at measure $(jget "$f" '.open_at_measure')"
    parts+=("$(fmt_int "$n"): $(fmt_int "$per") B/conn (failed $fails)")
    stop_herald
done
echo "idle_hold: herald RSS per idle connection, 1 subscription each, fresh server per count: $(IFS=';'; echo "${parts[*]}" | sed 's/;/; /g')"
