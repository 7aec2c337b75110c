/*
 * The etcd engine's internals (see <imchat/engines/etcd.h>). Files:
 *   etcd.c    the object: options, lifetime, the kick timer that flushes
 *             the queues, health and its probes, the log, the vtable
 *   http.c    libcurl's multi interface on the imc_loop (sockets, timer),
 *             requests (send, retry on the next endpoint, hold while a
 *             watch is created), answers to status codes, the processing
 *             that runs completions outside libcurl's callbacks
 *   ejson.c   etcd's JSON: int64 strings, base64 fields, error bodies,
 *             gRPC codes to IMC_ERR_*, key building
 *   lease.c   lease_grant (with the node and address keys),
 *             lease_keepalive, lease_revoke
 *   writes.c  register_conn and unregister: the ordered write queue,
 *             batched into transactions
 *   lookup.c  lookup_many: ranges batched into read transactions
 *   watch.c   watches: the streams, their events, reconnects, RESYNC
 *   addr.c    imc_etcd_node_address: a node's address key, read
 *
 * Every completion and watch callback runs from etcd_process() (after
 * libcurl returned from curl_multi_socket_action) or from the kick timer,
 * never from inside a libcurl callback (libcurl forbids calls into the
 * multi handle there) nor from inside a call into the engine.
 */
#ifndef IMC_ETCD_INT_H
#define IMC_ETCD_INT_H

#include <imchat/engines/etcd.h>

#include "protocol/json.h"
#include "protocol/jsonw.h"

#include <curl/curl.h>

#include <stdarg.h>

#define ETCD_ENDPOINTS_MAX 16
#define ETCD_URL_MAX 512
#define ETCD_PREFIX_MAX 256
/* prefix "users/" user "/" device, or prefix "nodes/" node, or prefix
 * "addrs/" node */
#define ETCD_KEY_MAX (ETCD_PREFIX_MAX + 6 + 2 * IMC_ID_MAX + 2)
/* A node's address (imc_etcd_options_set_node_address) */
#define ETCD_ADDR_MAX 256
/* node "/" conn_id */
#define ETCD_VALUE_MAX (IMC_ID_MAX + 1 + 20 + 1)
/* The largest answer or watch message kept (a revoke of a lease with
 * many entries is one watch message). */
#define ETCD_BODY_MAX (64u << 20)
#define ETCD_READS_IN_FLIGHT 4
#define ETCD_PROBE_IDLE_MS 3000
#define ETCD_PROBE_DOWN_MS 1000

typedef struct etcd_req etcd_req;
typedef struct etcd_watch etcd_watch;
typedef struct etcd_wop etcd_wop;
typedef struct etcd_lookup etcd_lookup;
typedef struct etcd_sock etcd_sock;

/* What CURLOPT_PRIVATE points to: a request or a watch's stream. */
typedef struct etcd_xfer {
  int is_watch;
  int err; /* its socket could not be watched: end it with this code */
  CURL *h;
} etcd_xfer;

/*
 * The answer to a request: status 0 with root the answer's JSON object,
 * or a negative code and root NULL. root is valid during the call only;
 * the request is freed after it returns.
 */
typedef void (*etcd_req_fn)(imc_etcd *e, etcd_req *r, int status,
                            const imc_json_value *root);

struct etcd_req {
  etcd_xfer x;
  etcd_req *prev, *next; /* e->reqs while with libcurl, else e->held */
  const char *path;      /* "/v3/kv/txn"; static */
  int holdable;          /* waits while a new watch is being created */
  int in_curl;
  int werr;         /* set by the write callback: IMC_ERR_NOMEM / TOO_LARGE */
  size_t ep;        /* the endpoint it went to */
  unsigned sent;    /* endpoints tried */
  int64_t deadline; /* monotonic ms */
  imc_wbuf body, resp;
  etcd_req_fn fn;
  void *owner;
};

