#!/usr/bin/env bash
# demo.sh: build everything, start the reference server and the agent on
# loopback, send a few requests through the server and print the answers.
#
# Everything lives in a temporary directory (certificates, a private hosts
# file, the agent's configuration, state, log and pid file) that is removed
# on exit, with both processes. Nothing outside it is touched: the agent
# reads its own hosts file (server.hosts_file), not /etc/hosts.
#
#   scripts/demo.sh                  # a free port on 127.0.0.2
#   DEMO_PORT=19443 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/lib/loopback.sh
SERVER_ADDR=127.0.0.2     # the server; 127.0.0.1 is listed first with nothing listening

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

ba_need_pkg openssl openssl
command -v python3 >/dev/null 2>&1 || { echo "demo.sh: python3 is needed to pretty-print JSON" >&2; exit 1; }
# A port free on both 127.0.0.1 and 127.0.0.2, unless one is given.
PORT=${DEMO_PORT:-$(ba_free_port "$SERVER_ADDR" 127.0.0.1)}

say "building (cargo build --release --workspace)"
cargo build --release --workspace
BIN=$ROOT/target/release

D=$(mktemp -d /tmp/basicagent-demo.XXXXXX)
SERVER_PID=
AGENT_PID=
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    # shellcheck disable=SC2086 # unquoted: an unset pid is no argument
    ba_stop $AGENT_PID $SERVER_PID
    rm -rf "$D"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "certificates (scripts/make-certs.sh)"
ba_certs "$D"

# Two addresses for the server name: the agent tries them in file order.
ba_hosts_file "$D/hosts" 127.0.0.1 "$SERVER_ADDR"
ba_agent_config "$D/agent.toml" "$D" "$PORT" "$D/plugins"
# The plugins as installed (scripts/install.sh): every one built, but not
# the test fixture that misbehaves on purpose.
mkdir -p "$D/plugins"
for so in "$BIN"/lib*_*.so; do
    case "$so" in *libfixture_misbehave.so | *libgetinfo_testkit.so) continue ;; esac
    cp "$so" "$D/plugins/"
done
echo "hosts file $D/hosts:"; sed 's/^/    /' "$D/hosts"

say "starting BasicAgentServer on $SERVER_ADDR:$PORT and BasicAgent"
ADMIN=$D/admin.sock
RUST_LOG=warn "$BIN/BasicAgentServer" serve --listen "$SERVER_ADDR:$PORT" \
    --cert "$D/server.pem" --key "$D/server.key" \
    --admin "$ADMIN" --events "$D/events.jsonl" --api "$SERVER_ADDR:0" \
    --state-dir "$D/server-state" 2>"$D/server.log" &
SERVER_PID=$!
ba_wait_socket "$ADMIN" || { echo "demo.sh: the server did not start:" >&2; cat "$D/server.log" >&2; exit 1; }

"$BIN/BasicAgent" -c "$D/agent.toml" -f -L "$D/agent.log" -P "$D/agent.pid" &
AGENT_PID=$!

