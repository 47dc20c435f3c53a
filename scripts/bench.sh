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
#   scripts/bench.sh
#   BENCH_RUNS=5 scripts/bench.sh
#
# See docs/performance.md for what the numbers mean.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${BENCH_RUNS:-3}
ADDR=127.0.0.2

log() { printf '[bench] %s\n' "$*" >&2; }

need_pkg() { # need_pkg COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing $2"
    apt-get install -y "$2" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "$2" >/dev/null; }
}
[ "$(id -u)" = 0 ] || { echo "bench.sh: run as root (unshare -m, mount --bind, clear_refs)" >&2; exit 1; }
need_pkg hyperfine hyperfine
need_pkg openssl openssl
need_pkg python3 python3
need_pkg unshare util-linux

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
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
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
if cmd == "rss":      # kB summed over the process tree, processes, threads of the root, anon kB
    procs = tree(pid)
    print(sum(int(status(p)["VmRSS"][0]) for p in procs), len(procs), status(pid)["Threads"][0],
          sum(int(status(p)["RssAnon"][0]) for p in procs))
elif cmd == "cpu":    # utime + stime in clock ticks
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    print(int(fields[11]) + int(fields[12]))
elif cmd == "hwm":    # peak and current RSS in kB
    s = status(pid); print(s["VmHWM"][0], s["VmRSS"][0])
EOF
proc() { python3 "$D/proc.py" "$@"; }

