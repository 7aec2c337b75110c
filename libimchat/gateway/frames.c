/*
 * Client frames: every frame header checked first (protocol/wsframe.h),
 * close frames read here, data and ping frames through wslay, and the
 * handlers of SendRequest, DeliverAck and Ping.
 */
#include "gateway/gateway_int.h"
#include "protocol/pbcheck.h"
#include "protocol/utf8.h"

#include <stdio.h>
#include <string.h>

/* The answer to a send, in request order (see pending.c). */
static void send_done(void *ud, int status, const imc_send_result *res,
                      const char *message) {
  pending *p = ud;
  imc_conn *c = p->c;
  if (c == NULL || c->state != ST_WS) {
    gw_pending_free(p);
    return;
  }
  uint8_t *buf = NULL;
  size_t len = 0;
  if (status != 0) {
    gw_pack_error(c->gw, p->frame_id, status, message, &buf, &len);
  } else {
    Imchat__V1__SendAck a = IMCHAT__V1__SEND_ACK__INIT;
    a.msg_id = (char *)res->msg_id;
    a.conversation_id = (char *)res->conversation_id;
    a.seq = res->seq;
    a.sent_at_ms = res->sent_at_ms;
    a.client_msg_id = (char *)(res->client_msg_id ? res->client_msg_id : "");
    Imchat__V1__ServerFrame f = IMCHAT__V1__SERVER_FRAME__INIT;
    f.id = p->frame_id;
    f.body_case = IMCHAT__V1__SERVER_FRAME__BODY_SEND_ACK;
    f.send_ack = &a;
    if (imc_pb_pack_server_frame(&f, &c->gw->mem, &buf, &len) != 0)
      buf = NULL;
  }
  /* Without memory for the answer the client resends after its own
   * timeout, as for a lost frame. */
  p->answered = 1;
  p->answer = buf;
  p->answer_len = buf ? len : 0;
  gw_pending_drain(c);
}

/* Answers a send of c with an Error after the answers of its older
 * sends, which may still be with the upstream. */
void gw_send_error_ordered(imc_conn *c, uint64_t id, int rv,
                           const char *message) {
  if (c->pend_head == NULL) {
    gw_send_error(c, id, rv, message);
    return;
  }
  if (c->n_sends >= 2 * (uint64_t)c->gw->o.max_conn_sends) {
    /* Only a host that reads on while paused gets here: order cannot be
     * kept without holding unbounded answers. */
    gw_ws_close(c, 1008, "too many requests in flight");
    return;
  }
  pending *p = gw_pending_new(c, PEND_SEND);
  if (p == NULL) {
    gw_send_error(c, id, rv, message);
    return;
  }
  p->frame_id = id;
  p->deadline = INT64_MAX;
  p->answered = 1;
  if (gw_pack_error(c->gw, id, rv, message, &p->answer, &p->answer_len) != 0)
    p->answer_len = 0;
  gw_flow_admitted(c);
}

/* Refills b for the time since its last refill, up to burst sends. */
static void bucket_refill(rate_bucket *b, int64_t now, uint32_t per_s,
                          uint32_t burst) {
  int64_t cap = (int64_t)burst * 1000;
  if (now > b->at)
    b->tokens += (now - b->at) * (int64_t)per_s;
  if (b->tokens > cap)
    b->tokens = cap;
  b->at = now;
}

/*
 * Takes one send from the connection's bucket and from its user's, which
 * every device of the user shares (so devices do not multiply the rate).
 * Nothing is taken unless both have one.
 */
static int rate_take(imc_conn *c) {
  imc_gateway *gw = c->gw;
  int64_t now = now_ms(gw);
  rate_bucket *ub = &c->u->bucket;
  bucket_refill(&c->bucket, now, gw->o.rate, gw->o.burst);
  bucket_refill(ub, now, gw->o.user_rate, gw->o.user_burst);
  if (c->bucket.tokens < 1000 || ub->tokens < 1000)
    return 0;
  c->bucket.tokens -= 1000;
  ub->tokens -= 1000;
  return 1;
}

