// The enrollhook dashboard: reads the JSON API of the server that serves it.
// No data lives in the page; no third-party code; no inline script (CSP).
'use strict';

// Every endpoint the dashboard calls (a test checks each against the router).
const API = {
  courses: '/api/courses',
  activity: '/api/activity',
  enrollments: '/api/enrollments',
  enrollment: '/api/enrollments/{source}/{enrollment_id}',
  quarantine: '/api/quarantine',
  retry: '/api/quarantine/{id}/retry',
  subscriptions: '/api/subscriptions',
  subscription: '/api/subscriptions/{id}',
  attempts: '/api/subscriptions/{id}/attempts',
  deliveries: '/api/subscriptions/{id}/deliveries',
  test: '/api/subscriptions/{id}/test',
  rotate: '/api/subscriptions/{id}/rotate-secret',
  replay: '/api/subscriptions/{id}/replay',
  stream: '/api/stream',
  metrics: '/metrics',
  reconciliations: '/api/reconciliations',
  funnel: '/api/courses/{source}/{course_id}/funnel',
  student: '/api/students/{source}/{user_id}',
  quizzes: '/api/quizzes',
  alerts: '/api/alerts',
};

const TOKEN_KEY = 'enrollhook.token';
const RANGE_KEY = 'enrollhook.activity-days';
const RANGES = [30, 90, 365];
const PAGE = 100;
const STALLED_DAYS = 14; // the API's default

// ---------------------------------------------------------------- API access

class AuthNeeded extends Error {}

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `the server answered ${status}`);
    this.status = status;
    this.code = body && body.error;
  }
}

function fill(template, values) {
  return template.replace(/\{(\w+)\}/g, (_, k) => encodeURIComponent(values[k]));
}

function authHeaders(accept) {
  const headers = { Accept: accept };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = 'Bearer ' + token;
  return headers;
}

function apiUrl(path, params) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, v);
  }
  return url;
}

async function api(path, params = {}, method = 'GET', payload) {
  const url = apiUrl(path, params);
  const headers = authHeaders('application/json');
  const token = sessionStorage.getItem(TOKEN_KEY);
  let res;
  try {
    const init = { method, headers, credentials: 'omit', cache: 'no-store' };
    if (payload !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(payload);
    }
    res = await fetch(url, init);
  } catch (e) {
    throw new ApiError(0, { message: 'enrollhook does not answer (is it running?)' });
  }
  const text = await res.text();
  let body = text;
  try { body = text ? JSON.parse(text) : null; } catch (_) { /* /metrics is text */ }
  // 401: no or wrong token. 403 without a token: the server wants one from
  // non-local clients. 403 with a token: that token may not read this.
  if (res.status === 401 || (res.status === 403 && !token)) {
    throw new AuthNeeded(body && body.message ? body.message : 'An API token is needed.');
  }
  if (!res.ok) throw new ApiError(res.status, body);
  return body;
}

// An optional part of a view: null when this token may not read it.
async function optional(promise) {
  try { return await promise; } catch (e) {
    if (e instanceof ApiError && e.status === 403) return null;
    throw e;
  }
}

// The list at `path` as CSV (the API streams it), saved as `name`.csv.
async function downloadCsv(path, params, name, status) {
  if (status) status.textContent = 'Preparing the CSV…';
  try {
    const res = await fetch(apiUrl(path, { ...params, format: 'csv' }),
      { headers: authHeaders('text/csv'), credentials: 'omit', cache: 'no-store' });
    if (!res.ok) {
      const body = await res.json().catch(() => null);
      throw new ApiError(res.status, body);
    }
    const blob = await res.blob();
    const link = h('a', { href: URL.createObjectURL(blob), download: `${name}.csv` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    if (status) status.textContent = `Downloaded ${name}.csv`;
  } catch (e) {
    if (status) status.textContent = `Could not download: ${e.message}`;
  }
}

function csvButton(path, params, name) {
  const status = h('span', { class: 'muted small', role: 'status' });
  const button = h('button', { type: 'button', class: 'secondary small-button', 'data-csv': name,
    onclick: () => downloadCsv(path, params, name, status) }, 'Download CSV');
  return h('span', { class: 'csv' }, button, ' ', status);
}

// ---------------------------------------------------------------- live updates

// Reads /api/stream with fetch (EventSource cannot send the token), resumes
// with Last-Event-ID after a drop or a server restart, and asks the view on
// screen to refresh when something it shows changed.
const live = {
  lastId: null,
  controller: null,
  state: 'off',
  timer: null,
  pending: false,
  started: false,
};

function setLive(state, text) {
  live.state = state;
  const el = document.getElementById('live');
  el.className = `live ${state}`;
  el.dataset.state = state;
  el.querySelector('.live-text').textContent = text;
}

async function connectLive() {
  if (live.controller) live.controller.abort();
  const controller = new AbortController();
  live.controller = controller;
  const headers = authHeaders('text/event-stream');
  if (live.lastId) headers['Last-Event-ID'] = live.lastId;
  let retryIn = 2000;
  try {
    const res = await fetch(apiUrl(API.stream), { headers, credentials: 'omit', cache: 'no-store', signal: controller.signal });
    if (res.status === 401 || res.status === 403) { setLive('off', 'Not live'); return; }
    if (!res.ok || !res.body) throw new Error(`the server answered ${res.status}`);
    setLive('on', 'Live');
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        onLiveMessage(block);
      }
    }
  } catch (e) {
    if (controller.signal.aborted) return;
    retryIn = 2000;
  }
  if (controller.signal.aborted) return;
  setLive('retry', 'Reconnecting…');
  setTimeout(() => { if (live.controller === controller) connectLive(); }, retryIn);
}

function onLiveMessage(block) {
  let event = 'message', id = null, data = '';
  for (const line of block.split('\n')) {
    if (line.startsWith('event:')) event = line.slice(6).trim();
    else if (line.startsWith('id:')) id = line.slice(3).trim();
    else if (line.startsWith('data:')) data += line.slice(5).trim();
  }
  if (!data) return; // keep-alive
  if (id) live.lastId = id;
  let message;
  try { message = JSON.parse(data); } catch (_) { return; }
  const { parts } = parseHash();
  const page = parts[0] || 'overview';
  const shows = {
    delivery: () => page === 'overview' || page === 'courses' || page === 'quizzes'
      // A delivery message names no user: an open student page re-reads itself on any of its school's.
      || (page === 'students' && parts[1] === message.source)
      || (page === 'enrollments' && (parts.length < 3 || (parts[1] === message.source && parts[2] === String(message.enrollment_id)))),
    quarantine: () => page === 'overview' || page === 'quarantine',
    counters: () => page === 'overview',
  };
  if (shows[event] && shows[event]()) scheduleRefresh();
}

// At most one refresh every 700 ms, and none while the user types in the view.
function scheduleRefresh() {
  live.pending = true;
  if (live.timer) return;
  live.timer = setTimeout(() => {
    live.timer = null;
    const active = document.activeElement;
    if (active && active.closest('#view') && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName)) {
      scheduleRefresh();
      return;
    }
    if (live.pending) { live.pending = false; render({ quiet: true }); }
  }, 700);
}

// ---------------------------------------------------------------- DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

const number = new Intl.NumberFormat();
const fmtInt = (n) => number.format(n);
const fmtPct = (x, digits = 1) => (x === null || x === undefined ? '—' : `${(x * 100).toFixed(digits)} %`);
const fmtDays = (d) => (d === null || d === undefined ? '—' : `${d.toFixed(1)} d`);

function fmtTime(iso) {
  if (!iso) return '—';
  const t = new Date(iso);
  if (isNaN(t)) return iso;
  return h('time', { datetime: iso, title: iso },
    t.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' }));
}

function badge(text, kind) { return h('span', { class: `badge ${kind || text}` }, text); }

function progressBar(pct, big) {
  const bar = h('span');
  bar.style.width = `${Math.max(0, Math.min(100, pct))}%`; // CSSOM: allowed by the CSP
  return h('div', {
    class: `progress${pct >= 100 ? ' done' : ''}${big ? ' big' : ''}`,
    role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': Math.round(pct),
    title: `${pct.toFixed(1)} %`,
  }, bar);
}

function progressCell(pct) {
  return h('div', { class: 'progress-cell' }, progressBar(pct), h('span', { class: 'pct' }, `${Math.round(pct)} %`));
}

function card(label, value, kind, sub) {
  return h('div', { class: `card ${kind || ''}` },
    h('div', { class: 'label' }, label), h('div', { class: 'value' }, value),
    sub ? h('div', { class: 'sub' }, sub) : null);
}

function emptyState(...content) { return h('div', { class: 'panel empty' }, ...content); }

const SEND_HINT = ['No enrollments yet — send a test webhook with ', h('code', null, 'enrollhook send created'),
  ', or point a Thinkific webhook at ', h('code', null, `${location.origin}/webhooks/thinkific`),
  ' (', h('code', null, '…/webhooks/thinkific/NAME'), ' for a school configured by name).'];

function studentName(e) {
  const name = [e.first_name, e.last_name].filter(Boolean).join(' ');
  return name || e.email || (e.user_id ? `user ${e.user_id}` : '—');
}

function courseLabel(c) { return c.name || `Course ${c.course_id}`; }

// ---------------------------------------------------------------- routing

let generation = 0; // a view that finished after the user moved on is dropped

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, query] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(query || '') };
}

