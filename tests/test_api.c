/*
 * The HTTP API driven the way a client reaches it: requests go into a
 * real gateway over a mock transport, the gateway hands them to the api,
 * and the answers are parsed from the bytes the "socket" received. The
 * store is a mock that records calls, fails on demand and can complete
 * later; group membership goes through a real router over mocks that
 * just succeed.
 */
#include <imchat/api.h>
#include <imchat/router.h>
#include <imchat/worker.h>
#include <imchat/jwt.h>

#include "im.pb-c.h"
#include "protocol/json.h"
#include "protocol/utf8.h"
#include "testutil.h"

#include <check.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SECRET "test-secret-0123456789"
#define ADMIN "admin-token-0123456789"
#define T0 1700000000000LL /* wall clock at start, ms */

/* ------------------------------------------------------------------ */
/* Mock store                                                           */
/* ------------------------------------------------------------------ */

#define MAX_MEMBERS 16

typedef struct mstore {
  int fail;         /* fetches and group calls return this at once */
  int status;       /* fetches complete with this */
  int group_status; /* group calls complete with this */
  int async;        /* fetches keep their completion for later */
  imc_fetch_cb cb;  /* the fetch waiting to complete */
  void *cb_ud;
  int inbox_calls, history_calls;
  char user[80], conv[160];
  uint64_t after;
  uint32_t limit;
  /* the page every fetch returns */
  imc_msg msgs[3];
  uint64_t cursors[3];
  size_t n;
  int has_more;
  /* group table */
  char groups[MAX_MEMBERS][2][IMC_ID_MAX + 1];
  size_t n_members;
} mstore;

static void store_page(mstore *s, int status) {
  const imc_msg *p[3];
  for (size_t i = 0; i < s->n; i++)
    p[i] = &s->msgs[i];
  imc_fetch_cb cb = s->cb;
  s->cb = NULL;
  cb(s->cb_ud, status, status ? NULL : p, status ? NULL : s->cursors,
     status ? 0 : s->n, status ? 0 : s->has_more);
}

static int fetch(mstore *s, uint64_t after, uint32_t limit, imc_fetch_cb cb,
                 void *cb_ud) {
  if (s->fail)
    return s->fail;
  s->after = after;
  s->limit = limit;
  s->cb = cb;
  s->cb_ud = cb_ud;
  if (!s->async)
    store_page(s, s->status);
  return 0;
}

static int st_fetch_inbox(void *ud, const char *user, uint64_t after,
                          uint32_t limit, imc_fetch_cb done, void *done_ud) {
  mstore *s = ud;
  s->inbox_calls++;
  snprintf(s->user, sizeof(s->user), "%s", user);
  return fetch(s, after, limit, done, done_ud);
}

static int st_fetch_history(void *ud, const char *conv, uint64_t after,
                            uint32_t limit, imc_fetch_cb done, void *done_ud) {
  mstore *s = ud;
  s->history_calls++;
  snprintf(s->conv, sizeof(s->conv), "%s", conv);
  return fetch(s, after, limit, done, done_ud);
}

static int st_append(void *ud, const imc_msg *const *msgs, size_t n_msgs,
                     const imc_inbox_entry *entries, size_t n_entries,
                     imc_done_cb done, void *done_ud) {
  (void)ud;
  (void)msgs;
  (void)n_msgs;
  (void)entries;
  (void)n_entries;
  done(done_ud, 0);
  return 0;
}

static long member_find(mstore *s, const char *g, const char *u) {
  for (size_t i = 0; i < s->n_members; i++)
    if (strcmp(s->groups[i][0], g) == 0 && strcmp(s->groups[i][1], u) == 0)
      return (long)i;
  return -1;
}

static void member_add(mstore *s, const char *g, const char *u) {
  if (member_find(s, g, u) >= 0)
    return;
  ck_assert_uint_lt(s->n_members, MAX_MEMBERS);
  snprintf(s->groups[s->n_members][0], IMC_ID_MAX + 1, "%s", g);
  snprintf(s->groups[s->n_members][1], IMC_ID_MAX + 1, "%s", u);
  s->n_members++;
}

static int st_group_add(void *ud, const char *g, const char *u,
                        imc_done_cb done, void *done_ud) {
  mstore *s = ud;
  if (s->fail)
    return s->fail;
  if (s->group_status == 0)
    member_add(s, g, u);
  done(done_ud, s->group_status);
  return 0;
}

static int st_group_remove(void *ud, const char *g, const char *u,
                           imc_done_cb done, void *done_ud) {
  mstore *s = ud;
  if (s->fail)
    return s->fail;
  long i = member_find(s, g, u);
  if (s->group_status == 0 && i >= 0) {
    memmove(s->groups[i], s->groups[i + 1],
            (s->n_members - (size_t)i - 1) * sizeof(s->groups[0]));
    s->n_members--;
  }
  done(done_ud, s->group_status);
  return 0;
}

static int st_group_members(void *ud, const char *g, imc_list_cb done,
                            void *done_ud) {
  mstore *s = ud;
  if (s->fail)
    return s->fail;
  const char *items[MAX_MEMBERS];
  size_t n = 0;
  for (size_t i = 0; i < s->n_members; i++)
    if (strcmp(s->groups[i][0], g) == 0)
      items[n++] = s->groups[i][1];
  done(done_ud, s->group_status, s->group_status ? NULL : items,
       s->group_status ? 0 : n);
  return 0;
}

static const imc_store_vtbl store_vt = {sizeof(imc_store_vtbl),
                                        st_append,
                                        st_fetch_inbox,
                                        st_fetch_history,
                                        NULL,
                                        st_group_add,
                                        st_group_remove,
                                        st_group_members};

/* ------------------------------------------------------------------ */
/* Router backends that just succeed                                    */
/* ------------------------------------------------------------------ */

/* Nobody is online: every user of the batch has no entry. */
static int r_lookup_many(void *ud, const char *const *users, size_t n,
                         imc_lookup_many_cb done, void *done_ud) {
  (void)ud;
  size_t offsets[65] = {0};
  ck_assert_uint_le(n, 64);
  for (size_t i = 0; i < n; i++)
    ck_assert_ptr_nonnull(users[i]);
  done(done_ud, 0, NULL, offsets, n);
  return 0;
}

static const imc_registry_vtbl registry_vt = {
    .struct_size = sizeof(imc_registry_vtbl), .lookup_many = r_lookup_many};

static int s_next(void *ud, const char *key, imc_seq_cb done, void *done_ud) {
  static uint64_t seq;
  (void)ud;
  (void)key;
  done(done_ud, 0, ++seq);
  return 0;
}

static const imc_seq_vtbl seq_vt = {sizeof(imc_seq_vtbl), s_next};

static int d_test_and_set(void *ud, const char *key, const uint8_t *value,
                          size_t len, uint32_t ttl, imc_dedup_cb done,
                          void *done_ud) {
  (void)ud;
  (void)key;
  (void)value;
  (void)len;
  (void)ttl;
  done(done_ud, 0, 0, NULL, 0);
  return 0;
}

static int d_set(void *ud, const char *key, const uint8_t *value, size_t len,
                 uint32_t ttl, imc_done_cb done, void *done_ud) {
  (void)ud;
  (void)key;
  (void)value;
  (void)len;
  (void)ttl;
  done(done_ud, 0);
  return 0;
}

static int d_get(void *ud, const char *key, imc_dedup_cb done, void *done_ud) {
  (void)ud;
  (void)key;
  done(done_ud, 0, 0, NULL, 0);
  return 0;
}

static const imc_dedup_vtbl dedup_vt = {sizeof(imc_dedup_vtbl), d_test_and_set,
                                        d_set, d_get, NULL};

static int poll_fail; /* the worker's queue refuses to poll */

static int q_publish(void *ud, const char *topic, const uint8_t *key,
                     size_t key_len, const uint8_t *value, size_t value_len,
                     imc_done_cb done, void *done_ud) {
  (void)ud;
  (void)topic;
  (void)key;
  (void)key_len;
  (void)value;
  (void)value_len;
  done(done_ud, 0);
  return 0;
}

static int q_poll(void *ud, const char *topic, const char *group, size_t max,
                  imc_bus_batch_cb done, void *done_ud) {
  (void)ud;
  (void)topic;
  (void)group;
  (void)max;
  (void)done;
  (void)done_ud;
  return poll_fail ? IMC_ERR_UNAVAILABLE : IMC_ERR_INVALID_ARGUMENT;
}

static int q_commit(void *ud, const char *topic, const char *group,
                    int32_t partition, uint64_t offset, imc_done_cb done,
                    void *done_ud) {
  (void)ud;
  (void)topic;
  (void)group;
  (void)partition;
  (void)offset;
  done(done_ud, 0);
  return 0;
}

static const imc_bus_vtbl bus_vt = {sizeof(imc_bus_vtbl), q_publish, q_poll,
                                    q_commit};

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

static const imc_gwlink_vtbl gwlink_vt = {sizeof(imc_gwlink_vtbl), l_deliver,
                                          l_status};

/* ------------------------------------------------------------------ */
/* Transport: one client socket                                         */
/* ------------------------------------------------------------------ */

/* ------------------------------------------------------------------ */
/* Harness                                                              */
/* ------------------------------------------------------------------ */

enum { NO_ADMIN = 1, NO_ROUTER = 2 };

typedef struct harness {
  test_clock tc;
  test_mem tm;
  mstore st;
  imc_router *rt;
  imc_api *api;
  imc_gateway *gw;
  test_sock cl;
  imc_conn *c;
  int changed; /* group_changed calls */
  int log_lines, warnings;
  char changed_group[IMC_ID_MAX + 1];
} harness;

static harness H;

/* The last answer. */
typedef struct resp {
  int status;
  char head[1024];
  char ctype[128];
  char *body; /* NUL-terminated copy */
  size_t len;
} resp;

static resp R;

static void on_group_changed(void *ud, const char *group) {
  harness *h = ud;
  h->changed++;
  snprintf(h->changed_group, sizeof(h->changed_group), "%s", group);
}

static void on_log(void *ud, imc_log_level level, const char *line) {
  harness *h = ud;
  ck_assert_uint_gt(strlen(line), 0);
  h->log_lines++;
  h->warnings += level <= IMC_LOG_WARN;
}

