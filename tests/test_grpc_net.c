/*
 * The hosts' gRPC sockets (hosts/common/grpc_net.c) on a real hloop
 * driven with hloop_run_once: an echo server and a peer over loopback
 * (IPv4 and IPv6), many calls at once, large messages, deadlines, work
 * queued by a later hook, the server going away and coming back, GOAWAY
 * from a raw HTTP/2 listener, a peer with nobody listening, and bad
 * addresses. Then mutual TLS (certificates made by grpc_certs.sh, in
 * $IMC_GRPC_CERTS): calls go through, large ones too; a client without a
 * certificate or with one of another CA, a server whose certificate does
 * not name the address dialled, and a plaintext client fail and no call
 * reaches a handler; a handshake never finished is closed.
 */
#include "grpc_net.h"
#include "log.h"

#include <check.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ECHO "/imchat.test.Echo/Echo"
#define HOLD "/imchat.test.Echo/Hold"
#define MAX_HELD 256

static hloop *L;

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Turns the loop until cond holds or ms pass, then asserts cond. */
#define RUN_UNTIL(cond, ms)                                                    \
  do {                                                                         \
    int64_t end_ = now_ms() + (ms);                                            \
    while (!(cond) && now_ms() < end_)                                         \
      ck_assert_int_eq(hloop_run_once(L, 50), 0);                              \
    ck_assert_msg((cond), "timed out waiting for %s", #cond);                  \
  } while (0)

/* ------------------------------------------------------------------ */
/* Log lines                                                            */
/* ------------------------------------------------------------------ */

static int n_connected, n_lost, n_cannot;
static char tls_log[8192]; /* the lines about TLS failures */

static void on_log(void *ud, imc_log_level level, const char *line) {
  (void)ud;
  if (level == IMC_LOG_WARN && strstr(line, "TLS") &&
      strlen(tls_log) + strlen(line) + 2 < sizeof(tls_log)) {
    strcat(tls_log, line);
    strcat(tls_log, "\n");
  }
  if (strstr(line, ": connected"))
    n_connected++;
  else if (strstr(line, "cannot connect"))
    n_cannot++;
  else if (strstr(line, "grpc peer") && level == IMC_LOG_WARN)
    n_lost++;
  hlog_stderr(level, line);
}

static const hlog_sink sink = {IMC_LOG_INFO, on_log, NULL};

/* ------------------------------------------------------------------ */
/* The server                                                           */
/* ------------------------------------------------------------------ */

static imc_grpc_call *held[MAX_HELD];
static int nheld;
static int n_served; /* calls that reached h_echo */

static void h_echo(void *ud, imc_grpc_call *call, const uint8_t *req,
                   size_t len) {
  (void)ud;
  n_served++;
  imc_grpc_call_reply(call, IMC_GRPC_OK, NULL, req, len);
}

/* Kept for the test to answer. */
static void h_hold(void *ud, imc_grpc_call *call, const uint8_t *req,
                   size_t len) {
  (void)ud;
  (void)req;
  (void)len;
  ck_assert_int_lt(nheld, MAX_HELD);
  held[nheld++] = call;
}

static void answer_held(int status) {
  for (int i = 0; i < nheld; i++)
    ck_assert_int_eq(
        imc_grpc_call_reply(held[i], status, NULL, (const uint8_t *)"ok", 2),
        0);
  nheld = 0;
}

/* A server of ECHO and HOLD, plaintext or (tls) mutual TLS. */
static int server_new_tls(hgrpc_server **out, const char *addr, hstls *tls,
                          char *bound, size_t cap) {
  imc_grpc_server_options *o = NULL;
  ck_assert_int_eq(imc_grpc_server_options_new(&o, NULL), 0);
  ck_assert_int_eq(imc_grpc_server_options_add_method(o, ECHO, h_echo, NULL),
                   0);
  ck_assert_int_eq(imc_grpc_server_options_add_method(o, HOLD, h_hold, NULL),
                   0);
  int rv = hgrpc_server_new_tls(out, L, o, addr, tls, bound, cap);
  imc_grpc_server_options_del(o);
  return rv;
}

static int server_new(hgrpc_server **out, const char *addr, char *bound,
                      size_t cap) {
  return server_new_tls(out, addr, NULL, bound, cap);
}

/* ------------------------------------------------------------------ */
/* The peer's owner and calls                                           */
/* ------------------------------------------------------------------ */

typedef struct owner {
  imc_grpc_client *c;
  int gains, losses;
} owner;

static void on_client(void *ud, imc_grpc_client *c) {
  owner *o = ud;
  if (c) {
    ck_assert_ptr_null(o->c);
    o->gains++;
  } else {
    ck_assert_ptr_nonnull(o->c);
    /* Still alive when we are told (ASan sees a use after free). */
    (void)imc_grpc_client_pending(o->c);
    o->losses++;
  }
  o->c = c;
}

typedef struct result {
  int n;
  int status;
  uint8_t resp[64];
  size_t len;
} result;

static void on_done(void *ud, int status, int error, const char *message,
                    const uint8_t *resp, size_t len) {
  result *r = ud;
  (void)error;
  (void)message;
  r->n++;
  r->status = status;
  r->len = len;
  if (len <= sizeof(r->resp) && len > 0)
    memcpy(r->resp, resp, len);
}

static int count_done(const result *r, int n) {
  int done = 0;
  for (int i = 0; i < n; i++)
    done += r[i].n;
  return done;
}

static void call(owner *o, const char *method, const char *text,
                 int64_t deadline_ms, result *r) {
  ck_assert_ptr_nonnull(o->c);
  ck_assert_int_eq(imc_grpc_client_call(o->c, method, (const uint8_t *)text,
                                        strlen(text), deadline_ms, on_done, r),
                   0);
}

static void echo_ok(owner *o, const char *text) {
  result r = {0};
  call(o, ECHO, text, 5000, &r);
  RUN_UNTIL(r.n == 1, 10000);
  ck_assert_int_eq(r.status, IMC_GRPC_OK);
  ck_assert_uint_eq(r.len, strlen(text));
  ck_assert_mem_eq(r.resp, text, r.len);
}

static void setup(void) {
  ck_assert_int_eq(hloop_new(&L), 0);
  nheld = 0;
  n_connected = n_lost = n_cannot = n_served = 0;
  tls_log[0] = '\0';
  hlog_bind(&sink);
}

static void teardown(void) {
  hloop_del(L);
  hlog_bind(NULL);
}

/* ------------------------------------------------------------------ */
/* Cases                                                                */
/* ------------------------------------------------------------------ */

static void round_trip_on(const char *listen, const char *prefix) {
  char bound[64];
  hgrpc_server *s = NULL;
  hgrpc_peer *p = NULL;
  owner o = {0};
  ck_assert_int_eq(server_new(&s, listen, bound, sizeof(bound)), 0);
  ck_assert_msg(strncmp(bound, prefix, strlen(prefix)) == 0, "bound %s", bound);
  ck_assert_int_eq(hgrpc_peer_new(&p, L, bound, on_client, &o), 0);
  ck_assert_str_eq(hgrpc_peer_addr(p), bound);
  ck_assert_int_eq(o.gains, 0); /* never from within hgrpc_peer_new */
  RUN_UNTIL(o.c != NULL, 5000);
  echo_ok(&o, "hello");
  echo_ok(&o, "");
  ck_assert_int_eq(n_connected, 1);
  hgrpc_peer_del(p);
  ck_assert_int_eq(o.losses, 1); /* on_client(NULL) from the del */
  ck_assert_ptr_null(o.c);
  hgrpc_server_del(s);
}

START_TEST(calls_round_trip_over_ipv4) {
  round_trip_on("127.0.0.1:0", "127.0.0.1:");
}
END_TEST

START_TEST(calls_round_trip_over_ipv6) {
  round_trip_on("[::1]:0", "[::1]:");
}
END_TEST

START_TEST(a_hundred_concurrent_calls) {
  enum { N = 100 };
  char bound[64], text[N][16];
  static result r[N];
  hgrpc_server *s = NULL;
  hgrpc_peer *p = NULL;
  owner o = {0};
  memset(r, 0, sizeof(r));
  ck_assert_int_eq(server_new(&s, "127.0.0.1:0", bound, sizeof(bound)), 0);
  ck_assert_int_eq(hgrpc_peer_new(&p, L, bound, on_client, &o), 0);
  RUN_UNTIL(o.c != NULL, 5000);
  for (int i = 0; i < N; i++) {
    snprintf(text[i], sizeof(text[i]), "call-%d", i);
    call(&o, ECHO, text[i], 10000, &r[i]);
  }
  RUN_UNTIL(count_done(r, N) == N, 20000);
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(r[i].n, 1);
    ck_assert_int_eq(r[i].status, IMC_GRPC_OK);
    ck_assert_uint_eq(r[i].len, strlen(text[i]));
    ck_assert_mem_eq(r[i].resp, text[i], r[i].len);
  }
  hgrpc_peer_del(p);
  hgrpc_server_del(s);
}
END_TEST

