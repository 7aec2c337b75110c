/*
 * The real engines a cluster host runs on (libimchat-engines), created
 * from its settings on the host's loop: etcd (registry), Kafka (group
 * bus and offline queue), MariaDB (store, marks) and, for im-service,
 * Redis (sequence numbers, dedup). Also a metrics source that exports
 * imchat_backend_up{backend} and keeps /readyz at 503 while an engine is
 * down.
 */
#ifndef HCLUSTER_BACKENDS_H
#define HCLUSTER_BACKENDS_H

#include "config.h"
#include "engine_loop.h"

#include <imchat/api.h>
#include <imchat/engines/etcd.h>
#include <imchat/engines/kafka.h>
#include <imchat/engines/mariadb.h>
#include <imchat/engines/redis.h>

typedef struct hbackends {
  hengine_loop *el;
  imc_etcd *etcd;
  imc_kafka *kafka;
  imc_mariadb *db;
  imc_redis *redis; /* im-service only */
} hbackends;

/*
 * Opens the engines cfg's role needs on l. node_address, if not NULL, is
 * published in etcd with the node's lease (a gateway's gRPC address).
 * With migrate 0 MariaDB's schema is only checked (the engine serves
 * nothing until it is current). With --migrate-only only MariaDB is
 * opened. Returns 0 or an exit code after logging;
 * close b in either case.
 */
int hbackends_open(hbackends *b, hloop *l, const imchatd_config *cfg,
                   const char *node_address, int migrate);

/* Deletes the engines (what they still hold completes IMC_ERR_CLOSED). */
void hbackends_close(hbackends *b);

/* The metrics source; its ud is the hbackends. */
const imc_metrics_source_vtbl *hbackends_source(void);

#endif
