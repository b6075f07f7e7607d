// The risk officer's console (docs/web.md): every watched agent's operative limit with its
// breakdown, its orders and trades, live from the officers' private stream ("*"); the
// officer's actions (guarantees, requests, suspension, contracts, rate limits); and the
// audit of who did what and when: the platform's audit trail (query_audit, every officer's
// and operator's action with its outcome, rebuilt from the journal) and the live risk_notice
// events.

import { Connection } from './conn.js';
import {
  $, KeyedRows, ServerClock, describeProblem, el, fmtCountdown, fmtDateTime, fmtMoney,
  fmtQty, fmtTime, frameBatcher, MONEY, qtyTicks, readDecimal, readInteger, readRatio, setClass,
  setText, storageGet, storageSet,
} from './util.js';

const OFFICER = 'risk_officer';
const DEFAULT_AGENTS = ['AG1', 'AG2', 'AG3', 'AG4']; // the demo reference data's agents
const clock = new ServerClock();

const C = {
  user: null,
  roles: [],
  agents: new Map(), // code -> agent record
  watch: [],
  selected: null,
  contracts: new Map(),
  checked: new Set(),
  audit: [],
  auditKeys: new Set(),
  statesSeq: 0,
  online: false,
};

let conn = null;

const dirty = new Set();
const frame = frameBatcher(render);
function invalidate(...parts) {
  for (const p of parts) dirty.add(p);
  frame();
}

function render() {
  const d = new Set(dirty);
  dirty.clear();
  if (d.has('agents')) renderAgents();
  if (d.has('agents') || d.has('detail')) renderDetail();
  if (d.has('contracts')) renderContracts();
  if (d.has('audit')) renderAudit();
}

function toast(kind, text, ms = 6000) {
  const box = $('#toasts');
  const t = el('div', { class: `toast ${kind}` }, text);
  t.addEventListener('click', () => t.remove());
  box.append(t);
  while (box.childElementCount > 5) box.firstElementChild.remove();
  setTimeout(() => t.remove(), ms);
}

const nowIso = () => new Date(clock.now()).toISOString();

// ------------------------------------------------------------------ audit

function addAudit(entry) {
  if (C.auditKeys.has(entry.key)) return;
  C.auditKeys.add(entry.key);
  C.audit.push(entry);
  if (C.audit.length > 2000) C.audit.splice(0, C.audit.length - 2000);
  invalidate('audit');
}

const FIELD_DETAIL = ['reason', 'request_id', 'accept', 'user', 'unit', 'period', 'energy',
  'rules', 'warning_ratio', 'hibernate_on_breach', 'session', 'through_round'];

/** An entry of the platform's audit trail as a row. */
function platformEntry(e) {
  const f = e.fields || {};
  const contracts = f.contracts || (f.contract ? [f.contract] : []);
  const target = e.agents.length ? e.agents.join(', ') : contracts.join(', ') || f.user || 'all';
  const detail = FIELD_DETAIL.filter((k) => f[k] !== undefined && f[k] !== null && f[k] !== '')
    .map((k) => `${k} ${Array.isArray(f[k]) ? JSON.stringify(f[k]) : f[k]}`);
  if (e.orders_affected) detail.push(`${e.orders_affected} order(s)`);
  return {
    key: `s|${e.seq}`, ts: e.ts, by: e.by, action: e.action, target, amount: f.amount ?? null,
    detail: detail.join(' · '), ok: e.outcome === 'OK',
    result: e.outcome === 'OK' ? 'accepted' : `${e.code}: ${e.reason}`, source: 'platform',
  };
}

let auditLoading = null;
/** The newest entries of the platform's audit trail (merged: each entry once). */
function loadAudit(limit = 500) {
  if (auditLoading) return auditLoading;
  auditLoading = (async () => {
    try {
      const a = await conn.request({ type: 'query_audit', limit });
      if (a.type === 'audit') for (const e of a.entries) addAudit(platformEntry(e));
      else toast('bad', `audit: ${describeProblem(a)}`);
    } finally {
      auditLoading = null;
    }
  })();
  return auditLoading;
}

