/*
 * The Redis engine against a real redis-server: the seq and dedup
 * conformance suites (the server scripts/test.sh started,
 * IMC_TEST_REDIS), and fault cases on a server this suite starts, stops
 * and restarts itself: a restart that loses every counter, a counter
 * that goes back (a replica that lagged), a server that stops answering,
 * a mark that cannot be raised, the marks kept by a real MariaDB
 * (IMC_TEST_MARIADB) across restarts of Redis and of the process, scripts
 * flushed under a connection, and a server still loading its data.
 */
#include "conformance.h"
#include "engine_test.h"

#include <imchat/engines/mariadb.h>
#include <imchat/engines/redis.h>

#include <check.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* Marks kept in memory, standing for the MariaDB engine's table: they
 * outlive every Redis restart of a test, as durable marks do.          */
/* ------------------------------------------------------------------ */

#define MAX_MARKS 64

typedef struct test_marks {
  char key[MAX_MARKS][64];
  uint64_t value[MAX_MARKS];
  int n;
  int raises;
  int fail; /* nonzero: every call fails with IMC_ERR_UNAVAILABLE */
} test_marks;

static uint64_t *mark_slot(test_marks *m, const char *key) {
  for (int i = 0; i < m->n; i++)
    if (strcmp(m->key[i], key) == 0)
      return &m->value[i];
  ck_assert_int_lt(m->n, MAX_MARKS);
  snprintf(m->key[m->n], sizeof(m->key[0]), "%s", key);
  m->value[m->n] = 0;
  return &m->value[m->n++];
}

static int marks_get(void *ud, const char *key, imc_mark_cb done,
                     void *done_ud) {
  test_marks *m = ud;
  if (m->fail)
    return IMC_ERR_UNAVAILABLE;
  done(done_ud, 0, *mark_slot(m, key));
  return 0;
}

static int marks_raise(void *ud, const char *key, uint64_t value,
                       imc_done_cb done, void *done_ud) {
  test_marks *m = ud;
  if (m->fail)
    return IMC_ERR_UNAVAILABLE;
  uint64_t *v = mark_slot(m, key);
  if (value > *v)
    *v = value;
  m->raises++;
  done(done_ud, 0);
  return 0;
}

static const imc_marks_vtbl marks_vtbl = {
    .struct_size = sizeof(imc_marks_vtbl),
    .get = marks_get,
    .raise = marks_raise,
};

/* ------------------------------------------------------------------ */
/* Conformance against the shared server                                */
/* ------------------------------------------------------------------ */

static eng_loop loop;
static test_marks marks;
static char host[64];
static uint16_t port;
static int prefix_n;
static char prefix[64];

static void parse_addr(const char *addr) {
  const char *colon = strrchr(addr, ':');
  if (colon == NULL) {
    fprintf(stderr, "IMC_TEST_REDIS: want HOST:PORT, got %s\n", addr);
    exit(EXIT_FAILURE);
  }
  snprintf(host, sizeof(host), "%.*s", (int)(colon - addr), addr);
  port = (uint16_t)atoi(colon + 1);
}

/* An engine on host:port with key prefix pre and timeout_ms, on the test
 * marks (or on marks_vtbl/marks_ud when given). */
static imc_redis *open_with(const char *h, uint16_t p, const char *pre,
                            int64_t timeout_ms, const imc_marks_vtbl *mv,
                            void *mud) {
  imc_redis_options *o;
  ck_assert_int_eq(imc_redis_options_new(&o), 0);
  char addr[96];
  snprintf(addr, sizeof(addr), "%s:%u", h, p);
  ck_assert_int_eq(imc_redis_options_set_address(o, addr), 0);
  ck_assert_int_eq(imc_redis_options_set_prefix(o, pre), 0);
  ck_assert_int_eq(imc_redis_options_set_timeout_ms(o, timeout_ms), 0);
  ck_assert_int_eq(imc_redis_options_set_reconnect(o, 20, 200), 0);
  ck_assert_int_eq(imc_redis_options_set_marks(o, mv, mud), 0);
  ck_assert_int_eq(imc_redis_options_set_seq_block(o, 10), 0);
  imc_redis *r = NULL;
  ck_assert_int_eq(imc_redis_new(&r, loop.loop, o), 0);
  imc_redis_options_del(o);
  return r;
}

static imc_redis *open_engine(const char *h, uint16_t p, const char *pre,
                              int64_t timeout_ms) {
  return open_with(h, p, pre, timeout_ms, &marks_vtbl, &marks);
}

