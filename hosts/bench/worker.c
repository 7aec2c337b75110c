/*
 * One worker process of imchat-bench: an epoll loop over its slice of the
 * connections, speaking the imchat protocol (WebSocket + protobuf, via
 * wslay and protobuf-c) or MQTT 3.1.1 (over TCP or WebSocket).
 *
 * Message bodies / payloads start with 16 bytes: the intended send time
 * (ns, CLOCK_MONOTONIC, little endian) and the message's index, so the
 * receiver measures the latency from the time the message was due, not
 * from when it could be written (open loop: no coordinated omission).
 */
#include "bench.h"
#include "mqtt.h"

#include "im.pb-c.h"

#include <imchat/jwt.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <wslay/wslay.h>

#define WS_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define WS_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
#define HDR_LEN 16    /* intended ns + index in every body */
#define PID_RING 1024 /* MQTT: send times of packet ids in flight */
#define ACK_BATCH 64  /* DeliverAck: ids per frame at most */
#define ARENA_SIZE (1u << 20)
#define MQTT_MAX_PACKET (1u << 20)

enum {
  C_IDLE,       /* not started */
  C_CONNECTING, /* connect() in progress */
  C_HANDSHAKE,  /* HTTP upgrade sent, waiting for 101 */
  C_AUTH,       /* waiting for Welcome / CONNACK */
  C_SUBSCRIBE,  /* waiting for SUBACK */
  C_READY,
  C_DEAD
};

typedef struct dbuf {
  uint8_t *p;
  size_t len, cap;
} dbuf;

typedef struct worker worker;

typedef struct conn {
  worker *w;
  int fd;
  int state;
  int idx;      /* in the worker */
  int gidx;     /* in the run */
  int peer;     /* pairs: the other end (worker index); -1 */
  int receiver; /* counts deliveries (pairs, group members but the sender) */
  int sender;
  int out_armed; /* EPOLLOUT registered */
  int in_cb;     /* inside wslay_event_recv: kill_conn only marks */
  int broken;
  int dirty;
  char user[48];
  char topic[80]; /* MQTT: subscribed topic */
  wslay_event_context_ptr ws;
  dbuf hs;       /* HTTP response head, then bytes for wslay */
  size_t hs_off; /* bytes of hs handed to wslay */
  dbuf in;       /* MQTT stream */
  dbuf out;      /* raw bytes (HTTP request, MQTT over TCP) */
  size_t out_off;
  dbuf acks; /* DeliverAck ids, NUL-separated */
  int n_acks;
  uint64_t next_id; /* imchat frame ids, client_msg_id counter */
  uint16_t next_pid;
  uint64_t *pid_t; /* MQTT: send time per packet id % PID_RING */
  uint64_t t_connect, last_tx;
} conn;

struct worker {
  const bench_opts *o;
  const bench_slice *s;
  int ep, ctl_in, ctl_out;
  conn *c;
  int n;
  int next_start, pending, done_connecting;
  int phase;
  uint64_t t0, t_end, t_drain_end;
  uint64_t k; /* open loop: next message number */
  double interval_ns;
  int *senders;
  int n_senders;
  uint64_t total_expected; /* group: messages the sender sent, run-wide */
  int have_total;
  int group_receivers; /* in this worker */
  bench_result *r;
  uint64_t gmax;
  uint64_t *g_intended, *g_last, *g_cnt;
  conn **dirty_list;
  int n_dirty;
  uint64_t rng;
  uint8_t *scratch;
  size_t scratch_cap;
  uint8_t *arena;
  size_t arena_used;
  ProtobufCAllocator alloc;
  uint64_t last_sweep;
  uint64_t inflight; /* pairs, offline: sent and not yet received */
};

/* Worker phases: connect, wait for GO, run, drain (waiting for the run's
 * total and the messages in flight), done. */
enum { P_CONNECT, P_WAIT_GO, P_RUN, P_DRAIN, P_DONE };

/* ------------------------------------------------------------------ */

uint64_t bench_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int dbuf_add(dbuf *b, const void *p, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n)
      cap *= 2;
    uint8_t *q = realloc(b->p, cap);
    if (!q)
      return -1;
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
  return 0;
}

static void dbuf_free(dbuf *b) {
  free(b->p);
  memset(b, 0, sizeof(*b));
}

static void dbuf_consume(dbuf *b, size_t n) {
  memmove(b->p, b->p + n, b->len - n);
  b->len -= n;
}

static uint64_t rnd(worker *w) {
  w->rng ^= w->rng << 13;
  w->rng ^= w->rng >> 7;
  w->rng ^= w->rng << 17;
  return w->rng;
}

/* protobuf-c allocations from a bump arena reset after every frame. */
static void *arena_alloc(void *ud, size_t n) {
  worker *w = ud;
  n = (n + 15) & ~(size_t)15;
  if (w->arena_used + n > ARENA_SIZE)
    return NULL;
  void *p = w->arena + w->arena_used;
  w->arena_used += n;
  return p;
}

static void arena_free(void *ud, void *p) {
  (void)ud;
  (void)p;
}

static void put_le64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