function go(path, params) {
  const q = params ? new URLSearchParams(Object.entries(params).filter(([, v]) => v !== '' && v != null)).toString() : '';
  location.hash = '#' + path + (q ? '?' + q : '');
}

async function render(options = {}) {
  const mine = ++generation;
  const { parts, params } = parseHash();
  const view = document.getElementById('view');
  const nav = parts[0] === 'courses' ? 'overview' : parts[0] === 'students' ? 'enrollments' : (parts[0] || 'overview');
  for (const a of document.querySelectorAll('[data-nav]')) a.classList.toggle('current', a.dataset.nav === nav);
  document.getElementById('forget-token').hidden = !sessionStorage.getItem(TOKEN_KEY);
  document.getElementById('token-panel').hidden = true;
  const content = h('div');
  try {
    if (parts.length === 0) await overview(content);
    else if (parts[0] === 'enrollments' && parts.length === 3) await enrollmentDetail(content, parts[1], parts[2]);
    else if (parts[0] === 'enrollments') await enrollmentsView(content, params);
    else if (parts[0] === 'courses' && parts.length === 3) await courseDetail(content, parts[1], parts[2], params);
    else if (parts[0] === 'students' && parts.length === 3) await studentView(content, parts[1], parts[2]);
    else if (parts[0] === 'quizzes') await quizzesView(content);
    else if (parts[0] === 'quarantine') await quarantineView(content);
    else if (parts[0] === 'forwarding') await forwardingView(content);
    else content.append(emptyState('No such page. ', h('a', { href: '#/' }, 'Back to the overview')));
  } catch (e) {
    if (mine !== generation) return;
    if (e instanceof AuthNeeded) return askForToken(e.message);
    content.replaceChildren(errorPanel(e));
  }
  if (mine !== generation) return;
  // A live refresh keeps the reader where they were.
  const y = window.scrollY;
  view.replaceChildren(content);
  if (options.quiet) window.scrollTo(0, y);
  if (!live.started) { live.started = true; connectLive(); }
}

function errorPanel(e) {
  const panel = h('div', { class: 'panel error' }, h('strong', null, 'Could not load this page: '), e.message);
  if (e instanceof ApiError && e.status === 403) {
    panel.append(' ', h('button', { type: 'button', class: 'secondary', onclick: () => askForToken(e.message) }, 'Use another token'));
  }
  return panel;
}

function askForToken(reason) {
  document.getElementById('view').replaceChildren();
  document.getElementById('token-reason').textContent = reason;
  document.getElementById('token-panel').hidden = false;
  document.getElementById('token-input').focus();
}

// ---------------------------------------------------------------- overview

async function overview(root) {
  const [courses, metrics, quarantine] = await Promise.all([
    api(API.courses),
    optional(api(API.metrics)),
    optional(api(API.quarantine, { limit: 1000 })),
  ]);
  const items = courses.items;
  root.append(h('div', { class: 'head' }, h('h1', null, 'Overview'),
    h('span', { class: 'muted small' }, 'All schools and courses this token can read')));
  root.append(await lastReconciliation());
  if (items.length === 0) {
    root.append(emptyState(...SEND_HINT));
    root.append(await activityPanel({}));
    return;
  }
  const sum = (k) => items.reduce((n, c) => n + c[k], 0);
  const total = sum('enrollments');
  root.append(h('div', { class: 'cards' },
    card('Enrollments', fmtInt(total), '', `${fmtInt(items.length)} course${items.length === 1 ? '' : 's'}`),
    card('Active', fmtInt(sum('active')), 'active'),
    card('Trial', fmtInt(sum('trial')), 'trial'),
    card('Completed', fmtInt(sum('completed')), 'completed'),
    card('Expired', fmtInt(sum('expired')), 'expired'),
    card('Completion rate', fmtPct(sum('completed') / Math.max(1, total)), 'completed'),
  ));
  // Status lines of other parts (the last reconciliation, …) go in here.
  root.append(h('div', { id: 'overview-status' }));
  root.append(await activityPanel({}));
  root.append(deliveryCards(metrics, quarantine));
  root.append(h('div', { class: 'panel' },
    h('div', { class: 'sub-head' }, h('h2', null, 'Courses'), csvButton(API.courses, {}, 'courses')),
    courseTable(items)));
}

// One line on the newest scheduled reconciliation (`serve --reconcile-every`),
// e.g. "Last checked with Thinkific …: 3 enrollments were missing, now added";
// nothing when none ran. Text only (textContent): the report is data.
async function lastReconciliation() {
  const line = h('p', { class: 'muted small', id: 'last-reconciliation' });
  const page = await optional(api(API.reconciliations, { limit: 1 }));
  const run = page && page.items[0];
  if (run) {
    const found = run.error ? `failed: ${run.error}` : (run.report.summary || 'done');
    line.textContent = `Last checked with Thinkific ${new Date(run.finished_at).toLocaleString()} (${run.source}): ${found}`;
  }
  return line;
}

// Counts from /metrics (admin only; since the server started) and the quarantine.
function deliveryCards(metrics, quarantine) {
  const cards = h('div', { class: 'cards' });
  if (typeof metrics === 'string') {
    const byOutcome = {};
    for (const m of metrics.matchAll(/^enrollhook_deliveries_total\{outcome="([^"]+)"\} (\d+)/gm)) {
      byOutcome[m[1]] = Number(m[2]);
    }
    const rejected = Object.entries(byOutcome)
      .filter(([k]) => k !== 'stored' && k !== 'duplicate').reduce((n, [, v]) => n + v, 0);
    const since = 'since the server started';
    cards.append(card('Deliveries stored', fmtInt(byOutcome.stored || 0), 'completed', since),
      card('Duplicates', fmtInt(byOutcome.duplicate || 0), '', since),
      card('Rejected', fmtInt(rejected), rejected ? 'bad' : '', since));
  }
  if (quarantine) {
    const open = quarantine.items.filter((q) => !q.resolved_at).length;
    const more = quarantine.next_cursor ? '+' : '';
    cards.append(h('a', { href: '#/quarantine', class: 'card-link' },
      card('In quarantine', fmtInt(open) + more, open ? 'bad' : '', 'rejected deliveries not re-admitted')));
  }
  return cards;
}

const COURSE_COLUMNS = [
  { key: 'name', label: 'Course', get: (c) => courseLabel(c).toLowerCase() },
  { key: 'source', label: 'School (source)' },
  { key: 'enrollments', label: 'Enrollments', num: true },
  { key: 'active', label: 'Active', num: true },
  { key: 'trial', label: 'Trial', num: true },
  { key: 'completed', label: 'Completed', num: true },
  { key: 'expired', label: 'Expired', num: true },
  { key: 'completion_rate', label: 'Completion', num: true },
  { key: 'average_progress', label: 'Avg progress', num: true },
  { key: 'median_days_to_complete', label: 'Median days', num: true },
  { key: 'stalled', label: `Stalled (${STALLED_DAYS} d)`, num: true },
];

function courseTable(items) {
  const sources = new Set(items.map((c) => c.source));
  const columns = COURSE_COLUMNS.filter((c) => c.key !== 'source' || sources.size > 1);
  let sort = { key: 'enrollments', asc: false };
  const table = h('table');
  const draw = () => {
    const col = columns.find((c) => c.key === sort.key);
    const get = col.get || ((c) => c[col.key]);
    const rows = [...items].sort((a, b) => {
      const [x, y] = [get(a), get(b)];
      if (x === y) return 0;
      if (x === null || x === undefined) return 1; // empty cells last either way
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * (sort.asc ? 1 : -1);
    });
    const sortBy = (c) => { sort = { key: c.key, asc: c.key === sort.key ? !sort.asc : !c.num }; draw(); };
    // Sortable by keyboard too: each header is a focusable control.
    const head = h('tr', null, columns.map((c) => h('th', {
      class: `sortable${c.num ? ' num' : ''}${c.key === sort.key ? ' sorted' + (sort.asc ? ' asc' : '') : ''}`,
      scope: 'col', tabindex: 0,
      'aria-sort': c.key === sort.key ? (sort.asc ? 'ascending' : 'descending') : 'none',
      onclick: () => sortBy(c),
      onkeydown: (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); sortBy(c); } },
    }, c.label)));
    const body = rows.map((c) => {
      const href = `#/courses/${encodeURIComponent(c.source)}/${c.course_id}`;
      const cells = {
        name: h('td', null, h('a', { href }, courseLabel(c)), ' ', h('span', { class: 'muted small' }, `#${c.course_id}`)),
        source: h('td', null, c.source),
        enrollments: h('td', { class: 'num' }, fmtInt(c.enrollments)),
        active: h('td', { class: 'num' }, fmtInt(c.active)),
        trial: h('td', { class: 'num' }, fmtInt(c.trial)),
        completed: h('td', { class: 'num' }, fmtInt(c.completed)),
        expired: h('td', { class: 'num' }, fmtInt(c.expired)),
        completion_rate: h('td', { class: 'num' }, fmtPct(c.completion_rate)),
        average_progress: h('td', { class: 'num' }, `${c.average_progress.toFixed(1)} %`),
        median_days_to_complete: h('td', { class: 'num' }, fmtDays(c.median_days_to_complete)),
        stalled: h('td', { class: 'num' }, fmtInt(c.stalled ?? 0)),
      };
      return h('tr', { class: 'link', onclick: (ev) => { if (ev.target.tagName !== 'A') location.hash = href; } },
        columns.map((col) => cells[col.key]));
    });
    table.replaceChildren(h('thead', null, head), h('tbody', null, body));
  };
  draw();
  return h('div', { class: 'table-wrap' }, table);
}

