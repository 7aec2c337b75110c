/*
 * im-gateway: the gateway of an imchat cluster. Clients' WebSockets and
 * the HTTP API on --listen; sends go to im-service over gRPC (spread over
 * every --router that is connected); deliveries come in as
 * imchat.v1.Gateway on --grpc-listen; connections are registered in etcd
 * (with this node's gRPC address, for the routers); group messages come
 * from Kafka's group_msg, in this node's own consumer group.
 */
#include "backends.h"
#include "config.h"
#include "flags.h"
#include "gateway_config.h"
#include "grpc_net.h"
#include "jwks.h"
#include "log.h"
#include "loop.h"
#include "signals.h"
#include "usage.h"

#include <imchat/api.h>
#include <imchat/fanout.h>
#include <imchat/gateway.h>
#include <imchat/grpc_gateway_service.h>
#include <imchat/grpc_upstream.h>
#include <imchat/version.h>

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How long a stop lets clients ACK and reports reach a router. */
#define GRACE_MS 10000
/* Group members are cached this long (changes made through this gateway
 * drop its cache at once). */
#define MEMBER_CACHE_MS 30000

typedef struct gwapp gwapp;

/* A connection to one im-service. */
typedef struct router {
  gwapp *app;
  hgrpc_peer *peer;
  imc_grpc_client *client; /* while connected */
} router;

struct gwapp {
  imchatd_config cfg;
  hloop *loop;
  hsignals *sig;
  hbackends be;
  imc_grpc_upstream *up;
  router *routers;
  size_t n_routers;
  hjwks *jwks;
  imc_gateway *gw;
  imc_api *api;
  imc_fanout *fanout;
  imc_grpc_gateway_service *gsvc;
  hgrpc_server *grpc;
  hstls *tls;      /* --tls-cert */
  hstls *grpc_tls; /* --grpc-tls-cert: both ways of the gRPC links */
};

static void on_router(void *ud, imc_grpc_client *c) {
  router *r = ud;
  if (r->client)
    imc_grpc_upstream_remove_client(r->app->up, r->client);
  r->client = c;
  if (c && imc_grpc_upstream_add_client(r->app->up, c) != 0)
    hlog_error("router %s: out of memory", hgrpc_peer_addr(r->peer));
}

static size_t routers_connected(const gwapp *a) {
  size_t n = 0;
  for (size_t i = 0; i < a->n_routers; i++)
    n += a->routers[i].client != NULL;
  return n;
}

/* /metrics and /readyz: the routers this gateway reaches. */
static int routers_collect(void *ud, imc_metrics *m) {
  const gwapp *a = ud;
  int rv = imc_metrics_family(m, "imchat_gateway_routers_connected",
                              IMC_METRIC_GAUGE,
                              "im-service processes this gateway is "
                              "connected to.");
  if (rv == 0)
    rv = imc_metrics_sample(m, "imchat_gateway_routers_connected", NULL, NULL,
                            routers_connected(a));
  return rv;
}

static int routers_ready(void *ud, const char **component, const char **state) {
  if (routers_connected(ud) > 0)
    return 1;
  *component = "router";
  *state = "not connected";
  return 0;
}

static const imc_metrics_source_vtbl routers_source = {
    sizeof(imc_metrics_source_vtbl), routers_collect, routers_ready};

static void on_stop(void *ud, int now) {
  gwapp *a = ud;
  if (now)
    hloop_stop_now(a->loop);
  else
    hloop_stop(a->loop); /* the gateway drains; see drain() */
}

/* SIGHUP (only with TLS: nothing else reloads). */
static void on_reload(void *ud) {
  gwapp *a = ud;
  hlog_info("SIGHUP: reloading");
  if (a->tls)
    hgateway_tls_reload(a->tls);
  if (a->grpc_tls)
    hconfig_grpc_tls_reload(a->grpc_tls);
}

static void group_changed(void *ud, const char *group_id) {
  imc_fanout_invalidate(((gwapp *)ud)->fanout, group_id);
}

/* One peer per --router address. */
static int connect_routers(gwapp *a) {
  size_t n = 1;
  for (const char *p = a->cfg.routers; *p; p++)
    n += *p == ',';
  a->routers = calloc(n, sizeof(*a->routers));
  if (a->routers == NULL || imc_grpc_upstream_new(&a->up, NULL) != 0) {
    hlog_error("routers: out of memory");
    return IMCHATD_EXIT_FAIL;
  }
  for (const char *p = a->cfg.routers;;) {
    size_t len = strcspn(p, ",");
    char addr[300];
    snprintf(addr, sizeof(addr), "%.*s", (int)len, p);
    router *r = &a->routers[a->n_routers];
    r->app = a;
    int rv =
        hgrpc_peer_new_tls(&r->peer, a->loop, addr, a->grpc_tls, on_router, r);
    if (rv < 0) {
      hlog_error("--router %s: %s", addr, strerror(-rv));
      return IMCHATD_EXIT_USAGE;
    }
    a->n_routers++;
    if (p[len] == '\0')
      break;
    p += len + 1;
  }
  hlog_info("routers: %s%s", a->cfg.routers,
            a->grpc_tls ? " (mutual TLS)" : "");
  return 0;
}

