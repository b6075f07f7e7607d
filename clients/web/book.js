// The local order list of one contract (R46.2.8) and its price ladder.
//
// BookModel keeps the anonymous entries from the `book:<contract>` stream: a snapshot, then
// deltas whose `seq` must follow one another.  A delta that skips a number means a lost
// message: the model says so (`gap`), drops deltas until a fresh snapshot arrives
// (`query_book`, or the server's own `conflated` snapshot) and starts again from it.
//
// LadderView draws it order by order, asks above (best at the bottom), bids below (best at
// the top), with the spread between.  Rows are keyed by entry and updated in place: a busy
// book changes a few text nodes per frame, never the whole table.

import { el, fmtPrice, fmtQty, priceTicks, qtyTicks, setClass, setText } from './util.js';

export class BookModel {
  constructor(contract) {
    this.contract = contract;
    this.entries = new Map(); // entry -> {entry, side, price, qty} (ticks)
    this.seq = -1;
    this.live = false; // a snapshot has been applied and no gap seen since
    this.gaps = 0;
    this.snapshots = 0;
    this.updates = 0;
  }

  snapshot(msg) {
    this.entries.clear();
    for (const [list, side] of [[msg.bids || [], 'BUY'], [msg.asks || [], 'SELL']]) {
      for (const e of list) {
        this.entries.set(e.entry, { entry: e.entry, side, price: priceTicks(e.price), qty: qtyTicks(e.quantity) });
      }
    }
    this.seq = msg.seq;
    this.live = true;
    this.snapshots += 1;
    this.updates += 1;
  }

  /** Apply one delta: 'ok', 'old' (already included), 'gap' or 'waiting' (resyncing). */
  delta(msg) {
    if (!this.live) return 'waiting';
    if (msg.seq <= this.seq) return 'old';
    if (msg.seq !== this.seq + 1) {
      this.live = false;
      this.gaps += 1;
      return 'gap';
    }
    this.seq = msg.seq;
    const qty = qtyTicks(msg.quantity);
    if (msg.action === 'REMOVE' || qty === 0) {
      this.entries.delete(msg.entry);
    } else if (msg.action === 'ADD') {
      this.entries.set(msg.entry, { entry: msg.entry, side: msg.side, price: priceTicks(msg.price), qty });
    } else {
      const e = this.entries.get(msg.entry);
      if (e) e.qty = qty;
      else this.entries.set(msg.entry, { entry: msg.entry, side: msg.side, price: priceTicks(msg.price), qty });
    }
    this.updates += 1;
    return 'ok';
  }

  /** Entries per side in priority order (best price first, then arrival). */
  sides() {
    const bids = [];
    const asks = [];
    for (const e of this.entries.values()) (e.side === 'BUY' ? bids : asks).push(e);
    bids.sort((a, b) => b.price - a.price || a.entry - b.entry);
    asks.sort((a, b) => a.price - b.price || a.entry - b.entry);
    return { bids, asks };
  }
}

/**
 * Which entries are the user's own: the order reports say each own order's side, price and
 * shown quantity; the entries of the same side, price and quantity are marked, one entry per
 * own order (the list is anonymous, so two equal orders of different agents cannot be told
 * apart: R46.2.8).  Returns entry -> own order.
 */
export function matchOwn(sides, ownOrders) {
  const want = new Map();
  for (const o of ownOrders) {
    const k = `${o.side}|${o.priceT}|${o.visibleT}`;
    if (!want.has(k)) want.set(k, []);
    want.get(k).push(o);
  }
  const out = new Map();
  for (const e of [...sides.bids, ...sides.asks]) {
    const list = want.get(`${e.side}|${e.price}|${e.qty}`);
    if (list && list.length) out.set(e.entry, list.shift());
  }
  return out;
}

