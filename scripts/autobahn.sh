#!/usr/bin/env bash
# RFC 6455 conformance: the Autobahn|Testsuite fuzzing client against
# herald's echo route.
#
#   scripts/autobahn.sh            # run, compare with tests/autobahn/expected.json
#   scripts/autobahn.sh --update   # run, then write expected.json from the report
#
# 1. builds herald (debug) with `--features autobahn`, which adds GET /echo:
#    the real handshake, frame parser, limits and write path, no token, and
#    every message comes back as sent (ARCHITECTURE.md, "The echo route");
# 2. starts it on free ports with tests/autobahn/herald.toml;
# 3. creates a Python 2.7 virtualenv in target/autobahn/venv (autobahntestsuite
#    runs on Python 2 only) with the pinned tests/autobahn/requirements.txt;
# 4. runs `wstest -m fuzzingclient` on every case but 9.* (performance) and
#    12.*/13.* (permessage-deflate, which herald does not negotiate);
# 5. compares each case's `behavior` and `behaviorClose` with
#    tests/autobahn/expected.json; any difference fails, with a diff.
#
# The HTML report is left in target/autobahn/reports (index.html).
# Python 2.7 is looked for as $PYTHON2, `python2.7` on PATH, then pyenv's
# versions; the script says what to install when it finds none.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
dir="$root/tests/autobahn"
work="$root/target/autobahn"
update=0
export PIP_NO_PYTHON_VERSION_WARNING=1
case "${1:-}" in
"") ;;
--update) update=1 ;;
*)
    echo "usage: scripts/autobahn.sh [--update]" >&2
    exit 2
    ;;
esac

banner() { echo; echo "==> [$(date -u +%H:%M:%S)] autobahn: $*"; }
die() { echo "scripts/autobahn.sh: $*" >&2; exit 1; }
started=$(date +%s)
mkdir -p "$work"

# --- Python 2.7 ---------------------------------------------------------

find_python2() {
    local c
    for c in "${PYTHON2:-}" python2.7 python2; do
        [[ -n "$c" ]] || continue
        # A pyenv shim exists even when its version is not selected; ask the
        # interpreter itself.
        if "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' >/dev/null 2>&1; then
            command -v "$c" 2>/dev/null || echo "$c"
            return 0
        fi
    done
    local pyroot
    pyroot=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
    for c in "$pyroot"/versions/2.7*/bin/python2.7; do
        if [[ -x "$c" ]]; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

venv="$work/venv"
reqs="$dir/requirements.txt"
stamp="$venv/.requirements.sha256"
want_stamp=$(sha256sum "$reqs" | cut -d' ' -f1)
if [[ ! -x "$venv/bin/wstest" || "$(cat "$stamp" 2>/dev/null)" != "$want_stamp" ]]; then
    py2=$(find_python2) || die "Python 2.7 not found (autobahntestsuite runs on Python 2 only).
  Install it, e.g. with pyenv: pyenv install 2.7.18, or set PYTHON2=/path/to/python2.7."
    banner "virtualenv (Python 2.7: $py2) in target/autobahn/venv"
    rm -rf "$venv"
    if ! "$py2" -m virtualenv --version >/dev/null 2>&1; then
        # virtualenv goes into a directory of our own, not into the
        # interpreter's site-packages.
        "$py2" -m pip --version >/dev/null 2>&1 ||
            die "$py2 has neither virtualenv nor pip; install pip for it (python2.7 -m ensurepip)"
        "$py2" -m pip install -q --disable-pip-version-check --no-warn-script-location \
            --target "$work/virtualenv-pkg" virtualenv==20.15.1
        export PYTHONPATH="$work/virtualenv-pkg"
    fi
    "$py2" -m virtualenv -q "$venv"
    unset PYTHONPATH
    banner "pip install -r tests/autobahn/requirements.txt"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs"
    echo "$want_stamp" >"$stamp"
fi
# Python 2 is long unsupported; its libraries say so on every start.
export PYTHONWARNINGS=ignore

# --- herald with the echo route -----------------------------------------

banner "cargo build --features autobahn (debug)"
# The shared target dir, so the debug dependencies `cargo test` built are
# reused and only herald itself is compiled again.
cargo build -q --features autobahn --bin herald
cp "$root/target/debug/herald" "$work/herald"
# Put the normal binary back: target/debug/herald must never be left with an
# unauthenticated route. Cargo keeps both builds, so this only relinks (or
# compiles herald once if no normal debug build exists yet).
cargo build -q --bin herald

free_port() {
    "$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pid=
cleanup() {
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

start_herald() {
    ws=127.0.0.1:$(free_port)
    admin=127.0.0.1:$(free_port)
    HERALD_LISTEN__WS=$ws HERALD_LISTEN__INGEST=127.0.0.1:$(free_port) HERALD_LISTEN__ADMIN=$admin \
        "$work/herald" --config "$dir/herald.toml" >"$work/herald.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        if "$venv/bin/python" -c "import urllib2; urllib2.urlopen('http://$admin/readyz', timeout=1)" 2>/dev/null; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    cleanup
    pid=
    return 1
}
# A port picked free can be taken before herald binds it: try again.
start_herald || start_herald || { tail -20 "$work/herald.log"; die "herald did not start"; }
banner "herald (pid $pid) echoing on ws://$ws/echo"

# The feature opens /echo only: /ws still wants a token.
ws_status=$("$venv/bin/python" - "$ws" <<'PY'
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=5)
s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
print(s.recv(64).split(b" ")[1].decode())
PY
)
[[ "$ws_status" == 401 ]] || die "GET /ws without a token answered $ws_status, not 401"

# --- the fuzzing client -------------------------------------------------

rm -rf "$work/reports"
cat >"$work/spec.json" <<EOF
{
  "outdir": "$work/reports",
  "servers": [{"agent": "herald", "url": "ws://$ws/echo"}],
  "cases": ["*"],
  "exclude-cases": ["9.*", "12.*", "13.*"],
  "exclude-agent-cases": {}
}
EOF
banner "wstest -m fuzzingclient (every case but 9.*, 12.*, 13.*)"
(cd "$work" && timeout --kill-after=10s 300s "$venv/bin/wstest" -m fuzzingclient -s spec.json \
    >"$work/wstest.log" 2>&1) || {
    tail -20 "$work/wstest.log"
    die "wstest failed or timed out (log: target/autobahn/wstest.log)"
}
kill -0 "$pid" 2>/dev/null || { tail -20 "$work/herald.log"; die "herald died during the run"; }

args=("$work/reports/index.json" "$dir/expected.json")
((update)) && args+=(--update)
"$venv/bin/python" "$dir/compare.py" "${args[@]}"
banner "done in $(( $(date +%s) - started ))s (report: target/autobahn/reports/index.html)"
