#!/usr/bin/env python3
"""fleet.py: the measuring half of scripts/fleet-bench.sh (stdlib only).

    fleet.py run --label L --server-bin BIN --swarm-bin BIN --pki DIR --agents N
                 --ip 127.0.50.1 --swarms K --out FILE.json [--fit M]
        starts one server and K swarm processes on loopback, waits until the
        agents are up (or the server stops taking more), measures, stops
        everything, writes one JSON object.
    fleet.py table --new FILE --baseline FILE --out bench/fleet.json
        merges both runs, prints the table, writes the result.

Every wait is bounded; nothing leaves 127.0.0.0/8. Figures:
  sessions held       sum of the swarms' "up" when the ramp ended (all up,
                      or no new session for 15 s while the refused agents
                      keep retrying with the agent's backoff)
  rss per session     (server RSS with N sessions - RSS before the first) / N
  time to accept      swarm start -> last session up (the swarm's clock)
  fan-out             getinfo.kernel to every agent: POST /v1/call (NDJSON)
                      on the new server, `call --all` on the admin socket on
                      the baseline; each answer line timestamped on arrival,
                      first / p50 / p99 / last from the moment of the request
  agents list         GET /v1/agents (new) or `list` (baseline), median of 5
  cpu per 10k         server utime+stime (/proc/PID/stat) over the fan-out,
                      per 10 000 answers
  idle CPU            server and swarm CPU over 35 s with every session up
                      and quiet (heartbeats only), as a share of one core
"""

import argparse
import http.client
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print("[fleet]", *a, file=sys.stderr, flush=True)