// ---------------------------------------------------------------- activity chart

async function activityPanel(filter) {
  const panel = h('div', { class: 'panel' });
  const stored = Number(sessionStorage.getItem(RANGE_KEY));
  let days = RANGES.includes(stored) ? stored : 30;
  const chart = h('div');
  const dataTable = h('div', { class: 'table-wrap' });
  const title = h('h2');
  const buttons = RANGES.map((n) => h('button', {
    type: 'button',
    onclick: async () => { days = n; sessionStorage.setItem(RANGE_KEY, String(n)); await load(); },
  }, `${n} days`));
  const load = async () => {
    for (const [i, b] of buttons.entries()) b.classList.toggle('on', RANGES[i] === days);
    try {
      const data = await api(API.activity, { days, ...filter });
      const enrolled = data.days.reduce((n, d) => n + d.enrolled, 0);
      const completed = data.days.reduce((n, d) => n + d.completed, 0);
      title.replaceChildren(`Activity, last ${days} days: `, h('span', { class: 'muted' },
        `${fmtInt(enrolled)} new enrollment${enrolled === 1 ? '' : 's'}, ${fmtInt(completed)} completion${completed === 1 ? '' : 's'}`));
      chart.replaceChildren(activityChart(data.days));
      // The chart's numbers as text, for screen readers and copying.
      dataTable.replaceChildren(h('table', null,
        h('caption', { class: 'muted small' }, `New enrollments and completions per UTC day, last ${days} days`),
        h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Day'), h('th', { scope: 'col', class: 'num' }, 'New enrollments'), h('th', { scope: 'col', class: 'num' }, 'Completions'))),
        h('tbody', null, [...data.days].reverse().map((d) => h('tr', null,
          h('td', null, d.date), h('td', { class: 'num' }, fmtInt(d.enrolled)), h('td', { class: 'num' }, fmtInt(d.completed)))))));
    } catch (e) {
      if (e instanceof AuthNeeded) return askForToken(e.message);
      chart.replaceChildren(h('p', { class: 'muted' }, `Could not load the activity: ${e.message}`));
    }
  };
  panel.append(
    h('div', { class: 'toolbar' }, title, h('div', { class: 'seg', role: 'group', 'aria-label': 'Range' }, buttons)),
    chart,
    h('div', { class: 'toolbar' },
      h('div', { class: 'legend' },
        h('span', { class: 'enrolled' }, h('i'), 'New enrollments (by the day the enrollment was created)'),
        h('span', { class: 'completed' }, h('i'), 'Completions (by completed_at)')),
      h('span', { class: 'muted small' }, 'UTC days')),
    h('details', { class: 'data' }, h('summary', null, 'Show the numbers as a table'),
      h('div', { class: 'toolbar' }, h('span'), csvButton(API.activity, { ...filter, get days() { return days; } }, 'activity')),
      dataTable));
  await load();
  return panel;
}

// A nice upper bound and step for an axis holding values up to `max`.
function niceScale(max, ticks = 4) {
  if (max <= 0) return { top: ticks, step: 1 };
  const raw = max / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw && (st >= 1 || mag < 1));
  const whole = Math.max(1, Math.round(step));
  return { top: Math.ceil(max / whole) * whole, step: whole };
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

function activityChart(days) {
  const W = 1000, H = 240, L = 44, R = 14, T = 10, B = 26;
  const pw = W - L - R, ph = H - T - B;
  const n = days.length;
  const max = Math.max(0, ...days.map((d) => Math.max(d.enrolled, d.completed)));
  const { top, step } = niceScale(max);
  const band = pw / n;
  const y = (v) => T + ph - (v / top) * ph;
  const x = (i) => L + i * band + band / 2;
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img',
    'aria-label': 'New enrollments and completions per day' });

  for (let v = 0; v <= top; v += step) {
    svg.append(s('line', { class: v === 0 ? 'axis' : 'grid', x1: L, x2: W - R, y1: y(v), y2: y(v) }),
      s('text', { x: L - 6, y: y(v) + 4, 'text-anchor': 'end' }, fmtInt(v)));
  }
  // Date labels: month starts on long ranges, every k-th day on short ones.
  const long = n > 120;
  const every = Math.max(1, Math.ceil(n / 10));
  days.forEach((d, i) => {
    const [yy, mm, dd] = d.date.split('-').map(Number);
    const label = long
      ? (dd === 1 ? (mm === 1 ? `${MONTHS[0]} ${yy}` : MONTHS[mm - 1]) : null)
      : ((n - 1 - i) % every === 0 ? `${MONTHS[mm - 1]} ${dd}` : null);
    if (label) {
      svg.append(s('line', { class: 'axis', x1: x(i), x2: x(i), y1: T + ph, y2: T + ph + 4 }),
        s('text', { x: x(i), y: H - 8, 'text-anchor': 'middle' }, label));
    }
  });
  const barW = Math.max(1, band * 0.72);
  for (const [i, d] of days.entries()) {
    if (d.enrolled > 0) {
      svg.append(s('rect', { class: 'bar', x: x(i) - barW / 2, y: y(d.enrolled), width: barW,
        height: Math.max(0.5, y(0) - y(d.enrolled)), rx: Math.min(2, barW / 4) }));
    }
  }
  svg.append(s('polyline', { class: 'line', points: days.map((d, i) => `${x(i).toFixed(1)},${y(d.completed).toFixed(1)}`).join(' ') }));
  if (n <= 31) {
    for (const [i, d] of days.entries()) svg.append(s('circle', { class: 'dot', cx: x(i), cy: y(d.completed), r: 2.5 }));
  }
  // Hover targets last, on top: one per day, the whole height.
  for (const [i, d] of days.entries()) {
    svg.append(s('rect', { class: 'hover', x: L + i * band, y: T, width: band, height: ph },
      s('title', null, `${d.date}: ${fmtInt(d.enrolled)} new enrollment${d.enrolled === 1 ? '' : 's'}, ${fmtInt(d.completed)} completion${d.completed === 1 ? '' : 's'}`)));
  }
  if (max === 0) {
    svg.append(s('text', { x: L + pw / 2, y: T + ph / 2, 'text-anchor': 'middle', class: 'empty-note' },
      `No new enrollments or completions in the last ${n} days`));
  }
  return svg;
}

// ---------------------------------------------------------------- enrollments

const STATUSES = ['active', 'trial', 'completed', 'expired'];

async function enrollmentsView(root, params) {
  const courses = (await api(API.courses)).items;
  const filter = Object.fromEntries(['course_id', 'status', 'email', 'source']
    .map((k) => [k, params.get(k) || '']));
  root.append(h('div', { class: 'head' }, h('h1', null, 'Enrollments')));
  root.append(h('div', { class: 'panel' }, enrollmentFilters(filter, courses)));
  const schools = new Set(courses.map((c) => c.source));
  root.append(await enrollmentList(filter, { showCourse: true, showSource: schools.size > 1 && !filter.source }));
}

function enrollmentFilters(filter, courses, fixed = {}) {
  const sources = [...new Set(courses.map((c) => c.source))].sort();
  const field = (label, input) => h('label', null, label, input);
  const course = h('select', { name: 'course_id' }, h('option', { value: '' }, 'All courses'),
    courses.filter((c) => !filter.source || c.source === filter.source)
      .sort((a, b) => courseLabel(a).localeCompare(courseLabel(b)))
      .map((c) => h('option', { value: c.course_id, selected: String(c.course_id) === filter.course_id },
        `${courseLabel(c)} (#${c.course_id})${sources.length > 1 ? ' — ' + c.source : ''}`)));
  const status = h('select', { name: 'status' }, h('option', { value: '' }, 'Any status'),
    STATUSES.map((st) => h('option', { value: st, selected: st === filter.status }, st)));
  const email = h('input', { name: 'email', type: 'search', placeholder: 'exact address', value: filter.email });
  const source = h('select', { name: 'source' }, h('option', { value: '' }, 'All schools'),
    sources.map((src) => h('option', { value: src, selected: src === filter.source }, src)));
  const form = h('form', { class: 'filters', onsubmit: (ev) => {
    ev.preventDefault();
    const data = Object.fromEntries(new FormData(form).entries());
    const { parts } = parseHash();
    go('/' + parts.map(encodeURIComponent).join('/'), { ...data, ...fixed });
  } },
  fixed.course_id ? null : field('Course', course),
  field('Status', status), field('Email', email),
  sources.length > 1 && !fixed.source ? field('School', source) : null,
  h('button', { type: 'submit' }, 'Filter'),
  h('button', { type: 'button', class: 'secondary', onclick: () => {
    const { parts } = parseHash();
    go('/' + parts.map(encodeURIComponent).join('/'), fixed);
  } }, 'Clear'));
  return form;
}

