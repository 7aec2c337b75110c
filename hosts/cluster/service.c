/*
 * im-service: the router of an imchat cluster (imchat.v1.Router on
 * --grpc-listen) and the offline worker, on Redis, etcd, Kafka and
 * MariaDB; /healthz, /readyz and /metrics on --http-listen. Several may
 * run at once: the router keeps no state of its own and the workers
 * share Kafka's consumer group.
 */
#include "backends.h"
#include "config.h"
#include "files.h"
#include "flags.h"
#include "gateway_config.h"
#include "grpc_net.h"
#include "gwnodes.h"
#include "liveness.h"
#include "log.h"
#include "loop.h"
#include "signals.h"
#include "usage.h"

#include <imchat/api.h>
#include <imchat/grpc_gwlink.h>
#include <imchat/grpc_router_service.h>
#include <imchat/router.h>
#include <imchat/version.h>
#include <imchat/worker.h>

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How long a stop waits for calls and the worker's batch. */
#define GRACE_MS 10000
/* How long the start waits for the router's liveness lease. */
#define LEASE_WAIT_MS 5000

typedef struct svc {
  imchatd_config cfg;
  hloop *loop;
  hsignals *sig;
  hbackends be;
  hgwnodes *nodes;
  hliveness *live; /* the router's lease, and others' liveness */
  imc_router *router;
  imc_worker *worker;
  imc_grpc_router_service *rsvc;
  hgrpc_server *grpc;
  imc_gateway *http; /* HTTP only: health and metrics */
  imc_api *api;
  hstls *tls;      /* --tls-cert: on --http-listen */
  hstls *grpc_tls; /* --grpc-tls-cert: both ways of the gRPC links */
  int migrated;    /* --migrate-only: 1 done, -1 failed */
} svc;

static int64_t router_due(void *ud) {
  return imc_router_next_timeout_ms(((svc *)ud)->router);
}

static void router_run(void *ud) {
  imc_router_on_timeout(((svc *)ud)->router);
}

static int64_t worker_due(void *ud) {
  return imc_worker_next_timeout_ms(((svc *)ud)->worker);
}

static void worker_run(void *ud) {
  imc_worker_on_timeout(((svc *)ud)->worker);
}

static void on_stop(void *ud, int now) {
  svc *s = ud;
  if (now) {
    hloop_stop_now(s->loop);
    return;
  }
  hgrpc_server_shutdown(s->grpc);
  imc_worker_stop(s->worker);
  hloop_stop(s->loop);
}

/* SIGHUP (only with TLS: nothing else reloads). */
static void on_reload(void *ud) {
  svc *s = ud;
  hlog_info("SIGHUP: reloading");
  if (s->tls)
    hgateway_tls_reload(s->tls);
  if (s->grpc_tls)
    hconfig_grpc_tls_reload(s->grpc_tls);
}

