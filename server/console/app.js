// BasicAgent console: one ES module, no dependencies, no build step.
// Every datum comes from the operator API (/v1/...) with the session's token;
// every text from the API is put in the page with textContent (never HTML).

const TOKEN_KEY = 'basicagent.console.token';
const COUNT_EVERY_MS = 5000;
const LIST_EVERY_MS = 15000;
const $ = (sel, root = document) => root.querySelector(sel);
const fmtInt = (n) => Number(n).toLocaleString('en-US');

// ---------------------------------------------------------------- helpers --

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k in e && typeof v !== 'string') e[k] = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function pad(n) { return String(n).padStart(2, '0'); }

/** Local date and time of Unix milliseconds. */
function when(ms) {
  if (ms === null || ms === undefined) return '—';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** "3 min ago" for Unix milliseconds. */
function ago(ms) {
  if (ms === null || ms === undefined) return '—';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 5) return 'just now';
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 129600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

function timeCell(ms) {
  const t = el('time', { datetime: ms ? new Date(ms).toISOString() : '', text: ago(ms) });
  return el('td', {}, t, el('span', { class: 'sr-only', text: ` (${when(ms)})` }));
}

function compact(v, max = 160) {
  const s = typeof v === 'string' ? v : JSON.stringify(v);
  return s.length > max ? s.slice(0, max - 1) + '…' : s;
}

function show(node, on) { node.hidden = !on; }

function setError(node, message) {
  node.textContent = message || '';
  node.hidden = !message;
}

let toastTimer = 0;
function toast(message) {
  const t = $('#toast');
  t.textContent = message;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, 5000);
}

/** Matches `*` (any run) and `?` (one character), everything else literally: the API's glob. */
export function globMatch(pattern, text) {
  const p = [...pattern];
  const t = [...text];
  let pi = 0; let ti = 0; let star = -1; let st = 0;
  while (ti < t.length) {
    if (pi < p.length && (p[pi] === '?' || p[pi] === t[ti])) { pi++; ti++; }
    else if (pi < p.length && p[pi] === '*') { star = pi; st = ti; pi++; }
    else if (star >= 0) { pi = star + 1; st++; ti = st; }
    else return false;
  }
  while (pi < p.length && p[pi] === '*') pi++;
  return pi === p.length;
}

/** The outcome the API's summary counts a result line as. */
export function outcome(line) {
  if (line.resp === 'success') return 'answered';
  if (line.retcode === 3100) return 'offline';
  if (line.retcode === 3101) return 'timed_out';
  return 'failed';
}
const OUTCOME_TEXT = { answered: 'answered', failed: 'failed', offline: 'offline', timed_out: 'timed out' };

// -------------------------------------------------------------------- API --

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const auth = {
  token: () => sessionStorage.getItem(TOKEN_KEY),
  set: (t) => sessionStorage.setItem(TOKEN_KEY, t),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
  ok: false,        // the API answered us
  needed: false,    // the API refused a request without a token
};

async function errorOf(r) {
  try {
    const body = await r.json();
    if (body && body.error) return new ApiError(r.status, body.error.code, body.error.message);
  } catch (_) { /* not JSON */ }
  return new ApiError(r.status, 'http', `HTTP ${r.status} ${r.statusText}`);
}

/** fetch() on the API with the session's token; a 401 sends the operator to the login form. */
async function api(path, opts = {}) {
  const headers = new Headers(opts.headers || {});
  const t = auth.token();
  if (t) headers.set('Authorization', `Bearer ${t}`);
  let r;
  try {
    r = await fetch(path, { ...opts, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', `The server did not answer (${e.message}).`);
  }
  if (r.ok) return r;
  const e = await errorOf(r);
  if (r.status === 401 && !opts.probe) loggedOut(e);
  throw e;
}

async function getJson(path) {
  return (await api(path)).json();
}

/** POST /v1/call; calls `onLine` for each NDJSON line as it arrives. */
async function streamCall(body, onLine, signal) {
  const r = await api('/v1/call', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/x-ndjson' },
    body: JSON.stringify(body),
    signal,
  });
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (line) onLine(JSON.parse(line));
    }
  }
  if (buf.trim()) onLine(JSON.parse(buf));
}

// ------------------------------------------------------------------ login --

function loggedOut(e) {
  const had = auth.token();
  auth.clear();
  auth.ok = false;
  auth.needed = true;
  const msg = had
    ? `The server refused the token (${e.code}): ${e.message}. Log in again.`
    : `This server needs an API token (${e.code}).`;
  showLogin(msg);
}

function showLogin(message) {
  chrome();
  activate('login');
  setError($('#login-msg'), message);
  const input = $('#login-token');
  input.value = '';
  input.focus();
}

/** Asks the API whether we may talk to it; true when we may. */
async function probe() {
  try {
    const r = await api('/v1/agents/count', { probe: true });
    const { count } = await r.json();
    auth.ok = true;
    live.set(count);
    return true;
  } catch (e) {
    if (e.status === 401) {
      auth.needed = true;
      return e;
    }
    throw e;
  }
}