async function enrollmentList(filter, { showCourse, showSource }) {
  const wrap = h('div', { class: 'panel' });
  const tbody = h('tbody');
  const more = h('button', { type: 'button', class: 'secondary' }, 'Load more');
  const count = h('span', { class: 'muted small' });
  let cursor = null, shown = 0;
  const load = async () => {
    more.disabled = true;
    const page = await api(API.enrollments, { ...filter, limit: PAGE, cursor });
    for (const e of page.items) {
      const href = `#/enrollments/${encodeURIComponent(e.source)}/${e.enrollment_id}`;
      tbody.append(h('tr', { class: 'link', onclick: (ev) => { if (ev.target.tagName !== 'A') location.hash = href; } },
        h('td', null, h('a', { href }, studentName(e)), h('div', { class: 'muted small' }, e.email || '',
          e.user_id ? [e.email ? ' · ' : '', h('a', { href: studentHref(e.source, e.user_id) }, 'student')] : null)),
        showSource ? h('td', null, e.source) : null,
        showCourse ? h('td', null, e.course_name || (e.course_id ? `Course ${e.course_id}` : '—')) : null,
        h('td', null, badge(e.status)),
        h('td', null, progressCell(e.progress)),
        h('td', null, fmtTime(e.updated_at)),
        h('td', { class: 'num' }, fmtInt(e.event_count))));
    }
    shown += page.items.length;
    cursor = page.next_cursor;
    count.textContent = `${fmtInt(shown)} shown${cursor ? ', more to load' : ''}`;
    more.hidden = !cursor;
    more.disabled = false;
  };
  more.addEventListener('click', () => load().catch((e) => {
    more.disabled = false;
    count.textContent = `Could not load more: ${e.message}`;
  }));
  await load();
  if (shown === 0) {
    const filtered = Object.values(filter).some(Boolean);
    return filtered ? emptyState('No enrollment matches these filters.') : emptyState(...SEND_HINT);
  }
  wrap.append(h('div', { class: 'sub-head' }, h('h2', null, 'Enrollments'), count, csvButton(API.enrollments, filter, 'enrollments')),
    h('div', { class: 'table-wrap' }, h('table', null,
      h('thead', null, h('tr', null, h('th', null, 'Student'), showSource ? h('th', null, 'School') : null, showCourse ? h('th', null, 'Course') : null,
        h('th', null, 'Status'), h('th', null, 'Progress'), h('th', null, 'Updated'), h('th', { class: 'num' }, 'Events'))),
      tbody)),
    h('div', { class: 'more' }, more));
  return wrap;
}

// Thinkific sends percentages as strings on 0–100, the REST API numbers on 0–1.
function eventProgress(body) {
  const p = body && body.payload && body.payload.percentage_completed;
  if (p === undefined || p === null || p === '') return null;
  const v = typeof p === 'number' ? p * 100 : parseFloat(p);
  return isNaN(v) ? null : v;
}

async function enrollmentDetail(root, source, id) {
  const { enrollment: e, events } = await api(fill(API.enrollment, { source, enrollment_id: id }));
  const courseHref = e.course_id ? `#/courses/${encodeURIComponent(e.source)}/${e.course_id}` : null;
  root.append(h('div', { class: 'head' },
    h('div', null, h('h1', null, studentName(e)),
      h('div', { class: 'muted' }, courseHref ? h('a', { href: courseHref }, e.course_name || `Course ${e.course_id}`) : 'No course',
        ` · enrollment ${e.enrollment_id} · ${e.source}`,
        e.user_id ? [' · ', h('a', { href: studentHref(e.source, e.user_id), 'data-student': e.user_id }, 'Student page')] : null)),
    badge(e.status)));
  const field = (label, value) => [h('dt', null, label), h('dd', null, value === null || value === undefined || value === '' ? '—' : value)];
  root.append(h('div', { class: 'panel' },
    h('div', { class: 'sub-head' }, h('h2', null, 'Progress'), h('strong', null, `${e.progress.toFixed(1)} %`)),
    progressBar(e.progress, true),
    h('dl', { class: 'fields' },
      field('Email', e.email), field('User id', e.user_id),
      field('Created', fmtTime(e.created_at)), field('Activated', fmtTime(e.activated_at)),
      field('Started', fmtTime(e.started_at)), field('Completed', fmtTime(e.completed_at)),
      field('Expires', fmtTime(e.expiry_date)), field('Updated', fmtTime(e.updated_at)),
      field('Trial', e.trial ? 'yes' : 'no'), field('Days to complete', e.days_to_complete === null ? null : fmtDays(e.days_to_complete)),
      field('Events', fmtInt(e.event_count)), field('Course id', e.course_id))));
  // In the order things happened at Thinkific (deliveries may arrive out of order).
  const when = (ev) => ev.created_at || ev.received_at;
  const ordered = [...events].sort((a, b) => (when(a) < when(b) ? -1 : when(a) > when(b) ? 1 : a.seq - b.seq));
  const timeline = h('ol', { class: 'timeline' }, ordered.map((ev) => {
    const pct = eventProgress(ev.body);
    const action = ev.topic.split('.')[1] || ev.topic;
    return h('li', { class: `ev-${action}` },
      h('div', null, h('strong', null, ev.topic), pct === null ? null : h('span', { class: 'muted' }, ` — ${pct.toFixed(1)} %`)),
      h('div', { class: 'when' }, fmtTime(when(ev)),
        ev.created_at ? [' · received ', fmtTime(ev.received_at)] : ' (received)',
        ` · event ${ev.event_id}`, ev.pruned_at ? ' · body pruned' : ''));
  }));
  root.append(h('div', { class: 'panel' }, h('h2', null, `Timeline (${events.length} event${events.length === 1 ? '' : 's'})`),
    events.length ? timeline : h('p', { class: 'muted' }, 'No events stored for this enrollment.')));
}

// ---------------------------------------------------------------- course detail

async function courseDetail(root, source, courseId, params) {
  const days = stalledDaysParam(params);
  // A course is known from its enrollments (the course list) or, before any
  // enrollment event arrived, from its lesson events alone (the funnel).
  const [courses, funnel] = await Promise.all([
    api(API.courses, { source }).then((r) => r.items),
    api(fill(API.funnel, { source, course_id: courseId }), { stalled_days: days }).catch((e) => {
      if (e instanceof ApiError && e.status === 404) return null;
      throw e;
    }),
  ]);
  const c = courses.find((x) => String(x.course_id) === courseId);
  if (!c && !funnel) {
    root.append(emptyState(`Nothing is known of course ${courseId} from ${source} yet: no enrollment or lesson event named it. `,
      h('a', { href: '#/' }, 'Back to the overview')));
    return;
  }
  const name = (c && c.name) || (funnel && funnel.course_name) || `Course ${courseId}`;
  root.append(h('div', { class: 'head' },
    h('div', null, h('h1', null, name), h('div', { class: 'muted' }, `Course #${courseId} · ${source}`)),
    h('a', { href: '#/' }, '← All courses')));
  if (c) {
    root.append(h('div', { class: 'cards' },
      card('Enrollments', fmtInt(c.enrollments)),
      card('Active', fmtInt(c.active), 'active'),
      card('Trial', fmtInt(c.trial), 'trial'),
      card('Completed', fmtInt(c.completed), 'completed'),
      card('Expired', fmtInt(c.expired), 'expired'),
      card('Completion rate', fmtPct(c.completion_rate), 'completed'),
      card('Avg progress', `${c.average_progress.toFixed(1)} %`),
      card('Median days', fmtDays(c.median_days_to_complete), '', 'to complete')));
  }
  root.append(funnelPanel(funnel, c, days));
  root.append(await stalledList(source, courseId, days));
  root.append(await quizPanel({ source, course_id: courseId }));
  if (!c) return;
  root.append(await activityPanel({ source, course_id: courseId }));
  const fixed = { source, course_id: courseId };
  const filter = { ...fixed, status: params.get('status') || '', email: params.get('email') || '' };
  root.append(h('div', { class: 'panel' }, enrollmentFilters(filter, courses, fixed)));
  root.append(await enrollmentList(filter, { showCourse: false }));
}

// ---------------------------------------------------------------- learning
// Every number here is what the learning API answered (a test holds each view
// equal to its endpoint); the page only lays it out.

function studentHref(source, userId) { return `#/students/${encodeURIComponent(source)}/${encodeURIComponent(userId)}`; }

// The `?stalled_days=` of the address, within what the API accepts.
function stalledDaysParam(params) {
  const n = Number(params.get('stalled_days'));
  return params.has('stalled_days') && Number.isInteger(n) && n >= 1 && n <= 3660 ? n : STALLED_DAYS;
}

