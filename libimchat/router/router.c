/*
 * The router: validation, content filter, idempotent sends, sequence
 * numbers, path choice per recipient and delivery statuses.
 *
 * A send goes through these steps, each completing through a backend
 * callback:
 *   members (groups)  - the sender must be a member
 *   dedup             - (from_user, client_msg_id) claimed as "pending"
 *   seq               - next seq of the conversation
 *   registry lookups  - which recipients have an online device
 *   queue             - one durable OfflineJob: history + the inboxes of
 *                       recipients with no online device
 *   dedup             - the claim becomes "ok <msg_id> <seq> <sent_at>"
 *   SendAck, then the fast path: pushes through the gateway link (1:1)
 *   or one record on the group bus (groups)
 * The SendAck comes only after the job is durable, so an acknowledged
 * message is never lost; a resend finds "ok" and gets the same answer.
 */
#include <imchat/router.h>
#include <imchat/worker.h>

#include "util/alloc.h"
#include "util/hash.h"
#include "util/msg.h"
#include "util/log.h"
#include "router/filter.h"
#include "router/members.h"
#include "protocol/pb.h"
#include "queue.pb-c.h"
#include "util/vtbl.h"

#include <openssl/rand.h>

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define OFFLINE_TOPIC "offline_msg"
#define GROUP_TOPIC "group_msg"
#define PENDING_TTL_S 60        /* a claim whose send never finished */
#define STATUS_MEMORY_MS 600000 /* statuses are sent once per message */
#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 10000
#define CLIENT_ID_MAX 128
#define CONTENT_TYPE_MAX 128

struct imc_router_options {
  imc_mem mem;
  imc_registry_vtbl registry;
  void *registry_ud;
  imc_seq_vtbl seq;
  void *seq_ud;
  imc_dedup_vtbl dedup;
  void *dedup_ud;
  imc_store_vtbl store;
  void *store_ud;
  imc_bus_vtbl queue;
  void *queue_ud;
  imc_bus_vtbl group_bus;
  void *group_bus_ud;
  imc_gwlink_vtbl gwlink;
  void *gwlink_ud;
  imc_clock clock;
  imc_logger log;
  size_t max_body;
  uint32_t dedup_ttl_s, group_cache_ms;
  char *filter_path;
  imc_filter_action filter_action;
};

/*
 * A job on its way to the offline queue without an answer waiting on it.
 * If the queue refuses it, it joins the retry list.
 */
typedef struct qrec {
  struct qrec *next;
  imc_router *r;
  size_t len, key_len;
  uint8_t data[]; /* key, then the packed job */
} qrec;

/* A message that already had its DeliveryStatus. */
typedef struct seen {
  struct seen *next;  /* bucket */
  struct seen *older; /* expiry order: newest first */
  struct seen *newer;
  int64_t expires;
  char msg_id[];
} seen;

#define SEEN_BUCKETS 1024

struct imc_router {
  imc_mem mem;
  imc_router_options o;
  imc_filter *filter;
  imc_members *members;
  void *user_data;
  uint64_t stats[IMC_RT_STAT_COUNT_];
  size_t pending;
  uint32_t instance;
  uint64_t counter;
  ProtobufCAllocator pba;
  qrec *retries, *retries_tail;
  int64_t retry_at;
  uint32_t retry_ms;
  seen *seen_buckets[SEEN_BUCKETS];
  seen *seen_newest, *seen_oldest;
};

/* ------------------------------------------------------------------ */
/* Options                                                              */
/* ------------------------------------------------------------------ */

int imc_router_options_new(imc_router_options **out, const imc_mem *mem) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_router_options *o = imc_calloc(mem, 1, sizeof(*o));
  if (o == NULL)
    return IMC_ERR_NOMEM;
  o->mem = *mem;
  o->clock = *imc_clock_default();
  o->log.level = IMC_LOG_INFO;
  o->max_body = 64 * 1024;
  o->dedup_ttl_s = 7 * 24 * 3600;
  o->group_cache_ms = 30000;
  *out = o;
  return 0;
}

void imc_router_options_del(imc_router_options *o) {
  if (o == NULL)
    return;
  imc_mem m = o->mem;
  imc_free(&m, o->filter_path);
  imc_free(&m, o);
}

#define VT_SETTER(name, type, field)                                           \
  int imc_router_options_set_##name(imc_router_options *o, const type *vt,     \
                                    void *ud) {                                \
    if (o == NULL || vt == NULL)                                               \
      return IMC_ERR_INVALID_ARGUMENT;                                         \
    imc_vtbl_copy(&o->field, sizeof(o->field), vt, vt->struct_size);           \
    o->field##_ud = ud;                                                        \
    return 0;                                                                  \
  }

VT_SETTER(registry, imc_registry_vtbl, registry)
VT_SETTER(seq, imc_seq_vtbl, seq)
VT_SETTER(dedup, imc_dedup_vtbl, dedup)
VT_SETTER(store, imc_store_vtbl, store)
VT_SETTER(queue, imc_bus_vtbl, queue)
VT_SETTER(group_bus, imc_bus_vtbl, group_bus)
VT_SETTER(gwlink, imc_gwlink_vtbl, gwlink)

int imc_router_options_set_clock(imc_router_options *o,
                                 const imc_clock *clock) {
  return o ? imc_clock_assign(&o->clock, clock) : IMC_ERR_INVALID_ARGUMENT;
}

int imc_router_options_set_log(imc_router_options *o, imc_log_cb cb, void *ud,
                               imc_log_level max_level) {
  return o ? imc_logger_assign(&o->log, cb, ud, max_level)
           : IMC_ERR_INVALID_ARGUMENT;
}

