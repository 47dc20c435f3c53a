#!/usr/bin/env bash
# fleet-bench.sh: one server process against a swarm of simulated agents, on loopback.
#
#   scripts/fleet-bench.sh [--agents N] [--nodes 1] [--swarms K] [--fit M]
#   scripts/fleet-bench.sh --nodes N [--agents A] [--skip LIST] [--calls C]
#                          [--tasks T] [--task-ms MS] [--debug]
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
# With --nodes N > 1 (cluster mode; the baseline is not run): a throwaway
# nats-server (scripts/nats.sh) and PostgreSQL (scripts/pg.sh), N server
# nodes in cluster mode on 127.0.60.1.., N swarm processes (swarm j starts
# at node j, the other nodes are its fall-backs, each swarm has its own 20
# source addresses 127.0.(100+j).1-20), the agents spread by the nodes' own
# redirect (rendezvous owner). Default --agents 19000 x N. Figures: agents
# per node and total, accept time, RSS per session per node, fan-out
# getinfo.kernel through node0, --calls (1000) cross-node pings through
# node0 to a host on node1 (fresh connection, then keep-alive), kill -9 of
# the last node in the middle of --tasks (10000) async.bash tasks (noticed,
# re-homed p50/p99, every result once in PostgreSQL), NATS and PostgreSQL
# restarted (answers meanwhile, recovery time). --skip takes a comma list of
# fanout, calls, kill, tasks, restarts for a short run. Written to the
# `cluster` section of bench/fleet.json (the one-node sections are kept).
# --debug uses the debug binaries (development only: no figures to keep).
# See docs/performance.md ("Fleet") for what the numbers mean.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
AGENTS=
NODES=1
SKIP=
CALLS=1000
TASKS=10000
TASK_MS=3000
PROFILE=release
SWARMS=
FIT=6000
BASELINE_COMMIT=71226fa
while [ $# -gt 0 ]; do
    case $1 in
        --agents) AGENTS=$2; shift 2 ;;
        --nodes) NODES=$2; shift 2 ;;
        --swarms) SWARMS=$2; shift 2 ;;
        --fit) FIT=$2; shift 2 ;;
        --skip) SKIP=$2; shift 2 ;;
        --calls) CALLS=$2; shift 2 ;;
        --tasks) TASKS=$2; shift 2 ;;
        --task-ms) TASK_MS=$2; shift 2 ;;
        --debug) PROFILE=debug; shift ;;
        -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
        *) echo "fleet-bench.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for v in NODES CALLS TASKS TASK_MS; do
    case ${!v} in ''|*[!0-9]*) echo "fleet-bench.sh: --${v,,} must be a number" >&2; exit 2 ;; esac
done
[ "$NODES" -ge 1 ] && [ "$NODES" -le 50 ] || { echo "fleet-bench.sh: --nodes must be 1..50" >&2; exit 2; }
[ -n "$AGENTS" ] || AGENTS=$(( 19000 * NODES ))
case $AGENTS in ''|*[!0-9]*) echo "fleet-bench.sh: --agents must be a number" >&2; exit 2 ;; esac
# One swarm process holds at most 19 000 sessions (descriptor limit 20 000).
if [ -z "$SWARMS" ]; then
    SWARMS=$(( (AGENTS + 18999) / 19000 ))
    [ "$NODES" -gt 1 ] && [ "$SWARMS" -lt "$NODES" ] && SWARMS=$NODES
fi

log() { printf '[fleet-bench] %s\n' "$*" >&2; }
command -v python3 >/dev/null || { echo "fleet-bench.sh: needs python3" >&2; exit 1; }
command -v openssl >/dev/null || { echo "fleet-bench.sh: needs openssl" >&2; exit 1; }

log "building $PROFILE binaries"
if [ "$PROFILE" = release ]; then
    cargo build --release -p basicagent-server -p basicagent-swarm >&2
else
    cargo build -p basicagent-server -p basicagent-swarm >&2
fi
SWARM_BIN=$ROOT/target/$PROFILE/BasicAgentSwarm
NEW_BIN=$ROOT/target/$PROFILE/BasicAgentServer

if [ "$NODES" -gt 1 ]; then
    command -v psql >/dev/null || { echo "fleet-bench.sh: needs psql (postgresql-client)" >&2; exit 1; }
    TMP=$(mktemp -d /tmp/fleet-bench.XXXXXX)
    chmod 0711 "$TMP"   # PostgreSQL runs as `postgres` and must reach pg/ inside
    cleanup() {
        # fleet.py stops what it started; this is for a run killed under it.
        for d in "$TMP"/fleet-cluster-*; do
            [ -d "$d" ] || continue
            [ -d "$d/nats" ] && scripts/nats.sh stop "$d/nats" >/dev/null 2>&1 || true
            [ -d "$d/pg" ] && scripts/pg.sh stop "$d/pg" >/dev/null 2>&1 || true
            for p in "$d"/node*/server.pid; do [ -f "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null || true; done
        done
        rm -rf "$TMP"
    }
    trap cleanup EXIT
    scripts/make-certs.sh "$TMP/pki" >/dev/null
    chmod 0644 "$TMP/pki"/*.pem
    log "cluster: $NODES nodes, $AGENTS agents, $SWARMS swarm processes (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    python3 "$ROOT/scripts/lib/fleet.py" cluster --server-bin "$NEW_BIN" --swarm-bin "$SWARM_BIN" \
        --pki "$TMP/pki" --agents "$AGENTS" --nodes "$NODES" --swarms "$SWARMS" --workdir "$TMP" \
        --skip "$SKIP" --calls "$CALLS" --tasks "$TASKS" --task-ms "$TASK_MS" --out "$TMP/cluster.json"
    OUT=bench/fleet.json
    # Debug binaries give no figures to keep: table only, bench/fleet.json untouched.
    [ "$PROFILE" = release ] || { OUT=/tmp/fleet-bench-cluster-debug.json; cp -f bench/fleet.json "$OUT" 2>/dev/null || true; }
    mkdir -p bench
    python3 "$ROOT/scripts/lib/fleet.py" merge --cluster "$TMP/cluster.json" --out "$OUT"
    exit 0
fi

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
