/*
 * The node's registry lease. The gateway holds one lease for its node,
 * granted at the first upgrade, and attaches the entry of every upgraded
 * connection to it (F_REGISTERED: on the current lease). One keepalive
 * per heartbeat interval, from the gateway's own timer, keeps them all:
 * renewals cost O(nodes), not O(connections). When a keepalive finds the
 * lease gone (it ran out while the node was cut off, or the registry
 * restarted empty) the gateway grants a new one and registers every
 * WebSocket connection again; any other failure keeps the lease and
 * tries again at the next interval, as does a failed grant. Shutdown
 * revokes the lease, so the node's entries go at once.
 *
 * At most one grant or keepalive is outstanding (lease_busy), so an
 * answer always concerns the current lease. Every registry operation
 * still owed a completion counts in imc_gateway_pending.
 *
 * A registration or an unregistration the registry fails (it is busy or
 * away: a burst of connections can outrun it) is made again at the next
 * interval, so no connection stays unknown to the routers and no entry
 * outlives its connection for longer than the registry is away.
 */
#include "gateway/gateway_int.h"

static int lease_supported(const imc_gateway *gw) {
  const imc_registry_vtbl *v = &gw->o.registry;
  return v->lease_grant && v->lease_keepalive && v->lease_revoke &&
         v->register_conn;
}

/* The next keepalive one interval from now. */
static void lease_schedule(imc_gateway *gw) {
  /* Out of memory (only when the timer enters the heap): no timer rather
   * than a due one that never moves; the next upgrade tries again. */
  if (imc_theap_set(&gw->timers, &gw->mem, &gw->lease_timer,
                    now_ms(gw) + gw->o.heartbeat_ms) != 0)
    imc_theap_remove(&gw->timers, &gw->lease_timer);
}

static void lease_revoked(void *ud, int status) {
  imc_gateway *gw = ud;
  gw->lease_ops--;
  /* NOT_FOUND: it had run out already, which is what was wanted. */
  if (status != 0 && status != IMC_ERR_NOT_FOUND)
    gw_log(gw, IMC_LOG_WARN, "registry: lease revoke: %s",
           imc_strerror(status));
}

static void lease_revoke(imc_gateway *gw, uint64_t lease_id) {
  gw->lease_ops++;
  int rv = gw->o.registry.lease_revoke(gw->o.registry_ud, lease_id,
                                       lease_revoked, gw);
  if (rv != 0)
    lease_revoked(gw, rv);
}

/* One registration or unregistration: what its completion needs to find
 * the connection, or to make it again. */
typedef struct gw_regop {
  struct gw_regop *next; /* on gw->unreg_retry */
  imc_gateway *gw;
  uint64_t conn_id;
  uint64_t lease_id; /* a registration's lease */
  size_t user_len;   /* user "\0" device "\0" */
  char user[];
} gw_regop;

static gw_regop *regop_new(imc_conn *c) {
  imc_gateway *gw = c->gw;
  size_t ul = strlen(c->user), dl = strlen(c->device);
  gw_regop *op = imc_malloc(&gw->mem, sizeof(*op) + ul + dl + 2);
  if (op == NULL)
    return NULL;
  op->next = NULL;
  op->gw = gw;
  op->conn_id = c->id;
  op->lease_id = gw->lease_id;
  op->user_len = ul;
  memcpy(op->user, c->user, ul + 1);
  memcpy(op->user + ul + 1, c->device, dl + 1);
  return op;
}

static imc_reg_entry regop_entry(const gw_regop *op) {
  imc_reg_entry e = {sizeof(e), op->user, op->user + op->user_len + 1,
                     op->gw->o.node_id, op->conn_id};
  return e;
}

/* A failure worth another try: not the lease gone (the keepalive handles
 * that), not the registry closing. */
static int retryable(int status) {
  return status != 0 && status != IMC_ERR_NOT_FOUND &&
         status != IMC_ERR_CLOSED && status != IMC_ERR_INVALID_ARGUMENT;
}

