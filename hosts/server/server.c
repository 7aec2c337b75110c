/*
 * libimchat-server (imchat/server.h): the whole of imchat in one process,
 * on embedded backends. Flags and config → objects (registry in memory;
 * seq, dedup, store and offline queue in SQLite; gateway, router, worker,
 * fan-out, HTTP API) → epoll loop, stopped and reloaded through an
 * eventfd.
 */
#include "server_int.h"

#include "dev_login.h"
#include "gateway_config.h"
#include "jwks.h"
#include "log.h"
#include "loop.h"
#include "static.h"
#include "storage.h"

#include <imchat/imchat.h>
#include <imchat/memreg.h>
#include <imchat/sqlite.h>
#include <imchat/membus.h>
#include <imchat/sealed_store.h>
#include <imchat/sealed_bus.h>
#include <imchat/fanout.h>
#include <imchat/local_link.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEV_LOGIN_TTL_S 86400
#define GRACE_MS 5000
#define HELD_MAX (64 * 1024) /* lines logged by imc_server_new */

/* "imchatd token alice" plus the flags that locate the same secret. */
static void log_connect_hint(const imchatd_config *cfg, const char *bound) {
  char url[512];
  const char *ws = cfg->tls_cert ? "wss" : "ws";
  /* A wildcard address is not something to connect to. */
  if (strncmp(bound, "0.0.0.0:", 8) == 0)
    snprintf(url, sizeof(url), "%s://127.0.0.1:%s/ws", ws, bound + 8);
  else if (strncmp(bound, "[::]:", 5) == 0)
    snprintf(url, sizeof(url), "%s://[::1]:%s/ws", ws, bound + 5);
  else
    snprintf(url, sizeof(url), "%s://%s/ws", ws, bound);

  if (cfg->jwt_secret) {
    hlog_info("connect: %s?token=<HS256 JWT signed with --jwt-secret; "
              "'imchatd token USER --jwt-secret ...' makes one>",
              url);
    return;
  }
  if (!cfg->jwt_secret_file && cfg->jwt_public_key) {
    hlog_info("connect: %s?token=<RS256/ES256 JWT signed by the private key "
              "of %s>",
              url, cfg->jwt_public_key);
    return;
  }
  if (!cfg->jwt_secret_file && cfg->jwks_url) {
    hlog_info("connect: %s?token=<RS256/ES256 JWT signed by a key of the "
              "--jwks-url set>",
              url);
    return;
  }
  char args[1024] = "";
  size_t n = 0;
  if (cfg->config_file)
    n += (size_t)snprintf(args + n, sizeof(args) - n, " --config %s",
                          cfg->config_file);
  if (cfg->jwt_secret_file && n < sizeof(args))
    n += (size_t)snprintf(args + n, sizeof(args) - n, " --jwt-secret-file %s",
                          cfg->jwt_secret_file);
  else if (cfg->data_dir_flag && n < sizeof(args))
    snprintf(args + n, sizeof(args) - n, " --data-dir %s", cfg->data_dir);
  hlog_info("connect: %s?token=$(imchatd token alice%s)", url, args);
}

/* Everything one server runs. */
typedef struct app {
  const imchatd_config *cfg;
  hloop *loop;
  imc_memreg *reg;
  imc_sqlite *db;
  hstorage *storage; /* runs db's group commits on a storage thread */
  imc_sealed_store *sealed;
  imc_sealed_bus *sealed_queue;
  imc_membus *bus;
  const imc_store_vtbl *store;
  void *store_ud;
  const imc_bus_vtbl *queue; /* the offline queue */
  void *queue_ud;
  imc_gateway *gw;
  imc_router *router;
  imc_worker *worker;
  imc_fanout *fanout;
  imc_api *api;
  devlogin *dev;                     /* --dev-login */
  hjwks *jwks;                       /* --jwks-url */
  hstatic *web;                      /* the web page */
  hstls *tls;                        /* --tls-cert */
  const imc_http_handler_vtbl *http; /* first of web, dev login, api */
  void *http_ud;
} app;

struct imc_server {
  imchatd_config cfg;
  app a;
  char bound[300];
  hlog_sink sink; /* bound to the thread in every entry point but stop */
  imc_log_cb log_cb;
  void *log_ud;
  int starting;        /* in imc_server_new: the first error is held */
  char first_err[512]; /* ... here */
  /* The other lines imc_server_new logged ("level line\n" each), held
   * until the embedder chose their destination (set_log) or run began. */
  char *held;
  size_t held_len;
  int efd; /* stop and reload requests wake the loop */
  atomic_uint stops, reloads;
  unsigned stops_seen, reloads_seen;
  int ran;
};

