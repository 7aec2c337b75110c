// The page's own state in localStorage, per user: the offline cursor,
// the conversations (read position), the sends not yet confirmed
// (resent after a reload with the same client_msg_id) and the delivery
// states of the user's own messages.
const MAX_STATES = 2000;

export class Store {
  constructor(user, storage = window.localStorage) {
    this.key = `imchat:v1:${user}`;
    this.storage = storage;
    let s = null;
    try {
      s = JSON.parse(storage.getItem(this.key) || 'null');
    } catch {
      s = null;
    }
    this.s = {
      cursor: 0,
      convs: {},
      pending: [],
      states: {},
      ...(s || {}),
    };
  }

  save() {
    const states = Object.entries(this.s.states);
    if (states.length > MAX_STATES) {
      this.s.states = Object.fromEntries(states.slice(states.length - MAX_STATES));
    }
    this.storage.setItem(this.key, JSON.stringify(this.s));
  }

  get cursor() { return this.s.cursor; }
  set cursor(v) { if (v > this.s.cursor) { this.s.cursor = v; this.save(); } }

  conv(id) {
    if (!this.s.convs[id]) {
      this.s.convs[id] = { readSeq: 0, touched: Date.now() };
      this.save();
    }
    return this.s.convs[id];
  }
  convIds() { return Object.keys(this.s.convs); }
  markRead(id, seq) {
    const c = this.conv(id);
    if (seq > c.readSeq) { c.readSeq = seq; this.save(); }
  }
  touch(id) { this.conv(id).touched = Date.now(); this.save(); }

  get pending() { return this.s.pending; }
  addPending(p) { this.s.pending.push(p); this.save(); }
  updatePending(cmid, fields) {
    const p = this.s.pending.find((x) => x.client_msg_id === cmid);
    if (p) { Object.assign(p, fields); this.save(); }
    return p;
  }
  removePending(cmid) {
    const n = this.s.pending.length;
    this.s.pending = this.s.pending.filter((x) => x.client_msg_id !== cmid);
    if (this.s.pending.length !== n) this.save();
  }

  state(msgId) { return this.s.states[msgId]; }
  setState(msgId, state) {
    const rank = { sent: 1, stored: 2, delivered: 3 };
    const old = this.s.states[msgId];
    if (old && rank[old] >= rank[state]) return false;
    this.s.states[msgId] = state;
    this.save();
    return true;
  }
}