static void registered(void *ud, int status) {
  gw_regop *op = ud;
  imc_gateway *gw = op->gw;
  gw->lease_ops--;
  if (retryable(status) && op->lease_id == gw->lease_id) {
    gw_user *u = gw_user_find(gw, op->user);
    for (imc_conn *c = u ? u->conns : NULL; c; c = c->unext) {
      if (c->id == op->conn_id && (c->flags & F_REGISTERED)) {
        c->flags |= F_REG_RETRY; /* F_REGISTERED stays: it may be there */
        gw->reg_retry = 1;
        gw->reg_failed++;
      }
    }
  } else if (status != 0 && status != IMC_ERR_NOT_FOUND) {
    gw_log(gw, IMC_LOG_WARN, "registry: register: %s", imc_strerror(status));
  }
  imc_free(&gw->mem, op);
}

/* Attaches c's entry to the current lease. A NOT_FOUND completion (the
 * lease went meanwhile) is left to the next keepalive, which finds the
 * lease gone too and registers every connection again. */
static void lease_register(imc_conn *c) {
  imc_gateway *gw = c->gw;
  gw_regop *op = regop_new(c);
  if (op == NULL) { /* tried again at the next interval */
    gw->reg_retry = 1;
    return;
  }
  imc_reg_entry e = gw_reg_entry(c);
  gw->lease_ops++;
  c->flags |= F_REGISTERED;
  int rv = gw->o.registry.register_conn(gw->o.registry_ud, gw->lease_id, &e,
                                        registered, op);
  if (rv != 0)
    registered(op, rv);
}

static void unregistered(void *ud, int status) {
  gw_regop *op = ud;
  imc_gateway *gw = op->gw;
  gw->lease_ops--;
  if (retryable(status) && gw->lease_id != 0 && !gw->shutting_down) {
    op->next = gw->unreg_retry;
    gw->unreg_retry = op;
    gw->reg_failed++;
    return;
  }
  imc_free(&gw->mem, op);
}

static void unregister_op(imc_gateway *gw, gw_regop *op) {
  imc_reg_entry e = regop_entry(op);
  gw->lease_ops++;
  int rv = gw->o.registry.unregister(gw->o.registry_ud, &e, unregistered, op);
  if (rv != 0)
    unregistered(op, rv);
}

void gw_lease_unregister(imc_conn *c) {
  imc_gateway *gw = c->gw;
  if (gw->o.registry.unregister == NULL)
    return;
  gw_regop *op = regop_new(c);
  if (op == NULL)
    gw_log(gw, IMC_LOG_WARN, "registry: unregister of %s/%s: %s", c->user,
           c->device, imc_strerror(IMC_ERR_NOMEM));
  else
    unregister_op(gw, op);
}

/* The registrations and unregistrations that failed, once more. */
static void retry_failed(imc_gateway *gw) {
  if (gw->reg_failed > 0)
    gw_log(gw, IMC_LOG_WARN,
           "registry: %llu registry writes failed; making them again",
           (unsigned long long)gw->reg_failed);
  gw->reg_failed = 0;
  gw_regop *op = gw->unreg_retry;
  gw->unreg_retry = NULL;
  while (op) {
    gw_regop *next = op->next;
    op->next = NULL;
    unregister_op(gw, op);
    op = next;
  }
  if (!gw->reg_retry)
    return;
  gw->reg_retry = 0;
  for (imc_conn *c = gw->conns; c; c = c->next) {
    if ((c->flags & F_REG_RETRY) && !(c->flags & F_CLOSING)) {
      flags_clear(c, F_REG_RETRY);
      lease_register(c);
    }
  }
}

/* Frees the unregistrations still waiting for another try. */
static void drop_retries(imc_gateway *gw) {
  while (gw->unreg_retry) {
    gw_regop *op = gw->unreg_retry;
    gw->unreg_retry = op->next;
    imc_free(&gw->mem, op);
  }
}

