/*
 * libimchat-server (imchat/server.h): a real server on 127.0.0.1:0 with a
 * temporary data directory, run on a thread; two imc_client SDK clients
 * over real WebSockets (hosts/common/client_run.c); stopped from the main
 * thread. Also: bad flags, stop before run, the log callback.
 */
#include <imchat/server.h>

#include <imchat/client.h>
#include <imchat/jwt.h>

#include "client_run.h"

#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SECRET "server-test-secret"
#define WAIT_MS 20000

/* ------------------------------------------------------------------ */
/* The server on a thread                                               */
/* ------------------------------------------------------------------ */

typedef struct running {
  imc_server *s;
  char dir[64];
  pthread_t thread;
  int rv; /* imc_server_run's */
} running;

static void *run_main(void *ud) {
  running *r = ud;
  r->rv = imc_server_run(r->s);
  return NULL;
}

/* Lines the server logged through imc_server_set_log. */
typedef struct log_seen {
  int lines, stopped, listening;
} log_seen;

static void on_log(void *ud, imc_log_level level, const char *line) {
  log_seen *seen = ud;
  (void)level;
  seen->lines++;
  if (strcmp(line, "stopped") == 0)
    seen->stopped = 1;
  if (strncmp(line, "listening on ", 13) == 0)
    seen->listening = 1;
}

/* The library writes nothing to stderr while fd 2 is caught: between
 * catch_stderr and caught_stderr, which returns the byte count. */
static int catch_stderr(void) {
  fflush(stderr);
  int saved = dup(2);
  FILE *f = tmpfile();
  ck_assert(saved >= 0 && f != NULL);
  ck_assert_int_eq(dup2(fileno(f), 2), 2);
  fclose(f); /* fd 2 keeps the file */
  return saved;
}

static long caught_stderr(int saved) {
  fflush(stderr);
  long n = lseek(2, 0, SEEK_END);
  ck_assert_int_eq(dup2(saved, 2), 2);
  close(saved);
  return n;
}

