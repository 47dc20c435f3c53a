#!/usr/bin/env bash
# bench.sh: whole-process figures for BasicAgent, each with its target.
#
# Release builds, loopback only (127.0.0.2), everything bounded in time.
# Ratios are measured side by side in the same run: each pair of commands
# runs back to back, BENCH_RUNS rounds (default 3), median of the ratios;
# loadtest figures are medians over BENCH_RUNS runs.
# Prints a table and writes bench/results.json. Needs root (unshare -m,
# mount --bind, /proc/PID/clear_refs). Installs hyperfine if missing.
#
# The peer is the Zabbix agent (zabbix_agentd, Debian package zabbix-agent),
# installed by this script if missing (its service kept from starting by a
# temporary policy-rc.d) and run in the foreground with
# scripts/zabbix_agentd.conf on 127.0.0.1 and a free port; every figure that
# has a Zabbix counterpart is measured for both in the same run. Without
# network access to the Debian mirrors the table says "peer unavailable".
#
#   scripts/bench.sh
#   BENCH_RUNS=5 scripts/bench.sh
#
# See docs/performance.md for what the numbers mean.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/lib/loopback.sh
RUNS=${BENCH_RUNS:-3}
ADDR=127.0.0.2

log() { printf '[bench] %s\n' "$*" >&2; }

need_pkg() { ba_need_pkg "$@"; }
[ "$(id -u)" = 0 ] || { echo "bench.sh: run as root (unshare -m, mount --bind, clear_refs)" >&2; exit 1; }
need_pkg hyperfine hyperfine
need_pkg openssl openssl
need_pkg python3 python3
need_pkg unshare util-linux

# The peer. policy-rc.d keeps the package's own service (0.0.0.0:10050) from
# starting on a machine with an init system; removed again at once.
ZBX=
if ! command -v zabbix_agentd >/dev/null 2>&1; then
    log "installing zabbix-agent (the peer)"
    made_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get install -y zabbix-agent >/dev/null 2>&1 \
        || { timeout 300 apt-get update >/dev/null 2>&1 && timeout 600 apt-get install -y zabbix-agent >/dev/null 2>&1; } \
        || log "zabbix-agent could not be installed: peer unavailable"
    [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
fi
command -v zabbix_agentd >/dev/null 2>&1 && ZBX=$(command -v zabbix_agentd)
[ -n "$ZBX" ] && log "peer: $("$ZBX" -V | head -n 1)"

log "building (cargo build --release --workspace)"
cargo build --release --workspace >&2
BIN=$ROOT/target/release
export BASICAGENT_PLUGIN_DIR=$BIN
CTL=$BIN/BasicAgentCtl
SERVER=$BIN/BasicAgentServer

D=$(mktemp -d /tmp/basicagent-bench.XXXXXX)
PIDS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    ba_stop "${PIDS[@]}"
    rm -rf "$D"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# /proc helpers: tree RSS, CPU ticks, peak RSS.
cat > "$D/proc.py" <<'EOF'
import os, sys
def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.split()
    return out
def tree(root):
    kids = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                kids.setdefault(int(status(p)["PPid"][0]), []).append(int(p))
            except (OSError, KeyError):
                pass
    todo, seen = [root], []
    while todo:
        p = todo.pop(); seen.append(p); todo += kids.get(p, [])
    return seen
cmd, pid = sys.argv[1], int(sys.argv[2])
if cmd == "rss":      # kB summed over the process tree, processes, threads of the root, anon kB, all threads
    procs = tree(pid)
    print(sum(int(status(p)["VmRSS"][0]) for p in procs), len(procs), status(pid)["Threads"][0],
          sum(int(status(p)["RssAnon"][0]) for p in procs),
          sum(int(status(p)["Threads"][0]) for p in procs))
elif cmd == "tree":   # the pids of the tree
    print(" ".join(map(str, tree(pid))))
elif cmd == "cputree":  # utime + stime + cutime + cstime summed over the tree, clock ticks
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])
        except OSError:
            pass
    print(total)