static int make_router(svc *s) {
  const imchatd_config *cfg = &s->cfg;
  imc_router_options *opt = NULL;
  int rv = imc_router_options_new(&opt, NULL);
  if (rv == 0) {
    imc_router_options_set_registry(opt, imc_etcd_registry_vtbl(), s->be.etcd);
    imc_router_options_set_seq(opt, imc_redis_seq_vtbl(), s->be.redis);
    imc_router_options_set_dedup(opt, imc_redis_dedup_vtbl(), s->be.redis);
    imc_router_options_set_store(opt, imc_mariadb_store_vtbl(), s->be.db);
    imc_router_options_set_queue(opt, imc_kafka_bus_vtbl(), s->be.kafka);
    imc_router_options_set_group_bus(opt, imc_kafka_bus_vtbl(), s->be.kafka);
    imc_router_options_set_gwlink(opt, imc_grpc_gwlink_vtbl(),
                                  hgwnodes_link(s->nodes));
    imc_router_options_set_log(opt, hlog_imc_cb, NULL, hlog_get_level());
    imc_router_options_set_liveness(opt, hliveness_alive, s->live);
    /* Redis and Kafka do not commit together: the "ok" goes first. */
    imc_router_options_set_record_first(opt, 1);
    rv = hconfig_check(imc_router_options_set_max_body(opt, cfg->max_body),
                       "--max-body");
  }
  if (rv == 0 && cfg->filter_file) {
    char *words = NULL;
    size_t n = 0;
    int err = imchatd_read_file(cfg->filter_file, &words, &n);
    int set = err < 0
                  ? IMC_ERR_IO
                  : imc_router_options_set_filter(
                        opt, (const uint8_t *)words, n,
                        cfg->filter_mask ? IMC_FILTER_MASK : IMC_FILTER_REJECT);
    free(words);
    if (set != 0) {
      hlog_error("--filter-file: cannot load '%s': %s", cfg->filter_file,
                 err < 0 ? strerror(-err) : imc_strerror(set));
      rv = IMCHATD_EXIT_USAGE;
    }
  }
  if (rv == 0 && (rv = imc_router_new(&s->router, opt, NULL)) != 0) {
    hlog_error("router: %s", imc_strerror(rv));
    rv = IMCHATD_EXIT_FAIL;
  }
  imc_router_options_del(opt);
  return rv < 0 ? IMCHATD_EXIT_FAIL : rv;
}

static int make_worker(svc *s) {
  imc_worker_options *opt = NULL;
  int rv = imc_worker_options_new(&opt, NULL);
  if (rv == 0) {
    imc_worker_options_set_queue(opt, imc_kafka_bus_vtbl(), s->be.kafka);
    imc_worker_options_set_store(opt, imc_mariadb_store_vtbl(), s->be.db);
    imc_worker_options_set_dedup(opt, imc_redis_dedup_vtbl(), s->be.redis);
    imc_worker_options_set_persisted(opt, imc_router_persisted, s->router);
    imc_worker_options_set_log(opt, hlog_imc_cb, NULL, hlog_get_level());
    rv = imc_worker_options_set_retention_s(opt, s->cfg.retention_days * 86400);
  }
  if (rv == 0)
    rv = imc_worker_new(&s->worker, opt, NULL);
  imc_worker_options_del(opt);
  if (rv != 0) {
    hlog_error("worker: %s", imc_strerror(rv));
    return IMCHATD_EXIT_FAIL;
  }
  return 0;
}

static int make_grpc(svc *s) {
  imc_grpc_server_options *opt = NULL;
  char bound[300];
  int rv = imc_grpc_server_options_new(&opt, NULL);
  if (rv == 0)
    rv = imc_grpc_router_service_new(&s->rsvc, s->router, NULL);
  if (rv == 0)
    rv = imc_grpc_router_service_add(s->rsvc, opt);
  if (rv != 0) {
    imc_grpc_server_options_del(opt);
    hlog_error("gRPC: %s", imc_strerror(rv));
    return IMCHATD_EXIT_FAIL;
  }
  rv = hgrpc_server_new_tls(&s->grpc, s->loop, opt, s->cfg.grpc_listen,
                            s->grpc_tls, bound, sizeof(bound));
  imc_grpc_server_options_del(opt);
  if (rv < 0) {
    hlog_error("--grpc-listen %s: %s", s->cfg.grpc_listen, strerror(-rv));
    return IMCHATD_EXIT_FAIL;
  }
  hlog_info("gRPC (imchat.v1.Router) on %s%s", bound,
            s->grpc_tls ? " (mutual TLS)" : "");
  return 0;
}