/* Hands an admitted send to the upstream. */
void gw_start_send(imc_conn *c, uint64_t id, const Imchat__V1__SendRequest *s) {
  imc_gateway *gw = c->gw;
  imc_send_req req;
  req.struct_size = sizeof(req);
  req.from_user = c->user;
  req.from_device = c->device;
  req.node_id = gw->o.node_id;
  req.conn_id = c->id;
  req.client_msg_id = s->client_msg_id;
  req.to_user =
      s->to_case == IMCHAT__V1__SEND_REQUEST__TO_USER_ID ? s->user_id : "";
  req.group_id =
      s->to_case == IMCHAT__V1__SEND_REQUEST__TO_GROUP_ID ? s->group_id : "";
  req.body = s->body.data;
  req.body_len = s->body.len;
  req.content_type = s->content_type;
  pending *p = gw_pending_new(c, PEND_SEND);
  if (p == NULL) {
    gw_send_error_ordered(c, id, IMC_ERR_NOMEM, "out of memory");
    return;
  }
  p->frame_id = id;
  p->deadline = now_ms(gw) + gw->o.send_ms;
  gw_flow_admitted(c);
  int rv = gw->o.upstream.send(gw->o.upstream_ud, &req, send_done, p);
  if (rv != 0) {
    /* No completion will come: the record becomes the answer. */
    send_done(p, rv, NULL, NULL);
    return;
  }
  gw_conn_schedule(c); /* the send's deadline may come first */
}

/* Returns 1 if it kept f (the send waits for admission). */
static int on_send(imc_conn *c, Imchat__V1__ClientFrame *f) {
  imc_gateway *gw = c->gw;
  uint64_t id = f->id;
  const Imchat__V1__SendRequest *s = f->send;
  if (!rate_take(c)) {
    stat_inc(gw, IMC_GW_STAT_RATE_LIMITED);
    gw_send_error_ordered(c, id, IMC_ERR_RATE_LIMITED,
                          "send rate limit exceeded");
    return 0;
  }
  if (s->body.len > gw->o.max_body) {
    gw_send_error_ordered(c, id, IMC_ERR_TOO_LARGE,
                          "body exceeds the size limit");
    return 0;
  }
  if (gw->o.upstream.send == NULL) {
    gw_send_error_ordered(c, id, IMC_ERR_UNAVAILABLE,
                          "routing is not available");
    return 0;
  }
  if (!gw_flow_can_admit(c)) {
    if (gw_flow_wait(c, f))
      return 1;
    stat_inc(gw, IMC_GW_STAT_BUSY);
    gw_send_error_ordered(c, id, IMC_ERR_UNAVAILABLE, BUSY_MESSAGE);
    return 0;
  }
  gw_start_send(c, id, s);
  return 0;
}

/*
 * Acks mostly come in push order: each id is matched against the head of
 * the in-flight list first, which makes a batch of in-order acks O(1)
 * each; an id that is not at the head (out of order, or unknown) costs a
 * walk of the list.
 */
static void on_deliver_ack(imc_conn *c, const Imchat__V1__DeliverAck *a) {
  imc_gateway *gw = c->gw;
  /* A push's deadline is its time plus ack_ms, so its latency is
   * now_ack - deadline: the record needs no field of its own. */
  int64_t now_ack = now_ms(gw) + gw->o.ack_ms;
  for (size_t i = 0; i < a->n_msg_ids; i++) {
    push *h = c->ifl_head;
    if (h && strcmp(h->sm->msg.msg_id, a->msg_ids[i]) == 0) {
      c->ifl_head = h->next;
      if (c->ifl_head == NULL)
        c->ifl_tail = NULL;
      h->next = NULL;
      stat_inc(gw, IMC_GW_STAT_ACKS);
      gw_ack_latency_add(gw, now_ack - h->deadline);
      gw_report(gw, h, REP_DELIVERED);
      continue;
    }
    push **pp = &c->ifl_head;
    push *prev = NULL;
    for (; *pp; prev = *pp, pp = &(*pp)->next) {
      push *p = *pp;
      if (strcmp(p->sm->msg.msg_id, a->msg_ids[i]) != 0)
        continue;
      *pp = p->next;
      if (c->ifl_tail == p)
        c->ifl_tail = prev;
      p->next = NULL;
      stat_inc(gw, IMC_GW_STAT_ACKS);
      gw_ack_latency_add(gw, now_ack - p->deadline);
      gw_report(gw, p, REP_DELIVERED);
      break;
    }
  }
}