# Wait (at most 20 s) until the agent shows up in the server's list.
HOST=
for _ in $(seq 100); do
    HOST=$("$BIN/BasicAgentServer" list --admin "$ADMIN" 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    print(json.loads(line).get("host", "")); break
' || true)
    [ -n "$HOST" ] && break
    kill -0 "$AGENT_PID" 2>/dev/null || { echo "demo.sh: the agent exited:" >&2; cat "$D/agent.log" >&2; exit 1; }
    sleep 0.2
done
[ -n "$HOST" ] || { echo "demo.sh: the agent did not connect within 20 s:" >&2; tail -n 20 "$D/agent.log" >&2; exit 1; }

say "BasicAgentServer list"
"$BIN/BasicAgentServer" list --admin "$ADMIN" | python3 -m json.tool --json-lines

call() {
    say "$1"
    shift
    echo "request: $1"
    # A failed response makes `call` exit 1; the demo shows it anyway.
    "$BIN/BasicAgentServer" call --admin "$ADMIN" --host "$HOST" --timeout 20 "$1" \
        | python3 -m json.tool || true
}
call "getinfo.kernel" '{"method":"getinfo.kernel"}'
call "getinfo.users -U root" '{"method":"getinfo.users","args":"-U root"}'
call "sync.bash" '{"method":"sync.bash","cmd":"echo hello from $(id -un); uname -r","timeout":10}'
call "agent.info (built in)" '{"method":"agent.info"}'
call "an unknown method (3022)" '{"method":"getinfo.nosuchthing"}'
call "getinfo.memory" '{"method":"getinfo.memory"}'

say "async.bash: answered at once with a task id; the result is pushed as task.done"
echo 'request: {"method":"async.bash","cmd":"echo started; sleep 1; echo finished"}'
ANSWER=$("$BIN/BasicAgentServer" call --admin "$ADMIN" --host "$HOST" --timeout 20 \
    '{"method":"async.bash","cmd":"echo started; sleep 1; echo finished"}')
echo "$ANSWER" | python3 -m json.tool
TASK=$(echo "$ANSWER" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["task"])')
sleep 0.3
call "task.status while it runs (output so far)" "{\"method\":\"task.status\",\"task\":\"$TASK\"}"
for _ in $(seq 50); do
    "$BIN/BasicAgentServer" tasks --admin "$ADMIN" | grep -q "$TASK" && break
    sleep 0.1
done
say "task.done received by the server (BasicAgentServer tasks)"
"$BIN/BasicAgentServer" tasks --admin "$ADMIN" | python3 -m json.tool --json-lines

say "schedule.add: getinfo.kernel every 2 s; each run is a task.done with schedule, scheduled_at, run"
echo 'request: {"method":"schedule.add","request":{"method":"getinfo.kernel"},"every":2,"count":2}'
SANSWER=$("$BIN/BasicAgentServer" call --admin "$ADMIN" --host "$HOST" --timeout 20 \
    '{"method":"schedule.add","request":{"method":"getinfo.kernel"},"every":2,"count":2}')
echo "$SANSWER" | python3 -m json.tool
SCHED=$(echo "$SANSWER" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["schedule"])')
for _ in $(seq 80); do
    [ "$("$BIN/BasicAgentServer" tasks --admin "$ADMIN" | grep -c "$SCHED")" -ge 2 ] && break
    sleep 0.1
done
call "schedule.get (two runs done, finished)" "{\"method\":\"schedule.get\",\"schedule\":\"$SCHED\"}"
say "the scheduled results, listed with the tasks"
"$BIN/BasicAgentServer" tasks --admin "$ADMIN" | grep "$SCHED" | python3 -m json.tool --json-lines
call "a bad cron expression (3021 naming the field)" '{"method":"schedule.add","request":{"method":"getinfo.kernel"},"cron":"*/5 * * * *"}'

# The operator HTTP API (docs/api.md): the address is in the `listening` event.
API=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e.get("event") == "listening" and e.get("api"):
        print(e["api"]); break
' "$D/events.jsonl")
http() {  # METHOD PATH [BODY]: prints the answer (NDJSON lines pretty-printed one by one)
    python3 - "$API" "$@" <<'PY'
import json, sys, urllib.request
api, method, path = sys.argv[1:4]
body = sys.argv[4].encode() if len(sys.argv) > 4 else None
req = urllib.request.Request(f"http://{api}{path}", data=body, method=method,
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=20) as r:
    for line in r:
        if line.strip():
            print(json.dumps(json.loads(line), indent=2))
PY
}
say "HTTP API on $API: GET /v1/agents"
http GET /v1/agents
say "HTTP API: POST /v1/call getinfo.kernel to all agents (NDJSON: one line per host, then the summary)"
echo 'body: {"target":{"all":true},"request":{"method":"getinfo.kernel"},"timeout":10}'
http POST /v1/call '{"target":{"all":true},"request":{"method":"getinfo.kernel"},"timeout":10}'
say "the operator console: http://$API/ (in a browser on this machine while the demo runs)"

say "agent log (last lines): 127.0.0.1 refused, then 127.0.0.2"
tail -n 12 "$D/agent.log"

say "done; stopping both and removing $D"
