/*
 * Internals of the gateway role, shared by its files:
 *
 *   gateway.c       the gateway object: new/del, flush, timers, shutdown, stats
 *   options.c       the options object and its setters
 *   conn.c          connection lifecycle: dirty list, output queue, teardown,
 *                   timers and heartbeats
 *   users.c         per-user records: the user's connections, its device
 *                   count and its send bucket, indexed by user id
 *   http_request.c  request heads, routing, the host's HTTP handler
 *   http_answer.c   complete HTTP answers and JSON errors
 *   upgrade.c       GET /ws: upgrade, JWT authentication, key source
 *   admission.c     who may upgrade: the Origin allow-list, the connection
 *                   limits, the index of peer addresses
 *   frames.c        client frames: header checks, close frames, the wslay
 *                   glue
 *   ws_output.c     frames queued to clients, close frames, Error frames
 *   pending.c       sends and key lookups waiting for their completion,
 *                   and answers held so that they leave in request order
 *   flow.c          backpressure: admission of sends, paused reads, the
 *                   input kept while paused, resuming
 *   push.c          Deliver and DeliveryStatus pushes
 *   reports.c       delivered/undelivered reports to the upstream (acks
 *                   of a loop turn in one delivered_many), retries
 *   lease.c         the node's registry lease: grant, one keepalive per
 *                   interval, registration of every connection, revoke
 *   deflate.c       permessage-deflate: the gateway's zlib streams,
 *                   inflating client messages, compressing server ones
 *
 * Functions shared between files carry the gw_ prefix; they are hidden
 * from the library's exported symbols like everything not IMC_EXTERN.
 */
#ifndef IMCHAT_GATEWAY_INT_H
#define IMCHAT_GATEWAY_INT_H

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

#define HEAD_MAX 8192       /* request head limit (431 beyond) */
#define MAX_HDRS 64         /* header lines per request */
#define BAD_FRAMES_MAX 10   /* undecodable frames in a row before 1008 */
#define CLOSE_WAIT_MS 5000  /* wait for the peer's close or drain */
#define FRAME_OVERHEAD 1024 /* room for the fields around a body */
#define IOV_BATCH 64
#define REPLY_WAIT_MS 30000   /* the HTTP handler's time to answer */
#define FANOUT_TURN 512       /* group members pushed per loop turn */
#define HELD_MAX (256 * 1024) /* input kept while a connection is paused */
#define ACK_BATCH_MAX 1024    /* acks per delivered_many call */
#define BUSY_MESSAGE "server busy; retry after 100 ms"
#define PEER_MAX 64    /* a peer address, in text */
#define ORIGIN_MAX 512 /* a serialized origin */

enum conn_state {
  ST_HTTP,  /* reading the request head */
  ST_AUTH,  /* waiting for the key source */
  ST_WS,    /* upgraded */
  ST_REPLY, /* an HTTP request is with the handler */
  ST_DONE   /* HTTP answer queued; close once written */
};

/* Who reads the payload of the current inbound frame (frames.c). */
enum frame_mode {
  FM_WSLAY, /* data, ping and pong frames: wslay */
  FM_CLOSE, /* a close frame: the gateway checks code and reason */
  FM_SKIP   /* after our close frame (a text frame's too): dropped */
};

