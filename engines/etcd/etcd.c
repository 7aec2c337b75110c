/*
 * The etcd engine object: options, lifetime, the queues' kick timer,
 * health with its probes, the log, and the registry vtable.
 */
#include "etcd_int.h"

#include "util/alloc.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#define DEFAULT_PREFIX "/imchat/"
#define DEFAULT_TIMEOUT_MS 5000
#define DEFAULT_MAX_OPS 128

struct imc_etcd_options {
  imc_mem mem;
  char *endpoints[ETCD_ENDPOINTS_MAX];
  size_t n_ep;
  char prefix[ETCD_PREFIX_MAX + 1];
  char addr[ETCD_ADDR_MAX + 1];
  uint32_t timeout_ms, max_ops;
  imc_log_cb log;
  void *log_ud;
  imc_log_level log_max;
};

int64_t etcd_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void etcd_log(imc_etcd *e, imc_log_level level, const char *fmt, ...) {
  if (e->log == NULL || level > e->log_max)
    return;
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  e->log(e->log_ud, level, line);
}

/* ------------------------------------------------------------------ */
/* Options                                                              */
/* ------------------------------------------------------------------ */

int imc_etcd_options_new(imc_etcd_options **out, const imc_mem *mem) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  *out = NULL;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_etcd_options *o = imc_calloc(mem, 1, sizeof(*o));
  if (o == NULL)
    return IMC_ERR_NOMEM;
  o->mem = *mem;
  memcpy(o->prefix, DEFAULT_PREFIX, sizeof(DEFAULT_PREFIX));
  o->timeout_ms = DEFAULT_TIMEOUT_MS;
  o->max_ops = DEFAULT_MAX_OPS;
  *out = o;
  return 0;
}

static void endpoints_clear(const imc_mem *mem, char **eps, size_t *n) {
  for (size_t i = 0; i < *n; i++)
    imc_free(mem, eps[i]);
  *n = 0;
}

void imc_etcd_options_del(imc_etcd_options *opt) {
  if (opt == NULL)
    return;
  endpoints_clear(&opt->mem, opt->endpoints, &opt->n_ep);
  imc_free(&opt->mem, opt);
}

static int url_ok(const char *s, size_t n) {
  if (n == 0 || n > ETCD_URL_MAX)
    return 0;
  if (!(n > 7 && strncmp(s, "http://", 7) == 0) &&
      !(n > 8 && strncmp(s, "https://", 8) == 0))
    return 0;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] <= ' ' || (unsigned char)s[i] >= 0x7f)
      return 0;
  return 1;
}

int imc_etcd_options_set_endpoints(imc_etcd_options *opt, const char *urls) {
  if (opt == NULL || urls == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  char *eps[ETCD_ENDPOINTS_MAX];
  size_t n = 0;
  const char *p = urls;
  int rv = 0;
  for (;;) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    /* Without a trailing slash: paths are appended. */
    size_t keep = len;
    while (keep > 0 && p[keep - 1] == '/')
      keep--;
    if (n == ETCD_ENDPOINTS_MAX || !url_ok(p, len) || !url_ok(p, keep)) {
      rv = IMC_ERR_INVALID_ARGUMENT;
      break;
    }
    if ((eps[n] = imc_strndup(&opt->mem, p, keep)) == NULL) {
      rv = IMC_ERR_NOMEM;
      break;
    }
    n++;
    if (comma == NULL)
      break;
    p = comma + 1;
  }
  if (rv < 0) {
    endpoints_clear(&opt->mem, eps, &n);
    return rv;
  }
  endpoints_clear(&opt->mem, opt->endpoints, &opt->n_ep);
  memcpy(opt->endpoints, eps, n * sizeof(eps[0]));
  opt->n_ep = n;
  return 0;
}