function lessonLabel(l) { return l.name || `Lesson ${l.lesson_id}`; }

// The stalled-days control: changing it re-reads the funnel and the list.
function stalledControl(days) {
  const input = h('input', { id: 'stalled-days', name: 'stalled_days', type: 'number', min: 1, max: 3660,
    step: 1, value: days, required: true, inputmode: 'numeric' });
  input.addEventListener('input', () => input.setCustomValidity(''));
  return h('form', { class: 'filters stalled-form', onsubmit: (ev) => {
    ev.preventDefault();
    const n = Number(input.value);
    if (!Number.isInteger(n) || n < 1 || n > 3660) {
      input.setCustomValidity('A whole number of days, 1 to 3660.');
      input.reportValidity();
      return;
    }
    const { parts, params } = parseHash();
    go('/' + parts.map(encodeURIComponent).join('/'), { ...Object.fromEntries(params.entries()), stalled_days: n });
  } },
  h('label', { for: 'stalled-days' }, 'Stalled after (days without activity)', input),
  h('button', { type: 'submit' }, 'Apply'));
}

// enrolled → each lesson in course order → completed the course.
function funnelSteps(funnel, course) {
  const steps = [{ step: 'enrolled', label: 'Enrolled', count: funnel.enrolled }];
  funnel.lessons.forEach((l, i) => steps.push({
    step: 'lesson', lesson: l, label: `${i + 1}. ${lessonLabel(l)}`, count: l.completed, stalled: l.stalled_here,
  }));
  if (course) steps.push({ step: 'completed', label: 'Completed the course', count: course.completed });
  return steps;
}

function funnelPanel(funnel, course, days) {
  const panel = h('div', { class: 'panel', id: 'funnel' });
  const head = (summary) => h('div', { class: 'toolbar' },
    h('h2', null, 'Lesson funnel', summary ? [': ', h('span', { class: 'muted' }, summary)] : null),
    stalledControl(days));
  if (!funnel) {
    panel.append(head(), h('p', { class: 'muted empty-note' }, 'No lesson events for this course yet.'));
    return panel;
  }
  panel.append(head(`${fmtInt(funnel.enrolled)} enrolled, ${fmtInt(funnel.stalled)} stalled (no activity for ${funnel.stalled_days} days)`));
  if (funnel.lessons.length === 0) {
    panel.append(h('p', { class: 'muted empty-note' },
      'No lesson completed in this course yet: the funnel appears with the first lesson.completed event.'));
    return panel;
  }
  const steps = funnelSteps(funnel, course);
  panel.append(funnelChart(steps, funnel.enrolled),
    h('div', { class: 'legend' },
      h('span', { class: 'completed' }, h('i'), 'Students who got this far'),
      h('span', { class: 'stalled' }, h('i'), 'Stalled students whose furthest lesson it is')),
    funnel.stalled_before_first_lesson
      ? h('p', { class: 'muted small', id: 'stalled-before-first' },
        `${fmtInt(funnel.stalled_before_first_lesson)} stalled before their first lesson.`) : null,
    h('details', { class: 'data' }, h('summary', null, 'Show the numbers as a table'),
      h('div', { class: 'table-wrap' }, h('table', { class: 'funnel-table' },
        h('caption', { class: 'muted small' }, 'Enrolled, lessons in course order, completed'),
        h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Step'), h('th', { scope: 'col' }, 'Chapter'),
          h('th', { scope: 'col', class: 'num' }, 'Students'), h('th', { scope: 'col', class: 'num' }, 'Stalled here'))),
        h('tbody', null, steps.map((st) => h('tr', { 'data-step': st.step, 'data-lesson': st.lesson ? st.lesson.lesson_id : null },
          h('th', { scope: 'row' }, st.label, st.lesson && st.lesson.type ? h('span', { class: 'muted small' }, ` · ${st.lesson.type}`) : null),
          h('td', null, st.lesson ? (st.lesson.chapter_name || '—') : ''),
          h('td', { class: 'num', 'data-count': st.count }, fmtInt(st.count)),
          h('td', { class: 'num', 'data-stalled': st.stalled ?? null }, st.stalled === undefined ? '' : fmtInt(st.stalled)))))))));
  return panel;
}

const shareOf = (n, of) => (of > 0 ? ` · ${Math.round((n / of) * 100)} %` : '');

// One row per step: a bar of the students who got this far (scaled to the
// widest step) and, under lessons, a thin bar of the stalled students who
// stopped there. HTML bars, so the chart reflows on a phone and text stays
// readable; widths are set through the CSSOM (allowed by the CSP).
function funnelChart(steps, enrolled) {
  const max = Math.max(1, ...steps.map((st) => st.count));
  const bar = (kind, n) => {
    const b = h('span', { class: `bar ${kind}` });
    b.style.width = `${(n / max) * 100}%`;
    return b;
  };
  return h('ol', { class: 'funnel-chart', 'aria-label': `Lesson funnel of ${steps.length} steps; the table below has the numbers` },
    steps.map((st) => h('li', { class: `step ${st.step}`, 'data-step': st.step, 'data-lesson': st.lesson ? st.lesson.lesson_id : null },
      h('div', { class: 'step-label' }, st.label),
      h('div', { class: 'track' }, bar(st.step === 'completed' ? 'done' : 'reached', st.count),
        h('span', { class: 'value' }, `${fmtInt(st.count)}${shareOf(st.count, enrolled)}`)),
      st.stalled ? h('div', { class: 'track thin' }, bar('stalled', st.stalled),
        h('span', { class: 'value' }, `${fmtInt(st.stalled)} stalled here`)) : null)));
}

// Stalled students of a course, most inactive first, paged like the enrollments.
async function stalledList(source, courseId, days) {
  const filter = { source, course_id: courseId, stalled_days: days, order: 'most_inactive' };
  const tbody = h('tbody');
  const more = h('button', { type: 'button', class: 'secondary' }, 'Load more');
  const count = h('span', { class: 'muted small' });
  let cursor = null, shown = 0;
  const load = async () => {
    more.disabled = true;
    const page = await api(API.enrollments, { ...filter, limit: PAGE, cursor });
    for (const e of page.items) {
      const l = e.learning || {};
      const enrollmentHref = `#/enrollments/${encodeURIComponent(e.source)}/${e.enrollment_id}`;
      const who = h('a', { href: e.user_id ? studentHref(e.source, e.user_id) : enrollmentHref, class: 'student-link' }, studentName(e));
      tbody.append(h('tr', { 'data-enrollment': e.enrollment_id },
        h('td', null, who, h('div', { class: 'muted small' }, e.email || '')),
        h('td', { class: 'num', 'data-days': l.days_inactive }, fmtDays(l.days_inactive)),
        h('td', null, fmtTime(l.last_activity_at)),
        h('td', { class: 'lesson-cell' }, l.last_lesson_name || (l.last_lesson_id ? `Lesson ${l.last_lesson_id}` : h('span', { class: 'muted' }, 'none yet'))),
        h('td', { class: 'num' }, fmtInt(l.lessons_completed || 0)),
        h('td', null, progressCell(e.progress))));
    }
    shown += page.items.length;
    cursor = page.next_cursor;
    count.textContent = `${fmtInt(shown)} shown${cursor ? ', more to load' : ''}`;
    more.hidden = !cursor;
    more.disabled = false;
  };
  more.addEventListener('click', () => load().catch((e) => { more.disabled = false; count.textContent = `Could not load more: ${e.message}`; }));
  await load();
  const title = h('h2', null, `Stalled students (no activity for ${days} day${days === 1 ? '' : 's'})`);
  if (shown === 0) {
    return h('div', { class: 'panel', id: 'stalled' }, h('div', { class: 'sub-head' }, title),
      h('p', { class: 'muted empty-note' }, `Nobody is stalled in this course: every student who has not completed it was active in the last ${days} day${days === 1 ? '' : 's'}.`));
  }
  return h('div', { class: 'panel', id: 'stalled' },
    h('div', { class: 'sub-head' }, title, count, csvButton(API.enrollments, filter, `stalled-${courseId}`)),
    h('div', { class: 'table-wrap' }, h('table', null,
      h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Student'),
        h('th', { scope: 'col', class: 'num', 'aria-sort': 'descending' }, 'Days stalled'), h('th', { scope: 'col' }, 'Last activity'),
        h('th', { scope: 'col' }, 'Last lesson'), h('th', { scope: 'col', class: 'num' }, 'Lessons'),
        h('th', { scope: 'col' }, 'Progress'))),
      tbody)),
    h('div', { class: 'more' }, more));
}

function lessonList(lessons) {
  if (!lessons.length) return h('p', { class: 'muted small' }, 'No lesson completed yet.');
  return h('ol', { class: 'lessons' }, lessons.map((l) => h('li', { 'data-lesson': l.lesson_id }, lessonLabel(l),
    h('span', { class: 'muted small' }, l.chapter_name ? ` · ${l.chapter_name}` : '', ' · ', fmtTime(l.completed_at)))));
}

const fmtGrade = (g) => (g === null || g === undefined ? '—' : `${Number(g).toFixed(1)} %`);