async function login(ev) {
  ev.preventDefault();
  const input = $('#login-token');
  const token = input.value.trim();
  if (!token) {
    setError($('#login-msg'), 'Enter the API token.');
    input.focus();
    return;
  }
  auth.set(token);
  try {
    const res = await probe();
    if (res !== true) {
      auth.clear();
      setError($('#login-msg'), `The token was refused (${res.code}): ${res.message}.`);
      input.select();
      input.focus();
      return;
    }
  } catch (e) {
    auth.clear();
    setError($('#login-msg'), e.message);
    return;
  }
  setError($('#login-msg'), '');
  input.value = '';
  chrome();
  if (!location.hash || location.hash === '#/login') location.hash = '#/agents';
  else route();
}

function logout() {
  auth.clear();
  auth.ok = false;
  showLogin('Logged out.');
}

/** Header: navigation, live count and log-out button as the auth state says. */
function chrome() {
  show($('#nav'), auth.ok);
  show($('#logout'), auth.ok && !!auth.token());
  $('#mode').textContent = auth.ok && !auth.token() ? 'open API (no token needed)' : '';
  if (!auth.ok) $('#live').textContent = '';
}

// ------------------------------------------------------------- live count --

const live = {
  count: null,
  timer: 0,
  set(n) {
    const changed = this.count !== null && n !== this.count;
    this.count = n;
    $('#live').textContent = `${fmtInt(n)} agent${n === 1 ? '' : 's'} connected`;
    if (changed) agents.countChanged();
  },
  start() {
    clearInterval(this.timer);
    this.timer = setInterval(async () => {
      if (!auth.ok || document.hidden) return;
      try {
        const { count } = await getJson('/v1/agents/count');
        this.set(count);
      } catch (_) { /* shown by the views */ }
    }, COUNT_EVERY_MS);
  },
};

// ------------------------------------------------------------------ pager --

class Pager {
  constructor(mount, onChange, label) {
    this.node = $('#tpl-pager').content.firstElementChild.cloneNode(true);
    this.node.setAttribute('aria-label', label);
    mount.replaceChildren(this.node);
    this.page = 0;
    this.per = 100;
    this.total = 0;
    this.onChange = onChange;
    this.node.addEventListener('click', (ev) => {
      const go = ev.target.closest('button')?.dataset.go;
      if (!go) return;
      const last = this.last();
      this.page = { first: 0, prev: this.page - 1, next: this.page + 1, last }[go];
      this.page = Math.min(Math.max(this.page, 0), last);
      onChange();
    });
    $('select', this.node).addEventListener('change', (ev) => {
      const first = this.page * this.per;
      this.per = Number(ev.target.value);
      this.page = Math.floor(first / this.per);
      onChange();
    });
  }

  last() { return Math.max(0, Math.ceil(this.total / this.per) - 1); }

  /** The slice of `rows` for the current page (clamping the page to the rows). */
  slice(rows) {
    this.total = rows.length;
    this.page = Math.min(this.page, this.last());
    const from = this.page * this.per;
    const to = Math.min(rows.length, from + this.per);
    $('.page-of', this.node).textContent = rows.length
      ? `Rows ${fmtInt(from + 1)}–${fmtInt(to)} of ${fmtInt(rows.length)} (page ${this.page + 1} of ${this.last() + 1})`
      : 'No rows';
    for (const b of this.node.querySelectorAll('button')) {
      const go = b.dataset.go;
      b.disabled = (go === 'first' || go === 'prev') ? this.page === 0 : this.page >= this.last();
    }
    return rows.slice(from, to);
  }
}

// ----------------------------------------------------------------- agents --

