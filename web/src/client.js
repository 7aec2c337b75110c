// The connection: WebSocket with protobuf frames (SPEC 3.1), reconnect
// with backoff, resend of unconfirmed sends with the same client_msg_id,
// DeliverAck of pushes, and the HTTP sync (GET /offline, conversation
// history) after each (re)connect. Emits events to the page.
import {
  encodeClientFrame, decodeServerFrame, messageFromProto, messageFromJson,
  DeliveryState, ErrorCode,
} from './proto.js';

const PING_MS = 20000;
const PONG_WAIT_MS = 10000;
const SEND_WAIT_MS = 12000;
const BACKOFF_MIN_MS = 300;
const BACKOFF_MAX_MS = 5000;
const PAGE = 200;

// Errors after which a resend cannot help.
const FINAL_ERRORS = new Set([
  ErrorCode.BAD_REQUEST, ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND,
  ErrorCode.TOO_LARGE, ErrorCode.BLOCKED, ErrorCode.UNAUTHENTICATED,
]);

export class Client extends EventTarget {
  constructor({ token, device, store, base = location }) {
    super();
    this.token = token;
    this.device = device;
    this.store = store;
    this.base = base;
    this.ws = null;
    this.state = 'offline';
    this.nextId = 1;
    this.waiting = new Map(); // frame id -> client_msg_id
    this.timers = new Map(); // client_msg_id -> resend timer
    this.acks = [];
    this.backoff = BACKOFF_MIN_MS;
    this.timer = null;
    this.pingTimer = null;
    this.pongTimer = null;
    this.stopped = false;
    this.syncing = null;
  }

  emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  setState(s, why = '') {
    this.state = s;
    this.emit('state', { state: s, why });
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.stopTimers();
    if (this.ws) this.ws.close(1000, 'signed out');
    this.ws = null;
    this.setState('offline');
  }