/** One officer action; the platform records it in its audit trail, shown once answered. */
async function act(msg, target) {
  const a = await conn.request(msg);
  if (a.type === 'ack') toast('good', `${msg.type} ${target}: accepted`, 3000);
  else toast('bad', `${msg.type} ${target}: ${describeProblem(a)}`);
  await loadAudit(50);
  return a;
}

function onNotice(n) {
  const detail = [n.detail, n.request_id ? `request #${n.request_id}` : ''].filter(Boolean).join(' · ');
  addAudit({
    key: `n|${n.ts}|${n.kind}|${n.agent}|${n.request_id}|${n.by}`, ts: n.ts, by: n.by, action: n.kind,
    target: n.agent || 'all', amount: n.amount, detail, result: '', ok: true, source: 'risk_notice',
  });
}

let auditRows = null;

function renderAudit() {
  const f = $('#audit-filter').value.trim().toLowerCase();
  const list = C.audit
    .filter((e) => !f || [e.by, e.action, e.target, e.detail, e.result, e.source].join(' ').toLowerCase().includes(f))
    .sort((a, b) => (b.ts > a.ts ? 1 : b.ts < a.ts ? -1 : 0))
    .slice(0, 500);
  auditRows.sync(list);
}

// ------------------------------------------------------------------ agents

function agent(code) {
  let A = C.agents.get(code);
  if (!A) {
    A = { code, account: null, error: null, orders: new Map(), trades: [], tradeKeys: new Set(),
      users: new Set(), seq: -1, throttle: new Map() };
    C.agents.set(code, A);
  }
  return A;
}

function watch(code, load = true) {
  code = code.trim().toUpperCase();
  if (!code || C.watch.includes(code)) return;
  C.watch.push(code);
  storageSet('ronda.console.agents', C.watch);
  agent(code);
  if (load) loadAgent(code);
  invalidate('agents');
}

async function loadAgent(code) {
  const A = agent(code);
  const [acct, orders, trades] = await Promise.all([
    conn.request({ type: 'query_account', agent: code }),
    conn.request({ type: 'query_orders', agent: code }),
    conn.request({ type: 'query_trades', agent: code }),
  ]);
  if (acct.type === 'account') {
    A.account = acct;
    A.error = null;
  } else {
    A.error = describeProblem(acct);
  }
  if (orders.type === 'orders') {
    A.orders = new Map(orders.orders.map((o) => [o.order_id, o]));
    for (const o of orders.orders) A.users.add(o.user);
  }
  if (trades.type === 'trades') {
    A.trades = [];
    A.tradeKeys.clear();
    for (const t of trades.trades) addTrade(A, t);
  }
  invalidate('agents', 'detail');
}

function addTrade(A, t) {
  const k = `${t.trade_id}|${t.side}`;
  if (A.tradeKeys.has(k)) return;
  A.tradeKeys.add(k);
  A.trades.unshift(t);
  if (t.user) A.users.add(t.user);
}

function onPrivate(msg) {
  const code = msg.stream && msg.stream.startsWith('private:') ? msg.stream.slice(8) : msg.agent;
  if (!code) {
    if (msg.type === 'risk_notice') onNotice(msg);
    return;
  }
  if (!C.watch.includes(code)) watch(code, true);
  const A = agent(code);
  if (typeof msg.seq === 'number') {
    if (A.seq >= 0 && msg.seq > A.seq + 1) {
      A.seq = msg.seq;
      loadAgent(code); // lost messages: reload this agent
    } else if (A.seq >= 0 && msg.seq <= A.seq) {
      return;
    }
    A.seq = msg.seq;
  }
  switch (msg.type) {
    case 'account':
      A.account = msg;
      A.error = null;
      break;
    case 'order_report':
      if (msg.user) A.users.add(msg.user);
      if (msg.status === 'INACTIVE') A.orders.delete(msg.order_id);
      else A.orders.set(msg.order_id, msg);
      break;
    case 'trade':
      addTrade(A, msg);
      break;
    case 'risk_notice':
      onNotice(msg);
      break;
    case 'throttling':
      A.throttle.set(msg.user, msg);
      if (msg.state !== 'OK') toast('warn', `${msg.user} (${code}): rate limit ${msg.state}`);
      break;
    default:
      break;
  }
  invalidate('agents', 'detail');
}