const agents = {
  known: new Map(),   // host -> {a, online, seen}
  list: [],           // [{...agent, online, seen}]
  loaded: false,
  loading: null,
  sort: { key: 'name', dir: 1 },
  pager: null,
  timer: 0,
  lastLoad: 0,
  version: 0,
  shown: '',

  init() {
    this.pager = new Pager($('#agents-pager'), () => this.render(), 'Agents pages');
    const form = $('#agents-filter');
    form.addEventListener('input', () => { this.pager.page = 0; this.render(); });
    form.addEventListener('change', () => { this.pager.page = 0; this.render(); });
    form.addEventListener('submit', (ev) => ev.preventDefault());
    form.addEventListener('reset', () => setTimeout(() => { this.pager.page = 0; this.render(); }, 0));
    $('#agents-refresh').addEventListener('click', () => this.load());
    $('#agents-table thead').addEventListener('click', (ev) => {
      const th = ev.target.closest('th');
      if (!th || !ev.target.closest('button')) return;
      const key = th.dataset.key;
      this.sort = { key, dir: this.sort.key === key ? -this.sort.dir : 1 };
      this.render();
    });
    this.timer = setInterval(() => {
      if (auth.ok && !document.hidden && current === 'agents' && $('#agents-auto').checked &&
          Date.now() - this.lastLoad >= LIST_EVERY_MS) this.load();
    }, 1000);
  },

  /** The live count moved: reload the list soon if it is on screen. */
  countChanged() {
    if (current === 'agents' && $('#agents-auto').checked && Date.now() - this.lastLoad > 2000) this.load();
  },

  /** GET /v1/agents (all of them; filters apply here, at once, as the operator types). */
  async load() {
    if (this.loading) return this.loading;
    this.loading = (async () => {
      try {
        const rows = await getJson('/v1/agents');
        const now = Date.now();
        const present = new Set();
        for (const a of rows) {
          present.add(a.host);
          this.known.set(a.host, { ...a, online: true, seen: now, plugins: a.plugins || [] });
        }
        for (const [host, a] of this.known) if (!present.has(host) && a.online) a.online = false;
        this.list = [...this.known.values()];
        this.version++;
        this.loaded = true;
        this.lastLoad = now;
        live.set(rows.length);
        this.plugins();
        setError($('#agents-error'), '');
        if (current === 'agents') this.render();
        run.preview();
      } catch (e) {
        if (e.status !== 401) setError($('#agents-error'), `Could not list the agents: ${e.message}`);
      } finally {
        this.loading = null;
      }
    })();
    return this.loading;
  },

  plugins() {
    const all = new Set();
    for (const a of this.list) for (const p of a.plugins) all.add(p);
    const sorted = [...all].sort();
    const sel = $('#f-plugin');
    const keep = sel.value;
    sel.replaceChildren(el('option', { value: '', text: 'any' }), ...sorted.map((p) => el('option', { value: p, text: p })));
    sel.value = sorted.includes(keep) ? keep : '';
    run.methods(sorted);
  },

  byName(name) {
    for (const a of this.list) if (a.name === name && a.online) return a;
    return null;
  },

  filtered() {
    const name = $('#f-name').value.trim();
    const host = $('#f-host').value.trim().toLowerCase();
    const plugin = $('#f-plugin').value;
    const gone = $('#f-gone').checked;
    const glob = name && (/[*?]/.test(name) ? name : `*${name}*`);
    const out = this.list.filter((a) =>
      (gone || a.online) &&
      (!glob || globMatch(glob, a.name || '')) &&
      (!host || a.host.toLowerCase().startsWith(host)) &&
      (!plugin || a.plugins.includes(plugin)));
    const { key, dir } = this.sort;
    const val = (a) => {
      if (key === 'plugins') return a.plugins.length;
      if (key === 'connected_at') return a.connected_at || 0;
      if (key === 'last_seen') return a.online ? Infinity : a.seen;
      return a[key] ?? '';
    };
    const coll = new Intl.Collator('en', { numeric: true });
    out.sort((x, y) => {
      const a = val(x); const b = val(y);
      const c = typeof a === 'number' && typeof b === 'number' ? a - b : coll.compare(String(a), String(b));
      return c * dir || coll.compare(x.host, y.host);
    });
    return out;
  },

  render() {
    for (const th of $('#agents-table thead').querySelectorAll('th')) {
      if (th.dataset.key === this.sort.key) th.setAttribute('aria-sort', this.sort.dir > 0 ? 'ascending' : 'descending');
      else th.removeAttribute('aria-sort');
    }
    if (!this.loaded) {
      $('#agents-summary').textContent = 'Loading…';
      return;
    }
    // Same data, filters, order and page as on screen: keep the rows (a
    // re-render between a mouse down and up would swallow the click).
    const key = JSON.stringify([this.version, $('#f-name').value, $('#f-host').value, $('#f-plugin').value,
      $('#f-gone').checked, this.sort, this.pager.page, this.pager.per, Math.floor(Date.now() / 10000)]);
    if (key === this.shown) return;
    this.shown = key;
    const rows = this.filtered();
    const online = this.list.filter((a) => a.online).length;
    const gone = this.list.length - online;
    $('#agents-summary').textContent =
      `${fmtInt(rows.length)} shown of ${fmtInt(online)} connected` +
      (gone ? ` (and ${fmtInt(gone)} that left during this session)` : '') +
      `; list from ${when(this.lastLoad)}.`;
    const body = document.createDocumentFragment();
    for (const a of this.pager.slice(rows)) {
      body.append(el('tr', { 'data-host': a.host },
        el('td', { class: 'name' }, el('a', { href: `#/host/${encodeURIComponent(a.host)}`, text: a.name || '(no name)' })),
        el('td', { class: 'mono', text: a.host }),
        el('td', { class: 'mono', text: a.addr || '' }),
        el('td', { text: a.version || '' }),
        el('td', { class: 'plugins', text: a.plugins.join(', ') }),
        timeCell(a.connected_at ? a.connected_at * 1000 : null),
        a.online
          ? el('td', {}, el('span', { class: 'badge online', text: 'online' }))
          : el('td', {}, el('span', { class: 'badge gone', text: 'left' }), ' ', ago(a.seen)),
      ));
    }
    $('#agents-table tbody').replaceChildren(body);
  },

  async show() {
    if (!this.loaded || Date.now() - this.lastLoad > 3000) await this.load();
    this.render();
  },
};

// --------------------------------------------------------------- results --

