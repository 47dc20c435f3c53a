"""Browser tests of the operator console (headless Chromium driven by Playwright).

Starts, on loopback only: a real BasicAgentServer with an API token file and a
state directory, two BasicAgentSwarm processes playing 1 000 agents (600
"web-*" serving getinfo.kernel and sync.bash, 400 "db-*" serving
getinfo.kernel only) and one real BasicAgent daemon with the built plugins.
Then drives the console as an operator would and writes a screenshot of each
page to target/console-screenshots/.

Run with scripts/console-test.sh (installs chromium and playwright if missing).
Environment: BASICAGENT_BIN (default target/debug), CONSOLE_SHOTS (screenshot
folder), CHROMIUM (default /usr/bin/chromium).
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import expect, sync_playwright

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
BIN = os.environ.get("BASICAGENT_BIN", os.path.join(ROOT, "target", "debug"))
SHOTS = os.environ.get("CONSOLE_SHOTS", os.path.join(ROOT, "target", "console-screenshots"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SERVER_IP = "127.0.77.1"
NAME = "config.cargo.com"
WEB, DB = 600, 400
SWARM = WEB + DB
TOTAL = SWARM + 1
# Bounds on waits (how long to keep looking before failing), not asserted speeds.
WAIT_S = 120
WAIT_MS = WAIT_S * 1000
expect.set_options(timeout=30_000)
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def n(x):
    return f"{x:,}"


def free_port(ip):
    s = socket.socket()
    s.bind((ip, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(what, f, limit=WAIT_S):
    deadline = time.monotonic() + limit
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {limit} s waiting for {what}")
        time.sleep(0.1)


def events(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []


def http(method, url, token=None, body=None, headers=None):
    """(status, headers, body bytes) of one request; no exception for 4xx/5xx."""
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


class Proc:
    def __init__(self, name, cmd, tmp, **kw):
        self.name = name
        self.log_path = os.path.join(tmp, f"{name}.log")
        self.log = open(self.log_path, "wb")
        self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, **kw)

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def start_server(tmp, token_file=None):
    listen = f"{SERVER_IP}:{free_port(SERVER_IP)}"
    api = f"{SERVER_IP}:{free_port(SERVER_IP)}" if token_file else f"127.0.0.1:{free_port('127.0.0.1')}"
    ev = os.path.join(tmp, "events.jsonl")
    cmd = [os.path.join(BIN, "BasicAgentServer"), "serve", "--listen", listen,
           "--cert", os.path.join(tmp, "pki", "server.pem"), "--key", os.path.join(tmp, "pki", "server.key"),
           "--admin", os.path.join(tmp, "admin.sock"), "--events", ev, "--api", api,
           "--state-dir", os.path.join(tmp, "state")]
    if token_file:
        cmd += ["--api-token-file", token_file]
    server = Proc("server", cmd, tmp, env=dict(os.environ, RUST_LOG="warn"))
    up = wait_for("the server to listen", lambda: next(
        (e for e in events(ev) if e.get("event") == "listening"), None) if server.alive() else
        pytest.fail(f"the server exited; see {server.log_path}"), 60)
    server.listen = up.get("listen") or listen
    server.api = up.get("api") or api
    server.base = f"http://{server.api}"
    return server


@pytest.fixture(scope="module")
def fleet():
    tmp = tempfile.mkdtemp(prefix="console-test-")
    procs = []
    try:
        subprocess.run([os.path.join(ROOT, "scripts", "make-certs.sh"), os.path.join(tmp, "pki"), NAME],
                       check=True, capture_output=True)
        token = secrets.token_hex(32)
        token_file = os.path.join(tmp, "api.token")
        with open(token_file, "w") as f:
            f.write(token + "\n")
        os.chmod(token_file, 0o600)
        server = start_server(tmp, token_file)
        procs.append(server)
        server.token = token

        swarm_status = []
        for prefix, count, plugins, net in (("web", WEB, "getinfo.kernel,sync.bash", 78),
                                            ("db", DB, "getinfo.kernel", 79)):
            status = os.path.join(tmp, f"swarm-{prefix}.json")
            swarm_status.append((status, count))
            procs.append(Proc(f"swarm-{prefix}", [
                os.path.join(BIN, "BasicAgentSwarm"), "--server", server.listen,
                "--ca", os.path.join(tmp, "pki", "ca.pem"), "--name", NAME,
                "--agents", str(count), "--prefix", prefix, "--seed", f"console-{prefix}",
                "--plugins", plugins, "--source", f"127.0.{net}.1-127.0.{net}.10",
                "--concurrency", "64", "--heartbeat", "30", "--status-file", status, "--progress", "0",
            ], tmp, env=dict(os.environ, RUST_LOG="warn")))

        # The real agent: its own hosts file (the server name -> SERVER_IP), no DNS.
        agent_dir = os.path.join(tmp, "agent")
        plugins = os.path.join(agent_dir, "plugins")
        os.makedirs(plugins)
        for so in sorted(os.listdir(BIN)):
            if re.fullmatch(r"lib[a-z0-9]+_[a-z0-9_]+\.so", so) and "fixture" not in so:
                shutil.copy(os.path.join(BIN, so), plugins)
        with open(os.path.join(agent_dir, "hosts"), "w") as f:
            f.write(f"{SERVER_IP} {NAME}\n")
        with open(os.path.join(agent_dir, "agent.toml"), "w") as f:
            f.write(f"""[server]