elif cmd == "cpu":    # utime + stime in clock ticks
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    print(int(fields[11]) + int(fields[12]))
elif cmd == "hwm":    # peak and current RSS in kB
    s = status(pid); print(s["VmHWM"][0], s["VmRSS"][0])
EOF
proc() { python3 "$D/proc.py" "$@"; }

PORT=$(ba_free_port "$ADDR")
ba_certs "$D" >/dev/null
ba_hosts_file "$D/hosts" "$ADDR"
ba_agent_config "$D/agent.toml" "$D" "$PORT" "$BIN" "ctl_socket = \"$D/run/ctl.sock\""

HF=(hyperfine -N --style none --warmup 20)

ZPORT=$(python3 -c '
import random, socket   # ListenPort must be 1024..32767: below the ephemeral range
for port in random.sample(range(20000, 32000), 200):
    try:
        s = socket.socket(); s.bind(("127.0.0.1", port)); print(port); break
    except OSError:
        pass')
ZCONF=$D/zabbix_agentd.conf
sed -e "s|@PORT@|$ZPORT|" -e "s|@DIR@|$D|" scripts/zabbix_agentd.conf > "$ZCONF"
ZQ=(); ZC=()
if [ -n "$ZBX" ]; then
    if "$ZBX" -c "$ZCONF" -t system.uname >/dev/null 2>&1; then
        ZQ=("$ZBX -c $ZCONF -t system.uname"); ZC=("$ZBX -c $ZCONF -t system.run[true]")
    else
        log "zabbix_agentd -t fails with our configuration: peer unavailable"; ZBX=
    fi
fi

# ---------------------------------------------------------------- one-shots
# Each pair runs RUNS times in a row (A B A B ...) so that a burst of load
# from elsewhere hits both sides; the figure is the median of the ratios.
for i in $(seq "$RUNS"); do
    log "one-shot local query: BasicAgentCtl -c getinfo.kernel vs uname -a (round $i/$RUNS)"
    timeout 300 "${HF[@]}" --runs 100 --export-json "$D/hf_kernel_$i.json" \
        "$CTL -c getinfo.kernel" "uname -a" "${ZQ[@]}" >/dev/null
    log "one-shot command: BasicAgentCtl -c sync.bash -j '{\"cmd\":\"true\"}' vs bash -c true (round $i/$RUNS)"
    timeout 300 "${HF[@]}" --runs 100 --export-json "$D/hf_bash_$i.json" \
        "$CTL -c sync.bash -j '{\"cmd\":\"true\"}'" "bash -c true" "${ZC[@]}" >/dev/null
done
log "baseline: 2000 x bash -c true, 4 at a time (xargs -P 4)"
python3 - "$D/spawn4.txt" <<'EOF2'
import subprocess, sys, time
t = time.monotonic()
subprocess.run("seq 2000 | xargs -P 4 -n 1 bash -c true", shell=True, check=True, timeout=120)
open(sys.argv[1], "w").write(f"{2000 / (time.monotonic() - t)}\n")
EOF2

# ------------------------------------------------ getinfo.users, N accounts
# Generated /etc/passwd, /etc/group and /etc/shadow (the real ones plus N
# users, each with a group, every 10th also in group "benchers"), bound
# over the real files in a private mount namespace that dies with the shell.
gen_users() { # gen_users N DIR
    python3 - "$1" "$2" <<'EOF'
import os, sys
n, d = int(sys.argv[1]), sys.argv[2]
os.makedirs(d, exist_ok=True)
def real(p):
    with open(p) as f: return f.read().rstrip("\n") + "\n"
pw, gr, sh = real("/etc/passwd"), real("/etc/group"), real("/etc/shadow")
members = []
for i in range(n):
    uid, name = 20000 + i, f"bench{i:05d}"
    pw += f"{name}:x:{uid}:{uid}:Bench User {i}:/home/{name}:/bin/bash\n"
    gr += f"{name}:x:{uid}:\n"
    sh += f"{name}:$6$salt$hash:20000:0:99999:7:::\n"
    if i % 10 == 0: members.append(name)
gr += "benchers:x:19999:" + ",".join(members) + "\n"
for name, text, mode in (("passwd", pw, 0o644), ("group", gr, 0o644), ("shadow", sh, 0o640)):
    with open(f"{d}/{name}", "w") as f: f.write(text)
    os.chmod(f"{d}/{name}", mode)
EOF
}
for n in 1000 5000 10000; do
    log "getinfo.users -A with $n extra users (private mount namespace)"
    gen_users "$n" "$D/users$n"
    ba_private_etc "$D/users$n" 300 -- \
        hyperfine -N --style none --warmup 5 --runs 40 --export-json "$D/hf_users$n.json" \
        "$CTL -c getinfo.users -a -A" "$CTL -c getinfo.kernel" >/dev/null
done

# ----------------------------------------------------- the daemon, idle
log "idle daemon after connect (reference server on $ADDR:$PORT)"
"$SERVER" serve --api none --listen "$ADDR:$PORT" --cert "$D/server.pem" --key "$D/server.key" \
    --admin "$D/admin.sock" 2>"$D/server.log" &
SERVE_PID=$!; PIDS+=("$SERVE_PID")
ba_wait_socket "$D/admin.sock" || true
# Time from daemon start to the first served request (a getinfo.kernel
# call through the server answered), RUNS times, each a fresh daemon.
stop_pid() { kill "$1" 2>/dev/null || true; for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done; kill -9 "$1" 2>/dev/null || true; }
for i in $(seq "$RUNS"); do
    read -r pid secs < <(timeout 60 python3 scripts/benchpeer.py agent-start "$D/admin.sock" "$SERVER" -- \
        "$BIN/BasicAgent" -c "$D/agent.toml" -f -L "$D/agent-start.log" -l warn)
    PIDS+=("$pid"); echo "$secs" >> "$D/start_ours.txt"; stop_pid "$pid"
done
log "daemon start to first served request: $(tr '\n' ' ' < "$D/start_ours.txt")s"
"$BIN/BasicAgent" -c "$D/agent.toml" -f -L "$D/agent.log" -l warn &
AGENT=$!; PIDS+=("$AGENT")
connected=
for _ in $(seq 100); do
    if [ -n "$("$SERVER" list --admin "$D/admin.sock" 2>/dev/null)" ]; then connected=1; break; fi
    sleep 0.1
done
[ -n "$connected" ] || { echo "bench.sh: the agent did not connect" >&2; tail "$D/agent.log" >&2; exit 1; }
sleep 2
# Idle means connected and nothing asked yet: measured before the commands
# through the control socket below load sync.bash and start its threads.
read -r IDLE_RSS IDLE_PROCS IDLE_THREADS IDLE_ANON _ < <(proc rss "$AGENT")
log "idle: ${IDLE_RSS} kB in $IDLE_PROCS process(es), $IDLE_THREADS threads"
# The one-shot command through the running daemon's control socket (the
# default path of BasicAgentCtl when the daemon runs; without
# BASICAGENT_PLUGIN_DIR, which means --local).
for i in $(seq "$RUNS"); do
    log "one-shot command through the daemon: BasicAgentCtl -S ctl.sock -c sync.bash vs bash -c true (round $i/$RUNS)"
    timeout 300 env -u BASICAGENT_PLUGIN_DIR "${HF[@]}" --runs 100 --export-json "$D/hf_ctlsock_$i.json" \
        "$CTL -S $D/run/ctl.sock -c sync.bash -j '{\"cmd\":\"true\"}'" "bash -c true" >/dev/null
done
# Server restart to reconnected: stop the server, start it again, time
# until the daemon is listed (its backoff starts at 1 s with jitter).
for i in $(seq "$RUNS"); do
    kill "$SERVE_PID"; for _ in $(seq 100); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.05; done
    wait "$SERVE_PID" 2>/dev/null || true
    read -r SERVE_PID secs < <(timeout 60 python3 scripts/benchpeer.py reconnect "$D/admin.sock" "$SERVER" -- \
        "$SERVER" serve --api none --listen "$ADDR:$PORT" --cert "$D/server.pem" --key "$D/server.key" --admin "$D/admin.sock")
    PIDS+=("$SERVE_PID"); echo "$secs" >> "$D/reconnect_ours.txt"
done
log "server restart to reconnected: $(tr '\n' ' ' < "$D/reconnect_ours.txt")s"
# Not this shell's child (benchpeer.py started it): `wait` would not wait,
# and the load tester below needs its port.
stop_pid "$SERVE_PID"

# ------------------------------------------------ over one TLS connection
# loadtest NAME ARGS...: one run against the daemon, JSON line appended to
# $D/NAME.jsonl and the daemon's CPU ticks for the run to $D/NAME.cpu.
loadtest() {
    local name=$1; shift
    local before after
    before=$(proc cpu "$AGENT")
    timeout 200 "$SERVER" loadtest --listen "$ADDR:$PORT" --cert "$D/server.pem" \
        --key "$D/server.key" --timeout 180 "$@" >>"$D/$name.jsonl" 2>>"$D/loadtest.log" \
        || { echo "bench.sh: loadtest $name failed:" >&2; tail -n 3 "$D/loadtest.log" >&2; return 1; }
    after=$(proc cpu "$AGENT")
    echo $((after - before)) >> "$D/$name.cpu"
}
for i in $(seq "$RUNS"); do
    log "getinfo.kernel pipelined, depth 256, 200000 requests (run $i/$RUNS)"
    loadtest pipelined --requests 200000 --depth 256 --warmup 2000
done
for i in $(seq "$RUNS"); do
    log "getinfo.kernel one at a time, 5000 requests (run $i/$RUNS)"
    loadtest serial --requests 5000 --depth 1 --warmup 500
done
for i in $(seq "$RUNS"); do
    log "sync.bash true one at a time, 500 requests (run $i/$RUNS)"
    loadtest bash1 --requests 500 --depth 1 --warmup 20 --json '{"method":"sync.bash","cmd":"true"}'
done
for i in $(seq "$RUNS"); do
    log "sync.bash true, depth 4, 2000 requests (run $i/$RUNS)"
    loadtest bash4 --requests 2000 --depth 4 --warmup 40 --json '{"method":"sync.bash","cmd":"true"}'
done
SMALL='{"method":"sync.bash","cmd":"echo small"}'
BIG=$(python3 -c 'import json; print(json.dumps({"method": "sync.bash", "timeout": 120,
    "cmd": "head -c 200000000 /dev/zero | tr \"\\0\" a"}))')