/** A live table of call results (the run form and a stored call). */
class Results {
  constructor(mount) {
    const frag = $('#tpl-results').content.cloneNode(true);
    mount.replaceChildren(frag);
    this.root = mount;
    this.rows = [];
    this.counts = { received: 0, answered: 0, failed: 0, offline: 0, timed_out: 0 };
    this.summary = null;
    this.dirty = false;
    this.pager = new Pager($('.r-pager', mount), () => this.render(), 'Result pages');
    $('.r-status', mount).addEventListener('change', () => { this.pager.page = 0; this.render(); });
    $('.r-host', mount).addEventListener('input', () => { this.pager.page = 0; this.render(); });
  }

  setTargeted(n) { this.targeted = n; this.schedule(); }

  add(line) {
    if (line.summary) {
      this.summary = line.summary;
    } else {
      const o = outcome(line);
      this.rows.push({ line, o });
      this.counts.received++;
      this.counts[o]++;
    }
    this.schedule();
  }

  state(text) { $('.state', this.root).textContent = text; }

  schedule() {
    if (this.dirty) return;
    this.dirty = true;
    setTimeout(() => { this.dirty = false; this.render(); }, 40);
  }

  render() {
    const c = (k) => $(`[data-c="${k}"]`, this.root);
    const s = this.summary;
    c('targeted').textContent = s ? fmtInt(s.targeted) : (this.targeted ? `~${fmtInt(this.targeted)}` : '…');
    c('received').textContent = fmtInt(this.counts.received);
    for (const k of ['answered', 'failed', 'offline', 'timed_out']) c(k).textContent = fmtInt(s ? s[k] : this.counts[k]);
    c('seconds').textContent = s ? s.seconds.toFixed(3) : '…';
    const call = c('call');
    if (s && s.call !== undefined && s.call !== null) {
      call.replaceChildren(el('a', { href: `#/calls/${s.call}`, text: `#${s.call}` }));
    } else call.textContent = s ? 'not recorded' : '…';
    const want = $('.r-status', this.root).value;
    const text = $('.r-host', this.root).value.trim().toLowerCase();
    const rows = this.rows.filter(({ line, o }) => (!want || o === want) &&
      (!text || line.host?.toLowerCase().includes(text) ||
        (agents.known.get(line.host)?.name || '').toLowerCase().includes(text)));
    const body = document.createDocumentFragment();
    for (const { line, o } of this.pager.slice(rows)) body.append(resultRow(line, o));
    $('tbody', this.root).replaceChildren(body);
  }
}

function hostCell(host) {
  const a = agents.known.get(host);
  return el('td', { class: 'host' },
    el('a', { href: `#/host/${encodeURIComponent(host)}`, text: a?.name || host }),
    a?.name ? el('span', { class: 'id mono', text: host }) : null);
}

function output(data) {
  if (data === undefined || data === null) return '';
  if (typeof data === 'object' && ('stdout' in data || 'stderr' in data)) {
    const frag = document.createDocumentFragment();
    if (data.stdout) frag.append(el('span', { class: 'label', text: 'stdout' }), el('pre', { class: 'stdout', text: data.stdout }));
    if (data.stderr) frag.append(el('span', { class: 'label', text: 'stderr' }), el('pre', { class: 'stderr', text: data.stderr }));
    if (data.stdout_truncated || data.stderr_truncated) frag.append(el('span', { class: 'label', text: 'output truncated by the agent' }));
    if (!data.stdout && !data.stderr) frag.append(el('span', { class: 'label', text: 'no output' }));
    return frag;
  }
  const full = JSON.stringify(data);
  if (full.length <= 160) return el('code', { text: full });
  // An object: its short scalar fields as "key value" up front, all of it in the disclosure.
  let lead = compact(full, 120);
  if (typeof data === 'object' && !Array.isArray(data)) {
    const keys = ['nodename', 'release', 'machine', 'version', 'count', 'name'];
    const short = Object.entries(data)
      .filter(([, v]) => v !== null && typeof v !== 'object' && String(v).length <= 40)
      .sort(([a], [b]) => ((keys.indexOf(a) + 1 || 99) - (keys.indexOf(b) + 1 || 99)));
    if (short.length) lead = compact(short.slice(0, 4).map(([k, v]) => `${k} ${v}`).join(' · '), 140);
  }
  return el('details', {}, el('summary', { text: lead }), el('pre', { text: JSON.stringify(data, null, 2) }));
}

function resultRow(line, o) {
  const exit = line.data && typeof line.data === 'object' && 'exitcode' in line.data
    ? (line.data.exitcode ?? (line.data.signal ? `signal ${line.data.signal}` : '')) : '';
  return el('tr', { 'data-host': line.host, 'data-outcome': o },
    hostCell(line.host),
    el('td', {}, el('span', { class: `badge ${o}`, text: OUTCOME_TEXT[o] })),
    el('td', { class: 'num', text: line.retcode ?? '' }),
    el('td', { text: line.message || '' }),
    el('td', { class: 'num exit', text: exit }),
    el('td', { class: 'out' }, output(line.data)));
}

// -------------------------------------------------------------------- run --