// What an event in a student's timeline was about: the lesson, quiz or course it names.
function eventSubject(ev) {
  const p = (ev.body && ev.body.payload) || {};
  const name = (x) => (x && typeof x === 'object' && typeof x.name === 'string' ? x.name : '');
  return name(p.lesson) || name(p.quiz) || name(p.course) || (typeof p.course_name === 'string' ? p.course_name : '');
}

async function studentView(root, source, userId) {
  let st;
  try {
    st = await api(fill(API.student, { source, user_id: userId }));
  } catch (e) {
    if (e instanceof ApiError && (e.status === 404 || e.status === 400)) {
      root.append(emptyState(`No student ${userId} from ${source}: ${e.message}. `, h('a', { href: '#/enrollments' }, 'Back to the enrollments')));
      return;
    }
    throw e;
  }
  const name = [st.first_name, st.last_name].filter(Boolean).join(' ') || st.email || `User ${st.user_id}`;
  root.append(h('div', { class: 'head' },
    h('div', null, h('h1', { id: 'student-name', 'data-user': st.user_id }, name),
      h('div', { class: 'muted' }, [st.email, `user ${st.user_id}`, st.source].filter(Boolean).join(' · '))),
    h('a', { href: '#/enrollments' }, '← Enrollments')));
  const courses = st.enrollments.map(({ enrollment: e, lessons }) => {
    const l = e.learning || {};
    const href = `#/enrollments/${encodeURIComponent(e.source)}/${e.enrollment_id}`;
    const courseHref = e.course_id ? `#/courses/${encodeURIComponent(e.source)}/${e.course_id}` : null;
    return h('div', { class: 'panel student-course', 'data-enrollment': e.enrollment_id },
      h('div', { class: 'sub-head' },
        h('h2', null, courseHref ? h('a', { href: courseHref }, e.course_name || `Course ${e.course_id}`) : (e.course_name || 'No course')),
        h('span', null, h('a', { href }, `enrollment ${e.enrollment_id}`), ' ', badge(e.status))),
      h('div', { class: 'progress-cell' }, progressBar(e.progress), h('span', { class: 'pct' }, `${e.progress.toFixed(1)} %`)),
      h('p', { class: 'muted small' },
        `${fmtInt(l.lessons_completed || 0)} lesson${l.lessons_completed === 1 ? '' : 's'} completed · last activity `,
        fmtTime(l.last_activity_at),
        l.days_inactive === null || l.days_inactive === undefined ? '' : ` (${fmtDays(l.days_inactive)} ago)`),
      lessonList(lessons));
  });
  const loose = st.courses_without_enrollment.map((c) => h('div', { class: 'panel student-course', 'data-course': c.course_id },
    h('div', { class: 'sub-head' },
      h('h2', null, h('a', { href: `#/courses/${encodeURIComponent(st.source)}/${c.course_id}` }, `Course ${c.course_id}`)),
      badge('no enrollment event yet', 'muted')),
    lessonList(c.lessons)));
  root.append(...courses, ...loose);
  if (!courses.length && !loose.length) root.append(emptyState('No enrollment or lesson for this student yet.'));
  root.append(h('div', { class: 'panel', id: 'student-quizzes' }, h('h2', null, 'Quiz results'),
    st.quizzes.length ? h('div', { class: 'table-wrap' }, h('table', null,
      h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Quiz'), h('th', { scope: 'col', class: 'num' }, 'Attempts'),
        h('th', { scope: 'col', class: 'num' }, 'Best grade'), h('th', { scope: 'col', class: 'num' }, 'Latest grade'),
        h('th', { scope: 'col', class: 'num' }, 'Correct / incorrect'), h('th', { scope: 'col' }, 'Latest attempt'))),
      h('tbody', null, st.quizzes.map((q) => h('tr', { 'data-quiz': q.quiz_id },
        h('td', null, q.quiz_name || `Quiz ${q.quiz_id}`), h('td', { class: 'num', 'data-attempts': q.attempts }, fmtInt(q.attempts)),
        h('td', { class: 'num', 'data-best': q.best_grade }, fmtGrade(q.best_grade)),
        h('td', { class: 'num' }, fmtGrade(q.latest_grade)),
        h('td', { class: 'num' }, `${q.correct_count ?? '—'} / ${q.incorrect_count ?? '—'}`), h('td', null, fmtTime(q.latest_at)))))))
      : h('p', { class: 'muted' }, 'No quiz attempted.')));
  // In the order things happened at Thinkific (deliveries may arrive out of
  // order; the API lists them as they arrived).
  const when = (ev) => ev.created_at || ev.received_at;
  const ordered = [...st.timeline].sort((a, b) => (when(a) < when(b) ? -1 : when(a) > when(b) ? 1 : a.seq - b.seq));
  const timeline = h('ol', { class: 'timeline', id: 'student-timeline' }, ordered.map((ev) => {
    const action = ev.topic.split('.')[1] || ev.topic;
    const subject = eventSubject(ev);
    return h('li', { class: `ev-${action}`, 'data-event': ev.event_id, 'data-topic': ev.topic },
      h('div', null, h('strong', null, ev.topic), subject ? h('span', { class: 'muted' }, ` — ${subject}`) : null),
      h('div', { class: 'when' }, fmtTime(when(ev)),
        ev.created_at ? [' · received ', fmtTime(ev.received_at)] : ' (received)',
        ` · event ${ev.event_id}`, ev.pruned_at ? ' · body pruned' : ''));
  }));
  root.append(h('div', { class: 'panel' }, h('h2', null, `Timeline (${st.timeline.length} event${st.timeline.length === 1 ? '' : 's'})`),
    st.timeline.length ? timeline : h('p', { class: 'muted' }, 'No events stored about this student.')));
}

function quizTable(items) {
  const sources = new Set(items.map((q) => q.source));
  return h('div', { class: 'table-wrap' }, h('table', { class: 'quizzes' },
    h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Quiz'), sources.size > 1 ? h('th', { scope: 'col' }, 'School') : null,
      h('th', { scope: 'col' }, 'Course'), h('th', { scope: 'col', class: 'num' }, 'Students'), h('th', { scope: 'col', class: 'num' }, 'Attempts'),
      h('th', { scope: 'col', class: 'num' }, 'Average best grade'), h('th', { scope: 'col', class: 'num' }, 'Median best grade'))),
    h('tbody', null, items.map((q) => h('tr', { 'data-quiz': q.quiz_id, 'data-source': q.source },
      h('td', null, q.quiz_name || `Quiz ${q.quiz_id}`, h('span', { class: 'muted small' }, ` #${q.quiz_id}`)),
      sources.size > 1 ? h('td', null, q.source) : null,
      h('td', null, q.course_id ? h('a', { href: `#/courses/${encodeURIComponent(q.source)}/${q.course_id}` }, `#${q.course_id}`) : h('span', { class: 'muted' }, 'not named')),
      h('td', { class: 'num', 'data-students': q.students }, fmtInt(q.students)),
      h('td', { class: 'num', 'data-attempts': q.attempts }, fmtInt(q.attempts)),
      h('td', { class: 'num', 'data-average': q.average_best_grade }, fmtGrade(q.average_best_grade)),
      h('td', { class: 'num', 'data-median': q.median_best_grade }, fmtGrade(q.median_best_grade)))))));
}

// The quizzes whose attempts named this course. Thinkific's quiz.attempted
// names no course, so this is often empty: say so and point at all quizzes.
async function quizPanel(filter) {
  const { items } = await api(API.quizzes, filter);
  const head = h('div', { class: 'sub-head' }, h('h2', null, 'Quizzes'),
    items.length ? csvButton(API.quizzes, filter, `quizzes-${filter.course_id}`) : null);
  return h('div', { class: 'panel', id: 'course-quizzes' }, head, items.length ? quizTable(items)
    : h('p', { class: 'muted empty-note' }, 'No quiz attempt named this course (Thinkific\u2019s quiz.attempted usually names none). ',
      h('a', { href: '#/quizzes' }, 'All quizzes')));
}

async function quizzesView(root) {
  const { items } = await api(API.quizzes);
  root.append(h('div', { class: 'head' }, h('h1', null, 'Quizzes'),
    h('span', { class: 'muted small' }, 'Per quiz: students who attempted it, attempts, and their best grades (Thinkific sends no pass mark).'),
    items.length ? csvButton(API.quizzes, {}, 'quizzes') : null));
  if (!items.length) { root.append(emptyState('No quiz attempted yet: quizzes appear here with the first quiz.attempted event.')); return; }
  root.append(h('div', { class: 'panel', id: 'quizzes' }, quizTable(items)));
}

// ---------------------------------------------------------------- quarantine