/* Several large messages at once: more than the sockets buffer, so
 * writes come back short and wait for EPOLLOUT on both sides. */
typedef struct big {
  int n, status;
  size_t len;
  int same;
  const uint8_t *sent;
} big;

static void on_big(void *ud, int status, int error, const char *message,
                   const uint8_t *resp, size_t len) {
  big *b = ud;
  (void)error;
  (void)message;
  b->n++;
  b->status = status;
  b->len = len;
  b->same = len > 0 && memcmp(resp, b->sent, len) == 0;
}

static int count_big(const big *b, int n) {
  int done = 0;
  for (int i = 0; i < n; i++)
    done += b[i].n;
  return done;
}

static void large_messages_on(hstls *tls) {
  enum { N = 8, SIZE = 1 << 20 };
  char bound[64];
  hgrpc_server *s = NULL;
  hgrpc_peer *p = NULL;
  owner o = {0};
  big b[N];
  uint8_t *data = malloc(SIZE);
  ck_assert_ptr_nonnull(data);
  for (size_t i = 0; i < SIZE; i++)
    data[i] = (uint8_t)(i * 131 + 7);
  ck_assert_int_eq(server_new_tls(&s, "127.0.0.1:0", tls, bound, sizeof(bound)),
                   0);
  ck_assert_int_eq(hgrpc_peer_new_tls(&p, L, bound, tls, on_client, &o), 0);
  RUN_UNTIL(o.c != NULL, 5000);
  for (int i = 0; i < N; i++) {
    b[i] = (big){.sent = data};
    ck_assert_int_eq(
        imc_grpc_client_call(o.c, ECHO, data, SIZE, 30000, on_big, &b[i]), 0);
  }
  RUN_UNTIL(count_big(b, N) == N, 30000);
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(b[i].status, IMC_GRPC_OK);
    ck_assert_uint_eq(b[i].len, SIZE);
    ck_assert(b[i].same);
  }
  hgrpc_peer_del(p);
  hgrpc_server_del(s);
  free(data);
}

