// The manual trader's screen (docs/web.md).  One WebSocket session (conn.js); the state
// below is fed by query answers and streams, and drawn once per animation frame for the
// parts that changed (`invalidate`).

import { BookModel, LadderView, matchOwn } from './book.js';
import { PriceChart, sparkline } from './chart.js';
import { Connection } from './conn.js';
import {
  $, $$, KeyedRows, ServerClock, describeProblem, el, fmtCountdown, fmtDateTime, fmtDelivery,
  fmtMoney, fmtPrice, fmtQty, fmtTime, fmtTimeMs, frameBatcher, isoToLocalInput,
  localInputToIso, MONEY, PRICE, priceTicks, QTY, qtyTicks, readDecimal, setClass, setText,
  storageGet, storageSet,
} from './util.js';

const clock = new ServerClock();
const MAX_LOG = 1000;
const MAX_PUBLIC = 500;

const S = {
  user: null,
  agent: null,
  roles: [],
  contracts: new Map(), // id -> contract (query_contracts fields, close_at in ms) + last, vol
  selected: null,
  book: null, // BookModel of the selected contract
  orders: new Map(), // order_id -> live order (ACTIVE or HIBERNATED)
  trades: [], // own-side trades, newest first
  tradeKeys: new Set(),
  pub: new Map(), // contract -> public trades, oldest first
  pubSeq: new Map(),
  tradeSubs: new Set(),
  account: null,
  throttling: null,
  units: new Set(),
  privSeq: 0,
  statesSeq: 0,
  side: 'BUY',
  modifying: null, // order_id being modified through the ticket
  // the modification loaded in the ticket: the revision and open quantity it was loaded at
  // (sent and checked, not the order's newest ones), the expiry as loaded, a pending
  // confirmation after a fill, whether its request is in flight or its answer was lost
  mod: null,
  unresolved: new Map(), // client_order_id -> an order entry whose answer was lost
  coidReports: new Map(), // client_order_id -> its latest order report (recent ones)
  ticketCoid: null, // the client_order_id the ticket's status speaks of
  session: 0, // counts logins: public trades are tagged with the session that saw them
  basket: [],
  myReqs: new Set(),
  seenRejects: new Set(),
  online: false,
  connNote: '',
  stats: { resnapshots: 0, privateResyncs: 0, renders: 0 },
};

let conn = null;
let ladder = null;
let chart = null;

// ------------------------------------------------------------------ rendering cadence

const dirty = new Set();
const frame = frameBatcher(render);

function invalidate(...parts) {
  for (const p of parts) dirty.add(p);
  frame();
}

function render() {
  const d = new Set(dirty);
  dirty.clear();
  S.stats.renders += 1;
  if (d.has('contracts')) renderContracts();
  if (d.has('book') || d.has('orders')) renderBook();
  if (d.has('orders')) renderOrders();
  if (d.has('trades')) renderTrades();
  if (d.has('market') || d.has('pub') || d.has('trades')) renderMarket();
  if (d.has('account')) renderAccount();
  if (d.has('throttle')) renderThrottle();
  if (d.has('basket')) renderBasket();
  if (d.has('contracts') || d.has('orders') || d.has('account') || d.has('banners')) renderBanners();
  if (d.has('ticket')) renderTicket();
  if (d.has('log')) renderLog();
}

// ------------------------------------------------------------------ log and toasts

const pendingLog = [];

/** Add a line to the activity log (drawn with the next frame, newest first). */
function log(kind, text, cls = kind) {
  pendingLog.push({ ts: fmtTimeMs(new Date(clock.now()).toISOString()), kind, text, cls });
  if (pendingLog.length > MAX_LOG) pendingLog.splice(0, pendingLog.length - MAX_LOG);
  invalidate('log');
}

function renderLog() {
  if (!pendingLog.length) return;
  const list = $('#log');
  const frag = document.createDocumentFragment();
  for (let i = pendingLog.length - 1; i >= 0; i--) {
    const e = pendingLog[i];
    frag.append(el('div', { class: `entry k-${e.cls}` },
      el('span', { class: 'ts' }, e.ts), el('span', { class: 'kind' }, e.kind), el('span', { class: 'text' }, e.text)));
  }
  pendingLog.length = 0;
  list.prepend(frag);
  while (list.childElementCount > MAX_LOG) list.lastElementChild.remove();
}

function toast(kind, text, ms = 6000) {
  const box = $('#toasts');
  const t = el('div', { class: `toast ${kind}`, role: kind === 'bad' ? 'alert' : 'status' }, text);
  t.addEventListener('click', () => t.remove());
  box.append(t);
  while (box.childElementCount > 3) box.firstElementChild.remove();
  setTimeout(() => t.remove(), ms);
}

/** A read (a query, a subscription) cut off by the connection: nothing to do, the screen
 * reads it again once connected; anything else is a problem (below). */
function readProblem(ans, what) {
  if (ans.outcome_unknown || ans.code === 'DISCONNECTED') {
    log('info', `${what}: cut off by the connection (${describeProblem(ans)}); read again once connected`);
    return '';
  }
  return problem(ans, what);
}

/** A refused request of this screen: shown with code and reason, logged once.  A request
 * whose answer was lost (`outcome_unknown`) is no refusal: it may have been done. */
function problem(ans, what) {
  if (ans.outcome_unknown) {
    const text = `${what}: outcome unknown (${describeProblem(ans)}); what it did shows once the screen has reloaded`;
    log('info', text, 'warn');
    toast('warn', text);
    return text;
  }
  const text = `${what}: ${describeProblem(ans)}`;
  const key = `${ans.req_id}|${ans.code}`;
  if (!S.seenRejects.has(key)) {
    S.seenRejects.add(key);
    log(ans.type === 'error' ? 'error' : 'reject', text, 'reject');
  }
  toast('bad', text);
  if (Array.isArray(ans.details)) {
    for (const d of ans.details) log('reject', `  ${d.client_order_id || 'member'}: ${d.code}: ${d.reason}`, 'reject');
  }
  return text;
}

// ------------------------------------------------------------------ contracts

function normContract(c, old) {
  return {
    ...(old || { last: null, vol: 0 }),
    contract: c.contract,
    state: c.state,
    previous: c.previous ?? old?.previous ?? null,
    reason: c.reason ?? null,
    close_at: Date.parse(c.close_at),
    delivery_start: c.delivery_start ?? old?.delivery_start,
    delivery_end: c.delivery_end ?? old?.delivery_end,
  };
}

async function loadContracts() {
  const a = await conn.request({ type: 'query_contracts' });
  if (a.type !== 'contracts') {
    readProblem(a, 'contracts');
    return;
  }
  for (const c of a.contracts) S.contracts.set(c.contract, normContract(c, S.contracts.get(c.contract)));
  ensureTradeSubs();
  if (!S.selected || !S.contracts.has(S.selected)) {
    const saved = storageGet('ronda.contract', null);
    const pick = (saved && S.contracts.has(saved) && S.contracts.get(saved).state !== 'FIN')
      ? saved : visibleContracts().find((c) => c.state === 'TRADE')?.contract ?? visibleContracts()[0]?.contract;
    if (pick) selectContract(pick);
  }
  invalidate('contracts', 'market', 'banners');
}

let contractsReload = 0;
function reloadContractsSoon() {
  clearTimeout(contractsReload);
  contractsReload = setTimeout(() => loadContracts(), 200);
}

function ensureTradeSubs() {
  for (const c of S.contracts.values()) {
    if (c.state === 'FIN' || S.tradeSubs.has(c.contract)) continue;
    S.tradeSubs.add(c.contract);
    conn.request({ type: 'subscribe', stream: 'trades', contract: c.contract }).then((a) => {
      if (a.type !== 'ack') {
        S.tradeSubs.delete(c.contract);
        readProblem(a, `trades of ${c.contract}`);
        return;
      }
      // the stream goes on from the ack's seq; what came before (while this screen was
      // closed or disconnected, or before a server restart) is reloaded
      if (typeof a.seq === 'number' && !S.pubSeq.has(c.contract)) S.pubSeq.set(c.contract, a.seq);
      loadPublicTrades(c.contract);
    });
  }
}

function pubPoint(m) {
  return { t: Date.parse(m.ts), ts: m.ts, p: priceTicks(m.price), q: qtyTicks(m.quantity),
    aggressor: m.aggressor, id: m.trade_id, seq: m.seq, s: S.session };
}

/** The contract's recent public trades (query_public_trades: the last 500 and the stream's
 * seq): the last price, volume, chart and last trades are rebuilt from them, and the stream
 * goes on after their seq. */
async function loadPublicTrades(contract) {
  const session = S.session;
  const a = await conn.request({ type: 'query_public_trades', contract });
  if (session !== S.session) return; // a reconnection since: it reloads again
  if (a.type !== 'public_trades') {
    readProblem(a, `last trades of ${contract}`);
    return;
  }
  // stream messages of this session after the answer's seq stay (none are expected: the
  // answer comes before them)
  const later = (S.pub.get(contract) || []).filter((p) => p.s === session && p.seq > a.seq);
  const list = [...a.trades.map(pubPoint), ...later].slice(-MAX_PUBLIC);
  S.pub.set(contract, list);
  S.pubSeq.set(contract, Math.max(a.seq, ...later.map((p) => p.seq)));
  const ct = S.contracts.get(contract);
  if (ct) {
    ct.last = list.length ? list[list.length - 1].p : null;
    ct.vol = list.reduce((v, p) => v + p.q, 0);
    ct.volComplete = !list.length || list[0].seq === 1;
  }
  invalidate('pub', 'contracts', 'market');
}

function visibleContracts() {
  const f = $('#contract-filter').value.trim().toUpperCase();
  const fin = $('#show-fin').checked;
  return [...S.contracts.values()]
    .filter((c) => (fin || c.state !== 'FIN' || c.contract === S.selected) && (!f || c.contract.includes(f)))
    .sort((a, b) => (a.delivery_start || '').localeCompare(b.delivery_start || '') || a.contract.localeCompare(b.contract));
}