static void tl_add(worker *w, uint64_t *tl, uint64_t now) {
  if (now < w->t0 || w->t0 == 0)
    return;
  uint64_t s = (now - w->t0) / 1000000000u;
  if (s < BENCH_MAX_SECONDS)
    tl[s]++;
}

static void mark_dirty(conn *c) {
  if (!c->dirty) {
    c->dirty = 1;
    c->w->dirty_list[c->w->n_dirty++] = c;
  }
}

static void kill_conn(conn *c, int unexpected) {
  worker *w = c->w;
  if (c->state == C_DEAD)
    return;
  if (c->in_cb) {
    c->broken = 1 + (unexpected != 0);
    return;
  }
  if (c->state < C_READY && c->state != C_IDLE) {
    w->pending--;
    w->r->conns_failed++;
  } else if (c->state == C_READY && unexpected) {
    w->r->closed++;
  }
  c->state = C_DEAD;
  if (c->fd >= 0) {
    epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
  }
  if (c->ws) {
    wslay_event_context_free(c->ws);
    c->ws = NULL;
  }
  dbuf_free(&c->hs);
  dbuf_free(&c->in);
  dbuf_free(&c->out);
  dbuf_free(&c->acks);
  free(c->pid_t);
  c->pid_t = NULL;
}

static void became_ready(conn *c) {
  worker *w = c->w;
  c->state = C_READY;
  w->pending--;
  w->r->conns_ok++;
  uint64_t now = bench_now_ns();
  bhist_record(&w->r->h[H_CONNECT], now - c->t_connect);
}

/* ------------------------------------------------------------------ */
/* Output: raw bytes or one WebSocket binary message. */

static int send_bytes(conn *c, const uint8_t *p, size_t n) {
  if (c->ws) {
    struct wslay_event_msg m = {WSLAY_BINARY_FRAME, p, n};
    if (wslay_event_queue_msg(c->ws, &m) != 0)
      return -1;
  } else if (dbuf_add(&c->out, p, n) < 0) {
    return -1;
  }
  c->last_tx = bench_now_ns();
  mark_dirty(c);
  return 0;
}

static uint8_t *scratch(worker *w, size_t n) {
  if (n > w->scratch_cap) {
    uint8_t *p = realloc(w->scratch, n);
    if (!p)
      return NULL;
    w->scratch = p;
    w->scratch_cap = n;
  }
  return w->scratch;
}

static int send_client_frame(conn *c, Imchat__V1__ClientFrame *f) {
  size_t n = imchat__v1__client_frame__get_packed_size(f);
  uint8_t *b = scratch(c->w, n);
  if (!b)
    return -1;
  imchat__v1__client_frame__pack(f, b);
  return send_bytes(c, b, n);
}

static int send_mqtt(conn *c, const uint8_t *p, size_t n) {
  return send_bytes(c, p, n);
}

static void flush_acks(conn *c) {
  if (c->n_acks == 0)
    return;
  char *ids[ACK_BATCH];
  size_t off = 0;
  for (int i = 0; i < c->n_acks; i++) {
    ids[i] = (char *)c->acks.p + off;
    off += strlen(ids[i]) + 1;
  }
  Imchat__V1__DeliverAck da = IMCHAT__V1__DELIVER_ACK__INIT;
  da.n_msg_ids = (size_t)c->n_acks;
  da.msg_ids = ids;
  Imchat__V1__ClientFrame f = IMCHAT__V1__CLIENT_FRAME__INIT;
  f.id = ++c->next_id;
  f.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_DELIVER_ACK;
  f.deliver_ack = &da;
  if (send_client_frame(c, &f) < 0)
    c->w->r->protocol_errors++;
  c->acks.len = 0;
  c->n_acks = 0;
}

static void queue_ack(conn *c, const char *msg_id) {
  if (dbuf_add(&c->acks, msg_id, strlen(msg_id) + 1) < 0)
    return;
  if (++c->n_acks == ACK_BATCH)
    flush_acks(c);
}

/* ------------------------------------------------------------------ */
/* Sending a benchmark message. */