async function quarantineView(root) {
  root.append(h('div', { class: 'head' }, h('h1', null, 'Quarantine'),
    h('span', { class: 'muted small' }, 'Rejected deliveries, newest first. Retry re-checks one with the current configuration (say, after fixing a secret).'),
    csvButton(API.quarantine, {}, 'quarantine')));
  const tbody = h('tbody');
  const more = h('button', { type: 'button', class: 'secondary' }, 'Load more');
  let cursor = null, shown = 0;
  const row = (q) => {
    const state = h('td');
    const result = h('span', { class: 'result' });
    const showState = (resolvedAt, resolution) => state.replaceChildren(resolvedAt
      ? h('span', null, badge('resolved', 'ok'), h('div', { class: 'muted small' }, resolution || ''))
      : badge('pending', 'bad'));
    showState(q.resolved_at, q.resolution);
    const retry = h('button', { type: 'button', class: 'secondary' }, 'Retry');
    retry.hidden = Boolean(q.resolved_at);
    retry.addEventListener('click', async () => {
      retry.disabled = true;
      result.className = 'result';
      result.textContent = 'retrying…';
      try {
        const r = await api(fill(API.retry, { id: q.id }), {}, 'POST');
        result.className = 'result ok';
        result.textContent = r.status === 'stored' ? `stored as event ${r.event_id}` : `already stored (event ${r.event_id})`;
        retry.hidden = true;
        showState(new Date().toISOString(), `admitted as event ${r.event_id}`);
      } catch (e) {
        if (e instanceof AuthNeeded) return askForToken(e.message);
        result.className = 'result bad';
        result.textContent = e.message;
        retry.disabled = false;
      }
    });
    return h('tr', null,
      h('td', { class: 'num' }, `#${q.id}`),
      h('td', null, fmtTime(q.received_at)),
      h('td', null, q.source),
      h('td', { class: 'reason' }, badge(q.reason_code, 'bad'), h('div', { class: 'small' }, q.reason)),
      h('td', { class: 'num' }, `${fmtInt(q.body_size)} B`),
      state,
      h('td', null, retry, result));
  };
  const load = async () => {
    more.disabled = true;
    const page = await api(API.quarantine, { limit: PAGE, cursor });
    tbody.append(...page.items.map(row));
    shown += page.items.length;
    cursor = page.next_cursor;
    more.hidden = !cursor;
    more.disabled = false;
  };
  more.addEventListener('click', () => load().catch((e) => { more.disabled = false; more.textContent = `Retry loading (${e.message})`; }));
  await load();
  if (shown === 0) {
    root.append(emptyState('Nothing in quarantine: no delivery has been rejected.'));
    return;
  }
  root.append(h('div', { class: 'panel' }, h('div', { class: 'table-wrap' }, h('table', null,
    h('thead', null, h('tr', null, ['Id', 'Received', 'School', 'Reason', 'Size', 'State', ''].map((t, i) =>
      h('th', { class: i === 0 || i === 4 ? 'num' : null }, t)))),
    tbody)), h('div', { class: 'more' }, more)));
}

// ---------------------------------------------------------------- forwarding

async function newestAttempts(id, n) {
  const page = await api(fill(API.attempts, { id }), { limit: n, order: 'desc' });
  return page.items;
}

async function deliveryCount(id, state) {
  const page = await api(fill(API.deliveries, { id }), { state, limit: 1000 });
  return { n: page.items.length, text: fmtInt(page.items.length) + (page.next_cursor ? '+' : '') };
}

const splitList = (v) => v.split(',').map((x) => x.trim()).filter(Boolean);

// The fields of a new subscription. Each turns its input into the API's field
// (undefined: left out); add one here and the form and request follow.
const SUBSCRIPTION_FIELDS = [
  { name: 'url', label: 'Destination URL', type: 'url', required: true, wide: true,
    placeholder: 'https://crm.example.com/hooks/thinkific',
    hint: 'Receives each event as a signed POST (Standard Webhooks).', value: (v) => v.trim() },
  { name: 'topics', label: 'Topics', value: (v) => splitList(v), initial: 'enrollment.*',
    hint: 'Comma-separated: *, enrollment.*, enrollment.completed…' },
  { name: 'course_ids', label: 'Courses (optional)', placeholder: 'e.g. 1234, 5678',
    hint: 'Comma-separated course ids; empty: every course.',
    value: (v) => {
      const ids = splitList(v);
      if (!ids.length) return undefined;
      if (!ids.every((x) => /^\d+$/.test(x))) throw new Error('Courses must be course ids (numbers), separated by commas.');
      return ids.map(Number);
    } },
  { name: 'filter', label: 'Filter (optional, JSON)', wide: true, placeholder: '{"payload.free_trial": false}',
    hint: 'Only events it accepts are sent: dotted paths, values or operators ($in, $gt…); see the README, "Filters".',
    value: (v) => {
      if (!v.trim()) return undefined;
      try { return JSON.parse(v); } catch (_) { throw new Error('The filter must be JSON, like {"payload.free_trial": false}.'); }
    } },
  { name: 'preset', label: 'Shape (optional)', in: 'template',
    options: [['', 'Thinkific\'s body, as sent'], ['slack', 'Slack message'], ['discord', 'Discord message'],
      ['teams', 'Microsoft Teams card'], ['json', 'Flat JSON of the enrollment']],
    hint: 'A preset renders each event for a chat or a CRM; see the README, "Templates and presets".',
    value: (v) => v || undefined },
  { name: 'message', label: 'Message (optional, with a preset)', in: 'template', wide: true,
    placeholder: '{{ student.name }} finished {{ course.name }}',
    hint: 'The sentence a preset shows, a template; empty: one per topic.', value: (v) => v.trim() || undefined },
  { name: 'description', label: 'Description (optional)', placeholder: 'Who receives this', value: (v) => v.trim() || undefined },
];

// The request body of a new subscription from the form's fields; fields with
// `in` go into that object (`template: {preset, message}`).
function subscriptionBody(inputs) {
  const body = {};
  for (const { f, input } of inputs) {
    const v = f.value(input.value);
    if (v === undefined) continue;
    if (f.in) (body[f.in] ||= {})[f.name] = v;
    else body[f.name] = v;
  }
  if (body.template && body.template.message && !body.template.preset) {
    throw new Error('A message is shown by a preset: choose a shape too, or leave the message empty.');
  }
  return body;
}

function notice(kind, ...content) { return h('div', { class: `notice ${kind}`, role: kind === 'bad' ? 'alert' : 'status' }, ...content); }

// A button that asks before it acts: the question and Yes/Cancel in its place.
function confirmButton(label, question, yes, action, danger) {
  const slot = h('span');
  const button = h('button', { type: 'button', class: 'secondary', onclick: () => {
    const go = h('button', { type: 'button', class: danger ? 'danger' : '', onclick: async () => { slot.replaceChildren(button); await action(); } }, yes);
    const cancel = h('button', { type: 'button', class: 'secondary', onclick: () => { slot.replaceChildren(button); button.focus(); } }, 'Cancel');
    slot.replaceChildren(h('span', { class: 'confirm', role: 'group', 'aria-label': question }, question, ' ', go, cancel));
    go.focus();
  } }, label);
  slot.append(button);
  return slot;
}

function secretShownOnce(title, secret) {
  return notice('ok', h('strong', null, title), h('br'),
    'The signing secret — copy it now, it is not shown again:', h('code', { class: 'secret' }, secret));
}

function subscriptionForm(onCreated) {
  const result = h('div');
  const inputs = SUBSCRIPTION_FIELDS.map((f) => ({ f, input: f.options
    ? h('select', { name: f.name, id: `sub-${f.name}` }, f.options.map(([v, label]) => h('option', { value: v }, label)))
    : h('input', {
      name: f.name, id: `sub-${f.name}`, type: f.type || 'text', required: f.required, placeholder: f.placeholder,
      value: f.initial, spellcheck: 'false', autocomplete: 'off' }) }));
  const form = h('form', { class: 'sub-form', onsubmit: async (ev) => {
    ev.preventDefault();
    let body;
    try { body = subscriptionBody(inputs); } catch (e) { result.replaceChildren(notice('bad', e.message)); return; }
    try {
      const created = await api(API.subscriptions, {}, 'POST', body);
      form.reset();
      result.replaceChildren(secretShownOnce(`Subscription ${created.id} created for ${created.url}.`, created.secret));
      await onCreated();
    } catch (e) {
      if (e instanceof AuthNeeded) return askForToken(e.message);
      result.replaceChildren(notice('bad', 'Not created: ', e.message));
    }
  } },
  inputs.map(({ f, input }) => h('label', { for: input.id, class: f.wide ? 'wide' : null }, f.label, input,
    f.hint ? h('span', { class: 'hint muted' }, f.hint) : null)),
  h('div', null, h('button', { type: 'submit' }, 'Create subscription')));
  return h('div', { class: 'panel' }, h('h2', null, 'New subscription'), form, result);
}