for i in $(seq "$RUNS"); do
    log "peak RSS while sync.bash prints 200 MB (run $i/$RUNS)"
    echo 5 > "/proc/$AGENT/clear_refs"     # VmHWM := VmRSS
    read -r _ rss_before < <(proc hwm "$AGENT")
    loadtest big --requests 1 --depth 1 --json "$BIG"
    read -r hwm_after _ < <(proc hwm "$AGENT")
    echo "$rss_before $hwm_after" >> "$D/big.rss"
    # Control: the same connection and request with 6 bytes of output.
    echo 5 > "/proc/$AGENT/clear_refs"
    read -r _ rss_before < <(proc hwm "$AGENT")
    loadtest small --requests 1 --depth 1 --json "$SMALL"
    read -r hwm_after _ < <(proc hwm "$AGENT")
    echo "$rss_before $hwm_after" >> "$D/small.rss"
done
read -r AFTER_RSS AFTER_PROCS AFTER_THREADS AFTER_ANON _ < <(proc rss "$AGENT")
stop_pid "$AGENT"

# --------------------------------------------------------------- Zabbix
# ZABBIX PEER: zabbix_agentd in the foreground with our configuration;
# start-up time, idle memory of all its processes, then passive checks
# (a fresh TCP connection per request, as Zabbix works) with the CPU time
# of all its processes. Our daemon is stopped by now: the two never share
# the CPUs during a measurement.
zbx_stop() { # the main process stops its children on SIGTERM
    local tree
    tree=$(proc tree "$1" 2>/dev/null || true)
    kill "$1" 2>/dev/null || true
    for p in $tree; do
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
        kill -9 "$p" 2>/dev/null || true
    done
}
if [ -n "$ZBX" ]; then
    for i in $(seq "$RUNS"); do
        read -r ZPID secs < <(timeout 60 python3 scripts/benchpeer.py zbx-start "$ZCONF" "$ZPORT")
        PIDS+=("$ZPID"); echo "$secs" >> "$D/start_zbx.txt"
        [ "$i" = "$RUNS" ] || zbx_stop "$ZPID"
    done
    log "zabbix_agentd start to first served request: $(tr '\n' ' ' < "$D/start_zbx.txt")s"
    sleep 2
    read -r Z_RSS Z_PROCS _ Z_ANON Z_THREADS < <(proc rss "$ZPID")
    log "zabbix idle: ${Z_RSS} kB in $Z_PROCS processes, $Z_THREADS threads"
    zrate() { # zrate NAME KEY REQUESTS CLIENTS
        local before after
        before=$(proc cputree "$ZPID")
        timeout 300 python3 scripts/benchpeer.py zbx-rate "$ZPORT" "$2" "$3" "$4" >> "$D/zbx_$1.jsonl"
        after=$(proc cputree "$ZPID")
        echo $((after - before)) >> "$D/zbx_$1.cpu"
    }
    for i in $(seq "$RUNS"); do
        log "zabbix passive system.uname, 1 client, 5000 requests (run $i/$RUNS)"
        zrate uname1 system.uname 5000 1
        log "zabbix passive system.run[true], 1 client, 500 requests (run $i/$RUNS)"
        zrate run1 'system.run[true]' 500 1
        log "zabbix passive system.run[true], 4 clients, 2000 requests (run $i/$RUNS)"
        zrate run4 'system.run[true]' 2000 4
    done
    python3 -c "import json,sys; print(json.dumps({'rss_kb': int(sys.argv[1]), 'processes': int(sys.argv[2]), 'threads': int(sys.argv[3]), 'anon_kb': int(sys.argv[4]), 'version': sys.argv[5]}))" \
        "$Z_RSS" "$Z_PROCS" "$Z_THREADS" "$Z_ANON" "$("$ZBX" -V | head -n 1)" > "$D/zabbix.json"
    zbx_stop "$ZPID"