static int send_message(conn *c, conn *to, uint64_t intended, uint64_t k) {
  worker *w = c->w;
  const bench_opts *o = w->o;
  size_t blen = (size_t)o->body_size;
  /* scratch holds the body first, the encoded frame after it. */
  uint8_t *b = scratch(w, 2 * blen + 1024);
  if (!b)
    return -1;
  memset(b, 'x', blen);
  put_le64(b, intended);
  put_le64(b + 8, k);
  int rv;
  if (o->target == T_IMCHAT) {
    char cmid[64], toid[48];
    snprintf(cmid, sizeof(cmid), "%llx-%llu", (unsigned long long)c->next_id,
             (unsigned long long)intended);
    Imchat__V1__SendRequest sr = IMCHAT__V1__SEND_REQUEST__INIT;
    sr.client_msg_id = cmid;
    if (o->scenario == S_GROUP) {
      sr.to_case = IMCHAT__V1__SEND_REQUEST__TO_GROUP_ID;
      sr.group_id = (char *)o->group_id;
    } else {
      if (o->scenario == S_OFFLINE)
        bench_user(o, 'o', c->gidx, toid, sizeof(toid));
      else
        snprintf(toid, sizeof(toid), "%s", to->user);
      sr.to_case = IMCHAT__V1__SEND_REQUEST__TO_USER_ID;
      sr.user_id = toid;
    }
    sr.body.data = b;
    sr.body.len = blen;
    sr.content_type = "application/octet-stream";
    Imchat__V1__ClientFrame f = IMCHAT__V1__CLIENT_FRAME__INIT;
    f.id = ++c->next_id;
    f.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_SEND;
    f.send = &sr;
    size_t n = imchat__v1__client_frame__get_packed_size(&f);
    if (n > blen + 1024)
      return -1;
    imchat__v1__client_frame__pack(&f, b + blen);
    rv = send_bytes(c, b + blen, n);
  } else {
    char topic[80];
    if (o->scenario == S_GROUP)
      snprintf(topic, sizeof(topic), "g/%s", o->group_id);
    else
      snprintf(topic, sizeof(topic), "u/%s", to->user);
    if (!c->pid_t && !(c->pid_t = calloc(PID_RING, sizeof(uint64_t))))
      return -1;
    if (++c->next_pid == 0)
      c->next_pid = 1;
    c->pid_t[c->next_pid % PID_RING] = intended;
    size_t n = mqtt_encode_publish(b + blen, blen + 1024, topic, strlen(topic),
                                   b, blen, 1, c->next_pid);
    rv = n ? send_mqtt(c, b + blen, n) : -1;
  }
  if (rv == 0) {
    w->r->sent++;
    w->inflight++;
    tl_add(w, w->r->tl_sent, bench_now_ns());
    if (o->scenario == S_GROUP && k < w->gmax)
      w->g_intended[k] = intended;
  } else {
    w->r->protocol_errors++;
  }
  return rv;
}

/* A message arrived at receiver c: latency, counters, closed-loop reply. */
static void on_delivery(conn *c, const uint8_t *body, size_t len) {
  worker *w = c->w;
  const bench_opts *o = w->o;
  uint64_t now = bench_now_ns();
  if (len < HDR_LEN) {
    w->r->decode_errors++;
    return;
  }
  if (!c->receiver) {
    w->r->self_delivered++;
    return;
  }
  uint64_t intended = get_le64(body), k = get_le64(body + 8);
  w->r->delivered++;
  if (now <= w->t_end)
    w->r->delivered_in_run++;
  if (w->inflight)
    w->inflight--;
  tl_add(w, w->r->tl_delivered, now);
  bhist_record(&w->r->h[H_DELIVER], now > intended ? now - intended : 0);
  if (o->scenario == S_GROUP) {
    if (k < w->gmax) {
      if (now > w->g_last[k])
        w->g_last[k] = now;
      w->g_cnt[k]++;
    }
    return;
  }
  if (o->scenario == S_PAIRS && o->mode == M_CLOSED && w->phase == P_RUN &&
      now < w->t_end && c->peer >= 0) {
    conn *p = &w->c[c->peer];
    if (p->state == C_READY)
      send_message(c, p, now, 0);
  }
}

/* Sender c learned that the message sent at `intended` was accepted. */
static void on_ack(conn *c, uint64_t intended, int h) {
  worker *w = c->w;
  uint64_t now = bench_now_ns();
  bhist_record(&w->r->h[h], now > intended ? now - intended : 0);
}

static uint64_t cmid_time(const char *cmid) {
  const char *d = strchr(cmid, '-');
  return d ? strtoull(d + 1, NULL, 10) : 0;
}

/* ------------------------------------------------------------------ */
/* imchat frames */

static void on_server_frame(conn *c, const uint8_t *p, size_t n) {
  worker *w = c->w;
  w->arena_used = 0;
  Imchat__V1__ServerFrame *f =
      imchat__v1__server_frame__unpack(&w->alloc, n, p);
  if (!f) {
    w->r->decode_errors++;
    return;
  }
  switch (f->body_case) {
  case IMCHAT__V1__SERVER_FRAME__BODY_WELCOME:
    if (c->state == C_AUTH)
      became_ready(c);
    break;
  case IMCHAT__V1__SERVER_FRAME__BODY_DELIVER:
    if (f->deliver->message) {
      Imchat__V1__Message *m = f->deliver->message;
      on_delivery(c, m->body.data, m->body.len);
      queue_ack(c, m->msg_id);
    }
    break;
  case IMCHAT__V1__SERVER_FRAME__BODY_SEND_ACK:
    w->r->send_acks++;
    on_ack(c, cmid_time(f->send_ack->client_msg_id), H_ACK);
    break;
  case IMCHAT__V1__SERVER_FRAME__BODY_STATUS:
    w->r->statuses++;
    on_ack(c, cmid_time(f->status->client_msg_id), H_STATUS);
    if (f->status->state == IMCHAT__V1__DELIVERY_STATUS__STATE__STORED &&
        w->o->scenario == S_OFFLINE) {
      uint64_t now = bench_now_ns();
      w->r->stored++;
      if (w->inflight)
        w->inflight--;
      tl_add(w, w->r->tl_delivered, now);
      if (now <= w->t_end)
        w->r->delivered_in_run++;
      if (w->o->mode == M_CLOSED && w->phase == P_RUN && now < w->t_end)
        send_message(c, NULL, now, 0);
    }
    break;
  case IMCHAT__V1__SERVER_FRAME__BODY_ERROR:
    w->r->error_frames++;
    if (f->error->code == IMCHAT__V1__ERROR__CODE__RATE_LIMITED)
      w->r->rate_limited++;
    if (w->r->error_frames <= 3)
      fprintf(stderr, "imchat-bench: %s: server error %d: %s\n", c->user,
              (int)f->error->code, f->error->message);
    break;
  default:
    break;
  }
}