/* The gateway's upstream: the router, which is created after it. */
static int up_send(void *ud, const imc_send_req *req, imc_send_cb done,
                   void *done_ud) {
  return imc_router_send(((app *)ud)->router, req, done, done_ud);
}

static int up_delivered(void *ud, const imc_msg *msg, const char *user,
                        const char *device, imc_done_cb done, void *done_ud) {
  imc_router_delivered(((app *)ud)->router, msg, user, device);
  done(done_ud, 0);
  return 0;
}

static int up_undelivered(void *ud, const imc_msg *msg, const char *user,
                          imc_done_cb done, void *done_ud) {
  imc_router_undelivered(((app *)ud)->router, msg, user);
  done(done_ud, 0);
  return 0;
}

static int up_delivered_many(void *ud, const imc_delivery_ack *acks, size_t n,
                             imc_done_cb done, void *done_ud) {
  imc_router_delivered_many(((app *)ud)->router, acks, n);
  done(done_ud, 0);
  return 0;
}

static const imc_upstream_vtbl upstream = {
    .struct_size = sizeof(imc_upstream_vtbl),
    .send = up_send,
    .delivered = up_delivered,
    .undelivered = up_undelivered,
    .delivered_many = up_delivered_many,
};

/* The gateway's HTTP handler: the chain of the web page, the dev login
 * and the API, which are created after it. */
static int http_handle(void *ud, const imc_http_request *req,
                       imc_http_reply *reply) {
  app *a = ud;
  return a->http->handle(a->http_ud, req, reply);
}

static const imc_http_handler_vtbl http_handler = {
    sizeof(imc_http_handler_vtbl), http_handle};

/*
 * Completions of the embedded queue and bus: deferred work, woken by its
 * own deadline (0 while a dispatch would complete something), so a queue
 * backlog drains with no other traffic. A few rounds let a chain
 * (publish, persist, status) finish in one iteration; what they leave
 * keeps the deadline at 0 and runs on the next iteration, after I/O. The
 * cap bounds how long a draining backlog (a worker batch per round)
 * holds up the sockets.
 */
#define DISPATCH_ROUNDS 4

/* Operations per SQLite transaction at most (whole loop turns). */
#define STORAGE_BATCH_OPS 1024

static int64_t dispatch_due(void *ud) {
  app *a = ud;
  int64_t t = imc_sqlite_next_timeout_ms(a->db);
  return t == 0 ? 0 : imc_membus_next_timeout_ms(a->bus);
}

static void dispatch_run(void *ud) {
  app *a = ud;
  for (int round = 0; round < DISPATCH_ROUNDS; round++) {
    int n = imc_sqlite_dispatch(a->db);
    int m = imc_membus_dispatch(a->bus);
    if (n < 0)
      hlog_error("store: %s", imc_sqlite_errmsg(a->db));
    if (n <= 0 && m <= 0)
      return;
  }
}

static int64_t router_due(void *ud) {
  return imc_router_next_timeout_ms(((app *)ud)->router);
}

static void router_run(void *ud) {
  imc_router_on_timeout(((app *)ud)->router);
}

static int64_t worker_due(void *ud) {
  return imc_worker_next_timeout_ms(((app *)ud)->worker);
}

static void worker_run(void *ud) {
  imc_worker_on_timeout(((app *)ud)->worker);
}

static void group_changed(void *ud, const char *group_id) {
  imc_fanout_invalidate(((app *)ud)->fanout, group_id);
}

/* Frees the text of the key file, wiping it first. */
static void keys_free(char *text, size_t len) {
  if (text == NULL)
    return;
  explicit_bzero(text, len);
  free(text);
}

/*
 * Reads --key-file again and hands its text to the sealed store and
 * queue (the library reads no files). On failure the keys in use stay.
 */
static void reload_keys(app *a) {
  char *text;
  size_t len;
  int rv = imchatd_read_file(a->cfg->key_file, &text, &len);
  if (rv < 0) {
    hlog_warn("--key-file: cannot read '%s': %s; the previous keys stay",
              a->cfg->key_file, strerror(-rv));
    return;
  }
  const uint8_t *keys = (const uint8_t *)text;
  if ((rv = imc_sealed_store_set_keys(a->sealed, keys, len)) == 0)
    rv = imc_sealed_bus_set_keys(a->sealed_queue, keys, len);
  keys_free(text, len);
  if (rv != 0)
    hlog_warn("--key-file: %s; the previous keys stay", imc_strerror(rv));
  else
    hlog_info("--key-file: reloaded %s", a->cfg->key_file);
}