static void lease_granted(void *ud, int status, uint64_t lease_id) {
  imc_gateway *gw = ud;
  gw->lease_ops--;
  gw->lease_busy = 0;
  if (status != 0 || lease_id == 0) { /* tried again at the next interval */
    gw_log(gw, IMC_LOG_WARN, "registry: lease grant: %s",
           imc_strerror(status ? status : IMC_ERR_UNAVAILABLE));
    return;
  }
  if (gw->shutting_down) { /* granted too late: drop it at once */
    lease_revoke(gw, lease_id);
    return;
  }
  gw->lease_id = lease_id;
  for (imc_conn *c = gw->conns; c; c = c->next)
    if (c->state == ST_WS && !(c->flags & (F_REGISTERED | F_CLOSING)))
      lease_register(c);
}

static void lease_grant(imc_gateway *gw) {
  gw->lease_busy = 1;
  gw->lease_ops++;
  int rv = gw->o.registry.lease_grant(gw->o.registry_ud, gw->o.node_id,
                                      gw->o.lease_s, lease_granted, gw);
  if (rv != 0)
    lease_granted(gw, rv, 0);
}

static void lease_kept(void *ud, int status) {
  imc_gateway *gw = ud;
  gw->lease_ops--;
  gw->lease_busy = 0;
  if (status == 0 || gw->lease_id == 0) /* fine, or revoked meanwhile */
    return;
  if (status != IMC_ERR_NOT_FOUND) { /* unknown: keep it, try again */
    gw_log(gw, IMC_LOG_WARN, "registry: lease keepalive: %s",
           imc_strerror(status));
    return;
  }
  gw_log(gw, IMC_LOG_WARN,
         "registry: lease lost; registering %llu connections again",
         (unsigned long long)gw->stats[IMC_GW_STAT_WEBSOCKETS]);
  gw->lease_id = 0;
  gw->reg_retry = 0;
  drop_retries(gw); /* the entries went with the lease */
  for (imc_conn *c = gw->conns; c; c = c->next)
    flags_clear(c, F_REGISTERED | F_REG_RETRY); /* gone with the lease */
  if (!gw->shutting_down)
    lease_grant(gw);
}

void gw_lease_timeout(imc_gateway *gw) {
  if (gw->shutting_down) {
    imc_theap_remove(&gw->timers, &gw->lease_timer);
    return;
  }
  /* Without a lease and without a connection to register there is
   * nothing to do until the next upgrade, which starts the timer again. */
  if (gw->lease_id == 0 && gw->stats[IMC_GW_STAT_WEBSOCKETS] == 0 &&
      !gw->lease_busy) {
    imc_theap_remove(&gw->timers, &gw->lease_timer);
    return;
  }
  lease_schedule(gw);
  if (gw->lease_id != 0)
    retry_failed(gw);
  if (gw->lease_busy) /* the last call is still out: its answer decides */
    return;
  if (gw->lease_id == 0) {
    lease_grant(gw); /* the last grant failed */
    return;
  }
  gw->lease_busy = 1;
  gw->lease_ops++;
  int rv = gw->o.registry.lease_keepalive(gw->o.registry_ud, gw->lease_id,
                                          lease_kept, gw);
  if (rv != 0)
    lease_kept(gw, rv);
}

void gw_lease_attach(imc_conn *c) {
  imc_gateway *gw = c->gw;
  if (!lease_supported(gw) || gw->shutting_down)
    return;
  if (gw->lease_timer.idx == IMC_TIMER_IDLE)
    lease_schedule(gw);
  if (gw->lease_id != 0)
    lease_register(c);
  else if (!gw->lease_busy)
    lease_grant(gw); /* registers c once granted */
}

void gw_lease_release(imc_gateway *gw) {
  imc_theap_remove(&gw->timers, &gw->lease_timer);
  if (gw->lease_id == 0) /* none, or a grant in flight revokes on arrival */
    return;
  uint64_t id = gw->lease_id;
  gw->lease_id = 0;
  drop_retries(gw);
  for (imc_conn *c = gw->conns; c; c = c->next)
    flags_clear(c, F_REGISTERED | F_REG_RETRY); /* go with the lease */
  lease_revoke(gw, id);
}

void gw_lease_free(imc_gateway *gw) {
  drop_retries(gw);
}
