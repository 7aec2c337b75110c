/*
 * The gateway role: HTTP/1.1 upgrade, JWT authentication, WebSocket
 * framing (wslay), heartbeats, registry leases and pushes with delivery
 * tracking. No sockets: bytes come in through imc_gateway_conn_recv and
 * leave through the transport vtable when the host flushes.
 */
#include <imchat/gateway.h>

#include "util/alloc.h"
#include "util/log.h"
#include "util/buf.h"
#include "util/hash.h"
#include "util/msg.h"
#include "protocol/http.h"
#include "protocol/jwt.h"
#include "protocol/pb.h"
#include "util/timer.h"
#include "util/vtbl.h"
#include "protocol/wsframe.h"

#include <wslay/wslay.h>

#include <stdio.h>
#include <string.h>

#define HEAD_MAX 8192       /* request head limit (431 beyond) */
#define MAX_HDRS 64         /* header lines per request */
#define BAD_FRAMES_MAX 10   /* undecodable frames in a row before 1008 */
#define CLOSE_WAIT_MS 5000  /* wait for the peer's close or drain */
#define FRAME_OVERHEAD 1024 /* room for the fields around a body */
#define IOV_BATCH 64
#define REPLY_WAIT_MS 30000 /* the HTTP handler's time to answer */

enum conn_state {
  ST_HTTP,  /* reading the request head */
  ST_AUTH,  /* waiting for the key source */
  ST_WS,    /* upgraded */
  ST_REPLY, /* an HTTP request is with the handler */
  ST_DONE   /* HTTP answer queued; close once written */
};

enum conn_flag {
  F_DIRTY = 1 << 0,          /* in gw->dirty: has output to write */
  F_BLOCKED = 1 << 1,        /* transport said WOULDBLOCK */
  F_REGISTERED = 1 << 2,     /* holds a registry entry */
  F_ABORT = 1 << 3,          /* close the socket at the next check */
  F_CLOSING = 1 << 4,        /* a close frame is queued */
  F_NOMEM = 1 << 5,          /* aborted for want of memory */
  F_CLOSE_RECEIVED = 1 << 6, /* the peer's close frame arrived */
  F_READ_DONE = 1 << 7,      /* wslay stopped reading (protocol error) */
  F_DISCARD = 1 << 8         /* we sent close: wslay's replies are dropped */
};

/* How a connection ends. */
enum release_mode {
  REL_CLOSE, /* tell the transport to close the socket */
  REL_LOST,  /* the host lost the socket already */
  REL_SILENT /* the gateway is being deleted: call nothing */
};

/* A pushed message waiting for its DeliverAck. Messages are shared by
 * every connection they were pushed to. */
typedef struct shmsg {
  uint32_t refs;
  imc_msg msg;
  /* strings and body follow */
} shmsg;

typedef struct push {
  struct push *next;
  shmsg *sm;
  int64_t deadline;
} push;

/* An operation waiting for a completion that concerns one connection
 * (an HTTP reply is one). When the connection goes first, c becomes NULL
 * and the completion is dropped. */
typedef struct imc_http_reply pend;
struct imc_http_reply {
  imc_gateway *gw;
  imc_conn *c;
  pend *prev, *next;
  uint64_t frame_id;
};

struct imc_conn {
  imc_gateway *gw;
  void *ud;
  imc_conn *prev, *next;   /* gw->conns */
  imc_conn *dprev, *dnext; /* gw->dirty */
  imc_conn *unext;         /* bucket of gw->users */
  imc_timer timer;
  uint64_t id;
  uint8_t state;
  uint8_t bad_frames;
  uint16_t flags;
  char *head; /* partial request head, when it spans reads */
  size_t head_len;
  wslay_event_context_ptr ws; /* only while a frame is partly received */
  imc_ws_scan scan;
  imc_bufq out;
  const uint8_t *in; /* bytes being fed to wslay */
  size_t in_len;
  char *user;   /* "user\0device\0", one allocation */
  char *device; /* points into user */
  int64_t opened_at, last_rx, next_beat, close_at;
  int64_t tokens; /* rate limit, in thousandths of a send */
  int64_t tokens_at;
  push *ifl_head, *ifl_tail;
  pend *pends;
};

struct imc_gateway_options {
  imc_mem mem;
  char *node_id;
  uint8_t *secret;
  size_t secret_len;
  char *pem;
  size_t pem_len;
  char *issuer, *audience;
  size_t max_body, max_outbound;
  uint32_t heartbeat_ms, idle_ms, handshake_ms, lease_s, ack_ms;
  uint32_t rate, burst;
  imc_transport_vtbl transport;
  void *transport_ud;
  imc_registry_vtbl registry;
  void *registry_ud;
  imc_upstream_vtbl upstream;
  void *upstream_ud;
  imc_keysrc_vtbl keysrc;
  void *keysrc_ud;
  imc_http_handler_vtbl http;
  void *http_ud;
  imc_clock clock;
  imc_logger log;
};

struct imc_gateway {
  imc_mem mem;
  imc_gateway_options o; /* strings owned by the gateway */
  imc_jwt_key hs, pub;
  imc_jwt_policy policy;
  void *user_data;
  imc_conn *conns;
  imc_conn *dirty;
  imc_theap timers;
  imc_conn **users; /* buckets by user id */
  size_t users_cap, n_users;
  uint64_t next_id;
  int shutting_down;
  uint64_t stats[IMC_GW_STAT_COUNT_];
  uint64_t errors[10]; /* Error frames by code */
  ProtobufCAllocator pba;
  struct wslay_event_callbacks wscb;
};

/* ------------------------------------------------------------------ */
/* Options                                                              */
/* ------------------------------------------------------------------ */

int imc_gateway_options_new(imc_gateway_options **out, const imc_mem *mem) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_gateway_options *o = imc_calloc(mem, 1, sizeof(*o));
  if (o == NULL)
    return IMC_ERR_NOMEM;
  o->mem = *mem;
  o->max_body = 64 * 1024;
  o->max_outbound = 1024 * 1024;
  o->heartbeat_ms = 30000;
  o->idle_ms = 90000;
  o->handshake_ms = 10000;
  o->lease_s = 90;
  o->ack_ms = 10000;
  o->rate = 100;
  o->burst = 200;
  o->clock = *imc_clock_default();
  o->log.level = IMC_LOG_INFO;
  *out = o;
  return 0;
}

static void options_clear(imc_gateway_options *o) {
  const imc_mem *m = &o->mem;
  imc_free(m, o->node_id);
  if (o->secret)
    memset(o->secret, 0, o->secret_len);
  imc_free(m, o->secret);
  imc_free(m, o->pem);
  imc_free(m, o->issuer);
  imc_free(m, o->audience);
}

void imc_gateway_options_del(imc_gateway_options *o) {
  if (o == NULL)
    return;
  imc_mem m = o->mem;
  options_clear(o);
  imc_free(&m, o);
}

/* Replaces *dst with a copy of src[0..len); NULL src clears. */
static int set_bytes(const imc_mem *m, char **dst, size_t *dst_len,
                     const void *src, size_t len) {
  char *p = NULL;
  if (src != NULL) {
    p = imc_strndup(m, src, len);
    if (p == NULL)
      return IMC_ERR_NOMEM;
  }
  imc_free(m, *dst);
  *dst = p;
  if (dst_len)
    *dst_len = len;
  return 0;
}

int imc_gateway_options_set_node_id(imc_gateway_options *o,
                                    const char *node_id) {
  if (o == NULL || node_id == NULL || !imc_id_valid(node_id, strlen(node_id)))
    return IMC_ERR_INVALID_ARGUMENT;
  return set_bytes(&o->mem, &o->node_id, NULL, node_id, strlen(node_id));
}

int imc_gateway_options_set_jwt_secret(imc_gateway_options *o,
                                       const uint8_t *secret, size_t len) {
  if (o == NULL || secret == NULL || len == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  return set_bytes(&o->mem, (char **)&o->secret, &o->secret_len, secret, len);
}

int imc_gateway_options_set_jwt_public_key(imc_gateway_options *o,
                                           const char *pem, size_t len) {
  if (o == NULL || pem == NULL || len == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_jwt_key k;
  int rv = imc_jwt_key_init_pem(&k, pem, len);
  if (rv != 0)
    return rv;
  imc_jwt_key_clear(&k, &o->mem);
  return set_bytes(&o->mem, &o->pem, &o->pem_len, pem, len);
}

int imc_gateway_options_set_jwt_issuer(imc_gateway_options *o,
                                       const char *iss) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  return set_bytes(&o->mem, &o->issuer, NULL, iss, iss ? strlen(iss) : 0);
}

int imc_gateway_options_set_jwt_audience(imc_gateway_options *o,
                                         const char *aud) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  return set_bytes(&o->mem, &o->audience, NULL, aud, aud ? strlen(aud) : 0);
}