/* /healthz, /readyz and /metrics: an HTTP-only gateway with the api. */
static int make_http(svc *s) {
  imc_api_options *aopt = NULL;
  imc_gateway_options *gopt = NULL;
  int rv = imc_api_options_new(&aopt, NULL);
  if (rv == 0)
    rv = imc_api_options_set_store(aopt, imc_mariadb_store_vtbl(), s->be.db);
  if (rv == 0)
    rv = imc_api_new(&s->api, aopt, NULL);
  imc_api_options_del(aopt);
  if (rv == 0)
    rv = imc_gateway_options_new(&gopt, NULL);
  if (rv == 0) {
    imc_gateway_options_set_http_only(gopt, 1);
    imc_gateway_options_set_node_id(gopt, s->cfg.node_id);
    imc_gateway_options_set_transport(gopt, hloop_transport_vtbl(), s->loop);
    imc_gateway_options_set_http_handler(gopt, imc_api_handler_vtbl(), s->api);
    imc_gateway_options_set_log(gopt, hlog_imc_cb, NULL, hlog_get_level());
    rv = imc_gateway_new(&s->http, gopt, NULL);
  }
  imc_gateway_options_del(gopt);
  if (rv != 0) {
    hlog_error("HTTP: %s", imc_strerror(rv));
    return IMCHATD_EXIT_FAIL;
  }
  imc_metrics_source sources[] = {
      {imc_api_router_source(), s->router},
      {imc_api_worker_source(), s->worker},
      {hbackends_source(), &s->be},
  };
  imc_api_set_sources(s->api, sources, sizeof(sources) / sizeof(sources[0]));
  hloop_set_gateway(s->loop, s->http);
  char bound[300];
  if (hloop_listen_tls(s->loop, s->cfg.http_listen, s->tls, bound,
                       sizeof(bound)) < 0)
    return IMCHATD_EXIT_FAIL; /* logged */
  hlog_info("HTTP%s (/healthz, /readyz, /metrics) on %s",
            s->tls ? " over TLS" : "", bound);
  return 0;
}

static void migrated(void *ud, int status) {
  svc *s = ud;
  s->migrated = status == 0 ? 1 : -1;
  if (status == 0)
    hlog_info("schema: version %d", imc_mariadb_schema_version());
  else
    hlog_error("schema migration failed: %s (%s)", imc_strerror(status),
               imc_mariadb_errmsg(s->be.db));
  hloop_stop_now(s->loop);
}

/* --migrate-only: the migrations, then exit. */
static int migrate_only(svc *s) {
  int rv = imc_mariadb_migrate(s->be.db, migrated, s);
  if (rv != 0) {
    hlog_error("schema migration: %s", imc_strerror(rv));
    return IMCHATD_EXIT_FAIL;
  }
  if (hloop_run(s->loop) < 0 || s->migrated != 1)
    return IMCHATD_EXIT_FAIL;
  return IMCHATD_EXIT_OK;
}

