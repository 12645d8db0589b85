#!/usr/bin/env bash
# Every test of herald, in one command:
#
#   scripts/test.sh              # all of them
#   scripts/test.sh rust ts      # only some: rust, ts, python, web, autobahn
#
#   rust    cargo test --workspace (unit, integration, cluster tests with
#           their own nats-server on a free port)
#   ts      the TypeScript client (clients/ts) against the release binary
#   python  the Python client (clients/python) against the release binary,
#           in a virtualenv under target/py-venv
#   web     the demo page and the admin UI in Debian's chromium
#           (web/, playwright-core), plus "web/dist is built from its sources"
#   autobahn  RFC 6455 conformance: the Autobahn|Testsuite fuzzing client
#           against a debug build with the echo route (scripts/autobahn.sh;
#           Python 2.7 and a virtualenv under target/autobahn)
#
# What the tests need and a fresh Debian box may lack (nats-server,
# chromium, python3-venv) is installed with apt-get when this runs as root;
# otherwise the script says what to install. Node 20+ and Rust 1.88+ must be
# there already. npm and pip packages come from their registries.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

parts=("$@")
((${#parts[@]})) || parts=(rust ts python web autobahn)
for p in "${parts[@]}"; do
    case "$p" in
    rust | ts | python | web | autobahn) ;;
    *)
        echo "usage: scripts/test.sh [rust|ts|python|web|autobahn]..." >&2
        exit 2
        ;;
    esac
done
wants() { [[ " ${parts[*]} " == *" $1 "* ]]; }

export PATH="$PATH:/usr/sbin"

# apt_need CMD PACKAGE: CMD must exist; installs PACKAGE when we may.
apt_need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "==> $1 missing: apt-get install $2"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null ||
            { apt-get update -q >/dev/null &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null; }
    fi
    command -v "$1" >/dev/null 2>&1 || {
        echo "scripts/test.sh: $1 is missing; install it (Debian: apt-get install $2)" >&2
        exit 1
    }
}

need_node() {
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || {
        echo "scripts/test.sh: Node.js 20+ with npm is needed for the $1 tests" >&2
        exit 1
    }
    local major
    major=$(node -p 'process.versions.node.split(".")[0]')
    ((major >= 20)) || {
        echo "scripts/test.sh: Node.js 20+ is needed (found $(node --version))" >&2
        exit 1
    }
}

banner() { echo; echo "==> [$(date -u +%H:%M:%S)] $*"; }

if wants rust; then
    apt_need nats-server nats-server
    banner "rust: cargo test --workspace"
    cargo test --workspace
fi

if wants ts || wants python || wants web; then
    # The clients and pages are tested against the binary users run, with
    # the web/dist of this checkout embedded.
    banner "release binary for the client and browser tests"
    cargo build --release --bin herald
    export HERALD_BIN="$root/target/release/herald"
fi

if wants ts; then
    need_node ts
    banner "ts: clients/ts (npm ci, npm test)"
    (cd clients/ts && npm ci --no-audit --no-fund && npm test)
fi

if wants python; then
    command -v python3 >/dev/null 2>&1 || apt_need python3 python3
    venv="$root/target/py-venv"
    if [[ ! -x "$venv/bin/python" ]]; then
        # Debian splits venv (ensurepip) into python3-venv.
        python3 -m venv "$venv" 2>/dev/null || {
            rm -rf "$venv"
            if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
                echo "==> python3 -m venv failed: apt-get install python3-venv"
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null ||
                    { apt-get update -q >/dev/null &&
                        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null; }
            fi
            python3 -m venv "$venv" || {
                echo "scripts/test.sh: python3 -m venv fails; install python3-venv" >&2
                exit 1
            }
        }
    fi
    banner "python: clients/python (pip install, pytest)"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        ./clients/python -r clients/python/requirements-test.txt
    "$venv/bin/python" -m pytest -q clients/python
fi

if wants web; then
    need_node web
    apt_need chromium chromium
    banner "web: web/dist matches its sources; demo page and admin UI in chromium"
    (cd web && npm ci --no-audit --no-fund && npm run check && npm test)
fi

if wants autobahn; then
    # After `rust`, so the debug dependencies are built already and only
    # herald itself is compiled again with the feature. ~15 s of cases.
    banner "autobahn: scripts/autobahn.sh"
    timeout --kill-after=30s 900s bash scripts/autobahn.sh
fi

banner "scripts/test.sh: ${parts[*]}: all passed"