name = "{NAME}"
port = {server.listen.rsplit(':', 1)[1]}
ca = "{tmp}/pki/ca.pem"
hosts_file = "{agent_dir}/hosts"
dns = false
connect_timeout = 2

[agent]
state_dir = "{agent_dir}/state"
plugin_dir = "{plugins}"
""")
        agent = Proc("agent", [os.path.join(BIN, "BasicAgent"), "-c", os.path.join(agent_dir, "agent.toml"),
                               "-f", "-L", os.path.join(agent_dir, "agent.log"),
                               "-P", os.path.join(agent_dir, "agent.pid")], tmp)
        procs.append(agent)

        def count():
            for p in procs:
                if not p.alive():
                    pytest.fail(f"{p.name} exited; see {p.log_path}")
            st, _, body = http("GET", f"{server.base}/v1/agents/count", token)
            return st == 200 and json.loads(body)["count"] == TOTAL

        wait_for(f"{TOTAL} agents to connect", count)
        _, _, body = http("GET", f"{server.base}/v1/agents", token)
        listing = json.loads(body)
        real = [a for a in listing if not re.fullmatch(r"(web|db)-\d{5}", a["name"])]
        assert len(real) == 1, real
        server.real = real[0]
        server.procs = {p.name: p for p in procs}
        server.listing = listing
        server.tmp = tmp
        yield server
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def pw():
    with sync_playwright() as p:
        yield p


def chromium(pw, profile):
    """Debian's Chromium on a new empty profile, 1 280 px wide; never a downloaded browser."""
    return pw.chromium.launch_persistent_context(
        profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
        viewport={"width": 1280, "height": 900}, locale="en-US")


@pytest.fixture(scope="module")
def browser_ctx(fleet, pw):
    os.makedirs(SHOTS, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="console-chromium-")
    outside, problems = [], []
    ctx = chromium(pw, profile)

    def guard(route):
        url = route.request.url
        if url.startswith(fleet.base + "/"):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    ctx.route("**/*", guard)
    page = ctx.pages[0] if ctx.pages else ctx.new_page()

    def on_console(msg):
        text = msg.text
        # A refused request is logged by Chromium; everything else is a fault.
        if msg.type == "error" and "status of 401" not in text and "status of 404" not in text:
            problems.append(text)

    page.on("console", on_console)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.set_default_timeout(WAIT_MS)
    yield page, outside, problems
    if problems:
        print("browser problems:", *problems, sep="\n  ")
    ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


def shot(page, name):
    page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=False)


def login(page, token):
    page.fill("#login-token", token)
    page.click("#login-form button[type=submit]")


# ------------------------------------------------------------------ tests --

