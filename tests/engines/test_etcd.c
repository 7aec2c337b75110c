/*
 * The etcd registry engine (engines/etcd) against real etcd servers:
 *  - the registry conformance suite on the server scripts/test.sh starts
 *    (IMC_TEST_ETCD), each test under a key prefix of its own;
 *  - its own cases there: batching and order of writes, lookups larger
 *    than a transaction, a lease left to expire, failover to the next
 *    endpoint, node addresses published with the lease and looked up,
 *    bad arguments, deletion with work pending, allocation failures;
 *  - fault cases on an etcd the test starts itself: stopped (operations
 *    fail with IMC_ERR_UNAVAILABLE in time, health says so) and started
 *    again (operations work, an open watch reports RESYNC and goes on),
 *    and frozen (operations time out).
 *
 * The conformance suite's lose_state hook makes the registry forget
 * everything as an etcd restored empty would: it revokes every lease
 * that holds a key under the test's prefix, deletes the prefix, and
 * shuts down the engine's connections to etcd (as a server's restart
 * does), so keepalives find NOT_FOUND and watch streams break.
 */
#include "conformance.h"
#include "engine_test.h"
#include "testutil.h"

#include <imchat/engines/etcd.h>

#include "protocol/json.h"
#include "protocol/jsonw.h"
#include "util/alloc.h"

#include <check.h>
#include <curl/curl.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define WAIT_MS 15000

static const char *etcd_url; /* IMC_TEST_ETCD */
static eng_loop lp;
static int n_prefixes;
static char prefix[96];

static void new_prefix(void) {
  snprintf(prefix, sizeof(prefix), "/imchat-test/%d-%d/", (int)getpid(),
           ++n_prefixes);
}

static void on_log(void *ud, imc_log_level level, const char *line) {
  (void)ud;
  (void)level;
  fprintf(stderr, "%s\n", line);
}

/* An engine on lp for urls (comma-separated), under prefix, publishing
 * addr with its leases (NULL: no address). */
static imc_etcd *engine_new_addr(const char *urls, uint32_t timeout_ms,
                                 uint32_t max_ops, const char *addr,
                                 const imc_mem *mem) {
  imc_etcd_options *o;
  imc_etcd *e = NULL;
  if (imc_etcd_options_new(&o, mem) < 0)
    return NULL;
  if (imc_etcd_options_set_endpoints(o, urls) == 0 &&
      imc_etcd_options_set_prefix(o, prefix) == 0 &&
      imc_etcd_options_set_timeout_ms(o, timeout_ms) == 0 &&
      imc_etcd_options_set_max_txn_ops(o, max_ops) == 0 &&
      (addr == NULL || imc_etcd_options_set_node_address(o, addr) == 0) &&
      imc_etcd_options_set_log(o, mem ? NULL : on_log, NULL, IMC_LOG_INFO) == 0)
    imc_etcd_new(&e, lp.loop, o, mem);
  imc_etcd_options_del(o);
  return e;
}

static imc_etcd *engine_new(const char *urls, uint32_t timeout_ms,
                            uint32_t max_ops, const imc_mem *mem) {
  return engine_new_addr(urls, timeout_ms, max_ops, NULL, mem);
}

/* ------------------------------------------------------------------ */
/* Blocking HTTP to etcd, for the test's own view of the server         */
/* ------------------------------------------------------------------ */

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  imc_wbuf *b = ud;
  imc_wbuf_append(b, p, size * n);
  return size * n;
}

/* POST body to url+path (GET if body is NULL); the answer in out (NUL
 * terminated, freed by the caller with imc_wbuf_free). Returns the HTTP
 * status, or 0 if there was none. */
static long http(const char *url, const char *path, const char *body,
                 imc_wbuf *out) {
  char full[256];
  snprintf(full, sizeof(full), "%s%s", url, path);
  imc_wbuf_init(out, imc_mem_default());
  CURL *h = curl_easy_init();
  ck_assert_ptr_nonnull(h);
  curl_easy_setopt(h, CURLOPT_URL, full);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 3000L);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
  if (body != NULL)
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
  long code = 0;
  if (curl_easy_perform(h) == CURLE_OK)
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
  curl_easy_cleanup(h);
  imc_wbuf_append(out, "", 1);
  ck_assert_int_eq(out->err, 0);
  return code;
}

/* {"key": base64(k), "range_end": base64(k's prefix end)} */
static void prefix_range_json(imc_wbuf *b, const char *k) {
  size_t n = strlen(k);
  char end[128];
  memcpy(end, k, n);
  end[n - 1]++;
  imc_jsonw w;
  imc_wbuf_init(b, imc_mem_default());
  imc_jsonw_init(&w, b);
  imc_jsonw_object_begin(&w);
  imc_jsonw_key(&w, "key");
  imc_jsonw_base64(&w, (const uint8_t *)k, n);
  imc_jsonw_key(&w, "range_end");
  imc_jsonw_base64(&w, (const uint8_t *)end, n);
  imc_jsonw_object_end(&w);
  imc_wbuf_append(b, "", 1);
}

/* 1 if etcd holds the key prefix k (the test's own read). */
static int key_exists(const char *url, const char *k) {
  char full[256];
  snprintf(full, sizeof(full), "%s%s", prefix, k);
  imc_wbuf body, ans;
  imc_jsonw w;
  imc_wbuf_init(&body, imc_mem_default());
  imc_jsonw_init(&w, &body);
  imc_jsonw_object_begin(&w);
  imc_jsonw_key(&w, "key");
  imc_jsonw_base64(&w, (const uint8_t *)full, strlen(full));
  imc_jsonw_object_end(&w);
  imc_wbuf_append(&body, "", 1);
  ck_assert_int_eq(http(url, "/v3/kv/range", body.p, &ans), 200);
  imc_json_value root, kvs;
  ck_assert_int_eq(imc_json_parse(ans.p, ans.len - 1, &root), 0);
  int found = imc_json_member(&root, "kvs", &kvs) == 0;
  imc_wbuf_free(&ans);
  imc_wbuf_free(&body);
  return found;
}

