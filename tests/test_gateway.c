/*
 * The gateway driven through its public API with a mock transport, a mock
 * registry, a mock upstream and a fake clock: the bytes a client would
 * send go in, whole or split, and what comes out is parsed as a client
 * would parse it.
 */
#include <imchat/gateway.h>
#include <imchat/jwt.h>

#include "im.pb-c.h"
#include "testjwt.h"
#include "testutil.h"

#include <check.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define SECRET "test-secret-0123456789"
#define T0 1700000000000LL /* wall clock at start, ms */

/* ------------------------------------------------------------------ */
/* Mocks                                                                */
/* ------------------------------------------------------------------ */

typedef struct mock {
  test_sock sock; /* the client's socket */
  /* registry calls */
  int grants, keepalives, revokes, reg, unreg;
  uint64_t lease;     /* the live lease; 0: none */
  uint64_t reg_lease; /* the lease of the last register */
  int keepalive_lost; /* the lease is gone before the next keepalive */
  int grant_fail;     /* answer grants with IMC_ERR_UNAVAILABLE */
  int reg_fail;       /* answer this many registers with UNAVAILABLE */
  int unreg_fail;     /* answer this many unregisters with UNAVAILABLE */
  int hold;           /* keep the next grant's or keepalive's answer */
  imc_lease_cb held_grant;
  imc_done_cb held_keepalive;
  void *held_ud;
  int in_flight, max_in_flight; /* grants and keepalives not answered */
  char reg_user[80], reg_device[80], reg_node[80], grant_node[80];
  uint32_t reg_ttl;
  /* upstream calls */
  int sends, delivered, undelivered;
  int fail_delivered;   /* delivered refuses */
  int fail_undelivered; /* undelivered fails this many more times */
  int undelivered_ok;   /* undelivered reports that succeeded */
  int async_undelivered;
  imc_done_cb und_cb;
  void *und_ud;
  char last_undelivered[80];
  imc_send_cb pending_cb;
  void *pending_ud;
  int async_send;
  /* every send held with async_send, in order */
  imc_send_cb held_cb[512];
  void *held_cb_ud[512];
  int n_held;
  /* delivered_many */
  int many_calls;       /* calls */
  size_t many_items;    /* items over all calls */
  size_t many_last_n;   /* items of the last call */
  char many_ids[8][16]; /* msg_ids of the last call's first items */
  int fail_many;        /* 1: refuse the call; 2: complete with an error */
  int async_many;       /* keep the completion in many_cb */
  imc_done_cb many_cb;
  void *many_ud;
  /* key source */
  imc_key_cb key_cb;
  void *key_ud;
} mock;

/* A grant or keepalive went out; with hold set, its answer waits. */
static int lease_call_out(mock *m) {
  if (++m->in_flight > m->max_in_flight)
    m->max_in_flight = m->in_flight;
  return m->hold;
}

static int r_grant(void *ud, const char *node, uint32_t ttl, imc_lease_cb done,
                   void *done_ud) {
  mock *m = ud;
  m->grants++;
  int hold = lease_call_out(m);
  if (m->grant_fail) {
    m->in_flight--;
    done(done_ud, IMC_ERR_UNAVAILABLE, 0);
    return 0;
  }
  m->lease = 100 + (uint64_t)m->grants;
  m->reg_ttl = ttl;
  snprintf(m->grant_node, sizeof(m->grant_node), "%s", node);
  if (hold) {
    m->hold = 0;
    m->held_grant = done;
    m->held_ud = done_ud;
    return 0;
  }
  m->in_flight--;
  done(done_ud, 0, m->lease);
  return 0;
}

/* Answers the grant kept by hold. */
static void release_grant(mock *m) {
  ck_assert(m->held_grant != NULL);
  imc_lease_cb cb = m->held_grant;
  m->held_grant = NULL;
  m->in_flight--;
  cb(m->held_ud, 0, m->lease);
}

static int r_keepalive(void *ud, uint64_t lease, imc_done_cb done,
                       void *done_ud) {
  mock *m = ud;
  ck_assert_uint_ne(lease, 0);
  m->keepalives++;
  int hold = lease_call_out(m);
  if (m->keepalive_lost) {
    m->keepalive_lost = 0;
    m->lease = 0;
  }
  if (hold) {
    m->hold = 0;
    m->held_keepalive = done;
    m->held_ud = done_ud;
    return 0;
  }
  m->in_flight--;
  done(done_ud, lease == m->lease ? 0 : IMC_ERR_NOT_FOUND);
  return 0;
}

/* Answers the keepalive kept by hold with status. */
static void release_keepalive(mock *m, int status) {
  ck_assert(m->held_keepalive != NULL);
  imc_done_cb cb = m->held_keepalive;
  m->held_keepalive = NULL;
  m->in_flight--;
  cb(m->held_ud, status);
}

static int r_revoke(void *ud, uint64_t lease, imc_done_cb done, void *done_ud) {
  mock *m = ud;
  ck_assert_uint_ne(lease, 0);
  m->revokes++;
  int found = lease == m->lease;
  m->lease = 0;
  done(done_ud, found ? 0 : IMC_ERR_NOT_FOUND);
  return 0;
}

static int r_register(void *ud, uint64_t lease, const imc_reg_entry *e,
                      imc_done_cb done, void *done_ud) {
  mock *m = ud;
  ck_assert_uint_eq(e->struct_size, sizeof(imc_reg_entry));
  m->reg++;
  m->reg_lease = lease;
  snprintf(m->reg_user, sizeof(m->reg_user), "%s", e->user_id);
  snprintf(m->reg_device, sizeof(m->reg_device), "%s", e->device_id);
  snprintf(m->reg_node, sizeof(m->reg_node), "%s", e->node_id);
  if (m->reg_fail > 0) {
    m->reg_fail--;
    done(done_ud, IMC_ERR_UNAVAILABLE);
    return 0;
  }
  done(done_ud, lease == m->lease ? 0 : IMC_ERR_NOT_FOUND);
  return 0;
}

static int r_unregister(void *ud, const imc_reg_entry *e, imc_done_cb done,
                        void *done_ud) {
  mock *m = ud;
  m->unreg++;
  snprintf(m->reg_user, sizeof(m->reg_user), "%s", e->user_id);
  if (m->unreg_fail > 0) {
    m->unreg_fail--;
    done(done_ud, IMC_ERR_UNAVAILABLE);
    return 0;
  }
  done(done_ud, 0);
  return 0;
}

static const imc_registry_vtbl registry = {.struct_size =
                                               sizeof(imc_registry_vtbl),
                                           .lease_grant = r_grant,
                                           .lease_keepalive = r_keepalive,
                                           .lease_revoke = r_revoke,
                                           .register_conn = r_register,
                                           .unregister = r_unregister};

static int u_send(void *ud, const imc_send_req *req, imc_send_cb done,
                  void *done_ud) {
  mock *m = ud;
  m->sends++;
  if (m->async_send) {
    m->pending_cb = done;
    m->pending_ud = done_ud;
    if (m->n_held < 512) {
      m->held_cb[m->n_held] = done;
      m->held_cb_ud[m->n_held++] = done_ud;
    }
    return 0;
  }
  imc_send_result r = {req->client_msg_id, "m-1", "p:a:b", 7, T0};
  done(done_ud, 0, &r, NULL);
  return 0;
}

static int u_delivered(void *ud, const imc_msg *msg, const char *user,
                       const char *device, imc_done_cb done, void *done_ud) {
  mock *m = ud;
  (void)msg;
  (void)user;
  (void)device;
  m->delivered++;
  if (m->fail_delivered)
    return IMC_ERR_UNAVAILABLE;
  done(done_ud, 0);
  return 0;
}

static int u_undelivered(void *ud, const imc_msg *msg, const char *user,
                         imc_done_cb done, void *done_ud) {
  mock *m = ud;
  m->undelivered++;
  snprintf(m->last_undelivered, sizeof(m->last_undelivered), "%s/%s", user,
           msg->msg_id);
  if (m->fail_undelivered > 0) {
    m->fail_undelivered--;
    /* Fail both ways: refused, or completed with an error. */
    if (m->fail_undelivered % 2)
      return IMC_ERR_UNAVAILABLE;
    done(done_ud, IMC_ERR_IO);
    return 0;
  }
  if (m->async_undelivered) {
    m->und_cb = done;
    m->und_ud = done_ud;
    return 0;
  }
  m->undelivered_ok++;
  done(done_ud, 0);
  return 0;
}

/* An upstream without delivered_many: one delivered per ack. */
static const imc_upstream_vtbl upstream = {.struct_size =
                                               sizeof(imc_upstream_vtbl),
                                           .send = u_send,
                                           .delivered = u_delivered,
                                           .undelivered = u_undelivered};

static int u_delivered_many(void *ud, const imc_delivery_ack *acks, size_t n,
                            imc_done_cb done, void *done_ud) {
  mock *m = ud;
  ck_assert_uint_gt(n, 0);
  m->many_calls++;
  m->many_items += n;
  m->many_last_n = n;
  for (size_t i = 0; i < n; i++) {
    ck_assert_str_eq(acks[i].user_id, "alice");
    ck_assert_ptr_nonnull(acks[i].device_id);
    if (i < 8)
      snprintf(m->many_ids[i], sizeof(m->many_ids[i]), "%s",
               acks[i].msg->msg_id);
  }
  if (m->fail_many == 1)
    return IMC_ERR_UNAVAILABLE;
  if (m->async_many) {
    m->many_cb = done;
    m->many_ud = done_ud;
    return 0;
  }
  done(done_ud, m->fail_many ? IMC_ERR_IO : 0);
  return 0;
}

/* An upstream that takes the acks of a loop turn in one call. */
static const imc_upstream_vtbl upstream_many = {
    .struct_size = sizeof(imc_upstream_vtbl),
    .send = u_send,
    .delivered = u_delivered,
    .undelivered = u_undelivered,
    .delivered_many = u_delivered_many};

static int k_lookup(void *ud, const char *alg, const char *kid, imc_key_cb done,
                    void *done_ud) {
  mock *m = ud;
  (void)alg;
  (void)kid;
  m->key_cb = done;
  m->key_ud = done_ud;
  return 0;
}

static const imc_keysrc_vtbl keysrc = {sizeof(imc_keysrc_vtbl), k_lookup};

/* ------------------------------------------------------------------ */
/* Harness                                                              */
/* ------------------------------------------------------------------ */

typedef struct harness {
  test_clock tc;
  test_mem tm;
  imc_gateway_options *opt;
  imc_gateway *gw;
  mock m;
  imc_conn *c;
} harness;

static harness H;
static int no_secret; /* set up without the HS256 secret */
static EVP_PKEY *rsa_key, *ec_key;
static char *rsa_pem, *ec_pem;

static void h_setup_with(void (*tweak)(imc_gateway_options *)) {
  memset(&H.m, 0, sizeof(H.m));
  test_clock_init(&H.tc, T0);
  test_mem_init(&H.tm);
  ck_assert_int_eq(imc_gateway_options_new(&H.opt, &H.tm.mem), 0);
  ck_assert_int_eq(
      imc_gateway_options_set_transport(H.opt, &test_sock_transport, NULL), 0);
  ck_assert_int_eq(imc_gateway_options_set_registry(H.opt, &registry, &H.m), 0);
  ck_assert_int_eq(imc_gateway_options_set_clock(H.opt, &H.tc.clock), 0);
  if (!no_secret)
    ck_assert_int_eq(imc_gateway_options_set_jwt_secret(
                         H.opt, (const uint8_t *)SECRET, strlen(SECRET)),
                     0);
  ck_assert_int_eq(imc_gateway_options_set_node_id(H.opt, "gw-1"), 0);
  if (tweak)
    tweak(H.opt);
  ck_assert_int_eq(imc_gateway_new(&H.gw, H.opt, &H.tm.mem), 0);
  ck_assert_int_eq(imc_gateway_conn_new(H.gw, &H.c, &H.m.sock), 0);
}

static void h_setup(void) {
  h_setup_with(NULL);
}

static void h_teardown(void) {
  imc_gateway_del(H.gw);
  imc_gateway_options_del(H.opt);
  free(H.m.sock.out);
  ck_assert_int_eq(H.tm.live, 0);
}

static int h_recv(const void *data, size_t len) {
  int rv = imc_gateway_conn_recv(H.gw, H.c, data, len);
  imc_gateway_flush(H.gw);
  return rv;
}

static int h_recv_str(const char *s) {
  return h_recv(s, strlen(s));
}

static void h_advance(int64_t ms) {
  test_clock_advance(&H.tc, ms);
  imc_gateway_on_timeout(H.gw);
  imc_gateway_flush(H.gw);
}

static char *token_for(const char *user, const char *device, int64_t ttl_s) {
  static char tok[1024];
  int64_t now = T0 / 1000;
  ck_assert_int_gt(imc_jwt_sign_hs256((const uint8_t *)SECRET, strlen(SECRET),
                                      user, device, NULL, NULL, now,
                                      now + ttl_s, tok, sizeof(tok)),
                   0);
  return tok;
}

static const char *upgrade_req(char *buf, size_t cap, const char *token) {
  ck_assert_uint_lt(strlen(token), cap - 200);
  snprintf(buf, cap,
           "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n"
           "Authorization: Bearer %s\r\n\r\n",
           token);
  return buf;
}

/* Parses the HTTP answer at the client's position: status, and the
 * whole head in head (for header checks). */
static int read_http(char *head, size_t cap, char **body) {
  const char *p = (const char *)H.m.sock.out + H.m.sock.pos;
  size_t avail = H.m.sock.len - H.m.sock.pos;
  const char *end = memmem(p, avail, "\r\n\r\n", 4);
  ck_assert_msg(end != NULL, "no complete HTTP answer");
  size_t hl = (size_t)(end - p) + 4;
  ck_assert_uint_lt(hl, cap);
  memcpy(head, p, hl);
  head[hl] = '\0';
  H.m.sock.pos += hl;
  if (body) {
    *body = (char *)H.m.sock.out + H.m.sock.pos;
    H.m.sock.pos = H.m.sock.len;
  }
  int status = 0;
  sscanf(head, "HTTP/1.1 %d", &status);
  return status;
}

typedef struct wsframe {
  int fin, opcode, rsv1;
  uint8_t payload[200000];
  size_t len;
} wsframe;

static wsframe F;

/* Parses the next server frame on sock; 0 if there is none yet. */
static int next_ws_on(test_sock *sock) {
  const uint8_t *p = sock->out + sock->pos;
  size_t avail = sock->len - sock->pos;
  if (avail < 2)
    return 0;
  F.fin = p[0] >> 7;
  F.opcode = p[0] & 15;
  F.rsv1 = (p[0] >> 6) & 1;
  ck_assert_int_eq(p[0] & 0x30, 0); /* RSV2 and RSV3 are never set */
  ck_assert_int_eq(p[1] & 0x80, 0); /* servers never mask */
  size_t len = p[1] & 127, off = 2;
  if (len == 126) {
    len = (size_t)p[2] << 8 | p[3];
    off = 4;
  } else if (len == 127) {
    len = 0;
    for (int i = 0; i < 8; i++)
      len = len << 8 | p[2 + i];
    off = 10;
  }
  if (avail < off + len)
    return 0;
  memcpy(F.payload, p + off, len);
  F.len = len;
  sock->pos += off + len;
  return 1;
}

/* The next frame on the harness's connection. */
static int next_ws(void) {
  return next_ws_on(&H.m.sock);
}

static int close_code(void) {
  ck_assert_int_eq(F.opcode, 8);
  ck_assert_uint_ge(F.len, 2);
  return F.payload[0] << 8 | F.payload[1];
}

/* permessage-deflate helpers, with its tests below. */
static size_t zinflate(const uint8_t *in, size_t len, uint8_t *out, size_t cap,
                       int bits);
static size_t zdeflate(const void *in, size_t len, uint8_t *out, size_t cap);
static const char *upgrade_req_ext(char *buf, size_t cap, const char *user,
                                   const char *device, const char *ext);
static uint8_t zbuf[200000];

/* The next ServerFrame (skipping pings), inflated if it came compressed;
 * caller frees. */
static Imchat__V1__ServerFrame *next_sf(void) {
  while (next_ws()) {
    if (F.opcode == 9)
      continue;
    ck_assert_int_eq(F.opcode, 2);
    const uint8_t *msg = F.payload;
    size_t len = F.len;
    if (F.rsv1) {
      len = zinflate(F.payload, F.len, zbuf, sizeof(zbuf), 15);
      msg = zbuf;
    }
    Imchat__V1__ServerFrame *f =
        imchat__v1__server_frame__unpack(NULL, len, msg);
    ck_assert_ptr_nonnull(f);
    return f;
  }
  return NULL;
}

/* Builds a masked client frame. */
static size_t ws_frame(uint8_t *out, int fin, int opcode, int rsv,
                       const void *data, size_t len, int masked) {
  size_t n = 0;
  out[n++] = (uint8_t)((fin ? 0x80 : 0) | (rsv << 4) | opcode);
  uint8_t mbit = masked ? 0x80 : 0;
  if (len < 126) {
    out[n++] = (uint8_t)(mbit | len);
  } else if (len < 65536) {
    out[n++] = mbit | 126;
    out[n++] = (uint8_t)(len >> 8);
    out[n++] = (uint8_t)len;
  } else {
    out[n++] = mbit | 127;
    for (int i = 7; i >= 0; i--)
      out[n++] = (uint8_t)((uint64_t)len >> (8 * i));
  }
  const uint8_t mask[4] = {0x12, 0x34, 0x56, 0x78};
  if (masked) {
    memcpy(out + n, mask, 4);
    n += 4;
  }
  for (size_t i = 0; i < len; i++)
    out[n + i] = ((const uint8_t *)data)[i] ^ (masked ? mask[i % 4] : 0);
  return n + len;
}

static uint8_t wbuf[200000];

static int send_ws(int opcode, const void *data, size_t len) {
  size_t n = ws_frame(wbuf, 1, opcode, 0, data, len, 1);
  return h_recv(wbuf, n);
}

static int send_cf(const Imchat__V1__ClientFrame *cf) {
  uint8_t buf[70000];
  size_t n = imchat__v1__client_frame__pack(cf, buf);
  return send_ws(2, buf, n);
}

static int send_ping(uint64_t id, int64_t t) {
  Imchat__V1__Ping ping = IMCHAT__V1__PING__INIT;
  ping.client_time_ms = t;
  Imchat__V1__ClientFrame cf = IMCHAT__V1__CLIENT_FRAME__INIT;
  cf.id = id;
  cf.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_PING;
  cf.ping = &ping;
  return send_cf(&cf);
}

/* Performs the upgrade as user/device and consumes 101 + Welcome. */
static void h_connect(const char *user, const char *device) {
  char req[2048], head[1024];
  ck_assert_int_eq(
      h_recv_str(upgrade_req(req, sizeof(req), token_for(user, device, 3600))),
      0);
  ck_assert_int_eq(read_http(head, sizeof(head), NULL), 101);
  Imchat__V1__ServerFrame *f = next_sf();
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(f->body_case, IMCHAT__V1__SERVER_FRAME__BODY_WELCOME);
  imchat__v1__server_frame__free_unpacked(f, NULL);
}

static void expect_pong(uint64_t id, int64_t t) {
  Imchat__V1__ServerFrame *f = next_sf();
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(f->body_case, IMCHAT__V1__SERVER_FRAME__BODY_PONG);
  ck_assert_uint_eq(f->id, id);
  ck_assert_int_eq(f->pong->client_time_ms, t);
  ck_assert_int_eq(f->pong->server_time_ms, H.tc.wall);
  imchat__v1__server_frame__free_unpacked(f, NULL);
}

static void expect_error(uint64_t id, Imchat__V1__Error__Code code) {
  Imchat__V1__ServerFrame *f = next_sf();
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(f->body_case, IMCHAT__V1__SERVER_FRAME__BODY_ERROR);
  ck_assert_uint_eq(f->id, id);
  ck_assert_int_eq(f->error->code, code);
  imchat__v1__server_frame__free_unpacked(f, NULL);
}

/* Expects a close frame with code, and that the gateway closes the
 * socket once the client answers. */
static void expect_close(int code) {
  ck_assert_int_eq(next_ws(), 1);
  ck_assert_int_eq(close_code(), code);
  uint8_t cl[2] = {(uint8_t)(code >> 8), (uint8_t)code};
  if (!H.m.sock.closed) {
    size_t n = ws_frame(wbuf, 1, 8, 0, cl, 2, 1);
    imc_gateway_conn_recv(H.gw, H.c, wbuf, n);
    imc_gateway_flush(H.gw);
  }
  ck_assert_int_eq(H.m.sock.closed, 1);
  ck_assert_uint_eq(imc_gateway_conn_count(H.gw), 0);
}

/* ------------------------------------------------------------------ */
/* Handshake                                                            */
/* ------------------------------------------------------------------ */

