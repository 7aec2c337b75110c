/*
 * imc_client against the real server side in process: an imc_gateway and
 * an imc_router on the embedded backends (in-memory registry, SQLite
 * seq/dedup/store/queue), an imc_worker for the slow path and the HTTP
 * API for /offline. Bytes are shuttled between the clients and the
 * gateway in memory; time is a fake clock shared by everyone.
 */
#include <imchat/imchat.h>

#include "protocol/http.h"
#include "testutil.h"
#include "im.pb-c.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SECRET "client-test-secret"
#define T0 1767225600000LL /* 2026-01-01, wall ms */

/* ------------------------------------------------------------------ */
/* A client and its link to the gateway                                 */
/* ------------------------------------------------------------------ */

#define MAX_SEEN 64

typedef struct peer {
  const char *user;
  imc_client *c;
  imc_conn *conn;   /* gateway side, NULL when none */
  test_sock sock;   /* what the gateway writes to this client */
  int auto_connect; /* open a link whenever the client asks */
  int cut_down;     /* drop gateway -> client bytes (a dead link) */
  int cut_up;       /* drop client -> gateway bytes */
  uint8_t *tap;     /* client -> gateway bytes not yet decoded */
  size_t tap_len;
  /* Decoded ClientFrames. */
  int sends, acks_sent, pings;
  char send_cmids[16][40];
  /* Callbacks. */
  imc_client_state states[64];
  int reasons[64];
  int n_states;
  char seen[MAX_SEEN][40];
  char seen_body[MAX_SEEN][64];
  uint32_t seen_flags[MAX_SEEN];
  uint64_t seen_seq[MAX_SEEN], seen_last[MAX_SEEN];
  int n_seen;
  int send_acks, statuses, send_errors;
  char ack_msg_id[40], status_cmid[40];
  int last_status, last_error;
} peer;

typedef struct harness {
  test_clock tc;
  imc_sqlite *db;
  imc_memreg *reg;
  imc_membus *bus;
  imc_router *rt;
  imc_gateway *gw;
  imc_worker *wk;
  imc_api *api;
  char dir[64];
  uint32_t rnd; /* deterministic random source */
} harness;

static harness H;

static int t_random(void *ud, uint8_t *buf, size_t len) {
  uint32_t *s = ud;
  for (size_t i = 0; i < len; i++) {
    *s = *s * 1103515245u + 12345u;
    buf[i] = (uint8_t)(*s >> 16);
  }
  return 0;
}

static void cb_state(void *ud, imc_client_state st, int reason) {
  peer *p = ud;
  if (p->n_states < 64) {
    p->states[p->n_states] = st;
    p->reasons[p->n_states++] = reason;
  }
}

static void cb_message(void *ud, const imc_msg *m, uint32_t flags,
                       uint64_t last_seq) {
  peer *p = ud;
  ck_assert_int_lt(p->n_seen, MAX_SEEN);
  snprintf(p->seen[p->n_seen], 40, "%s", m->msg_id);
  size_t n = m->body_len < 63 ? m->body_len : 63;
  if (n)
    memcpy(p->seen_body[p->n_seen], m->body, n);
  p->seen_body[p->n_seen][n] = '\0';
  p->seen_flags[p->n_seen] = flags;
  p->seen_seq[p->n_seen] = m->seq;
  p->seen_last[p->n_seen] = last_seq;
  p->n_seen++;
}

static void cb_send_ack(void *ud, const char *cmid, const char *msg_id,
                        const char *conv, uint64_t seq) {
  peer *p = ud;
  (void)cmid;
  (void)conv;
  (void)seq;
  p->send_acks++;
  snprintf(p->ack_msg_id, sizeof(p->ack_msg_id), "%s", msg_id);
}

static void cb_status(void *ud, const char *cmid, const char *msg_id,
                      imc_delivery_state st, const char *user) {
  peer *p = ud;
  (void)msg_id;
  (void)user;
  p->statuses++;
  p->last_status = (int)st;
  snprintf(p->status_cmid, sizeof(p->status_cmid), "%s", cmid);
}

static void cb_send_error(void *ud, const char *cmid, int err,
                          const char *msg) {
  peer *p = ud;
  (void)cmid;
  (void)msg;
  p->send_errors++;
  p->last_error = err;
}

static const imc_client_callbacks callbacks = {sizeof(imc_client_callbacks),
                                               cb_state,
                                               cb_message,
                                               cb_send_ack,
                                               cb_status,
                                               cb_send_error};

static const char *token_for(const char *user) {
  static char tok[IMC_JWT_SIGN_MAX];
  int64_t now = H.tc.wall / 1000;
  ck_assert_int_gt(imc_jwt_sign_hs256((const uint8_t *)SECRET, strlen(SECRET),
                                      user, NULL, NULL, NULL, now, now + 86400,
                                      tok, sizeof(tok)),
                   0);
  return tok;
}

static void db_path(char *out, size_t cap, const char *user) {
  snprintf(out, cap, "%s/%s.db", H.dir, user);
}

/* Options for user's client; the caller may change them before use. */
static imc_client_options *peer_options(peer *p, const imc_mem *mem) {
  imc_client_options *o;
  char path[128];
  db_path(path, sizeof(path), p->user);
  ck_assert_int_eq(imc_client_options_new(&o, mem), 0);
  ck_assert_int_eq(imc_client_options_set_store_path(o, path), 0);
  ck_assert_int_eq(imc_client_options_set_token(o, token_for(p->user)), 0);
  ck_assert_int_eq(imc_client_options_set_host(o, "test"), 0);
  ck_assert_int_eq(imc_client_options_set_callbacks(o, &callbacks, p), 0);
  ck_assert_int_eq(imc_client_options_set_clock(o, &H.tc.clock), 0);
  ck_assert_int_eq(imc_client_options_set_random(o, t_random, &H.rnd), 0);
  return o;
}

static void peer_open(peer *p, const char *user) {
  memset(p, 0, sizeof(*p));
  p->user = user;
  p->auto_connect = 1;
  imc_client_options *o = peer_options(p, NULL);
  ck_assert_int_eq(imc_client_new(&p->c, o, NULL), 0);
  imc_client_options_del(o);
}

