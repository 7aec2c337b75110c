/*
 * libFuzzer target: plain HTTP requests (the request line comes from the
 * data) through a gateway into the HTTP API, over the embedded SQLite
 * store and a real router. The bearer is a valid user token or the admin
 * token, and the Accept header JSON or protobuf, as the size says.
 */
#include <imchat/imchat.h>
#include <imchat/membus.h>
#include <imchat/memreg.h>
#include <imchat/sqlite.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static ssize_t t_send(void *ud, void *conn_ud, const struct iovec *iov, int n) {
  (void)ud;
  (void)conn_ud;
  size_t total = 0;
  for (int i = 0; i < n; i++)
    total += iov[i].iov_len;
  return (ssize_t)total;
}

static void t_close(void *ud, void *conn_ud) {
  (void)ud;
  (void)conn_ud;
}

static const imc_transport_vtbl transport = {sizeof(imc_transport_vtbl), t_send,
                                             t_close, NULL};

static int l_deliver(void *ud, const char *node, const char *user,
                     const char *skip, const imc_msg *msg, imc_count_cb done,
                     void *done_ud) {
  (void)ud;
  (void)node;
  (void)user;
  (void)skip;
  (void)msg;
  done(done_ud, 0, 0);
  return 0;
}

static int l_status(void *ud, const char *node, const char *user,
                    const char *device, const char *msg_id,
                    const char *client_msg_id, imc_delivery_state state,
                    const char *recipient, imc_done_cb done, void *done_ud) {
  (void)ud;
  (void)node;
  (void)user;
  (void)device;
  (void)msg_id;
  (void)client_msg_id;
  (void)state;
  (void)recipient;
  done(done_ud, 0);
  return 0;
}

static const imc_gwlink_vtbl gwlink = {sizeof(imc_gwlink_vtbl), l_deliver,
                                       l_status};

static imc_api *api;
static imc_router *router; /* both live for the whole run */

static void appended(void *ud, int status) {
  (void)ud;
  if (status != 0)
    abort();
}
static char token[IMC_JWT_SIGN_MAX];

static void setup(void) {
  imc_sqlite *db;
  imc_memreg *reg;
  imc_membus *bus;
  imc_router_options *ro;
  imc_api_options *ao;
  if (imc_sqlite_new(&db, ":memory:", NULL, NULL) != 0 ||
      imc_memreg_new(&reg, NULL, NULL) != 0 ||
      imc_membus_new(&bus, NULL) != 0 || imc_router_options_new(&ro, NULL))
    abort();
  imc_router_options_set_registry(ro, imc_memreg_vtbl(), reg);
  imc_router_options_set_seq(ro, imc_sqlite_seq_vtbl(), db);
  imc_router_options_set_dedup(ro, imc_sqlite_dedup_vtbl(), db);
  imc_router_options_set_store(ro, imc_sqlite_store_vtbl(), db);
  imc_router_options_set_queue(ro, imc_sqlite_bus_vtbl(), db);
  imc_router_options_set_group_bus(ro, imc_membus_vtbl(), bus);
  imc_router_options_set_gwlink(ro, &gwlink, NULL);
  if (imc_router_new(&router, ro, NULL) != 0 ||
      imc_api_options_new(&ao, NULL) != 0)
    abort();
  imc_router_options_del(ro);
  imc_api_options_set_store(ao, imc_sqlite_store_vtbl(), db);
  imc_api_options_set_groups(ao, imc_api_router_groups(), router);
  imc_api_options_set_admin_token(ao, "admin");
  if (imc_api_new(&api, ao, NULL) != 0)
    abort();
  imc_api_options_del(ao);
  /* Something to read: a message in history and in alice's inbox. */
  imc_msg m = {.struct_size = sizeof(imc_msg),
               .msg_id = "m1",
               .conversation_id = "p:alice:bob",
               .seq = 1,
               .from_user = "bob",
               .to_user = "alice",
               .group_id = "",
               .body = (const uint8_t *)"hi",
               .body_len = 2,
               .content_type = "text/plain",
               .sent_at_ms = 1,
               .client_msg_id = "c1",
               .from_device = "phone"};
  const imc_msg *msgs[] = {&m};
  imc_inbox_entry entry = {"alice", &m};
  imc_sqlite_store_vtbl()->append(db, msgs, 1, &entry, 1, appended, NULL);
  int64_t now = (int64_t)time(NULL);
  imc_jwt_sign_hs256((const uint8_t *)"fuzz", 4, "alice", NULL, NULL, NULL, now,
                     now + 86400, token, sizeof(token));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (api == NULL)
    setup();
  imc_gateway_options *opt;
  imc_gateway *gw;
  if (imc_gateway_options_new(&opt, NULL) != 0)
    return 0;
  imc_gateway_options_set_transport(opt, &transport, NULL);
  imc_gateway_options_set_jwt_secret(opt, (const uint8_t *)"fuzz", 4);
  imc_gateway_options_set_http_handler(opt, imc_api_handler_vtbl(), api);
  int rv = imc_gateway_new(&gw, opt, NULL);
  imc_gateway_options_del(opt);
  if (rv != 0)
    return 0;
  const imc_metrics_source sources[] = {{imc_api_gateway_source(), gw},
                                        {imc_api_router_source(), router}};
  imc_api_set_sources(api, sources, 2);
  imc_conn *c;
  if (imc_gateway_conn_new(gw, &c, NULL) == 0) {
    char req[8192];
    size_t n = size < 2048 ? size : 2048;
    memcpy(req, data, n);
    n += (size_t)snprintf(req + n, sizeof(req) - n,
                          " HTTP/1.1\r\nHost: f\r\nAuthorization: Bearer %s\r\n"
                          "Accept: %s\r\n\r\n",
                          (size & 1) ? token : "admin",
                          (size & 2) ? "application/x-protobuf" : "*/*");
    imc_gateway_conn_recv(gw, c, (const uint8_t *)req, n);
    imc_gateway_flush(gw);
  }
  imc_api_set_sources(api, NULL, 0);
  imc_gateway_del(gw);
  return 0;
}