static int make_api(gwapp *a) {
  imc_api_options *opt = NULL;
  int rv = imc_api_options_new(&opt, NULL);
  if (rv == 0)
    rv = imc_api_options_set_store(opt, imc_mariadb_store_vtbl(), a->be.db);
  if (rv == 0)
    rv =
        imc_api_options_set_groups(opt, imc_grpc_upstream_groups_vtbl(), a->up);
  if (rv == 0 && a->cfg.admin_token)
    rv = hconfig_check(imc_api_options_set_admin_token(opt, a->cfg.admin_token),
                       "--admin-token");
  if (rv == 0)
    rv = imc_api_options_set_log(opt, hlog_imc_cb, NULL, hlog_get_level());
  if (rv == 0)
    rv = imc_api_new(&a->api, opt, NULL);
  imc_api_options_del(opt);
  if (rv < 0)
    hlog_error("api: %s", imc_strerror(rv));
  return rv < 0 ? IMCHATD_EXIT_FAIL : rv;
}

static int make_gateway(gwapp *a) {
  imc_gateway_options *opt = NULL;
  int rv = imc_gateway_options_new(&opt, NULL);
  if (rv != 0) {
    hlog_error("gateway: %s", imc_strerror(rv));
    return IMCHATD_EXIT_FAIL;
  }
  int code = hgateway_config(&a->cfg, a->loop, opt, &a->jwks);
  if (code == 0) {
    imc_gateway_options_set_transport(opt, hloop_transport_vtbl(), a->loop);
    imc_gateway_options_set_registry(opt, imc_etcd_registry_vtbl(), a->be.etcd);
    imc_gateway_options_set_upstream(opt, imc_grpc_upstream_vtbl(), a->up);
    imc_gateway_options_set_http_handler(opt, imc_api_handler_vtbl(), a->api);
    if ((rv = imc_gateway_new(&a->gw, opt, NULL)) != 0) {
      hlog_error("gateway: %s", imc_strerror(rv));
      code = IMCHATD_EXIT_FAIL;
    }
  }
  imc_gateway_options_del(opt);
  return code;
}

static int make_grpc(gwapp *a) {
  imc_grpc_server_options *opt = NULL;
  char bound[300];
  int rv = imc_grpc_server_options_new(&opt, NULL);
  if (rv == 0)
    rv = imc_grpc_gateway_service_new(&a->gsvc, a->gw, NULL);
  if (rv == 0)
    rv = imc_grpc_gateway_service_add(a->gsvc, opt);
  if (rv != 0) {
    imc_grpc_server_options_del(opt);
    hlog_error("gRPC: %s", imc_strerror(rv));
    return IMCHATD_EXIT_FAIL;
  }
  rv = hgrpc_server_new_tls(&a->grpc, a->loop, opt, a->cfg.grpc_listen,
                            a->grpc_tls, bound, sizeof(bound));
  imc_grpc_server_options_del(opt);
  if (rv < 0) {
    hlog_error("--grpc-listen %s: %s", a->cfg.grpc_listen, strerror(-rv));
    return IMCHATD_EXIT_FAIL;
  }
  hlog_info("gRPC (imchat.v1.Gateway) on %s%s", bound,
            a->grpc_tls ? " (mutual TLS)" : "");
  return 0;
}

/*
 * Where routers reach this gateway: --grpc-advertise, else --grpc-listen
 * when it names one address and port. Returns it, or NULL after logging.
 */
static const char *advertised(const imchatd_config *cfg) {
  if (cfg->grpc_advertise)
    return cfg->grpc_advertise;
  char host[256];
  uint16_t port;
  const char *why;
  if (hloop_split_addr(cfg->grpc_listen, host, sizeof(host), &port, &why) ==
          0 &&
      port != 0 && host[0] && strcmp(host, "*") != 0 &&
      strcmp(host, "0.0.0.0") != 0 && strcmp(host, "::") != 0)
    return cfg->grpc_listen;
  hlog_error("--grpc-listen %s is not one address and port: set "
             "--grpc-advertise HOST:PORT (where im-service reaches this "
             "gateway)",
             cfg->grpc_listen);
  return NULL;
}