export class LadderView {
  constructor(root, { onPick }) {
    this.root = root;
    this.onPick = onPick;
    this.rows = new Map(); // entry -> row
    root.classList.add('ladder');
    this.head = el('div', { class: 'lrow lhead' },
      el('span', { class: 'own' }, ''), el('span', { class: 'bq' }, 'Bid MWh'),
      el('span', { class: 'px' }, '€/MWh'), el('span', { class: 'aq' }, 'Ask MWh'));
    this.asks = el('div', { class: 'lside asks', 'data-side': 'SELL' });
    this.spread = el('div', { class: 'lrow spread' },
      el('span', { class: 'own' }), el('span', { class: 'bq' }),
      el('span', { class: 'px' }, '—'), el('span', { class: 'aq' }));
    this.bids = el('div', { class: 'lside bids', 'data-side': 'BUY' });
    this.empty = el('div', { class: 'lempty' }, 'No orders in the book');
    root.replaceChildren(this.head, this.asks, this.spread, this.bids, this.empty);
    root.addEventListener('click', (ev) => {
      const row = ev.target.closest('.lrow[data-entry]');
      if (!row) return;
      const e = row._entry;
      if (e) this.onPick(e, { join: ev.shiftKey || ev.altKey });
    });
  }

  clear() {
    for (const r of this.rows.values()) r.remove();
    this.rows.clear();
    this.render({ bids: [], asks: [] }, new Map());
  }

  _row(e) {
    let r = this.rows.get(e.entry);
    if (!r) {
      r = el('div', { class: 'lrow', 'data-entry': e.entry, title: 'click: take this order into the ticket (Shift+click: join it)' },
        el('span', { class: 'own' }), el('span', { class: 'bq' }), el('span', { class: 'px' }), el('span', { class: 'aq' }));
      r._cells = r.children;
      this.rows.set(e.entry, r);
    }
    return r;
  }

  /** Draw the sides (from BookModel.sides()) with own entries marked. */
  render(sides, own) {
    const seen = new Set();
    const maxQty = Math.max(1, ...sides.bids.map((e) => e.qty), ...sides.asks.map((e) => e.qty));
    const place = (container, list) => {
      let i = 0;
      for (const e of list) {
        seen.add(e.entry);
        const r = this._row(e);
        r._entry = e;
        const mine = own.get(e.entry);
        const buy = e.side === 'BUY';
        const [ownCell, bq, px, aq] = r._cells;
        setClass(r, `lrow ${buy ? 'bid' : 'ask'}${mine ? ' mine' : ''}${i === 0 ? ' best' : ''}`);
        r.dataset.price = fmtPrice(e.price);
        r.dataset.qty = fmtQty(e.qty);
        const hiddenT = mine ? mine.hiddenT : 0;
        setText(ownCell, mine ? (hiddenT > 0 ? '◆+' : '◆') : '');
        ownCell.title = mine ? `your order #${mine.order_id}${hiddenT > 0 ? ` (iceberg: ${fmtQty(hiddenT)} MWh hidden, ${fmtQty(mine.visibleT + hiddenT)} MWh in total)` : ''}` : '';
        const qtyText = fmtQty(e.qty);
        const withHidden = hiddenT > 0 ? `${qtyText} (+${fmtQty(hiddenT)})` : qtyText;
        setText(bq, buy ? withHidden : '');
        setText(px, fmtPrice(e.price));
        setText(aq, buy ? '' : withHidden);
        const w = `${Math.round((100 * e.qty) / maxQty)}%`;
        if (r._w !== w) {
          r._w = w;
          r.style.setProperty('--w', w);
        }
        if (container.children[i] !== r) container.insertBefore(r, container.children[i] || null);
        i += 1;
      }
    };
    place(this.asks, sides.asks);
    place(this.bids, sides.bids);
    for (const [entry, r] of this.rows) {
      if (!seen.has(entry)) {
        r.remove();
        this.rows.delete(entry);
      }
    }
    const bb = sides.bids[0];
    const ba = sides.asks[0];
    const spx = this.spread.children[2];
    setText(spx, bb && ba ? `spread ${fmtPrice(ba.price - bb.price)}` : '—');
    this.empty.hidden = sides.bids.length + sides.asks.length > 0;
  }
}
