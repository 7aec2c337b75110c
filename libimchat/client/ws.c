/*
 * The client's WebSocket: the upgrade request and the check of its 101
 * answer, wslay's client context (masked frames), and the ServerFrames
 * that come back.
 */
#include "client/client_int.h"
#include "protocol/http.h"
#include "protocol/pbcheck.h"

#include <stdio.h>
#include <string.h>

/* A ServerFrame larger than this closes the connection (1009). */
#define MAX_FRAME (1024 * 1024 + 4096)

static ssize_t ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                          int flags, void *ud) {
  imc_client *c = ud;
  (void)flags;
  if (c->in_len == 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  size_t n = len < c->in_len ? len : c->in_len;
  memcpy(buf, c->in, n);
  c->in += n;
  c->in_len -= n;
  return (ssize_t)n;
}

static ssize_t ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data,
                          size_t len, int flags, void *ud) {
  imc_client *c = ud;
  (void)flags;
  if (cl_out_append(c, data, len) != 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  return (ssize_t)len;
}

static int ws_genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                         void *ud) {
  if (cl_random(ud, buf, len) != 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  return 0;
}

static void
ws_frame_start_cb(wslay_event_context_ptr ctx,
                  const struct wslay_event_on_frame_recv_start_arg *a,
                  void *ud) {
  imc_client *c = ud;
  (void)ctx;
  (void)a;
  c->ping_deadline = 0; /* the server is alive */
}

static void on_welcome(imc_client *c, const Imchat__V1__Welcome *w) {
  if (c->state != IMC_CLIENT_HANDSHAKE)
    return;
  if (imc_id_valid(w->user_id, strlen(w->user_id)) &&
      strcmp(w->user_id, c->user_id) != 0) {
    snprintf(c->user_id, sizeof(c->user_id), "%s", w->user_id);
    cl_kv_put_str(c, "user_id", c->user_id);
  }
  c->hb_ms = c->o.heartbeat_ms ? c->o.heartbeat_ms
             : w->heartbeat_s  ? w->heartbeat_s * 1000
                               : 30000;
  int64_t now = cl_now(c);
  c->next_ping = now + c->hb_ms;
  c->ping_deadline = 0;
  c->hs_deadline = 0;
  c->attempt = 0;
  c->want_sync = 1;
  cl_set_state(c, IMC_CLIENT_ONLINE, 0);
  if (c->state == IMC_CLIENT_ONLINE && c->drop_reason == 0)
    cl_outbox_flush(c);
}

static void on_deliver(imc_client *c, const Imchat__V1__Deliver *d) {
  if (d->message == NULL)
    return;
  imc_msg m;
  memset(&m, 0, sizeof(m));
  imc_msg_from_pb(&m, d->message);
  int rv = cl_inbox_take(c, &m, 0);
  if (rv < 0) {
    /* Not recorded: no ACK, so the server keeps it for the slow path. */
    cl_log(c, IMC_LOG_WARN, "client: message %s not taken: %s", m.msg_id,
           imc_strerror(rv));
    return;
  }
  Imchat__V1__DeliverAck a = IMCHAT__V1__DELIVER_ACK__INIT;
  char *ids[1] = {(char *)m.msg_id};
  a.n_msg_ids = 1;
  a.msg_ids = ids;
  Imchat__V1__ClientFrame f = IMCHAT__V1__CLIENT_FRAME__INIT;
  f.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_DELIVER_ACK;
  f.deliver_ack = &a;
  cl_send_frame(c, &f);
}

static void on_binary(imc_client *c, const uint8_t *data, size_t len) {
  if (imc_pb_check_strings(&imchat__v1__server_frame__descriptor, data, len) !=
      0) {
    cl_drop(c, IMC_ERR_PROTO);
    return;
  }
  Imchat__V1__ServerFrame *f =
      imchat__v1__server_frame__unpack(&c->pba, len, data);
  if (f == NULL) {
    cl_drop(c, IMC_ERR_PROTO);
    return;
  }
  switch (f->body_case) {
  case IMCHAT__V1__SERVER_FRAME__BODY_WELCOME:
    on_welcome(c, f->welcome);
    break;
  case IMCHAT__V1__SERVER_FRAME__BODY_DELIVER:
    on_deliver(c, f->deliver);
    break;
  case IMCHAT__V1__SERVER_FRAME__BODY_SEND_ACK:
    cl_outbox_on_ack(c, f->send_ack);
    break;
  case IMCHAT__V1__SERVER_FRAME__BODY_STATUS:
    cl_outbox_on_status(c, f->status);
    break;
  case IMCHAT__V1__SERVER_FRAME__BODY_ERROR:
    cl_outbox_on_error(c, f->id, f->error);
    break;
  default: /* Pong, and bodies of later versions */
    break;
  }
  imchat__v1__server_frame__free_unpacked(f, &c->pba);
}

static void ws_msg_cb(wslay_event_context_ptr ctx,
                      const struct wslay_event_on_msg_recv_arg *a, void *ud) {
  imc_client *c = ud;
  (void)ctx;
  switch (a->opcode) {
  case WSLAY_BINARY_FRAME:
    if (c->drop_reason == 0)
      on_binary(c, a->msg, a->msg_length);
    break;
  case WSLAY_CONNECTION_CLOSE:
    cl_log(c, IMC_LOG_INFO, "client: server closed with %u",
           (unsigned)a->status_code);
    cl_drop(c, IMC_ERR_CLOSED);
    break;
  default:
    break;
  }
}

int cl_ws_begin(imc_client *c) {
  uint8_t nonce[16];
  int rv = cl_random(c, nonce, sizeof(nonce));
  if (rv != 0)
    return rv;
  imc_wbuf key;
  imc_wbuf_init(&key, &c->mem);
  imc_wbuf_base64(&key, nonce, sizeof(nonce));
  if (key.err) {
    imc_wbuf_free(&key);
    return IMC_ERR_NOMEM;
  }
  imc_span ks = {key.p, key.len};
  imc_ws_accept(ks, c->ws_accept);
  imc_wbuf r;
  imc_wbuf_init(&r, &c->mem);
  imc_wbuf_printf(&r,
                  "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: %.*s\r\n"
                  "Sec-WebSocket-Version: 13\r\n"
                  "Authorization: Bearer %s\r\n\r\n",
                  c->o.ws_path, c->o.host, (int)key.len, key.p, c->o.token);
  imc_wbuf_free(&key);
  rv = r.err ? IMC_ERR_NOMEM : cl_out_append(c, r.p, r.len);
  imc_wbuf_free(&r);
  return rv;
}

void cl_ws_end(imc_client *c) {
  if (c->ws) {
    wslay_event_context_free(c->ws);
    c->ws = NULL;
  }
}

/* Checks the answer to the upgrade; returns 0 or the reason to drop. */
static int check_upgrade(imc_client *c, const uint8_t *head, size_t hl) {
  int status = 0;
  const uint8_t *body;
  size_t bl;
  int rv = cl_http_response(head, hl, &status, &body, &bl);
  if (rv == IMC_ERR_INCOMPLETE)
    rv = 0; /* a 101 has no body; the head is all we look at */
  if (rv != 0)
    return IMC_ERR_PROTO;
  if (status == 401) {
    cl_log(c, IMC_LOG_ERROR, "client: the gateway refused the token (401)");
    return IMC_ERR_AUTH;
  }
  if (status != 101) {
    cl_log(c, IMC_LOG_ERROR, "client: upgrade answered %d", status);
    return status == 429 || status >= 500 ? IMC_ERR_UNAVAILABLE : IMC_ERR_PROTO;
  }
  const char *v;
  size_t vl;
  imc_span sv;
  if (!cl_http_header(head, hl, "Upgrade", &v, &vl) ||
      (sv.p = v, sv.len = vl, !imc_span_ieq(sv, "websocket")) ||
      !cl_http_header(head, hl, "Sec-WebSocket-Accept", &v, &vl) || vl != 28 ||
      memcmp(v, c->ws_accept, 28) != 0) {
    cl_log(c, IMC_LOG_ERROR,
           "client: bad 101 (Upgrade or "
           "Sec-WebSocket-Accept)");
    return IMC_ERR_PROTO;
  }
  return 0;
}

static void feed_wslay(imc_client *c, const uint8_t *data, size_t len) {
  c->in = data;
  c->in_len = len;
  c->in_wslay = 1;
  int rv = wslay_event_recv(c->ws);
  /* Answers wslay queued (pongs, the reply to a close frame) and our
   * frames queued from callbacks; a dropping connection still says them. */
  if (wslay_event_want_write(c->ws)) {
    int sv = wslay_event_send(c->ws);
    if (rv == 0 && c->drop_reason == 0)
      rv = sv;
  }
  c->in_wslay = 0;
  c->in = NULL;
  c->in_len = 0;
  if (c->drop_reason) {
    cl_after_wslay(c);
    return;
  }
  if (rv != 0)
    cl_drop(c, rv == WSLAY_ERR_NOMEM ? IMC_ERR_NOMEM : IMC_ERR_PROTO);
  else if (c->ws && !wslay_event_get_read_enabled(c->ws))
    cl_drop(c, IMC_ERR_CLOSED);
}

void cl_ws_recv(imc_client *c, const uint8_t *data, size_t len) {
  if (c->ws == NULL) {
    /* Still reading the answer to the upgrade. */
    if (c->hs_len + len > 16384) {
      cl_drop(c, IMC_ERR_PROTO);
      return;
    }
    if (c->hs_len + len > c->hs_cap) {
      size_t cap = c->hs_len + len + 256;
      uint8_t *p = imc_realloc(&c->mem, c->hs, cap);
      if (p == NULL) {
        cl_drop(c, IMC_ERR_NOMEM);
        return;
      }
      c->hs = p;
      c->hs_cap = cap;
    }
    if (len)
      memcpy(c->hs + c->hs_len, data, len);
    c->hs_len += len;
    size_t hl = cl_http_head_len(c->hs, c->hs_len);
    if (hl == 0)
      return;
    int rv = check_upgrade(c, c->hs, hl);
    if (rv != 0) {
      cl_drop(c, rv);
      return;
    }
    if (wslay_event_context_client_init(&c->ws, &c->wscb, c) != 0) {
      c->ws = NULL;
      cl_drop(c, IMC_ERR_NOMEM);
      return;
    }
    wslay_event_config_set_max_recv_msg_length(c->ws, MAX_FRAME);
    /* Frames that came with the head (the Welcome, often). */
    uint8_t *hs = c->hs;
    size_t rest = c->hs_len - hl;
    c->hs = NULL;
    c->hs_len = c->hs_cap = 0;
    if (rest)
      feed_wslay(c, hs + hl, rest);
    imc_free(&c->mem, hs);
    return;
  }
  if (len)
    feed_wslay(c, data, len);
}

int cl_send_frame(imc_client *c, const Imchat__V1__ClientFrame *f) {
  if (c->ws == NULL)
    return IMC_ERR_CLOSED;
  size_t len = imchat__v1__client_frame__get_packed_size(f);
  uint8_t *buf = imc_malloc(&c->mem, len ? len : 1);
  if (buf == NULL) {
    cl_drop(c, IMC_ERR_NOMEM);
    return IMC_ERR_NOMEM;
  }
  imchat__v1__client_frame__pack(f, buf);
  struct wslay_event_msg m = {WSLAY_BINARY_FRAME, buf, len};
  int rv = wslay_event_queue_msg(c->ws, &m);
  if (rv == 0 && !c->in_wslay)
    rv = wslay_event_send(c->ws);
  imc_free(&c->mem, buf);
  if (rv != 0) {
    cl_drop(c, IMC_ERR_NOMEM);
    return IMC_ERR_NOMEM;
  }
  return 0;
}

int cl_send_ping(imc_client *c) {
  Imchat__V1__Ping p = IMCHAT__V1__PING__INIT;
  p.client_time_ms = imc_clock_wall(&c->o.clock);
  Imchat__V1__ClientFrame f = IMCHAT__V1__CLIENT_FRAME__INIT;
  f.id = c->ping_id++;
  f.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_PING;
  f.ping = &p;
  return cl_send_frame(c, &f);
}

void cl_ws_callbacks_init(imc_client *c) {
  memset(&c->wscb, 0, sizeof(c->wscb));
  c->wscb.recv_callback = ws_recv_cb;
  c->wscb.send_callback = ws_send_cb;
  c->wscb.genmask_callback = ws_genmask_cb;
  c->wscb.on_frame_recv_start_callback = ws_frame_start_cb;
  c->wscb.on_msg_recv_callback = ws_msg_cb;
}