/* One of libcurl's sockets, watched on the loop. */
struct etcd_sock {
  imc_etcd *e;
  void *h;
  etcd_sock *prev, *next;
};

struct imc_etcd {
  imc_mem mem;
  imc_loop loop;
  void *user_data;
  char *endpoints[ETCD_ENDPOINTS_MAX];
  size_t n_ep, cur_ep;
  char prefix[ETCD_PREFIX_MAX + 1];
  size_t prefix_len;
  char addr[ETCD_ADDR_MAX + 1]; /* "": no address key */
  uint32_t timeout_ms, max_ops;
  imc_log_cb log;
  void *log_ud;
  imc_log_level log_max;

  CURLM *multi;
  struct curl_slist *headers, *watch_headers;
  void *curl_timer; /* libcurl's timeout, on the loop */
  void *kick_timer; /* flush the queues on the next turn */
  void *probe_timer;
  etcd_sock *socks;
  etcd_req *reqs;             /* with libcurl */
  etcd_req *held, *held_tail; /* waiting for new watches to be created */
  unsigned holds;             /* new watches not created yet */
  unsigned processing;        /* etcd_process() depth */
  int doomed;                 /* some xfer has err set */
  int closing;

  /* writes.c: the queue, the transaction in flight, duplicate keys */
  etcd_wop *wq, *wq_tail;
  size_t wq_len;
  etcd_req *w_flight;
  etcd_wop **wseen;
  size_t wseen_cap;
  /* lookup.c */
  etcd_lookup *rq, *rq_tail;
  unsigned r_flight;
  /* watch.c */
  etcd_watch *watches;
  uint64_t last_watch;
  /* health */
  etcd_req *probe;
  int health; /* 0 or IMC_ERR_UNAVAILABLE */
  int64_t last_answer_ms;
};

/* etcd.c */
int64_t etcd_now_ms(void);
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
void etcd_log(imc_etcd *e, imc_log_level level, const char *fmt, ...);
/* Flush the queues and release held requests on the next loop turn. */
void etcd_kick(imc_etcd *e);
/* An exchange with the cluster ended: ok 1 if a member that can serve
 * answered, else 0. Drives imc_etcd_health(). */
void etcd_answered(imc_etcd *e, int ok);
/* 1 if s[0..n) is a node address: 1..ETCD_ADDR_MAX printable ASCII
 * characters, no spaces. */
int etcd_addr_ok(const char *s, size_t n);

/* http.c */
int etcd_http_init(imc_etcd *e);
/* Fails every request with IMC_ERR_CLOSED, then releases libcurl. */
void etcd_http_fini(imc_etcd *e);
/* A request to path whose answer goes to fn; the caller writes body. */
etcd_req *etcd_req_new(imc_etcd *e, const char *path, etcd_req_fn fn,
                       void *owner, int64_t deadline);
/* Sends r (or holds it while a watch is created). Returns 0, or an
 * IMC_ERR_* with r untouched: the caller frees it. */
int etcd_req_start(imc_etcd *e, etcd_req *r);
void etcd_req_free(imc_etcd *e, etcd_req *r);
/* Sends the held requests once no new watch holds them. */
void etcd_release_held(imc_etcd *e);
/* The endpoint ep failed: later requests go to the next one. */
void etcd_endpoint_failed(imc_etcd *e, size_t ep);
/* Runs completions and watch events after libcurl did some work. */
void etcd_process(imc_etcd *e);
/* Common easy-handle options: URL of path on ep, timeouts. */
int etcd_easy_setup(imc_etcd *e, CURL *h, size_t ep, const char *path,
                    int64_t timeout_ms);

/* ejson.c */
/* A number, or a string of decimal digits (etcd's int64). Returns 0,
 * IMC_ERR_PROTO. */