/* Revokes every lease with a key under prefix, then deletes the prefix. */
static void forget_prefix(const char *url) {
  imc_wbuf ans, body;
  imc_json_value root, leases, l, id;
  ck_assert_int_eq(http(url, "/v3/lease/leases", "{}", &ans), 200);
  ck_assert_int_eq(imc_json_parse(ans.p, ans.len - 1, &root), 0);
  if (imc_json_member(&root, "leases", &leases) == 0) {
    size_t pos = 0;
    while (imc_json_array_next(&leases, &pos, &l) == 1) {
      char ids[32], req[96];
      ck_assert_int_eq(imc_json_member(&l, "ID", &id), 0);
      ck_assert_int_gt(imc_json_string(&id, ids, sizeof(ids)), 0);
      snprintf(req, sizeof(req), "{\"ID\":\"%s\",\"keys\":true}", ids);
      imc_wbuf ttl;
      ck_assert_int_eq(http(url, "/v3/lease/timetolive", req, &ttl), 200);
      /* keys are base64: find ours by encoding the prefix's first 3n
       * bytes, which encode the same whatever follows. */
      imc_wbuf enc;
      imc_wbuf_init(&enc, imc_mem_default());
      imc_wbuf_base64(&enc, (const uint8_t *)prefix, strlen(prefix) / 3 * 3);
      imc_wbuf_append(&enc, "", 1);
      if (strstr(ttl.p, enc.p) != NULL) {
        snprintf(req, sizeof(req), "{\"ID\":\"%s\"}", ids);
        imc_wbuf rv;
        http(url, "/v3/lease/revoke", req, &rv);
        imc_wbuf_free(&rv);
      }
      imc_wbuf_free(&enc);
      imc_wbuf_free(&ttl);
    }
  }
  imc_wbuf_free(&ans);
  prefix_range_json(&body, prefix);
  ck_assert_int_eq(http(url, "/v3/kv/deleterange", body.p, &ans), 200);
  imc_wbuf_free(&ans);
  imc_wbuf_free(&body);
}

/* Shuts down every socket of this process connected to 127.0.0.1:port:
 * what the clients of a restarting server see. */
static int break_connections(uint16_t port) {
  DIR *d = opendir("/proc/self/fd");
  ck_assert_ptr_nonnull(d);
  int n = 0;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    int fd = atoi(de->d_name);
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    if (fd > 2 && getpeername(fd, (struct sockaddr *)&a, &len) == 0 &&
        a.sin_family == AF_INET && ntohs(a.sin_port) == port) {
      shutdown(fd, SHUT_RDWR);
      n++;
    }
  }
  closedir(d);
  return n;
}

static uint16_t url_port(const char *url) {
  const char *c = strrchr(url, ':');
  ck_assert_ptr_nonnull(c);
  return (uint16_t)atoi(c + 1);
}

/* ------------------------------------------------------------------ */
/* The conformance factory                                              */
/* ------------------------------------------------------------------ */

static void *fx_create(void *ctx, const imc_clock *clock) {
  (void)ctx;
  (void)clock; /* etcd keeps its own time */
  eng_loop_init(&lp);
  new_prefix();
  return engine_new(etcd_url, 5000, 128, NULL);
}

static void fx_destroy(void *ctx, void *ud) {
  (void)ctx;
  imc_etcd_del(ud);
  eng_loop_fini(&lp);
}

static int fx_dispatch(void *ctx, void *ud) {
  (void)ctx;
  (void)ud;
  eng_loop_turn(&lp, 50);
  return 0;
}

static void fx_lose_state(void *ctx, void *ud) {
  (void)ctx;
  (void)ud;
  forget_prefix(etcd_url);
  ck_assert_int_gt(break_connections(url_port(etcd_url)), 0);
}

static conformance_factory factory = {
    .name = "etcd",
    .create = fx_create,
    .destroy = fx_destroy,
    .dispatch = fx_dispatch,
    .lose_state = fx_lose_state,
    .real_clock = 1,
};

/* ------------------------------------------------------------------ */
/* Helpers for the engine's own cases                                   */
/* ------------------------------------------------------------------ */

static imc_etcd *eng;
static const imc_registry_vtbl *reg;

typedef struct res {
  int calls, status;
  uint64_t id;
} res;

static void on_done(void *p, int status) {
  res *r = p;
  r->calls++;
  r->status = status;
}

static void on_lease(void *p, int status, uint64_t id) {
  res *r = p;
  r->calls++;
  r->status = status;
  r->id = id;
}

/* Runs the loop until r completes; returns its status. */
static int wait_res(res *r, int rv) {
  if (rv < 0) {
    ck_assert_int_eq(r->calls, 0);
    return rv;
  }
  ck_assert(eng_loop_until(&lp, &r->calls, WAIT_MS));
  ck_assert_int_eq(r->calls, 1);
  return r->status;
}

static uint64_t grant(const char *node, uint32_t ttl) {
  res r = {0};
  ck_assert_int_eq(wait_res(&r, reg->lease_grant(eng, node, ttl, on_lease, &r)),
                   0);
  ck_assert_uint_ne(r.id, 0);
  return r.id;
}

static int keepalive(uint64_t id) {
  res r = {0};
  return wait_res(&r, reg->lease_keepalive(eng, id, on_done, &r));
}

static int put(uint64_t lease, const char *user, const char *dev,
               const char *node, uint64_t conn) {
  imc_reg_entry en = {sizeof(en), user, dev, node, conn};
  res r = {0};
  return wait_res(&r, reg->register_conn(eng, lease, &en, on_done, &r));
}

typedef struct found {
  int calls, status;
  size_t n_users, n;
  size_t per_user[512];
  char last_node[80];
  uint64_t last_conn;
} found;

