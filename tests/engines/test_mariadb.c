/*
 * The MariaDB engine against real servers.
 *
 * On the server scripts/test.sh starts (IMC_TEST_MARIADB=host:port/db,
 * with IMCHAT_MYSQL_USER / IMCHAT_MYSQL_PASSWORD, who may create the
 * databases imchat_*): the store conformance suite and this engine's own
 * cases (marks, migrations, group commit, purge chunks, the read/write
 * split), each test in a fresh database imchat_t<pid>_<n>.
 *
 * Fault cases start a server of their own (a copy of a data directory
 * main() installs once) so they can stop, kill and restart it.
 *
 * The test side talks to the servers with libmariadb's blocking calls to
 * set up and to look at what the engine wrote.
 */
#include "conformance.h"
#include "engine_test.h"
#include "testutil.h"

#include <imchat/engines/mariadb.h>

#include <check.h>
#include <mysql.h>

#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define WAIT_MS 20000

static char g_host[64];
static unsigned g_port;
static char g_tmpdir[64];    /* main()'s, removed at the end */
static char g_template[160]; /* a fault server's data directory, installed */

/* ------------------------------------------------------------------ */
/* The test side's own (blocking) SQL                                   */
/* ------------------------------------------------------------------ */

static MYSQL *admin_open(const char *host, unsigned port, const char *user,
                         const char *pw, const char *db) {
  MYSQL *my = mysql_init(NULL);
  ck_assert_ptr_nonnull(my);
  unsigned t = 20;
  mysql_options(my, MYSQL_OPT_CONNECT_TIMEOUT, &t);
  ck_assert_msg(mysql_real_connect(my, host, user, pw, db, port, NULL,
                                   CLIENT_MULTI_STATEMENTS) != NULL,
                "admin connect: %s", mysql_error(my));
  return my;
}

/* To the shared server, as the env's user. */
static MYSQL *admin_shared(const char *db) {
  return admin_open(g_host, g_port, getenv("IMCHAT_MYSQL_USER"),
                    getenv("IMCHAT_MYSQL_PASSWORD"), db);
}

static void admin_exec(MYSQL *my, const char *sql) {
  ck_assert_msg(mysql_query(my, sql) == 0, "%s: %s", sql, mysql_error(my));
  do {
    MYSQL_RES *r = mysql_store_result(my);
    if (r)
      mysql_free_result(r);
  } while (mysql_next_result(my) == 0);
}

/* The first column of the first row ("" for NULL). */
static void admin_str(MYSQL *my, const char *sql, char *out, size_t n) {
  ck_assert_msg(mysql_query(my, sql) == 0, "%s: %s", sql, mysql_error(my));
  MYSQL_RES *r = mysql_store_result(my);
  ck_assert_ptr_nonnull(r);
  MYSQL_ROW row = mysql_fetch_row(r);
  ck_assert_msg(row != NULL, "%s: no row", sql);
  snprintf(out, n, "%s", row[0] ? row[0] : "");
  mysql_free_result(r);
}

static long long admin_int(MYSQL *my, const char *sql) {
  char buf[64];
  admin_str(my, sql, buf, sizeof(buf));
  return strtoll(buf, NULL, 10);
}

/* COMMITs the server has run so far (all sessions). */
static long long commits(MYSQL *my) {
  return admin_int(my, "SELECT VARIABLE_VALUE FROM"
                       " information_schema.GLOBAL_STATUS"
                       " WHERE VARIABLE_NAME = 'COM_COMMIT'");
}

/* A new empty database on the shared server. */
static void fresh_db(char *name, size_t n) {
  static int counter;
  snprintf(name, n, "imchat_t%d_%d", (int)getpid(), ++counter);
  MYSQL *my = admin_shared(NULL);
  char sql[128];
  snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s", name);
  admin_exec(my, sql);
  snprintf(sql, sizeof(sql), "CREATE DATABASE %s CHARACTER SET utf8mb4", name);
  admin_exec(my, sql);
  mysql_close(my);
}

static void drop_db(const char *name) {
  MYSQL *my = admin_shared(NULL);
  char sql[128];
  snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s", name);
  admin_exec(my, sql);
  mysql_close(my);
}

/* ------------------------------------------------------------------ */
/* Engines                                                              */
/* ------------------------------------------------------------------ */

typedef struct cfg {
  int64_t op_timeout_ms;
  unsigned pool;
  size_t batch_ops, batch_bytes;
  uint32_t purge_chunk;
  int no_migrate;
  int64_t max_backoff_ms;
  const char *user, *password; /* NULL: from the environment */
  const imc_mem *mem;
} cfg;

static void log_line(void *ud, imc_log_level level, const char *line) {
  (void)ud;
  if (level <= IMC_LOG_WARN)
    fprintf(stderr, "  [engine] %s\n", line);
}

static imc_mariadb *engine_at(eng_loop *lp, const char *host, unsigned port,
                              const char *dbname, const cfg *c) {
  static const cfg defaults = {0};
  if (c == NULL)
    c = &defaults;
  imc_mariadb_options *o;
  ck_assert_int_eq(imc_mariadb_options_new(&o), 0);
  char addr[256];
  snprintf(addr, sizeof(addr), "%s:%u/%s", host, port, dbname);
  ck_assert_int_eq(imc_mariadb_options_set_address(o, addr), 0);
  if (c->user)
    ck_assert_int_eq(
        imc_mariadb_options_set_credentials(o, c->user, c->password), 0);
  else
    ck_assert_int_eq(imc_mariadb_options_credentials_from_env(o), 0);
  if (c->op_timeout_ms)
    ck_assert_int_eq(imc_mariadb_options_set_op_timeout_ms(o, c->op_timeout_ms),
                     0);
  if (c->pool)
    ck_assert_int_eq(imc_mariadb_options_set_pool_size(o, c->pool), 0);
  if (c->batch_ops)
    ck_assert_int_eq(
        imc_mariadb_options_set_batch_limits(o, c->batch_ops, c->batch_bytes),
        0);
  if (c->purge_chunk)
    ck_assert_int_eq(imc_mariadb_options_set_purge_chunk(o, c->purge_chunk), 0);
  if (c->no_migrate)
    ck_assert_int_eq(imc_mariadb_options_set_migrate(o, 0), 0);
  if (c->max_backoff_ms)
    ck_assert_int_eq(
        imc_mariadb_options_set_connect(o, 1000, c->max_backoff_ms), 0);
  ck_assert_int_eq(imc_mariadb_options_set_log(o, log_line, NULL), 0);
  imc_mariadb *db = NULL;
  int rv = imc_mariadb_new(&db, lp->loop, o, c->mem);
  imc_mariadb_options_del(o);
  ck_assert(rv == 0 || (rv == IMC_ERR_NOMEM && c->mem));
  return db;
}