static void reload(app *a) {
  int rv;
  if (a->cfg->filter_file) {
    char *words;
    size_t n;
    if ((rv = imchatd_read_file(a->cfg->filter_file, &words, &n)) < 0) {
      hlog_warn("--filter-file: cannot read '%s': %s; the previous words stay",
                a->cfg->filter_file, strerror(-rv));
    } else {
      rv = imc_router_set_filter_words(a->router, (const uint8_t *)words, n);
      free(words);
      if (rv != 0)
        hlog_warn("--filter-file: %s; the previous words stay",
                  imc_strerror(rv));
      else
        hlog_info("--filter-file: reloaded %s", a->cfg->filter_file);
    }
  }
  if (a->sealed)
    reload_keys(a);
  if (a->tls)
    hgateway_tls_reload(a->tls);
}

/* The SQLite database, and the store and offline queue in front of it:
 * with a key file both hold message bodies sealed. */
static int open_store(app *a) {
  const imchatd_config *cfg = a->cfg;
  char path[4096];
  if (mkdir(cfg->data_dir, 0700) < 0 && errno != EEXIST) {
    hlog_error("--data-dir: cannot create '%s': %s", cfg->data_dir,
               strerror(errno));
    return IMCHATD_EXIT_FAIL;
  }
  snprintf(path, sizeof(path), "%s/imchat.db", cfg->data_dir);
  int rv = imc_sqlite_new(&a->db, path, NULL, NULL);
  if (rv != 0) {
    hlog_error("store %s: %s", path,
               a->db ? imc_sqlite_errmsg(a->db) : imc_strerror(rv));
    return IMCHATD_EXIT_FAIL;
  }
  hlog_info("store: %s", path);
  /* This process owns the file alone: a send claim still "pending" was
   * left by a predecessor that died mid-send. None of them was
   * acknowledged (the claim becomes "ok" in the transaction that queues
   * the message), so the resend is routed as the first send. */
  rv = imc_sqlite_dedup_drop(a->db, (const uint8_t *)"pending", 7);
  if (rv < 0) {
    hlog_error("store %s: %s", path, imc_sqlite_errmsg(a->db));
    return IMCHATD_EXIT_FAIL;
  }
  if (rv > 0)
    hlog_info("store: settled %d send claims left by the last run", rv);
  a->store = imc_sqlite_store_vtbl();
  a->store_ud = a->db;
  a->queue = imc_sqlite_bus_vtbl();
  a->queue_ud = a->db;
  if (cfg->key_file) {
    char *text;
    size_t len;
    rv = imchatd_read_file(cfg->key_file, &text, &len);
    if (rv < 0) {
      hlog_error("--key-file: cannot read '%s': %s", cfg->key_file,
                 strerror(-rv));
      return IMCHATD_EXIT_USAGE;
    }
    const uint8_t *keys = (const uint8_t *)text;
    rv = imc_sealed_store_new(&a->sealed, a->store, a->store_ud, keys, len,
                              NULL);
    if (rv == 0)
      rv = imc_sealed_bus_new(&a->sealed_queue, a->queue, a->queue_ud, keys,
                              len, NULL);
    keys_free(text, len);
    if (rv != 0) {
      hlog_error("--key-file: cannot load '%s': %s", cfg->key_file,
                 imc_strerror(rv));
      return rv == IMC_ERR_NOMEM ? IMCHATD_EXIT_FAIL : IMCHATD_EXIT_USAGE;
    }
    a->store = imc_sealed_store_vtbl();
    a->store_ud = a->sealed;
    a->queue = imc_sealed_bus_vtbl();
    a->queue_ud = a->sealed_queue;
    hlog_info("encryption at rest: keys from %s", cfg->key_file);
  }
  return 0;
}