START_TEST(large_messages_both_ways) {
  large_messages_on(NULL);
}
END_TEST

/* Deadlines wake the loop through the hooks: a call the server holds
 * ends DEADLINE_EXCEEDED after its deadline, though the loop was allowed
 * to sleep far longer. */
START_TEST(deadlines_wake_the_loop) {
  char bound[64];
  hgrpc_server *s = NULL;
  hgrpc_peer *p = NULL;
  owner o = {0};
  result r = {0};
  ck_assert_int_eq(server_new(&s, "127.0.0.1:0", bound, sizeof(bound)), 0);
  ck_assert_int_eq(hgrpc_peer_new(&p, L, bound, on_client, &o), 0);
  RUN_UNTIL(o.c != NULL, 5000);
  call(&o, HOLD, "x", 200, &r);
  int64_t t0 = now_ms();
  while (r.n == 0 && now_ms() - t0 < 5000)
    ck_assert_int_eq(hloop_run_once(L, 3000), 0);
  ck_assert_int_eq(r.n, 1);
  ck_assert_int_eq(r.status, IMC_GRPC_DEADLINE_EXCEEDED);
  ck_assert_int_lt(now_ms() - t0, 2000);
  /* The server's own deadline ended the call for it too. */
  ck_assert_int_eq(nheld, 1);
  RUN_UNTIL(imc_grpc_call_cancelled(held[0]), 5000);
  answer_held(IMC_GRPC_CANCELLED);
  ck_assert_uint_eq(hgrpc_server_pending(s), 0);
  hgrpc_peer_del(p);
  hgrpc_server_del(s);
}
END_TEST

/* A hook added after the server's and the peer's: answers held calls and
 * starts calls when asked, later in the turn than their flushes. */
static int answer_now, call_now;
static owner *late_owner;
static result late_r;

static int64_t late_next(void *ud) {
  (void)ud;
  return (answer_now && nheld > 0) || call_now ? 0 : -1;
}

static void late_run(void *ud) {
  (void)ud;
  if (answer_now && nheld > 0) {
    answer_held(IMC_GRPC_OK);
    answer_now = 0;
  }
  if (call_now) {
    call(late_owner, ECHO, "late", 5000, &late_r);
    call_now = 0;
  }
}

/* Runs the loop, each turn allowed to sleep 3 s, until *n is 1; returns
 * the milliseconds it took. */
static int64_t time_until_done(const int *n) {
  int64_t t0 = now_ms();
  while (*n == 0 && now_ms() - t0 < 10000)
    ck_assert_int_eq(hloop_run_once(L, 3000), 0);
  ck_assert_int_eq(*n, 1);
  return now_ms() - t0;
}

START_TEST(work_from_a_later_hook_leaves_before_the_loop_sleeps) {
  char bound[64];
  hgrpc_server *s = NULL;
  hgrpc_peer *p = NULL;
  owner o = {0};
  result r = {0};
  ck_assert_int_eq(server_new(&s, "127.0.0.1:0", bound, sizeof(bound)), 0);
  ck_assert_int_eq(hgrpc_peer_new(&p, L, bound, on_client, &o), 0);
  ck_assert_int_eq(hloop_add_hook(L, late_next, late_run, NULL), 0);
  RUN_UNTIL(o.c != NULL, 5000);
  /* An answer from the later hook. */
  call(&o, HOLD, "x", 0, &r);
  RUN_UNTIL(nheld == 1, 5000);
  answer_now = 1;
  ck_assert_int_lt(time_until_done(&r.n), 1500);
  ck_assert_int_eq(r.status, IMC_GRPC_OK);
  /* A call started from the later hook. */
  late_owner = &o;
  memset(&late_r, 0, sizeof(late_r));
  call_now = 1;
  ck_assert_int_lt(time_until_done(&late_r.n), 1500);
  ck_assert_int_eq(late_r.status, IMC_GRPC_OK);
  hloop_del_hook(L, late_run, NULL);
  hgrpc_peer_del(p);
  hgrpc_server_del(s);
}
END_TEST