def proc_facts(pid):
    """RSS (KiB), threads, open descriptors, CPU seconds of a process."""
    facts = {"rss_kib": None, "threads": None, "fds": None, "cpu_s": None}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    facts["rss_kib"] = int(line.split()[1])
                elif line.startswith("Threads:"):
                    facts["threads"] = int(line.split()[1])
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        facts["cpu_s"] = (int(rest[11]) + int(rest[12])) / CLK_TCK
        facts["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError, IndexError):
        pass
    return facts


def free_port(ip):
    s = socket.socket()
    s.bind((ip, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def read_json(path):
    try:
        with open(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def events(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    except OSError:
        pass
    return out


def pct(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]


def rounded(x, digits=4):
    return None if x is None else round(x, digits)


class Server:
    def __init__(self, binary, pki, ip, tmp, api_capable, token_file):
        self.tmp = tmp
        self.listen = f"{ip}:{free_port(ip)}"
        self.admin = os.path.join(tmp, "admin.sock")
        self.events = os.path.join(tmp, "events.jsonl")
        self.binary = binary
        cmd = [binary, "serve", "--listen", self.listen,
               "--cert", os.path.join(pki, "server.pem"), "--key", os.path.join(pki, "server.key"),
               "--admin", self.admin, "--events", self.events]
        self.api = None
        self.token = None
        if api_capable:
            cmd += ["--api", f"{ip}:{free_port(ip)}"]
            if token_file:
                cmd += ["--api-token-file", token_file]
                with open(token_file) as f:
                    self.token = f.read().strip()
            cmd += ["--state-dir", os.path.join(tmp, "state")] if "--state-dir" in api_capable else []
        self.stderr = open(os.path.join(tmp, "server.log"), "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.stderr,
                                     stderr=self.stderr, env=dict(os.environ, RUST_LOG="warn"))
        deadline = time.monotonic() + 60
        while True:
            ev = [e for e in events(self.events) if e.get("event") == "listening"]
            if ev:
                self.listen = ev[0].get("listen", self.listen)
                if api_capable:
                    self.api = ev[0].get("api") or cmd[cmd.index("--api") + 1]
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start; see {self.tmp}/server.log")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()

    # -- the operator's side -------------------------------------------------
    def headers(self):
        h = {"Content-Type": "application/json"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def http(self, timeout):
        host, port = self.api.rsplit(":", 1)
        return http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)

    def list_agents(self, timeout=30):
        """(seconds, count) for one listing, or (None, error)."""
        t0 = time.perf_counter()
        try:
            if self.api:
                c = self.http(timeout)
                c.request("GET", "/v1/agents", headers=self.headers())
                r = c.getresponse()
                body = r.read()
                dt = time.perf_counter() - t0
                if r.status != 200:
                    return None, f"HTTP {r.status}: {body[:200]!r}"
                return dt, len(json.loads(body))
            out = subprocess.run([self.binary, "list", "--admin", self.admin],
                                 capture_output=True, timeout=timeout)
            dt = time.perf_counter() - t0
            if out.returncode != 0:
                return None, out.stderr.decode(errors="replace").strip()[:200]
            return dt, len(out.stdout.splitlines())
        except (OSError, subprocess.TimeoutExpired, http.client.HTTPException, ValueError) as e:
            return None, f"{type(e).__name__}: {e}"

    def fanout(self, timeout):
        """getinfo.kernel to every agent; answer lines timestamped on arrival."""
        request = {"method": "getinfo.kernel"}
        stamps, failed, summary, error = [], 0, None, None
        t0 = time.perf_counter()
        try:
            if self.api:
                body = json.dumps({"target": {"all": True}, "request": request, "timeout": timeout})
                c = self.http(timeout + 30)
                c.request("POST", "/v1/call", body=body, headers=self.headers())
                r = c.getresponse()
                if r.status != 200:
                    error = f"HTTP {r.status}: {r.read()[:200]!r}"
                else:
                    while True:
                        line = r.readline()
                        if not line:
                            break
                        now = time.perf_counter() - t0
                        try:
                            obj = json.loads(line)
                        except ValueError:
                            continue
                        if "summary" in obj:
                            summary = obj["summary"]
                        elif obj.get("retcode") == 2:
                            stamps.append(now)
                        else:
                            failed += 1
            else:
                errfile = tempfile.TemporaryFile()
                p = subprocess.Popen([self.binary, "call", "--admin", self.admin, "--all",
                                      "--timeout", str(timeout), json.dumps(request)],
                                     stdout=subprocess.PIPE, stderr=errfile)
                deadline = time.monotonic() + timeout + 30
                import selectors
                sel = selectors.DefaultSelector()
                sel.register(p.stdout, selectors.EVENT_READ)
                buf = b""
                while time.monotonic() < deadline:
                    if not sel.select(timeout=1):
                        if p.poll() is not None:
                            break
                        continue
                    chunk = os.read(p.stdout.fileno(), 1 << 16)
                    if not chunk:
                        break
                    now = time.perf_counter() - t0
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        try:
                            obj = json.loads(line)
                        except ValueError:
                            continue
                        if obj.get("retcode") == 2:
                            stamps.append(now)
                        else:
                            failed += 1
                try:
                    p.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                    error = "the admin socket did not finish the call (killed)"
                errfile.seek(0)
                err = errfile.read().decode(errors="replace")
                failed += err.count("\n")
                if not stamps and err and not error:
                    error = err.strip().splitlines()[0][:200]
        except (OSError, http.client.HTTPException) as e:
            error = f"{type(e).__name__}: {e}"
        total = time.perf_counter() - t0
        return {
            "answered": len(stamps), "failed": failed, "seconds": rounded(total),
            "first_s": rounded(pct(stamps, 0.0)), "p50_s": rounded(pct(stamps, 0.5)),
            "p99_s": rounded(pct(stamps, 0.99)), "last_s": rounded(stamps[-1] if stamps else None),
            "summary": summary, "error": error,
        }


class Swarms:
    def __init__(self, binary, pki, server, agents, count, tmp, seed, retry):
        self.procs, self.status = [], []
        per = math.ceil(agents / count)
        first = 1
        for j in range(count):
            n = min(per, agents - (first - 1))
            if n <= 0:
                break
            status = os.path.join(tmp, f"swarm{j}.json")
            out = open(os.path.join(tmp, f"swarm{j}.out"), "wb")
            err = open(os.path.join(tmp, f"swarm{j}.log"), "wb")
            cmd = [binary, "--server", server, "--ca", os.path.join(pki, "ca.pem"),
                   "--agents", str(n), "--first", str(first), "--seed", seed,
                   "--source", f"127.0.{100 + j}.1-127.0.{100 + j}.20",
                   "--concurrency", "256", "--status-file", status, "--progress", "10"]
            if retry:
                cmd.append("--retry")
            self.procs.append((subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err), out, err))
            self.status.append(status)
            first += n

    def totals(self):
        t = {"up": 0, "resolved": 0, "refused": {}, "last_up_s": None, "ramp_s": None, "all_up": True}
        for path in self.status:
            s = read_json(path) or {}
            t["up"] += s.get("up", 0)
            t["resolved"] += (s.get("up", 0) + s.get("refused_total", 0)
                              + s.get("abandoned", 0) + s.get("lost", 0))
            for k, v in (s.get("refused") or {}).items():
                t["refused"][k] = t["refused"].get(k, 0) + v
            lu = s.get("last_up_seconds")
            if lu is not None:
                t["last_up_s"] = max(t["last_up_s"] or 0, lu)
            if s.get("ramp_seconds") is None:
                t["all_up"] = False
            else:
                t["ramp_s"] = max(t["ramp_s"] or 0, s["ramp_seconds"])
        return t

    def cpu(self):
        """CPU seconds of every swarm process so far (from /proc)."""
        total = 0.0
        for p, _, _ in self.procs:
            c = proc_facts(p.pid)["cpu_s"]
            if c is None:
                return None
            total += c
        return total

    def signal(self, sig):
        for p, _, _ in self.procs:
            if p.poll() is None:
                p.send_signal(sig)

    def stop(self):
        self.signal(signal.SIGTERM)
        reports = []
        for (p, out, err), path in zip(self.procs, self.status):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            out.close()
            err.close()
            reports.append(read_json(path))
        return reports


def ramp(swarms, agents, timeout, plateau, retry):
    """Waits until every agent is up, or resolved, or the count stops growing.

    With retry (the default, like a real fleet) refused agents keep knocking
    with the agent's backoff, and go on doing so while the operator side is
    measured; without it, a stalled ramp is closed (SIGUSR1) and the agents
    that never got a turn give up."""
    start = time.monotonic()
    last_up, last_change, closed = -1, start, None
    while True:
        t = swarms.totals()
        now = time.monotonic()
        if t["up"] != last_up:
            last_up, last_change = t["up"], now
        if t["up"] >= agents or t["resolved"] >= agents:
            return t
        stalled = now - last_change > plateau and now - start > plateau
        if retry and (stalled or now - start > timeout):
            log(f"ramp ended at {t['up']} sessions (no new session for {plateau:.0f} s or timeout)")
            return t
        if closed is None and (stalled or now - start > timeout):
            log(f"ramp stalled at {t['up']} sessions: closing the ramp (SIGUSR1)")
            swarms.signal(signal.SIGUSR1)
            closed = now
        # Attempts in flight end within connect + handshake timeouts (10 + 10 s).
        if closed is not None and now - closed > 30:
            return t
        time.sleep(0.25)


def run(a):
    # Under --workdir (fleet-bench.sh's temporary directory, removed on exit) when given.
    tmp = tempfile.mkdtemp(prefix=f"fleet-{a.label}-", dir=a.workdir)
    help_text = subprocess.run([a.server_bin, "serve", "--help"], capture_output=True).stdout.decode(errors="replace")
    help_text += subprocess.run([a.server_bin, "--help"], capture_output=True).stdout.decode(errors="replace")
    api_capable = help_text if "--api" in help_text else ""
    log(f"{a.label}: {a.agents} agents, {'HTTP API' if api_capable else 'admin socket'}, files in {tmp}")
    server = Server(a.server_bin, a.pki, a.ip, tmp, api_capable, a.token_file)
    result = {"label": a.label, "agents_requested": a.agents, "interface": "http" if api_capable else "admin-socket"}
    swarms = None
    try:
        time.sleep(1)
        before = proc_facts(server.proc.pid)
        swarms = Swarms(a.swarm_bin, a.pki, server.listen, a.agents, a.swarms, tmp, a.label, not a.no_retry)
        t = ramp(swarms, a.agents, a.ramp_timeout, a.plateau, not a.no_retry)
        ramp_cpu = proc_facts(server.proc.pid)["cpu_s"]
        time.sleep(2)
        # An idle window: both sides' CPU with every session up and quiet
        # (heartbeats only), as a share of one core.
        s0, w0, i0 = proc_facts(server.proc.pid)["cpu_s"], swarms.cpu(), time.monotonic()
        time.sleep(a.idle)
        s1, w1, i1 = proc_facts(server.proc.pid)["cpu_s"], swarms.cpu(), time.monotonic()
        idle = {"seconds": round(i1 - i0, 2),
                "server_core_share": rounded((s1 - s0) / (i1 - i0), 4) if None not in (s0, s1) else None,
                "swarm_core_share": rounded((w1 - w0) / (i1 - i0), 4) if None not in (w0, w1) else None}
        held = swarms.totals()["up"]
        at_n = proc_facts(server.proc.pid)
        log(f"{a.label}: {held} sessions held; server RSS {at_n['rss_kib']} KiB, {at_n['threads']} threads, {at_n['fds']} fds")
        result.update({
            "sessions_held": held,
            "all_up": held >= a.agents,
            "time_to_accept_s": rounded(t["ramp_s"] if t["all_up"] else None, 3),
            "last_up_s": rounded(t["last_up_s"], 3),
            "refused": t["refused"],
            "server_rss_kib_0": before["rss_kib"],
            "server_rss_kib_n": at_n["rss_kib"],
            "server_rss_per_session_kib": rounded((at_n["rss_kib"] - before["rss_kib"]) / held, 2) if held else None,
            "server_threads": at_n["threads"],
            "server_fds": at_n["fds"],
            "server_cpu_ramp_s": rounded(ramp_cpu - before["cpu_s"], 2) if ramp_cpu is not None else None,
            "idle": idle,
        })
        lists = []
        for _ in range(5):
            lists.append(server.list_agents())
            if lists[-1][0] is None:
                break  # locked out: do not wait 30 s five times
        ok = [dt for dt, _ in lists if dt is not None]
        result["agents_list"] = {
            "answered": len(ok), "of": len(lists),
            "median_s": rounded(pct(ok, 0.5)), "count": next((c for dt, c in lists if dt is not None), None),
            "error": next((c for dt, c in lists if dt is None), None),
        }
        result["operator_locked_out"] = not ok
        c0 = proc_facts(server.proc.pid)["cpu_s"]
        w0 = swarms.cpu()
        if ok:
            fan = server.fanout(a.call_timeout)
        else:
            fan = {"answered": 0, "failed": 0, "error": "operator locked out: " + str(result["agents_list"]["error"])}
            for k in ("seconds", "first_s", "p50_s", "p99_s", "last_s", "summary"):
                fan[k] = None
        c1 = proc_facts(server.proc.pid)["cpu_s"]
        w1 = swarms.cpu()
        fan["targeted"] = held
        # The swarm answers on one thread: if its CPU over the call is close
        # to the call's duration, the swarm, not the server, set the pace.
        fan["swarm_cpu_s"] = rounded(w1 - w0, 3) if None not in (w0, w1) else None
        if fan["answered"] and c0 is not None and c1 is not None:
            fan["server_cpu_s"] = rounded(c1 - c0, 3)
            result["cpu_s_per_10k_answers"] = rounded((c1 - c0) / fan["answered"] * 10000, 3)
        else:
            result["cpu_s_per_10k_answers"] = None
        result["fanout"] = fan
        log(f"{a.label}: fan-out {fan['answered']} answers, last {fan['last_s']} s, error {fan['error']}")
    finally:
        reports = swarms.stop() if swarms else []
        server.stop()
    sw = [r for r in reports if r]
    if sw:
        peak = sum(r.get("peak_up", 0) for r in sw)
        result["swarm"] = {
            "processes": len(sw),
            "rss_per_session_bytes": max(r.get("rss_per_session_bytes", 0) for r in sw),
            "cpu_seconds": round(sum(r.get("cpu_seconds", 0) for r in sw), 2),
            "threads": sum(r.get("threads", 0) for r in sw),
            "peak_up": peak,
            "answer_p50_us": max(r["latency"]["p50_us"] for r in sw),
            "answer_p99_us": max(r["latency"]["p99_us"] for r in sw),
            "refused": {k: sum((r.get("refused") or {}).get(k, 0) for r in sw) for k in (sw[0].get("refused") or {})},
            "refused_first": {k: v for r in sw for k, v in (r.get("refused_first") or {}).items()},
        }
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    log(f"{a.label}: wrote {a.out}")


def table(a):
    new = read_json(a.new)
    base = read_json(a.baseline)
    fit = read_json(a.baseline_fit) if a.baseline_fit else None
    rows = [
        ("agent sessions held", lambda r: r and f"{r['sessions_held']} of {r['agents_requested']}"),
        ("operator interface answers at N", lambda r: r and ("no (locked out)" if r["operator_locked_out"] else "yes")),
        ("server RSS per session (KiB)", lambda r: r and r.get("server_rss_per_session_kib")),
        ("server threads at N", lambda r: r and r.get("server_threads")),
        ("time to accept all (s)", lambda r: r and (r.get("time_to_accept_s") or f"- (last up {r.get('last_up_s')})")),
        ("fan-out first answer (s)", lambda r: r and r["fanout"].get("first_s")),
        ("fan-out p50 (s)", lambda r: r and r["fanout"].get("p50_s")),
        ("fan-out p99 (s)", lambda r: r and r["fanout"].get("p99_s")),
        ("fan-out last answer (s)", lambda r: r and r["fanout"].get("last_s")),
        ("fan-out answered", lambda r: r and f"{r['fanout']['answered']} of {r['sessions_held']}"),
        ("agents list at N, median (s)", lambda r: r and r["agents_list"].get("median_s")),
        ("server CPU s per 10k answers", lambda r: r and r.get("cpu_s_per_10k_answers")),
        ("server CPU idle at N (cores)", lambda r: r and r.get("idle", {}).get("server_core_share")),
        ("swarm CPU idle at N (cores)", lambda r: r and r.get("idle", {}).get("swarm_core_share")),
        ("swarm RSS per session (bytes)", lambda r: r and r.get("swarm", {}).get("rss_per_session_bytes")),
        ("swarm CPU s (whole run)", lambda r: r and r.get("swarm", {}).get("cpu_seconds")),
    ]
    cols = [("new server", new), ("baseline 71226fa", base)]
    if fit:
        cols.append((f"baseline at {fit['agents_requested']}", fit))
    width = max(len(r[0]) for r in rows) + 2
    head = "figure".ljust(width) + "".join(c[0].ljust(24) for c in cols)
    print(head)
    print("-" * len(head))
    for name, f in rows:
        cells = []
        for _, r in cols:
            try:
                v = f(r)
            except (KeyError, TypeError):
                v = None
            cells.append(("-" if v is None else str(v)).ljust(24))
        print(name.ljust(width) + "".join(cells))
    out = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": {"cpus": os.cpu_count()},
           "new": new, "baseline": base}
    if fit:
        out["baseline_fit"] = fit
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    log(f"wrote {a.out}")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--label", required=True)
    r.add_argument("--server-bin", required=True)
    r.add_argument("--swarm-bin", required=True)
    r.add_argument("--pki", required=True)
    r.add_argument("--agents", type=int, required=True)
    r.add_argument("--swarms", type=int, default=1)
    r.add_argument("--ip", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--token-file")
    r.add_argument("--workdir", help="parent of this run's files (default: the system temp dir)")
    r.add_argument("--no-retry", action="store_true",
                   help="each agent tries once (default: refused agents retry with backoff)")
    r.add_argument("--ramp-timeout", type=float, default=240)
    r.add_argument("--plateau", type=float, default=15)
    r.add_argument("--call-timeout", type=float, default=60)
    r.add_argument("--idle", type=float, default=35,
                   help="seconds of the idle CPU window (one heartbeat period, 30 s, and more)")
    t = sub.add_parser("table")
    t.add_argument("--new", required=True)
    t.add_argument("--baseline", required=True)
    t.add_argument("--baseline-fit")
    t.add_argument("--out", required=True)
    a = p.parse_args()
    if a.cmd == "run":
        ip = a.ip
        if not ip.startswith("127."):
            raise SystemExit("--ip must be a loopback address")
        run(a)
    else:
        table(a)


if __name__ == "__main__":
    main()
