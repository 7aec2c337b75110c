/* The cluster hosts' engines from their settings (see backends.h). */
#include "backends.h"

#include "gateway_config.h"
#include "log.h"

#include <stdio.h>

/* Engines may take this long per operation before it fails. */
#define OP_TIMEOUT_MS 5000

static int open_etcd(hbackends *b, const imc_loop *loop,
                     const imchatd_config *cfg, const char *node_address) {
  imc_etcd_options *o = NULL;
  int rv = imc_etcd_options_new(&o, NULL);
  if (rv == 0)
    rv = hconfig_check(imc_etcd_options_set_endpoints(o, cfg->etcd), "--etcd");
  if (rv == 0 && node_address)
    rv = hconfig_check(imc_etcd_options_set_node_address(o, node_address),
                       "--grpc-advertise");
  if (rv == 0)
    rv = imc_etcd_options_set_log(o, hlog_imc_cb, NULL, hlog_get_level());
  if (rv == 0)
    rv = hconfig_check(imc_etcd_new(&b->etcd, loop, o, NULL), "etcd");
  imc_etcd_options_del(o);
  if (rv == 0)
    hlog_info("registry: etcd at %s", cfg->etcd);
  return rv < 0 ? IMCHATD_EXIT_FAIL : rv;
}

static int open_kafka(hbackends *b, const imc_loop *loop,
                      const imchatd_config *cfg) {
  imc_kafka_options *o = NULL;
  int rv = imc_kafka_options_new(&o);
  if (rv == 0)
    rv = hconfig_check(imc_kafka_options_set_brokers(o, cfg->kafka), "--kafka");
  if (rv == 0)
    rv = hconfig_check(imc_kafka_options_set_session_timeout_ms(
                           o, cfg->kafka_session_s * 1000),
                       "--kafka-session-timeout");
  if (rv == 0)
    rv = imc_kafka_options_set_log(o, hlog_imc_cb, NULL);
  if (rv == 0)
    rv = hconfig_check(imc_kafka_new(&b->kafka, loop, o), "kafka");
  imc_kafka_options_del(o);
  if (rv == 0)
    hlog_info("bus: Kafka at %s", cfg->kafka);
  return rv < 0 ? IMCHATD_EXIT_FAIL : rv;
}

static int open_mariadb(hbackends *b, const imc_loop *loop,
                        const imchatd_config *cfg, int migrate) {
  if (cfg->mysql_user == NULL) {
    hlog_error("--mysql: no user: set IMCHAT_MYSQL_USER (and "
               "IMCHAT_MYSQL_PASSWORD) or the mysql-user and mysql-password "
               "keys of the --config file");
    return IMCHATD_EXIT_USAGE;
  }
  imc_mariadb_options *o = NULL;
  int rv = imc_mariadb_options_new(&o);
  if (rv == 0)
    rv = hconfig_check(imc_mariadb_options_set_address(o, cfg->mysql),
                       "--mysql");
  if (rv == 0)
    rv = hconfig_check(
        imc_mariadb_options_set_credentials(
            o, cfg->mysql_user, cfg->mysql_password ? cfg->mysql_password : ""),
        "mysql-user");
  if (rv == 0)
    rv = imc_mariadb_options_set_migrate(o, migrate);
  if (rv == 0)
    rv = imc_mariadb_options_set_log(o, hlog_imc_cb, NULL);
  if (rv == 0)
    rv = hconfig_check(imc_mariadb_new(&b->db, loop, o, NULL), "mysql");
  imc_mariadb_options_del(o);
  if (rv == 0)
    hlog_info("store: MariaDB at %s as %s", cfg->mysql, cfg->mysql_user);
  return rv < 0 ? IMCHATD_EXIT_FAIL : rv;
}

/* Sequence numbers never go back: Redis's counters are bounded below by
 * marks kept in MariaDB. */
static int open_redis(hbackends *b, const imc_loop *loop,
                      const imchatd_config *cfg) {
  imc_redis_options *o = NULL;
  int rv = imc_redis_options_new(&o);
  if (rv == 0)
    rv = hconfig_check(imc_redis_options_set_address(o, cfg->redis), "--redis");
  if (rv == 0)
    rv = imc_redis_options_set_timeout_ms(o, OP_TIMEOUT_MS);
  if (rv == 0)
    rv = imc_redis_options_set_marks(o, imc_mariadb_marks_vtbl(), b->db);
  if (rv == 0)
    rv = hconfig_check(imc_redis_new(&b->redis, loop, o), "redis");
  imc_redis_options_del(o);
  if (rv == 0)
    hlog_info("sequence numbers and dedup: Redis at %s", cfg->redis);
  return rv < 0 ? IMCHATD_EXIT_FAIL : rv;
}

int hbackends_open(hbackends *b, hloop *l, const imchatd_config *cfg,
                   const char *node_address, int migrate) {
  int rv = hengine_loop_new(l, &b->el);
  if (rv < 0) {
    hlog_error("engines: %s", imc_strerror(IMC_ERR_NOMEM));
    return IMCHATD_EXIT_FAIL;
  }
  const imc_loop *loop = hengine_loop_get(b->el);
  if ((rv = open_mariadb(b, loop, cfg, migrate)) != 0 || cfg->migrate_only)
    return rv;
  if ((rv = open_etcd(b, loop, cfg, node_address)) != 0 ||
      (rv = open_kafka(b, loop, cfg)) != 0)
    return rv;
  if (cfg->role == IMCHATD_ROLE_SERVICE)
    return open_redis(b, loop, cfg);
  return 0;
}

void hbackends_close(hbackends *b) {
  imc_redis_del(b->redis);
  imc_kafka_del(b->kafka);
  imc_etcd_del(b->etcd);
  imc_mariadb_del(b->db);
  hengine_loop_del(b->el);
  b->redis = NULL;
  b->kafka = NULL;
  b->etcd = NULL;
  b->db = NULL;
  b->el = NULL;
}

/* The engines in use and their health, in one order. */
static size_t health(const hbackends *b, const char **names, int *up) {
  size_t n = 0;
  names[n] = "etcd";
  up[n++] = imc_etcd_health(b->etcd) == 0;
  names[n] = "kafka";
  up[n++] = imc_kafka_health(b->kafka) == 0;
  names[n] = "mysql";
  up[n++] = imc_mariadb_health(b->db) == 0;
  if (b->redis) {
    names[n] = "redis";
    up[n++] = imc_redis_health(b->redis) == 0;
  }
  return n;
}

static int collect(void *ud, imc_metrics *m) {
  const char *names[4];
  int up[4];
  size_t n = health(ud, names, up);
  int rv = imc_metrics_family(m, "imchat_backend_up", IMC_METRIC_GAUGE,
                              "1 while the backend answers, else 0.");
  for (size_t i = 0; rv == 0 && i < n; i++)
    rv = imc_metrics_sample(m, "imchat_backend_up", "backend", names[i],
                            (uint64_t)up[i]);
  return rv;
}

static int ready(void *ud, const char **component, const char **state) {
  const char *names[4];
  int up[4];
  size_t n = health(ud, names, up);
  for (size_t i = 0; i < n; i++) {
    if (!up[i]) {
      *component = names[i];
      *state = "unavailable";
      return 0;
    }
  }
  return 1;
}

const imc_metrics_source_vtbl *hbackends_source(void) {
  static const imc_metrics_source_vtbl vt = {sizeof(imc_metrics_source_vtbl),
                                             collect, ready};
  return &vt;
}