fi

# ---------------------------------------------------------------- report
mkdir -p bench
python3 - "$D" "$RUNS" "$IDLE_RSS" "$IDLE_PROCS" "$IDLE_THREADS" \
    "$AFTER_RSS" "$AFTER_PROCS" "$AFTER_THREADS" "$(getconf CLK_TCK)" "$IDLE_ANON" "$AFTER_ANON" <<'EOF'
import json, os, platform, statistics, sys, time
d, runs = sys.argv[1], int(sys.argv[2])
idle_rss, idle_procs, idle_threads, after_rss, after_procs, after_threads, tck, idle_anon, after_anon = \
    map(int, sys.argv[3:12])

def hf(name):
    with open(f"{d}/{name}.json") as f:
        return [r["median"] for r in json.load(f)["results"]]
def jl(name):
    with open(f"{d}/{name}.jsonl") as f:
        return [json.loads(l) for l in f if l.strip()]
def nums(name):
    with open(f"{d}/{name}") as f:
        return [list(map(int, l.split())) for l in f if l.strip()]
med = statistics.median

figs = []
def fig(key, label, value, unit, target, ok, detail=""):
    figs.append({"key": key, "figure": label, "value": value, "unit": unit,
                 "target": target, "pass": bool(ok), "detail": detail})