START_TEST(upgrade_ok) {
  char req[2048], head[1024];
  ck_assert_int_eq(
      h_recv_str(upgrade_req(req, sizeof(req), token_for("alice", "", 60))), 0);
  ck_assert_int_eq(read_http(head, sizeof(head), NULL), 101);
  ck_assert_ptr_nonnull(
      strstr(head, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
  ck_assert_ptr_nonnull(strcasestr(head, "Upgrade: websocket\r\n"));
  Imchat__V1__ServerFrame *f = next_sf();
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(f->id, 0);
  ck_assert_int_eq(f->body_case, IMCHAT__V1__SERVER_FRAME__BODY_WELCOME);
  ck_assert_str_eq(f->welcome->user_id, "alice");
  ck_assert_str_eq(f->welcome->device_id, "default");
  ck_assert_str_eq(f->welcome->node_id, "gw-1");
  ck_assert_uint_eq(f->welcome->heartbeat_s, 30);
  ck_assert_int_eq(f->welcome->server_time_ms, T0);
  imchat__v1__server_frame__free_unpacked(f, NULL);
  /* Registered on the node's 90 s lease. */
  ck_assert_int_eq(H.m.grants, 1);
  ck_assert_str_eq(H.m.grant_node, "gw-1");
  ck_assert_uint_ne(H.m.lease, 0);
  ck_assert_uint_eq(H.m.reg_lease, H.m.lease);
  ck_assert_int_eq(H.m.reg, 1);
  ck_assert_str_eq(H.m.reg_user, "alice");
  ck_assert_str_eq(H.m.reg_device, "default");
  ck_assert_str_eq(H.m.reg_node, "gw-1");
  ck_assert_uint_eq(H.m.reg_ttl, 90);
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_WEBSOCKETS), 1);
}
END_TEST

START_TEST(upgrade_query_token_and_device) {
  char req[2048], head[1024];
  snprintf(req, sizeof(req),
           "GET /ws?device=phone&token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: "
           "WebSocket\r\n"
           "Connection: keep-alive, Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n\r\n",
           token_for("bob", "", 60));
  ck_assert_int_eq(h_recv_str(req), 0);
  ck_assert_int_eq(read_http(head, sizeof(head), NULL), 101);
  Imchat__V1__ServerFrame *f = next_sf();
  ck_assert_str_eq(f->welcome->user_id, "bob");
  ck_assert_str_eq(f->welcome->device_id, "phone");
  imchat__v1__server_frame__free_unpacked(f, NULL);
}
END_TEST

START_TEST(upgrade_did_claim) {
  h_connect("carol", "tablet");
  ck_assert_str_eq(H.m.reg_device, "tablet");
}
END_TEST

/* The request and a first frame, cut at every offset or at random. */
static void split_feed(const uint8_t *data, size_t len, int random_cuts) {
  size_t off = 0;
  unsigned seed = 7;
  while (off < len) {
    size_t n = random_cuts ? 1 + (size_t)(rand_r(&seed) % 97) : 1;
    if (n > len - off)
      n = len - off;
    ck_assert_int_eq(imc_gateway_conn_recv(H.gw, H.c, data + off, n), 0);
    imc_gateway_flush(H.gw);
    off += n;
  }
}

static void check_split(int random_cuts) {
  char req[2048], head[1024];
  upgrade_req(req, sizeof(req), token_for("dave", "", 60));
  size_t rl = strlen(req);
  uint8_t all[4096];
  memcpy(all, req, rl);
  Imchat__V1__Ping ping = IMCHAT__V1__PING__INIT;
  ping.client_time_ms = 42;
  Imchat__V1__ClientFrame cf = IMCHAT__V1__CLIENT_FRAME__INIT;
  cf.id = 5;
  cf.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_PING;
  cf.ping = &ping;
  uint8_t pb[64];
  size_t pl = imchat__v1__client_frame__pack(&cf, pb);
  size_t n = rl + ws_frame(all + rl, 1, 2, 0, pb, pl, 1);
  split_feed(all, n, random_cuts);
  ck_assert_int_eq(read_http(head, sizeof(head), NULL), 101);
  Imchat__V1__ServerFrame *f = next_sf();
  ck_assert_int_eq(f->body_case, IMCHAT__V1__SERVER_FRAME__BODY_WELCOME);
  imchat__v1__server_frame__free_unpacked(f, NULL);
  expect_pong(5, 42);
}

START_TEST(upgrade_byte_by_byte) {
  check_split(0);
}
END_TEST

START_TEST(upgrade_random_splits) {
  check_split(1);
}
END_TEST

static void expect_http_error(const char *req, int status, const char *header) {
  char head[4096];
  char *body;
  /* The answer is queued; the socket closes once the flush wrote it. */
  ck_assert_int_eq(h_recv_str(req), 0);
  ck_assert_int_eq(read_http(head, sizeof(head), &body), status);
  if (header)
    ck_assert_msg(strstr(head, header) != NULL, "missing %s in %s", header,
                  head);
  ck_assert_ptr_nonnull(strstr(head, "Content-Type: application/json"));
  ck_assert_msg(strncmp(body, "{\"error\":{\"code\":\"", 18) == 0, "body %s",
                body);
  ck_assert_int_eq(H.m.sock.closed, 1);
  ck_assert_int_eq(H.m.reg, 0);
}

START_TEST(bad_version) {
  expect_http_error("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    "Sec-WebSocket-Version: 8\r\n\r\n",
                    426, "Sec-WebSocket-Version: 13\r\n");
}
END_TEST

START_TEST(missing_key) {
  expect_http_error("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
                    400, NULL);
}
END_TEST

START_TEST(no_upgrade_header) {
  expect_http_error("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", 400, NULL);
}
END_TEST

START_TEST(http10_upgrade) {
  expect_http_error("GET /ws HTTP/1.0\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n",
                    400, NULL);
}
END_TEST

START_TEST(malformed_request) {
  expect_http_error("GARBAGE\r\n\r\n", 400, NULL);
}
END_TEST