static int make_gateway(app *a) {
  imc_gateway_options *opt = NULL;
  int rv = imc_gateway_options_new(&opt, NULL);
  if (rv != 0) {
    hlog_error("gateway: %s", imc_strerror(rv));
    return IMCHATD_EXIT_FAIL;
  }
  int code = hgateway_config(a->cfg, a->loop, opt, &a->jwks);
  if (code == 0) {
    imc_gateway_options_set_transport(opt, hloop_transport_vtbl(), a->loop);
    imc_gateway_options_set_registry(opt, imc_memreg_vtbl(), a->reg);
    imc_gateway_options_set_upstream(opt, &upstream, a);
    imc_gateway_options_set_http_handler(opt, &http_handler, a);
    if ((rv = imc_gateway_new(&a->gw, opt, NULL)) != 0) {
      hlog_error("gateway: %s", imc_strerror(rv));
      code = IMCHATD_EXIT_FAIL;
    }
  }
  imc_gateway_options_del(opt);
  return code;
}

static int make_router(app *a) {
  const imchatd_config *cfg = a->cfg;
  imc_router_options *opt = NULL;
  int rv = imc_router_options_new(&opt, NULL);
  if (rv == 0) {
    imc_router_options_set_registry(opt, imc_memreg_vtbl(), a->reg);
    imc_router_options_set_seq(opt, imc_sqlite_seq_vtbl(), a->db);
    imc_router_options_set_dedup(opt, imc_sqlite_dedup_vtbl(), a->db);
    imc_router_options_set_store(opt, a->store, a->store_ud);
    imc_router_options_set_queue(opt, a->queue, a->queue_ud);
    imc_router_options_set_group_bus(opt, imc_membus_vtbl(), a->bus);
    imc_router_options_set_gwlink(opt, imc_gateway_local_link(), a->gw);
    imc_router_options_set_log(opt, hlog_imc_cb, NULL, hlog_get_level());
    rv = imc_router_options_set_max_body(opt, cfg->max_body);
  }
  if (rv == 0 && cfg->filter_file) {
    char *words = NULL;
    size_t n = 0;
    int err = imchatd_read_file(cfg->filter_file, &words, &n);
    rv = err < 0 ? IMC_ERR_IO
                 : imc_router_options_set_filter(
                       opt, (const uint8_t *)words, n,
                       cfg->filter_mask ? IMC_FILTER_MASK : IMC_FILTER_REJECT);
    free(words);
    if (rv != 0) {
      hlog_error("--filter-file: cannot load '%s': %s", cfg->filter_file,
                 err < 0 ? strerror(-err) : imc_strerror(rv));
      imc_router_options_del(opt);
      return IMCHATD_EXIT_USAGE;
    }
    hlog_info("content filter: %s (%s)", cfg->filter_file,
              cfg->filter_mask ? "mask" : "reject");
  }
  if (rv == 0)
    rv = imc_router_new(&a->router, opt, NULL);
  imc_router_options_del(opt);
  if (rv != 0) {
    hlog_error("router: %s", imc_strerror(rv));
    return IMCHATD_EXIT_FAIL;
  }
  return 0;
}

static int make_worker(app *a) {
  imc_worker_options *opt = NULL;
  int rv = imc_worker_options_new(&opt, NULL);
  if (rv == 0) {
    imc_worker_options_set_queue(opt, a->queue, a->queue_ud);
    imc_worker_options_set_store(opt, a->store, a->store_ud);
    imc_worker_options_set_dedup(opt, imc_sqlite_dedup_vtbl(), a->db);
    imc_worker_options_set_persisted(opt, imc_router_persisted, a->router);
    imc_worker_options_set_log(opt, hlog_imc_cb, NULL, hlog_get_level());
    rv =
        imc_worker_options_set_retention_s(opt, a->cfg->retention_days * 86400);
  }
  if (rv == 0)
    rv = imc_worker_new(&a->worker, opt, NULL);
  imc_worker_options_del(opt);
  if (rv != 0) {
    hlog_error("worker: %s", imc_strerror(rv));
    return IMCHATD_EXIT_FAIL;
  }
  return 0;
}

static int make_api(app *a) {
  imc_api_options *opt = NULL;
  int rv = imc_api_options_new(&opt, NULL);
  if (rv == 0)
    rv = imc_api_options_set_store(opt, a->store, a->store_ud);
  if (rv == 0)
    rv = imc_api_options_set_groups(opt, imc_api_router_groups(), a->router);
  if (rv == 0 && a->cfg->admin_token)
    rv = imc_api_options_set_admin_token(opt, a->cfg->admin_token);
  if (rv == 0)
    rv = imc_api_options_set_log(opt, hlog_imc_cb, NULL, hlog_get_level());
  if (rv == 0)
    rv = imc_api_new(&a->api, opt, NULL);
  imc_api_options_del(opt);
  if (rv != 0) {
    hlog_error("--admin-token: %s", imc_strerror(rv));
    return rv == IMC_ERR_INVALID_ARGUMENT ? IMCHATD_EXIT_USAGE
                                          : IMCHATD_EXIT_FAIL;
  }
  return 0;
}