zpath = f"{d}/zabbix.json"
zabbix = json.load(open(zpath)) if os.path.exists(zpath) else None
peer = {}   # key -> (peer value, ratio ours/peer)
def with_peer(key, value, ratio_digits=2):
    if value is None:
        return
    ours = next(f["value"] for f in figs if f["key"] == key)
    peer[key] = (value, round(ours / value, ratio_digits) if value else None)
def zjl(name):
    p = f"{d}/zbx_{name}.jsonl"
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return [json.loads(l) for l in f if l.strip()]
def floats(name):
    p = f"{d}/{name}"
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return [float(l.split()[0]) for l in f if l.strip()]

def pair(name):
    rounds = [hf(f"{name}_{i}") for i in range(1, runs + 1)]
    ratios = [r[0] / r[1] for r in rounds]
    zr = [r[2] / r[1] for r in rounds if len(r) > 2]
    return (med(ratios), med([r[0] for r in rounds]), med([r[1] for r in rounds]), ratios,
            med(zr) if zr else None, med([r[2] for r in rounds]) if zr else None)
ratio, ctl, uname, rs, zratio, zt = pair("hf_kernel")
fig("oneshot_query_ratio", "one-shot getinfo.kernel (ctl) / uname -a", round(ratio, 2), "x",
    "<= 1.5x", ratio <= 1.5,
    f"{ctl*1e3:.2f} ms vs {uname*1e3:.2f} ms (hyperfine medians); rounds {[round(r, 2) for r in rs]}"
    + (f"; zabbix_agentd -t system.uname {zt*1e3:.2f} ms = {zratio:.2f}x uname -a" if zt else ""))
