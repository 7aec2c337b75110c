/* im-service's connections to the gateways (see gwnodes.h). */
#include "gwnodes.h"

#include "clock.h"
#include "grpc_net.h"
#include "log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* A lookup that found nothing is not repeated sooner than this. */
#define RETRY_MS 1000
/* A node not connected for this long is given up: the calls waiting for
 * it fail (the router takes the slow path) and the next one looks its
 * address up again. */
#define GIVE_UP_MS 5000

typedef struct node {
  struct node *next;
  hgwnodes *g;
  char id[IMC_ID_MAX + 1];
  hgrpc_peer *peer;
  imc_grpc_client *client; /* while connected */
  int looking_up;
  int refuse;       /* fail the calls waiting for it (from the hook) */
  int lost;         /* the connection went: drop the peer */
  int64_t since;    /* when the peer was made or lost its connection */
  int64_t retry_at; /* no lookup before */
} node;

struct hgwnodes {
  hloop *loop;
  hstls *tls; /* mutual TLS, or NULL */
  imc_etcd *etcd;
  imc_grpc_gwlink *link;
  node *nodes;
};

static void on_client(void *ud, imc_grpc_client *c) {
  node *n = ud;
  imc_grpc_gwlink_set_client(n->g->link, n->id, c);
  n->client = c;
  if (c == NULL) {
    n->lost = 1;
    n->since = hclock_ms();
  }
}

static void on_address(void *ud, int status, const char *addr) {
  node *n = ud;
  n->looking_up = 0;
  if (status != 0) {
    n->retry_at = hclock_ms() + RETRY_MS;
    if (status != IMC_ERR_CLOSED)
      hlog_warn("gateway %s: no address in etcd: %s", n->id,
                imc_strerror(status));
    imc_grpc_gwlink_fail(n->g->link, n->id, IMC_ERR_UNAVAILABLE);
    return;
  }
  int rv =
      hgrpc_peer_new_tls(&n->peer, n->g->loop, addr, n->g->tls, on_client, n);
  if (rv < 0) {
    hlog_warn("gateway %s at %s: %s", n->id, addr, strerror(-rv));
    n->retry_at = hclock_ms() + RETRY_MS;
    imc_grpc_gwlink_fail(n->g->link, n->id, IMC_ERR_UNAVAILABLE);
    return;
  }
  n->since = hclock_ms();
}

/* The router wants node_id: look it up unless that is under way. */
static void on_wanted(void *ud, const char *node_id) {
  hgwnodes *g = ud;
  node *n = g->nodes;
  while (n && strcmp(n->id, node_id) != 0)
    n = n->next;
  if (n == NULL) {
    if (strlen(node_id) > IMC_ID_MAX || (n = calloc(1, sizeof(*n))) == NULL)
      return;
    n->g = g;
    strcpy(n->id, node_id);
    n->next = g->nodes;
    g->nodes = n;
  }
  if (n->peer || n->looking_up)
    return;
  /* Looked up in vain a moment ago: the calls fail at once. (From the
   * callback, the link may not be called: a hook does it.) */
  if (hclock_ms() < n->retry_at) {
    n->refuse = 1;
    return;
  }
  n->looking_up = 1;
  if (imc_etcd_node_address(g->etcd, n->id, on_address, n) < 0) {
    n->looking_up = 0;
    n->retry_at = hclock_ms() + RETRY_MS;
    n->refuse = 1;
  }
}

static int stale(const node *n, int64_t now) {
  return n->refuse ||
         (n->peer && (n->lost || (!n->client && now - n->since >= GIVE_UP_MS)));
}

static int64_t nodes_due(void *ud) {
  hgwnodes *g = ud;
  int64_t now = hclock_ms(), due = -1;
  for (node *n = g->nodes; n; n = n->next) {
    if (stale(n, now))
      return 0;
    if (n->peer && !n->client) {
      int64_t t = n->since + GIVE_UP_MS - now;
      if (due < 0 || t < due)
        due = t;
    }
  }
  return due;
}

/* Gives up nodes whose connection went or never came: their waiting
 * calls fail and the next one looks the address up again. */
static void nodes_run(void *ud) {
  hgwnodes *g = ud;
  int64_t now = hclock_ms();
  for (node *n = g->nodes; n; n = n->next) {
    if (!stale(n, now))
      continue;
    if (n->peer && !n->lost)
      hlog_warn("gateway %s: not reachable for %d s", n->id, GIVE_UP_MS / 1000);
    hgrpc_peer_del(n->peer);
    n->peer = NULL;
    n->client = NULL;
    n->lost = 0;
    n->refuse = 0;
    imc_grpc_gwlink_fail(g->link, n->id, IMC_ERR_UNAVAILABLE);
  }
}

int hgwnodes_new(hgwnodes **out, hloop *l, imc_etcd *etcd, hstls *tls) {
  hgwnodes *g = calloc(1, sizeof(*g));
  if (g == NULL)
    return -ENOMEM;
  g->loop = l;
  g->tls = tls;
  g->etcd = etcd;
  if (imc_grpc_gwlink_new(&g->link, NULL) != 0 ||
      imc_grpc_gwlink_set_connect_cb(g->link, on_wanted, g) != 0 ||
      hloop_add_hook(l, nodes_due, nodes_run, g) < 0) {
    imc_grpc_gwlink_del(g->link);
    free(g);
    return -ENOMEM;
  }
  *out = g;
  return 0;
}

imc_grpc_gwlink *hgwnodes_link(hgwnodes *g) {
  return g->link;
}

size_t hgwnodes_pending(const hgwnodes *g) {
  size_t n = 0;
  for (const node *x = g->nodes; x; x = x->next)
    n += x->client ? imc_grpc_client_pending(x->client) : 0;
  return n;
}

void hgwnodes_del(hgwnodes *g) {
  if (g == NULL)
    return;
  hloop_del_hook(g->loop, nodes_run, g);
  while (g->nodes) {
    node *n = g->nodes;
    g->nodes = n->next;
    hgrpc_peer_del(n->peer);
    free(n);
  }
  imc_grpc_gwlink_del(g->link);
  free(g);
}