/* 1 if this executable lives in the build tree it was built in. */
static int run_from_build_tree(void) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0)
    return 0;
  exe[n] = '\0';
  char *root = realpath(IMCHATD_BUILD_ROOT, NULL);
  if (root == NULL)
    return 0;
  size_t len = strlen(root);
  int inside = strncmp(exe, root, len) == 0 && exe[len] == '/';
  free(root);
  return inside;
}

/*
 * The web page: --web-root, else the copy built in the build tree when
 * this imchatd runs from there, else the installed one; without any, /
 * is not served. Chains the handlers: web page, dev login, API.
 */
static int make_http(app *a) {
  const imchatd_config *cfg = a->cfg;
  a->http = imc_api_handler_vtbl();
  a->http_ud = a->api;
  int rv;
  if (cfg->dev_login) {
    uint8_t *secret;
    size_t len;
    char *path;
    int created;
    if ((rv = imchatd_config_secret(cfg, &secret, &len, &path, &created)) != 0)
      return rv;
    free(path);
    if (secret == NULL) {
      hlog_error("--dev-login: needs an HS256 secret (--jwt-secret, "
                 "--jwt-secret-file or the data directory's); this "
                 "configuration only verifies --jwt-public-key or "
                 "--jwks-url tokens");
      return IMCHATD_EXIT_USAGE;
    }
    rv = devlogin_new(&a->dev, secret, len, cfg->jwt_issuer, cfg->jwt_audience,
                      DEV_LOGIN_TTL_S, a->http, a->http_ud);
    explicit_bzero(secret, len);
    free(secret);
    if (rv < 0) {
      hlog_error("--dev-login: %s", strerror(-rv));
      return IMCHATD_EXIT_FAIL;
    }
    a->http = devlogin_vtbl();
    a->http_ud = a->dev;
  }
  const char *root = cfg->web_root;
  if (root == NULL) {
    struct stat st;
    if (run_from_build_tree())
      root = IMCHATD_WEB_BUILD_DIR;
    else if (stat(IMCHATD_WEB_INSTALL_DIR "/index.html", &st) == 0)
      root = IMCHATD_WEB_INSTALL_DIR;
    if (root && stat(root, &st) < 0) {
      hlog_info("web page: not built (%s is missing: run 'npm ci' and the "
                "build, see README); / is not served",
                root);
      return 0;
    }
    if (root == NULL) {
      hlog_info("web page: none installed (%s); / is not served",
                IMCHATD_WEB_INSTALL_DIR);
      return 0;
    }
  }
  if ((rv = hstatic_new(&a->web, root, a->http, a->http_ud)) < 0) {
    hlog_error("--web-root: '%s': %s", root, strerror(-rv));
    return cfg->web_root ? IMCHATD_EXIT_USAGE : IMCHATD_EXIT_FAIL;
  }
  a->http = hstatic_vtbl();
  a->http_ud = a->web;
  hlog_info("web page: %s", hstatic_root(a->web));
  return 0;
}

/* --dev-login only on loopback, and loudly. */
static int check_dev_login(const imchatd_config *cfg) {
  if (!cfg->dev_login)
    return 0;
  char host[256];
  uint16_t port;
  const char *why;
  if (hloop_split_addr(cfg->listen, host, sizeof(host), &port, &why) < 0 ||
      !devlogin_host_is_loopback(host)) {
    hlog_error("--dev-login: refused: it hands a token to anyone who asks, "
               "and --listen %s is not a loopback address (127.0.0.0/8, "
               "[::1], localhost)",
               cfg->listen);
    return IMCHATD_EXIT_USAGE;
  }
  hlog_warn("********************************************************");
  hlog_warn("--dev-login is ON: POST /dev/login gives a token for ANY "
            "user to anyone who can reach %s. For development only.",
            cfg->listen);
  hlog_warn("********************************************************");
  return 0;
}

/*
 * Lets the worker persist what is queued (un-ACKed pushes included). The
 * storage thread is joined first; the batches then run here, one per
 * round.
 */