static imc_router *make_router(const imc_mem *mem, mstore *st) {
  imc_router_options *o;
  imc_router *rt;
  ck_assert_int_eq(imc_router_options_new(&o, mem), 0);
  ck_assert_int_eq(imc_router_options_set_registry(o, &registry_vt, NULL), 0);
  ck_assert_int_eq(imc_router_options_set_seq(o, &seq_vt, NULL), 0);
  ck_assert_int_eq(imc_router_options_set_dedup(o, &dedup_vt, NULL), 0);
  ck_assert_int_eq(imc_router_options_set_store(o, &store_vt, st), 0);
  ck_assert_int_eq(imc_router_options_set_queue(o, &bus_vt, NULL), 0);
  ck_assert_int_eq(imc_router_options_set_group_bus(o, &bus_vt, NULL), 0);
  ck_assert_int_eq(imc_router_options_set_gwlink(o, &gwlink_vt, NULL), 0);
  ck_assert_int_eq(imc_router_new(&rt, o, mem), 0);
  imc_router_options_del(o);
  return rt;
}

static imc_gateway *make_gateway(const imc_mem *mem, imc_api *api) {
  imc_gateway_options *o;
  imc_gateway *gw;
  ck_assert_int_eq(imc_gateway_options_new(&o, mem), 0);
  ck_assert_int_eq(
      imc_gateway_options_set_transport(o, &test_sock_transport, NULL), 0);
  ck_assert_int_eq(imc_gateway_options_set_jwt_secret(
                       o, (const uint8_t *)SECRET, strlen(SECRET)),
                   0);
  ck_assert_int_eq(imc_gateway_options_set_clock(o, &H.tc.clock), 0);
  ck_assert_int_eq(
      imc_gateway_options_set_http_handler(o, imc_api_handler_vtbl(), api), 0);
  ck_assert_int_eq(imc_gateway_new(&gw, o, mem), 0);
  imc_gateway_options_del(o);
  return gw;
}

/*
 * The sources imchatd sets, in its order: the gateway and the worker if
 * given, the router of the fixture if there is one.
 */
static int attach(imc_api *api, imc_gateway *gw, imc_worker *w) {
  imc_metrics_source src[3];
  size_t n = 0;
  if (gw != NULL)
    src[n++] = (imc_metrics_source){imc_api_gateway_source(), gw};
  if (H.rt != NULL)
    src[n++] = (imc_metrics_source){imc_api_router_source(), H.rt};
  if (w != NULL)
    src[n++] = (imc_metrics_source){imc_api_worker_source(), w};
  return imc_api_set_sources(api, src, n);
}

static void h_setup_with(int flags) {
  memset(&H, 0, sizeof(H));
  test_clock_init(&H.tc, T0);
  test_mem_init(&H.tm);
  if (!(flags & NO_ROUTER))
    H.rt = make_router(&H.tm.mem, &H.st);
  imc_api_options *o;
  ck_assert_int_eq(imc_api_options_new(&o, &H.tm.mem), 0);
  ck_assert_int_eq(imc_api_options_set_store(o, &store_vt, &H.st), 0);
  if (H.rt != NULL)
    ck_assert_int_eq(
        imc_api_options_set_groups(o, imc_api_router_groups(), H.rt), 0);
  if (!(flags & NO_ADMIN))
    ck_assert_int_eq(imc_api_options_set_admin_token(o, ADMIN), 0);
  ck_assert_int_eq(imc_api_options_set_clock(o, &H.tc.clock), 0);
  ck_assert_int_eq(imc_api_options_set_log(o, on_log, &H, IMC_LOG_DEBUG), 0);
  ck_assert_int_eq(imc_api_new(&H.api, o, &H.tm.mem), 0);
  imc_api_options_del(o);
  imc_api_set_group_changed(H.api, on_group_changed, &H);
  H.gw = make_gateway(&H.tm.mem, H.api);
  ck_assert_int_eq(attach(H.api, H.gw, NULL), 0);
}

static void h_setup(void) {
  h_setup_with(0);
}

static void h_teardown(void) {
  ck_assert_uint_eq(imc_api_pending(H.api), 0);
  imc_gateway_del(H.gw);
  imc_api_del(H.api);
  imc_router_del(H.rt);
  free(H.cl.out);
  free(R.body);
  memset(&R, 0, sizeof(R));
  ck_assert_int_eq(H.tm.live, 0);
}

static const char *token_for(const char *user, int64_t ttl_s) {
  static char tok[1024];
  int64_t now = T0 / 1000;
  ck_assert_int_gt(imc_jwt_sign_hs256((const uint8_t *)SECRET, strlen(SECRET),
                                      user, "phone", NULL, NULL, now,
                                      now + ttl_s, tok, sizeof(tok)),
                   0);
  return tok;
}

/* Sends a request on a fresh connection; the answer may come later. */
static void start(const char *method, const char *target, const char *bearer,
                  const char *accept) {
  char req[4096];
  int n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: test\r\n", method,
                   target);
  if (bearer)
    n += snprintf(req + n, sizeof(req) - (size_t)n,
                  "Authorization: Bearer %s\r\n", bearer);
  if (accept)
    n += snprintf(req + n, sizeof(req) - (size_t)n, "Accept: %s\r\n", accept);
  n += snprintf(req + n, sizeof(req) - (size_t)n, "\r\n");
  H.cl.len = 0;
  H.cl.closed = 0;
  ck_assert_int_eq(imc_gateway_conn_new(H.gw, &H.c, &H.cl), 0);
  imc_gateway_conn_recv(H.gw, H.c, (const uint8_t *)req, (size_t)n);
  imc_gateway_flush(H.gw);
}

/* Parses the answer the client has received; returns its status. */
static int answer(void) {
  imc_gateway_flush(H.gw);
  free(R.body);
  memset(&R, 0, sizeof(R));
  const char *p = (const char *)H.cl.out;
  const char *end = H.cl.len ? memmem(p, H.cl.len, "\r\n\r\n", 4) : NULL;
  ck_assert_msg(end != NULL, "no complete HTTP answer");
  size_t hl = (size_t)(end - p) + 4;
  ck_assert_uint_lt(hl, sizeof(R.head));
  memcpy(R.head, p, hl);
  sscanf(R.head, "HTTP/1.1 %d", &R.status);
  const char *ct = strstr(R.head, "Content-Type: ");
  ck_assert_ptr_nonnull(ct);
  sscanf(ct + 14, "%127[^\r]", R.ctype);
  size_t clen = 0;
  const char *cl = strstr(R.head, "Content-Length: ");
  ck_assert_ptr_nonnull(cl);
  sscanf(cl + 16, "%zu", &clen);
  ck_assert_uint_eq(H.cl.len - hl, clen);
  R.body = malloc(clen + 1);
  memcpy(R.body, p + hl, clen);
  R.body[clen] = '\0';
  R.len = clen;
  /* The gateway closes the connection once the answer is written. */
  ck_assert_int_eq(H.cl.closed, 1);
  return R.status;
}

static int req(const char *method, const char *target, const char *bearer,
               const char *accept) {
  start(method, target, bearer, accept);
  return answer();
}

static int get(const char *target, const char *bearer) {
  return req("GET", target, bearer, NULL);
}

/* The error code of a JSON error answer. */
static const char *error_code(void) {
  static char code[64];
  imc_json_value doc, err, c;
  ck_assert_str_eq(R.ctype, "application/json");
  ck_assert_int_eq(imc_json_parse(R.body, R.len, &doc), 0);
  ck_assert_int_eq(imc_json_member(&doc, "error", &err), 0);
  ck_assert_int_eq(imc_json_member(&err, "code", &c), 0);
  ck_assert_int_gt(imc_json_string(&c, code, sizeof(code)), 0);
  ck_assert_int_eq(imc_json_member(&err, "message", &c), 0);
  ck_assert_int_eq(c.type, IMC_JSON_STRING);
  return code;
}

static void expect_error(int status, const char *code) {
  ck_assert_int_eq(R.status, status);
  ck_assert_str_eq(error_code(), code);
}

/* A message with every field set and strings that need escaping. */
static void one_message(void) {
  static const uint8_t body[] = {'h', 'i', 0x00, 0xff};
  imc_msg m = {.struct_size = sizeof(imc_msg),
               .msg_id = "m-1",
               .conversation_id = "p:alice:bob",
               .seq = 7,
               .from_user = "alice",
               .to_user = "bob",
               .group_id = "",
               .body = body,
               .body_len = sizeof(body),
               .content_type = "text/plain; \"x\"",
               .sent_at_ms = T0,
               .client_msg_id = "c\"1\\\n\x01\xc3\xa9",
               .from_device = "phone"};
  H.st.msgs[0] = m;
  H.st.cursors[0] = 5;
  H.st.n = 1;
}

/* ------------------------------------------------------------------ */
/* GET /offline                                                         */
/* ------------------------------------------------------------------ */

START_TEST(offline_json) {
  one_message();
  ck_assert_int_eq(get("/offline", token_for("alice", 600)), 200);
  ck_assert_str_eq(R.ctype, "application/json");
  ck_assert_str_eq(
      R.body,
      "{\"messages\":[{\"msg_id\":\"m-1\",\"conversation_id\":\"p:alice:bob\","
      "\"seq\":7,\"from_user\":\"alice\",\"to_user\":\"bob\",\"group_id\":"
      "\"\",\"body\":\"aGkA/w==\",\"content_type\":\"text/plain; "
      "\\\"x\\\"\",\"sent_at_ms\":1700000000000,\"client_msg_id\":"
      "\"c\\\"1\\\\\\u000a\\u0001\xc3\xa9\",\"from_device\":\"phone\","
      "\"cursor\":5}],\"next_cursor\":5,\"has_more\":false}\n");
  ck_assert_int_eq(H.st.inbox_calls, 1);
  ck_assert_str_eq(H.st.user, "alice");
  ck_assert_uint_eq(H.st.after, 0);
  ck_assert_uint_eq(H.st.limit, 100);

  /* The escaped string reads back as the original. */
  imc_json_value doc, msgs, m, v;
  char s[64];
  size_t pos = 0;
  ck_assert_int_eq(imc_json_parse(R.body, R.len, &doc), 0);
  ck_assert_int_eq(imc_json_member(&doc, "messages", &msgs), 0);
  ck_assert_int_eq(imc_json_array_next(&msgs, &pos, &m), 1);
  ck_assert_int_eq(imc_json_member(&m, "client_msg_id", &v), 0);
  ck_assert_int_gt(imc_json_string(&v, s, sizeof(s)), 0);
  ck_assert_str_eq(s, H.st.msgs[0].client_msg_id);
  ck_assert_int_eq(imc_json_array_next(&msgs, &pos, &m), 0);
}
END_TEST