static void start(running *r, log_seen *seen) {
  snprintf(r->dir, sizeof(r->dir), "/tmp/imc-server-test-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(r->dir));
  const char *argv[] = {"imchatd",    "--listen",    "127.0.0.1:0",
                        "--data-dir", r->dir,        "--jwt-secret",
                        SECRET,       "--log-level", "info"};
  char err[256] = "";
  int caught = catch_stderr();
  int rv = imc_server_new(&r->s, 9, argv, err, sizeof(err));
  ck_assert_msg(rv == 0, "imc_server_new: %d %s", rv, err);
  const char *addr = imc_server_address(r->s);
  ck_assert_msg(strncmp(addr, "127.0.0.1:", 10) == 0 && atoi(addr + 10) > 0,
                "address %s", addr);
  /* What new logged waits for its destination: the callback. */
  imc_server_set_log(r->s, on_log, seen);
  ck_assert_int_eq(caught_stderr(caught), 0);
  ck_assert_int_eq(seen->listening, 1);
  ck_assert_int_eq(pthread_create(&r->thread, NULL, run_main, r), 0);
}

static void stop(running *r) {
  imc_server_stop(r->s);
  ck_assert_int_eq(pthread_join(r->thread, NULL), 0);
  ck_assert_int_eq(r->rv, 0);
  imc_server_del(r->s);
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", r->dir);
  ck_assert_int_eq(system(cmd), 0);
}

/* ------------------------------------------------------------------ */
/* A client                                                             */
/* ------------------------------------------------------------------ */

typedef struct peer {
  imc_client *c;
  pthread_mutex_t mu; /* state, for a thread waiting for ONLINE */
  pthread_cond_t cv;
  imc_client_state state;
  int acked, delivered;
  char got[128]; /* the last message's body and sender */
  char from[64];
} peer;

static void on_state(void *ud, imc_client_state state, int reason) {
  peer *p = ud;
  (void)reason;
  pthread_mutex_lock(&p->mu);
  p->state = state;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

static void on_message(void *ud, const imc_msg *msg, uint32_t flags,
                       uint64_t last_seq) {
  peer *p = ud;
  (void)flags;
  (void)last_seq;
  snprintf(p->got, sizeof(p->got), "%.*s", (int)msg->body_len,
           (const char *)msg->body);
  snprintf(p->from, sizeof(p->from), "%s", msg->from_user);
}

static void on_send_ack(void *ud, const char *cmid, const char *msg_id,
                        const char *conv, uint64_t seq) {
  (void)cmid;
  (void)msg_id;
  (void)conv;
  (void)seq;
  ((peer *)ud)->acked = 1;
}

static void on_status(void *ud, const char *cmid, const char *msg_id,
                      imc_delivery_state state, const char *user) {
  (void)cmid;
  (void)msg_id;
  (void)user;
  if (state == IMC_DELIVERED)
    ((peer *)ud)->delivered = 1;
}

static void peer_new(peer *p, const char *user, const char *addr) {
  memset(p, 0, sizeof(*p));
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  char token[IMC_JWT_SIGN_MAX];
  int64_t now = (int64_t)time(NULL);
  ck_assert_int_gt(imc_jwt_sign_hs256((const uint8_t *)SECRET, strlen(SECRET),
                                      user, "d1", NULL, NULL, now, now + 600,
                                      token, sizeof(token)),
                   0);
  imc_client_callbacks cb = {sizeof(cb),  on_state,  on_message,
                             on_send_ack, on_status, NULL};
  imc_client_options *opt;
  ck_assert_int_eq(imc_client_options_new(&opt, NULL), 0);
  ck_assert_int_eq(imc_client_options_set_store_path(opt, ":memory:"), 0);
  ck_assert_int_eq(imc_client_options_set_token(opt, token), 0);
  ck_assert_int_eq(imc_client_options_set_host(opt, addr), 0);
  ck_assert_int_eq(imc_client_options_set_callbacks(opt, &cb, p), 0);
  ck_assert_int_eq(imc_client_new(&p->c, opt, NULL), 0);
  imc_client_options_del(opt);
}

static void peer_del(peer *p) {
  imc_client_del(p->c);
  pthread_cond_destroy(&p->cv);
  pthread_mutex_destroy(&p->mu);
}

/* Waits (another thread pumps p) until p is ONLINE or WAIT_MS passed. */
static int wait_online(peer *p) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += WAIT_MS / 1000;
  pthread_mutex_lock(&p->mu);
  int rv = 0;
  while (p->state != IMC_CLIENT_ONLINE && rv == 0)
    rv = pthread_cond_timedwait(&p->cv, &p->mu, &until);
  int online = p->state == IMC_CLIENT_ONLINE;
  pthread_mutex_unlock(&p->mu);
  return online;
}

static int is_delivered(void *ud) {
  return ((peer *)ud)->delivered;
}

static int has_message(void *ud) {
  return ((peer *)ud)->got[0] != '\0';
}

/* Runs p's socket until done(p); returns an hclient_result. */
static int pump(peer *p, const char *addr, int (*done)(void *), char *why,
                size_t cap) {
  char host[64];
  const char *colon = strrchr(addr, ':');
  snprintf(host, sizeof(host), "%.*s", (int)(colon - addr), addr);
  hclient_opts o;
  memset(&o, 0, sizeof(o));
  o.host = host;
  o.port = colon + 1;
  o.timeout_ms = WAIT_MS;
  o.done = done;
  o.in_fd = -1;
  o.ud = p;
  int rv = hclient_run(p->c, &o);
  snprintf(why, cap, "%s", o.error);
  return rv;
}

/* bob's side: his socket on a thread until a message came (and was
 * ACKed: the ACK leaves in the same turn). */
typedef struct receiver {
  peer *p;
  const char *addr;
  int rv;
  char why[256];
} receiver;

static void *receive_main(void *ud) {
  receiver *r = ud;
  r->rv = pump(r->p, r->addr, has_message, r->why, sizeof(r->why));
  return NULL;
}

/* ------------------------------------------------------------------ */
/* Tests                                                                */
/* ------------------------------------------------------------------ */

/* alice → bob over the server's WebSocket; bob sees it; stop; join. */
START_TEST(test_one_to_one) {
  running r;
  log_seen seen = {0, 0, 0};
  start(&r, &seen);
  const char *addr = imc_server_address(r.s);

  peer alice, bob;
  peer_new(&bob, "bob", addr);
  peer_new(&alice, "alice", addr);
  receiver rcv = {&bob, addr, -1, ""};
  pthread_t t;
  ck_assert_int_eq(pthread_create(&t, NULL, receive_main, &rcv), 0);
  ck_assert_msg(wait_online(&bob), "bob did not come online");

  const char *text = "hello bob";
  ck_assert_int_eq(imc_client_send(alice.c, "bob", NULL, (const uint8_t *)text,
                                   strlen(text), NULL, NULL),
                   0);
  char why[256];
  int rv = pump(&alice, addr, is_delivered, why, sizeof(why));
  ck_assert_int_eq(pthread_join(t, NULL), 0);
  ck_assert_msg(rv == HCLIENT_DONE, "alice: %d %s", rv, why);
  ck_assert_msg(rcv.rv == HCLIENT_DONE, "bob: %d %s", rcv.rv, rcv.why);
  ck_assert(alice.acked);
  ck_assert_str_eq(bob.got, text);
  ck_assert_str_eq(bob.from, "alice");

  peer_del(&alice);
  peer_del(&bob);
  stop(&r);
  ck_assert(seen.stopped);
}
END_TEST

/* A stop asked for before run: run returns at once; run is once only. */
START_TEST(test_stop_before_run) {
  running r;
  log_seen seen = {0, 0, 0};
  start(&r, &seen);
  stop(&r);
  ck_assert(seen.lines > 0);
}
END_TEST

START_TEST(test_run_twice) {
  char dir[] = "/tmp/imc-server-test-XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(dir));
  const char *argv[] = {"x",          "--listen",    "127.0.0.1:0",
                        "--data-dir", dir,           "--jwt-secret",
                        SECRET,       "--log-level", "error"};
  imc_server *s;
  char err[256];
  ck_assert_int_eq(imc_server_new(&s, 9, argv, err, sizeof(err)), 0);
  imc_server_stop(s);
  ck_assert_int_eq(imc_server_run(s), 0);
  ck_assert_int_eq(imc_server_run(s), IMC_ERR_CLOSED);
  imc_server_stop(s); /* after run: no effect */
  imc_server_del(s);
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* Each bad start: a negative code, *out NULL, a reason naming it. */
static void expect_bad(int argc, const char *const *argv, int code,
                       const char *reason) {
  imc_server *s = (imc_server *)&s; /* must be overwritten */
  char err[256] = "";
  int caught = catch_stderr();
  int rv = imc_server_new(&s, argc, argv, err, sizeof(err));
  ck_assert_int_eq(caught_stderr(caught), 0); /* the reason is in err */
  ck_assert_msg(rv == code, "%d (%s), not %d", rv, err, code);
  ck_assert_ptr_null(s);
  ck_assert_msg(strstr(err, reason) != NULL, "err '%s' lacks '%s'", err,
                reason);
}

START_TEST(test_bad_flags) {
  const char *unknown[] = {"x", "--no-such-flag"};
  expect_bad(2, unknown, IMC_ERR_INVALID_ARGUMENT, "--no-such-flag");
  const char *value[] = {"x", "--max-body", "lots"};
  expect_bad(3, value, IMC_ERR_INVALID_ARGUMENT, "--max-body");
  const char *missing[] = {"x", "--listen"};
  expect_bad(2, missing, IMC_ERR_INVALID_ARGUMENT, "--listen needs a value");
  const char *help[] = {"x", "--help"};
  expect_bad(2, help, IMC_ERR_INVALID_ARGUMENT, "--help");
  const char *token[] = {"x", "token", "alice"};
  expect_bad(3, token, IMC_ERR_INVALID_ARGUMENT, "token");
  const char *config[] = {"x", "--config", "/nonexistent/imchatd.ini"};
  expect_bad(3, config, IMC_ERR_INVALID_ARGUMENT, "cannot read");
  const char *port[] = {"x", "--listen", "127.0.0.1:notaport"};
  expect_bad(3, port, IMC_ERR_INVALID_ARGUMENT, "--listen");
  /* Setup failures after the flags parsed: a data directory that
   * cannot be made, an address in use. */
  const char *dir[] = {
      "x",           "--data-dir", "/proc/imc-no/such", "--jwt-secret", SECRET,
      "--log-level", "error"};
  expect_bad(7, dir, IMC_ERR_IO, "--data-dir");
  char tmp[] = "/tmp/imc-server-test-XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(tmp));
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sin = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(sin);
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
  ck_assert_int_eq(listen(fd, 1), 0);
  ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
  char taken[32];
  snprintf(taken, sizeof(taken), "127.0.0.1:%u", ntohs(sin.sin_port));
  const char *in_use[] = {"x",    "--data-dir", tmp,   "--jwt-secret",
                          SECRET, "--listen",   taken, "--log-level",
                          "error"};
  expect_bad(9, in_use, IMC_ERR_IO, "in use");
  close(fd);
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
  ck_assert_int_eq(system(cmd), 0);
  ck_assert_int_eq(imc_server_new(NULL, 2, help, NULL, 0),
                   IMC_ERR_INVALID_ARGUMENT);
}
END_TEST

static Suite *server_suite(void) {
  Suite *s = suite_create("server");
  TCase *tc = tcase_create("server");
  tcase_add_test(tc, test_one_to_one);
  tcase_add_test(tc, test_stop_before_run);
  tcase_add_test(tc, test_run_twice);
  tcase_add_test(tc, test_bad_flags);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(server_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
