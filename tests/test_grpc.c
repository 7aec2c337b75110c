/*
 * The gRPC server and client wired to each other in memory (the bytes
 * each writes are fed to the other): unary calls, many calls on one
 * connection, deadlines on both sides, statuses and messages in
 * trailers, refused requests (content-type, size, compression, head
 * size), connection loss, Rapid Reset, and allocation failures. A raw
 * nghttp2 client sends what imc_grpc_client never would.
 */
#include <imchat/gateway.h>
#include <imchat/grpc_client.h>
#include <imchat/grpc_gateway_service.h>
#include <imchat/grpc_gwlink.h>
#include <imchat/grpc_router_service.h>
#include <imchat/grpc_server.h>
#include <imchat/grpc_upstream.h>
#include <imchat/membus.h>
#include <imchat/memreg.h>
#include <imchat/sqlite.h>

#include "gateway.pb-c.h"
#include "router.pb-c.h"
#include "rpc/rpc_int.h"
#include "testutil.h"

#include <check.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ECHO "/test.Echo/Echo"
#define FAIL "/test.Echo/Fail"
#define HOLD "/test.Echo/Hold"

/* ------------------------------------------------------------------ */
/* Handlers                                                             */
/* ------------------------------------------------------------------ */

#define MAX_HELD 256

typedef struct held_call {
  imc_grpc_call *call;
  uint8_t req[64];
  size_t len;
} held_call;

static held_call held[MAX_HELD];
static int n_held;
static int handled; /* handler runs */

static void h_echo(void *ud, imc_grpc_call *call, const uint8_t *req,
                   size_t len) {
  (void)ud;
  handled++;
  imc_grpc_call_reply(call, IMC_GRPC_OK, NULL, req, len);
}

/* Fails with the IMC_ERR_* whose negated value is the request's text. */
static void h_fail(void *ud, imc_grpc_call *call, const uint8_t *req,
                   size_t len) {
  (void)ud;
  handled++;
  char buf[16] = {0};
  memcpy(buf, req, len < 15 ? len : 15);
  imc_grpc_call_fail(call, -atoi(buf), "nope: 100% \"ünïcode\"\n");
}

static void h_hold(void *ud, imc_grpc_call *call, const uint8_t *req,
                   size_t len) {
  (void)ud;
  handled++;
  ck_assert_int_lt(n_held, MAX_HELD);
  held[n_held].call = call;
  held[n_held].len = len < 64 ? len : 64;
  memcpy(held[n_held].req, req, held[n_held].len);
  n_held++;
}

/* ------------------------------------------------------------------ */
/* A server and a client joined in memory                               */
/* ------------------------------------------------------------------ */

typedef struct rig_cfg {
  size_t max_message;        /* server; 0: default */
  size_t client_max_message; /* 0: default */
  uint32_t max_streams;
  uint32_t max_header_list;
  uint32_t reset_max, reset_interval;
} rig_cfg;

typedef struct rig {
  test_mem tm;
  test_clock tc;
  imc_grpc_server *s;
  imc_grpc_conn *sc;
  test_sock ssock; /* what the server writes */
  imc_grpc_client *c;
  test_sock csock; /* what the client writes */
  int conn_gone;   /* the server closed sc */
} rig;

static rig R;

/* Builds the server side on m. Returns 0 or the first error. */
static int make_server(rig *r, const rig_cfg *cfg) {
  imc_grpc_server_options *o = NULL;
  int rv = imc_grpc_server_options_new(&o, &r->tm.mem);
  if (rv < 0)
    return rv;
  if ((rv = imc_grpc_server_options_add_method(o, ECHO, h_echo, NULL)) < 0 ||
      (rv = imc_grpc_server_options_add_method(o, FAIL, h_fail, NULL)) < 0 ||
      (rv = imc_grpc_server_options_add_method(o, HOLD, h_hold, NULL)) < 0)
    goto out;
  imc_grpc_server_options_set_transport(o, &test_sock_transport, NULL);
  imc_grpc_server_options_set_clock(o, &r->tc.clock);
  if (cfg && cfg->max_message)
    imc_grpc_server_options_set_max_message(o, cfg->max_message);
  if (cfg && cfg->max_streams)
    imc_grpc_server_options_set_max_streams(o, cfg->max_streams);
  if (cfg && cfg->max_header_list)
    imc_grpc_server_options_set_max_header_list(o, cfg->max_header_list);
  if (cfg && cfg->reset_max)
    imc_grpc_server_options_set_reset_limit(o, cfg->reset_max,
                                            cfg->reset_interval);
  rv = imc_grpc_server_new(&r->s, o, &r->tm.mem);
  if (rv == 0)
    rv = imc_grpc_conn_new(r->s, &r->sc, &r->ssock);
out:
  imc_grpc_server_options_del(o);
  return rv;
}

static int make_client(rig *r, const rig_cfg *cfg) {
  imc_grpc_client_options *o = NULL;
  int rv = imc_grpc_client_options_new(&o, &r->tm.mem);
  if (rv < 0)
    return rv;
  imc_grpc_client_options_set_transport(o, &test_sock_transport, NULL);
  imc_grpc_client_options_set_clock(o, &r->tc.clock);
  if (cfg && cfg->client_max_message)
    imc_grpc_client_options_set_max_message(o, cfg->client_max_message);
  rv = imc_grpc_client_options_set_authority(o, "router:9094");
  if (rv == 0)
    rv = imc_grpc_client_new(&r->c, o, &r->tm.mem);
  if (rv == 0)
    imc_grpc_client_set_user_data(r->c, &r->csock);
  imc_grpc_client_options_del(o);
  return rv;
}

static void rig_init(rig *r, const rig_cfg *cfg) {
  memset(r, 0, sizeof(*r));
  test_mem_init(&r->tm);
  test_clock_init(&r->tc, 1700000000000LL);
  ck_assert_int_eq(make_server(r, cfg), 0);
  ck_assert_int_eq(make_client(r, cfg), 0);
}

static void rig_free(rig *r) {
  imc_grpc_client_del(r->c);
  if (r->sc && !r->conn_gone)
    imc_grpc_conn_closed(r->sc);
  imc_grpc_server_del(r->s);
  free(r->ssock.out);
  free(r->csock.out);
  r->c = NULL;
  r->s = NULL;
  r->sc = NULL;
}

/* Feeds the unread bytes of from to recv. Returns bytes moved, or -1 when
 * recv failed. */
static long feed_server(rig *r) {
  test_sock *t = &r->csock;
  size_t n = t->len - t->pos;
  if (n == 0 || r->conn_gone)
    return 0;
  t->pos = t->len;
  if (imc_grpc_conn_recv(r->sc, t->out + t->len - n, n) < 0) {
    r->conn_gone = 1;
    return -1;
  }
  return (long)n;
}

static long feed_client(rig *r) {
  test_sock *t = &r->ssock;
  size_t n = t->len - t->pos;
  if (n == 0)
    return 0;
  t->pos = t->len;
  if (imc_grpc_client_recv(r->c, t->out + t->len - n, n) < 0)
    return -1;
  return (long)n;
}

/* Moves bytes both ways until neither side has anything to say. */
static void pump(rig *r) {
  for (int i = 0; i < 1000; i++) {
    imc_grpc_client_flush(r->c);
    long a = feed_server(r);
    if (!r->conn_gone) {
      int before = r->ssock.closed;
      imc_grpc_server_flush(r->s);
      if (r->ssock.closed != before)
        r->conn_gone = 1;
    }
    long b = feed_client(r);
    if (a <= 0 && b <= 0)
      return;
  }
  ck_abort_msg("pump did not settle");
}

/* ------------------------------------------------------------------ */
/* Completions                                                          */
/* ------------------------------------------------------------------ */

typedef struct result {
  int n;
  int status;
  int error;
  char msg[256];
  uint8_t resp[4096];
  size_t len;
} result;

static void on_done(void *ud, int status, int error, const char *message,
                    const uint8_t *resp, size_t len) {
  result *res = ud;
  res->n++;
  res->status = status;
  res->error = error;
  snprintf(res->msg, sizeof(res->msg), "%s", message);
  res->len = len;
  if (len)
    memcpy(res->resp, resp, len < sizeof(res->resp) ? len : sizeof(res->resp));
}

static int call(rig *r, const char *method, const char *req, int64_t deadline,
                result *res) {
  return imc_grpc_client_call(r->c, method, (const uint8_t *)req,
                              req ? strlen(req) : 0, deadline, on_done, res);
}

static void setup(void) {
  n_held = 0;
  handled = 0;
}

static void teardown(void) {
  if (R.c || R.s)
    rig_free(&R);
  ck_assert_int_eq(R.tm.live, 0);
}

/* ------------------------------------------------------------------ */
/* Tests                                                                */
/* ------------------------------------------------------------------ */

START_TEST(test_unary) {
  rig_init(&R, NULL);
  result a = {0}, b = {0};
  ck_assert_int_eq(call(&R, ECHO, "hello", 0, &a), 0);
  ck_assert_int_eq(call(&R, ECHO, NULL, 1000, &b), 0);
  ck_assert_int_eq(imc_grpc_client_pending(R.c), 2);
  ck_assert_int_eq(a.n, 0); /* never before the call returns */
  pump(&R);
  ck_assert_int_eq(a.n, 1);
  ck_assert_int_eq(a.status, IMC_GRPC_OK);
  ck_assert_int_eq(a.error, 0);
  ck_assert_uint_eq(a.len, 5);
  ck_assert_mem_eq(a.resp, "hello", 5);
  ck_assert_int_eq(b.n, 1);
  ck_assert_int_eq(b.status, IMC_GRPC_OK);
  ck_assert_uint_eq(b.len, 0); /* an empty message is a message */
  ck_assert_int_eq(imc_grpc_client_pending(R.c), 0);
  ck_assert_int_eq(imc_grpc_server_pending(R.s), 0);
  ck_assert_int_eq(imc_grpc_server_next_timeout_ms(R.s), -1);
  ck_assert_int_eq(imc_grpc_client_next_timeout_ms(R.c), -1);
  ck_assert_int_eq(imc_grpc_client_usable(R.c), 1);
}
END_TEST

START_TEST(test_many_concurrent) {
  rig_init(&R, NULL);
  static result res[100];
  memset(res, 0, sizeof(res));
  for (int i = 0; i < 100; i++) {
    char req[32];
    snprintf(req, sizeof(req), "call-%d", i);
    ck_assert_int_eq(call(&R, i % 2 ? ECHO : HOLD, req, 5000, &res[i]), 0);
  }
  pump(&R);
  ck_assert_int_eq(n_held, 50);
  /* Answer the held half in reverse order: streams complete apart. */
  for (int i = n_held - 1; i >= 0; i--)
    ck_assert_int_eq(imc_grpc_call_reply(held[i].call, IMC_GRPC_OK, NULL,
                                         held[i].req, held[i].len),
                     0);
  pump(&R);
  for (int i = 0; i < 100; i++) {
    char req[32];
    int n = snprintf(req, sizeof(req), "call-%d", i);
    ck_assert_int_eq(res[i].n, 1);
    ck_assert_int_eq(res[i].status, IMC_GRPC_OK);
    ck_assert_uint_eq(res[i].len, (size_t)n);
    ck_assert_mem_eq(res[i].resp, req, (size_t)n);
  }
  ck_assert_int_eq(imc_grpc_server_pending(R.s), 0);
  ck_assert_int_eq(imc_grpc_client_pending(R.c), 0);
}
END_TEST