let agentRows = null;
const MONEY_COLS = ['reserved', 'used', 'free', 'obligations', 'debtor_orders', 'sync_reduction',
  'requested_reductions', 'requested_increases'];

function makeAgentRow(A) {
  const tr = el('tr', { dataset: { agent: A.code } },
    el('td', { class: 'code' }), el('td', { class: 'status' }),
    ...MONEY_COLS.map((k) => el('td', { class: `num ${k}` })),
    el('td', { class: 'num active' }), el('td', { class: 'num hib' }), el('td', { class: 'num ntrades' }),
    el('td', { class: 'num nreq' }));
  tr.addEventListener('click', () => {
    C.selected = A.code;
    invalidate('agents', 'detail');
  });
  return tr;
}

function updateAgentRow(tr, A) {
  const acc = A.account;
  const c = tr.children;
  const susp = acc && acc.suspended;
  setClass(tr, `${A.code === C.selected ? 'selected' : ''}${susp ? ' suspended' : ''}${A.error ? ' unknown' : ''}`);
  setText(c[0], A.code);
  setText(c[1], A.error ? A.error : !acc ? '…' : susp ? 'SUSPENDED' : 'active');
  c[1].className = `status${acc && !susp ? ' status-ok' : ''}`;
  MONEY_COLS.forEach((k, i) => setText(c[2 + i], acc ? fmtMoney(acc[k]) : ''));
  let active = 0;
  let hib = 0;
  for (const o of A.orders.values()) {
    if (o.status === 'HIBERNATED') hib += 1;
    else active += 1;
  }
  setText(c[10], acc || A.orders.size ? active : '');
  setText(c[11], acc || A.orders.size ? hib : '');
  setText(c[12], acc || A.trades.length ? A.trades.length : '');
  setText(c[13], acc ? (acc.pending_requests || []).length || '' : '');
}

function renderAgents() {
  agentRows.sync(C.watch.map((code) => agent(code)));
}

// ------------------------------------------------------------------ detail of one agent

let dOrderRows = null;
let dTradeRows = null;
let reqRows = null;

function renderDetail() {
  const A = C.selected ? C.agents.get(C.selected) : null;
  $('#d-body').hidden = !A;
  $('#d-hint').hidden = Boolean(A);
  setText($('#d-agent'), A ? A.code : '—');
  const st = $('#d-status');
  if (!A) {
    setText(st, '');
    return;
  }
  const acc = A.account;
  setText(st, A.error ? 'unknown' : acc ? (acc.suspended ? 'SUSPENDED' : 'active') : '…');
  setClass(st, `pill small ${acc ? (acc.suspended ? 'bad' : 'ok') : ''}`);
  $('#s-suspend').disabled = Boolean(acc && acc.suspended);
  $('#s-reinstate').disabled = Boolean(acc && !acc.suspended);
  // the amount field belongs to one agent: emptied when another agent is selected, then
  // filled with that agent's reserved guarantees once its account is there (never another
  // agent's amount, which a click on Set would give this one)
  // follows it while the officer has not typed in it
  const g = $('#g-amount');
  if (g.dataset.agent !== A.code) {
    g.value = '';
    g.dataset.agent = A.code;
    g.dataset.shown = '';
  }
  if (acc && document.activeElement !== g && g.value === g.dataset.shown && g.value !== acc.reserved) {
    g.value = acc.reserved;
    g.dataset.shown = acc.reserved;
  }
  const reqs = acc ? acc.pending_requests || [] : [];
  reqRows.sync(reqs);
  $('#requests-empty').hidden = reqs.length > 0;
  const orders = [...A.orders.values()].sort((a, b) => a.order_id - b.order_id);
  dOrderRows.sync(orders);
  setText($('#d-norders'), orders.length ? String(orders.length) : '');
  dTradeRows.sync(A.trades.slice(0, 300));
  setText($('#d-ntrades'), A.trades.length ? String(A.trades.length) : '');
}