static void *cf_create(void *ctx, const imc_clock *clock) {
  (void)ctx;
  (void)clock;
  eng_loop_init(&loop);
  memset(&marks, 0, sizeof(marks));
  snprintf(prefix, sizeof(prefix), "imc-test:%d:%d:", (int)getpid(),
           ++prefix_n);
  return open_engine(host, port, prefix, 5000);
}

static void cf_destroy(void *ctx, void *ud) {
  (void)ctx;
  imc_redis_del(ud);
  eng_loop_fini(&loop);
}

/* The same keys on a new connection, as after a process restart. */
static void *cf_reopen(void *ctx, void *ud) {
  (void)ctx;
  imc_redis_del(ud);
  return open_engine(host, port, prefix, 5000);
}

static int cf_dispatch(void *ctx, void *ud) {
  (void)ctx;
  (void)ud;
  eng_loop_turn(&loop, 20);
  return 0;
}

static conformance_factory factory = {
    .name = "redis",
    .create = cf_create,
    .destroy = cf_destroy,
    .reopen = cf_reopen,
    .dispatch = cf_dispatch,
    .real_clock = 1,
};

/* ------------------------------------------------------------------ */
/* Fault cases on a server of our own                                   */
/* ------------------------------------------------------------------ */

static pid_t own_pid;
static uint16_t own_port;
static char own_dir[] = "/tmp/imc-redis-test.XXXXXX";

/* Starts the server of the fault cases, with extra arguments (or NULL),
 * on the data left in own_dir by the one before. */
static void own_start_with(char *const *extra) {
  char portstr[8];
  snprintf(portstr, sizeof(portstr), "%u", own_port);
  char *argv[24] = {"redis-server", "--port", portstr, "--bind",
                    "127.0.0.1",    "--save", "",      "--appendonly",
                    "no",           "--dir",  own_dir};
  int n = 11;
  for (; extra && *extra; extra++)
    argv[n++] = *extra;
  argv[n] = NULL;
  own_pid = eng_spawn(argv, NULL);
  ck_assert_msg(eng_wait_port(own_port, 10000), "redis-server did not start");
}

static void own_start(void) {
  own_start_with(NULL);
}

/* redis-cli against the server of the fault cases. */
static void own_cli(char *const *args) {
  char portstr[8];
  snprintf(portstr, sizeof(portstr), "%u", own_port);
  char *argv[16] = {"redis-cli", "-p", portstr};
  int n = 3;
  for (; *args; args++)
    argv[n++] = *args;
  argv[n] = NULL;
  ck_assert_int_eq(eng_wait(eng_spawn(argv, "/dev/null")), 0);
}

static void fault_setup(void) {
  ck_assert_ptr_nonnull(mkdtemp(own_dir));
  own_port = eng_free_port();
  own_start();
  eng_loop_init(&loop);
  memset(&marks, 0, sizeof(marks));
}

static void fault_teardown(void) {
  eng_loop_fini(&loop);
  if (own_pid > 0)
    eng_kill(own_pid, SIGKILL);
  own_pid = 0;
  char dump[sizeof(own_dir) + 16];
  snprintf(dump, sizeof(dump), "%s/dump.rdb", own_dir);
  unlink(dump);
  rmdir(own_dir);
  strcpy(own_dir, "/tmp/imc-redis-test.XXXXXX");
}

typedef struct seq_res {
  int calls;
  int status;
  uint64_t seq;
} seq_res;

static void on_seq(void *p, int status, uint64_t seq) {
  seq_res *r = p;
  r->calls++;
  r->status = status;
  r->seq = seq;
}

/* next(key): the status, and the value in *out. */
static int next(imc_redis *r, const char *k, uint64_t *out) {
  seq_res res = {0};
  int rv = imc_redis_seq_vtbl()->next(r, k, on_seq, &res);
  if (rv < 0) {
    ck_assert_int_eq(res.calls, 0);
    return rv;
  }
  ck_assert_msg(eng_loop_until(&loop, &res.calls, 10000), "next hung");
  ck_assert_int_eq(res.calls, 1);
  *out = res.seq;
  return res.status;
}

/* Waits until the engine has seen its connection go. */
static void wait_unhealthy(imc_redis *r) {
  int64_t end = eng_now_ms() + 10000;
  while (imc_redis_health(r) == 0 && eng_now_ms() < end)
    eng_loop_turn(&loop, 20);
  ck_assert_int_eq(imc_redis_health(r), IMC_ERR_UNAVAILABLE);
}

