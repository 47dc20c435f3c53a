#!/usr/bin/env python3
"""soak.py: drives one BasicAgent daemon through the reference server for a
while and checks that nothing was lost, doubled or leaked.

Started by scripts/soak.sh (which builds, makes certificates and the agent
configuration, and cleans up). This script starts `BasicAgentServer serve`
(with an events file) and the daemon, then runs, for --duration seconds:

* --workers threads calling, through the admin socket, a random mix of the
  getinfo collectors present, sync.bash (small, 200 KB and 3 MB outputs,
  failing and timed-out commands), async.bash (results checked at the end),
  task.status/task.list, unknown methods and bad parameters;
* one thread sending raw garbage lines (not JSON, not UTF-8, arrays, objects
  without a method, bad ids, blank lines) and, now and then, a frame longer
  than the daemon's maximum (default 16 MiB + 1 KiB);
* every --restart-every seconds an abrupt disconnect: the server is killed
  (SIGKILL, or SIGTERM every other time) and started again; the daemon must
  reconnect and redeliver unacknowledged task results.

Checks at the end (each printed, exit status 1 if any fails):

* every request the server sent got exactly one response (from the events
  file: `request` vs `response` events, per server incarnation); requests
  in flight when the server was killed may have none, never two;
* every admin call that was not interrupted by a kill got its answer;
* every garbage line and oversized frame got exactly one `"id": null` 3020;
* every async task's result arrived (a `task_done` event per task id);
* the daemon is the same process, its RSS grew by at most --rss-bound-kb
  between the end of the warm-up and the end, its open fds are the same
  number, and it has no child process left.
"""

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

COLLECTORS = ["getinfo.kernel", "getinfo.os", "getinfo.cpu", "getinfo.memory",
              "getinfo.users", "getinfo.groups", "getinfo.disks", "getinfo.network",
              "getinfo.processes", "getinfo.sockets", "getinfo.packages"]


class NotConnected(Exception):
    """The admin socket refused, or the agent is not connected: nothing sent."""


class Interrupted(Exception):
    """The server went away before finishing the admin command."""


def log(msg):
    print(f"[soak] {msg}", file=sys.stderr, flush=True)


