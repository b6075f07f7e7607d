// The WebSocket session of a screen (docs/protocol.md): subprotocol ronda.json, login first,
// every request answered exactly once by its req_id, streams pushed in between.
//
// - request(msg) returns a promise of the request's one answer (ack, reject, error or the
//   query's result).  A request that could not be sent is answered error DISCONNECTED ('not
//   connected'): it never reached the server.  A request that was sent but whose answer
//   never came (the connection was lost first: DISCONNECTED 'connection lost before the
//   answer', or no answer in time: TIMEOUT) is answered with `outcome_unknown: true`: the
//   server may have done it, so the screen must look it up, not report a failure.
// - every other message goes to onMessage in arrival order; answers that are also stream
//   messages (a query_book snapshot) go to both.
// - liveness: the server sends a heartbeat every 5 s; after 15 s of silence the socket is
//   closed and the session reconnects (backoff 1 s .. 15 s), logs in again with the same
//   credentials and calls onReady, where the screen re-subscribes and re-queries.

const ANSWERS = new Set(['ack', 'reject', 'error', 'heartbeat', 'me', 'contracts', 'orders',
  'trades', 'account', 'book', 'throttling', 'settlement', 'agents', 'public_trades', 'audit']);

export function isAnswer(msg) {
  if (!ANSWERS.has(msg.type)) return false;
  if (!('stream' in msg)) return 'req_id' in msg && msg.req_id !== null;
  return msg.type === 'ack' || (msg.type === 'book' && 'req_id' in msg);
}

export function wsUrl() {
  const params = new URLSearchParams(location.search);
  if (params.get('ws')) return params.get('ws');
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host}/ws`;
}

export class Connection {
  constructor({ url = wsUrl(), onMessage, onStatus, onReady, onLoggedOut }) {
    this.url = url;
    this.onMessage = onMessage || (() => {});
    this.onStatus = onStatus || (() => {});
    this.onReady = onReady || (() => {});
    this.onLoggedOut = onLoggedOut || (() => {});
    this.ws = null;
    this.pending = new Map();
    this.n = 0;
    this.prefix = `w${Math.random().toString(36).slice(2, 6)}-`; // req_ids differ between tabs
    this.creds = null;
    this.wanted = false; // false once the user logged out
    this.retry = 0;
    this.lastRx = 0;
    this.watchdog = 0;
    this.loginAnswer = null;
    this.sentCount = 0;
  }

  nextId() {
    this.n += 1;
    return `${this.prefix}${this.n}`;
  }

  /** Connect and log in; resolves with the login answer (ack or reject/error). */
  async start(user, token, options = {}) {
    this.creds = { user, token, options };
    this.wanted = true;
    return this._connect();
  }

  _connect() {
    return new Promise((resolve) => {
      this.onStatus('connecting', '');
      let ws;
      try {
        ws = new WebSocket(this.url, ['ronda.json']);
      } catch (e) {
        resolve({ type: 'error', code: 'CONNECT_FAILED', reason: String(e) });
        return;
      }
      this.ws = ws;
      let settled = false;
      ws.onopen = async () => {
        this.lastRx = Date.now();
        const { user, token, options } = this.creds;
        const msg = { type: 'login', user, token };
        if (options.on_disconnect) msg.on_disconnect = options.on_disconnect;
        const ans = await this.request(msg);
        if (ans.outcome_unknown) {
          // no answer to the login (the connection dropped, or stayed silent): not a refusal.
          // onclose settles the start and, after a first login, reconnects.
          if (ws.readyState === WebSocket.OPEN) ws.close(4001, 'no answer to the login');
          return;
        }
        settled = true;
        if (ans.type === 'ack') {
          this.retry = 0;
          this.loginAnswer = ans;
          this.onStatus('online', '');
          this._startWatchdog();
          resolve(ans);
          try {
            await this.onReady(ans);
          } catch (e) {
            console.error(e);
            this.onStatus('error', `start-up failed: ${e.message || e}`);
          }
        } else {
          this.wanted = false;
          resolve(ans);
          ws.close(1000, 'login refused');
        }
      };
      ws.onmessage = (ev) => {
        this.lastRx = Date.now();
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch {
          return;
        }
        this._dispatch(msg);
      };
      ws.onclose = (ev) => {
        clearInterval(this.watchdog);
        for (const [reqId, res] of this.pending) {
          res({ type: 'error', code: 'DISCONNECTED', reason: 'connection lost before the answer',
            req_id: reqId, outcome_unknown: true });
        }
        this.pending.clear();
        if (this.ws !== ws) return;
        this.ws = null;
        if (!settled) {
          settled = true;
          resolve({ type: 'error', code: 'CONNECT_FAILED',
            reason: `cannot reach ${this.url} (${ev.code}${ev.reason ? ` ${ev.reason}` : ''})` });
          if (!this.loginAnswer) {
            this.wanted = false;
            this.onStatus('offline', 'not connected');
            return;
          }
        }
        if (!this.wanted) {
          this.onStatus('offline', ev.reason || 'logged out');
          this.onLoggedOut(ev.reason || '');
          return;
        }
        const delay = Math.min(15, 2 ** this.retry);
        this.retry += 1;
        this.onStatus('reconnecting', `connection lost (${ev.code}${ev.reason ? `: ${ev.reason}` : ''}); retrying in ${delay} s`);
        setTimeout(() => {
          if (this.wanted && !this.ws) this._connect();
        }, delay * 1000);
      };
    });
  }

  _startWatchdog() {
    clearInterval(this.watchdog);
    this.watchdog = setInterval(() => {
      if (this.ws && Date.now() - this.lastRx > 15000) {
        this.onStatus('stale', 'no heartbeat for 15 s');
        this.ws.close(4000, 'heartbeat timeout');
      }
    }, 2000);
  }

  _dispatch(msg) {
    const answer = isAnswer(msg);
    if (answer) {
      const res = this.pending.get(msg.req_id);
      if (res) {
        this.pending.delete(msg.req_id);
        res(msg);
      }
    }
    if (!answer || ('stream' in msg && msg.type !== 'ack')) this.onMessage(msg);
  }

  /** Send a request and wait for its one answer. */
  request(msg, timeoutMs = 15000) {
    const m = { ...msg };
    if (!m.req_id) m.req_id = this.nextId();
    return new Promise((resolve) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
        resolve({ type: 'error', code: 'DISCONNECTED', reason: 'not connected', req_id: m.req_id });
        return;
      }
      const timer = setTimeout(() => {
        if (this.pending.delete(m.req_id)) {
          resolve({ type: 'error', code: 'TIMEOUT', reason: `no answer in ${timeoutMs / 1000} s`, req_id: m.req_id,
            outcome_unknown: true });
        }
      }, timeoutMs);
      this.pending.set(m.req_id, (a) => {
        clearTimeout(timer);
        // the server's own "may or may not be done": its journal failed while recording the
        // request (OUTCOME_UNKNOWN), or the command raised inside the engine (INTERNAL_ERROR)
        const unknown = a.code === 'OUTCOME_UNKNOWN' || a.code === 'INTERNAL_ERROR';
        resolve(unknown ? { ...a, outcome_unknown: true } : a);
      });
      this.sentCount += 1;
      this.ws.send(JSON.stringify(m));
    });
  }

  async logout() {
    this.wanted = false;
    if (this.ws) {
      await this.request({ type: 'logout' }, 3000);
      if (this.ws) this.ws.close(1000, 'logged out');
    }
  }
}