const run = {
  abort: null,
  results: null,

  init() {
    const form = $('#run-form');
    form.addEventListener('submit', (ev) => { ev.preventDefault(); this.start(); });
    form.addEventListener('input', () => this.preview());
    form.addEventListener('change', () => this.preview());
    $('#run-stop').addEventListener('click', () => this.abort?.abort());
    $('#t-name').addEventListener('focus', () => { $('#t-name-r').checked = true; });
    $('#t-hosts').addEventListener('focus', () => { $('#t-hosts-r').checked = true; });
    this.methods([]);
  },

  methods(plugins) {
    const sel = $('#r-method');
    const keep = sel.value || 'getinfo.kernel';
    const names = new Set(['getinfo.kernel', 'sync.bash', 'ping', 'agent.info']);
    for (const p of plugins) if (p.startsWith('getinfo.') || p === 'sync.bash') names.add(p);
    const list = [...names].sort();
    sel.replaceChildren(...list.map((m) => el('option', { value: m, text: m })));
    sel.value = list.includes(keep) ? keep : 'getinfo.kernel';
    this.preview();
  },

  target() {
    const kind = $('input[name="target"]:checked').value;
    if (kind === 'all') return { target: { all: true }, estimate: live.count, what: 'every connected agent' };
    if (kind === 'name') {
      const glob = $('#t-name').value.trim();
      if (!glob) return { error: 'Enter a name glob (e.g. web-*).' };
      const n = agents.list.filter((a) => a.online && globMatch(glob, a.name || '')).length;
      return { target: { name: glob }, estimate: n, what: `agents named ${glob}` };
    }
    const words = $('#t-hosts').value.split(/[\s,]+/).filter(Boolean);
    if (!words.length) return { error: 'List at least one host id or node name.' };
    const hosts = [...new Set(words.map((w) => agents.known.has(w) ? w : (agents.byName(w)?.host || w)))];
    return { target: { hosts }, estimate: hosts.length, what: `${hosts.length} listed host${hosts.length === 1 ? '' : 's'}` };
  },

  request() {
    const method = $('#r-method').value;
    const req = { method };
    if (method === 'sync.bash') {
      const cmd = $('#r-cmd').value;
      if (!cmd.trim()) return { error: 'Enter the command to run.' };
      req.cmd = cmd;
      const user = $('#r-user').value.trim();
      const group = $('#r-group').value.trim();
      const t = $('#r-ctimeout').value.trim();
      if (user) req.user = user;
      if (group) req.group = group;
      if (t) {
        const n = Number(t);
        if (!Number.isInteger(n) || n < 1 || n > 86400) return { error: 'The command timeout is a whole number of seconds, 1 to 86400.' };
        req.timeout = n;
      }
    } else if (method.startsWith('getinfo.')) {
      const args = $('#r-args').value.trim();
      if (args) req.args = args;
    }
    return { req };
  },

  timeout() {
    const n = Number($('#r-timeout').value);
    if (!(n > 0 && n <= 3600)) return null;
    return n;
  },

  preview() {
    const method = $('#r-method').value;
    show($('#r-bash'), method === 'sync.bash');
    show($('#r-getinfo'), method.startsWith('getinfo.'));
    const r = this.request();
    $('#r-preview').textContent = r.req ? JSON.stringify(r.req) : `(${r.error})`;
    const t = this.target();
    $('#t-preview').textContent = t.error ? t.error
      : (t.estimate === null || t.estimate === undefined ? '' : `Targets ${fmtInt(t.estimate)} ${t.target.hosts ? 'host' : 'connected agent'}${t.estimate === 1 ? '' : 's'} now.`);
  },

  /** Route `#/run?hosts=ID`: the form preset for one host. */
  show(params) {
    const hosts = params.get('hosts');
    if (hosts) {
      $('#t-hosts-r').checked = true;
      $('#t-hosts').value = hosts;
    }
    this.preview();
  },

  async confirm(text) {
    const d = $('#run-confirm');
    $('#confirm-text').textContent = text;
    d.returnValue = '';
    d.showModal();
    $('#confirm-no').focus();
    return new Promise((resolve) => d.addEventListener('close', () => resolve(d.returnValue === 'run'), { once: true }));
  },

  async start() {
    const err = $('#run-error');
    const t = this.target();
    const r = this.request();
    const timeout = this.timeout();
    const problem = t.error || r.error || (timeout === null ? 'Wait for answers: a number of seconds in (0, 3600].' : '');
    setError(err, problem);
    if (problem) return;
    if (r.req.method === 'sync.bash' && !t.target.hosts) {
      const n = t.estimate === null || t.estimate === undefined ? 'every matching' : fmtInt(t.estimate);
      const as = r.req.user || 'root';
      if (!await this.confirm(`Run "${compact(r.req.cmd, 80)}" as ${as} on ${n} host${t.estimate === 1 ? '' : 's'} (${t.what})?`)) return;
    }
    if (!agents.loaded) await agents.load();
    const mount = $('#run-results');
    show(mount, true);
    const box = el('div');
    mount.replaceChildren($('#run-results-h'), box);
    const results = new Results(box);
    this.results = results;
    results.setTargeted(t.estimate);
    mount.scrollIntoView({ block: 'start' });
    results.state('Waiting for answers…');
    this.abort = new AbortController();
    $('#run-go').disabled = true;
    $('#run-stop').disabled = false;
    const started = performance.now();
    try {
      await streamCall({ target: t.target, request: r.req, timeout }, (line) => results.add(line), this.abort.signal);
      results.state(results.summary
        ? `Done: ${fmtInt(results.counts.received)} result${results.counts.received === 1 ? '' : 's'} in ${((performance.now() - started) / 1000).toFixed(1)} s.`
        : 'The stream ended without a summary.');
    } catch (e) {
      if (e.name === 'AbortError') results.state('Stopped watching; the call goes on at the server and is kept in the history.');
      else if (results.counts.received) results.state(`The stream broke: ${e.message}`);
      else {
        show(mount, false);
        if (e.status !== 401) setError(err, `The call was refused (${e.code}): ${e.message}`);
      }
    } finally {
      $('#run-go').disabled = false;
      $('#run-stop').disabled = true;
      this.abort = null;
      results.render();
    }
  },
};