static void on_found(void *p, int status, const imc_reg_entry *const *e,
                     const size_t *offsets, size_t n_users) {
  found *f = p;
  f->calls++;
  f->status = status;
  if (status != 0)
    return;
  f->n_users = n_users;
  f->n = offsets[n_users];
  for (size_t i = 0; i < n_users && i < 512; i++)
    f->per_user[i] = offsets[i + 1] - offsets[i];
  if (f->n > 0) {
    snprintf(f->last_node, sizeof(f->last_node), "%s", e[f->n - 1]->node_id);
    f->last_conn = e[f->n - 1]->conn_id;
  }
}

static int lookup(const char *const *users, size_t n, found *f) {
  memset(f, 0, sizeof(*f));
  int rv = reg->lookup_many(eng, users, n, on_found, f);
  if (rv < 0)
    return rv;
  ck_assert(eng_loop_until(&lp, &f->calls, WAIT_MS));
  ck_assert_int_eq(f->calls, 1);
  return f->status;
}

typedef struct addr_res {
  int calls, status;
  char addr[300];
} addr_res;

static void on_addr(void *p, int status, const char *addr) {
  addr_res *a = p;
  a->calls++;
  a->status = status;
  if (status == 0)
    snprintf(a->addr, sizeof(a->addr), "%s", addr);
  else
    ck_assert_ptr_null(addr);
}

/* Looks node up with e; returns the status (its address in a->addr). */
static int node_address(imc_etcd *e, const char *node, addr_res *a) {
  memset(a, 0, sizeof(*a));
  int rv = imc_etcd_node_address(e, node, on_addr, a);
  if (rv < 0) {
    ck_assert_int_eq(a->calls, 0);
    return rv;
  }
  ck_assert(eng_loop_until(&lp, &a->calls, WAIT_MS));
  ck_assert_int_eq(a->calls, 1);
  return a->status;
}

typedef struct events {
  int puts, deletes, resyncs;
  char last_key[160];
} events;

static void on_event(void *p, imc_watch_event_type type, const char *key,
                     const uint8_t *value, size_t len) {
  events *ev = p;
  (void)value;
  (void)len;
  if (type == IMC_WATCH_RESYNC) {
    ev->resyncs++;
    return;
  }
  if (type == IMC_WATCH_PUT)
    ev->puts++;
  else
    ev->deletes++;
  snprintf(ev->last_key, sizeof(ev->last_key), "%s", key);
}

static int count_reaches(const int *counter, int want, int64_t ms) {
  int64_t end = eng_now_ms() + ms;
  while (*counter < want && eng_now_ms() < end)
    eng_loop_turn(&lp, 50);
  return *counter >= want;
}

static int health_becomes(int want, int64_t ms) {
  int64_t end = eng_now_ms() + ms;
  while (imc_etcd_health(eng) != want && eng_now_ms() < end)
    eng_loop_turn(&lp, 50);
  return imc_etcd_health(eng) == want;
}

static void eng_setup(void) {
  eng_loop_init(&lp);
  new_prefix();
  eng = engine_new(etcd_url, 5000, 128, NULL);
  ck_assert_ptr_nonnull(eng);
  reg = imc_etcd_registry_vtbl();
}

static void eng_teardown(void) {
  imc_etcd_del(eng);
  eng = NULL;
  eng_loop_fini(&lp);
}

/* ------------------------------------------------------------------ */
/* Cases on the shared server                                           */
/* ------------------------------------------------------------------ */

START_TEST(health_follows_the_server) {
  ck_assert_int_eq(imc_etcd_health(NULL), IMC_ERR_INVALID_ARGUMENT);
  /* Unknown until the first probe is answered. */
  ck_assert_int_eq(imc_etcd_health(eng), IMC_ERR_UNAVAILABLE);
  ck_assert(health_becomes(0, WAIT_MS));
}
END_TEST

/* A device's register and unregister made in one turn apply in order,
 * and so do two registers of one device. */
START_TEST(writes_apply_in_call_order) {
  uint64_t l = grant("gw-1", 60);
  imc_reg_entry a1 = {sizeof(a1), "alice", "phone", "gw-1", 1};
  imc_reg_entry a2 = {sizeof(a2), "alice", "phone", "gw-1", 2};
  imc_reg_entry b1 = {sizeof(b1), "bob", "phone", "gw-1", 3};
  res r[5] = {{0}};
  ck_assert_int_eq(reg->register_conn(eng, l, &a1, on_done, &r[0]), 0);
  ck_assert_int_eq(reg->register_conn(eng, l, &b1, on_done, &r[1]), 0);
  ck_assert_int_eq(reg->unregister(eng, &b1, on_done, &r[2]), 0);
  ck_assert_int_eq(reg->register_conn(eng, l, &a2, on_done, &r[3]), 0);
  ck_assert_int_eq(reg->unregister(eng, &a1, on_done, &r[4]), 0);
  for (int i = 0; i < 5; i++) {
    ck_assert(eng_loop_until(&lp, &r[i].calls, WAIT_MS));
    ck_assert_int_eq(r[i].status, 0);
  }
  const char *users[] = {"alice", "bob"};
  found f;
  ck_assert_int_eq(lookup(users, 2, &f), 0);
  ck_assert_uint_eq(f.per_user[0], 1);
  ck_assert_uint_eq(f.per_user[1], 0);
  ck_assert_uint_eq(f.last_conn, 2);
}
END_TEST

/* Writes of one turn share a transaction; a put on a lease that is gone
 * fails alone (with NOT_FOUND), the unregisters and the puts on other
 * leases made with it still happen. */