enum conn_flag {
  F_DIRTY = 1 << 0,          /* in gw->dirty: has output to write */
  F_BLOCKED = 1 << 1,        /* transport said WOULDBLOCK */
  F_REGISTERED = 1 << 2,     /* has an entry on the node's lease */
  F_ABORT = 1 << 3,          /* close the socket at the next check */
  F_CLOSING = 1 << 4,        /* a close frame is queued */
  F_NOMEM = 1 << 5,          /* aborted for want of memory */
  F_CLOSE_RECEIVED = 1 << 6, /* the peer's close frame arrived */
  F_READ_DONE = 1 << 7,      /* reading ended: protocol error, peer closed */
  F_DISCARD = 1 << 8,        /* we sent close: wslay's replies are dropped */
  F_PAUSED = 1 << 9,         /* reads paused: too many sends in flight */
  F_WAITQ = 1 << 10,         /* on gw->waitq: a send waits for admission */
  F_RESUME = 1 << 11,        /* on gw->resumeq: may be read again */
  F_HEAD = 1 << 12,          /* a HEAD request: answers carry no body */
  F_BEARER = 1 << 13,        /* the request carried a bearer credential */
  F_REG_RETRY = 1 << 14      /* its registration failed: make it again */
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

/*
 * A message pushed to one connection. While it waits for its DeliverAck it
 * is on the connection's in-flight list (next only). Then the same record
 * becomes the report to the upstream (delivered, or undelivered for the
 * slow path) and moves to the gateway's report lists: so reporting never
 * needs memory, and the gateway keeps its reference to the message until
 * the upstream completed the report.
 */
enum report_kind { REP_DELIVERED, REP_UNDELIVERED };

typedef struct push {
  struct push *next, *prev; /* c->ifl_*, then gw->reports or gw->retry_* */
  imc_gateway *gw;
  shmsg *sm;
  int64_t deadline; /* the ACK deadline; then the time of the next retry */
  uint8_t kind;     /* enum report_kind, once a report */
  uint32_t attempts;
  char *device; /* points into user */
  char user[];  /* "user\0device\0" of the connection it went to */
} push;

/*
 * Work handed to a vtable that completes later and concerns one
 * connection: a send with the upstream, a key lookup with the key source.
 * Each connection keeps its own in a list; when the connection goes
 * first, c becomes NULL and the completion only frees the record.
 */
enum pending_kind {
  PEND_SEND, /* upstream.send: answer frame_id with SendAck or Error */
  PEND_KEY   /* keysrc.lookup: c->head holds head_len bytes of head */
};

typedef struct gw_fanjob gw_fanjob;     /* push.c */
typedef struct gw_ackbatch gw_ackbatch; /* reports.c */

typedef struct pending {
  imc_gateway *gw;
  imc_conn *c;
  struct pending *prev, *next; /* c->pend_*, oldest first, or gw->orphans */
  uint8_t kind;
  uint8_t answered;  /* PEND_SEND: completed; answer waits for older ones */
  uint64_t frame_id; /* PEND_SEND */
  int64_t deadline;  /* PEND_SEND: answer UNAVAILABLE after it */
  size_t head_len;   /* PEND_KEY */
  uint8_t *answer;   /* PEND_SEND, answered: the encoded ServerFrame */
  size_t answer_len;
} pending;

/* The public handle of an HTTP request with the host's handler. A
 * connection holds at most one; c becomes NULL when it goes first. */
struct imc_http_reply {
  imc_gateway *gw;
  imc_conn *c;
};

/* A token bucket, in thousandths of a send. */
typedef struct rate_bucket {
  int64_t tokens;
  int64_t at; /* time of the last refill */
} rate_bucket;

/*
 * A user with upgraded connections on this gateway: the index entry,
 * created at the first upgrade and freed with the last connection.
 */
typedef struct gw_user {
  struct gw_user *next; /* bucket chain of gw->users */
  imc_conn *conns;      /* this user's upgraded connections */
  size_t n_conns;       /* counted against max_devices */
  rate_bucket bucket;   /* shared by every device of the user */
  char id[];
} gw_user;

/* A peer address with connections here (admission.c). */
typedef struct gw_peer {
  struct gw_peer *next; /* bucket chain of gw->peers */
  uint32_t refs;        /* connections from this address */
  uint32_t n_ws;        /* ... of them upgraded: max_conns_ip counts */
  char addr[];
} gw_peer;

struct imc_conn {
  imc_gateway *gw;
  void *ud;
  imc_conn *prev, *next;   /* gw->conns */
  imc_conn *dprev, *dnext; /* gw->dirty */
  struct gw_user *u;       /* the user's record, once upgraded */
  gw_peer *peer;           /* the peer's address, if the host gave it */
  imc_conn *uprev, *unext; /* u->conns */
  imc_timer timer;
  uint64_t id;
  uint8_t state;
  uint8_t bad_frames;
  uint16_t flags;
  char *head; /* partial request head, when it spans reads */
  size_t head_len;
  wslay_event_context_ptr ws; /* only while a frame is partly received */
  imc_ws_scan scan;           /* checks every frame header first */
  uint8_t fmode;              /* enum frame_mode of the current frame */
  uint8_t hdr_out;            /* header bytes not yet handed to wslay */
  uint8_t ctl_len;            /* close payload bytes in ctl */
  uint8_t pmd_bits;           /* permessage-deflate: 0 if not negotiated,
                                 else the window the server may compress
                                 with (8: none zlib can do, so never) */
  uint8_t *ctl;               /* a close frame's payload, while it comes */
  imc_bufq out;
  const uint8_t *in; /* input being read, frame by frame */
  size_t in_len;
  char *user;   /* "user\0device\0", one allocation */
  char *device; /* points into user */
  int64_t opened_at, last_rx, next_beat, close_at;
  rate_bucket bucket; /* per-connection send rate */
  push *ifl_head, *ifl_tail;
  pending *pend_head, *pend_tail; /* oldest first */
  imc_http_reply *reply;          /* while in ST_REPLY */
  /* Backpressure (flow.c). */
  uint32_t n_sends; /* PEND_SEND records on pend_* */
  uint8_t *held;    /* input not fed to wslay while paused */
  size_t held_len;
  Imchat__V1__ClientFrame *wait; /* a send waiting for admission */
  int64_t wait_deadline;         /* ... answered busy after it */
  int feed_all;                  /* feed past a pause (HELD_MAX hit) */
  imc_conn *wq_prev, *wq_next;   /* gw->waitq */
  imc_conn *rs_prev, *rs_next;   /* gw->resumeq */
};
_Static_assert(F_BEARER <= UINT16_MAX, "every conn_flag fits imc_conn.flags");

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
  uint32_t max_devices, user_rate, user_burst;
  uint32_t send_ms;
  uint32_t max_conn_sends, max_sends, admit_ms;
  uint32_t max_conns, max_conns_ip; /* upgraded connections; 0: no limit */
  int http_only;                    /* no /ws: no keys needed */
  int deflate;                      /* accept permessage-deflate */
  size_t deflate_min; /* server messages longer than this are compressed */
  char **origins;     /* serialized allowed origins */
  size_t n_origins;
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
  gw_user **users; /* buckets by user id */
  size_t users_cap, n_users;
  gw_peer **peers; /* buckets by address; NULL until the first */
  size_t peers_cap, n_peers;
  uint64_t next_id;
  int shutting_down;
  /* Completions still owed to the gateway, for imc_gateway_pending. */
  pending *orphans;              /* pending records whose connection went */
  size_t n_pending;              /* pending records, orphans included */
  push *reports;                 /* reports with the upstream */
  push *retry_head, *retry_tail; /* failed reports, by retry time */
  push *acked_head, *acked_tail; /* acks waiting for delivered_many */
  gw_ackbatch *batches;          /* delivered_many calls with the upstream */
  size_t n_reports;              /* the reports on all three lists */
  /* The node's registry lease (lease.c). */
  uint64_t lease_id;            /* 0: none held */
  int lease_busy;               /* a grant or keepalive is outstanding */
  size_t lease_ops;             /* registry calls still owed a completion */
  imc_timer lease_timer;        /* the next keepalive */
  int reg_retry;                /* a registration failed: again next tick */
  uint64_t reg_failed;          /* failures since the last tick's log */
  struct gw_regop *unreg_retry; /* unregistrations to make again */
  /* Backpressure (flow.c): connections with a send waiting for
   * admission, and paused connections that may be read again. */
  imc_conn *waitq_head, *waitq_tail;
  imc_conn *resumeq_head, *resumeq_tail;
  gw_fanjob *fanjobs, *fanjobs_tail; /* group pushes still to do */
  uint64_t stats[IMC_GW_STAT_COUNT_];
  uint64_t ack_counts[IMC_GW_ACK_BOUNDS + 1]; /* ACK latency by bucket */
  uint64_t ack_sum_ms;
  uint64_t errors[10]; /* Error frames by code */
  ProtobufCAllocator pba;
  struct wslay_event_callbacks wscb;
  struct gw_zlib *zlib; /* deflate.c: the zlib streams, while in use */
  size_t n_deflate;     /* connections with permessage-deflate */
};