static void drain(app *a) {
  imc_worker_stop(a->worker);
  imc_fanout_stop(a->fanout);
  hstorage_stop(a->storage);
  for (int i = 0; i < 1000 && (imc_worker_pending(a->worker) > 0 ||
                               imc_router_pending(a->router) > 0);
       i++) {
    dispatch_run(a);
    imc_router_on_timeout(a->router);
    imc_worker_on_timeout(a->worker);
    hstorage_flush(a->storage);
  }
  dispatch_run(a);
}

static void app_free(app *a) {
  /* Stop the consumers, delete the backends (which completes what they
   * still hold), then the library objects. */
  imc_worker_stop(a->worker);
  imc_fanout_stop(a->fanout);
  imc_membus_del(a->bus);
  hstorage_del(a->storage); /* joins the storage thread */
  imc_sqlite_del(a->db);
  imc_fanout_del(a->fanout);
  imc_worker_del(a->worker);
  imc_router_del(a->router);
  imc_api_del(a->api);
  hjwks_del(a->jwks); /* its waiting lookups complete on the gateway */
  imc_gateway_del(a->gw);
  hstatic_del(a->web);
  devlogin_del(a->dev);
  imc_sealed_store_del(a->sealed);
  imc_sealed_bus_del(a->sealed_queue);
  imc_memreg_del(a->reg);
  hloop_del(a->loop);
  hstls_del(a->tls); /* after the connections */
}

/* ---- stop and reload requests ------------------------------------- */

/* The loop side of the eventfd: acts on the requests counted since the
 * last wakeup. */
static void on_request(void *ud) {
  imc_server *s = ud;
  uint64_t n;
  while (read(s->efd, &n, sizeof(n)) < 0 && errno == EINTR)
    ;
  unsigned reloads = atomic_load(&s->reloads);
  if (reloads != s->reloads_seen) {
    s->reloads_seen = reloads;
    hlog_info("reloading");
    reload(&s->a);
  }
  unsigned stops = atomic_load(&s->stops);
  if (stops == s->stops_seen)
    return;
  if (s->stops_seen == 0) {
    hlog_info("shutting down (grace %d ms)", GRACE_MS);
    hloop_stop(s->a.loop);
  }
  if (stops >= 2) {
    hlog_warn("stop requested during shutdown: stopping now");
    hloop_stop_now(s->a.loop);
  }
  s->stops_seen = stops;
}

static void wake(imc_server *s) {
  uint64_t one = 1;
  /* Only EAGAIN (counter saturated) can fail: the loop is awake. */
  while (write(s->efd, &one, sizeof(one)) < 0 && errno == EINTR)
    ;
}

void imc_server_stop(imc_server *s) {
  atomic_fetch_add(&s->stops, 1);
  wake(s);
}

void imc_server_reload(imc_server *s) {
  atomic_fetch_add(&s->reloads, 1);
  wake(s);
}

/* ---- logging ------------------------------------------------------- */

/* The sink of every thread inside the server: while imc_server_new runs,
 * the first error is held for err; the rest goes to the callback or to
 * stderr. */
static void server_log(void *ud, imc_log_level level, const char *line) {
  imc_server *s = ud;
  if (s->starting && level == IMC_LOG_ERROR && s->first_err[0] == '\0') {
    snprintf(s->first_err, sizeof(s->first_err), "%s", line);
    return;
  }
  if (s->starting) { /* held (dropped past HELD_MAX: out of memory) */
    size_t n = strlen(line) + 3;
    char *h =
        s->held_len + n <= HELD_MAX ? realloc(s->held, s->held_len + n) : NULL;
    if (h) {
      snprintf(h + s->held_len, n, "%c%s\n", '0' + (int)level, line);
      s->held = h;
      s->held_len += n - 1;
    }
    return;
  }
  if (s->log_cb)
    s->log_cb(s->log_ud, level, line);
  else
    hlog_stderr(level, line);
}

/* Sends the lines held since imc_server_new where the log now goes. */
static void release_held(imc_server *s) {
  char *held = s->held;
  size_t len = s->held_len;
  s->held = NULL;
  s->held_len = 0;
  for (char *p = held, *end = held + len; p < end;) {
    char *nl = memchr(p, '\n', (size_t)(end - p));
    *nl = '\0';
    server_log(s, (imc_log_level)(p[0] - '0'), p + 1);
    p = nl + 1;
  }
  free(held);
}

