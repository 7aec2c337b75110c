// The imchat web chat page: sign-in, conversations, and the wiring of the
// connection (client.js) to the page (ui.js).
import './style.css';
import { Client } from './client.js';
import { Store } from './store.js';
import { conversationId } from './proto.js';
import { renderConnection, renderList, renderMessages } from './ui.js';

const $ = (id) => document.getElementById(id);
const ID = /^[A-Za-z0-9_.@-]{1,64}$/;

// ---- sign-in --------------------------------------------------------------

// The token's subject (for the UI only: the server checks the token).
function tokenUser(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part)).sub || null;
  } catch {
    return null;
  }
}

function takeTokenFromUrl() {
  const u = new URL(location.href);
  const t = u.searchParams.get('token');
  if (!t) return null;
  // Keep the token out of the address bar and the history.
  u.searchParams.delete('token');
  history.replaceState(null, '', u.pathname + (u.search || '') + u.hash);
  return t;
}

function deviceId() {
  let d = sessionStorage.getItem('imchat:device');
  if (!d) {
    d = `web-${crypto.randomUUID().slice(0, 8)}`;
    sessionStorage.setItem('imchat:device', d);
  }
  return d;
}

function showSignIn(error = '') {
  $('signin').hidden = false;
  $('chat').hidden = true;
  $('sign-out').hidden = true;
  $('me').textContent = '';
  $('signin-error').textContent = error;
  $('dev-user').focus();
}

$('token-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const t = $('token-input').value.trim();
  if (!tokenUser(t)) {
    $('signin-error').textContent = 'That is not a JWT.';
    return;
  }
  start(t);
});

$('dev-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const user = $('dev-user').value.trim();
  $('signin-error').textContent = '';
  try {
    const r = await fetch('/dev/login', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ user }),
    });
    if (r.status === 404) throw new Error('this server has no development login (imchatd --dev-login)');
    const j = await r.json();
    if (!r.ok) throw new Error(j.error ? j.error.message : `HTTP ${r.status}`);
    start(j.token);
  } catch (e) {
    $('signin-error').textContent = `Sign-in failed: ${e.message}`;
  }
});

$('sign-out').addEventListener('click', () => {
  sessionStorage.removeItem('imchat:token');
  if (app) app.client.stop();
  app = null;
  showSignIn();
});

// ---- conversations ---------------------------------------------------------

class Conversation {
  constructor(id, me, store) {
    this.id = id;
    this.store = store;
    this.isGroup = id.startsWith('g:');
    const [, a, b] = id.split(':');
    this.peer = this.isGroup ? id.slice(2) : a === me ? b : a;
    this.msgs = new Map(); // msg_id (or "c:"+client_msg_id while pending) -> message
    this.lastActivity = store.conv(id).touched || 0;
  }

  add(m) {
    if (m.msg_id && this.msgs.has(m.msg_id)) return false; // seen: never twice
    if (m.client_msg_id && this.msgs.has(`c:${m.client_msg_id}`)) {
      const p = this.msgs.get(`c:${m.client_msg_id}`);
      if (!m.msg_id) return false;
      this.msgs.delete(`c:${m.client_msg_id}`);
      m.state = m.state || p.state;
    }
    this.msgs.set(m.msg_id || `c:${m.client_msg_id}`, m);
    this.lastActivity = Math.max(this.lastActivity, m.sent_at_ms || m.created_ms || 0);
    return true;
  }

  sorted() {
    return [...this.msgs.values()].sort((x, y) => {
      if (!x.seq !== !y.seq) return x.seq ? -1 : 1; // pending last
      return x.seq ? x.seq - y.seq : x.created_ms - y.created_ms;
    });
  }

  // Highest seq such that 1..seq are all here.
  contiguous() {
    const seqs = new Set([...this.msgs.values()].map((m) => m.seq).filter(Boolean));
    let s = 0;
    while (seqs.has(s + 1)) s++;
    return s;
  }

  maxSeq() {
    let s = 0;
    for (const m of this.msgs.values()) s = Math.max(s, m.seq || 0);
    return s;
  }

  last() { const l = this.sorted(); return l[l.length - 1]; }

  unread() {
    const read = this.store.conv(this.id).readSeq;
    let n = 0;
    for (const m of this.msgs.values()) if (m.seq > read && m.from_user !== app.me) n++;
    return n;
  }
}

let app = null;