#define gw_log(gw, ...) imc_logf(&(gw)->o.log, __VA_ARGS__)

/* Clears flags of c at the width of the field: a cast to a narrower
 * type would wipe the high flags (F_DISCARD) as well. */
static inline void flags_clear(imc_conn *c, unsigned flags) {
  c->flags = (uint16_t)(c->flags & ~flags);
}

static inline int64_t now_ms(imc_gateway *gw) {
  return imc_clock_now(&gw->o.clock);
}

static inline void stat_inc(imc_gateway *gw, imc_gateway_stat s) {
  gw->stats[s]++;
}

/* gateway.c: a push was ACKed ms after it went out (latency histogram). */
void gw_ack_latency_add(imc_gateway *gw, int64_t ms);

/* users.c: the user index */
/* The record of user id, or NULL if it has no connection here. */
gw_user *gw_user_find(imc_gateway *gw, const char *id);
/* Adds the upgraded c (c->user set) to its user's record, creating it.
 * Returns 0 or IMC_ERR_NOMEM. */
int gw_user_attach(imc_gateway *gw, imc_conn *c);
/* Removes c from its user's record, freeing the record with its last
 * connection. Nothing happens if c was never attached. */
void gw_user_detach(imc_gateway *gw, imc_conn *c);

/* conn.c: connections: dirty list, output, teardown, timers */
void gw_dirty_add(imc_conn *c);
void gw_dirty_remove(imc_conn *c);
imc_reg_entry gw_reg_entry(imc_conn *c);
void gw_inflight_fail(imc_conn *c);
/* Releases c. Un-ACKed pushes go back to the upstream first. */
void gw_conn_free(imc_conn *c, enum release_mode mode);
/* The timer is in the heap from conn_new on, so moving it never
 * allocates. */