void imc_server_set_log(imc_server *s, imc_log_cb cb, void *ud) {
  s->log_cb = cb;
  s->log_ud = ud;
  release_held(s);
}

/* ---- setup --------------------------------------------------------- */

/* The storage thread with every signal blocked: signals are the
 * embedder's, for its own threads. */
static int start_storage(app *a) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  int rv = hstorage_new(&a->storage, a->loop, a->db, STORAGE_BATCH_OPS, 1);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return rv;
}

/* Builds everything and binds the listener. Returns 0 or an exit code
 * after logging the reason. */
static int setup(imc_server *s) {
  app *a = &s->a;
  const imchatd_config *cfg = &s->cfg;
  int rv, code;

  hlog_info("imchatd %s (libimchat %s) starting: node %s", IMC_VERSION,
            imc_version(), cfg->node_id);
  if ((rv = hloop_new(&a->loop)) < 0) {
    hlog_error("event loop: %s", strerror(-rv));
    return IMCHATD_EXIT_FAIL;
  }
  hloop_set_grace_ms(a->loop, GRACE_MS);
  s->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s->efd < 0 || (rv = hloop_add_fd(a->loop, s->efd, on_request, s)) < 0) {
    hlog_error("event loop: %s", strerror(s->efd < 0 ? errno : -rv));
    return IMCHATD_EXIT_FAIL;
  }
  if ((rv = imc_memreg_new(&a->reg, NULL, NULL)) < 0 ||
      (rv = imc_membus_new(&a->bus, NULL)) < 0) {
    hlog_error("setup: %s", imc_strerror(rv));
    return IMCHATD_EXIT_FAIL;
  }
  if ((code = check_dev_login(cfg)) != 0 ||
      (code = hgateway_tls(cfg, &a->tls)) != 0 || (code = open_store(a)) != 0 ||
      (code = make_gateway(a)) != 0 || (code = make_router(a)) != 0 ||
      (code = make_worker(a)) != 0 || (code = make_api(a)) != 0 ||
      (code = make_http(a)) != 0)
    return code;
  if ((rv = imc_fanout_new(&a->fanout, a->gw, imc_membus_vtbl(), a->bus,
                           a->store, a->store_ud, NULL, 30000, NULL)) != 0) {
    hlog_error("fan-out: %s", imc_strerror(rv));
    return IMCHATD_EXIT_FAIL;
  }
  imc_metrics_source sources[] = {
      {imc_api_gateway_source(), a->gw},
      {imc_api_router_source(), a->router},
      {imc_api_worker_source(), a->worker},
      {hjwks_metrics_vtbl(), a->jwks}, /* last: only with --jwks-url */
  };
  size_t n_sources = sizeof(sources) / sizeof(sources[0]) - !a->jwks;
  imc_api_set_sources(a->api, sources, n_sources);
  imc_api_set_group_changed(a->api, group_changed, a);
  hloop_set_gateway(a->loop, a->gw);
  if (hloop_add_hook(a->loop, dispatch_due, dispatch_run, a) < 0 ||
      hloop_add_hook(a->loop, router_due, router_run, a) < 0 ||
      hloop_add_hook(a->loop, worker_due, worker_run, a) < 0) {
    hlog_error("event loop: out of memory");
    return IMCHATD_EXIT_FAIL;
  }
  /* Last: its end-of-turn hook submits what the hooks above queued. */
  if ((rv = start_storage(a)) < 0) {
    hlog_error("storage thread: %s", strerror(-rv));
    return IMCHATD_EXIT_FAIL;
  }
  if ((rv = imc_worker_start(a->worker)) != 0 ||
      (rv = imc_fanout_start(a->fanout)) != 0) {
    hlog_error("start: %s", imc_strerror(rv));
    return IMCHATD_EXIT_FAIL;
  }
  if (hloop_listen_tls(a->loop, cfg->listen, a->tls, s->bound,
                       sizeof(s->bound)) < 0)
    return IMCHATD_EXIT_FAIL; /* logged */
  hlog_info("listening on %s%s", s->bound, a->tls ? " (TLS)" : "");
  log_connect_hint(cfg, s->bound);
  if (a->web) {
    const char *http = a->tls ? "https" : "http";
    if (strncmp(s->bound, "0.0.0.0:", 8) == 0)
      hlog_info("web page: open %s://127.0.0.1:%s/", http, s->bound + 8);
    else
      hlog_info("web page: open %s://%s/", http, s->bound);
  }
  return 0;
}