static void on_ping(imc_conn *c, uint64_t id, const Imchat__V1__Ping *ping) {
  Imchat__V1__Pong pong = IMCHAT__V1__PONG__INIT;
  pong.client_time_ms = ping->client_time_ms;
  pong.server_time_ms = imc_clock_wall(&c->gw->o.clock);
  Imchat__V1__ServerFrame f = IMCHAT__V1__SERVER_FRAME__INIT;
  f.id = id;
  f.body_case = IMCHAT__V1__SERVER_FRAME__BODY_PONG;
  f.pong = &pong;
  gw_send_frame(c, &f);
}

static void on_binary(imc_conn *c, const uint8_t *data, size_t len) {
  imc_gateway *gw = c->gw;
  /* protobuf-c checks neither UTF-8 nor NUL in strings (SPEC 3.1). */
  int bad = imc_pb_check_strings(&imchat__v1__client_frame__descriptor, data,
                                 len) != 0;
  Imchat__V1__ClientFrame *f =
      bad ? NULL : imchat__v1__client_frame__unpack(&gw->pba, len, data);
  if (f == NULL || f->body_case == IMCHAT__V1__CLIENT_FRAME__BODY__NOT_SET) {
    uint64_t id = 0;
    if (f)
      id = f->id;
    else
      imc_pb_peek_varint(data, len, 1, &id);
    if (f)
      imchat__v1__client_frame__free_unpacked(f, &gw->pba);
    stat_inc(gw, IMC_GW_STAT_BAD_FRAMES);
    if (++c->bad_frames >= BAD_FRAMES_MAX) {
      gw_ws_close(c, 1008, "too many malformed frames");
      return;
    }
    gw_send_error(c, id, IMC_ERR_PROTO,
                  f     ? "frame has no body"
                  : bad ? "malformed ClientFrame or a string not UTF-8 "
                          "without NUL"
                        : "malformed ClientFrame");
    return;
  }
  c->bad_frames = 0;
  stat_inc(gw, IMC_GW_STAT_FRAMES_IN);
  switch (f->body_case) {
  case IMCHAT__V1__CLIENT_FRAME__BODY_SEND:
    if (on_send(c, f))
      return; /* f waits for admission on c */
    break;
  case IMCHAT__V1__CLIENT_FRAME__BODY_DELIVER_ACK:
    on_deliver_ack(c, f->deliver_ack);
    break;
  case IMCHAT__V1__CLIENT_FRAME__BODY_PING:
    on_ping(c, f->id, f->ping);
    break;
  default:
    break;
  }
  imchat__v1__client_frame__free_unpacked(f, &gw->pba);
}

/*
 * wslay reads one frame at a time: the header the scanner accepted (kept
 * in c->scan), then its payload. At the frame's end it is told to wait,
 * and the gateway reads the next header itself (next_header).
 */