START_TEST(a_gone_lease_fails_only_its_puts) {
  uint64_t live = grant("gw-1", 60), gone = grant("gw-2", 60);
  ck_assert_int_eq(put(live, "alice", "phone", "gw-1", 1), 0);
  res rv = {0};
  ck_assert_int_eq(wait_res(&rv, reg->lease_revoke(eng, gone, on_done, &rv)),
                   0);
  imc_reg_entry bob = {sizeof(bob), "bob", "phone", "gw-2", 2};
  imc_reg_entry alice = {sizeof(alice), "alice", "phone", "gw-1", 1};
  imc_reg_entry carol = {sizeof(carol), "carol", "web", "gw-1", 3};
  res r[4] = {{0}};
  ck_assert_int_eq(reg->register_conn(eng, gone, &bob, on_done, &r[0]), 0);
  ck_assert_int_eq(reg->unregister(eng, &alice, on_done, &r[1]), 0);
  ck_assert_int_eq(reg->register_conn(eng, live, &carol, on_done, &r[2]), 0);
  ck_assert_int_eq(reg->unregister(eng, &bob, on_done, &r[3]), 0);
  for (int i = 0; i < 4; i++)
    ck_assert(eng_loop_until(&lp, &r[i].calls, WAIT_MS));
  ck_assert_int_eq(r[0].status, IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(r[1].status, 0);
  ck_assert_int_eq(r[2].status, 0);
  ck_assert_int_eq(r[3].status, 0);
  const char *users[] = {"alice", "bob", "carol"};
  found f;
  ck_assert_int_eq(lookup(users, 3, &f), 0);
  ck_assert_uint_eq(f.per_user[0], 0);
  ck_assert_uint_eq(f.per_user[1], 0);
  ck_assert_uint_eq(f.per_user[2], 1);
}
END_TEST

/* More operations than a transaction holds: writes and lookups span
 * several transactions and all complete. */
START_TEST(batches_larger_than_a_transaction) {
  imc_etcd_del(eng);
  eng = engine_new(etcd_url, 5000, 5, NULL);
  ck_assert_ptr_nonnull(eng);
  uint64_t l = grant("gw-1", 60);
  enum { N = 23 };
  char users[N][16];
  const char *ids[N + 1];
  res r[N] = {{0}};
  for (int i = 0; i < N; i++) {
    snprintf(users[i], sizeof(users[i]), "u%d", i);
    ids[i] = users[i];
    imc_reg_entry en = {sizeof(en), users[i], "web", "gw-1", (uint64_t)i};
    ck_assert_int_eq(reg->register_conn(eng, l, &en, on_done, &r[i]), 0);
  }
  for (int i = 0; i < N; i++) {
    ck_assert(eng_loop_until(&lp, &r[i].calls, WAIT_MS));
    ck_assert_int_eq(r[i].status, 0);
  }
  ids[N] = "not/an id"; /* invalid ids have no entries */
  found f;
  ck_assert_int_eq(lookup(ids, N + 1, &f), 0);
  ck_assert_uint_eq(f.n_users, N + 1);
  ck_assert_uint_eq(f.n, N);
  for (int i = 0; i < N; i++)
    ck_assert_uint_eq(f.per_user[i], 1);
  ck_assert_uint_eq(f.per_user[N], 0);
  ck_assert_uint_eq(f.last_conn, N - 1);
  ck_assert_str_eq(f.last_node, "gw-1");
}
END_TEST

/* A burst of unregisters at etcd's own transaction limit (128, the
 * engine's default too), as when a gateway loses many connections at
 * once: etcd counts a transaction's operations against each nested
 * transaction's, so a batch of them must stay under the limit. Every
 * unregister applies. */
START_TEST(unregister_burst_at_the_server_limit) {
  imc_etcd_del(eng);
  eng = engine_new(etcd_url, 5000, 128, NULL);
  ck_assert_ptr_nonnull(eng);
  uint64_t l = grant("gw-1", 60);
  enum { N = 300 };
  static char users[N][16];
  static const char *ids[N];
  static res r[N];
  imc_reg_entry en[N];
  memset(r, 0, sizeof(r));
  for (int i = 0; i < N; i++) {
    snprintf(users[i], sizeof(users[i]), "u%d", i);
    ids[i] = users[i];
    en[i] =
        (imc_reg_entry){sizeof(en[i]), users[i], "web", "gw-1", (uint64_t)i};
    ck_assert_int_eq(reg->register_conn(eng, l, &en[i], on_done, &r[i]), 0);
  }
  for (int i = 0; i < N; i++) {
    ck_assert(eng_loop_until(&lp, &r[i].calls, WAIT_MS));
    ck_assert_int_eq(r[i].status, 0);
  }
  memset(r, 0, sizeof(r));
  for (int i = 0; i < N; i++)
    ck_assert_int_eq(reg->unregister(eng, &en[i], on_done, &r[i]), 0);
  for (int i = 0; i < N; i++) {
    ck_assert(eng_loop_until(&lp, &r[i].calls, WAIT_MS));
    ck_assert_int_eq(r[i].status, 0);
  }
  found f;
  ck_assert_int_eq(lookup(ids, N, &f), 0);
  ck_assert_uint_eq(f.n_users, N);
  ck_assert_uint_eq(f.n, 0);
}
END_TEST

/* A lease nobody keeps alive runs out (etcd's minimum TTL is 2 s with
 * its default election timeout): its entries vanish and watchers see
 * them deleted. */
START_TEST(unkept_lease_expires) {
  events ev = {0};
  uint64_t wid;
  ck_assert_int_eq(reg->watch(eng, "", on_event, &ev, &wid), 0);
  uint64_t l = grant("gw-1", 1);
  ck_assert_int_eq(put(l, "alice", "phone", "gw-1", 1), 0);
  ck_assert_int_eq(put(l, "bob", "phone", "gw-1", 2), 0);
  ck_assert(count_reaches(&ev.puts, 2, WAIT_MS));
  int64_t t0 = eng_now_ms();
  ck_assert(count_reaches(&ev.deletes, 2, WAIT_MS));
  ck_assert_int_ge(eng_now_ms() - t0, 500);
  const char *users[] = {"alice", "bob"};
  found f;
  ck_assert_int_eq(lookup(users, 2, &f), 0);
  ck_assert_uint_eq(f.n, 0);
  ck_assert_int_eq(keepalive(l), IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(put(l, "alice", "phone", "gw-1", 3), IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(ev.resyncs, 0);
  ck_assert_int_eq(reg->watch_cancel(eng, wid), 0);
}
END_TEST

/* A grant by an engine with an address puts the node key and the
 * address key on the lease; lookups find it, and no longer once the
 * lease is revoked. Unknown nodes, and nodes granted by an engine
 * without an address, have none. */
START_TEST(node_address_lives_with_the_lease) {
  imc_etcd *plain = eng;
  eng = engine_new_addr(etcd_url, 5000, 128, "10.0.0.5:9093", NULL);
  ck_assert_ptr_nonnull(eng);
  uint64_t l = grant("gw-1", 60);
  addr_res a;
  ck_assert_int_eq(node_address(eng, "gw-1", &a), 0);
  ck_assert_str_eq(a.addr, "10.0.0.5:9093");
  ck_assert(key_exists(etcd_url, "nodes/gw-1"));
  /* Any engine on the registry reads it. */
  ck_assert_int_eq(node_address(plain, "gw-1", &a), 0);
  ck_assert_str_eq(a.addr, "10.0.0.5:9093");
  ck_assert_int_eq(node_address(eng, "gw-2", &a), IMC_ERR_NOT_FOUND);

  imc_etcd *with_addr = eng;
  eng = plain;
  grant("gw-3", 60);
  ck_assert(key_exists(etcd_url, "nodes/gw-3"));
  ck_assert_int_eq(node_address(eng, "gw-3", &a), IMC_ERR_NOT_FOUND);

  res r = {0};
  ck_assert_int_eq(wait_res(&r, reg->lease_revoke(eng, l, on_done, &r)), 0);
  ck_assert_int_eq(node_address(with_addr, "gw-1", &a), IMC_ERR_NOT_FOUND);
  ck_assert(!key_exists(etcd_url, "nodes/gw-1"));
  imc_etcd_del(with_addr);
}
END_TEST

/* The address of a node whose lease runs out goes with it. */
START_TEST(node_address_expires_with_the_lease) {
  imc_etcd_del(eng);
  eng = engine_new_addr(etcd_url, 5000, 128, "gw-1.example:9093", NULL);
  ck_assert_ptr_nonnull(eng);
  grant("gw-1", 1);
  int64_t t0 = eng_now_ms();
  addr_res a;
  ck_assert_int_eq(node_address(eng, "gw-1", &a), 0);
  ck_assert_str_eq(a.addr, "gw-1.example:9093");
  int64_t end = t0 + WAIT_MS;
  while (node_address(eng, "gw-1", &a) == 0) {
    ck_assert_msg(eng_now_ms() < end, "the address outlived its lease");
    eng_loop_turn(&lp, 100);
  }
  ck_assert_int_eq(a.status, IMC_ERR_NOT_FOUND);
  ck_assert_int_ge(eng_now_ms() - t0, 500);
  ck_assert(!key_exists(etcd_url, "nodes/gw-1"));
}
END_TEST

/* The first endpoint refuses connections: requests go to the next. */
START_TEST(fails_over_to_the_next_endpoint) {
  imc_etcd_del(eng);
  char urls[256];
  snprintf(urls, sizeof(urls), "http://127.0.0.1:%u,%s",
           (unsigned)eng_free_port(), etcd_url);
  eng = engine_new(urls, 5000, 128, NULL);
  ck_assert_ptr_nonnull(eng);
  events ev = {0};
  uint64_t wid;
  ck_assert_int_eq(reg->watch(eng, "alice/", on_event, &ev, &wid), 0);
  uint64_t l = grant("gw-1", 60);
  ck_assert_int_eq(put(l, "alice", "phone", "gw-1", 1), 0);
  ck_assert(count_reaches(&ev.puts, 1, WAIT_MS));
  ck_assert_int_eq(keepalive(l), 0);
  ck_assert(health_becomes(0, WAIT_MS));
}
END_TEST

static int cb_calls;
static uint64_t cb_wid;

static void on_event_cancel(void *p, imc_watch_event_type type, const char *key,
                            const uint8_t *value, size_t len) {
  (void)type;
  (void)key;
  (void)value;
  (void)len;
  cb_calls++;
  ck_assert_int_eq(reg->watch_cancel(p, cb_wid), 0);
  ck_assert_int_eq(reg->watch_cancel(p, cb_wid), IMC_ERR_NOT_FOUND);
}

/* A callback cancels its own watch while a message holds more events. */
START_TEST(watch_cancelled_from_its_callback) {
  events other = {0};
  uint64_t wid2;
  ck_assert_int_eq(reg->watch(eng, "", on_event_cancel, eng, &cb_wid), 0);
  ck_assert_int_eq(reg->watch(eng, "", on_event, &other, &wid2), 0);
  uint64_t l = grant("gw-1", 60);
  ck_assert_int_eq(put(l, "alice", "phone", "gw-1", 1), 0);
  ck_assert_int_eq(put(l, "bob", "phone", "gw-1", 2), 0);
  res r = {0};
  ck_assert_int_eq(wait_res(&r, reg->lease_revoke(eng, l, on_done, &r)), 0);
  ck_assert(count_reaches(&other.deletes, 2, WAIT_MS));
  ck_assert_int_eq(cb_calls, 1);
  ck_assert_int_eq(reg->watch_cancel(eng, wid2), 0);
}
END_TEST

START_TEST(bad_arguments) {
  imc_etcd_options *o;
  imc_etcd *e;
  ck_assert_int_eq(imc_etcd_options_new(NULL, NULL), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_etcd_options_new(&o, NULL), 0);
  ck_assert_int_eq(imc_etcd_new(&e, lp.loop, o, NULL),
                   IMC_ERR_INVALID_ARGUMENT); /* no endpoints */
  const char *bad_urls[] = {"",         "127.0.0.1:2379", "ftp://x",
                            "http://",  "http://a b",     "http://a,",
                            ",http://a"};
  for (size_t i = 0; i < sizeof(bad_urls) / sizeof(bad_urls[0]); i++)
    ck_assert_int_eq(imc_etcd_options_set_endpoints(o, bad_urls[i]),
                     IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_etcd_options_set_endpoints(o, "http://a/,https://b"), 0);
  ck_assert_int_eq(imc_etcd_options_set_prefix(o, ""),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_etcd_options_set_timeout_ms(o, 99),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_etcd_options_set_max_txn_ops(o, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  char long_addr[258];
  memset(long_addr, 'a', 257);
  long_addr[257] = '\0';
  const char *bad_addrs[] = {"",        "a b:1",       "a\tb",   "h\x01:1",
                             "h\x7f:1", "h\xc3\xa9:1", long_addr};
  for (size_t i = 0; i < sizeof(bad_addrs) / sizeof(bad_addrs[0]); i++)
    ck_assert_int_eq(imc_etcd_options_set_node_address(o, bad_addrs[i]),
                     IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_etcd_options_set_node_address(o, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_etcd_options_set_node_address(NULL, "h:1"),
                   IMC_ERR_INVALID_ARGUMENT);
  long_addr[256] = '\0';
  ck_assert_int_eq(imc_etcd_options_set_node_address(o, long_addr), 0);
  ck_assert_int_eq(imc_etcd_options_set_node_address(o, "[::1]:9093"), 0);
  ck_assert_int_eq(imc_etcd_new(NULL, lp.loop, o, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_etcd_new(&e, NULL, o, NULL), IMC_ERR_INVALID_ARGUMENT);
  imc_etcd_options_del(o);

  res r = {0};
  uint64_t wid;
  imc_reg_entry ok = {sizeof(ok), "alice", "phone", "gw-1", 1};
  imc_reg_entry small = ok, bad_id = ok;
  small.struct_size = offsetof(imc_reg_entry, conn_id);
  bad_id.device_id = "a/b";
  const char *null_id[] = {"alice", NULL};
  ck_assert_int_eq(reg->lease_grant(eng, "bad id", 60, on_lease, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(reg->lease_grant(eng, "gw-1", 0, on_lease, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(reg->lease_keepalive(eng, 0, on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(reg->lease_revoke(eng, 1, NULL, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(reg->register_conn(eng, 0, &ok, on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(reg->register_conn(eng, 1, &small, on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(reg->unregister(eng, &bad_id, on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(reg->lookup_many(eng, NULL, 1, on_found, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(reg->lookup_many(eng, null_id, 2, on_found, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(reg->watch(eng, "", NULL, NULL, &wid),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(reg->watch_cancel(eng, 0), IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(reg->watch_cancel(eng, 77), IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(r.calls, 0);
  addr_res a = {0};
  ck_assert_int_eq(imc_etcd_node_address(NULL, "gw-1", on_addr, &a),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_etcd_node_address(eng, NULL, on_addr, &a),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_etcd_node_address(eng, "", on_addr, &a),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_etcd_node_address(eng, "gw/1", on_addr, &a),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_etcd_node_address(eng, "gw-1", NULL, &a),
                   IMC_ERR_INVALID_ARGUMENT);
  /* Nothing was asked: nothing completes. */
  for (int i = 0; i < 3; i++)
    eng_loop_turn(&lp, 10);
  ck_assert_int_eq(a.calls, 0);
}
END_TEST

static imc_etcd *closing_eng;

static void on_done_call_again(void *p, int status) {
  on_done(p, status);
  imc_reg_entry en = {sizeof(en), "alice", "phone", "gw-1", 1};
  ck_assert_int_eq(reg->register_conn(closing_eng, 1, &en, on_done, p),
                   IMC_ERR_CLOSED);
}

static void on_addr_call_again(void *p, int status, const char *addr) {
  on_addr(p, status, addr);
  ck_assert_int_eq(imc_etcd_node_address(closing_eng, "gw-1", on_addr, p),
                   IMC_ERR_CLOSED);
}

/* Deleting the engine completes everything pending with CLOSED, once. */
START_TEST(del_completes_pending_operations) {
  uint64_t l = grant("gw-1", 60);
  res r[3] = {{0}};
  found f = {0};
  events ev = {0};
  uint64_t wid;
  imc_reg_entry en = {sizeof(en), "alice", "phone", "gw-1", 1};
  const char *users[] = {"alice"};
  closing_eng = eng;
  ck_assert_int_eq(reg->watch(eng, "", on_event, &ev, &wid), 0);
  ck_assert_int_eq(reg->register_conn(eng, l, &en, on_done_call_again, &r[0]),
                   0);
  ck_assert_int_eq(reg->unregister(eng, &en, on_done, &r[1]), 0);
  ck_assert_int_eq(reg->lease_keepalive(eng, l, on_done, &r[2]), 0);
  ck_assert_int_eq(reg->lookup_many(eng, users, 1, on_found, &f), 0);
  addr_res a = {0};
  ck_assert_int_eq(imc_etcd_node_address(eng, "gw-1", on_addr_call_again, &a),
                   0);
  eng_loop_turn(&lp, 0); /* some may be on the wire */
  imc_etcd_del(eng);
  eng = NULL;
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(r[i].calls, 1);
  ck_assert_int_eq(r[0].status, IMC_ERR_CLOSED);
  ck_assert_int_eq(f.calls, 1);
  ck_assert_int_eq(a.calls, 1);
  ck_assert_int_eq(a.status, IMC_ERR_CLOSED);
  ck_assert_int_eq(ev.puts + ev.deletes + ev.resyncs, 0);
  /* Nothing is left on the loop. */
  for (int i = 0; i < 5; i++)
    eng_loop_turn(&lp, 10);
}
END_TEST

/* Counts a call that failed at once or completed with an error; the
 * completion must come in time. */
static int failed(int rv, const int *calls, const int *status, long k) {
  if (rv < 0)
    return 1;
  ck_assert_msg(eng_loop_until(&lp, calls, WAIT_MS),
                "a completion never came with allocation %ld failing", k);
  return *status != 0;
}

/* Every allocation of the engine failing in turn: calls fail with
 * IMC_ERR_NOMEM or complete, nothing leaks, nothing hangs. */
START_TEST(allocation_failures) {
  int clean = 0;
  for (long k = 0; !clean && k < 2000; k++) {
    test_mem tm;
    test_mem_init(&tm);
    tm.fail_at = k;
    imc_etcd *e = engine_new_addr(etcd_url, 2000, 128, "gw-1:9093", &tm.mem);
    if (e == NULL) {
      ck_assert_int_eq(tm.live, 0);
      continue;
    }
    res lr = {0}, pr = {0}, ur = {0};
    found f = {0};
    events ev = {0};
    uint64_t wid = 0;
    imc_reg_entry en = {sizeof(en), "alice", "phone", "gw-1", 1};
    const char *users[] = {"alice", "bob"};
    int failures = reg->watch(e, "", on_event, &ev, &wid) < 0;
    failures += failed(reg->lease_grant(e, "gw-1", 60, on_lease, &lr),
                       &lr.calls, &lr.status, k);
    if (lr.calls == 1 && lr.status == 0)
      failures += failed(reg->register_conn(e, lr.id, &en, on_done, &pr),
                         &pr.calls, &pr.status, k);
    failures += failed(reg->lookup_many(e, users, 2, on_found, &f), &f.calls,
                       &f.status, k);
    addr_res a = {0};
    failures += failed(imc_etcd_node_address(e, "gw-1", on_addr, &a), &a.calls,
                       &a.status, k);
    failures +=
        failed(reg->unregister(e, &en, on_done, &ur), &ur.calls, &ur.status, k);
    imc_etcd_del(e);
    ck_assert_int_eq(tm.live, 0);
    /* Done once an iteration needed fewer allocations than k + 1. */
    clean = failures == 0 && tm.count <= k;
  }
  ck_assert(clean);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Fault cases on an etcd of the test's own                             */
/* ------------------------------------------------------------------ */

typedef struct own_etcd {
  pid_t pid;
  uint16_t client, peer;
  char dir[64], url[64];
} own_etcd;

static own_etcd own;

#define OWN_ADDR "127.0.0.1:9093" /* the fault cases' node address */

static int own_healthy(void) {
  imc_wbuf b;
  long code = http(own.url, "/health", NULL, &b);
  int ok = code == 200 && strstr(b.p, "\"true\"") != NULL;
  imc_wbuf_free(&b);
  return ok;
}

static void own_start(void) {
  char data[96], log[96], curl_url[64], peer_url[64], cluster[96];
  snprintf(data, sizeof(data), "%s/data", own.dir);
  snprintf(log, sizeof(log), "%s/log", own.dir);
  snprintf(curl_url, sizeof(curl_url), "http://127.0.0.1:%u",
           (unsigned)own.client);
  snprintf(peer_url, sizeof(peer_url), "http://127.0.0.1:%u",
           (unsigned)own.peer);
  snprintf(cluster, sizeof(cluster), "n1=%s", peer_url);
  char *argv[] = {"etcd",   "--name",
                  "n1",     "--data-dir",
                  data,     "--listen-client-urls",
                  curl_url, "--advertise-client-urls",
                  curl_url, "--listen-peer-urls",
                  peer_url, "--initial-advertise-peer-urls",
                  peer_url, "--initial-cluster",
                  cluster,  NULL};
  own.pid = eng_spawn(argv, log);
  ck_assert(eng_wait_port(own.client, 30000));
  int64_t end = eng_now_ms() + 30000;
  while (!own_healthy()) {
    ck_assert_msg(eng_now_ms() < end, "etcd did not become healthy");
    usleep(50 * 1000);
  }
}

static void own_setup(void) {
  snprintf(own.dir, sizeof(own.dir), "/tmp/imc-etcd-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(own.dir));
  own.client = eng_free_port();
  own.peer = eng_free_port();
  snprintf(own.url, sizeof(own.url), "http://127.0.0.1:%u",
           (unsigned)own.client);
  own_start();
  eng_loop_init(&lp);
  new_prefix();
  eng = engine_new_addr(own.url, 1000, 128, OWN_ADDR, NULL);
  ck_assert_ptr_nonnull(eng);
  reg = imc_etcd_registry_vtbl();
  ck_assert(health_becomes(0, WAIT_MS));
}

static void own_teardown(void) {
  imc_etcd_del(eng);
  eng = NULL;
  eng_loop_fini(&lp);
  if (own.pid > 0)
    eng_kill(own.pid, SIGKILL);
  own.pid = 0;
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", own.dir);
  ck_assert_int_eq(system(cmd), 0);
}

/* etcd stops: every operation fails with UNAVAILABLE well within the
 * timeout and health says so; it starts again: operations work, the
 * watch reports RESYNC and then events again, the lease survived. */
START_TEST(server_stopped_and_started_again) {
  events ev = {0};
  uint64_t wid;
  ck_assert_int_eq(reg->watch(eng, "", on_event, &ev, &wid), 0);
  uint64_t l = grant("gw-1", 60);
  ck_assert_int_eq(put(l, "alice", "phone", "gw-1", 1), 0);
  ck_assert(count_reaches(&ev.puts, 1, WAIT_MS));
  addr_res a;
  ck_assert_int_eq(node_address(eng, "gw-1", &a), 0);

  eng_kill(own.pid, SIGKILL);
  own.pid = 0;
  int64_t t0 = eng_now_ms();
  ck_assert_int_eq(keepalive(l), IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(put(l, "bob", "phone", "gw-1", 2), IMC_ERR_UNAVAILABLE);
  const char *users[] = {"alice"};
  found f;
  ck_assert_int_eq(lookup(users, 1, &f), IMC_ERR_UNAVAILABLE);
  res r = {0};
  ck_assert_int_eq(
      wait_res(&r, reg->lease_grant(eng, "gw-2", 60, on_lease, &r)),
      IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(node_address(eng, "gw-1", &a), IMC_ERR_UNAVAILABLE);
  ck_assert_int_lt(eng_now_ms() - t0, 1000); /* refused: no waiting */
  ck_assert_int_eq(imc_etcd_health(eng), IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(ev.resyncs, 0);

  own_start();
  ck_assert(health_becomes(0, WAIT_MS));
  ck_assert(count_reaches(&ev.resyncs, 1, WAIT_MS));
  ck_assert_int_eq(keepalive(l), 0);
  ck_assert_int_eq(put(l, "bob", "phone", "gw-1", 2), 0);
  ck_assert(count_reaches(&ev.puts, 2, WAIT_MS));
  ck_assert_str_eq(ev.last_key, "bob/phone");
  ck_assert_int_eq(lookup(users, 1, &f), 0);
  ck_assert_uint_eq(f.n, 1);
  ck_assert_int_eq(node_address(eng, "gw-1", &a), 0);
  ck_assert_str_eq(a.addr, OWN_ADDR);
  ck_assert_int_eq(ev.resyncs, 1);
}
END_TEST

/* etcd freezes (SIGSTOP): operations time out with UNAVAILABLE after
 * the timeout (1 s here), not before and not much later; it thaws: they
 * work again. */
START_TEST(server_frozen_times_out) {
  uint64_t l = grant("gw-1", 60);
  kill(own.pid, SIGSTOP);
  int64_t t0 = eng_now_ms();
  res r[3] = {{0}};
  found f = {0};
  imc_reg_entry en = {sizeof(en), "alice", "phone", "gw-1", 1};
  imc_reg_entry en2 = {sizeof(en2), "alice", "laptop", "gw-1", 2};
  const char *users[] = {"alice"};
  ck_assert_int_eq(reg->lease_keepalive(eng, l, on_done, &r[0]), 0);
  ck_assert_int_eq(reg->register_conn(eng, l, &en, on_done, &r[1]), 0);
  ck_assert_int_eq(reg->lookup_many(eng, users, 1, on_found, &f), 0);
  addr_res a = {0};
  ck_assert_int_eq(imc_etcd_node_address(eng, "gw-1", on_addr, &a), 0);
  eng_loop_turn(&lp, 300);
  /* Waits behind the frozen transaction: its own deadline still holds. */
  ck_assert_int_eq(reg->register_conn(eng, l, &en2, on_done, &r[2]), 0);
  for (int i = 0; i < 3; i++) {
    ck_assert(eng_loop_until(&lp, &r[i].calls, 5000));
    ck_assert_msg(r[i].status == IMC_ERR_UNAVAILABLE, "op %d: %d after %lld ms",
                  i, r[i].status, (long long)(eng_now_ms() - t0));
  }
  ck_assert(eng_loop_until(&lp, &f.calls, 5000));
  ck_assert_int_eq(f.status, IMC_ERR_UNAVAILABLE);
  ck_assert(eng_loop_until(&lp, &a.calls, 5000));
  ck_assert_int_eq(a.status, IMC_ERR_UNAVAILABLE);
  int64_t took = eng_now_ms() - t0;
  ck_assert_int_ge(took, 1000);
  ck_assert_int_lt(took, 2500);
  ck_assert_int_eq(imc_etcd_health(eng), IMC_ERR_UNAVAILABLE);
  kill(own.pid, SIGCONT);
  ck_assert(health_becomes(0, WAIT_MS));
  ck_assert_int_eq(keepalive(l), 0);
  ck_assert_int_eq(put(l, "alice", "phone", "gw-1", 1), 0);
  ck_assert_int_eq(node_address(eng, "gw-1", &a), 0);
  ck_assert_str_eq(a.addr, OWN_ADDR);
}
END_TEST

static Suite *etcd_suite(void) {
  Suite *s = suite_create("etcd");
  TCase *tc = tcase_create("engine");
  tcase_add_checked_fixture(tc, eng_setup, eng_teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, health_follows_the_server);
  tcase_add_test(tc, writes_apply_in_call_order);
  tcase_add_test(tc, a_gone_lease_fails_only_its_puts);
  tcase_add_test(tc, batches_larger_than_a_transaction);
  tcase_add_test(tc, unregister_burst_at_the_server_limit);
  tcase_add_test(tc, unkept_lease_expires);
  tcase_add_test(tc, fails_over_to_the_next_endpoint);
  tcase_add_test(tc, node_address_lives_with_the_lease);
  tcase_add_test(tc, node_address_expires_with_the_lease);
  tcase_add_test(tc, watch_cancelled_from_its_callback);
  tcase_add_test(tc, bad_arguments);
  tcase_add_test(tc, del_completes_pending_operations);
  tcase_add_test(tc, allocation_failures);
  suite_add_tcase(s, tc);

  TCase *faults = tcase_create("faults");
  tcase_add_checked_fixture(faults, own_setup, own_teardown);
  tcase_set_timeout(faults, 120);
  tcase_add_test(faults, server_stopped_and_started_again);
  tcase_add_test(faults, server_frozen_times_out);
  suite_add_tcase(s, faults);
  return s;
}

int main(void) {
  etcd_url = eng_env_or_skip("IMC_TEST_ETCD");
  curl_global_init(CURL_GLOBAL_DEFAULT);
  factory.registry = imc_etcd_registry_vtbl();
  SRunner *sr = srunner_create(conformance_registry_suite(&factory));
  srunner_add_suite(sr, etcd_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  curl_global_cleanup();
  return failed == 0 ? 0 : 1;
}
