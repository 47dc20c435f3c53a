#!/usr/bin/env python3
"""benchpeer.py: the timing helpers of scripts/bench.sh that need more than
a shell: Zabbix passive checks, and start-up / reconnect times of BasicAgent.

  benchpeer.py zbx-rate PORT KEY REQUESTS CLIENTS
      REQUESTS passive checks of KEY against zabbix_agentd on 127.0.0.1:PORT,
      a fresh TCP connection per request (as Zabbix works), CLIENTS processes
      in parallel. Prints one JSON line like `BasicAgentServer loadtest`:
      requests, clients, seconds, rate_per_s, p50_us, p99_us, max_us, errors.
  benchpeer.py zbx-start CONF PORT
      Starts zabbix_agentd -f -c CONF, prints "PID SECONDS" once it answers
      agent.ping (time from start to the first served request).
  benchpeer.py agent-start ADMIN SERVER_BIN -- AGENT ARGS...
      Starts the daemon, prints "PID SECONDS": time from start until a
      getinfo.kernel call through the reference server is answered.
  benchpeer.py reconnect ADMIN SERVER_BIN -- SERVER ARGS...
      Starts the reference server (the old one was stopped by the caller),
      prints "PID SECONDS": time from start until the agent is listed again.

ZBXD protocol: "ZBXD\\x01", 8-byte little-endian length, then the key; the
reply has the same header. Everything is bounded in time.
"""

import json
import multiprocessing
import socket
import statistics
import struct
import subprocess
import sys
import time


def zbx_query(port, key, timeout=10.0):
    payload = key.encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"ZBXD\x01" + struct.pack("<Q", len(payload)) + payload)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    if len(buf) < 13 or not buf.startswith(b"ZBXD"):
        raise ValueError(f"bad reply {buf[:40]!r}")
    (n,) = struct.unpack("<Q", buf[5:13])
    return buf[13:13 + n].decode("utf-8", "replace")


def zbx_worker(args):
    port, key, n = args
    lat, errors = [], 0
    for _ in range(n):
        t = time.perf_counter()
        try:
            value = zbx_query(port, key)
            if value.startswith("ZBX_NOTSUPPORTED"):
                errors += 1
        except (OSError, ValueError):
            errors += 1
        lat.append(time.perf_counter() - t)
    return lat, errors


def zbx_rate(port, key, requests, clients):
    per = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]
    # Warm-up, and a check that the key works at all.
    first = zbx_query(port, key)
    if first.startswith("ZBX_NOTSUPPORTED"):
        raise SystemExit(f"zabbix_agentd refused {key}: {first}")
    with multiprocessing.Pool(clients) as pool:
        t0 = time.perf_counter()
        results = pool.map(zbx_worker, [(port, key, n) for n in per])
        seconds = time.perf_counter() - t0
    lat = sorted(x for r in results for x in r[0])
    errors = sum(r[1] for r in results)
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e6
    print(json.dumps({"requests": requests, "clients": clients, "seconds": seconds,
                      "rate_per_s": requests / seconds, "p50_us": statistics.median(lat) * 1e6,
                      "p99_us": q(0.99), "max_us": lat[-1] * 1e6, "errors": errors}))


def admin(path, request, timeout=5.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(json.dumps(request).encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    return [json.loads(l) for l in buf.decode().splitlines() if l.strip()]


def listed_host(path):
    try:
        for obj in admin(path, {"cmd": "list"}):
            if "host" in obj:
                return obj["host"]
    except (OSError, ValueError):
        pass
    return None


def served(path, host):
    try:
        lines = admin(path, {"cmd": "call", "host": host, "all": False, "timeout": 5.0,
                             "request": "{\"method\":\"getinfo.kernel\"}"}, timeout=10)
    except (OSError, ValueError):
        return False
    return any(o.get("retcode") == 2 for o in lines)


def until(pred, timeout, step=0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise SystemExit(f"timed out after {timeout} s")


def main():
    cmd = sys.argv[1]
    if cmd == "zbx-rate":
        zbx_rate(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    elif cmd == "zbx-start":
        conf, port = sys.argv[2], int(sys.argv[3])
        t0 = time.monotonic()
        p = subprocess.Popen(["zabbix_agentd", "-f", "-c", conf], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def ping():
            try:
                return zbx_query(port, "agent.ping", timeout=1) == "1"
            except (OSError, ValueError):
                return False
        until(ping, 30)
        print(p.pid, time.monotonic() - t0)
    elif cmd in ("agent-start", "reconnect"):
        path, _server_bin = sys.argv[2], sys.argv[3]
        argv = sys.argv[sys.argv.index("--") + 1:]
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        host = until(lambda: listed_host(path), 30)
        if cmd == "agent-start":
            until(lambda: served(path, host), 30)
        print(p.pid, time.monotonic() - t0)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
