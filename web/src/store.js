// The page's own state in localStorage, per user: the offline cursor,
// the conversations (read position), the sends not yet confirmed
// (resent after a reload with the same client_msg_id) and the delivery
// states of the user's own messages.
const MAX_STATES = 2000;

export class Store {
  constructor(user, storage = window.localStorage) {
    this.key = `imchat:v1:${user}`;
    this.storage = storage;
    this.load();
  }

  // Every change reads the stored state first and writes it back at once:
  // another tab of the same user may have changed it meanwhile.
  load() {
    let s = null;
    try {
      s = JSON.parse(this.storage.getItem(this.key) || 'null');
    } catch {
      s = null;
    }
    this.s = { cursor: 0, convs: {}, pending: [], states: {}, ...(s || {}) };
    return this.s;
  }

  change(fn) {
    this.load();
    const r = fn(this.s);
    const states = Object.entries(this.s.states);
    if (states.length > MAX_STATES) {
      this.s.states = Object.fromEntries(states.slice(states.length - MAX_STATES));
    }
    this.storage.setItem(this.key, JSON.stringify(this.s));
    return r;
  }

  get cursor() { return this.load().cursor; }
  set cursor(v) { if (v > this.cursor) this.change((s) => { s.cursor = Math.max(s.cursor, v); }); }

  conv(id) {
    const c = this.load().convs[id];
    if (c) return c;
    return this.change((s) => {
      s.convs[id] = s.convs[id] || { readSeq: 0, touched: Date.now() };
      return s.convs[id];
    });
  }
  convIds() { return Object.keys(this.load().convs); }
  markRead(id, seq) {
    if (seq <= this.conv(id).readSeq) return;
    this.change((s) => { s.convs[id].readSeq = Math.max(s.convs[id].readSeq, seq); });
  }
  touch(id) {
    this.conv(id);
    this.change((s) => { s.convs[id].touched = Date.now(); });
  }

  get pending() { return this.load().pending; }
  findPending(cmid) { return this.pending.find((x) => x.client_msg_id === cmid); }
  addPending(p) { this.change((s) => { s.pending.push(p); }); }
  updatePending(cmid, fields) {
    return this.change((s) => {
      const p = s.pending.find((x) => x.client_msg_id === cmid);
      if (p) Object.assign(p, fields);
      return p;
    });
  }
  removePending(cmid) {
    if (!this.findPending(cmid)) return;
    this.change((s) => { s.pending = s.pending.filter((x) => x.client_msg_id !== cmid); });
  }

  state(msgId) { return this.load().states[msgId]; }
  setState(msgId, state) {
    const rank = { sent: 1, stored: 2, delivered: 3 };
    const old = this.state(msgId);
    if (old && rank[old] >= rank[state]) return false;
    this.change((s) => { s.states[msgId] = state; });
    return true;
  }
}