int imc_router_options_set_max_body(imc_router_options *o, size_t bytes) {
  if (o == NULL || bytes == 0 || bytes > 64 * 1024 * 1024)
    return IMC_ERR_INVALID_ARGUMENT;
  o->max_body = bytes;
  return 0;
}

int imc_router_options_set_dedup_ttl_s(imc_router_options *o, uint32_t s) {
  if (o == NULL || s == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->dedup_ttl_s = s;
  return 0;
}

int imc_router_options_set_group_cache_ms(imc_router_options *o, uint32_t ms) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  o->group_cache_ms = ms;
  return 0;
}

int imc_router_options_set_filter(imc_router_options *o, const char *path,
                                  imc_filter_action action) {
  if (o == NULL || path == NULL ||
      (action != IMC_FILTER_REJECT && action != IMC_FILTER_MASK))
    return IMC_ERR_INVALID_ARGUMENT;
  imc_filter *f;
  int rv = imc_filter_load_file(&f, path, &o->mem);
  if (rv != 0)
    return rv;
  imc_filter_del(f);
  char *p = imc_strdup(&o->mem, path);
  if (p == NULL)
    return IMC_ERR_NOMEM;
  imc_free(&o->mem, o->filter_path);
  o->filter_path = p;
  o->filter_action = action;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Helpers                                                              */
/* ------------------------------------------------------------------ */

#define rt_log(r, ...) imc_logf(&(r)->o.log, __VA_ARGS__)

static int64_t now_ms(imc_router *r) {
  return imc_clock_now(&r->o.clock);
}

static void backend_error(imc_router *r, const char *what, int status) {
  r->stats[IMC_RT_STAT_BACKEND_ERRORS]++;
  rt_log(r, IMC_LOG_WARN, "%s: %s", what, imc_strerror(status));
}

static int is_group(const imc_msg *m) {
  return m->group_id != NULL && m->group_id[0] != '\0';
}

/* Packs an OfflineJob. Returns 0 or IMC_ERR_NOMEM. */
static int pack_job(imc_router *r, const imc_msg *m, int history,
                    const char *const *users, size_t n, uint8_t **out,
                    size_t *out_len) {
  Imchat__V1__Message pm;
  imc_pb_from_msg(&pm, m);
  Imchat__V1__OfflineJob job = IMCHAT__V1__OFFLINE_JOB__INIT;
  job.message = &pm;
  job.history = history != 0;
  job.n_inbox_users = n;
  job.inbox_users = (char **)users;
  size_t len = imchat__v1__offline_job__get_packed_size(&job);
  uint8_t *buf = imc_malloc(&r->mem, len ? len : 1);
  if (buf == NULL)
    return IMC_ERR_NOMEM;
  *out_len = imchat__v1__offline_job__pack(&job, buf);
  *out = buf;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Slow path with retries                                               */
/* ------------------------------------------------------------------ */

static void retry_arm(imc_router *r) {
  if (r->retry_ms == 0)
    r->retry_ms = RETRY_MIN_MS;
  r->retry_at = now_ms(r) + r->retry_ms;
}

static void retry_done(void *ud, int status);

/* Publishes the retry at the head of the list. */
static void retry_publish(imc_router *r) {
  qrec *t = r->retries;
  r->pending++;
  int rv = r->o.queue.publish(r->o.queue_ud, OFFLINE_TOPIC, t->data, t->key_len,
                              t->data + t->key_len, t->len - t->key_len,
                              retry_done, r);
  if (rv != 0)
    retry_done(r, rv);
}

static void retry_done(void *ud, int status) {
  imc_router *r = ud;
  r->pending--;
  if (status != 0) {
    r->stats[IMC_RT_STAT_QUEUE_ERRORS]++;
    r->retry_ms =
        r->retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : r->retry_ms * 2;
    retry_arm(r);
    return;
  }
  qrec *t = r->retries;
  r->retries = t->next;
  if (r->retries == NULL)
    r->retries_tail = NULL;
  r->stats[IMC_RT_STAT_RETRY_QUEUE]--;
  imc_free(&r->mem, t);
  r->retry_ms = 0;
  r->retry_at = 0;
  if (r->retries)
    retry_publish(r);
}

static void queue_done(void *ud, int status) {
  qrec *q = ud;
  imc_router *r = q->r;
  r->pending--;
  if (status == 0) {
    imc_free(&r->mem, q);
    return;
  }
  r->stats[IMC_RT_STAT_QUEUE_ERRORS]++;
  rt_log(r, IMC_LOG_WARN, "offline queue: %s; will retry",
         imc_strerror(status));
  q->next = NULL;
  int was_empty = r->retries == NULL;
  r->stats[IMC_RT_STAT_RETRY_QUEUE]++;
  if (r->retries_tail)
    r->retries_tail->next = q;
  else
    r->retries = q;
  r->retries_tail = q;
  if (was_empty)
    retry_arm(r);
}

/*
 * Queues msg for the inboxes of users (and its history if history != 0)
 * without an answer waiting on it: failures are retried until the queue
 * takes it.
 */
static void slow_path(imc_router *r, const imc_msg *m, int history,
                      const char *const *users, size_t n) {
  uint8_t *job;
  size_t job_len;
  if (pack_job(r, m, history, users, n, &job, &job_len) != 0) {
    rt_log(r, IMC_LOG_ERROR, "out of memory queueing %s", m->msg_id);
    return;
  }
  size_t key_len = strlen(m->conversation_id);
  qrec *q = imc_malloc(&r->mem, sizeof(*q) + key_len + job_len);
  if (q == NULL) {
    imc_free(&r->mem, job);
    rt_log(r, IMC_LOG_ERROR, "out of memory queueing %s", m->msg_id);
    return;
  }
  q->next = NULL;
  q->r = r;
  q->key_len = key_len;
  q->len = key_len + job_len;
  memcpy(q->data, m->conversation_id, key_len);
  memcpy(q->data + key_len, job, job_len);
  imc_free(&r->mem, job);
  r->stats[IMC_RT_STAT_SLOW_PATH] += n;
  r->pending++;
  int rv = r->o.queue.publish(r->o.queue_ud, OFFLINE_TOPIC, q->data, key_len,
                              q->data + key_len, job_len, queue_done, q);
  if (rv != 0)
    queue_done(q, rv);
}

/* ------------------------------------------------------------------ */
/* Delivery statuses                                                    */
/* ------------------------------------------------------------------ */

static void seen_unlink(imc_router *r, seen *s) {
  seen **pp = &r->seen_buckets[imc_hash_str(s->msg_id) % SEEN_BUCKETS];
  while (*pp != s)
    pp = &(*pp)->next;
  *pp = s->next;
  if (s->newer)
    s->newer->older = s->older;
  else
    r->seen_newest = s->older;
  if (s->older)
    s->older->newer = s->newer;
  else
    r->seen_oldest = s->newer;
}

static void seen_expire(imc_router *r, int64_t now) {
  while (r->seen_oldest && r->seen_oldest->expires <= now) {
    seen *s = r->seen_oldest;
    seen_unlink(r, s);
    imc_free(&r->mem, s);
  }
}

/* 1 if msg_id already had its status; otherwise records it. */
static int seen_test_and_set(imc_router *r, const char *msg_id) {
  int64_t now = now_ms(r);
  seen_expire(r, now);
  uint32_t b = imc_hash_str(msg_id) % SEEN_BUCKETS;
  for (seen *s = r->seen_buckets[b]; s; s = s->next)
    if (strcmp(s->msg_id, msg_id) == 0)
      return 1;
  size_t l = strlen(msg_id) + 1;
  seen *s = imc_malloc(&r->mem, sizeof(*s) + l);
  if (s == NULL)
    return 0; /* a repeated status is better than none */
  memcpy(s->msg_id, msg_id, l);
  s->expires = now + STATUS_MEMORY_MS;
  s->next = r->seen_buckets[b];
  r->seen_buckets[b] = s;
  s->newer = NULL;
  s->older = r->seen_newest;
  if (r->seen_newest)
    r->seen_newest->newer = s;
  else
    r->seen_oldest = s;
  r->seen_newest = s;
  return 0;
}

typedef struct statusop {
  imc_router *r;
  imc_delivery_state state;
  imc_msg *msg;
  char recipient[IMC_ID_MAX + 1];
} statusop;

static void status_sent(void *ud, int status) {
  imc_router *r = ud;
  r->pending--;
  if (status != 0)
    backend_error(r, "gateway link: status", status);
}

static void status_lookup_done(void *ud, int status, const imc_reg_entry *e,
                               size_t n) {
  statusop *op = ud;
  imc_router *r = op->r;
  r->pending--;
  if (status != 0)
    backend_error(r, "registry: lookup", status);
  for (size_t i = 0; status == 0 && i < n; i++) {
    if (strcmp(e[i].device_id, op->msg->from_device) != 0)
      continue;
    r->pending++;
    int rv = r->o.gwlink.status(r->o.gwlink_ud, e[i].node_id,
                                op->msg->from_user, op->msg->from_device,
                                op->msg->msg_id, op->msg->client_msg_id,
                                op->state, op->recipient, status_sent, r);
    if (rv != 0)
      status_sent(r, rv);
  }
  imc_free(&r->mem, op->msg);
  imc_free(&r->mem, op);
}

/* Sends the sender's device its one DeliveryStatus for m. */
static void send_status(imc_router *r, const imc_msg *m,
                        imc_delivery_state state, const char *recipient) {
  if (seen_test_and_set(r, m->msg_id))
    return;
  r->stats[state == IMC_DELIVERED ? IMC_RT_STAT_DELIVERED
                                  : IMC_RT_STAT_STORED]++;
  statusop *op = imc_malloc(&r->mem, sizeof(*op));
  imc_msg *copy = op ? imc_msg_dup(&r->mem, m) : NULL;
  if (copy == NULL) {
    imc_free(&r->mem, op);
    rt_log(r, IMC_LOG_ERROR, "out of memory sending status of %s", m->msg_id);
    return;
  }
  op->r = r;
  op->state = state;
  op->msg = copy;
  snprintf(op->recipient, sizeof(op->recipient), "%s", recipient);
  r->pending++;
  int rv = r->o.registry.lookup(r->o.registry_ud, m->from_user,
                                status_lookup_done, op);
  if (rv != 0)
    status_lookup_done(op, rv, NULL, 0);
}

/* ------------------------------------------------------------------ */
/* Sending                                                              */
/* ------------------------------------------------------------------ */

/* A recipient of a send: its online nodes, once looked up. */
typedef struct target {
  char *user;
  char **nodes; /* distinct node ids with a device of user */
  size_t n_nodes;
  int looked_up;
} target;

typedef struct sendop {
  imc_router *r;
  imc_send_cb done;
  void *done_ud;
  imc_msg msg;
  char *key; /* dedup key */
  target *targets;
  size_t n_targets;
  size_t sender; /* index of the sender in targets, or n_targets */
  size_t waits;  /* callbacks outstanding */
  int delivered; /* pushes that reached a device of the recipient */
  int answered;
  char msg_id[33];
  char conv[2 * IMC_ID_MAX + 4];
  char *blk;     /* the request's strings and body */
  uint8_t *body; /* masked copy, when the filter masked */
} sendop;

static void op_free(sendop *op) {
  imc_router *r = op->r;
  for (size_t i = 0; i < op->n_targets; i++) {
    for (size_t j = 0; j < op->targets[i].n_nodes; j++)
      imc_free(&r->mem, op->targets[i].nodes[j]);
    imc_free(&r->mem, op->targets[i].nodes);
    imc_free(&r->mem, op->targets[i].user);
  }
  imc_free(&r->mem, op->targets);
  imc_free(&r->mem, op->key);
  imc_free(&r->mem, op->body);
  imc_free(&r->mem, op->blk);
  imc_free(&r->mem, op);
}

static void op_fail(sendop *op, int status, const char *message) {
  imc_router *r = op->r;
  r->stats[IMC_RT_STAT_REJECTED]++;
  op->done(op->done_ud, status, NULL, message);
  op_free(op);
}

static void op_answer(sendop *op) {
  imc_send_result res = {op->msg.client_msg_id, op->msg.msg_id,
                         op->msg.conversation_id, op->msg.seq,
                         op->msg.sent_at_ms};
  op->answered = 1;
  op->r->stats[IMC_RT_STAT_SENDS]++;
  op->done(op->done_ud, 0, &res, NULL);
}

static void dedup_set_done(void *ud, int status) {
  imc_router *r = ud;
  r->pending--;
  if (status != 0)
    backend_error(r, "dedup: set", status);
}

static void dedup_put(imc_router *r, const char *key, const char *value,
                      uint32_t ttl_s) {
  r->pending++;
  int rv = r->o.dedup.set(r->o.dedup_ud, key, (const uint8_t *)value,
                          strlen(value), ttl_s, dedup_set_done, r);
  if (rv != 0)
    dedup_set_done(r, rv);
}

/* One step of the fast path finished; frees op after the last. */
static void op_release(sendop *op) {
  if (--op->waits > 0)
    return;
  imc_router *r = op->r;
  /* The registry said online, but no gateway had the device (it left in
   * between): the recipient gets it through the slow path. */
  if (!is_group(&op->msg) && op->delivered == 0 && op->n_targets > 0 &&
      op->targets[0].n_nodes > 0) {
    const char *u = op->targets[0].user;
    slow_path(r, &op->msg, 0, &u, 1);
  }
  op_free(op);
}

static void deliver_done(void *ud, int status, int count) {
  sendop *op = ud;
  op->r->pending--;
  if (status != 0)
    backend_error(op->r, "gateway link: deliver", status);
  else
    op->delivered += count;
  op_release(op);
}

static void sender_deliver_done(void *ud, int status, int count) {
  sendop *op = ud;
  op->r->pending--;
  if (status != 0)
    backend_error(op->r, "gateway link: deliver", status);
  op_release(op);
}

static void group_published(void *ud, int status) {
  sendop *op = ud;
  op->r->pending--;
  if (status != 0)
    backend_error(op->r, "group bus: publish", status);
  op_release(op);
}

/* After the SendAck: push to online devices. */
static void fast_path(sendop *op) {
  imc_router *r = op->r;
  op->waits = 1; /* held until every push below was issued */
  if (is_group(&op->msg)) {
    Imchat__V1__Message pm;
    imc_pb_from_msg(&pm, &op->msg);
    size_t len = imchat__v1__message__get_packed_size(&pm);
    uint8_t *buf = imc_malloc(&r->mem, len ? len : 1);
    if (buf == NULL) {
      backend_error(r, "group bus", IMC_ERR_NOMEM);
    } else {
      imchat__v1__message__pack(&pm, buf);
      op->waits++;
      r->pending++;
      r->stats[IMC_RT_STAT_GROUP_SENDS]++;
      int rv = r->o.group_bus.publish(
          r->o.group_bus_ud, GROUP_TOPIC, (const uint8_t *)op->msg.group_id,
          strlen(op->msg.group_id), buf, len, group_published, op);
      imc_free(&r->mem, buf);
      if (rv != 0)
        group_published(op, rv);
    }
    op_release(op);
    return;
  }
  for (size_t i = 0; i < op->n_targets; i++) {
    target *t = &op->targets[i];
    int self = i == op->sender;
    int self_msg = strcmp(op->msg.to_user, op->msg.from_user) == 0;
    for (size_t j = 0; j < t->n_nodes; j++) {
      op->waits++;
      r->pending++;
      r->stats[IMC_RT_STAT_FAST_PATH]++;
      int rv = r->o.gwlink.deliver(
          r->o.gwlink_ud, t->nodes[j], t->user,
          self || self_msg ? op->msg.from_device : NULL, &op->msg,
          self ? sender_deliver_done : deliver_done, op);
      if (rv != 0)
        (self ? sender_deliver_done : deliver_done)(op, rv, 0);
    }
  }
  op_release(op);
}

static void queued(void *ud, int status) {
  sendop *op = ud;
  imc_router *r = op->r;
  r->pending--;
  if (status != 0) {
    r->stats[IMC_RT_STAT_QUEUE_ERRORS]++;
    backend_error(r, "offline queue: publish", status);
    /* Let a resend try again soon rather than after PENDING_TTL_S. */
    dedup_put(r, op->key, "pending", 1);
    op_fail(op, IMC_ERR_UNAVAILABLE, "message store unavailable; resend");
    return;
  }
  char value[96];
  snprintf(value, sizeof(value), "ok %s %" PRIu64 " %" PRId64, op->msg.msg_id,
           op->msg.seq, op->msg.sent_at_ms);
  dedup_put(r, op->key, value, r->o.dedup_ttl_s);
  op_answer(op);
  fast_path(op);
}

/* Every lookup is in: queue history and the offline inboxes. */
static void lookups_done(sendop *op) {
  imc_router *r = op->r;
  const char **offline =
      imc_malloc(&r->mem, (op->n_targets ? op->n_targets : 1) * sizeof(char *));
  if (offline == NULL) {
    op_fail(op, IMC_ERR_UNAVAILABLE, "out of memory");
    return;
  }
  size_t n = 0;
  for (size_t i = 0; i < op->n_targets; i++)
    if (i != op->sender && op->targets[i].n_nodes == 0)
      offline[n++] = op->targets[i].user;
  uint8_t *job;
  size_t job_len;
  int rv = pack_job(r, &op->msg, 1, offline, n, &job, &job_len);
  imc_free(&r->mem, offline);
  if (rv != 0) {
    op_fail(op, IMC_ERR_UNAVAILABLE, "out of memory");
    return;
  }
  r->stats[IMC_RT_STAT_SLOW_PATH] += n;
  r->pending++;
  rv = r->o.queue.publish(
      r->o.queue_ud, OFFLINE_TOPIC, (const uint8_t *)op->msg.conversation_id,
      strlen(op->msg.conversation_id), job, job_len, queued, op);
  imc_free(&r->mem, job);
  if (rv != 0)
    queued(op, rv);
}

typedef struct lookupctx {
  sendop *op;
  size_t index;
} lookupctx;

static void lookup_done(void *ud, int status, const imc_reg_entry *e,
                        size_t n) {
  lookupctx *lc = ud;
  sendop *op = lc->op;
  imc_router *r = op->r;
  size_t index = lc->index;
  target *t = &op->targets[index];
  imc_free(&r->mem, lc);
  r->pending--;
  if (status != 0) {
    /* Unknown whereabouts: the inbox is the safe choice. */
    backend_error(r, "registry: lookup", status);
    n = 0;
  }
  if (n > 0)
    t->nodes = imc_calloc(&r->mem, n, sizeof(char *));
  for (size_t i = 0; t->nodes && i < n; i++) {
    int dup = 0;
    for (size_t j = 0; j < t->n_nodes; j++)
      dup |= strcmp(t->nodes[j], e[i].node_id) == 0;
    /* A device that is the sender itself needs no push. */
    if (index == op->sender && strcmp(e[i].device_id, op->msg.from_device) == 0)
      dup = 1;
    if (dup)
      continue;
    char *node = imc_strdup(&r->mem, e[i].node_id);
    if (node)
      t->nodes[t->n_nodes++] = node;
  }
  if (--op->waits == 0)
    lookups_done(op);
}

static void start_lookups(sendop *op) {
  imc_router *r = op->r;
  op->waits = op->n_targets + 1;
  for (size_t i = 0; i < op->n_targets; i++) {
    lookupctx *lc = imc_malloc(&r->mem, sizeof(*lc));
    if (lc == NULL) {
      op->waits--;
      continue;
    }
    lc->op = op;
    lc->index = i;
    r->pending++;
    int rv = r->o.registry.lookup(r->o.registry_ud, op->targets[i].user,
                                  lookup_done, lc);
    if (rv != 0)
      lookup_done(lc, rv, NULL, 0);
  }
  if (--op->waits == 0)
    lookups_done(op);
}

static void seq_done(void *ud, int status, uint64_t seq) {
  sendop *op = ud;
  op->r->pending--;
  if (status != 0) {
    backend_error(op->r, "seq: next", status);
    dedup_put(op->r, op->key, "pending", 1);
    op_fail(op, IMC_ERR_UNAVAILABLE, "sequence service unavailable; resend");
    return;
  }
  op->msg.seq = seq;
  start_lookups(op);
}

/* "ok <msg_id> <seq> <sent_at>" of an earlier send. */
static int parse_ok(const uint8_t *v, size_t len, char *msg_id, uint64_t *seq,
                    int64_t *sent_at) {
  char buf[128];
  if (len >= sizeof(buf))
    return 0;
  memcpy(buf, v, len);
  buf[len] = '\0';
  unsigned long long s;
  long long t;
  return sscanf(buf, "ok %32s %llu %lld", msg_id, &s, &t) == 3 &&
         (*seq = s, *sent_at = t, 1);
}

static void tas_done(void *ud, int status, int found, const uint8_t *value,
                     size_t value_len) {
  sendop *op = ud;
  imc_router *r = op->r;
  r->pending--;
  if (status != 0) {
    backend_error(r, "dedup: test_and_set", status);
    op_fail(op, IMC_ERR_UNAVAILABLE, "dedup service unavailable; resend");
    return;
  }
  if (found) {
    char msg_id[33];
    uint64_t seq;
    int64_t sent_at;
    if (!parse_ok(value, value_len, msg_id, &seq, &sent_at)) {
      op_fail(op, IMC_ERR_UNAVAILABLE, "the first send is still in progress");
      return;
    }
    r->stats[IMC_RT_STAT_DUPLICATES]++;
    imc_send_result res = {op->msg.client_msg_id, msg_id,
                           op->msg.conversation_id, seq, sent_at};
    op->done(op->done_ud, 0, &res, NULL);
    op_free(op);
    return;
  }
  r->pending++;
  int rv = r->o.seq.next(r->o.seq_ud, op->msg.conversation_id, seq_done, op);
  if (rv != 0)
    seq_done(op, rv, 0);
}

static void claim(sendop *op) {
  imc_router *r = op->r;
  r->pending++;
  int rv = r->o.dedup.test_and_set(r->o.dedup_ud, op->key,
                                   (const uint8_t *)"pending", 7, PENDING_TTL_S,
                                   tas_done, op);
  if (rv != 0)
    tas_done(op, rv, 0, NULL, 0);
}

static int add_target(sendop *op, const char *user) {
  target *t = &op->targets[op->n_targets];
  memset(t, 0, sizeof(*t));
  t->user = imc_strdup(&op->r->mem, user);
  if (t->user == NULL)
    return IMC_ERR_NOMEM;
  op->n_targets++;
  return 0;
}

static void members_done(void *ud, int status, const char *const *items,
                         size_t n) {
  sendop *op = ud;
  imc_router *r = op->r;
  r->pending--;
  if (status != 0) {
    backend_error(r, "store: group members", status);
    op_fail(op, IMC_ERR_UNAVAILABLE, "group service unavailable; resend");
    return;
  }
  if (!imc_members_contains(items, n, op->msg.from_user)) {
    op_fail(op, IMC_ERR_FORBIDDEN, "not a member of the group");
    return;
  }
  op->targets = imc_calloc(&r->mem, n, sizeof(target));
  if (op->targets == NULL) {
    op_fail(op, IMC_ERR_UNAVAILABLE, "out of memory");
    return;
  }
  for (size_t i = 0; i < n; i++) {
    if (strcmp(items[i], op->msg.from_user) == 0)
      continue;
    if (add_target(op, items[i]) != 0) {
      op_fail(op, IMC_ERR_UNAVAILABLE, "out of memory");
      return;
    }
  }
  op->sender = op->n_targets; /* the sender's devices get the group bus */
  claim(op);
}

static int valid_text(const char *s, size_t max, int required) {
  size_t n = strlen(s);
  if (n > max || (required && n == 0))
    return 0;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
      return 0;
  return 1;
}

static int starts_with(const char *s, const char *prefix) {
  return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Checks a request; returns 0 or an error with *why set. */
static int validate(imc_router *r, const imc_send_req *q, const char **why) {
  const char *to = q->to_user ? q->to_user : "";
  const char *group = q->group_id ? q->group_id : "";
  if (!imc_id_valid(q->from_user, strlen(q->from_user)) ||
      !imc_id_valid(q->from_device, strlen(q->from_device))) {
    *why = "invalid sender";
    return IMC_ERR_INVALID_ARGUMENT;
  }
  if ((to[0] == '\0') == (group[0] == '\0')) {
    *why = "exactly one of user_id and group_id is required";
    return IMC_ERR_INVALID_ARGUMENT;
  }
  if (!imc_id_valid(to[0] ? to : group, strlen(to[0] ? to : group))) {
    *why = "invalid recipient id";
    return IMC_ERR_INVALID_ARGUMENT;
  }
  if (q->client_msg_id == NULL ||
      !valid_text(q->client_msg_id, CLIENT_ID_MAX, 1)) {
    *why = "client_msg_id must be 1-128 printable bytes";
    return IMC_ERR_INVALID_ARGUMENT;
  }
  if (!valid_text(q->content_type ? q->content_type : "", CONTENT_TYPE_MAX,
                  0)) {
    *why = "invalid content_type";
    return IMC_ERR_INVALID_ARGUMENT;
  }
  if (q->body_len > r->o.max_body) {
    *why = "body exceeds the size limit";
    return IMC_ERR_TOO_LARGE;
  }
  return 0;
}

/* Applies the filter. Returns 0 or IMC_ERR_BLOCKED / IMC_ERR_NOMEM. */
static int apply_filter(sendop *op) {
  imc_router *r = op->r;
  if (r->filter == NULL || !starts_with(op->msg.content_type, "text/") ||
      op->msg.body_len == 0)
    return 0;
  if (r->o.filter_action == IMC_FILTER_REJECT) {
    if (imc_filter_match(r->filter, op->msg.body, op->msg.body_len) == 1) {
      r->stats[IMC_RT_STAT_BLOCKED]++;
      return IMC_ERR_BLOCKED;
    }
    return 0;
  }
  uint8_t *out = imc_malloc(&r->mem, op->msg.body_len);
  if (out == NULL)
    return IMC_ERR_NOMEM;
  size_t outlen;
  int n = imc_filter_mask(r->filter, op->msg.body, op->msg.body_len, out,
                          op->msg.body_len, &outlen);
  if (n <= 0) {
    imc_free(&r->mem, out);
    return 0;
  }
  r->stats[IMC_RT_STAT_MASKED]++;
  op->body = out;
  op->msg.body = out;
  op->msg.body_len = outlen;
  return 0;
}

static void new_msg_id(imc_router *r, int64_t wall, char out[33]) {
  snprintf(out, 33, "%012" PRIx64 "%08" PRIx32 "%012" PRIx64,
           (uint64_t)wall & UINT64_C(0xffffffffffff), r->instance,
           ++r->counter & UINT64_C(0xffffffffffff));
}

int imc_router_send(imc_router *r, const imc_send_req *req, imc_send_cb done,
                    void *done_ud) {
  if (r == NULL || req == NULL || done == NULL || req->from_user == NULL ||
      req->from_device == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  const char *why = NULL;
  int rv = validate(r, req, &why);
  if (rv != 0) {
    r->stats[IMC_RT_STAT_REJECTED]++;
    done(done_ud, rv, NULL, why);
    return 0;
  }
  sendop *op = imc_calloc(&r->mem, 1, sizeof(*op));
  if (op == NULL)
    return IMC_ERR_NOMEM;
  op->r = r;
  op->done = done;
  op->done_ud = done_ud;
  /* The strings of the request, in one block owned by op. */
  const char *to = req->to_user ? req->to_user : "";
  const char *group = req->group_id ? req->group_id : "";
  const char *ct = req->content_type ? req->content_type : "";
  size_t lens[6] = {strlen(req->from_user),
                    strlen(to),
                    strlen(group),
                    strlen(ct),
                    strlen(req->client_msg_id),
                    strlen(req->from_device)};
  size_t total = req->body_len;
  for (int i = 0; i < 6; i++)
    total += lens[i] + 1;
  char *blk = imc_malloc(&r->mem, total);
  if (blk == NULL) {
    imc_free(&r->mem, op);
    return IMC_ERR_NOMEM;
  }
  op->blk = blk;
  const char *src[6] = {req->from_user,  to, group, ct, req->client_msg_id,
                        req->from_device};
  const char **dst[6] = {&op->msg.from_user,     &op->msg.to_user,
                         &op->msg.group_id,      &op->msg.content_type,
                         &op->msg.client_msg_id, &op->msg.from_device};
  char *p = blk;
  for (int i = 0; i < 6; i++) {
    memcpy(p, src[i], lens[i] + 1);
    *dst[i] = p;
    p += lens[i] + 1;
  }
  if (req->body_len)
    memcpy(p, req->body, req->body_len);
  op->msg.body = (const uint8_t *)p;
  op->msg.body_len = req->body_len;
  op->msg.sent_at_ms = imc_clock_wall(&r->o.clock);
  new_msg_id(r, op->msg.sent_at_ms, op->msg_id);
  op->msg.msg_id = op->msg_id;
  if (group[0]) {
    snprintf(op->conv, sizeof(op->conv), "g:%s", group);
  } else {
    int lt = strcmp(req->from_user, to) <= 0;
    snprintf(op->conv, sizeof(op->conv), "p:%s:%s", lt ? req->from_user : to,
             lt ? to : req->from_user);
  }
  op->msg.conversation_id = op->conv;
  size_t kl = strlen(req->from_user) + strlen(req->client_msg_id) + 8;
  op->key = imc_malloc(&r->mem, kl);
  if (op->key == NULL) {
    op_free(op);
    return IMC_ERR_NOMEM;
  }
  snprintf(op->key, kl, "send:%s:%s", req->from_user, req->client_msg_id);
  rv = apply_filter(op);
  if (rv != 0) {
    op_fail(op, rv,
            rv == IMC_ERR_BLOCKED ? "message blocked by content filter"
                                  : "out of memory");
    return 0;
  }
  if (group[0]) {
    r->pending++;
    rv = imc_members_get(r->members, group, members_done, op);
    if (rv != 0)
      members_done(op, rv, NULL, 0);
    return 0;
  }
  op->targets = imc_calloc(&r->mem, 2, sizeof(target));
  if (op->targets == NULL || add_target(op, to) != 0) {
    op_free(op);
    return IMC_ERR_NOMEM;
  }
  op->sender = op->n_targets;
  if (strcmp(to, req->from_user) != 0) {
    if (add_target(op, req->from_user) != 0) {
      op_free(op);
      return IMC_ERR_NOMEM;
    }
  }
  claim(op);
  return 0;
}

/* ------------------------------------------------------------------ */
/* Reports from gateways and the worker                                 */
/* ------------------------------------------------------------------ */

void imc_router_delivered(imc_router *r, const imc_msg *msg,
                          const char *user_id, const char *device_id) {
  if (r == NULL || msg == NULL || user_id == NULL)
    return;
  (void)device_id;
  if (!is_group(msg) && strcmp(user_id, msg->to_user) == 0)
    send_status(r, msg, IMC_DELIVERED, user_id);
}

void imc_router_undelivered(imc_router *r, const imc_msg *msg,
                            const char *user_id) {
  if (r == NULL || msg == NULL || user_id == NULL)
    return;
  /* The sender's other devices catch up from the history, not the inbox. */
  if (strcmp(user_id, msg->from_user) == 0 &&
      (is_group(msg) || strcmp(user_id, msg->to_user) != 0))
    return;
  slow_path(r, msg, 0, &user_id, 1);
}

void imc_router_persisted(void *router, const imc_msg *msg, int history,
                          const char *const *users, size_t n_users) {
  imc_router *r = router;
  if (r == NULL || msg == NULL)
    return;
  if (is_group(msg)) {
    if (history)
      send_status(r, msg, IMC_STORED, "");
    return;
  }
  for (size_t i = 0; i < n_users; i++)
    if (strcmp(users[i], msg->to_user) == 0)
      send_status(r, msg, IMC_STORED, msg->to_user);
}

static int up_send(void *ud, const imc_send_req *req, imc_send_cb done,
                   void *done_ud) {
  return imc_router_send(ud, req, done, done_ud);
}

/* The router takes what it needs from msg at once. */
static int up_delivered(void *ud, const imc_msg *msg, const char *user,
                        const char *device, imc_done_cb done, void *done_ud) {
  imc_router_delivered(ud, msg, user, device);
  done(done_ud, 0);
  return 0;
}

static int up_undelivered(void *ud, const imc_msg *msg, const char *user,
                          imc_done_cb done, void *done_ud) {
  imc_router_undelivered(ud, msg, user);
  done(done_ud, 0);
  return 0;
}

static const imc_upstream_vtbl upstream_vtbl = {
    sizeof(imc_upstream_vtbl), up_send, up_delivered, up_undelivered};

const imc_upstream_vtbl *imc_router_upstream_vtbl(void) {
  return &upstream_vtbl;
}

/* ------------------------------------------------------------------ */
/* Groups                                                               */
/* ------------------------------------------------------------------ */

typedef struct groupop {
  imc_router *r;
  imc_done_cb done;
  void *done_ud;
  char group[IMC_ID_MAX + 1];
} groupop;

static void group_changed(void *ud, int status) {
  groupop *g = ud;
  imc_router *r = g->r;
  r->pending--;
  imc_members_invalidate(r->members, g->group);
  g->done(g->done_ud, status);
  imc_free(&r->mem, g);
}

static int group_change(imc_router *r, const char *group_id,
                        const char *user_id, imc_done_cb done, void *done_ud,
                        int add) {
  if (r == NULL || done == NULL || group_id == NULL || user_id == NULL ||
      !imc_id_valid(group_id, strlen(group_id)) ||
      !imc_id_valid(user_id, strlen(user_id)))
    return IMC_ERR_INVALID_ARGUMENT;
  groupop *g = imc_malloc(&r->mem, sizeof(*g));
  if (g == NULL)
    return IMC_ERR_NOMEM;
  g->r = r;
  g->done = done;
  g->done_ud = done_ud;
  snprintf(g->group, sizeof(g->group), "%s", group_id);
  r->pending++;
  int rv = add ? r->o.store.group_add(r->o.store_ud, group_id, user_id,
                                      group_changed, g)
               : r->o.store.group_remove(r->o.store_ud, group_id, user_id,
                                         group_changed, g);
  if (rv != 0) {
    r->pending--;
    imc_free(&r->mem, g);
  }
  return rv;
}

int imc_router_group_add(imc_router *r, const char *group_id,
                         const char *user_id, imc_done_cb done, void *done_ud) {
  return group_change(r, group_id, user_id, done, done_ud, 1);
}

int imc_router_group_remove(imc_router *r, const char *group_id,
                            const char *user_id, imc_done_cb done,
                            void *done_ud) {
  return group_change(r, group_id, user_id, done, done_ud, 0);
}

int imc_router_group_members(imc_router *r, const char *group_id,
                             imc_list_cb done, void *done_ud) {
  if (r == NULL || done == NULL || group_id == NULL ||
      !imc_id_valid(group_id, strlen(group_id)))
    return IMC_ERR_INVALID_ARGUMENT;
  return imc_members_get(r->members, group_id, done, done_ud);
}

void imc_router_group_invalidate(imc_router *r, const char *group_id) {
  if (r != NULL && group_id != NULL)
    imc_members_invalidate(r->members, group_id);
}

/* ------------------------------------------------------------------ */
/* Life cycle                                                           */
/* ------------------------------------------------------------------ */

static int load_filter(imc_router *r, imc_filter **out) {
  return imc_filter_load_file(out, r->o.filter_path, &r->mem);
}

int imc_router_reload_filter(imc_router *r) {
  if (r == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (r->o.filter_path == NULL)
    return IMC_ERR_NOT_FOUND;
  imc_filter *f;
  int rv = load_filter(r, &f);
  if (rv != 0) {
    rt_log(r, IMC_LOG_WARN, "filter %s: %s; keeping the old list",
           r->o.filter_path, imc_strerror(rv));
    return rv;
  }
  imc_filter_del(r->filter);
  r->filter = f;
  rt_log(r, IMC_LOG_INFO, "filter %s: %zu words", r->o.filter_path,
         imc_filter_size(f));
  return 0;
}

int imc_router_new(imc_router **out, const imc_router_options *opt,
                   const imc_mem *mem) {
  if (out == NULL || opt == NULL || opt->registry.lookup == NULL ||
      opt->seq.next == NULL || opt->dedup.test_and_set == NULL ||
      opt->dedup.set == NULL || opt->store.group_members == NULL ||
      opt->store.group_add == NULL || opt->store.group_remove == NULL ||
      opt->queue.publish == NULL || opt->gwlink.deliver == NULL ||
      opt->gwlink.status == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_router *r = imc_calloc(mem, 1, sizeof(*r));
  if (r == NULL)
    return IMC_ERR_NOMEM;
  r->mem = *mem;
  r->o = *opt;
  r->o.filter_path = NULL;
  int rv = 0;
  if (opt->filter_path) {
    r->o.filter_path = imc_strdup(mem, opt->filter_path);
    rv = r->o.filter_path ? load_filter(r, &r->filter) : IMC_ERR_NOMEM;
  }
  if (rv == 0)
    rv = imc_members_new(&r->members, mem, &r->o.store, r->o.store_ud,
                         &r->o.clock, r->o.group_cache_ms);
  if (rv != 0) {
    imc_router_del(r);
    return rv;
  }
  if (RAND_bytes((unsigned char *)&r->instance, sizeof(r->instance)) != 1)
    r->instance = (uint32_t)imc_clock_wall(&r->o.clock);
  imc_pb_allocator(&r->pba, &r->mem);
  *out = r;
  return 0;
}

void imc_router_del(imc_router *r) {
  if (r == NULL)
    return;
  imc_members_del(r->members);
  imc_filter_del(r->filter);
  while (r->retries) {
    qrec *t = r->retries;
    r->retries = t->next;
    imc_free(&r->mem, t);
  }
  while (r->seen_oldest) {
    seen *s = r->seen_oldest;
    r->seen_oldest = s->newer;
    imc_free(&r->mem, s);
  }
  imc_free(&r->mem, r->o.filter_path);
  imc_mem m = r->mem;
  imc_free(&m, r);
}

void imc_router_set_user_data(imc_router *r, void *ud) {
  r->user_data = ud;
}

void *imc_router_get_user_data(const imc_router *r) {
  return r->user_data;
}

int64_t imc_router_next_timeout_ms(imc_router *r) {
  if (r == NULL || r->retries == NULL || r->retry_at == 0)
    return -1;
  int64_t d = r->retry_at - now_ms(r);
  return d > 0 ? d : 0;
}

int imc_router_on_timeout(imc_router *r) {
  if (r == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  int64_t now = now_ms(r);
  seen_expire(r, now);
  if (r->retries && r->retry_at != 0 && now >= r->retry_at) {
    r->retry_at = 0;
    retry_publish(r);
  }
  return 0;
}

size_t imc_router_pending(const imc_router *r) {
  return r ? r->pending + imc_members_pending(r->members) : 0;
}

uint64_t imc_router_stat_get(const imc_router *r, imc_router_stat stat) {
  if (r == NULL || (unsigned)stat >= IMC_RT_STAT_COUNT_)
    return 0;
  return r->stats[stat];
}