void gw_conn_schedule(imc_conn *c);
/*
 * Closes c if it is finished: an abort, a close handshake that is done,
 * or an HTTP answer that has been written. Returns 0 if c lives on, else
 * IMC_ERR_CLOSED (c is freed).
 */
int gw_conn_check(imc_conn *c);
int gw_queue_bytes(imc_conn *c, const void *data, size_t len);
/* Writes what c has queued. Returns 0 or IMC_ERR_CLOSED (c freed). */
int gw_conn_write(imc_conn *c);
void gw_conn_timeout(imc_conn *c, int64_t now);

/* http_answer.c: HTTP answers */
/*
 * Queues a complete HTTP answer and closes the connection once it is
 * written. extra holds additional header lines, each ending in CRLF.
 */
int gw_http_answer(imc_conn *c, int status, const char *ctype,
                   const char *extra, const char *body, size_t body_len);
int gw_http_error(imc_conn *c, int status, const char *code,
                  const char *message, const char *extra);

/* ws_output.c: WebSocket output */
/* Queues one unfragmented frame. A failure leaves the stream broken, so
 * the connection is aborted. */
int gw_ws_put(imc_conn *c, uint8_t opcode, const uint8_t *data, size_t len);
/* Queues a close frame and gives the peer CLOSE_WAIT_MS to answer. */
void gw_ws_close(imc_conn *c, uint16_t code, const char *reason);
/* Queues one binary message on c, compressed if c negotiated
 * permessage-deflate and it is over the size threshold. */
int gw_ws_queue(imc_conn *c, const uint8_t *data, size_t len);
/* Queues a complete frame (header included) by reference. Same returns
 * as gw_ws_queue. */
int gw_ws_queue_shared(imc_conn *c, imc_shared *frame);
int gw_send_frame(imc_conn *c, const Imchat__V1__ServerFrame *f);
int gw_send_error(imc_conn *c, uint64_t id, int rv, const char *message);
/* Encodes the Error frame of gw_send_error into *out (imc_free it) and
 * counts it. Returns 0 or IMC_ERR_NOMEM. */
int gw_pack_error(imc_gateway *gw, uint64_t id, int rv, const char *message,
                  uint8_t **out, size_t *len);