/* Drops the gateway side of p's link. */
static void peer_unlink(peer *p) {
  if (p->conn) {
    imc_gateway_conn_closed(H.gw, p->conn);
    p->conn = NULL;
  }
  free(p->sock.out);
  memset(&p->sock, 0, sizeof(p->sock));
  p->tap_len = 0;
}

static void peer_close(peer *p) {
  peer_unlink(p);
  imc_client_del(p->c);
  p->c = NULL;
  free(p->tap);
  p->tap = NULL;
}

/* Decodes the masked client frames in p's tap. */
static void tap_decode(peer *p) {
  for (;;) {
    uint8_t *b = p->tap;
    size_t n = p->tap_len, h = 2;
    if (n < 2)
      return;
    ck_assert(b[1] & 0x80); /* masked */
    uint64_t len = b[1] & 0x7f;
    if (len == 126) {
      if (n < 4)
        return;
      len = (uint64_t)b[2] << 8 | b[3];
      h = 4;
    } else if (len == 127) {
      if (n < 10)
        return;
      len = 0;
      for (int i = 0; i < 8; i++)
        len = len << 8 | b[2 + i];
      h = 10;
    }
    if (n < h + 4 + len)
      return;
    uint8_t *mask = b + h, *pl = b + h + 4;
    for (uint64_t i = 0; i < len; i++)
      pl[i] ^= mask[i % 4];
    if ((b[0] & 0x0f) == 0x2) {
      Imchat__V1__ClientFrame *f =
          imchat__v1__client_frame__unpack(NULL, (size_t)len, pl);
      ck_assert_ptr_nonnull(f);
      if (f->body_case == IMCHAT__V1__CLIENT_FRAME__BODY_SEND) {
        if (p->sends < 16)
          snprintf(p->send_cmids[p->sends], 40, "%s", f->send->client_msg_id);
        p->sends++;
      } else if (f->body_case == IMCHAT__V1__CLIENT_FRAME__BODY_DELIVER_ACK) {
        p->acks_sent++;
      } else if (f->body_case == IMCHAT__V1__CLIENT_FRAME__BODY_PING) {
        p->pings++;
      }
      imchat__v1__client_frame__free_unpacked(f, NULL);
    }
    size_t used = h + 4 + (size_t)len;
    memmove(p->tap, p->tap + used, n - used);
    p->tap_len -= used;
  }
}

/* One round of moving p's bytes. Returns 1 if anything moved. */
static int peer_step(peer *p) {
  int moved = 0;
  imc_client_state st = imc_client_get_state(p->c);
  if (p->conn && (st == IMC_CLIENT_WAITING || st == IMC_CLIENT_FAILED ||
                  st == IMC_CLIENT_STOPPED || st == IMC_CLIENT_CONNECTING)) {
    peer_unlink(p);
    moved = 1;
  }
  if (st == IMC_CLIENT_CONNECTING && p->auto_connect && p->conn == NULL) {
    ck_assert_int_eq(imc_gateway_conn_new(H.gw, &p->conn, &p->sock), 0);
    int rv = imc_client_connected(p->c);
    ck_assert(rv == 0 || rv == IMC_ERR_NOMEM);
    moved = 1;
  }
  const uint8_t *d;
  size_t n = imc_client_output(p->c, &d);
  if (n > 0 && p->conn) {
    moved = 1;
    if (!p->cut_up) {
      /* The header sent before the 101 is plain text: tap only frames. */
      if (imc_client_get_state(p->c) == IMC_CLIENT_ONLINE || p->tap_len > 0 ||
          d[0] != 'G') {
        p->tap = realloc(p->tap, p->tap_len + n);
        memcpy(p->tap + p->tap_len, d, n);
        p->tap_len += n;
      }
      uint8_t *copy = malloc(n);
      memcpy(copy, d, n);
      imc_client_output_consume(p->c, n);
      int rv = imc_gateway_conn_recv(H.gw, p->conn, copy, n);
      free(copy);
      tap_decode(p);
      if (rv < 0) {
        p->conn = NULL;
        imc_client_disconnected(p->c, IMC_ERR_CLOSED);
        return 1;
      }
    } else {
      imc_client_output_consume(p->c, n);
    }
  } else if (n > 0 && imc_client_get_state(p->c) != IMC_CLIENT_HANDSHAKE) {
    imc_client_output_consume(p->c, n); /* nobody to write to */
  }
  imc_gateway_flush(H.gw);
  if (p->sock.len > p->sock.pos) {
    moved = 1;
    size_t len = p->sock.len - p->sock.pos;
    uint8_t *copy = malloc(len);
    memcpy(copy, p->sock.out + p->sock.pos, len);
    p->sock.pos = p->sock.len;
    if (!p->cut_down)
      imc_client_recv(p->c, copy, len);
    free(copy);
  }
  if (p->sock.closed && p->conn) {
    p->conn = NULL; /* the gateway closed it */
    p->sock.closed = 0;
    imc_client_disconnected(p->c, IMC_ERR_CLOSED);
    moved = 1;
  }
  return moved;
}

/* Runs whatever is due on the server side. Returns 1 if anything ran. */
static int server_step(void) {
  int ran = 0;
  if (imc_sqlite_next_timeout_ms(H.db) == 0) {
    imc_sqlite_dispatch(H.db);
    ran = 1;
  }
  if (imc_membus_next_timeout_ms(H.bus) == 0) {
    imc_membus_dispatch(H.bus);
    ran = 1;
  }
  if (imc_worker_next_timeout_ms(H.wk) == 0) {
    imc_worker_on_timeout(H.wk);
    ran = 1;
  }
  if (imc_router_next_timeout_ms(H.rt) == 0) {
    imc_router_on_timeout(H.rt);
    ran = 1;
  }
  if (imc_gateway_next_timeout_ms(H.gw) == 0) {
    imc_gateway_on_timeout(H.gw);
    ran = 1;
  }
  return ran;
}

/* Moves bytes and runs due timers until nothing happens any more. */
static void pump2(peer *a, peer *b) {
  for (int i = 0; i < 1000; i++) {
    int moved = server_step();
    if (a) {
      if (imc_client_next_timeout_ms(a->c) == 0) {
        imc_client_on_timeout(a->c);
        moved = 1;
      }
      moved |= peer_step(a);
    }
    if (b) {
      if (imc_client_next_timeout_ms(b->c) == 0) {
        imc_client_on_timeout(b->c);
        moved = 1;
      }
      moved |= peer_step(b);
    }
    if (!moved)
      return;
  }
  ck_abort_msg("pump did not settle");
}