function makeReqRow(r) {
  const reason = el('input', { placeholder: 'reason', 'aria-label': 'reason' });
  const tr = el('tr', { dataset: { request: r.id } },
    el('td', {}, `#${r.id}`), el('td'), el('td', { class: 'num' }), el('td', {}, reason),
    el('td', { class: 'actions' },
      el('button', { type: 'button', class: 'small', dataset: { accept: '1' } }, 'Approve'),
      el('button', { type: 'button', class: 'small danger', dataset: { accept: '0' } }, 'Refuse')));
  tr.addEventListener('click', async (e) => {
    const b = e.target.closest('button[data-accept]');
    if (!b) return;
    const accept = b.dataset.accept === '1';
    const msg = { type: 'decide_guarantee_request', request_id: r.id, accept };
    if (reason.value.trim()) msg.reason = reason.value.trim();
    await act(msg, C.selected);
  });
  return tr;
}

function updateReqRow(tr, r) {
  setText(tr.children[1], r.increase ? 'increase' : 'reduction');
  setText(tr.children[2], fmtMoney(r.amount));
}

// ------------------------------------------------------------------ contracts

function normContract(c, old) {
  return { ...(old || {}), contract: c.contract, state: c.state, reason: c.reason ?? null,
    close_at: Date.parse(c.close_at) };
}

async function loadContracts() {
  const a = await conn.request({ type: 'query_contracts' });
  if (a.type !== 'contracts') return;
  for (const c of a.contracts) C.contracts.set(c.contract, normContract(c, C.contracts.get(c.contract)));
  invalidate('contracts');
}

function onState(msg) {
  if (typeof msg.seq === 'number') {
    if (msg.seq > C.statesSeq + 1) loadContracts();
    if (msg.seq <= C.statesSeq) return;
    C.statesSeq = msg.seq;
  }
  if (msg.type === 'contract_state') {
    C.contracts.set(msg.contract, normContract(msg, C.contracts.get(msg.contract)));
    invalidate('contracts');
  }
}

let contractRows = null;

function renderContracts() {
  const fin = $('#c-show-fin').checked;
  const list = [...C.contracts.values()].filter((c) => fin || c.state !== 'FIN')
    .sort((a, b) => a.contract.localeCompare(b.contract));
  contractRows.sync(list);
}

function makeContractRow(c) {
  const box = el('input', { type: 'checkbox', 'aria-label': `select ${c.contract}` });
  box.addEventListener('change', () => {
    if (box.checked) C.checked.add(c.contract);
    else C.checked.delete(c.contract);
  });
  return el('tr', { dataset: { contract: c.contract } }, el('td', {}, box), el('td', { class: 'cid' }),
    el('td'), el('td'), el('td', { class: 'num countdown' }));
}

function updateContractRow(tr, c) {
  const td = tr.children;
  td[0].firstChild.checked = C.checked.has(c.contract);
  setText(td[1], c.contract);
  setText(td[2], c.state);
  setClass(td[2], `state st-${c.state}`);
  setText(td[3], c.reason || '');
  setText(td[4], c.state === 'FIN' ? 'closed' : fmtCountdown(c.close_at - clock.now()));
}

// ------------------------------------------------------------------ rate limits

function ruleRow(win = '', max = '') {
  const row = el('div', { class: 'rule' },
    el('input', { inputmode: 'numeric', size: '8', class: 'r-max', value: max, placeholder: 'max requests', 'aria-label': 'max requests' }),
    el('span', { class: 'muted' }, 'per'),
    el('input', { inputmode: 'numeric', size: '8', class: 'r-window', value: win, placeholder: 'window ms', 'aria-label': 'window ms' }),
    el('span', { class: 'muted' }, 'ms'),
    el('button', { type: 'button', class: 'small', title: 'remove', onclick: () => row.remove() }, '✕'));
  return row;
}

