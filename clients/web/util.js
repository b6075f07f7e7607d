// Small helpers shared by the trading screen and the risk console: DOM building, in-place
// row updates, exact decimal handling (prices and quantities stay strings on the wire; the
// screens compare them as integer ticks, never as floats), time and countdown formatting.

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

/** el('td', {class: 'x', dataset: {id: 3}, onclick: f}, 'text', child...) */
export function el(tag, props = {}, ...kids) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') n.className = v;
    else if (k === 'dataset') Object.assign(n.dataset, v);
    else if (k === 'style') n.style.cssText = v;
    else if (k.startsWith('on')) n.addEventListener(k.slice(2), v);
    else if (k === 'text') n.textContent = v;
    else if (v === true) n.setAttribute(k, '');
    else n.setAttribute(k, v);
  }
  for (const kid of kids) {
    if (kid === null || kid === undefined || kid === false) continue;
    n.append(kid instanceof Node ? kid : String(kid));
  }
  return n;
}

/** Set a node's text only when it changed (no layout work for unchanged cells). */
export function setText(node, text) {
  text = text === null || text === undefined ? '' : String(text);
  if (node._t !== text) {
    node._t = text;
    node.textContent = text;
  }
}

export function setClass(node, cls) {
  if (node._c !== cls) {
    node._c = cls;
    node.className = cls;
  }
}

/**
 * Keeps the rows of a container in step with a list of items, updating rows in place:
 * a row is created once per key, patched by `update`, moved only when out of place and
 * removed when its key is gone.  No innerHTML, so nothing flickers.
 */
export class KeyedRows {
  constructor(container, { key, create, update }) {
    this.container = container;
    this.key = key;
    this.create = create;
    this.update = update;
    this.rows = new Map();
  }

  sync(items) {
    const seen = new Set();
    const c = this.container;
    let i = 0;
    for (const item of items) {
      const k = this.key(item);
      seen.add(k);
      let row = this.rows.get(k);
      if (!row) {
        row = this.create(item, k);
        row._key = k;
        this.rows.set(k, row);
      }
      this.update(row, item);
      const at = c.children[i];
      if (at !== row) c.insertBefore(row, at || null);
      i++;
    }
    for (const [k, row] of this.rows) {
      if (!seen.has(k)) {
        row.remove();
        this.rows.delete(k);
      }
    }
  }

  get size() {
    return this.rows.size;
  }
}

// ---------------------------------------------------------------- decimals (exact)

const DEC = /^(-?)(\d+)(?:\.(\d+))?$/;

/** '45.10' -> 4510 with 2 decimals; NaN when not a decimal or too precise. */
export function toTicks(s, decimals) {
  if (typeof s !== 'string') return NaN;
  const m = DEC.exec(s.trim());
  if (!m) return NaN;
  const frac = m[3] || '';
  if (frac.length > decimals) return NaN;
  const v = Number(m[2]) * 10 ** decimals + Number(frac.padEnd(decimals, '0') || '0');
  return m[1] ? -v : v;
}

export const priceTicks = (s) => toTicks(s, 2);
export const qtyTicks = (s) => toTicks(s, 1);

export function fromTicks(t, decimals) {
  const sign = t < 0 ? '-' : '';
  const a = Math.abs(t);
  const scale = 10 ** decimals;
  const whole = Math.floor(a / scale);
  const frac = String(a % scale).padStart(decimals, '0');
  return `${sign}${whole}.${frac}`;
}

export const fmtPrice = (t) => fromTicks(t, 2);
export const fmtQty = (t) => fromTicks(t, 1);

/** A money string '50000.00' as '50 000.00' (thin groups, exact). */
export function fmtMoney(s) {
  if (s === null || s === undefined || s === '') return '—';
  const m = DEC.exec(String(s));
  if (!m) return String(s);
  const grouped = m[2].replace(/\B(?=(\d{3})+(?!\d))/g, '\u202f');
  return `${m[1]}${grouped}.${(m[3] || '').padEnd(2, '0')}`;
}

// ---------------------------------------------------------------- what people type (strict)
//
// A field is read as typed or refused with what is wrong with it, never rounded or guessed
// (DESIGN rule 4): a comma is not taken for a decimal point (is '1,000' one or a thousand?),
// too many decimals are not rounded away, a number too large is said to be too large.  The
// messages name the text as typed; the caller puts the field's name before them.

/** A text as a message shows it: quoted, a long one cut. */
function shown(s) {
  return s.length <= 24 ? `'${s}'` : `'${s.slice(0, 20)}…' (${s.length} characters)`;
}

const COMMA = 'has a comma: write the decimal point as \'.\' (1.5) and no thousands separator';

/** The decimal kinds of the protocol: price (€/MWh), quantity (MWh) and money (€), with the
 * largest value the server takes (gateway/protocol.py) in ticks. */
export const PRICE = { decimals: 2, unit: '€/MWh', maxTicks: 10 ** 9 };
export const QTY = { decimals: 1, unit: 'MWh', maxTicks: 10 ** 9, positive: true };
export const MONEY = { decimals: 2, unit: '€', maxTicks: 10 ** 14 - 1 };

/**
 * A decimal typed in a field, read strictly: `{text, ticks}` (`text` the input without
 * surrounding spaces, sent as it is), `{empty: true}` for nothing typed, or `{error}` saying
 * what is wrong with it.  `kind` is PRICE, QTY or MONEY.
 */
