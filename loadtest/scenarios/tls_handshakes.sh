#!/usr/bin/env bash
# tls_handshakes: the upgrade rate with TLS against the same gateway
# without it, in one run. Each round opens CONNS connections (CONCURRENCY
# in flight, each its own HS256 JWT, every TLS client new: a full
# handshake, no resumption), holds them until all are up, then closes them.
# Rounds alternate plain and TLS on two herald processes started alike
# (the TLS one with the test certificate tests/keys/tls/server-a, ECDSA
# P-256), so drift of the box hits both. Reports medians of upgrades/s and
# of herald's CPU per upgrade, and the TLS/plain ratios. The client runs on
# the same 2 cores and does its half of every TLS handshake: the CPU per
# upgrade is the figure that carries to a box where clients are elsewhere.
#
#   CONNS=5000 RUNS=3 CONCURRENCY=256 THREADS=1 loadtest/scenarios/tls_handshakes.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
CONNS=${CONNS:-5000}
RUNS=${RUNS:-3}
CONCURRENCY=${CONCURRENCY:-256}
THREADS=${THREADS:-1}
need_bins
certs="$ROOT/tests/keys/tls"

start_herald plain
PLAIN_URL=$WS_URL PLAIN_PID=$HERALD_PID
start_herald tls HERALD_TLS__CERT_FILE="$certs/server-a.pem" HERALD_TLS__KEY_FILE="$certs/server-a.key"
TLS_URL=${WS_URL/ws:/wss:} TLS_PID=$HERALD_PID

round() { # round NAME URL PID I
    "$HL_BIN" handshakes --url "$2" --secret "$SECRET" --tls-ca "$certs/ca.pem" \
        --conns "$CONNS" --concurrency "$CONCURRENCY" --threads "$THREADS" \
        --server-pid "$3" --json > "$OUT/$1-$4.json" ||
        log "$1 round $4: not every connection upgraded: $(jget "$OUT/$1-$4.json" '.failures | tojson')"
    log "$1 round $4: $(fmt_int "$(jget "$OUT/$1-$4.json" .per_s)")/s, herald $(jget "$OUT/$1-$4.json" '.server_cpu_us_per_upgrade | floor') µs CPU and $(jget "$OUT/$1-$4.json" '.server_rss_per_conn | floor') B RSS per upgrade, connect→101 p99 $(jget "$OUT/$1-$4.json" .latency_ms.p99) ms"
    sleep 1
}
for i in $(seq 1 "$RUNS"); do
    round plain "$PLAIN_URL" "$PLAIN_PID" "$i"
    round tls "$TLS_URL" "$TLS_PID" "$i"
done
median() { # median NAME JQ
    for f in "$OUT/$1"-*.json; do jget "$f" "$2"; done | sort -g |
        awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
pr=$(median plain .per_s); tr=$(median tls .per_s)
pc=$(median plain .server_cpu_us_per_upgrade); tc=$(median tls .server_cpu_us_per_upgrade)
pm=$(median plain .server_rss_per_conn); tm=$(median tls .server_rss_per_conn)
failed=$(cat "$OUT"/plain-*.json "$OUT"/tls-*.json | jq -s 'map(.conns - .upgraded) | add')
echo "tls_handshakes: $(fmt_int "$CONNS") conns x $RUNS rounds, $CONCURRENCY in flight, HS256 JWT: plain $(fmt_int "$pr")/s at $(printf %.1f "$pc") µs herald CPU each, TLS (1.3, ECDSA P-256, full handshakes) $(fmt_int "$tr")/s at $(printf %.1f "$tc") µs each: TLS/plain rate $(awk -v a="$tr" -v b="$pr" 'BEGIN {printf "%.2f", a / b}'), CPU $(awk -v a="$tc" -v b="$pc" 'BEGIN {printf "%.2f", a / b}')x; held RSS per connection plain $(fmt_int "$pm") B, TLS $(fmt_int "$tm") B; failed $failed"