with_peer("oneshot_query_ratio", round(zratio, 2) if zratio else None)
ratio, ctlb, bash, rs, zratio, zt = pair("hf_bash")
over = (ratio - 1) * 100
fig("oneshot_command_overhead", "one-shot sync.bash true (ctl) vs bash -c true", round(over, 1), "%",
    "<= 30 %", over <= 30,
    f"{ctlb*1e3:.2f} ms vs {bash*1e3:.2f} ms; rounds {[round((r - 1) * 100) for r in rs]} %"
    + (f"; zabbix_agentd -t system.run[true] {zt*1e3:.2f} ms" if zt else ""))
if zratio:
    peer["oneshot_command_overhead"] = (round((zratio - 1) * 100, 1), round(ratio / zratio, 2))
ratio, ctls, bash, rs, _, _ = pair("hf_ctlsock")
fig("oneshot_command_daemon_ratio", "one-shot sync.bash true through the daemon's socket (ctl) / bash -c true",
    round(ratio, 2), "x", "<= 1.3x", ratio <= 1.3,
    f"{ctls*1e3:.2f} ms vs {bash*1e3:.2f} ms (hyperfine medians); rounds {[round(r, 2) for r in rs]}")
fig("idle_rss", "idle daemon after connect: RSS", round(idle_rss / 1024, 2), "MiB",
    "<= 4 MiB", idle_rss <= 4096, f"{idle_rss} kB, of which anonymous {idle_anon} kB (the rest is mapped files: the executable, libc)"
    + (f"; zabbix_agentd {zabbix['rss_kb']} kB, anonymous {zabbix['anon_kb']} kB" if zabbix else ""))
with_peer("idle_rss", round(zabbix["rss_kb"] / 1024, 2) if zabbix else None)
fig("idle_processes", "idle daemon: processes", idle_procs, "",
    "1 process", idle_procs == 1, f"{idle_threads} threads")
with_peer("idle_processes", zabbix["processes"] if zabbix else None)
fig("idle_threads", "idle daemon: threads (all processes)", idle_threads, "", "(info)", True, "")
with_peer("idle_threads", zabbix["threads"] if zabbix else None)
so, sz = floats("start_ours.txt"), floats("start_zbx.txt")
fig("start_to_first_request", "daemon start to first served request", round(med(so) * 1e3), "ms",
    "(info)", True, f"runs {[round(x * 1e3) for x in so]} ms (ours: connect, TLS, init, one call via the server)"
    + (f"; zabbix runs {[round(x * 1e3) for x in sz]} ms (listening, agent.ping answered)" if sz else ""))
with_peer("start_to_first_request", round(med(sz) * 1e3) if sz else None)
rc = floats("reconnect_ours.txt")
fig("server_restart_reconnect", "server restart to reconnected", round(med(rc) * 1e3), "ms", "(info)", True,
    f"runs {[round(x * 1e3) for x in rc]} ms; reconnect backoff starts at 1 s with jitter. "
    "Zabbix passive checks have no session: nothing to reconnect")

pipe = jl("pipelined")
rate = med([r["rate_per_s"] for r in pipe])
fig("pipelined_rate", "getinfo.kernel pipelined, depth 256", round(rate), "req/s",
    ">= 64000/s", rate >= 64000,
    f"runs {[round(r['rate_per_s']) for r in pipe]}, errors {sum(r['errors'] for r in pipe)}")