static void wait_healthy(imc_redis *r) {
  int64_t end = eng_now_ms() + 10000;
  while (imc_redis_health(r) != 0 && eng_now_ms() < end)
    eng_loop_turn(&loop, 20);
  ck_assert_int_eq(imc_redis_health(r), 0);
}

START_TEST(a_restart_that_loses_the_counters_never_goes_back) {
  imc_redis *r = open_engine("127.0.0.1", own_port, "f:", 2000);
  uint64_t v = 0, top = 0;
  for (int i = 1; i <= 25; i++) {
    ck_assert_int_eq(next(r, "conv", &v), 0);
    ck_assert_uint_eq(v, (uint64_t)i);
    top = v;
  }
  ck_assert_int_ge(marks.raises, 1);

  eng_kill(own_pid, SIGKILL); /* everything Redis held is gone */
  own_pid = 0;
  int64_t t0 = eng_now_ms();
  int st = next(r, "conv", &v);
  ck_assert_int_eq(st, IMC_ERR_UNAVAILABLE);
  ck_assert_int_lt(eng_now_ms() - t0, 5000);
  /* Health reports it once the loss is seen. */
  int64_t end = eng_now_ms() + 5000;
  while (imc_redis_health(r) == 0 && eng_now_ms() < end)
    eng_loop_turn(&loop, 20);
  ck_assert_int_eq(imc_redis_health(r), IMC_ERR_UNAVAILABLE);
  ck_assert_str_ne(imc_redis_errmsg(r), "");

  own_start(); /* empty */
  wait_healthy(r);
  ck_assert_int_eq(next(r, "conv", &v), 0);
  ck_assert_uint_gt(v, top);
  uint64_t after = v;
  ck_assert_int_eq(next(r, "conv", &v), 0);
  ck_assert_uint_eq(v, after + 1);
  imc_redis_del(r);

  /* A new engine (a process restarted too) continues above as well. */
  r = open_engine("127.0.0.1", own_port, "f:", 2000);
  ck_assert_int_eq(next(r, "conv", &v), 0);
  ck_assert_uint_eq(v, after + 2);
  imc_redis_del(r);
}
END_TEST

/* A counter that goes back under the engine (a replica that lagged
 * behind what was handed out) is set above its mark. */
START_TEST(a_counter_that_goes_back_is_set_above_its_mark) {
  imc_redis *r = open_engine("127.0.0.1", own_port, "g:", 2000);
  uint64_t v = 0;
  for (int i = 0; i < 15; i++)
    ck_assert_int_eq(next(r, "conv", &v), 0);
  ck_assert_uint_eq(v, 15);

  char portstr[8];
  snprintf(portstr, sizeof(portstr), "%u", own_port);
  char *argv[] = {"redis-cli", "-p", portstr, "SET", "g:s:conv", "3", NULL};
  ck_assert_int_eq(eng_wait(eng_spawn(argv, NULL)), 0);

  ck_assert_int_eq(next(r, "conv", &v), 0);
  ck_assert_uint_gt(v, 15);
  imc_redis_del(r);
}
END_TEST

typedef struct tas_res {
  int calls;
  int status;
  int found;
} tas_res;

static void on_tas(void *p, int status, int found, const uint8_t *value,
                   size_t len) {
  tas_res *t = p;
  (void)value;
  (void)len;
  t->calls++;
  t->status = status;
  t->found = found;
}

/* test_and_set(key, "v"): the status, and whether the key was there. */
static int tas(imc_redis *r, const char *k, int *found) {
  tas_res res = {0};
  int rv = imc_redis_dedup_vtbl()->test_and_set(r, k, (const uint8_t *)"v", 1,
                                                60, on_tas, &res);
  if (rv < 0)
    return rv;
  ck_assert_msg(eng_loop_until(&loop, &res.calls, 10000), "tas hung");
  *found = res.found;
  return res.status;
}

/* Scripts flushed under a connection (SCRIPT FLUSH, or a failover to a
 * server that never loaded them): the calls that meet NOSCRIPT fail as
 * unavailable and the next connection loads the scripts again. */
START_TEST(flushed_scripts_are_loaded_again) {
  imc_redis *r = open_engine("127.0.0.1", own_port, "n:", 2000);
  uint64_t v = 0;
  int found = 0;
  ck_assert_int_eq(next(r, "conv", &v), 0);
  ck_assert_int_eq(tas(r, "k1", &found), 0);
  ck_assert_int_eq(found, 0);

  own_cli((char *[]){"SCRIPT", "FLUSH", NULL});
  ck_assert_int_eq(tas(r, "k2", &found), IMC_ERR_UNAVAILABLE);
  wait_healthy(r);
  ck_assert_int_eq(tas(r, "k2", &found), 0);
  ck_assert_int_eq(found, 0);
  ck_assert_int_eq(tas(r, "k1", &found), 0);
  ck_assert_int_eq(found, 1);
  uint64_t w = 0;
  ck_assert_int_eq(next(r, "conv", &w), 0);
  ck_assert_uint_eq(w, v + 1);
  imc_redis_del(r);
}
END_TEST