class Soak:
    def __init__(self, a):
        self.a = a
        self.d = a.dir
        self.admin_path = os.path.join(self.d, "admin.sock")
        self.events = os.path.join(self.d, "events.jsonl")
        self.server = None
        self.agent = None
        self.host = None
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.counts = {}
        self.failures = []
        self.tasks = set()
        self.garbage_sent = 0
        self.garbage_answered = 0
        self.garbage_unanswered = []
        self.reconnects = []
        self.methods = []

    # ------------------------------------------------------------ processes
    def note_pid(self, pid):
        with open(os.path.join(self.d, "pids"), "a") as f:
            f.write(f"{pid}\n")

    def start_server(self):
        err = open(os.path.join(self.d, "server.log"), "a")
        self.server = subprocess.Popen(
            [self.a.server_bin, "serve", "--listen", self.a.listen,
             "--cert", os.path.join(self.d, "server.pem"),
             "--key", os.path.join(self.d, "server.key"),
             "--admin", self.admin_path, "--events", self.events],
            stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        err.close()
        self.note_pid(self.server.pid)

    def start_agent(self):
        self.agent = subprocess.Popen(
            [self.a.agent_bin, "-c", os.path.join(self.d, "agent.toml"), "-f",
             "-L", os.path.join(self.d, "agent.log"), "-l", "info"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.note_pid(self.agent.pid)

    def wait_connected(self, timeout=30.0):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                lines, _, _ = self.admin({"cmd": "list"}, timeout=5)
                for line in lines:
                    self.host = json.loads(line)["host"]
                    return time.monotonic() - t0
            except (NotConnected, Interrupted, OSError, ValueError):
                pass
            time.sleep(0.02)
        raise RuntimeError("the agent did not connect within %.0f s" % timeout)

    def kill_server(self, sig):
        self.server.send_signal(sig)
        try:
            self.server.wait(10)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()

    # ---------------------------------------------------------------- admin
    def admin(self, request, payload=None, timeout=60.0):
        """One admin command: (result lines, problem lines, done flag)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            try:
                s.connect(self.admin_path)
            except OSError as e:
                raise NotConnected(str(e))
            s.sendall(json.dumps(request).encode() + b"\n" + (payload or b""))
            s.shutdown(socket.SHUT_WR)
            buf = b""
            while True:
                try:
                    chunk = s.recv(1 << 20)
                except socket.timeout:
                    raise Interrupted("admin timeout")
                except OSError as e:
                    raise Interrupted(str(e))
                if not chunk:
                    break
                buf += chunk
        finally:
            s.close()
        lines, problems = [], []
        for line in buf.decode("utf-8", "replace").splitlines():
            obj = json.loads(line)
            if "admin_done" in obj:
                if not lines and any("is connected" in p or "not connected" in p for p in problems):
                    raise NotConnected(problems[0])
                return lines, problems, obj["admin_done"]
            if "admin_error" in obj:
                problems.append(obj["admin_error"])
            else:
                lines.append(line)
        raise Interrupted("admin connection closed before admin_done")

    def count(self, key, n=1):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def fail(self, msg):
        with self.lock:
            if len(self.failures) < 200:
                self.failures.append(msg)

    def call(self, req, timeout=30.0):
        """Sends one request; returns the response object, or None when the
        call was not sent or was interrupted by a server kill."""
        try:
            lines, problems, _ = self.admin(
                {"cmd": "call", "host": self.host, "all": False, "timeout": timeout,
                 "request": json.dumps(req)}, timeout=timeout + 10)
        except NotConnected:
            self.count("calls_not_sent")
            time.sleep(0.02)
            return None
        except Interrupted:
            self.count("calls_interrupted")
            return None
        if any("disconnected before answering" in p for p in problems):
            self.count("calls_interrupted")
            return None
        if len(lines) != 1:
            self.fail(f"call {str(req)[:80]}: {len(lines)} answers {str(lines)[:200]}, problems {problems}")
            self.count("calls_unanswered")
            return None
        self.count("calls_answered")
        return json.loads(lines[0])

    # -------------------------------------------------------------- workers
    def one_op(self, rng):
        r = rng.random()
        if r < 0.40:
            m = rng.choice(self.methods)
            resp = self.call({"method": m})
            self.expect(resp, m, {2})
        elif r < 0.55:
            cmd = rng.choice(["true", "echo $RANDOM", "exit 3", "printf '%s' {1..40000}",
                              "cat /proc/self/status >/dev/null", "echo err >&2"])
            resp = self.call({"method": "sync.bash", "cmd": cmd})
            self.expect(resp, "sync.bash", {2})
        elif r < 0.57:
            # 3 MB of output: capped and truncated, the daemon's memory must not keep it.
            resp = self.call({"method": "sync.bash", "cmd": "head -c 3000000 /dev/zero | tr '\\0' b"})
            self.expect(resp, "sync.bash big", {2})
        elif r < 0.59:
            resp = self.call({"method": "sync.bash", "cmd": "sleep 5", "timeout": 1})
            self.expect(resp, "sync.bash timeout", {3023})
        elif r < 0.72:
            cmd = rng.choice(["true", "sleep 0.%d; echo done" % rng.randint(1, 9), "exit 1",
                              "head -c 100000 /dev/urandom | od | tail -n 1"])
            resp = self.call({"method": "async.bash", "cmd": cmd})
            if self.expect(resp, "async.bash", {2}):
                task = (resp.get("data") or {}).get("task")
                if not task:
                    self.fail(f"async.bash answered without a task id: {resp}")
                else:
                    with self.lock:
                        self.tasks.add(task)
        elif r < 0.78:
            if rng.random() < 0.5:
                resp = self.call({"method": "task.list"})
                self.expect(resp, "task.list", {2})
            else:
                with self.lock:
                    task = rng.choice(sorted(self.tasks)) if self.tasks else "0000-abcd"
                resp = self.call({"method": "task.status", "task": task})
                self.expect(resp, "task.status", {2, 3021})
        elif r < 0.84:
            resp = self.call({"method": "nosuch.method"})
            self.expect(resp, "unknown method", {3022})
        elif r < 0.90:
            resp = self.call({"method": "getinfo.users", "args": "-Q --bogus"})
            self.expect(resp, "bad args", {3021})
        else:
            resp = self.call({"method": "ping"})
            self.expect(resp, "ping", {2})

    def expect(self, resp, what, codes):
        if resp is None:
            return False
        if resp.get("retcode") not in codes:
            self.fail(f"{what}: retcode {resp.get('retcode')} (want {sorted(codes)}): "
                      f"{str(resp)[:300]}")
            return False
        self.count("answers_checked")
        return True

    def worker(self, n):
        rng = random.Random(self.a.seed * 1000 + n)
        while not self.stop.is_set():
            self.one_op(rng)
            self.count("ops")

    def garbage(self):
        rng = random.Random(self.a.seed)
        lines = [b"not json", b"\xff\xfe\x80 not utf-8", b"[1,2,3]", b"{\"no\":\"method\"}",
                 b"{\"id\":{\"x\":1},\"method\":\"getinfo.kernel\"}", b"{", b"\"string\"",
                 b"{\"id\":true,\"method\":\"ping\"}", b"\x00\x00\x00", b"{}\r"]
        next_big = time.monotonic() + 5
        while not self.stop.is_set():
            if time.monotonic() >= next_big:
                payload = b"{\"method\":\"getinfo.kernel\",\"pad\":\"" + \
                    b"x" * (self.a.max_frame + 1024) + b"\"}\n"
                kind = "oversized"
                next_big = time.monotonic() + self.a.oversized_every
            else:
                payload = rng.choice(lines) + b"\n"
                kind = "garbage"
            try:
                lines_out, problems, _ = self.admin(
                    {"cmd": "send", "host": self.host, "len": len(payload), "timeout": 20.0},
                    payload, timeout=40)
            except NotConnected:
                time.sleep(0.05)
                continue
            except Interrupted:
                self.count(f"{kind}_interrupted")
                continue
            if problems and not lines_out:
                # Sent into a connection that was going away.
                self.count(f"{kind}_not_sent")
                continue
            self.count(f"{kind}_sent")
            if len(lines_out) == 1 and json.loads(lines_out[0]).get("retcode") == 3020:
                self.count(f"{kind}_answered")
            else:
                self.fail(f"{kind} line {payload[:40]!r}: answers {lines_out} problems {problems}")
            time.sleep(rng.random() * 0.05)

    # ----------------------------------------------------------- the daemon
    def daemon_state(self):
        pid = self.agent.pid
        with open(f"/proc/{pid}/status") as f:
            st = dict(line.split(":", 1) for line in f)
        rss = int(st["VmRSS"].split()[0])
        threads = int(st["Threads"])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        kids = []
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    with open(f"/proc/{p}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    if int(fields[1]) == pid:
                        kids.append(int(p))
                except OSError:
                    pass
        return {"rss_kb": rss, "hwm_kb": int(st["VmHWM"].split()[0]), "fds": fds,
                "threads": threads, "children": kids}

    def quiesce(self, timeout=30.0):
        """Waits until the daemon runs no task and no child."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            resp = self.call({"method": "task.list"})
            running = 0
            if resp and resp.get("data"):
                running = sum(1 for t in resp["data"].get("tasks", [])
                              if t.get("state") in ("running", "cancelling"))
            if running == 0 and not self.daemon_state()["children"]:
                return True
            time.sleep(0.2)
        return False

    # ------------------------------------------------------------------ run
    def run(self):
        plugins = set(os.listdir(self.a.plugin_dir))
        self.methods = [m for m in COLLECTORS
                        if "lib" + m.replace(".", "_") + ".so" in plugins]
        log(f"collectors: {' '.join(self.methods)}")
        self.start_server()
        self.start_agent()
        first = self.wait_connected()
        log(f"agent connected after {first:.2f} s (host {self.host})")

        # Warm-up: every kind of request once, so every plugin is loaded
        # and the executor threads exist before the first measurement.
        for m in self.methods + ["ping", "task.list"]:
            self.call({"method": m})
        self.call({"method": "sync.bash", "cmd": "head -c 3000000 /dev/zero | tr '\\0' b"})
        resp = self.call({"method": "async.bash", "cmd": "true"})
        if resp and resp.get("data", {}).get("task"):
            self.tasks.add(resp["data"]["task"])
        self.quiesce()
        time.sleep(1)
        start = self.daemon_state()
        log(f"daemon after warm-up: {start}")

        threads = [threading.Thread(target=self.worker, args=(i,), daemon=True)
                   for i in range(self.a.workers)]
        threads.append(threading.Thread(target=self.garbage, daemon=True))
        for t in threads:
            t.start()
        t_end = time.monotonic() + self.a.duration
        next_restart = time.monotonic() + self.a.restart_every
        kills = 0
        while time.monotonic() < t_end:
            time.sleep(min(0.5, max(0.0, t_end - time.monotonic())))
            if self.agent.poll() is not None:
                self.fail(f"the daemon exited with status {self.agent.returncode}")
                break
            if time.monotonic() >= next_restart and time.monotonic() < t_end - 5:
                sig = signal.SIGKILL if kills % 2 == 0 else signal.SIGTERM
                kills += 1
                log(f"abrupt disconnect {kills}: {signal.Signals(sig).name} to the server")
                self.kill_server(sig)
                time.sleep(0.2)
                self.start_server()
                t0 = time.monotonic()
                took = self.wait_connected()
                self.reconnects.append(took)
                log(f"reconnected after {took:.2f} s")
                next_restart = time.monotonic() + self.a.restart_every
        self.stop.set()
        for t in threads:
            t.join(120)
        log("load stopped; waiting for tasks and children to finish")
        quiet = self.quiesce(60)
        # Every async result must arrive: give redelivery some time.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            missing = self.tasks - self.task_done_ids()
            if not missing:
                break
            time.sleep(0.5)
        # Cool-down: ordinary traffic, so that buffers sized by the last
        # big frame or output are released the way they are in service.
        for i in range(100):
            self.call({"method": self.methods[i % len(self.methods)]})
        time.sleep(2)
        end = self.daemon_state()
        log(f"daemon at the end: {end}")
        return self.check(start, end, quiet, kills)

    def read_events(self):
        out = []
        with open(self.events, "rb") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    self.fail(f"events file: bad line {line[:80]!r}")
        return out

    def task_done_ids(self):
        return {e.get("task") for e in self.read_events() if e.get("event") == "task_done"}

    def check(self, start, end, quiet, kills):
        events = self.read_events()
        epoch = 0
        requested = {}
        responses = {}
        null_responses = 0
        task_done = {}
        for e in events:
            ev = e.get("event")
            if ev == "listening":
                epoch += 1
            elif ev == "request":
                requested[(epoch, json.dumps(e.get("id")))] = e.get("method")
            elif ev == "response":
                if e.get("id") is None:
                    null_responses += 1
                else:
                    k = (epoch, json.dumps(e.get("id")))
                    responses[k] = responses.get(k, 0) + 1
            elif ev == "task_done":
                task_done[e.get("task")] = task_done.get(e.get("task"), 0) + 1
        doubled = [k for k, n in responses.items() if n > 1]
        unknown = [k for k in responses if k not in requested]
        unanswered = [k for k in requested if k not in responses]
        interrupted = self.counts.get("calls_interrupted", 0)
        missing_tasks = sorted(self.tasks - set(task_done))
        c = self.counts
        garbage_sent = c.get("garbage_sent", 0) + c.get("oversized_sent", 0)
        garbage_answered = c.get("garbage_answered", 0) + c.get("oversized_answered", 0)

        checks = [
            ("the daemon is the process started", self.agent.poll() is None, ""),
            ("every request got at most one response", not doubled, f"doubled: {doubled[:5]}"),
            ("no response to an id never sent", not unknown, f"unknown: {unknown[:5]}"),
            ("requests without a response <= calls interrupted by a kill",
             len(unanswered) <= interrupted,
             f"{len(unanswered)} without a response, {interrupted} interrupted: {unanswered[:5]}"),
            ("every admin call not interrupted was answered", c.get("calls_unanswered", 0) == 0,
             f"{c.get('calls_unanswered', 0)} unanswered"),
            ("every garbage line / oversized frame answered once with 3020",
             garbage_answered == garbage_sent, f"{garbage_answered} of {garbage_sent}"),
            ("every async task's result arrived", not missing_tasks,
             f"{len(missing_tasks)} missing: {missing_tasks[:5]}"),
            ("no task or child left running", quiet and not end["children"],
             f"children {end['children']}"),
            (f"RSS growth <= {self.a.rss_bound_kb} kB", end["rss_kb"] - start["rss_kb"] <= self.a.rss_bound_kb,
             f"{start['rss_kb']} -> {end['rss_kb']} kB"),
            ("open fds unchanged", end["fds"] <= start["fds"], f"{start['fds']} -> {end['fds']}"),
            ("answers as expected (retcodes)", not self.failures,
             f"{len(self.failures)} failures, first: " + "; ".join(self.failures[:3])),
        ]
        requests = len(requested)
        summary = {
            "duration_s": self.a.duration, "workers": self.a.workers,
            "requests_served": sum(1 for k in requested if k in responses),
            "requests_sent": requests, "answers_checked": c.get("answers_checked", 0),
            "calls_interrupted_by_kill": interrupted, "calls_not_sent": c.get("calls_not_sent", 0),
            "garbage_lines": c.get("garbage_sent", 0), "oversized_frames": c.get("oversized_sent", 0),
            "garbage_answered": garbage_answered, "null_id_responses": null_responses,
            "async_tasks": len(self.tasks), "task_done_events": sum(task_done.values()),
            "task_done_redelivered": sum(n - 1 for n in task_done.values()),
            "server_kills": kills,
            "reconnect_s": [round(x, 2) for x in self.reconnects],
            "rss_kb": [start["rss_kb"], end["rss_kb"]], "rss_peak_kb": end["hwm_kb"], "fds": [start["fds"], end["fds"]],
            "threads": [start["threads"], end["threads"]], "children_end": end["children"],
            "checks": [{"check": n, "pass": bool(ok), "detail": d} for n, ok, d in checks],
        }
        print(f"\nsoak: {self.a.duration} s, {self.a.workers} workers + garbage, "
              f"{kills} server kills")
        print(f"  requests served      {summary['requests_served']} of {requests} sent "
              f"({interrupted} calls cut by a kill, {summary['calls_not_sent']} not sent while down)")
        print(f"  answers checked      {summary['answers_checked']}")
        print(f"  garbage / oversized  {summary['garbage_lines']} / {summary['oversized_frames']} "
              f"(answered {garbage_answered})")
        print(f"  async tasks          {len(self.tasks)} (task.done events {summary['task_done_events']}, "
              f"redelivered {summary['task_done_redelivered']})")
        print(f"  reconnect times      {summary['reconnect_s']} s")
        print(f"  RSS start/end        {start['rss_kb']} / {end['rss_kb']} kB (peak {end['hwm_kb']} kB)")
        print(f"  fds start/end        {start['fds']} / {end['fds']}")
        print(f"  threads start/end    {start['threads']} / {end['threads']}")
        ok_all = True
        for n, ok, d in checks:
            ok_all &= bool(ok)
            print(f"  {'PASS' if ok else 'FAIL'}  {n}" + ("" if ok else f": {d}"))
        with open(os.path.join(self.a.out, "soak.json") if self.a.out else os.devnull, "w") as f:
            json.dump(summary, f, indent=2)
        return ok_all


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", required=True)
    p.add_argument("--server-bin", required=True)
    p.add_argument("--agent-bin", required=True)
    p.add_argument("--plugin-dir", required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--duration", type=float, default=180)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--restart-every", type=float, default=40)
    p.add_argument("--oversized-every", type=float, default=15)
    p.add_argument("--max-frame", type=int, default=16 * 1024 * 1024)
    p.add_argument("--rss-bound-kb", type=int, default=2048)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="")
    a = p.parse_args()
    soak = Soak(a)
    try:
        ok = soak.run()
    finally:
        for proc in (soak.agent, soak.server):
            if proc and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
