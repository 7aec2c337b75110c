/*
 * im-service's router liveness on etcd. The router's instance is
 * published as node "svc-<instance hex>" on a short lease of its own
 * (its address key, addrs/svc-<hex>, lives and dies with the lease), and
 * the router's liveness callback (imc_router_options_set_liveness) asks
 * etcd whether another instance's key exists. A router killed with -9
 * stops renewing: after the lease's TTL its pending dedup claims are
 * taken over by the next resend, wherever it lands.
 */
#ifndef HCLUSTER_LIVENESS_H
#define HCLUSTER_LIVENESS_H

#include "loop.h"

#include <imchat/engines/etcd.h>
#include <imchat/router.h>

typedef struct hliveness hliveness;

/* Returns 0 or -ENOMEM. loop and etcd are borrowed; etcd must publish
 * node addresses (imc_etcd_options_set_node_address). */
int hliveness_new(hliveness **out, hloop *loop, imc_etcd *etcd);

/* The router's liveness callback; its ud is the hliveness. */
int hliveness_alive(void *ud, uint32_t instance, imc_alive_cb done,
                    void *done_ud);

/*
 * Publishes instance (imc_router_instance) and keeps its lease alive from
 * the loop. Runs the loop until the first lease is granted, for at most
 * wait_ms: until then other routers would count the instance as dead.
 * Returns 0, or -ETIMEDOUT (logged; the grant is retried from the loop)
 * or -ENOMEM.
 */
int hliveness_start(hliveness *l, uint32_t instance, int64_t wait_ms);

/* Deletes l. The etcd engine must be deleted first (its calls complete). */
void hliveness_del(hliveness *l);

#endif
