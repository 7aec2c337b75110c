/*
 * Delivery statuses: the sender's device gets one DeliveryStatus per
 * message; the "seen" cache (a hash of msg_ids in expiry order)
 * remembers which messages had theirs, and which state it said, so that
 * a resend answered from the dedup set can get it again. It also holds
 * the messages of other router instances that a resend made this router
 * deliver again (state 0 until their status), so that is done once.
 */
#include "router/router_int.h"

#include "util/hash.h"
#include "util/msg.h"

#include <stdio.h>
#include <string.h>

static seen **seen_bucket(imc_router *r, uint64_t hash) {
  return &r->seen_buckets[hash & (r->seen_nbuckets - 1)];
}

static void seen_unlink(imc_router *r, seen *s) {
  seen **pp = seen_bucket(r, s->hash);
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
  r->seen_count--;
}

void imc_rt_seen_expire(imc_router *r, int64_t now) {
  while (r->seen_oldest && r->seen_oldest->expires <= now) {
    seen *s = r->seen_oldest;
    seen_unlink(r, s);
    imc_free(&r->mem, s);
  }
}

static seen *seen_find(imc_router *r, const char *msg_id) {
  if (r->seen_buckets == NULL)
    return NULL;
  uint64_t h = imc_hash_str(msg_id);
  for (seen *s = *seen_bucket(r, h); s; s = s->next)
    if (s->hash == h && strcmp(s->msg_id, msg_id) == 0)
      return s;
  return NULL;
}

/* Makes room for one more entry: the first table, or one twice as large
 * once the entries reach the buckets. Returns 0, or IMC_ERR_NOMEM when
 * there is no table at all (a full table that cannot grow still works,
 * with longer chains). */
static int seen_reserve(imc_router *r) {
  if (r->seen_buckets != NULL && r->seen_count < r->seen_nbuckets)
    return 0;
  size_t n = r->seen_buckets ? r->seen_nbuckets * 2 : SEEN_BUCKETS_MIN;
  seen **t = imc_calloc(&r->mem, n, sizeof(*t));
  if (t == NULL)
    return r->seen_buckets ? 0 : IMC_ERR_NOMEM;
  for (seen *s = r->seen_newest; s; s = s->older) {
    seen **b = &t[s->hash & (n - 1)];
    s->next = *b;
    *b = s;
  }
  imc_free(&r->mem, r->seen_buckets);
  r->seen_buckets = t;
  r->seen_nbuckets = n;
  return 0;
}

/* Remembers msg_id with state (0: delivered again, no status yet). */
static void seen_add(imc_router *r, const char *msg_id, uint8_t state,
                     int64_t now) {
  while (r->seen_count >= r->o.status_memory_max) {
    seen *old = r->seen_oldest;
    seen_unlink(r, old);
    imc_free(&r->mem, old);
  }
  size_t l = strlen(msg_id) + 1;
  seen *s = seen_reserve(r) == 0 ? imc_malloc(&r->mem, sizeof(*s) + l) : NULL;
  if (s == NULL)
    return; /* a repeated status (or delivery) is better than none */
  memcpy(s->msg_id, msg_id, l);
  s->hash = imc_hash_str(msg_id);
  s->state = state;
  s->expires = now + r->o.status_memory_ms;
  seen **b = seen_bucket(r, s->hash);
  s->next = *b;
  *b = s;
  s->newer = NULL;
  s->older = r->seen_newest;
  if (r->seen_newest)
    r->seen_newest->newer = s;
  else
    r->seen_oldest = s;
  r->seen_newest = s;
  r->seen_count++;
}

/* 1 if msg_id already had its status; otherwise records it as state. */
static int seen_test_and_set(imc_router *r, const char *msg_id,
                             imc_delivery_state state) {
  int64_t now = imc_rt_now_ms(r);
  imc_rt_seen_expire(r, now);
  seen *s = seen_find(r, msg_id);
  if (s != NULL && s->state != 0)
    return 1;
  if (s != NULL) /* delivered again: this is its first status */
    s->state = (uint8_t)state;
  else
    seen_add(r, msg_id, (uint8_t)state, now);
  return 0;
}

/* A status whose sender must be looked up first, with its own copy of
 * the message. */
typedef struct status_item {
  imc_msg *msg;
  imc_delivery_state state;
  char recipient[IMC_ID_MAX + 1];
} status_item;

/* Statuses waiting for one lookup_many of their senders: item i is the
 * batch's user i. */
typedef struct statusop {
  imc_router *r;
  size_t n;
  const char **users; /* in the same allocation, after items */
  status_item items[];
} statusop;

static void status_sent(void *ud, int status) {
  imc_router *r = ud;
  r->pending--;
  if (status != 0)
    imc_rt_backend_error(r, "gateway link: status", status);
}

static void status_push(imc_router *r, const char *node, const imc_msg *m,
                        imc_delivery_state state, const char *recipient) {
  r->pending++;
  int rv = r->o.gwlink.status(r->o.gwlink_ud, node, m->from_user,
                              m->from_device, m->msg_id, m->client_msg_id,
                              state, recipient, status_sent, r);
  if (rv != 0)
    status_sent(r, rv);
}

static void statusop_free(statusop *op) {
  for (size_t i = 0; i < op->n; i++)
    imc_free(&op->r->mem, op->items[i].msg);
  imc_free(&op->r->mem, op);
}

/* The lookup of the senders is in: each sending device gets its status
 * on every node that has it. */