def test_console_is_served_with_a_strict_policy(fleet):
    st, h, body = http("GET", fleet.base + "/")
    assert st == 200 and b"BasicAgent console" in body
    csp = h["Content-Security-Policy"]
    for part in ("default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"):
        assert part in csp, csp
    assert "unsafe" not in csp
    assert h["X-Content-Type-Options"] == "nosniff"
    st, h, body = http("GET", fleet.base + "/assets/app.js")
    assert st == 200 and h["Content-Type"].startswith("text/javascript") and "Content-Security-Policy" in h
    tag = h["ETag"]
    st, _, _ = http("GET", fleet.base + "/assets/app.js", headers={"If-None-Match": tag})
    assert st == 304
    st, h, body = http("GET", fleet.base + "/assets/..%2F..%2Fetc%2Fpasswd")
    assert st == 404 and b"root:" not in body
    st, h, _ = http("GET", fleet.base + "/assets/nothing.js")
    assert st == 404 and "Content-Security-Policy" in h
    # The page is public, the data is not.
    st, _, body = http("GET", fleet.base + "/v1/agents")
    assert st == 401 and json.loads(body)["error"]["code"] == "no_token"


def test_a_bad_token_is_refused(fleet, browser_ctx):
    page, _, _ = browser_ctx
    page.goto(fleet.base + "/")
    expect(page.locator("#view-login")).to_be_visible()
    expect(page.locator("#login-token")).to_be_focused()
    shot(page, "01-login")
    login(page, "not-the-token-0123456789")
    expect(page.locator("#login-msg")).to_contain_text("refused")
    expect(page.locator("#login-msg")).to_contain_text("bad_token")
    expect(page.locator("#view-agents")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0
    assert page.evaluate("localStorage.length") == 0
    shot(page, "02-login-refused")


def test_the_table_shows_every_agent(fleet, browser_ctx):
    page, _, _ = browser_ctx
    login(page, fleet.token)
    expect(page.locator("#view-agents")).to_be_visible()
    expect(page.locator("#live")).to_have_text(f"{n(TOTAL)} agents connected")
    expect(page.locator("#agents-summary")).to_contain_text(f"{n(TOTAL)} shown of {n(TOTAL)} connected")
    expect(page.locator("#agents-pager .page-of")).to_contain_text(f"of {n(TOTAL)}")
    expect(page.locator("#agents-table tbody tr")).to_have_count(100)
    # The token lives in the session only.
    assert page.evaluate("Object.keys(sessionStorage)") == ["basicagent.console.token"]
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []
    # Paging to the end shows the last row.
    page.click("#agents-pager [data-go=last]")
    expect(page.locator("#agents-table tbody tr")).to_have_count(TOTAL - 1000)
    page.click("#agents-pager [data-go=first]")
    shot(page, "03-agents")


def test_filtering_and_sorting(fleet, browser_ctx):
    page, _, _ = browser_ctx
    summary = page.locator("#agents-summary")
    rows = page.locator("#agents-table tbody tr")
    page.fill("#f-name", "web-*")
    expect(summary).to_contain_text(f"{n(WEB)} shown of {n(TOTAL)}")
    page.fill("#f-name", "db-0000?")
    expect(summary).to_contain_text("9 shown")
    expect(rows).to_have_count(9)
    page.fill("#f-name", "00042")  # no wildcard: part of a name
    expect(summary).to_contain_text("2 shown")
    page.fill("#f-name", "")
    page.select_option("#f-plugin", "sync.bash")
    expect(summary).to_contain_text(f"{n(WEB + 1)} shown")
    page.select_option("#f-plugin", "getinfo.kernel")
    expect(summary).to_contain_text(f"{n(TOTAL)} shown")
    real_only = next(p for p in fleet.real["plugins"] if p not in ("getinfo.kernel", "sync.bash"))
    page.select_option("#f-plugin", real_only)
    expect(summary).to_contain_text("1 shown")
    expect(rows.first).to_have_attribute("data-host", fleet.real["host"])
    page.select_option("#f-plugin", "")
    page.fill("#f-host", fleet.real["host"][:13])
    expect(summary).to_contain_text("1 shown")
    expect(rows.first.locator("td.name")).to_have_text(fleet.real["name"])
    shot(page, "04-agents-filtered")
    # Sorting: by name, with the keyboard.
    page.fill("#f-host", "")
    page.fill("#f-name", "web-*")
    name_head = page.locator("#agents-table th[data-key=name]")
    expect(name_head).to_have_attribute("aria-sort", "ascending")
    expect(rows.first.locator("td.name")).to_have_text("web-00001")
    name_head.locator("button").focus()
    page.keyboard.press("Enter")
    expect(name_head).to_have_attribute("aria-sort", "descending")
    expect(rows.first.locator("td.name")).to_have_text(f"web-{WEB:05d}")
    page.keyboard.press("Enter")
    expect(rows.first.locator("td.name")).to_have_text("web-00001")
    page.click("#agents-table th[data-key=version] button")
    expect(page.locator("#agents-table th[data-key=version]")).to_have_attribute("aria-sort", "ascending")
    page.click("#f-clear")
    expect(summary).to_contain_text(f"{n(TOTAL)} shown")


def test_host_page_facts_and_refresh(fleet, browser_ctx):
    page, _, _ = browser_ctx
    real = fleet.real
    page.fill("#f-host", real["host"])
    page.click(f"#agents-table tr[data-host='{real['host']}'] td.name a")
    expect(page.locator("#view-host")).to_be_visible()
    expect(page.locator("#host-h")).to_have_text(f"Host {real['name']}")
    expect(page.locator("#host-h")).to_be_focused()
    expect(page.locator("#host-meta")).to_contain_text(real["host"])
    expect(page.locator("#host-meta")).to_contain_text("online")
    kernel = page.locator("#fact-getinfo-kernel")
    expect(kernel).to_contain_text("not collected yet")
    kernel.get_by_role("button", name="Refresh getinfo.kernel").click()
    expect(page.locator("#facts-msg")).to_have_text("getinfo.kernel refreshed.")
    expect(kernel.locator("table")).to_contain_text(os.uname().release)
    # The fact is now in the store: a fresh page load shows it from GET /v1/agents/HOST.
    def stored():
        st, _, body = http("GET", f"{fleet.base}/v1/agents/{real['host']}", fleet.token)
        return st == 200 and "getinfo.kernel" in json.loads(body).get("facts", {})
    wait_for("the fact to be stored", stored, 30)
    page.reload()
    expect(page.locator("#host-h")).to_have_text(f"Host {real['name']}")
    expect(kernel.locator("table")).to_contain_text(os.uname().release)
    expect(kernel).to_contain_text("collected")
    expect(page.locator("#host-calls tbody tr").first).to_contain_text("getinfo.kernel")
    shot(page, "05-host")


def test_fanout_getinfo_kernel_to_all(fleet, browser_ctx):
    page, _, _ = browser_ctx
    page.click("nav >> text=Run")
    expect(page.locator("#view-run")).to_be_visible()
    page.check("#t-all")
    page.select_option("#r-method", "getinfo.kernel")
    expect(page.locator("#t-preview")).to_contain_text(f"Targets {n(TOTAL)} connected agents")
    expect(page.locator("#r-preview")).to_have_text('{"method":"getinfo.kernel"}')
    page.click("#run-go")
    res = page.locator("#run-results")
    expect(res.locator(".state")).to_contain_text("Done")
    for key, want in (("targeted", TOTAL), ("received", TOTAL), ("answered", TOTAL),
                      ("failed", 0), ("offline", 0), ("timed_out", 0)):
        expect(res.locator(f"[data-c={key}]")).to_have_text(n(want))
    expect(res.locator(".r-pager .page-of")).to_contain_text(f"of {n(TOTAL)}")
    expect(res.locator("tbody tr[data-outcome=answered]")).to_have_count(100)
    # The real agent's row shows its own kernel release.
    res.locator(".r-host").fill(fleet.real["name"])
    expect(res.locator("tbody tr")).to_have_count(1)
    expect(res.locator("tbody tr")).to_contain_text(os.uname().release)
    res.locator(".r-host").fill("")
    expect(res.locator("[data-c=call] a")).to_have_text(re.compile(r"#\d+"))
    shot(page, "06-run-fanout")


def test_sync_bash_on_the_real_agent(fleet, browser_ctx):
    page, _, _ = browser_ctx
    page.check("#t-hosts-r")
    page.fill("#t-hosts", fleet.real["name"])  # a node name is resolved to its host id
    page.select_option("#r-method", "sync.bash")
    page.fill("#r-cmd", "echo console-$((6*7)); echo to-stderr >&2; exit 3")
    page.fill("#r-ctimeout", "20")
    page.fill("#r-timeout", "30")
    expect(page.locator("#r-preview")).to_contain_text('"timeout":20')
    page.click("#run-go")
    res = page.locator("#run-results")
    expect(res.locator(".state")).to_contain_text("Done")
    expect(res.locator("[data-c=answered]")).to_have_text("1")
    row = res.locator("tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_have_attribute("data-host", fleet.real["host"])
    expect(row.locator("pre.stdout")).to_have_text("console-42\n")
    expect(row.locator("pre.stderr")).to_have_text("to-stderr\n")
    expect(row.locator("td.exit")).to_have_text("3")
    page.evaluate("document.querySelector('#run-results').scrollIntoView()")
    shot(page, "07-run-bash")


def test_sync_bash_to_many_asks_first(fleet, browser_ctx):
    page, _, _ = browser_ctx
    page.check("#t-name-r")
    page.fill("#t-name", "web-0000?")
    page.select_option("#r-method", "sync.bash")
    page.fill("#r-cmd", "uptime")
    expect(page.locator("#t-preview")).to_contain_text("Targets 9 connected agents")
    page.click("#run-go")
    dialog = page.locator("#run-confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("on 9 hosts")
    expect(page.locator("#confirm-no")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    # Cancelled: the last results (the real agent's) are still on screen.
    expect(page.locator("#run-results [data-c=targeted]")).to_have_text("1")
    page.click("#run-go")
    page.click("#confirm-yes")
    res = page.locator("#run-results")
    expect(res.locator(".state")).to_contain_text("Done")
    expect(res.locator("[data-c=answered]")).to_have_text("9")


def test_bad_input_gets_a_clear_error(fleet, browser_ctx):
    page, _, _ = browser_ctx
    page.check("#t-name-r")
    page.fill("#t-name", "no-such-host-*")
    page.select_option("#r-method", "getinfo.kernel")
    page.click("#run-go")
    expect(page.locator("#run-error")).to_contain_text("no_target")
    page.fill("#t-name", "")
    page.click("#run-go")
    expect(page.locator("#run-error")).to_contain_text("Enter a name glob")
    page.check("#t-all")
    page.fill("#r-timeout", "0")
    page.click("#run-go")
    expect(page.locator("#run-error")).to_contain_text("(0, 3600]")
    page.fill("#r-timeout", "30")
    page.select_option("#r-method", "sync.bash")
    page.fill("#r-cmd", "")
    page.click("#run-go")
    expect(page.locator("#run-error")).to_contain_text("Enter the command")
    # The server keeps serving: a good request right after works.
    page.check("#t-hosts-r")
    page.fill("#t-hosts", fleet.real["host"])
    page.select_option("#r-method", "ping")
    page.click("#run-go")
    expect(page.locator("#run-results .state")).to_contain_text("Done")
    expect(page.locator("#run-results [data-c=answered]")).to_have_text("1")
    expect(page.locator("#run-error")).to_be_hidden()


def test_call_history(fleet, browser_ctx):
    page, _, _ = browser_ctx
    page.click("nav >> text=History")
    expect(page.locator("#view-calls")).to_be_visible()
    fan = page.locator("#calls-table tbody tr", has_text="getinfo.kernel").filter(has_text="all")
    expect(fan.first).to_be_visible()
    expect(fan.first.locator("td").nth(5)).to_have_text(n(TOTAL))
    expect(fan.first.locator("td").nth(6)).to_have_text(n(TOTAL))
    shot(page, "08-history")
    fan.first.locator("a").click()
    expect(page.locator("#view-call")).to_be_visible()
    box = page.locator("#call-results")
    expect(box.locator("[data-c=answered]")).to_have_text(n(TOTAL))
    expect(box.locator("[data-c=received]")).to_have_text(n(TOTAL))
    expect(box.locator(".r-pager .page-of")).to_contain_text(f"of {n(TOTAL)}")
    expect(page.locator("#call-meta")).to_contain_text('"method":"getinfo.kernel"')
    shot(page, "09-call")
    st, _, _ = http("GET", f"{fleet.base}/v1/calls/999999", fleet.token)
    page.goto(fleet.base + "/#/calls/999999")
    expect(page.locator("#call-error")).to_contain_text("no call 999999")


def test_keyboard_focus_is_visible_and_ordered(fleet, browser_ctx):
    page, _, _ = browser_ctx
    page.goto(fleet.base + "/#/agents")
    expect(page.locator("#agents-h")).to_be_focused()
    # From the heading, the filters come next, in reading order, with a visible focus ring.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "f-name"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", ""), outline
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "f-host"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "f-plugin"
    # The skip link moves focus to the content.
    page.focus("#skip")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    # The navigation, by keyboard.
    page.focus("nav a[data-nav=agents]")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Run"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "History"
    page.keyboard.press("Enter")
    expect(page.locator("#calls-h")).to_be_focused()
    # Every control in every view is a real control with a name.
    unnamed = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea')]
        .filter(e => !e.labels?.length && !e.getAttribute('aria-label')).map(e => e.id || e.className)""")
    assert unnamed == []
    assert page.evaluate("document.querySelectorAll('div[onclick], span[onclick], [role=button]').length") == 0


def test_a_refused_token_mid_session_returns_to_login(fleet, browser_ctx):
    page, _, _ = browser_ctx
    page.goto(fleet.base + "/#/agents")
    expect(page.locator("#view-agents")).to_be_visible()
    page.evaluate("sessionStorage.setItem('basicagent.console.token', 'changed-behind-our-back-0000')")
    page.click("#agents-refresh")
    expect(page.locator("#view-login")).to_be_visible()
    expect(page.locator("#login-msg")).to_contain_text("refused the token")
    assert page.evaluate("sessionStorage.length") == 0
    login(page, fleet.token)
    expect(page.locator("#view-agents")).to_be_visible()
    page.click("#logout")
    expect(page.locator("#view-login")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_results_stream_in_row_by_row(fleet, browser_ctx):
    """An offline host's line shows while the real agent's command still runs."""
    page, _, _ = browser_ctx
    page.goto(fleet.base + "/#/run")
    expect(page.locator("#view-login")).to_be_visible()  # the last test logged out
    login(page, fleet.token)
    expect(page.locator("#view-run")).to_be_visible()
    page.check("#t-hosts-r")
    nobody = "00000000-0000-4000-8000-000000000000"
    page.fill("#t-hosts", f"{fleet.real['host']}\n{nobody}")
    page.select_option("#r-method", "sync.bash")
    page.fill("#r-ctimeout", "")
    # The command waits for a file the test makes once the first row is on screen.
    flag = os.path.join(fleet.tmp, "go-on")
    page.fill("#r-cmd", f"while [ ! -e {flag} ]; do sleep 0.1; done; echo late")
    page.fill("#r-timeout", "60")
    page.click("#run-go")
    res = page.locator("#run-results")
    expect(res.locator("[data-c=offline]")).to_have_text("1")
    expect(res.locator("[data-c=received]")).to_have_text("1")
    expect(res.locator("tbody tr[data-outcome=offline]")).to_have_attribute("data-host", nobody)
    expect(page.locator("#run-stop")).to_be_enabled()
    expect(res.locator(".state")).to_have_text("Waiting for answers…")
    open(flag, "w").close()
    expect(res.locator(".state")).to_contain_text("Done")
    expect(res.locator("[data-c=answered]")).to_have_text("1")
    expect(res.locator("[data-c=targeted]")).to_have_text("2")
    expect(res.locator("tbody tr[data-outcome=answered] pre.stdout")).to_have_text("late\n")
    # Filter the results by outcome.
    res.locator(".r-status").select_option("offline")
    expect(res.locator("tbody tr")).to_have_count(1)
    expect(res.locator("tbody tr")).to_have_attribute("data-outcome", "offline")
    res.locator(".r-status").select_option("")


def test_stop_watching_leaves_the_call_running(fleet, browser_ctx):
    page, _, _ = browser_ctx
    flag = os.path.join(fleet.tmp, "go-on-2")
    page.fill("#t-hosts", fleet.real["host"])
    page.fill("#r-cmd", f"while [ ! -e {flag} ]; do sleep 0.1; done; echo finished-anyway")
    page.fill("#r-timeout", "60")
    page.click("#run-go")
    res = page.locator("#run-results")
    expect(res.locator(".state")).to_have_text("Waiting for answers…")
    page.click("#run-stop")
    expect(res.locator(".state")).to_contain_text("Stopped watching")
    expect(page.locator("#run-go")).to_be_enabled()
    open(flag, "w").close()

    def finished():
        st, _, body = http("GET", f"{fleet.base}/v1/calls?limit=1", fleet.token)
        rows = json.loads(body) if st == 200 else []
        return rows and "finished-anyway" in rows[0]["request"].get("cmd", "") and rows[0]["finished_at"]
    wait_for("the call to finish at the server", finished, 60)
    _, _, body = http("GET", f"{fleet.base}/v1/calls?limit=1", fleet.token)
    call = json.loads(body)[0]
    assert call["summary"]["answered"] == 1
    page.goto(f"{fleet.base}/#/calls/{call['id']}")
    expect(page.locator("#call-results pre.stdout")).to_have_text("finished-anyway\n")
    page.goto(f"{fleet.base}/#/run")


def test_a_host_that_does_not_answer_in_time_is_timed_out(fleet, browser_ctx):
    page, _, _ = browser_ctx
    expect(page.locator("#view-run")).to_be_visible()
    page.check("#t-hosts-r")
    page.select_option("#r-method", "sync.bash")
    page.fill("#t-hosts", fleet.real["host"])
    page.fill("#r-cmd", "sleep 5")
    page.fill("#r-timeout", "1")
    page.click("#run-go")
    res = page.locator("#run-results")
    expect(res.locator(".state")).to_contain_text("Done")
    expect(res.locator("[data-c=timed_out]")).to_have_text("1")
    expect(res.locator("tbody tr")).to_have_attribute("data-outcome", "timed_out")
    expect(res.locator("tbody tr")).to_contain_text("3101")


def test_agent_output_is_text_never_markup(fleet, browser_ctx):
    page, _, _ = browser_ctx
    page.fill("#t-hosts", fleet.real["host"])
    page.fill("#r-cmd", """printf '%s' '<b id="xss">bold</b><img src=x id="xss2" onerror="window.pwned=1">'""")
    page.fill("#r-timeout", "30")
    page.click("#run-go")
    res = page.locator("#run-results")
    expect(res.locator(".state")).to_contain_text("Done")
    expect(res.locator("pre.stdout")).to_contain_text('<b id="xss">bold</b>')
    assert page.locator("#xss, #xss2").count() == 0
    assert page.evaluate("window.pwned === undefined")


def test_agents_that_leave_are_marked_with_their_last_sighting(fleet, browser_ctx):
    page, _, _ = browser_ctx
    page.goto(fleet.base + "/#/agents")
    expect(page.locator("#agents-summary")).to_contain_text(f"{n(TOTAL)} connected")
    fleet.procs["swarm-db"].stop()
    left = TOTAL - DB
    # The live count moves, and the table follows on its own (auto-refresh).
    expect(page.locator("#live")).to_have_text(f"{n(left)} agents connected", timeout=WAIT_MS)
    expect(page.locator("#agents-summary")).to_contain_text(
        f"{n(TOTAL)} shown of {n(left)} connected (and {n(DB)} that left during this session)", timeout=WAIT_MS)
    page.fill("#f-name", "db-00001")
    row = page.locator("#agents-table tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator(".badge")).to_have_text("left")
    page.uncheck("#f-gone")
    expect(row).to_have_count(0)
    page.check("#f-gone")
    row.locator("td.name a").click()
    expect(page.locator("#host-meta")).to_contain_text("offline")
    expect(page.locator("#host-meta")).to_contain_text("Last seen")
    expect(page.locator("#host-meta dd").nth(7)).not_to_have_text("now (connected)")
    expect(page.locator("#fact-getinfo-kernel button")).to_be_disabled()
    shot(page, "11-host-offline")


def test_19000_agents_stay_usable(fleet, browser_ctx):
    """The table at the issue's fleet size: one page in the document, filters answer at once.

    The listing is made here (19 000 rows in the API's shape, served for
    GET /v1/agents and /v1/agents/count only) because 19 000 TLS sessions
    are a benchmark's job (scripts/fleet-bench.sh), not a browser test's.
    Timings are printed, not asserted."""
    page, _, _ = browser_ctx
    big = [{"host": f"{i:08x}-0000-4000-8000-{i:012x}", "name": f"node-{i:05d}", "addr": f"127.0.0.1:{1024 + i}",
            "version": "0.1.0", "plugins": ["getinfo.kernel", "sync.bash"] if i % 2 else ["getinfo.kernel"],
            "connected_at": time.time() - i} for i in range(1, 19001)]
    listing = json.dumps(big)
    other = page.context.new_page()
    other.route("**/v1/agents", lambda r: r.fulfill(status=200, content_type="application/json", body=listing))
    other.route("**/v1/agents/count", lambda r: r.fulfill(status=200, content_type="application/json",
                                                          body='{"count": 19000}'))
    other.goto(fleet.base + "/")
    if other.locator("#view-login").is_visible():
        login(other, fleet.token)
    expect(other.locator("#agents-summary")).to_contain_text("19,000 shown of 19,000 connected")
    # Since the page's navigation started (an upper bound: includes the test's polling).
    shown = other.evaluate("performance.now()") / 1000
    assert other.locator("#agents-table tbody tr").count() == 100
    ms = other.evaluate("""() => {
        const box = document.querySelector('#f-name');
        const t = performance.now();
        box.value = 'node-1*';
        box.dispatchEvent(new Event('input', { bubbles: true }));
        return performance.now() - t;
    }""")
    expect(other.locator("#agents-summary")).to_contain_text("9,001 shown")  # node-10000 to node-19000
    sort_ms = other.evaluate("""() => {
        const t = performance.now();
        document.querySelector('#agents-table th[data-key=connected_at] button').click();
        return performance.now() - t;
    }""")
    print(f"\n19 000 agents: table shown within {shown:.2f} s of navigation; filter {ms:.0f} ms; sort {sort_ms:.0f} ms")
    other.close()


def test_nothing_left_the_server_and_no_policy_violation(fleet, browser_ctx):
    _, outside, problems = browser_ctx
    assert outside == [], outside
    assert problems == [], problems


def test_an_open_api_needs_no_login(fleet, pw):
    """Loopback API without a token file: the console works without a login."""
    tmp = tempfile.mkdtemp(prefix="console-open-")
    shutil.copytree(os.path.join(fleet.tmp, "pki"), os.path.join(tmp, "pki"))
    server = start_server(tmp, None)
    profile = tempfile.mkdtemp(prefix="console-chromium-")
    try:
        ctx = chromium(pw, profile)
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        page.goto(server.base + "/")
        expect(page.locator("#view-agents")).to_be_visible()
        expect(page.locator("#mode")).to_have_text("open API (no token needed)")
        expect(page.locator("#live")).to_have_text("0 agents connected")
        expect(page.locator("#logout")).to_be_hidden()
        shot(page, "10-open-api")
        # One agent on the open server; then a page of another site posts a
        # command there, as a hostile page in the operator's browser would
        # (a "simple" request: no CORS preflight). Refused: no call.
        swarm = Proc("swarm-open", [
            os.path.join(BIN, "BasicAgentSwarm"), "--server", server.listen,
            "--ca", os.path.join(tmp, "pki", "ca.pem"), "--name", NAME, "--agents", "1",
            "--prefix", "open", "--seed", "console-open", "--source", "127.0.80.1",
            "--status-file", os.path.join(tmp, "swarm-open.json"), "--progress", "0",
        ], tmp, env=dict(os.environ, RUST_LOG="warn"))
        try:
            wait_for("the agent on the open server", lambda: json.loads(
                http("GET", f"{server.base}/v1/agents/count")[2])["count"] == 1, 60)
            # Another site's page, made up by the browser's test hook (no network, no DNS).
            page.route("http://other-site.test/", lambda r: r.fulfill(
                status=200, content_type="text/html", body="<!doctype html><title>elsewhere</title>"))
            page.goto("http://other-site.test/")
            # Current Chromium may stop it itself (local network access);
            # the server refuses it anyway (server/tests/console.rs covers
            # the headers every browser sends). Either way: no call.
            page.evaluate("""async (url) => {
                try {
                    await fetch(url + '/v1/call', { method: 'POST', mode: 'no-cors',
                        headers: { 'Content-Type': 'text/plain' },
                        body: JSON.stringify({ target: { all: true },
                            request: { method: 'sync.bash', cmd: 'true' }, timeout: 5 }) });
                } catch (e) { return String(e); }
                return 'sent';
            }""", server.base)
            st, _, body = http("GET", f"{server.base}/v1/calls")
            assert (st, json.loads(body)) == (200, [])
        finally:
            swarm.stop()
        ctx.close()
    finally:
        server.stop()
        shutil.rmtree(profile, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