/* ------------------------------------------------------------------ */
/* MQTT packets */

static void mqtt_subscribe(conn *c) {
  uint8_t b[128];
  size_t n =
      mqtt_encode_subscribe(b, sizeof(b), 1, c->topic, strlen(c->topic), 1);
  c->state = C_SUBSCRIBE;
  if (!n || send_mqtt(c, b, n) < 0)
    kill_conn(c, 1);
}

static int on_mqtt_packet(conn *c, const mqtt_packet *m) {
  worker *w = c->w;
  uint8_t b[8];
  switch (m->type) {
  case MQTT_CONNACK:
    if (c->state != C_AUTH || m->return_code != 0)
      return -1;
    if (c->topic[0])
      mqtt_subscribe(c);
    else
      became_ready(c);
    return 0;
  case MQTT_SUBACK:
    if (c->state != C_SUBSCRIBE || m->return_code > 1)
      return -1;
    became_ready(c);
    return 0;
  case MQTT_PUBLISH:
    if (m->qos) {
      size_t n = mqtt_encode_puback(b, sizeof(b), m->packet_id);
      send_mqtt(c, b, n);
    }
    on_delivery(c, m->payload, m->payload_len);
    return 0;
  case MQTT_PUBACK:
    w->r->send_acks++;
    if (c->pid_t)
      on_ack(c, c->pid_t[m->packet_id % PID_RING], H_ACK);
    return 0;
  case MQTT_PINGRESP:
    return 0;
  default:
    return -1;
  }
}

/* Decodes what c->in holds; kills c on malformed input. */
static void mqtt_parse(conn *c) {
  size_t off = 0;
  while (c->state != C_DEAD) {
    mqtt_packet m;
    long n = mqtt_decode(c->in.p + off, c->in.len - off, MQTT_MAX_PACKET, &m);
    if (n == MQTT_NEED_MORE)
      break;
    if (n < 0 || on_mqtt_packet(c, &m) < 0) {
      c->w->r->protocol_errors++;
      kill_conn(c, 1);
      return;
    }
    off += (size_t)n;
  }
  if (c->state != C_DEAD && off)
    dbuf_consume(&c->in, off);
}

static void mqtt_connect(conn *c) {
  uint8_t b[128];
  size_t n = mqtt_encode_connect(b, sizeof(b), c->user, strlen(c->user), 60, 1);
  c->state = C_AUTH;
  if (!n || send_mqtt(c, b, n) < 0)
    kill_conn(c, 1);
}

/* ------------------------------------------------------------------ */
/* wslay callbacks */

static ssize_t ws_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                       int flags, void *ud) {
  conn *c = ud;
  (void)flags;
  if (c->hs_off < c->hs.len) {
    size_t n = c->hs.len - c->hs_off;
    if (n > len)
      n = len;
    memcpy(buf, c->hs.p + c->hs_off, n);
    c->hs_off += n;
    return (ssize_t)n;
  }
  ssize_t r = recv(c->fd, buf, len, 0);
  if (r > 0)
    return r;
  if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
  else
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
  return -1;
}

static ssize_t ws_send(wslay_event_context_ptr ctx, const uint8_t *data,
                       size_t len, int flags, void *ud) {
  conn *c = ud;
  (void)flags;
  ssize_t r = send(c->fd, data, len, MSG_NOSIGNAL);
  if (r >= 0)
    return r;
  if (errno == EAGAIN || errno == EWOULDBLOCK)
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
  else
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
  return -1;
}

static int ws_genmask(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                      void *ud) {
  conn *c = ud;
  (void)ctx;
  for (size_t i = 0; i < len; i++)
    buf[i] = (uint8_t)rnd(c->w);
  return 0;
}

static void ws_on_msg(wslay_event_context_ptr ctx,
                      const struct wslay_event_on_msg_recv_arg *a, void *ud) {
  conn *c = ud;
  (void)ctx;
  if (a->opcode == WSLAY_CONNECTION_CLOSE) {
    if (c->state == C_READY && c->w->phase < P_DONE)
      fprintf(stderr, "imchat-bench: %s: closed by the server (%u)\n", c->user,
              a->status_code);
    return;
  }
  if (a->opcode != WSLAY_BINARY_FRAME) {
    if (a->opcode == WSLAY_TEXT_FRAME)
      c->w->r->protocol_errors++;
    return;
  }
  if (c->w->o->target == T_IMCHAT) {
    on_server_frame(c, a->msg, a->msg_length);
  } else if (dbuf_add(&c->in, a->msg, a->msg_length) == 0) {
    mqtt_parse(c);
  }
}

static const struct wslay_event_callbacks ws_cbs = {
    ws_recv, ws_send, ws_genmask, NULL, NULL, NULL, ws_on_msg};