/* A server still loading its data after a restart answers INFO but
 * refuses scripts with LOADING: the engine is unavailable until the data
 * is in, then loads its scripts and carries on above what it handed out. */
START_TEST(a_server_loading_its_data_is_waited_for) {
  eng_kill(own_pid, SIGKILL);
  own_start_with((char *[]){"--enable-debug-command", "local", NULL});
  imc_redis *r = open_engine("127.0.0.1", own_port, "l:", 2000);
  uint64_t v = 0;
  for (int i = 1; i <= 25; i++)
    ck_assert_int_eq(next(r, "conv", &v), 0);
  own_cli((char *[]){"DEBUG", "POPULATE", "30000", NULL});
  own_cli((char *[]){"SAVE", NULL});
  eng_kill(own_pid, SIGKILL);
  wait_unhealthy(r);

  /* About 3 s of loading (100 us a key), answering clients meanwhile. */
  own_start_with((char *[]){"--key-load-delay", "100",
                            "--loading-process-events-interval-bytes", "1024",
                            NULL});
  int64_t t0 = eng_now_ms();
  while (eng_now_ms() - t0 < 1000)
    eng_loop_turn(&loop, 20);
  ck_assert_int_eq(imc_redis_health(r), IMC_ERR_UNAVAILABLE);
  int found = 0;
  ck_assert_int_eq(tas(r, "k", &found), IMC_ERR_UNAVAILABLE);

  int64_t end = eng_now_ms() + 30000;
  while (imc_redis_health(r) != 0 && eng_now_ms() < end)
    eng_loop_turn(&loop, 20);
  ck_assert_int_eq(imc_redis_health(r), 0);
  ck_assert_int_eq(tas(r, "k", &found), 0);
  ck_assert_int_eq(found, 0);
  uint64_t w = 0;
  ck_assert_int_eq(next(r, "conv", &w), 0);
  ck_assert_uint_gt(w, v);
  imc_redis_del(r);
}
END_TEST

START_TEST(a_server_that_stops_answering_fails_operations_in_time) {
  imc_redis *r = open_engine("127.0.0.1", own_port, "h:", 300);
  uint64_t v = 0;
  ck_assert_int_eq(next(r, "conv", &v), 0);
  wait_healthy(r);

  kill(own_pid, SIGSTOP);
  int64_t t0 = eng_now_ms();
  ck_assert_int_eq(next(r, "conv", &v), IMC_ERR_UNAVAILABLE);
  ck_assert_int_lt(eng_now_ms() - t0, 3000);
  kill(own_pid, SIGCONT);

  wait_healthy(r);
  uint64_t w = 0;
  ck_assert_int_eq(next(r, "conv", &w), 0);
  ck_assert_uint_gt(w, 1);
  imc_redis_del(r);
}
END_TEST

START_TEST(no_value_is_handed_out_without_its_mark) {
  imc_redis *r = open_engine("127.0.0.1", own_port, "m:", 2000);
  uint64_t v = 0;
  /* The first value raises the mark a block (10) ahead: the values up to
   * it need no raise. */
  for (int i = 1; i <= 11; i++) {
    ck_assert_int_eq(next(r, "conv", &v), 0);
    ck_assert_uint_eq(v, (uint64_t)i);
  }
  ck_assert_uint_eq(*mark_slot(&marks, "conv"), 11);
  marks.fail = 1;
  ck_assert_int_eq(next(r, "conv", &v), IMC_ERR_UNAVAILABLE);
  marks.fail = 0;
  ck_assert_int_eq(next(r, "conv", &v), 0);
  ck_assert_uint_eq(v, 13); /* 12 was burned, not handed out later */
  ck_assert_uint_ge(*mark_slot(&marks, "conv"), v);
  imc_redis_del(r);
}
END_TEST