START_TEST(the_server_goes_and_comes_back) {
  enum { N = 5 };
  char bound[64], bound2[64];
  hgrpc_server *s = NULL;
  hgrpc_peer *p = NULL;
  owner o = {0};
  result r[N];
  memset(r, 0, sizeof(r));
  ck_assert_int_eq(server_new(&s, "127.0.0.1:0", bound, sizeof(bound)), 0);
  ck_assert_int_eq(hgrpc_peer_new(&p, L, bound, on_client, &o), 0);
  RUN_UNTIL(o.c != NULL, 5000);
  for (int i = 0; i < N; i++)
    call(&o, HOLD, "x", 0, &r[i]);
  RUN_UNTIL(nheld == N, 5000);
  /* The answers never leave: the server is deleted before a flush. */
  answer_held(IMC_GRPC_OK);
  hgrpc_server_del(s);
  RUN_UNTIL(count_done(r, N) == N && o.losses == 1, 5000);
  ck_assert_ptr_null(o.c);
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(r[i].n, 1);
    ck_assert_int_eq(r[i].status, IMC_GRPC_UNAVAILABLE);
  }
  ck_assert_int_eq(n_lost, 1);
  /* A new server on the same port: the peer finds it. */
  ck_assert_int_eq(server_new(&s, bound, bound2, sizeof(bound2)), 0);
  ck_assert_str_eq(bound, bound2);
  RUN_UNTIL(o.c != NULL, 10000);
  ck_assert_int_eq(o.gains, 2);
  ck_assert_int_eq(n_connected, 2);
  echo_ok(&o, "again");
  hgrpc_peer_del(p);
  hgrpc_server_del(s);
}
END_TEST

/* A port nobody listens on (bound, then released). */
static uint16_t dead_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(a);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  close(fd);
  return ntohs(a.sin_port);
}

START_TEST(retries_back_off_without_spinning) {
  char addr[32];
  hgrpc_peer *p = NULL;
  owner o = {0};
  snprintf(addr, sizeof(addr), "127.0.0.1:%u", (unsigned)dead_port());
  ck_assert_int_eq(hgrpc_peer_new(&p, L, addr, on_client, &o), 0);
  int turns = 0;
  int64_t t0 = now_ms();
  while (now_ms() - t0 < 1100) {
    ck_assert_int_eq(hloop_run_once(L, 1000), 0);
    turns++;
  }
  /* Attempts at about 0, 100, 300 and 700 ms. */
  unsigned long n = hgrpc_peer_attempts(p);
  ck_assert_msg(n >= 3 && n <= 6, "%lu attempts", n);
  ck_assert_msg(turns < 40, "%d loop turns", turns);
  ck_assert_int_eq(o.gains, 0);
  ck_assert_int_eq(n_cannot, 1); /* one line per outage */
  hgrpc_peer_del(p);
  ck_assert_int_eq(o.losses, 0); /* never connected: no on_client(NULL) */
}
END_TEST

/* Raw HTTP/2 frames from a listener of the test's own. */
static const uint8_t h2_settings[] = {0, 0, 0, 4, 0, 0, 0, 0, 0};
static const uint8_t h2_goaway_after_1[] = {0, 0, 8, 7, 0, 0, 0, 0, 0,
                                            0, 0, 0, 1, 0, 0, 0, 0};