/* Feeds what the socket holds to wslay; -1 when the connection is over. */
static int ws_recv_all(conn *c) {
  c->in_cb = 1;
  int rv = wslay_event_recv(c->ws);
  c->in_cb = 0;
  if (c->broken) {
    kill_conn(c, c->broken > 1);
    return -2;
  }
  if (rv != 0 ||
      (!wslay_event_want_read(c->ws) && !wslay_event_want_write(c->ws)))
    return -1;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Connection life */

static void set_events(conn *c, int want_out) {
  if (c->fd < 0 || want_out == c->out_armed)
    return;
  struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0u),
                           .data.ptr = c};
  epoll_ctl(c->w->ep, EPOLL_CTL_MOD, c->fd, &ev);
  c->out_armed = want_out;
}

static void flush(conn *c) {
  /* Still marked dirty while the acks are queued: no second list entry. */
  if (c->n_acks && c->state == C_READY)
    flush_acks(c);
  c->dirty = 0;
  if (c->state == C_DEAD || c->state == C_CONNECTING)
    return;
  while (c->out_off < c->out.len) {
    ssize_t r = send(c->fd, c->out.p + c->out_off, c->out.len - c->out_off,
                     MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        break;
      kill_conn(c, 1);
      return;
    }
    c->out_off += (size_t)r;
  }
  if (c->out_off == c->out.len) {
    c->out.len = 0;
    c->out_off = 0;
  }
  int want = c->out.len > 0;
  if (c->ws) {
    if (wslay_event_send(c->ws) != 0) {
      kill_conn(c, 1);
      return;
    }
    want |= wslay_event_want_write(c->ws);
  }
  set_events(c, want);
}

static void start_conn(worker *w, conn *c) {
  const bench_opts *o = w->o;
  c->t_connect = bench_now_ns();
  c->state = C_CONNECTING;
  w->pending++;
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0)
    goto fail;
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (o->src_addrs > 1) {
#ifdef IP_BIND_ADDRESS_NO_PORT
    setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
#endif
    struct sockaddr_in src = {.sin_family = AF_INET};
    src.sin_addr.s_addr =
        htonl(0x7f000001u + (uint32_t)(c->gidx % o->src_addrs));
    if (bind(c->fd, (struct sockaddr *)&src, sizeof(src)) < 0)
      goto fail;
  }
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port = htons((uint16_t)bench_conn_port(
                               o->ports, o->n_ports, c->gidx))};
  if (inet_pton(AF_INET, o->host, &sa.sin_addr) != 1)
    goto fail;
  if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 &&
      errno != EINPROGRESS)
    goto fail;
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
  if (epoll_ctl(w->ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
    goto fail;
  c->out_armed = 1;
  return;
fail:
  if (w->r->conns_failed < 3)
    fprintf(stderr, "imchat-bench: connect %s: %s\n", c->user, strerror(errno));
  kill_conn(c, 0);
}

/* The TCP connection is up: send the upgrade request or CONNECT. */
static void on_connected(conn *c) {
  const bench_opts *o = c->w->o;
  int err = 0;
  socklen_t el = sizeof(err);
  getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
  if (err) {
    if (c->w->r->conns_failed < 3)
      fprintf(stderr, "imchat-bench: connect %s: %s\n", c->user, strerror(err));
    kill_conn(c, 0);
    return;
  }
  if (o->target == T_MQTT_TCP) {
    c->state = C_AUTH;
    mqtt_connect(c);
    flush(c);
    return;
  }
  char req[IMC_JWT_SIGN_MAX + 512];
  int n, port = bench_conn_port(o->ports, o->n_ports, c->gidx);
  if (o->target == T_IMCHAT) {
    char tok[IMC_JWT_SIGN_MAX];
    int64_t now = (int64_t)time(NULL);
    if (imc_jwt_sign_hs256(o->secret, o->secret_len, c->user, "bench", NULL,
                           NULL, now, now + 86400, tok, sizeof(tok)) < 0) {
      c->w->r->protocol_errors++;
      kill_conn(c, 0);
      return;
    }
    n = snprintf(
        req, sizeof(req),
        "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: " WS_KEY "\r\n"
        "Sec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n",
        o->ws_path, o->host, port, tok);
  } else {
    n = snprintf(req, sizeof(req),
                 "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: " WS_KEY "\r\n"
                 "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n"
                 "\r\n",
                 o->ws_path, o->host, port);
  }
  c->state = C_HANDSHAKE;
  dbuf_add(&c->out, req, (size_t)n);
  flush(c);
}

/* Reads the HTTP answer to the upgrade; on 101 hands over to wslay. */
static void on_handshake(conn *c) {
  for (;;) {
    uint8_t b[4096];
    ssize_t r = recv(c->fd, b, sizeof(b), 0);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return;
    if (r <= 0 || dbuf_add(&c->hs, b, (size_t)r) < 0 || c->hs.len > 65536)
      goto fail;
    uint8_t *end = memmem(c->hs.p, c->hs.len, "\r\n\r\n", 4);
    if (!end)
      continue;
    size_t head = (size_t)(end - c->hs.p) + 4;
    if (c->hs.len < 12 || memcmp(c->hs.p + 9, "101", 3) != 0 ||
        !memmem(c->hs.p, head, WS_ACCEPT, strlen(WS_ACCEPT))) {
      if (c->w->r->conns_failed < 3)
        fprintf(stderr, "imchat-bench: %s: upgrade refused: %.*s\n", c->user,
                (int)(memchr(c->hs.p, '\r', head)
                          ? (uint8_t *)memchr(c->hs.p, '\r', head) - c->hs.p
                          : 0),
                (const char *)c->hs.p);
      goto fail;
    }
    c->hs_off = head;
    if (wslay_event_context_client_init(&c->ws, &ws_cbs, c) != 0)
      goto fail;
    wslay_event_config_set_max_recv_msg_length(c->ws, 1u << 20);
    if (c->w->o->target == T_IMCHAT)
      c->state = C_AUTH; /* the Welcome may already be in hs */
    else
      mqtt_connect(c);
    if (ws_recv_all(c) < 0)
      goto fail;
    mark_dirty(c);
    return;
  }
fail:
  kill_conn(c, 0);
}

static void on_event(conn *c, uint32_t ev) {
  if (c->state == C_CONNECTING) {
    if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))
      on_connected(c);
    return;
  }
  if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
    if (c->state == C_HANDSHAKE) {
      on_handshake(c);
    } else if (c->ws) {
      if (ws_recv_all(c) < 0) {
        kill_conn(c, 1);
        return;
      }
    } else {
      for (;;) {
        uint8_t b[16384];
        ssize_t r = recv(c->fd, b, sizeof(b), 0);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
          break;
        if (r <= 0 || dbuf_add(&c->in, b, (size_t)r) < 0) {
          kill_conn(c, 1);
          return;
        }
        mqtt_parse(c);
        if (c->state == C_DEAD)
          return;
        if ((size_t)r < sizeof(b))
          break;
      }
    }
    if (c->state != C_DEAD)
      mark_dirty(c);
  }
  if ((ev & EPOLLOUT) && c->state != C_DEAD)
    mark_dirty(c);
}

