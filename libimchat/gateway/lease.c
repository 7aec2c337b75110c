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
 * answer always concerns the current lease. Every lease operation still
 * owed a completion counts in imc_gateway_pending.
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

/* Attaches c's entry to the current lease. A NOT_FOUND completion (the
 * lease went meanwhile) is left to the next keepalive, which finds the
 * lease gone too and registers every connection again. */
static void lease_register(imc_conn *c) {
  imc_gateway *gw = c->gw;
  imc_reg_entry e = gw_reg_entry(c);
  if (gw->o.registry.register_conn(gw->o.registry_ud, gw->lease_id, &e,
                                   gw_reg_done, gw) == 0)
    c->flags |= F_REGISTERED;
  else
    gw_log(gw, IMC_LOG_WARN, "registry: register of %s/%s failed", c->user,
           c->device);
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
  for (imc_conn *c = gw->conns; c; c = c->next)
    flags_clear(c, F_REGISTERED); /* their entries went with the lease */
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
  for (imc_conn *c = gw->conns; c; c = c->next)
    flags_clear(c, F_REGISTERED); /* their entries go with the lease */
  lease_revoke(gw, id);
}