let contractRows = null;

function renderContracts() {
  const list = visibleContracts();
  contractRows.sync(list);
  // the ticket follows the selected contract
  if (!S.modifying) setText($('#t-contract'), S.selected || '—');
}

function makeContractRow(c) {
  const spark = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  spark.setAttribute('class', 'spark');
  const row = el('div', { class: 'crow', role: 'option', dataset: { contract: c.contract } },
    el('span', { class: 'state' }),
    el('span', { class: 'cid' }),
    el('span', { class: 'countdown', title: 'time to gate closure' }),
    el('span', { class: 'deliv muted' }),
    spark,
    el('span', { class: 'last', title: 'last trade price' }));
  row.addEventListener('click', () => selectContract(c.contract));
  return row;
}

function updateContractRow(row, c) {
  const [state, cid, countdown, deliv, spark, last] = row.children;
  setClass(row, `crow${c.contract === S.selected ? ' selected' : ''} st-${c.state}`);
  row.setAttribute('aria-selected', c.contract === S.selected ? 'true' : 'false');
  setText(state, c.state);
  setClass(state, `state st-${c.state}`);
  state.title = c.reason ? `${c.state}: ${c.reason}` : c.state;
  setText(cid, c.contract);
  setText(last, c.last === null ? '' : fmtPrice(c.last));
  setText(deliv, fmtDelivery(c.delivery_start, c.delivery_end));
  const pts = S.pub.get(c.contract);
  const n = pts ? pts.length : 0;
  if (row._n !== n) {
    row._n = n;
    sparkline(spark, (pts || []).map((p) => p.p));
  }
  updateCountdown(countdown, c);
}

function updateCountdown(node, c) {
  if (!c) {
    setText(node, '');
    return;
  }
  if (c.state === 'FIN') {
    setText(node, 'closed');
    setClass(node, 'countdown');
    return;
  }
  const left = c.close_at - clock.now();
  setText(node, fmtCountdown(left));
  setClass(node, `countdown${left < 5 * 60000 ? ' soon' : ''}${left < 60000 ? ' last-minute' : ''}`);
  node.title = `gate closure ${fmtDateTime(new Date(c.close_at).toISOString())}`;
}

function tickClock() {
  setText($('#clock'), fmtTime(new Date(clock.now()).toISOString()));
  if (!contractRows) return;
  for (const [id, row] of contractRows.rows) updateCountdown(row.children[2], S.contracts.get(id));
  updateCountdown($('#m-countdown'), S.contracts.get(S.selected));
}

function selectContract(id) {
  if (!S.contracts.has(id)) return;
  const prev = S.book ? S.book.contract : null;
  if (prev === id) return;
  S.selected = id;
  storageSet('ronda.contract', id);
  if (prev) conn.request({ type: 'unsubscribe', stream: 'book', contract: prev });
  S.book = new BookModel(id);
  ladder.clear();
  subscribeBook(id);
  if (!S.modifying) setText($('#t-contract'), id);
  invalidate('contracts', 'market', 'book', 'ticket', 'orders');
}

async function subscribeBook(id) {
  const a = await conn.request({ type: 'subscribe', stream: 'book', contract: id });
  if (a.type !== 'ack') readProblem(a, `book of ${id}`);
}

function moveSelection(step) {
  const list = visibleContracts();
  if (!list.length) return;
  const i = list.findIndex((c) => c.contract === S.selected);
  const j = Math.min(list.length - 1, Math.max(0, (i < 0 ? 0 : i + step)));
  selectContract(list[j].contract);
  const row = contractRows.rows.get(list[j].contract);
  if (row) row.scrollIntoView({ block: 'nearest' });
}

// ------------------------------------------------------------------ book

function onBook(msg) {
  if (!S.book || msg.contract !== S.book.contract) return;
  if (msg.snapshot) {
    S.book.snapshot(msg);
    if (msg.conflated) log('info', `${msg.contract}: book caught up (conflated snapshot, seq ${msg.seq})`);
    invalidate('book');
    return;
  }
  const r = S.book.delta(msg);
  if (r === 'ok') invalidate('book');
  else if (r === 'gap') resnapshot(msg.contract, `expected seq ${S.book.seq + 1}, got ${msg.seq}`);
}

async function resnapshot(contract, why) {
  S.stats.resnapshots += 1;
  log('info', `${contract}: book messages lost (${why}); asking for a fresh snapshot`);
  invalidate('book');
  const a = await conn.request({ type: 'query_book', contract });
  if (a.type !== 'book') readProblem(a, `snapshot of ${contract}`);
}

function ownActive(contract) {
  const out = [];
  for (const o of S.orders.values()) {
    if (o.contract === contract && o.status === 'ACTIVE' && o.visibleT > 0) out.push(o);
  }
  return out;
}

function renderBook() {
  const st = $('#book-status');
  if (!S.book) {
    setText(st, S.online ? 'loading…' : 'offline');
    setClass(st, `pill small ${S.online ? 'warn' : 'bad'}`);
    return;
  }
  const sides = S.book.sides();
  ladder.render(sides, matchOwn(sides, ownActive(S.book.contract)));
  st.title = S.online ? '' : 'the connection is down: this book is as it was; it is reloaded on reconnection';
  if (!S.online) {
    // nothing is live while the connection is down: what is shown may be gone already
    setText(st, S.book.snapshots ? `offline · as of seq ${S.book.seq}` : 'offline');
    setClass(st, 'pill small bad');
  } else if (S.book.live) {
    setText(st, `live · seq ${S.book.seq}`);
    setClass(st, 'pill small ok');
  } else {
    setText(st, S.book.snapshots ? 'resyncing…' : 'loading…');
    setClass(st, 'pill small warn');
  }
  setText($('#m-bid'), sides.bids[0] ? fmtPrice(sides.bids[0].price) : '—');
  setText($('#m-ask'), sides.asks[0] ? fmtPrice(sides.asks[0].price) : '—');
}

function pickFromBook(e, { join }) {
  if (S.modifying) stopModify();
  setSide(join ? e.side : e.side === 'BUY' ? 'SELL' : 'BUY');
  $('#t-price').value = fmtPrice(e.price);
  $('#t-qty').value = fmtQty(e.qty);
  invalidate('ticket');
  const q = $('#t-qty');
  q.focus();
  q.select();
}

// ------------------------------------------------------------------ public trades

function onPublicTrade(msg) {
  const c = msg.contract;
  const last = S.pubSeq.get(c);
  if (last !== undefined && msg.seq <= last) return;
  if (last !== undefined && msg.seq > last + 1) {
    log('info', `${c}: ${msg.seq - last - 1} public trade(s) missed (seq ${last} → ${msg.seq}); reloading the last trades`);
    S.pubSeq.set(c, msg.seq);
    loadPublicTrades(c);
    return;
  }
  S.pubSeq.set(c, msg.seq);
  if (!S.pub.has(c)) S.pub.set(c, []);
  const list = S.pub.get(c);
  list.push(pubPoint(msg));
  if (list.length > MAX_PUBLIC) list.splice(0, list.length - MAX_PUBLIC);
  const ct = S.contracts.get(c);
  if (ct) {
    ct.last = priceTicks(msg.price);
    ct.vol += qtyTicks(msg.quantity);
  }
  invalidate('pub', 'contracts');
}

let lastTradeRows = null;

function renderMarket() {
  const c = S.contracts.get(S.selected);
  setText($('#m-contract'), c ? c.contract : '—');
  const st = $('#m-state');
  setText(st, c ? c.state : '');
  setClass(st, c ? `state st-${c.state}` : 'state');
  st.title = c && c.reason ? c.reason : '';
  setText($('#m-delivery'), c ? `delivery ${fmtDelivery(c.delivery_start, c.delivery_end)}` : '');
  setText($('#m-close'), c ? fmtTime(new Date(c.close_at).toISOString()) : '');
  updateCountdown($('#m-countdown'), c);
  setText($('#m-last'), c && c.last !== null ? fmtPrice(c.last) : '—');
  setText($('#m-vol'), c ? fmtQty(c.vol) : '0.0');
  $('#m-vol').title = c && c.volComplete === false ? `volume of the last ${MAX_PUBLIC} trades` : 'volume traded';
  const pts = (S.pub.get(S.selected) || []);
  const ownIds = new Set(S.trades.filter((t) => t.contract === S.selected).map((t) => t.trade_id));
  chart.draw(pts.map((p) => ({ ...p, own: ownIds.has(p.id) })),
    'No trades');
  lastTradeRows.sync(pts.slice(-50).reverse());
}

// ------------------------------------------------------------------ private stream

function onPrivate(msg) {
  if (typeof msg.seq === 'number') {
    if (msg.seq > S.privSeq + 1 && S.privSeq >= 0) {
      log('info', `private stream: ${msg.seq - S.privSeq - 1} message(s) lost; reloading orders, trades and account`);
      S.privSeq = msg.seq;
      resyncPrivate();
    } else if (msg.seq <= S.privSeq) {
      return; // already seen
    }
    S.privSeq = msg.seq;
  }
  switch (msg.type) {
    case 'order_report': applyReport(msg, true); break;
    case 'trade': addTrade(msg, true); break;
    case 'reject': onStreamReject(msg); break;
    case 'account':
      S.account = msg;
      invalidate('account');
      break;
    case 'risk_notice': onNotice(msg); break;
    case 'throttling': onThrottlingEvent(msg); break;
    default: break;
  }
}

