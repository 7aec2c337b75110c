/*
 * The router: validation, content filter, idempotent sends, sequence
 * numbers, path choice per recipient and delivery statuses.
 *
 * A send goes through these steps, each completing through a backend
 * callback:
 *   members (groups)  - the sender must be a member
 *   dedup             - (from_user, client_msg_id) claimed as "pending"
 *   seq               - next seq of the conversation
 *   registry lookup   - which recipients have an online device, all of
 *                       them in one batched lookup_many
 *   queue + dedup     - together, in one turn: one durable OfflineJob
 *                       (history + the inboxes of recipients with no
 *                       online device), and the claim becomes
 *                       "ok <msg_id> <seq> <sent_at>"
 *   SendAck, then the fast path: pushes through the gateway link (1:1)
 *   or one record on the group bus (groups)
 * The SendAck comes only after both are durable, so an acknowledged
 * message is never lost and a resend finds "ok" and gets the same
 * answer, followed by the message's DeliveryStatus again if it had one
 * (status.c remembers it: imc_router_options_set_status_memory). Issued
 * in the same turn, the job and its "ok" share one transaction in a
 * backend that commits a turn's operations together (SQLite group
 * commit): a crash leaves both or neither, never a queued message whose
 * claim is still "pending". If the job fails, the claim is released
 * (TTL 1 s) and the sender gets UNAVAILABLE; if only the "ok" fails, the
 * message is queued: the sender gets its SendAck and the "ok" is written
 * again until the dedup set takes it (owed.c).
 *
 * A resend of another router instance's message without a status here
 * drives its delivery again (redrive_route), once until its status: that
 * router may have died with the pushes in flight, or even before the
 * queue had the job while its "ok" was recorded (in a cluster the two are
 * not one transaction). So the re-drive queues the whole job again, the
 * history part and the inboxes of recipients with no online device (the
 * worker and the store keep one copy of each: both dedup by msg_id, and
 * the worker reports the history part, so a group's STORED comes), then
 * pushes (1:1) or publishes on the group bus (groups).
 *
 * A claim is "pending <instance>", the router instance that made it
 * (hex). A host that owns its dedup set alone (imchatd) deletes the
 * pending claims at start: their instance is dead, and none of them
 * belongs to a queued message. Routers sharing a dedup set (a cluster)
 * are told liveness by their host (imc_router_options_set_liveness; in
 * im-service, etcd leases): a claim of a dead instance is taken over with
 * the dedup set's compare_and_set, from exactly the value read, so of
 * several routers taking it over at once one proceeds and the others
 * meet its claim (one client_msg_id never gets two msg_ids). Without
 * liveness, a claim of another instance is honoured until its TTL
 * (PENDING_TTL_S). Where the queue and the dedup set do not commit
 * together (Redis and Kafka), the "ok" goes first and the job after it
 * (imc_router_options_set_record_first): a router dying between them
 * leaves an "ok" whose resend re-drives the job under the same msg_id,
 * never a queued job behind a claim that a takeover would turn into a
 * second message.
 */
#include "router/router_int.h"

#include "protocol/utf8.h"

#include "queue.pb-c.h"
#include "util/vtbl.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PENDING_TTL_S 60 /* a claim whose send never finished */
#define TAKEOVERS_MAX 3  /* other instances' claims one send checks */
#define CLIENT_ID_MAX 128
#define CONTENT_TYPE_MAX 128
#define NODE_ID_MAX 255

/* A recipient of a send: its online nodes, once looked up. */
typedef struct target {
  char *user;
  char **nodes; /* distinct node ids with a device of user */
  size_t n_nodes;
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
  int redrive;          /* a resend whose delivery is driven again */
  int takeovers;        /* other instances' claims checked */
  char other_claim[24]; /* another instance's claim, being checked */
  int stored_status;    /* first failure of the job or its "ok" record */
  int queued;           /* the queue took the job */
  uint8_t *job;         /* record_first: published once the "ok" is in */
  int ok_in;            /* record_first: the "ok" is recorded */
  size_t job_len;
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
  imc_free(&r->mem, op->job);
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
    imc_rt_backend_error(r, "dedup: set", status);
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
  if (!imc_rt_is_group(&op->msg) && op->delivered == 0 && op->n_targets > 0 &&
      op->targets[0].n_nodes > 0) {
    const char *u = op->targets[0].user;
    imc_rt_slow_path(r, &op->msg, 0, &u, 1);
  }
  op_free(op);
}