static ssize_t ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                          int flags, void *ud) {
  imc_conn *c = ud;
  size_t n = 0;
  if (c->hdr_out > 0) {
    n = c->hdr_out < len ? c->hdr_out : len;
    memcpy(buf, c->scan.hdr + c->scan.hlen - c->hdr_out, n);
    c->hdr_out = (uint8_t)(c->hdr_out - n);
  }
  size_t m =
      imc_ws_scan_payload(&c->scan, c->in_len < len - n ? c->in_len : len - n);
  if (m > 0) {
    memcpy(buf + n, c->in, m);
    c->in += m;
    c->in_len -= m;
    n += m;
  }
  if (n == 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  return (ssize_t)n;
}

static ssize_t ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data,
                          size_t len, int flags, void *ud) {
  imc_conn *c = ud;
  if (!(c->flags & F_DISCARD) && gw_queue_bytes(c, data, len) != 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  return (ssize_t)len;
}

/* Writes what wslay queued (pongs). */
static void ws_flush(imc_conn *c) {
  if (c->ws != NULL && !(c->flags & F_ABORT) && wslay_event_send(c->ws) != 0)
    c->flags |= F_ABORT | F_NOMEM;
}

static void ws_fail(imc_conn *c, uint16_t code, const char *why);

/*
 * A compressed message (RSV1 on its first frame, permessage-deflate):
 * inflated up to the message size limit, past which it is refused with
 * 1009 like an uncompressed one; data that does not inflate is a 1007.
 */
static void on_compressed(imc_conn *c, const uint8_t *data, size_t len) {
  imc_gateway *gw = c->gw;
  uint8_t *msg;
  size_t n;
  int rv = gw_inflate(gw, data, len, gw->o.max_body + FRAME_OVERHEAD, &msg, &n);
  if (rv == IMC_ERR_TOO_LARGE) {
    ws_fail(c, 1009, "message too big");
  } else if (rv == IMC_ERR_PROTO) {
    ws_fail(c, 1007, "invalid compressed data");
  } else if (rv != 0) {
    c->flags |= F_ABORT | F_NOMEM;
  } else {
    on_binary(c, msg, n);
    imc_free(&gw->mem, msg);
  }
}

static void ws_msg_cb(wslay_event_context_ptr ctx,
                      const struct wslay_event_on_msg_recv_arg *a, void *ud) {
  imc_conn *c = ud;
  /* Answers wslay queued earlier in this read (pongs) go out before
   * ours. */
  if (wslay_event_want_write(ctx))
    ws_flush(c);
  /* Text and close frames never reach wslay (next_header), nor RSV1
   * without the extension. */
  if (a->opcode != WSLAY_BINARY_FRAME || (c->flags & F_CLOSING))
    return;
  if (wslay_get_rsv1(a->rsv))
    on_compressed(c, a->msg, a->msg_length);
  else
    on_binary(c, a->msg, a->msg_length);
}

/* Our close frame with code, after wslay's pending answers. */
static void ws_close(imc_conn *c, uint16_t code, const char *why) {
  ws_flush(c);
  gw_ws_close(c, code, why);
}

/* The peer broke the protocol: our close frame, and nothing more is
 * read; the socket closes once the frame is written. */
static void ws_fail(imc_conn *c, uint16_t code, const char *why) {
  gw_log(c->gw, IMC_LOG_DEBUG, "conn %llu (%s/%s): closing with %u: %s",
         (unsigned long long)c->id, c->user, c->device, (unsigned)code, why);
  ws_close(c, code, why);
  c->flags |= F_READ_DONE;
}

/*
 * Close codes a peer may send (RFC 6455 7.4 and the IANA registry):
 * 1004-1006 and 1015 are never sent in a frame, 1016-2999 are not
 * assigned; 1012-1014 are registered.
 */
static int close_code_valid(unsigned code) {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
         (code >= 3000 && code <= 4999);
}

/* Well-formed UTF-8; NUL is a character like any other here. */
static int utf8_ok(const uint8_t *s, size_t n) {
  while (n > 0) {
    size_t k = imc_utf8_next(s, n, NULL);
    if (k == 0)
      return 0;
    s += k;
    n -= k;
  }
  return 1;
}

/*
 * The peer's close frame is complete (RFC 6455 5.5.1, 7.1.5): its code
 * is echoed (1000 for a frame without one); a code nobody may send is a
 * protocol error (1002), a reason that is not UTF-8 gets 1007.
 */
static void on_close(imc_conn *c) {
  const uint8_t *p = c->ctl;
  size_t n = c->ctl_len;
  unsigned code = n >= 2 ? (unsigned)(p[0] << 8 | p[1]) : 1000;
  if (c->flags & F_CLOSING)
    c->flags |= F_CLOSE_RECEIVED | F_READ_DONE; /* ours went first */
  else if (!close_code_valid(code))
    ws_fail(c, 1002, "invalid close code");
  else if (n > 2 && !utf8_ok(p + 2, n - 2))
    ws_fail(c, 1007, "close reason is not UTF-8");
  else {
    ws_close(c, (uint16_t)code, "");
    c->flags |= F_CLOSE_RECEIVED | F_READ_DONE;
  }
  imc_free(&c->gw->mem, c->ctl);
  c->ctl = NULL;
  c->ctl_len = 0;
}

/* Payload bytes of a close frame, unmasked into c->ctl. */
static void read_close(imc_conn *c) {
  size_t n = imc_ws_scan_payload(&c->scan, c->in_len);
  const uint8_t *mask = imc_ws_scan_mask(&c->scan);
  for (size_t i = 0; i < n; i++)
    c->ctl[c->ctl_len + i] = c->in[i] ^ mask[(c->ctl_len + i) & 3];
  c->ctl_len = (uint8_t)(c->ctl_len + n);
  c->in += n;
  c->in_len -= n;
  if (c->scan.left == 0)
    on_close(c);
}

/*
 * Reads the next frame header from the input and decides who reads the
 * frame. Bad headers close the connection here, before wslay (which
 * would close without a status code) or any buffering sees them.
 */
static void next_header(imc_conn *c) {
  imc_gateway *gw = c->gw;
  size_t used;
  const char *why;
  int rv = imc_ws_scan_header(&c->scan, c->in, c->in_len,
                              gw->o.max_body + FRAME_OVERHEAD, &used, &why);
  c->in += used;
  c->in_len -= used;
  if (rv == IMC_WS_SCAN_MORE)
    return;
  if (rv != IMC_WS_SCAN_FRAME) {
    ws_fail(c, (uint16_t)rv, why);
    return;
  }
  c->last_rx = now_ms(gw);
  uint8_t op = imc_ws_scan_opcode(&c->scan);
  if (op == IMC_WS_CLOSE) {
    c->fmode = FM_CLOSE;
    c->ctl_len = 0;
    if (c->scan.left == 0) {
      on_close(c);
    } else if (c->ctl == NULL &&
               (c->ctl = imc_malloc(&gw->mem, IMC_WS_CONTROL_MAX)) == NULL) {
      c->flags |= F_ABORT | F_NOMEM;
    }
  } else if (c->flags & F_CLOSING) {
    c->fmode = FM_SKIP; /* only the peer's close matters now */
  } else if (op == IMC_WS_TEXT) {
    c->fmode = FM_SKIP;
    ws_close(c, 1003, "text frames are not accepted");
  } else {
    c->fmode = FM_WSLAY;
    c->hdr_out = c->scan.hlen;
  }
}

/* Lets wslay read the current frame. Returns 1 if it took input. */
static int wslay_read(imc_conn *c) {
  imc_gateway *gw = c->gw;
  if (c->ws == NULL) {
    if (wslay_event_context_server_init(&c->ws, &gw->wscb, c) != 0) {
      c->ws = NULL;
      c->flags |= F_ABORT | F_NOMEM;
      return 0;
    }
    /* The envelope around a body may add a little to the message. */
    wslay_event_config_set_max_recv_msg_length(c->ws,
                                               gw->o.max_body + FRAME_OVERHEAD);
    if (c->pmd_bits)
      wslay_event_config_set_allowed_rsv_bits(c->ws, WSLAY_RSV1_BIT);
  }
  size_t before = c->in_len + c->hdr_out;
  int rv = wslay_event_recv(c->ws);
  if (rv == WSLAY_ERR_NOMEM) {
    c->flags |= F_ABORT | F_NOMEM;
    return 0;
  }
  if (rv != 0 || !wslay_event_get_read_enabled(c->ws)) {
    /* wslay refuses nothing the scanner accepts; should it ever, its
     * close frame (without a code) is dropped for ours. */
    gw_ws_close(c, 1002, "protocol error");
    c->flags |= F_READ_DONE;
    return 0;
  }
  return c->in_len + c->hdr_out < before;
}

/*
 * Reads len bytes of WebSocket input: each frame header is checked
 * first, then the frame goes to wslay (data, ping, pong) or is read here
 * (close). The wslay context exists only while a frame or a fragmented
 * message is partly received (or the connection is closing): an idle
 * connection holds no frame buffers. Returns 0 or a negative code (c
 * freed).
 */
int gw_ws_feed(imc_conn *c, const uint8_t *data, size_t len) {
  imc_gateway *gw = c->gw;
  if (len == 0)
    return gw_conn_check(c);
  if (c->held != NULL || ((c->flags & F_PAUSED) && !(c->flags & F_CLOSING))) {
    /* Behind kept input, or paused: keep this too, up to HELD_MAX. Past
     * it (a host that reads on while paused) everything is fed, and sends
     * that cannot be admitted are refused busy. */
    if (gw_flow_hold(c, data, len) != 0) {
      c->flags |= F_ABORT | F_NOMEM;
      return gw_conn_check(c);
    }
    if ((c->flags & F_PAUSED) && !(c->flags & F_CLOSING) &&
        c->held_len <= HELD_MAX)
      return gw_conn_check(c);
    uint8_t *buf = c->held;
    size_t n = c->held_len;
    c->held = NULL;
    c->held_len = 0;
    c->feed_all = n > HELD_MAX;
    int rv = gw_ws_feed_now(c, buf, n);
    imc_free(&gw->mem, buf);
    return rv;
  }
  return gw_ws_feed_now(c, data, len);
}

/* Feeds data frame by frame; what a pause leaves unread is kept. */
int gw_ws_feed_now(imc_conn *c, const uint8_t *data, size_t len) {
  c->in = data;
  c->in_len = len;
  while (!(c->flags & (F_ABORT | F_READ_DONE))) {
    imc_ws_scan *s = &c->scan;
    if (!s->done || (s->left == 0 && c->hdr_out == 0)) {
      /* A paused connection stops between frames; the rest of the input
       * is kept for when it resumes (flow.c). */
      if (c->in_len == 0 ||
          (imc_ws_scan_at_boundary(s) && (c->flags & F_PAUSED) &&
           !(c->flags & F_CLOSING) && !c->feed_all))
        break;
      next_header(c);
    } else if (c->fmode == FM_WSLAY) {
      if ((c->in_len == 0 && c->hdr_out == 0) || !wslay_read(c))
        break;
    } else {
      if (c->in_len == 0)
        break;
      if (c->fmode == FM_CLOSE) {
        read_close(c);
      } else {
        size_t n = imc_ws_scan_payload(s, c->in_len);
        c->in += n;
        c->in_len -= n;
      }
    }
  }
  c->feed_all = 0;
  /* Input left unread by a pause waits for the resume; after a close or
   * an error it is dropped. */
  if (c->in_len > 0 && !(c->flags & (F_ABORT | F_READ_DONE)) &&
      gw_flow_hold(c, c->in, c->in_len) != 0)
    c->flags |= F_ABORT | F_NOMEM;
  c->in = NULL;
  c->in_len = 0;
  ws_flush(c);
  if (c->ws != NULL && !(c->flags & (F_ABORT | F_CLOSING)) && c->hdr_out == 0 &&
      imc_ws_scan_idle(&c->scan)) {
    wslay_event_context_free(c->ws);
    c->ws = NULL;
  }
  return gw_conn_check(c);
}

void gw_ws_callbacks_init(struct wslay_event_callbacks *cb) {
  memset(cb, 0, sizeof(*cb));
  cb->recv_callback = ws_recv_cb;
  cb->send_callback = ws_send_cb;
  cb->on_msg_recv_callback = ws_msg_cb;
}
