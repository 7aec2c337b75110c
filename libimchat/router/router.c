/*
 * The router's life cycle, timers and stats, and the reports that come
 * back from gateways and the worker. The send pipeline is in send.c; see
 * router_int.h for the map of the other files.
 */
#include "router/router_int.h"

#include <imchat/worker.h>

#include "util/msg.h"

#include <openssl/rand.h>

#include <inttypes.h>
#include <string.h>

/* A backend that is down fails every operation: one line a second says
 * so, with how many failed since the last one (the counter has all). */
void imc_rt_backend_error(imc_router *r, const char *what, int status) {
  r->stats[IMC_RT_STAT_BACKEND_ERRORS]++;
  int64_t now = imc_rt_now_ms(r);
  if (r->error_logged_at != 0 && now - r->error_logged_at < 1000) {
    r->errors_unlogged++;
    return;
  }
  if (r->errors_unlogged > 0)
    rt_log(r, IMC_LOG_WARN,
           "%s: %s (%" PRIu64 " more backend errors since the last line)", what,
           imc_strerror(status), r->errors_unlogged);
  else
    rt_log(r, IMC_LOG_WARN, "%s: %s", what, imc_strerror(status));
  r->error_logged_at = now;
  r->errors_unlogged = 0;
}

/* ------------------------------------------------------------------ */
/* Reports from gateways and the worker                                 */
/* ------------------------------------------------------------------ */

void imc_router_delivered(imc_router *r, const imc_msg *msg,
                          const char *user_id, const char *device_id) {
  if (r == NULL || msg == NULL || user_id == NULL)
    return;
  imc_msg view; /* members past the caller's struct_size read as absent */
  msg = imc_msg_view(&view, msg);
  (void)device_id;
  if (!imc_rt_is_group(msg) && strcmp(user_id, msg->to_user) == 0)
    imc_rt_send_status(r, msg, IMC_DELIVERED, user_id);
}

void imc_router_delivered_many(imc_router *r, const imc_delivery_ack *acks,
                               size_t n) {
  if (r == NULL || acks == NULL)
    return;
  imc_rt_delivered_many(r, acks, n);
}

void imc_router_undelivered(imc_router *r, const imc_msg *msg,
                            const char *user_id) {
  if (r == NULL || msg == NULL || user_id == NULL)
    return;
  imc_msg view;
  msg = imc_msg_view(&view, msg);
  /* The sender's other devices catch up from the history, not the inbox. */
  if (strcmp(user_id, msg->from_user) == 0 &&
      (imc_rt_is_group(msg) || strcmp(user_id, msg->to_user) != 0))
    return;
  imc_rt_slow_path(r, msg, 0, &user_id, 1);
}

void imc_router_persisted(void *router, const imc_msg *msg, int history,
                          const char *const *users, size_t n_users) {
  imc_router *r = router;
  if (r == NULL || msg == NULL)
    return;
  imc_msg view;
  msg = imc_msg_view(&view, msg);
  if (imc_rt_is_group(msg)) {
    if (history)
      imc_rt_send_status(r, msg, IMC_STORED, "");
    return;
  }
  for (size_t i = 0; i < n_users; i++) {
    if (strcmp(users[i], msg->to_user) == 0) {
      imc_rt_send_status(r, msg, IMC_STORED, msg->to_user);
      imc_rt_push_stored(r, msg);
    }
  }
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

static int up_delivered_many(void *ud, const imc_delivery_ack *acks, size_t n,
                             imc_done_cb done, void *done_ud) {
  imc_router_delivered_many(ud, acks, n);
  done(done_ud, 0);
  return 0;
}

static const imc_upstream_vtbl upstream_vtbl = {
    .struct_size = sizeof(imc_upstream_vtbl),
    .send = up_send,
    .delivered = up_delivered,
    .undelivered = up_undelivered,
    .delivered_many = up_delivered_many};

const imc_upstream_vtbl *imc_router_upstream_vtbl(void) {
  return &upstream_vtbl;
}

/* ------------------------------------------------------------------ */
/* Life cycle                                                           */
/* ------------------------------------------------------------------ */

int imc_router_set_filter_words(imc_router *r, const uint8_t *words,
                                size_t len) {
  if (r == NULL || (words == NULL && len > 0))
    return IMC_ERR_INVALID_ARGUMENT;
  if (r->filter == NULL)
    return IMC_ERR_NOT_FOUND; /* no action configured to apply it with */
  imc_filter *f;
  int rv = imc_filter_from_words(&f, words, len, &r->mem);
  if (rv != 0) {
    rt_log(r, IMC_LOG_WARN, "content filter: %s; keeping the old list",
           imc_strerror(rv));
    return rv;
  }
  imc_filter_del(r->filter);
  r->filter = f;
  rt_log(r, IMC_LOG_INFO, "content filter: %zu words", imc_filter_size(f));
  return 0;
}

int imc_router_new(imc_router **out, const imc_router_options *opt,
                   const imc_mem *mem) {
  if (out == NULL || opt == NULL || opt->registry.lookup_many == NULL ||
      opt->seq.next == NULL || opt->dedup.test_and_set == NULL ||
      opt->dedup.set == NULL || opt->store.group_members == NULL ||
      opt->store.group_add == NULL || opt->store.group_remove == NULL ||
      opt->queue.publish == NULL || opt->gwlink.deliver == NULL ||
      opt->gwlink.status == NULL ||
      (opt->alive != NULL && opt->dedup.compare_and_set == NULL))
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_router *r = imc_calloc(mem, 1, sizeof(*r));
  if (r == NULL)
    return IMC_ERR_NOMEM;
  r->mem = *mem;
  r->o = *opt;
  r->o.filter_words = NULL; /* the options' copy; r->filter is built */
  r->o.filter_len = 0;
  int rv = 0;
  if (opt->filter_words) {
    rv = imc_filter_from_words(&r->filter, opt->filter_words, opt->filter_len,
                               mem);
    if (rv == 0)
      rt_log(r, IMC_LOG_INFO, "content filter: %zu words",
             imc_filter_size(r->filter));
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
  imc_rt_retries_free(r);
  imc_rt_owed_free(r);
  imc_rt_seen_free(r);
  imc_mem m = r->mem;
  imc_free(&m, r);
}

uint32_t imc_router_instance(const imc_router *r) {
  return r ? r->instance : 0;
}

void imc_router_set_user_data(imc_router *r, void *ud) {
  r->user_data = ud;
}

void *imc_router_get_user_data(const imc_router *r) {
  return r->user_data;
}

int64_t imc_router_next_timeout_ms(imc_router *r) {
  if (r == NULL)
    return -1;
  int64_t at = r->retries && r->retry_at != 0 ? r->retry_at : 0;
  if (r->owed_at != 0 && (at == 0 || r->owed_at < at))
    at = r->owed_at;
  if (at == 0)
    return -1;
  int64_t d = at - imc_rt_now_ms(r);
  return d > 0 ? d : 0;
}

int imc_router_on_timeout(imc_router *r) {
  if (r == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  int64_t now = imc_rt_now_ms(r);
  imc_rt_seen_expire(r, now);
  if (r->retries && r->retry_at != 0 && now >= r->retry_at) {
    r->retry_at = 0;
    imc_rt_retry_publish(r);
  }
  if (r->owed && r->owed_at != 0 && now >= r->owed_at)
    imc_rt_owed_write(r);
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