START_TEST(unknown_path) {
  expect_http_error("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404, NULL);
}
END_TEST

START_TEST(post_ws) {
  expect_http_error("POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                    405, "Allow: GET");
}
END_TEST

START_TEST(head_too_large) {
  char req[10000];
  int n = snprintf(req, sizeof(req), "GET /ws HTTP/1.1\r\nX-Big: ");
  memset(req + n, 'a', 8500);
  req[n + 8500] = '\0';
  /* Not terminated: the limit alone must end it, in pieces too. */
  ck_assert_int_eq(h_recv(req, 4000), 0);
  expect_http_error(req + 4000, 431, NULL);
}
END_TEST

START_TEST(healthz) {
  char head[1024];
  char *body;
  ck_assert_int_eq(h_recv_str("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
  ck_assert_int_eq(H.m.sock.closed, 1);
  ck_assert_int_eq(read_http(head, sizeof(head), &body), 200);
  ck_assert_ptr_nonnull(strstr(body, "\"ok\""));
}
END_TEST

/* An HTTP handler that answers with what it was given: the body's
 * length and bytes, the Content-Type, and its own Cache-Control. */
static int echo_handle(void *ud, const imc_http_request *req,
                       imc_http_reply *reply) {
  (void)ud;
  char out[256];
  int n = snprintf(out, sizeof(out), "%zu|%.*s|%s", req->body_len,
                   (int)req->body_len, req->body ? (const char *)req->body : "",
                   req->content_type);
  ck_assert(req->body_len == 0 ? req->body == NULL : req->body != NULL);
  imc_http_reply_send(reply, 200, "text/plain", "Cache-Control: max-age=60\r\n",
                      (const uint8_t *)out, (size_t)n);
  return 1;
}

static void with_echo(imc_gateway_options *o) {
  static const imc_http_handler_vtbl vt = {sizeof(imc_http_handler_vtbl),
                                           echo_handle};
  ck_assert_int_eq(imc_gateway_options_set_http_handler(o, &vt, NULL), 0);
}

START_TEST(http_body_read_whole) {
  h_teardown();
  h_setup_with(with_echo);
  static const char req[] =
      "POST /x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
      "\r\nContent-Length: 11\r\n\r\n{\"a\":\"bcd\"}";
  /* Byte by byte: nothing reaches the handler before the last byte. */
  for (size_t i = 0; i + 1 < sizeof(req) - 1; i++) {
    ck_assert_int_eq(h_recv(req + i, 1), 0);
    ck_assert_uint_eq(H.m.sock.len, 0);
  }
  ck_assert_int_eq(h_recv(req + sizeof(req) - 2, 1), 0);
  char head[1024];
  char *body;
  ck_assert_int_eq(read_http(head, sizeof(head), &body), 200);
  ck_assert_ptr_nonnull(strstr(head, "Cache-Control: max-age=60\r\n"));
  ck_assert_ptr_null(strstr(head, "no-store"));
  static const char want[] = "11|{\"a\":\"bcd\"}|application/json";
  ck_assert_uint_eq(H.m.sock.len - (size_t)(body - (char *)H.m.sock.out),
                    sizeof(want) - 1);
  ck_assert_int_eq(memcmp(body, want, sizeof(want) - 1), 0);
}
END_TEST

START_TEST(http_no_body) {
  h_teardown();
  h_setup_with(with_echo);
  ck_assert_int_eq(h_recv_str("GET /x HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
  char head[1024];
  char *body;
  ck_assert_int_eq(read_http(head, sizeof(head), &body), 200);
  ck_assert_int_eq(strncmp(body, "0||", 3), 0);
}
END_TEST

START_TEST(http_body_refused) {
  expect_http_error(
      "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 16385\r\n\r\n", 413,
      NULL);
}
END_TEST

START_TEST(http_body_chunked) {
  expect_http_error(
      "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      "0\r\n\r\n",
      411, NULL);
}
END_TEST

START_TEST(http_body_bad_length) {
  expect_http_error("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n",
                    400, NULL);
}
END_TEST

START_TEST(handshake_timeout) {
  ck_assert_int_eq(h_recv_str("GET /ws HTTP/1.1\r\n"), 0);
  h_advance(9999);
  ck_assert_int_eq(H.m.sock.closed, 0);
  ck_assert_int_eq(imc_gateway_next_timeout_ms(H.gw), 1);
  h_advance(1);
  ck_assert_int_eq(H.m.sock.closed, 1);
  ck_assert_uint_eq(imc_gateway_conn_count(H.gw), 0);
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_HANDSHAKE_TIMEOUTS),
                    1);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Authentication                                                       */
/* ------------------------------------------------------------------ */

static void expect_401(const char *token) {
  char req[4096];
  expect_http_error(upgrade_req(req, sizeof(req), token), 401,
                    "WWW-Authenticate: Bearer");
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_AUTH_FAILED), 1);
}

static char *payload(char *buf, const char *user, int64_t iat, int64_t nbf,
                     int64_t exp) {
  int n = sprintf(buf, "{\"sub\":\"%s\"", user);
  if (iat)
    n += sprintf(buf + n, ",\"iat\":%lld", (long long)iat);
  if (nbf)
    n += sprintf(buf + n, ",\"nbf\":%lld", (long long)nbf);
  if (exp)
    n += sprintf(buf + n, ",\"exp\":%lld", (long long)exp);
  strcpy(buf + n, "}");
  return buf;
}

static char tok[4096];
static char pl[512];
static const int64_t NOW = T0 / 1000;

START_TEST(auth_missing) {
  char head[1024];
  char *body;
  ck_assert_int_eq(
      h_recv_str("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n"),
      0);
  ck_assert_int_eq(read_http(head, sizeof(head), &body), 401);
  ck_assert_ptr_nonnull(strstr(body, "UNAUTHENTICATED"));
}
END_TEST

START_TEST(auth_expired) {
  /* 61 s past exp is beyond the 60 s leeway. */
  testjwt_make(tok, sizeof(tok), "{\"alg\":\"HS256\",\"typ\":\"JWT\"}",
               payload(pl, "alice", NOW - 3600, 0, NOW - 61), TJ_HS256, NULL,
               (const uint8_t *)SECRET, strlen(SECRET));
  expect_401(tok);
}
END_TEST

START_TEST(auth_leeway_accepted) {
  char req[4096], head[1024];
  testjwt_make(tok, sizeof(tok), "{\"alg\":\"HS256\"}",
               payload(pl, "alice", NOW + 30, NOW + 30, NOW - 30), TJ_HS256,
               NULL, (const uint8_t *)SECRET, strlen(SECRET));
  ck_assert_int_eq(h_recv_str(upgrade_req(req, sizeof(req), tok)), 0);
  ck_assert_int_eq(read_http(head, sizeof(head), NULL), 101);
}
END_TEST

START_TEST(auth_not_yet_valid) {
  testjwt_make(tok, sizeof(tok), "{\"alg\":\"HS256\"}",
               payload(pl, "alice", NOW, NOW + 120, NOW + 3600), TJ_HS256, NULL,
               (const uint8_t *)SECRET, strlen(SECRET));
  expect_401(tok);
}
END_TEST

START_TEST(auth_wrong_key) {
  testjwt_make(tok, sizeof(tok), "{\"alg\":\"HS256\"}",
               payload(pl, "alice", NOW, 0, NOW + 3600), TJ_HS256, NULL,
               (const uint8_t *)"another-secret", 14);
  expect_401(tok);
}
END_TEST

START_TEST(auth_alg_none) {
  const char *headers[] = {"{\"alg\":\"none\"}", "{\"alg\":\"None\"}",
                           "{\"alg\":\"NONE\"}", "{\"alg\":\"nOnE\"}"};
  testjwt_make(tok, sizeof(tok), headers[_i],
               payload(pl, "alice", NOW, 0, NOW + 3600), TJ_NONE, NULL, NULL,
               0);
  expect_401(tok);
}
END_TEST

START_TEST(auth_missing_exp) {
  testjwt_make(tok, sizeof(tok), "{\"alg\":\"HS256\"}",
               payload(pl, "alice", NOW, 0, 0), TJ_HS256, NULL,
               (const uint8_t *)SECRET, strlen(SECRET));
  expect_401(tok);
}
END_TEST

START_TEST(auth_garbage) {
  const char *bad[] = {"x", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.%%%.abc",
                       ""};
  char req[2048];
  if (_i == 4) {
    expect_http_error(upgrade_req(req, sizeof(req), bad[_i]), 401, NULL);
    return;
  }
  expect_401(bad[_i]);
}
END_TEST

START_TEST(auth_bad_sub) {
  testjwt_make(tok, sizeof(tok), "{\"alg\":\"HS256\"}",
               payload(pl, "bad user!", NOW, 0, NOW + 3600), TJ_HS256, NULL,
               (const uint8_t *)SECRET, strlen(SECRET));
  expect_401(tok);
}
END_TEST

static void use_rsa(imc_gateway_options *o) {
  ck_assert_int_eq(
      imc_gateway_options_set_jwt_public_key(o, rsa_pem, strlen(rsa_pem)), 0);
}

static void use_ec(imc_gateway_options *o) {
  ck_assert_int_eq(
      imc_gateway_options_set_jwt_public_key(o, ec_pem, strlen(ec_pem)), 0);
}

static void reset_with(void (*tweak)(imc_gateway_options *)) {
  h_teardown();
  h_setup_with(tweak);
}

START_TEST(auth_rs256_and_es256) {
  char req[4096], head[1024];
  reset_with(use_rsa);
  testjwt_make(tok, sizeof(tok), "{\"alg\":\"RS256\",\"typ\":\"JWT\"}",
               payload(pl, "rita", NOW, 0, NOW + 600), TJ_RS256, rsa_key, NULL,
               0);
  ck_assert_int_eq(h_recv_str(upgrade_req(req, sizeof(req), tok)), 0);
  ck_assert_int_eq(read_http(head, sizeof(head), NULL), 101);
  ck_assert_str_eq(H.m.reg_user, "rita");

  reset_with(use_ec);
  testjwt_make(tok, sizeof(tok), "{\"alg\":\"ES256\"}",
               payload(pl, "eve", NOW, 0, NOW + 600), TJ_ES256, ec_key, NULL,
               0);
  ck_assert_int_eq(h_recv_str(upgrade_req(req, sizeof(req), tok)), 0);
  ck_assert_int_eq(read_http(head, sizeof(head), NULL), 101);
  ck_assert_str_eq(H.m.reg_user, "eve");
}
END_TEST

START_TEST(auth_rs256_key_confusion) {
  /* The classic attack: HS256 "signed" with the RSA public key bytes,
   * against a gateway that only knows the RSA key. */
  no_secret = 1;
  reset_with(use_rsa);
  no_secret = 0;
  testjwt_make(tok, sizeof(tok), "{\"alg\":\"HS256\"}",
               payload(pl, "mallory", NOW, 0, NOW + 600), TJ_HS256, NULL,
               (const uint8_t *)rsa_pem, strlen(rsa_pem));
  expect_401(tok);
}
END_TEST

START_TEST(auth_es256_with_rsa_key) {
  reset_with(use_rsa);
  testjwt_make(tok, sizeof(tok), "{\"alg\":\"ES256\"}",
               payload(pl, "eve", NOW, 0, NOW + 600), TJ_ES256, ec_key, NULL,
               0);
  expect_401(tok);
}
END_TEST

static void use_keysrc(imc_gateway_options *o) {
  imc_gateway_options_set_keysrc(o, &keysrc, &H.m);
}

START_TEST(auth_keysrc_async) {
  char req[4096], head[1024];
  reset_with(use_keysrc);
  testjwt_make(tok, sizeof(tok), "{\"alg\":\"RS256\",\"kid\":\"k1\"}",
               payload(pl, "kim", NOW, 0, NOW + 600), TJ_RS256, rsa_key, NULL,
               0);
  ck_assert_int_eq(h_recv_str(upgrade_req(req, sizeof(req), tok)), 0);
  ck_assert(H.m.key_cb != NULL);
  ck_assert_uint_eq(H.m.sock.len, 0);
  H.m.key_cb(H.m.key_ud, 0, "RS256", (const uint8_t *)rsa_pem, strlen(rsa_pem));
  imc_gateway_flush(H.gw);
  ck_assert_int_eq(read_http(head, sizeof(head), NULL), 101);
  ck_assert_str_eq(H.m.reg_user, "kim");
}
END_TEST

START_TEST(auth_keysrc_closed_meanwhile) {
  char req[4096];
  reset_with(use_keysrc);
  testjwt_make(tok, sizeof(tok), "{\"alg\":\"RS256\"}",
               payload(pl, "kim", NOW, 0, NOW + 600), TJ_RS256, rsa_key, NULL,
               0);
  ck_assert_int_eq(h_recv_str(upgrade_req(req, sizeof(req), tok)), 0);
  imc_gateway_conn_closed(H.gw, H.c);
  /* The late completion finds no connection and does nothing. */
  H.m.key_cb(H.m.key_ud, 0, "RS256", (const uint8_t *)rsa_pem, strlen(rsa_pem));
  ck_assert_int_eq(H.m.sock.closed, 0);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Frames                                                               */
/* ------------------------------------------------------------------ */

START_TEST(ping_pong) {
  h_connect("alice", NULL);
  ck_assert_int_eq(send_ping(9, 1234), 0);
  expect_pong(9, 1234);
}
END_TEST

START_TEST(text_frame_1003) {
  h_connect("alice", NULL);
  send_ws(1, "hello", 5);
  expect_close(1003);
  ck_assert_int_eq(H.m.unreg, 1);
}
END_TEST

/* Close frames left in the client's unread output. */
static int close_frames_left(void) {
  int n = 0;
  while (next_ws())
    n += F.opcode == 8;
  return n;
}

/*
 * After our 1003 the client's close must not draw a second close frame:
 * the flag that drops wslay's answer (bit 8) outlives every flush.
 */
START_TEST(text_frame_single_close) {
  h_connect("alice", NULL);
  send_ws(1, "hello", 5);
  ck_assert_int_eq(next_ws(), 1);
  ck_assert_int_eq(close_code(), 1003);
  /* Another flush cycle between our close and the client's. */
  send_ping(2, 2);
  imc_gateway_flush(H.gw);
  uint8_t cl[2] = {0x03, 0xeb};
  size_t n = ws_frame(wbuf, 1, 8, 0, cl, 2, 1);
  imc_gateway_conn_recv(H.gw, H.c, wbuf, n);
  imc_gateway_flush(H.gw);
  ck_assert_int_eq(close_frames_left(), 0);
  ck_assert_int_eq(H.m.sock.closed, 1);
  ck_assert_uint_eq(imc_gateway_conn_count(H.gw), 0);
}
END_TEST

START_TEST(oversize_1009) {
  h_connect("alice", NULL);
  static uint8_t big[64 * 1024 + 2048];
  memset(big, 'x', sizeof(big));
  send_ws(2, big, sizeof(big));
  expect_close(1009);
}
END_TEST

START_TEST(body_too_large_in_valid_frame) {
  h_connect("alice", NULL);
  static uint8_t body[64 * 1024 + 1];
  Imchat__V1__SendRequest s = IMCHAT__V1__SEND_REQUEST__INIT;
  s.client_msg_id = "c1";
  s.to_case = IMCHAT__V1__SEND_REQUEST__TO_USER_ID;
  s.user_id = "bob";
  s.body.data = body;
  s.body.len = sizeof(body);
  Imchat__V1__ClientFrame cf = IMCHAT__V1__CLIENT_FRAME__INIT;
  cf.id = 3;
  cf.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_SEND;
  cf.send = &s;
  ck_assert_int_eq(send_cf(&cf), 0);
  expect_error(3, IMCHAT__V1__ERROR__CODE__TOO_LARGE);
}
END_TEST

START_TEST(bad_protobuf) {
  h_connect("alice", NULL);
  const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
  ck_assert_int_eq(send_ws(2, junk, sizeof(junk)), 0);
  expect_error(0, IMCHAT__V1__ERROR__CODE__BAD_REQUEST);
  /* Still up. */
  ck_assert_int_eq(send_ping(2, 5), 0);
  expect_pong(2, 5);
}
END_TEST

START_TEST(repeated_garbage_1008) {
  h_connect("alice", NULL);
  const uint8_t junk[] = {0xff, 0xff};
  for (int i = 0; i < 9; i++) {
    ck_assert_int_eq(send_ws(2, junk, sizeof(junk)), 0);
    expect_error(0, IMCHAT__V1__ERROR__CODE__BAD_REQUEST);
  }
  send_ws(2, junk, sizeof(junk));
  expect_close(1008);
}
END_TEST

START_TEST(fragmented_message) {
  h_connect("alice", NULL);
  Imchat__V1__Ping ping = IMCHAT__V1__PING__INIT;
  ping.client_time_ms = 77;
  Imchat__V1__ClientFrame cf = IMCHAT__V1__CLIENT_FRAME__INIT;
  cf.id = 11;
  cf.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_PING;
  cf.ping = &ping;
  uint8_t pb[64];
  size_t n = imchat__v1__client_frame__pack(&cf, pb);
  size_t a = ws_frame(wbuf, 0, 2, 0, pb, 2, 1);
  /* A ping may come between fragments. */
  a += ws_frame(wbuf + a, 1, 9, 0, "p", 1, 1);
  a += ws_frame(wbuf + a, 1, 0, 0, pb + 2, n - 2, 1);
  ck_assert_int_eq(h_recv(wbuf, a), 0);
  ck_assert_int_eq(next_ws(), 1);
  ck_assert_int_eq(F.opcode, 10); /* the pong of the control ping */
  expect_pong(11, 77);
}
END_TEST

/* Expects our close frame with code and the socket closed right after
 * it: a protocol error ends reading (RFC 6455 7.1.7, "Fail the WebSocket
 * Connection"). */
static void expect_fail(int code) {
  ck_assert_int_eq(next_ws(), 1);
  ck_assert_int_eq(close_code(), code);
  ck_assert_int_eq(H.m.sock.closed, 1);
  ck_assert_uint_eq(imc_gateway_conn_count(H.gw), 0);
}

/* RFC 6455 5.5: control frames carry at most 125 bytes. */
START_TEST(control_frame_too_long) {
  h_connect("alice", NULL);
  uint8_t payload126[126];
  memset(payload126, 'p', sizeof(payload126));
  send_ws(9, payload126, sizeof(payload126));
  expect_fail(1002);
}
END_TEST

/* RFC 6455 5.5: control frames must not be fragmented. */
START_TEST(fragmented_ping) {
  h_connect("alice", NULL);
  size_t n = ws_frame(wbuf, 0, 9, 0, "ab", 2, 1);
  h_recv(wbuf, n);
  expect_fail(1002);
}
END_TEST

/* RFC 6455 5.5.1: a close body starts with a 2-byte status code; 1 byte
 * is refused at the header. */
START_TEST(close_one_byte) {
  h_connect("alice", NULL);
  const uint8_t hdr[] = {0x88, 0x81}; /* the first two bytes decide */
  h_recv(hdr, sizeof(hdr));
  expect_fail(1002);
}
END_TEST

/* RFC 6455 5.2: "the most significant bit MUST be 0" in a 64-bit length;
 * the header alone decides, no payload is awaited. */
START_TEST(length_top_bit) {
  h_connect("alice", NULL);
  const uint8_t hdr[] = {0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 5};
  h_recv(hdr, sizeof(hdr));
  expect_fail(1002);
}
END_TEST

/* RFC 6455 5.2: "the minimal number of bytes MUST be used to encode the
 * length": a 16-bit length under 126, a 64-bit length under 65536. */
START_TEST(length_not_minimal) {
  h_connect("alice", NULL);
  static const uint8_t hdrs[2][10] = {
      {0x82, 0xfe, 0x00, 0x05}, {0x82, 0xff, 0, 0, 0, 0, 0, 0, 0xff, 0xff}};
  h_recv(hdrs[_i], _i == 0 ? 4 : 10);
  expect_fail(1002);
}
END_TEST

/* RFC 6455 5.2: opcodes 3-7 and 0xB-0xF are reserved. */
START_TEST(reserved_opcode) {
  static const int ops[] = {3, 7, 0xb, 0xf};
  h_connect("alice", NULL);
  size_t n = ws_frame(wbuf, 1, ops[_i], 0, "ab", 2, 1);
  h_recv(wbuf, n);
  expect_fail(1002);
}
END_TEST

/* RFC 6455 5.4: a continuation frame needs a message to continue, and a
 * new data frame may not start inside a fragmented one. */
START_TEST(bad_fragment_sequence) {
  h_connect("alice", NULL);
  size_t n = 0;
  if (_i == 1)
    n = ws_frame(wbuf, 0, 2, 0, "ab", 2, 1);
  n += ws_frame(wbuf + n, 1, _i == 0 ? 0 : 2, 0, "cd", 2, 1);
  h_recv(wbuf, n);
  expect_fail(1002);
}
END_TEST

/* RFC 6455 10.4 and 7.4.1 (1009): a length over the message limit is
 * refused at the header, before any payload is buffered: 2^63-1 here. */
START_TEST(huge_length_1009_at_header) {
  h_connect("alice", NULL);
  const uint8_t hdr[] = {0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff,
                         0xff, 0xff, 0xff, 1,    2,    3,    4};
  h_recv(hdr, 10); /* without the mask key even */
  expect_fail(1009);
}
END_TEST

/* RFC 6455 7.4.1 and the IANA registry: the registered codes 1012-1014
 * (service restart, try again later, bad gateway) and the 3000-4999
 * range are valid in a client's close; the server echoes the code. */
START_TEST(close_code_echoed) {
  static const int codes[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009,
                              1010, 1011, 1012, 1013, 1014, 3000, 4999};
  h_connect("alice", NULL);
  int code = codes[_i];
  uint8_t cl[8] = {(uint8_t)(code >> 8), (uint8_t)code, 'b', 'y', 'e'};
  size_t n = ws_frame(wbuf, 1, 8, 0, cl, 5, 1);
  ck_assert_int_eq(h_recv(wbuf, n), 0);
  ck_assert_int_eq(next_ws(), 1);
  ck_assert_int_eq(close_code(), code);
  ck_assert_int_eq(H.m.sock.closed, 1);
  ck_assert_int_eq(H.m.unreg, 1);
}
END_TEST

/* RFC 6455 7.4.1/7.4.2: 1004-1006 and 1015 must not be sent in a close
 * frame, 0-999 are not used, 1016-2999 are unassigned, 5000+ undefined:
 * each is a protocol error. */
START_TEST(close_code_invalid) {
  static const int codes[] = {0,    999,  1004, 1005, 1006,
                              1015, 1016, 2999, 5000, 65535};
  h_connect("alice", NULL);
  int code = codes[_i];
  uint8_t cl[2] = {(uint8_t)(code >> 8), (uint8_t)code};
  size_t n = ws_frame(wbuf, 1, 8, 0, cl, 2, 1);
  h_recv(wbuf, n);
  expect_fail(1002);
}
END_TEST

/* RFC 6455 5.5.1 and 8.1: the reason of a close frame is UTF-8;
 * invalid data is 1007. Split in two reads to cover the kept payload. */
START_TEST(close_reason_not_utf8) {
  h_connect("alice", NULL);
  const uint8_t cl[] = {0x03, 0xe8, 'o', 'k', 0xc0, 0xaf}; /* overlong */
  size_t n = ws_frame(wbuf, 1, 8, 0, cl, sizeof(cl), 1);
  h_recv(wbuf, n - 3);
  ck_assert_int_eq(H.m.sock.len - H.m.sock.pos, 0);
  h_recv(wbuf + n - 3, 3);
  expect_fail(1007);
}
END_TEST

/* RFC 6455 5.5.1: a close frame without a body is answered with a close
 * frame (1000: nothing went wrong). */
START_TEST(close_empty_answered) {
  h_connect("alice", NULL);
  size_t n = ws_frame(wbuf, 1, 8, 0, "", 0, 1);
  ck_assert_int_eq(h_recv(wbuf, n), 0);
  ck_assert_int_eq(next_ws(), 1);
  ck_assert_int_eq(close_code(), 1000);
  ck_assert_int_eq(H.m.sock.closed, 1);
}
END_TEST

/* RFC 6455 5.5.2/5.5.3: 125-byte pings are fine and answered with the
 * same payload, also byte by byte between the fragments of a message. */
START_TEST(ping_125_between_fragments) {
  h_connect("alice", NULL);
  uint8_t p125[125];
  memset(p125, 'q', sizeof(p125));
  Imchat__V1__Ping ping = IMCHAT__V1__PING__INIT;
  ping.client_time_ms = 5;
  Imchat__V1__ClientFrame cf = IMCHAT__V1__CLIENT_FRAME__INIT;
  cf.id = 4;
  cf.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_PING;
  cf.ping = &ping;
  uint8_t pb[64];
  size_t pn = imchat__v1__client_frame__pack(&cf, pb);
  size_t a = ws_frame(wbuf, 0, 2, 0, pb, 1, 1);
  a += ws_frame(wbuf + a, 1, 9, 0, p125, sizeof(p125), 1);
  a += ws_frame(wbuf + a, 1, 0, 0, pb + 1, pn - 1, 1);
  for (size_t i = 0; i < a; i++)
    ck_assert_int_eq(h_recv(wbuf + i, 1), 0);
  ck_assert_int_eq(next_ws(), 1);
  ck_assert_int_eq(F.opcode, 10);
  ck_assert_uint_eq(F.len, 125);
  ck_assert_int_eq(memcmp(F.payload, p125, 125), 0);
  expect_pong(4, 5);
}
END_TEST

START_TEST(unmasked_frame) {
  h_connect("alice", NULL);
  size_t n = ws_frame(wbuf, 1, 2, 0, "ab", 2, 0);
  h_recv(wbuf, n);
  ck_assert_int_eq(next_ws(), 1);
  ck_assert_int_eq(close_code(), 1002);
  ck_assert_int_eq(H.m.sock.closed, 1);
}
END_TEST

START_TEST(rsv_bits) {
  h_connect("alice", NULL);
  size_t n = ws_frame(wbuf, 1, 2, 4, "ab", 2, 1);
  h_recv(wbuf, n);
  ck_assert_int_eq(next_ws(), 1);
  ck_assert_int_eq(close_code(), 1002);
}
END_TEST

START_TEST(client_close) {
  h_connect("alice", NULL);
  uint8_t cl[2] = {0x03, 0xe8};
  size_t n = ws_frame(wbuf, 1, 8, 0, cl, 2, 1);
  ck_assert_int_eq(h_recv(wbuf, n), 0);
  ck_assert_int_eq(next_ws(), 1);
  ck_assert_int_eq(close_code(), 1000);
  ck_assert_int_eq(H.m.sock.closed, 1);
  ck_assert_int_eq(H.m.unreg, 1);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Heartbeat and registry                                               */
/* ------------------------------------------------------------------ */

START_TEST(heartbeat) {
  h_connect("alice", NULL);
  ck_assert_int_eq(imc_gateway_next_timeout_ms(H.gw), 30000);
  h_advance(30000);
  ck_assert_int_eq(next_ws(), 1);
  ck_assert_int_eq(F.opcode, 9);
  ck_assert_int_eq(H.m.keepalives, 1);
  /* The client answers: alive past 90 s from the start. */
  size_t n = ws_frame(wbuf, 1, 10, 0, NULL, 0, 1);
  h_recv(wbuf, n);
  h_advance(30000);
  ck_assert_int_eq(H.m.keepalives, 2);
  h_advance(30000);
  ck_assert_int_eq(H.m.keepalives, 3);
  ck_assert_int_eq(H.m.sock.closed, 0);
  /* Then silence: 90 s after the pong, closed with 1001. */
  h_advance(30000);
  ck_assert_int_eq(H.m.sock.closed, 0);
  while (next_ws() && F.opcode == 9)
    ;
  ck_assert_int_eq(close_code(), 1001);
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_IDLE_CLOSED), 1);
  /* No answer to the close: the socket goes after the close wait. */
  h_advance(5000);
  ck_assert_int_eq(H.m.sock.closed, 1);
  ck_assert_int_eq(H.m.unreg, 1);
}
END_TEST

START_TEST(silent_client_dropped) {
  h_connect("alice", NULL);
  h_advance(30000);
  h_advance(30000);
  ck_assert_int_eq(H.m.sock.closed, 0);
  h_advance(30000);
  int closes = 0;
  while (next_ws())
    closes += F.opcode == 8;
  ck_assert_int_eq(closes, 1);
  h_advance(5000);
  ck_assert_int_eq(H.m.sock.closed, 1);
}
END_TEST

START_TEST(conn_lost_unregisters) {
  h_connect("alice", NULL);
  imc_gateway_conn_closed(H.gw, H.c);
  ck_assert_int_eq(H.m.unreg, 1);
  ck_assert_int_eq(H.m.sock.closed, 0);
  ck_assert_uint_eq(imc_gateway_conn_count(H.gw), 0);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Sends, pushes, outbound queue                                        */
/* ------------------------------------------------------------------ */

static void with_upstream(imc_gateway_options *o) {
  imc_gateway_options_set_upstream(o, &upstream, &H.m);
}

static int send_text(uint64_t id, const char *to, const char *body) {
  Imchat__V1__SendRequest s = IMCHAT__V1__SEND_REQUEST__INIT;
  s.client_msg_id = "cm-1";
  s.to_case = IMCHAT__V1__SEND_REQUEST__TO_USER_ID;
  s.user_id = (char *)to;
  s.body.data = (uint8_t *)body;
  s.body.len = strlen(body);
  s.content_type = "text/plain";
  Imchat__V1__ClientFrame cf = IMCHAT__V1__CLIENT_FRAME__INIT;
  cf.id = id;
  cf.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_SEND;
  cf.send = &s;
  return send_cf(&cf);
}

/* SPEC 3.1: a string field that is not UTF-8, or holds NUL, refuses the
 * whole frame (protobuf-c itself would take it). */
static const struct {
  const char *s;
  size_t len;
} bad_strings[] = {
#define BS(lit)                                                                \
  { lit, sizeof(lit) - 1 }
    /* id 6, send{client_msg_id "bad\xff\xfe", user_id "bob"} */
    BS("\x08\x06\x52\x0c\x0a\x05"
       "bad\xff\xfe\x12\x03"
       "bob"),
    /* client_msg_id "m\0first" */
    BS("\x08\x06\x52\x0e\x0a\x07"
       "m\0first\x12\x03"
       "bob"),
    /* user_id "bo\0b" */
    BS("\x08\x06\x52\x0a\x0a\x02"
       "c1\x12\x04"
       "bo\0b"),
    /* content_type, a surrogate */
    BS("\x08\x06\x52\x0e\x0a\x02"
       "c1\x12\x03"
       "bob\x2a\x03\xed\xa0\x80"),
    /* deliver_ack{msg_ids "\xc0\xaf"} */
    BS("\x08\x06\x5a\x04\x0a\x02\xc0\xaf"),
#undef BS
};

START_TEST(send_bad_strings_refused) {
  reset_with(with_upstream);
  h_connect("alice", NULL);
  const uint8_t *in = (const uint8_t *)bad_strings[_i].s;
  ck_assert_int_eq(send_ws(2, in, bad_strings[_i].len), 0);
  expect_error(6, IMCHAT__V1__ERROR__CODE__BAD_REQUEST);
  ck_assert_int_eq(H.m.sends, 0);
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_BAD_FRAMES), 1);
  /* Still up, and a good send goes through. */
  send_text(4, "bob", "hi");
  Imchat__V1__ServerFrame *f = next_sf();
  ck_assert_int_eq(f->body_case, IMCHAT__V1__SERVER_FRAME__BODY_SEND_ACK);
  imchat__v1__server_frame__free_unpacked(f, NULL);
  ck_assert_int_eq(H.m.sends, 1);
}
END_TEST

START_TEST(send_without_routing) {
  h_connect("alice", NULL);
  send_text(4, "bob", "hi");
  expect_error(4, IMCHAT__V1__ERROR__CODE__UNAVAILABLE);
}
END_TEST

START_TEST(send_ack) {
  reset_with(with_upstream);
  h_connect("alice", NULL);
  send_text(4, "bob", "hi");
  Imchat__V1__ServerFrame *f = next_sf();
  ck_assert_int_eq(f->body_case, IMCHAT__V1__SERVER_FRAME__BODY_SEND_ACK);
  ck_assert_uint_eq(f->id, 4);
  ck_assert_str_eq(f->send_ack->client_msg_id, "cm-1");
  ck_assert_str_eq(f->send_ack->msg_id, "m-1");
  ck_assert_uint_eq(f->send_ack->seq, 7);
  imchat__v1__server_frame__free_unpacked(f, NULL);
}
END_TEST

START_TEST(send_completion_after_close) {
  reset_with(with_upstream);
  H.m.async_send = 1;
  h_connect("alice", NULL);
  send_text(4, "bob", "hi");
  ck_assert(H.m.pending_cb != NULL);
  imc_gateway_conn_closed(H.gw, H.c);
  imc_send_result r = {"cm-1", "m-1", "p:a:b", 1, T0};
  H.m.pending_cb(H.m.pending_ud, 0, &r, NULL);
}
END_TEST

START_TEST(rate_limit) {
  reset_with(with_upstream);
  h_connect("alice", NULL);
  for (int i = 0; i < 200; i++) {
    send_text((uint64_t)i + 1, "bob", "x");
    Imchat__V1__ServerFrame *f = next_sf();
    ck_assert_int_eq(f->body_case, IMCHAT__V1__SERVER_FRAME__BODY_SEND_ACK);
    imchat__v1__server_frame__free_unpacked(f, NULL);
  }
  send_text(999, "bob", "x");
  expect_error(999, IMCHAT__V1__ERROR__CODE__RATE_LIMITED);
  /* 100/s refills: 10 ms later one more goes through. */
  test_clock_advance(&H.tc, 10);
  send_text(1000, "bob", "x");
  Imchat__V1__ServerFrame *f = next_sf();
  ck_assert_int_eq(f->body_case, IMCHAT__V1__SERVER_FRAME__BODY_SEND_ACK);
  imchat__v1__server_frame__free_unpacked(f, NULL);
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_RATE_LIMITED), 1);
}
END_TEST

static imc_msg test_msg(const char *id) {
  imc_msg m = {.struct_size = sizeof(imc_msg),
               .msg_id = id,
               .conversation_id = "p:alice:bob",
               .seq = 3,
               .from_user = "bob",
               .to_user = "alice",
               .group_id = "",
               .body = (const uint8_t *)"hey",
               .body_len = 3,
               .content_type = "text/plain",
               .sent_at_ms = T0,
               .client_msg_id = "c-9",
               .from_device = "phone"};
  return m;
}

START_TEST(deliver_and_ack) {
  reset_with(with_upstream);
  h_connect("alice", NULL);
  imc_msg m = test_msg("m-42");
  ck_assert_int_eq(imc_gateway_deliver(H.gw, "alice", NULL, &m), 1);
  ck_assert_int_eq(imc_gateway_deliver(H.gw, "nobody", NULL, &m), 0);
  imc_gateway_flush(H.gw);
  Imchat__V1__ServerFrame *f = next_sf();
  ck_assert_int_eq(f->body_case, IMCHAT__V1__SERVER_FRAME__BODY_DELIVER);
  ck_assert_str_eq(f->deliver->message->msg_id, "m-42");
  ck_assert_uint_eq(f->deliver->message->seq, 3);
  ck_assert_int_eq(f->deliver->message->body.len, 3);
  imchat__v1__server_frame__free_unpacked(f, NULL);
  char *ids[] = {"m-42", "unknown"};
  Imchat__V1__DeliverAck a = IMCHAT__V1__DELIVER_ACK__INIT;
  a.n_msg_ids = 2;
  a.msg_ids = ids;
  Imchat__V1__ClientFrame cf = IMCHAT__V1__CLIENT_FRAME__INIT;
  cf.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_DELIVER_ACK;
  cf.deliver_ack = &a;
  send_cf(&cf);
  ck_assert_int_eq(H.m.delivered, 1);
  h_advance(10000);
  ck_assert_int_eq(H.m.undelivered, 0);
}
END_TEST

/* Acks come in batches, in push order or not: each is matched once. */
START_TEST(ack_batches) {
  reset_with(with_upstream);
  h_connect("alice", NULL);
  char ids[5][8];
  for (int i = 0; i < 5; i++) {
    snprintf(ids[i], sizeof(ids[i]), "m-%d", i);
    imc_msg m = test_msg(ids[i]);
    ck_assert_int_eq(imc_gateway_deliver(H.gw, "alice", NULL, &m), 1);
  }
  char *in_order[] = {ids[0], ids[1], ids[2]};
  char *out_of_order[] = {ids[4], "unknown", ids[3], ids[3]};
  Imchat__V1__DeliverAck a = IMCHAT__V1__DELIVER_ACK__INIT;
  Imchat__V1__ClientFrame cf = IMCHAT__V1__CLIENT_FRAME__INIT;
  cf.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_DELIVER_ACK;
  cf.deliver_ack = &a;
  a.n_msg_ids = 3;
  a.msg_ids = in_order;
  send_cf(&cf);
  ck_assert_int_eq(H.m.delivered, 3);
  a.n_msg_ids = 4;
  a.msg_ids = out_of_order;
  send_cf(&cf);
  ck_assert_int_eq(H.m.delivered, 5);
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_ACKS), 5);
  h_advance(10000);
  ck_assert_int_eq(H.m.undelivered, 0);
}
END_TEST