async function subscriptionPanel(sub, refresh) {
  const [attempts, pending, dead] = await Promise.all([
    newestAttempts(sub.id, 10), deliveryCount(sub.id, 'pending'), deliveryCount(sub.id, 'dead')]);
  const facts = [
    `topics ${sub.topics.join(', ')}`,
    sub.course_ids ? `courses ${sub.course_ids.join(', ')}` : null,
    sub.sources ? `schools ${sub.sources.join(', ')}` : null,
    sub.ordered ? 'ordered' : null,
    sub.filter ? `filter ${JSON.stringify(sub.filter)}` : null,
    sub.template ? (sub.template.preset ? `preset ${sub.template.preset}` : 'template') : null,
  ].filter(Boolean).join(' · ');
  const result = h('div', { 'aria-live': 'polite' });
  const act = async (work) => {
    try { result.replaceChildren(await work()); } catch (e) {
      if (e instanceof AuthNeeded) return askForToken(e.message);
      result.replaceChildren(notice('bad', e.message));
    }
  };
  const id = { id: sub.id };
  const test = h('button', { type: 'button', class: 'secondary', onclick: () => act(async () => {
    test.disabled = true;
    try {
      const r = await api(fill(API.test, id), { send: true }, 'POST');
      const answer = r.status === null || r.status === undefined ? 'accepted it' : `answered ${r.status}`;
      return r.ok
        ? notice('ok', `Test delivered: the destination ${answer} in ${Math.round(r.latency_ms)} ms.`)
        : notice('bad', `Test failed: ${r.error || 'no answer'}`, r.response ? h('pre', null, r.response) : null);
    } finally { test.disabled = false; }
  }) }, 'Send test');
  // What a real delivery of a completed course would send, rendered, not sent.
  const preview = h('button', { type: 'button', class: 'secondary', onclick: () => act(async () => {
    const r = await api(fill(API.test, id), { sample: 'completed' }, 'POST');
    if (!r.request) return notice('bad', `The template cannot render a course completion: ${r.error || 'no request'}`);
    const q = r.request;
    return h('div', { class: 'notice ok', role: 'status' },
      h('strong', null, 'Preview (not sent): a course completion would be sent as'),
      h('pre', { class: 'request' }, `${q.method} ${q.url}\n${q.headers.map(([k, v]) => `${k}: ${v}`).join('\n')}\n\n${q.body}`));
  }) }, 'Preview');
  const pause = sub.enabled
    ? confirmButton('Pause', 'Pause deliveries to this URL? Events keep being stored and queued.', 'Pause', () => act(async () => {
      await api(fill(API.subscription, id), {}, 'PATCH', { enabled: false });
      await refresh();
      return notice('ok', 'Paused.');
    }))
    : h('button', { type: 'button', class: 'secondary', onclick: () => act(async () => {
      await api(fill(API.subscription, id), {}, 'PATCH', { enabled: true });
      await refresh();
      return notice('ok', 'Resumed.');
    }) }, 'Resume');
  const rotate = confirmButton('Rotate secret', 'Make a new signing secret? The old one keeps signing too for 24 hours.', 'Rotate', () => act(async () => {
    const r = await api(fill(API.rotate, id), {}, 'POST');
    return secretShownOnce('New secret made; the old one also signs for 24 hours.', r.secret);
  }));
  const replay = dead.n === 0 ? null : confirmButton(`Replay dead (${dead.text})`, `Send the ${dead.text} dead deliveries again?`, 'Replay', () => act(async () => {
    const r = await api(fill(API.replay, id), {}, 'POST', { dead: true });
    return notice('ok', `${fmtInt(r.replayed)} dead deliver${r.replayed === 1 ? 'y' : 'ies'} queued again.`);
  }));
  const remove = confirmButton('Delete', 'Delete this subscription and its pending deliveries?', 'Delete', () => act(async () => {
    await api(fill(API.subscription, id), {}, 'DELETE');
    await refresh();
    return notice('ok', 'Deleted.');
  }), true);
  const rows = attempts.map((a) => h('tr', null,
    h('td', null, fmtTime(a.attempted_at)),
    h('td', { class: 'num' }, a.event_seq),
    h('td', { class: 'num' }, a.attempt),
    // No HTTP status: a broker's attempt (accepted when it has no error) or no answer.
    h('td', null, a.status === null ? (a.error ? badge('no answer', 'bad') : badge('accepted', 'ok')) : badge(String(a.status), a.status >= 200 && a.status < 300 ? 'ok' : 'bad')),
    h('td', { class: 'num' }, `${Math.round(a.latency_ms)} ms`),
    h('td', { class: 'small' }, a.error || '', a.response ? h('details', null, h('summary', null, 'answer'), h('pre', null, a.response)) : null)));
  return h('div', { class: 'panel subscription', 'data-id': sub.id },
    h('div', { class: 'sub-head' },
      h('div', null, h('div', { class: 'url' }, sub.url), h('div', { class: 'muted small' }, sub.description ? `${sub.description} · ` : '', facts, ` · ${sub.id}`)),
      sub.enabled ? badge('enabled', 'ok') : badge(sub.disabled_reason ? 'disabled' : 'paused', 'bad')),
    sub.disabled_reason ? h('p', { class: 'small' }, 'Disabled: ', sub.disabled_reason) : null,
    sub.failing_since ? h('p', { class: 'small' }, 'Failing since ', fmtTime(sub.failing_since)) : null,
    h('div', { class: 'cards' }, card('Pending deliveries', pending.text), card('Dead deliveries', dead.text, dead.n ? 'bad' : '')),
    h('div', { class: 'actions' }, preview, test, pause, replay, rotate, remove),
    result,
    h('div', { class: 'sub-head' }, h('h2', null, 'Recent attempts'), rows.length ? csvButton(fill(API.attempts, id), { order: 'desc' }, `attempts-${sub.id}`) : null),
    rows.length ? h('div', { class: 'table-wrap' }, h('table', null,
      h('thead', null, h('tr', null, h('th', null, 'When'), h('th', { class: 'num' }, 'Event seq'), h('th', { class: 'num' }, 'Attempt'),
        h('th', null, 'Answer'), h('th', { class: 'num' }, 'Latency'), h('th', null, 'Error and answer'))),
      h('tbody', null, rows))) : h('p', { class: 'muted' }, 'No delivery attempts yet.'),
    rows.length ? h('p', { class: 'muted small' }, 'The latest 10; the CSV has them all.') : null);
}

async function forwardingView(root) {
  root.append(h('div', { class: 'head' }, h('h1', null, 'Forwarding'),
    h('span', { class: 'muted small' }, 'Subscriptions pass stored events on, signed (Standard Webhooks) and retried.')));
  const subs = await api(API.subscriptions).catch((e) => {
    if (e instanceof ApiError && e.status === 403) return null;
    throw e;
  });
  if (subs === null) {
    root.append(emptyState('Subscriptions are managed with the admin token (--api-token); this token reads one school only.'));
    return;
  }
  const list = h('div');
  const refresh = async () => {
    const now = (await api(API.subscriptions)).items;
    const panels = await Promise.all(now.map((sub) => subscriptionPanel(sub, refresh)));
    list.replaceChildren(...(panels.length ? panels : [emptyState('No subscriptions yet: create one above, or with ',
      h('code', null, "enrollhook subscriptions add --url https://crm.example.com/hooks --topic 'enrollment.*'"), '.')]));
  };
  const alerts = h('div');
  root.append(alerts, subscriptionForm(refresh), list);
  await Promise.all([refresh(), alertsPanel().then((p) => alerts.replaceChildren(p))]);
}

// Open incidents and the recent alerts (`enrollhook.*` events): what broke,
// since when, and whether it has recovered.
async function alertsPanel() {
  const { open, recent } = await api(API.alerts, { limit: 20 });
  const head = h('h2', null, 'Alerts', open.length ? h('span', { class: 'muted small' }, ` · ${fmtInt(open.length)} open`) : null);
  if (!recent.length) {
    return h('div', { class: 'panel alerts' }, head,
      h('p', { class: 'muted' }, 'No alerts yet. Subscribe a destination (a Slack preset, say) to ',
        h('code', null, 'enrollhook.*'), ' to be told when forwarding or signatures fail; see the README, "Alerts".'));
  }
  const rows = recent.map((a) => h('tr', null,
    h('td', null, a.closed_at ? badge(a.recovered_id ? 'recovered' : 'ended', 'ok') : badge('open', 'bad')),
    h('td', null, h('code', null, a.kind)),
    h('td', null, a.summary, a.detail && a.detail.what_to_do ? h('div', { class: 'muted small' }, a.detail.what_to_do) : null),
    h('td', null, a.source),
    h('td', null, fmtTime(a.started_at)),
    h('td', null, a.closed_at ? fmtTime(a.closed_at) : '')));
  return h('div', { class: 'panel alerts' }, head,
    h('div', { class: 'table-wrap' }, h('table', null,
      h('thead', null, h('tr', null, h('th', null, 'State'), h('th', null, 'Alert'), h('th', null, 'What happened'),
        h('th', null, 'School'), h('th', null, 'Since'), h('th', null, 'Ended'))),
      h('tbody', null, rows))),
    h('p', { class: 'muted small' }, 'The latest 20; ', h('code', null, 'enrollhook alerts'), ' lists more.'));
}

// ---------------------------------------------------------------- start

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = document.getElementById('token-input');
    const token = input.value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    input.value = '';
    live.lastId = null;
    live.started = false;
    render();
  });
  document.getElementById('forget-token').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    if (live.controller) live.controller.abort();
    setLive('off', 'Not live');
    live.lastId = null;
    live.started = false;
    render();
  });
  window.addEventListener('hashchange', render);
  render();
});