int ej_u64(const imc_json_value *v, uint64_t *out);
/* Member name of obj as ej_u64; absent is 0 (proto3 omits zeros). */
int ej_member_u64(const imc_json_value *obj, const char *name, uint64_t *out);
/* 1 if obj's member name is true, else 0. */
int ej_member_true(const imc_json_value *obj, const char *name);
/*
 * Decodes the base64 string v (etcd's bytes) into buf (reset first),
 * NUL-terminated; *out points into buf. Returns 0, IMC_ERR_PROTO or
 * IMC_ERR_NOMEM.
 */
int ej_bytes(const imc_json_value *v, imc_wbuf *buf, const char **out,
             size_t *len);
/* The status of an answer: HTTP code and its JSON object (NULL if the
 * body was none). */
int ej_status(long http, const imc_json_value *root);
/* Writes name: the base64 of p[0..n) (etcd's bytes). */
void ej_kv_bytes(imc_jsonw *w, const char *name, const char *p, size_t n);
/*
 * Into out (ETCD_KEY_MAX bytes): prefix "users/" user "/" device, or the
 * user's prefix (ending in "/") if device is NULL. Ids are valid. Returns
 * the length.
 */
size_t ej_user_key(const imc_etcd *e, char *out, const char *user,
                   const char *device);
/* Into out (ETCD_KEY_MAX bytes): prefix "addrs/" node. node is a valid
 * id. Returns the length. */
size_t ej_addr_key(const imc_etcd *e, char *out, const char *node);
/* Writes name: the decimal string of v (etcd's int64). */
void ej_kv_id(imc_jsonw *w, const char *name, uint64_t v);
/* The first key after every key that starts with p[0..n) (etcd's
 * range_end for a prefix), in out (n bytes); *out_len 0 means "no end"
 * (p is all 0xff): the range then ends with "\0". */
void ej_prefix_end(const char *p, size_t n, char *out, size_t *out_len);

/* lease.c */
int etcd_lease_grant(void *ud, const char *node_id, uint32_t ttl_s,
                     imc_lease_cb done, void *done_ud);
int etcd_lease_keepalive(void *ud, uint64_t lease_id, imc_done_cb done,
                         void *done_ud);
int etcd_lease_revoke(void *ud, uint64_t lease_id, imc_done_cb done,
                      void *done_ud);

/* writes.c */
int etcd_register_conn(void *ud, uint64_t lease_id, const imc_reg_entry *e,
                       imc_done_cb done, void *done_ud);
int etcd_unregister(void *ud, const imc_reg_entry *e, imc_done_cb done,
                    void *done_ud);
/* Sends the next batch if none is in flight; when closing, completes
 * what waits with IMC_ERR_CLOSED. */
void etcd_writes_flush(imc_etcd *e);
void etcd_writes_fini(imc_etcd *e);

/* lookup.c */
int etcd_lookup_many(void *ud, const char *const *user_ids, size_t n,
                     imc_lookup_many_cb done, void *done_ud);
void etcd_reads_flush(imc_etcd *e);
void etcd_reads_fini(imc_etcd *e);

/* watch.c */
int etcd_watch_new(void *ud, const char *prefix, imc_watch_cb cb, void *cb_ud,
                   uint64_t *watch_id);
int etcd_watch_cancel(void *ud, uint64_t watch_id);
/* Delivers the complete messages the streams received. */
void etcd_watches_pump(imc_etcd *e);
/* A stream ended (libcurl's result cc). */
void etcd_watch_ended(imc_etcd *e, etcd_watch *w, CURLcode cc);
/* Restarts the watches whose socket could not be watched (x.err). */
void etcd_watches_doomed(imc_etcd *e);
/* Reconnects the watches waiting out a backoff now (the cluster is back). */
void etcd_watches_retry(imc_etcd *e);
/* Frees the watches cancelled while events were being delivered. */
void etcd_watches_sweep(imc_etcd *e);
void etcd_watches_fini(imc_etcd *e);

/* An entry's struct_size must reach past conn_id. */
#define ETCD_ENTRY_MIN (offsetof(imc_reg_entry, conn_id) + sizeof(uint64_t))

#endif /* IMC_ETCD_INT_H */
