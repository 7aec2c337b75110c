/*
 * The gateway object: creation and deletion, flushing, timers,
 * shutdown and statistics. The rest of the role lives beside it: see
 * gateway_int.h for the map.
 */
#include "gateway/gateway_int.h"

#include <stdio.h>
#include <string.h>

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
  if (!opt->http_only && opt->secret == NULL && opt->pem == NULL &&
      opt->keysrc.lookup == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_gateway *gw = imc_calloc(mem, 1, sizeof(*gw));
  if (gw == NULL)
    return IMC_ERR_NOMEM;
  gw->mem = *mem;
  imc_timer_init(&gw->lease_timer);
  gw->o = *opt;
  gw->o.mem = *mem;
  gw->o.secret = NULL;
  gw->o.pem = NULL;
  int fail = 0;
  gw->o.node_id = dup_opt(mem, opt->node_id ? opt->node_id : "local", &fail);
  gw->o.issuer = dup_opt(mem, opt->issuer, &fail);
  gw->o.audience = dup_opt(mem, opt->audience, &fail);
  gw->o.origins = NULL;
  gw->o.n_origins = 0;
  if (opt->n_origins > 0) {
    gw->o.origins = imc_calloc(mem, opt->n_origins, sizeof(char *));
    fail |= gw->o.origins == NULL;
    for (size_t i = 0; gw->o.origins && i < opt->n_origins;
         i++, gw->o.n_origins++)
      gw->o.origins[i] = dup_opt(mem, opt->origins[i], &fail);
  }
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
  gw_ws_callbacks_init(&gw->wscb);
  *out = gw;
  return 0;
}

void imc_gateway_del(imc_gateway *gw) {
  if (gw == NULL)
    return;
  while (gw->conns)
    gw_conn_free(gw->conns, REL_SILENT);
  gw_lease_free(gw);
  gw_reports_free(gw);
  gw_fanjobs_free(gw);
  gw_pending_free_orphans(gw);
  imc_theap_free(&gw->timers, &gw->mem);
  imc_jwt_key_clear(&gw->hs, &gw->mem);
  imc_jwt_key_clear(&gw->pub, &gw->mem);
  imc_free(&gw->mem, gw->users);
  gw_peers_free(gw);
  for (size_t i = 0; i < gw->o.n_origins; i++)
    imc_free(&gw->mem, gw->o.origins[i]);
  imc_free(&gw->mem, gw->o.origins);
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

int imc_gateway_flush(imc_gateway *gw) {
  if (gw == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  /* The turn's acks first: the statuses they lead to (an in-process
   * router) leave in this flush. */
  gw_reports_flush(gw);
  while (gw->dirty) {
    imc_conn *c = gw->dirty;
    if (c->flags & F_ABORT) {
      gw_dirty_remove(c);
      gw_conn_check(c);
    } else {
      gw_conn_write(c);
    }
  }
  return 0;
}

int64_t imc_gateway_next_timeout_ms(imc_gateway *gw) {
  if (gw == NULL)
    return -1;
  imc_timer *t = imc_theap_top(&gw->timers);
  if (gw_flow_due(gw) || gw->fanjobs || gw_reports_due(gw))
    return 0;
  int64_t at = gw_reports_next(gw);
  if (t != NULL && (at < 0 || t->at < at))
    at = t->at;
  if (at < 0)
    return -1;
  int64_t d = at - now_ms(gw);
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
    if (t == &gw->lease_timer) {
      gw_lease_timeout(gw);
      continue;
    }
    imc_conn *c = (imc_conn *)(void *)((char *)t - offsetof(imc_conn, timer));
    gw_conn_timeout(c, now);
  }
  gw_reports_flush(gw);
  gw_reports_retry(gw, now);
  gw_fanjobs_run(gw);
  gw_flow_run(gw);
  return 0;
}

int imc_gateway_shutdown(imc_gateway *gw) {
  if (gw == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  gw->shutting_down = 1;
  gw_fanjobs_free(gw); /* every connection closes below */
  /* Every entry of the node goes at once with its lease; the connections
   * closing below need no unregister each. */
  gw_lease_release(gw);
  imc_conn *c = gw->conns;
  while (c) {
    imc_conn *next = c->next;
    if (c->state == ST_WS) {
      gw_inflight_fail(c);
      gw_ws_close(c, 1001, "server shutting down");
    } else {
      gw_conn_free(c, REL_CLOSE);
    }
    c = next;
  }
  /* Failed reports are tried again now rather than after their backoff;
   * those that fail again keep being retried while the host waits for
   * imc_gateway_pending() to reach 0. */
  gw_reports_retry(gw, -1);
  return 0;
}

const char *imc_gateway_get_node_id(const imc_gateway *gw) {
  return gw ? gw->o.node_id : NULL;
}

size_t imc_gateway_pending(const imc_gateway *gw) {
  return gw ? gw->n_pending + gw->n_reports + gw->lease_ops : 0;
}

size_t imc_gateway_conn_count(const imc_gateway *gw) {
  return gw ? (size_t)gw->stats[IMC_GW_STAT_CONNECTIONS] : 0;
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

/* Upper bounds (ms) of the ACK latency buckets. */
static const uint64_t ack_bounds_ms[IMC_GW_ACK_BOUNDS] = {
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000};

void gw_ack_latency_add(imc_gateway *gw, int64_t ms) {
  uint64_t v = ms > 0 ? (uint64_t)ms : 0;
  size_t i = 0;
  while (i < IMC_GW_ACK_BOUNDS && v > ack_bounds_ms[i])
    i++;
  gw->ack_counts[i]++;
  gw->ack_sum_ms += v;
}

size_t imc_gateway_ack_latency(const imc_gateway *gw,
                               const uint64_t **bounds_ms,
                               const uint64_t **counts, uint64_t *sum_ms) {
  if (gw == NULL || bounds_ms == NULL || counts == NULL || sum_ms == NULL)
    return 0;
  *bounds_ms = ack_bounds_ms;
  *counts = gw->ack_counts;
  *sum_ms = gw->ack_sum_ms;
  return IMC_GW_ACK_BOUNDS;
}