function start(token) {
  const me = tokenUser(token);
  if (!me) return showSignIn('That token has no user.');
  sessionStorage.setItem('imchat:token', token);
  if (app) app.client.stop();
  const store = new Store(me);
  const client = new Client({ token, device: deviceId(), store });
  app = { me, store, client, convs: new Map(), current: null, drawQueued: false };
  for (const id of store.convIds()) conv(id);
  for (const p of store.pending) addPending(p);

  $('signin').hidden = true;
  $('chat').hidden = false;
  $('sign-out').hidden = false;
  $('me').textContent = `signed in as ${me}`;
  $('chat').dataset.view = 'list';

  client.addEventListener('state', (e) => renderConnection(e.detail.state, e.detail.why));
  client.addEventListener('welcome', (e) => { app.me = e.detail.user; $('me').textContent = `signed in as ${app.me}`; });
  client.addEventListener('message', (e) => onMessage(e.detail.message, e.detail.live));
  client.addEventListener('ack', (e) => {
    const d = e.detail;
    const c = conv(d.conversation_id);
    const p = c.msgs.get(`c:${d.client_msg_id}`);
    if (p) {
      c.msgs.delete(`c:${d.client_msg_id}`);
      if (!c.msgs.has(d.msg_id)) {
        c.msgs.set(d.msg_id, { ...p, msg_id: d.msg_id, seq: d.seq, sent_at_ms: d.sent_at_ms, state: bestState(d.msg_id, 'sent') });
      }
    }
    draw();
  });
  client.addEventListener('status', (e) => {
    for (const c of app.convs.values()) {
      const m = c.msgs.get(e.detail.msg_id) || c.msgs.get(`c:${e.detail.client_msg_id}`);
      if (m) m.state = bestState(e.detail.msg_id, e.detail.state);
    }
    draw();
  });
  client.addEventListener('failed', (e) => {
    for (const c of app.convs.values()) {
      const m = c.msgs.get(`c:${e.detail.client_msg_id}`);
      if (m) { m.state = 'failed'; m.error = e.detail.message; }
    }
    draw();
  });
  client.addEventListener('unauthorized', () => {
    sessionStorage.removeItem('imchat:token');
    showSignIn('The server refused the token (bad or expired). Sign in again.');
  });
  client.addEventListener('synced', () => draw());
  client.start();
  draw();
  $('open-input').focus();
}

function bestState(msgId, state) {
  app.store.setState(msgId, state);
  return app.store.state(msgId) || state;
}

function conv(id) {
  let c = app.convs.get(id);
  if (!c) {
    c = new Conversation(id, app.me, app.store);
    app.convs.set(id, c);
  }
  return c;
}

function addPending(p) {
  const c = conv(p.conversation_id);
  c.add({
    client_msg_id: p.client_msg_id, from_user: app.me, body: p.body,
    created_ms: p.created_ms, state: 'sending', seq: 0, msg_id: '',
  });
}

function onMessage(m, live) {
  const c = conv(m.conversation_id);
  if (m.from_user === app.me) m.state = app.store.state(m.msg_id) || 'sent';
  const fresh = c.add(m);
  if (fresh) app.store.touch(c.id);
  if (fresh && c.id === app.current && document.visibilityState === 'visible') {
    app.store.markRead(c.id, c.maxSeq());
    c.scrollToEnd = true;
  }
  // A gap in seq: fetch the history from the last contiguous one.
  if (live && m.seq > c.contiguous() + 1) {
    app.client.sync((id) => app.convs.get(id)?.contiguous() || 0);
  }
  draw();
}

function open(id) {
  app.current = id;
  const c = conv(id);
  app.store.markRead(id, c.maxSeq());
  c.scrollToEnd = true;
  $('chat').dataset.view = 'conversation';
  $('composer-input').disabled = false;
  $('send').disabled = false;
  draw();
  $('composer-input').focus();
  // A conversation opened for the first time: its history.
  if (c.msgs.size === 0 && app.client.state === 'online') app.client.syncHistory(id, 0).then(draw, () => {});
}

function draw() {
  if (!app || app.drawQueued) return;
  app.drawQueued = true;
  requestAnimationFrame(() => {
    if (!app) return;
    app.drawQueued = false;
    renderList(app.convs, app.current, open);
    renderMessages(app.current ? app.convs.get(app.current) : null, app.me);
  });
}

// ---- forms and keys --------------------------------------------------------

$('open-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const v = $('open-input').value.trim();
  const isGroup = v.startsWith('#');
  const peer = isGroup ? v.slice(1) : v;
  if (!ID.test(peer)) return;
  $('open-input').value = '';
  const id = conversationId(app.me, peer, isGroup);
  app.store.touch(id);
  open(id);
});

function sendCurrent() {
  const input = $('composer-input');
  const text = input.value;
  if (!text.trim() || !app.current) return;
  const c = conv(app.current);
  const p = app.client.send(c.peer, c.isGroup, text, c.id);
  addPending(p);
  app.store.touch(c.id);
  c.scrollToEnd = true;
  input.value = '';
  draw();
}

$('composer').addEventListener('submit', (ev) => { ev.preventDefault(); sendCurrent(); });
$('composer-input').addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    sendCurrent();
  }
  if (ev.key === 'Escape') back();
});

function back() {
  $('chat').dataset.view = 'list';
  const b = document.querySelector(`[data-conv="${CSS.escape(app.current || '')}"]`);
  (b || $('open-input')).focus();
}
$('back').addEventListener('click', back);

// Alt+ArrowUp / Alt+ArrowDown: previous / next conversation.
document.addEventListener('keydown', (ev) => {
  if (!app || !ev.altKey || (ev.key !== 'ArrowUp' && ev.key !== 'ArrowDown')) return;
  const ids = [...document.querySelectorAll('[data-conv]')].map((b) => b.dataset.conv);
  if (ids.length === 0) return;
  const i = ids.indexOf(app.current);
  const j = ev.key === 'ArrowUp' ? Math.max(0, i - 1) : Math.min(ids.length - 1, i + 1);
  ev.preventDefault();
  open(ids[i < 0 ? 0 : j]);
});

document.addEventListener('visibilitychange', () => {
  if (app && app.current && document.visibilityState === 'visible') {
    app.store.markRead(app.current, conv(app.current).maxSeq());
    draw();
  }
});

// ---- start -----------------------------------------------------------------

const initial = takeTokenFromUrl() || sessionStorage.getItem('imchat:token');
if (initial) start(initial);
else showSignIn();