/* Calls past SETTINGS_MAX_CONCURRENT_STREAMS wait in the client. */
START_TEST(test_stream_limit) {
  rig_cfg cfg = {.max_streams = 4};
  rig_init(&R, &cfg);
  static result res[10];
  memset(res, 0, sizeof(res));
  pump(&R); /* SETTINGS first */
  for (int i = 0; i < 10; i++)
    ck_assert_int_eq(call(&R, HOLD, "x", 0, &res[i]), 0);
  int answered = 0;
  for (int round = 0; round < 5 && answered < 10; round++) {
    pump(&R);
    ck_assert_int_le(n_held - answered, 4);
    for (; answered < n_held; answered++)
      imc_grpc_call_reply(held[answered].call, IMC_GRPC_OK, NULL, NULL, 0);
  }
  pump(&R);
  ck_assert_int_eq(answered, 10);
  for (int i = 0; i < 10; i++) {
    ck_assert_int_eq(res[i].n, 1);
    ck_assert_int_eq(res[i].status, IMC_GRPC_OK);
  }
}
END_TEST

START_TEST(test_error_trailers) {
  rig_init(&R, NULL);
  result a = {0}, b = {0}, c = {0};
  ck_assert_int_eq(call(&R, FAIL, "506", 0, &a), 0); /* TOO_LARGE */
  ck_assert_int_eq(call(&R, FAIL, "514", 0, &b), 0); /* RATE_LIMITED */
  ck_assert_int_eq(call(&R, HOLD, "x", 0, &c), 0);
  pump(&R);
  ck_assert_int_eq(a.n, 1);
  ck_assert_msg(a.status == IMC_GRPC_RESOURCE_EXHAUSTED, "%d %s", a.status,
                a.msg);
  ck_assert_int_eq(a.error, IMC_ERR_TOO_LARGE);
  ck_assert_str_eq(a.msg, "nope: 100% \"ünïcode\"\n");
  ck_assert_uint_eq(a.len, 0);
  /* The same gRPC status; the exact error travels in imc-error. */
  ck_assert_int_eq(b.status, IMC_GRPC_RESOURCE_EXHAUSTED);
  ck_assert_int_eq(b.error, IMC_ERR_RATE_LIMITED);
  ck_assert_int_eq(n_held, 1);
  ck_assert_int_eq(imc_grpc_call_reply(held[0].call, IMC_GRPC_NOT_FOUND,
                                       "no such user", NULL, 0),
                   0);
  pump(&R);
  ck_assert_int_eq(c.n, 1);
  ck_assert_int_eq(c.status, IMC_GRPC_NOT_FOUND);
  ck_assert_int_eq(c.error, IMC_ERR_NOT_FOUND);
  ck_assert_str_eq(c.msg, "no such user");
}
END_TEST

START_TEST(test_unknown_method) {
  rig_init(&R, NULL);
  result a = {0};
  ck_assert_int_eq(call(&R, "/test.Echo/Nope", "x", 0, &a), 0);
  pump(&R);
  ck_assert_int_eq(a.n, 1);
  ck_assert_int_eq(a.status, IMC_GRPC_UNIMPLEMENTED);
  ck_assert_int_eq(handled, 0);
}
END_TEST

/* The client's deadline: DEADLINE_EXCEEDED locally, RST_STREAM(CANCEL)
 * to the server, whose handler's late answer is dropped. */
START_TEST(test_client_deadline) {
  rig_init(&R, NULL);
  result a = {0}, b = {0};
  ck_assert_int_eq(call(&R, HOLD, "slow", 100, &a), 0);
  ck_assert_int_eq(call(&R, HOLD, "fast", 0, &b), 0);
  pump(&R);
  ck_assert_int_eq(n_held, 2);
  ck_assert_int_eq(imc_grpc_client_next_timeout_ms(R.c), 100);
  test_clock_advance(&R.tc, 99);
  imc_grpc_client_on_timeout(R.c);
  ck_assert_int_eq(a.n, 0);
  test_clock_advance(&R.tc, 1);
  ck_assert_int_eq(imc_grpc_client_next_timeout_ms(R.c), 0);
  imc_grpc_client_on_timeout(R.c);
  ck_assert_int_eq(a.n, 1);
  ck_assert_int_eq(a.status, IMC_GRPC_DEADLINE_EXCEEDED);
  ck_assert_int_eq(a.error, IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(imc_grpc_call_cancelled(held[0].call), 0);
  pump(&R); /* the RST_STREAM reaches the server */
  ck_assert_int_eq(imc_grpc_call_cancelled(held[0].call), 1);
  ck_assert_int_eq(imc_grpc_call_cancelled(held[1].call), 0);
  ck_assert_ptr_eq(imc_grpc_call_conn_user_data(held[1].call), &R.ssock);
  ck_assert_int_eq(imc_grpc_server_pending(R.s), 2);
  ck_assert_int_eq(
      imc_grpc_call_reply(held[0].call, IMC_GRPC_OK, NULL, NULL, 0), 0);
  ck_assert_int_eq(
      imc_grpc_call_reply(held[1].call, IMC_GRPC_OK, NULL, NULL, 0), 0);
  pump(&R);
  ck_assert_int_eq(a.n, 1);
  ck_assert_int_eq(b.n, 1);
  ck_assert_int_eq(b.status, IMC_GRPC_OK);
  ck_assert_int_eq(imc_grpc_server_pending(R.s), 0);
  ck_assert_int_eq(imc_grpc_client_usable(R.c), 1);
}
END_TEST

/* The server's deadline from grpc-timeout: it answers DEADLINE_EXCEEDED
 * itself, and drops the handler's late answer. */
START_TEST(test_server_deadline) {
  rig_init(&R, NULL);
  result a = {0};
  ck_assert_int_eq(call(&R, HOLD, "slow", 2500, &a), 0);
  pump(&R);
  ck_assert_int_eq(n_held, 1);
  ck_assert_int_eq(imc_grpc_server_next_timeout_ms(R.s), 2500);
  test_clock_advance(&R.tc, 2500);
  imc_grpc_server_on_timeout(R.s); /* the server's turn comes first */
  pump(&R);
  ck_assert_int_eq(a.n, 1);
  ck_assert_int_eq(a.status, IMC_GRPC_DEADLINE_EXCEEDED);
  ck_assert_int_eq(imc_grpc_call_cancelled(held[0].call), 1);
  ck_assert_int_eq(imc_grpc_server_pending(R.s), 1);
  ck_assert_int_eq(imc_grpc_call_reply(held[0].call, IMC_GRPC_OK, NULL,
                                       (const uint8_t *)"late", 4),
                   0);
  ck_assert_int_eq(imc_grpc_server_pending(R.s), 0);
  imc_grpc_client_on_timeout(R.c);
  pump(&R);
  ck_assert_int_eq(a.n, 1);
  ck_assert_int_eq(imc_grpc_client_next_timeout_ms(R.c), -1);
}
END_TEST

START_TEST(test_oversize) {
  rig_cfg cfg = {.max_message = 1024, .client_max_message = 512};
  rig_init(&R, &cfg);
  static char big[2001];
  memset(big, 'a', 2000);
  big[2000] = 0;
  result a = {0}, b = {0}, c = {0};
  ck_assert_int_eq(call(&R, ECHO, big, 0, &a), 0);
  big[1024] = 0; /* at the server's bound, over the client's */
  ck_assert_int_eq(call(&R, ECHO, big, 0, &b), 0);
  big[512] = 0;
  ck_assert_int_eq(call(&R, ECHO, big, 0, &c), 0);
  pump(&R);
  ck_assert_int_eq(a.n, 1);
  ck_assert_int_eq(a.status, IMC_GRPC_RESOURCE_EXHAUSTED);
  ck_assert_int_eq(b.n, 1);
  ck_assert_int_eq(b.status, IMC_GRPC_RESOURCE_EXHAUSTED);
  ck_assert_str_eq(b.msg, "response message larger than the client's limit");
  ck_assert_int_eq(c.n, 1);
  ck_assert_int_eq(c.status, IMC_GRPC_OK);
  ck_assert_uint_eq(c.len, 512);
  ck_assert_int_eq(handled, 2);
  /* The connection still serves. */
  result d = {0};
  ck_assert_int_eq(call(&R, ECHO, "ok", 0, &d), 0);
  pump(&R);
  ck_assert_int_eq(d.status, IMC_GRPC_OK);
}
END_TEST

START_TEST(test_connection_loss) {
  rig_init(&R, NULL);
  result res[3] = {{0}};
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(call(&R, HOLD, "x", 0, &res[i]), 0);
  pump(&R);
  ck_assert_int_eq(n_held, 3);
  imc_grpc_client_closed(R.c);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(res[i].n, 1);
    ck_assert_int_eq(res[i].status, IMC_GRPC_UNAVAILABLE);
    ck_assert_int_eq(res[i].error, IMC_ERR_UNAVAILABLE);
  }
  ck_assert_int_eq(imc_grpc_client_usable(R.c), 0);
  result late = {0};
  ck_assert_int_eq(call(&R, ECHO, "x", 0, &late), IMC_ERR_CLOSED);
  ck_assert_int_eq(imc_grpc_client_recv(R.c, (const uint8_t *)"x", 1),
                   IMC_ERR_CLOSED);
  /* The server side: handlers keep their calls, answers are dropped. */
  imc_grpc_conn_closed(R.sc);
  R.conn_gone = 1;
  ck_assert_int_eq(imc_grpc_server_pending(R.s), 3);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(imc_grpc_call_cancelled(held[i].call), 1);
    ck_assert_ptr_null(imc_grpc_call_conn_user_data(held[i].call));
    ck_assert_int_eq(
        imc_grpc_call_fail(held[i].call, IMC_ERR_UNAVAILABLE, "gone"), 0);
  }
  ck_assert_int_eq(imc_grpc_server_pending(R.s), 0);
  ck_assert_int_eq(R.csock.closed, 0); /* the host closed it */
}
END_TEST

static ssize_t broken_send(void *ud, void *conn_ud, const struct iovec *iov,
                           int n) {
  (void)ud;
  (void)conn_ud;
  (void)iov;
  (void)n;
  return IMC_ERR_IO;
}