START_TEST(offline_many_and_has_more) {
  imc_msg a = {.struct_size = sizeof(imc_msg),
               .msg_id = "m-1",
               .conversation_id = "g:team",
               .seq = 1,
               .from_user = "bob",
               .to_user = "",
               .group_id = "team",
               .body = NULL,
               .body_len = 0,
               .content_type = "",
               .sent_at_ms = 1,
               .client_msg_id = "",
               .from_device = ""};
  imc_msg b = {.struct_size = sizeof(imc_msg),
               .msg_id = "m-2",
               .conversation_id = "g:team",
               .seq = 2,
               .from_user = "bob",
               .to_user = "",
               .group_id = "team",
               .body = (const uint8_t *)"abc",
               .body_len = 3,
               .content_type = "",
               .sent_at_ms = 2,
               .client_msg_id = "",
               .from_device = ""};
  H.st.msgs[0] = a;
  H.st.msgs[1] = b;
  H.st.cursors[0] = 10;
  H.st.cursors[1] = 11;
  H.st.n = 2;
  H.st.has_more = 1;
  ck_assert_int_eq(get("/offline?cursor=9&limit=2", token_for("alice", 600)),
                   200);
  ck_assert_uint_eq(H.st.after, 9);
  ck_assert_uint_eq(H.st.limit, 2);
  imc_json_value doc, msgs, m, v;
  int64_t x;
  size_t pos = 0;
  char s[32];
  ck_assert_int_eq(imc_json_parse(R.body, R.len, &doc), 0);
  ck_assert_int_eq(imc_json_member(&doc, "messages", &msgs), 0);
  ck_assert_int_eq(imc_json_array_next(&msgs, &pos, &m), 1);
  ck_assert_int_eq(imc_json_member(&m, "body", &v), 0);
  ck_assert_int_eq(imc_json_string(&v, s, sizeof(s)), 0); /* empty body */
  ck_assert_int_eq(imc_json_array_next(&msgs, &pos, &m), 1);
  ck_assert_int_eq(imc_json_member(&m, "body", &v), 0);
  ck_assert_int_gt(imc_json_string(&v, s, sizeof(s)), 0);
  ck_assert_str_eq(s, "YWJj");
  ck_assert_int_eq(imc_json_member(&m, "cursor", &v), 0);
  ck_assert_int_eq(imc_json_int64(&v, &x), 0);
  ck_assert_int_eq(x, 11);
  ck_assert_int_eq(imc_json_array_next(&msgs, &pos, &m), 0);
  ck_assert_int_eq(imc_json_member(&doc, "next_cursor", &v), 0);
  ck_assert_int_eq(imc_json_int64(&v, &x), 0);
  ck_assert_int_eq(x, 11);
  ck_assert_int_eq(imc_json_member(&doc, "has_more", &v), 0);
  ck_assert_int_eq(v.type, IMC_JSON_TRUE);
}
END_TEST

START_TEST(offline_empty_keeps_cursor) {
  ck_assert_int_eq(get("/offline?cursor=42", token_for("alice", 600)), 200);
  ck_assert_str_eq(R.body,
                   "{\"messages\":[],\"next_cursor\":42,\"has_more\":false}\n");
  ck_assert_int_eq(
      get("/offline?cursor=18446744073709551615", token_for("alice", 600)),
      200);
  ck_assert_str_eq(R.body, "{\"messages\":[],\"next_cursor\":"
                           "18446744073709551615,\"has_more\":false}\n");
}
END_TEST

START_TEST(offline_protobuf) {
  one_message();
  H.st.has_more = 1;
  ck_assert_int_eq(req("GET", "/offline?cursor=1", token_for("alice", 600),
                       "application/json;q=0.5, Application/X-Protobuf"),
                   200);
  ck_assert_str_eq(R.ctype, "application/x-protobuf");
  Imchat__V1__OfflinePage *pg =
      imchat__v1__offline_page__unpack(NULL, R.len, (const uint8_t *)R.body);
  ck_assert_ptr_nonnull(pg);
  ck_assert_uint_eq(pg->n_messages, 1);
  ck_assert_uint_eq(pg->next_cursor, 5);
  ck_assert_int_eq(pg->has_more, 1);
  ck_assert_uint_eq(pg->messages[0]->cursor, 5);
  const Imchat__V1__Message *m = pg->messages[0]->message;
  ck_assert_str_eq(m->msg_id, "m-1");
  ck_assert_str_eq(m->conversation_id, "p:alice:bob");
  ck_assert_uint_eq(m->seq, 7);
  ck_assert_str_eq(m->from_user, "alice");
  ck_assert_str_eq(m->to_user, "bob");
  ck_assert_uint_eq(m->body.len, 4);
  ck_assert_mem_eq(m->body.data, "hi\0\xff", 4);
  ck_assert_str_eq(m->content_type, "text/plain; \"x\"");
  ck_assert_int_eq(m->sent_at_ms, T0);
  ck_assert_str_eq(m->client_msg_id, H.st.msgs[0].client_msg_id);
  ck_assert_str_eq(m->from_device, "phone");
  imchat__v1__offline_page__free_unpacked(pg, NULL);

  /* An empty page: next_cursor is the request's cursor. */
  H.st.n = 0;
  H.st.has_more = 0;
  ck_assert_int_eq(req("GET", "/offline?cursor=3", token_for("alice", 600),
                       "application/x-protobuf"),
                   200);
  pg = imchat__v1__offline_page__unpack(NULL, R.len, (const uint8_t *)R.body);
  ck_assert_ptr_nonnull(pg);
  ck_assert_uint_eq(pg->n_messages, 0);
  ck_assert_uint_eq(pg->next_cursor, 3);
  ck_assert_int_eq(pg->has_more, 0);
  imchat__v1__offline_page__free_unpacked(pg, NULL);
}
END_TEST

static const char *const bad_params[] = {
    "/offline?limit=0",
    "/offline?limit=1001",
    "/offline?limit=",
    "/offline?limit=abc",
    "/offline?limit=99999999999999999999999",
    "/offline?cursor=",
    "/offline?cursor=-1",
    "/offline?cursor=%2B1",
    "/offline?cursor=1x",
    "/offline?cursor=0x10",
    "/offline?cursor=18446744073709551616",
    "/offline?cursor=%zz",
    /* every query part must decode to UTF-8 without NUL */
    "/offline?cursor=0&note=bad%ff%fe",
    "/offline?note=m%00first",
    "/offline?%c0%af=1",
    "/offline?x=%ed%a0%80",
    "/offline?x=%e2%82",
    "/offline?x=%f4%90%80%80",
    "/offline?x=%",
};

START_TEST(offline_bad_params) {
  ck_assert_int_eq(get(bad_params[_i], token_for("alice", 600)), 400);
  expect_error(400, "BAD_REQUEST");
  ck_assert_int_eq(H.st.inbox_calls, 0);
}
END_TEST

/* A stored string that is not UTF-8 (written before validation existed,
 * or by another writer) still yields a valid JSON page: U+FFFD. */
START_TEST(offline_json_invalid_utf8_stored) {
  one_message();
  H.st.msgs[0].content_type = "bad\xff\xfe";
  ck_assert_int_eq(get("/offline", token_for("alice", 600)), 200);
  ck_assert(imc_utf8_valid(R.body, R.len));
  ck_assert_ptr_nonnull(
      strstr(R.body, "\"content_type\":\"bad\xef\xbf\xbd\xef\xbf\xbd\""));
  imc_json_value doc;
  ck_assert_int_eq(imc_json_parse(R.body, R.len, &doc), 0);
}
END_TEST

START_TEST(offline_params_ok) {
  ck_assert_int_eq(
      get("/offline?limit=1000&cursor=%31%32&other=x", token_for("alice", 600)),
      200);
  ck_assert_uint_eq(H.st.after, 12);
  ck_assert_uint_eq(H.st.limit, 1000);
  ck_assert_int_eq(get("/offline?limit=1", token_for("alice", 600)), 200);
  ck_assert_uint_eq(H.st.limit, 1);
  ck_assert_uint_eq(H.st.after, 0);
}
END_TEST

START_TEST(offline_unauthenticated) {
  ck_assert_int_eq(get("/offline", NULL), 401);
  expect_error(401, "UNAUTHENTICATED");
  ck_assert_int_eq(get("/offline", "not-a-jwt"), 401);
  expect_error(401, "UNAUTHENTICATED");
  ck_assert_int_eq(get("/offline", token_for("alice", -60)), 401);
  expect_error(401, "UNAUTHENTICATED");
  /* The admin token is no user token. */
  ck_assert_int_eq(get("/offline", ADMIN), 401);
  ck_assert_int_eq(H.st.inbox_calls, 0);
}
END_TEST

/* ------------------------------------------------------------------ */
/* History                                                              */
/* ------------------------------------------------------------------ */

START_TEST(history_pair) {
  one_message();
  ck_assert_int_eq(get("/v1/conversations/p:alice:bob/messages?after_seq=3&"
                       "limit=10",
                       token_for("bob", 600)),
                   200);
  ck_assert_str_eq(H.st.conv, "p:alice:bob");
  ck_assert_uint_eq(H.st.after, 3);
  ck_assert_uint_eq(H.st.limit, 10);
  ck_assert_ptr_nonnull(strstr(R.body, "\"cursor\":5}"));
  /* Clients may encode the colons. */
  ck_assert_int_eq(get("/v1/conversations/p%3Aalice%3abob/messages",
                       token_for("alice", 600)),
                   200);
  ck_assert_str_eq(H.st.conv, "p:alice:bob");
  ck_assert_uint_eq(H.st.after, 0);
  ck_assert_uint_eq(H.st.limit, 100);
  ck_assert_int_eq(H.st.history_calls, 2);
  /* Protobuf too. */
  ck_assert_int_eq(req("GET", "/v1/conversations/p:alice:bob/messages",
                       token_for("alice", 600), "application/x-protobuf"),
                   200);
  ck_assert_str_eq(R.ctype, "application/x-protobuf");
}
END_TEST