int imc_etcd_options_set_prefix(imc_etcd_options *opt, const char *prefix) {
  if (opt == NULL || prefix == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  size_t n = strlen(prefix);
  if (n == 0 || n > ETCD_PREFIX_MAX)
    return IMC_ERR_INVALID_ARGUMENT;
  memcpy(opt->prefix, prefix, n + 1);
  return 0;
}

int imc_etcd_options_set_timeout_ms(imc_etcd_options *opt, uint32_t ms) {
  if (opt == NULL || ms < 100 || ms > 600000)
    return IMC_ERR_INVALID_ARGUMENT;
  opt->timeout_ms = ms;
  return 0;
}

int imc_etcd_options_set_max_txn_ops(imc_etcd_options *opt, uint32_t n) {
  if (opt == NULL || n < 1 || n > 100000)
    return IMC_ERR_INVALID_ARGUMENT;
  opt->max_ops = n;
  return 0;
}

int etcd_addr_ok(const char *s, size_t n) {
  if (n == 0 || n > ETCD_ADDR_MAX)
    return 0;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] <= ' ' || (unsigned char)s[i] >= 0x7f)
      return 0;
  return 1;
}

int imc_etcd_options_set_node_address(imc_etcd_options *opt, const char *addr) {
  if (opt == NULL || addr == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  size_t n = strnlen(addr, ETCD_ADDR_MAX + 1);
  if (!etcd_addr_ok(addr, n))
    return IMC_ERR_INVALID_ARGUMENT;
  memcpy(opt->addr, addr, n + 1);
  return 0;
}

int imc_etcd_options_set_log(imc_etcd_options *opt, imc_log_cb cb, void *ud,
                             imc_log_level max_level) {
  if (opt == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  opt->log = cb;
  opt->log_ud = ud;
  opt->log_max = max_level;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Kick timer: the queues go out once per loop turn                     */
/* ------------------------------------------------------------------ */

static void on_kick(void *ud) {
  imc_etcd *e = ud;
  e->kick_timer = NULL;
  e->processing++;
  etcd_release_held(e);
  etcd_writes_flush(e);
  etcd_reads_flush(e);
  if (--e->processing == 0)
    etcd_watches_sweep(e);
}

void etcd_kick(imc_etcd *e) {
  if (e->kick_timer == NULL && !e->closing &&
      e->loop.vtbl->timer_add(e->loop.ud, 0, on_kick, e, &e->kick_timer) < 0)
    e->kick_timer = NULL; /* the next kick, answer or probe flushes */
}

/* ------------------------------------------------------------------ */
/* Health                                                               */
/* ------------------------------------------------------------------ */

void etcd_answered(imc_etcd *e, int ok) {
  if (ok) {
    e->last_answer_ms = etcd_now_ms();
    if (e->health != 0) {
      e->health = 0;
      etcd_log(e, IMC_LOG_INFO, "etcd: %s answers", e->endpoints[e->cur_ep]);
      etcd_watches_retry(e);
    }
  } else if (e->health == 0) {
    e->health = IMC_ERR_UNAVAILABLE;
    etcd_log(e, IMC_LOG_WARN, "etcd: no answer from the cluster");
  }
}

static void on_probe_answer(imc_etcd *e, etcd_req *r, int status,
                            const imc_json_value *root) {
  (void)r;
  e->probe = NULL;
  /* A member that knows no leader, or has an alarm raised (out of
   * space, corruption), cannot serve writes. */
  uint64_t leader = 0;
  imc_json_value errs;
  size_t pos = 0;
  if (status == 0 &&
      (ej_member_u64(root, "leader", &leader) < 0 || leader == 0 ||
       (imc_json_member(root, "errors", &errs) == 0 &&
        (errs.type != IMC_JSON_ARRAY ||
         imc_json_array_next(&errs, &pos, NULL) != 0))))
    etcd_answered(e, 0);
}

/* Probes the cluster while it is down, and while healthy but idle (no
 * other exchange for ETCD_PROBE_IDLE_MS): a member's status, which it
 * answers locally (no raft round, no disk write). */
static void on_probe_timer(void *ud) {
  imc_etcd *e = ud;
  e->probe_timer = NULL;
  int64_t now = etcd_now_ms();
  if (e->probe == NULL &&
      (e->health != 0 || now - e->last_answer_ms >= ETCD_PROBE_IDLE_MS)) {
    etcd_req *r = etcd_req_new(e, "/v3/maintenance/status", on_probe_answer,
                               NULL, now + e->timeout_ms);
    if (r != NULL) {
      r->holdable = 0;
      imc_wbuf_puts(&r->body, "{}");
      if (etcd_req_start(e, r) == 0)
        e->probe = r;
      else
        etcd_req_free(e, r);
    }
  }
  /* Work left waiting by a kick the loop could not arm. */
  if (e->wq != NULL || e->rq != NULL || e->held != NULL)
    etcd_kick(e);
  e->loop.vtbl->timer_add(
      e->loop.ud, e->health != 0 ? ETCD_PROBE_DOWN_MS : ETCD_PROBE_IDLE_MS,
      on_probe_timer, e, &e->probe_timer);
}

int imc_etcd_health(const imc_etcd *e) {
  if (e == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  return e->health;
}

/* ------------------------------------------------------------------ */
/* Lifetime                                                             */
/* ------------------------------------------------------------------ */

static void etcd_free(imc_etcd *e) {
  etcd_http_fini(e);
  for (size_t i = 0; i < e->n_ep; i++)
    imc_free(&e->mem, e->endpoints[i]);
  imc_free(&e->mem, e->wseen);
  imc_free(&e->mem, e);
}

int imc_etcd_new(imc_etcd **out, const imc_loop *loop,
                 const imc_etcd_options *opt, const imc_mem *mem) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  *out = NULL;
  if (loop == NULL || loop->vtbl == NULL || opt == NULL || opt->n_ep == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_etcd *e = imc_calloc(mem, 1, sizeof(*e));
  if (e == NULL)
    return IMC_ERR_NOMEM;
  e->mem = *mem;
  e->loop = *loop;
  e->health = IMC_ERR_UNAVAILABLE;
  e->timeout_ms = opt->timeout_ms;
  e->max_ops = opt->max_ops;
  e->log = opt->log;
  e->log_ud = opt->log_ud;
  e->log_max = opt->log_max;
  e->prefix_len = strlen(opt->prefix);
  memcpy(e->prefix, opt->prefix, e->prefix_len + 1);
  memcpy(e->addr, opt->addr, sizeof(e->addr));
  for (; e->n_ep < opt->n_ep; e->n_ep++) {
    e->endpoints[e->n_ep] = imc_strdup(&e->mem, opt->endpoints[e->n_ep]);
    if (e->endpoints[e->n_ep] == NULL)
      break;
  }
  /* Duplicate keys of a write batch: a table twice its size. */
  size_t cap = 4;
  while (cap < 2 * (size_t)e->max_ops)
    cap *= 2;
  e->wseen_cap = cap;
  e->wseen = imc_calloc(&e->mem, cap, sizeof(e->wseen[0]));
  if (e->n_ep < opt->n_ep || e->wseen == NULL || etcd_http_init(e) < 0 ||
      e->loop.vtbl->timer_add(e->loop.ud, 0, on_probe_timer, e,
                              &e->probe_timer) < 0) {
    etcd_free(e);
    return IMC_ERR_NOMEM;
  }
  *out = e;
  return 0;
}

void imc_etcd_del(imc_etcd *e) {
  if (e == NULL)
    return;
  e->closing = 1;
  if (e->kick_timer != NULL)
    e->loop.vtbl->timer_del(e->loop.ud, e->kick_timer);
  if (e->probe_timer != NULL)
    e->loop.vtbl->timer_del(e->loop.ud, e->probe_timer);
  e->kick_timer = e->probe_timer = NULL;
  etcd_watches_fini(e);
  /* Requests first: a write batch's answer flushes the queue behind it. */
  etcd_http_fini(e);
  etcd_writes_fini(e);
  etcd_reads_fini(e);
  etcd_free(e);
}

void imc_etcd_set_user_data(imc_etcd *e, void *ud) {
  if (e != NULL)
    e->user_data = ud;
}

void *imc_etcd_get_user_data(const imc_etcd *e) {
  return e != NULL ? e->user_data : NULL;
}

static const imc_registry_vtbl registry_vtbl = {
    .struct_size = sizeof(imc_registry_vtbl),
    .lease_grant = etcd_lease_grant,
    .lease_keepalive = etcd_lease_keepalive,
    .lease_revoke = etcd_lease_revoke,
    .register_conn = etcd_register_conn,
    .unregister = etcd_unregister,
    .lookup_many = etcd_lookup_many,
    .watch = etcd_watch_new,
    .watch_cancel = etcd_watch_cancel,
};

const imc_registry_vtbl *imc_etcd_registry_vtbl(void) {
  return &registry_vtbl;
}
