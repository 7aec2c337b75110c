/*
 * A 1:1 message stored for a recipient who came online meanwhile.
 *
 * The router takes the slow path when the recipient has no device in the
 * registry; the worker stores the message a little later. A device that
 * connects in between may run its offline sync before the message is
 * stored, and would then only see it at its next sync. So once the
 * worker reports the message stored, the router looks the recipient up
 * again and pushes it to any device now online; the client's dedup makes
 * a second copy (push and sync) harmless. An un-ACKed push falls back to
 * the slow path, where the worker finds the message already stored and
 * reports nothing again, so this happens at most once per message.
 */
#include "router/router_int.h"

#include "util/msg.h"

#include <string.h>

typedef struct stored_push {
  imc_router *r;
  imc_msg *msg; /* our copy */
  int waits;    /* deliveries issued and not completed, plus the lookup */
} stored_push;

static void release(stored_push *p) {
  if (--p->waits > 0)
    return;
  p->r->pending--;
  imc_free(&p->r->mem, p->msg);
  imc_free(&p->r->mem, p);
}

static void pushed(void *ud, int status, int count) {
  stored_push *p = ud;
  if (status != 0)
    imc_rt_backend_error(p->r, "gateway link: deliver", status);
  release(p);
}

static void looked_up(void *ud, int status, const imc_reg_entry *const *e,
                      const size_t *offsets, size_t n_users) {
  stored_push *p = ud;
  imc_router *r = p->r;
  if (status != 0) {
    /* The message is stored: the next sync brings it. */
    imc_rt_backend_error(r, "registry: lookup_many", status);
    release(p);
    return;
  }
  size_t n = n_users ? offsets[1] : 0;
  for (size_t i = 0; i < n; i++) {
    int dup = 0;
    for (size_t j = 0; j < i; j++)
      dup |= strcmp(e[j]->node_id, e[i]->node_id) == 0;
    if (dup)
      continue;
    p->waits++;
    r->stats[IMC_RT_STAT_FAST_PATH]++;
    int rv = r->o.gwlink.deliver(r->o.gwlink_ud, e[i]->node_id, p->msg->to_user,
                                 NULL, p->msg, pushed, p);
    if (rv != 0)
      pushed(p, rv, 0);
  }
  release(p);
}

void imc_rt_push_stored(imc_router *r, const imc_msg *msg) {
  stored_push *p = imc_calloc(&r->mem, 1, sizeof(*p));
  if (p == NULL || (p->msg = imc_msg_dup(&r->mem, msg)) == NULL) {
    imc_free(&r->mem, p);
    return; /* the next sync brings it */
  }
  p->r = r;
  p->waits = 1;
  r->pending++;
  const char *user = p->msg->to_user;
  int rv = r->o.registry.lookup_many(r->o.registry_ud, &user, 1, looked_up, p);
  if (rv != 0)
    looked_up(p, rv, NULL, NULL, 0);
}