function normOrder(o, old) {
  const visibleT = qtyTicks(o.visible);
  const hiddenT = qtyTicks(o.hidden);
  return {
    ...o,
    priceT: priceTicks(o.price),
    visibleT,
    hiddenT,
    openT: visibleT + hiddenT,
    peakT: qtyTicks(o.peak || '0.0'),
    note: o.reason || (o.status === 'HIBERNATED' ? old?.note : '') || '',
  };
}

function describeReport(r) {
  const open = qtyTicks(r.visible) + qtyTicks(r.hidden);
  let s = `#${r.order_id} ${r.action} · ${r.side} ${open > 0 ? `${fmtQty(open)} ` : ''}@ ${r.price} · ${r.contract}`;
  if (qtyTicks(r.peak || '0') > 0) s += ` · iceberg peak ${r.peak}`;
  if (qtyTicks(r.filled) > 0) s += ` · filled ${r.filled}`;
  if (r.code) s += ` — ${r.code}${r.reason ? `: ${r.reason}` : ''}`;
  else if (r.reason) s += ` — ${r.reason}`;
  if (r.user !== S.user) s += ` [${r.user}]`;
  return s;
}

function applyReport(r, fromStream) {
  if (r.user === S.user && r.unit) rememberUnit(r.unit);
  if (r.status === 'INACTIVE') S.orders.delete(r.order_id);
  else S.orders.set(r.order_id, normOrder(r, S.orders.get(r.order_id)));
  if (fromStream) {
    const bad = r.action === 'REJECTED' || (r.code && r.action === 'CANCELLED' && r.code !== 'CONTRACT_CLOSE');
    log('order', describeReport(r), r.action === 'REJECTED' ? 'reject' : bad ? 'warn' : r.action === 'FILLED' || r.action === 'PARTIALLY_FILLED' ? 'fill' : 'order');
    if (r.action === 'REJECTED') toast('bad', `#${r.order_id} not reactivated — ${r.code}: ${r.reason}`);
  }
  if (r.client_order_id) {
    S.coidReports.set(r.client_order_id, r);
    capSet(S.coidReports, 2000);
    if (S.unresolved.has(r.client_order_id)) resolveUnknown(r.client_order_id, r);
  }
  if (S.modifying === r.order_id) modCheck(r);
  invalidate('orders', 'banners');
}

function addTrade(t, fromStream) {
  const key = `${t.trade_id}|${t.side}`;
  if (S.tradeKeys.has(key)) return;
  S.tradeKeys.add(key);
  S.trades.unshift(t);
  if (t.user === S.user && t.unit) rememberUnit(t.unit);
  if (fromStream) {
    const verb = t.side === 'BUY' ? 'bought' : 'sold';
    const text = `Trade #${t.trade_id}: ${verb} ${t.quantity} MWh @ ${t.price} · ${t.contract}${t.user !== S.user ? ` [${t.user}]` : ''}`;
    log('trade', text);
    toast('good', text, 4000);
  }
  invalidate('trades');
}

function onStreamReject(r) {
  const key = `${r.req_id}|${r.code}`;
  const mine = r.req_id && S.myReqs.has(r.req_id);
  if (!S.seenRejects.has(key)) {
    S.seenRejects.add(key);
    const who = r.user !== S.user ? ` [${r.user}]` : '';
    const what = r.order_id ? `order #${r.order_id}` : r.client_order_id ? `order ${r.client_order_id}` : 'request';
    log('reject', `${what}: ${r.code}: ${r.reason}${who}`);
  }
  if (!mine && r.user === S.user) toast('bad', `${r.code}: ${r.reason}`);
}

function onNotice(n) {
  const amount = n.amount ? ` ${fmtMoney(n.amount)} €` : '';
  log('notice', `${n.kind}${n.agent ? ` ${n.agent}` : ''}${amount} by ${n.by}${n.detail ? ` — ${n.detail}` : ''}`);
  if (n.kind === 'AGENT_SUSPENDED') toast('bad', `Agent ${n.agent} suspended by ${n.by}${n.detail ? `: ${n.detail}` : ''}`, 10000);
  if (n.kind === 'AGENT_REINSTATED') toast('good', `Agent ${n.agent} reinstated by ${n.by}`);
  if (n.kind.startsWith('REQUEST_') || n.kind === 'GUARANTEES_SET') loadAccount();
}

async function resyncPrivate() {
  S.stats.privateResyncs += 1;
  await Promise.all([loadOrders(), loadTrades(), loadAccount()]);
}

async function loadOrders() {
  const a = await conn.request({ type: 'query_orders' });
  if (a.type !== 'orders') {
    readProblem(a, 'orders');
    return;
  }
  const old = S.orders;
  S.orders = new Map();
  for (const o of a.orders) {
    S.orders.set(o.order_id, normOrder(o, old.get(o.order_id)));
    if (o.user === S.user) rememberUnit(o.unit);
  }
  modCheck(null, true);
  checkUnresolved();
  invalidate('orders', 'banners');
}

async function loadTrades() {
  const a = await conn.request({ type: 'query_trades' });
  if (a.type !== 'trades') {
    readProblem(a, 'trades');
    return;
  }
  S.trades = [];
  S.tradeKeys.clear();
  for (const t of a.trades) addTrade(t, false);
  invalidate('trades', 'pub');
}

async function loadAccount() {
  const a = await conn.request({ type: 'query_account' });
  if (a.type !== 'account') {
    if (a.code !== 'DISCONNECTED') log('info', `no guarantee account: ${describeProblem(a)}`);
    return;
  }
  S.account = a;
  invalidate('account');
}

// ------------------------------------------------------------------ states stream

function onState(msg) {
  if (typeof msg.seq === 'number') {
    if (msg.seq > S.statesSeq + 1) {
      log('info', `states stream: ${msg.seq - S.statesSeq - 1} message(s) lost; reloading contracts`);
      reloadContractsSoon();
    }
    if (msg.seq <= S.statesSeq) return;
    S.statesSeq = msg.seq;
  }
  if (msg.type === 'contract_state') {
    const old = S.contracts.get(msg.contract);
    const c = normContract(msg, old);
    c.previous = msg.previous;
    S.contracts.set(msg.contract, c);
    if (!old || !old.delivery_start) reloadContractsSoon();
    const why = msg.reason ? `: ${msg.reason}` : '';
    log('state', `${msg.contract} ${msg.previous || 'new'} → ${msg.state}${why}`, msg.state === 'INT' ? 'warn' : 'state');
    if (msg.state === 'INT') toast('warn', `${msg.contract} interrupted${why}`);
    if (msg.state === 'TRADE' && msg.previous === 'INT') toast('good', `${msg.contract} trading again`);
    ensureTradeSubs();
    if (!S.selected) selectContract(msg.contract);
    invalidate('contracts', 'market', 'banners');
  } else if (msg.type === 'round_closed') {
    log('state', `round ${msg.round} closed (${(msg.contracts || []).join(', ') || 'no contracts'})`);
  }
}

// ------------------------------------------------------------------ throttling

async function loadThrottling() {
  const a = await conn.request({ type: 'query_throttling' });
  if (a.type !== 'throttling') return;
  const prev = S.throttling;
  S.throttling = a;
  if (prev && prev.hibernate_on_breach !== a.hibernate_on_breach) invalidate('throttle');
  invalidate('throttle');
}

function onThrottlingEvent(ev) {
  if (ev.user !== S.user) return;
  const rules = (ev.windows_ms || []).map((w, i) => ({ window_ms: w, max: ev.limits[i], used: ev.counts[i] }));
  S.throttling = { ...(S.throttling || {}), user: ev.user, state: ev.state, rules };
  log('throttle', `rate limit status ${ev.state}: ${rules.map((r) => `${r.used}/${r.max} per ${fmtWindow(r.window_ms)}`).join(', ')}`,
    ev.state === 'OK' ? 'notice' : 'warn');
  if (ev.state !== 'OK') toast(ev.state === 'BREACHED' ? 'bad' : 'warn', `Rate limit ${ev.state}`);
  invalidate('throttle');
}

function fmtWindow(ms) {
  if (ms % 3600000 === 0) return `${ms / 3600000} h`;
  if (ms % 60000 === 0) return `${ms / 60000} min`;
  if (ms % 1000 === 0) return `${ms / 1000} s`;
  return `${ms} ms`;
}

function renderThrottle() {
  const t = S.throttling;
  const pill = $('#throttle-pill');
  const st = $('#throttle-state');
  const state = t ? t.state || 'OK' : '—';
  const cls = state === 'OK' ? 'ok' : state === 'WARNING' ? 'warn' : state === 'BREACHED' ? 'bad' : '';
  setText(pill, `rate ${state}`);
  setClass(pill, `pill ${cls}`);
  setText(st, state);
  setClass(st, `pill small ${cls}`);
  const box = $('#throttle');
  box.replaceChildren(...(t && t.rules ? t.rules : []).map((r) => {
    const pct = Math.min(100, Math.round((100 * r.used) / r.max));
    return el('div', { class: 'trule' },
      el('span', {}, `${r.used} / ${r.max} per ${fmtWindow(r.window_ms)}`),
      el('span', { class: 'bar' }, el('span', { style: `width:${pct}%`, class: pct >= 80 ? 'hot' : '' })));
  }));
  if (t && typeof t.hibernate_on_breach === 'boolean') $('#breach-hib').checked = t.hibernate_on_breach;
}

// ------------------------------------------------------------------ orders and trades tables

let orderRows = null;
let tradeRows = null;

function ordersShown() {
  const only = $('#only-selected').checked;
  return [...S.orders.values()]
    .filter((o) => !only || o.contract === S.selected)
    .sort((a, b) => a.contract.localeCompare(b.contract) || a.order_id - b.order_id);
}

function cond(o) {
  let s = o.exec;
  if (o.peakT > 0) s += ` ice ${o.peak}${priceTicks(o.price_increment || '0') !== 0 ? ` Δ${o.price_increment}` : ''}`;
  return s;
}

