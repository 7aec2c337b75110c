/* im-service's router liveness on etcd (see liveness.h). */
#include "liveness.h"

#include "clock.h"
#include "log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

/* The lease's TTL is the longest a resend waits for a dead router's
 * claim; it is renewed three times within it. */
#define TTL_S 5
#define RENEW_MS 1500
#define RETRY_MS 500 /* after a failed grant or renewal */

struct hliveness {
  hloop *loop;
  imc_etcd *etcd;
  char node[16]; /* "svc-" and the instance in hex */
  uint64_t lease;
  int busy;    /* a grant or keepalive in flight */
  int64_t due; /* the next one, -1: not started */
  int granted; /* a lease was granted once */
  int hooked;
};

/* One question of the router. */
typedef struct ask {
  imc_alive_cb done;
  void *done_ud;
} ask;

static void node_name(char out[16], uint32_t instance) {
  snprintf(out, 16, "svc-%08" PRIx32, instance);
}

static void on_address(void *ud, int status, const char *addr) {
  ask *a = ud;
  (void)addr;
  if (status == 0)
    a->done(a->done_ud, 0, 1);
  else if (status == IMC_ERR_NOT_FOUND) /* no key: its lease is gone */
    a->done(a->done_ud, 0, 0);
  else
    a->done(a->done_ud, status, 1);
  free(a);
}

int hliveness_alive(void *ud, uint32_t instance, imc_alive_cb done,
                    void *done_ud) {
  hliveness *l = ud;
  ask *a = malloc(sizeof(*a));
  if (a == NULL)
    return IMC_ERR_NOMEM;
  a->done = done;
  a->done_ud = done_ud;
  char node[16];
  node_name(node, instance);
  int rv = imc_etcd_node_address(l->etcd, node, on_address, a);
  if (rv != 0)
    free(a);
  return rv;
}

static void granted(void *ud, int status, uint64_t lease_id) {
  hliveness *l = ud;
  l->busy = 0;
  if (status != 0) {
    if (status != IMC_ERR_CLOSED)
      hlog_warn("liveness: lease for %s: %s; retrying", l->node,
                imc_strerror(status));
    l->due = hclock_ms() + RETRY_MS;
    return;
  }
  l->lease = lease_id;
  l->due = hclock_ms() + RENEW_MS;
  hlog_info("liveness: router %s on etcd lease %" PRIx64 " (TTL %d s)", l->node,
            lease_id, TTL_S);
  l->granted = 1;
}

static void kept(void *ud, int status) {
  hliveness *l = ud;
  l->busy = 0;
  if (status == IMC_ERR_NOT_FOUND) {
    /* Expired (cut off for a TTL): the router counted as dead meanwhile. */
    hlog_warn("liveness: lease of %s expired; granting a new one", l->node);
    l->lease = 0;
    l->due = hclock_ms();
    return;
  }
  if (status != 0 && status != IMC_ERR_CLOSED)
    hlog_warn("liveness: renewing %s: %s", l->node, imc_strerror(status));
  l->due = hclock_ms() + (status == 0 ? RENEW_MS : RETRY_MS);
}

static int64_t due_in(void *ud) {
  hliveness *l = ud;
  if (l->busy || l->due < 0)
    return -1;
  int64_t d = l->due - hclock_ms();
  return d > 0 ? d : 0;
}

static void renew(void *ud) {
  hliveness *l = ud;
  const imc_registry_vtbl *vt = imc_etcd_registry_vtbl();
  l->busy = 1;
  int rv = l->lease == 0 ? vt->lease_grant(l->etcd, l->node, TTL_S, granted, l)
                         : vt->lease_keepalive(l->etcd, l->lease, kept, l);
  if (rv != 0) {
    l->busy = 0;
    l->due = hclock_ms() + RETRY_MS;
  }
}

int hliveness_new(hliveness **out, hloop *loop, imc_etcd *etcd) {
  hliveness *l = calloc(1, sizeof(*l));
  if (l == NULL)
    return -ENOMEM;
  l->loop = loop;
  l->etcd = etcd;
  l->due = -1;
  *out = l;
  return 0;
}

int hliveness_start(hliveness *l, uint32_t instance, int64_t wait_ms) {
  node_name(l->node, instance);
  l->due = 0;
  if (hloop_add_hook(l->loop, due_in, renew, l) < 0)
    return -ENOMEM;
  l->hooked = 1;
  int64_t end = hclock_ms() + wait_ms;
  while (!l->granted && hclock_ms() < end)
    hloop_run_once(l->loop, 50);
  if (!l->granted) {
    hlog_warn("liveness: no etcd lease for %s yet; still trying", l->node);
    return -ETIMEDOUT;
  }
  return 0;
}

void hliveness_del(hliveness *l) {
  if (l == NULL)
    return;
  if (l->hooked)
    hloop_del_hook(l->loop, renew, l);
  free(l);
}