START_TEST(history_pair_forbidden) {
  ck_assert_int_eq(
      get("/v1/conversations/p:alice:bob/messages", token_for("carol", 600)),
      403);
  expect_error(403, "FORBIDDEN");
  /* A prefix of a participant is not the participant. */
  ck_assert_int_eq(
      get("/v1/conversations/p:alice:bob/messages", token_for("ali", 600)),
      403);
  ck_assert_int_eq(get("/v1/conversations/p:alice:bob/messages", NULL), 401);
  ck_assert_int_eq(H.st.history_calls, 0);
}
END_TEST

static const char *const bad_convs[] = {
    "/v1/conversations/p:bob:alice/messages", /* not in byte order */
    "/v1/conversations/p:alice/messages",
    "/v1/conversations/p::alice/messages",
    "/v1/conversations/p:alice:bob:carol/messages",
    "/v1/conversations/p:al%20ice:bob/messages",
    "/v1/conversations/x:alice/messages",
    "/v1/conversations/alice/messages",
    "/v1/conversations/g:/messages",
    "/v1/conversations/g:te%21am/messages",
    "/v1/conversations/p%3/messages",
    "/v1/conversations/p:alice:bob%00/messages",
    "/v1/conversations/p:alice:bob/messages?after_seq=x",
    "/v1/conversations/p:alice:bob/messages?limit=0",
    "/v1/conversations/g:te%ffam/messages",
    "/v1/conversations/p:alice:bob%ff%fe/messages",
    "/v1/conversations/p:al%00ice:bob/messages",
    "/v1/conversations/p:alice:bob/messages?after_seq=1&x=%ff",
};

START_TEST(history_bad_request) {
  ck_assert_int_eq(get(bad_convs[_i], token_for("alice", 600)), 400);
  expect_error(400, "BAD_REQUEST");
  ck_assert_int_eq(H.st.history_calls, 0);
}
END_TEST

START_TEST(history_group) {
  member_add(&H.st, "team", "alice");
  member_add(&H.st, "team", "bob");
  ck_assert_int_eq(get("/v1/conversations/g:team/messages?after_seq=4",
                       token_for("bob", 600)),
                   200);
  ck_assert_str_eq(H.st.conv, "g:team");
  ck_assert_uint_eq(H.st.after, 4);
  ck_assert_int_eq(
      get("/v1/conversations/g%3Ateam/messages", token_for("carol", 600)), 403);
  expect_error(403, "FORBIDDEN");
  ck_assert_int_eq(
      get("/v1/conversations/g:nobody/messages", token_for("alice", 600)), 403);
  ck_assert_int_eq(H.st.history_calls, 1);
}
END_TEST