export function readDecimal(raw, kind) {
  const text = String(raw ?? '').trim();
  if (!text) return { empty: true, error: 'required' };
  if (text.includes(',')) return { error: `${shown(text)} ${COMMA}` };
  const m = DEC.exec(text);
  if (!m) return { error: `${shown(text)} is not a decimal number` };
  const frac = m[3] || '';
  const { decimals, unit, maxTicks } = kind;
  if (frac.length > decimals) {
    return { error: `${shown(text)} has ${frac.length} decimals; at most ${decimals} are allowed (${unit})` };
  }
  const big = BigInt(m[2]) * 10n ** BigInt(decimals) + BigInt(frac.padEnd(decimals, '0') || '0');
  if (big > BigInt(maxTicks)) {
    const limit = fromTicks(maxTicks, decimals);
    return { error: m[1] ? `${shown(text)} is too low: at least -${limit} ${unit}` : `${shown(text)} is too large: at most ${limit} ${unit}` };
  }
  // the protocol's decimals have at most 12 digits before the point
  if (m[2].length > 12) return { error: `${shown(text)} has ${m[2].length} digits before the point; at most 12 are allowed` };
  const ticks = m[1] ? -Number(big) : Number(big);
  if (kind.positive && ticks <= 0) return { error: `${shown(text)} must be positive` };
  return { text, ticks };
}

/** A whole number typed in a field, in [min, max]: `{value}`, `{empty: true}` or `{error}`. */
export function readInteger(raw, min, max) {
  const text = String(raw ?? '').trim();
  if (!text) return { empty: true, error: 'required' };
  if (!/^\d+$/.test(text)) return { error: `${shown(text)} is not a whole number (digits only, no separators)` };
  const big = BigInt(text);
  if (big < BigInt(min) || big > BigInt(max)) return { error: `${shown(text)} is out of range: ${min} to ${max}` };
  return { value: Number(big) };
}

/** A ratio typed in a field, more than 0 and at most 1 (0.8): `{value}`, `{empty}` or `{error}`.
 * At most 6 decimals, so the number sent is the one typed. */
export function readRatio(raw) {
  const text = String(raw ?? '').trim();
  if (!text) return { empty: true, error: 'required' };
  if (text.includes(',')) return { error: `${shown(text)} ${COMMA}` };
  const m = /^(\d+)(?:\.(\d+))?$/.exec(text);
  if (!m) return { error: `${shown(text)} is not a decimal number` };
  if ((m[2] || '').length > 6) return { error: `${shown(text)} has ${m[2].length} decimals; at most 6 are allowed` };
  const value = Number(text);
  if (!(value > 0 && value <= 1)) return { error: `${shown(text)} must be more than 0 and at most 1` };
  return { value };
}

// ---------------------------------------------------------------- time

/** The server's clock, estimated from server_time in the login answer and heartbeats. */
export class ServerClock {
  constructor() {
    this.offset = 0;
  }

  sync(iso) {
    const t = Date.parse(iso);
    if (!Number.isNaN(t)) this.offset = t - Date.now();
  }

  now() {
    return Date.now() + this.offset;
  }
}

const pad = (n) => String(n).padStart(2, '0');

export function fmtTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtTimeMs(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${fmtTime(iso)}.${String(d.getMilliseconds()).padStart(3, '0')}`;
}

export function fmtDateTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${fmtTime(iso)}`;
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** Delivery interval '25 Nov 09:00–10:00' in local time. */
export function fmtDelivery(startIso, endIso) {
  if (!startIso) return '';
  const s = new Date(startIso);
  const e = new Date(endIso);
  return `${s.getDate()} ${MONTHS[s.getMonth()]} ${pad(s.getHours())}:${pad(s.getMinutes())}`
    + `–${pad(e.getHours())}:${pad(e.getMinutes())}`;
}

/** Time left: '2d 03h', '1h 02m 05s', '04:59'; '' once past. */
export function fmtCountdown(ms) {
  if (!Number.isFinite(ms)) return '';
  if (ms <= 0) return 'closed';
  const s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  if (d > 0) return `${d}d ${pad(h)}h`;
  if (h > 0) return `${h}h ${pad(m)}m ${pad(sec)}s`;
  return `${pad(m)}:${pad(sec)}`;
}

/** Local datetime-local input value ('2027-01-15T10:30:00') to an ISO instant with Z. */
export function localInputToIso(v) {
  if (!v) return null;
  const d = new Date(v);
  if (Number.isNaN(d.getTime())) return null;
  return d.toISOString();
}

/** An ISO instant as a datetime-local input value, milliseconds included when not zero. */
export function isoToLocalInput(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const ms = d.getMilliseconds();
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T`
    + `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}${ms ? `.${String(ms).padStart(3, '0')}` : ''}`;
}

// ---------------------------------------------------------------- rendering cadence

/**
 * Coalesces work into one frame: `schedule()` any number of times, `fn` runs once per
 * animation frame (with a timer fallback, so a hidden tab still catches up).
 */
export function frameBatcher(fn) {
  let pending = false;
  let raf = 0;
  let timer = 0;
  const run = () => {
    if (!pending) return;
    pending = false;
    cancelAnimationFrame(raf);
    clearTimeout(timer);
    fn();
  };
  return () => {
    if (pending) return;
    pending = true;
    raf = requestAnimationFrame(run);
    timer = setTimeout(run, 250);
  };
}

/** A one-line description of a request's refusal: 'CODE: reason' (+ field for errors). */
export function describeProblem(ans) {
  if (!ans) return 'no answer';
  const field = ans.field ? `${ans.field}: ` : '';
  return `${ans.code || ans.type}: ${field}${ans.reason || ''}`.trim();
}

export function storageGet(key, fallback) {
  try {
    const v = localStorage.getItem(key);
    return v === null ? fallback : JSON.parse(v);
  } catch {
    return fallback;
  }
}

export function storageSet(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // private mode or quota: the screens work without it
  }
}