START_TEST(options_are_checked_and_seq_needs_marks) {
  imc_redis_options *o;
  ck_assert_int_eq(imc_redis_options_new(&o), 0);
  ck_assert_int_eq(imc_redis_options_set_address(o, "nohost"),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_redis_options_set_address(o, "h:0"),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_redis_options_set_address(o, "[::1]:6379"), 0);
  ck_assert_int_eq(imc_redis_options_set_prefix(o, ""),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_redis_options_set_timeout_ms(o, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_redis_options_set_reconnect(o, 50, 10),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_redis_options_set_marks(o, NULL, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_redis_options_set_seq_block(o, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  char addr[32];
  snprintf(addr, sizeof(addr), "127.0.0.1:%u", own_port);
  ck_assert_int_eq(imc_redis_options_set_address(o, addr), 0);
  imc_redis *r = NULL;
  ck_assert_int_eq(imc_redis_new(&r, NULL, o), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_redis_new(&r, loop.loop, o), 0);
  seq_res res = {0};
  ck_assert_int_eq(imc_redis_seq_vtbl()->next(r, "k", on_seq, &res),
                   IMC_ERR_INVALID_ARGUMENT);
  imc_redis_del(r);
  imc_redis_options_del(o);
}
END_TEST

/* The marks of a real MariaDB engine: a Redis that restarts empty, and
 * then a process that restarts too, continue above every value handed
 * out. */
static imc_mariadb *open_mariadb(void) {
  imc_mariadb_options *o;
  ck_assert_int_eq(imc_mariadb_options_new(&o), 0);
  ck_assert_int_eq(
      imc_mariadb_options_set_address(o, getenv("IMC_TEST_MARIADB")), 0);
  ck_assert_int_eq(imc_mariadb_options_credentials_from_env(o), 0);
  imc_mariadb *db = NULL;
  ck_assert_int_eq(imc_mariadb_new(&db, loop.loop, o, NULL), 0);
  imc_mariadb_options_del(o);
  return db;
}

static imc_redis *open_on_mariadb(imc_mariadb *db) {
  return open_with("127.0.0.1", own_port, "mdb:", 2000,
                   imc_mariadb_marks_vtbl(), db);
}

START_TEST(marks_in_mariadb_survive_redis_and_process_restarts) {
  char counter[64];
  snprintf(counter, sizeof(counter), "conv-%d-%lld", (int)getpid(),
           (long long)eng_now_ms());
  imc_mariadb *db = open_mariadb();
  imc_redis *r = open_on_mariadb(db);
  uint64_t v = 0;
  for (int i = 1; i <= 15; i++) {
    ck_assert_int_eq(next(r, counter, &v), 0);
    ck_assert_uint_eq(v, (uint64_t)i);
  }
  eng_kill(own_pid, SIGKILL);
  wait_unhealthy(r);
  own_start(); /* empty */
  wait_healthy(r);
  ck_assert_int_eq(next(r, counter, &v), 0);
  ck_assert_uint_gt(v, 15);
  uint64_t top = v;
  imc_redis_del(r);
  imc_mariadb_del(db);

  /* Both restarted: the process and, once more, Redis. */
  eng_kill(own_pid, SIGKILL);
  own_start();
  db = open_mariadb();
  r = open_on_mariadb(db);
  ck_assert_int_eq(next(r, counter, &v), 0);
  ck_assert_uint_gt(v, top);
  imc_redis_del(r);
  imc_mariadb_del(db);
}
END_TEST

static Suite *fault_suite(void) {
  Suite *s = suite_create("redis/faults");
  TCase *tc = tcase_create("faults");
  tcase_add_checked_fixture(tc, fault_setup, fault_teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, a_restart_that_loses_the_counters_never_goes_back);
  tcase_add_test(tc, a_counter_that_goes_back_is_set_above_its_mark);
  tcase_add_test(tc, a_server_that_stops_answering_fails_operations_in_time);
  tcase_add_test(tc, no_value_is_handed_out_without_its_mark);
  tcase_add_test(tc, options_are_checked_and_seq_needs_marks);
  tcase_add_test(tc, marks_in_mariadb_survive_redis_and_process_restarts);
  tcase_add_test(tc, flushed_scripts_are_loaded_again);
  tcase_add_test(tc, a_server_loading_its_data_is_waited_for);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  parse_addr(eng_env_or_skip("IMC_TEST_REDIS"));
  eng_env_or_skip("IMC_TEST_MARIADB"); /* the durable marks */
  factory.seq = imc_redis_seq_vtbl();
  factory.dedup = imc_redis_dedup_vtbl();
  SRunner *sr = srunner_create(conformance_seq_suite(&factory));
  srunner_add_suite(sr, conformance_dedup_suite(&factory));
  srunner_add_suite(sr, fault_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