static void pump(peer *a) {
  pump2(a, NULL);
}

/* Advances the fake clock by ms and runs what became due. */
static void advance(peer *a, peer *b, int64_t ms) {
  test_clock_advance(&H.tc, ms);
  pump2(a, b);
}

static void go_online(peer *p) {
  ck_assert_int_eq(imc_client_start(p->c), 0);
  pump(p);
  ck_assert_int_eq(imc_client_get_state(p->c), IMC_CLIENT_ONLINE);
}

/* One HTTP exchange with the gateway on a fresh connection. */
static size_t http(const uint8_t *req, size_t len, uint8_t **answer) {
  test_sock s;
  memset(&s, 0, sizeof(s));
  imc_conn *conn;
  ck_assert_int_eq(imc_gateway_conn_new(H.gw, &conn, &s), 0);
  imc_gateway_conn_recv(H.gw, conn, req, len);
  for (int i = 0; i < 100 && !s.closed; i++) {
    imc_gateway_flush(H.gw);
    server_step();
  }
  ck_assert_int_gt(s.closed, 0);
  *answer = s.out;
  return s.len;
}

/* Runs an offline sync to its end; returns the pages read. */
static int sync_all(peer *p) {
  int pages = 0, rv;
  do {
    const uint8_t *req;
    size_t len;
    ck_assert_int_eq(imc_client_sync_request(p->c, &req, &len), 0);
    uint8_t *ans;
    size_t alen = http(req, len, &ans);
    /* Fed in two parts: the first is incomplete. */
    ck_assert_int_eq(imc_client_sync_response(p->c, ans, alen - 1),
                     IMC_ERR_INCOMPLETE);
    rv = imc_client_sync_response(p->c, ans, alen);
    free(ans);
    ck_assert_int_ge(rv, 0);
    pages++;
  } while (rv == 1);
  ck_assert_int_eq(imc_client_want_sync(p->c), 0);
  return pages;
}

/* ------------------------------------------------------------------ */
/* The server side                                                      */
/* ------------------------------------------------------------------ */

static int l_deliver(void *ud, const char *node, const char *user,
                     const char *skip, const imc_msg *msg, imc_count_cb done,
                     void *done_ud) {
  (void)ud;
  return imc_gateway_local_link()->deliver(H.gw, node, user, skip, msg, done,
                                           done_ud);
}

static int l_status(void *ud, const char *node, const char *user,
                    const char *device, const char *msg_id,
                    const char *client_msg_id, imc_delivery_state state,
                    const char *recipient, imc_done_cb done, void *done_ud) {
  (void)ud;
  return imc_gateway_local_link()->status(H.gw, node, user, device, msg_id,
                                          client_msg_id, state, recipient, done,
                                          done_ud);
}

static const imc_gwlink_vtbl gwlink = {sizeof(imc_gwlink_vtbl), l_deliver,
                                       l_status};