function makeOrderRow(o) {
  const tr = el('tr', { dataset: { orderId: o.order_id } });
  for (let i = 0; i < 12; i++) tr.append(el('td'));
  const actions = el('td', { class: 'actions' },
    el('button', { type: 'button', class: 'small', dataset: { act: 'modify' }, title: 'modify: load into the ticket' }, '✎'),
    el('button', { type: 'button', class: 'small', dataset: { act: 'deactivate' } }, ''),
    el('button', { type: 'button', class: 'small danger', dataset: { act: 'cancel' }, title: 'cancel' }, '✕'));
  tr.append(actions);
  const nums = [4, 5, 6, 7];
  for (const i of nums) tr.children[i].className = 'num';
  return tr;
}

function updateOrderRow(tr, o) {
  const c = tr.children;
  const hib = o.status === 'HIBERNATED';
  setClass(tr, `${o.side === 'BUY' ? 'buy' : 'sell'}${hib ? ' hib' : ''}${S.modifying === o.order_id ? ' modifying' : ''}${o.contract === S.selected ? ' cur' : ''}`);
  setText(c[0], o.order_id);
  setText(c[1], o.contract);
  setText(c[2], o.side);
  setText(c[3], o.unit);
  setText(c[4], o.price);
  setText(c[5], fmtQty(o.openT));
  setText(c[6], o.peakT > 0 ? fmtQty(o.visibleT) : '');
  setText(c[7], o.filled);
  setText(c[8], cond(o));
  setText(c[9], o.validity === 'GTD' ? `GTD ${fmtTime(o.expiry)}` : o.validity);
  setText(c[10], hib ? `HIBERNATED${o.note ? ` (${o.note})` : ''}` : o.status);
  c[10].className = hib ? 'status hib' : 'status';
  setText(c[11], o.user);
  const toggle = c[12].children[1];
  setText(toggle, hib ? '▶' : '‖');
  toggle.title = hib ? 'activate (reactivate this order)' : 'deactivate (hibernate this order)';
  toggle.dataset.act = hib ? 'activate' : 'deactivate';
  c[12].children[0].disabled = hib;
}

function renderOrders() {
  const list = ordersShown();
  orderRows.sync(list);
  setText($('#n-orders'), S.orders.size ? String(S.orders.size) : '');
  $('#orders-empty').hidden = list.length > 0;
}

function makeTradeRow() {
  const tr = el('tr');
  for (let i = 0; i < 10; i++) tr.append(el('td'));
  tr.children[4].className = 'num';
  tr.children[5].className = 'num';
  return tr;
}

function updateTradeRow(tr, t) {
  const c = tr.children;
  setClass(tr, t.side === 'BUY' ? 'buy' : 'sell');
  setText(c[0], fmtTime(t.ts));
  c[0].title = t.ts;
  setText(c[1], t.trade_id);
  setText(c[2], t.contract);
  setText(c[3], t.side === 'BUY' ? 'bought' : 'sold');
  setText(c[4], t.price);
  setText(c[5], t.quantity);
  setText(c[6], t.unit);
  setText(c[7], t.user);
  setText(c[8], `#${t.order_id}`);
  setText(c[9], t.aggressor === t.side ? 'yes' : '');
}

function renderTrades() {
  const only = $('#only-selected').checked;
  const list = S.trades.filter((t) => !only || t.contract === S.selected).slice(0, 500);
  tradeRows.sync(list);
  setText($('#n-trades'), S.trades.length ? String(S.trades.length) : '');
  $('#trades-empty').hidden = list.length > 0;
}

async function orderAction(act, id) {
  const o = S.orders.get(id);
  if (!o) return;
  if (act === 'modify') {
    startModify(o);
    return;
  }
  const msg = act === 'cancel' ? { type: 'order_cancel', order_id: id }
    : act === 'deactivate' ? { type: 'order_deactivate', order_ids: [id] }
      : { type: 'order_activate', order_ids: [id] };
  const a = await trading(msg);
  if (a.type !== 'ack') problem(a, `${msg.type} #${id}`);
}

/** Deactivate, reactivate or cancel all orders: of `contract` when given (a banner's),
 * else of the selected contract with "selected contract only", else of every contract. */
async function bulk(kind, contract = null) {
  const only = contract ? { contract }
    : $('#only-selected').checked && S.selected ? { contract: S.selected } : {};
  const msg = kind === 'deact' ? { type: 'order_deactivate', ...only }
    : kind === 'react' ? { type: 'order_activate', ...only }
      : { type: 'cancel_all', scope: 'user', ...only };
  const a = await trading(msg);
  if (a.type === 'ack') {
    const n = (a.order_ids || []).length;
    const verb = kind === 'deact' ? 'deactivated' : kind === 'react' ? 'reactivation requested for' : 'cancelled';
    toast('good', `${verb} ${n} order${n === 1 ? '' : 's'}`, 3000);
    log('info', `${msg.type}${only.contract ? ` ${only.contract}` : ''}: ${n} order(s)`);
  } else {
    problem(a, msg.type);
  }
}

/** Forget the oldest members of a set (or map) that only has to remember recent things. */
function capSet(set, max) {
  if (set.size <= max) return;
  let extra = set.size - max;
  for (const k of [...set.keys()]) {
    if (extra-- <= 0) break;
    set.delete(k);
  }
}

/** A trading request of this screen: its req_id is remembered to match stream rejects. */
function trading(msg) {
  const req_id = conn.nextId();
  S.myReqs.add(req_id);
  capSet(S.myReqs, 5000);
  capSet(S.seenRejects, 5000);
  return conn.request({ ...msg, req_id });
}

// ------------------------------------------------------------------ account

function renderAccount() {
  const a = S.account;
  setText($('#acct-agent'), S.agent || '');
  if (!a) return;
  setText($('#acct-free'), fmtMoney(a.free));
  const reserved = priceTicks(a.reserved);
  const used = priceTicks(a.used);
  const pct = reserved > 0 ? Math.min(100, Math.max(0, Math.round((100 * used) / reserved))) : 0;
  const bar = $('#acct-bar');
  bar.style.width = `${pct}%`;
  bar.className = pct > 90 ? 'hot' : pct > 70 ? 'warm' : '';
  const rows = [
    ['reserved guarantees', 'a', a.reserved, ''],
    ['obligations not yet synchronised', 'b', a.obligations, '−'],
    ['resting debtor orders', 'c', a.debtor_orders, '−'],
    ['of which auction bids held', '', a.auction_bids || '0.00', ''],
    ['reduction after sync', 'd', a.sync_reduction, '−'],
    ['requested reductions', 'e', a.requested_reductions, '−'],
    ['requested increases', 'f', a.requested_increases, '+'],
    ['operative limit (free)', '=', a.operative_limit, ''],
    ['used (b + c)', '', a.used, ''],
  ];
  const dl = $('#acct-breakdown');
  if (dl.childElementCount !== rows.length * 2) {
    dl.replaceChildren(...rows.flatMap(([label, k]) => [
      el('dt', {}, k ? el('span', { class: 'letter' }, k) : '', label), el('dd')]));
  }
  rows.forEach(([, k, v, sign], i) => {
    const dd = dl.children[i * 2 + 1];
    setText(dd, `${sign && priceTicks(v) !== 0 ? `${sign} ` : ''}${fmtMoney(v)}`);
    dd.dataset.field = ['reserved', 'obligations', 'debtor_orders', 'auction_bids', 'sync_reduction',
      'requested_reductions', 'requested_increases', 'operative_limit', 'used'][i];
    dd.className = k === '=' ? 'total' : '';
  });
  const pend = $('#acct-pending');
  pend.replaceChildren(...(a.pending_requests || []).map((r) => el('div', { class: 'preq' },
    `request #${r.id}: ${r.increase ? 'increase' : 'reduction'} of ${fmtMoney(r.amount)} € — pending`)));
  invalidate('banners');
}

// ------------------------------------------------------------------ banners

function renderBanners() {
  const box = $('#banners');
  const items = [];
  if (!S.online && S.connNote) items.push({ key: 'conn', cls: 'bad', text: `⚠ ${S.connNote}` });
  if (S.account && S.account.suspended) {
    items.push({ key: 'susp', cls: 'bad', text: `✖ Agent ${S.account.agent} is suspended: its orders were cancelled and new orders are refused (R46.2.6.2).` });
  }
  // hibernated orders per contract, and those the platform (not the trader) hibernated
  const hibBy = new Map();
  const platformHib = new Map();
  for (const o of S.orders.values()) {
    if (o.status !== 'HIBERNATED') continue;
    hibBy.set(o.contract, (hibBy.get(o.contract) || 0) + 1);
    if (o.note && !/by its owner/.test(o.note)) platformHib.set(o.contract, (platformHib.get(o.contract) || 0) + 1);
  }
  const all = [...S.contracts.values()].sort((a, b) => a.contract.localeCompare(b.contract));
  for (const c of all) {
    const n = hibBy.get(c.contract) || 0;
    if (c.state === 'INT') {
      const paused = c.reason && /auction/i.test(c.reason);
      items.push({ key: `int-${c.contract}`, cls: 'warn', contract: c.contract,
        text: `‖ ${c.contract} ${paused ? 'paused for an auction' : 'interrupted'}${c.reason ? `: ${c.reason}` : ''} — trading stopped; orders there are hibernated${n ? ` (${n} of yours)` : ''} and wait for you to reactivate them when trading resumes.` });
    } else if (c.state === 'TRADE' && n > 0 && (c.previous === 'INT' || platformHib.has(c.contract))) {
      items.push({ key: `res-${c.contract}`, cls: 'info', contract: c.contract, action: true,
        text: c.previous === 'INT'
          ? `▶ ${c.contract} is trading again: ${n} of your orders there are hibernated.`
          : `▶ ${c.contract}: ${n} of your orders there were hibernated by the platform.` });
    }
  }
  const keys = new Set(items.map((i) => i.key));
  for (const b of [...box.children]) if (!keys.has(b.dataset.key)) b.remove();
  items.forEach((it, i) => {
    let b = [...box.children].find((x) => x.dataset.key === it.key);
    if (!b) {
      b = el('div', { class: 'banner', dataset: { key: it.key }, role: 'status' }, el('span', { class: 'btext' }));
      if (it.action) {
        // this banner's contract only, whatever the orders table shows
        b.append(el('button', { type: 'button', class: 'small', onclick: () => bulk('react', it.contract) }, 'Reactivate all'));
      }
      if (it.contract) {
        b.append(el('button', { type: 'button', class: 'small link', onclick: () => selectContract(it.contract) }, 'show'));
      }
    }
    setClass(b, `banner ${it.cls}`);
    if (it.contract) b.dataset.contract = it.contract;
    setText(b.firstChild, it.text);
    if (box.children[i] !== b) box.insertBefore(b, box.children[i] || null);
  });
}