static int accept_one(int lfd) {
  return accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

/* What the raw listener has read of a client connection. */
typedef struct h2in {
  uint8_t buf[4096];
  size_t len;
} h2in;

/* Reads what fd has; 1 once the HEADERS frame of stream 1 is in. */
static int saw_request(int fd, h2in *in) {
  ssize_t n = read(fd, in->buf + in->len, sizeof(in->buf) - in->len);
  if (n > 0)
    in->len += (size_t)n;
  size_t pos = 24; /* the client's connection preface */
  while (pos + 9 <= in->len) {
    const uint8_t *f = in->buf + pos;
    size_t flen = (size_t)f[0] << 16 | (size_t)f[1] << 8 | f[2];
    uint32_t stream = (uint32_t)(f[5] & 0x7f) << 24 | (uint32_t)f[6] << 16 |
                      (uint32_t)f[7] << 8 | f[8];
    if (f[3] == 1 && stream == 1)
      return 1;
    pos += 9 + flen;
  }
  return 0;
}

/* GOAWAY: the owner lets go of the client at once and gets a new one
 * while the old one still finishes the call the server kept. */
START_TEST(goaway_drains_the_old_client_beside_a_new_one) {
  char addr[32];
  hgrpc_peer *p = NULL;
  owner o = {0};
  result r = {0};
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(a);
  ck_assert_int_ge(lfd, 0);
  ck_assert_int_eq(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
  ck_assert_int_eq(listen(lfd, 8), 0);
  ck_assert_int_eq(getsockname(lfd, (struct sockaddr *)&a, &len), 0);
  snprintf(addr, sizeof(addr), "127.0.0.1:%u", (unsigned)ntohs(a.sin_port));

  ck_assert_int_eq(hgrpc_peer_new(&p, L, addr, on_client, &o), 0);
  RUN_UNTIL(o.c != NULL, 5000);
  call(&o, HOLD, "x", 0, &r); /* stream 1 */
  int fd1 = -1;
  RUN_UNTIL((fd1 = fd1 >= 0 ? fd1 : accept_one(lfd)) >= 0, 5000);
  static h2in in;
  RUN_UNTIL(saw_request(fd1, &in), 5000);
  ck_assert_int_eq(write(fd1, h2_settings, sizeof(h2_settings)),
                   (ssize_t)sizeof(h2_settings));
  ck_assert_int_eq(write(fd1, h2_goaway_after_1, sizeof(h2_goaway_after_1)),
                   (ssize_t)sizeof(h2_goaway_after_1));
  RUN_UNTIL(o.losses == 1, 5000);
  ck_assert_int_eq(r.n, 0); /* stream 1 may still be answered */
  RUN_UNTIL(o.gains == 2, 5000);
  ck_assert_int_eq(r.n, 0);
  ck_assert_uint_eq(hgrpc_peer_attempts(p), 2);
  /* The old connection ends: its call fails, the new client stays. */
  close(fd1);
  RUN_UNTIL(r.n == 1, 5000);
  ck_assert_int_eq(r.status, IMC_GRPC_UNAVAILABLE);
  ck_assert_ptr_nonnull(o.c);
  ck_assert(imc_grpc_client_usable(o.c));
  ck_assert_int_eq(o.losses, 1);
  hgrpc_peer_del(p);
  ck_assert_int_eq(o.losses, 2);
  int fd2 = accept_one(lfd);
  if (fd2 >= 0)
    close(fd2);
  close(lfd);
}
END_TEST

/* Graceful stop: no new connections, but calls held still answer. */
START_TEST(stop_accepting_keeps_connections_served) {
  char bound[64];
  hgrpc_server *s = NULL;
  hgrpc_peer *p = NULL, *q = NULL;
  owner o = {0}, o2 = {0};
  result r = {0};
  ck_assert_int_eq(server_new(&s, "127.0.0.1:0", bound, sizeof(bound)), 0);
  ck_assert_int_eq(hgrpc_peer_new(&p, L, bound, on_client, &o), 0);
  RUN_UNTIL(o.c != NULL, 5000);
  call(&o, HOLD, "x", 0, &r);
  RUN_UNTIL(nheld == 1, 5000);
  ck_assert_uint_eq(hgrpc_server_pending(s), 1);
  hgrpc_server_stop_accepting(s);
  ck_assert_int_eq(hgrpc_peer_new(&q, L, bound, on_client, &o2), 0);
  answer_held(IMC_GRPC_OK);
  RUN_UNTIL(r.n == 1 && hgrpc_peer_attempts(q) >= 2, 5000);
  ck_assert_int_eq(r.status, IMC_GRPC_OK);
  ck_assert_int_eq(o2.gains, 0);
  echo_ok(&o, "still here");
  ck_assert_uint_eq(hgrpc_server_pending(s), 0);
  ck_assert_ptr_nonnull(hgrpc_server_get(s));
  hgrpc_peer_del(q);
  hgrpc_peer_del(p);
  hgrpc_server_del(s);
}
END_TEST

/* Shutdown: GOAWAY tells the client to go elsewhere at once, while the
 * call it made is still answered on the old connection. */
START_TEST(shutdown_sends_goaway) {
  char bound[64];
  hgrpc_server *s = NULL;
  hgrpc_peer *p = NULL;
  owner o = {0};
  result r = {0};
  ck_assert_int_eq(server_new(&s, "127.0.0.1:0", bound, sizeof(bound)), 0);
  ck_assert_int_eq(hgrpc_peer_new(&p, L, bound, on_client, &o), 0);
  RUN_UNTIL(o.c != NULL, 5000);
  call(&o, HOLD, "x", 0, &r);
  RUN_UNTIL(nheld == 1, 5000);
  hgrpc_server_shutdown(s);
  RUN_UNTIL(o.losses == 1, 5000);
  ck_assert_int_eq(r.n, 0);
  answer_held(IMC_GRPC_OK);
  RUN_UNTIL(r.n == 1, 5000);
  ck_assert_int_eq(r.status, IMC_GRPC_OK);
  ck_assert_uint_eq(hgrpc_server_pending(s), 0);
  hgrpc_peer_del(p);
  hgrpc_server_del(s);
}
END_TEST

/* A name is looked up off the loop; of its addresses (localhost may be
 * ::1 first, where nothing listens) the one that answers is used, and a
 * refused address before it is no outage. */
START_TEST(names_are_looked_up) {
  char bound[64], dial[64];
  hgrpc_server *s = NULL;
  hgrpc_peer *p = NULL;
  owner o = {0};
  ck_assert_int_eq(server_new(&s, "127.0.0.1:0", bound, sizeof(bound)), 0);
  snprintf(dial, sizeof(dial), "localhost:%s", strchr(bound, ':') + 1);
  ck_assert_int_eq(hgrpc_peer_new(&p, L, dial, on_client, &o), 0);
  RUN_UNTIL(o.c != NULL, 5000);
  echo_ok(&o, "by name");
  ck_assert_int_eq(n_cannot, 0);
  hgrpc_peer_del(p);
  hgrpc_server_del(s);
}
END_TEST

/* A name that does not resolve is an outage like a refused connect: one
 * line saying why, then retries. */
START_TEST(a_name_that_does_not_resolve) {
  char dial[128];
  memset(dial, 'x', 70); /* a label over 63 bytes: refused without asking */
  snprintf(dial + 70, sizeof(dial) - 70, ".example:80");
  hgrpc_peer *p = NULL;
  owner o = {0};
  ck_assert_int_eq(hgrpc_peer_new(&p, L, dial, on_client, &o), 0);
  RUN_UNTIL(n_cannot == 1 && hgrpc_peer_attempts(p) == 0, 5000);
  ck_assert_int_eq(o.gains, 0);
  hgrpc_peer_del(p);
}
END_TEST

START_TEST(bad_addresses_are_refused) {
  static const char *bad_listen[] = {"127.0.0.1", "127.0.0.1:http",
                                     "::1:80",    "127.0.0.1:65536",
                                     "[::1:80",   ""};
  hgrpc_server *s = NULL, *s2 = NULL;
  hgrpc_peer *p = NULL;
  char bound[64];
  owner o = {0};
  for (size_t i = 0; i < sizeof(bad_listen) / sizeof(bad_listen[0]); i++) {
    ck_assert_int_eq(server_new(&s, bad_listen[i], bound, sizeof(bound)),
                     -EINVAL);
    ck_assert_ptr_null(s);
  }
  /* A port in use. */
  ck_assert_int_eq(server_new(&s, "127.0.0.1:0", bound, sizeof(bound)), 0);
  ck_assert_int_eq(server_new(&s2, bound, NULL, 0), -EADDRINUSE);
  ck_assert_ptr_null(s2);
  hgrpc_server_del(s);
  ck_assert_int_eq(hgrpc_server_new(&s, L, NULL, "127.0.0.1:0", NULL, 0),
                   -EINVAL);

  static const char *bad_peer[] = {"127.0.0.1:0", ":80",    "*:80",
                                   "[::1]:x",     "::1:80", "127.0.0.1"};
  for (size_t i = 0; i < sizeof(bad_peer) / sizeof(bad_peer[0]); i++) {
    ck_assert_int_eq(hgrpc_peer_new(&p, L, bad_peer[i], on_client, &o),
                     -EINVAL);
    ck_assert_ptr_null(p);
  }
  ck_assert_int_eq(hgrpc_peer_new(&p, L, "127.0.0.1:1", NULL, &o), -EINVAL);
  /* Names are looked up when connecting. */
  ck_assert_int_eq(hgrpc_peer_new(&p, L, "example.com:1", on_client, &o), 0);
  hgrpc_peer_del(p);
  hgrpc_peer_del(NULL);
  hgrpc_server_del(NULL);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Mutual TLS                                                           */
/* ------------------------------------------------------------------ */

/* $IMC_GRPC_CERTS/grpc-<name>.pem, or the CA's. */
static void cert_path(char *out, size_t cap, const char *name,
                      const char *ext) {
  const char *dir = getenv("IMC_GRPC_CERTS");
  ck_assert_msg(dir != NULL, "IMC_GRPC_CERTS is not set (see meson.build)");
  snprintf(out, cap, "%s/grpc-%s.%s", dir, name, ext);
}

/* Mutual TLS with certificate name, under the cluster's CA. */
static hstls *mtls(const char *name) {
  char cert[512], key[512], ca[512], why[512];
  hstls *t = NULL;
  cert_path(cert, sizeof(cert), name, "pem");
  cert_path(key, sizeof(key), name, "key");
  cert_path(ca, sizeof(ca), "ca", "pem");
  ck_assert_msg(hstls_new_mutual(&t, cert, key, ca, TLS1_3_VERSION, why,
                                 sizeof(why)) == 0,
                "%s", why);
  return t;
}

static void tls_round_trip(const char *listen, const char *dial_host) {
  hstls *t = mtls("node");
  char bound[64], dial[80];
  hgrpc_server *s = NULL;
  hgrpc_peer *p = NULL;
  owner o = {0};
  n_served = 0;
  ck_assert_int_eq(server_new_tls(&s, listen, t, bound, sizeof(bound)), 0);
  snprintf(dial, sizeof(dial), "%s:%s", dial_host, strrchr(bound, ':') + 1);
  ck_assert_int_eq(hgrpc_peer_new_tls(&p, L, dial, t, on_client, &o), 0);
  RUN_UNTIL(o.c != NULL, 5000);
  echo_ok(&o, "hello over TLS");
  ck_assert_int_eq(n_served, 1);
  ck_assert_str_eq(tls_log, "");
  hgrpc_peer_del(p);
  hgrpc_server_del(s);
  hstls_del(t);
}

START_TEST(tls_calls_round_trip) {
  tls_round_trip("127.0.0.1:0", "127.0.0.1");
  tls_round_trip("127.0.0.1:0", "localhost"); /* the DNS SAN */
  tls_round_trip("[::1]:0", "[::1]");
}
END_TEST

START_TEST(tls_large_messages_both_ways) {
  hstls *t = mtls("node");
  large_messages_on(t);
  hstls_del(t);
}
END_TEST

START_TEST(tls_client_of_another_ca_is_refused) {
  /* The rogue certificate's own CA is not the server's; the client
   * trusts the cluster's CA, so the server passes its check. */
  hstls *rogue = NULL;
  char cert[512], key[512], ca[512], why[512];
  cert_path(cert, sizeof(cert), "rogue", "pem");
  cert_path(key, sizeof(key), "rogue", "key");
  cert_path(ca, sizeof(ca), "ca", "pem");
  ck_assert_int_eq(
      hstls_new_mutual(&rogue, cert, key, ca, TLS1_3_VERSION, why, sizeof(why)),
      0);
  hstls *st = mtls("node");
  char bound[64];
  hgrpc_server *s = NULL;
  hgrpc_peer *p = NULL;
  owner o = {0};
  ck_assert_int_eq(server_new_tls(&s, "127.0.0.1:0", st, bound, sizeof(bound)),
                   0);
  ck_assert_int_eq(hgrpc_peer_new_tls(&p, L, bound, rogue, on_client, &o), 0);
  RUN_UNTIL(
      strstr(tls_log, "certificate verify failed") &&
          strstr(tls_log, "cannot connect: TLS: tlsv1 alert unknown ca") &&
          hgrpc_peer_attempts(p) >= 3,
      10000);
  ck_assert_msg(strstr(tls_log, "grpc: TLS handshake with 127.0.0.1:") != NULL,
                "%s", tls_log);
  ck_assert_int_eq(o.gains, 0);
  ck_assert_int_eq(n_served, 0);
  hgrpc_peer_del(p);
  hgrpc_server_del(s);
  hstls_del(rogue);
  hstls_del(st);
}
END_TEST

START_TEST(tls_server_not_named_for_the_address_is_refused) {
  /* The client ends the handshake: only its side says why. */
  hstls *ct = mtls("node"), *st = mtls("misnamed");
  char bound[64];
  hgrpc_server *s = NULL;
  hgrpc_peer *p = NULL;
  owner o = {0};
  ck_assert_int_eq(server_new_tls(&s, "127.0.0.1:0", st, bound, sizeof(bound)),
                   0);
  ck_assert_int_eq(hgrpc_peer_new_tls(&p, L, bound, ct, on_client, &o), 0);
  RUN_UNTIL(strstr(tls_log, "IP address mismatch") &&
                hgrpc_peer_attempts(p) >= 3,
            10000);
  ck_assert_int_eq(o.gains, 0);
  ck_assert_int_eq(n_served, 0);
  hgrpc_peer_del(p);
  /* By name: the DNS SAN is other.example, not localhost. */
  tls_log[0] = '\0';
  char dial[80];
  snprintf(dial, sizeof(dial), "localhost:%s", strrchr(bound, ':') + 1);
  ck_assert_int_eq(hgrpc_peer_new_tls(&p, L, dial, ct, on_client, &o), 0);
  RUN_UNTIL(strstr(tls_log, "hostname mismatch"), 10000);
  ck_assert_int_eq(o.gains, 0);
  ck_assert_int_eq(n_served, 0);
  hgrpc_peer_del(p);
  hgrpc_server_del(s);
  hstls_del(ct);
  hstls_del(st);
}
END_TEST

/* A TLS client without a certificate, by hand (hstls always has one):
 * the handshake, the HTTP/2 preface, then the server's answer. Returns 1
 * if the server refused (an alert or a close), 0 if it answered. */
static int tls_client_without_certificate(const char *bound) {
  char ca[512];
  cert_path(ca, sizeof(ca), "ca", "pem");
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  ck_assert_ptr_nonnull(ctx);
  ck_assert_int_eq(SSL_CTX_load_verify_locations(ctx, ca, NULL), 1);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port =
                               htons((uint16_t)atoi(strrchr(bound, ':') + 1))};
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  ck_assert(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 ||
            errno == EINPROGRESS);
  SSL *ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  SSL_set_connect_state(ssl);
  static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  int refused = -1, sent = 0;
  int64_t end = now_ms() + 10000;
  while (refused < 0 && now_ms() < end) {
    ck_assert_int_eq(hloop_run_once(L, 10), 0);
    char buf[256];
    int rc = sent ? SSL_read(ssl, buf, sizeof(buf))
                  : SSL_write(ssl, preface, sizeof(preface) - 1);
    if (rc > 0 && !sent)
      sent = 1;
    else if (rc > 0)
      refused = 0;
    else if (SSL_get_error(ssl, rc) != SSL_ERROR_WANT_READ &&
             SSL_get_error(ssl, rc) != SSL_ERROR_WANT_WRITE)
      refused = 1;
  }
  ERR_clear_error();
  SSL_free(ssl);
  close(fd);
  SSL_CTX_free(ctx);
  ck_assert_msg(refused >= 0, "the server neither answered nor refused");
  return refused;
}

START_TEST(tls_client_without_certificate_is_refused) {
  hstls *st = mtls("node");
  char bound[64];
  hgrpc_server *s = NULL;
  ck_assert_int_eq(server_new_tls(&s, "127.0.0.1:0", st, bound, sizeof(bound)),
                   0);
  ck_assert_int_eq(tls_client_without_certificate(bound), 1);
  RUN_UNTIL(strstr(tls_log, "peer did not return a certificate"), 5000);
  ck_assert_int_eq(n_served, 0);
  hgrpc_server_del(s);
  hstls_del(st);
}
END_TEST

START_TEST(plaintext_client_to_a_tls_port_is_refused) {
  hstls *st = mtls("node");
  char bound[64];
  hgrpc_server *s = NULL;
  hgrpc_peer *p = NULL;
  owner o = {0};
  result r = {0};
  ck_assert_int_eq(server_new_tls(&s, "127.0.0.1:0", st, bound, sizeof(bound)),
                   0);
  ck_assert_int_eq(hgrpc_peer_new(&p, L, bound, on_client, &o), 0);
  RUN_UNTIL(o.c != NULL, 5000); /* plaintext: connected at the TCP level */
  call(&o, ECHO, "hello", 5000, &r);
  RUN_UNTIL(r.n == 1, 10000);
  ck_assert_int_ne(r.status, IMC_GRPC_OK);
  ck_assert_int_eq(n_served, 0);
  RUN_UNTIL(strstr(tls_log, "grpc: TLS handshake with 127.0.0.1:"), 5000);
  hgrpc_peer_del(p);
  hgrpc_server_del(s);
  hstls_del(st);
}
END_TEST

/* A client that connects and sends nothing is closed after 10 s. */
START_TEST(tls_handshake_not_finished_is_closed) {
  hstls *st = mtls("node");
  char bound[64];
  hgrpc_server *s = NULL;
  ck_assert_int_eq(server_new_tls(&s, "127.0.0.1:0", st, bound, sizeof(bound)),
                   0);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port =
                               htons((uint16_t)atoi(strrchr(bound, ':') + 1))};
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  int64_t t0 = now_ms();
  RUN_UNTIL(strstr(tls_log, "not done in 10 s"), 15000);
  ck_assert_int_ge(now_ms() - t0, 9000);
  char c;
  ck_assert_int_eq(read(fd, &c, 1), 0); /* closed by the server */
  close(fd);
  hgrpc_server_del(s);
  hstls_del(st);
}
END_TEST

START_TEST(bad_mutual_tls_files_name_their_flag) {
  char cert[512], key[512], ca[512], why[512];
  hstls *t = NULL;
  cert_path(cert, sizeof(cert), "node", "pem");
  cert_path(key, sizeof(key), "rogue", "key");
  cert_path(ca, sizeof(ca), "ca", "pem");
  ck_assert_int_eq(
      hstls_new_mutual(&t, cert, key, ca, TLS1_3_VERSION, why, sizeof(why)),
      -1);
  ck_assert_msg(strstr(why, "--grpc-tls-key: ") == why, "%s", why);
  ck_assert_int_eq(
      hstls_new_mutual(&t, cert, ca, ca, TLS1_3_VERSION, why, sizeof(why)), -1);
  ck_assert_msg(strstr(why, "--grpc-tls-key: cannot load") == why, "%s", why);
  cert_path(key, sizeof(key), "node", "key");
  ck_assert_int_eq(hstls_new_mutual(&t, cert, key, "/nonexistent/ca.pem",
                                    TLS1_3_VERSION, why, sizeof(why)),
                   -1);
  ck_assert_msg(strstr(why, "--grpc-tls-ca: cannot read") == why, "%s", why);
  ck_assert_int_eq(
      hstls_new_mutual(&t, cert, key, key, TLS1_3_VERSION, why, sizeof(why)),
      -1);
  ck_assert_msg(strstr(why, "--grpc-tls-ca: cannot load") == why, "%s", why);
  ck_assert_ptr_null(t);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("grpc_net");
  TCase *tc = tcase_create("net");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, calls_round_trip_over_ipv4);
  tcase_add_test(tc, calls_round_trip_over_ipv6);
  tcase_add_test(tc, a_hundred_concurrent_calls);
  tcase_add_test(tc, large_messages_both_ways);
  tcase_add_test(tc, deadlines_wake_the_loop);
  tcase_add_test(tc, work_from_a_later_hook_leaves_before_the_loop_sleeps);
  tcase_add_test(tc, the_server_goes_and_comes_back);
  tcase_add_test(tc, retries_back_off_without_spinning);
  tcase_add_test(tc, goaway_drains_the_old_client_beside_a_new_one);
  tcase_add_test(tc, stop_accepting_keeps_connections_served);
  tcase_add_test(tc, shutdown_sends_goaway);
  tcase_add_test(tc, bad_addresses_are_refused);
  tcase_add_test(tc, names_are_looked_up);
  tcase_add_test(tc, a_name_that_does_not_resolve);
  suite_add_tcase(s, tc);
  TCase *tls = tcase_create("tls");
  tcase_add_checked_fixture(tls, setup, teardown);
  tcase_add_test(tls, tls_calls_round_trip);
  tcase_add_test(tls, tls_large_messages_both_ways);
  tcase_add_test(tls, tls_client_of_another_ca_is_refused);
  tcase_add_test(tls, tls_server_not_named_for_the_address_is_refused);
  tcase_add_test(tls, tls_client_without_certificate_is_refused);
  tcase_add_test(tls, plaintext_client_to_a_tls_port_is_refused);
  tcase_add_test(tls, tls_handshake_not_finished_is_closed);
  tcase_add_test(tls, bad_mutual_tls_files_name_their_flag);
  suite_add_tcase(s, tls);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
