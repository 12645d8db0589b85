#!/usr/bin/env bash
# connect_storm: N connections opened unpaced (--connect-rate 0), each with
# its own HS256 JWT, from several worker processes and source addresses.
# Reports handshakes/s (client-side: all N upgraded / wall time) and the
# failures seen by both sides; the target is >= 20k/s with none failed.
#
#   CONNS=15000 RUNS=3 WORKERS=2 SOURCE_IPS=4 SUBSCRIBE=0 loadtest/scenarios/connect_storm.sh
#
# SUBSCRIBE=1 also waits for one SUBSCRIBE ack per connection. The runs
# share one herald (connections are closed between runs).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
CONNS=${CONNS:-15000}
RUNS=${RUNS:-3}
WORKERS=${WORKERS:-2}
SOURCE_IPS=${SOURCE_IPS:-4}
SUBSCRIBE=${SUBSCRIBE:-0}
TARGET=${TARGET:-20000}
need_bins
start_herald storm

hs() { curl -s "$METRICS" | awk -F'[{}"= ]+' '/^herald_handshakes_total\{/ {print $3, $NF}' | sort; }
sub_flag=--no-subscribe
[ "$SUBSCRIBE" = 1 ] && sub_flag=
hs > "$OUT/handshakes-before.txt"
rates=()
failed=0
for i in $(seq 1 "$RUNS"); do
    # shellcheck disable=SC2086
    "$HL_BIN" idle --url "$WS_URL" --secret "$SECRET" --conns "$CONNS" --workers "$WORKERS" \
        --source-ips "$SOURCE_IPS" --connect-rate 0 $sub_flag --settle-s 0 --duration-s 60 \
        --connect-timeout-s 15 ${HERALD_PID:+--server-pid $HERALD_PID} --json > "$OUT/run-$i.json"
    r=$(jget "$OUT/run-$i.json" '.connect.per_s')
    f=$(jget "$OUT/run-$i.json" '.connect.attempted - .connect.connected')
    p99=$(jget "$OUT/run-$i.json" '.connect.latency.p99_ms')
    rates+=("$r")
    failed=$((failed + f))
    log "run $i: $(fmt_int "$r") handshakes/s, failed $f ($(jget "$OUT/run-$i.json" '.connect.failures | if length == 0 then "none" else (to_entries | map("\(.key) \(.value)") | join(", ")) end')), connect p99 ${p99} ms"
    sleep 1
done
hs > "$OUT/handshakes-after.txt"
server=$(join -a2 -e0 -o 0,1.2,2.2 "$OUT/handshakes-before.txt" "$OUT/handshakes-after.txt" \
    | awk '{d = $3 - $2; if (d > 0) printf "%s%s %d", (n++ ? ", " : ""), $1, d}')
sorted=$(printf "%s\n" "${rates[@]}" | sort -g)
median=$(echo "$sorted" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
best=$(echo "$sorted" | tail -1)
rss1=$(jq -r '.bytes_per_conn // empty' "$OUT/run-1.json")
rss_txt=n/a
[ -n "$rss1" ] && rss_txt="$(fmt_int "$rss1") B/conn"
verdict=$(awk -v m="$median" -v t="$TARGET" -v f="$failed" 'BEGIN {print (m >= t && f == 0) ? "met" : "NOT met"}')
echo "connect_storm: $(fmt_int "$CONNS") conns x $RUNS runs unpaced, HS256 JWT$([ "$SUBSCRIBE" = 1 ] && echo " + SUBSCRIBE"), $WORKERS workers, $SOURCE_IPS source IPs: median $(fmt_int "$median") handshakes/s (best $(fmt_int "$best")), failed $failed; herald handshakes: ${server:-n/a}; herald RSS growth after the first storm: $rss_txt; target >= $(fmt_int "$TARGET")/s with no failure: $verdict"
