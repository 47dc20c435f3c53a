#!/usr/bin/env bash
# fleet-bench.sh: one server process against a swarm of simulated agents, on loopback.
#
#   scripts/fleet-bench.sh [--agents N] [--nodes 1] [--swarms K] [--fit M]
#
# Builds release binaries (BasicAgentServer, BasicAgentSwarm), makes a
# throwaway PKI (scripts/make-certs.sh), then measures, in the same run:
#   new       this tree's server (HTTP API when it has one: POST /v1/call,
#             GET /v1/agents; else its admin socket)
#   baseline  today's thread-per-session server, built from commit 71226fa
#             in a temporary git worktree (admin socket `call --all`, `list`);
#             it runs out of descriptors near 6 600 agents: what it reaches
#             is recorded, that is the point
#   fit       the baseline again at M agents (default 6000, a size it can
#             hold) when it locked its operator out at N, so its fan-out and
#             memory figures exist
# Figures (sessions held, server RSS per session, time to accept N agents,
# fan-out first/p50/p99/last answer, agents-list latency at N, server CPU
# seconds per 10 000 answers, the swarm's own RSS and CPU) are printed as a
# table and written to bench/fleet.json. Every wait is bounded (ramp at most
# 240 s, then the swarm's ramp is closed); nothing leaves 127.0.0.0/8.
# --nodes is accepted for the cluster issue; only 1 is supported here.
# See docs/performance.md ("Fleet") for what the numbers mean.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
AGENTS=19000
NODES=1
SWARMS=
FIT=6000
BASELINE_COMMIT=71226fa
while [ $# -gt 0 ]; do
    case $1 in
        --agents) AGENTS=$2; shift 2 ;;
        --nodes) NODES=$2; shift 2 ;;
        --swarms) SWARMS=$2; shift 2 ;;
        --fit) FIT=$2; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "fleet-bench.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case $AGENTS in ''|*[!0-9]*) echo "fleet-bench.sh: --agents must be a number" >&2; exit 2 ;; esac
[ "$NODES" = 1 ] || { echo "fleet-bench.sh: only --nodes 1 is supported (one server process)" >&2; exit 2; }
# One swarm process holds at most 19 000 sessions (descriptor limit 20 000).
[ -n "$SWARMS" ] || SWARMS=$(( (AGENTS + 18999) / 19000 ))

log() { printf '[fleet-bench] %s\n' "$*" >&2; }
command -v python3 >/dev/null || { echo "fleet-bench.sh: needs python3" >&2; exit 1; }
command -v openssl >/dev/null || { echo "fleet-bench.sh: needs openssl" >&2; exit 1; }

log "building release binaries"
cargo build --release -p basicagent-server -p basicagent-swarm >&2
SWARM_BIN=$ROOT/target/release/BasicAgentSwarm
NEW_BIN=$ROOT/target/release/BasicAgentServer

# The baseline, built once per commit and kept in target/fleet-baseline/.
BASE_DIR=$ROOT/target/fleet-baseline
BASE_BIN=$BASE_DIR/BasicAgentServer-$BASELINE_COMMIT
if [ ! -x "$BASE_BIN" ] && git diff --quiet "$BASELINE_COMMIT" HEAD -- server proto; then
    # The server has not changed since the baseline commit: same binary.
    mkdir -p "$BASE_DIR"
    cp "$NEW_BIN" "$BASE_BIN.tmp" && mv "$BASE_BIN.tmp" "$BASE_BIN"
fi
if [ ! -x "$BASE_BIN" ]; then
    mkdir -p "$BASE_DIR"
    WT=$(mktemp -d "$BASE_DIR/worktree.XXXXXX")
    log "building the baseline server from $BASELINE_COMMIT in a temporary worktree $WT"
    git worktree add --detach "$WT" "$BASELINE_COMMIT" >&2
    trap 'git worktree remove --force "$WT" >/dev/null 2>&1 || true' EXIT
    (cd "$WT" && cargo build --release -p basicagent-server >&2)
    cp "$WT/target/release/BasicAgentServer" "$BASE_BIN"
    git worktree remove --force "$WT" >&2
    trap - EXIT
fi

TMP=$(mktemp -d /tmp/fleet-bench.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
scripts/make-certs.sh "$TMP/pki" >/dev/null
chmod 0644 "$TMP/pki"/*.pem

FLEET=(python3 "$ROOT/scripts/lib/fleet.py")
common=(--swarm-bin "$SWARM_BIN" --pki "$TMP/pki" --swarms "$SWARMS" --workdir "$TMP")
log "new server: $AGENTS agents"
"${FLEET[@]}" run --label new --server-bin "$NEW_BIN" --ip 127.0.50.2 --agents "$AGENTS" \
    --out "$TMP/new.json" "${common[@]}"
log "baseline server ($BASELINE_COMMIT): $AGENTS agents"
"${FLEET[@]}" run --label baseline --server-bin "$BASE_BIN" --ip 127.0.50.1 --agents "$AGENTS" \
    --out "$TMP/baseline.json" "${common[@]}"
fit_args=()
if [ "$FIT" -gt 0 ] && [ "$FIT" -lt "$AGENTS" ] && python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
sys.exit(0 if r.get("operator_locked_out") else 1)' "$TMP/baseline.json"; then
    log "baseline at $FIT agents (a size it can hold)"
    "${FLEET[@]}" run --label baseline-fit --server-bin "$BASE_BIN" --ip 127.0.50.3 --agents "$FIT" \
        --out "$TMP/baseline-fit.json" "${common[@]}"
    fit_args=(--baseline-fit "$TMP/baseline-fit.json")
fi
mkdir -p bench
"${FLEET[@]}" table --new "$TMP/new.json" --baseline "$TMP/baseline.json" "${fit_args[@]}" --out bench/fleet.json