static void with_long_ack(imc_gateway_options *o) {
  with_upstream(o);
  ck_assert_int_eq(imc_gateway_options_set_ack_timeout_ms(o, 60000), 0);
}

static void ack_one(const char *id) {
  char *ids[] = {(char *)id};
  Imchat__V1__DeliverAck a = IMCHAT__V1__DELIVER_ACK__INIT;
  a.n_msg_ids = 1;
  a.msg_ids = ids;
  Imchat__V1__ClientFrame cf = IMCHAT__V1__CLIENT_FRAME__INIT;
  cf.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_DELIVER_ACK;
  cf.deliver_ack = &a;
  ck_assert_int_eq(send_cf(&cf), 0);
}

/* Each ACK counts in the bucket of its time since the push: bounds are
 * inclusive, and past the last one is the overflow bucket. */
START_TEST(ack_latency) {
  reset_with(with_long_ack);
  h_connect("alice", NULL);
  const uint64_t *bounds, *counts;
  uint64_t sum = 1;
  ck_assert_uint_eq(imc_gateway_ack_latency(NULL, &bounds, &counts, &sum), 0);
  ck_assert_uint_eq(imc_gateway_ack_latency(H.gw, NULL, &counts, &sum), 0);
  ck_assert_uint_eq(imc_gateway_ack_latency(H.gw, &bounds, &counts, &sum),
                    IMC_GW_ACK_BOUNDS);
  ck_assert_uint_eq(bounds[0], 1);
  ck_assert_uint_eq(bounds[5], 50);
  ck_assert_uint_eq(bounds[IMC_GW_ACK_BOUNDS - 1], 10000);
  for (int i = 0; i <= IMC_GW_ACK_BOUNDS; i++)
    ck_assert_uint_eq(counts[i], 0);
  ck_assert_uint_eq(sum, 0);

  const char *ids[] = {"m-0", "m-1", "m-2", "m-3"};
  for (int i = 0; i < 4; i++) {
    imc_msg m = test_msg(ids[i]);
    ck_assert_int_eq(imc_gateway_deliver(H.gw, "alice", NULL, &m), 1);
  }
  ack_one("m-0"); /* at once: 0 ms */
  h_advance(30);
  ack_one("m-2"); /* 30 ms, out of order */
  h_advance(20);
  ack_one("m-1"); /* 50 ms, on a bound */
  h_advance(14950);
  ack_one("m-3"); /* 15 s: above every bound */
  ack_one("m-3"); /* a repeat matches nothing */
  ack_one("m-9");
  ck_assert_uint_eq(imc_gateway_ack_latency(H.gw, &bounds, &counts, &sum),
                    IMC_GW_ACK_BOUNDS);
  for (int i = 0; i <= IMC_GW_ACK_BOUNDS; i++) {
    uint64_t want = i == 0 ? 1 : i == 5 ? 2 : i == IMC_GW_ACK_BOUNDS ? 1 : 0;
    ck_assert_msg(counts[i] == want, "bucket %d: %llu, want %llu", i,
                  (unsigned long long)counts[i], (unsigned long long)want);
  }
  ck_assert_uint_eq(sum, 0 + 30 + 50 + 15000);
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_ACKS), 4);
  ck_assert_int_eq(H.m.delivered, 4);
}
END_TEST

START_TEST(ack_timeout_fallback) {
  reset_with(with_upstream);
  h_connect("alice", NULL);
  imc_msg m = test_msg("m-43");
  imc_gateway_deliver(H.gw, "alice", NULL, &m);
  h_advance(9999);
  ck_assert_int_eq(H.m.undelivered, 0);
  h_advance(1);
  ck_assert_int_eq(H.m.undelivered, 1);
  ck_assert_str_eq(H.m.last_undelivered, "alice/m-43");
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_ACK_TIMEOUTS), 1);
}
END_TEST

START_TEST(close_fallback_and_skip_device) {
  reset_with(with_upstream);
  h_connect("alice", "phone");
  imc_msg m = test_msg("m-44");
  ck_assert_int_eq(imc_gateway_deliver(H.gw, "alice", "phone", &m), 0);
  ck_assert_int_eq(imc_gateway_deliver(H.gw, "alice", "laptop", &m), 1);
  imc_gateway_conn_closed(H.gw, H.c);
  ck_assert_int_eq(H.m.undelivered, 1);
}
END_TEST

START_TEST(del_with_pushes_in_flight) {
  reset_with(with_upstream);
  h_connect("alice", NULL);
  imc_msg m = test_msg("m-46");
  ck_assert_int_eq(imc_gateway_deliver(H.gw, "alice", NULL, &m), 1);
  /* The teardown deletes the gateway now: nothing may leak, and the
   * upstream is not called from a gateway being deleted. */
  imc_gateway_del(H.gw);
  H.gw = NULL;
  ck_assert_int_eq(H.m.undelivered, 0);
}
END_TEST

START_TEST(push_status) {
  h_connect("alice", "phone");
  ck_assert_int_eq(imc_gateway_push_status(H.gw, "alice", "laptop", "m-1",
                                           "c-1", IMC_DELIVERED, "bob"),
                   0);
  ck_assert_int_eq(imc_gateway_push_status(H.gw, "alice", "phone", "m-1", "c-1",
                                           IMC_DELIVERED, "bob"),
                   1);
  imc_gateway_flush(H.gw);
  Imchat__V1__ServerFrame *f = next_sf();
  ck_assert_int_eq(f->body_case, IMCHAT__V1__SERVER_FRAME__BODY_STATUS);
  ck_assert_int_eq(f->status->state,
                   IMCHAT__V1__DELIVERY_STATUS__STATE__DELIVERED);
  ck_assert_str_eq(f->status->user_id, "bob");
  imchat__v1__server_frame__free_unpacked(f, NULL);
}
END_TEST

START_TEST(slow_reader_closed) {
  reset_with(with_upstream);
  h_connect("alice", NULL);
  H.m.sock.block = 1;
  static uint8_t body[60000];
  imc_msg m = test_msg("m-big");
  m.body = body;
  m.body_len = sizeof(body);
  int pushed = 0;
  for (int i = 0; i < 30; i++) {
    imc_gateway_flush(H.gw);
    if (imc_gateway_deliver(H.gw, "alice", NULL, &m) == 1)
      pushed++;
  }
  ck_assert_int_ge(pushed, 17); /* 1 MiB / 60 KB */
  ck_assert_int_lt(pushed, 30);
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_SLOW_CLOSED), 1);
  /* The reader never drains: after the close wait it is cut, and every
   * push goes back for the slow path. */
  h_advance(5000);
  ck_assert_int_eq(H.m.sock.closed, 1);
  ck_assert_int_eq(H.m.undelivered, pushed);
}
END_TEST

START_TEST(writable_after_block) {
  h_connect("alice", NULL);
  H.m.sock.block = 1;
  send_ping(1, 1);
  size_t before = H.m.sock.len;
  imc_gateway_flush(H.gw);
  ck_assert_uint_eq(H.m.sock.len, before);
  H.m.sock.block = 0;
  ck_assert_int_eq(imc_gateway_conn_writable(H.gw, H.c), 0);
  expect_pong(1, 1);
}
END_TEST

START_TEST(shutdown_1001) {
  reset_with(with_upstream);
  h_connect("alice", NULL);
  imc_msg m = test_msg("m-45");
  imc_gateway_deliver(H.gw, "alice", NULL, &m);
  imc_gateway_shutdown(H.gw);
  imc_gateway_flush(H.gw);
  ck_assert_int_eq(H.m.undelivered, 1);
  imc_conn *c2;
  ck_assert_int_eq(imc_gateway_conn_new(H.gw, &c2, &H.m.sock), IMC_ERR_CLOSED);
  Imchat__V1__ServerFrame *f = next_sf();
  ck_assert_int_eq(f->body_case, IMCHAT__V1__SERVER_FRAME__BODY_DELIVER);
  imchat__v1__server_frame__free_unpacked(f, NULL);
  expect_close(1001);
  /* The node's entries go at once, with its lease: no unregister each. */
  ck_assert_int_eq(H.m.revokes, 1);
  ck_assert_uint_eq(H.m.lease, 0);
  h_advance(5000);
  ck_assert_uint_eq(imc_gateway_conn_count(H.gw), 0);
  ck_assert_int_eq(H.m.unreg, 0);
  ck_assert_int_eq(H.m.revokes, 1);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Upstream reports and send deadlines                                  */
/* ------------------------------------------------------------------ */

static void ack_msg(const char *msg_id) {
  char *ids[] = {(char *)msg_id};
  Imchat__V1__DeliverAck a = IMCHAT__V1__DELIVER_ACK__INIT;
  a.n_msg_ids = 1;
  a.msg_ids = ids;
  Imchat__V1__ClientFrame cf = IMCHAT__V1__CLIENT_FRAME__INIT;
  cf.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_DELIVER_ACK;
  cf.deliver_ack = &a;
  send_cf(&cf);
}

START_TEST(delivered_fails_falls_back) {
  reset_with(with_upstream);
  H.m.fail_delivered = 1;
  h_connect("alice", NULL);
  imc_msg m = test_msg("m-50");
  ck_assert_int_eq(imc_gateway_deliver(H.gw, "alice", NULL, &m), 1);
  ack_msg("m-50");
  ck_assert_int_eq(H.m.delivered, 1);
  ck_assert_int_eq(H.m.undelivered, 1);
  ck_assert_int_eq(H.m.undelivered_ok, 1);
  ck_assert_str_eq(H.m.last_undelivered, "alice/m-50");
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 0);
}
END_TEST

START_TEST(undelivered_retried_with_backoff) {
  reset_with(with_upstream);
  H.m.fail_undelivered = 2; /* refused, then completed with an error */
  h_connect("alice", NULL);
  imc_msg m = test_msg("m-51");
  ck_assert_int_eq(imc_gateway_deliver(H.gw, "alice", NULL, &m), 1);
  h_advance(10000); /* ACK timeout */
  ck_assert_int_eq(H.m.undelivered, 1);
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 1);
  ck_assert_int_eq(imc_gateway_next_timeout_ms(H.gw), 100);
  h_advance(99);
  ck_assert_int_eq(H.m.undelivered, 1);
  h_advance(1);
  ck_assert_int_eq(H.m.undelivered, 2);
  ck_assert_int_eq(H.m.undelivered_ok, 0);
  /* The delay doubles. */
  ck_assert_int_eq(imc_gateway_next_timeout_ms(H.gw), 200);
  h_advance(199);
  ck_assert_int_eq(H.m.undelivered, 2);
  h_advance(1);
  ck_assert_int_eq(H.m.undelivered, 3);
  ck_assert_int_eq(H.m.undelivered_ok, 1);
  ck_assert_str_eq(H.m.last_undelivered, "alice/m-51");
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 0);
  /* Exactly one success: nothing is retried again. */
  h_advance(20000);
  ck_assert_int_eq(H.m.undelivered, 3);
  ck_assert_int_eq(H.m.undelivered_ok, 1);
}
END_TEST

START_TEST(shutdown_waits_for_reports) {
  reset_with(with_upstream);
  H.m.async_undelivered = 1;
  h_connect("alice", NULL);
  imc_msg m = test_msg("m-52");
  ck_assert_int_eq(imc_gateway_deliver(H.gw, "alice", NULL, &m), 1);
  imc_gateway_shutdown(H.gw);
  imc_gateway_flush(H.gw);
  ck_assert_int_eq(H.m.undelivered, 1);
  /* The connection goes; the report is still with the upstream, which
   * reads the gateway's copy of the message. */
  imc_gateway_conn_closed(H.gw, H.c);
  ck_assert_uint_eq(imc_gateway_conn_count(H.gw), 0);
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 1);
  ck_assert_str_eq(H.m.last_undelivered, "alice/m-52");
  H.m.und_cb(H.m.und_ud, 0);
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 0);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Acks reported in batches (delivered_many)                            */
/* ------------------------------------------------------------------ */

static void with_upstream_many(imc_gateway_options *o) {
  imc_gateway_options_set_upstream(o, &upstream_many, &H.m);
}

/* Pushes n messages, ids[0..n), to alice. */
static void push_n(char (*ids)[16], int n) {
  for (int i = 0; i < n; i++) {
    snprintf(ids[i], sizeof(ids[i]), "m-%d", i);
    imc_msg m = test_msg(ids[i]);
    ck_assert_int_eq(imc_gateway_deliver(H.gw, "alice", NULL, &m), 1);
  }
  imc_gateway_flush(H.gw);
}

/* One DeliverAck frame for ids, received in the current loop turn: no
 * flush after it. */
static void recv_acks(char **ids, size_t n) {
  static uint8_t pb[70000];
  Imchat__V1__DeliverAck a = IMCHAT__V1__DELIVER_ACK__INIT;
  a.n_msg_ids = n;
  a.msg_ids = ids;
  Imchat__V1__ClientFrame cf = IMCHAT__V1__CLIENT_FRAME__INIT;
  cf.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_DELIVER_ACK;
  cf.deliver_ack = &a;
  ck_assert_uint_le(imchat__v1__client_frame__get_packed_size(&cf), sizeof(pb));
  size_t len = imchat__v1__client_frame__pack(&cf, pb);
  size_t fl = ws_frame(wbuf, 1, 2, 0, pb, len, 1);
  ck_assert_int_eq(imc_gateway_conn_recv(H.gw, H.c, wbuf, fl), 0);
}

/* The acks of one loop turn, over two frames, reach the upstream in one
 * delivered_many call, in the order they came; none one by one. */
START_TEST(acks_one_batch_per_turn) {
  reset_with(with_upstream_many);
  h_connect("alice", "phone");
  char ids[6][16];
  push_n(ids, 6);
  char *first[] = {ids[0], ids[1], ids[2], ids[3]};
  char *second[] = {ids[5], "unknown", ids[4]};
  recv_acks(first, 4);
  recv_acks(second, 3);
  ck_assert_int_eq(H.m.many_calls, 0);
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 6);
  ck_assert_int_eq(imc_gateway_next_timeout_ms(H.gw), 0);
  imc_gateway_flush(H.gw);
  ck_assert_int_eq(H.m.many_calls, 1);
  ck_assert_uint_eq(H.m.many_last_n, 6);
  static const char *const order[] = {"m-0", "m-1", "m-2", "m-3", "m-5", "m-4"};
  for (int i = 0; i < 6; i++)
    ck_assert_str_eq(H.m.many_ids[i], order[i]);
  ck_assert_int_eq(H.m.delivered, 0);
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_ACKS), 6);
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 0);
  /* A turn without acks makes no call. */
  imc_gateway_flush(H.gw);
  ck_assert_int_eq(H.m.many_calls, 1);
  /* Nothing is left to time out. */
  h_advance(10000);
  ck_assert_int_eq(H.m.undelivered, 0);
}
END_TEST

/* The timer path reports them too, for a host that runs timers first. */
START_TEST(acks_reported_on_timeout) {
  reset_with(with_upstream_many);
  h_connect("alice", "phone");
  char ids[2][16];
  push_n(ids, 2);
  char *acks[] = {ids[0], ids[1]};
  recv_acks(acks, 2);
  ck_assert_int_eq(imc_gateway_on_timeout(H.gw), 0);
  ck_assert_int_eq(H.m.many_calls, 1);
  ck_assert_uint_eq(H.m.many_last_n, 2);
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 0);
}
END_TEST

/* More acks than one call takes: full calls, then the rest. */
START_TEST(acks_batch_bounded) {
  reset_with(with_upstream_many);
  h_connect("alice", "phone");
  enum { N = 1100 };
  static char ids[N][16];
  static char *ptrs[N];
  push_n(ids, N);
  for (int i = 0; i < N; i++)
    ptrs[i] = ids[i];
  recv_acks(ptrs, N);
  imc_gateway_flush(H.gw);
  ck_assert_int_eq(H.m.many_calls, 2);
  ck_assert_uint_eq(H.m.many_items, N);
  ck_assert_uint_eq(H.m.many_last_n, N - 1024);
  ck_assert_str_eq(H.m.many_ids[0], "m-1024");
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 0);
}
END_TEST

/* A batch refused (_i 1) or completed with an error (_i 2): every push in
 * it falls back to the slow path, as a failed delivered does. */
START_TEST(acks_batch_fails_falls_back) {
  reset_with(with_upstream_many);
  H.m.fail_many = _i;
  h_connect("alice", "phone");
  char ids[3][16];
  push_n(ids, 3);
  char *acks[] = {ids[0], ids[1], ids[2]};
  recv_acks(acks, 3);
  imc_gateway_flush(H.gw);
  ck_assert_int_eq(H.m.many_calls, 1);
  ck_assert_int_eq(H.m.delivered, 0);
  ck_assert_int_eq(H.m.undelivered, 3);
  ck_assert_int_eq(H.m.undelivered_ok, 3);
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_UNDELIVERED), 3);
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 0);
}
END_TEST

/* A batch the upstream completes later holds the messages its acks
 * point to, after the connection went; the gateway waits for it. */
START_TEST(acks_batch_completes_later) {
  reset_with(with_upstream_many);
  H.m.async_many = 1;
  h_connect("alice", "phone");
  char ids[3][16];
  push_n(ids, 3);
  char *acks[] = {ids[0], ids[1], ids[2]};
  recv_acks(acks, 3);
  imc_gateway_flush(H.gw);
  ck_assert(H.m.many_cb != NULL);
  imc_gateway_conn_closed(H.gw, H.c);
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 3);
  ck_assert_int_eq(H.m.undelivered, 0); /* acked: not handed back */
  H.m.many_cb(H.m.many_ud, 0);
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 0);
  ck_assert_int_eq(H.m.undelivered, 0);
}
END_TEST

/* Deleting the gateway with a batch out, or acks not yet reported,
 * frees them without calling anything (the teardown checks for leaks). */
START_TEST(acks_batch_del_in_flight) {
  reset_with(with_upstream_many);
  H.m.async_many = 1;
  h_connect("alice", "phone");
  char ids[3][16];
  push_n(ids, 3);
  char *first[] = {ids[0], ids[1]};
  char *last[] = {ids[2]};
  recv_acks(first, 2);
  imc_gateway_flush(H.gw);
  recv_acks(last, 1);
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 3);
  imc_gateway_del(H.gw);
  H.gw = NULL;
  ck_assert_int_eq(H.m.many_calls, 1);
  ck_assert_int_eq(H.m.undelivered, 0);
}
END_TEST

/* No memory for the batch: the acks go one by one, which needs none. */
START_TEST(acks_batch_without_memory) {
  reset_with(with_upstream_many);
  h_connect("alice", "phone");
  char ids[3][16];
  push_n(ids, 3);
  char *acks[] = {ids[0], ids[1], ids[2]};
  recv_acks(acks, 3);
  H.tm.fail_at = H.tm.count; /* the batch is the flush's first allocation */
  imc_gateway_flush(H.gw);
  H.tm.fail_at = -1;
  ck_assert_int_eq(H.m.many_calls, 0);
  ck_assert_int_eq(H.m.delivered, 3);
  ck_assert_int_eq(H.m.undelivered, 0);
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 0);
}
END_TEST

/* An upstream built before delivered_many existed: its struct_size ends
 * before the member, which is then absent even if the memory behind it
 * holds a function. Every ack is reported at once, alone. */
static void with_old_upstream(imc_gateway_options *o) {
  static imc_upstream_vtbl old;
  old = upstream_many;
  old.struct_size = (uint32_t)offsetof(imc_upstream_vtbl, delivered_many);
  imc_gateway_options_set_upstream(o, &old, &H.m);
}

START_TEST(acks_old_upstream_one_by_one) {
  reset_with(with_old_upstream);
  h_connect("alice", "phone");
  char ids[3][16];
  push_n(ids, 3);
  char *acks[] = {ids[0], ids[1], ids[2]};
  recv_acks(acks, 3);
  ck_assert_int_eq(H.m.delivered, 3);
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 0);
  imc_gateway_flush(H.gw);
  ck_assert_int_eq(H.m.many_calls, 0);
  ck_assert_int_eq(H.m.delivered, 3);
}
END_TEST

START_TEST(send_timeout_unavailable) {
  reset_with(with_upstream);
  H.m.async_send = 1;
  h_connect("alice", NULL);
  send_text(4, "bob", "hi");
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 1);
  ck_assert_int_eq(imc_gateway_next_timeout_ms(H.gw), 15000);
  h_advance(14999);
  ck_assert_ptr_null(next_sf());
  h_advance(1);
  expect_error(4, IMCHAT__V1__ERROR__CODE__UNAVAILABLE);
  /* The late completion is harmless: no frame, nothing leaks. */
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 1);
  imc_send_result r = {"cm-1", "m-1", "p:a:b", 1, T0};
  H.m.pending_cb(H.m.pending_ud, 0, &r, NULL);
  imc_gateway_flush(H.gw);
  ck_assert_ptr_null(next_sf());
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 0);
  /* The connection goes on. */
  send_ping(5, 5);
  expect_pong(5, 5);
  ck_assert_int_eq(H.m.sock.closed, 0);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Devices per user, per-user rate                                      */
