#!/usr/bin/env bash
# Builds herald's fuzz targets (fuzz/, cargo-fuzz on the nightly toolchain)
# and runs each for a while; fails if any target crashes.
#
#   scripts/fuzz.sh                    # every target, 20 s each
#   scripts/fuzz.sh 600                # every target, 10 min each
#   scripts/fuzz.sh 300 ws_decoder     # some targets
#   FUZZ_BUILD_ONLY=1 scripts/fuzz.sh  # build, run nothing
#   FUZZ_BUILD_ARGS=--dev scripts/fuzz.sh 5   # unoptimised: half the build
#                                      # time, several times slower runs
#                                      # (CI's smoke step, see .ci/run)
#
# Each run starts from the committed seeds (fuzz/corpus/<target>/, read
# only) plus what earlier runs on this machine found
# (fuzz/target/corpus/<target>/, not committed), and uses the target's
# dictionary from fuzz/dict/ when there is one. A crash leaves its input in
# fuzz/artifacts/<target>/; reproduce it with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/crash-...
# and, once fixed, commit the input to fuzz/corpus/<target>/ as
# regress-<what> so every later run replays it.
#
# Needs the nightly toolchain (rustup toolchain install nightly) and
# cargo-fuzz, which this installs from crates.io when missing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

secs=20
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
    secs=$1
    shift
fi

cargo +nightly --version >/dev/null 2>&1 || {
    echo "scripts/fuzz.sh: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 1
}
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "==> cargo-fuzz missing: cargo install cargo-fuzz --locked"
    t0=$(date +%s)
    cargo install cargo-fuzz --locked
    echo "<== cargo-fuzz installed in $(($(date +%s) - t0))s"
fi

all=$(cargo +nightly fuzz list)
targets=("$@")
((${#targets[@]})) || mapfile -t targets <<<"$all"
for t in "${targets[@]}"; do
    grep -qx -- "$t" <<<"$all" || {
        echo "scripts/fuzz.sh: no fuzz target $t; there are: $(echo $all)" >&2
        exit 2
    }
done

# fuzz/Cargo.lock is committed and must already be complete: cargo fuzz
# build has no --locked of its own, and fetch --locked fails where a build
# would have changed the lock file.
cargo +nightly fetch --locked --manifest-path fuzz/Cargo.toml --target "$(rustc +nightly -vV | sed -n 's/^host: //p')" >/dev/null

# One build for every target: they share the instrumented herald, so
# building them one by one would only relink.
echo "==> building the fuzz targets (nightly, ASan, debug assertions)"
t0=$(date +%s)
# shellcheck disable=SC2206 # words on purpose: cargo fuzz options
build_args=(${FUZZ_BUILD_ARGS:-})
cargo +nightly fuzz build "${build_args[@]}"
echo "<== built in $(($(date +%s) - t0))s"
[[ -z ${FUZZ_BUILD_ONLY:-} ]] || exit 0

summary=()
failed=()
for t in "${targets[@]}"; do
    work=fuzz/target/corpus/$t
    seeds=fuzz/corpus/$t
    arts=fuzz/artifacts/$t
    log=fuzz/target/fuzz-$t.log
    mkdir -p "$work" "$seeds" "$arts"
    # cargo fuzz points -artifact_prefix at fuzz/artifacts/<target>/.
    args=(-max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048)
    dict=fuzz/dict/$t.dict
    case $t in client_request | feed_frame) dict=fuzz/dict/msgpack.dict ;; esac
    [[ -f $dict ]] && args+=(-dict="$dict")
    echo
    echo "==> $t: ${secs}s"
    t0=$(date +%s)
    # New inputs go to the first directory only; the seeds stay as committed.
    if cargo +nightly fuzz run "${build_args[@]}" "$t" "$work" "$seeds" -- "${args[@]}" >"$log" 2>&1; then
        result=ok
    else
        result=CRASH
        failed+=("$t")
        grep -E "panicked|ERROR: |SUMMARY|Test unit written" "$log" | head -20 || true
    fi
    took=$(($(date +%s) - t0))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -1)
    summary+=("$(printf '%-16s %-6s %5ss %12s runs %8s/s   %s' "$t" "$result" "$took" \
        "${runs:-?}" "${speed:-?}" "${cov:-}")")
    echo "${summary[-1]}"
done

echo
echo "==> fuzz summary (${secs}s per target; logs in fuzz/target/fuzz-<target>.log)"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
    echo "FUZZ FAILED: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