/* Runs the loop until db's health is want; returns 1, or 0 after ms. */
static int wait_health(eng_loop *lp, imc_mariadb *db, int want, int64_t ms) {
  int64_t end = eng_now_ms() + ms;
  while (imc_mariadb_health(db) != want) {
    if (eng_now_ms() >= end)
      return 0;
    eng_loop_turn(lp, 20);
  }
  return 1;
}

/* ------------------------------------------------------------------ */
/* Operations, waited for                                               */
/* ------------------------------------------------------------------ */

typedef struct res {
  int calls;
  int status;
  uint64_t mark;
  size_t n;
  int has_more;
  char ids[512][40];
  uint64_t cursors[512];
} res;

static void on_done(void *p, int status) {
  res *r = p;
  r->calls++;
  r->status = status;
}

static void on_mark(void *p, int status, uint64_t mark) {
  res *r = p;
  r->calls++;
  r->status = status;
  r->mark = mark;
}

static void on_page(void *p, int status, const imc_msg *const *msgs,
                    const uint64_t *cursors, size_t n, int has_more) {
  res *r = p;
  r->calls++;
  r->status = status;
  ck_assert_uint_le(n, 512);
  r->n = n;
  r->has_more = has_more;
  for (size_t i = 0; i < n; i++) {
    snprintf(r->ids[i], sizeof(r->ids[i]), "%s", msgs[i]->msg_id);
    r->cursors[i] = cursors[i];
  }
}

static void on_list(void *p, int status, const char *const *items, size_t n) {
  res *r = p;
  r->calls++;
  r->status = status;
  ck_assert_uint_le(n, 512);
  r->n = n;
  for (size_t i = 0; i < n; i++)
    snprintf(r->ids[i], sizeof(r->ids[i]), "%s", items[i]);
}

/* The status of an operation that returned rv and reports into r. */
static int finish(eng_loop *lp, int rv, res *r) {
  if (rv < 0) {
    ck_assert_int_eq(r->calls, 0);
    return rv;
  }
  ck_assert_int_eq(eng_loop_until(lp, &r->calls, WAIT_MS), 1);
  ck_assert_int_eq(r->calls, 1);
  return r->status;
}

static const imc_store_vtbl *S(void) {
  return imc_mariadb_store_vtbl();
}
static const imc_marks_vtbl *M(void) {
  return imc_mariadb_marks_vtbl();
}

static int append1(eng_loop *lp, imc_mariadb *db, const imc_msg *m,
                   const char *user) {
  res r = {0};
  imc_inbox_entry e = {user, m};
  return finish(lp, S()->append(db, &m, 1, &e, user ? 1 : 0, on_done, &r), &r);
}

static int raise_mark(eng_loop *lp, imc_mariadb *db, const char *k,
                      uint64_t v) {
  res r = {0};
  return finish(lp, M()->raise(db, k, v, on_done, &r), &r);
}

static uint64_t get_mark(eng_loop *lp, imc_mariadb *db, const char *k) {
  res r = {0};
  ck_assert_int_eq(finish(lp, M()->get(db, k, on_mark, &r), &r), 0);
  return r.mark;
}

static void inbox(eng_loop *lp, imc_mariadb *db, const char *user,
                  uint64_t after, uint32_t limit, res *r) {
  memset(r, 0, sizeof(*r));
  ck_assert_int_eq(
      finish(lp, S()->fetch_inbox(db, user, after, limit, on_page, r), r), 0);
}

static void history(eng_loop *lp, imc_mariadb *db, const char *conv, res *r) {
  memset(r, 0, sizeof(*r));
  ck_assert_int_eq(
      finish(lp, S()->fetch_history(db, conv, 0, 512, on_page, r), r), 0);
}

static imc_msg mk(const char *id, const char *conv, uint64_t seq, int64_t sent,
                  const char *body) {
  imc_msg m = {
      .struct_size = sizeof(m),
      .msg_id = id,
      .conversation_id = conv,
      .seq = seq,
      .from_user = "alice",
      .to_user = "bob",
      .group_id = "",
      .body = (const uint8_t *)body,
      .body_len = strlen(body),
      .content_type = "text/plain",
      .sent_at_ms = sent,
      .client_msg_id = "",
      .from_device = "phone",
  };
  return m;
}

/* ------------------------------------------------------------------ */
/* The conformance factory: a fresh database per test                   */
/* ------------------------------------------------------------------ */

typedef struct mfx {
  eng_loop loop;
  char db[64];
} mfx;

static mfx g_fx;

static void *fx_create(void *ctx, const imc_clock *clock) {
  mfx *f = ctx;
  (void)clock; /* nothing of the store expires by itself */
  eng_loop_init(&f->loop);
  fresh_db(f->db, sizeof(f->db));
  return engine_at(&f->loop, g_host, g_port, f->db, NULL);
}

static void fx_destroy(void *ctx, void *ud) {
  mfx *f = ctx;
  imc_mariadb_del(ud);
  drop_db(f->db);
  eng_loop_fini(&f->loop);
}

static void *fx_reopen(void *ctx, void *ud) {
  mfx *f = ctx;
  imc_mariadb_del(ud);
  return engine_at(&f->loop, g_host, g_port, f->db, NULL);
}

static int fx_dispatch(void *ctx, void *ud) {
  mfx *f = ctx;
  (void)ud;
  eng_loop_turn(&f->loop, 50);
  return 0;
}

static conformance_factory factory = {
    .name = "mariadb",
    .ctx = &g_fx,
    .create = fx_create,
    .destroy = fx_destroy,
    .reopen = fx_reopen,
    .dispatch = fx_dispatch,
};

/* ------------------------------------------------------------------ */
/* The engine's own cases on the shared server                          */
/* ------------------------------------------------------------------ */

static eng_loop T;
static char T_db[64];