/* ------------------------------------------------------------------ */

/* A connection beside H.c, with its own socket. */
typedef struct peer {
  test_sock sock;
  imc_conn *c;
} peer;

/* The status of the HTTP answer that starts sock's output (which is not
 * NUL-terminated). */
static int sock_status(const test_sock *sock) {
  char line[13];
  ck_assert_uint_gt(sock->len, 12);
  memcpy(line, sock->out, 12);
  line[12] = '\0';
  int status = 0;
  sscanf(line, "HTTP/1.1 %d", &status);
  return status;
}

/* Opens p and upgrades it as user/device; returns the HTTP status. */
static int peer_connect(peer *p, const char *user, const char *device) {
  memset(p, 0, sizeof(*p));
  ck_assert_int_eq(imc_gateway_conn_new(H.gw, &p->c, &p->sock), 0);
  char req[2048];
  upgrade_req(req, sizeof(req), token_for(user, device, 3600));
  imc_gateway_conn_recv(H.gw, p->c, (const uint8_t *)req, strlen(req));
  imc_gateway_flush(H.gw);
  return sock_status(&p->sock);
}

/* Where s (without its NUL) occurs in what sock received, or NULL. */
static const void *sock_find(const test_sock *sock, const char *s) {
  return memmem(sock->out, sock->len, s, strlen(s));
}

static void peer_free(peer *p) {
  free(p->sock.out);
}

static void peer_send_text(peer *p, uint64_t id) {
  Imchat__V1__SendRequest s = IMCHAT__V1__SEND_REQUEST__INIT;
  s.client_msg_id = "cm-p";
  s.to_case = IMCHAT__V1__SEND_REQUEST__TO_USER_ID;
  s.user_id = "bob";
  Imchat__V1__ClientFrame cf = IMCHAT__V1__CLIENT_FRAME__INIT;
  cf.id = id;
  cf.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_SEND;
  cf.send = &s;
  uint8_t buf[256];
  size_t n = imchat__v1__client_frame__pack(&cf, buf);
  n = ws_frame(wbuf, 1, 2, 0, buf, n, 1);
  ck_assert_int_eq(imc_gateway_conn_recv(H.gw, p->c, wbuf, n), 0);
  imc_gateway_flush(H.gw);
}

static void two_devices(imc_gateway_options *o) {
  ck_assert_int_eq(imc_gateway_options_set_max_devices(o, 2), 0);
}

START_TEST(max_devices_429) {
  reset_with(two_devices);
  h_connect("alice", "d1");
  peer p2, p3, p4, pb;
  ck_assert_int_eq(peer_connect(&p2, "alice", "d2"), 101);
  ck_assert_int_eq(peer_connect(&p3, "alice", "d3"), 429);
  ck_assert_ptr_nonnull(
      sock_find(&p3.sock, "{\"error\":{\"code\":\"TOO_MANY_DEVICES\""));
  ck_assert_ptr_nonnull(sock_find(&p3.sock, "Content-Type: application/json"));
  ck_assert_ptr_null(sock_find(&p3.sock, "101"));
  ck_assert_int_eq(p3.sock.closed, 1);
  ck_assert_int_eq(H.m.reg, 2); /* the refused one never registered */
  /* Other users are not concerned. */
  ck_assert_int_eq(peer_connect(&pb, "bob", "d1"), 101);
  /* A connection that goes frees its slot. */
  imc_gateway_conn_closed(H.gw, p2.c);
  ck_assert_int_eq(peer_connect(&p4, "alice", "d3"), 101);
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_WEBSOCKETS), 3);
  peer_free(&p2);
  peer_free(&p3);
  peer_free(&p4);
  peer_free(&pb);
}
END_TEST

static void user_rate(imc_gateway_options *o) {
  with_upstream(o);
  ck_assert_int_eq(imc_gateway_options_set_rate_limit(o, 1000, 1000), 0);
  ck_assert_int_eq(imc_gateway_options_set_user_rate_limit(o, 10, 4), 0);
}

START_TEST(user_rate_shared_by_devices) {
  reset_with(user_rate);
  h_connect("alice", "d1");
  peer p2;
  ck_assert_int_eq(peer_connect(&p2, "alice", "d2"), 101);
  for (uint64_t i = 1; i <= 2; i++) {
    send_text(i, "bob", "x");
    peer_send_text(&p2, i);
  }
  ck_assert_int_eq(H.m.sends, 4);
  /* The burst of 4 is the user's, whichever device sends. */
  peer_send_text(&p2, 3);
  ck_assert_int_eq(H.m.sends, 4);
  Imchat__V1__ServerFrame *f;
  for (int i = 0; i < 2; i++) {
    f = next_sf();
    ck_assert_int_eq(f->body_case, IMCHAT__V1__SERVER_FRAME__BODY_SEND_ACK);
    imchat__v1__server_frame__free_unpacked(f, NULL);
  }
  send_text(3, "bob", "x");
  expect_error(3, IMCHAT__V1__ERROR__CODE__RATE_LIMITED);
  ck_assert_int_eq(H.m.sends, 4);
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_RATE_LIMITED), 2);
  /* 10/s refills: 100 ms later one more, from either device. */
  test_clock_advance(&H.tc, 100);
  peer_send_text(&p2, 4);
  ck_assert_int_eq(H.m.sends, 5);
  send_text(4, "bob", "x");
  expect_error(4, IMCHAT__V1__ERROR__CODE__RATE_LIMITED);
  peer_free(&p2);
}
END_TEST

/* Many devices of one user: joins, pushes and leaves stay per user. */
START_TEST(many_devices_one_user) {
  reset_with(with_upstream);
  enum { N = 16 };
  peer p[N];
  char dev[16];
  for (int i = 0; i < N; i++) {
    snprintf(dev, sizeof(dev), "d%d", i);
    ck_assert_int_eq(peer_connect(&p[i], "carol", dev), 101);
  }
  imc_msg m = test_msg("m-many");
  ck_assert_int_eq(imc_gateway_deliver(H.gw, "carol", "d3", &m), N - 1);
  for (int i = 0; i < N; i += 2)
    imc_gateway_conn_closed(H.gw, p[i].c);
  ck_assert_int_eq(H.m.undelivered, N / 2); /* d3 got none; it stays */
  ck_assert_int_eq(imc_gateway_push_status(H.gw, "carol", "d5", "m-1", "c-1",
                                           IMC_STORED, NULL),
                   1);
  for (int i = 1; i < N; i += 2)
    imc_gateway_conn_closed(H.gw, p[i].c);
  ck_assert_int_eq(imc_gateway_deliver(H.gw, "carol", NULL, &m), 0);
  for (int i = 0; i < N; i++)
    peer_free(&p[i]);
}
END_TEST

/* ------------------------------------------------------------------ */
/* The node's registry lease                                            */
/* ------------------------------------------------------------------ */

/* Renewal costs one keepalive per node and interval, whatever the number
 * of connections. */
START_TEST(lease_one_keepalive_per_node) {
  peer other;
  h_connect("alice", NULL);
  ck_assert_int_eq(peer_connect(&other, "bob", "d1"), 101);
  ck_assert_int_eq(H.m.grants, 1);
  ck_assert_int_eq(H.m.reg, 2);
  ck_assert_uint_eq(H.m.reg_lease, H.m.lease);
  ck_assert_int_eq(H.m.keepalives, 0);
  for (int i = 1; i <= 3; i++) {
    h_advance(30000);
    ck_assert_int_eq(H.m.keepalives, i);
  }
  ck_assert_int_eq(H.m.grants, 1);
  ck_assert_int_eq(H.m.reg, 2);
  ck_assert_int_eq(H.m.max_in_flight, 1);
  peer_free(&other);
}
END_TEST

/* The lease ran out while the node was cut off: a new lease, and every
 * connection registered again on it. */
START_TEST(lease_lost_registers_again) {
  peer other;
  h_connect("alice", NULL);
  ck_assert_int_eq(peer_connect(&other, "bob", "d1"), 101);
  uint64_t first = H.m.lease;
  H.m.keepalive_lost = 1;
  h_advance(30000);
  ck_assert_int_eq(H.m.keepalives, 1);
  ck_assert_int_eq(H.m.grants, 2);
  ck_assert_uint_ne(H.m.lease, first);
  ck_assert_int_eq(H.m.reg, 4);
  ck_assert_uint_eq(H.m.reg_lease, H.m.lease);
  /* Then the new lease is kept alive as usual. */
  h_advance(30000);
  ck_assert_int_eq(H.m.keepalives, 2);
  ck_assert_int_eq(H.m.grants, 2);
  ck_assert_int_eq(H.m.reg, 4);
  /* A connection closed since is not registered again. */
  imc_gateway_conn_closed(H.gw, H.c);
  H.c = NULL;
  ck_assert_int_eq(H.m.unreg, 1);
  H.m.keepalive_lost = 1;
  h_advance(30000);
  ck_assert_int_eq(H.m.grants, 3);
  ck_assert_int_eq(H.m.reg, 5);
  ck_assert_str_eq(H.m.reg_user, "bob");
  ck_assert_uint_eq(H.m.reg_lease, H.m.lease);
  peer_free(&other);
}
END_TEST

/* A registration or an unregistration the registry fails (a burst
 * outran it) is made again at the next interval, until it goes through;
 * the others are not repeated. */
START_TEST(lease_failed_writes_retried) {
  peer other;
  h_connect("alice", NULL);
  H.m.reg_fail = 2;
  ck_assert_int_eq(peer_connect(&other, "bob", "d1"), 101);
  ck_assert_int_eq(H.m.reg, 2);
  /* alice leaves while the registry fails her removal. */
  H.m.unreg_fail = 1;
  imc_gateway_conn_closed(H.gw, H.c);
  H.c = NULL;
  ck_assert_int_eq(H.m.unreg, 1);
  h_advance(30000);
  ck_assert_int_eq(H.m.reg, 3); /* bob again, failing once more */
  ck_assert_str_eq(H.m.reg_user, "bob");
  ck_assert_int_eq(H.m.unreg, 2); /* alice's removal went through */
  ck_assert_int_eq(imc_gateway_pending(H.gw), 0);
  h_advance(30000);
  ck_assert_int_eq(H.m.reg, 4);
  ck_assert_str_eq(H.m.reg_user, "bob");
  ck_assert_int_eq(H.m.unreg, 2);
  h_advance(29000);             /* before bob's idle timeout */
  ck_assert_int_eq(H.m.reg, 4); /* registered: nothing more */
  ck_assert_int_eq(H.m.unreg, 2);
  /* A removal still failing when the gateway goes is freed with it. */
  H.m.unreg_fail = 1;
  imc_gateway_conn_closed(H.gw, other.c);
  ck_assert_int_eq(H.m.unreg, 3);
  peer_free(&other);
}
END_TEST

/* The registry is down at the first upgrade: the grant is tried again
 * at each interval, and then the connection is registered. */
START_TEST(lease_grant_retried) {
  H.m.grant_fail = 1;
  h_connect("alice", NULL);
  ck_assert_int_eq(H.m.grants, 1);
  ck_assert_int_eq(H.m.reg, 0);
  h_advance(30000);
  ck_assert_int_eq(H.m.grants, 2);
  ck_assert_int_eq(H.m.keepalives, 0);
  H.m.grant_fail = 0;
  h_advance(30000);
  ck_assert_int_eq(H.m.grants, 3);
  ck_assert_int_eq(H.m.reg, 1);
  ck_assert_uint_eq(H.m.reg_lease, H.m.lease);
  h_advance(30000);
  ck_assert_int_eq(H.m.keepalives, 1);
  ck_assert_int_eq(H.m.grants, 3);
  /* The connection going unregisters it; the unregistered never did. */
  imc_gateway_conn_closed(H.gw, H.c);
  H.c = NULL;
  ck_assert_int_eq(H.m.unreg, 1);
}
END_TEST

/* The client answers a ping: it stays past the idle timeout. */
static void h_pong(void) {
  size_t n = ws_frame(wbuf, 1, 10, 0, NULL, 0, 1);
  h_recv(wbuf, n);
}

/* A keepalive the registry has not answered yet: no second one, however
 * many intervals pass, and it counts as pending. */
START_TEST(lease_one_call_in_flight) {
  h_connect("alice", NULL);
  H.m.hold = 1;
  h_advance(30000);
  ck_assert_int_eq(H.m.keepalives, 1);
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 1);
  for (int i = 0; i < 3; i++) {
    h_pong();
    h_advance(30000);
  }
  ck_assert_int_eq(H.m.keepalives, 1);
  /* The late answer says the lease is gone: granted and registered
   * again at once. */
  H.m.lease = 0;
  release_keepalive(&H.m, IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(H.m.grants, 2);
  ck_assert_int_eq(H.m.reg, 2);
  ck_assert_uint_eq(H.m.reg_lease, H.m.lease);
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 0);
  /* An unknown outcome keeps the lease; the next interval tries again. */
  H.m.hold = 1;
  h_pong();
  h_advance(30000);
  ck_assert_int_eq(H.m.keepalives, 2);
  release_keepalive(&H.m, IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(H.m.grants, 2);
  h_pong();
  h_advance(30000);
  ck_assert_int_eq(H.m.keepalives, 3);
  ck_assert_int_eq(H.m.grants, 2);
  ck_assert_int_eq(H.m.reg, 2);
  ck_assert_int_eq(H.m.max_in_flight, 1);
  ck_assert_int_eq(H.m.in_flight, 0);
  ck_assert_int_eq(H.m.sock.closed, 0);
}
END_TEST

/* Connections upgraded while the grant is out wait for it; one granted
 * after shutdown began is revoked on arrival. */
START_TEST(lease_grant_in_flight) {
  peer other;
  H.m.hold = 1;
  h_connect("alice", NULL);
  ck_assert_int_eq(peer_connect(&other, "bob", "d1"), 101);
  ck_assert_int_eq(H.m.grants, 1);
  ck_assert_int_eq(H.m.reg, 0);
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 1);
  release_grant(&H.m);
  ck_assert_int_eq(H.m.reg, 2);
  ck_assert_uint_eq(H.m.reg_lease, H.m.lease);
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 0);
  peer_free(&other);
  /* A grant held at shutdown. */
  reset_with(NULL);
  H.m.hold = 1;
  h_connect("carol", NULL);
  imc_gateway_shutdown(H.gw);
  ck_assert_int_eq(H.m.revokes, 0);
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 1);
  release_grant(&H.m);
  ck_assert_int_eq(H.m.revokes, 1);
  ck_assert_uint_eq(H.m.lease, 0);
  ck_assert_int_eq(H.m.reg, 0);
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 0);
  /* No keepalive after shutdown. */
  h_advance(30000);
  ck_assert_int_eq(H.m.keepalives, 0);
}
END_TEST

/* Without connections and without a lease the timer stops; the next
 * upgrade starts it again. */