static void status_lookup_done(void *ud, int status,
                               const imc_reg_entry *const *e,
                               const size_t *offsets, size_t n_users) {
  statusop *op = ud;
  imc_router *r = op->r;
  r->pending--;
  if (status != 0)
    imc_rt_backend_error(r, "registry: lookup_many", status);
  else if (offsets == NULL || n_users != op->n)
    imc_rt_backend_error(r, "registry: lookup_many", IMC_ERR_UNAVAILABLE);
  else
    for (size_t u = 0; u < op->n; u++) {
      const status_item *it = &op->items[u];
      for (size_t i = offsets[u]; i < offsets[u + 1]; i++)
        if (strcmp(e[i]->device_id, it->msg->from_device) == 0)
          status_push(r, e[i]->node_id, it->msg, it->state, it->recipient);
    }
  statusop_free(op);
}

/* Room for up to cap statuses to look up; NULL without memory. */
static statusop *statusop_new(imc_router *r, size_t cap) {
  statusop *op = imc_malloc(
      &r->mem, sizeof(*op) + cap * (sizeof(status_item) + sizeof(char *)));
  if (op == NULL)
    return NULL;
  op->r = r;
  op->n = 0;
  op->users = (const char **)(void *)(op->items + cap);
  return op;
}

/* Adds m's status to op. Returns 0 or IMC_ERR_NOMEM (m is left out). */
static int statusop_add(statusop *op, const imc_msg *m,
                        imc_delivery_state state, const char *recipient) {
  imc_msg *copy = imc_msg_dup(&op->r->mem, m);
  if (copy == NULL) {
    rt_log(op->r, IMC_LOG_ERROR, "out of memory sending status of %s",
           m->msg_id);
    return IMC_ERR_NOMEM;
  }
  status_item *it = &op->items[op->n];
  it->msg = copy;
  it->state = state;
  snprintf(it->recipient, sizeof(it->recipient), "%s", recipient);
  op->users[op->n++] = copy->from_user;
  return 0;
}

/* Asks the registry for every sender of op at once (ids may repeat). */
static void statusop_lookup(statusop *op) {
  imc_router *r = op->r;
  if (op->n == 0) {
    statusop_free(op);
    return;
  }
  r->pending++;
  int rv = r->o.registry.lookup_many(r->o.registry_ud, op->users, op->n,
                                     status_lookup_done, op);
  if (rv != 0)
    status_lookup_done(op, rv, NULL, NULL, 0);
}

/*
 * The message knows the node the sender sent it from: no registry round
 * trip. A message from a path that lost it (a gateway reporting over
 * gRPC, say) falls back to looking the sender up.
 */
static void status_route(imc_router *r, const imc_msg *m,
                         imc_delivery_state state, const char *recipient) {
  if (m->from_node != NULL && m->from_node[0] != '\0') {
    status_push(r, m->from_node, m, state, recipient);
    return;
  }
  statusop *op = statusop_new(r, 1);
  if (op == NULL) {
    rt_log(r, IMC_LOG_ERROR, "out of memory sending status of %s", m->msg_id);
    return;
  }
  statusop_add(op, m, state, recipient);
  statusop_lookup(op);
}

static void count_status(imc_router *r, imc_delivery_state state) {
  r->stats[state == IMC_DELIVERED ? IMC_RT_STAT_DELIVERED
                                  : IMC_RT_STAT_STORED]++;
}

void imc_rt_send_status(imc_router *r, const imc_msg *m,
                        imc_delivery_state state, const char *recipient) {
  if (seen_test_and_set(r, m->msg_id, state))
    return;
  count_status(r, state);
  status_route(r, m, state, recipient);
}

void imc_rt_delivered_many(imc_router *r, const imc_delivery_ack *acks,
                           size_t n) {
  statusop *op = NULL; /* the batch's messages that lost their node */
  for (size_t i = 0; i < n; i++) {
    imc_msg view;
    const imc_msg *m = imc_msg_view(&view, acks[i].msg);
    if (m == NULL || acks[i].user_id == NULL || imc_rt_is_group(m) ||
        strcmp(acks[i].user_id, m->to_user) != 0 ||
        seen_test_and_set(r, m->msg_id, IMC_DELIVERED))
      continue;
    count_status(r, IMC_DELIVERED);
    if (m->from_node[0] != '\0') {
      status_push(r, m->from_node, m, IMC_DELIVERED, m->to_user);
      continue;
    }
    if (op == NULL)
      op = statusop_new(r, n - i);
    if (op == NULL)
      status_route(r, m, IMC_DELIVERED, m->to_user);
    else
      statusop_add(op, m, IMC_DELIVERED, m->to_user);
  }
  if (op != NULL)
    statusop_lookup(op);
}

int imc_rt_status_of(imc_router *r, const char *msg_id) {
  imc_rt_seen_expire(r, imc_rt_now_ms(r));
  const seen *s = seen_find(r, msg_id);
  return s ? s->state : 0;
}

int imc_rt_redrive_begin(imc_router *r, const char *msg_id) {
  int64_t now = imc_rt_now_ms(r);
  imc_rt_seen_expire(r, now);
  if (seen_find(r, msg_id) != NULL)
    return 1;
  seen_add(r, msg_id, 0, now);
  return 0;
}

void imc_rt_resend_status(imc_router *r, const imc_msg *m,
                          imc_delivery_state state) {
  r->stats[IMC_RT_STAT_STATUS_REPEATS]++;
  status_route(r, m, state, imc_rt_is_group(m) ? "" : m->to_user);
}

void imc_rt_seen_free(imc_router *r) {
  while (r->seen_oldest) {
    seen *s = r->seen_oldest;
    r->seen_oldest = s->newer;
    imc_free(&r->mem, s);
  }
  r->seen_newest = NULL;
  imc_free(&r->mem, r->seen_buckets);
  r->seen_buckets = NULL;
  r->seen_nbuckets = r->seen_count = 0;
}