  connect() {
    clearTimeout(this.timer);
    const scheme = this.base.protocol === 'https:' ? 'wss' : 'ws';
    const q = new URLSearchParams({ token: this.token, device: this.device });
    const ws = new WebSocket(`${scheme}://${this.base.host}/ws?${q}`);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.welcomed = false;
    this.setState(this.everConnected ? 'reconnecting' : 'connecting');
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      let f;
      try {
        f = decodeServerFrame(ev.data);
      } catch {
        return;
      }
      this.onFrame(f);
    };
    ws.onclose = () => {
      if (ws !== this.ws) return;
      this.ws = null;
      this.stopTimers();
      this.waiting.clear();
      if (this.stopped) return;
      const failedBeforeWelcome = !this.welcomed;
      this.setState('offline', 'connection lost');
      if (failedBeforeWelcome) this.checkToken();
      const delay = this.backoff * (0.75 + Math.random() * 0.5);
      this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
      this.emit('retry', { delay });
      this.timer = setTimeout(() => this.connect(), delay);
    };
  }

  // A connection refused before Welcome: a 401 on the API means the
  // token is bad or expired, not that the server is away.
  async checkToken() {
    try {
      const r = await fetch('/offline?cursor=0&limit=1', { headers: this.auth() });
      if (r.status === 401) {
        this.stop();
        this.emit('unauthorized', {});
      }
    } catch { /* server away: keep retrying */ }
  }

  auth() { return { Authorization: `Bearer ${this.token}`, Accept: 'application/json' }; }

  stopTimers() {
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }

  raw(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN || !this.welcomed) return 0;
    const id = this.nextId++;
    this.ws.send(encodeClientFrame({ id, ...frame }));
    return id;
  }

  onFrame(f) {
    switch (f.body) {
      case 'welcome':
        this.welcomed = true;
        this.everConnected = true;
        this.backoff = BACKOFF_MIN_MS;
        this.me = f.welcome.user_id;
        this.setState('online');
        this.emit('welcome', { user: f.welcome.user_id, device: f.welcome.device_id });
        this.pingTimer = setInterval(() => this.ping(), PING_MS);
        this.flushPending();
        this.sync();
        break;
      case 'send_ack': {
        const a = f.send_ack;
        this.waiting.delete(Number(f.id));
        const p = this.store.updatePending(a.client_msg_id, {
          msg_id: a.msg_id, seq: Number(a.seq), conversation_id: a.conversation_id,
          sent_at_ms: Number(a.sent_at_ms),
        });
        this.clearTimer(a.client_msg_id);
        this.store.setState(a.msg_id, 'sent');
        this.emit('ack', { client_msg_id: a.client_msg_id, msg_id: a.msg_id, seq: Number(a.seq),
          conversation_id: a.conversation_id, sent_at_ms: Number(a.sent_at_ms) });
        break;
      }
      case 'status': {
        const s = f.status;
        const state = s.state === DeliveryState.DELIVERED ? 'delivered' : 'stored';
        this.clearTimer(s.client_msg_id);
        this.store.setState(s.msg_id, state);
        this.store.removePending(s.client_msg_id);
        this.emit('status', { msg_id: s.msg_id, client_msg_id: s.client_msg_id, state });
        break;
      }
      case 'deliver': {
        const m = messageFromProto(f.deliver.message);
        this.acks.push(m.msg_id);
        queueMicrotask(() => this.flushAcks());
        this.emit('message', { message: m, live: true });
        break;
      }
      case 'error': {
        const cmid = this.waiting.get(Number(f.id));
        this.waiting.delete(Number(f.id));
        const e = f.error;
        if (cmid && FINAL_ERRORS.has(e.code)) {
          this.clearTimer(cmid);
          this.store.removePending(cmid);
          this.emit('failed', { client_msg_id: cmid, code: e.code, message: e.message });
        } else if (cmid) {
          // UNAVAILABLE, RATE_LIMITED, INTERNAL: try again shortly.
          this.clearTimer(cmid);
          this.timers.set(cmid, setTimeout(() => this.resend(cmid), 1000));
        } else {
          this.emit('error', { code: e.code, message: e.message });
        }
        break;
      }
      case 'pong':
        clearTimeout(this.pongTimer);
        break;
      default:
        break;
    }
  }

  flushAcks() {
    if (this.acks.length === 0) return;
    const ids = this.acks.splice(0);
    this.raw({ deliver_ack: { msg_ids: ids } });
  }

  ping() {
    if (!this.raw({ ping: { client_time_ms: Date.now() } })) return;
    clearTimeout(this.pongTimer);
    this.pongTimer = setTimeout(() => { if (this.ws) this.ws.close(); }, PONG_WAIT_MS);
  }

  // Queues a text message; it is sent now if connected, else on the
  // next connection, and resent until the server confirms it.
  send(to, isGroup, text, conversationId) {
    const p = {
      client_msg_id: `web-${crypto.randomUUID()}`,
      to, group: isGroup, body: text, conversation_id: conversationId,
      created_ms: Date.now(),
    };
    this.store.addPending(p);
    this.sendPending(p);
    return p;
  }

  clearTimer(cmid) {
    clearTimeout(this.timers.get(cmid));
    this.timers.delete(cmid);
  }

  // Sends the pending message cmid again, if it is still unconfirmed.
  resend(cmid) {
    this.timers.delete(cmid);
    const p = this.store.findPending(cmid);
    if (p && !p.msg_id) this.sendPending(p);
  }

  sendPending(p) {
    this.clearTimer(p.client_msg_id);
    const id = this.raw({
      send: {
        client_msg_id: p.client_msg_id,
        ...(p.group ? { group_id: p.to } : { user_id: p.to }),
        body: new TextEncoder().encode(p.body),
        content_type: 'text/plain; charset=utf-8',
      },
    });
    if (!id) return;
    this.waiting.set(id, p.client_msg_id);
    // No SendAck in time: send again (the server deduplicates).
    this.timers.set(p.client_msg_id, setTimeout(() => this.resend(p.client_msg_id), SEND_WAIT_MS));
  }

  flushPending() {
    for (const p of this.store.pending) this.sendPending(p);
  }

  // Messages missed while away: the offline inbox from the saved cursor,
  // then the history of every known conversation after what is shown.
  sync(afterSeq = null) {
    if (this.syncing) { this.resync = true; return this.syncing; }
    this.syncing = (async () => {
      try {
        await this.syncOffline();
        for (const id of this.store.convIds()) {
          await this.syncHistory(id, afterSeq ? afterSeq(id) : 0);
        }
        this.emit('synced', {});
      } catch (e) {
        this.emit('error', { message: `sync failed: ${e.message}` });
      } finally {
        this.syncing = null;
        if (this.resync) { this.resync = false; this.sync(afterSeq); }
      }
    })();
    return this.syncing;
  }

  async page(url) {
    const r = await fetch(url, { headers: this.auth() });
    if (r.status === 401) { this.stop(); this.emit('unauthorized', {}); throw new Error('unauthorized'); }
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
    return r.json();
  }

  async syncOffline() {
    for (let i = 0; i < 50; i++) {
      const pg = await this.page(`/offline?cursor=${this.store.cursor}&limit=${PAGE}`);
      for (const m of pg.messages || []) this.emit('message', { message: messageFromJson(m), live: false });
      if (pg.next_cursor) this.store.cursor = Number(pg.next_cursor);
      if (!pg.has_more) return;
    }
  }

  async syncHistory(conv, after) {
    let seq = after;
    for (let i = 0; i < 50; i++) {
      const pg = await this.page(
        `/v1/conversations/${encodeURIComponent(conv)}/messages?after_seq=${seq}&limit=${PAGE}`);
      for (const m of pg.messages || []) {
        const msg = messageFromJson(m);
        // In the history: durable. Stop resending it.
        if (msg.from_user === this.me && msg.client_msg_id) {
          this.store.setState(msg.msg_id, 'sent');
          this.store.removePending(msg.client_msg_id);
        }
        this.emit('message', { message: msg, live: false });
      }
      if (pg.next_cursor) seq = Number(pg.next_cursor);
      if (!pg.has_more) return;
    }
  }
}