PORT=$(python3 -c '
import socket
s = socket.socket(); s.bind(("127.0.0.2", 0)); print(s.getsockname()[1])')
scripts/make-certs.sh "$D" config.cargo.com >/dev/null
printf '%s config.cargo.com\n' "$ADDR" > "$D/hosts"
cat > "$D/agent.toml" <<EOF
[server]
name = "config.cargo.com"
port = $PORT
ca = "$D/ca.pem"
hosts_file = "$D/hosts"
connect_timeout = 2

[agent]
state_dir = "$D/state"
plugin_dir = "$BIN"
EOF

HF=(hyperfine -N --style none --warmup 20)

# ---------------------------------------------------------------- one-shots
# Each pair runs RUNS times in a row (A B A B ...) so that a burst of load
# from elsewhere hits both sides; the figure is the median of the ratios.
for i in $(seq "$RUNS"); do
    log "one-shot local query: BasicAgentCtl -c getinfo.kernel vs uname -a (round $i/$RUNS)"
    timeout 300 "${HF[@]}" --runs 100 --export-json "$D/hf_kernel_$i.json" \
        "$CTL -c getinfo.kernel" "uname -a" >/dev/null
    log "one-shot command: BasicAgentCtl -c sync.bash -j '{\"cmd\":\"true\"}' vs bash -c true (round $i/$RUNS)"
    timeout 300 "${HF[@]}" --runs 100 --export-json "$D/hf_bash_$i.json" \
        "$CTL -c sync.bash -j '{\"cmd\":\"true\"}'" "bash -c true" >/dev/null
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
    U=$D/users$n CTL=$CTL OUT=$D/hf_users$n.json timeout 300 unshare --mount --propagation private -- bash -c '
        set -euo pipefail
        for f in passwd group shadow; do mount --bind "$U/$f" "/etc/$f"; done
        hyperfine -N --style none --warmup 5 --runs 40 --export-json "$OUT" \
            "$CTL -c getinfo.users -a -A" "$CTL -c getinfo.kernel" >/dev/null'
done

# ----------------------------------------------------- the daemon, idle
log "idle daemon after connect (reference server on $ADDR:$PORT)"
"$SERVER" serve --listen "$ADDR:$PORT" --cert "$D/server.pem" --key "$D/server.key" \
    --admin "$D/admin.sock" 2>"$D/server.log" &
SERVE_PID=$!; PIDS+=("$SERVE_PID")
for _ in $(seq 50); do [ -S "$D/admin.sock" ] && break; sleep 0.1; done
"$BIN/BasicAgent" -c "$D/agent.toml" -f -L "$D/agent.log" -l warn &
AGENT=$!; PIDS+=("$AGENT")
connected=
for _ in $(seq 100); do
    if [ -n "$("$SERVER" list --admin "$D/admin.sock" 2>/dev/null)" ]; then connected=1; break; fi
    sleep 0.1
done
[ -n "$connected" ] || { echo "bench.sh: the agent did not connect" >&2; tail "$D/agent.log" >&2; exit 1; }
sleep 2
read -r IDLE_RSS IDLE_PROCS IDLE_THREADS IDLE_ANON < <(proc rss "$AGENT")
log "idle: ${IDLE_RSS} kB in $IDLE_PROCS process(es), $IDLE_THREADS threads"
kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true

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
read -r AFTER_RSS AFTER_PROCS AFTER_THREADS AFTER_ANON < <(proc rss "$AGENT")

# --------------------------------------------------------------- Zabbix
# ZABBIX PEER: the same figures for zabbix_agentd / zabbix_agent2 go here
# (separate issue). Write them to $D/zabbix.json as
# {"figure-name": value, ...}; the report puts them beside ours.

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

def pair(name):
    rounds = [hf(f"{name}_{i}") for i in range(1, runs + 1)]
    ratios = [a / b for a, b in rounds]
    return med(ratios), med([a for a, _ in rounds]), med([b for _, b in rounds]), ratios
ratio, ctl, uname, rs = pair("hf_kernel")
fig("oneshot_query_ratio", "one-shot getinfo.kernel (ctl) / uname -a", round(ratio, 2), "x",
    "<= 1.5x", ratio <= 1.5,
    f"{ctl*1e3:.2f} ms vs {uname*1e3:.2f} ms (hyperfine medians); rounds {[round(r, 2) for r in rs]}")
ratio, ctlb, bash, rs = pair("hf_bash")
over = (ratio - 1) * 100
fig("oneshot_command_overhead", "one-shot sync.bash true (ctl) vs bash -c true", round(over, 1), "%",
    "<= 30 %", over <= 30,
    f"{ctlb*1e3:.2f} ms vs {bash*1e3:.2f} ms; rounds {[round((r - 1) * 100) for r in rs]} %")
fig("idle_rss", "idle daemon after connect: RSS", round(idle_rss / 1024, 2), "MiB",
    "<= 4 MiB", idle_rss <= 4096, f"{idle_rss} kB, of which anonymous {idle_anon} kB (the rest is mapped files: the executable, libc)")
fig("idle_processes", "idle daemon: processes (threads)", idle_procs, "",
    "1 process", idle_procs == 1, f"{idle_threads} threads")

pipe = jl("pipelined")
rate = med([r["rate_per_s"] for r in pipe])
fig("pipelined_rate", "getinfo.kernel pipelined, depth 256", round(rate), "req/s",
    ">= 64000/s", rate >= 64000,
    f"runs {[round(r['rate_per_s']) for r in pipe]}, errors {sum(r['errors'] for r in pipe)}")
cpu = [c[0] / tck / (r["requests"] + 2000) * 10000 for c, r in zip(nums("pipelined.cpu"), pipe)]
fig("cpu_per_10k", "daemon CPU per 10 000 getinfo.kernel", round(med(cpu), 3), "s",
    "<= 0.3 s", med(cpu) <= 0.3, f"runs {[round(c, 3) for c in cpu]} (utime+stime, {tck} ticks/s)")
ser = jl("serial")
p50, p99 = med([r["p50_us"] for r in ser]), med([r["p99_us"] for r in ser])
fig("serial_p50", "getinfo.kernel one at a time: p50", round(p50), "us", "(info)", True,
    f"rate {round(med([r['rate_per_s'] for r in ser]))}/s")
fig("serial_p99", "getinfo.kernel one at a time: p99", round(p99), "us", "<= 1000 us", p99 <= 1000,
    f"max {round(max(r['max_us'] for r in ser))} us, errors {sum(r['errors'] for r in ser)}")
b4 = jl("bash4")
r4 = med([r["rate_per_s"] for r in b4])
fig("bash_rate_depth4", "sync.bash true, 4 in flight", round(r4), "cmd/s", ">= 2200/s", r4 >= 2200,
    f"runs {[round(r['rate_per_s']) for r in b4]}, p50 {round(med([r['p50_us'] for r in b4]))} us, "
    f"errors {sum(r['errors'] for r in b4)}")
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
zpath = f"{d}/zabbix.json"
zabbix = json.load(open(zpath)) if os.path.exists(zpath) else None

w = max(len(f["figure"]) for f in figs)
print(f"\nBasicAgent bench: {machine['nproc']} CPUs, {machine['cpu']}, kernel {machine['kernel']}, "
      f"medians of {runs} loadtest runs\n")
print(f"| {'figure':<{w}} | {'value':>14} | {'target':<20} | result |")
print(f"|{'-'*(w+2)}|{'-'*16}|{'-'*22}|--------|")
for f in figs:
    v = f"{f['value']} {f['unit']}".strip()
    res = "PASS" if f["pass"] else "MISS"
    if f["target"] == "(info)" or f["target"] == "(linearity)":
        res = "-"
    print(f"| {f['figure']:<{w}} | {v:>14} | {f['target']:<20} | {res:<6} |")
print()
for f in figs:
    if f["detail"]:
        print(f"  {f['figure']}: {f['detail']}")
with open("bench/results.json", "w") as out:
    json.dump({"machine": machine, "figures": figs,
               "zabbix": zabbix,  # ZABBIX PEER: filled in by the Zabbix issue
               "raw": {"pipelined": pipe, "serial": ser, "bash4": b4, "big_rss_kb": big,
                       "small_rss_kb": small, "spawn4_per_s": spawn4}},
              out, indent=2)
    out.write("\n")
print("\nwrote bench/results.json")
EOF
