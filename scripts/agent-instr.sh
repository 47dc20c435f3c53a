#!/usr/bin/env bash
# agent-instr.sh: instructions and simulated cache misses of the daemon per
# pipelined getinfo.kernel, under valgrind's callgrind, for one or more
# builds. Deterministic (no timing noise), so a small hot-path change shows
# even on a busy VM; it cannot see what only real hardware does (branch
# prediction, frequency), so read it beside scripts/agent-ab.sh.
#
#   scripts/agent-instr.sh NAME=DIR [NAME=DIR ...]
#
# DIR holds a BasicAgent and its plugins; a build with symbols
# (CARGO_PROFILE_RELEASE_STRIP=none CARGO_PROFILE_RELEASE_DEBUG=line-tables-only)
# lets callgrind_annotate name functions in the files kept under
# INSTR_KEEP=DIR. Each build answers INSTR_BASE (2 000) and then
# INSTR_BASE + INSTR_REQUESTS (20 000 more) requests in two runs; the
# difference divided by INSTR_REQUESTS is the cost of one request, start-up
# and the TLS handshake cancelling out. The load generator is this tree's
# target/release/BasicAgentServer. Loopback only (127.0.0.2). Needs valgrind
# (installed from Debian when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n '2,18p' "$0"; exit 2; }
. scripts/lib/loopback.sh
ba_need_pkg valgrind valgrind
BASE=${INSTR_BASE:-2000}
MORE=${INSTR_REQUESTS:-20000}
ADDR=127.0.0.2
SERVER=$PWD/target/release/BasicAgentServer
[ -x "$SERVER" ] || cargo build --release -p basicagent-server >&2
D=$(mktemp -d /tmp/basicagent-instr.XXXXXX)
AGENT=
cleanup() {
    [ -n "$AGENT" ] && ba_stop "$AGENT"
    [ -n "${INSTR_DEBUG:-}" ] && echo "kept $D" >&2 || rm -rf "$D"
}
trap cleanup EXIT
ba_certs "$D" >/dev/null
ba_hosts_file "$D/hosts" "$ADDR"
PORT=$(ba_free_port "$ADDR")
# Under valgrind the handshake is slow: generous connect and handshake limits.
run() { # run NAME DIR REQUESTS
    local name=$1 dir=$2 n=$3 out="$D/$1.$3.cg"
    # Each build its own directory (state, control socket, log), the same
    # certificates and hosts file (as in agent-ab.sh).
    mkdir -p "$D/$name"
    ln -sf "$D/ca.pem" "$D/$name/ca.pem"; ln -sf "$D/hosts" "$D/$name/hosts"
    ba_agent_config "$D/$name/agent.toml" "$D/$name" "$PORT" "$dir" "ctl_socket = \"$D/$name/ctl.sock\""
    sed -i 's/^connect_timeout = .*/connect_timeout = 60/; /^\[server\]/a handshake_timeout = 60' "$D/$name/agent.toml"
    valgrind --tool=callgrind --cache-sim=yes --callgrind-out-file="$out" \
        "$dir/BasicAgent" -c "$D/$name/agent.toml" -f -L "$D/$name/agent.log" -l warn 2>> "$D/valgrind.log" &
    AGENT=$!
    timeout 900 "$SERVER" loadtest --listen "$ADDR:$PORT" --cert "$D/server.pem" --key "$D/server.key" \
        --timeout 600 --requests "$n" --depth 256 > /dev/null 2>> "$D/loadtest.log" \
        || { echo "agent-instr.sh: loadtest against $name failed" >&2; tail -n 3 "$D/loadtest.log" >&2; exit 1; }
    ba_stop "$AGENT"; AGENT=
    if [ -n "${INSTR_KEEP:-}" ]; then mkdir -p "$INSTR_KEEP"; cp "$out" "$INSTR_KEEP/"; fi
    callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !seen { print; seen = 1 }' > "$D/$name.$n.total"
}
for spec in "$@"; do
    name=${spec%%=*}; dir=$(cd "${spec#*=}" && pwd)
    [ -x "$dir/BasicAgent" ] || { echo "agent-instr.sh: no BasicAgent in $dir" >&2; exit 2; }
    echo "[instr] $name: $BASE and $((BASE + MORE)) requests" >&2
    run "$name" "$dir" "$BASE"
    run "$name" "$dir" "$((BASE + MORE))"
done
python3 - "$D" "$BASE" "$MORE" "$@" <<'PY'
import re, sys
d, base, more, specs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
events = "Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw".split()
def totals(name, n):
    line = open(f"{d}/{name}.{n}.total").read()
    return [int(x.replace(",", "")) for x in re.findall(r"([\d,]+) \(", line)]
rows = {}
for spec in specs:
    name = spec.split("=", 1)[0]
    a, b = totals(name, base), totals(name, base + more)
    rows[name] = {e: (y - x) / more for e, x, y in zip(events, a, b)}
first = next(iter(rows))
print("per request     " + " ".join(f"{e:>9}" for e in events[:6]))
for name, r in rows.items():
    cells = " ".join(f"{r[e]:9.1f}" for e in events[:6])
    ratio = "" if name == first else f"   Ir {r['Ir'] / rows[first]['Ir']:.3f}x {first}"
    print(f"{name:15} {cells}{ratio}")
PY