static void h_setup(void) {
  memset(&H, 0, sizeof(H));
  H.rnd = 42;
  test_clock_init(&H.tc, T0);
  snprintf(H.dir, sizeof(H.dir), "/tmp/imc-client-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(H.dir));
  ck_assert_int_eq(imc_sqlite_new(&H.db, ":memory:", &H.tc.clock, NULL), 0);
  ck_assert_int_eq(imc_memreg_new(&H.reg, &H.tc.clock, NULL), 0);
  ck_assert_int_eq(imc_membus_new(&H.bus, NULL), 0);

  imc_router_options *ro;
  ck_assert_int_eq(imc_router_options_new(&ro, NULL), 0);
  imc_router_options_set_registry(ro, imc_memreg_vtbl(), H.reg);
  imc_router_options_set_seq(ro, imc_sqlite_seq_vtbl(), H.db);
  imc_router_options_set_dedup(ro, imc_sqlite_dedup_vtbl(), H.db);
  imc_router_options_set_store(ro, imc_sqlite_store_vtbl(), H.db);
  imc_router_options_set_queue(ro, imc_sqlite_bus_vtbl(), H.db);
  imc_router_options_set_group_bus(ro, imc_membus_vtbl(), H.bus);
  imc_router_options_set_gwlink(ro, &gwlink, NULL);
  imc_router_options_set_clock(ro, &H.tc.clock);
  ck_assert_int_eq(imc_router_new(&H.rt, ro, NULL), 0);
  imc_router_options_del(ro);

  imc_api_options *ao;
  ck_assert_int_eq(imc_api_options_new(&ao, NULL), 0);
  imc_api_options_set_store(ao, imc_sqlite_store_vtbl(), H.db);
  imc_api_options_set_groups(ao, imc_api_router_groups(), H.rt);
  imc_api_options_set_clock(ao, &H.tc.clock);
  ck_assert_int_eq(imc_api_new(&H.api, ao, NULL), 0);
  imc_api_options_del(ao);

  imc_gateway_options *go;
  ck_assert_int_eq(imc_gateway_options_new(&go, NULL), 0);
  imc_gateway_options_set_transport(go, &test_sock_transport, NULL);
  imc_gateway_options_set_jwt_secret(go, (const uint8_t *)SECRET,
                                     strlen(SECRET));
  imc_gateway_options_set_registry(go, imc_memreg_vtbl(), H.reg);
  imc_gateway_options_set_upstream(go, imc_router_upstream_vtbl(), H.rt);
  imc_gateway_options_set_http_handler(go, imc_api_handler_vtbl(), H.api);
  imc_gateway_options_set_clock(go, &H.tc.clock);
  ck_assert_int_eq(imc_gateway_new(&H.gw, go, NULL), 0);
  imc_gateway_options_del(go);

  imc_worker_options *wo;
  ck_assert_int_eq(imc_worker_options_new(&wo, NULL), 0);
  imc_worker_options_set_queue(wo, imc_sqlite_bus_vtbl(), H.db);
  imc_worker_options_set_store(wo, imc_sqlite_store_vtbl(), H.db);
  imc_worker_options_set_dedup(wo, imc_sqlite_dedup_vtbl(), H.db);
  imc_worker_options_set_persisted(wo, imc_router_persisted, H.rt);
  imc_worker_options_set_clock(wo, &H.tc.clock);
  ck_assert_int_eq(imc_worker_new(&H.wk, wo, NULL), 0);
  imc_worker_options_del(wo);
  ck_assert_int_eq(imc_worker_start(H.wk), 0);
}

static void h_teardown(void) {
  imc_worker_stop(H.wk);
  for (int i = 0; i < 100 && imc_worker_pending(H.wk) > 0; i++)
    server_step();
  imc_gateway_del(H.gw);
  /* Completes the worker's outstanding poll with IMC_ERR_CLOSED. */
  imc_sqlite_del(H.db);
  imc_worker_del(H.wk);
  imc_api_del(H.api);
  imc_router_del(H.rt);
  imc_membus_del(H.bus);
  imc_memreg_del(H.reg);
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", H.dir);
  ck_assert_int_eq(system(cmd), 0);
}

static int send_text(peer *p, const char *to, const char *text, char *cmid) {
  return imc_client_send(p->c, to, NULL, (const uint8_t *)text, strlen(text),
                         NULL, cmid);
}

/* ------------------------------------------------------------------ */
/* Tests                                                                */
/* ------------------------------------------------------------------ */

START_TEST(upgrade_and_welcome) {
  peer a;
  peer_open(&a, "alice");
  ck_assert_int_eq(imc_client_get_state(a.c), IMC_CLIENT_STOPPED);
  ck_assert_int_eq(imc_client_next_timeout_ms(a.c), -1);
  go_online(&a);
  ck_assert_int_eq(a.n_states, 3);
  ck_assert_int_eq(a.states[0], IMC_CLIENT_CONNECTING);
  ck_assert_int_eq(a.states[1], IMC_CLIENT_HANDSHAKE);
  ck_assert_int_eq(a.states[2], IMC_CLIENT_ONLINE);
  ck_assert_str_eq(imc_client_get_user_id(a.c), "alice");
  ck_assert_int_eq(imc_client_want_sync(a.c), 1);
  /* The heartbeat is the next deadline: the Welcome's 30 s. */
  ck_assert_int_eq(imc_client_next_timeout_ms(a.c), 30000);
  ck_assert_int_eq(imc_client_start(a.c), IMC_ERR_CLOSED);
  ck_assert_int_eq(imc_client_stop(a.c), 0);
  pump(&a);
  ck_assert_int_eq(imc_client_get_state(a.c), IMC_CLIENT_STOPPED);
  peer_close(&a);
}
END_TEST

START_TEST(bad_token_fails) {
  peer a;
  memset(&a, 0, sizeof(a));
  a.user = "alice";
  a.auto_connect = 1;
  imc_client_options *o = peer_options(&a, NULL);
  ck_assert_int_eq(imc_client_options_set_token(o, "not.a.jwt"), 0);
  ck_assert_int_eq(imc_client_new(&a.c, o, NULL), 0);
  imc_client_options_del(o);
  ck_assert_int_eq(imc_client_start(a.c), 0);
  pump(&a);
  ck_assert_int_eq(imc_client_get_state(a.c), IMC_CLIENT_FAILED);
  ck_assert_int_eq(a.reasons[a.n_states - 1], IMC_ERR_AUTH);
  ck_assert_int_eq(imc_client_next_timeout_ms(a.c), -1); /* no reconnect */
  ck_assert_int_eq(imc_client_start(a.c), IMC_ERR_CLOSED);
  peer_close(&a);
}
END_TEST

START_TEST(bad_accept_refused) {
  peer a;
  peer_open(&a, "alice");
  ck_assert_int_eq(imc_client_start(a.c), 0);
  ck_assert_int_eq(imc_client_connected(a.c), 0);
  const uint8_t *d;
  ck_assert_uint_gt(imc_client_output(a.c, &d), 0);
  ck_assert(memcmp(d, "GET /ws HTTP/1.1\r\n", 18) == 0);
  const char *ans =
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
      "Connection: Upgrade\r\n"
      "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n";
  ck_assert_int_eq(imc_client_recv(a.c, (const uint8_t *)ans, strlen(ans)), 0);
  ck_assert_int_eq(imc_client_get_state(a.c), IMC_CLIENT_WAITING);
  ck_assert_int_eq(a.reasons[a.n_states - 1], IMC_ERR_PROTO);
  ck_assert_int_eq(imc_client_recv(a.c, (const uint8_t *)"x", 1),
                   IMC_ERR_CLOSED);
  peer_close(&a);
}
END_TEST

/* alice -> bob while bob is offline: SendAck, then STORED. */
START_TEST(send_ack_status_clears_outbox) {
  peer a;
  peer_open(&a, "alice");
  go_online(&a);
  char cmid[IMC_CLIENT_MSG_ID_LEN + 1];
  ck_assert_int_eq(send_text(&a, "bob", "hi", cmid), 0);
  ck_assert_uint_eq(strlen(cmid), 32);
  ck_assert_uint_eq(imc_client_outbox_size(a.c), 1);
  pump(&a);
  ck_assert_int_eq(a.sends, 1);
  ck_assert_str_eq(a.send_cmids[0], cmid);
  ck_assert_int_eq(a.send_acks, 1);
  ck_assert_int_eq(a.statuses, 1);
  ck_assert_int_eq(a.last_status, IMC_STORED);
  ck_assert_str_eq(a.status_cmid, cmid);
  ck_assert_uint_eq(imc_client_outbox_size(a.c), 0);
  /* Nothing is resent later. */
  advance(&a, NULL, 60000);
  ck_assert_int_eq(a.sends, 1);

  /* Now bob is online: DELIVERED once bob's SDK ACKs. */
  peer b;
  peer_open(&b, "bob");
  go_online(&b);
  ck_assert_int_eq(send_text(&a, "bob", "again", cmid), 0);
  pump2(&a, &b);
  ck_assert_int_eq(a.statuses, 2);
  ck_assert_int_eq(a.last_status, IMC_DELIVERED);
  ck_assert_int_eq(b.n_seen, 1);
  ck_assert_str_eq(b.seen_body[0], "again");
  ck_assert_int_eq(b.acks_sent, 1);
  /* bob never synced seq 1 (stored offline): a gap to repair. */
  ck_assert_uint_eq(b.seen_seq[0], 2);
  ck_assert_uint_eq(b.seen_flags[0] & IMC_CLIENT_MSG_GAP, IMC_CLIENT_MSG_GAP);
  peer_close(&a);
  peer_close(&b);
}
END_TEST

/* The link dies before the SendAck comes back; the reconnect resends. */
START_TEST(resend_after_reconnect) {
  peer a, b;
  peer_open(&a, "alice");
  peer_open(&b, "bob");
  go_online(&a);
  go_online(&b);
  char cmid[IMC_CLIENT_MSG_ID_LEN + 1];
  a.cut_down = 1; /* answers are lost */
  ck_assert_int_eq(send_text(&a, "bob", "once", cmid), 0);
  pump2(&a, &b);
  ck_assert_int_eq(a.sends, 1);
  ck_assert_int_eq(a.send_acks, 0);
  ck_assert_int_eq(b.n_seen, 1); /* the server did route it */
  /* The host notices the dead link. */
  ck_assert_int_eq(imc_client_disconnected(a.c, IMC_ERR_IO), 0);
  ck_assert_int_eq(imc_client_get_state(a.c), IMC_CLIENT_WAITING);
  a.cut_down = 0;
  pump2(&a, &b);
  int64_t wait = imc_client_next_timeout_ms(a.c);
  ck_assert_int_ge(wait, 250);
  ck_assert_int_le(wait, 500);
  advance(&a, &b, wait);
  ck_assert_int_eq(imc_client_get_state(a.c), IMC_CLIENT_ONLINE);
  ck_assert_int_eq(a.sends, 2);
  ck_assert_str_eq(a.send_cmids[1], cmid);
  ck_assert_int_eq(a.send_acks, 1);
  ck_assert_str_eq(a.ack_msg_id, b.seen[0]); /* the server's dedup */
  ck_assert_uint_eq(imc_client_outbox_size(a.c), 0);
  ck_assert_int_eq(b.n_seen, 1);
  peer_close(&a);
  peer_close(&b);
}
END_TEST

/* No SendAck within the resend time: the same client_msg_id again. */
START_TEST(resend_after_timeout) {
  peer a;
  peer_open(&a, "alice");
  go_online(&a);
  a.cut_up = 1; /* the request never reaches the server */
  char cmid[IMC_CLIENT_MSG_ID_LEN + 1];
  ck_assert_int_eq(send_text(&a, "bob", "x", cmid), 0);
  pump(&a);
  ck_assert_int_eq(a.sends, 0);
  a.cut_up = 0;
  advance(&a, NULL, 15000);
  ck_assert_int_eq(a.sends, 1);
  ck_assert_str_eq(a.send_cmids[0], cmid);
  ck_assert_int_eq(a.statuses, 1);
  ck_assert_uint_eq(imc_client_outbox_size(a.c), 0);
  peer_close(&a);
}
END_TEST

static imc_msg test_msg(const char *id, uint64_t seq, const char *body) {
  imc_msg m = {.struct_size = sizeof(imc_msg),
               .msg_id = id,
               .conversation_id = "p:alice:bob",
               .seq = seq,
               .from_user = "alice",
               .to_user = "bob",
               .group_id = "",
               .body = (const uint8_t *)body,
               .body_len = strlen(body),
               .content_type = "text/plain",
               .sent_at_ms = T0,
               .client_msg_id = "c",
               .from_device = "default"};
  return m;
}

START_TEST(inbox_dedup_and_gap) {
  peer b;
  peer_open(&b, "bob");
  go_online(&b);
  imc_msg m1 = test_msg("m1", 1, "one");
  ck_assert_int_eq(imc_gateway_deliver(H.gw, "bob", NULL, &m1), 1);
  pump(&b);
  ck_assert_int_eq(imc_gateway_deliver(H.gw, "bob", NULL, &m1), 1);
  pump(&b);
  ck_assert_int_eq(b.n_seen, 1);    /* surfaced once */
  ck_assert_int_eq(b.acks_sent, 2); /* ACKed twice */
  ck_assert_uint_eq(b.seen_flags[0], 0);
  imc_msg m3 = test_msg("m3", 3, "three");
  ck_assert_int_eq(imc_gateway_deliver(H.gw, "bob", NULL, &m3), 1);
  pump(&b);
  ck_assert_int_eq(b.n_seen, 2);
  ck_assert_uint_eq(b.seen_flags[1], IMC_CLIENT_MSG_GAP);
  ck_assert_uint_eq(b.seen_last[1], 1);
  /* The dedup set is in the store: a new client on it still knows m1. */
  peer_close(&b);
  peer_open(&b, "bob");
  go_online(&b);
  ck_assert_int_eq(imc_gateway_deliver(H.gw, "bob", NULL, &m1), 1);
  pump(&b);
  ck_assert_int_eq(b.n_seen, 0);
  ck_assert_int_eq(b.acks_sent, 1);
  peer_close(&b);
}
END_TEST

/* The same sync, asking the gateway for JSON pages instead. */
static int sync_all_json(peer *p) {
  int pages = 0, rv;
  do {
    const uint8_t *req;
    size_t len;
    ck_assert_int_eq(imc_client_sync_request(p->c, &req, &len), 0);
    char *r = strndup((const char *)req, len);
    char *acc = strstr(r, "application/x-protobuf");
    ck_assert_ptr_nonnull(acc);
    memcpy(acc, "application/json      ", 22); /* same length */
    uint8_t *ans;
    size_t alen = http((const uint8_t *)r, len, &ans);
    free(r);
    ck_assert_ptr_nonnull(strstr((const char *)ans, "application/json"));
    rv = imc_client_sync_response(p->c, ans, alen);
    free(ans);
    ck_assert_int_ge(rv, 0);
    pages++;
  } while (rv == 1);
  return pages;
}

static void count_msg(void *ud, const imc_msg *m) {
  (void)m;
  (*(int *)ud)++;
}

START_TEST(gap_repaired_from_history) {
  peer a, b;
  peer_open(&a, "alice");
  go_online(&a);
  for (int i = 1; i <= 3; i++) {
    char text[16];
    snprintf(text, sizeof(text), "old%d", i);
    ck_assert_int_eq(send_text(&a, "bob", text, NULL), 0);
  }
  pump(&a);
  ck_assert_int_eq(a.statuses, 3);
  peer_open(&b, "bob");
  go_online(&b);
  ck_assert_int_eq(send_text(&a, "bob", "new", NULL), 0);
  pump2(&a, &b);
  ck_assert_int_eq(b.n_seen, 1);
  ck_assert_uint_eq(b.seen_seq[0], 4);
  ck_assert_uint_eq(b.seen_flags[0], IMC_CLIENT_MSG_GAP);
  ck_assert_uint_eq(b.seen_last[0], 0);
  /* The host repairs from last_seq: the history page feeds the inbox. */
  const uint8_t *req;
  size_t len;
  ck_assert_int_eq(imc_client_history_request(b.c, "p:alice:bob",
                                              b.seen_last[0], &req, &len),
                   0);
  uint8_t *ans;
  size_t alen = http(req, len, &ans);
  uint64_t next = 0;
  ck_assert_int_eq(
      imc_client_history_response(b.c, ans, alen, NULL, NULL, &next), 0);
  free(ans);
  ck_assert_uint_eq(next, 4);
  ck_assert_int_eq(b.n_seen, 4); /* old1..old3, not "new" again */
  for (int i = 1; i <= 3; i++) {
    char text[16];
    snprintf(text, sizeof(text), "old%d", i);
    ck_assert_str_eq(b.seen_body[i], text);
    ck_assert_uint_eq(b.seen_flags[i], IMC_CLIENT_MSG_HISTORY);
  }
  /* The offline sync finds them all seen. */
  ck_assert_int_eq(sync_all(&b), 1);
  ck_assert_int_eq(b.n_seen, 4);
  peer_close(&a);
  peer_close(&b);
}
END_TEST

/* Refused for good: the send leaves the outbox with an error. */
START_TEST(send_refused) {
  peer a;
  peer_open(&a, "alice");
  go_online(&a);
  char cmid[IMC_CLIENT_MSG_ID_LEN + 1];
  ck_assert_int_eq(imc_client_send(a.c, NULL, "nogroup", (const uint8_t *)"x",
                                   1, NULL, cmid),
                   0);
  pump(&a);
  ck_assert_int_eq(a.send_errors, 1);
  ck_assert_int_eq(a.last_error, IMC_ERR_FORBIDDEN);
  ck_assert_uint_eq(imc_client_outbox_size(a.c), 0);
  advance(&a, NULL, 60000);
  ck_assert_int_eq(a.sends, 1);
  peer_close(&a);
}
END_TEST

START_TEST(offline_pages) {
  peer a, b;
  peer_open(&a, "alice");
  go_online(&a);
  for (int i = 0; i < 5; i++) {
    char text[16];
    snprintf(text, sizeof(text), "m%d", i);
    ck_assert_int_eq(send_text(&a, "bob", text, NULL), 0);
  }
  pump(&a);
  ck_assert_int_eq(a.statuses, 5);
  memset(&b, 0, sizeof(b));
  b.user = "bob";
  b.auto_connect = 1;
  imc_client_options *o = peer_options(&b, NULL);
  ck_assert_int_eq(imc_client_options_set_page_limit(o, 2), 0);
  ck_assert_int_eq(imc_client_new(&b.c, o, NULL), 0);
  imc_client_options_del(o);
  go_online(&b);
  ck_assert_int_eq(imc_client_want_sync(b.c), 1);
  ck_assert_int_eq(sync_all(&b), 3);
  ck_assert_int_eq(b.n_seen, 5);
  for (int i = 0; i < 5; i++) {
    char text[16];
    snprintf(text, sizeof(text), "m%d", i);
    ck_assert_str_eq(b.seen_body[i], text);
    ck_assert_uint_eq(b.seen_seq[i], (uint64_t)i + 1);
    ck_assert_uint_eq(b.seen_flags[i], IMC_CLIENT_MSG_OFFLINE);
  }
  /* The cursor is kept: the next sync finds nothing new. */
  peer_close(&b);
  peer_open(&b, "bob");
  go_online(&b);
  ck_assert_int_eq(sync_all(&b), 1);
  ck_assert_int_eq(b.n_seen, 0);

  /* History of the conversation, as a viewer. */
  const uint8_t *req;
  size_t len;
  ck_assert_int_eq(
      imc_client_history_request(b.c, "p:alice:bob", 0, &req, &len), 0);
  uint8_t *ans;
  size_t alen = http(req, len, &ans);
  int count = 0;
  uint64_t next = 0;
  ck_assert_int_eq(
      imc_client_history_response(b.c, ans, alen, count_msg, &count, &next), 0);
  free(ans);
  ck_assert_int_eq(count, 5);
  ck_assert_uint_eq(next, 5);
  ck_assert_int_eq(b.n_seen, 0); /* a viewer records nothing */
  ck_assert_int_eq(imc_client_history_request(b.c, "bad", 0, &req, &len),
                   IMC_ERR_INVALID_ARGUMENT);
  peer_close(&a);
  peer_close(&b);
}
END_TEST

START_TEST(offline_pages_json) {
  peer a, b;
  peer_open(&a, "alice");
  go_online(&a);
  static const uint8_t bin[] = {'h', 'i', 0x00, 0xff, '"', '\\'};
  ck_assert_int_eq(
      imc_client_send(a.c, "bob", NULL, bin, sizeof(bin), "app/bin", NULL), 0);
  ck_assert_int_eq(send_text(&a, "bob", "caf\xc3\xa9 \"q\"", NULL), 0);
  ck_assert_int_eq(send_text(&a, "bob", "three", NULL), 0);
  pump(&a);
  memset(&b, 0, sizeof(b));
  b.user = "bob";
  b.auto_connect = 1;
  imc_client_options *o = peer_options(&b, NULL);
  ck_assert_int_eq(imc_client_options_set_page_limit(o, 2), 0);
  ck_assert_int_eq(imc_client_new(&b.c, o, NULL), 0);
  imc_client_options_del(o);
  go_online(&b);
  ck_assert_int_eq(sync_all_json(&b), 2);
  ck_assert_int_eq(imc_client_want_sync(b.c), 0);
  ck_assert_int_eq(b.n_seen, 3);
  ck_assert(memcmp(b.seen_body[0], "hi\0\xff\"\\", 6) == 0);
  ck_assert_str_eq(b.seen_body[1], "caf\xc3\xa9 \"q\"");
  ck_assert_str_eq(b.seen_body[2], "three");
  ck_assert_uint_eq(b.seen_seq[2], 3);
  /* JSON and protobuf pages share the cursor. */
  ck_assert_int_eq(sync_all(&b), 1);
  ck_assert_int_eq(b.n_seen, 3);
  peer_close(&a);
  peer_close(&b);
}
END_TEST

/* Sends made offline survive a restart and go out on the next connect. */
START_TEST(outbox_survives_reopen) {
  peer a, b;
  peer_open(&a, "alice");
  char cmid[IMC_CLIENT_MSG_ID_LEN + 1];
  ck_assert_int_eq(send_text(&a, "bob", "persisted", cmid), 0);
  ck_assert_int_eq(a.sends, 0);
  peer_close(&a);
  peer_open(&a, "alice");
  ck_assert_uint_eq(imc_client_outbox_size(a.c), 1);
  peer_open(&b, "bob");
  go_online(&b);
  ck_assert_int_eq(imc_client_start(a.c), 0);
  pump2(&a, &b);
  ck_assert_int_eq(a.sends, 1);
  ck_assert_str_eq(a.send_cmids[0], cmid);
  ck_assert_int_eq(b.n_seen, 1);
  ck_assert_str_eq(b.seen_body[0], "persisted");
  ck_assert_uint_eq(imc_client_outbox_size(a.c), 0);
  peer_close(&a);
  peer_open(&a, "alice");
  ck_assert_uint_eq(imc_client_outbox_size(a.c), 0);
  peer_close(&a);
  peer_close(&b);
}
END_TEST

START_TEST(heartbeat_and_backoff) {
  peer a;
  memset(&a, 0, sizeof(a));
  a.user = "alice";
  a.auto_connect = 1;
  imc_client_options *o = peer_options(&a, NULL);
  ck_assert_int_eq(imc_client_options_set_heartbeat(o, 1000, 500), 0);
  ck_assert_int_eq(imc_client_options_set_backoff(o, 100, 1000), 0);
  ck_assert_int_eq(imc_client_new(&a.c, o, NULL), 0);
  imc_client_options_del(o);
  go_online(&a);
  ck_assert_int_eq(imc_client_next_timeout_ms(a.c), 1000);
  advance(&a, NULL, 1000);
  ck_assert_int_eq(a.pings, 1);
  ck_assert_int_eq(imc_client_get_state(a.c), IMC_CLIENT_ONLINE);
  advance(&a, NULL, 1000);
  ck_assert_int_eq(a.pings, 2);
  /* The server goes silent: no Pong within 500 ms drops the link. */
  a.cut_down = 1;
  advance(&a, NULL, 1000);
  ck_assert_int_eq(a.pings, 3);
  ck_assert_int_eq(imc_client_get_state(a.c), IMC_CLIENT_ONLINE);
  a.auto_connect = 0; /* connects fail from now on */
  advance(&a, NULL, 500);
  ck_assert_int_eq(imc_client_get_state(a.c), IMC_CLIENT_WAITING);
  ck_assert_int_eq(a.reasons[a.n_states - 1], IMC_ERR_EXPIRED);
  a.cut_down = 0;
  /* Waits double from 100 up to 1000 ms, each in [w/2, w]. */
  int64_t expect[] = {100, 200, 400, 800, 1000, 1000, 1000};
  for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++) {
    ck_assert_int_eq(imc_client_get_state(a.c), IMC_CLIENT_WAITING);
    int64_t w = imc_client_next_timeout_ms(a.c);
    ck_assert_int_ge(w, expect[i] / 2);
    ck_assert_int_le(w, expect[i]);
    test_clock_advance(&H.tc, w);
    ck_assert_int_eq(imc_client_on_timeout(a.c), 0);
    ck_assert_int_eq(imc_client_get_state(a.c), IMC_CLIENT_CONNECTING);
    ck_assert_int_eq(imc_client_disconnected(a.c, IMC_ERR_IO), 0);
  }
  /* A connect that hangs ends with the handshake timeout. */
  int64_t w = imc_client_next_timeout_ms(a.c);
  test_clock_advance(&H.tc, w);
  imc_client_on_timeout(a.c);
  ck_assert_int_eq(imc_client_get_state(a.c), IMC_CLIENT_CONNECTING);
  ck_assert_int_eq(imc_client_next_timeout_ms(a.c), 10000);
  test_clock_advance(&H.tc, 10000);
  imc_client_on_timeout(a.c);
  ck_assert_int_eq(imc_client_get_state(a.c), IMC_CLIENT_WAITING);
  ck_assert_int_eq(a.reasons[a.n_states - 1], IMC_ERR_EXPIRED);
  /* And a success resets the backoff. */
  a.auto_connect = 1;
  ck_assert_int_eq(imc_client_start(a.c), 0);
  pump(&a);
  ck_assert_int_eq(imc_client_get_state(a.c), IMC_CLIENT_ONLINE);
  ck_assert_int_eq(imc_client_disconnected(a.c, 0), 0);
  ck_assert_int_le(imc_client_next_timeout_ms(a.c), 100);
  peer_close(&a);
}
END_TEST