static void setup(void) {
  eng_loop_init(&T);
  fresh_db(T_db, sizeof(T_db));
}

static void teardown(void) {
  drop_db(T_db);
  eng_loop_fini(&T);
}

static imc_mariadb *engine(const cfg *c) {
  return engine_at(&T, g_host, g_port, T_db, c);
}

START_TEST(options_checked) {
  imc_mariadb_options *o;
  ck_assert_int_eq(imc_mariadb_options_new(&o), 0);
  static const char *bad[] = {"",         "host",      "/db",
                              "host:/db", "host:0/db", "host:65536/db",
                              "h:1x/db",  "host:1/",   "host:1/bad-name",
                              "[::1/db",  "[::1]x/db", ":3306/db"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    ck_assert_msg(imc_mariadb_options_set_address(o, bad[i]) ==
                      IMC_ERR_INVALID_ARGUMENT,
                  "accepted %s", bad[i]);
  ck_assert_int_eq(imc_mariadb_options_set_address(o, "db.example:3307/chat"),
                   0);
  ck_assert_int_eq(imc_mariadb_options_set_address(o, "[::1]:3306/chat_2"), 0);
  ck_assert_int_eq(imc_mariadb_options_set_address(o, "10.0.0.1/chat"), 0);
  ck_assert_int_eq(imc_mariadb_options_set_pool_size(o, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_mariadb_options_set_pool_size(o, 17),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_mariadb_options_set_credentials(o, "", "x"),
                   IMC_ERR_INVALID_ARGUMENT);
  /* No credentials yet: the engine refuses to start. */
  imc_mariadb *db = NULL;
  ck_assert_int_eq(imc_mariadb_new(&db, T.loop, o, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_null(db);
  char user[128], pw[128];
  snprintf(user, sizeof(user), "%s", getenv("IMCHAT_MYSQL_USER"));
  snprintf(pw, sizeof(pw), "%s", getenv("IMCHAT_MYSQL_PASSWORD"));
  unsetenv("IMCHAT_MYSQL_USER");
  ck_assert_int_eq(imc_mariadb_options_credentials_from_env(o),
                   IMC_ERR_NOT_FOUND);
  setenv("IMCHAT_MYSQL_USER", "someone", 1);
  unsetenv("IMCHAT_MYSQL_PASSWORD");
  ck_assert_int_eq(imc_mariadb_options_credentials_from_env(o), 0);
  imc_mariadb_options_del(o);
  setenv("IMCHAT_MYSQL_USER", user, 1); /* for the teardown */
  setenv("IMCHAT_MYSQL_PASSWORD", pw, 1);
}
END_TEST

START_TEST(bad_arguments_refused) {
  imc_mariadb *db = engine(&(cfg){.batch_ops = 16, .batch_bytes = 64 * 1024});
  res r = {0};
  imc_msg m = mk("m1", "p:alice:bob", 1, 1000, "x");
  const imc_msg *mp = &m;
  imc_msg no_id = mk("", "p:alice:bob", 1, 1000, "x");
  const imc_msg *np = &no_id;
  ck_assert_int_eq(S()->append(db, &np, 1, NULL, 0, on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  char long_id[200];
  memset(long_id, 'a', sizeof(long_id) - 1);
  long_id[sizeof(long_id) - 1] = '\0';
  imc_inbox_entry e = {long_id, &m};
  ck_assert_int_eq(S()->append(db, &mp, 1, &e, 1, on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(S()->append(db, &mp, 1, NULL, 0, NULL, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(S()->fetch_inbox(db, "bob", 0, 0, on_page, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(S()->fetch_history(db, "", 0, 10, on_page, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(S()->group_add(db, "g", NULL, on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(M()->raise(db, "", 1, on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  /* 40 KB of body is 80 KB of hex: more than a 64 KiB batch holds. */
  static char big[40 * 1024 + 1];
  memset(big, 'b', sizeof(big) - 1);
  imc_msg huge = mk("huge", "p:alice:bob", 2, 1000, big);
  const imc_msg *hp = &huge;
  ck_assert_int_eq(S()->append(db, &hp, 1, NULL, 0, on_done, &r),
                   IMC_ERR_TOO_LARGE);
  ck_assert_int_eq(r.calls, 0);
  /* Invalid UTF-8 is refused by the server, for that append alone. */
  imc_msg bad = mk("bad-utf8", "p:alice:bob", 3, 1000, "x");
  bad.content_type = "text/\xff\xfe";
  ck_assert_int_eq(append1(&T, db, &bad, NULL), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(append1(&T, db, &m, "bob"), 0);
  imc_mariadb_del(db);
}
END_TEST

START_TEST(marks_never_go_down) {
  imc_mariadb *db = engine(NULL);
  ck_assert_uint_eq(get_mark(&T, db, "seq:p:a:b"), 0);
  ck_assert_int_eq(raise_mark(&T, db, "seq:p:a:b", 10), 0);
  ck_assert_uint_eq(get_mark(&T, db, "seq:p:a:b"), 10);
  ck_assert_int_eq(raise_mark(&T, db, "seq:p:a:b", 5), 0);
  ck_assert_uint_eq(get_mark(&T, db, "seq:p:a:b"), 10);
  /* Raises of one turn share a batch, in any order: the highest wins. */
  res r[4] = {{0}};
  uint64_t v[4] = {30, 70, 50, UINT64_MAX};
  const char *k[4] = {"k2", "k2", "k2", "max"};
  for (int i = 0; i < 4; i++)
    ck_assert_int_eq(M()->raise(db, k[i], v[i], on_done, &r[i]), 0);
  for (int i = 0; i < 4; i++)
    ck_assert_int_eq(finish(&T, 0, &r[i]), 0);
  ck_assert_uint_eq(get_mark(&T, db, "k2"), 70);
  ck_assert_uint_eq(get_mark(&T, db, "max"), UINT64_MAX);
  /* A new engine (new connections) reads the same marks. */
  imc_mariadb_del(db);
  db = engine(NULL);
  ck_assert_uint_eq(get_mark(&T, db, "seq:p:a:b"), 10);
  ck_assert_uint_eq(get_mark(&T, db, "k2"), 70);
  ck_assert_int_eq(raise_mark(&T, db, "k2", 71), 0);
  ck_assert_uint_eq(get_mark(&T, db, "k2"), 71);
  imc_mariadb_del(db);
}
END_TEST

/* Everything made in one turn commits once. */
START_TEST(one_turn_one_commit) {
  imc_mariadb *db = engine(NULL);
  ck_assert(wait_health(&T, db, 0, WAIT_MS));
  MYSQL *adm = admin_shared(T_db);
  enum { N = 60 };
  imc_msg m[N];
  char ids[N][16];
  imc_inbox_entry e[N];
  res r[N + 3];
  memset(r, 0, sizeof(r));
  long long before = commits(adm);
  for (int i = 0; i < N; i++) {
    snprintf(ids[i], sizeof(ids[i]), "c%d", i);
    m[i] = mk(ids[i], "p:alice:bob", (uint64_t)i + 1, 1000, "hi");
    e[i] = (imc_inbox_entry){"bob", &m[i]};
    const imc_msg *mp = &m[i];
    ck_assert_int_eq(S()->append(db, &mp, 1, &e[i], 1, on_done, &r[i]), 0);
  }
  ck_assert_int_eq(M()->raise(db, "k", 9, on_done, &r[N]), 0);
  ck_assert_int_eq(S()->group_add(db, "team", "bob", on_done, &r[N + 1]), 0);
  ck_assert_int_eq(S()->group_add(db, "team", "carol", on_done, &r[N + 2]), 0);
  for (int i = 0; i < N + 3; i++)
    ck_assert_int_eq(finish(&T, 0, &r[i]), 0);
  ck_assert_int_eq(commits(adm) - before, 1);
  res page;
  inbox(&T, db, "bob", 0, 512, &page);
  ck_assert_uint_eq(page.n, N);
  for (int i = 0; i < N; i++)
    ck_assert_str_eq(page.ids[i], ids[i]); /* cursor order = arrival */
  imc_mariadb_del(db);

  /* With a bound of 8 operations a batch, 60 appends take 8 commits. */
  db = engine(&(cfg){.batch_ops = 8, .batch_bytes = 1024 * 1024});
  ck_assert(wait_health(&T, db, 0, WAIT_MS));
  memset(r, 0, sizeof(r));
  before = commits(adm);
  for (int i = 0; i < N; i++) {
    const imc_msg *mp = &m[i];
    ck_assert_int_eq(S()->append(db, &mp, 1, &e[i], 1, on_done, &r[i]), 0);
  }
  for (int i = 0; i < N; i++)
    ck_assert_int_eq(finish(&T, 0, &r[i]), 0);
  ck_assert_int_eq(commits(adm) - before, (N + 7) / 8);
  ck_assert_int_eq(
      admin_int(adm, "SELECT COUNT(*) FROM inbox WHERE user_id = 'bob'"), N);
  mysql_close(adm);
  imc_mariadb_del(db);
}
END_TEST

/* In a batch that fails, the operation at fault fails alone. */
START_TEST(bad_operation_fails_alone) {
  imc_mariadb *db = engine(NULL);
  imc_msg m1 = mk("m1", "p:alice:bob", 1, 1000, "one");
  ck_assert_int_eq(append1(&T, db, &m1, "bob"), 0);
  imc_msg a = mk("a", "p:alice:bob", 2, 1000, "a");
  imc_msg clash = mk("clash", "p:alice:bob", 1, 1000, "takes seq 1");
  imc_msg b = mk("b", "p:alice:bob", 3, 1000, "b");
  const imc_msg *ms[3] = {&a, &clash, &b};
  res r[3] = {{0}};
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(S()->append(db, &ms[i], 1, NULL, 0, on_done, &r[i]), 0);
  ck_assert_int_eq(finish(&T, 0, &r[0]), 0);
  ck_assert_int_eq(finish(&T, 0, &r[1]), IMC_ERR_EXISTS);
  ck_assert_int_eq(finish(&T, 0, &r[2]), 0);
  res h;
  history(&T, db, "p:alice:bob", &h);
  ck_assert_uint_eq(h.n, 3);
  ck_assert_str_eq(h.ids[0], "m1");
  ck_assert_str_eq(h.ids[1], "a");
  ck_assert_str_eq(h.ids[2], "b");
  imc_mariadb_del(db);
}
END_TEST

/* Group changes of one batch apply in the order they were made. */
START_TEST(group_changes_keep_their_order) {
  imc_mariadb *db = engine(NULL);
  res r[6] = {{0}};
  ck_assert_int_eq(S()->group_add(db, "g", "u1", on_done, &r[0]), 0);
  ck_assert_int_eq(S()->group_remove(db, "g", "u1", on_done, &r[1]), 0);
  ck_assert_int_eq(S()->group_add(db, "g", "u2", on_done, &r[2]), 0);
  ck_assert_int_eq(S()->group_remove(db, "g", "u3", on_done, &r[3]), 0);
  ck_assert_int_eq(S()->group_add(db, "g", "u3", on_done, &r[4]), 0);
  ck_assert_int_eq(S()->group_add(db, "g", "u2", on_done, &r[5]), 0);
  for (int i = 0; i < 6; i++)
    ck_assert_int_eq(finish(&T, 0, &r[i]), 0);
  res l = {0};
  ck_assert_int_eq(finish(&T, S()->group_members(db, "g", on_list, &l), &l), 0);
  ck_assert_uint_eq(l.n, 2);
  ck_assert_str_eq(l.ids[0], "u2");
  ck_assert_str_eq(l.ids[1], "u3");
  imc_mariadb_del(db);
}
END_TEST

/* A purge deletes in chunks, a transaction each. */
START_TEST(purge_in_chunks) {
  imc_mariadb *db = engine(&(cfg){.purge_chunk = 3});
  MYSQL *adm = admin_shared(T_db);
  char ids[12][16];
  for (int i = 0; i < 12; i++) {
    snprintf(ids[i], sizeof(ids[i]), "p%d", i);
    imc_msg m =
        mk(ids[i], "g:team", (uint64_t)i + 1, i < 10 ? 1000 : 5000, "x");
    ck_assert_int_eq(append1(&T, db, &m, i % 2 ? "bob" : "carol"), 0);
  }
  long long before = commits(adm);
  res r = {0};
  ck_assert_int_eq(finish(&T, S()->purge(db, 2000, on_done, &r), &r), 0);
  /* 10 old messages in chunks of 3: 3, 3, 3, 1. */
  ck_assert_int_eq(commits(adm) - before, 4);
  res h;
  history(&T, db, "g:team", &h);
  ck_assert_uint_eq(h.n, 2);
  ck_assert_str_eq(h.ids[0], "p10");
  ck_assert_int_eq(admin_int(adm, "SELECT COUNT(*) FROM inbox"), 2);
  mysql_close(adm);
  imc_mariadb_del(db);
}
END_TEST

/* With two connections, a read stuck behind a lock holds up no write. */
START_TEST(a_blocked_read_does_not_stall_writes) {
  imc_mariadb *db = engine(NULL);
  ck_assert(wait_health(&T, db, 0, WAIT_MS));
  MYSQL *adm = admin_shared(T_db);
  admin_exec(adm, "LOCK TABLES group_members WRITE");
  res l = {0};
  ck_assert_int_eq(S()->group_members(db, "team", on_list, &l), 0);
  imc_msg m = mk("w1", "p:alice:bob", 1, 1000, "write");
  ck_assert_int_eq(append1(&T, db, &m, "bob"), 0);
  ck_assert_int_eq(raise_mark(&T, db, "k", 1), 0);
  ck_assert_int_eq(l.calls, 0); /* still waiting for the table */
  admin_exec(adm, "UNLOCK TABLES");
  ck_assert_int_eq(finish(&T, 0, &l), 0);
  ck_assert_uint_eq(l.n, 0);
  mysql_close(adm);
  imc_mariadb_del(db);
}
END_TEST

/* Inbox writes of other processes wait for the inbox lock, and a batch
 * that cannot get it commits nothing. */
START_TEST(inbox_writes_hold_the_inbox_lock) {
  MYSQL *adm = admin_shared(T_db);
  imc_mariadb *db = engine(&(cfg){.op_timeout_ms = 2500});
  ck_assert(wait_health(&T, db, 0, WAIT_MS));
  ck_assert_int_eq(admin_int(adm, "SELECT GET_LOCK(CONCAT('imchat.inbox.',"
                                  " MD5(DATABASE())), 0)"),
                   1);
  imc_msg m1 = mk("m1", "p:alice:bob", 1, 1000, "x");
  imc_inbox_entry e1 = {"bob", &m1};
  const imc_msg *mp = &m1;
  res r = {0};
  ck_assert_int_eq(S()->append(db, &mp, 1, &e1, 1, on_done, &r), 0);
  int64_t end = eng_now_ms() + 700;
  while (eng_now_ms() < end)
    eng_loop_turn(&T, 20);
  ck_assert_int_eq(r.calls, 0);
  admin_exec(adm, "DO RELEASE_LOCK(CONCAT('imchat.inbox.', MD5(DATABASE())))");
  ck_assert_int_eq(finish(&T, 0, &r), 0);

  /* Held for longer than the lock wait (2 s) and the op timeout: the
   * append fails and nothing of it is written. */
  ck_assert_int_eq(admin_int(adm, "SELECT GET_LOCK(CONCAT('imchat.inbox.',"
                                  " MD5(DATABASE())), 0)"),
                   1);
  imc_msg m2 = mk("m2", "p:alice:bob", 2, 1000, "y");
  ck_assert_int_eq(append1(&T, db, &m2, "bob"), IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(
      admin_int(adm, "SELECT COUNT(*) FROM messages WHERE msg_id = 'm2'"), 0);
  admin_exec(adm, "DO RELEASE_LOCK(CONCAT('imchat.inbox.', MD5(DATABASE())))");
  ck_assert_int_eq(append1(&T, db, &m2, "bob"), 0);
  mysql_close(adm);
  imc_mariadb_del(db);
}
END_TEST

/* Each allocation of the engine fails in turn: every call returns
 * IMC_ERR_NOMEM or completes once, and nothing leaks. */
START_TEST(allocation_failures) {
  imc_mariadb *db = engine(NULL);
  ck_assert(wait_health(&T, db, 0, WAIT_MS)); /* the schema, once */
  imc_mariadb_del(db);
  imc_msg m = mk("m1", "p:alice:bob", 1, 1000, "body");
  const imc_msg *mp = &m;
  imc_inbox_entry e = {"bob", &m};
  static res r[4];
  for (long k = 0;; k++) {
    test_mem tm;
    test_mem_init(&tm);
    tm.fail_at = k;
    db = engine(&(cfg){.mem = &tm.mem});
    if (db == NULL) {
      ck_assert_int_eq(tm.live, 0);
      continue;
    }
    memset(r, 0, sizeof(r));
    int rv[4];
    rv[0] = S()->append(db, &mp, 1, &e, 1, on_done, &r[0]);
    rv[1] = S()->fetch_inbox(db, "bob", 0, 10, on_page, &r[1]);
    rv[2] = M()->raise(db, "k", 5, on_done, &r[2]);
    rv[3] = S()->group_members(db, "team", on_list, &r[3]);
    for (int i = 0; i < 4; i++) {
      int st = finish(&T, rv[i], &r[i]);
      ck_assert_msg(st == 0 || st == IMC_ERR_NOMEM, "op %d: %d", i, st);
    }
    imc_mariadb_del(db);
    ck_assert_int_eq(tm.live, 0);
    if (tm.count <= k)
      break; /* nothing failed: every allocation had its turn */
  }
}
END_TEST

START_TEST(del_completes_pending_with_closed) {
  imc_mariadb *db = engine(NULL);
  res r[3] = {{0}};
  imc_msg m = mk("m1", "p:alice:bob", 1, 1000, "x");
  const imc_msg *mp = &m;
  ck_assert_int_eq(S()->append(db, &mp, 1, NULL, 0, on_done, &r[0]), 0);
  ck_assert_int_eq(S()->fetch_inbox(db, "bob", 0, 10, on_page, &r[1]), 0);
  ck_assert_int_eq(imc_mariadb_migrate(db, on_done, &r[2]), 0);
  imc_mariadb_del(db);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(r[i].calls, 1);
    ck_assert_int_eq(r[i].status, IMC_ERR_CLOSED);
  }
}
END_TEST

/* ------------------------------------------------------------------ */
/* Migrations                                                           */
/* ------------------------------------------------------------------ */

static int migrate(eng_loop *lp, imc_mariadb *db) {
  res r = {0};
  return finish(lp, imc_mariadb_migrate(db, on_done, &r), &r);
}

START_TEST(migrations_apply_once) {
  int latest = imc_mariadb_schema_version();
  ck_assert_int_ge(latest, 2);
  imc_mariadb *db = engine(NULL);
  ck_assert(wait_health(&T, db, 0, WAIT_MS));
  MYSQL *adm = admin_shared(T_db);
  ck_assert_int_eq(admin_int(adm, "SELECT COUNT(*) FROM schema_version"),
                   latest);
  ck_assert_int_eq(admin_int(adm, "SELECT MAX(version) FROM schema_version"),
                   latest);
  char first[64], now[64];
  admin_str(adm,
            "SELECT GROUP_CONCAT(applied_at ORDER BY version)"
            " FROM schema_version",
            first, sizeof(first));
  /* Again, on the same engine and on a new one: nothing changes. */
  ck_assert_int_eq(migrate(&T, db), 0);
  imc_mariadb_del(db);
  db = engine(NULL);
  ck_assert(wait_health(&T, db, 0, WAIT_MS));
  ck_assert_int_eq(migrate(&T, db), 0);
  ck_assert_int_eq(admin_int(adm, "SELECT COUNT(*) FROM schema_version"),
                   latest);
  admin_str(adm,
            "SELECT GROUP_CONCAT(applied_at ORDER BY version)"
            " FROM schema_version",
            now, sizeof(now));
  ck_assert_str_eq(now, first);
  imc_mariadb_del(db);

  /* A database one migration behind gets exactly that one. */
  admin_exec(adm, "DROP TABLE marks");
  char sql[256];
  snprintf(sql, sizeof(sql), "DELETE FROM schema_version WHERE version = %d",
           latest);
  admin_exec(adm, sql);
  db = engine(NULL);
  ck_assert(wait_health(&T, db, 0, WAIT_MS));
  ck_assert_int_eq(admin_int(adm, "SELECT COUNT(*) FROM schema_version"),
                   latest);
  snprintf(sql, sizeof(sql),
           "SELECT COUNT(*) FROM schema_version WHERE version < %d"
           " AND applied_at <= (SELECT MIN(applied_at) FROM schema_version"
           " WHERE version = %d)",
           latest, latest);
  ck_assert_int_eq(admin_int(adm, sql), latest - 1);
  ck_assert_int_eq(raise_mark(&T, db, "k", 3), 0);
  imc_mariadb_del(db);
  mysql_close(adm);
}
END_TEST

/* With migrate 0 the engine serves nothing until someone migrates. */
START_TEST(migrate_only_when_asked) {
  imc_mariadb *db = engine(&(cfg){.no_migrate = 1, .op_timeout_ms = 600});
  ck_assert(wait_health(&T, db, IMC_ERR_IO, WAIT_MS));
  ck_assert_ptr_nonnull(strstr(imc_mariadb_errmsg(db), "migrat"));
  imc_msg m = mk("m1", "p:alice:bob", 1, 1000, "x");
  int64_t t0 = eng_now_ms();
  ck_assert_int_eq(append1(&T, db, &m, "bob"), IMC_ERR_UNAVAILABLE);
  ck_assert_int_lt(eng_now_ms() - t0, 600 + 1000);
  MYSQL *adm = admin_shared(T_db);
  ck_assert_int_eq(admin_int(adm,
                             "SELECT COUNT(*) FROM information_schema.TABLES"
                             " WHERE TABLE_SCHEMA = DATABASE()"
                             " AND TABLE_NAME = 'messages'"),
                   0);
  ck_assert_int_eq(migrate(&T, db), 0);
  ck_assert_int_eq(imc_mariadb_health(db), 0);
  ck_assert_int_eq(admin_int(adm, "SELECT MAX(version) FROM schema_version"),
                   imc_mariadb_schema_version());
  ck_assert_int_eq(append1(&T, db, &m, "bob"), 0);
  mysql_close(adm);
  imc_mariadb_del(db);
}
END_TEST

START_TEST(newer_schema_refused) {
  imc_mariadb *db = engine(NULL);
  ck_assert(wait_health(&T, db, 0, WAIT_MS));
  imc_mariadb_del(db);
  MYSQL *adm = admin_shared(T_db);
  admin_exec(adm, "INSERT INTO schema_version (version, description)"
                  " VALUES (999, 'from the future')");
  mysql_close(adm);
  db = engine(NULL);
  ck_assert(wait_health(&T, db, IMC_ERR_IO, WAIT_MS));
  ck_assert_ptr_nonnull(strstr(imc_mariadb_errmsg(db), "newer"));
  ck_assert_int_eq(migrate(&T, db), IMC_ERR_IO);
  imc_mariadb_del(db);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Fault cases: a server of the test's own                              */
/* ------------------------------------------------------------------ */

#define F_USER "imchat"
#define F_PASS "fault-test-pw"
#define F_DB "imchat_f"

typedef struct srv {
  char dir[160];
  uint16_t port;
  pid_t pid;
} srv;

/* Runs argv to its end; 0 if it exited 0. Usable outside a test. */
static int run_ok(char *const argv[]) {
  pid_t pid = fork();
  if (pid < 0)
    return -1;
  if (pid == 0) {
    int fd = open("/dev/null", O_WRONLY);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execvp(argv[0], argv);
    _exit(127);
  }
  int st;
  while (waitpid(pid, &st, 0) < 0)
    ;
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

static void run(char *const argv[]) {
  ck_assert_msg(run_ok(argv) == 0, "%s failed", argv[0]);
}

/* Installs a data directory with the fault tests' account under dir.
 * Returns 0 or -1. */
static int install(const char *dir) {
  char init[256], datadir[256], extra[300], datadir_arg[300];
  snprintf(init, sizeof(init), "%s/init.sql", dir);
  FILE *f = fopen(init, "w");
  if (f == NULL)
    return -1;
  fprintf(f,
          "FLUSH PRIVILEGES;\n"
          "CREATE DATABASE " F_DB ";\n"
          "CREATE USER '" F_USER "'@'127.0.0.1' IDENTIFIED BY '" F_PASS "';\n"
          "GRANT ALL PRIVILEGES ON *.* TO '" F_USER "'@'127.0.0.1';\n");
  fclose(f);
  snprintf(datadir, sizeof(datadir), "%s/d", dir);
  snprintf(datadir_arg, sizeof(datadir_arg), "--datadir=%s", datadir);
  snprintf(extra, sizeof(extra), "--extra-file=%s", init);
  char *argv[] = {"mariadb-install-db",
                  "--no-defaults",
                  datadir_arg,
                  "--user=root",
                  "--auth-root-authentication-method=normal",
                  "--skip-test-db",
                  "--innodb-log-file-size=8M",
                  extra,
                  NULL};
  return run_ok(argv);
}

static void srv_start(srv *s) {
  char datadir[200], sock[200], pidf[200], port[32], err[200];
  snprintf(datadir, sizeof(datadir), "--datadir=%s/d", s->dir);
  snprintf(sock, sizeof(sock), "--socket=%s/sock", s->dir);
  snprintf(pidf, sizeof(pidf), "--pid-file=%s/pid", s->dir);
  snprintf(port, sizeof(port), "--port=%u", s->port);
  snprintf(err, sizeof(err), "--log-error=%s/err", s->dir);
  char *argv[] = {"mariadbd",
                  "--no-defaults",
                  datadir,
                  sock,
                  pidf,
                  port,
                  "--bind-address=127.0.0.1",
                  "--user=root",
                  "--skip-name-resolve",
                  "--skip-log-bin",
                  "--innodb-buffer-pool-size=64M",
                  "--innodb-log-file-size=8M",
                  "--innodb-flush-log-at-trx-commit=1",
                  err,
                  NULL};
  s->pid = eng_spawn(argv, NULL);
  ck_assert_msg(eng_wait_port(s->port, 60000), "mariadbd did not start");
}

/* A server on a free port with a copy of the installed template, in a
 * directory under g_tmpdir (so nothing is left behind, even by a test
 * that failed). */
static void srv_new(srv *s) {
  snprintf(s->dir, sizeof(s->dir), "%s/fault-XXXXXX", g_tmpdir);
  ck_assert_ptr_nonnull(mkdtemp(s->dir));
  char dst[200];
  snprintf(dst, sizeof(dst), "%s/d", s->dir);
  char *argv[] = {"cp", "-a", g_template, dst, NULL};
  run(argv);
  s->port = eng_free_port();
  srv_start(s);
}

static void srv_stop(srv *s, int sig) {
  if (s->pid > 0)
    eng_kill(s->pid, sig);
  s->pid = 0;
}

static void srv_remove(srv *s) {
  srv_stop(s, SIGKILL);
  char *argv[] = {"rm", "-rf", s->dir, NULL};
  run(argv);
}

static MYSQL *admin_fault(const srv *s) {
  return admin_open("127.0.0.1", s->port, F_USER, F_PASS, F_DB);
}

static imc_mariadb *fault_engine(const srv *s, cfg c) {
  c.user = F_USER;
  c.password = F_PASS;
  return engine_at(&T, "127.0.0.1", s->port, F_DB, &c);
}

static void fault_setup(void) {
  eng_loop_init(&T);
}

static void fault_teardown(void) {
  eng_loop_fini(&T);
}

/*
 * Server stopped: health says so at once, operations fail with
 * IMC_ERR_UNAVAILABLE within their timeout. Server back: the engine
 * reconnects by itself, and what was committed (a mark) is there.
 */
START_TEST(server_stopped_and_back) {
  srv s;
  srv_new(&s);
  imc_mariadb *db =
      fault_engine(&s, (cfg){.op_timeout_ms = 1500, .max_backoff_ms = 300});
  ck_assert(wait_health(&T, db, 0, 30000));
  ck_assert_int_eq(raise_mark(&T, db, "seq:g:team", 42), 0);
  imc_msg m1 = mk("m1", "g:team", 1, 1000, "before");
  ck_assert_int_eq(append1(&T, db, &m1, "bob"), 0);

  srv_stop(&s, SIGTERM);
  ck_assert(wait_health(&T, db, IMC_ERR_UNAVAILABLE, 3000));
  imc_msg m2 = mk("m2", "g:team", 2, 1000, "while down");
  res r[3] = {{0}};
  int64_t t0 = eng_now_ms();
  const imc_msg *mp = &m2;
  ck_assert_int_eq(S()->append(db, &mp, 1, NULL, 0, on_done, &r[0]), 0);
  ck_assert_int_eq(S()->fetch_inbox(db, "bob", 0, 10, on_page, &r[1]), 0);
  ck_assert_int_eq(M()->get(db, "seq:g:team", on_mark, &r[2]), 0);
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(finish(&T, 0, &r[i]), IMC_ERR_UNAVAILABLE);
  int64_t took = eng_now_ms() - t0;
  ck_assert_int_ge(took, 1400);
  ck_assert_int_lt(took, 1500 + 1000);
  ck_assert_int_eq(imc_mariadb_health(db), IMC_ERR_UNAVAILABLE);

  srv_start(&s);
  ck_assert(wait_health(&T, db, 0, 30000));
  ck_assert_uint_eq(get_mark(&T, db, "seq:g:team"), 42);
  ck_assert_int_eq(raise_mark(&T, db, "seq:g:team", 7), 0);
  ck_assert_uint_eq(get_mark(&T, db, "seq:g:team"), 42);
  ck_assert_int_eq(append1(&T, db, &m2, "bob"), 0);
  res page;
  inbox(&T, db, "bob", 0, 10, &page);
  ck_assert_uint_eq(page.n, 2);
  ck_assert_str_eq(page.ids[0], "m1");
  ck_assert_str_eq(page.ids[1], "m2");
  imc_mariadb_del(db);
  srv_remove(&s);
}
END_TEST

/* InnoDB reports a transaction that has written rows and waits for a
 * lock. */
static int innodb_waits_with_rows(MYSQL *my) {
  ck_assert_int_eq(mysql_query(my, "SHOW ENGINE INNODB STATUS"), 0);
  MYSQL_RES *r = mysql_store_result(my);
  ck_assert_ptr_nonnull(r);
  MYSQL_ROW row = mysql_fetch_row(r);
  ck_assert(row != NULL && row[2] != NULL);
  int found = 0;
  for (const char *p = strstr(row[2], "LOCK WAIT"); p && !found;
       p = strstr(p + 1, "LOCK WAIT")) {
    const char *undo = strstr(p, "undo log entries ");
    const char *eol = strchr(p, '\n');
    found = undo && (eol == NULL || undo < eol) &&
            strtol(undo + strlen("undo log entries "), NULL, 10) > 0;
  }
  mysql_free_result(r);
  return found;
}

/*
 * kill -9 while a batch is inside its transaction (held there by a row
 * lock the test takes): nothing is reported before the restart, and
 * after it the batch is retried and every row is there exactly once.
 */
START_TEST(killed_mid_batch) {
  srv s;
  srv_new(&s);
  imc_mariadb *db = fault_engine(&s, (cfg){.op_timeout_ms = 90000,
                                           .max_backoff_ms = 300,
                                           .batch_ops = 1000,
                                           .batch_bytes = 4 * 1024 * 1024});
  ck_assert(wait_health(&T, db, 0, 30000));
  enum { N = 300 };
  static char body[1024 + 1];
  memset(body, 'z', sizeof(body) - 1);
  static imc_msg m[N];
  static char ids[N][16];
  static imc_inbox_entry e[N];
  static res r[N];
  memset(r, 0, sizeof(r));

  MYSQL *adm = admin_fault(&s);
  admin_exec(adm, "START TRANSACTION");
  admin_exec(adm, "INSERT INTO inbox (user_id, msg_id) VALUES ('bob', 'k150')");
  for (int i = 0; i < N; i++) {
    snprintf(ids[i], sizeof(ids[i]), "k%d", i);
    m[i] = mk(ids[i], "p:alice:bob", (uint64_t)i + 1, 1000, body);
    e[i] = (imc_inbox_entry){"bob", &m[i]};
    const imc_msg *mp = &m[i];
    ck_assert_int_eq(S()->append(db, &mp, 1, &e[i], 1, on_done, &r[i]), 0);
  }
  /* The batch runs until it meets the test's uncommitted row: its
   * messages are inserted, its inbox INSERT waits. */
  int64_t end = eng_now_ms() + 30000;
  while (admin_int(adm, "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
                        " WHERE INFO LIKE 'INSERT INTO inbox %'") == 0 ||
         !innodb_waits_with_rows(adm)) {
    ck_assert_msg(eng_now_ms() < end, "the batch never waited for the row");
    eng_loop_turn(&T, 10);
  }
  srv_stop(&s, SIGKILL);
  mysql_close(adm);
  ck_assert(wait_health(&T, db, IMC_ERR_UNAVAILABLE, 5000));
  for (int i = 0; i < N; i++)
    ck_assert_int_eq(r[i].calls, 0); /* nothing committed, nothing said */

  srv_start(&s);
  for (int i = 0; i < N; i++)
    ck_assert_int_eq(finish(&T, 0, &r[i]), 0);
  adm = admin_fault(&s);
  ck_assert_int_eq(admin_int(adm, "SELECT COUNT(*) FROM messages"), N);
  ck_assert_int_eq(admin_int(adm, "SELECT COUNT(*) FROM inbox"), N);
  ck_assert_int_eq(admin_int(adm, "SELECT COUNT(DISTINCT msg_id) FROM inbox"),
                   N);
  mysql_close(adm);
  res page;
  inbox(&T, db, "bob", 0, 512, &page);
  ck_assert_uint_eq(page.n, N);
  for (int i = 0; i < N; i++)
    ck_assert_str_eq(page.ids[i], ids[i]);
  imc_mariadb_del(db);
  srv_remove(&s);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Runner                                                               */
/* ------------------------------------------------------------------ */

static Suite *engine_suite(void) {
  Suite *s = suite_create("mariadb");
  TCase *tc = tcase_create("engine");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, options_checked);
  tcase_add_test(tc, bad_arguments_refused);
  tcase_add_test(tc, marks_never_go_down);
  tcase_add_test(tc, one_turn_one_commit);
  tcase_add_test(tc, bad_operation_fails_alone);
  tcase_add_test(tc, group_changes_keep_their_order);
  tcase_add_test(tc, purge_in_chunks);
  tcase_add_test(tc, a_blocked_read_does_not_stall_writes);
  tcase_add_test(tc, inbox_writes_hold_the_inbox_lock);
  tcase_add_test(tc, allocation_failures);
  tcase_add_test(tc, del_completes_pending_with_closed);
  tcase_add_test(tc, migrations_apply_once);
  tcase_add_test(tc, migrate_only_when_asked);
  tcase_add_test(tc, newer_schema_refused);
  suite_add_tcase(s, tc);
  TCase *f = tcase_create("faults");
  tcase_add_checked_fixture(f, fault_setup, fault_teardown);
  tcase_set_timeout(f, 240);
  tcase_add_test(f, server_stopped_and_back);
  tcase_add_test(f, killed_mid_batch);
  suite_add_tcase(s, f);
  return s;
}

/* The fault servers' data directory, installed once for all of them. */
static void install_template(void) {
  snprintf(g_tmpdir, sizeof(g_tmpdir), "/tmp/imc-mdb-XXXXXX");
  if (mkdtemp(g_tmpdir) == NULL) {
    perror("mkdtemp");
    exit(EXIT_FAILURE);
  }
  if (install(g_tmpdir) < 0) {
    fprintf(stderr, "mariadb-install-db failed\n");
    exit(EXIT_FAILURE);
  }
  snprintf(g_template, sizeof(g_template), "%s/d", g_tmpdir);
}

int main(void) {
  const char *addr = eng_env_or_skip("IMC_TEST_MARIADB");
  eng_env_or_skip("IMCHAT_MYSQL_USER");
  const char *colon = strchr(addr, ':'), *slash = strchr(addr, '/');
  if (colon == NULL || slash == NULL || colon > slash ||
      (size_t)(colon - addr) >= sizeof(g_host)) {
    fprintf(stderr, "IMC_TEST_MARIADB: want host:port/db, got %s\n", addr);
    return EXIT_FAILURE;
  }
  memcpy(g_host, addr, (size_t)(colon - addr));
  g_port = (unsigned)strtoul(colon + 1, NULL, 10);
  factory.store = imc_mariadb_store_vtbl();
  install_template();

  SRunner *sr = srunner_create(conformance_store_suite(&factory));
  srunner_add_suite(sr, engine_suite());
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  char *argv[] = {"rm", "-rf", g_tmpdir, NULL};
  run_ok(argv);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