/* ------------------------------------------------------------------ */
/* Keepalive: Ping / PINGREQ when a connection was quiet for a while. */

static void sweep(worker *w, uint64_t now) {
  uint64_t quiet = (uint64_t)(w->o->ping_interval_s * 1e9);
  for (int i = 0; i < w->n; i++) {
    conn *c = &w->c[i];
    if (c->state != C_READY || now - c->last_tx < quiet)
      continue;
    if (w->o->target == T_IMCHAT) {
      Imchat__V1__Ping p = IMCHAT__V1__PING__INIT;
      p.client_time_ms = (int64_t)(now / 1000000u);
      Imchat__V1__ClientFrame f = IMCHAT__V1__CLIENT_FRAME__INIT;
      f.id = ++c->next_id;
      f.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_PING;
      f.ping = &p;
      send_client_frame(c, &f);
    } else {
      uint8_t b[2];
      send_mqtt(c, b, mqtt_encode_simple(b, sizeof(b), MQTT_PINGREQ));
    }
  }
}

/* ------------------------------------------------------------------ */
/* The run */

static void ctl_send(worker *w, uint32_t type, uint64_t a, uint64_t b) {
  bench_ctl m = {.type = type, .a = a, .b = b};
  bench_write_full(w->ctl_out, &m, sizeof(m));
}

static void open_loop_send(worker *w, uint64_t now) {
  if (w->n_senders == 0 || w->interval_ns <= 0)
    return;
  for (;;) {
    uint64_t due = w->t0 + (uint64_t)((double)w->k * w->interval_ns);
    if (due > now || due >= w->t_end)
      return;
    conn *c = &w->c[w->senders[w->k % (uint64_t)w->n_senders]];
    conn *to = c->peer >= 0 ? &w->c[c->peer] : NULL;
    uint64_t k = w->k++;
    if (c->state == C_READY)
      send_message(c, to, due, k);
  }
}

static void start_run(worker *w) {
  const bench_opts *o = w->o;
  w->phase = P_RUN;
  if (o->scenario == S_IDLE)
    return;
  if (o->mode == M_OPEN) {
    /* This worker's share of the rate: proportional to its senders. */
    int total_senders = o->scenario == S_PAIRS   ? o->connections
                        : o->scenario == S_GROUP ? 1
                                                 : o->connections;
    double r = o->rate * (double)w->n_senders / (double)total_senders;
    w->interval_ns = r > 0 ? 1e9 / r : 0;
    return;
  }
  for (int i = 0; i < w->n_senders; i++) {
    conn *c = &w->c[w->senders[i]];
    if (c->state != C_READY)
      continue;
    if (o->scenario == S_PAIRS && (c->idx % 2) != 0)
      continue; /* the first of a pair starts the exchange */
    for (int j = 0; j < o->inflight; j++)
      send_message(c, c->peer >= 0 ? &w->c[c->peer] : NULL, bench_now_ns(), 0);
  }
}

static int drain_done(worker *w) {
  const bench_opts *o = w->o;
  if (o->scenario == S_IDLE)
    return 1;
  if (o->scenario == S_GROUP) {
    if (!w->have_total)
      return 0;
    uint64_t want = w->total_expected * (uint64_t)w->group_receivers;
    return w->r->delivered >= want;
  }
  return w->inflight == 0;
}