START_TEST(lease_timer_idle) {
  H.m.grant_fail = 1;
  h_connect("alice", NULL);
  imc_gateway_conn_closed(H.gw, H.c);
  ck_assert_int_eq(imc_gateway_next_timeout_ms(H.gw), 30000);
  h_advance(30000);
  ck_assert_int_eq(H.m.grants, 1); /* nobody to register: no grant */
  ck_assert_int_eq(imc_gateway_next_timeout_ms(H.gw), -1);
  H.m.grant_fail = 0;
  ck_assert_int_eq(imc_gateway_conn_new(H.gw, &H.c, &H.m.sock), 0);
  h_connect("alice", NULL);
  ck_assert_int_eq(H.m.grants, 2);
  ck_assert_int_eq(H.m.reg, 1);
  h_advance(30000);
  ck_assert_int_eq(H.m.keepalives, 1);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Allocation failures                                                  */
/* ------------------------------------------------------------------ */

/* ------------------------------------------------------------------ */
/* HTTP conformance (RFC 9110, RFC 9112) and the upgrade's headers      */
/* ------------------------------------------------------------------ */

/* The upgrade request of upgrade_req with extra header lines (each
 * ending in CRLF) after Host. */
static const char *upgrade_with(char *buf, size_t cap, const char *target,
                                const char *extra) {
  snprintf(buf, cap,
           "GET %s HTTP/1.1\r\nHost: localhost:8082\r\n%sUpgrade: websocket\r\n"
           "Connection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n"
           "Authorization: Bearer %s\r\n\r\n",
           target, extra, token_for("alice", "", 600));
  return buf;
}

/* RFC 9112 3.2: no Host, two Host lines, or an invalid Host is a 400. */
START_TEST(host_required) {
  static const char *const reqs[] = {
      "GET /healthz HTTP/1.1\r\n\r\n",
      "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
      "GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n",
      "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
      "Sec-WebSocket-Version: 13\r\n\r\n"};
  expect_http_error(reqs[_i], 400, NULL);
  ck_assert_ptr_nonnull(sock_find(&H.m.sock, "\"BAD_REQUEST\""));
}
END_TEST

/* RFC 9112 3.2: HTTP/1.0 requests may leave Host out. */
START_TEST(host_optional_http10) {
  char head[1024];
  ck_assert_int_eq(h_recv_str("GET /healthz HTTP/1.0\r\n\r\n"), 0);
  ck_assert_int_eq(read_http(head, sizeof(head), NULL), 200);
}
END_TEST

/* RFC 9112 3.2.2: "A server MUST accept the absolute-form in requests";
 * the upgrade works with it as with origin-form. */
START_TEST(absolute_form_upgrade) {
  char req[2048], head[1024];
  const char *q = _i == 0 ? "http://localhost:8082/ws?device=tab"
                          : "HTTP://LOCALHOST:8082/ws?device=tab";
  ck_assert_int_eq(h_recv_str(upgrade_with(req, sizeof(req), q, "")), 0);
  ck_assert_int_eq(read_http(head, sizeof(head), NULL), 101);
  Imchat__V1__ServerFrame *f = next_sf();
  ck_assert_ptr_nonnull(f);
  ck_assert_str_eq(f->welcome->device_id, "tab");
  imchat__v1__server_frame__free_unpacked(f, NULL);
}
END_TEST

/* RFC 9110 4.2.4: userinfo in an http URI is an error. */
START_TEST(absolute_form_userinfo) {
  char req[2048];
  expect_http_error(
      upgrade_with(req, sizeof(req), "http://u:p@localhost:8082/ws", ""), 400,
      NULL);
}
END_TEST

/* RFC 9112 6.3 (and RFC 9110 8.6): Content-Length values that differ,
 * in two lines or a list, are a 400; so are equal repeats, which buy
 * nothing and open the door to smuggling. The handler never sees it. */
START_TEST(content_length_conflict) {
  static const char *const reqs[] = {
      "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
      "Content-Length: 2\r\n\r\nab",
      "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 1\r\n\r\nab",
      "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
      "Content-Length: 2\r\n\r\nab"};
  reset_with(with_echo);
  expect_http_error(reqs[_i], 400, NULL);
  ck_assert_ptr_null(sock_find(&H.m.sock, "|")); /* not the echo */
}
END_TEST

/* An upgrade has no body: bytes after its head are WebSocket frames. */
START_TEST(upgrade_with_body) {
  char req[2048];
  expect_http_error(
      upgrade_with(req, sizeof(req), "/ws", "Content-Length: 3\r\n"), 400,
      NULL);
}
END_TEST

/* RFC 9110 9.3.2: HEAD is GET without content, with the same header
 * fields, Content-Length included. */
START_TEST(head_healthz) {
  char head[1024];
  char *body;
  ck_assert_int_eq(h_recv_str("HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
  ck_assert_int_eq(read_http(head, sizeof(head), &body), 200);
  ck_assert_ptr_nonnull(strstr(head, "Content-Length: 16\r\n"));
  ck_assert_ptr_nonnull(strstr(head, "Content-Type: application/json\r\n"));
  ck_assert_uint_eq(H.m.sock.pos, H.m.sock.len); /* nothing after the head */
  ck_assert_int_eq(H.m.sock.closed, 1);
}
END_TEST

/* The host's handler sees HEAD as GET; its body is dropped. */
START_TEST(head_handler) {
  reset_with(with_echo);
  char head[1024];
  ck_assert_int_eq(h_recv_str("HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
  ck_assert_int_eq(read_http(head, sizeof(head), NULL), 200);
  ck_assert_ptr_nonnull(strstr(head, "Content-Length: 3\r\n")); /* "0||" */
  ck_assert_ptr_nonnull(strstr(head, "Cache-Control: max-age=60\r\n"));
  ck_assert_uint_eq(H.m.sock.pos, H.m.sock.len);
}
END_TEST

/* HEAD cannot upgrade (RFC 6455 4.1: the handshake is a GET): 405 with
 * Allow, and the error's body left out like any HEAD answer's. */
START_TEST(head_ws) {
  char head[1024];
  ck_assert_int_eq(h_recv_str("HEAD /ws HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
  ck_assert_int_eq(read_http(head, sizeof(head), NULL), 405);
  ck_assert_ptr_nonnull(strstr(head, "Allow: GET\r\n"));
  ck_assert_ptr_null(strstr(head, "Content-Length: 0\r\n"));
  ck_assert_uint_eq(H.m.sock.pos, H.m.sock.len);
}
END_TEST

/* RFC 9110 11.6.1: a 401 carries WWW-Authenticate; RFC 6750 3.1: with
 * error="invalid_token" for a bad token, without an error code when the
 * request had no credentials at all. */
START_TEST(challenge_401) {
  char head[1024];
  ck_assert_int_eq(
      h_recv_str("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n"),
      0);
  ck_assert_int_eq(read_http(head, sizeof(head), NULL), 401);
  ck_assert_ptr_nonnull(strstr(head, "\r\nWWW-Authenticate: Bearer\r\n"));
  reset_with(NULL);
  char req[2048];
  ck_assert_int_eq(h_recv_str(upgrade_req(req, sizeof(req), "a.b.c")), 0);
  ck_assert_int_eq(read_http(head, sizeof(head), NULL), 401);
  ck_assert_ptr_nonnull(
      strstr(head, "\r\nWWW-Authenticate: Bearer error=\"invalid_token\"\r\n"));
}
END_TEST

/* A handler's 401 without a challenge gets the gateway's. */
static int unauthorized_handle(void *ud, const imc_http_request *req,
                               imc_http_reply *reply) {
  (void)ud;
  (void)req;
  imc_http_reply_send(reply, 401, "application/json", NULL,
                      (const uint8_t *)"{}", 2);
  return 1;
}

static void with_unauthorized(imc_gateway_options *o) {
  static const imc_http_handler_vtbl vt = {sizeof(imc_http_handler_vtbl),
                                           unauthorized_handle};
  ck_assert_int_eq(imc_gateway_options_set_http_handler(o, &vt, NULL), 0);
}

START_TEST(challenge_401_handler) {
  reset_with(with_unauthorized);
  char head[1024];
  ck_assert_int_eq(h_recv_str("GET /offline HTTP/1.1\r\nHost: x\r\n"
                              "Authorization: Bearer nope\r\n\r\n"),
                   0);
  ck_assert_int_eq(read_http(head, sizeof(head), NULL), 401);
  ck_assert_ptr_nonnull(
      strstr(head, "\r\nWWW-Authenticate: Bearer error=\"invalid_token\"\r\n"));
  reset_with(with_unauthorized);
  ck_assert_int_eq(h_recv_str("GET /offline HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
  ck_assert_int_eq(read_http(head, sizeof(head), NULL), 401);
  ck_assert_ptr_nonnull(strstr(head, "\r\nWWW-Authenticate: Bearer\r\n"));
}
END_TEST

/* An HTTP-only gateway needs no keys, answers /ws with 404 and still
 * serves /healthz and its handler. */
static void http_only(imc_gateway_options *o) {
  ck_assert_int_eq(imc_gateway_options_set_http_only(o, 1), 0);
}

static void http_only_handler(imc_gateway_options *o) {
  http_only(o);
  with_unauthorized(o);
}

START_TEST(http_only_serves_no_websocket) {
  imc_gateway_options *o;
  imc_gateway *gw = NULL;
  ck_assert_int_eq(imc_gateway_options_new(&o, &H.tm.mem), 0);
  ck_assert_int_eq(
      imc_gateway_options_set_transport(o, &test_sock_transport, NULL), 0);
  ck_assert_int_eq(imc_gateway_new(&gw, o, &H.tm.mem),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_gateway_options_set_http_only(o, 1), 0);
  ck_assert_int_eq(imc_gateway_new(&gw, o, &H.tm.mem), 0);
  imc_gateway_del(gw);
  imc_gateway_options_del(o);
  ck_assert_int_eq(imc_gateway_options_set_http_only(NULL, 1),
                   IMC_ERR_INVALID_ARGUMENT);

  no_secret = 1;
  reset_with(http_only);
  no_secret = 0;
  char req[2048], head[1024];
  ck_assert_int_eq(
      h_recv_str(upgrade_req(req, sizeof(req), token_for("ann", NULL, 600))),
      0);
  ck_assert_int_eq(read_http(head, sizeof(head), NULL), 404);
  ck_assert_str_eq(H.m.reg_user, "");
  reset_with(http_only);
  ck_assert_int_eq(h_recv_str("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
  ck_assert_int_eq(read_http(head, sizeof(head), NULL), 200);
  reset_with(http_only_handler);
  ck_assert_int_eq(h_recv_str("GET /offline HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
  ck_assert_int_eq(read_http(head, sizeof(head), NULL), 401);
}
END_TEST

/* RFC 6455 4.1/4.2.1: the key is the base64 of 16 bytes, sent once. */
START_TEST(ws_key_invalid) {
  static const char *const keys[] = {
      "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAAA\r\n",  /* 18 bytes */
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR==\r\n",  /* padding bits */
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j*Q==\r\n",  /* alphabet */
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"}; /* a second one */
  char req[2048], good_req[2048];
  upgrade_with(good_req, sizeof(good_req), "/ws", "");
  /* The bad key in place of (the last case: beside) the good one. */
  const char *good = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
  char *at = strstr(good_req, good);
  ck_assert_ptr_nonnull(at);
  snprintf(req, sizeof(req), "%.*s%s%s", (int)(at - good_req), good_req,
           keys[_i], _i == 3 ? at : at + strlen(good));
  expect_http_error(req, 400, NULL);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Admission: Origin allow-list, connection limits                      */
/* ------------------------------------------------------------------ */

static void chat_origin(imc_gateway_options *o) {
  ck_assert_int_eq(
      imc_gateway_options_add_allowed_origin(o, "https://Chat.Example.com:443"),
      0);
  ck_assert_int_eq(
      imc_gateway_options_add_allowed_origin(o, "http://127.0.0.1:9000"), 0);
}

/* Upgrades H.c with the Origin line extra; returns the status. */
static int upgrade_origin(const char *extra) {
  char req[2048], head[1024];
  ck_assert_int_eq(h_recv_str(upgrade_with(req, sizeof(req), "/ws", extra)), 0);
  return read_http(head, sizeof(head), NULL);
}

/* RFC 6455 10.2 (origin considerations): without an allow-list every
 * Origin may upgrade. */
START_TEST(origin_no_list) {
  ck_assert_int_eq(upgrade_origin("Origin: https://evil.example\r\n"), 101);
}
END_TEST

typedef struct origin_case {
  const char *extra;
  int status;
} origin_case;

static const origin_case origin_cases[] = {
    {"Origin: https://chat.example.com\r\n", 101},
    {"Origin: HTTPS://CHAT.example.com:443\r\n", 101},
    {"Origin: http://127.0.0.1:9000\r\n", 101},
    {"", 101}, /* not a browser: nothing to hijack */
    /* The server's own pages: the request's Host (localhost:8082). */
    {"Origin: http://localhost:8082\r\n", 101},
    {"Origin: https://evil.example\r\n", 403},
    {"Origin: http://chat.example.com\r\n", 403}, /* another scheme */
    {"Origin: https://chat.example.com:8443\r\n", 403},
    {"Origin: http://localhost:8083\r\n", 403},
    {"Origin: null\r\n", 403},
    {"Origin: https://chat.example.com/\r\n", 403},
    {"Origin: https://chat.example.com\r\nOrigin: https://evil.example\r\n",
     403},
};

/* RFC 6455 10.2: with an allow-list, a browser's upgrade from another
 * origin gets 403 before the token is checked. */
START_TEST(origin_list) {
  const origin_case *oc = &origin_cases[_i];
  reset_with(chat_origin);
  ck_assert_int_eq(upgrade_origin(oc->extra), oc->status);
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_REFUSED_ORIGIN),
                    oc->status == 403);
  if (oc->status == 403) {
    ck_assert_ptr_nonnull(sock_find(&H.m.sock, "\"FORBIDDEN\""));
    ck_assert_int_eq(H.m.reg, 0);
  }
}
END_TEST

START_TEST(origin_option_invalid) {
  static const char *const bad[] = {
      "null",        "chat.example.com", "https://a/", "https://a/b",
      "https://u@a", "https://a:99999",  "",           "*"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    ck_assert_msg(imc_gateway_options_add_allowed_origin(H.opt, bad[i]) ==
                      IMC_ERR_INVALID_ARGUMENT,
                  "%s", bad[i]);
  ck_assert_int_eq(imc_gateway_options_add_allowed_origin(H.opt, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
}
END_TEST

static void two_conns(imc_gateway_options *o) {
  ck_assert_int_eq(imc_gateway_options_set_max_connections(o, 2), 0);
}

/* Opens p from address addr (NULL: none given). */
static void peer_open(peer *p, const char *addr) {
  memset(p, 0, sizeof(*p));
  ck_assert_int_eq(imc_gateway_conn_new(H.gw, &p->c, &p->sock), 0);
  if (addr)
    ck_assert_int_eq(imc_gateway_conn_set_peer(H.gw, p->c, addr), 0);
}

/* Upgrades the opened p as user; returns the status. */
static int peer_upgrade(peer *p, const char *user) {
  char req[2048];
  upgrade_req(req, sizeof(req), token_for(user, "", 3600));
  imc_gateway_conn_recv(H.gw, p->c, (const uint8_t *)req, strlen(req));
  imc_gateway_flush(H.gw);
  return sock_status(&p->sock);
}

/* The limit counts upgraded connections: the next upgrade gets 503 with
 * Retry-After (RFC 9110 15.6.4, 10.2.3) before the token is checked;
 * plain HTTP goes on; a closed connection makes room. */
START_TEST(max_connections_503) {
  reset_with(two_conns);
  h_connect("alice", "d1");
  peer p2, p3, p4, ph;
  ck_assert_int_eq(peer_connect(&p2, "bob", NULL), 101);
  ck_assert_int_eq(peer_connect(&p3, "carol", NULL), 503);
  ck_assert_ptr_nonnull(sock_find(&p3.sock, "\r\nRetry-After: 5\r\n"));
  ck_assert_ptr_nonnull(sock_find(&p3.sock, "\"UNAVAILABLE\""));
  ck_assert_int_eq(p3.sock.closed, 1);
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_REFUSED_CONNS), 1);
  ck_assert_int_eq(H.m.reg, 2);
  /* Refused before the token: an invalid one gets 503 too. */
  memset(&p4, 0, sizeof(p4));
  ck_assert_int_eq(imc_gateway_conn_new(H.gw, &p4.c, &p4.sock), 0);
  char req[2048];
  upgrade_req(req, sizeof(req), "a.b.c");
  imc_gateway_conn_recv(H.gw, p4.c, (const uint8_t *)req, strlen(req));
  imc_gateway_flush(H.gw);
  ck_assert_ptr_nonnull(sock_find(&p4.sock, "HTTP/1.1 503 "));
  peer_free(&p4);
  /* Plain HTTP is not limited. */
  memset(&ph, 0, sizeof(ph));
  ck_assert_int_eq(imc_gateway_conn_new(H.gw, &ph.c, &ph.sock), 0);
  const char *hz = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
  imc_gateway_conn_recv(H.gw, ph.c, (const uint8_t *)hz, strlen(hz));
  imc_gateway_flush(H.gw);
  ck_assert_ptr_nonnull(sock_find(&ph.sock, "HTTP/1.1 200 "));
  peer_free(&ph);
  /* bob leaves: room for carol. */
  imc_gateway_conn_closed(H.gw, p2.c);
  peer_free(&p3);
  ck_assert_int_eq(peer_connect(&p3, "carol", NULL), 101);
  peer_free(&p2);
  peer_free(&p3);
}
END_TEST

static void one_per_ip(imc_gateway_options *o) {
  ck_assert_int_eq(imc_gateway_options_set_max_connections_per_ip(o, 1), 0);
}

/* Per peer address (imc_gateway_conn_set_peer): one upgraded connection
 * each here; other addresses, and connections without one, are not
 * concerned; the count follows connections that go. */
START_TEST(max_connections_per_ip_503) {
  reset_with(one_per_ip);
  ck_assert_int_eq(imc_gateway_conn_set_peer(H.gw, H.c, "10.0.0.1"), 0);
  h_connect("alice", "d1");
  peer a2, b1, b2, n1;
  peer_open(&a2, "10.0.0.1");
  ck_assert_int_eq(peer_upgrade(&a2, "bob"), 503);
  ck_assert_ptr_nonnull(sock_find(&a2.sock, "\r\nRetry-After: 5\r\n"));
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_REFUSED_PEER_CONNS),
                    1);
  peer_open(&b1, "10.0.0.2");
  ck_assert_int_eq(peer_upgrade(&b1, "bob"), 101);
  peer_open(&n1, NULL);
  ck_assert_int_eq(peer_upgrade(&n1, "carol"), 101);
  /* A connection that is not upgraded does not count. */
  peer_open(&b2, "10.0.0.2");
  imc_gateway_conn_closed(H.gw, b2.c);
  peer_free(&b2);
  /* 10.0.0.2's connection goes: the next one from there may upgrade. */
  imc_gateway_conn_closed(H.gw, b1.c);
  peer_free(&b1);
  peer_open(&b1, "10.0.0.2");
  ck_assert_int_eq(peer_upgrade(&b1, "bob"), 101);
  peer_free(&a2);
  peer_free(&b1);
  peer_free(&n1);
}
END_TEST

START_TEST(set_peer_arguments) {
  char longaddr[80];
  memset(longaddr, '1', sizeof(longaddr) - 1);
  longaddr[sizeof(longaddr) - 1] = '\0';
  ck_assert_int_eq(imc_gateway_conn_set_peer(NULL, H.c, "a"),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_gateway_conn_set_peer(H.gw, NULL, "a"),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_gateway_conn_set_peer(H.gw, H.c, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_gateway_conn_set_peer(H.gw, H.c, ""),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_gateway_conn_set_peer(H.gw, H.c, longaddr),
                   IMC_ERR_INVALID_ARGUMENT);
  /* Set twice: the second replaces the first. */
  ck_assert_int_eq(imc_gateway_conn_set_peer(H.gw, H.c, "::1"), 0);
  ck_assert_int_eq(imc_gateway_conn_set_peer(H.gw, H.c, "::1"), 0);
  ck_assert_int_eq(imc_gateway_conn_set_peer(H.gw, H.c, "10.1.1.1"), 0);
  h_connect("alice", NULL);
  ck_assert_int_eq(imc_gateway_conn_set_peer(H.gw, H.c, "10.1.1.2"),
                   IMC_ERR_INVALID_ARGUMENT);
}
END_TEST

/* One pass over the public API; returns 0 when everything succeeded, or
 * IMC_ERR_NOMEM as soon as an allocation failure surfaces. */
static int alloc_pass(test_mem *tm, mock *m, test_clock *tc) {
  imc_gateway_options *o = NULL;
  imc_gateway *gw = NULL;
  imc_conn *c = NULL;
  int rv = imc_gateway_options_new(&o, &tm->mem);
  if (rv == 0)
    rv = imc_gateway_options_set_transport(o, &test_sock_transport, NULL);
  if (rv == 0)
    rv = imc_gateway_options_set_jwt_secret(o, (const uint8_t *)SECRET,
                                            strlen(SECRET));
  if (rv == 0)
    rv = imc_gateway_options_set_node_id(o, "gw-1");
  if (rv == 0)
    rv = imc_gateway_options_set_jwt_public_key(o, ec_pem, strlen(ec_pem));
  if (rv == 0)
    rv = imc_gateway_options_set_upstream(o, &upstream, m);
  if (rv == 0)
    rv = imc_gateway_options_set_registry(o, &registry, m);
  if (rv == 0)
    rv = imc_gateway_options_set_clock(o, &tc->clock);
  if (rv == 0) /* every message compressed that gets smaller */
    rv = imc_gateway_options_set_deflate(o, 1, 0);
  if (rv == 0)
    rv = imc_gateway_new(&gw, o, &tm->mem);
  if (rv == 0)
    rv = imc_gateway_conn_new(gw, &c, &m->sock);
  char req[2048];
  if (rv == 0) {
    upgrade_req_ext(req, sizeof(req), "alice", "phone",
                    "Sec-WebSocket-Extensions: permessage-deflate\r\n");
    size_t half = strlen(req) / 2;
    rv = imc_gateway_conn_recv(gw, c, (const uint8_t *)req, half);
    if (rv == 0)
      rv = imc_gateway_conn_recv(gw, c, (const uint8_t *)req + half,
                                 strlen(req) - half);
  }
  if (rv == 0) {
    uint8_t pb[64];
    Imchat__V1__Ping ping = IMCHAT__V1__PING__INIT;
    Imchat__V1__ClientFrame cf = IMCHAT__V1__CLIENT_FRAME__INIT;
    cf.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_PING;
    cf.ping = &ping;
    size_t n = imchat__v1__client_frame__pack(&cf, pb);
    size_t fl = ws_frame(wbuf, 1, 2, 0, pb, n, 1);
    rv = imc_gateway_conn_recv(gw, c, wbuf, fl);
    if (rv == 0) { /* and compressed */
      uint8_t z[128];
      n = zdeflate(pb, n, z, sizeof(z));
      fl = ws_frame(wbuf, 1, 2, 4, z, n, 1);
      rv = imc_gateway_conn_recv(gw, c, wbuf, fl);
    }
  }
  if (rv == 0) {
    uint8_t pb[64];
    Imchat__V1__SendRequest sr = IMCHAT__V1__SEND_REQUEST__INIT;
    sr.client_msg_id = "c1";
    sr.to_case = IMCHAT__V1__SEND_REQUEST__TO_USER_ID;
    sr.user_id = "bob";
    Imchat__V1__ClientFrame cf = IMCHAT__V1__CLIENT_FRAME__INIT;
    cf.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_SEND;
    cf.send = &sr;
    size_t n = imchat__v1__client_frame__pack(&cf, pb);
    size_t fl = ws_frame(wbuf, 1, 2, 0, pb, n, 1);
    rv = imc_gateway_conn_recv(gw, c, wbuf, fl);
  }
  if (rv == 0) {
    imc_msg msg = test_msg("m-1");
    int d = imc_gateway_deliver(gw, "alice", NULL, &msg);
    rv = d < 0 ? d : 0;
  }
  if (rv == 0)
    rv = imc_gateway_flush(gw);
  if (rv == 0) {
    tc->now += 31000;
    rv = imc_gateway_on_timeout(gw);
  }
  if (gw)
    imc_gateway_del(gw);
  imc_gateway_options_del(o);
  return rv;
}

START_TEST(alloc_failures) {
  int failures = 0;
  for (long i = 0;; i++) {
    test_mem tm;
    mock m;
    test_clock tc;
    memset(&m, 0, sizeof(m));
    test_mem_init(&tm);
    test_clock_init(&tc, T0);
    tm.fail_at = i;
    int rv = alloc_pass(&tm, &m, &tc);
    free(m.sock.out);
    ck_assert_msg(tm.live == 0, "leak with allocation %ld failing", i);
    ck_assert_msg(rv == 0 || rv == IMC_ERR_NOMEM,
                  "allocation %ld failing gave %d", i, rv);
    if (tm.count <= i)
      break; /* the pass made fewer allocations: all were covered */
    failures += rv == IMC_ERR_NOMEM;
  }
  ck_assert_int_gt(failures, 10);
}
END_TEST

/* ------------------------------------------------------------------ */

static void keys_setup(void) {
  rsa_key = testjwt_rsa();
  ec_key = testjwt_p256();
  rsa_pem = testjwt_pub_pem(rsa_key);
  ec_pem = testjwt_pub_pem(ec_key);
}

/* ------------------------------------------------------------------ */
/* Backpressure and the order of answers                                */
/* ------------------------------------------------------------------ */

/* A SendRequest frame with id as a client puts it on the wire. */
static size_t send_frame_bytes(uint8_t *out, uint64_t id) {
  char cm[32];
  snprintf(cm, sizeof(cm), "cm-%llu", (unsigned long long)id);
  Imchat__V1__SendRequest s = IMCHAT__V1__SEND_REQUEST__INIT;
  s.client_msg_id = cm;
  s.to_case = IMCHAT__V1__SEND_REQUEST__TO_USER_ID;
  s.user_id = "bob";
  s.body.data = (uint8_t *)"x";
  s.body.len = 1;
  Imchat__V1__ClientFrame cf = IMCHAT__V1__CLIENT_FRAME__INIT;
  cf.id = id;
  cf.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_SEND;
  cf.send = &s;
  uint8_t pb[256];
  size_t n = imchat__v1__client_frame__pack(&cf, pb);
  return ws_frame(out, 1, 2, 0, pb, n, 1);
}

/* Completes the i-th send the upstream holds: SendAck with seq i + 1, or
 * an error. */
static void complete_send(int i, int status) {
  ck_assert_int_lt(i, H.m.n_held);
  imc_send_result r = {"cm", "m", "p:alice:bob", (uint64_t)i + 1, T0};
  H.m.held_cb[i](H.m.held_cb_ud[i], status, status ? NULL : &r,
                 status ? "nope" : NULL);
  imc_gateway_flush(H.gw);
}

/* The next frame must answer id: a SendAck, or an Error if is_error. */
static void expect_answer(uint64_t id, int is_error) {
  Imchat__V1__ServerFrame *f = next_sf();
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(f->id, id);
  ck_assert_int_eq(f->body_case, is_error
                                     ? IMCHAT__V1__SERVER_FRAME__BODY_ERROR
                                     : IMCHAT__V1__SERVER_FRAME__BODY_SEND_ACK);
  imchat__v1__server_frame__free_unpacked(f, NULL);
}

START_TEST(answers_in_request_order) {
  reset_with(with_upstream);
  H.m.async_send = 1;
  h_connect("alice", NULL);
  uint8_t buf[256];
  for (uint64_t id = 1; id <= 3; id++)
    ck_assert_int_eq(h_recv(buf, send_frame_bytes(buf, id)), 0);
  ck_assert_int_eq(H.m.n_held, 3);
  /* The upstream completes out of order: nothing overtakes send 1. */
  complete_send(2, 0);
  complete_send(1, IMC_ERR_UNAVAILABLE);
  ck_assert_ptr_null(next_sf());
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 3);
  complete_send(0, 0);
  expect_answer(1, 0);
  expect_answer(2, 1);
  expect_answer(3, 0);
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 0);
  /* A refusal the gateway answers itself waits its turn too. */
  ck_assert_int_eq(h_recv(buf, send_frame_bytes(buf, 4)), 0);
  Imchat__V1__SendRequest s = IMCHAT__V1__SEND_REQUEST__INIT;
  s.client_msg_id = "cm-5";
  s.to_case = IMCHAT__V1__SEND_REQUEST__TO_USER_ID;
  s.user_id = "bob";
  static uint8_t big[70 * 1024];
  s.body.data = big;
  s.body.len = 64 * 1024 + 1;
  Imchat__V1__ClientFrame cf = IMCHAT__V1__CLIENT_FRAME__INIT;
  cf.id = 5;
  cf.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_SEND;
  cf.send = &s;
  send_cf(&cf);
  ck_assert_ptr_null(next_sf());
  complete_send(3, 0);
  expect_answer(4, 0);
  expect_answer(5, 1);
}
END_TEST

/* A timed-out send answers in its place; the later ones follow. */
START_TEST(answer_order_after_send_timeout) {
  reset_with(with_upstream);
  H.m.async_send = 1;
  h_connect("alice", NULL);
  uint8_t buf[256];
  ck_assert_int_eq(h_recv(buf, send_frame_bytes(buf, 1)), 0);
  h_advance(1000);
  ck_assert_int_eq(h_recv(buf, send_frame_bytes(buf, 2)), 0);
  complete_send(1, 0);
  ck_assert_ptr_null(next_sf());
  h_advance(14000); /* send 1 times out */
  expect_answer(1, 1);
  expect_answer(2, 0);
  complete_send(0, 0); /* late: ignored */
  ck_assert_ptr_null(next_sf());
  ck_assert_uint_eq(imc_gateway_pending(H.gw), 0);
}
END_TEST

static void small_limits(imc_gateway_options *o) {
  with_upstream(o);
  ck_assert_int_eq(imc_gateway_options_set_rate_limit(o, 1000000, 1000000), 0);
  ck_assert_int_eq(imc_gateway_options_set_user_rate_limit(o, 1000000, 1000000),
                   0);
  ck_assert_int_eq(imc_gateway_options_set_max_sends_in_flight(o, 4, 1000), 0);
}

START_TEST(paused_at_conn_limit) {
  reset_with(small_limits);
  H.m.async_send = 1;
  h_connect("alice", NULL);
  ck_assert_int_eq(imc_gateway_conn_want_read(H.gw, H.c), 1);
  /* Ten sends in one read. */
  static uint8_t buf[4096];
  size_t n = 0;
  for (uint64_t id = 1; id <= 10; id++)
    n += send_frame_bytes(buf + n, id);
  ck_assert_int_eq(h_recv(buf, n), 0);
  ck_assert_int_eq(H.m.n_held, 4);
  ck_assert_int_eq(imc_gateway_conn_want_read(H.gw, H.c), 0);
  ck_assert_int_eq(H.m.sock.paused, 1);
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_PAUSED), 1);
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_SENDS_IN_FLIGHT), 4);
  /* One answer brings it to the resume mark (3 of 4): it reads on at the
   * next turn, from the input it kept, and pauses again at 4. */
  complete_send(0, 0);
  expect_answer(1, 0);
  ck_assert_int_eq(imc_gateway_next_timeout_ms(H.gw), 0);
  h_advance(0);
  ck_assert_int_eq(H.m.n_held, 5);
  ck_assert_int_eq(imc_gateway_conn_want_read(H.gw, H.c), 0);
  for (int i = 1; i < 10; i++) {
    complete_send(i, 0);
    expect_answer((uint64_t)i + 1, 0);
    h_advance(0);
  }
  ck_assert_int_eq(H.m.n_held, 10);
  ck_assert_int_eq(imc_gateway_conn_want_read(H.gw, H.c), 1);
  ck_assert_int_eq(H.m.sock.paused, 0);
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_PAUSED), 0);
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_SENDS_IN_FLIGHT), 0);
  ck_assert_int_ge(H.m.sock.pauses, 2);
}
END_TEST

static void gateway_limit(imc_gateway_options *o) {
  small_limits(o);
  ck_assert_int_eq(imc_gateway_options_set_max_sends_in_flight(o, 64, 2), 0);
  ck_assert_int_eq(imc_gateway_options_set_admit_timeout_ms(o, 1000), 0);
}

START_TEST(gateway_limit_waits_then_busy) {
  reset_with(gateway_limit);
  H.m.async_send = 1;
  h_connect("alice", NULL);
  peer p;
  ck_assert_int_eq(peer_connect(&p, "carol", NULL), 101);
  uint8_t buf[256];
  for (uint64_t id = 1; id <= 3; id++)
    ck_assert_int_eq(h_recv(buf, send_frame_bytes(buf, id)), 0);
  /* Send 3 finds the gateway full: it waits, its connection paused. */
  ck_assert_int_eq(H.m.n_held, 2);
  ck_assert_int_eq(imc_gateway_conn_want_read(H.gw, H.c), 0);
  /* Another connection is served meanwhile: pings need no admission. */
  size_t before = p.sock.len;
  Imchat__V1__Ping ping = IMCHAT__V1__PING__INIT;
  Imchat__V1__ClientFrame cf = IMCHAT__V1__CLIENT_FRAME__INIT;
  cf.id = 77;
  cf.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_PING;
  cf.ping = &ping;
  uint8_t pb[64];
  size_t n =
      ws_frame(wbuf, 1, 2, 0, pb, imchat__v1__client_frame__pack(&cf, pb), 1);
  ck_assert_int_eq(imc_gateway_conn_recv(H.gw, p.c, wbuf, n), 0);
  imc_gateway_flush(H.gw);
  ck_assert_uint_gt(p.sock.len, before);
  ck_assert_int_eq(imc_gateway_conn_want_read(H.gw, p.c), 1);
  /* Room comes back: the waiting send is admitted at the next turn. */
  complete_send(0, 0);
  expect_answer(1, 0);
  ck_assert_int_eq(imc_gateway_next_timeout_ms(H.gw), 0);
  h_advance(0);
  ck_assert_int_eq(H.m.n_held, 3);
  ck_assert_int_eq(imc_gateway_conn_want_read(H.gw, H.c), 1);
  /* Full again: send 4 waits past the admission timeout and is refused
   * with a retry hint, after the answers of the sends before it. */
  ck_assert_int_eq(h_recv(buf, send_frame_bytes(buf, 4)), 0);
  ck_assert_int_eq(H.m.n_held, 3);
  h_advance(999);
  ck_assert_ptr_null(next_sf());
  h_advance(1);
  ck_assert_ptr_null(next_sf()); /* 2 and 3 are still with the upstream */
  ck_assert_uint_eq(imc_gateway_stat_get(H.gw, IMC_GW_STAT_BUSY), 1);
  complete_send(1, 0);
  complete_send(2, 0);
  expect_answer(2, 0);
  expect_answer(3, 0);
  Imchat__V1__ServerFrame *f = next_sf();
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(f->id, 4);
  ck_assert_int_eq(f->body_case, IMCHAT__V1__SERVER_FRAME__BODY_ERROR);
  ck_assert_int_eq(f->error->code, IMCHAT__V1__ERROR__CODE__UNAVAILABLE);
  ck_assert_ptr_nonnull(strstr(f->error->message, "retry after"));
  imchat__v1__server_frame__free_unpacked(f, NULL);
  h_advance(0);
  ck_assert_int_eq(imc_gateway_conn_want_read(H.gw, H.c), 1);
  peer_free(&p);
}
END_TEST

/* A client floods sends: a host that stops reading when told keeps the
 * gateway's memory flat; one that reads on gets the connection closed
 * before memory grows past a bound. */
START_TEST(flood_memory_bounded) {
  reset_with(small_limits);
  H.m.async_send = 1;
  h_connect("alice", NULL);
  static uint8_t flood[400 * 1024];
  size_t total = 0;
  uint64_t id = 1;
  while (total + 64 < sizeof(flood))
    total += send_frame_bytes(flood + total, id++);
  long base = H.tm.live;
  size_t fed = 0;
  while (fed < total && imc_gateway_conn_want_read(H.gw, H.c)) {
    size_t n = total - fed < 4096 ? total - fed : 4096;
    ck_assert_int_eq(h_recv(flood + fed, n), 0);
    fed += n;
  }
  ck_assert_uint_lt(fed, total);
  ck_assert_int_eq(H.m.n_held, 4);
  ck_assert_int_le(H.tm.live - base, 16);
  /* Reading on regardless: the kept input is bounded, then the
   * connection is closed for having too many requests in flight. */
  long peak = 0;
  while (fed < total && H.m.sock.closed == 0 &&
         !imc_gateway_conn_want_read(H.gw, H.c)) {
    size_t n = total - fed < 4096 ? total - fed : 4096;
    if (h_recv(flood + fed, n) != 0)
      break;
    fed += n;
    if (H.tm.live - base > peak)
      peak = H.tm.live - base;
  }
  ck_assert_int_le(H.m.n_held, 4);
  ck_assert_int_le(peak, 64);
  uint8_t *found =
      memmem(H.m.sock.out, H.m.sock.len, "too many requests in flight", 27);
  ck_assert_ptr_nonnull(found);
}
END_TEST

/* ------------------------------------------------------------------ */
/* permessage-deflate (RFC 7692)                                        */
/* ------------------------------------------------------------------ */

#define PMD "Sec-WebSocket-Extensions: "
#define PMD_ANSWER                                                             \
  PMD "permessage-deflate; server_no_context_takeover; "                       \
      "client_no_context_takeover"

static const uint8_t ZTAIL[4] = {0x00, 0x00, 0xff, 0xff};

/* A sender's message (7.2.1): raw deflate, a sync flush (or the final
 * block with finish), and the flush's 00 00 ff ff left out. */
static size_t zdeflate_with(const void *in, size_t len, uint8_t *out,
                            size_t cap, int finish) {
  z_stream z;
  memset(&z, 0, sizeof(z));
  ck_assert_int_eq(deflateInit2(&z, 9, Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY),
                   Z_OK);
  z.next_in = (Bytef *)in;
  z.avail_in = (uInt)len;
  z.next_out = out;
  z.avail_out = (uInt)cap;
  int rv = deflate(&z, finish ? Z_FINISH : Z_SYNC_FLUSH);
  ck_assert_int_eq(rv, finish ? Z_STREAM_END : Z_OK);
  ck_assert_uint_eq(z.avail_in, 0);
  ck_assert_uint_gt(z.avail_out, 0);
  size_t n = cap - z.avail_out;
  deflateEnd(&z);
  if (finish)
    return n;
  ck_assert_uint_ge(n, 4);
  ck_assert_int_eq(memcmp(out + n - 4, ZTAIL, 4), 0);
  return n - 4;
}

static size_t zdeflate(const void *in, size_t len, uint8_t *out, size_t cap) {
  return zdeflate_with(in, len, out, cap, 0);
}

/* A receiver's side (7.2.2) with a window of bits: fails the test if the
 * data needs a larger one. */
static size_t zinflate(const uint8_t *in, size_t len, uint8_t *out, size_t cap,
                       int bits) {
  z_stream z;
  memset(&z, 0, sizeof(z));
  ck_assert_int_eq(inflateInit2(&z, -bits), Z_OK);
  z.next_out = out;
  z.avail_out = (uInt)cap;
  for (int i = 0; i < 2; i++) {
    z.next_in = (Bytef *)(i ? ZTAIL : in);
    z.avail_in = (uInt)(i ? sizeof(ZTAIL) : len);
    int rv = inflate(&z, Z_SYNC_FLUSH);
    ck_assert_msg(rv == Z_OK || rv == Z_BUF_ERROR, "inflate: %d %s", rv,
                  z.msg ? z.msg : "");
    ck_assert_uint_eq(z.avail_in, 0);
  }
  ck_assert_uint_gt(z.avail_out, 0);
  size_t n = cap - z.avail_out;
  inflateEnd(&z);
  return n;
}

/* An upgrade request for user/device with the header lines ext. */
static const char *upgrade_req_ext(char *buf, size_t cap, const char *user,
                                   const char *device, const char *ext) {
  snprintf(buf, cap,
           "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n%s"
           "Authorization: Bearer %s\r\n\r\n",
           ext, token_for(user, device, 3600));
  return buf;
}

/* Upgrades H.c as alice/d1 offering ext; the 101's head goes to head,
 * the Welcome is read. */
static void z_upgrade(const char *ext, char *head, size_t cap) {
  char req[2048];
  ck_assert_int_eq(
      h_recv_str(upgrade_req_ext(req, sizeof(req), "alice", "d1", ext)), 0);
  ck_assert_int_eq(read_http(head, cap, NULL), 101);
  Imchat__V1__ServerFrame *f = next_sf();
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(f->body_case, IMCHAT__V1__SERVER_FRAME__BODY_WELCOME);
  imchat__v1__server_frame__free_unpacked(f, NULL);
}

/* H.c upgraded with the extension negotiated. */
static void z_connect(void) {
  char head[1024];
  z_upgrade(PMD "permessage-deflate; client_max_window_bits\r\n", head,
            sizeof(head));
  ck_assert_ptr_nonnull(strstr(head, PMD_ANSWER "\r\n"));
}

/* A Ping ClientFrame, encoded. */
static size_t ping_bytes(uint8_t *out, uint64_t id, int64_t t) {
  Imchat__V1__Ping ping = IMCHAT__V1__PING__INIT;
  ping.client_time_ms = t;
  Imchat__V1__ClientFrame cf = IMCHAT__V1__CLIENT_FRAME__INIT;
  cf.id = id;
  cf.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_PING;
  cf.ping = &ping;
  return imchat__v1__client_frame__pack(&cf, out);
}

static uint8_t zmsg[200000];

/* Sends data as one compressed message (RSV1) with opcode. */
static int send_z(int opcode, const void *data, size_t len) {
  size_t n = zdeflate(data, len, zmsg, sizeof(zmsg));
  return h_recv(wbuf, ws_frame(wbuf, 1, opcode, 4, zmsg, n, 1));
}

static const struct {
  const char *offer;  /* header lines */
  const char *answer; /* the 101's extension line; NULL: none */
} z_offers[] = {
    {PMD "permessage-deflate\r\n", PMD_ANSWER "\r\n"},
    {PMD "permessage-deflate; client_max_window_bits\r\n", PMD_ANSWER "\r\n"},
    {PMD "permessage-deflate; client_max_window_bits=9; "
         "client_no_context_takeover; server_no_context_takeover\r\n",
     PMD_ANSWER "\r\n"},
    {PMD "permessage-deflate; server_max_window_bits=10\r\n",
     PMD_ANSWER "; server_max_window_bits=10\r\n"},
    {PMD "PerMessage-Deflate; Server_Max_Window_Bits=\"12\"\r\n",
     PMD_ANSWER "; server_max_window_bits=12\r\n"},
    {PMD "permessage-deflate; server_max_window_bits=8\r\n",
     PMD_ANSWER "; server_max_window_bits=8\r\n"},
    /* The first offer the server can take. */
    {PMD "x-webkit-deflate-frame, permessage-deflate; mux, "
         "permessage-deflate; server_max_window_bits=15\r\n",
     PMD_ANSWER "; server_max_window_bits=15\r\n"},
    {PMD "foo\r\n" PMD "permessage-deflate\r\n", PMD_ANSWER "\r\n"},
    {PMD ", ,permessage-deflate ;client_max_window_bits = 15 ,\r\n",
     PMD_ANSWER "\r\n"},
    /* Declined; the upgrade goes on without the extension. */
    {PMD "permessage-deflate; server_max_window_bits\r\n", NULL},
    {PMD "permessage-deflate; server_max_window_bits=16\r\n", NULL},
    {PMD "permessage-deflate; server_max_window_bits=08\r\n", NULL},
    {PMD "permessage-deflate; client_max_window_bits=7\r\n", NULL},
    {PMD "permessage-deflate; client_max_window_bits=\"1 5\"\r\n", NULL},
    {PMD "permessage-deflate; server_no_context_takeover=1\r\n", NULL},
    {PMD "permessage-deflate; client_no_context_takeover; "
         "client_no_context_takeover\r\n",
     NULL},
    {PMD "permessage-deflate; mux\r\n", NULL},
    {PMD "permessage-deflate;;\r\n", NULL},
    {PMD "permessage-deflate; x=\"open\r\n", NULL},
    {PMD "deflate-frame\r\n", NULL},
    {"", NULL},
};

START_TEST(deflate_offers) {
  char head[1024];
  z_upgrade(z_offers[_i].offer, head, sizeof(head));
  const char *ext = strcasestr(head, "Sec-WebSocket-Extensions");
  if (z_offers[_i].answer == NULL) {
    ck_assert_msg(ext == NULL, "offer %d accepted: %s", _i, head);
  } else {
    ck_assert_msg(ext != NULL && strstr(head, z_offers[_i].answer) == ext,
                  "offer %d: %s", _i, head);
    ck_assert_ptr_null(strcasestr(ext + 1, "Sec-WebSocket-Extensions"));
  }
  /* Either way the connection works. */
  ck_assert_int_eq(send_ping(1, 2), 0);
  expect_pong(1, 2);
}
END_TEST

static void deflate_off(imc_gateway_options *o) {
  ck_assert_int_eq(imc_gateway_options_set_deflate(o, 0, 1024), 0);
}

START_TEST(deflate_option_off) {
  ck_assert_int_eq(imc_gateway_options_set_deflate(H.opt, 2, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_gateway_options_set_deflate(NULL, 1, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  reset_with(deflate_off);
  char head[1024];
  z_upgrade(PMD "permessage-deflate\r\n", head, sizeof(head));
  ck_assert_ptr_null(strcasestr(head, "Sec-WebSocket-Extensions"));
  /* Not negotiated: RSV1 is a protocol error. */
  uint8_t pb[64];
  size_t n = ping_bytes(pb, 1, 2);
  send_z(2, pb, n);
  expect_fail(1002);
}
END_TEST

/* Compressed messages are read; uncompressed ones still are too (the
 * choice is per message). */
START_TEST(deflate_message_delivered) {
  z_connect();
  uint8_t pb[64];
  size_t n = ping_bytes(pb, 5, 55);
  ck_assert_int_eq(send_z(2, pb, n), 0);
  expect_pong(5, 55);
  ck_assert_int_eq(send_ping(6, 66), 0);
  expect_pong(6, 66);
  /* A message ending in a final block (BFINAL) is complete too. */
  n = ping_bytes(pb, 7, 77);
  size_t zn = zdeflate_with(pb, n, zmsg, sizeof(zmsg), 1);
  ck_assert_int_eq(h_recv(wbuf, ws_frame(wbuf, 1, 2, 4, zmsg, zn, 1)), 0);
  expect_pong(7, 77);
  /* Split anywhere, byte by byte included. */
  n = ping_bytes(pb, 8, 88);
  zn = zdeflate(pb, n, zmsg, sizeof(zmsg));
  size_t fl = ws_frame(wbuf, 1, 2, 4, zmsg, zn, 1);
  for (size_t i = 0; i < fl; i++)
    ck_assert_int_eq(h_recv(wbuf + i, 1), 0);
  expect_pong(8, 88);
}
END_TEST

/* A SendRequest whose body fills the limit inflates to a message that
 * is just within it; one byte more is TOO_LARGE, as uncompressed. */
START_TEST(deflate_send_at_limit) {
  reset_with(with_upstream);
  z_connect();
  static uint8_t body[64 * 1024 + 1];
  memset(body, 'a', sizeof(body));
  static uint8_t pb[70000];
  for (int extra = 0; extra < 2; extra++) {
    Imchat__V1__SendRequest s = IMCHAT__V1__SEND_REQUEST__INIT;
    s.client_msg_id = "c1";
    s.to_case = IMCHAT__V1__SEND_REQUEST__TO_USER_ID;
    s.user_id = "bob";
    s.body.data = body;
    s.body.len = 64 * 1024 + (size_t)extra;
    Imchat__V1__ClientFrame cf = IMCHAT__V1__CLIENT_FRAME__INIT;
    cf.id = 3 + (uint64_t)extra;
    cf.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_SEND;
    cf.send = &s;
    size_t n = imchat__v1__client_frame__pack(&cf, pb);
    ck_assert_int_eq(send_z(2, pb, n), 0);
    Imchat__V1__ServerFrame *f = next_sf();
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(f->id, cf.id);
    if (extra == 0) {
      ck_assert_int_eq(f->body_case, IMCHAT__V1__SERVER_FRAME__BODY_SEND_ACK);
    } else {
      ck_assert_int_eq(f->body_case, IMCHAT__V1__SERVER_FRAME__BODY_ERROR);
      ck_assert_int_eq(f->error->code, IMCHAT__V1__ERROR__CODE__TOO_LARGE);
    }
    imchat__v1__server_frame__free_unpacked(f, NULL);
  }
  ck_assert_int_eq(H.m.sends, 1);
}
END_TEST

/* Compression does not change what text frames get. */
START_TEST(deflate_text_1003) {
  z_connect();
  send_z(1, "hello", 5);
  expect_close(1003);
}
END_TEST

/* RSV1 on the first frame only; control frames may come between. */
START_TEST(deflate_fragmented) {
  z_connect();
  uint8_t pb[64];
  size_t n = ping_bytes(pb, 11, 77);
  size_t zn = zdeflate(pb, n, zmsg, sizeof(zmsg));
  ck_assert_uint_ge(zn, 3);
  size_t a = ws_frame(wbuf, 0, 2, 4, zmsg, 1, 1);
  a += ws_frame(wbuf + a, 1, 9, 0, "p", 1, 1);
  a += ws_frame(wbuf + a, 0, 0, 0, zmsg + 1, 1, 1);
  a += ws_frame(wbuf + a, 1, 0, 0, zmsg + 2, zn - 2, 1);
  ck_assert_int_eq(h_recv(wbuf, a), 0);
  ck_assert_int_eq(next_ws(), 1);
  ck_assert_int_eq(F.opcode, 10); /* the pong of the control ping */
  expect_pong(11, 77);
}
END_TEST

/*
 * 10 MiB of zeros, about 10 KiB compressed: a message within the limit
 * on the wire, refused with 1009 once its output passes the limit. The
 * gateway's memory shows that inflating stopped there.
 */
START_TEST(deflate_bomb_1009) {
  z_connect();
  enum { BOMB = 10 * 1024 * 1024 };
  uint8_t *zeros = calloc(1, BOMB);
  ck_assert_ptr_nonnull(zeros);
  size_t zn = zdeflate(zeros, BOMB, zmsg, sizeof(zmsg));
  free(zeros);
  ck_assert_uint_lt(zn, 16 * 1024);
  size_t before = H.tm.bytes;
  H.tm.peak = before;
  h_recv(wbuf, ws_frame(wbuf, 1, 2, 4, zmsg, zn, 1));
  expect_fail(1009);
  /* The limit is 65 KiB; with the zlib state and wslay's buffers well
   * under 512 KiB, and nothing near the 10 MiB. */
  ck_assert_uint_lt(H.tm.peak - before, 512 * 1024);
}
END_TEST

/* RSV1 where RFC 7692 forbids it, RSV2/RSV3, and data that does not
 * inflate. */
START_TEST(deflate_bad_frames) {
  z_connect();
  uint8_t pb[200];
  size_t n = ping_bytes(pb, 1, 2), a = 0;
  int code = 1002;
  switch (_i) {
  case 0: /* RSV1 on a control frame */
    a = ws_frame(wbuf, 1, 9, 4, "p", 1, 1);
    break;
  case 1: /* RSV1 on a continuation frame */
    a = ws_frame(wbuf, 0, 2, 4, pb, 1, 1);
    a += ws_frame(wbuf + a, 1, 0, 4, pb + 1, n - 1, 1);
    break;
  case 2: /* RSV2 */
    a = ws_frame(wbuf, 1, 2, 2, pb, n, 1);
    break;
  case 3: /* not deflate data */
    a = ws_frame(wbuf, 1, 2, 4, "\xff\xff\xff\xff", 4, 1);
    code = 1007;
    break;
  case 4: { /* cut in the middle of a block */
    memset(pb, 'q', sizeof(pb));
    for (size_t i = 0; i < sizeof(pb); i += 7)
      pb[i] = (uint8_t)i;
    size_t zn = zdeflate(pb, sizeof(pb), zmsg, sizeof(zmsg));
    a = ws_frame(wbuf, 1, 2, 4, zmsg, zn / 2, 1);
    code = 1007;
    break;
  }
  case 5: { /* bytes after the final block */
    size_t zn = zdeflate_with(pb, n, zmsg, sizeof(zmsg) - 1, 1);
    zmsg[zn++] = 0;
    a = ws_frame(wbuf, 1, 2, 4, zmsg, zn, 1);
    code = 1007;
    break;
  }
  default:
    ck_abort();
  }
  h_recv(wbuf, a);
  expect_fail(code);
}
END_TEST

/* A Deliver of body_len bytes of text for alice. */
static int deliver_body(const char *id, size_t body_len) {
  static uint8_t body[8192];
  ck_assert_uint_le(body_len, sizeof(body));
  for (size_t i = 0; i < body_len; i++)
    body[i] = (uint8_t)("the quick brown fox jumps over the lazy dog "[i % 44]);
  imc_msg m = test_msg(id);
  m.body = body;
  m.body_len = body_len;
  int rv = imc_gateway_deliver(H.gw, "alice", NULL, &m);
  imc_gateway_flush(H.gw);
  return rv;
}

/* The next frame on sock is a Deliver of body_len bytes, compressed or
 * not (inflated with a window of bits). */
static void expect_deliver_on(test_sock *sock, size_t body_len, int compressed,
                              int bits) {
  ck_assert_int_eq(next_ws_on(sock), 1);
  ck_assert_int_eq(F.opcode, 2);
  ck_assert_int_eq(F.rsv1, compressed);
  const uint8_t *msg = F.payload;
  size_t len = F.len;
  if (compressed) {
    len = zinflate(F.payload, F.len, zbuf, sizeof(zbuf), bits);
    ck_assert_uint_lt(F.len, len);
    msg = zbuf;
  }
  Imchat__V1__ServerFrame *f = imchat__v1__server_frame__unpack(NULL, len, msg);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(f->body_case, IMCHAT__V1__SERVER_FRAME__BODY_DELIVER);
  ck_assert_uint_eq(f->deliver->message->body.len, body_len);
  imchat__v1__server_frame__free_unpacked(f, NULL);
}

/*
 * Pushes over the threshold (1 KiB) go compressed to a connection with
 * the extension, smaller ones not; a connection without it (the user's
 * other device) gets every push uncompressed.
 */
START_TEST(deflate_pushes) {
  reset_with(with_upstream);
  z_connect();
  peer plain;
  ck_assert_int_eq(peer_connect(&plain, "alice", "d2"), 101);
  ck_assert_ptr_null(sock_find(&plain.sock, "Sec-WebSocket-Extensions"));
  const uint8_t *end = sock_find(&plain.sock, "\r\n\r\n");
  plain.sock.pos = (size_t)(end + 4 - plain.sock.out);
  while (next_ws_on(&plain.sock))
    ; /* the Welcome */
  ck_assert_int_eq(deliver_body("m-big", 4000), 2);
  expect_deliver_on(&H.m.sock, 4000, 1, 15);
  expect_deliver_on(&plain.sock, 4000, 0, 0);
  ck_assert_int_eq(deliver_body("m-small", 20), 2);
  expect_deliver_on(&H.m.sock, 20, 0, 0);
  expect_deliver_on(&plain.sock, 20, 0, 0);
  /* The other server messages too: a small status goes as it is. */
  ck_assert_int_eq(imc_gateway_push_status(H.gw, "alice", "d1", "m-1", "c-1",
                                           IMC_STORED, NULL),
                   1);
  imc_gateway_flush(H.gw);
  ck_assert_int_eq(next_ws(), 1);
  ck_assert_int_eq(F.rsv1, 0);
  imc_gateway_conn_closed(H.gw, plain.c);
  peer_free(&plain);
}
END_TEST

static void deflate_read_only(imc_gateway_options *o) {
  ck_assert_int_eq(imc_gateway_options_set_deflate(o, 1, SIZE_MAX), 0);
}

static void deflate_all(imc_gateway_options *o) {
  ck_assert_int_eq(imc_gateway_options_set_deflate(o, 1, 0), 0);
}

/* min_size SIZE_MAX: compressed messages are read, none is sent;
 * min_size 0: whatever compression makes smaller goes compressed. */
START_TEST(deflate_threshold) {
  reset_with(_i ? deflate_all : deflate_read_only);
  uint8_t pb[64];
  size_t n = ping_bytes(pb, 4, 44);
  z_connect();
  ck_assert_int_eq(send_z(2, pb, n), 0);
  expect_pong(4, 44);
  ck_assert_int_eq(deliver_body("m-big", 4000), 1);
  expect_deliver_on(&H.m.sock, 4000, _i, 15);
  /* Compressed with min_size 0 (a repetitive 300 bytes), not without. */
  ck_assert_int_eq(deliver_body("m-300", 300), 1);
  expect_deliver_on(&H.m.sock, 300, _i, 15);
}
END_TEST

/* The server compresses within the window the client allows; 8 bits is
 * a window zlib cannot compress with, so nothing is compressed. */
START_TEST(deflate_window_bits) {
  char head[1024];
  const int bits = _i ? 8 : 10;
  char offer[128];
  snprintf(offer, sizeof(offer),
           PMD "permessage-deflate; server_max_window_bits=%d\r\n", bits);
  z_upgrade(offer, head, sizeof(head));
  ck_assert_ptr_nonnull(strstr(head, "server_max_window_bits="));
  ck_assert_int_eq(deliver_body("m-big", 8000), 1);
  expect_deliver_on(&H.m.sock, 8000, bits > 8, bits);
}
END_TEST

/* Opens p as user/d1 offering the extension or not, exchanges a ping
 * and takes a 4000-byte push. */
static void z_peer(peer *p, const char *user, int deflate) {
  memset(p, 0, sizeof(*p));
  ck_assert_int_eq(imc_gateway_conn_new(H.gw, &p->c, &p->sock), 0);
  char req[2048];
  upgrade_req_ext(req, sizeof(req), user, "d1",
                  deflate ? PMD "permessage-deflate\r\n" : "");
  ck_assert_int_eq(
      imc_gateway_conn_recv(H.gw, p->c, (const uint8_t *)req, strlen(req)), 0);
  uint8_t pb[64];
  size_t n = ping_bytes(pb, 1, 2);
  if (deflate)
    n = zdeflate(pb, n, zmsg, sizeof(zmsg));
  size_t fl = ws_frame(wbuf, 1, 2, deflate ? 4 : 0, deflate ? zmsg : pb, n, 1);
  ck_assert_int_eq(imc_gateway_conn_recv(H.gw, p->c, wbuf, fl), 0);
  imc_msg m = test_msg("m-mem");
  static uint8_t body[4000];
  memset(body, 'b', sizeof(body));
  m.body = body;
  m.body_len = sizeof(body);
  ck_assert_int_eq(imc_gateway_deliver(H.gw, user, NULL, &m), 1);
  imc_gateway_flush(H.gw);
  ck_assert_ptr_nonnull(sock_find(&p->sock, deflate ? "permessage" : "101"));
}

/*
 * What a connection costs: with the extension, after a compressed
 * message each way, the same as without. The gateway's zlib streams
 * come with the first such connection and go with the last.
 */
START_TEST(deflate_memory) {
  reset_with(with_upstream);
  peer p[4];
  size_t at[5];
  at[0] = H.tm.bytes;
  z_peer(&p[0], "u0", 0);
  at[1] = H.tm.bytes;
  z_peer(&p[1], "u1", 0);
  at[2] = H.tm.bytes;
  z_peer(&p[2], "u2", 1);
  at[3] = H.tm.bytes;
  z_peer(&p[3], "u3", 1);
  at[4] = H.tm.bytes;
  size_t plain = at[2] - at[1], first = at[3] - at[2], next = at[4] - at[3];
  ck_assert_msg(next <= plain + 64,
                "a connection with deflate: %zu bytes, without: %zu", next,
                plain);
  ck_assert_msg(first > next + 100 * 1024, "zlib streams: %zu bytes",
                first - next);
  imc_gateway_conn_closed(H.gw, p[2].c);
  size_t one_left = H.tm.bytes;
  imc_gateway_conn_closed(H.gw, p[3].c);
  ck_assert_uint_gt(one_left - H.tm.bytes, 100 * 1024);
  for (int i = 0; i < 2; i++)
    imc_gateway_conn_closed(H.gw, p[i].c);
  for (int i = 0; i < 4; i++)
    peer_free(&p[i]);
}
END_TEST

static Suite *gateway_suite(void) {
  Suite *s = suite_create("gateway");
  TCase *t = tcase_create("handshake");
  tcase_add_checked_fixture(t, h_setup, h_teardown);
  tcase_add_test(t, upgrade_ok);
  tcase_add_test(t, upgrade_query_token_and_device);
  tcase_add_test(t, upgrade_did_claim);
  tcase_add_test(t, upgrade_byte_by_byte);
  tcase_add_test(t, upgrade_random_splits);
  tcase_add_test(t, bad_version);
  tcase_add_test(t, missing_key);
  tcase_add_test(t, no_upgrade_header);
  tcase_add_test(t, http10_upgrade);
  tcase_add_test(t, http_body_read_whole);
  tcase_add_test(t, http_no_body);
  tcase_add_test(t, http_body_refused);
  tcase_add_test(t, http_body_chunked);
  tcase_add_test(t, http_body_bad_length);
  tcase_add_test(t, malformed_request);
  tcase_add_test(t, unknown_path);
  tcase_add_test(t, post_ws);
  tcase_add_test(t, head_too_large);
  tcase_add_test(t, healthz);
  tcase_add_test(t, handshake_timeout);
  suite_add_tcase(s, t);

  t = tcase_create("auth");
  tcase_add_checked_fixture(t, h_setup, h_teardown);
  tcase_add_test(t, auth_missing);
  tcase_add_test(t, auth_expired);
  tcase_add_test(t, auth_leeway_accepted);
  tcase_add_test(t, auth_not_yet_valid);
  tcase_add_test(t, auth_wrong_key);
  tcase_add_loop_test(t, auth_alg_none, 0, 4);
  tcase_add_test(t, auth_missing_exp);
  tcase_add_loop_test(t, auth_garbage, 0, 5);
  tcase_add_test(t, auth_bad_sub);
  tcase_add_test(t, auth_rs256_and_es256);
  tcase_add_test(t, auth_rs256_key_confusion);
  tcase_add_test(t, http_only_serves_no_websocket);
  tcase_add_test(t, auth_es256_with_rsa_key);
  tcase_add_test(t, auth_keysrc_async);
  tcase_add_test(t, auth_keysrc_closed_meanwhile);
  suite_add_tcase(s, t);

  t = tcase_create("frames");
  tcase_add_checked_fixture(t, h_setup, h_teardown);
  tcase_add_test(t, ping_pong);
  tcase_add_test(t, text_frame_1003);
  tcase_add_test(t, text_frame_single_close);
  tcase_add_test(t, oversize_1009);
  tcase_add_test(t, body_too_large_in_valid_frame);
  tcase_add_test(t, bad_protobuf);
  tcase_add_test(t, repeated_garbage_1008);
  tcase_add_test(t, fragmented_message);
  tcase_add_test(t, control_frame_too_long);
  tcase_add_test(t, fragmented_ping);
  tcase_add_test(t, close_one_byte);
  tcase_add_test(t, length_top_bit);
  tcase_add_loop_test(t, length_not_minimal, 0, 2);
  tcase_add_loop_test(t, reserved_opcode, 0, 4);
  tcase_add_loop_test(t, bad_fragment_sequence, 0, 2);
  tcase_add_test(t, huge_length_1009_at_header);
  tcase_add_loop_test(t, close_code_echoed, 0, 14);
  tcase_add_loop_test(t, close_code_invalid, 0, 10);
  tcase_add_test(t, close_reason_not_utf8);
  tcase_add_test(t, close_empty_answered);
  tcase_add_test(t, ping_125_between_fragments);
  tcase_add_test(t, unmasked_frame);
  tcase_add_test(t, rsv_bits);
  tcase_add_test(t, client_close);
  suite_add_tcase(s, t);

  t = tcase_create("heartbeat");
  tcase_add_checked_fixture(t, h_setup, h_teardown);
  tcase_add_test(t, heartbeat);
  tcase_add_test(t, silent_client_dropped);
  tcase_add_test(t, conn_lost_unregisters);
  suite_add_tcase(s, t);

  t = tcase_create("lease");
  tcase_add_checked_fixture(t, h_setup, h_teardown);
  tcase_add_test(t, lease_one_keepalive_per_node);
  tcase_add_test(t, lease_lost_registers_again);
  tcase_add_test(t, lease_grant_retried);
  tcase_add_test(t, lease_failed_writes_retried);
  tcase_add_test(t, lease_one_call_in_flight);
  tcase_add_test(t, lease_grant_in_flight);
  tcase_add_test(t, lease_timer_idle);
  suite_add_tcase(s, t);

  t = tcase_create("delivery");
  tcase_add_checked_fixture(t, h_setup, h_teardown);
  tcase_add_test(t, send_without_routing);
  tcase_add_test(t, send_ack);
  tcase_add_loop_test(t, send_bad_strings_refused, 0,
                      (int)(sizeof(bad_strings) / sizeof(bad_strings[0])));
  tcase_add_test(t, send_completion_after_close);
  tcase_add_test(t, rate_limit);
  tcase_add_test(t, deliver_and_ack);
  tcase_add_test(t, ack_batches);
  tcase_add_test(t, ack_latency);
  tcase_add_test(t, ack_timeout_fallback);
  tcase_add_test(t, close_fallback_and_skip_device);
  tcase_add_test(t, del_with_pushes_in_flight);
  tcase_add_test(t, push_status);
  tcase_add_test(t, slow_reader_closed);
  tcase_add_test(t, writable_after_block);
  tcase_add_test(t, shutdown_1001);
  tcase_add_test(t, delivered_fails_falls_back);
  tcase_add_test(t, undelivered_retried_with_backoff);
  tcase_add_test(t, shutdown_waits_for_reports);
  tcase_add_test(t, acks_one_batch_per_turn);
  tcase_add_test(t, acks_reported_on_timeout);
  tcase_add_test(t, acks_batch_bounded);
  tcase_add_loop_test(t, acks_batch_fails_falls_back, 1, 3);
  tcase_add_test(t, acks_batch_completes_later);
  tcase_add_test(t, acks_batch_del_in_flight);
  tcase_add_test(t, acks_batch_without_memory);
  tcase_add_test(t, acks_old_upstream_one_by_one);
  tcase_add_test(t, send_timeout_unavailable);
  tcase_add_test(t, max_devices_429);
  tcase_add_test(t, user_rate_shared_by_devices);
  tcase_add_test(t, many_devices_one_user);
  tcase_add_test(t, answers_in_request_order);
  tcase_add_test(t, answer_order_after_send_timeout);
  tcase_add_test(t, paused_at_conn_limit);
  tcase_add_test(t, gateway_limit_waits_then_busy);
  tcase_add_test(t, flood_memory_bounded);
  suite_add_tcase(s, t);

  t = tcase_create("http");
  tcase_add_checked_fixture(t, h_setup, h_teardown);
  tcase_add_loop_test(t, host_required, 0, 4);
  tcase_add_test(t, host_optional_http10);
  tcase_add_loop_test(t, absolute_form_upgrade, 0, 2);
  tcase_add_test(t, absolute_form_userinfo);
  tcase_add_loop_test(t, content_length_conflict, 0, 3);
  tcase_add_test(t, upgrade_with_body);
  tcase_add_test(t, head_healthz);
  tcase_add_test(t, head_handler);
  tcase_add_test(t, head_ws);
  tcase_add_test(t, challenge_401);
  tcase_add_test(t, challenge_401_handler);
  tcase_add_loop_test(t, ws_key_invalid, 0, 4);
  suite_add_tcase(s, t);

  t = tcase_create("admission");
  tcase_add_checked_fixture(t, h_setup, h_teardown);
  tcase_add_test(t, origin_no_list);
  tcase_add_loop_test(t, origin_list, 0,
                      (int)(sizeof(origin_cases) / sizeof(origin_cases[0])));
  tcase_add_test(t, origin_option_invalid);
  tcase_add_test(t, max_connections_503);
  tcase_add_test(t, max_connections_per_ip_503);
  tcase_add_test(t, set_peer_arguments);
  suite_add_tcase(s, t);

  t = tcase_create("deflate");
  tcase_add_checked_fixture(t, h_setup, h_teardown);
  tcase_add_loop_test(t, deflate_offers, 0,
                      (int)(sizeof(z_offers) / sizeof(z_offers[0])));
  tcase_add_test(t, deflate_option_off);
  tcase_add_test(t, deflate_message_delivered);
  tcase_add_test(t, deflate_send_at_limit);
  tcase_add_test(t, deflate_text_1003);
  tcase_add_test(t, deflate_fragmented);
  tcase_add_test(t, deflate_bomb_1009);
  tcase_add_loop_test(t, deflate_bad_frames, 0, 6);
  tcase_add_test(t, deflate_pushes);
  tcase_add_loop_test(t, deflate_threshold, 0, 2);
  tcase_add_loop_test(t, deflate_window_bits, 0, 2);
  tcase_add_test(t, deflate_memory);
  suite_add_tcase(s, t);

  t = tcase_create("alloc");
  tcase_set_timeout(t, 120);
  tcase_add_test(t, alloc_failures);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  keys_setup();
  SRunner *sr = srunner_create(gateway_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