/* A transport error ends every call with UNAVAILABLE and closes. */
START_TEST(test_transport_error) {
  rig_init(&R, NULL);
  result a = {0};
  ck_assert_int_eq(call(&R, HOLD, "x", 0, &a), 0);
  pump(&R);
  R.c->w.tv.send = broken_send;
  result b = {0};
  ck_assert_int_eq(call(&R, ECHO, "y", 0, &b), 0);
  ck_assert_int_lt(imc_grpc_client_flush(R.c), 0);
  ck_assert_int_eq(R.csock.closed, 1);
  ck_assert_int_eq(a.status, IMC_GRPC_UNAVAILABLE);
  ck_assert_int_eq(b.status, IMC_GRPC_UNAVAILABLE);
  ck_assert_int_eq(imc_grpc_client_pending(R.c), 0);
  imc_grpc_call_reply(held[0].call, IMC_GRPC_OK, NULL, NULL, 0);
}
END_TEST

/* GOAWAY: calls the server did not take complete UNAVAILABLE, the client
 * takes no new calls and closes once nothing is left. */
START_TEST(test_goaway) {
  rig_init(&R, NULL);
  result a = {0}, b = {0};
  ck_assert_int_eq(call(&R, HOLD, "x", 0, &a), 0); /* stream 1 */
  pump(&R);
  ck_assert_int_eq(call(&R, HOLD, "y", 0, &b), 0); /* stream 3, not sent */
  nghttp2_submit_goaway(R.sc->w.h2, NGHTTP2_FLAG_NONE, 1, NGHTTP2_NO_ERROR,
                        NULL, 0);
  imc_grpc_server_flush(R.s);
  feed_client(&R); /* the GOAWAY arrives before stream 3 leaves */
  ck_assert_int_eq(imc_grpc_client_usable(R.c), 0);
  result c = {0};
  ck_assert_int_eq(call(&R, ECHO, "z", 0, &c), IMC_ERR_CLOSED);
  pump(&R);
  ck_assert_int_eq(b.n, 1);
  ck_assert_int_eq(b.status, IMC_GRPC_UNAVAILABLE);
  ck_assert_int_eq(n_held, 1);
  ck_assert_int_eq(a.n, 0);
  imc_grpc_call_reply(held[0].call, IMC_GRPC_OK, NULL, NULL, 0);
  pump(&R);
  ck_assert_int_eq(a.n, 1);
  ck_assert_int_eq(a.status, IMC_GRPC_OK);
  /* Nothing left on either side: both ends close. */
  ck_assert_int_eq(imc_grpc_client_flush(R.c), IMC_ERR_CLOSED);
  ck_assert_int_eq(R.csock.closed, 1);
  ck_assert_int_eq(R.conn_gone, 1);
  ck_assert_int_eq(R.ssock.closed, 1);
}
END_TEST

/* ------------------------------------------------------------------ */
/* A raw HTTP/2 client for what imc_grpc_client never sends             */
/* ------------------------------------------------------------------ */

typedef struct raw {
  nghttp2_session *h2;
  int http_status;
  int grpc_status;
  char grpc_message[256];
  int closed;
  uint32_t close_code;
  int goaway;
  uint32_t goaway_code;
  const uint8_t *body;
  size_t body_len, body_pos;
} raw;

static raw RAW;

static int raw_header(nghttp2_session *h2, const nghttp2_frame *frame,
                      const uint8_t *name, size_t namelen, const uint8_t *value,
                      size_t valuelen, uint8_t flags, void *ud) {
  raw *r = ud;
  char v[256];
  snprintf(v, sizeof(v), "%.*s", (int)valuelen, value);
  if (namelen == 7 && memcmp(name, ":status", 7) == 0)
    r->http_status = atoi(v);
  else if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0)
    r->grpc_status = atoi(v);
  else if (namelen == 12 && memcmp(name, "grpc-message", 12) == 0)
    snprintf(r->grpc_message, sizeof(r->grpc_message), "%s", v);
  return 0;
}

static int raw_frame(nghttp2_session *h2, const nghttp2_frame *frame,
                     void *ud) {
  raw *r = ud;
  if (frame->hd.type == NGHTTP2_GOAWAY) {
    r->goaway = 1;
    r->goaway_code = frame->goaway.error_code;
  }
  return 0;
}

static int raw_close(nghttp2_session *h2, int32_t id, uint32_t code, void *ud) {
  raw *r = ud;
  r->closed++;
  r->close_code = code;
  return 0;
}

static ssize_t raw_read(nghttp2_session *h2, int32_t id, uint8_t *buf,
                        size_t len, uint32_t *flags, nghttp2_data_source *src,
                        void *ud) {
  raw *r = ud;
  size_t n = r->body_len - r->body_pos;
  if (n > len)
    n = len;
  memcpy(buf, r->body + r->body_pos, n);
  r->body_pos += n;
  if (r->body_pos == r->body_len)
    *flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

/* A request body that never comes: the stream stays open. */
static ssize_t raw_defer(nghttp2_session *h2, int32_t id, uint8_t *buf,
                         size_t len, uint32_t *flags, nghttp2_data_source *src,
                         void *ud) {
  return NGHTTP2_ERR_DEFERRED;
}

static void raw_init(raw *r) {
  memset(r, 0, sizeof(*r));
  r->grpc_status = -1;
  nghttp2_session_callbacks *cbs;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session_callbacks_set_on_header_callback(cbs, raw_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, raw_frame);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, raw_close);
  ck_assert_int_eq(nghttp2_session_client_new(&r->h2, cbs, r), 0);
  nghttp2_session_callbacks_del(cbs);
  nghttp2_submit_settings(r->h2, NGHTTP2_FLAG_NONE, NULL, 0);
}

/* A rig whose client is raw. */
static void raw_rig(const rig_cfg *cfg) {
  memset(&R, 0, sizeof(R));
  test_mem_init(&R.tm);
  test_clock_init(&R.tc, 1700000000000LL);
  ck_assert_int_eq(make_server(&R, cfg), 0);
  raw_init(&RAW);
}

static void raw_free(void) {
  nghttp2_session_del(RAW.h2);
  RAW.h2 = NULL;
}

static void raw_pump(void) {
  for (int i = 0; i < 1000; i++) {
    long moved = 0;
    const uint8_t *p;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(RAW.h2, &p)) > 0) {
      moved += n;
      if (!R.conn_gone && imc_grpc_conn_recv(R.sc, p, (size_t)n) < 0)
        R.conn_gone = 1;
    }
    if (!R.conn_gone && imc_grpc_server_flush(R.s) > 0)
      R.conn_gone = 1;
    size_t k = R.ssock.len - R.ssock.pos;
    if (k) {
      nghttp2_session_mem_recv(RAW.h2, R.ssock.out + R.ssock.pos, k);
      R.ssock.pos = R.ssock.len;
      moved += (long)k;
    }
    if (moved == 0)
      return;
  }
  ck_abort_msg("raw pump did not settle");
}

#define NV(n, v)                                                               \
  {                                                                            \
    (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v),                  \
        NGHTTP2_NV_FLAG_NONE                                                   \
  }

static int32_t raw_request(const char *path, const char *ctype,
                           const uint8_t *body, size_t len, int end) {
  nghttp2_nv nv[] = {
      NV(":method", "POST"), NV(":scheme", "http"),     NV(":path", path),
      NV(":authority", "x"), NV("content-type", ctype), NV("te", "trailers"),
  };
  RAW.body = body;
  RAW.body_len = len;
  RAW.body_pos = 0;
  nghttp2_data_provider dp = {.read_callback = end ? raw_read : raw_defer};
  return nghttp2_submit_request(RAW.h2, NULL, nv, 6, &dp, NULL);
}

/* Sends what the raw client has queued, reading nothing back. */
static void raw_send(void) {
  const uint8_t *p;
  ssize_t n;
  while ((n = nghttp2_session_mem_send(RAW.h2, &p)) > 0)
    if (!R.conn_gone && imc_grpc_conn_recv(R.sc, p, (size_t)n) < 0)
      R.conn_gone = 1;
}

/* Appends what the raw client would send to buf (len bytes so far, cap
 * in all) instead of sending it; returns the new length. */
static size_t raw_collect(uint8_t *buf, size_t len, size_t cap) {
  const uint8_t *p;
  ssize_t n;
  while ((n = nghttp2_session_mem_send(RAW.h2, &p)) > 0) {
    ck_assert_uint_le(len + (size_t)n, cap);
    memcpy(buf + len, p, (size_t)n);
    len += (size_t)n;
  }
  return len;
}

