/*
 * Delivery statuses: the sender's device gets one DeliveryStatus per
 * message; the "seen" cache (a hash of msg_ids in expiry order)
 * remembers which messages had theirs.
 */
#include "router/router_int.h"

#include "util/hash.h"
#include "util/msg.h"

#include <stdio.h>
#include <string.h>

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

void imc_rt_seen_expire(imc_router *r, int64_t now) {
  while (r->seen_oldest && r->seen_oldest->expires <= now) {
    seen *s = r->seen_oldest;
    seen_unlink(r, s);
    imc_free(&r->mem, s);
  }
}

/* 1 if msg_id already had its status; otherwise records it. */
static int seen_test_and_set(imc_router *r, const char *msg_id) {
  int64_t now = imc_rt_now_ms(r);
  imc_rt_seen_expire(r, now);
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
    imc_rt_backend_error(r, "gateway link: status", status);
}

/* The fallback's lookup of the sender is in: its sending device gets the
 * status on every node that has it. */
static void status_lookup_done(void *ud, int status,
                               const imc_reg_entry *const *e,
                               const size_t *offsets, size_t n_users) {
  statusop *op = ud;
  imc_router *r = op->r;
  r->pending--;
  if (status != 0)
    imc_rt_backend_error(r, "registry: lookup_many", status);
  size_t n = status == 0 && n_users == 1 && offsets ? offsets[1] : 0;
  for (size_t i = 0; i < n; i++) {
    if (strcmp(e[i]->device_id, op->msg->from_device) != 0)
      continue;
    r->pending++;
    int rv = r->o.gwlink.status(r->o.gwlink_ud, e[i]->node_id,
                                op->msg->from_user, op->msg->from_device,
                                op->msg->msg_id, op->msg->client_msg_id,
                                op->state, op->recipient, status_sent, r);
    if (rv != 0)
      status_sent(r, rv);
  }
  imc_free(&r->mem, op->msg);
  imc_free(&r->mem, op);
}

void imc_rt_send_status(imc_router *r, const imc_msg *m,
                        imc_delivery_state state, const char *recipient) {
  if (seen_test_and_set(r, m->msg_id))
    return;
  r->stats[state == IMC_DELIVERED ? IMC_RT_STAT_DELIVERED
                                  : IMC_RT_STAT_STORED]++;
  /* The message knows the node the sender sent it from: no registry
   * round trip. A message from a path that lost it (a gateway reporting
   * over gRPC, say) falls back to looking the sender up. */
  if (m->from_node != NULL && m->from_node[0] != '\0') {
    r->pending++;
    int rv = r->o.gwlink.status(r->o.gwlink_ud, m->from_node, m->from_user,
                                m->from_device, m->msg_id, m->client_msg_id,
                                state, recipient, status_sent, r);
    if (rv != 0)
      status_sent(r, rv);
    return;
  }
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
  const char *user = copy->from_user;
  int rv = r->o.registry.lookup_many(r->o.registry_ud, &user, 1,
                                     status_lookup_done, op);
  if (rv != 0)
    status_lookup_done(op, rv, NULL, NULL, 0);
}

void imc_rt_seen_free(imc_router *r) {
  while (r->seen_oldest) {
    seen *s = r->seen_oldest;
    r->seen_oldest = s->newer;
    imc_free(&r->mem, s);
  }
  r->seen_newest = NULL;
}
