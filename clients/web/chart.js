// Price charts drawn by hand in SVG: a step line of the trade prices of one contract over
// time with a dot per trade (own trades ringed), and a sparkline for the contracts list.
// Elements are created once and their attributes updated, so a redraw does not flicker.

import { fmtPrice, fmtTime } from './util.js';

const NS = 'http://www.w3.org/2000/svg';

function svgEl(tag, attrs = {}) {
  const n = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  return n;
}

export class PriceChart {
  /** svg: an <svg> element sized by CSS. */
  constructor(svg) {
    this.svg = svg;
    svg.setAttribute('role', 'img');
    this.grid = svgEl('g', { class: 'grid' });
    this.path = svgEl('path', { class: 'line' });
    this.dots = svgEl('g', { class: 'dots' });
    this.labels = svgEl('g', { class: 'labels' });
    this.msg = svgEl('text', { class: 'nodata', x: '50%', y: '50%', 'text-anchor': 'middle' });
    svg.replaceChildren(this.grid, this.path, this.dots, this.labels, this.msg);
    this.texts = [];
    this.lines = [];
  }

  _text(i) {
    if (!this.texts[i]) {
      this.texts[i] = svgEl('text');
      this.labels.append(this.texts[i]);
    }
    return this.texts[i];
  }

  _line(i) {
    if (!this.lines[i]) {
      this.lines[i] = svgEl('line');
      this.grid.append(this.lines[i]);
    }
    return this.lines[i];
  }

  /** points: [{t: ms, p: price ticks, q: qty ticks, own: bool}], oldest first. */
  draw(points, emptyText = 'No trades yet') {
    const W = Math.max(120, this.svg.clientWidth || 400);
    const H = Math.max(60, this.svg.clientHeight || 140);
    this.svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
    this.svg.dataset.points = String(points.length);
    const L = 58;
    const R = 10;
    const T = 10;
    const B = 18;
    if (!points.length) {
      this.msg.textContent = emptyText;
      this.path.setAttribute('d', '');
      this.dots.replaceChildren();
      for (const t of this.texts) t.textContent = '';
      for (const l of this.lines) l.setAttribute('stroke-opacity', '0');
      return;
    }
    this.msg.textContent = '';
    let lo = Infinity;
    let hi = -Infinity;
    let t0 = Infinity;
    let t1 = -Infinity;
    let qmax = 1;
    for (const pt of points) {
      lo = Math.min(lo, pt.p);
      hi = Math.max(hi, pt.p);
      t0 = Math.min(t0, pt.t);
      t1 = Math.max(t1, pt.t);
      qmax = Math.max(qmax, pt.q);
    }
    if (hi === lo) {
      hi += 100;
      lo -= 100;
    } else {
      const pad = Math.ceil((hi - lo) * 0.08);
      hi += pad;
      lo -= pad;
    }
    if (t1 === t0) t1 = t0 + 60000;
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (p) => T + ((hi - p) / (hi - lo)) * (H - T - B);
    // grid and price labels: top, middle, bottom
    const marks = [hi, Math.round((hi + lo) / 2), lo];
    marks.forEach((p, i) => {
      const ln = this._line(i);
      ln.setAttribute('x1', L);
      ln.setAttribute('x2', W - R);
      ln.setAttribute('y1', y(p));
      ln.setAttribute('y2', y(p));
      ln.setAttribute('stroke-opacity', '1');
      const tx = this._text(i);
      tx.setAttribute('x', L - 6);
      tx.setAttribute('y', y(p) + 4);
      tx.setAttribute('text-anchor', 'end');
      tx.textContent = fmtPrice(p);
    });
    const iso = (t) => new Date(t).toISOString();
    const tA = this._text(3);
    tA.setAttribute('x', L);
    tA.setAttribute('y', H - 4);
    tA.setAttribute('text-anchor', 'start');
    tA.textContent = fmtTime(iso(t0));
    const tB = this._text(4);
    tB.setAttribute('x', W - R);
    tB.setAttribute('y', H - 4);
    tB.setAttribute('text-anchor', 'end');
    tB.textContent = fmtTime(iso(t1));
    // the step line
    let d = '';
    points.forEach((pt, i) => {
      const px = x(pt.t).toFixed(1);
      const py = y(pt.p).toFixed(1);
      d += i === 0 ? `M${px},${py}` : `H${px}V${py}`;
    });
    d += `H${(W - R).toFixed(1)}`;
    this.path.setAttribute('d', d);
    // one dot per trade, area ~ quantity
    const kids = this.dots.children;
    points.forEach((pt, i) => {
      let c = kids[i];
      if (!c) {
        c = svgEl('circle');
        this.dots.append(c);
      }
      c.setAttribute('cx', x(pt.t).toFixed(1));
      c.setAttribute('cy', y(pt.p).toFixed(1));
      c.setAttribute('r', (2 + 4 * Math.sqrt(pt.q / qmax)).toFixed(1));
      c.setAttribute('class', pt.own ? 'own' : pt.aggressor === 'SELL' ? 'sell' : 'buy');
    });
    while (kids.length > points.length) kids[kids.length - 1].remove();
    const last = points[points.length - 1];
    const tl = this._text(5);
    tl.setAttribute('x', W - R);
    tl.setAttribute('y', Math.max(T + 10, y(last.p) - 6));
    tl.setAttribute('text-anchor', 'end');
    tl.setAttribute('class', 'last');
    tl.textContent = `last ${fmtPrice(last.p)}`;
  }
}

/** A tiny line of the last prices in a 64×18 svg. */
export function sparkline(svg, prices) {
  let pl = svg.firstChild;
  if (!pl) {
    svg.setAttribute('viewBox', '0 0 64 18');
    pl = svgEl('polyline', { class: 'spark' });
    svg.append(pl);
  }
  if (prices.length < 2) {
    pl.setAttribute('points', prices.length ? '0,9 64,9' : '');
    return;
  }
  const ps = prices.slice(-30);
  const lo = Math.min(...ps);
  const hi = Math.max(...ps);
  const span = hi - lo || 1;
  const pts = ps.map((p, i) => `${((64 * i) / (ps.length - 1)).toFixed(1)},${(16 - (14 * (p - lo)) / span).toFixed(1)}`);
  pl.setAttribute('points', pts.join(' '));
}