zu = zjl("uname1")
with_peer("pipelined_rate", round(med([r["rate_per_s"] for r in zu])) if zu else None)
cpu = [c[0] / tck / (r["requests"] + 2000) * 10000 for c, r in zip(nums("pipelined.cpu"), pipe)]
fig("cpu_per_10k", "daemon CPU per 10 000 getinfo.kernel", round(med(cpu), 3), "s",
    "<= 0.3 s", med(cpu) <= 0.3, f"runs {[round(c, 3) for c in cpu]} (utime+stime, {tck} ticks/s)")
if zu:
    zc = [c[0] / tck / r["requests"] * 10000 for c, r in zip(nums("zbx_uname1.cpu"), zu)]
    with_peer("cpu_per_10k", round(med(zc), 3), 2)
ser = jl("serial")
p50, p99 = med([r["p50_us"] for r in ser]), med([r["p99_us"] for r in ser])
fig("serial_rate", "getinfo.kernel one at a time: rate", round(med([r['rate_per_s'] for r in ser])),
    "req/s", "(info)", True, "ours over one TLS session; Zabbix system.uname, a TCP connection per request")
with_peer("serial_rate", round(med([r["rate_per_s"] for r in zu])) if zu else None)
fig("serial_p50", "getinfo.kernel one at a time: p50", round(p50), "us", "(info)", True,
    f"rate {round(med([r['rate_per_s'] for r in ser]))}/s")
with_peer("serial_p50", round(med([r["p50_us"] for r in zu])) if zu else None)
fig("serial_p99", "getinfo.kernel one at a time: p99", round(p99), "us", "<= 1000 us", p99 <= 1000,
    f"max {round(max(r['max_us'] for r in ser))} us, errors {sum(r['errors'] for r in ser)}")
with_peer("serial_p99", round(med([r["p99_us"] for r in zu])) if zu else None)
b1 = jl("bash1")
zr1 = zjl("run1")
fig("bash_rate_serial", "sync.bash true one at a time: rate", round(med([r['rate_per_s'] for r in b1])), "cmd/s",
    "(info)", True, f"p50 {round(med([r['p50_us'] for r in b1]))} us, p99 {round(med([r['p99_us'] for r in b1]))} us, "
    f"errors {sum(r['errors'] for r in b1)}"
    + (f"; zabbix system.run[true] p50 {round(med([r['p50_us'] for r in zr1]))} us, "
       f"p99 {round(med([r['p99_us'] for r in zr1]))} us, errors {sum(r['errors'] for r in zr1)}" if zr1 else ""))
with_peer("bash_rate_serial", round(med([r["rate_per_s"] for r in zr1])) if zr1 else None)
b4 = jl("bash4")
r4 = med([r["rate_per_s"] for r in b4])
fig("bash_rate_depth4", "sync.bash true, 4 in flight", round(r4), "cmd/s", ">= 2200/s", r4 >= 2200,
    f"runs {[round(r['rate_per_s']) for r in b4]}, p50 {round(med([r['p50_us'] for r in b4]))} us, "
    f"errors {sum(r['errors'] for r in b4)}")
zr4 = zjl("run4")
if zr4:
    z4 = med([r["rate_per_s"] for r in zr4])
    with_peer("bash_rate_depth4", round(z4))
    fig("bash_rate_vs_zabbix", "sync.bash true 4 in flight / Zabbix system.run[true] 4 clients",
        round(r4 / z4, 2), "x", ">= 1.5x", r4 / z4 >= 1.5,
        f"zabbix runs {[round(r['rate_per_s']) for r in zr4]}, p50 {round(med([r['p50_us'] for r in zr4]))} us, "
        f"errors {sum(r['errors'] for r in zr4)}")
with open(f"{d}/spawn4.txt") as f:
    spawn4 = float(f.read())
fig("bash_rate_baseline", "baseline: bash -c true, 4 at a time (xargs)", round(spawn4), "cmd/s", "(info)", True,
    f"sync.bash reaches {r4 / spawn4 * 100:.0f} % of it")
