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
# elsewhere hits both; printed: each run, the medians and the ratio new/old.
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

D=$(mktemp -d /tmp/basicagent-ab.XXXXXX)
AGENT=
cleanup() {
    [ -n "$AGENT" ] && { kill "$AGENT" 2>/dev/null || true; wait "$AGENT" 2>/dev/null || true; }
    rm -rf "$D"
}
trap cleanup EXIT
scripts/make-certs.sh "$D" config.cargo.com >/dev/null
printf '%s config.cargo.com\n' "$ADDR" > "$D/hosts"
PORT=$(python3 -c '
import socket
s = socket.socket(); s.bind(("127.0.0.2", 0)); print(s.getsockname()[1])')

config() { # config NAME PLUGIN_DIR PORT
    cat > "$D/$1.toml" <<EOF
[server]
name = "config.cargo.com"
port = $3
ca = "$D/ca.pem"
hosts_file = "$D/hosts"
dns = false
connect_timeout = 2

[agent]
state_dir = "$D/state-$1"
plugin_dir = "$2"
ctl_socket = "$D/run-$1/ctl.sock"
EOF
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# One side, one round: the pipelined loadtest (the agent connects to it),
# then idle RSS against a reference server once the agent is connected.
round() { # round NAME DIR
    local name=$1 dir=$2
    config "$name" "$dir" "$PORT"
    "$dir/BasicAgent" -c "$D/$name.toml" -f -L "$D/$name.log" -l warn &
    AGENT=$!
    timeout 200 "$SERVER" loadtest --listen "$ADDR:$PORT" --cert "$D/server.pem" --key "$D/server.key" \
        --timeout 180 --requests "$REQS" --depth 256 --warmup 2000 >> "$D/$name.jsonl" 2>> "$D/loadtest.log" \
        || { echo "agent-ab.sh: loadtest against $name failed" >&2; tail -n 3 "$D/loadtest.log" >&2; exit 1; }
    kill "$AGENT"; wait "$AGENT" 2>/dev/null || true
    # Idle: a fresh daemon, connected to the reference server, settled 2 s.
    "$SERVER" serve --api none --listen "$ADDR:$PORT" --cert "$D/server.pem" --key "$D/server.key" \
        --admin "$D/admin.sock" --state-dir none 2>> "$D/server.log" &
    local serve=$!
    for _ in $(seq 50); do [ -S "$D/admin.sock" ] && break; sleep 0.1; done
    "$dir/BasicAgent" -c "$D/$name.toml" -f -L "$D/$name.log" -l warn &
    AGENT=$!
    for _ in $(seq 100); do
        [ -n "$("$SERVER" list --admin "$D/admin.sock" 2>/dev/null)" ] && break; sleep 0.1
    done
    sleep 2
    rss_kb "$AGENT" >> "$D/$name.rss"
    kill "$AGENT"; wait "$AGENT" 2>/dev/null || true; AGENT=
    kill "$serve"; wait "$serve" 2>/dev/null || true
    rm -f "$D/admin.sock"
}
for i in $(seq "$RUNS"); do
    echo "[ab] round $i/$RUNS" >&2
    round old "$OLD"
    round new "$NEW"
done
python3 - "$D" "$OLD" "$NEW" <<'EOF'
import json, statistics, sys
d, old, new = sys.argv[1:4]
def rates(n): return [json.loads(l)["rate_per_s"] for l in open(f"{d}/{n}.jsonl")]
def rss(n): return [int(l) for l in open(f"{d}/{n}.rss")]
ro, rn, mo, mn = rates("old"), rates("new"), rss("old"), rss("new")
print(f"old: {old}\nnew: {new}")
print("pipelined getinfo.kernel (req/s)  old:", " ".join(f"{r:.0f}" for r in ro))
print("                                  new:", " ".join(f"{r:.0f}" for r in rn))
print("idle RSS (kB)                     old:", " ".join(map(str, mo)))
print("                                  new:", " ".join(map(str, mn)))
mro, mrn = statistics.median(ro), statistics.median(rn)
print(f"median rate: old {mro:.0f}/s, new {mrn:.0f}/s, new/old {mrn / mro:.3f}")
print(f"median idle RSS: old {statistics.median(mo)} kB, new {statistics.median(mn)} kB, "
      f"new/old {statistics.median(mn) / statistics.median(mo):.3f}")
EOF