int imc_gateway_options_set_max_body(imc_gateway_options *o, size_t bytes) {
  if (o == NULL || bytes == 0 || bytes > 64 * 1024 * 1024)
    return IMC_ERR_INVALID_ARGUMENT;
  o->max_body = bytes;
  return 0;
}

int imc_gateway_options_set_max_outbound(imc_gateway_options *o, size_t bytes) {
  if (o == NULL || bytes < 1024)
    return IMC_ERR_INVALID_ARGUMENT;
  o->max_outbound = bytes;
  return 0;
}

int imc_gateway_options_set_heartbeat_ms(imc_gateway_options *o, uint32_t ms) {
  if (o == NULL || ms == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->heartbeat_ms = ms;
  return 0;
}

int imc_gateway_options_set_idle_timeout_ms(imc_gateway_options *o,
                                            uint32_t ms) {
  if (o == NULL || ms == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->idle_ms = ms;
  return 0;
}

int imc_gateway_options_set_handshake_timeout_ms(imc_gateway_options *o,
                                                 uint32_t ms) {
  if (o == NULL || ms == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->handshake_ms = ms;
  return 0;
}

int imc_gateway_options_set_lease_ttl_s(imc_gateway_options *o, uint32_t s) {
  if (o == NULL || s == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->lease_s = s;
  return 0;
}

int imc_gateway_options_set_ack_timeout_ms(imc_gateway_options *o,
                                           uint32_t ms) {
  if (o == NULL || ms == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->ack_ms = ms;
  return 0;
}

int imc_gateway_options_set_rate_limit(imc_gateway_options *o, uint32_t per_s,
                                       uint32_t burst) {
  if (o == NULL || per_s == 0 || burst == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->rate = per_s;
  o->burst = burst;
  return 0;
}

int imc_gateway_options_set_transport(imc_gateway_options *o,
                                      const imc_transport_vtbl *vt, void *ud) {
  if (o == NULL || vt == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_vtbl_copy(&o->transport, sizeof(o->transport), vt, vt->struct_size);
  o->transport_ud = ud;
  return 0;
}

int imc_gateway_options_set_registry(imc_gateway_options *o,
                                     const imc_registry_vtbl *vt, void *ud) {
  if (o == NULL || vt == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_vtbl_copy(&o->registry, sizeof(o->registry), vt, vt->struct_size);
  o->registry_ud = ud;
  return 0;
}

int imc_gateway_options_set_upstream(imc_gateway_options *o,
                                     const imc_upstream_vtbl *vt, void *ud) {
  if (o == NULL || vt == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_vtbl_copy(&o->upstream, sizeof(o->upstream), vt, vt->struct_size);
  o->upstream_ud = ud;
  return 0;
}

int imc_gateway_options_set_keysrc(imc_gateway_options *o,
                                   const imc_keysrc_vtbl *vt, void *ud) {
  if (o == NULL || vt == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_vtbl_copy(&o->keysrc, sizeof(o->keysrc), vt, vt->struct_size);
  o->keysrc_ud = ud;
  return 0;
}

int imc_gateway_options_set_http_handler(imc_gateway_options *o,
                                         const imc_http_handler_vtbl *vt,
                                         void *ud) {
  if (o == NULL || vt == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_vtbl_copy(&o->http, sizeof(o->http), vt, vt->struct_size);
  o->http_ud = ud;
  return 0;
}

int imc_gateway_options_set_clock(imc_gateway_options *o,
                                  const imc_clock *clock) {
  return o ? imc_clock_assign(&o->clock, clock) : IMC_ERR_INVALID_ARGUMENT;
}

int imc_gateway_options_set_log(imc_gateway_options *o, imc_log_cb cb, void *ud,
                                imc_log_level max_level) {
  return o ? imc_logger_assign(&o->log, cb, ud, max_level)
           : IMC_ERR_INVALID_ARGUMENT;
}

/* ------------------------------------------------------------------ */
/* Helpers                                                              */
/* ------------------------------------------------------------------ */

#define gw_log(gw, ...) imc_logf(&(gw)->o.log, __VA_ARGS__)

static int64_t now_ms(imc_gateway *gw) {
  return imc_clock_now(&gw->o.clock);
}

static void stat_inc(imc_gateway *gw, imc_gateway_stat s) {
  gw->stats[s]++;
}

static void list_remove(imc_conn **head, imc_conn *c, imc_conn **prev,
                        imc_conn **next) {
  if (*prev)
    (*prev)->next = *next;
  else
    *head = *next;
  if (*next)
    (*next)->prev = *prev;
}

static void dirty_add(imc_conn *c) {
  imc_gateway *gw = c->gw;
  if (c->flags & (F_DIRTY | F_BLOCKED))
    return;
  c->flags |= F_DIRTY;
  c->dprev = NULL;
  c->dnext = gw->dirty;
  if (gw->dirty)
    gw->dirty->dprev = c;
  gw->dirty = c;
}

static void dirty_remove(imc_conn *c) {
  if (!(c->flags & F_DIRTY))
    return;
  c->flags &= (uint8_t)~F_DIRTY;
  if (c->dprev)
    c->dprev->dnext = c->dnext;
  else
    c->gw->dirty = c->dnext;
  if (c->dnext)
    c->dnext->dprev = c->dprev;
  c->dprev = c->dnext = NULL;
}

static void users_insert(imc_gateway *gw, imc_conn *c) {
  if (gw->n_users >= gw->users_cap * 2) {
    /* Grow; a failed allocation only makes the chains longer. */
    size_t cap = gw->users_cap * 4;
    imc_conn **b = imc_calloc(&gw->mem, cap, sizeof(*b));
    if (b != NULL) {
      for (size_t i = 0; i < gw->users_cap; i++) {
        imc_conn *x = gw->users[i];
        while (x) {
          imc_conn *nx = x->unext;
          size_t j = imc_hash_str(x->user) & (cap - 1);
          x->unext = b[j];
          b[j] = x;
          x = nx;
        }
      }
      imc_free(&gw->mem, gw->users);
      gw->users = b;
      gw->users_cap = cap;
    }
  }
  size_t i = imc_hash_str(c->user) & (gw->users_cap - 1);
  c->unext = gw->users[i];
  gw->users[i] = c;
  gw->n_users++;
}

static void users_remove(imc_gateway *gw, imc_conn *c) {
  imc_conn **pp = &gw->users[imc_hash_str(c->user) & (gw->users_cap - 1)];
  for (; *pp; pp = &(*pp)->unext) {
    if (*pp == c) {
      *pp = c->unext;
      gw->n_users--;
      return;
    }
  }
}

static imc_conn *users_first(imc_gateway *gw, const char *user) {
  return gw->users[imc_hash_str(user) & (gw->users_cap - 1)];
}

static void shmsg_unref(imc_gateway *gw, shmsg *sm) {
  if (--sm->refs == 0)
    imc_free(&gw->mem, sm);
}

/* ------------------------------------------------------------------ */
/* Connection teardown and checks                                       */
/* ------------------------------------------------------------------ */

static void reg_done(void *ud, int status) {
  imc_gateway *gw = ud;
  if (status != 0)
    gw_log(gw, IMC_LOG_WARN, "registry: %s", imc_strerror(status));
}

static imc_reg_entry reg_entry(imc_conn *c) {
  imc_reg_entry e = {c->user, c->device, c->gw->o.node_id, c->id};
  return e;
}

/* Releases every un-ACKed push of c; with notify, each goes to the
 * upstream's slow path first. */
static void inflight_drop(imc_conn *c, int notify) {
  imc_gateway *gw = c->gw;
  push *p = c->ifl_head;
  c->ifl_head = c->ifl_tail = NULL;
  while (p) {
    push *next = p->next;
    if (notify) {
      stat_inc(gw, IMC_GW_STAT_UNDELIVERED);
      if (gw->o.upstream.undelivered)
        gw->o.upstream.undelivered(gw->o.upstream_ud, &p->sm->msg, c->user);
    }
    shmsg_unref(gw, p->sm);
    imc_free(&gw->mem, p);
    p = next;
  }
}

static void inflight_fail(imc_conn *c) {
  inflight_drop(c, 1);
}

/* Releases c. Un-ACKed pushes go back to the upstream first. */
static void conn_free(imc_conn *c, enum release_mode mode) {
  imc_gateway *gw = c->gw;
  if (c->user != NULL)
    users_remove(gw, c);
  if (mode != REL_SILENT && (c->flags & F_REGISTERED) &&
      gw->o.registry.unregister) {
    imc_reg_entry e = reg_entry(c);
    if (gw->o.registry.unregister(gw->o.registry_ud, &e, reg_done, gw) != 0)
      gw_log(gw, IMC_LOG_WARN, "registry: unregister of %s/%s failed", c->user,
             c->device);
  }
  inflight_drop(c, mode != REL_SILENT);
  for (pend *p = c->pends; p; p = p->next)
    p->c = NULL;
  dirty_remove(c);
  list_remove(&gw->conns, c, &c->prev, &c->next);
  imc_theap_remove(&gw->timers, &c->timer);
  if (c->ws)
    wslay_event_context_free(c->ws);
  if (c->state == ST_WS)
    gw->stats[IMC_GW_STAT_WEBSOCKETS]--;
  gw->stats[IMC_GW_STAT_CONNECTIONS]--;
  gw->stats[IMC_GW_STAT_OUTBOUND_BYTES] -= c->out.len;
  imc_bufq_free(&c->out, &gw->mem);
  imc_free(&gw->mem, c->head);
  imc_free(&gw->mem, c->user);
  void *ud = c->ud;
  imc_free(&gw->mem, c);
  if (mode == REL_CLOSE)
    gw->o.transport.close(gw->o.transport_ud, ud);
}

static int64_t conn_deadline(imc_conn *c) {
  imc_gateway *gw = c->gw;
  switch (c->state) {
  case ST_HTTP:
  case ST_AUTH:
    return c->opened_at + gw->o.handshake_ms;
  case ST_REPLY:
  case ST_DONE:
    return c->close_at;
  default:
    break;
  }
  if (c->flags & F_CLOSING)
    return c->close_at;
  int64_t at = c->next_beat;
  int64_t idle = c->last_rx + gw->o.idle_ms;
  if (idle < at)
    at = idle;
  if (c->ifl_head && c->ifl_head->deadline < at)
    at = c->ifl_head->deadline;
  return at;
}

/* The timer is in the heap from conn_new on, so moving it never
 * allocates. */
static void conn_schedule(imc_conn *c) {
  imc_theap_set(&c->gw->timers, &c->gw->mem, &c->timer, conn_deadline(c));
}

/*
 * Closes c if it is finished: an abort, a close handshake that is done,
 * or an HTTP answer that has been written. Returns 0 if c lives on, else
 * IMC_ERR_CLOSED (c is freed).
 */
static int conn_check(imc_conn *c) {
  if (c->flags & F_ABORT) {
    int rv = (c->flags & F_NOMEM) ? IMC_ERR_NOMEM : IMC_ERR_CLOSED;
    conn_free(c, REL_CLOSE);
    return rv;
  }
  if (c->out.len != 0)
    return 0;
  if (c->state == ST_DONE) {
    conn_free(c, REL_CLOSE);
    return IMC_ERR_CLOSED;
  }
  if (c->state == ST_WS && (c->flags & F_CLOSING) &&
      (c->flags & (F_CLOSE_RECEIVED | F_READ_DONE))) {
    conn_free(c, REL_CLOSE);
    return IMC_ERR_CLOSED;
  }
  return 0;
}

/* ------------------------------------------------------------------ */
/* Output                                                               */
/* ------------------------------------------------------------------ */

static int queue_bytes(imc_conn *c, const void *data, size_t len) {
  imc_gateway *gw = c->gw;
  if (imc_bufq_append(&c->out, &gw->mem, data, len) != 0)
    return IMC_ERR_NOMEM;
  gw->stats[IMC_GW_STAT_OUTBOUND_BYTES] += len;
  dirty_add(c);
  return 0;
}

/* Writes what c has queued. Returns 0 or IMC_ERR_CLOSED (c freed). */
static int conn_write(imc_conn *c) {
  imc_gateway *gw = c->gw;
  dirty_remove(c);
  c->flags &= (uint8_t)~F_BLOCKED;
  while (c->out.len > 0) {
    struct iovec iov[IOV_BATCH];
    int n = imc_bufq_iov(&c->out, iov, IOV_BATCH);
    ssize_t w = gw->o.transport.send(gw->o.transport_ud, c->ud, iov, n);
    if (w == IMC_ERR_WOULDBLOCK) {
      c->flags |= F_BLOCKED;
      break;
    }
    if (w < 0) {
      c->flags |= F_ABORT;
      break;
    }
    if ((size_t)w > c->out.len)
      w = (ssize_t)c->out.len;
    imc_bufq_consume(&c->out, &gw->mem, (size_t)w);
    gw->stats[IMC_GW_STAT_OUTBOUND_BYTES] -= (uint64_t)w;
  }
  return conn_check(c);
}

static const char *status_text(int status) {
  switch (status) {
  case 200:
    return "OK";
  case 400:
    return "Bad Request";
  case 401:
    return "Unauthorized";
  case 403:
    return "Forbidden";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 409:
    return "Conflict";
  case 413:
    return "Payload Too Large";
  case 426:
    return "Upgrade Required";
  case 431:
    return "Request Header Fields Too Large";
  case 500:
    return "Internal Server Error";
  case 503:
    return "Service Unavailable";
  default:
    return "Internal Server Error";
  }
}

/*
 * Queues a complete HTTP answer and closes the connection once it is
 * written. extra holds additional header lines, each ending in CRLF.
 */
static int http_answer(imc_conn *c, int status, const char *ctype,
                       const char *extra, const char *body, size_t body_len) {
  char head[1024];
  int n = snprintf(head, sizeof(head),
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
                   "Content-Length: %zu\r\nCache-Control: no-store\r\n"
                   "Connection: close\r\n%s\r\n",
                   status, status_text(status), ctype, body_len,
                   extra ? extra : "");
  c->state = ST_DONE;
  c->close_at = now_ms(c->gw) + CLOSE_WAIT_MS;
  conn_schedule(c);
  if (status >= 400)
    stat_inc(c->gw,
             status == 401 ? IMC_GW_STAT_AUTH_FAILED : IMC_GW_STAT_HTTP_ERRORS);
  if (queue_bytes(c, head, (size_t)n) != 0 ||
      queue_bytes(c, body, body_len) != 0) {
    c->flags |= F_ABORT | F_NOMEM;
    return IMC_ERR_NOMEM;
  }
  return 0;
}

static int http_error(imc_conn *c, int status, const char *code,
                      const char *message, const char *extra) {
  char body[256];
  int n = snprintf(body, sizeof(body),
                   "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}\n", code,
                   message);
  return http_answer(c, status, "application/json", extra, body, (size_t)n);
}

/* Queues one unfragmented frame. A failure leaves the stream broken, so
 * the connection is aborted. */
static int ws_put(imc_conn *c, uint8_t opcode, const uint8_t *data,
                  size_t len) {
  uint8_t hdr[IMC_WS_HEADER_MAX];
  size_t hl = imc_ws_header(hdr, opcode, len);
  if (queue_bytes(c, hdr, hl) != 0 || queue_bytes(c, data, len) != 0) {
    c->flags |= F_ABORT | F_NOMEM;
    dirty_add(c);
    return IMC_ERR_NOMEM;
  }
  return 0;
}

/* Queues a close frame and gives the peer CLOSE_WAIT_MS to answer. */
static void ws_close(imc_conn *c, uint16_t code, const char *reason) {
  if (c->flags & F_CLOSING)
    return;
  /* Nothing may follow our close frame, wslay's automatic answers
   * included. */
  c->flags |= F_CLOSING | F_DISCARD;
  uint8_t payload[125];
  size_t rl = reason ? strlen(reason) : 0;
  if (rl > sizeof(payload) - 2)
    rl = sizeof(payload) - 2;
  payload[0] = (uint8_t)(code >> 8);
  payload[1] = (uint8_t)code;
  memcpy(payload + 2, reason, rl);
  ws_put(c, IMC_WS_CLOSE, payload, rl + 2);
  c->close_at = now_ms(c->gw) + CLOSE_WAIT_MS;
  conn_schedule(c);
}

/* Queues one binary message on c. */
static int ws_queue(imc_conn *c, const uint8_t *data, size_t len) {
  imc_gateway *gw = c->gw;
  if (c->state != ST_WS || (c->flags & (F_CLOSING | F_ABORT)))
    return IMC_ERR_CLOSED;
  int rv = ws_put(c, IMC_WS_BINARY, data, len);
  if (rv != 0)
    return rv;
  stat_inc(gw, IMC_GW_STAT_FRAMES_OUT);
  if (c->out.len > gw->o.max_outbound) {
    stat_inc(gw, IMC_GW_STAT_SLOW_CLOSED);
    gw_log(gw, IMC_LOG_WARN,
           "conn %llu (%s/%s): %zu bytes queued, closing slow reader",
           (unsigned long long)c->id, c->user, c->device, c->out.len);
    ws_close(c, 1008, "outbound queue full");
    return IMC_ERR_QUEUE_FULL;
  }
  return 0;
}

static int send_frame(imc_conn *c, const Imchat__V1__ServerFrame *f) {
  uint8_t *buf;
  size_t len;
  if (imc_pb_pack_server_frame(f, &c->gw->mem, &buf, &len) != 0)
    return IMC_ERR_NOMEM;
  int rv = ws_queue(c, buf, len);
  imc_free(&c->gw->mem, buf);
  return rv;
}

static Imchat__V1__Error__Code err_code(int rv) {
  switch (rv) {
  case IMC_ERR_INVALID_ARGUMENT:
  case IMC_ERR_PROTO:
    return IMCHAT__V1__ERROR__CODE__BAD_REQUEST;
  case IMC_ERR_AUTH:
  case IMC_ERR_EXPIRED:
    return IMCHAT__V1__ERROR__CODE__UNAUTHENTICATED;
  case IMC_ERR_FORBIDDEN:
    return IMCHAT__V1__ERROR__CODE__FORBIDDEN;
  case IMC_ERR_NOT_FOUND:
    return IMCHAT__V1__ERROR__CODE__NOT_FOUND;
  case IMC_ERR_TOO_LARGE:
    return IMCHAT__V1__ERROR__CODE__TOO_LARGE;
  case IMC_ERR_RATE_LIMITED:
    return IMCHAT__V1__ERROR__CODE__RATE_LIMITED;
  case IMC_ERR_BLOCKED:
    return IMCHAT__V1__ERROR__CODE__BLOCKED;
  case IMC_ERR_UNAVAILABLE:
  case IMC_ERR_QUEUE_FULL:
  case IMC_ERR_IO:
  case IMC_ERR_CLOSED:
    return IMCHAT__V1__ERROR__CODE__UNAVAILABLE;
  default:
    return IMCHAT__V1__ERROR__CODE__INTERNAL;
  }
}

static int send_error(imc_conn *c, uint64_t id, int rv, const char *message) {
  Imchat__V1__Error e = IMCHAT__V1__ERROR__INIT;
  e.code = err_code(rv);
  c->gw->errors[e.code]++;
  e.message = (char *)(message ? message : imc_strerror(rv));
  Imchat__V1__ServerFrame f = IMCHAT__V1__SERVER_FRAME__INIT;
  f.id = id;
  f.body_case = IMCHAT__V1__SERVER_FRAME__BODY_ERROR;
  f.error = &e;
  return send_frame(c, &f);
}

/* ------------------------------------------------------------------ */
/* Client frames                                                        */
/* ------------------------------------------------------------------ */

static pend *pend_new(imc_conn *c, uint64_t frame_id) {
  pend *p = imc_malloc(&c->gw->mem, sizeof(*p));
  if (p == NULL)
    return NULL;
  p->gw = c->gw;
  p->c = c;
  p->frame_id = frame_id;
  p->prev = NULL;
  p->next = c->pends;
  if (c->pends)
    c->pends->prev = p;
  c->pends = p;
  return p;
}

/* Unlinks p from its connection (if any) and frees it. */
static void pend_free(pend *p) {
  imc_conn *c = p->c;
  if (c != NULL) {
    if (p->prev)
      p->prev->next = p->next;
    else
      c->pends = p->next;
    if (p->next)
      p->next->prev = p->prev;
  }
  imc_free(&p->gw->mem, p);
}

static void send_done(void *ud, int status, const imc_send_result *res,
                      const char *message) {
  pend *p = ud;
  imc_conn *c = p->c;
  uint64_t id = p->frame_id;
  pend_free(p);
  if (c == NULL || c->state != ST_WS)
    return;
  if (status != 0) {
    send_error(c, id, status, message);
    return;
  }
  Imchat__V1__SendAck a = IMCHAT__V1__SEND_ACK__INIT;
  a.msg_id = (char *)res->msg_id;
  a.conversation_id = (char *)res->conversation_id;
  a.seq = res->seq;
  a.sent_at_ms = res->sent_at_ms;
  a.client_msg_id = (char *)(res->client_msg_id ? res->client_msg_id : "");
  Imchat__V1__ServerFrame f = IMCHAT__V1__SERVER_FRAME__INIT;
  f.id = id;
  f.body_case = IMCHAT__V1__SERVER_FRAME__BODY_SEND_ACK;
  f.send_ack = &a;
  send_frame(c, &f);
}

/* Token bucket in thousandths of a send. */
static int rate_take(imc_conn *c) {
  imc_gateway *gw = c->gw;
  int64_t now = now_ms(gw);
  int64_t cap = (int64_t)gw->o.burst * 1000;
  c->tokens += (now - c->tokens_at) * (int64_t)gw->o.rate;
  if (c->tokens > cap)
    c->tokens = cap;
  c->tokens_at = now;
  if (c->tokens < 1000)
    return 0;
  c->tokens -= 1000;
  return 1;
}

static void on_send(imc_conn *c, uint64_t id,
                    const Imchat__V1__SendRequest *s) {
  imc_gateway *gw = c->gw;
  if (!rate_take(c)) {
    stat_inc(gw, IMC_GW_STAT_RATE_LIMITED);
    send_error(c, id, IMC_ERR_RATE_LIMITED, "send rate limit exceeded");
    return;
  }
  if (s->body.len > gw->o.max_body) {
    send_error(c, id, IMC_ERR_TOO_LARGE, "body exceeds the size limit");
    return;
  }
  if (gw->o.upstream.send == NULL) {
    send_error(c, id, IMC_ERR_UNAVAILABLE, "routing is not available");
    return;
  }
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
  pend *p = pend_new(c, id);
  if (p == NULL) {
    send_error(c, id, IMC_ERR_NOMEM, "out of memory");
    return;
  }
  int rv = gw->o.upstream.send(gw->o.upstream_ud, &req, send_done, p);
  if (rv != 0) {
    pend_free(p);
    send_error(c, id, rv, NULL);
  }
}

static void on_deliver_ack(imc_conn *c, const Imchat__V1__DeliverAck *a) {
  imc_gateway *gw = c->gw;
  for (size_t i = 0; i < a->n_msg_ids; i++) {
    push **pp = &c->ifl_head;
    push *prev = NULL;
    for (; *pp; prev = *pp, pp = &(*pp)->next) {
      push *p = *pp;
      if (strcmp(p->sm->msg.msg_id, a->msg_ids[i]) != 0)
        continue;
      *pp = p->next;
      if (c->ifl_tail == p)
        c->ifl_tail = prev;
      stat_inc(gw, IMC_GW_STAT_ACKS);
      if (gw->o.upstream.delivered)
        gw->o.upstream.delivered(gw->o.upstream_ud, &p->sm->msg, c->user,
                                 c->device);
      shmsg_unref(gw, p->sm);
      imc_free(&gw->mem, p);
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
  send_frame(c, &f);
}

static void on_binary(imc_conn *c, const uint8_t *data, size_t len) {
  imc_gateway *gw = c->gw;
  Imchat__V1__ClientFrame *f =
      imchat__v1__client_frame__unpack(&gw->pba, len, data);
  if (f == NULL || f->body_case == IMCHAT__V1__CLIENT_FRAME__BODY__NOT_SET) {
    uint64_t id = f ? f->id : 0;
    if (f)
      imchat__v1__client_frame__free_unpacked(f, &gw->pba);
    stat_inc(gw, IMC_GW_STAT_BAD_FRAMES);
    if (++c->bad_frames >= BAD_FRAMES_MAX) {
      ws_close(c, 1008, "too many malformed frames");
      return;
    }
    send_error(c, id, IMC_ERR_PROTO,
               f ? "frame has no body" : "malformed ClientFrame");
    return;
  }
  c->bad_frames = 0;
  stat_inc(gw, IMC_GW_STAT_FRAMES_IN);
  switch (f->body_case) {
  case IMCHAT__V1__CLIENT_FRAME__BODY_SEND:
    on_send(c, f->id, f->send);
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

/* ------------------------------------------------------------------ */
/* wslay callbacks                                                      */
/* ------------------------------------------------------------------ */

static ssize_t ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                          int flags, void *ud) {
  imc_conn *c = ud;
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
  imc_conn *c = ud;
  if (!(c->flags & F_DISCARD) && queue_bytes(c, data, len) != 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  return (ssize_t)len;
}

static void
ws_frame_start_cb(wslay_event_context_ptr ctx,
                  const struct wslay_event_on_frame_recv_start_arg *a,
                  void *ud) {
  imc_conn *c = ud;
  c->last_rx = now_ms(c->gw);
}

static void ws_msg_cb(wslay_event_context_ptr ctx,
                      const struct wslay_event_on_msg_recv_arg *a, void *ud) {
  imc_conn *c = ud;
  /* Answers wslay queued earlier in this read (pongs) go out before
   * ours. */
  if (wslay_event_want_write(ctx) && wslay_event_send(ctx) != 0)
    c->flags |= F_ABORT | F_NOMEM;
  switch (a->opcode) {
  case WSLAY_BINARY_FRAME:
    if (!(c->flags & F_CLOSING))
      on_binary(c, a->msg, a->msg_length);
    break;
  case WSLAY_TEXT_FRAME:
    ws_close(c, 1003, "text frames are not accepted");
    break;
  case WSLAY_CONNECTION_CLOSE:
    /* wslay has queued the answering close frame, unless ours went
     * first. */
    c->flags |= F_CLOSE_RECEIVED;
    if (!(c->flags & F_CLOSING)) {
      c->flags |= F_CLOSING;
      c->close_at = now_ms(c->gw) + CLOSE_WAIT_MS;
      conn_schedule(c);
    }
    break;
  default:
    break;
  }
}

/*
 * Feeds len bytes to wslay. The wslay context exists only while a frame
 * or a fragmented message is partly received (or the connection is
 * closing): an idle connection holds no frame buffers. Returns 0 or a
 * negative code (c freed).
 */
static int ws_feed(imc_conn *c, const uint8_t *data, size_t len) {
  imc_gateway *gw = c->gw;
  if (len == 0)
    return conn_check(c);
  if (c->ws == NULL) {
    if (wslay_event_context_server_init(&c->ws, &gw->wscb, c) != 0) {
      c->ws = NULL;
      c->flags |= F_ABORT | F_NOMEM;
      return conn_check(c);
    }
    /* The envelope around a body may add a little to the message. */
    wslay_event_config_set_max_recv_msg_length(c->ws,
                                               gw->o.max_body + FRAME_OVERHEAD);
  }
  imc_ws_scan_feed(&c->scan, data, len);
  c->in = data;
  c->in_len = len;
  int rv = wslay_event_recv(c->ws);
  c->in = NULL;
  c->in_len = 0;
  if (rv == WSLAY_ERR_NOMEM) {
    c->flags |= F_ABORT | F_NOMEM;
  } else if (rv != 0 || !wslay_event_get_read_enabled(c->ws)) {
    /* A protocol error or a close: wslay queued a close frame. */
    c->flags |= F_READ_DONE;
    if (!(c->flags & F_CLOSING)) {
      c->flags |= F_CLOSING;
      c->close_at = now_ms(gw) + CLOSE_WAIT_MS;
      conn_schedule(c);
    }
  }
  if (!(c->flags & F_ABORT) && wslay_event_send(c->ws) != 0)
    c->flags |= F_ABORT | F_NOMEM;
  if (!(c->flags & (F_ABORT | F_CLOSING)) && imc_ws_scan_idle(&c->scan)) {
    wslay_event_context_free(c->ws);
    c->ws = NULL;
  }
  return conn_check(c);
}

/* ------------------------------------------------------------------ */
/* Upgrade                                                              */
/* ------------------------------------------------------------------ */

static int send_welcome(imc_conn *c) {
  imc_gateway *gw = c->gw;
  Imchat__V1__Welcome w = IMCHAT__V1__WELCOME__INIT;
  w.user_id = c->user;
  w.device_id = c->device;
  w.node_id = gw->o.node_id;
  w.server_time_ms = imc_clock_wall(&gw->o.clock);
  w.heartbeat_s = (gw->o.heartbeat_ms + 999) / 1000;
  Imchat__V1__ServerFrame f = IMCHAT__V1__SERVER_FRAME__INIT;
  f.body_case = IMCHAT__V1__SERVER_FRAME__BODY_WELCOME;
  f.welcome = &w;
  return send_frame(c, &f);
}

/*
 * Switches c to WebSocket for user/device and answers 101. rest holds
 * bytes that followed the request head. Returns 0 or IMC_ERR_CLOSED.
 */
static int upgrade(imc_conn *c, imc_span ws_key, const char *user,
                   const char *device, const uint8_t *rest, size_t rest_len) {
  imc_gateway *gw = c->gw;
  size_t ul = strlen(user), dl = strlen(device);
  c->user = imc_malloc(&gw->mem, ul + dl + 2);
  if (c->user == NULL)
    goto nomem;
  memcpy(c->user, user, ul + 1);
  c->device = c->user + ul + 1;
  memcpy(c->device, device, dl + 1);
  char accept[29];
  imc_ws_accept(ws_key, accept);
  char resp[160];
  int n = snprintf(resp, sizeof(resp),
                   "HTTP/1.1 101 Switching Protocols\r\n"
                   "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Accept: %s\r\n\r\n",
                   accept);
  if (queue_bytes(c, resp, (size_t)n) != 0)
    goto nomem;
  c->state = ST_WS;
  gw->stats[IMC_GW_STAT_WEBSOCKETS]++;
  stat_inc(gw, IMC_GW_STAT_UPGRADED);
  users_insert(gw, c);
  int64_t now = now_ms(gw);
  c->last_rx = now;
  c->next_beat = now + gw->o.heartbeat_ms;
  c->tokens = (int64_t)gw->o.burst * 1000;
  c->tokens_at = now;
  if (send_welcome(c) != 0)
    goto nomem;
  if (gw->o.registry.register_conn) {
    imc_reg_entry e = reg_entry(c);
    if (gw->o.registry.register_conn(gw->o.registry_ud, &e, gw->o.lease_s,
                                     reg_done, gw) == 0)
      c->flags |= F_REGISTERED;
    else
      gw_log(gw, IMC_LOG_WARN, "registry: register of %s/%s failed", user,
             device);
  }
  gw_log(gw, IMC_LOG_DEBUG, "conn %llu: %s/%s connected",
         (unsigned long long)c->id, user, device);
  conn_schedule(c);
  /* rest may point into c->head: release the head only after it. */
  int rv = rest_len > 0 ? ws_feed(c, rest, rest_len) : 0;
  if (rv == 0) {
    imc_free(&gw->mem, c->head);
    c->head = NULL;
    c->head_len = 0;
  }
  return rv;
nomem:
  c->flags |= F_ABORT | F_NOMEM;
  return conn_check(c);
}

static const imc_jwt_key *pick_key(imc_gateway *gw, imc_jwt_alg alg) {
  if (alg != IMC_JWT_NONE && gw->hs.alg == alg)
    return &gw->hs;
  if (alg != IMC_JWT_NONE && gw->pub.alg == alg)
    return &gw->pub;
  return NULL;
}

static const char *alg_name(imc_jwt_alg alg) {
  switch (alg) {
  case IMC_JWT_HS256:
    return "HS256";
  case IMC_JWT_RS256:
    return "RS256";
  case IMC_JWT_ES256:
    return "ES256";
  default:
    return NULL;
  }
}

static int auth_fail(imc_conn *c, int rv, const char *message) {
  gw_log(c->gw, IMC_LOG_INFO, "conn %llu: token refused: %s (%s)",
         (unsigned long long)c->id, message, imc_strerror(rv));
  http_error(c, 401, "UNAUTHENTICATED", message,
             "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n");
  return conn_check(c);
}

static void key_done(void *ud, int status, const char *alg, const uint8_t *key,
                     size_t key_len);

/* Keeps buf[0..len) in c->head while the key source works. */
static int keep_head(imc_conn *c, const char *buf, size_t len) {
  if (buf == c->head)
    return 0;
  char *h = imc_malloc(&c->gw->mem, len ? len : 1);
  if (h == NULL)
    return IMC_ERR_NOMEM;
  memcpy(h, buf, len);
  imc_free(&c->gw->mem, c->head);
  c->head = h;
  c->head_len = len;
  return 0;
}

/*
 * GET /ws: validates the upgrade, authenticates and switches protocols.
 * buf[0..len) holds the request (head_len bytes of head, then the rest).
 * fetched is the key from the key source on the second pass.
 */
static int handle_upgrade(imc_conn *c, const imc_http_req *req, const char *buf,
                          size_t len, size_t head_len,
                          const imc_jwt_key *fetched) {
  imc_gateway *gw = c->gw;
  if (!imc_span_ieq(req->method, "GET")) {
    http_error(c, 405, "METHOD_NOT_ALLOWED", "use GET to upgrade",
               "Allow: GET\r\n");
    return conn_check(c);
  }
  const imc_http_hdr *upg = imc_http_find(req, "Upgrade");
  const imc_http_hdr *conn = imc_http_find(req, "Connection");
  const imc_http_hdr *key = imc_http_find(req, "Sec-WebSocket-Key");
  const imc_http_hdr *ver = imc_http_find(req, "Sec-WebSocket-Version");
  if (req->minor_version != 1 || upg == NULL ||
      !imc_http_has_token(upg->value, "websocket") || conn == NULL ||
      !imc_http_has_token(conn->value, "upgrade") || key == NULL ||
      key->value.len != 24 || ver == NULL) {
    http_error(c, 400, "BAD_REQUEST", "malformed WebSocket upgrade", NULL);
    return conn_check(c);
  }
  if (!imc_span_ieq(ver->value, "13")) {
    http_error(c, 426, "UPGRADE_REQUIRED", "WebSocket version 13 required",
               "Sec-WebSocket-Version: 13\r\n");
    return conn_check(c);
  }
  char token[IMC_JWT_MAX_LEN + 1];
  size_t token_len = 0;
  const imc_http_hdr *auth = imc_http_find(req, "Authorization");
  if (auth != NULL) {
    if (auth->value.len <= 7 || strncasecmp(auth->value.p, "Bearer ", 7) != 0 ||
        auth->value.len - 7 > IMC_JWT_MAX_LEN)
      return auth_fail(c, IMC_ERR_AUTH, "malformed Authorization header");
    token_len = auth->value.len - 7;
    memcpy(token, auth->value.p + 7, token_len);
  } else {
    ssize_t n = imc_query_get(req->query, "token", token, sizeof(token));
    if (n == IMC_ERR_NOT_FOUND || n == 0)
      return auth_fail(c, IMC_ERR_AUTH, "missing token");
    if (n < 0)
      return auth_fail(c, IMC_ERR_AUTH, "malformed token");
    token_len = (size_t)n;
  }
  char device[IMC_ID_MAX + 1] = "default";
  ssize_t dl = imc_query_get(req->query, "device", device, sizeof(device));
  if (dl != IMC_ERR_NOT_FOUND &&
      (dl <= 0 || !imc_id_valid(device, (size_t)dl))) {
    http_error(c, 400, "BAD_REQUEST", "invalid device id", NULL);
    return conn_check(c);
  }
  imc_jwt_header jh;
  if (imc_jwt_parse_header(token, token_len, &jh) != 0)
    return auth_fail(c, IMC_ERR_AUTH, "malformed token");
  const imc_jwt_key *k = fetched ? fetched : pick_key(gw, jh.alg);
  if (k == NULL) {
    const char *alg = alg_name(jh.alg);
    if (fetched != NULL || gw->o.keysrc.lookup == NULL || alg == NULL)
      return auth_fail(c, IMC_ERR_AUTH, "token algorithm not accepted");
    if (keep_head(c, buf, len) != 0) {
      c->flags |= F_ABORT | F_NOMEM;
      return conn_check(c);
    }
    pend *p = pend_new(c, head_len);
    if (p == NULL) {
      c->flags |= F_ABORT | F_NOMEM;
      return conn_check(c);
    }
    c->state = ST_AUTH;
    int rv = gw->o.keysrc.lookup(gw->o.keysrc_ud, alg, jh.kid, key_done, p);
    if (rv != 0) {
      pend_free(p);
      c->state = ST_HTTP;
      return auth_fail(c, rv, "no key for token");
    }
    return 0;
  }
  imc_jwt_claims cl;
  int64_t now_s = imc_clock_wall(&gw->o.clock) / 1000;
  int rv = imc_jwt_verify(token, token_len, k, &gw->policy, now_s, &cl);
  if (rv != 0)
    return auth_fail(c, rv,
                     rv == IMC_ERR_EXPIRED ? "token expired or not yet valid"
                                           : "invalid token");
  /* The key span must outlive c->head, which upgrade() releases. */
  char ws_key[25];
  memcpy(ws_key, key->value.p, 24);
  ws_key[24] = '\0';
  imc_span ks = {ws_key, 24};
  return upgrade(c, ks, cl.sub, cl.did[0] ? cl.did : device,
                 (const uint8_t *)buf + head_len, len - head_len);
}

/* Completion of the key source: parse the kept head again and go on. */
static void key_done(void *ud, int status, const char *alg, const uint8_t *key,
                     size_t key_len) {
  pend *p = ud;
  imc_conn *c = p->c;
  imc_gateway *gw = p->gw;
  size_t head_len = (size_t)p->frame_id;
  pend_free(p);
  if (c == NULL || c->state != ST_AUTH)
    return;
  c->state = ST_HTTP;
  imc_jwt_key k;
  memset(&k, 0, sizeof(k));
  int rv = status;
  if (rv == 0)
    rv = alg != NULL && strcmp(alg, "HS256") == 0
             ? imc_jwt_key_init_secret(&k, key, key_len, &gw->mem)
             : imc_jwt_key_init_pem(&k, (const char *)key, key_len);
  if (rv != 0) {
    auth_fail(c, rv, "no key for token");
    return;
  }
  imc_http_hdr hdrs[MAX_HDRS];
  imc_http_req req;
  imc_http_parse_request(c->head, head_len, &req, hdrs, MAX_HDRS);
  handle_upgrade(c, &req, c->head, c->head_len, head_len, &k);
  imc_jwt_key_clear(&k, &gw->mem);
}

/* Copies span into buf as a string; 0 if it does not fit. */
static int span_str(imc_span sp, char *buf, size_t cap) {
  if (sp.len >= cap)
    return 0;
  memcpy(buf, sp.p, sp.len);
  buf[sp.len] = '\0';
  return 1;
}

/* Hands a plain HTTP request to the handler. Returns 1 if it took it. */
static int gw_http_handle(imc_conn *c, const imc_http_req *req) {
  imc_gateway *gw = c->gw;
  if (gw->o.http.handle == NULL)
    return 0;
  char method[16], path[2048], query[2048], accept[256];
  char bearer[IMC_JWT_MAX_LEN + 1];
  const imc_http_hdr *acc = imc_http_find(req, "Accept");
  if (!span_str(req->method, method, sizeof(method)) ||
      !span_str(req->path, path, sizeof(path)) ||
      !span_str(req->query, query, sizeof(query)) ||
      !span_str(acc ? acc->value : (imc_span){"", 0}, accept, sizeof(accept))) {
    http_error(c, 400, "BAD_REQUEST", "request line or Accept too long", NULL);
    return 1;
  }
  imc_http_request hr = {method, path, query, accept, NULL, NULL, ""};
  imc_jwt_claims cl;
  const imc_http_hdr *auth = imc_http_find(req, "Authorization");
  if (auth && auth->value.len > 7 &&
      strncasecmp(auth->value.p, "Bearer ", 7) == 0 &&
      span_str((imc_span){auth->value.p + 7, auth->value.len - 7}, bearer,
               sizeof(bearer))) {
    hr.bearer = bearer;
    imc_jwt_header jh;
    const imc_jwt_key *k = NULL;
    if (imc_jwt_parse_header(bearer, strlen(bearer), &jh) == 0)
      k = pick_key(gw, jh.alg);
    if (k && imc_jwt_verify(bearer, strlen(bearer), k, &gw->policy,
                            imc_clock_wall(&gw->o.clock) / 1000, &cl) == 0) {
      hr.user_id = cl.sub;
      hr.device_id = cl.did;
    }
  }
  pend *p = pend_new(c, 0);
  if (p == NULL) {
    c->flags |= F_ABORT | F_NOMEM;
    return 1;
  }
  c->state = ST_REPLY;
  c->close_at = now_ms(gw) + REPLY_WAIT_MS;
  conn_schedule(c);
  if (!gw->o.http.handle(gw->o.http_ud, &hr, p)) {
    pend_free(p);
    c->state = ST_HTTP;
    return 0;
  }
  return 1;
}

int imc_http_reply_send(imc_http_reply *reply, int status,
                        const char *content_type, const char *headers,
                        const uint8_t *body, size_t len) {
  if (reply == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_conn *c = reply->c;
  pend_free(reply);
  if (c == NULL || c->state != ST_REPLY)
    return IMC_ERR_CLOSED;
  int rv = http_answer(c, status, content_type ? content_type : "text/plain",
                       headers, (const char *)body, body ? len : 0);
  return rv;
}

static int handle_request(imc_conn *c, const imc_http_req *req, const char *buf,
                          size_t len, size_t head_len) {
  if (imc_span_ieq(req->path, "/ws"))
    return handle_upgrade(c, req, buf, len, head_len, NULL);
  if (imc_span_ieq(req->path, "/healthz")) {
    if (!imc_span_ieq(req->method, "GET") && !imc_span_ieq(req->method, "HEAD"))
      http_error(c, 405, "METHOD_NOT_ALLOWED", "use GET", "Allow: GET\r\n");
    else
      http_answer(c, 200, "application/json", NULL, "{\"status\":\"ok\"}\n",
                  16);
    return conn_check(c);
  }
  if (gw_http_handle(c, req))
    return conn_check(c);
  http_error(c, 404, "NOT_FOUND", "no such resource", NULL);
  return conn_check(c);
}

/* Request head bytes. Returns 0 or a negative code (c freed). */
static int http_recv(imc_conn *c, const uint8_t *data, size_t len) {
  imc_gateway *gw = c->gw;
  const char *buf = (const char *)data;
  size_t blen = len;
  if (c->head != NULL) {
    char *nb = imc_realloc(&gw->mem, c->head, c->head_len + len);
    if (nb == NULL) {
      c->flags |= F_ABORT | F_NOMEM;
      return conn_check(c);
    }
    memcpy(nb + c->head_len, data, len);
    c->head = nb;
    c->head_len += len;
    buf = nb;
    blen = c->head_len;
  }
  imc_http_hdr hdrs[MAX_HDRS];
  imc_http_req req;
  int n = imc_http_parse_request(buf, blen, &req, hdrs, MAX_HDRS);
  if (n == IMC_ERR_INCOMPLETE && blen <= HEAD_MAX) {
    if (c->head == NULL && keep_head(c, buf, blen) != 0) {
      c->flags |= F_ABORT | F_NOMEM;
      return conn_check(c);
    }
    return 0;
  }
  if (n == IMC_ERR_INCOMPLETE || n == IMC_ERR_TOO_LARGE || n > HEAD_MAX) {
    http_error(c, 431, "TOO_LARGE", "request head too large", NULL);
    return conn_check(c);
  }
  if (n < 0) {
    http_error(c, 400, "BAD_REQUEST", "malformed request", NULL);
    return conn_check(c);
  }
  return handle_request(c, &req, buf, blen, (size_t)n);
}

/* ------------------------------------------------------------------ */
/* Timers                                                               */
/* ------------------------------------------------------------------ */

static void conn_timeout(imc_conn *c, int64_t now) {
  imc_gateway *gw = c->gw;
  if (c->state == ST_HTTP || c->state == ST_AUTH) {
    stat_inc(gw, IMC_GW_STAT_HANDSHAKE_TIMEOUTS);
    gw_log(gw, IMC_LOG_DEBUG, "conn %llu: handshake timeout",
           (unsigned long long)c->id);
    conn_free(c, REL_CLOSE);
    return;
  }
  if (c->state == ST_DONE || c->state == ST_REPLY || (c->flags & F_CLOSING)) {
    if (now >= c->close_at) {
      conn_free(c, REL_CLOSE);
      return;
    }
    conn_schedule(c);
    return;
  }
  while (c->ifl_head && c->ifl_head->deadline <= now) {
    push *p = c->ifl_head;
    c->ifl_head = p->next;
    if (c->ifl_head == NULL)
      c->ifl_tail = NULL;
    stat_inc(gw, IMC_GW_STAT_ACK_TIMEOUTS);
    stat_inc(gw, IMC_GW_STAT_UNDELIVERED);
    if (gw->o.upstream.undelivered)
      gw->o.upstream.undelivered(gw->o.upstream_ud, &p->sm->msg, c->user);
    shmsg_unref(gw, p->sm);
    imc_free(&gw->mem, p);
  }
  if (now - c->last_rx >= gw->o.idle_ms) {
    stat_inc(gw, IMC_GW_STAT_IDLE_CLOSED);
    gw_log(gw, IMC_LOG_INFO, "conn %llu (%s/%s): idle, closing",
           (unsigned long long)c->id, c->user, c->device);
    inflight_fail(c);
    ws_close(c, 1001, "idle timeout");
  } else if (now >= c->next_beat) {
    ws_put(c, IMC_WS_PING, NULL, 0);
    if ((c->flags & F_REGISTERED) && gw->o.registry.renew) {
      imc_reg_entry e = reg_entry(c);
      if (gw->o.registry.renew(gw->o.registry_ud, &e, gw->o.lease_s, reg_done,
                               gw) != 0)
        gw_log(gw, IMC_LOG_WARN, "registry: renew of %s/%s failed", c->user,
               c->device);
    }
    while (c->next_beat <= now)
      c->next_beat += gw->o.heartbeat_ms;
  }
  if (conn_check(c) == 0)
    conn_schedule(c);
}

/* ------------------------------------------------------------------ */
/* Public API                                                           */
/* ------------------------------------------------------------------ */

static char *dup_opt(const imc_mem *m, const char *s, int *fail) {
  if (s == NULL)
    return NULL;
  char *p = imc_strdup(m, s);
  if (p == NULL)
    *fail = 1;
  return p;
}

int imc_gateway_new(imc_gateway **out, const imc_gateway_options *opt,
                    const imc_mem *mem) {
  if (out == NULL || opt == NULL || opt->transport.send == NULL ||
      opt->transport.close == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (opt->secret == NULL && opt->pem == NULL && opt->keysrc.lookup == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_gateway *gw = imc_calloc(mem, 1, sizeof(*gw));
  if (gw == NULL)
    return IMC_ERR_NOMEM;
  gw->mem = *mem;
  gw->o = *opt;
  gw->o.mem = *mem;
  gw->o.secret = NULL;
  gw->o.pem = NULL;
  int fail = 0;
  gw->o.node_id = dup_opt(mem, opt->node_id ? opt->node_id : "local", &fail);
  gw->o.issuer = dup_opt(mem, opt->issuer, &fail);
  gw->o.audience = dup_opt(mem, opt->audience, &fail);
  gw->users_cap = 64;
  gw->users = imc_calloc(mem, gw->users_cap, sizeof(*gw->users));
  int rv = fail || gw->users == NULL ? IMC_ERR_NOMEM : 0;
  if (rv == 0 && opt->secret)
    rv = imc_jwt_key_init_secret(&gw->hs, opt->secret, opt->secret_len, mem);
  if (rv == 0 && opt->pem)
    rv = imc_jwt_key_init_pem(&gw->pub, opt->pem, opt->pem_len);
  if (rv != 0) {
    imc_gateway_del(gw);
    return rv == IMC_ERR_INVALID_ARGUMENT ? rv : IMC_ERR_NOMEM;
  }
  gw->policy.issuer = gw->o.issuer;
  gw->policy.audience = gw->o.audience;
  gw->policy.leeway_s = 60;
  imc_pb_allocator(&gw->pba, &gw->mem);
  gw->wscb.recv_callback = ws_recv_cb;
  gw->wscb.send_callback = ws_send_cb;
  gw->wscb.on_frame_recv_start_callback = ws_frame_start_cb;
  gw->wscb.on_msg_recv_callback = ws_msg_cb;
  *out = gw;
  return 0;
}

void imc_gateway_del(imc_gateway *gw) {
  if (gw == NULL)
    return;
  while (gw->conns)
    conn_free(gw->conns, REL_SILENT);
  imc_theap_free(&gw->timers, &gw->mem);
  imc_jwt_key_clear(&gw->hs, &gw->mem);
  imc_jwt_key_clear(&gw->pub, &gw->mem);
  imc_free(&gw->mem, gw->users);
  imc_free(&gw->mem, gw->o.node_id);
  imc_free(&gw->mem, gw->o.issuer);
  imc_free(&gw->mem, gw->o.audience);
  imc_mem m = gw->mem;
  imc_free(&m, gw);
}

void imc_gateway_set_user_data(imc_gateway *gw, void *ud) {
  gw->user_data = ud;
}

void *imc_gateway_get_user_data(const imc_gateway *gw) {
  return gw->user_data;
}

int imc_gateway_conn_new(imc_gateway *gw, imc_conn **out, void *conn_ud) {
  if (gw == NULL || out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (gw->shutting_down)
    return IMC_ERR_CLOSED;
  imc_conn *c = imc_calloc(&gw->mem, 1, sizeof(*c));
  if (c == NULL)
    return IMC_ERR_NOMEM;
  c->gw = gw;
  c->ud = conn_ud;
  c->id = ++gw->next_id;
  c->state = ST_HTTP;
  c->opened_at = now_ms(gw);
  imc_timer_init(&c->timer);
  if (imc_theap_set(&gw->timers, &gw->mem, &c->timer,
                    c->opened_at + gw->o.handshake_ms) != 0) {
    imc_free(&gw->mem, c);
    return IMC_ERR_NOMEM;
  }
  c->next = gw->conns;
  if (gw->conns)
    gw->conns->prev = c;
  gw->conns = c;
  gw->stats[IMC_GW_STAT_CONNECTIONS]++;
  stat_inc(gw, IMC_GW_STAT_ACCEPTED);
  *out = c;
  return 0;
}

int imc_gateway_conn_recv(imc_gateway *gw, imc_conn *c, const uint8_t *data,
                          size_t len) {
  if (gw == NULL || c == NULL || (data == NULL && len > 0))
    return IMC_ERR_INVALID_ARGUMENT;
  if (c->flags & F_ABORT)
    return conn_check(c);
  switch (c->state) {
  case ST_HTTP:
    return http_recv(c, data, len);
  case ST_WS:
    return ws_feed(c, data, len);
  case ST_AUTH:
    /* Bytes sent ahead of the 101 answer are kept for the WebSocket. */
    if (c->head_len + len > 2 * HEAD_MAX) {
      c->flags |= F_ABORT;
    } else if (len > 0) {
      char *nb = imc_realloc(&gw->mem, c->head, c->head_len + len);
      if (nb == NULL) {
        c->flags |= F_ABORT | F_NOMEM;
      } else {
        memcpy(nb + c->head_len, data, len);
        c->head = nb;
        c->head_len += len;
      }
    }
    return conn_check(c);
  default:
    return 0; /* an answer is on its way out; the rest is ignored */
  }
}

int imc_gateway_conn_writable(imc_gateway *gw, imc_conn *c) {
  if (gw == NULL || c == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (c->flags & F_ABORT)
    return conn_check(c);
  return conn_write(c);
}

void imc_gateway_conn_closed(imc_gateway *gw, imc_conn *c) {
  if (gw == NULL || c == NULL)
    return;
  conn_free(c, REL_LOST);
}

void *imc_gateway_conn_get_user_data(const imc_conn *c) {
  return c ? c->ud : NULL;
}

int imc_gateway_flush(imc_gateway *gw) {
  if (gw == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  while (gw->dirty) {
    imc_conn *c = gw->dirty;
    if (c->flags & F_ABORT) {
      dirty_remove(c);
      conn_check(c);
    } else {
      conn_write(c);
    }
  }
  return 0;
}

int64_t imc_gateway_next_timeout_ms(imc_gateway *gw) {
  if (gw == NULL)
    return -1;
  imc_timer *t = imc_theap_top(&gw->timers);
  if (t == NULL)
    return -1;
  int64_t d = t->at - now_ms(gw);
  return d > 0 ? d : 0;
}

int imc_gateway_on_timeout(imc_gateway *gw) {
  if (gw == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  int64_t now = now_ms(gw);
  for (;;) {
    imc_timer *t = imc_theap_top(&gw->timers);
    if (t == NULL || t->at > now)
      break;
    imc_conn *c = (imc_conn *)(void *)((char *)t - offsetof(imc_conn, timer));
    conn_timeout(c, now);
  }
  return 0;
}

int imc_gateway_shutdown(imc_gateway *gw) {
  if (gw == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  gw->shutting_down = 1;
  imc_conn *c = gw->conns;
  while (c) {
    imc_conn *next = c->next;
    if (c->state == ST_WS) {
      inflight_fail(c);
      ws_close(c, 1001, "server shutting down");
    } else {
      conn_free(c, REL_CLOSE);
    }
    c = next;
  }
  return 0;
}

const char *imc_gateway_get_node_id(const imc_gateway *gw) {
  return gw ? gw->o.node_id : NULL;
}

size_t imc_gateway_conn_count(const imc_gateway *gw) {
  return gw ? (size_t)gw->stats[IMC_GW_STAT_CONNECTIONS] : 0;
}

/* One allocation holding msg and everything it points to. */
static shmsg *shmsg_new(imc_gateway *gw, const imc_msg *m) {
  shmsg *sm = imc_malloc(&gw->mem, sizeof(shmsg) + imc_msg_data_size(m));
  if (sm == NULL)
    return NULL;
  sm->refs = 0;
  imc_msg_copy(&sm->msg, (char *)(sm + 1), m);
  return sm;
}

static int can_push(const imc_conn *c, const char *user) {
  return c->state == ST_WS && !(c->flags & (F_CLOSING | F_ABORT)) &&
         strcmp(c->user, user) == 0;
}

int imc_gateway_deliver(imc_gateway *gw, const char *user_id,
                        const char *skip_device, const imc_msg *msg) {
  if (gw == NULL || user_id == NULL || msg == NULL || msg->msg_id == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  shmsg *sm = NULL;
  uint8_t *frame = NULL;
  size_t frame_len = 0;
  int count = 0, rv = 0;
  int64_t deadline = now_ms(gw) + gw->o.ack_ms;
  for (imc_conn *c = users_first(gw, user_id); c; c = c->unext) {
    if (!can_push(c, user_id) ||
        (skip_device && strcmp(c->device, skip_device) == 0))
      continue;
    if (sm == NULL) {
      Imchat__V1__Message pm;
      imc_pb_from_msg(&pm, msg);
      Imchat__V1__Deliver d = IMCHAT__V1__DELIVER__INIT;
      d.message = &pm;
      Imchat__V1__ServerFrame f = IMCHAT__V1__SERVER_FRAME__INIT;
      f.body_case = IMCHAT__V1__SERVER_FRAME__BODY_DELIVER;
      f.deliver = &d;
      sm = shmsg_new(gw, msg);
      if (sm == NULL ||
          imc_pb_pack_server_frame(&f, &gw->mem, &frame, &frame_len) != 0) {
        rv = IMC_ERR_NOMEM;
        break;
      }
    }
    push *p = imc_malloc(&gw->mem, sizeof(*p));
    if (p == NULL) {
      rv = IMC_ERR_NOMEM;
      break;
    }
    int q = ws_queue(c, frame, frame_len);
    if (q != 0 && q != IMC_ERR_QUEUE_FULL) {
      /* Nothing went out on c: no ACK to wait for. */
      imc_free(&gw->mem, p);
      continue;
    }
    /* A queue that overflowed closes c, and its pushes, this one
     * included, go back to the upstream then. */
    p->next = NULL;
    p->sm = sm;
    p->deadline = deadline;
    sm->refs++;
    if (c->ifl_tail)
      c->ifl_tail->next = p;
    else
      c->ifl_head = p;
    c->ifl_tail = p;
    conn_schedule(c);
    stat_inc(gw, IMC_GW_STAT_PUSHES);
    count++;
  }
  imc_free(&gw->mem, frame);
  if (sm && sm->refs == 0)
    imc_free(&gw->mem, sm);
  return count > 0 ? count : rv;
}

int imc_gateway_push_status(imc_gateway *gw, const char *user_id,
                            const char *device_id, const char *msg_id,
                            const char *client_msg_id, imc_delivery_state state,
                            const char *recipient) {
  if (gw == NULL || user_id == NULL || device_id == NULL || msg_id == NULL ||
      (state != IMC_DELIVERED && state != IMC_STORED))
    return IMC_ERR_INVALID_ARGUMENT;
  Imchat__V1__DeliveryStatus st = IMCHAT__V1__DELIVERY_STATUS__INIT;
  st.msg_id = (char *)msg_id;
  st.client_msg_id = (char *)(client_msg_id ? client_msg_id : "");
  st.state = state == IMC_DELIVERED
                 ? IMCHAT__V1__DELIVERY_STATUS__STATE__DELIVERED
                 : IMCHAT__V1__DELIVERY_STATUS__STATE__STORED;
  st.user_id = (char *)(recipient ? recipient : "");
  Imchat__V1__ServerFrame f = IMCHAT__V1__SERVER_FRAME__INIT;
  f.body_case = IMCHAT__V1__SERVER_FRAME__BODY_STATUS;
  f.status = &st;
  int count = 0;
  for (imc_conn *c = users_first(gw, user_id); c; c = c->unext) {
    if (!can_push(c, user_id) || strcmp(c->device, device_id) != 0)
      continue;
    int rv = send_frame(c, &f);
    if (rv == IMC_ERR_NOMEM)
      return rv;
    if (rv == 0)
      count++;
  }
  return count;
}

uint64_t imc_gateway_errors_sent(const imc_gateway *gw, int code) {
  if (gw == NULL || code < 1 || code > 9)
    return 0;
  return gw->errors[code];
}

int imc_gateway_accepting(const imc_gateway *gw) {
  return gw != NULL && !gw->shutting_down;
}

uint64_t imc_gateway_stat_get(const imc_gateway *gw, imc_gateway_stat stat) {
  if (gw == NULL || (unsigned)stat >= IMC_GW_STAT_COUNT_)
    return 0;
  return gw->stats[stat];
}