big = nums("big.rss")
small = nums("small.rss")
sgrowth = med([h - b for b, h in small])
growth = med([h - b for b, h in big])
fig("big_output_rss_growth", "peak RSS growth, sync.bash printing 200 MB", round(growth / 1024, 2), "MiB",
    "<= 2 MiB (cap 1 + 1)", growth <= 2048,
    f"idle {med([b for b, _ in big])} kB -> peak {med([h for _, h in big])} kB; "
    f"{round(med([r['seconds'] for r in jl('big')]), 2)} s per run, errors {sum(r['errors'] for r in jl('big'))}")
fig("small_output_rss_growth", "control: same with 6 bytes of output", round(sgrowth / 1024, 2), "MiB",
    "(info)", True, "new TLS connection + one sync.bash, measured the same way")
users = {}
for n in (1000, 5000, 10000):
    u, k = hf(f"hf_users{n}")
    users[n] = (u - k) * 1e3
    fig(f"users_{n}", f"getinfo.users -A, {n} extra users: time in plugin", round(users[n], 2), "ms",
        "<= 20 ms" if n == 10000 else "(linearity)", users[n] <= 20 if n == 10000 else True,
        f"{u*1e3:.2f} ms vs getinfo.kernel {k*1e3:.2f} ms")
per = {n: users[n] / n * 1000 for n in users}
fig("users_linearity", "getinfo.users: us per user at 1k / 5k / 10k", round(per[10000], 2), "us/user",
    "(info)", True, " / ".join(f"{per[n]:.2f}" for n in (1000, 5000, 10000)))
fig("after_rss", "daemon RSS after all runs (plugins loaded)", round(after_rss / 1024, 2), "MiB",
    "(info)", True, f"{after_procs} process(es), {after_threads} threads, anonymous {after_anon} kB")

def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"
machine = {"nproc": os.cpu_count(), "cpu": cpu_model(), "kernel": platform.release(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": runs}
for f in figs:
    if f["key"] in peer:
        f["zabbix"], f["ratio"] = peer[f["key"]]

w = max(len(f["figure"]) for f in figs)
print(f"\nBasicAgent bench: {machine['nproc']} CPUs, {machine['cpu']}, kernel {machine['kernel']}, "
      f"medians of {runs} runs; peer: {zabbix['version'] if zabbix else 'peer unavailable'}\n")
print(f"| {'figure':<{w}} | {'BasicAgent':>14} | {'Zabbix agentd':>14} | {'ours/peer':>9} | {'target':<20} | result |")
print(f"|{'-'*(w+2)}|{'-'*16}|{'-'*16}|{'-'*11}|{'-'*22}|--------|")
for f in figs:
    v = f"{f['value']} {f['unit']}".strip()
    z = f"{f['zabbix']} {f['unit']}".strip() if "zabbix" in f else ("-" if zabbix or "peer" else "-")
    r = f"{f['ratio']}x" if f.get("ratio") is not None else "-"
    res = "PASS" if f["pass"] else "MISS"
    if f["target"] == "(info)" or f["target"] == "(linearity)":
        res = "-"
    print(f"| {f['figure']:<{w}} | {v:>14} | {z:>14} | {r:>9} | {f['target']:<20} | {res:<6} |")
if not zabbix:
    print("\nZabbix agent: peer unavailable (zabbix-agent could not be installed or run)")
print()
for f in figs:
    if f["detail"]:
        print(f"  {f['figure']}: {f['detail']}")
with open("bench/results.json", "w") as out:
    json.dump({"machine": machine, "figures": figs,
               "zabbix": zabbix,
               "raw": {"pipelined": pipe, "serial": ser, "bash1": b1, "bash4": b4, "big_rss_kb": big,
                       "zabbix_uname1": zu, "zabbix_run1": zr1, "zabbix_run4": zr4,
                       "start_s": so, "zabbix_start_s": sz, "reconnect_s": rc,
                       "small_rss_kb": small, "spawn4_per_s": spawn4}},
              out, indent=2)
    out.write("\n")
print("\nwrote bench/results.json")
EOF