// ------------------------------------------------------------------- host --

const host = {
  id: null,
  facts: {},

  async show(id) {
    this.id = id;
    $('#host-h').textContent = `Host ${id}`;
    $('#host-meta').replaceChildren();
    $('#host-facts').replaceChildren();
    $('#facts-msg').textContent = '';
    $('#host-calls tbody').replaceChildren();
    $('#host-tasks tbody').replaceChildren();
    setError($('#host-error'), '');
    $('#host-run').href = `#/run?hosts=${encodeURIComponent(id)}`;
    let a;
    try {
      a = await getJson(`/v1/agents/${encodeURIComponent(id)}`);
    } catch (e) {
      if (e.status !== 401) setError($('#host-error'), `${e.message}`);
      return;
    }
    if (this.id !== id) return;
    this.facts = a.facts || {};
    $('#host-h').textContent = `Host ${a.name || id}`;
    const meta = [
      ['Host id', el('span', { class: 'mono', text: a.host })],
      ['Node name', a.name || '—'],
      ['Status', el('span', { class: `badge ${a.online ? 'online' : 'gone'}`, text: a.online ? 'online' : 'offline' })],
      ['Address', a.addr || '—'],
      ['Version', a.version || '—'],
      ['Connected', a.connected_at ? `${when(a.connected_at * 1000)} (${ago(a.connected_at * 1000)})` : '—'],
      ['First seen', a.first_seen ? when(a.first_seen) : 'not in the store'],
      ['Last seen', a.online ? 'now (connected)' : (a.last_seen ? `${when(a.last_seen)} (${ago(a.last_seen)})` : '—')],
      ['Plugins', (a.plugins || []).join(', ') || '—'],
    ];
    $('#host-meta').replaceChildren(...meta.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', {}, v)]));
    this.renderFacts(a);
    this.history(id);
  },

  renderFacts(a) {
    const methods = new Set(Object.keys(this.facts));
    for (const p of a.plugins || []) if (p.startsWith('getinfo.')) methods.add(p);
    const box = $('#host-facts');
    if (!methods.size) {
      box.replaceChildren(el('p', { class: 'hint', text: 'This host serves no getinfo.* method and the store has no facts for it.' }));
      return;
    }
    box.replaceChildren(...[...methods].sort().map((m) => {
      const f = this.facts[m];
      const id = `fact-${m.replace(/[^a-z0-9]/g, '-')}`;
      const btn = el('button', { type: 'button', 'aria-describedby': `${id}-h`, text: `Refresh ${m}` });
      btn.disabled = !a.online;
      btn.addEventListener('click', () => this.refresh(m, btn));
      return el('section', { class: 'fact', id, 'aria-labelledby': `${id}-h` },
        el('header', {},
          el('h3', { id: `${id}-h`, text: m }),
          el('p', { class: 'hint', text: f ? `collected ${when(f.at)} (${ago(f.at)})` : 'not collected yet' }),
          btn),
        f ? factBody(f.data) : null);
    }));
  },

  async refresh(method, btn) {
    const id = this.id;
    btn.disabled = true;
    $('#facts-msg').textContent = `Asking ${method}…`;
    let answer = null;
    try {
      await streamCall({ target: { hosts: [id] }, request: { method }, timeout: 30 }, (line) => {
        if (!line.summary && line.host === id) answer = line;
      });
    } catch (e) {
      $('#facts-msg').textContent = `${method}: ${e.message}`;
      btn.disabled = false;
      return;
    }
    if (this.id !== id) return;
    if (answer && answer.resp === 'success') {
      this.facts[method] = { data: answer.data, at: Date.now() };
      $('#facts-msg').textContent = `${method} refreshed.`;
    } else {
      $('#facts-msg').textContent = answer
        ? `${method} failed: ${answer.retcode} ${answer.message}`
        : `${method}: no answer line for this host.`;
    }
    const a = agents.known.get(id) || { plugins: Object.keys(this.facts), online: true };
    this.renderFacts({ ...a, online: true });
    $(`#fact-${method.replace(/[^a-z0-9]/g, '-')} button`)?.focus();
    this.history(id);
  },

  async history(id) {
    try {
      const [calls, tasks] = await Promise.all([
        getJson(`/v1/calls?host=${encodeURIComponent(id)}&limit=20`),
        getJson(`/v1/tasks?host=${encodeURIComponent(id)}&limit=20`),
      ]);
      if (this.id !== id) return;
      $('#host-calls tbody').replaceChildren(...(calls.length ? calls.map((c) => {
        const res = c.result || {};
        const o = res.resp ? outcome(res) : null;
        return el('tr', {},
          el('td', {}, el('a', { href: `#/calls/${c.id}`, text: `#${c.id}` })),
          el('td', { class: 'nowrap', text: when(c.at) }),
          el('td', {}, el('code', { text: requestText(c.request) })),
          el('td', {}, o ? el('span', { class: `badge ${o}`, text: `${OUTCOME_TEXT[o]} (${res.retcode})` }) : '—'),
          el('td', { text: res.message || '' }));
      }) : [el('tr', {}, el('td', { colspan: '5', class: 'hint', text: 'No calls reached this host yet.' }))]));
      $('#host-tasks tbody').replaceChildren(...(tasks.length ? tasks.map((t) => el('tr', {},
        el('td', { class: 'mono', text: t.schedule ? `${t.task} (schedule ${t.schedule}, run ${t.run})` : t.task }),
        el('td', { text: when(t.received_at * 1000) }),
        el('td', {}, el('span', { class: `badge ${outcome(t)}`, text: `${t.resp} (${t.retcode})` })),
        el('td', { class: 'num', text: t.data?.exitcode ?? '' }),
        el('td', { class: 'out' }, output(t.data)))) : [el('tr', {}, el('td', { colspan: '5', class: 'hint', text: 'No task results from this host.' }))]));
    } catch (e) {
      if (e.status !== 401) setError($('#host-error'), `History: ${e.message}`);
    }
  },
};

/** A fact's data: scalars as a two-column table, lists of objects as tables, the rest as JSON. */
function factBody(data) {
  if (data === null || typeof data !== 'object' || Array.isArray(data)) return el('pre', { text: JSON.stringify(data, null, 2) });
  const rows = [];
  for (const [k, v] of Object.entries(data)) {
    let cell;
    if (v === null || typeof v !== 'object') cell = el('td', { class: 'mono', text: String(v) });
    else if (Array.isArray(v) && v.length && v.every((x) => x && typeof x === 'object' && !Array.isArray(x))) {
      cell = el('td', {}, el('details', {}, el('summary', { text: `${v.length} entries` }), listTable(v)));
    } else {
      const text = JSON.stringify(v, null, 2);
      cell = el('td', {}, text.length < 120 ? el('code', { text: JSON.stringify(v) })
        : el('details', {}, el('summary', { text: compact(JSON.stringify(v), 80) }), el('pre', { text })));
    }
    rows.push(el('tr', {}, el('th', { scope: 'row', text: k }), cell));
  }
  return el('table', { class: 'grid' }, el('tbody', {}, ...rows));
}

function listTable(items) {
  const keys = [];
  for (const it of items.slice(0, 50)) for (const k of Object.keys(it)) if (!keys.includes(k)) keys.push(k);
  const shown = items.slice(0, 500);
  return el('div', { class: 'table-wrap' }, el('table', { class: 'grid' },
    el('thead', {}, el('tr', {}, ...keys.map((k) => el('th', { scope: 'col', text: k })))),
    el('tbody', {}, ...shown.map((it) => el('tr', {}, ...keys.map((k) => el('td', { text: it[k] === undefined ? '' : compact(it[k], 80) })))))),
  items.length > shown.length ? el('p', { class: 'hint', text: `first ${shown.length} of ${items.length}` }) : '');
}

// ---------------------------------------------------------------- history --

const history = {
  starts: [],   // the `before` of each page shown (null: newest)
  before: null,
  last: [],

  init() {
    $('#calls-newest').addEventListener('click', () => { this.starts = []; this.load(null); });
    $('#calls-older').addEventListener('click', () => {
      const oldest = this.last[this.last.length - 1];
      if (oldest) { this.starts.push(this.before); this.load(oldest.id); }
    });
  },

  async load(before) {
    this.before = before;
    setError($('#calls-error'), '');
    let rows;
    try {
      rows = await getJson(`/v1/calls?limit=50${before ? `&before=${before}` : ''}`);
    } catch (e) {
      if (e.status !== 401) setError($('#calls-error'), `Could not read the history: ${e.message}`);
      return;
    }
    this.last = rows;
    $('#calls-older').disabled = rows.length < 50;
    $('#calls-newest').disabled = !before;
    $('#calls-page').textContent = rows.length
      ? `Calls #${rows[0].id} to #${rows[rows.length - 1].id}` : 'No calls recorded yet.';
    $('#calls-table tbody').replaceChildren(...rows.map((c) => {
      const s = c.summary || {};
      const n = (k) => el('td', { class: 'num', text: s[k] === undefined ? '—' : fmtInt(s[k]) });
      return el('tr', { 'data-call': c.id },
        el('td', {}, el('a', { href: `#/calls/${c.id}`, text: `#${c.id}` })),
        el('td', { class: 'nowrap', text: when(c.at) }),
        el('td', { text: c.who }),
        el('td', {}, el('code', { text: targetText(c.target) })),
        el('td', {}, el('code', { text: requestText(c.request) })),
        n('targeted'), n('answered'), n('failed'), n('offline'), n('timed_out'),
        el('td', { class: 'num', text: c.finished_at ? ((c.finished_at - c.at) / 1000).toFixed(2) : 'running' }));
    }));
  },

  async showCall(id) {
    setError($('#call-error'), '');
    $('#call-h').textContent = `Call #${id}`;
    $('#call-meta').replaceChildren();
    const mount = $('#call-results');
    mount.replaceChildren();
    let c;
    try {
      [c] = await Promise.all([getJson(`/v1/calls/${encodeURIComponent(id)}`), agents.loaded ? null : agents.load()]);
    } catch (e) {
      if (e.status !== 401) setError($('#call-error'), e.message);
      return;
    }
    const meta = [
      ['When', `${when(c.at)} (${ago(c.at)})`],
      ['Finished', c.finished_at ? `${when(c.finished_at)}, after ${((c.finished_at - c.at) / 1000).toFixed(3)} s` : 'still running'],
      ['Who', c.who],
      ['Target', el('code', { text: targetText(c.target) })],
      ['Request', el('code', { text: JSON.stringify(c.request) })],
    ];
    $('#call-meta').replaceChildren(...meta.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', {}, v)]));
    const results = new Results(mount);
    for (const line of c.results || []) results.add(line);
    if (c.summary) results.add({ summary: { ...c.summary, call: c.summary.call ?? c.id } });
    results.state(c.finished_at ? `${fmtInt((c.results || []).length)} results stored.` : 'The call is still running; reload for more.');
    results.render();
  },
};

function targetText(t) {
  if (t && t.all) return 'all';
  if (t && typeof t.name === 'string') return `name ${t.name}`;
  if (t && Array.isArray(t.hosts)) {
    const names = t.hosts.map((h) => agents.known.get(h)?.name || h);
    return `${t.hosts.length} host${t.hosts.length === 1 ? '' : 's'}: ${compact(names.join(' '), 60)}`;
  }
  return compact(t, 60);
}

/** A request as an operator reads it: method, then its command or arguments. */
function requestText(r) {
  if (!r || typeof r !== 'object') return compact(r, 70);
  const rest = { ...r };
  delete rest.method;
  const lead = r.cmd !== undefined ? ` ${r.cmd}` : (r.args !== undefined ? ` ${r.args}` : '');
  delete rest.cmd;
  delete rest.args;
  const more = Object.keys(rest).length ? ` ${JSON.stringify(rest)}` : '';
  return compact(`${r.method}${lead}${more}`, 90);
}

// ----------------------------------------------------------------- router --

let current = null;
const VIEWS = ['login', 'agents', 'host', 'run', 'calls', 'call'];
const NAV = { agents: 'agents', host: 'agents', run: 'run', calls: 'calls', call: 'calls' };

function activate(view) {
  current = view;
  for (const v of VIEWS) show($(`#view-${v}`), v === view);
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === NAV[view]) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const h = $(`#view-${view} h1`);
  document.title = `${h.textContent} · BasicAgent console`;
}

function route() {
  if (!auth.ok) { showLogin($('#login-msg').hidden ? '' : $('#login-msg').textContent); return; }
  const hash = location.hash.replace(/^#/, '') || '/agents';
  const [path, query] = hash.split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  let view = 'agents';
  if (parts[0] === 'host' && parts[1]) { view = 'host'; host.show(parts[1]); }
  else if (parts[0] === 'run') { view = 'run'; run.show(params); if (!agents.loaded) agents.load(); }
  else if (parts[0] === 'calls' && parts[1]) { view = 'call'; history.showCall(parts[1]); }
  else if (parts[0] === 'calls') { view = 'calls'; history.starts = []; history.load(null); }
  else if (parts[0] === 'login') { location.hash = '#/agents'; return; }
  else agents.show();
  activate(view);
  $(`#view-${view} h1`).focus();
}

async function main() {
  $('#login-form').addEventListener('submit', login);
  $('#logout').addEventListener('click', logout);
  $('#skip').addEventListener('click', (ev) => { ev.preventDefault(); $('#main').focus(); });
  window.addEventListener('hashchange', route);
  agents.init();
  run.init();
  history.init();
  live.start();
  try {
    const res = await probe();
    chrome();
    if (res === true) route();
    else {
      const had = auth.token();
      auth.clear();
      showLogin(had ? `The stored token was refused (${res.code}): ${res.message}. Log in again.` : '');
    }
  } catch (e) {
    chrome();
    activate('login');
    setError($('#login-msg'), `The API did not answer: ${e.message}`);
  }
}

main();