/* Offline scenario, after the run: every recipient fetches its inbox. */
static void fetch_offline(worker *w) {
  const bench_opts *o = w->o;
  uint64_t t = bench_now_ns();
  for (int i = 0; i < w->n; i++) {
    char user[48], tok[IMC_JWT_SIGN_MAX], hdr[IMC_JWT_SIGN_MAX + 128];
    bench_user(o, 'o', w->c[i].gidx, user, sizeof(user));
    int64_t now = (int64_t)time(NULL);
    if (imc_jwt_sign_hs256(o->secret, o->secret_len, user, "bench", NULL, NULL,
                           now, now + 3600, tok, sizeof(tok)) < 0) {
      w->r->fetch_errors++;
      continue;
    }
    snprintf(hdr, sizeof(hdr),
             "Authorization: Bearer %s\r\nAccept: application/x-protobuf\r\n",
             tok);
    uint64_t cursor = 0;
    for (int page = 0; page < 100000; page++) {
      char path[128];
      snprintf(path, sizeof(path), "/offline?cursor=%llu&limit=%d",
               (unsigned long long)cursor, o->fetch_limit);
      int status;
      uint8_t *body = NULL;
      size_t blen = 0;
      if (bench_http(o, "GET", path, hdr, &status, &body, &blen, 10000) < 0 ||
          status != 200) {
        w->r->fetch_errors++;
        free(body);
        break;
      }
      Imchat__V1__OfflinePage *pg =
          imchat__v1__offline_page__unpack(NULL, blen, body);
      free(body);
      if (!pg) {
        w->r->fetch_errors++;
        break;
      }
      w->r->fetch_pages++;
      w->r->fetched += pg->n_messages;
      int more = pg->has_more && pg->next_cursor > cursor;
      cursor = pg->next_cursor;
      imchat__v1__offline_page__free_unpacked(pg, NULL);
      if (!more)
        break;
    }
  }
  w->r->fetch_ns = bench_now_ns() - t;
}

static int64_t next_timeout_ms(worker *w, uint64_t now) {
  uint64_t next = now + 100000000u; /* 100 ms at most */
  if (w->phase == P_RUN) {
    if (w->o->mode == M_OPEN && w->interval_ns > 0 && w->n_senders) {
      uint64_t due = w->t0 + (uint64_t)((double)w->k * w->interval_ns);
      if (due < next)
        next = due;
    }
    if (w->t_end < next)
      next = w->t_end;
  }
  if (next <= now)
    return 0;
  return (int64_t)((next - now + 999999u) / 1000000u);
}

static int setup(worker *w) {
  const bench_opts *o = w->o;
  const bench_slice *s = w->s;
  w->n = s->count;
  w->c = calloc((size_t)w->n + 1, sizeof(conn));
  w->dirty_list = calloc((size_t)w->n + 1, sizeof(conn *));
  w->senders = calloc((size_t)w->n + 1, sizeof(int));
  w->arena = malloc(ARENA_SIZE);
  if (!w->c || !w->dirty_list || !w->senders || !w->arena)
    return -1;
  w->alloc.alloc = arena_alloc;
  w->alloc.free = arena_free;
  w->alloc.allocator_data = w;
  w->rng = 0x9e3779b97f4a7c15ull ^ ((uint64_t)getpid() << 16);
  for (int i = 0; i < w->n; i++) {
    conn *c = &w->c[i];
    c->w = w;
    c->fd = -1;
    c->idx = i;
    c->gidx = s->first + i;
    c->peer = -1;
    switch (o->scenario) {
    case S_IDLE:
      bench_user(o, 'u', c->gidx, c->user, sizeof(c->user));
      break;
    case S_PAIRS:
      bench_user(o, 'u', c->gidx, c->user, sizeof(c->user));
      c->peer = i ^ 1;
      c->receiver = c->sender = 1;
      w->senders[w->n_senders++] = i;
      if (o->target != T_IMCHAT)
        snprintf(c->topic, sizeof(c->topic), "u/%s", c->user);
      break;
    case S_GROUP:
      bench_user(o, 'm', c->gidx, c->user, sizeof(c->user));
      if (c->gidx == 0) {
        c->sender = 1;
        w->senders[w->n_senders++] = i;
      } else {
        c->receiver = 1;
        w->group_receivers++;
        if (o->target != T_IMCHAT)
          snprintf(c->topic, sizeof(c->topic), "g/%s", o->group_id);
      }
      break;
    case S_OFFLINE:
      bench_user(o, 's', c->gidx, c->user, sizeof(c->user));
      c->sender = 1;
      w->senders[w->n_senders++] = i;
      break;
    }
  }
  if (o->scenario == S_GROUP) {
    w->gmax = (uint64_t)(o->rate * o->duration_s) + 16;
    w->g_intended = calloc(w->gmax, sizeof(uint64_t));
    w->g_last = calloc(w->gmax, sizeof(uint64_t));
    w->g_cnt = calloc(w->gmax, sizeof(uint64_t));
    if (!w->g_intended || !w->g_last || !w->g_cnt)
      return -1;
    w->r->group_msgs = w->gmax;
  }
  w->ep = epoll_create1(EPOLL_CLOEXEC);
  if (w->ep < 0)
    return -1;
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
  return epoll_ctl(w->ep, EPOLL_CTL_ADD, w->ctl_in, &ev);
}