static int setup(svc *s) {
  const imchatd_config *cfg = &s->cfg;
  int rv, code;
  hlog_info("im-service %s (libimchat %s) starting: node %s", IMC_VERSION,
            imc_version(), cfg->node_id);
  if ((rv = hloop_new(&s->loop)) < 0) {
    hlog_error("event loop: %s", strerror(-rv));
    return IMCHATD_EXIT_FAIL;
  }
  hloop_set_grace_ms(s->loop, GRACE_MS);
  if (!cfg->migrate_only && ((code = hgateway_tls(cfg, &s->tls)) != 0 ||
                             (code = hconfig_grpc_tls(cfg, &s->grpc_tls)) != 0))
    return code;
  hsignals_cbs cbs = {on_stop, s->tls || s->grpc_tls ? on_reload : NULL};
  if ((rv = hsignals_new(&s->sig, s->loop, &cbs, s)) < 0) {
    hlog_error("signals: %s", strerror(-rv));
    return IMCHATD_EXIT_FAIL;
  }
  /* The address goes with the router's liveness lease (liveness.h). */
  if ((code = hbackends_open(&s->be, s->loop, cfg, cfg->grpc_listen,
                             !cfg->migrate_only)) != 0)
    return code;
  if (cfg->migrate_only)
    return 0;
  if ((rv = hgwnodes_new(&s->nodes, s->loop, s->be.etcd, s->grpc_tls)) < 0) {
    hlog_error("gateway links: %s", strerror(-rv));
    return IMCHATD_EXIT_FAIL;
  }
  if ((rv = hliveness_new(&s->live, s->loop, s->be.etcd)) < 0) {
    hlog_error("liveness: %s", strerror(-rv));
    return IMCHATD_EXIT_FAIL;
  }
  if ((code = make_router(s)) != 0)
    return code;
  /* Published before the first send: until then other routers would
   * count this one as dead and take its claims over. */
  if (hliveness_start(s->live, imc_router_instance(s->router), LEASE_WAIT_MS) ==
      -ENOMEM) {
    hlog_error("event loop: out of memory");
    return IMCHATD_EXIT_FAIL;
  }
  if ((code = make_worker(s)) != 0 || (code = make_http(s)) != 0 ||
      (code = make_grpc(s)) != 0)
    return code;
  if (hloop_add_hook(s->loop, router_due, router_run, s) < 0 ||
      hloop_add_hook(s->loop, worker_due, worker_run, s) < 0) {
    hlog_error("event loop: out of memory");
    return IMCHATD_EXIT_FAIL;
  }
  if ((rv = imc_worker_start(s->worker)) != 0) {
    hlog_error("worker: %s", imc_strerror(rv));
    return IMCHATD_EXIT_FAIL;
  }
  return 0;
}

/* After the loop: the calls still answered, the worker's batch done. */
static void drain(svc *s) {
  for (int i = 0; i < 200 && (imc_router_pending(s->router) > 0 ||
                              imc_worker_pending(s->worker) > 0 ||
                              hgrpc_server_pending(s->grpc) > 0 ||
                              hgwnodes_pending(s->nodes) > 0);
       i++)
    hloop_run_once(s->loop, 50);
}

static void svc_free(svc *s) {
  imc_worker_stop(s->worker);
  hgrpc_server_del(s->grpc);
  imc_grpc_router_service_del(s->rsvc);
  hbackends_close(&s->be); /* completes what the engines hold */
  hgwnodes_del(s->nodes);
  hliveness_del(s->live);
  imc_worker_del(s->worker);
  imc_router_del(s->router);
  imc_gateway_del(s->http);
  imc_api_del(s->api);
  hsignals_del(s->sig);
  hloop_del(s->loop);
  hstls_del(s->tls); /* after the connections */
  hstls_del(s->grpc_tls);
}

int main(int argc, char **argv) {
  svc s;
  memset(&s, 0, sizeof(s));
  char err[512];
  int code = imchatd_config_load(&s.cfg, IMCHATD_ROLE_SERVICE, argc, argv, err,
                                 sizeof(err));
  if (code >= 0) {
    fprintf(stderr, "im-service: %s\n", err);
  } else if (s.cfg.mode == IMCHATD_HELP) {
    hcluster_usage(IMCHATD_ROLE_SERVICE);
    code = IMCHATD_EXIT_OK;
  } else if (s.cfg.mode == IMCHATD_VERSION) {
    printf("im-service %s (libimchat %s)\n", IMC_VERSION, imc_version());
    code = IMCHATD_EXIT_OK;
  } else if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "im-service: libcurl: global init failed\n");
    code = IMCHATD_EXIT_FAIL;
  } else {
    hlog_set_level(s.cfg.log_level);
    code = setup(&s);
    if (code == 0 && s.cfg.migrate_only) {
      code = migrate_only(&s);
    } else if (code == 0) {
      code = hloop_run(s.loop) < 0 ? IMCHATD_EXIT_FAIL : IMCHATD_EXIT_OK;
      drain(&s);
      hlog_info("stopped");
    }
    svc_free(&s);
    curl_global_cleanup();
  }
  imchatd_config_free(&s.cfg);
  return code;
}
