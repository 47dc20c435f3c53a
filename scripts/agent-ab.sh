#!/usr/bin/env bash
# agent-ab.sh: the daemon of two builds side by side in one run: pipelined
# getinfo.kernel throughput over one TLS connection, and idle RSS.
#
#   scripts/agent-ab.sh OLD_DIR [NEW_DIR]
#
# OLD_DIR and NEW_DIR hold a release BasicAgent and its plugins (NEW_DIR
# defaults to target/release, built here). The load generator is NEW_DIR's
# BasicAgentServer loadtest for both sides, so only the daemon differs.
# Rounds alternate A B A B ... (AB_RUNS, default 5) so a burst of load from
# elsewhere hits both. With two CPUs or more the daemon runs on CPU 1 and the
# load generator on CPU 0 (taskset): on a small VM that halves the spread of
# one binary's figures. Besides the rate, each run records the daemon's own
# CPU time (utime + stime, /proc/PID/stat), the figure that shows a hot-path
# change best. Printed: each run, the medians, and the medians of the per-
# round ratios new/old (each new run against the old run just before it).
# A previous commit's build: `git worktree add /tmp/old COMMIT && (cd /tmp/old
# && cargo build --release --workspace)`, then OLD_DIR=/tmp/old/target/release.
# Loopback only (127.0.0.2), everything bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n '2,14p' "$0"; exit 2; }
OLD=$(cd "$1" && pwd)
if [ $# -ge 2 ]; then NEW=$(cd "$2" && pwd); else
    cargo build --release -p basicagent-host -p basicagent-server >&2
    cargo build --release --workspace >&2
    NEW=$PWD/target/release
fi
RUNS=${AB_RUNS:-5}
REQS=${AB_REQUESTS:-200000}
ADDR=127.0.0.2
SERVER=$NEW/BasicAgentServer
for d in "$OLD" "$NEW"; do
    [ -x "$d/BasicAgent" ] || { echo "agent-ab.sh: no BasicAgent in $d" >&2; exit 2; }
done

. scripts/lib/loopback.sh
D=$(mktemp -d /tmp/basicagent-ab.XXXXXX)
AGENT=
cleanup() {
    [ -n "$AGENT" ] && ba_stop "$AGENT"
    rm -rf "$D"
}
trap cleanup EXIT
ba_certs "$D" >/dev/null
ba_hosts_file "$D/hosts" "$ADDR"
PORT=$(ba_free_port "$ADDR")
# Each side its own directory (state, control socket, log), the same
# certificates and hosts file.
for side in old new; do
    mkdir -p "$D/$side"
    ln -s "$D/ca.pem" "$D/$side/ca.pem"; ln -s "$D/hosts" "$D/$side/hosts"
done
ba_agent_config "$D/old/agent.toml" "$D/old" "$PORT" "$OLD" "ctl_socket = \"$D/old/ctl.sock\""
ba_agent_config "$D/new/agent.toml" "$D/new" "$PORT" "$NEW" "ctl_socket = \"$D/new/ctl.sock\""
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# utime + stime in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
AGENT_CPU=(); LOAD_CPU=()
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    AGENT_CPU=(taskset -c 1); LOAD_CPU=(taskset -c 0)
fi

# One side, one round: the pipelined loadtest (the agent connects to it),
# then idle RSS against a reference server once the agent is connected.
round() { # round NAME DIR
    local name=$1 dir=$2
    "${AGENT_CPU[@]}" "$dir/BasicAgent" -c "$D/$name/agent.toml" -f -L "$D/$name/agent.log" -l warn &
    AGENT=$!
    "${LOAD_CPU[@]}" timeout 200 "$SERVER" loadtest --listen "$ADDR:$PORT" --cert "$D/server.pem" --key "$D/server.key" \
        --timeout 180 --requests "$REQS" --depth 256 --warmup 2000 >> "$D/$name.jsonl" 2>> "$D/loadtest.log" \
        || { echo "agent-ab.sh: loadtest against $name failed" >&2; tail -n 3 "$D/loadtest.log" >&2; exit 1; }
    cpu_ticks "$AGENT" >> "$D/$name.cpu"
    ba_stop "$AGENT"
    # Idle: a fresh daemon, connected to the reference server, settled 2 s.
    "$SERVER" serve --api none --listen "$ADDR:$PORT" --cert "$D/server.pem" --key "$D/server.key" \
        --admin "$D/admin.sock" --state-dir none 2>> "$D/server.log" &
    local serve=$!
    ba_wait_socket "$D/admin.sock"
    "$dir/BasicAgent" -c "$D/$name/agent.toml" -f -L "$D/$name/agent.log" -l warn &
    AGENT=$!
    ba_wait_agent "$SERVER" "$D/admin.sock" >/dev/null \
        || { echo "agent-ab.sh: the $name agent did not connect" >&2; tail -n 3 "$D/$name/agent.log" >&2; exit 1; }
    sleep 2
    rss_kb "$AGENT" >> "$D/$name.rss"
    ba_stop "$AGENT"; AGENT=
    ba_stop "$serve"
    rm -f "$D/admin.sock"
}
for i in $(seq "$RUNS"); do
    echo "[ab] round $i/$RUNS" >&2
    round old "$OLD"
    round new "$NEW"
done
python3 - "$D" "$OLD" "$NEW" "$(getconf CLK_TCK)" "$REQS" <<'EOF'
import json, statistics, sys
d, old, new, hz, reqs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def rates(n): return [json.loads(l)["rate_per_s"] for l in open(f"{d}/{n}.jsonl")]
def ints(n, ext): return [int(l) for l in open(f"{d}/{n}.{ext}")]
ro, rn, mo, mn = rates("old"), rates("new"), ints("old", "rss"), ints("new", "rss")
co, cn = ints("old", "cpu"), ints("new", "cpu")
med = statistics.median
print(f"old: {old}\nnew: {new}")
print("pipelined getinfo.kernel (req/s)  old:", " ".join(f"{r:.0f}" for r in ro))
print("                                  new:", " ".join(f"{r:.0f}" for r in rn))
print(f"daemon CPU (1/{hz} s)              old:", " ".join(map(str, co)))
print("                                  new:", " ".join(map(str, cn)))
print("idle RSS (kB)                     old:", " ".join(map(str, mo)))
print("                                  new:", " ".join(map(str, mn)))
# The load test's warm-up requests count too.
us = lambda t: t * 1e6 / hz / (reqs + 2000)
print(f"median rate: old {med(ro):.0f}/s, new {med(rn):.0f}/s, new/old {med(rn) / med(ro):.3f}"
      f" (per round: {med([n / o for o, n in zip(ro, rn)]):.3f})")
print(f"median daemon CPU per request: old {us(med(co)):.2f} us, new {us(med(cn)):.2f} us, "
      f"new/old {med(cn) / med(co):.3f} (per round: {med([n / o for o, n in zip(co, cn)]):.3f})")
print(f"median idle RSS: old {med(mo)} kB, new {med(mn)} kB, new/old {med(mn) / med(mo):.3f}")
EOF