/* Opens a request stream and resets it at once. */
static void raw_rapid_reset(void) {
  int32_t id = raw_request(HOLD, "application/grpc", NULL, 0, 0);
  raw_send(); /* the HEADERS leave before the reset */
  nghttp2_submit_rst_stream(RAW.h2, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
  raw_send();
}

START_TEST(test_bad_content_type) {
  raw_rig(NULL);
  static const uint8_t msg[] = {0, 0, 0, 0, 1, 'x'};
  raw_request(ECHO, "application/json", msg, sizeof(msg), 1);
  raw_pump();
  ck_assert_int_eq(RAW.http_status, 415);
  ck_assert_int_eq(RAW.grpc_status, IMC_GRPC_INVALID_ARGUMENT);
  ck_assert_int_eq(handled, 0);
  /* application/grpc+proto is gRPC too. */
  RAW.http_status = 0;
  raw_request(ECHO, "application/grpc+proto", msg, sizeof(msg), 1);
  raw_pump();
  ck_assert_int_eq(RAW.http_status, 200);
  ck_assert_int_eq(RAW.grpc_status, IMC_GRPC_OK);
  ck_assert_int_eq(handled, 1);
  raw_free();
}
END_TEST

START_TEST(test_compressed_flag) {
  raw_rig(NULL);
  static const uint8_t msg[] = {1, 0, 0, 0, 1, 'x'};
  raw_request(ECHO, "application/grpc", msg, sizeof(msg), 1);
  raw_pump();
  ck_assert_int_eq(RAW.http_status, 200);
  ck_assert_int_eq(RAW.grpc_status, IMC_GRPC_UNIMPLEMENTED);
  ck_assert_str_eq(RAW.grpc_message, "compressed messages are not supported");
  ck_assert_int_eq(handled, 0);
  raw_free();
}
END_TEST

START_TEST(test_malformed_messages) {
  raw_rig(NULL);
  static const uint8_t two[] = {0, 0, 0, 0, 1, 'x', 0, 0, 0, 0, 0};
  raw_request(ECHO, "application/grpc", two, sizeof(two), 1);
  raw_pump();
  ck_assert_int_eq(RAW.grpc_status, IMC_GRPC_INTERNAL);
  static const uint8_t cut[] = {0, 0, 0, 0, 9, 'x'};
  RAW.grpc_status = -1;
  raw_request(ECHO, "application/grpc", cut, sizeof(cut), 1);
  raw_pump();
  ck_assert_int_eq(RAW.grpc_status, IMC_GRPC_INTERNAL);
  RAW.grpc_status = -1;
  nghttp2_nv nv[] = {
      NV(":method", "POST"),
      NV(":scheme", "http"),
      NV(":path", ECHO),
      NV(":authority", "x"),
      NV("content-type", "application/grpc"),
  };
  nghttp2_submit_request(RAW.h2, NULL, nv, 5, NULL, NULL); /* no DATA */
  raw_pump();
  ck_assert_int_eq(RAW.grpc_status, IMC_GRPC_INTERNAL);
  ck_assert_str_eq(RAW.grpc_message, "no request message");
  static const uint8_t flag[] = {7, 0, 0, 0, 0};
  RAW.grpc_status = -1;
  raw_request(ECHO, "application/grpc", flag, sizeof(flag), 1);
  raw_pump();
  ck_assert_int_eq(RAW.grpc_status, IMC_GRPC_INTERNAL);
  ck_assert_int_eq(handled, 0);
  raw_free();
}
END_TEST

START_TEST(test_header_list_bound) {
  rig_cfg cfg = {.max_header_list = 2048};
  raw_rig(&cfg);
  raw_pump(); /* the server's SETTINGS */
  static char big[4000];
  memset(big, 'v', sizeof(big) - 1);
  nghttp2_nv nv[] = {
      NV(":method", "POST"),
      NV(":scheme", "http"),
      NV(":path", ECHO),
      NV(":authority", "x"),
      NV("content-type", "application/grpc"),
      NV("x-big", big),
  };
  nghttp2_submit_request(RAW.h2, NULL, nv, 6, NULL, NULL);
  raw_pump();
  ck_assert_int_eq(RAW.grpc_status, IMC_GRPC_RESOURCE_EXHAUSTED);
  ck_assert_int_eq(handled, 0);
  raw_free();
}
END_TEST

/* HTTP/2 Rapid Reset: requests opened and reset at once, past the bound,
 * get GOAWAY ENHANCE_YOUR_CALM and the connection closes. */
START_TEST(test_rapid_reset) {
  rig_cfg cfg = {.reset_max = 20, .reset_interval = 1000};
  raw_rig(&cfg);
  raw_pump();
  for (int i = 0; i < 20; i++)
    raw_rapid_reset();
  raw_pump();
  ck_assert_int_eq(RAW.goaway, 0); /* at the bound: still served */
  ck_assert_int_eq(R.conn_gone, 0);
  for (int i = 0; i < 10; i++)
    raw_rapid_reset();
  raw_pump();
  ck_assert_int_eq(RAW.goaway, 1);
  ck_assert_uint_eq(RAW.goaway_code, NGHTTP2_ENHANCE_YOUR_CALM);
  ck_assert_int_eq(R.conn_gone, 1);
  ck_assert_int_eq(R.ssock.closed, 1);
  ck_assert_int_eq(handled, 0);
  raw_free();
}
END_TEST

/* A burst far past the bound, in one read, gets the GOAWAY too: nghttp2's
 * own reset bound (twice ours) does not answer first. */
START_TEST(test_rapid_reset_burst) {
  rig_cfg cfg = {.reset_max = 20, .reset_interval = 1000};
  raw_rig(&cfg);
  raw_pump();
  static uint8_t burst[64 * 1024];
  size_t len = 0;
  for (int i = 0; i < 200; i++) {
    int32_t id = raw_request(HOLD, "application/grpc", NULL, 0, 0);
    len = raw_collect(burst, len, sizeof(burst));
    nghttp2_submit_rst_stream(RAW.h2, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
    len = raw_collect(burst, len, sizeof(burst));
  }
  if (imc_grpc_conn_recv(R.sc, burst, len) < 0)
    R.conn_gone = 1;
  raw_pump();
  ck_assert_int_eq(RAW.goaway, 1);
  ck_assert_uint_eq(RAW.goaway_code, NGHTTP2_ENHANCE_YOUR_CALM);
  ck_assert_int_eq(R.conn_gone, 1);
  ck_assert_int_eq(handled, 0);
  raw_free();
}
END_TEST

/* Resets spread over intervals stay under the bound. */
START_TEST(test_resets_spread) {
  rig_cfg cfg = {.reset_max = 20, .reset_interval = 1000};
  raw_rig(&cfg);
  raw_pump();
  for (int round = 0; round < 5; round++) {
    for (int i = 0; i < 15; i++) {
      int32_t id = raw_request(HOLD, "application/grpc", NULL, 0, 0);
      nghttp2_submit_rst_stream(RAW.h2, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
    }
    raw_pump();
    test_clock_advance(&R.tc, 1000);
  }
  ck_assert_int_eq(RAW.goaway, 0);
  ck_assert_int_eq(R.conn_gone, 0);
  raw_free();
}
END_TEST

/* Bytes that are not HTTP/2 close the connection. */
START_TEST(test_bad_preface) {
  rig_init(&R, NULL);
  static const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  ck_assert_int_lt(
      imc_grpc_conn_recv(R.sc, (const uint8_t *)junk, sizeof(junk) - 1), 0);
  R.conn_gone = 1;
  ck_assert_int_eq(R.ssock.closed, 1);
}
END_TEST

/* One HTTP/2 frame header (RFC 9113 4.1) at out. */
static size_t frame_head(uint8_t *out, size_t len, uint8_t type, uint8_t flags,
                         uint32_t stream) {
  const uint8_t h[9] = {(uint8_t)(len >> 16),
                        (uint8_t)(len >> 8),
                        (uint8_t)len,
                        type,
                        flags,
                        (uint8_t)(stream >> 24),
                        (uint8_t)(stream >> 16),
                        (uint8_t)(stream >> 8),
                        (uint8_t)stream};
  memcpy(out, h, 9);
  return 9;
}

/* CONTINUATION flood (CVE-2024-28182): a header block that never ends
 * closes the connection after 8 CONTINUATION frames. */
START_TEST(test_continuation_flood) {
  rig_init(&R, NULL);
  static uint8_t in[4096];
  size_t n = 0;
  memcpy(in, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24);
  n = 24;
  n += frame_head(in + n, 0, 0x4, 0, 0); /* SETTINGS */
  n += frame_head(in + n, 1, 0x1, 0, 1); /* HEADERS, no END_HEADERS */
  in[n++] = 0x83;                        /* :method POST */
  for (int i = 0; i < 20; i++) {
    n += frame_head(in + n, 1, 0x9, 0, 1); /* CONTINUATION */
    in[n++] = 0x86;                        /* :scheme http */
  }
  int rv = imc_grpc_conn_recv(R.sc, in, n);
  if (rv == 0)
    imc_grpc_server_flush(R.s);
  R.conn_gone = 1;
  ck_assert_int_eq(R.ssock.closed, 1);
  ck_assert_int_eq(handled, 0);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Encodings and the status mapping                                     */
/* ------------------------------------------------------------------ */

START_TEST(test_status_mapping) {
  ck_assert_str_eq(imc_grpc_status_name(IMC_GRPC_DEADLINE_EXCEEDED),
                   "DEADLINE_EXCEEDED");
  ck_assert_str_eq(imc_grpc_status_name(16), "UNAUTHENTICATED");
  ck_assert_str_eq(imc_grpc_status_name(17), "UNKNOWN");
  ck_assert_str_eq(imc_grpc_status_name(-1), "UNKNOWN");
  static const int one_to_one[] = {
      0,
      IMC_ERR_INVALID_ARGUMENT,
      IMC_ERR_NOT_FOUND,
      IMC_ERR_EXISTS,
      IMC_ERR_FORBIDDEN,
      IMC_ERR_AUTH,
      IMC_ERR_BLOCKED,
      IMC_ERR_UNAVAILABLE,
      IMC_ERR_CLOSED,
  };
  for (size_t i = 0; i < sizeof(one_to_one) / sizeof(one_to_one[0]); i++)
    ck_assert_int_eq(
        imc_grpc_status_to_error(imc_grpc_status_from_error(one_to_one[i])),
        one_to_one[i]);
  ck_assert_int_eq(imc_grpc_status_from_error(IMC_ERR_TOO_LARGE),
                   IMC_GRPC_RESOURCE_EXHAUSTED);
  ck_assert_int_eq(imc_grpc_status_from_error(IMC_ERR_RATE_LIMITED),
                   IMC_GRPC_RESOURCE_EXHAUSTED);
  ck_assert_int_eq(imc_grpc_status_from_error(IMC_ERR_EXPIRED),
                   IMC_GRPC_UNAUTHENTICATED);
  ck_assert_int_eq(imc_grpc_status_from_error(IMC_ERR_PROTO),
                   IMC_GRPC_INTERNAL);
  ck_assert_int_eq(imc_grpc_status_from_error(IMC_ERR_REVOKED),
                   IMC_GRPC_ABORTED);
  ck_assert_int_eq(imc_grpc_status_from_error(-12345), IMC_GRPC_INTERNAL);
  ck_assert_int_eq(imc_grpc_status_to_error(IMC_GRPC_DEADLINE_EXCEEDED),
                   IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(imc_grpc_status_to_error(IMC_GRPC_UNIMPLEMENTED),
                   IMC_ERR_INTERNAL);
  ck_assert_int_eq(imc_grpc_status_to_error(99), IMC_ERR_INTERNAL);
}
END_TEST

START_TEST(test_encodings) {
  test_mem_init(&R.tm);
  const imc_mem *m = &R.tm.mem;
  char *e = rpc_pct_encode(m, "a b%c\n\xc3\xa9");
  ck_assert_str_eq(e, "a b%25c%0A%C3%A9");
  char *d = rpc_pct_decode(m, (const uint8_t *)e, strlen(e));
  ck_assert_str_eq(d, "a b%c\n\xc3\xa9");
  imc_free(m, e);
  imc_free(m, d);
  d = rpc_pct_decode(m, (const uint8_t *)"100%", 4); /* not an escape */
  ck_assert_str_eq(d, "100%");
  imc_free(m, d);
  d = rpc_pct_decode(m, (const uint8_t *)"%zz%4", 5);
  ck_assert_str_eq(d, "%zz%4");
  imc_free(m, d);

  int64_t ms;
  ck_assert_int_eq(rpc_timeout_parse((const uint8_t *)"1H", 2, &ms), 0);
  ck_assert_int_eq(ms, 3600000);
  ck_assert_int_eq(rpc_timeout_parse((const uint8_t *)"2M", 2, &ms), 0);
  ck_assert_int_eq(ms, 120000);
  ck_assert_int_eq(rpc_timeout_parse((const uint8_t *)"3S", 2, &ms), 0);
  ck_assert_int_eq(ms, 3000);
  ck_assert_int_eq(rpc_timeout_parse((const uint8_t *)"250m", 4, &ms), 0);
  ck_assert_int_eq(ms, 250);
  ck_assert_int_eq(rpc_timeout_parse((const uint8_t *)"1500u", 5, &ms), 0);
  ck_assert_int_eq(ms, 2);
  ck_assert_int_eq(rpc_timeout_parse((const uint8_t *)"1n", 2, &ms), 0);
  ck_assert_int_eq(ms, 1);
  ck_assert_int_eq(rpc_timeout_parse((const uint8_t *)"123456789m", 10, &ms),
                   -1);
  ck_assert_int_eq(rpc_timeout_parse((const uint8_t *)"m", 1, &ms), -1);
  ck_assert_int_eq(rpc_timeout_parse((const uint8_t *)"1x", 2, &ms), -1);
  ck_assert_int_eq(rpc_timeout_parse((const uint8_t *)"-1S", 3, &ms), -1);
  char buf[16];
  size_t n = rpc_timeout_format(250, buf);
  ck_assert_str_eq(buf, "250m");
  ck_assert_uint_eq(n, 4);
  rpc_timeout_format(100000000, buf);
  ck_assert_str_eq(buf, "100000S");
  for (int64_t t = 1; t < 99999999LL * 3600000; t = t * 7 + 3) {
    n = rpc_timeout_format(t, buf);
    ck_assert_int_eq(rpc_timeout_parse((const uint8_t *)buf, n, &ms), 0);
    ck_assert_int_ge(ms, t);
  }

  int err;
  ck_assert_int_eq(rpc_error_parse((const uint8_t *)"-506", 4, &err), 0);
  ck_assert_int_eq(err, IMC_ERR_TOO_LARGE);
  ck_assert_int_eq(rpc_error_parse((const uint8_t *)"-500", 4, &err), -1);
  ck_assert_int_eq(rpc_error_parse((const uint8_t *)"506", 3, &err), -1);
  ck_assert_int_eq(rpc_status_parse((const uint8_t *)"14", 2), 14);
  ck_assert_int_eq(rpc_status_parse((const uint8_t *)"17", 2),
                   IMC_GRPC_UNKNOWN);
  ck_assert_int_eq(rpc_status_parse((const uint8_t *)"", 0), IMC_GRPC_UNKNOWN);
  ck_assert_int_eq(R.tm.live, 0);
}
END_TEST

START_TEST(test_arguments) {
  imc_grpc_server_options *so = NULL;
  ck_assert_int_eq(imc_grpc_server_options_new(NULL, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_grpc_server_options_new(&so, NULL), 0);
  imc_grpc_server *s = NULL;
  ck_assert_int_eq(imc_grpc_server_new(&s, so, NULL),
                   IMC_ERR_INVALID_ARGUMENT); /* no transport */
  ck_assert_int_eq(imc_grpc_server_options_add_method(so, "Echo", h_echo, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_grpc_server_options_add_method(so, "/a/", h_echo, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_grpc_server_options_add_method(so, "//b", h_echo, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_grpc_server_options_add_method(so, ECHO, NULL, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_grpc_server_options_add_method(so, ECHO, h_echo, 0), 0);
  ck_assert_int_eq(imc_grpc_server_options_add_method(so, ECHO, h_echo, 0),
                   IMC_ERR_EXISTS);
  ck_assert_int_eq(imc_grpc_server_options_set_max_message(so, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_grpc_server_options_set_max_streams(so, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_grpc_server_options_set_max_header_list(so, 100),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_grpc_server_options_set_reset_limit(so, 0, 1),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_grpc_server_options_set_transport(so, NULL, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  imc_grpc_server_options_del(so);

  imc_grpc_client_options *co = NULL;
  ck_assert_int_eq(imc_grpc_client_options_new(&co, NULL), 0);
  imc_grpc_client *c = NULL;
  ck_assert_int_eq(imc_grpc_client_new(&c, co, NULL), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_grpc_client_options_set_authority(co, ""),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(
      imc_grpc_client_options_set_transport(co, &test_sock_transport, NULL), 0);
  ck_assert_int_eq(imc_grpc_client_new(&c, co, NULL), 0);
  imc_grpc_client_options_del(co);
  result r = {0};
  ck_assert_int_eq(imc_grpc_client_call(c, "nope", NULL, 0, 0, on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_grpc_client_call(c, ECHO, NULL, 3, 0, on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_grpc_client_call(c, ECHO, NULL, 0, -1, on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_grpc_client_call(c, ECHO, NULL, 0, 0, NULL, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  /* Deleting the client cancels what it holds. */
  ck_assert_int_eq(imc_grpc_client_call(c, ECHO, NULL, 0, 0, on_done, &r), 0);
  imc_grpc_client_del(c);
  ck_assert_int_eq(r.n, 1);
  ck_assert_int_eq(r.status, IMC_GRPC_CANCELLED);
  ck_assert_int_eq(r.error, IMC_ERR_CLOSED);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Allocation failures                                                  */
/* ------------------------------------------------------------------ */

/* Every allocation in turn fails: no crash, no leak, and every call that
 * started completes exactly once. */
START_TEST(test_nomem) {
  int finished = 0;
  for (long k = 0; !finished && k < 20000; k++) {
    memset(&R, 0, sizeof(R));
    test_mem_init(&R.tm);
    test_clock_init(&R.tc, 1700000000000LL);
    R.tm.fail_at = k;
    n_held = 0;
    result res[4];
    memset(res, 0, sizeof(res));
    int started[4] = {0};
    if (make_server(&R, NULL) == 0 && make_client(&R, NULL) == 0) {
      static const char *const methods[] = {ECHO, FAIL, ECHO, HOLD};
      static const char *const reqs[] = {"one", "506", "three", "four"};
      for (int i = 0; i < 4; i++)
        started[i] = call(&R, methods[i], reqs[i], 500, &res[i]) == 0;
      pump(&R);
      for (int i = 0; i < n_held; i++)
        imc_grpc_call_reply(held[i].call, IMC_GRPC_OK, NULL, NULL, 0);
      n_held = 0;
      pump(&R);
      test_clock_advance(&R.tc, 500);
      imc_grpc_server_on_timeout(R.s);
      imc_grpc_client_on_timeout(R.c);
      pump(&R);
      for (int i = 0; i < 4; i++) {
        if (started[i])
          ck_assert_int_eq(res[i].n, 1);
        else
          ck_assert_int_eq(res[i].n, 0);
      }
      if (R.tm.count <= k) {
        /* No allocation failed: the run must have fully succeeded. */
        finished = 1;
        ck_assert_int_eq(res[0].status, IMC_GRPC_OK);
        ck_assert_int_eq(res[1].error, IMC_ERR_TOO_LARGE);
        ck_assert_int_eq(res[3].status, IMC_GRPC_OK);
      }
    }
    for (int i = 0; i < n_held; i++)
      imc_grpc_call_reply(held[i].call, IMC_GRPC_OK, NULL, NULL, 0);
    rig_free(&R);
    ck_assert_msg(R.tm.live == 0, "leak with allocation %ld failing", k);
  }
  ck_assert(finished);
}
END_TEST

/* ------------------------------------------------------------------ */
/* The gateway's upstream to a real router over gRPC                    */
/* ------------------------------------------------------------------ */

typedef struct link {
  imc_sqlite *db;
  imc_memreg *reg;
  imc_membus *bus;
  imc_router *r;
  imc_grpc_router_service *svc;
  imc_grpc_upstream *up;
  imc_router *r2; /* a second router on the same backends, behind R2 */
  imc_grpc_router_service *svc2;
  int statuses; /* the router's gwlink status calls */
  char status_node[64], status_user[64], status_recipient[64];
  int status_state;
} link;

static link L;
static rig R2;

static int l_deliver(void *ud, const char *node_id, const char *user_id,
                     const char *skip_device, const imc_msg *msg,
                     imc_count_cb done, void *done_ud) {
  (void)ud;
  done(done_ud, 0, 0);
  return 0;
}

static int l_status(void *ud, const char *node_id, const char *user_id,
                    const char *device_id, const char *msg_id,
                    const char *client_msg_id, imc_delivery_state state,
                    const char *recipient, imc_done_cb done, void *done_ud) {
  (void)ud;
  L.statuses++;
  snprintf(L.status_node, sizeof(L.status_node), "%s", node_id);
  snprintf(L.status_user, sizeof(L.status_user), "%s", user_id);
  snprintf(L.status_recipient, sizeof(L.status_recipient), "%s",
           recipient ? recipient : "");
  L.status_state = (int)state;
  done(done_ud, 0);
  return 0;
}

static const imc_gwlink_vtbl l_gwlink = {sizeof(imc_gwlink_vtbl), l_deliver,
                                         l_status};

/* The Router service of rt on a server of r, and a client of r connected
 * to it, allocating from r->tm. Returns 0 or the first error. */
static int serve_router(rig *r, imc_router *rt, imc_grpc_router_service **svc) {
  imc_grpc_server_options *so;
  int rv = imc_grpc_router_service_new(svc, rt, &r->tm.mem);
  if (rv < 0 || (rv = imc_grpc_server_options_new(&so, &r->tm.mem)) < 0)
    return rv;
  rv = imc_grpc_router_service_add(*svc, so);
  if (rv == 0)
    ck_assert_int_eq(imc_grpc_router_service_add(*svc, so), IMC_ERR_EXISTS);
  imc_grpc_server_options_set_transport(so, &test_sock_transport, NULL);
  imc_grpc_server_options_set_clock(so, &r->tc.clock);
  if (rv == 0)
    rv = imc_grpc_server_new(&r->s, so, &r->tm.mem);
  imc_grpc_server_options_del(so);
  if (rv == 0)
    rv = imc_grpc_conn_new(r->s, &r->sc, &r->ssock);
  if (rv == 0)
    rv = make_client(r, NULL);
  return rv;
}

/* The gRPC side of the link: the router served on R, an upstream on R's
 * client, allocating from R.tm. Returns 0 or the first error. */
static int link_grpc(void) {
  int rv = serve_router(&R, L.r, &L.svc);
  if (rv == 0)
    rv = imc_grpc_upstream_new(&L.up, &R.tm.mem);
  if (rv == 0)
    rv = imc_grpc_upstream_add_client(L.up, R.c);
  return rv;
}

/* A router on the link's backends, on R's clock. */
static imc_router *make_router(void) {
  imc_router_options *ro;
  ck_assert_int_eq(imc_router_options_new(&ro, NULL), 0);
  imc_router_options_set_registry(ro, imc_memreg_vtbl(), L.reg);
  imc_router_options_set_seq(ro, imc_sqlite_seq_vtbl(), L.db);
  imc_router_options_set_dedup(ro, imc_sqlite_dedup_vtbl(), L.db);
  imc_router_options_set_store(ro, imc_sqlite_store_vtbl(), L.db);
  imc_router_options_set_queue(ro, imc_sqlite_bus_vtbl(), L.db);
  imc_router_options_set_group_bus(ro, imc_membus_vtbl(), L.bus);
  imc_router_options_set_gwlink(ro, &l_gwlink, NULL);
  imc_router_options_set_clock(ro, &R.tc.clock);
  imc_router_options_set_max_body(ro, 16);
  imc_router *r;
  ck_assert_int_eq(imc_router_new(&r, ro, NULL), 0);
  imc_router_options_del(ro);
  return r;
}

/* A router on the embedded backends (the gRPC side comes from
 * link_grpc). */
static void link_backends(void) {
  memset(&R, 0, sizeof(R));
  memset(&R2, 0, sizeof(R2));
  memset(&L, 0, sizeof(L));
  test_mem_init(&R.tm);
  test_mem_init(&R2.tm);
  test_clock_init(&R.tc, 1700000000000LL);
  test_clock_init(&R2.tc, 1700000000000LL);
  ck_assert_int_eq(imc_sqlite_new(&L.db, ":memory:", &R.tc.clock, NULL), 0);
  ck_assert_int_eq(imc_memreg_new(&L.reg, &R.tc.clock, NULL), 0);
  ck_assert_int_eq(imc_membus_new(&L.bus, NULL), 0);
  L.r = make_router();
}

static void link_init(void) {
  link_backends();
  ck_assert_int_eq(link_grpc(), 0);
}

/* A second im-service: another router on the same backends, served on
 * R2, its client added to the upstream. */
static void link_second(void) {
  L.r2 = make_router();
  ck_assert_int_eq(serve_router(&R2, L.r2, &L.svc2), 0);
  ck_assert_int_eq(imc_grpc_upstream_add_client(L.up, R2.c), 0);
}

static void link_free(void) {
  imc_grpc_upstream_del(L.up);
  rig_free(&R);
  rig_free(&R2);
  imc_grpc_router_service_del(L.svc);
  imc_grpc_router_service_del(L.svc2);
  ck_assert_int_eq(R2.tm.live, 0);
  imc_router_del(L.r2);
  imc_router_del(L.r);
  imc_membus_del(L.bus);
  imc_memreg_del(L.reg);
  imc_sqlite_del(L.db);
}

/* Runs both sides and the backends until all is quiet. */
static void link_pump(void) {
  for (int i = 0; i < 20; i++) {
    pump(&R);
    if (R2.c)
      pump(&R2);
    imc_sqlite_dispatch(L.db);
    imc_membus_dispatch(L.bus);
    imc_router_on_timeout(L.r);
    if (L.r2)
      imc_router_on_timeout(L.r2);
  }
  pump(&R);
  if (R2.c)
    pump(&R2);
}

typedef struct sent {
  int n;
  int status;
  char msg[128];
  char msg_id[64];
  char conv[64];
  uint64_t seq;
} sent;

static void on_sent(void *ud, int status, const imc_send_result *res,
                    const char *message) {
  sent *s = ud;
  s->n++;
  s->status = status;
  snprintf(s->msg, sizeof(s->msg), "%s", message ? message : "");
  if (res) {
    snprintf(s->msg_id, sizeof(s->msg_id), "%s", res->msg_id);
    snprintf(s->conv, sizeof(s->conv), "%s", res->conversation_id);
    s->seq = res->seq;
  }
}

typedef struct reported {
  int n;
  int status;
} reported;

static void on_reported(void *ud, int status) {
  reported *r = ud;
  r->n++;
  r->status = status;
}

static int up_send(const char *to_user, const char *group, const char *body,
                   const char *cmid, sent *out) {
  imc_send_req q = {.struct_size = sizeof(q),
                    .from_user = "alice",
                    .from_device = "phone",
                    .node_id = "gw-1",
                    .conn_id = 5,
                    .client_msg_id = cmid,
                    .to_user = to_user,
                    .group_id = group,
                    .body = (const uint8_t *)body,
                    .body_len = strlen(body),
                    .content_type = "text/plain"};
  return imc_grpc_upstream_vtbl()->send(L.up, &q, on_sent, out);
}

START_TEST(test_upstream_send) {
  link_init();
  sent a = {0}, b = {0}, c = {0};
  ck_assert_int_eq(up_send("bob", "", "hi", "c-1", &a), 0);
  ck_assert_int_eq(up_send("bob", "", "a body over 16 bytes", "c-2", &b), 0);
  ck_assert_int_eq(up_send("", "g1", "hi", "c-3", &c), 0);
  link_pump();
  ck_assert_int_eq(a.n, 1);
  ck_assert_int_eq(a.status, 0);
  ck_assert_uint_eq(a.seq, 1);
  ck_assert_str_eq(a.conv, "p:alice:bob");
  ck_assert_int_ne(a.msg_id[0], 0);
  /* Errors keep their IMC_ERR_* across the link. */
  ck_assert_int_eq(b.n, 1);
  ck_assert_int_eq(b.status, IMC_ERR_TOO_LARGE);
  ck_assert_int_eq(c.n, 1);
  ck_assert_int_eq(c.status, IMC_ERR_FORBIDDEN);
  /* A resend is answered from the router's dedup set. */
  sent again = {0};
  ck_assert_int_eq(up_send("bob", "", "hi", "c-1", &again), 0);
  link_pump();
  ck_assert_int_eq(again.status, 0);
  ck_assert_str_eq(again.msg_id, a.msg_id);
  ck_assert_uint_eq(again.seq, 1);
  ck_assert_int_eq(imc_grpc_server_pending(R.s), 0);
  link_free();
}
END_TEST

/* Calls a Router method with a packed request on the rig's client. */
static void router_call(const char *method, const ProtobufCMessage *pm,
                        result *res) {
  uint8_t buf[256];
  size_t n = protobuf_c_message_pack(pm, buf);
  ck_assert_int_eq(
      imc_grpc_client_call(R.c, method, buf, n, 5000, on_done, res), 0);
}

START_TEST(test_router_groups) {
  link_init();
  Imchat__V1__GroupMemberRequest gm = IMCHAT__V1__GROUP_MEMBER_REQUEST__INIT;
  gm.group_id = "g1";
  gm.user_id = "alice";
  result add = {0}, add2 = {0}, list = {0}, bad = {0};
  router_call("/imchat.v1.Router/GroupAdd", &gm.base, &add);
  gm.user_id = "bob";
  router_call("/imchat.v1.Router/GroupAdd", &gm.base, &add2);
  link_pump();
  ck_assert_int_eq(add.status, IMC_GRPC_OK);
  ck_assert_int_eq(add2.status, IMC_GRPC_OK);
  Imchat__V1__GroupRequest gr = IMCHAT__V1__GROUP_REQUEST__INIT;
  gr.group_id = "g1";
  router_call("/imchat.v1.Router/GroupMembers", &gr.base, &list);
  link_pump();
  ck_assert_int_eq(list.status, IMC_GRPC_OK);
  Imchat__V1__GroupMembersReply *rep =
      imchat__v1__group_members_reply__unpack(NULL, list.len, list.resp);
  ck_assert_ptr_nonnull(rep);
  ck_assert_uint_eq(rep->n_user_ids, 2);
  imchat__v1__group_members_reply__free_unpacked(rep, NULL);
  /* Now alice may send to the group. */
  sent s = {0};
  ck_assert_int_eq(up_send("", "g1", "hi all", "c-9", &s), 0);
  link_pump();
  ck_assert_int_eq(s.status, 0);
  ck_assert_str_eq(s.conv, "g:g1");
  /* Bytes that are no RouteRequest. */
  static const uint8_t junk[] = {0xff, 0xff, 0xff};
  ck_assert_int_eq(imc_grpc_client_call(R.c, "/imchat.v1.Router/Send", junk,
                                        sizeof(junk), 0, on_done, &bad),
                   0);
  link_pump();
  ck_assert_int_eq(bad.status, IMC_GRPC_INVALID_ARGUMENT);
  link_free();
}
END_TEST

START_TEST(test_upstream_reports) {
  link_init();
  imc_msg m = {.struct_size = sizeof(m),
               .msg_id = "m-1",
               .conversation_id = "p:alice:bob",
               .seq = 1,
               .from_user = "alice",
               .to_user = "bob",
               .body = (const uint8_t *)"hi",
               .body_len = 2,
               .content_type = "text/plain",
               .sent_at_ms = 1700000000000LL,
               .client_msg_id = "c-1",
               .from_device = "phone",
               .from_node = "gw-7",
               .from_conn_id = 3};
  imc_delivery_ack acks[2] = {{&m, "bob", "tab"}, {&m, "bob", "phone"}};
  reported d = {0}, u = {0}, one = {0};
  const imc_upstream_vtbl *vt = imc_grpc_upstream_vtbl();
  ck_assert_int_eq(vt->delivered_many(L.up, acks, 2, on_reported, &d), 0);
  link_pump();
  ck_assert_int_eq(d.n, 1);
  ck_assert_int_eq(d.status, 0);
  /* The router sent DELIVERED to the node the message came from. */
  ck_assert_int_eq(L.statuses, 1);
  ck_assert_str_eq(L.status_node, "gw-7");
  ck_assert_str_eq(L.status_user, "alice");
  ck_assert_str_eq(L.status_recipient, "bob");
  ck_assert_int_eq(L.status_state, IMC_DELIVERED);
  ck_assert_int_eq(vt->delivered(L.up, &m, "bob", "tab", on_reported, &one), 0);
  ck_assert_int_eq(vt->undelivered(L.up, &m, "carol", on_reported, &u), 0);
  link_pump();
  ck_assert_int_eq(one.status, 0);
  ck_assert_int_eq(u.n, 1);
  ck_assert_int_eq(u.status, 0);
  /* Without a usable connection, operations fail at once. */
  imc_grpc_upstream_remove_client(L.up, R.c);
  imc_grpc_upstream_remove_client(L.up, R.c); /* absent: nothing happens */
  sent s = {0};
  ck_assert_int_eq(up_send("bob", "", "hi", "c-5", &s), IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(imc_grpc_upstream_add_client(L.up, R.c), 0);
  ck_assert_int_eq(imc_grpc_upstream_add_client(L.up, R.c), IMC_ERR_EXISTS);
  ck_assert_int_eq(imc_grpc_upstream_add_client(L.up, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_grpc_upstream_add_client(NULL, R.c),
                   IMC_ERR_INVALID_ARGUMENT);
  imc_grpc_client_closed(R.c);
  ck_assert_int_eq(vt->undelivered(L.up, &m, "carol", on_reported, &u),
                   IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(s.n, 0);
  link_free();
}
END_TEST

/* Two im-services on the same backends behind one upstream: operations
 * alternate between them, an unusable client is skipped, and with none
 * usable an operation fails at once. */
START_TEST(test_upstream_spread) {
  link_init();
  link_second();
  sent s[4] = {{0}};
  char cmid[4][8];
  for (int i = 0; i < 4; i++) {
    snprintf(cmid[i], sizeof(cmid[i]), "c-%d", i);
    ck_assert_int_eq(up_send("bob", "", "hi", cmid[i], &s[i]), 0);
  }
  ck_assert_int_eq(imc_grpc_client_pending(R.c), 2);
  ck_assert_int_eq(imc_grpc_client_pending(R2.c), 2);
  link_pump();
  for (int i = 0; i < 4; i++) {
    ck_assert_int_eq(s[i].n, 1);
    ck_assert_int_eq(s[i].status, 0);
  }
  ck_assert_uint_eq(imc_router_stat_get(L.r, IMC_RT_STAT_SENDS), 2);
  ck_assert_uint_eq(imc_router_stat_get(L.r2, IMC_RT_STAT_SENDS), 2);
  /* c-1 went to the second router; its resend reaches the first, which
   * answers it from the shared dedup set. */
  sent again = {0};
  ck_assert_int_eq(up_send("bob", "", "hi", "c-1", &again), 0);
  ck_assert_int_eq(imc_grpc_client_pending(R.c), 1);
  link_pump();
  ck_assert_int_eq(again.status, 0);
  ck_assert_str_eq(again.msg_id, s[1].msg_id);
  ck_assert_uint_eq(imc_router_stat_get(L.r, IMC_RT_STAT_DUPLICATES), 1);
  /* The first im-service's connection is lost: the second takes every
   * operation, the first one's turn included. */
  imc_grpc_client_closed(R.c);
  imc_grpc_conn_closed(R.sc);
  R.conn_gone = 1;
  ck_assert_int_eq(imc_grpc_client_usable(R.c), 0);
  sent b[2] = {{0}};
  ck_assert_int_eq(up_send("bob", "", "hi", "c-4", &b[0]), 0);
  ck_assert_int_eq(up_send("bob", "", "hi", "c-5", &b[1]), 0);
  ck_assert_int_eq(imc_grpc_client_pending(R2.c), 2);
  link_pump();
  ck_assert_int_eq(b[0].status, 0);
  ck_assert_int_eq(b[1].status, 0);
  ck_assert_uint_eq(imc_router_stat_get(L.r2, IMC_RT_STAT_SENDS), 4);
  ck_assert_uint_eq(imc_router_stat_get(L.r, IMC_RT_STAT_SENDS), 2);
  /* Neither usable: refused at once, never completed. */
  imc_grpc_client_closed(R2.c);
  imc_grpc_conn_closed(R2.sc);
  R2.conn_gone = 1;
  sent none = {0};
  ck_assert_int_eq(up_send("bob", "", "hi", "c-6", &none), IMC_ERR_UNAVAILABLE);
  /* The host replaces a lost client: remove it, add the new one. */
  imc_grpc_upstream_remove_client(L.up, R.c);
  imc_grpc_upstream_remove_client(L.up, R2.c);
  ck_assert_int_eq(up_send("bob", "", "hi", "c-6", &none), IMC_ERR_UNAVAILABLE);
  link_pump();
  ck_assert_int_eq(none.n, 0);
  link_free();
}
END_TEST

typedef struct listed {
  int n;
  int status;
  size_t count;
  char items[4][32];
} listed;

static void on_listed(void *ud, int status, const char *const *items,
                      size_t n) {
  listed *l = ud;
  l->n++;
  l->status = status;
  l->count = n;
  for (size_t i = 0; i < n && i < 4; i++)
    snprintf(l->items[i], sizeof(l->items[i]), "%s", items[i]);
}

/* Group membership for the api as Router calls. */
START_TEST(test_upstream_groups) {
  link_init();
  const imc_groups_vtbl *g = imc_grpc_upstream_groups_vtbl();
  ck_assert_uint_eq(g->struct_size, sizeof(imc_groups_vtbl));
  reported a1 = {0}, a2 = {0}, rm = {0}, bad = {0};
  ck_assert_int_eq(g->add(L.up, "g1", "alice", on_reported, &a1), 0);
  ck_assert_int_eq(g->add(L.up, "g1", "bob", on_reported, &a2), 0);
  ck_assert_int_eq(g->add(L.up, "no group!", "bob", on_reported, &bad), 0);
  link_pump();
  ck_assert_int_eq(a1.n, 1);
  ck_assert_int_eq(a1.status, 0);
  ck_assert_int_eq(a2.status, 0);
  /* The router refused the id; its IMC_ERR_* crossed the link. */
  ck_assert_int_eq(bad.n, 1);
  ck_assert_int_eq(bad.status, IMC_ERR_INVALID_ARGUMENT);
  listed l = {0};
  ck_assert_int_eq(g->members(L.up, "g1", on_listed, &l), 0);
  link_pump();
  ck_assert_int_eq(l.n, 1);
  ck_assert_int_eq(l.status, 0);
  ck_assert_uint_eq(l.count, 2);
  int alice = strcmp(l.items[0], "alice") == 0 ? 0 : 1;
  ck_assert_str_eq(l.items[alice], "alice");
  ck_assert_str_eq(l.items[1 - alice], "bob");
  /* Membership the router enforces: alice may now send to g1. */
  sent s = {0};
  ck_assert_int_eq(up_send("", "g1", "hi all", "c-1", &s), 0);
  ck_assert_int_eq(g->remove(L.up, "g1", "bob", on_reported, &rm), 0);
  link_pump();
  ck_assert_int_eq(s.status, 0);
  ck_assert_int_eq(rm.n, 1);
  ck_assert_int_eq(rm.status, 0);
  listed after = {0}, badl = {0};
  ck_assert_int_eq(g->members(L.up, "g1", on_listed, &after), 0);
  ck_assert_int_eq(g->members(L.up, "no group!", on_listed, &badl), 0);
  link_pump();
  ck_assert_int_eq(after.status, 0);
  ck_assert_uint_eq(after.count, 1);
  ck_assert_str_eq(after.items[0], "alice");
  ck_assert_int_eq(badl.n, 1);
  ck_assert_int_eq(badl.status, IMC_ERR_INVALID_ARGUMENT);
  /* Refused at once: missing arguments, no usable client. */
  ck_assert_int_eq(g->add(L.up, NULL, "bob", on_reported, &bad),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(g->remove(L.up, "g1", NULL, on_reported, &bad),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(g->members(L.up, "g1", NULL, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  imc_grpc_client_closed(R.c);
  ck_assert_int_eq(g->add(L.up, "g1", "bob", on_reported, &bad),
                   IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(g->members(L.up, "g1", on_listed, &badl),
                   IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(bad.n, 1);
  ck_assert_int_eq(badl.n, 1);
  link_free();
}
END_TEST

/* The router answers after the link went down: the late answers are
 * dropped and nothing leaks. */
START_TEST(test_upstream_lost) {
  link_init();
  sent a = {0};
  ck_assert_int_eq(up_send("bob", "", "hi", "c-1", &a), 0);
  imc_grpc_client_flush(R.c);
  feed_server(&R); /* the router has it; the answer has not come back */
  imc_grpc_client_closed(R.c);
  ck_assert_int_eq(a.n, 1);
  ck_assert_int_eq(a.status, IMC_ERR_UNAVAILABLE);
  imc_grpc_conn_closed(R.sc);
  R.conn_gone = 1;
  for (int i = 0; i < 5; i++) {
    imc_sqlite_dispatch(L.db);
    imc_router_on_timeout(L.r);
  }
  ck_assert_int_eq(imc_grpc_server_pending(R.s), 0);
  ck_assert_int_eq(a.n, 1);
  link_free();
}
END_TEST

/* ------------------------------------------------------------------ */
/* The router's gateway link over gRPC                                  */
/* ------------------------------------------------------------------ */

typedef struct counted {
  int n;
  int status;
  int count;
} counted;

static void on_count(void *ud, int status, int count) {
  counted *c = ud;
  c->n++;
  c->status = status;
  c->count = count;
}

static char wanted[64]; /* the node the link's connect callback asked for */

static void on_connect(void *ud, const char *node_id) {
  (void)ud;
  snprintf(wanted, sizeof(wanted), "%s", node_id);
}

/* A fake Gateway.Deliver: checks what the link sent, answers count 3. */
static void h_fake_deliver(void *ud, imc_grpc_call *call, const uint8_t *req,
                           size_t len) {
  (void)ud;
  Imchat__V1__PushRequest *rq =
      imchat__v1__push_request__unpack(NULL, len, req);
  ck_assert_ptr_nonnull(rq);
  ck_assert_str_eq(rq->node_id, "gw-1");
  ck_assert_str_eq(rq->user_id, "bob");
  ck_assert_str_eq(rq->skip_device, "phone");
  ck_assert_ptr_nonnull(rq->message);
  ck_assert_str_eq(rq->message->from_node, "gw-9");
  ck_assert_uint_eq(rq->message->from_conn_id, 4);
  ck_assert_str_eq(rq->message->message->msg_id, "m-1");
  ck_assert_uint_eq(rq->message->message->body.len, 2);
  imchat__v1__push_request__free_unpacked(rq, NULL);
  Imchat__V1__PushReply rep = IMCHAT__V1__PUSH_REPLY__INIT;
  rep.count = 3;
  uint8_t buf[16];
  size_t n = imchat__v1__push_reply__pack(&rep, buf);
  imc_grpc_call_reply(call, IMC_GRPC_OK, NULL, buf, n);
}

static const imc_msg link_msg = {.struct_size = sizeof(imc_msg),
                                 .msg_id = "m-1",
                                 .conversation_id = "p:alice:bob",
                                 .seq = 1,
                                 .from_user = "alice",
                                 .to_user = "bob",
                                 .body = (const uint8_t *)"hi",
                                 .body_len = 2,
                                 .content_type = "text/plain",
                                 .client_msg_id = "c-1",
                                 .from_device = "phone",
                                 .from_node = "gw-9",
                                 .from_conn_id = 4};

START_TEST(test_gwlink_client) {
  memset(&R, 0, sizeof(R));
  test_mem_init(&R.tm);
  test_clock_init(&R.tc, 1700000000000LL);
  imc_grpc_server_options *so;
  ck_assert_int_eq(imc_grpc_server_options_new(&so, &R.tm.mem), 0);
  imc_grpc_server_options_add_method(so, "/imchat.v1.Gateway/Deliver",
                                     h_fake_deliver, NULL);
  imc_grpc_server_options_set_transport(so, &test_sock_transport, NULL);
  ck_assert_int_eq(imc_grpc_server_new(&R.s, so, &R.tm.mem), 0);
  imc_grpc_server_options_del(so);
  ck_assert_int_eq(imc_grpc_conn_new(R.s, &R.sc, &R.ssock), 0);
  ck_assert_int_eq(make_client(&R, NULL), 0);

  imc_grpc_gwlink *l;
  ck_assert_int_eq(imc_grpc_gwlink_new(&l, &R.tm.mem), 0);
  ck_assert_int_eq(imc_grpc_gwlink_set_client(l, "bad node!", R.c),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_grpc_gwlink_set_client(l, "gw-1", R.c), 0);
  imc_grpc_gwlink_set_connect_cb(l, on_connect, NULL);
  const imc_gwlink_vtbl *vt = imc_grpc_gwlink_vtbl();
  counted c = {0};
  ck_assert_int_eq(
      vt->deliver(l, "gw-1", "bob", "phone", &link_msg, on_count, &c), 0);
  pump(&R);
  ck_assert_int_eq(c.n, 1);
  ck_assert_int_eq(c.status, 0);
  ck_assert_int_eq(c.count, 3);
  /* A node without a connection: the calls wait, the host is asked once,
   * and they go out in order when it hands a client over. */
  ck_assert_int_eq(imc_grpc_gwlink_set_client(l, "gw-1", NULL), 0);
  counted d = {0}, d2 = {0};
  ck_assert_int_eq(
      vt->deliver(l, "gw-1", "bob", "phone", &link_msg, on_count, &d), 0);
  ck_assert_str_eq(wanted, "gw-1");
  wanted[0] = '\0';
  ck_assert_int_eq(
      vt->deliver(l, "gw-1", "bob", "phone", &link_msg, on_count, &d2), 0);
  ck_assert_str_eq(wanted, "");
  pump(&R);
  ck_assert_int_eq(d.n + d2.n, 0);
  ck_assert_int_eq(imc_grpc_gwlink_set_client(l, "gw-1", R.c), 0);
  pump(&R);
  ck_assert_int_eq(d.n, 1);
  ck_assert_int_eq(d.count, 3);
  ck_assert_int_eq(d2.n, 1);
  /* A node the host gives up: its waiting calls get the host's error. */
  counted e = {0};
  ck_assert_int_eq(vt->deliver(l, "gw-3", "bob", NULL, &link_msg, on_count, &e),
                   0);
  ck_assert_str_eq(wanted, "gw-3");
  ck_assert_int_eq(imc_grpc_gwlink_fail(l, "gw-3", IMC_ERR_UNAVAILABLE), 0);
  ck_assert_int_eq(e.n, 1);
  ck_assert_int_eq(e.status, IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(imc_grpc_gwlink_fail(l, "gw-3", 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_grpc_gwlink_fail(l, "gw-4", IMC_ERR_UNAVAILABLE), 0);
  /* A method the server lacks: the call's error reaches the router. */
  reported st = {0};
  ck_assert_int_eq(vt->status(l, "gw-1", "alice", "phone", "m-1", "c-1",
                              IMC_DELIVERED, "bob", on_reported, &st),
                   0);
  pump(&R);
  ck_assert_int_eq(st.n, 1);
  ck_assert_int_eq(st.status, IMC_ERR_INTERNAL); /* UNIMPLEMENTED */
  /* Waiting when the link goes: CLOSED. */
  ck_assert_int_eq(imc_grpc_gwlink_set_client(l, "gw-1", NULL), 0);
  counted f = {0};
  ck_assert_int_eq(vt->deliver(l, "gw-1", "bob", NULL, &link_msg, on_count, &f),
                   0);
  imc_grpc_gwlink_del(l);
  ck_assert_int_eq(f.n, 1);
  ck_assert_int_eq(f.status, IMC_ERR_CLOSED);
  /* Without a connect callback nothing waits. */
  ck_assert_int_eq(imc_grpc_gwlink_new(&l, &R.tm.mem), 0);
  counted g = {0};
  ck_assert_int_eq(vt->deliver(l, "gw-1", "bob", NULL, &link_msg, on_count, &g),
                   IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(g.n, 0);
  imc_grpc_gwlink_del(l);
}
END_TEST

static ssize_t drop_send(void *ud, void *conn_ud, const struct iovec *iov,
                         int n) {
  ssize_t t = 0;
  for (int i = 0; i < n; i++)
    t += (ssize_t)iov[i].iov_len;
  return t;
}

static void drop_close(void *ud, void *conn_ud) {}

static const imc_transport_vtbl drop_transport = {sizeof(imc_transport_vtbl),
                                                  drop_send, drop_close, NULL};

/* The Gateway service on a real gateway (node gw-1, nobody connected). */
START_TEST(test_gateway_service) {
  memset(&R, 0, sizeof(R));
  test_mem_init(&R.tm);
  test_clock_init(&R.tc, 1700000000000LL);
  imc_gateway_options *go;
  ck_assert_int_eq(imc_gateway_options_new(&go, NULL), 0);
  imc_gateway_options_set_node_id(go, "gw-1");
  imc_gateway_options_set_jwt_secret(go, (const uint8_t *)"secret", 6);
  imc_gateway_options_set_transport(go, &drop_transport, NULL);
  imc_gateway_options_set_clock(go, &R.tc.clock);
  imc_gateway *gw;
  ck_assert_int_eq(imc_gateway_new(&gw, go, NULL), 0);
  imc_gateway_options_del(go);

  imc_grpc_gateway_service *svc;
  ck_assert_int_eq(imc_grpc_gateway_service_new(&svc, gw, &R.tm.mem), 0);
  imc_grpc_server_options *so;
  ck_assert_int_eq(imc_grpc_server_options_new(&so, &R.tm.mem), 0);
  ck_assert_int_eq(imc_grpc_gateway_service_add(svc, so), 0);
  imc_grpc_server_options_set_transport(so, &test_sock_transport, NULL);
  ck_assert_int_eq(imc_grpc_server_new(&R.s, so, &R.tm.mem), 0);
  imc_grpc_server_options_del(so);
  ck_assert_int_eq(imc_grpc_conn_new(R.s, &R.sc, &R.ssock), 0);
  ck_assert_int_eq(make_client(&R, NULL), 0);

  imc_grpc_gwlink *l;
  ck_assert_int_eq(imc_grpc_gwlink_new(&l, &R.tm.mem), 0);
  imc_grpc_gwlink_set_client(l, "gw-1", R.c);
  imc_grpc_gwlink_set_client(l, "gw-2", R.c); /* a stale address */
  const imc_gwlink_vtbl *vt = imc_grpc_gwlink_vtbl();
  counted a = {0}, b = {0};
  reported st = {0}, st2 = {0};
  ck_assert_int_eq(vt->deliver(l, "gw-1", "bob", NULL, &link_msg, on_count, &a),
                   0);
  ck_assert_int_eq(vt->deliver(l, "gw-2", "bob", NULL, &link_msg, on_count, &b),
                   0);
  ck_assert_int_eq(vt->status(l, "gw-1", "alice", "phone", "m-1", "c-1",
                              IMC_DELIVERED, "bob", on_reported, &st),
                   0);
  ck_assert_int_eq(vt->status(l, "gw-1", "alice", "phone", "m-1", "c-1",
                              (imc_delivery_state)7, "bob", on_reported, &st2),
                   0);
  pump(&R);
  ck_assert_int_eq(a.n, 1);
  ck_assert_int_eq(a.status, 0);
  ck_assert_int_eq(a.count, 0); /* bob has no connection here */
  ck_assert_int_eq(b.status, IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(st.status, 0);
  ck_assert_int_eq(st2.status, IMC_ERR_INVALID_ARGUMENT);
  imc_grpc_gwlink_del(l);
  rig_free(&R);
  imc_grpc_gateway_service_del(svc);
  imc_gateway_del(gw);
}
END_TEST

/* Allocation failures on the gRPC side of the link: every operation that
 * started completes once, nothing leaks. */
START_TEST(test_link_nomem) {
  int finished = 0;
  for (long k = 0; !finished && k < 20000; k++) {
    link_backends();
    R.tm.fail_at = k;
    sent a = {0}, b = {0};
    reported d = {0};
    listed m = {0};
    int started[4] = {0};
    if (link_grpc() == 0) {
      imc_delivery_ack ack = {&link_msg, "bob", "tab"};
      started[0] = up_send("bob", "", "hi", "c-1", &a) == 0;
      started[1] = up_send("", "g1", "hi", "c-2", &b) == 0;
      started[2] = imc_grpc_upstream_vtbl()->delivered_many(
                       L.up, &ack, 1, on_reported, &d) == 0;
      started[3] = imc_grpc_upstream_groups_vtbl()->members(L.up, "g1",
                                                            on_listed, &m) == 0;
      link_pump();
      test_clock_advance(&R.tc, 10000); /* the upstream's deadline */
      imc_grpc_client_on_timeout(R.c);
      imc_grpc_server_on_timeout(R.s);
      link_pump();
      ck_assert_int_eq(a.n, started[0]);
      ck_assert_int_eq(b.n, started[1]);
      ck_assert_int_eq(d.n, started[2]);
      ck_assert_int_eq(m.n, started[3]);
      if (R.tm.count <= k) {
        finished = 1;
        ck_assert_int_eq(a.status, 0);
        ck_assert_int_eq(b.status, IMC_ERR_FORBIDDEN);
        ck_assert_int_eq(d.status, 0);
        ck_assert_int_eq(m.status, 0);
      }
    }
    link_free();
    ck_assert_msg(R.tm.live == 0, "leak with allocation %ld failing", k);
  }
  ck_assert(finished);
}
END_TEST

static Suite *grpc_suite(void) {
  Suite *s = suite_create("grpc");
  TCase *tc = tcase_create("core");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_unary);
  tcase_add_test(tc, test_many_concurrent);
  tcase_add_test(tc, test_stream_limit);
  tcase_add_test(tc, test_error_trailers);
  tcase_add_test(tc, test_unknown_method);
  tcase_add_test(tc, test_client_deadline);
  tcase_add_test(tc, test_server_deadline);
  tcase_add_test(tc, test_oversize);
  tcase_add_test(tc, test_connection_loss);
  tcase_add_test(tc, test_transport_error);
  tcase_add_test(tc, test_goaway);
  tcase_add_test(tc, test_bad_content_type);
  tcase_add_test(tc, test_compressed_flag);
  tcase_add_test(tc, test_malformed_messages);
  tcase_add_test(tc, test_header_list_bound);
  tcase_add_test(tc, test_rapid_reset);
  tcase_add_test(tc, test_rapid_reset_burst);
  tcase_add_test(tc, test_resets_spread);
  tcase_add_test(tc, test_bad_preface);
  tcase_add_test(tc, test_continuation_flood);
  tcase_add_test(tc, test_status_mapping);
  tcase_add_test(tc, test_encodings);
  tcase_add_test(tc, test_arguments);
  suite_add_tcase(s, tc);

  TCase *tc_link = tcase_create("link");
  tcase_add_checked_fixture(tc_link, setup, teardown);
  tcase_add_test(tc_link, test_upstream_send);
  tcase_add_test(tc_link, test_router_groups);
  tcase_add_test(tc_link, test_upstream_reports);
  tcase_add_test(tc_link, test_upstream_lost);
  tcase_add_test(tc_link, test_upstream_spread);
  tcase_add_test(tc_link, test_upstream_groups);
  tcase_add_test(tc_link, test_gwlink_client);
  tcase_add_test(tc_link, test_gateway_service);
  suite_add_tcase(s, tc_link);

  TCase *tc_mem = tcase_create("nomem");
  tcase_add_checked_fixture(tc_mem, setup, NULL);
  tcase_add_test(tc_mem, test_nomem);
  tcase_add_test(tc_mem, test_link_nomem);
  tcase_set_timeout(tc_mem, 120);
  suite_add_tcase(s, tc_mem);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(grpc_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