static void deliver_done(void *ud, int status, int count) {
  sendop *op = ud;
  op->r->pending--;
  if (status != 0)
    imc_rt_backend_error(op->r, "gateway link: deliver", status);
  else
    op->delivered += count;
  op_release(op);
}

static void sender_deliver_done(void *ud, int status, int count) {
  sendop *op = ud;
  op->r->pending--;
  if (status != 0)
    imc_rt_backend_error(op->r, "gateway link: deliver", status);
  op_release(op);
}

static void group_published(void *ud, int status) {
  sendop *op = ud;
  op->r->pending--;
  if (status != 0)
    imc_rt_backend_error(op->r, "group bus: publish", status);
  op_release(op);
}

/* After the SendAck: push to online devices. */
static void fast_path(sendop *op) {
  imc_router *r = op->r;
  op->waits = 1; /* held until every push below was issued */
  if (imc_rt_is_group(&op->msg)) {
    Imchat__V1__Message pm;
    imc_pb_from_msg(&pm, &op->msg);
    size_t len = imchat__v1__message__get_packed_size(&pm);
    uint8_t *buf = imc_malloc(&r->mem, len ? len : 1);
    if (buf == NULL) {
      imc_rt_backend_error(r, "group bus", IMC_ERR_NOMEM);
    } else {
      imchat__v1__message__pack(&pm, buf);
      op->waits++;
      r->pending++;
      r->stats[IMC_RT_STAT_GROUP_SENDS]++;
      int rv = r->o.group_bus.publish(r->o.group_bus_ud, r->o.group_topic,
                                      (const uint8_t *)op->msg.group_id,
                                      strlen(op->msg.group_id), buf, len,
                                      group_published, op);
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

/* The claim's value: "pending <instance>". */
static void claim_value(imc_router *r, char out[24]) {
  snprintf(out, 24, "pending %08" PRIx32, r->instance);
}

/* Lets a resend try again soon rather than after PENDING_TTL_S. */
static void release_claim(sendop *op) {
  char value[24];
  claim_value(op->r, value);
  dedup_put(op->r, op->key, value, 1);
}

/* The "ok" record of a queued send: "ok <msg_id> <seq> <sent_at>". */
static void ok_value(const sendop *op, char out[96]) {
  snprintf(out, 96, "ok %s %" PRIu64 " %" PRId64, op->msg.msg_id, op->msg.seq,
           op->msg.sent_at_ms);
}

/*
 * The job or its "ok" record is durable (or failed); after both, the
 * SendAck or the failure. A job the queue took is the message, durable:
 * if only its "ok" failed, the send is answered and the record is owed
 * (owed.c). Releasing the claim instead would let a resend make a second
 * message of the one queued. With record_first, a job refused after its
 * "ok" is in goes on the retry list and the send is answered too.
 */
static void stored_step(sendop *op, int status) {
  if (status != 0 && op->stored_status == 0)
    op->stored_status = status;
  if (--op->waits > 0)
    return;
  if (op->stored_status != 0 && op->queued) {
    char value[96];
    ok_value(op, value);
    imc_rt_owe_dedup(op->r, op->key, value, op->r->o.dedup_ttl_s);
  } else if (op->stored_status != 0 && op->ok_in) {
    /* A resend may have had its SendAck from the "ok" already: the job
     * is this router's to queue (or, if it dies first, a re-drive's). */
    imc_rt_queue_retry(op->r, &op->msg, op->job, op->job_len);
  } else if (op->stored_status != 0) {
    release_claim(op);
    op_fail(op, IMC_ERR_UNAVAILABLE, "message store unavailable; resend");
    return;
  }
  op_answer(op);
  fast_path(op);
}

static void queued(void *ud, int status) {
  sendop *op = ud;
  imc_router *r = op->r;
  r->pending--;
  if (status != 0) {
    r->stats[IMC_RT_STAT_QUEUE_ERRORS]++;
    imc_rt_backend_error(r, "offline queue: publish", status);
  } else {
    op->queued = 1;
  }
  stored_step(op, status);
}

static void ok_recorded(void *ud, int status) {
  sendop *op = ud;
  imc_router *r = op->r;
  r->pending--;
  if (status != 0)
    imc_rt_backend_error(r, "dedup: set", status);
  stored_step(op, status);
}

/* Publishes the job: queued() follows, or, refused at once (the
 * returned error), is the caller's to call. */
static int publish(sendop *op, const uint8_t *job, size_t job_len) {
  imc_router *r = op->r;
  r->pending++;
  return r->o.queue.publish(r->o.queue_ud, r->o.offline_topic,
                            (const uint8_t *)op->msg.conversation_id,
                            strlen(op->msg.conversation_id), job, job_len,
                            queued, op);
}

/* record_first: the "ok" is in (or failed: then it is owed if the job
 * goes in); now the job. */
static void ok_first_recorded(void *ud, int status) {
  sendop *op = ud;
  op->r->pending--;
  if (status != 0) {
    imc_rt_backend_error(op->r, "dedup: set", status);
    op->stored_status = status;
  } else {
    op->ok_in = 1;
  }
  int rv = publish(op, op->job, op->job_len);
  if (rv != 0)
    queued(op, rv);
}

/*
 * Publishes the job and records the claim as "ok": both must be durable
 * before the SendAck. In the same turn (one transaction where the
 * backend commits a turn together; a publish refused at once issues no
 * record), or with record_first the "ok" first, then the job.
 */
static void publish_job(sendop *op, const uint8_t *job, size_t job_len) {
  imc_router *r = op->r;
  op->stored_status = 0;
  op->queued = 0;
  char value[96];
  ok_value(op, value);
  if (r->o.record_first) {
    op->job = imc_malloc(&r->mem, job_len ? job_len : 1);
    if (op->job == NULL) {
      release_claim(op);
      op_fail(op, IMC_ERR_UNAVAILABLE, "out of memory");
      return;
    }
    memcpy(op->job, job, job_len);
    op->job_len = job_len;
    op->waits = 1; /* the publish */
    r->pending++;
    int rv =
        r->o.dedup.set(r->o.dedup_ud, op->key, (const uint8_t *)value,
                       strlen(value), r->o.dedup_ttl_s, ok_first_recorded, op);
    if (rv != 0)
      ok_first_recorded(op, rv);
    return;
  }
  op->waits = 2;
  int rv = publish(op, job, job_len);
  if (rv != 0) {
    op->waits = 1; /* no record to wait for */
    queued(op, rv);
    return;
  }
  r->pending++;
  rv = r->o.dedup.set(r->o.dedup_ud, op->key, (const uint8_t *)value,
                      strlen(value), r->o.dedup_ttl_s, ok_recorded, op);
  if (rv != 0)
    ok_recorded(op, rv);
}

/*
 * A re-drive's lookup is in: the job again (history and the inboxes of
 * recipients with no online device; see the top of this file), then the
 * pushes. The resend was answered already; a failure here is logged and
 * the next resend tries again.
 */
static void redrive_route(sendop *op) {
  imc_router *r = op->r;
  const char **offline =
      imc_malloc(&r->mem, (op->n_targets ? op->n_targets : 1) * sizeof(char *));
  if (offline == NULL) {
    rt_log(r, IMC_LOG_ERROR, "out of memory delivering %s again",
           op->msg.msg_id);
    op_free(op);
    return;
  }
  size_t n = 0;
  for (size_t i = 0; i < op->n_targets; i++)
    if (i != op->sender && op->targets[i].n_nodes == 0)
      offline[n++] = op->targets[i].user;
  imc_rt_slow_path(r, &op->msg, 1, offline, n);
  imc_free(&r->mem, offline);
  fast_path(op);
}

/* The lookup is in: queue history and the offline inboxes. */
static void lookups_done(sendop *op) {
  imc_router *r = op->r;
  if (op->redrive) {
    redrive_route(op);
    return;
  }
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
  int rv = imc_rt_pack_job(r, &op->msg, 1, offline, n, &job, &job_len);
  imc_free(&r->mem, offline);
  if (rv != 0) {
    op_fail(op, IMC_ERR_UNAVAILABLE, "out of memory");
    return;
  }
  r->stats[IMC_RT_STAT_SLOW_PATH] += n;
  publish_job(op, job, job_len);
  imc_free(&r->mem, job);
}

/*
 * Records where t's devices are, from its n registry entries e[0..n-1]
 * (pointers: an entry's struct_size may differ from ours, but always
 * reaches past conn_id). A target given no entries has no node, and its
 * inbox gets the message.
 */
static void take_entries(sendop *op, target *t, const imc_reg_entry *const *e,
                         size_t n) {
  imc_router *r = op->r;
  int is_sender = (size_t)(t - op->targets) == op->sender;
  if (n > 0)
    t->nodes = imc_calloc(&r->mem, n, sizeof(char *));
  for (size_t i = 0; t->nodes && i < n; i++) {
    int dup = 0;
    for (size_t j = 0; j < t->n_nodes; j++)
      dup |= strcmp(t->nodes[j], e[i]->node_id) == 0;
    /* A device that is the sender itself needs no push. */
    if (is_sender && strcmp(e[i]->device_id, op->msg.from_device) == 0)
      dup = 1;
    if (dup)
      continue;
    char *node = imc_strdup(&r->mem, e[i]->node_id);
    if (node)
      t->nodes[t->n_nodes++] = node;
  }
}

/*
 * The batch is in: target i's entries are e[offsets[i] .. offsets[i+1]).
 * A failed batch leaves every target without a node: with their
 * whereabouts unknown, the inboxes are the safe choice.
 */
static void lookup_done(void *ud, int status, const imc_reg_entry *const *e,
                        const size_t *offsets, size_t n_users) {
  sendop *op = ud;
  imc_router *r = op->r;
  r->pending--;
  if (status == 0 && offsets == NULL && n_users > 0)
    status = IMC_ERR_UNAVAILABLE; /* a registry that broke its contract */
  if (status != 0) {
    imc_rt_backend_error(r, "registry: lookup_many", status);
  } else {
    for (size_t i = 0; i < n_users && i < op->n_targets; i++)
      if (offsets[i + 1] > offsets[i])
        take_entries(op, &op->targets[i], e + offsets[i],
                     offsets[i + 1] - offsets[i]);
  }
  lookups_done(op);
}

/*
 * Asks the registry where every recipient is (a group's members
 * included) in one batched lookup; target i is the batch's user i.
 */
static void start_lookups(sendop *op) {
  imc_router *r = op->r;
  if (op->n_targets == 0) { /* a group of one: nobody to look up */
    lookups_done(op);
    return;
  }
  const char **users = imc_malloc(&r->mem, op->n_targets * sizeof(char *));
  r->pending++;
  if (users == NULL) {
    lookup_done(op, IMC_ERR_NOMEM, NULL, NULL, 0);
    return;
  }
  for (size_t i = 0; i < op->n_targets; i++)
    users[i] = op->targets[i].user;
  int rv = r->o.registry.lookup_many(r->o.registry_ud, users, op->n_targets,
                                     lookup_done, op);
  imc_free(&r->mem, users);
  if (rv != 0)
    lookup_done(op, rv, NULL, NULL, 0);
}

static void seq_done(void *ud, int status, uint64_t seq) {
  sendop *op = ud;
  op->r->pending--;
  if (status != 0) {
    imc_rt_backend_error(op->r, "seq: next", status);
    release_claim(op);
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

/* 1 if this router made msg_id: its instance is the id's middle part. */
static int made_here(imc_router *r, const char *msg_id) {
  char inst[9];
  snprintf(inst, sizeof(inst), "%08" PRIx32, r->instance);
  return strlen(msg_id) == 32 && memcmp(msg_id + 12, inst, 8) == 0;
}

/* "pending <instance>" of another router instance. */
static int parse_pending(imc_router *r, const uint8_t *v, size_t len,
                         uint32_t *instance) {
  char buf[24], hex[9], end;
  if (len >= sizeof(buf))
    return 0;
  memcpy(buf, v, len);
  buf[len] = '\0';
  if (sscanf(buf, "pending %8[0-9a-f]%c", hex, &end) != 1 || strlen(hex) != 8)
    return 0;
  *instance = (uint32_t)strtoul(hex, NULL, 16);
  return *instance != r->instance;
}

static void claim(sendop *op);

/* The claim is ours: on to the sequence number. */
static void claimed(sendop *op) {
  imc_router *r = op->r;
  r->pending++;
  int rv = r->o.seq.next(r->o.seq_ud, op->msg.conversation_id, seq_done, op);
  if (rv != 0)
    seq_done(op, rv, 0);
}

/* The dead instance's claim is ours now, or it changed meanwhile (taken
 * over by another router, finished, expired): then claim afresh. */
static void takeover_done(void *ud, int status, int found, const uint8_t *value,
                          size_t value_len) {
  sendop *op = ud;
  imc_router *r = op->r;
  (void)value;
  (void)value_len;
  r->pending--;
  if (status != 0) {
    imc_rt_backend_error(r, "dedup: compare_and_set", status);
    op_fail(op, IMC_ERR_UNAVAILABLE, "dedup service unavailable; resend");
    return;
  }
  if (!found) {
    claim(op);
    return;
  }
  r->stats[IMC_RT_STAT_TAKEOVERS]++;
  rt_log(r, IMC_LOG_INFO, "took over %s from the dead router %s", op->key,
         op->other_claim + 8);
  claimed(op);
}

static void alive_done(void *ud, int status, int alive) {
  sendop *op = ud;
  imc_router *r = op->r;
  r->pending--;
  if (status != 0)
    imc_rt_backend_error(r, "router liveness", status);
  if (status != 0 || alive) {
    op_fail(op, IMC_ERR_UNAVAILABLE, "the first send is still in progress");
    return;
  }
  char value[24];
  claim_value(r, value);
  r->pending++;
  int rv = r->o.dedup.compare_and_set(
      r->o.dedup_ud, op->key, (const uint8_t *)op->other_claim,
      strlen(op->other_claim), (const uint8_t *)value, strlen(value),
      PENDING_TTL_S, takeover_done, op);
  if (rv != 0)
    takeover_done(op, rv, 0, NULL, 0);
}

/*
 * The claim is pending: ours to wait for, unless its instance is dead
 * (the host tells liveness; imc_router_options_set_liveness).
 */
static void claim_pending(sendop *op, const uint8_t *value, size_t len) {
  imc_router *r = op->r;
  uint32_t instance;
  if (r->o.alive == NULL || !parse_pending(r, value, len, &instance) ||
      op->takeovers++ >= TAKEOVERS_MAX) {
    op_fail(op, IMC_ERR_UNAVAILABLE, "the first send is still in progress");
    return;
  }
  memcpy(op->other_claim, value, len);
  op->other_claim[len] = '\0';
  r->pending++;
  int rv = r->o.alive(r->o.alive_ud, instance, alive_done, op);
  if (rv != 0)
    alive_done(op, rv, 1);
}

static void tas_done(void *ud, int status, int found, const uint8_t *value,
                     size_t value_len) {
  sendop *op = ud;
  imc_router *r = op->r;
  r->pending--;
  if (status != 0) {
    imc_rt_backend_error(r, "dedup: test_and_set", status);
    op_fail(op, IMC_ERR_UNAVAILABLE, "dedup service unavailable; resend");
    return;
  }
  if (found) {
    char msg_id[33];
    uint64_t seq;
    int64_t sent_at;
    if (!parse_ok(value, value_len, msg_id, &seq, &sent_at)) {
      claim_pending(op, value, value_len);
      return;
    }
    r->stats[IMC_RT_STAT_DUPLICATES]++;
    memcpy(op->msg_id, msg_id, sizeof(op->msg_id));
    op->msg.msg_id = op->msg_id;
    op->msg.seq = seq;
    op->msg.sent_at_ms = sent_at;
    imc_send_result res = {op->msg.client_msg_id, msg_id,
                           op->msg.conversation_id, seq, sent_at};
    op->done(op->done_ud, 0, &res, NULL);
    /* The first attempt's status may have been lost with the sender's
     * connection: one already sent goes again, to where the resend came
     * from. One still to come from this router reaches the device when it
     * is due. A message of another router instance whose status is
     * unknown here may have died with its router mid-delivery: it is
     * delivered again. */
    int state = imc_rt_status_of(r, msg_id);
    if (state != 0) {
      imc_rt_resend_status(r, &op->msg, (imc_delivery_state)state);
    } else if (!made_here(r, msg_id) && imc_rt_redrive_begin(r, msg_id) == 0) {
      r->stats[IMC_RT_STAT_REDRIVES]++;
      op->redrive = 1;
      start_lookups(op);
      return;
    }
    op_free(op);
    return;
  }
  claimed(op);
}

static void claim(sendop *op) {
  imc_router *r = op->r;
  char value[24];
  claim_value(r, value);
  r->pending++;
  int rv =
      r->o.dedup.test_and_set(r->o.dedup_ud, op->key, (const uint8_t *)value,
                              strlen(value), PENDING_TTL_S, tas_done, op);
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
    imc_rt_backend_error(r, "store: group members", status);
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
  if (n > max || (required && n == 0) || !imc_utf8_valid(s, n))
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

int imc_router_send(imc_router *r, const imc_send_req *caller_req,
                    imc_send_cb done, void *done_ud) {
  if (r == NULL || caller_req == NULL || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  /* Members past the caller's struct_size are absent (NULL / 0). */
  imc_send_req view;
  imc_vtbl_copy(&view, sizeof(view), caller_req, caller_req->struct_size);
  const imc_send_req *req = &view;
  if (req->from_user == NULL || req->from_device == NULL)
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
  op->msg.struct_size = sizeof(op->msg);
  /* The strings of the request, in one block owned by op. */
  const char *to = req->to_user ? req->to_user : "";
  const char *group = req->group_id ? req->group_id : "";
  const char *ct = req->content_type ? req->content_type : "";
  /* The sender's node rides along for its DeliveryStatus; one that could
   * not be passed on safely is dropped (the status then looks it up). */
  const char *node = req->node_id ? req->node_id : "";
  if (!valid_text(node, NODE_ID_MAX, 0))
    node = "";
  size_t lens[7] = {strlen(req->from_user),
                    strlen(to),
                    strlen(group),
                    strlen(ct),
                    strlen(req->client_msg_id),
                    strlen(req->from_device),
                    strlen(node)};
  size_t total = req->body_len;
  for (int i = 0; i < 7; i++)
    total += lens[i] + 1;
  char *blk = imc_malloc(&r->mem, total);
  if (blk == NULL) {
    imc_free(&r->mem, op);
    return IMC_ERR_NOMEM;
  }
  op->blk = blk;
  const char *src[7] = {req->from_user,   to,  group, ct, req->client_msg_id,
                        req->from_device, node};
  const char **dst[7] = {&op->msg.from_user,     &op->msg.to_user,
                         &op->msg.group_id,      &op->msg.content_type,
                         &op->msg.client_msg_id, &op->msg.from_device,
                         &op->msg.from_node};
  char *p = blk;
  for (int i = 0; i < 7; i++) {
    memcpy(p, src[i], lens[i] + 1);
    *dst[i] = p;
    p += lens[i] + 1;
  }
  op->msg.from_conn_id = node[0] ? req->conn_id : 0;
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
