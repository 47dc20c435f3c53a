#!/usr/bin/env bash
# soak.sh: a soak test of one BasicAgent daemon (minutes, not hours).
#
# The reference server (BasicAgentServer serve, driven through its admin
# socket by scripts/soak.py) sends a mix of collectors, commands, async
# tasks, garbage lines and oversized frames from several clients at once,
# and is killed and restarted now and then (abrupt disconnects). At the end
# it checks that every request got exactly one answer, every async result
# arrived, the daemon's RSS stayed within a small bound, and no fd or child
# process leaked; it prints requests served, answers checked, RSS and fds
# at start and end. Exit status 0 when every check passes.
#
#   scripts/soak.sh                      # 3 minutes, 4 clients
#   SOAK_SECONDS=600 scripts/soak.sh     # longer
#   SOAK_WORKERS=8 SOAK_RESTART_EVERY=20 SOAK_RSS_BOUND_KB=2048 scripts/soak.sh
#
# Release build; loopback only (127.0.0.3); bounded in time; removes its
# temporary directory and every process it started on exit. Writes the
# summary to bench/soak.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/lib/loopback.sh
SECS=${SOAK_SECONDS:-180}
WORKERS=${SOAK_WORKERS:-4}
RESTART=${SOAK_RESTART_EVERY:-40}
BOUND=${SOAK_RSS_BOUND_KB:-2048}
ADDR=127.0.0.3

log() { printf '[soak] %s\n' "$*" >&2; }
command -v python3 >/dev/null || { echo "soak.sh: needs python3" >&2; exit 1; }
command -v openssl >/dev/null || { echo "soak.sh: needs openssl" >&2; exit 1; }

log "building (cargo build --release --workspace)"
cargo build --release --workspace >&2
BIN=$ROOT/target/release

D=$(mktemp -d /tmp/basicagent-soak.XXXXXX)
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -f "$D/pids" ]; then
        while read -r pid; do kill "$pid" 2>/dev/null || true; done < "$D/pids"
        sleep 0.5
        while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done < "$D/pids"
    fi
    if [ "$status" != 0 ] && [ -f "$D/agent.log" ]; then
        log "last lines of the agent log:"; tail -n 20 "$D/agent.log" >&2 || true
    fi
    rm -rf "$D"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PORT=$(ba_free_port "$ADDR")
ba_certs "$D" >/dev/null
ba_hosts_file "$D/hosts" "$ADDR"
ba_agent_config "$D/agent.toml" "$D" "$PORT" "$BIN"
mkdir -p bench
log "soak: ${SECS}s, $WORKERS clients, server killed every ${RESTART}s, RSS bound ${BOUND} kB"
timeout $((SECS * 2 + 300)) python3 scripts/soak.py --dir "$D" \
    --server-bin "$BIN/BasicAgentServer" --agent-bin "$BIN/BasicAgent" --plugin-dir "$BIN" \
    --listen "$ADDR:$PORT" --duration "$SECS" --workers "$WORKERS" --restart-every "$RESTART" \
    --rss-bound-kb "$BOUND" --out bench