/* pending.c: completions that concern a connection */
/* A record of kind for c, appended to its list; NULL without memory. */
pending *gw_pending_new(imc_conn *c, enum pending_kind kind);
/* Unlinks p from its connection (if it still has one) and frees it. */
void gw_pending_free(pending *p);
/* c is going: its records stay for their completions, without c. */
void gw_pending_detach_all(imc_conn *c);
/* Detaches p from its connection: its completion will only free it. */
void gw_pending_orphan(pending *p);
/* Frees the records still waiting (the gateway is going). */
void gw_pending_free_orphans(imc_gateway *gw);

/* reports.c: delivered/undelivered reports to the upstream */
/* Hands p, unlinked from its connection, to the upstream as a report of
 * kind; p is the gateway's until the report completed. */
void gw_report(imc_gateway *gw, push *p, enum report_kind kind);
/* Hands the acks collected since the last call to the upstream's
 * delivered_many, in batches of at most ACK_BATCH_MAX. */
void gw_reports_flush(imc_gateway *gw);
/* 1 while acks wait for gw_reports_flush. */
int gw_reports_due(const imc_gateway *gw);
/* Retries the failed reports due at now (all of them with now < 0). */
void gw_reports_retry(imc_gateway *gw, int64_t now);
/* The time of the next retry, or -1. */
int64_t gw_reports_next(const imc_gateway *gw);
/* Frees every report without calling anything (the gateway is going). */
void gw_reports_free(imc_gateway *gw);
/* Frees p and its reference to the message. */
void gw_push_free(imc_gateway *gw, push *p);

/* frames.c: client frames, their header checks and the wslay glue */
/* Fills cb with the gateway's wslay callbacks. */
void gw_ws_callbacks_init(struct wslay_event_callbacks *cb);
/*
 * Reads len bytes of WebSocket input: each frame header is checked
 * first, then the frame goes to wslay (data, ping, pong) or is read here
 * (close). The wslay context exists only while a frame or a fragmented
 * message is partly received (or the connection is closing): an idle
 * connection holds no frame buffers. Returns 0 or a negative code (c
 * freed).
 */
int gw_ws_feed(imc_conn *c, const uint8_t *data, size_t len);
/* Reads data at once, ahead of any kept input; the part a pause leaves
 * unread is kept. Same returns. */
int gw_ws_feed_now(imc_conn *c, const uint8_t *data, size_t len);

/* upgrade.c: the WebSocket upgrade and JWT authentication */
const imc_jwt_key *gw_pick_key(imc_gateway *gw, imc_jwt_alg alg);
/* Keeps buf[0..len) in c->head while the key source works. */
int gw_keep_head(imc_conn *c, const char *buf, size_t len);
/*
 * GET /ws: validates the upgrade, authenticates and switches protocols.
 * buf[0..len) holds the request (head_len bytes of head, then the rest).
 * fetched is the key from the key source on the second pass.
 */
int gw_handle_upgrade(imc_conn *c, const imc_http_req *req, const char *buf,
                      size_t len, size_t head_len, const imc_jwt_key *fetched);

/* admission.c: who may upgrade */
/*
 * Checks the Origin and the connection limits for the upgrade of c.
 * Returns 0, or -1 after answering 403 or 503.
 */
int gw_admit(imc_conn *c, const imc_http_req *req);
/* c is going: its peer's record loses it (and an upgraded connection). */
void gw_peer_release(imc_conn *c);
/* Frees the index (every connection is gone). */
void gw_peers_free(imc_gateway *gw);

/* http_request.c: plain HTTP requests */
/* Request head bytes. Returns 0 or a negative code (c freed). */
int gw_http_recv(imc_conn *c, const uint8_t *data, size_t len);

/* lease.c: the node's registry lease */
/* Puts the upgraded c in the registry on the node's lease, granting the
 * lease first if there is none (c is registered once it is granted). */
void gw_lease_attach(imc_conn *c);
/* Removes c's registry entry (it was registered); a failed removal is
 * made again at the next heartbeat. */
void gw_lease_unregister(imc_conn *c);
/* Frees what imc_gateway_del leaves of the lease (the retries). */
void gw_lease_free(imc_gateway *gw);
/* The lease timer is due: the interval's one keepalive, or a new grant
 * after a failed one. */
void gw_lease_timeout(imc_gateway *gw);
/* Shutdown: revokes the lease, and with it every entry of the node. */
void gw_lease_release(imc_gateway *gw);