static int setup(gwapp *a) {
  const imchatd_config *cfg = &a->cfg;
  int rv, code;
  hlog_info("im-gateway %s (libimchat %s) starting: node %s", IMC_VERSION,
            imc_version(), cfg->node_id);
  const char *addr = advertised(cfg);
  if (addr == NULL)
    return IMCHATD_EXIT_USAGE;
  if ((code = hgateway_tls(cfg, &a->tls)) != 0 ||
      (code = hconfig_grpc_tls(cfg, &a->grpc_tls)) != 0)
    return code;
  if ((rv = hloop_new(&a->loop)) < 0) {
    hlog_error("event loop: %s", strerror(-rv));
    return IMCHATD_EXIT_FAIL;
  }
  hloop_set_grace_ms(a->loop, GRACE_MS);
  hsignals_cbs cbs = {on_stop, a->tls || a->grpc_tls ? on_reload : NULL};
  if ((rv = hsignals_new(&a->sig, a->loop, &cbs, a)) < 0) {
    hlog_error("signals: %s", strerror(-rv));
    return IMCHATD_EXIT_FAIL;
  }
  if ((code = hbackends_open(&a->be, a->loop, cfg, addr, 0)) != 0 ||
      (code = connect_routers(a)) != 0 || (code = make_api(a)) != 0 ||
      (code = make_gateway(a)) != 0 || (code = make_grpc(a)) != 0)
    return code;
  if ((rv = imc_fanout_new(&a->fanout, a->gw, imc_kafka_bus_vtbl(), a->be.kafka,
                           imc_mariadb_store_vtbl(), a->be.db, NULL,
                           MEMBER_CACHE_MS, NULL)) != 0 ||
      (rv = imc_fanout_start(a->fanout)) != 0) {
    hlog_error("fan-out: %s", imc_strerror(rv));
    return IMCHATD_EXIT_FAIL;
  }
  imc_metrics_source sources[] = {
      {imc_api_gateway_source(), a->gw},
      {&routers_source, a},
      {hbackends_source(), &a->be},
      {hjwks_metrics_vtbl(), a->jwks}, /* last: only with --jwks-url */
  };
  imc_api_set_sources(a->api, sources,
                      sizeof(sources) / sizeof(sources[0]) - !a->jwks);
  imc_api_set_group_changed(a->api, group_changed, a);
  hloop_set_gateway(a->loop, a->gw);
  char bound[300];
  if (hloop_listen_tls(a->loop, cfg->listen, a->tls, bound, sizeof(bound)) < 0)
    return IMCHATD_EXIT_FAIL; /* logged */
  hlog_info("WebSocket and HTTP%s on %s; advertised to routers as %s",
            a->tls ? " over TLS" : "", bound, addr);
  return 0;
}

/*
 * After the loop's drain: the reports of the pushes the clients did not
 * ACK (the slow path) reach a router before the connections go.
 */
static void drain(gwapp *a) {
  imc_fanout_stop(a->fanout);
  for (int i = 0; i < 200 && (imc_gateway_pending(a->gw) > 0 ||
                              imc_api_pending(a->api) > 0 ||
                              imc_fanout_pending(a->fanout) > 0);
       i++)
    hloop_run_once(a->loop, 50);
  if (imc_gateway_pending(a->gw) > 0)
    hlog_warn("stopping with %zu reports not confirmed by a router",
              imc_gateway_pending(a->gw));
}

static void app_free(gwapp *a) {
  imc_fanout_stop(a->fanout);
  hgrpc_server_del(a->grpc);
  imc_grpc_gateway_service_del(a->gsvc);
  hbackends_close(&a->be); /* completes what the engines hold */
  for (size_t i = 0; i < a->n_routers; i++)
    hgrpc_peer_del(a->routers[i].peer);
  imc_fanout_del(a->fanout);
  imc_api_del(a->api);
  hjwks_del(a->jwks);
  imc_gateway_del(a->gw);
  imc_grpc_upstream_del(a->up);
  free(a->routers);
  hsignals_del(a->sig);
  hloop_del(a->loop);
  hstls_del(a->tls); /* after the connections */
  hstls_del(a->grpc_tls);
}

int main(int argc, char **argv) {
  gwapp a;
  memset(&a, 0, sizeof(a));
  char err[512];
  int code = imchatd_config_load(&a.cfg, IMCHATD_ROLE_GATEWAY, argc, argv, err,
                                 sizeof(err));
  if (code >= 0) {
    fprintf(stderr, "im-gateway: %s\n", err);
  } else if (a.cfg.mode == IMCHATD_HELP) {
    hcluster_usage(IMCHATD_ROLE_GATEWAY);
    code = IMCHATD_EXIT_OK;
  } else if (a.cfg.mode == IMCHATD_VERSION) {
    printf("im-gateway %s (libimchat %s)\n", IMC_VERSION, imc_version());
    code = IMCHATD_EXIT_OK;
  } else if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "im-gateway: libcurl: global init failed\n");
    code = IMCHATD_EXIT_FAIL;
  } else {
    hlog_set_level(a.cfg.log_level);
    code = setup(&a);
    if (code == 0) {
      code = hloop_run(a.loop) < 0 ? IMCHATD_EXIT_FAIL : IMCHATD_EXIT_OK;
      drain(&a);
      hlog_info("stopped");
    }
    app_free(&a);
    curl_global_cleanup();
  }
  imchatd_config_free(&a.cfg);
  return code;
}