static void on_ctl(worker *w) {
  bench_ctl m;
  if (bench_read_full(w->ctl_in, &m, sizeof(m), 1000) < 0) {
    w->phase = P_DONE; /* the parent is gone */
    return;
  }
  if (m.type == CTL_GO && w->phase == P_WAIT_GO) {
    w->t0 = m.a;
    w->t_end = m.b;
    w->phase = P_RUN; /* start_run() once t0 is reached */
  } else if (m.type == CTL_TOTAL) {
    w->total_expected = m.a;
    w->have_total = 1;
  }
}

static void loop(worker *w) {
  const bench_opts *o = w->o;
  struct epoll_event evs[512];
  uint64_t connect_deadline =
      bench_now_ns() + (uint64_t)(o->connect_timeout_s * 1e9);
  uint64_t connect_start = bench_now_ns();
  int started = 0;
  while (w->phase != P_DONE) {
    uint64_t now = bench_now_ns();
    int n = epoll_wait(w->ep, evs, 512, (int)next_timeout_ms(w, now));
    if (n < 0 && errno != EINTR)
      break;
    for (int i = 0; i < n; i++) {
      if (evs[i].data.ptr == NULL)
        on_ctl(w);
      else
        on_event(evs[i].data.ptr, evs[i].events);
    }
    now = bench_now_ns();
    switch (w->phase) {
    case P_CONNECT:
      while (w->next_start < w->n && w->pending < o->concurrency)
        start_conn(w, &w->c[w->next_start++]);
      if ((w->next_start == w->n && w->pending == 0) ||
          now > connect_deadline) {
        for (int i = 0; i < w->n; i++) {
          if (w->c[i].state == C_IDLE)
            w->r->conns_failed++;
          if (w->c[i].state != C_READY)
            kill_conn(&w->c[i], 0);
        }
        w->r->connect_ns = now - connect_start;
        w->phase = P_WAIT_GO;
        ctl_send(w, CTL_READY, w->r->conns_ok, w->r->conns_failed);
      }
      break;
    case P_RUN:
      if (!started && now >= w->t0) {
        started = 1;
        start_run(w);
      }
      if (started && o->mode == M_OPEN)
        open_loop_send(w, now);
      if (now >= w->t_end) {
        w->phase = P_DRAIN;
        w->t_drain_end = now + (uint64_t)(o->drain_s * 1e9);
        ctl_send(w, CTL_SENT, o->scenario == S_GROUP ? w->k : w->r->sent, 0);
      }
      break;
    case P_DRAIN:
      if (w->have_total && drain_done(w))
        w->phase = P_DONE;
      else if (now > w->t_drain_end)
        w->phase = P_DONE;
      break;
    default:
      break;
    }
    if (w->phase >= P_WAIT_GO && now - w->last_sweep > 1000000000u) {
      w->last_sweep = now;
      sweep(w, now);
    }
    for (int i = 0; i < w->n_dirty; i++)
      flush(w->dirty_list[i]);
    w->n_dirty = 0;
  }
  w->r->store_ns = w->t_end > w->t0 ? w->t_end - w->t0 : 0;
}

int bench_worker_run(const bench_opts *o, const bench_slice *s, int ctl_in,
                     int ctl_out) {
  worker w = {0};
  bench_result *r = calloc(1, sizeof(*r));
  int rc = 1;
  if (!r)
    return 1;
  for (int i = 0; i < H_COUNT; i++)
    bhist_init(&r->h[i]);
  w.o = o;
  w.s = s;
  w.r = r;
  w.ctl_in = ctl_in;
  w.ctl_out = ctl_out;
  w.ep = -1;
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (setup(&w) < 0) {
    fprintf(stderr, "imchat-bench: worker %d: setup failed\n", s->index);
    ctl_send(&w, CTL_READY, 0, (uint64_t)s->count);
    goto out;
  }
  loop(&w);
  if (o->scenario == S_OFFLINE)
    fetch_offline(&w);
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  r->cpu_s = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
             (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
  ctl_send(&w, CTL_RESULT, 0, 0);
  if (bench_write_full(ctl_out, r, sizeof(*r)) == 0 &&
      (o->scenario != S_GROUP ||
       (bench_write_full(ctl_out, w.g_intended, w.gmax * 8) == 0 &&
        bench_write_full(ctl_out, w.g_last, w.gmax * 8) == 0 &&
        bench_write_full(ctl_out, w.g_cnt, w.gmax * 8) == 0)))
    rc = 0;
out:
  for (int i = 0; i < w.n; i++)
    kill_conn(&w.c[i], 0);
  if (w.ep >= 0)
    close(w.ep);
  free(w.c);
  free(w.dirty_list);
  free(w.senders);
  free(w.arena);
  free(w.scratch);
  free(w.g_intended);
  free(w.g_last);
  free(w.g_cnt);
  free(r);
  return rc;
}