function fmtWindow(ms) {
  if (ms % 60000 === 0) return `${ms / 60000} min`;
  if (ms % 1000 === 0) return `${ms / 1000} s`;
  return `${ms} ms`;
}

async function queryThrottling() {
  const user = $('#r-user').value.trim();
  const msg = { type: 'query_throttling' };
  if (user) msg.user = user;
  const a = await conn.request(msg);
  const box = $('#r-status');
  if (a.type !== 'throttling') {
    box.replaceChildren(el('div', { class: 'error' }, describeProblem(a)));
    return;
  }
  box.replaceChildren(el('div', {}, `${a.user}: ${a.state}${a.hibernate_on_breach ? ' · hibernates on breach' : ''}`),
    ...(a.rules || []).map((r) => el('div', { class: 'trule' },
      el('span', {}, `${r.used} / ${r.max} per ${fmtWindow(r.window_ms)}`),
      el('span', { class: 'bar' }, el('span', { style: `width:${Math.min(100, Math.round((100 * r.used) / r.max))}%` })))));
  const rules = $('#r-rules');
  rules.replaceChildren(...(a.rules || []).map((r) => ruleRow(r.window_ms, r.max)));
  $('#r-hibernate').checked = Boolean(a.hibernate_on_breach);
}

async function setRateLimits(e) {
  e.preventDefault();
  // each field read strictly (no parseInt/parseFloat: '1e3' is not 1, '0.8abc' is not 0.8);
  // a rule left empty altogether is no rule
  const rules = [];
  const refuse = (text) => toast('bad', `set_rate_limits: ${text}`);
  let n = 0;
  for (const row of $('#r-rules').children) {
    n += 1;
    const maxField = row.querySelector('.r-max').value;
    const winField = row.querySelector('.r-window').value;
    if (!maxField.trim() && !winField.trim()) continue;
    const max = readInteger(maxField, 1, 10_000_000);
    if (max.error) return refuse(`rule ${n} max requests: ${max.error}`);
    const win = readInteger(winField, 1, 86_400_000);
    if (win.error) return refuse(`rule ${n} window ms: ${win.error}`);
    rules.push({ window_ms: win.value, max: max.value });
  }
  if (!rules.length) return refuse('rules: enter at least one rule (max requests per window ms)');
  const ratio = readRatio($('#r-warning').value);
  if (ratio.error) return refuse(`warning ratio: ${ratio.error}`);
  const user = $('#r-user').value.trim();
  const msg = { type: 'set_rate_limits', rules, warning_ratio: ratio.value,
    hibernate_on_breach: $('#r-hibernate').checked };
  if (user) msg.user = user;
  const a = await act(msg, user || 'default');
  if (a.type === 'ack') queryThrottling();
}

// ------------------------------------------------------------------ session

function setConn(state, note) {
  C.online = state === 'online';
  const pill = $('#conn');
  setText(pill, state);
  setClass(pill, `pill ${state === 'online' ? 'ok' : state === 'connecting' ? 'warn' : 'bad'}`);
  pill.title = note || '';
  const box = $('#banners');
  box.replaceChildren(...(state === 'online' || state === 'connecting' || !note ? []
    : [el('div', { class: 'banner bad' }, el('span', { class: 'btext' }, `⚠ ${note}`))]));
}

function route(msg) {
  if (msg.type === 'heartbeat') {
    clock.sync(msg.server_time);
    return;
  }
  const st = msg.stream || '';
  if (st === 'states') onState(msg);
  else if (st.startsWith('private:') || msg.type === 'risk_notice') onPrivate(msg);
}

function denied(text) {
  $('#app').hidden = true;
  $('#login').hidden = true;
  $('#denied').hidden = false;
  setText($('#denied-text'), text);
}