// ------------------------------------------------------------------ ticket

const T = {
  price: () => $('#t-price'),
  qty: () => $('#t-qty'),
  unit: () => $('#t-unit'),
};

function setSide(side) {
  if (S.modifying) return; // the side of an order cannot change
  S.side = side;
  invalidate('ticket');
}

function execValue() {
  return $('input[name=exec]:checked').value;
}

function setExec(v) {
  $(`input[name=exec][value=${v}]`).checked = true;
  invalidate('ticket');
}

function validityValue() {
  return $('input[name=validity]:checked').value;
}

function setValidity(v) {
  $(`input[name=validity][value=${v}]`).checked = true;
  if (v === 'GTD' && !$('#t-expiry').value) {
    const c = S.contracts.get(S.selected);
    const soon = Math.min(clock.now() + 30 * 60000, c ? c.close_at - 1000 : Infinity);
    $('#t-expiry').value = isoToLocalInput(new Date(Math.floor(soon / 1000) * 1000).toISOString());
  }
  invalidate('ticket');
}

/** A unit the trader uses: offered in the ticket's unit field, and put in it if empty
 * (`fill`). */
function rememberUnit(u, fill = true) {
  if (!u) return;
  if (!S.units.has(u)) {
    S.units.add(u);
    $('#unit-list').append(el('option', { value: u }));
  }
  if (fill && !T.unit().value) T.unit().value = u;
}

/** The units the agent is responsible for (`query_me`), so that a trader with no orders yet
 * has them too: all offered, the only one put in the empty field. */
async function loadUnits() {
  const a = await conn.request({ type: 'query_me' });
  if (a.type !== 'me') {
    readProblem(a, 'units');
    return;
  }
  const units = Array.isArray(a.units) ? a.units : [];
  for (const u of units) rememberUnit(u, units.length === 1);
  // the only unit's kind gives the ticket's side to start with (a selling unit sells);
  // the other side stays one key away
  const side = units.length === 1 && a.unit_sides ? a.unit_sides[units[0]] : undefined;
  if ((side === 'BUY' || side === 'SELL') && T.unit().value === units[0]) setSide(side);
}

/** The ticket as order fields; {error} when something required is missing. */
function readTicket() {
  const contract = S.modifying ? S.orders.get(S.modifying)?.contract : S.selected;
  const unit = T.unit().value.trim();
  if (!contract) return { error: 'choose a contract' };
  if (!unit) return { error: 'unit: enter the unit the order is for' };
  const price = readDecimal(T.price().value, PRICE);
  if (price.error) return { error: `price: ${price.error}` };
  const quantity = readDecimal(T.qty().value, QTY);
  if (quantity.error) return { error: `quantity: ${quantity.error}` };
  const o = { contract, unit, side: S.side, price: price.text, quantity: quantity.text, exec: execValue(), validity: validityValue() };
  if (o.validity === 'GTD') {
    const iso = localInputToIso($('#t-expiry').value);
    if (!iso) return { error: 'expiry: a GTD order needs its expiry instant' };
    o.expiry = iso;
  }
  if ($('#t-ice').checked) {
    const peak = readDecimal($('#t-peak').value, QTY);
    if (peak.empty) return { error: 'iceberg peak: required for an iceberg' };
    if (peak.error) return { error: `iceberg peak: ${peak.error}` };
    o.iceberg = { peak: peak.text };
    const incr = readDecimal($('#t-incr').value, PRICE);
    if (incr.error && !incr.empty) return { error: `price increment: ${incr.error}` };
    if (!incr.empty) o.iceberg.price_increment = incr.text;
  }
  if ($('#t-hib').checked) o.state = 'HIBERNATED';
  return { order: o };
}

let coidN = 0;
function newCoid() {
  coidN += 1;
  return `web-${Date.now().toString(36)}-${coidN}`;
}

/** The ticket's answer line; `coid` names the order entry it speaks of, if any. */
function ticketStatus(kind, text, coid = null) {
  const s = $('#t-status');
  s.className = `tstatus ${kind}`;
  s.textContent = text;
  S.ticketCoid = coid;
}

function describeAck(a) {
  const reps = a.reports || [];
  const r = reps[reps.length - 1];
  if (!r) return { kind: 'good', text: `✔ accepted (${(a.order_ids || []).join(', ')})` };
  const open = fmtQty(qtyTicks(r.visible) + qtyTicks(r.hidden));
  if (r.status === 'HIBERNATED' && r.action !== 'CANCELLED') {
    return { kind: 'good', text: `✔ #${r.order_id} entered hibernated: ${open} @ ${r.price}` };
  }
  switch (r.action) {
    case 'ADDED': return { kind: 'good', text: `✔ #${r.order_id} resting: ${r.side} ${open} @ ${r.price}` };
    case 'MODIFIED': return { kind: 'good', text: `✔ #${r.order_id} modified (rev ${r.revision}): ${open} @ ${r.price}` };
    case 'FILLED': return { kind: 'good', text: `✔ #${r.order_id} filled ${r.filled}` };
    case 'PARTIALLY_FILLED':
    case 'REFILLED': return { kind: 'good', text: `✔ #${r.order_id} filled ${r.filled}, ${open} resting @ ${r.price}` };
    case 'CANCELLED': return { kind: 'warn', text: `◼ #${r.order_id} ${r.action}${qtyTicks(r.filled) > 0 ? ` after filling ${r.filled}` : ''} — ${r.code || ''}${r.reason ? `: ${r.reason}` : ''}` };
    default: return { kind: 'good', text: `✔ #${r.order_id} ${r.action}` };
  }
}

async function sendTicket() {
  if (S.modifying) {
    sendModify();
    return;
  }
  const { order, error } = readTicket();
  if (error) {
    ticketStatus('bad', `✖ ${error}`);
    return;
  }
  // the same ticket again while an earlier sending of it has no known outcome: the same
  // client_order_id, so the server refuses it (DUPLICATE_CLIENT_ORDER_ID) if it had it
  const key = JSON.stringify(order);
  const again = [...S.unresolved].find(([, u]) => u.key === key);
  const coid = again ? again[0] : newCoid();
  order.client_order_id = coid;
  ticketStatus('busy', `sending ${order.side} ${order.quantity} @ ${order.price}${again ? ` again with the same client_order_id ${coid}` : ''}…`, coid);
  const a = await trading({ type: 'order_entry', ...order });
  if (a.type === 'ack') {
    S.unresolved.delete(coid);
    const { kind, text } = describeAck(a);
    ticketStatus(kind, text, coid);
    storageSet(`ronda.unit.${S.user}`, order.unit);
  } else if (a.outcome_unknown) {
    outcomeUnknown(coid, `${order.side} ${order.quantity} @ ${order.price} · ${order.contract}`, key, a);
    if (S.online) loadOrders(); // no answer in time but still connected: look now
  } else if (again && a.code === 'DUPLICATE_CLIENT_ORDER_ID') {
    log('order', `order ${coid}: the server already had it (DUPLICATE_CLIENT_ORDER_ID); not done twice`);
    resolveUnknown(coid, null);
  } else {
    ticketStatus('bad', `✖ ${problem(a, 'order')}${again ? ' (the first sending is still unaccounted for)' : ''}`, coid);
  }
}

// ------------------------------------------------------------------ lost answers
//
// An order entry whose answer was lost (the connection dropped, or no answer in time) may be
// resting or have traded: it is "outcome unknown", never "failed".  It is looked up by its
// client_order_id: its order report on the private stream (before the drop or after the
// reconnection), or the live orders reloaded after the reconnection (query_orders).  Sending
// the same ticket again reuses its client_order_id, so the server never does it twice.

function outcomeUnknown(coid, text, key, ans) {
  S.unresolved.set(coid, { text, key, lookedUp: false });
  capSet(S.unresolved, 200);
  log('order', `order ${coid} (${text}): outcome unknown — ${describeProblem(ans)}`, 'warn');
  if (S.coidReports.has(coid)) {
    resolveUnknown(coid, S.coidReports.get(coid)); // its report came before the drop
    return;
  }
  if (S.ticketCoid === coid) {
    ticketStatus('warn', `? ${text}: outcome unknown — ${ans.reason}. It may be resting or have traded: `
      + `looking it up by its client_order_id ${coid} ${S.online ? 'now' : 'once the screen is back online'}…`, coid);
  }
}

/** The order entries with no known outcome, looked up in the orders just (re)loaded. */
function checkUnresolved() {
  for (const [coid, u] of [...S.unresolved]) {
    const r = S.coidReports.get(coid) || [...S.orders.values()].find((o) => o.client_order_id === coid);
    if (r) {
      resolveUnknown(coid, r);
      continue;
    }
    if (u.lookedUp) continue;
    u.lookedUp = true;
    const text = `? ${u.text} (client_order_id ${coid}) is not live on the server: it never arrived, or it traded `
      + 'or was cancelled at once (see My trades).' + (u.key === null ? '' : ' Sending the same ticket again reuses its '
      + 'client_order_id: if the server had it, it refuses it (DUPLICATE_CLIENT_ORDER_ID) and nothing is done twice.');
    log('order', text, 'warn');
    if (S.ticketCoid === coid) ticketStatus('warn', text, coid);
  }
}