START_TEST(history_group_no_router) {
  ck_assert_int_eq(
      get("/v1/conversations/g:team/messages", token_for("bob", 600)), 503);
  expect_error(503, "UNAVAILABLE");
  ck_assert_int_eq(
      get("/v1/conversations/p:alice:bob/messages", token_for("bob", 600)),
      200);
  /* Without a router the group admin routes are unavailable too. */
  ck_assert_int_eq(req("PUT", "/v1/groups/team/members/bob", ADMIN, NULL), 503);
  ck_assert_int_eq(get("/v1/groups/team/members", ADMIN), 503);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Group membership                                                     */
/* ------------------------------------------------------------------ */

START_TEST(members_admin) {
  ck_assert_int_eq(req("PUT", "/v1/groups/team/members/alice", ADMIN, NULL),
                   200);
  ck_assert_str_eq(R.ctype, "application/json");
  ck_assert_str_eq(R.body, "{\"group_id\":\"team\",\"user_id\":\"alice\","
                           "\"member\":true}\n");
  ck_assert_int_eq(H.changed, 1);
  ck_assert_str_eq(H.changed_group, "team");
  ck_assert_int_eq(req("PUT", "/v1/groups/team/members/b%40x.org", ADMIN, NULL),
                   200);
  ck_assert_str_eq(R.body, "{\"group_id\":\"team\",\"user_id\":\"b@x.org\","
                           "\"member\":true}\n");
  ck_assert_int_eq(get("/v1/groups/team/members", ADMIN), 200);
  ck_assert_str_eq(R.body, "{\"members\":[\"alice\",\"b@x.org\"]}\n");
  /* The router's cache was refreshed: the new member reads history. */
  ck_assert_int_eq(
      get("/v1/conversations/g:team/messages", token_for("alice", 600)), 200);
  ck_assert_int_eq(req("DELETE", "/v1/groups/team/members/alice", ADMIN, NULL),
                   200);
  ck_assert_str_eq(R.body, "{\"group_id\":\"team\",\"user_id\":\"alice\","
                           "\"member\":false}\n");
  ck_assert_int_eq(H.changed, 3);
  ck_assert_int_eq(get("/v1/groups/team/members", ADMIN), 200);
  ck_assert_str_eq(R.body, "{\"members\":[\"b@x.org\"]}\n");
  ck_assert_int_eq(
      get("/v1/conversations/g:team/messages", token_for("alice", 600)), 403);
  ck_assert_int_eq(get("/v1/groups/empty/members", ADMIN), 200);
  ck_assert_str_eq(R.body, "{\"members\":[]}\n");
}
END_TEST

START_TEST(members_auth) {
  ck_assert_int_eq(req("PUT", "/v1/groups/team/members/alice", NULL, NULL),
                   401);
  expect_error(401, "UNAUTHENTICATED");
  ck_assert_int_eq(req("PUT", "/v1/groups/team/members/alice",
                       "admin-token-0123456788", NULL),
                   403);
  expect_error(403, "FORBIDDEN");
  ck_assert_int_eq(req("DELETE", "/v1/groups/team/members/alice",
                       "admin-token-012345678", NULL),
                   403);
  ck_assert_int_eq(get("/v1/groups/team/members", token_for("alice", 600)),
                   403);
  ck_assert_int_eq(get("/v1/groups/team/members", NULL), 401);
  ck_assert_int_eq(H.st.n_members, 0);
  ck_assert_int_eq(H.changed, 0);
  ck_assert_int_gt(H.log_lines, 0);
}
END_TEST

START_TEST(members_admin_disabled) {
  ck_assert_int_eq(req("PUT", "/v1/groups/team/members/alice", ADMIN, NULL),
                   403);
  expect_error(403, "FORBIDDEN");
  ck_assert_ptr_nonnull(strstr(R.body, "admin API disabled"));
  ck_assert_int_eq(get("/v1/groups/team/members", NULL), 403);
  ck_assert_ptr_nonnull(strstr(R.body, "admin API disabled"));
}
END_TEST

static const char *const bad_ids[] = {
    "/v1/groups/te%21am/members/alice",
    "/v1/groups/team/members/al%20ice",
    "/v1/groups/team/members/al%2Fice",
    "/v1/groups/team/members/"
    "a1234567890123456789012345678901234567890123456789012345678901234",
    "/v1/groups/team/members/%",
    "/v1/groups/%00/members/alice",
    "/v1/groups/t%ffeam/members/alice",
    "/v1/groups/team/members/bo%00b",
    "/v1/groups/team/members/bad%ff%fe",
    "/v1/groups/team/members/alice?x=%c3",
};

START_TEST(members_bad_ids) {
  ck_assert_int_eq(req("PUT", bad_ids[_i], ADMIN, NULL), 400);
  expect_error(400, "BAD_REQUEST");
  ck_assert_int_eq(H.st.n_members, 0);
}
END_TEST

START_TEST(members_store_failure) {
  H.st.group_status = IMC_ERR_IO;
  ck_assert_int_eq(req("PUT", "/v1/groups/team/members/alice", ADMIN, NULL),
                   503);
  expect_error(503, "UNAVAILABLE");
  ck_assert_int_eq(get("/v1/groups/team/members", ADMIN), 503);
  ck_assert_int_eq(
      get("/v1/conversations/g:team/messages", token_for("alice", 600)), 503);
  H.st.group_status = 0;
  H.st.fail = IMC_ERR_UNAVAILABLE;
  ck_assert_int_eq(req("DELETE", "/v1/groups/team/members/alice", ADMIN, NULL),
                   503);
  ck_assert_int_eq(get("/v1/groups/other/members", ADMIN), 503);
  ck_assert_int_eq(H.changed, 0);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Routing                                                              */
/* ------------------------------------------------------------------ */

START_TEST(wrong_method) {
  ck_assert_int_eq(req("POST", "/offline", token_for("alice", 600), NULL), 405);
  expect_error(405, "METHOD_NOT_ALLOWED");
  ck_assert_int_eq(get("/v1/groups/team/members/alice", ADMIN), 405);
  expect_error(405, "METHOD_NOT_ALLOWED");
  ck_assert_int_eq(req("PUT", "/v1/groups/team/members", ADMIN, NULL), 405);
  ck_assert_int_eq(req("DELETE", "/v1/conversations/p:a:b/messages",
                       token_for("a", 600), NULL),
                   405);
  ck_assert_int_eq(req("POST", "/metrics", NULL, NULL), 405);
  ck_assert_int_eq(H.st.inbox_calls + H.st.history_calls, 0);
}
END_TEST

static const char *const unknown_paths[] = {
    "/",
    "/offline/",
    "/offline/x",
    "/v1",
    "/v1/groups/team",
    "/v1/groups//members",
    "/v1/conversations/p:a:b",
    "/v2/groups/t/members",
    "/v1/groups/team/members/alice/x",
    "//offline",
    "/OFFLINE",
};

START_TEST(unknown_path) {
  ck_assert_int_eq(get(unknown_paths[_i], ADMIN), 404);
  expect_error(404, "NOT_FOUND");
}
END_TEST

/* ------------------------------------------------------------------ */
/* Backend failures and asynchronous completion                         */
/* ------------------------------------------------------------------ */

START_TEST(store_failure) {
  H.st.fail = IMC_ERR_UNAVAILABLE;
  ck_assert_int_eq(get("/offline", token_for("alice", 600)), 503);
  expect_error(503, "UNAVAILABLE");
  H.st.fail = 0;
  H.st.status = IMC_ERR_IO;
  ck_assert_int_eq(get("/offline", token_for("alice", 600)), 503);
  expect_error(503, "UNAVAILABLE");
  ck_assert_int_eq(
      get("/v1/conversations/p:alice:bob/messages", token_for("alice", 600)),
      503);
  expect_error(503, "UNAVAILABLE");
  ck_assert_int_eq(H.warnings, 3);
  /* Out of memory is ours to report. */
  H.st.status = IMC_ERR_NOMEM;
  ck_assert_int_eq(get("/offline", token_for("alice", 600)), 500);
  expect_error(500, "INTERNAL");
}
END_TEST

START_TEST(async_completion) {
  one_message();
  H.st.async = 1;
  start("GET", "/offline", token_for("alice", 600), NULL);
  ck_assert_uint_eq(H.cl.len, 0);
  ck_assert_uint_eq(imc_api_pending(H.api), 1);
  store_page(&H.st, 0);
  ck_assert_uint_eq(imc_api_pending(H.api), 0);
  ck_assert_int_eq(answer(), 200);
  ck_assert_ptr_nonnull(strstr(R.body, "\"next_cursor\":5"));
  /* A late failure. */
  start("GET", "/v1/conversations/p:alice:bob/messages",
        token_for("alice", 600), NULL);
  ck_assert_uint_eq(imc_api_pending(H.api), 1);
  store_page(&H.st, IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(answer(), 503);
}
END_TEST

START_TEST(client_gone_before_completion) {
  one_message();
  H.st.async = 1;
  start("GET", "/offline", token_for("alice", 600), NULL);
  ck_assert_uint_eq(imc_api_pending(H.api), 1);
  imc_gateway_conn_closed(H.gw, H.c); /* the host lost the socket */
  ck_assert_uint_eq(imc_gateway_conn_count(H.gw), 0);
  store_page(&H.st, 0);
  ck_assert_uint_eq(imc_api_pending(H.api), 0);
  ck_assert_uint_eq(H.cl.len, 0);

  /* The gateway gives up on a slow answer; the completion comes later. */
  start("GET", "/offline", token_for("alice", 600), "application/x-protobuf");
  test_clock_advance(&H.tc, 60000);
  imc_gateway_on_timeout(H.gw);
  ck_assert_uint_eq(imc_gateway_conn_count(H.gw), 0);
  ck_assert_int_eq(H.cl.closed, 1);
  store_page(&H.st, 0);
  ck_assert_uint_eq(imc_api_pending(H.api), 0);
  ck_assert_uint_eq(H.cl.len, 0);
}
END_TEST

/* ------------------------------------------------------------------ */
/* /metrics and /readyz                                                 */
/* ------------------------------------------------------------------ */

static void send_done(void *ud, int status, const imc_send_result *res,
                      const char *message) {
  (void)res;
  (void)message;
  *(int *)ud = status == 0 ? 1 : status;
}

static imc_worker *make_worker(void) {
  imc_worker_options *o;
  imc_worker *w;
  ck_assert_int_eq(imc_worker_options_new(&o, &H.tm.mem), 0);
  ck_assert_int_eq(imc_worker_options_set_queue(o, &bus_vt, NULL), 0);
  ck_assert_int_eq(imc_worker_options_set_store(o, &store_vt, &H.st), 0);
  ck_assert_int_eq(imc_worker_options_set_dedup(o, &dedup_vt, NULL), 0);
  ck_assert_int_eq(imc_worker_options_set_clock(o, &H.tc.clock), 0);
  ck_assert_int_eq(imc_worker_new(&w, o, &H.tm.mem), 0);
  imc_worker_options_del(o);
  return w;
}

static int has_line(const char *line) {
  size_t n = strlen(line);
  for (const char *p = R.body; (p = strstr(p, line)) != NULL; p += n)
    if ((p == R.body || p[-1] == '\n') && p[n] == '\n')
      return 1;
  return 0;
}

/* Ends the label set at *p (after '{'): name="value" pairs, values with
 * the format's escapes. Sets le to the value of an le label (or leaves
 * it). Returns the position after '}' or NULL. */
static const char *scan_labels(const char *p, char *le, size_t le_cap) {
  for (;;) {
    const char *n = p;
    while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
           (*p >= '0' && *p <= '9') || *p == '_')
      p++;
    if (p == n || *n <= '9' || p[0] != '=' || p[1] != '"')
      return NULL;
    int is_le = p - n == 2 && memcmp(n, "le", 2) == 0;
    p += 2;
    size_t k = 0;
    for (; *p != '"'; p++) {
      if (*p == '\n' || *p == '\0')
        return NULL;
      if (*p == '\\' && !(p[1] == '\\' || p[1] == '"' || p[1] == 'n'))
        return NULL;
      if (is_le && k + 1 < le_cap)
        le[k++] = *p;
      if (*p == '\\')
        p++;
    }
    if (is_le)
      le[k] = '\0';
    p++;
    if (*p == '}')
      return p + 1;
    if (*p != ',')
      return NULL;
    p++;
  }
}

/* A number as the format writes one (Go's ParseFloat: +Inf, NaN...). */
static int scan_value(const char *s, const char *end, double *v) {
  char buf[64];
  size_t n = (size_t)(end - s);
  if (n == 0 || n >= sizeof(buf))
    return 0;
  memcpy(buf, s, n);
  buf[n] = '\0';
  char *e;
  *v = strtod(buf, &e);
  return *e == '\0';
}

/*
 * Checks body against the Prometheus text format 0.0.4 the way a scraper
 * reads it: every line a HELP, a TYPE or a sample; a family's TYPE once,
 * before its samples, which come together; sample names of the TYPEd
 * family (with _bucket, _sum and _count for a histogram) and values that
 * parse; a histogram's buckets with ascending le, cumulative counts,
 * +Inf last and equal to _count, and a _sum. Returns the families seen.
 */
static int check_exposition(const char *body) {
  char family[128] = "", type[16] = "", seen[4096] = " ";
  int families = 0;
  double last_le = 0, last_count = 0;
  int buckets = 0, inf = 0, has_sum = 0, has_count = 0;
  const char *p = body;
  ck_assert_msg(*body == '\0' || body[strlen(body) - 1] == '\n',
                "the last line is not ended");
  while (*p) {
    const char *eol = strchr(p, '\n');
    char line[1024];
    size_t len = (size_t)(eol - p);
    ck_assert_uint_lt(len, sizeof(line));
    memcpy(line, p, len);
    line[len] = '\0';
    p = eol + 1;
    if (strncmp(line, "# HELP ", 7) == 0)
      continue;
    char name[128];
    if (strncmp(line, "# TYPE ", 7) == 0) {
      ck_assert_msg(strcmp(type, "histogram") != 0 ||
                        (inf && has_sum && has_count),
                    "histogram %s incomplete", family);
      ck_assert_int_eq(sscanf(line, "# TYPE %127s %15s", family, type), 2);
      ck_assert_msg(strcmp(type, "counter") == 0 ||
                        strcmp(type, "gauge") == 0 ||
                        strcmp(type, "histogram") == 0,
                    "bad type: %s", line);
      char key[140];
      snprintf(key, sizeof(key), " %s ", family);
      ck_assert_msg(strstr(seen, key) == NULL, "TYPE twice: %s", family);
      ck_assert_uint_lt(strlen(seen) + strlen(key), sizeof(seen));
      strcat(seen, key + 1);
      families++;
      buckets = inf = has_sum = has_count = 0;
      continue;
    }
    ck_assert_msg(line[0] != '#' && line[0] != '\0', "bad line: %s", line);
    const char *q = line;
    while (*q && *q != '{' && *q != ' ')
      q++;
    ck_assert_uint_lt((size_t)(q - line), sizeof(name));
    memcpy(name, line, (size_t)(q - line));
    name[q - line] = '\0';
    char le[32] = "";
    if (*q == '{') {
      q = scan_labels(q + 1, le, sizeof(le));
      ck_assert_msg(q != NULL, "bad labels: %s", line);
    }
    ck_assert_msg(*q == ' ', "no value: %s", line);
    double v;
    ck_assert_msg(scan_value(q + 1, line + len, &v), "bad value: %s", line);
    ck_assert_msg(type[0] != '\0', "sample before a TYPE: %s", line);
    size_t fl = strlen(family);
    const char *suffix = name + fl;
    ck_assert_msg(strncmp(name, family, fl) == 0, "%s is not of %s", name,
                  family);
    if (strcmp(type, "histogram") != 0) {
      ck_assert_msg(*suffix == '\0', "%s is not of %s", name, family);
      continue;
    }
    ck_assert_msg(!inf || strcmp(suffix, "_bucket") != 0,
                  "bucket after +Inf: %s", line);
    if (strcmp(suffix, "_bucket") == 0) {
      double b;
      ck_assert_msg(scan_value(le, le + strlen(le), &b), "bad le: %s", line);
      ck_assert_msg(buckets == 0 || (b > last_le && v >= last_count),
                    "bucket out of order: %s", line);
      last_le = b;
      last_count = v;
      buckets++;
      inf = strcmp(le, "+Inf") == 0;
    } else if (strcmp(suffix, "_sum") == 0) {
      has_sum = 1;
    } else if (strcmp(suffix, "_count") == 0) {
      ck_assert_msg(inf && v == last_count, "_count is not +Inf: %s", line);
      has_count = 1;
    } else {
      ck_abort_msg("%s is not of %s", name, family);
    }
  }
  ck_assert_msg(strcmp(type, "histogram") != 0 || (inf && has_sum && has_count),
                "histogram %s incomplete", family);
  return families;
}

START_TEST(metrics) {
  int sent = 0;
  imc_send_req sr = {.struct_size = sizeof(sr),
                     .from_user = "alice",
                     .from_device = "phone",
                     .node_id = "gw-1",
                     .conn_id = 1,
                     .client_msg_id = "c-1",
                     .to_user = "bob",
                     .group_id = "",
                     .body = (const uint8_t *)"x",
                     .body_len = 1,
                     .content_type = "text/plain"};
  ck_assert_int_eq(imc_router_send(H.rt, &sr, send_done, &sent), 0);
  ck_assert_int_eq(sent, 1);
  imc_worker *w = make_worker();
  ck_assert_int_eq(attach(H.api, H.gw, w), 0);
  get("/nope", NULL); /* one 404 for the gateway's counters */

  ck_assert_int_eq(get("/metrics", NULL), 200);
  ck_assert_str_eq(R.ctype, "text/plain; version=0.0.4");
  const char *lines[] = {
      "# HELP imchat_gateway_connections Connections held.",
      "# TYPE imchat_gateway_connections gauge",
      "imchat_gateway_connections 1",
      "# TYPE imchat_gateway_websockets gauge",
      "imchat_gateway_websockets 0",
      "# TYPE imchat_gateway_accepted_total counter",
      "imchat_gateway_accepted_total 2",
      "imchat_gateway_upgraded_total 0",
      "imchat_gateway_auth_failures_total 0",
      "imchat_gateway_http_errors_total 1",
      "imchat_gateway_frames_in_total 0",
      "imchat_gateway_frames_out_total 0",
      "imchat_gateway_bad_frames_total 0",
      "imchat_gateway_slow_reader_closes_total 0",
      "imchat_gateway_idle_closes_total 0",
      "imchat_gateway_pushes_total 0",
      "imchat_gateway_acks_total 0",
      "imchat_gateway_ack_timeouts_total 0",
      "imchat_gateway_undelivered_total 0",
      "imchat_gateway_rate_limited_total 0",
      "# TYPE imchat_gateway_outbound_queued_bytes gauge",
      "# TYPE imchat_gateway_errors_total counter",
      "# TYPE imchat_gateway_ack_latency_seconds histogram",
      "imchat_gateway_ack_latency_seconds_bucket{le=\"0.001\"} 0",
      "imchat_gateway_ack_latency_seconds_bucket{le=\"10\"} 0",
      "imchat_gateway_ack_latency_seconds_bucket{le=\"+Inf\"} 0",
      "imchat_gateway_ack_latency_seconds_sum 0",
      "imchat_gateway_ack_latency_seconds_count 0",
      "imchat_gateway_errors_total{code=\"BAD_REQUEST\"} 0",
      "imchat_gateway_errors_total{code=\"INTERNAL\"} 0",
      "imchat_router_sends_total 1",
      "imchat_router_duplicates_total 0",
      "imchat_router_rejected_total 0",
      "# TYPE imchat_router_routed_total counter",
      "imchat_router_routed_total{path=\"fast\"} 0",
      "imchat_router_routed_total{path=\"slow\"} 1",
      "imchat_router_group_sends_total 0",
      "imchat_router_statuses_total{state=\"delivered\"} 0",
      "imchat_router_statuses_total{state=\"stored\"} 0",
      "imchat_router_blocked_total 0",
      "imchat_router_masked_total 0",
      "imchat_router_backend_errors_total 0",
      "imchat_router_queue_errors_total 0",
      "imchat_worker_batches_total 0",
      "imchat_worker_jobs_total 0",
      "imchat_worker_duplicates_total 0",
      "imchat_worker_bad_records_total 0",
      "imchat_worker_failures_total 0",
      "# TYPE imchat_worker_last_batch_size gauge",
      "imchat_worker_last_batch_size 0",
      "# TYPE imchat_worker_last_batch_latency_ms gauge",
      "imchat_worker_last_batch_latency_ms 0",
      "imchat_worker_purges_total 0",
      "# TYPE imchat_worker_healthy gauge",
      "imchat_worker_healthy 1",
  };
  for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
    ck_assert_msg(has_line(lines[i]), "missing line: %s", lines[i]);
  ck_assert_int_ge(check_exposition(R.body), 40);
  /* One HELP per family. */
  const char *p = strstr(R.body, "# HELP imchat_router_routed_total");
  ck_assert_ptr_nonnull(p);
  ck_assert_ptr_null(strstr(p + 1, "# HELP imchat_router_routed_total"));

  /* Only what is attached appears. */
  ck_assert_int_eq(attach(H.api, NULL, NULL), 0);
  ck_assert_int_eq(get("/metrics", NULL), 200);
  ck_assert_ptr_null(strstr(R.body, "imchat_gateway_"));
  ck_assert_ptr_null(strstr(R.body, "imchat_worker_"));
  ck_assert_ptr_nonnull(strstr(R.body, "imchat_router_sends_total 1\n"));
  imc_worker_del(w);
}
END_TEST

/* A source of another process's numbers, as a gateway whose router is
 * remote would set: the writer's checks and escaping, and readiness. */
static int remote_collect(void *ud, imc_metrics *m) {
  int *calls = ud;
  (*calls)++;
  ck_assert_int_eq(imc_metrics_family(NULL, "x", IMC_METRIC_GAUGE, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_metrics_family(m, "1x", IMC_METRIC_GAUGE, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_metrics_family(m, "x", (imc_metric_type)7, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_metrics_sample(m, "x y", NULL, NULL, 1),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_metrics_sample(m, "x", "a:b", "v", 1),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_metrics_sample(m, "x", "a", NULL, 1),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_metrics_family(m, "remote:queue_jobs", IMC_METRIC_GAUGE,
                                      "Jobs \\ queued\nremotely."),
                   0);
  ck_assert_int_eq(
      imc_metrics_sample(m, "remote:queue_jobs", "q", "a\"b\\c\nd", 7), 0);
  return 0;
}

static int remote_ready(void *ud, const char **component, const char **state) {
  (void)ud;
  *component = "router";
  *state = "unreachable";
  return 0;
}

static int failing_collect(void *ud, imc_metrics *m) {
  (void)ud;
  (void)m;
  return IMC_ERR_UNAVAILABLE;
}

START_TEST(remote_source) {
  int calls = 0;
  imc_metrics_source_vtbl vt = {sizeof(vt), remote_collect, remote_ready};
  imc_metrics_source src[] = {{&vt, &calls}};
  ck_assert_int_eq(imc_api_set_sources(H.api, src, 1), 0);
  vt.collect = NULL; /* the api keeps its own copy */
  ck_assert_int_eq(get("/metrics", NULL), 200);
  ck_assert_int_eq(calls, 1);
  ck_assert_str_eq(R.body, "# HELP remote:queue_jobs Jobs \\\\ queued\\n"
                           "remotely.\n"
                           "# TYPE remote:queue_jobs gauge\n"
                           "remote:queue_jobs{q=\"a\\\"b\\\\c\\nd\"} 7\n");
  ck_assert_int_eq(get("/readyz", NULL), 503);
  ck_assert_str_eq(R.body,
                   "{\"status\":\"unavailable\",\"router\":\"unreachable\"}\n");

  /* A struct_size that ends before ready: always ready. */
  imc_metrics_source_vtbl old = {offsetof(imc_metrics_source_vtbl, ready),
                                 remote_collect, remote_ready};
  src[0].vt = &old;
  ck_assert_int_eq(imc_api_set_sources(H.api, src, 1), 0);
  ck_assert_int_eq(get("/readyz", NULL), 200);

  /* A source that fails makes the page 503. */
  imc_metrics_source_vtbl fail = {sizeof(fail), failing_collect, NULL};
  src[0].vt = &fail;
  ck_assert_int_eq(imc_api_set_sources(H.api, src, 1), 0);
  ck_assert_int_eq(get("/metrics", NULL), 503);
  ck_assert_int_eq(attach(H.api, H.gw, NULL), 0);
}
END_TEST

/* A WebSocket client of H.gw, signed in as user on s: upgraded. */
static imc_conn *ws_connect(test_sock *s, const char *user) {
  char req[2048];
  int n = snprintf(req, sizeof(req),
                   "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\n"
                   "Authorization: Bearer %s\r\n\r\n",
                   token_for(user, 600));
  imc_conn *c;
  ck_assert_int_eq(imc_gateway_conn_new(H.gw, &c, s), 0);
  ck_assert_int_eq(
      imc_gateway_conn_recv(H.gw, c, (const uint8_t *)req, (size_t)n), 0);
  imc_gateway_flush(H.gw);
  ck_assert_uint_gt(s->len, 12);
  ck_assert_int_eq(memcmp(s->out, "HTTP/1.1 101", 12), 0);
  return c;
}

/* The client c ACKs msg_id: one masked binary frame (mask key 0). */
static void ws_ack(imc_conn *c, const char *msg_id) {
  char *ids[] = {(char *)msg_id};
  Imchat__V1__DeliverAck a = IMCHAT__V1__DELIVER_ACK__INIT;
  a.n_msg_ids = 1;
  a.msg_ids = ids;
  Imchat__V1__ClientFrame cf = IMCHAT__V1__CLIENT_FRAME__INIT;
  cf.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_DELIVER_ACK;
  cf.deliver_ack = &a;
  uint8_t frame[6 + 125] = {0x82, 0x80, 0, 0, 0, 0};
  size_t len = imchat__v1__client_frame__get_packed_size(&cf);
  ck_assert_uint_le(len, 125);
  frame[1] |= (uint8_t)len;
  imchat__v1__client_frame__pack(&cf, frame + 6);
  ck_assert_int_eq(imc_gateway_conn_recv(H.gw, c, frame, 6 + len), 0);
  imc_gateway_flush(H.gw);
}

/* A push ACKed 30 ms later counts in the 0.05 s bucket of the page. */
START_TEST(ack_latency_histogram) {
  test_sock ws = {0};
  imc_conn *c = ws_connect(&ws, "bob");
  imc_msg m = {.struct_size = sizeof(imc_msg),
               .msg_id = "m-1",
               .conversation_id = "p:alice:bob",
               .seq = 1,
               .from_user = "alice",
               .to_user = "bob",
               .group_id = "",
               .body = (const uint8_t *)"hi",
               .body_len = 2,
               .content_type = "text/plain",
               .sent_at_ms = T0,
               .client_msg_id = "c-1",
               .from_device = "phone"};
  ck_assert_int_eq(imc_gateway_deliver(H.gw, "bob", NULL, &m), 1);
  imc_gateway_flush(H.gw);
  test_clock_advance(&H.tc, 30);
  ws_ack(c, "m-1");
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_ACKS), 1);

  ck_assert_int_eq(get("/metrics", NULL), 200);
  check_exposition(R.body);
  const char *lines[] = {
      "# HELP imchat_gateway_ack_latency_seconds Time from a push to its "
      "DeliverAck.",
      "# TYPE imchat_gateway_ack_latency_seconds histogram",
      "imchat_gateway_ack_latency_seconds_bucket{le=\"0.001\"} 0",
      "imchat_gateway_ack_latency_seconds_bucket{le=\"0.025\"} 0",
      "imchat_gateway_ack_latency_seconds_bucket{le=\"0.05\"} 1",
      "imchat_gateway_ack_latency_seconds_bucket{le=\"2.5\"} 1",
      "imchat_gateway_ack_latency_seconds_bucket{le=\"10\"} 1",
      "imchat_gateway_ack_latency_seconds_bucket{le=\"+Inf\"} 1",
      "imchat_gateway_ack_latency_seconds_sum 0.03",
      "imchat_gateway_ack_latency_seconds_count 1",
  };
  for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
    ck_assert_msg(has_line(lines[i]), "missing line: %s", lines[i]);
  free(ws.out);
}
END_TEST

/* The writer on its own: fixed-point bounds and sum, cumulative
 * buckets, and its argument checks. */
static int hist_collect(void *ud, imc_metrics *m) {
  (void)ud;
  static const uint64_t b[] = {1, 250, 1000, 1500};
  static const uint64_t counts[] = {2, 0, 3, 1, 4};
  ck_assert_int_eq(imc_metrics_histogram(NULL, "h", NULL, b, 4, counts, 0, 3),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_metrics_histogram(m, "1h", NULL, b, 4, counts, 0, 3),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_metrics_histogram(m, "h", NULL, b, 4, NULL, 0, 3),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_metrics_histogram(m, "h", NULL, NULL, 1, counts, 0, 3),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_metrics_histogram(m, "h", NULL, b, 4, counts, 0, 10),
                   IMC_ERR_INVALID_ARGUMENT);
  static const uint64_t unordered[] = {5, 5};
  ck_assert_int_eq(
      imc_metrics_histogram(m, "h", NULL, unordered, 2, counts, 0, 3),
      IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(
      imc_metrics_histogram(m, "a_seconds", "A \\ b.", b, 4, counts, 12345, 3),
      0);
  static const uint64_t one[] = {1};
  ck_assert_int_eq(imc_metrics_histogram(m, "b", NULL, one, 1, counts, 10, 9),
                   0);
  ck_assert_int_eq(imc_metrics_histogram(m, "c", NULL, NULL, 0, counts, 7, 0),
                   0);
  return 0;
}

START_TEST(histogram_writer) {
  imc_metrics_source_vtbl vt = {sizeof(vt), hist_collect, NULL};
  imc_metrics_source src[] = {{&vt, NULL}};
  ck_assert_int_eq(imc_api_set_sources(H.api, src, 1), 0);
  ck_assert_int_eq(get("/metrics", NULL), 200);
  ck_assert_str_eq(R.body, "# HELP a_seconds A \\\\ b.\n"
                           "# TYPE a_seconds histogram\n"
                           "a_seconds_bucket{le=\"0.001\"} 2\n"
                           "a_seconds_bucket{le=\"0.25\"} 2\n"
                           "a_seconds_bucket{le=\"1\"} 5\n"
                           "a_seconds_bucket{le=\"1.5\"} 6\n"
                           "a_seconds_bucket{le=\"+Inf\"} 10\n"
                           "a_seconds_sum 12.345\n"
                           "a_seconds_count 10\n"
                           "# HELP b \n"
                           "# TYPE b histogram\n"
                           "b_bucket{le=\"0.000000001\"} 2\n"
                           "b_bucket{le=\"+Inf\"} 2\n"
                           "b_sum 0.00000001\n"
                           "b_count 2\n"
                           "# HELP c \n"
                           "# TYPE c histogram\n"
                           "c_bucket{le=\"+Inf\"} 2\n"
                           "c_sum 7\n"
                           "c_count 2\n");
  ck_assert_int_eq(check_exposition(R.body), 3);
  ck_assert_int_eq(attach(H.api, H.gw, NULL), 0);
}
END_TEST

START_TEST(metrics_without_router) {
  ck_assert_int_eq(get("/metrics", NULL), 200);
  ck_assert_ptr_nonnull(strstr(R.body, "imchat_gateway_connections 1\n"));
  ck_assert_ptr_null(strstr(R.body, "imchat_router_"));
}
END_TEST

START_TEST(readyz) {
  ck_assert_int_eq(get("/readyz", NULL), 200);
  ck_assert_str_eq(R.body, "{\"status\":\"ready\"}\n");

  /* A healthy worker keeps it ready; a failing one does not. */
  imc_worker *w = make_worker();
  ck_assert_int_eq(attach(H.api, H.gw, w), 0);
  ck_assert_int_eq(get("/readyz", NULL), 200);
  poll_fail = 1;
  imc_worker_start(w);
  poll_fail = 0;
  ck_assert_int_eq(imc_worker_healthy(w), 0);
  ck_assert_int_eq(get("/readyz", NULL), 503);
  ck_assert_str_eq(R.ctype, "application/json");
  ck_assert_str_eq(R.body,
                   "{\"status\":\"unavailable\",\"worker\":\"failing\"}\n");
  ck_assert_int_eq(get("/metrics", NULL), 200);
  ck_assert(has_line("imchat_worker_healthy 0"));
  imc_worker_stop(w);
  ck_assert_uint_eq(imc_worker_pending(w), 0);

  /* A gateway that is shutting down (another one serves the request). */
  imc_gateway *gw2 = make_gateway(&H.tm.mem, H.api);
  imc_gateway_shutdown(gw2);
  ck_assert_int_eq(attach(H.api, gw2, NULL), 0);
  ck_assert_int_eq(get("/readyz", NULL), 503);
  ck_assert_str_eq(
      R.body, "{\"status\":\"unavailable\",\"gateway\":\"shutting down\"}\n");
  ck_assert_int_eq(attach(H.api, gw2, w), 0);
  ck_assert_int_eq(get("/readyz", NULL), 503);
  ck_assert_str_eq(R.body, "{\"status\":\"unavailable\",\"gateway\":"
                           "\"shutting down\",\"worker\":\"failing\"}\n");
  ck_assert_int_eq(attach(H.api, H.gw, NULL), 0);
  imc_gateway_del(gw2);
  imc_worker_del(w);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Options and life cycle                                               */
/* ------------------------------------------------------------------ */

START_TEST(options) {
  test_mem tm;
  test_mem_init(&tm);
  imc_api_options *o;
  imc_api *a;
  ck_assert_int_eq(imc_api_options_new(NULL, &tm.mem),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_api_options_new(&o, &tm.mem), 0);
  /* A store is required, with both fetches. */
  ck_assert_int_eq(imc_api_new(&a, o, &tm.mem), IMC_ERR_INVALID_ARGUMENT);
  imc_store_vtbl half = store_vt;
  half.fetch_history = NULL;
  ck_assert_int_eq(imc_api_options_set_store(o, &half, NULL), 0);
  ck_assert_int_eq(imc_api_new(&a, o, &tm.mem), IMC_ERR_INVALID_ARGUMENT);
  /* A vtable of an older build ends before fetch_history. */
  imc_store_vtbl old = store_vt;
  old.struct_size = (uint32_t)offsetof(imc_store_vtbl, fetch_history);
  ck_assert_int_eq(imc_api_options_set_store(o, &old, NULL), 0);
  ck_assert_int_eq(imc_api_new(&a, o, &tm.mem), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_api_options_set_store(NULL, &store_vt, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_api_options_set_store(o, NULL, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_api_options_set_store(o, &store_vt, NULL), 0);
  ck_assert_int_eq(imc_api_options_set_admin_token(o, ""),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_api_options_set_admin_token(o, "two words"),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_api_options_set_admin_token(o, "tab\there"),
                   IMC_ERR_INVALID_ARGUMENT);
  char *big = malloc(4098);
  memset(big, 'a', 4097);
  big[4097] = '\0';
  ck_assert_int_eq(imc_api_options_set_admin_token(o, big),
                   IMC_ERR_INVALID_ARGUMENT);
  big[4096] = '\0';
  ck_assert_int_eq(imc_api_options_set_admin_token(o, big), 0);
  free(big);
  ck_assert_int_eq(imc_api_options_set_admin_token(o, "x"), 0);
  ck_assert_int_eq(imc_api_options_set_admin_token(o, NULL), 0);
  ck_assert_int_eq(imc_api_options_set_admin_token(o, ADMIN), 0);
  ck_assert_int_eq(imc_api_options_set_clock(o, NULL), 0);
  ck_assert_int_eq(imc_api_options_set_log(o, NULL, NULL, IMC_LOG_DEBUG), 0);
  ck_assert_int_eq(imc_api_options_set_groups(NULL, NULL, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  imc_groups_vtbl half_groups = *imc_api_router_groups();
  half_groups.members = NULL;
  ck_assert_int_eq(imc_api_options_set_groups(o, &half_groups, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_api_options_set_groups(o, NULL, NULL), 0);
  ck_assert_int_eq(imc_api_new(&a, o, &tm.mem), 0);
  imc_api_options_del(o); /* the api keeps its own copy */
  imc_api_set_user_data(a, &tm);
  ck_assert_ptr_eq(imc_api_get_user_data(a), &tm);
  ck_assert_int_eq(imc_api_set_sources(NULL, NULL, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_api_set_sources(a, NULL, 1), IMC_ERR_INVALID_ARGUMENT);
  imc_metrics_source many[IMC_API_SOURCES_MAX + 1];
  for (size_t i = 0; i < IMC_API_SOURCES_MAX + 1; i++)
    many[i] = (imc_metrics_source){imc_api_router_source(), NULL};
  ck_assert_int_eq(imc_api_set_sources(a, many, IMC_API_SOURCES_MAX + 1),
                   IMC_ERR_TOO_LARGE);
  imc_metrics_source_vtbl no_collect = *imc_api_router_source();
  no_collect.collect = NULL;
  imc_metrics_source bad[] = {{&no_collect, NULL}, {NULL, NULL}};
  ck_assert_int_eq(imc_api_set_sources(a, bad, 1), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_api_set_sources(a, bad + 1, 1),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_api_set_sources(a, NULL, 0), 0);
  ck_assert_uint_eq(imc_api_pending(a), 0);
  ck_assert_uint_eq(imc_api_pending(NULL), 0);
  ck_assert(imc_api_handler_vtbl()->handle != NULL);
  ck_assert_uint_eq(imc_api_handler_vtbl()->struct_size,
                    sizeof(imc_http_handler_vtbl));
  imc_api_del(a);
  imc_api_del(NULL);
  imc_api_options_del(NULL);
  ck_assert_int_eq(tm.live, 0);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Allocation failures                                                  */
/* ------------------------------------------------------------------ */

/* A request on a new connection of gw; returns the status answered, 0 if
 * the connection was closed without one, or IMC_ERR_NOMEM if it could not
 * even be opened. */
static int alloc_req(imc_gateway *gw, const char *method, const char *target,
                     const char *bearer, const char *accept) {
  char r[2048];
  int n = snprintf(r, sizeof(r),
                   "%s %s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
                   "Accept: %s\r\n\r\n",
                   method, target, bearer, accept);
  test_sock cl = {0};
  imc_conn *c;
  int rv = imc_gateway_conn_new(gw, &c, &cl);
  if (rv != 0)
    return rv;
  imc_gateway_conn_recv(gw, c, (const uint8_t *)r, (size_t)n);
  imc_gateway_flush(gw);
  int status = 0;
  if (cl.len > 0) {
    char line[32]; /* the output is not NUL-terminated */
    size_t k = cl.len < sizeof(line) - 1 ? cl.len : sizeof(line) - 1;
    memcpy(line, cl.out, k);
    line[k] = '\0';
    sscanf(line, "HTTP/1.1 %d", &status);
  }
  ck_assert_int_eq(cl.closed, 1);
  free(cl.out);
  return status;
}

static int alloc_pass(test_mem *tm, int *nomem) {
  imc_router_options *ro = NULL;
  imc_router *rt = NULL;
  imc_api_options *ao = NULL;
  imc_api *api = NULL;
  imc_gateway_options *go = NULL;
  imc_gateway *gw = NULL;
  int rv = imc_router_options_new(&ro, &tm->mem);
  if (rv == 0)
    rv = imc_router_options_set_registry(ro, &registry_vt, NULL);
  if (rv == 0)
    rv = imc_router_options_set_seq(ro, &seq_vt, NULL);
  if (rv == 0)
    rv = imc_router_options_set_dedup(ro, &dedup_vt, NULL);
  if (rv == 0)
    rv = imc_router_options_set_store(ro, &store_vt, &H.st);
  if (rv == 0)
    rv = imc_router_options_set_queue(ro, &bus_vt, NULL);
  if (rv == 0)
    rv = imc_router_options_set_gwlink(ro, &gwlink_vt, NULL);
  if (rv == 0)
    rv = imc_router_new(&rt, ro, &tm->mem);
  if (rv == 0)
    rv = imc_api_options_new(&ao, &tm->mem);
  if (rv == 0)
    rv = imc_api_options_set_store(ao, &store_vt, &H.st);
  if (rv == 0)
    rv = imc_api_options_set_groups(ao, imc_api_router_groups(), rt);
  if (rv == 0)
    rv = imc_api_options_set_admin_token(ao, ADMIN);
  if (rv == 0)
    rv = imc_api_new(&api, ao, &tm->mem);
  if (rv == 0)
    rv = imc_gateway_options_new(&go, &tm->mem);
  if (rv == 0)
    rv = imc_gateway_options_set_transport(go, &test_sock_transport, NULL);
  if (rv == 0)
    rv = imc_gateway_options_set_jwt_secret(go, (const uint8_t *)SECRET,
                                            strlen(SECRET));
  if (rv == 0)
    rv = imc_gateway_options_set_clock(go, &H.tc.clock);
  if (rv == 0)
    rv = imc_gateway_options_set_http_handler(go, imc_api_handler_vtbl(), api);
  if (rv == 0)
    rv = imc_gateway_new(&gw, go, &tm->mem);
  if (rv == 0)
    rv = imc_api_set_sources(
        api,
        (const imc_metrics_source[]){{imc_api_gateway_source(), gw},
                                     {imc_api_router_source(), rt}},
        2);
  if (rv == 0) {
    static const struct {
      const char *method, *target;
      int admin, proto;
      int want;
    } reqs[] = {
        {"PUT", "/v1/groups/team/members/alice", 1, 0, 200},
        {"GET", "/offline?cursor=1", 0, 0, 200},
        {"GET", "/offline", 0, 1, 200},
        {"GET", "/v1/conversations/g:team/messages", 0, 0, 200},
        {"GET", "/v1/conversations/p:alice:bob/messages", 0, 1, 200},
        {"GET", "/v1/groups/team/members", 1, 0, 200},
        {"DELETE", "/v1/groups/team/members/alice", 1, 0, 200},
        {"GET", "/metrics", 0, 0, 200},
        {"GET", "/readyz", 0, 0, 200},
        {"GET", "/offline?limit=0", 0, 0, 400},
    };
    char tok[1024];
    int64_t now = T0 / 1000;
    ck_assert_int_gt(imc_jwt_sign_hs256((const uint8_t *)SECRET, strlen(SECRET),
                                        "alice", NULL, NULL, NULL, now,
                                        now + 600, tok, sizeof(tok)),
                     0);
    /* The group is set up whether or not the PUT survives. */
    H.st.n_members = 0;
    member_add(&H.st, "team", "alice");
    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
      int st = alloc_req(gw, reqs[i].method, reqs[i].target,
                         reqs[i].admin ? ADMIN : tok,
                         reqs[i].proto ? "application/x-protobuf" : "*/*");
      ck_assert_uint_eq(imc_api_pending(api), 0);
      if (st == IMC_ERR_NOMEM || st == 0 || st == 500) {
        (*nomem)++;
        rv = IMC_ERR_NOMEM;
        continue;
      }
      /* A member missing from the group cache can make the history
       * answer 403 only if the PUT failed; anything else must match. */
      ck_assert_msg(st == reqs[i].want, "%s %s: %d", reqs[i].method,
                    reqs[i].target, st);
    }
  }
  imc_gateway_del(gw);
  imc_gateway_options_del(go);
  imc_api_del(api);
  imc_api_options_del(ao);
  imc_router_del(rt);
  imc_router_options_del(ro);
  return rv;
}

START_TEST(alloc_failures) {
  int nomem = 0;
  memset(&H, 0, sizeof(H));
  test_clock_init(&H.tc, T0);
  for (long i = 0;; i++) {
    test_mem tm;
    test_mem_init(&tm);
    tm.fail_at = i;
    int rv = alloc_pass(&tm, &nomem);
    ck_assert_msg(tm.live == 0, "leak with allocation %ld failing", i);
    ck_assert_msg(rv == 0 || rv == IMC_ERR_NOMEM,
                  "allocation %ld failing gave %d", i, rv);
    if (tm.count <= i)
      break; /* the pass made fewer allocations: all were covered */
  }
  ck_assert_int_gt(nomem, 10);
}
END_TEST

/* ------------------------------------------------------------------ */

static void h_setup_no_admin(void) {
  h_setup_with(NO_ADMIN);
}

static void h_setup_no_router(void) {
  h_setup_with(NO_ROUTER);
}

#define N(a) ((int)(sizeof(a) / sizeof((a)[0])))

static Suite *api_suite(void) {
  Suite *s = suite_create("api");
  TCase *t = tcase_create("offline");
  tcase_add_checked_fixture(t, h_setup, h_teardown);
  tcase_add_test(t, offline_json);
  tcase_add_test(t, offline_many_and_has_more);
  tcase_add_test(t, offline_empty_keeps_cursor);
  tcase_add_test(t, offline_protobuf);
  tcase_add_loop_test(t, offline_bad_params, 0, N(bad_params));
  tcase_add_test(t, offline_params_ok);
  tcase_add_test(t, offline_json_invalid_utf8_stored);
  tcase_add_test(t, offline_unauthenticated);
  suite_add_tcase(s, t);

  t = tcase_create("history");
  tcase_add_checked_fixture(t, h_setup, h_teardown);
  tcase_add_test(t, history_pair);
  tcase_add_test(t, history_pair_forbidden);
  tcase_add_loop_test(t, history_bad_request, 0, N(bad_convs));
  tcase_add_test(t, history_group);
  suite_add_tcase(s, t);

  t = tcase_create("groups");
  tcase_add_checked_fixture(t, h_setup, h_teardown);
  tcase_add_test(t, members_admin);
  tcase_add_test(t, members_auth);
  tcase_add_loop_test(t, members_bad_ids, 0, N(bad_ids));
  tcase_add_test(t, members_store_failure);
  suite_add_tcase(s, t);

  t = tcase_create("no_admin");
  tcase_add_checked_fixture(t, h_setup_no_admin, h_teardown);
  tcase_add_test(t, members_admin_disabled);
  suite_add_tcase(s, t);

  t = tcase_create("no_router");
  tcase_add_checked_fixture(t, h_setup_no_router, h_teardown);
  tcase_add_test(t, history_group_no_router);
  tcase_add_test(t, metrics_without_router);
  tcase_add_test(t, ack_latency_histogram);
  tcase_add_test(t, histogram_writer);
  suite_add_tcase(s, t);

  t = tcase_create("routing");
  tcase_add_checked_fixture(t, h_setup, h_teardown);
  tcase_add_test(t, wrong_method);
  tcase_add_loop_test(t, unknown_path, 0, N(unknown_paths));
  suite_add_tcase(s, t);

  t = tcase_create("backend");
  tcase_add_checked_fixture(t, h_setup, h_teardown);
  tcase_add_test(t, store_failure);
  tcase_add_test(t, async_completion);
  tcase_add_test(t, client_gone_before_completion);
  suite_add_tcase(s, t);

  t = tcase_create("ops");
  tcase_add_checked_fixture(t, h_setup, h_teardown);
  tcase_add_test(t, metrics);
  tcase_add_test(t, readyz);
  tcase_add_test(t, remote_source);
  suite_add_tcase(s, t);

  t = tcase_create("lifecycle");
  tcase_add_test(t, options);
  suite_add_tcase(s, t);

  t = tcase_create("alloc");
  tcase_set_timeout(t, 120);
  tcase_add_test(t, alloc_failures);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(api_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