async function onReady(ans) {
  C.user = ans.user;
  C.roles = ans.roles || [];
  clock.sync(ans.server_time);
  if (!C.roles.includes(OFFICER)) {
    denied(`${ans.user} has the roles ${C.roles.join(', ') || 'none'}; the risk console needs the role ${OFFICER}.`);
    conn.logout();
    return;
  }
  $('#login').hidden = true;
  $('#app').hidden = false;
  setText($('#who'), `${C.user} · risk officer`);
  setText($('#clock'), fmtTime(nowIso()));
  loadAudit();
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get('agents');
  const initial = fromUrl ? fromUrl.split(',') : storageGet('ronda.console.agents', DEFAULT_AGENTS);
  for (const a of initial) watch(a, false);
  C.statesSeq = 0;
  // a new connection numbers the private streams afresh (after a server restart, from 0):
  // forget the old positions before subscribing, or the first new messages would look old
  for (const A of C.agents.values()) A.seq = -1;
  const pv = await conn.request({ type: 'subscribe', stream: 'private', agent: '*' });
  if (pv.type !== 'ack') toast('bad', `private stream: ${describeProblem(pv)}`);
  const st = await conn.request({ type: 'subscribe', stream: 'states' });
  C.statesSeq = typeof st.seq === 'number' ? st.seq : 0;
  await Promise.all([loadContracts(), queryThrottling(), ...C.watch.map((a) => loadAgent(a))]);
  invalidate('agents', 'detail', 'contracts', 'audit');
}

async function login(e) {
  e.preventDefault();
  const user = $('#login-user').value.trim();
  const token = $('#login-token').value;
  $('#login-error').textContent = '';
  storageSet('ronda.console.user', user);
  conn = new Connection({ onMessage: route, onStatus: setConn, onReady,
    onLoggedOut: () => {
      if (!$('#denied').hidden) return;
      if (C.user) {
        location.reload(); // a clean console for the next user
        return;
      }
      $('#app').hidden = true;
      $('#login').hidden = false;
    } });
  const ans = await conn.start(user, token);
  if (ans.type !== 'ack') $('#login-error').textContent = describeProblem(ans);
  $('#login-token').value = '';
}