/** What happened to an order entry whose answer was lost: `r` its report or live order,
 * null when the server refused a resend as a duplicate (it had it). */
function resolveUnknown(coid, r) {
  const u = S.unresolved.get(coid);
  if (!u) return;
  S.unresolved.delete(coid);
  let kind = 'good';
  let what;
  if (!r) {
    kind = 'warn';
    what = `◼ ${u.text}: the server already had it (DUPLICATE_CLIENT_ORDER_ID), so it was not done twice — see My orders and My trades`;
  } else {
    const open = fmtQty(qtyTicks(r.visible) + qtyTicks(r.hidden));
    const filled = qtyTicks(r.filled) > 0 ? `, filled ${r.filled}` : '';
    if (r.status === 'ACTIVE') what = `✔ #${r.order_id} resting: ${r.side} ${open} @ ${r.price}${filled}`;
    else if (r.status === 'HIBERNATED') what = `✔ #${r.order_id} hibernated: ${r.side} ${open} @ ${r.price}${filled}`;
    else if (r.action === 'FILLED') what = `✔ #${r.order_id} filled ${r.filled}`;
    else {
      kind = 'warn';
      what = `◼ #${r.order_id} ${r.action}${filled} — ${r.code || ''}${r.reason ? `: ${r.reason}` : ''}`;
    }
    what += ` (${u.text}; its answer was lost, found on the server by its client_order_id ${coid})`;
  }
  log('order', what, kind === 'good' ? 'order' : 'warn');
  if (S.ticketCoid === coid) ticketStatus(kind, what, coid);
  else toast(kind, what);
}

// ------------------------------------------------------------------ modification

function startModify(o) {
  S.modifying = o.order_id;
  // as the field holds it (the browser writes '…:58.250' as '…:58.25')
  $('#t-expiry').value = o.expiry ? isoToLocalInput(o.expiry) : '';
  const expiryShown = $('#t-expiry').value;
  S.mod = {
    id: o.order_id,
    revision: o.revision, // sent with the modification: a change made elsewhere is refused
    baseT: o.openT, // the open quantity the ticket's quantity was loaded or confirmed against
    shownT: o.openT, // the quantity the screen put in the field (untouched while equal)
    filledT: qtyTicks(o.filled),
    expiry: o.expiry || null, // sent as it was unless the trader changes the field
    expiryShown,
    confirm: null, // {from, to}: the open quantity changed under a quantity the trader typed
    staleShown: null,
    sending: false,
    unknown: false,
  };
  S.side = o.side;
  T.unit().value = o.unit;
  T.price().value = o.price;
  T.qty().value = fmtQty(o.openT);
  setExec(o.exec);
  $(`input[name=validity][value=${o.validity}]`).checked = true;
  $('#t-ice').checked = o.peakT > 0;
  $('#t-peak').value = o.peakT > 0 ? o.peak : '';
  $('#t-incr').value = o.peakT > 0 && priceTicks(o.price_increment || '0') !== 0 ? o.price_increment : '';
  $('#t-hib').checked = false;
  setText($('#t-contract'), o.contract);
  ticketStatus('info', `modifying #${o.order_id} (revision ${o.revision}): change price, quantity or conditions, then Enter`);
  invalidate('ticket', 'orders');
  T.price().focus();
  T.price().select();
}

function stopModify() {
  if (!S.modifying) return;
  S.modifying = null;
  S.mod = null;
  setText($('#t-contract'), S.selected || '—');
  invalidate('ticket', 'orders');
}

/**
 * The order loaded in the ticket may have changed meanwhile (a report `r`, or a reload):
 * - it left (filled, cancelled, hibernated): the modification stops, nothing is sent, and
 *   the quantity is cleared so that Enter does not send it as a new order;
 * - another modification (a new revision): said at once; Enter will be refused STALE_REVISION;
 * - a fill (the same revision, less open): an untouched quantity follows the open quantity;
 *   a quantity the trader typed must be confirmed against the new open quantity.
 */
function modCheck(r = null, reloaded = false) {
  const m = S.mod;
  if (!m || m.sending) return;
  const id = m.id;
  const o = S.orders.get(id);
  if (m.unknown && reloaded) {
    // the answer to the modification was lost: the reloaded order tells
    m.unknown = false;
    if (o && o.revision !== m.revision) {
      stopModify();
      ticketStatus('good', `✔ #${id} is now revision ${o.revision}: ${fmtQty(o.openT)} @ ${o.price} — the answer was lost, the reloaded order shows the modification (or another) was made`);
      return;
    }
    if (o && o.status === 'ACTIVE') {
      ticketStatus('warn', `◼ #${id} is still revision ${m.revision}: the modification did not reach the server; Enter sends it again`);
    }
  }
  if (!o || o.status !== 'ACTIVE') {
    stopModify();
    T.qty().value = '';
    const what = !r ? 'is no longer live' : r.action === 'FILLED' ? `was filled (${r.filled})`
      : r.status === 'HIBERNATED' ? 'was hibernated' : `was ${r.action.toLowerCase()}${r.code ? ` (${r.code})` : ''}`;
    ticketStatus('warn', `◼ #${id} ${what} while the ticket was loaded: nothing was sent; the ticket is for a new order again`);
    return;
  }
  if (o.revision !== m.revision) {
    if (m.staleShown === o.revision) return;
    m.staleShown = o.revision;
    ticketStatus('warn', `⚠ #${id} was changed elsewhere: now revision ${o.revision}, ${fmtQty(o.openT)} @ ${o.price}. `
      + `This ticket was loaded at revision ${m.revision}, so the server will refuse it (STALE_REVISION): ✎ loads the order again.`);
    return;
  }
  if (o.openT === m.baseT) return;
  const field = T.qty();
  const filled = fmtQty(qtyTicks(o.filled) - m.filledT);
  if (readDecimal(field.value, QTY).ticks === m.shownT) {
    field.value = fmtQty(o.openT);
    ticketStatus('warn', `⚠ #${id}: ${filled} filled since you loaded it; open quantity now ${fmtQty(o.openT)} `
      + `(was ${fmtQty(m.baseT)}): the ticket's quantity follows it`);
    m.shownT = o.openT;
    m.baseT = o.openT;
    invalidate('ticket');
    return;
  }
  m.confirm = { from: m.confirm ? m.confirm.from : m.baseT, to: o.openT };
  m.baseT = o.openT;
  ticketStatus('warn', `⚠ #${id}: ${filled} filled since you loaded it; open quantity now ${fmtQty(o.openT)} `
    + `(was ${fmtQty(m.confirm.from)}). Your quantity ${field.value} would be its new open quantity: Enter asks you to confirm it`);
}

