/*
 * im-service's connections to the gateways: the router's gateway link
 * (imc_grpc_gwlink), whose nodes are connected on demand at the address
 * each gateway keeps in etcd with its lease. A node that cannot be
 * reached is looked up again (it may have restarted elsewhere); until it
 * is connected, deliveries to it fail and the router takes the slow path.
 */
#ifndef HCLUSTER_GWNODES_H
#define HCLUSTER_GWNODES_H

#include "loop.h"
#include "tls.h"

#include <imchat/engines/etcd.h>
#include <imchat/grpc_gwlink.h>

typedef struct hgwnodes hgwnodes;

/* Returns 0 or a negative errno value. etcd and tls (mutual TLS for the
 * connections, or NULL: plaintext) are borrowed. */
int hgwnodes_new(hgwnodes **out, hloop *l, imc_etcd *etcd, hstls *tls);

/* The gateway link for imc_router_options_set_gwlink (its vtable is
 * imc_grpc_gwlink_vtbl()). */
imc_grpc_gwlink *hgwnodes_link(hgwnodes *g);

/* gRPC calls to gateways still in flight. */
size_t hgwnodes_pending(const hgwnodes *g);

/* Closes the connections (calls in flight complete CANCELLED), then the
 * link. Lookups still with etcd must have completed (delete etcd
 * first). */
void hgwnodes_del(hgwnodes *g);

#endif