static void put_err(char *err, size_t errcap, const char *msg) {
  if (err && errcap > 0)
    snprintf(err, errcap, "%s", msg);
}

int hserver_new(imc_server **out, imchatd_config *cfg, char *err,
                size_t errcap) {
  imc_server *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    imchatd_config_free(cfg);
    put_err(err, errcap, "out of memory");
    return IMC_ERR_NOMEM;
  }
  s->cfg = *cfg;
  memset(cfg, 0, sizeof(*cfg));
  s->a.cfg = &s->cfg;
  s->efd = -1;
  s->sink.level = s->cfg.log_level;
  s->sink.cb = server_log;
  s->sink.ud = s;
  s->starting = 1;
  const hlog_sink *prev = hlog_bind(&s->sink);
  int code = setup(s);
  s->starting = 0;
  if (code != 0) {
    put_err(err, errcap, s->first_err[0] ? s->first_err : "setup failed");
    free(s->held); /* the reason is in err; nothing is printed */
    s->held = NULL;
    s->held_len = 0;
    imc_server_del(s);
    hlog_bind(prev);
    return code == IMCHATD_EXIT_USAGE ? IMC_ERR_INVALID_ARGUMENT : IMC_ERR_IO;
  }
  if (s->first_err[0]) { /* logged, yet not fatal: held like the rest */
    s->starting = 1;
    server_log(s, IMC_LOG_ERROR, s->first_err);
    s->starting = 0;
  }
  hlog_bind(prev);
  *out = s;
  return 0;
}

/* getopt_long's state is global. */
static pthread_mutex_t parse_mu = PTHREAD_MUTEX_INITIALIZER;

int imc_server_new(imc_server **out, int argc, const char *const *argv,
                   char *err, size_t errcap) {
  if (out)
    *out = NULL;
  if (out == NULL || argc < 1 || argv == NULL) {
    put_err(err, errcap, "imc_server_new: out, argc or argv missing");
    return IMC_ERR_INVALID_ARGUMENT;
  }
  /* getopt_long permutes its argv: a copy. */
  char **args = calloc((size_t)argc + 1, sizeof(*args));
  if (args == NULL) {
    put_err(err, errcap, "out of memory");
    return IMC_ERR_NOMEM;
  }
  for (int i = 0; i < argc; i++) {
    if (argv[i] == NULL) {
      free(args);
      put_err(err, errcap, "imc_server_new: argv holds a NULL");
      return IMC_ERR_INVALID_ARGUMENT;
    }
    args[i] = (char *)argv[i];
  }
  imchatd_config cfg;
  char why[512] = "";
  pthread_mutex_lock(&parse_mu);
  int code = imchatd_config_load(&cfg, IMCHATD_ROLE_SERVER, argc, args, why,
                                 sizeof(why));
  pthread_mutex_unlock(&parse_mu);
  free(args);
  if (code < 0 && cfg.mode != IMCHATD_SERVE) {
    snprintf(why, sizeof(why), "%s",
             cfg.mode == IMCHATD_TOKEN ? "the token subcommand is imchatd's"
                                       : "--help and --version are "
                                         "imchatd's");
    code = IMCHATD_EXIT_USAGE;
  }
  if (code >= 0) {
    imchatd_config_free(&cfg);
    put_err(err, errcap, why);
    return code == IMCHATD_EXIT_USAGE ? IMC_ERR_INVALID_ARGUMENT
                                      : IMC_ERR_NOMEM;
  }
  return hserver_new(out, &cfg, err, errcap);
}

const char *imc_server_address(const imc_server *s) {
  return s->bound;
}

int imc_server_run(imc_server *s) {
  if (s->ran)
    return IMC_ERR_CLOSED;
  s->ran = 1;
  const hlog_sink *prev = hlog_bind(&s->sink);
  release_held(s);
  int rv = hloop_run(s->a.loop);
  if (rv == 0) {
    drain(&s->a);
    hlog_info("stopped");
  }
  hlog_bind(prev);
  return rv < 0 ? IMC_ERR_IO : 0;
}

void imc_server_del(imc_server *s) {
  if (s == NULL)
    return;
  const hlog_sink *prev = hlog_bind(&s->sink);
  release_held(s);
  app_free(&s->a);
  hlog_bind(prev);
  if (s->efd >= 0)
    close(s->efd);
  imchatd_config_free(&s->cfg);
  free(s);
}