async function sendModify() {
  const id = S.modifying;
  const m = S.mod;
  if (m.sending) return;
  if (m.unknown) {
    ticketStatus('warn', `? the outcome of the modification of #${id} is not known yet: the order is looked up ${S.online ? 'now' : 'once the screen is back online'}; nothing was sent`);
    return;
  }
  modCheck(); // anything that came while an earlier request was in flight
  if (S.mod !== m) return;
  const o = S.orders.get(id);
  const { order, error } = readTicket();
  if (error) {
    ticketStatus('bad', `✖ ${error}`);
    return;
  }
  if (m.confirm) {
    const { from, to } = m.confirm;
    m.confirm = null;
    ticketStatus('bad', `✖ not sent: #${id} traded ${fmtQty(qtyTicks(o.filled) - m.filledT)} since you loaded it — `
      + `${fmtQty(to)} open, not ${fmtQty(from)}. ${order.quantity} would be its new open quantity (on top of what `
      + 'traded). Check the quantity, then press Enter again to send it.');
    return;
  }
  const msg = { type: 'order_modify', order_id: id, revision: m.revision, price: order.price,
    exec: order.exec, validity: order.validity };
  // a quantity the trader did not touch is left out: the server keeps the open quantity the
  // order has when it applies the modification, so even a fill still on its way to this
  // screen is not put back (docs/protocol.md, order_modify)
  if (qtyTicks(order.quantity) !== m.shownT) msg.quantity = order.quantity;
  if (order.expiry) {
    // an expiry the trader did not touch is sent exactly as the order has it (milliseconds too)
    msg.expiry = m.expiry && $('#t-expiry').value === m.expiryShown ? m.expiry : order.expiry;
  }
  if (order.iceberg) msg.iceberg = order.iceberg;
  m.sending = true;
  ticketStatus('busy', `modifying #${id}…`);
  const a = await trading(msg);
  m.sending = false;
  if (S.mod !== m) return; // stopped meanwhile
  if (a.type === 'ack') {
    const { kind, text } = describeAck(a);
    ticketStatus(kind, text);
    stopModify();
  } else if (a.outcome_unknown) {
    m.unknown = true;
    log('order', `modification of #${id}: outcome unknown — ${describeProblem(a)}`, 'warn');
    ticketStatus('warn', `? modification of #${id}: outcome unknown — ${a.reason}. The order is looked up ${S.online ? 'now' : 'once the screen is back online'}…`);
    if (S.online) loadOrders();
  } else if (a.code === 'STALE_REVISION') {
    problem(a, `modify #${id}`);
    const now = S.orders.get(id);
    if (now) m.staleShown = now.revision;
    ticketStatus('bad', `✖ not changed — STALE_REVISION: #${id} was changed elsewhere after you loaded it at revision ${m.revision}`
      + `${now ? ` (now revision ${now.revision}: ${fmtQty(now.openT)} @ ${now.price})` : ''}. Your change was not applied; ✎ loads the order again.`);
  } else {
    ticketStatus('bad', `✖ ${problem(a, `modify #${id}`)}`);
  }
}

function clearTicket() {
  stopModify();
  T.price().value = '';
  T.qty().value = '';
  $('#t-peak').value = '';
  $('#t-incr').value = '';
  $('#t-ice').checked = false;
  $('#t-hib').checked = false;
  $('#t-expiry').value = '';
  setExec('NON');
  $('input[name=validity][value=GFS]').checked = true;
  ticketStatus('', '');
  invalidate('ticket');
}

function renderTicket() {
  const buy = S.side === 'BUY';
  $('#side-buy').classList.toggle('on', buy);
  $('#side-sell').classList.toggle('on', !buy);
  $('#side-buy').setAttribute('aria-checked', String(buy));
  $('#side-sell').setAttribute('aria-checked', String(!buy));
  const ice = $('#t-ice').checked;
  $('#t-peak').disabled = !ice;
  $('#t-incr').disabled = !ice;
  $('#t-expiry').disabled = validityValue() !== 'GTD';
  const pT = readDecimal(T.price().value, PRICE).ticks;
  const qT = readDecimal(T.qty().value, QTY).ticks;
  const valid = Number.isFinite(pT) && Number.isFinite(qT);
  setText($('#t-value'), valid ? `${fmtMoney(orderValue(pT, qT))} €` : '—');
  const send = $('#t-send');
  send.classList.toggle('buy', buy);
  send.classList.toggle('sell', !buy);
  const label = S.modifying ? `Modify #${S.modifying}` : (buy ? 'Buy' : 'Sell');
  send.firstChild.textContent = valid ? `${label} ${fmtQty(qT)} @ ${fmtPrice(pT)} ` : `${label} `;
  setText($('#ticket-title'), S.modifying ? `Modify order #${S.modifying}` : 'Order ticket');
  $('#t-modify-cancel').hidden = !S.modifying;
  $('#ticket').classList.toggle('modifying', Boolean(S.modifying));
  $('#side-buy').disabled = Boolean(S.modifying) && !buy;
  $('#side-sell').disabled = Boolean(S.modifying) && buy;
  T.unit().readOnly = Boolean(S.modifying);
  $('#t-hib').disabled = Boolean(S.modifying);
}

/** Price × quantity exactly: cents × tenths of MWh = thousandths of €, as a decimal string
 * with its sign (a negative price gives a negative value) and 2 or 3 decimals, never rounded. */
function orderValue(pT, qT) {
  if (!Number.isSafeInteger(pT) || !Number.isSafeInteger(qT)) return '';
  const v = BigInt(pT) * BigInt(qT);
  const a = v < 0n ? -v : v;
  let frac = String(a % 1000n).padStart(3, '0');
  if (frac.endsWith('0')) frac = frac.slice(0, 2);
  return `${v < 0n ? '-' : ''}${a / 1000n}.${frac}`;
}

/** ↑/↓ in the price or the quantity: one tick (Shift: 1.00 € / 1.0 MWh) up or down.  A value
 * that cannot be read is not stepped: it stays as typed and the ticket says what is wrong. */
function stepField(input, big, dir) {
  const isPrice = input === T.price();
  const kind = isPrice ? PRICE : QTY;
  const { ticks, error, empty } = readDecimal(input.value, kind);
  if (error) {
    const name = isPrice ? 'price' : 'quantity';
    ticketStatus('bad', `✖ ${name}: ${empty ? `required: type a ${name} before stepping it with ↑/↓` : `${error}; not stepped`}`);
    return;
  }
  const step = isPrice ? (big ? 100 : 1) : (big ? 10 : 1);
  let v = ticks + dir * step;
  if (!isPrice && v < 1) v = 1;
  v = Math.max(-kind.maxTicks, Math.min(kind.maxTicks, v));
  input.value = isPrice ? fmtPrice(v) : fmtQty(v);
  invalidate('ticket');
}

// ------------------------------------------------------------------ basket

function addToBasket() {
  if (S.modifying) {
    ticketStatus('bad', '✖ finish or stop the modification first');
    return;
  }
  const { order, error } = readTicket();
  if (error) {
    ticketStatus('bad', `✖ ${error}`);
    return;
  }
  S.basket.push(order);
  ticketStatus('info', `added to the basket (${S.basket.length})`);
  invalidate('basket');
}

function renderBasket() {
  const tb = $('#basket-table tbody');
  tb.replaceChildren(...S.basket.map((o, i) => el('tr', { class: o.side === 'BUY' ? 'buy' : 'sell' },
    el('td', {}, String(i + 1)),
    el('td', {}, o.side),
    el('td', {}, o.contract),
    el('td', {}, o.unit),
    el('td', { class: 'num' }, `${o.quantity} @ ${o.price}`),
    el('td', {}, `${o.exec}${o.iceberg ? ` ice ${o.iceberg.peak}` : ''}${o.validity === 'GTD' ? ' GTD' : ''}${o.state ? ' hib' : ''}`),
    el('td', {}, el('button', { type: 'button', class: 'small', title: 'remove', onclick: () => { S.basket.splice(i, 1); invalidate('basket'); } }, '✕')))));
  setText($('#b-count'), S.basket.length ? `(${S.basket.length})` : '');
  const type = $('#b-type').value;
  setText($('#b-hint'), type === 'LINKED' ? 'LINKED: all or nothing at once — every member must be FoK (A1§5.3).'
    : type === 'VALID' ? 'VALID: refused as a whole if any member is invalid.' : 'NONE: each order on its own.');
  $('#b-send').disabled = S.basket.length === 0;
}

async function sendBasket() {
  if (!S.basket.length) return;
  const orders = S.basket.map((o) => ({ ...o, client_order_id: newCoid() }));
  const basket = $('#b-type').value;
  const status = $('#b-status');
  status.className = 'tstatus busy';
  status.textContent = `sending ${orders.length} orders (${basket})…`;
  const a = await trading({ type: 'basket_entry', basket, orders });
  if (a.type === 'ack') {
    const ids = a.order_ids || [];
    const lines = [`✔ basket ${basket}: ${ids.length} order(s) accepted${ids.length ? ` (#${ids.join(', #')})` : ''}`];
    for (const r of a.rejects || []) lines.push(`✖ ${r.client_order_id || ''} ${r.code}: ${r.reason}`);
    status.className = `tstatus ${a.rejects && a.rejects.length ? 'warn' : 'good'}`;
    status.textContent = lines.join('\n');
    for (const r of a.rejects || []) log('reject', `basket member ${r.client_order_id}: ${r.code}: ${r.reason}`);
    S.basket = [];
    invalidate('basket');
  } else if (a.outcome_unknown) {
    // each member may be resting or have traded: looked up by its client_order_id
    for (const o of orders) {
      outcomeUnknown(o.client_order_id, `basket member ${o.side} ${o.quantity} @ ${o.price} · ${o.contract}`, null, a);
    }
    status.className = 'tstatus warn';
    status.textContent = `? basket ${basket}: outcome unknown — ${a.reason}. Its orders are looked up by their client_order_ids `
      + `(${orders.map((o) => o.client_order_id).join(', ')}) ${S.online ? 'now' : 'once the screen is back online'}; see the activity log.`;
    S.basket = [];
    invalidate('basket');
    if (S.online) loadOrders();
  } else {
    const text = problem(a, `basket ${basket}`);
    const lines = [`✖ ${text}`, ...(a.details || []).map((d) => `  ${d.client_order_id || ''} ${d.code}: ${d.reason}`)];
    status.className = 'tstatus bad';
    status.textContent = lines.join('\n');
  }
}

// ------------------------------------------------------------------ keyboard

function isTyping(t) {
  if (!t || !t.tagName) return false;
  if (t.tagName === 'TEXTAREA' || t.tagName === 'SELECT') return true;
  if (t.tagName !== 'INPUT') return false;
  if ('numeric' in t.dataset) return false;
  return !['checkbox', 'radio', 'button', 'submit'].includes(t.type);
}

function onKey(e) {
  if ($('#app').hidden || e.isComposing) return;
  const t = e.target;
  const inTicket = Boolean(t.closest && t.closest('#ticket'));
  const typing = isTyping(t);
  if (e.key === 'Escape') {
    if (!$('#help').hidden) $('#help').hidden = true;
    else clearTicket();
    e.preventDefault();
    return;
  }
  if (e.key === 'Enter') {
    if (!inTicket && (typing || t.tagName === 'BUTTON' || t.tagName === 'A')) return;
    if (!inTicket && t !== document.body) return;
    e.preventDefault();
    if (e.shiftKey) addToBasket();
    else sendTicket();
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if ((e.key === 'ArrowUp' || e.key === 'ArrowDown') && (t === T.price() || t === T.qty())) {
    e.preventDefault();
    stepField(t, e.shiftKey, e.key === 'ArrowUp' ? 1 : -1);
    return;
  }
  if (typing) return;
  const k = e.key;
  const act = {
    b: () => setSide('BUY'),
    s: () => setSide('SELL'),
    p: () => { T.price().focus(); T.price().select(); },
    q: () => { T.qty().focus(); T.qty().select(); },
    n: () => setExec('NON'),
    i: () => setExec('IOC'),
    k: () => setExec('FOK'),
    g: () => setValidity(validityValue() === 'GTD' ? 'GFS' : 'GTD'),
    h: () => { $('#t-hib').checked = !$('#t-hib').checked; invalidate('ticket'); },
    '[': () => moveSelection(-1),
    ']': () => moveSelection(1),
    '/': () => $('#contract-filter').focus(),
    '?': () => { $('#help').hidden = !$('#help').hidden; },
  }[k.length === 1 ? k.toLowerCase() : k];
  if (act) {
    e.preventDefault();
    act();
  }
}

// ------------------------------------------------------------------ session life

function setConn(state, note) {
  const pill = $('#conn');
  S.online = state === 'online';
  S.connNote = state === 'online' ? '' : note || state;
  setText(pill, state === 'online' ? 'online' : state);
  setClass(pill, `pill ${state === 'online' ? 'ok' : state === 'connecting' ? 'warn' : 'bad'}`);
  pill.title = note || '';
  if (state !== 'online' && state !== 'connecting') log('info', `connection: ${state}${note ? ` — ${note}` : ''}`);
  // while the connection is down nothing on the screen is live: the book's pill says so and
  // the market data, orders and account are dimmed until they are reloaded
  $('#app').classList.toggle('offline', !S.online);
  invalidate('banners', 'book');
}

function route(msg) {
  const st = msg.stream || '';
  if (msg.type === 'heartbeat') {
    clock.sync(msg.server_time);
    return;
  }
  if (msg.type === 'error' && !msg.req_id) {
    log('error', `${msg.code}: ${msg.reason || ''}`, 'reject');
    return;
  }
  if (st.startsWith('book:')) onBook(msg);
  else if (st.startsWith('trades:')) onPublicTrade(msg);
  else if (st === 'states') onState(msg);
  else if (st.startsWith('private:')) onPrivate(msg);
  else if (msg.type === 'risk_notice') onNotice(msg);
}

async function onReady(ans) {
  S.user = ans.user;
  S.agent = ans.agent;
  S.roles = ans.roles || [];
  clock.sync(ans.server_time);
  tickClock();
  setText($('#who'), `${S.user} · ${S.agent}`);
  $('#who').title = `roles: ${S.roles.join(', ')}`;
  $('#login').hidden = true;
  $('#app').hidden = false;
  if (!S.roles.includes('trader')) {
    toast('warn', `${S.user} is not a trader (roles: ${S.roles.join(', ')}): trading requests will be refused`, 10000);
  }
  const saved = storageGet(`ronda.unit.${S.user}`, '');
  if (saved && !T.unit().value) T.unit().value = saved;
  log('info', `logged in as ${S.user} (${S.agent})`);
  // a new session: streams start again
  S.session += 1;
  S.tradeSubs.clear();
  S.pubSeq.clear();
  const prevSelected = S.selected;
  S.book = null;
  S.selected = null;
  const st = await conn.request({ type: 'subscribe', stream: 'states' });
  S.statesSeq = typeof st.seq === 'number' ? st.seq : 0;
  const pv = await conn.request({ type: 'subscribe', stream: 'private' });
  S.privSeq = typeof pv.seq === 'number' ? pv.seq : 0;
  if (pv.type !== 'ack') readProblem(pv, 'private stream');
  if (prevSelected) storageSet('ronda.contract', prevSelected);
  await Promise.all([loadContracts(), loadOrders(), loadTrades(), loadAccount(), loadThrottling(), loadUnits()]);
  invalidate('contracts', 'market', 'orders', 'trades', 'account', 'throttle', 'basket', 'ticket', 'banners');
}

async function login(ev) {
  ev.preventDefault();
  const user = $('#login-user').value.trim();
  const token = $('#login-token').value;
  const err = $('#login-error');
  err.textContent = '';
  $('#login-submit').disabled = true;
  storageSet('ronda.user', user);
  conn = new Connection({
    onMessage: route,
    onStatus: setConn,
    onReady,
    onLoggedOut: () => {
      if (S.user) {
        location.reload(); // a clean screen for the next user
        return;
      }
      $('#app').hidden = true;
      $('#login').hidden = false;
    },
  });
  const ans = await conn.start(user, token,
    { on_disconnect: $('#login-hibernate').checked ? 'hibernate' : 'none' });
  $('#login-submit').disabled = false;
  if (ans.type !== 'ack') {
    err.textContent = describeProblem(ans);
    return;
  }
  $('#login-token').value = '';
}

function init() {
  ladder = new LadderView($('#ladder'), { onPick: pickFromBook });
  chart = new PriceChart($('#chart'));
  contractRows = new KeyedRows($('#contract-list'), { key: (c) => c.contract, create: makeContractRow, update: updateContractRow });
  orderRows = new KeyedRows($('#orders-table tbody'), { key: (o) => o.order_id, create: makeOrderRow, update: updateOrderRow });
  tradeRows = new KeyedRows($('#trades-table tbody'), { key: (t) => `${t.trade_id}|${t.side}`, create: makeTradeRow, update: updateTradeRow });
  lastTradeRows = new KeyedRows($('#last-trades tbody'), {
    key: (p) => p.id,
    create: () => el('tr', {}, el('td'), el('td', { class: 'num' }), el('td', { class: 'num' }), el('td')),
    update: (tr, p) => {
      const c = tr.children;
      setClass(tr, p.aggressor === 'BUY' ? 'buy' : 'sell');
      setText(c[0], fmtTime(p.ts));
      setText(c[1], fmtPrice(p.p));
      setText(c[2], fmtQty(p.q));
      setText(c[3], p.aggressor === 'BUY' ? '▲ buyer' : '▼ seller');
    },
  });

  $('#login-user').value = storageGet('ronda.user', '');
  if ($('#login-user').value) $('#login-token').focus();
  $('#login-form').addEventListener('submit', login);
  $('#logout').addEventListener('click', () => conn && conn.logout());
  $('#help-btn').addEventListener('click', () => { $('#help').hidden = !$('#help').hidden; });
  $('#help').addEventListener('click', () => { $('#help').hidden = true; });
  $('#contract-filter').addEventListener('input', () => invalidate('contracts'));
  $('#contract-filter').addEventListener('keydown', (e) => {
    if (e.key === 'Enter') {
      e.preventDefault();
      const first = visibleContracts()[0];
      if (first) selectContract(first.contract);
      e.target.blur();
    }
  });
  $('#show-fin').addEventListener('change', () => invalidate('contracts'));

  $('#ticket').addEventListener('submit', (e) => {
    e.preventDefault();
    sendTicket();
  });
  $('#ticket').addEventListener('input', () => invalidate('ticket'));
  $('#ticket').addEventListener('change', () => invalidate('ticket'));
  $('#side-buy').addEventListener('click', () => setSide('BUY'));
  $('#side-sell').addEventListener('click', () => setSide('SELL'));
  $$('input[name=validity]').forEach((r) => r.addEventListener('change', () => setValidity(validityValue())));
  $('#t-clear').addEventListener('click', clearTicket);
  $('#t-modify-cancel').addEventListener('click', () => { stopModify(); ticketStatus('', ''); });
  $('#t-basket-add').addEventListener('click', addToBasket);
  $('#b-send').addEventListener('click', sendBasket);
  $('#b-clear').addEventListener('click', () => { S.basket = []; invalidate('basket'); });
  $('#b-type').addEventListener('change', () => invalidate('basket'));

  $('#orders-table tbody').addEventListener('click', (e) => {
    const b = e.target.closest('button[data-act]');
    if (!b) return;
    orderAction(b.dataset.act, Number(b.closest('tr').dataset.orderId));
  });
  $('#only-selected').addEventListener('change', () => invalidate('orders', 'trades'));
  $('#deact-all').addEventListener('click', () => bulk('deact'));
  $('#react-all').addEventListener('click', () => bulk('react'));
  const ca = $('#cancel-all');
  let armed = 0;
  ca.addEventListener('click', () => {
    if (!armed) {
      ca.textContent = 'Confirm cancel all';
      ca.classList.add('armed');
      armed = setTimeout(() => { armed = 0; ca.textContent = 'Cancel all'; ca.classList.remove('armed'); }, 3000);
      return;
    }
    clearTimeout(armed);
    armed = 0;
    ca.textContent = 'Cancel all';
    ca.classList.remove('armed');
    bulk('cancel');
  });
  $$('.tabs .tab').forEach((b) => b.addEventListener('click', () => {
    $$('.tabs .tab').forEach((x) => x.classList.toggle('active', x === b));
    $('#tab-orders').hidden = b.dataset.tab !== 'orders';
    $('#tab-trades').hidden = b.dataset.tab !== 'trades';
  }));
  $('#log-filter').addEventListener('click', (e) => {
    const b = e.target.closest('.chip');
    if (!b) return;
    $$('#log-filter .chip').forEach((x) => x.classList.toggle('active', x === b));
    $('#log').dataset.filter = b.dataset.f;
  });
  $('#greq').addEventListener('submit', async (e) => {
    e.preventDefault();
    const read = readDecimal($('#greq-amount').value, MONEY);
    if (read.error) {
      toast('bad', `guarantee request: amount: ${read.error}`);
      return;
    }
    const amount = read.text;
    const change = $('#greq-change').value;
    const a = await trading({ type: 'guarantee_request', change, amount });
    if (a.type === 'ack') {
      toast('good', `guarantee ${change} of ${amount} € requested`);
      log('info', `guarantee ${change} of ${amount} € requested`);
      $('#greq-amount').value = '';
      loadAccount();
    } else {
      problem(a, 'guarantee request');
    }
  });
  $('#breach-hib').addEventListener('change', async (e) => {
    const on = e.target.checked;
    const a = await trading({ type: 'set_breach_action', hibernate_on_breach: on });
    if (a.type !== 'ack') {
      problem(a, 'breach action');
      e.target.checked = !on;
    } else {
      log('info', `on a rate-limit breach my orders will ${on ? '' : 'not '}be hibernated`);
    }
  });
  document.addEventListener('keydown', onKey);
  setInterval(tickClock, 1000);
  setInterval(() => { if (S.online) loadThrottling(); }, 5000);
  invalidate('ticket', 'basket');
}

init();

// for the browser tests and for curious traders: the screen's state, read-only by convention
window.ronda = { S, route, stats: S.stats, conn: () => conn, reloadPrivate: resyncPrivate };
