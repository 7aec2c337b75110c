// Rendering: the conversation list and the open conversation. Plain DOM,
// text only (textContent), no inline script or style (see the CSP).
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'type' || k === 'title') e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

const STATE_TEXT = {
  sending: 'sending…',
  sent: 'sent',
  stored: 'stored',
  delivered: 'delivered',
  failed: 'not sent',
};
const STATE_MARK = { sending: '◷', sent: '✓', stored: '✓', delivered: '✓✓', failed: '!' };

export function title(conv) {
  return conv.isGroup ? `#${conv.peer}` : conv.peer;
}

function time(ms) {
  if (!ms) return '';
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

export function renderConnection(state, detail) {
  const c = $('conn-state');
  c.dataset.state = state;
  const text = { online: 'online', connecting: 'connecting…', reconnecting: 'reconnecting…', offline: 'offline' }[state] || state;
  c.textContent = detail ? `${text} (${detail})` : text;
}

export function renderList(convs, current, onOpen) {
  const list = $('conv-list');
  const sorted = [...convs.values()].sort((a, b) => b.lastActivity - a.lastActivity);
  list.replaceChildren(...sorted.map((conv) => {
    const unread = conv.unread();
    const last = conv.last();
    const b = el('button', {
      type: 'button', class: 'conv', 'data-conv': conv.id,
      'aria-current': conv.id === current ? 'true' : 'false',
    },
    el('span', { class: 'conv-name', textContent: title(conv) }),
    el('span', { class: 'conv-last', textContent: last ? `${last.from_user}: ${last.body}` : '' }),
    unread > 0 ? el('span', { class: 'unread', 'data-unread': String(unread), 'aria-label': `${unread} unread`, textContent: String(unread) }) : null);
    b.addEventListener('click', () => onOpen(conv.id));
    return el('li', {}, b);
  }));
}

export function renderMessages(conv, me) {
  const box = $('messages');
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  if (!conv) {
    $('conv-title').textContent = 'No conversation';
    box.replaceChildren(el('li', { class: 'empty', textContent: 'Open a conversation on the left.' }));
    return;
  }
  $('conv-title').textContent = title(conv);
  const items = conv.sorted().map((m) => {
    const mine = m.from_user === me;
    const state = mine ? m.state || 'sending' : null;
    return el('li', {
      class: `msg ${mine ? 'mine' : 'theirs'}`,
      'data-msg-id': m.msg_id || '',
      'data-client-msg-id': m.client_msg_id || '',
      'data-seq': String(m.seq || 0),
      ...(state ? { 'data-state': state } : {}),
    },
    conv.isGroup && !mine ? el('span', { class: 'from', textContent: m.from_user }) : null,
    el('span', { class: 'body', textContent: m.body }),
    el('span', { class: 'meta' },
      el('time', { textContent: time(m.sent_at_ms || m.created_ms) }),
      state ? el('span', { class: 'state', title: STATE_TEXT[state], textContent: ` ${STATE_MARK[state]} ${STATE_TEXT[state]}` }) : null));
  });
  box.replaceChildren(...items);
  if (atBottom || conv.scrollToEnd) {
    box.scrollTop = box.scrollHeight;
    conv.scrollToEnd = false;
  }
}