function init() {
  agentRows = new KeyedRows($('#agents-table tbody'), { key: (A) => A.code, create: makeAgentRow, update: updateAgentRow });
  reqRows = new KeyedRows($('#requests-table tbody'), { key: (r) => r.id, create: makeReqRow, update: updateReqRow });
  dOrderRows = new KeyedRows($('#d-orders tbody'), {
    key: (o) => o.order_id,
    create: () => el('tr', {}, ...Array.from({ length: 8 }, (_, i) => el('td', { class: i === 4 || i === 5 ? 'num' : '' }))),
    update: (tr, o) => {
      const c = tr.children;
      setClass(tr, `${o.side === 'BUY' ? 'buy' : 'sell'}`);
      [o.order_id, o.contract, o.side, o.unit, o.price, fmtQty(qtyTicks(o.visible) + qtyTicks(o.hidden)), o.status, o.user]
        .forEach((v, i) => setText(c[i], v));
    },
  });
  dTradeRows = new KeyedRows($('#d-trades tbody'), {
    key: (t) => `${t.trade_id}|${t.side}`,
    create: () => el('tr', {}, ...Array.from({ length: 7 }, (_, i) => el('td', { class: i === 3 || i === 4 ? 'num' : '' }))),
    update: (tr, t) => {
      setClass(tr, t.side === 'BUY' ? 'buy' : 'sell');
      [fmtTime(t.ts), t.contract, t.side, t.price, t.quantity, t.unit, t.user].forEach((v, i) => setText(tr.children[i], v));
    },
  });
  contractRows = new KeyedRows($('#contracts-table tbody'), { key: (c) => c.contract, create: makeContractRow, update: updateContractRow });
  auditRows = new KeyedRows($('#audit-table tbody'), {
    key: (e) => e.key,
    create: () => el('tr', {}, el('td'), el('td', { class: 'by' }), el('td', { class: 'action' }), el('td'),
      el('td', { class: 'num' }), el('td', { class: 'detail' }), el('td', { class: 'result' }), el('td', { class: 'muted' })),
    update: (tr, e) => {
      setClass(tr, `src-${e.source === 'platform' ? 'console' : 'notice'}${e.ok === false ? ' result-reject' : ''}`);
      const c = tr.children;
      setText(c[0], fmtDateTime(e.ts));
      c[0].title = e.ts;
      setText(c[1], e.by);
      setText(c[2], e.action);
      setText(c[3], e.target);
      setText(c[4], e.amount ? fmtMoney(e.amount) : '');
      setText(c[5], e.detail);
      setText(c[6], e.result);
      setText(c[7], e.source === 'platform' ? 'audit trail' : 'risk_notice');
    },
  });

  $('#login-user').value = storageGet('ronda.console.user', '');
  if ($('#login-user').value) $('#login-token').focus();
  $('#login-form').addEventListener('submit', login);
  $('#logout').addEventListener('click', () => conn && conn.logout());
  $('#watch-form').addEventListener('submit', (e) => {
    e.preventDefault();
    watch($('#watch-agent').value);
    $('#watch-agent').value = '';
  });
  $('#g-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const g = $('#g-amount');
    const read = readDecimal(g.value, MONEY);
    if (!C.selected || g.dataset.agent !== C.selected || read.empty) {
      toast('warn', `set_guarantees: enter the amount for ${C.selected || 'an agent'}`);
      return;
    }
    if (read.error) {
      toast('bad', `set_guarantees ${C.selected}: amount: ${read.error}`);
      return;
    }
    const amount = read.text;
    const a = await act({ type: 'set_guarantees', agent: C.selected, amount }, C.selected);
    if (a.type === 'ack' && g.dataset.agent === C.selected) g.dataset.shown = g.value; // follows the account again
  });
  $('#s-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const reason = $('#s-reason').value.trim() || 'suspended';
    await act({ type: 'suspend_agent', agent: C.selected, reason }, C.selected);
  });
  $('#s-reinstate').addEventListener('click', () => act({ type: 'reinstate_agent', agent: C.selected }, C.selected));
  $('#x-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const reason = $('#x-reason').value.trim() || 'cancelled by the risk officer';
    await act({ type: 'cancel_agent_orders', agent: C.selected, reason }, C.selected);
  });
  $('#c-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const contracts = [...C.checked];
    if (!contracts.length) {
      toast('warn', 'select the contracts to interrupt');
      return;
    }
    const reason = $('#c-reason').value.trim() || 'interrupted by the risk officer';
    await act({ type: 'interrupt_contracts', contracts, reason }, contracts.join(', '));
  });
  $('#c-resume').addEventListener('click', async () => {
    const contracts = [...C.checked];
    if (!contracts.length) {
      toast('warn', 'select the contracts to resume');
      return;
    }
    await act({ type: 'resume_contracts', contracts }, contracts.join(', '));
  });
  $('#c-all').addEventListener('change', (e) => {
    for (const c of C.contracts.values()) {
      if (e.target.checked && c.state !== 'FIN') C.checked.add(c.contract);
      else C.checked.delete(c.contract);
    }
    invalidate('contracts');
  });
  $('#c-show-fin').addEventListener('change', () => invalidate('contracts'));
  $('#r-add').addEventListener('click', () => $('#r-rules').append(ruleRow()));
  $('#r-rules').append(ruleRow());
  $('#r-form').addEventListener('submit', setRateLimits);
  $('#r-query').addEventListener('click', queryThrottling);
  $('#audit-filter').addEventListener('input', () => invalidate('audit'));
  setInterval(() => {
    setText($('#clock'), fmtTime(nowIso()));
    if (contractRows) {
      for (const [id, tr] of contractRows.rows) {
        const c = C.contracts.get(id);
        if (c && c.state !== 'FIN') setText(tr.children[4], fmtCountdown(c.close_at - clock.now()));
      }
    }
  }, 1000);
}

init();

window.rondaConsole = { C, route };