START_TEST(bad_arguments) {
  imc_client_options *o;
  imc_client *c;
  ck_assert_int_eq(imc_client_options_new(NULL, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_client_options_new(&o, NULL), 0);
  ck_assert_int_eq(imc_client_new(&c, o, NULL), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_null(c);
  ck_assert_int_eq(imc_client_options_set_token(o, "a b"),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_client_options_set_ws_path(o, "ws"),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_client_options_set_backoff(o, 0, 10),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_client_options_set_backoff(o, 100, 10),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_client_options_set_page_limit(o, 1001),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_client_options_set_store_path(o, "/nonexistent/x/y.db"),
                   0);
  ck_assert_int_eq(imc_client_options_set_token(o, "t"), 0);
  ck_assert_int_eq(imc_client_new(&c, o, NULL), IMC_ERR_IO);
  ck_assert_int_eq(imc_client_options_set_store_path(o, ":memory:"), 0);
  ck_assert_int_eq(imc_client_new(&c, o, NULL), 0);
  imc_client_options_del(o);
  ck_assert_int_eq(
      imc_client_send(c, "bob", "g", (const uint8_t *)"x", 1, NULL, NULL),
      IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(
      imc_client_send(c, NULL, NULL, (const uint8_t *)"x", 1, NULL, NULL),
      IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(
      imc_client_send(c, "b b", NULL, (const uint8_t *)"x", 1, NULL, NULL),
      IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_client_connected(c), IMC_ERR_CLOSED);
  ck_assert_int_eq(imc_client_disconnected(c, 0), IMC_ERR_CLOSED);
  ck_assert_int_eq(
      imc_client_sync_response(c,
                               (const uint8_t *)"HTTP/1.1 401 "
                                                "Unauthorized\r\nContent-"
                                                "Length: 0\r\n\r\n",
                               48),
      IMC_ERR_AUTH);
  ck_assert_int_eq(
      imc_client_sync_response(c, (const uint8_t *)"garbage\r\n\r\n", 11),
      IMC_ERR_PROTO);
  ck_assert_int_eq(imc_client_sync_response(
                       c,
                       (const uint8_t *)"HTTP/1.1 200 OK\r\nContent-Length: "
                                        "3\r\n\r\n\xff\xff\xff",
                       41),
                   IMC_ERR_PROTO);
  imc_client_del(c);
  imc_client_del(NULL);
  imc_client_options_del(NULL);
}
END_TEST

/*
 * Every allocation of the client fails in turn, through creation,
 * connecting, a send and an offline sync: no crash, no leak, and the run
 * without a failure works.
 */
START_TEST(failing_allocations) {
  int completed = 0;
  for (long fail_at = 0; fail_at < 2000 && !completed; fail_at++) {
    test_mem tm;
    test_mem_init(&tm);
    tm.fail_at = fail_at;
    peer a;
    memset(&a, 0, sizeof(a));
    a.user = "alice";
    a.auto_connect = 1;
    imc_client_options *o = NULL;
    int rv = imc_client_options_new(&o, &tm.mem);
    char path[128];
    db_path(path, sizeof(path), "alloc");
    unlink(path); /* each run starts from an empty store */
    char wal[160];
    snprintf(wal, sizeof(wal), "%s-wal", path);
    unlink(wal);
    if (rv == 0)
      rv = imc_client_options_set_store_path(o, path);
    if (rv == 0)
      rv = imc_client_options_set_token(o, token_for("alice"));
    if (rv == 0)
      rv = imc_client_options_set_callbacks(o, &callbacks, &a);
    if (rv == 0)
      rv = imc_client_options_set_clock(o, &H.tc.clock);
    if (rv == 0)
      rv = imc_client_options_set_random(o, t_random, &H.rnd);
    if (rv == 0)
      rv = imc_client_new(&a.c, o, &tm.mem);
    imc_client_options_del(o);
    if (rv != 0) {
      ck_assert_int_eq(rv, IMC_ERR_NOMEM);
      ck_assert_int_eq(tm.live, 0);
      continue;
    }
    int ok = imc_client_start(a.c) == 0;
    pump(&a);
    ok = ok && imc_client_get_state(a.c) == IMC_CLIENT_ONLINE;
    /* A recipient per run, so the history page read below stays one
     * message long. */
    char to[32], conv[48];
    snprintf(to, sizeof(to), "u%ld", fail_at);
    snprintf(conv, sizeof(conv), "p:alice:%s", to);
    rv = send_text(&a, to, "x", NULL);
    ck_assert(rv == 0 || rv == IMC_ERR_NOMEM);
    ok = ok && rv == 0;
    pump(&a);
    if (imc_client_get_state(a.c) == IMC_CLIENT_ONLINE) {
      const uint8_t *req;
      size_t len;
      rv = imc_client_sync_request(a.c, &req, &len);
      ck_assert(rv == 0 || rv == IMC_ERR_NOMEM);
      if (rv == 0) {
        uint8_t *ans;
        size_t alen = http(req, len, &ans);
        rv = imc_client_sync_response(a.c, ans, alen);
        free(ans);
        /* protobuf-c reports a failed allocation as a bad page */
        ck_assert(rv == 0 || rv == IMC_ERR_NOMEM || rv == IMC_ERR_PROTO);
      }
      ok = ok && rv == 0;
      rv = imc_client_history_request(a.c, conv, 0, &req, &len);
      ck_assert(rv == 0 || rv == IMC_ERR_NOMEM);
      if (rv == 0) {
        uint8_t *ans;
        size_t alen = http(req, len, &ans);
        int count = 0;
        rv = imc_client_history_response(a.c, ans, alen, count_msg, &count,
                                         NULL);
        free(ans);
        ck_assert(rv == 0 || rv == IMC_ERR_PROTO);
        ck_assert(rv != 0 || !ok || count == 1);
      }
      ok = ok && rv == 0;
    } else {
      ok = 0;
    }
    ok = ok && imc_client_outbox_size(a.c) == 0;
    peer_close(&a);
    ck_assert_int_eq(tm.live, 0);
    if (ok && tm.count <= fail_at)
      completed = 1;
  }
  ck_assert(completed);
}
END_TEST

static Suite *client_suite(void) {
  Suite *s = suite_create("client");
  TCase *tc = tcase_create("client");
  tcase_add_checked_fixture(tc, h_setup, h_teardown);
  tcase_add_test(tc, upgrade_and_welcome);
  tcase_add_test(tc, bad_token_fails);
  tcase_add_test(tc, bad_accept_refused);
  tcase_add_test(tc, send_ack_status_clears_outbox);
  tcase_add_test(tc, resend_after_reconnect);
  tcase_add_test(tc, resend_after_timeout);
  tcase_add_test(tc, inbox_dedup_and_gap);
  tcase_add_test(tc, offline_pages);
  tcase_add_test(tc, offline_pages_json);
  tcase_add_test(tc, gap_repaired_from_history);
  tcase_add_test(tc, send_refused);
  tcase_add_test(tc, outbox_survives_reopen);
  tcase_add_test(tc, heartbeat_and_backoff);
  tcase_add_test(tc, bad_arguments);
  tcase_add_test(tc, failing_allocations);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(client_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
