#!/usr/bin/env bash
# fuzz.sh: builds the cargo-fuzz targets in fuzz/ and runs each for a given
# time, keeping the corpus (fuzz/corpus/TARGET) and any crash
# (fuzz/artifacts/TARGET). Prints executions and findings per target.
#
#   scripts/fuzz.sh                       # build, then every target 60 s
#   scripts/fuzz.sh 600                   # every target 10 minutes
#   scripts/fuzz.sh 600 frame_splitter    # one target
#   FUZZ_JOBS=2 scripts/fuzz.sh 600       # two targets at a time
#   scripts/fuzz.sh --build-only          # what CI runs
#
# cargo-fuzz needs nightly features: on a stable toolchain this sets
# RUSTC_BOOTSTRAP=1. Installs cargo-fuzz (crates.io) if missing.
# FUZZ_SANITIZER=none builds without AddressSanitizer.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
SAN=${FUZZ_SANITIZER:-address}
JOBS=${FUZZ_JOBS:-1}
TARGETS=(frame_splitter request_parser init_server_list plugin_descriptor collector_args)

log() { printf '[fuzz] %s\n' "$*" >&2; }
cargo fuzz --version >/dev/null 2>&1 || { log "installing cargo-fuzz"; cargo install --locked cargo-fuzz; }

log "building ${#TARGETS[@]} targets (sanitizer $SAN)"
cargo fuzz build -O -s "$SAN" >&2
if [ "${1:-}" = "--build-only" ]; then
    log "built: ${TARGETS[*]}"
    exit 0
fi
SECONDS_EACH=${1:-60}
[[ $SECONDS_EACH =~ ^[0-9]+$ ]] || { echo "usage: fuzz.sh [SECONDS|--build-only] [TARGET...]" >&2; exit 2; }
shift || true
[ $# -gt 0 ] && TARGETS=("$@")

LOGS=$(mktemp -d /tmp/basicagent-fuzz.XXXXXX)
PIDS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$LOGS"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

run_one() { # run_one TARGET: runs in the background, log in $LOGS/TARGET.log
    local t=$1
    mkdir -p "corpus/$t" "artifacts/$t"
    log "running $t for ${SECONDS_EACH}s"
    # -timeout: one input taking > 10 s is a finding (a hang).
    timeout $((SECONDS_EACH + 120)) cargo fuzz run -O -s "$SAN" "$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"$LOGS/$t.log" 2>&1 &
    PIDS+=($!)
}

failed=0
report() { # report TARGET STATUS
    local t=$1 status=$2 execs crashes
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$LOGS/$t.log" | grep -o '[0-9]*$' | tail -n 1)
    crashes=$(find "artifacts/$t" -type f | wc -l)
    printf '%-18s %6ss  execs %12s  corpus %6s  artifacts %s  exit %s\n' "$t" "$SECONDS_EACH" \
        "${execs:-?}" "$(find "corpus/$t" -type f | wc -l)" "$crashes" "$status"
    if [ "$status" != 0 ]; then
        failed=1
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$LOGS/$t.log" | head -n 8 | sed 's/^/    /'
    fi
}

i=0
while [ $i -lt ${#TARGETS[@]} ]; do
    batch=("${TARGETS[@]:$i:$JOBS}")
    PIDS=()
    for t in "${batch[@]}"; do run_one "$t"; done
    for k in "${!batch[@]}"; do
        status=0
        wait "${PIDS[$k]}" || status=$?
        report "${batch[$k]}" "$status"
    done
    i=$((i + JOBS))
done
PIDS=()
exit $failed