/* pending.c: answers in request order */
/* Sends the answers of c that no older send holds back. */
void gw_pending_drain(imc_conn *c);

/* flow.c: backpressure */
/* 1 if c may hand one more send to the upstream now. */
int gw_flow_can_admit(const imc_conn *c);
/* A send was admitted on c: pauses c at its limit. */
void gw_flow_admitted(imc_conn *c);
/* c's sends dropped (an answer left, or a record went): c may resume. */
void gw_flow_conn_room(imc_conn *c);
/* f, a SendRequest frame that could not be admitted, waits on c (which
 * pauses). Returns 1 if c took f, 0 if c already has one waiting (the
 * caller answers busy). */
int gw_flow_wait(imc_conn *c, Imchat__V1__ClientFrame *f);
/* 1 while gw_flow_run has work (admissions or resumes). */
int gw_flow_due(const imc_gateway *gw);
/* Admits waiting sends while there is room, then resumes reading of the
 * connections that may read again, feeding them the input they kept. */
void gw_flow_run(imc_gateway *gw);
/* The waiting send of c is past its deadline: answers it busy. */
void gw_flow_wait_expired(imc_conn *c);
/* c is going: leaves the lists, frees what it kept. */
void gw_flow_conn_free(imc_conn *c);
/* Keeps input of a paused c; returns 0 or IMC_ERR_NOMEM. */
int gw_flow_hold(imc_conn *c, const uint8_t *data, size_t len);

/* deflate.c: permessage-deflate */
/* c negotiated the extension / c, which had, goes: the zlib streams are
 * freed with the last such connection. */
void gw_deflate_conn_add(imc_gateway *gw);
void gw_deflate_conn_release(imc_gateway *gw);
/*
 * Inflates the compressed message in[0..len) into *out (imc_free it),
 * *out_len bytes. Inflating stops as soon as the output passes limit
 * bytes: a small message that would inflate to gigabytes costs limit
 * bytes of work and memory. Returns 0, IMC_ERR_TOO_LARGE (over limit),
 * IMC_ERR_PROTO (not valid deflate data) or IMC_ERR_NOMEM.
 */
int gw_inflate(imc_gateway *gw, const uint8_t *in, size_t len, size_t limit,
               uint8_t **out, size_t *out_len);
/*
 * The message data[0..len) compressed with a window of bits (9-15) as a
 * complete frame of opcode with RSV1 set, in a new block with one
 * reference; NULL if compression would not make it smaller or there is
 * no memory (the message then goes uncompressed).
 */
imc_shared *gw_deflate_frame(imc_gateway *gw, int bits, uint8_t opcode,
                             const uint8_t *data, size_t len);
/* 1 if a message of len bytes goes to c compressed. */
static inline int gw_deflate_wanted(const imc_conn *c, size_t len) {
  return c->pmd_bits >= 9 && len > c->gw->o.deflate_min;
}

/* frames.c: admits a parsed send (from the wait slot, too) */
/* Answers a send of c with an Error after the answers of its older
 * sends, which may still be with the upstream. */
void gw_send_error_ordered(imc_conn *c, uint64_t id, int rv,
                           const char *message);
void gw_start_send(imc_conn *c, uint64_t id, const Imchat__V1__SendRequest *s);

/* push.c: pushes */
void gw_shmsg_unref(imc_gateway *gw, shmsg *sm);
/*
 * Pushes msg, a group message, to the connections of users[0..n) here
 * (the sender's device excepted): one encoded Deliver shared by all of
 * them, FANOUT_TURN members per loop turn (the first turn at once).
 * Users and msg are copied. Returns 0 or IMC_ERR_NOMEM (nothing pushed).
 */
int gw_deliver_group(imc_gateway *gw, const char *const *users, size_t n,
                     const imc_msg *msg);
/* Pushes the next FANOUT_TURN members of the waiting group messages. */
void gw_fanjobs_run(imc_gateway *gw);
/* Drops the waiting group pushes (the gateway is going). */
void gw_fanjobs_free(imc_gateway *gw);

#endif /* IMCHAT_GATEWAY_INT_H */
