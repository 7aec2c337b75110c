/*
 * The SQLite embedded backends: the conformance suites for seq, dedup,
 * store and bus, plus what is particular to SQLite (files, durability,
 * allocation failures, the dispatch rule).
 */
#include <imchat/sqlite.h>

#include "conformance.h"
#include "testutil.h"

#include <check.h>
#include <dirent.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmpdir[256];
static int file_counter;

static void new_path(char *out, size_t size) {
  snprintf(out, size, "%s/db-%ld-%d.sqlite", tmpdir, (long)getpid(),
           file_counter++);
}

static void remove_db(const char *path) {
  char p[400];
  unlink(path);
  snprintf(p, sizeof(p), "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof(p), "%s-shm", path);
  unlink(p);
}

/* ------------------------------------------------------------------ */
/* The factory for the conformance suites                               */
/* ------------------------------------------------------------------ */

typedef struct sq_ctx {
  char path[384];
  const imc_clock *clock;
  test_mem tm;
} sq_ctx;

static sq_ctx ctx;

static imc_sqlite *open_db(sq_ctx *c) {
  imc_sqlite *db = NULL;
  int rv = imc_sqlite_new(&db, c->path, c->clock, &c->tm.mem);
  ck_assert_msg(rv == 0, "imc_sqlite_new: %s: %s", imc_strerror(rv),
                db ? imc_sqlite_errmsg(db) : "");
  return db;
}

static void *fx_create(void *p, const imc_clock *clock) {
  sq_ctx *c = p;
  new_path(c->path, sizeof(c->path));
  c->clock = clock;
  test_mem_init(&c->tm);
  return open_db(c);
}

static void fx_destroy(void *p, void *ud) {
  sq_ctx *c = p;
  imc_sqlite_del(ud);
  ck_assert_int_eq(c->tm.live, 0);
  remove_db(c->path);
}

static void *fx_reopen(void *p, void *ud) {
  sq_ctx *c = p;
  imc_sqlite_del(ud);
  ck_assert_int_eq(c->tm.live, 0);
  return open_db(c);
}

static int fx_dispatch(void *p, void *ud) {
  (void)p;
  return imc_sqlite_dispatch(ud);
}

static conformance_factory factory = {
    .name = "sqlite",
    .ctx = &ctx,
    .create = fx_create,
    .destroy = fx_destroy,
    .reopen = fx_reopen,
    .dispatch = fx_dispatch,
};

/* ------------------------------------------------------------------ */
/* Helpers                                                              */
/* ------------------------------------------------------------------ */

typedef struct res {
  int calls;
  int status;
  int found;
  uint64_t seq;
  size_t n;
  int has_more;
  uint64_t first_offset, last_offset;
} res;

static void on_done(void *p, int status) {
  res *r = p;
  r->calls++;
  r->status = status;
}

static void on_seq(void *p, int status, uint64_t seq) {
  res *r = p;
  r->calls++;
  r->status = status;
  r->seq = seq;
}

static void on_dedup(void *p, int status, int found, const uint8_t *v,
                     size_t n) {
  res *r = p;
  (void)v;
  r->calls++;
  r->status = status;
  r->found = found;
  r->n = n;
}

static void on_page(void *p, int status, const imc_msg *const *msgs,
                    const uint64_t *cursors, size_t n, int has_more) {
  res *r = p;
  (void)msgs;
  (void)cursors;
  r->calls++;
  r->status = status;
  r->n = n;
  r->has_more = has_more;
}

static void on_list(void *p, int status, const char *const *items, size_t n) {
  res *r = p;
  (void)items;
  r->calls++;
  r->status = status;
  r->n = n;
}

static void on_batch(void *p, int status, const imc_bus_record *recs,
                     size_t n) {
  res *r = p;
  r->calls++;
  r->status = status;
  r->n = n;
  if (n) {
    r->first_offset = recs[0].offset;
    r->last_offset = recs[n - 1].offset;
  }
}

static const imc_seq_vtbl *seqv;
static const imc_dedup_vtbl *dedupv;
static const imc_store_vtbl *storev;
static const imc_bus_vtbl *busv;

static imc_msg msg(const char *id, const char *conv, uint64_t seq,
                   int64_t sent) {
  imc_msg m = {.struct_size = sizeof(m),
               .msg_id = id,
               .conversation_id = conv,
               .seq = seq,
               .from_user = "alice",
               .to_user = "bob",
               .group_id = "",
               .content_type = "",
               .sent_at_ms = sent,
               .client_msg_id = "",
               .from_device = ""};
  return m;
}

static long count_rows(const char *path, const char *table) {
  sqlite3 *db;
  ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL),
                   SQLITE_OK);
  char sql[128];
  snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s", table);
  sqlite3_stmt *st;
  ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
  ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
  long n = (long)sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return n;
}

static void exec_sql(const char *path, const char *sql) {
  sqlite3 *db;
  ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
  ck_assert_int_eq(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
}

static void publish(imc_sqlite *db, const char *topic, const char *v) {
  res r = {0};
  ck_assert_int_eq(busv->publish(db, topic, NULL, 0, (const uint8_t *)v,
                                 strlen(v), on_done, &r),
                   0);
  ck_assert_int_eq(r.calls, 1);
  ck_assert_int_eq(r.status, 0);
}

static void commit(imc_sqlite *db, const char *topic, const char *group,
                   uint64_t off) {
  res r = {0};
  ck_assert_int_eq(busv->commit(db, topic, group, 0, off, on_done, &r), 0);
  ck_assert_int_eq(r.calls, 1);
}

/* Poll and serve it: the poll completes only from dispatch. */
static void poll_now(imc_sqlite *db, const char *topic, const char *group,
                     res *r) {
  memset(r, 0, sizeof(*r));
  ck_assert_int_eq(busv->poll(db, topic, group, 100, on_batch, r), 0);
  ck_assert_int_eq(r->calls, 0);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 1);
  ck_assert_int_eq(r->calls, 1);
}

/* ------------------------------------------------------------------ */
/* SQLite-specific tests                                                */
/* ------------------------------------------------------------------ */

START_TEST(reopen_keeps_everything) {
  test_clock tc;
  test_clock_init(&tc, 1700000000000LL);
  ctx.clock = &tc.clock;
  test_mem_init(&ctx.tm);
  new_path(ctx.path, sizeof(ctx.path));
  imc_sqlite *db = open_db(&ctx);
  res r = {0};
  seqv->next(db, "p:a:b", on_seq, &r);
  seqv->next(db, "p:a:b", on_seq, &r);
  dedupv->test_and_set(db, "a/c1", (const uint8_t *)"m1", 2, 3600, on_dedup,
                       &r);
  imc_msg m = msg("m1", "p:a:b", 1, 1700000000000LL);
  imc_inbox_entry e = {"bob", &m};
  const imc_msg *mp = &m;
  storev->append(db, &mp, 1, &e, 1, on_done, &r);
  storev->group_add(db, "team", "bob", on_done, &r);
  publish(db, "offline_msg", "rec");

  /* A second instance, as after a restart. */
  imc_sqlite_del(db);
  ck_assert_int_eq(ctx.tm.live, 0);
  db = open_db(&ctx);
  memset(&r, 0, sizeof(r));
  seqv->next(db, "p:a:b", on_seq, &r);
  ck_assert_uint_eq(r.seq, 3);
  dedupv->get(db, "a/c1", on_dedup, &r);
  ck_assert_int_eq(r.found, 1);
  ck_assert_uint_eq(r.n, 2);
  storev->fetch_inbox(db, "bob", 0, 10, on_page, &r);
  ck_assert_uint_eq(r.n, 1);
  storev->fetch_history(db, "p:a:b", 0, 10, on_page, &r);
  ck_assert_uint_eq(r.n, 1);
  storev->group_members(db, "team", on_list, &r);
  ck_assert_uint_eq(r.n, 1);
  poll_now(db, "offline_msg", "worker", &r);
  ck_assert_uint_eq(r.n, 1);
  imc_sqlite_del(db);
  ck_assert_int_eq(ctx.tm.live, 0);
  remove_db(ctx.path);
}
END_TEST

/* What a completed operation wrote survives a kill -9 of the process. */
START_TEST(survives_kill9) {
  new_path(ctx.path, sizeof(ctx.path));
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    imc_sqlite *db;
    if (imc_sqlite_new(&db, ctx.path, NULL, NULL) != 0)
      _exit(1);
    res r = {0};
    imc_msg m = msg("m1", "p:a:b", 1, 1);
    imc_inbox_entry e = {"bob", &m};
    storev->append(db, NULL, 0, &e, 1, on_done, &r);
    busv->publish(db, "q", NULL, 0, (const uint8_t *)"x", 1, on_done, &r);
    seqv->next(db, "k", on_seq, &r);
    if (r.calls != 3)
      _exit(2);
    raise(SIGKILL);
    _exit(3);
  }
  int status;
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  imc_sqlite *db;
  ck_assert_int_eq(imc_sqlite_new(&db, ctx.path, NULL, NULL), 0);
  res r = {0};
  storev->fetch_inbox(db, "bob", 0, 10, on_page, &r);
  ck_assert_uint_eq(r.n, 1);
  seqv->next(db, "k", on_seq, &r);
  ck_assert_uint_eq(r.seq, 2);
  poll_now(db, "q", "g", &r);
  ck_assert_uint_eq(r.n, 1);
  imc_sqlite_del(db);
  remove_db(ctx.path);
}
END_TEST

START_TEST(new_allocation_failures) {
  char path[384];
  new_path(path, sizeof(path));
  int ok = 0;
  for (long fail = 0; fail < 100 && !ok; fail++) {
    test_mem tm;
    test_mem_init(&tm);
    tm.fail_at = fail;
    imc_sqlite *db = (imc_sqlite *)&tm; /* must be overwritten */
    int rv = imc_sqlite_new(&db, path, NULL, &tm.mem);
    if (rv == 0) {
      ok = 1;
      res r = {0};
      seqv->next(db, "k", on_seq, &r);
      ck_assert_int_eq(r.calls, 1);
      imc_sqlite_del(db);
    } else {
      ck_assert_int_eq(rv, IMC_ERR_NOMEM);
      ck_assert_ptr_null(db);
    }
    ck_assert_int_eq(tm.live, 0);
  }
  ck_assert(ok);
  remove_db(path);
}
END_TEST

/* Every operation that allocates either succeeds or reports
 * IMC_ERR_NOMEM, with nothing leaked and nothing completed twice. */
START_TEST(operation_allocation_failures) {
  test_mem_init(&ctx.tm);
  ctx.clock = NULL;
  new_path(ctx.path, sizeof(ctx.path));
  imc_sqlite *db = open_db(&ctx);
  imc_msg m = msg("m1", "p:a:b", 1, 1);
  m.body = (const uint8_t *)"body";
  m.body_len = 4;
  imc_inbox_entry e = {"bob", &m};
  const imc_msg *mp = &m;
  res r = {0};
  ck_assert_int_eq(storev->append(db, &mp, 1, &e, 1, on_done, &r), 0);
  ck_assert_int_eq(storev->group_add(db, "g", "bob", on_done, &r), 0);
  ck_assert_int_eq(
      dedupv->set(db, "k", (const uint8_t *)"v", 1, 60, on_done, &r), 0);
  publish(db, "t", "v1");
  publish(db, "t", "v2");

  for (int op = 0; op < 5; op++) {
    int ok = 0;
    for (long k = 0; k < 50 && !ok; k++) {
      memset(&r, 0, sizeof(r));
      ctx.tm.fail_at = ctx.tm.count + k;
      int rv, completed_with = 0;
      switch (op) {
      case 0:
        rv = storev->fetch_inbox(db, "bob", 0, 10, on_page, &r);
        break;
      case 1:
        rv = storev->fetch_history(db, "p:a:b", 0, 10, on_page, &r);
        break;
      case 2:
        rv = storev->group_members(db, "g", on_list, &r);
        break;
      case 3:
        rv = dedupv->get(db, "k", on_dedup, &r);
        break;
      default:
        /* A poll that cannot be registered fails; one that cannot copy
         * its batch completes with the error and may be made again. */
        rv = busv->poll(db, "t", "g", 10, on_batch, &r);
        if (rv == 0) {
          ck_assert_int_eq(imc_sqlite_dispatch(db), 1);
          ck_assert_int_eq(r.calls, 1);
          rv = completed_with = r.status;
          if (rv == 0)
            ck_assert_uint_eq(r.n, 2);
        }
        break;
      }
      if (rv == 0) {
        ok = 1;
        ck_assert_int_eq(r.calls, 1);
      } else {
        ck_assert_int_eq(rv, IMC_ERR_NOMEM);
        ck_assert_int_eq(r.calls, completed_with ? 1 : 0);
      }
    }
    ctx.tm.fail_at = -1;
    ck_assert_msg(ok, "operation %d never succeeded", op);
  }
  imc_sqlite_del(db);
  ck_assert_int_eq(ctx.tm.live, 0);
  remove_db(ctx.path);
}
END_TEST

static void assert_open_fails(const char *path) {
  test_mem tm;
  test_mem_init(&tm);
  imc_sqlite *db = NULL;
  ck_assert_int_eq(imc_sqlite_new(&db, path, NULL, &tm.mem), IMC_ERR_IO);
  ck_assert_ptr_nonnull(db);
  ck_assert_str_ne(imc_sqlite_errmsg(db), "");
  /* The failed object refuses work but can be deleted. */
  res r = {0};
  ck_assert_int_eq(seqv->next(db, "k", on_seq, &r), IMC_ERR_CLOSED);
  ck_assert_int_eq(busv->poll(db, "t", "g", 1, on_batch, &r), IMC_ERR_CLOSED);
  ck_assert_int_eq(imc_sqlite_dispatch(db), IMC_ERR_CLOSED);
  ck_assert_int_eq(r.calls, 0);
  imc_sqlite_del(db);
  ck_assert_int_eq(tm.live, 0);
}

START_TEST(unusable_paths) {
  char path[400];
  snprintf(path, sizeof(path), "%s/no-such-dir/db.sqlite", tmpdir);
  assert_open_fails(path);
  assert_open_fails(tmpdir); /* a directory */
  snprintf(path, sizeof(path), "%s/garbage-%ld", tmpdir, (long)getpid());
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  for (int i = 0; i < 512; i++)
    fputs("not a database ", f);
  fclose(f);
  assert_open_fails(path);
  unlink(path);

  imc_sqlite *db = NULL;
  ck_assert_int_eq(imc_sqlite_new(&db, NULL, NULL, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_sqlite_new(NULL, path, NULL, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  imc_sqlite_del(NULL);
}
END_TEST

START_TEST(newer_schema_refused) {
  char path[384];
  new_path(path, sizeof(path));
  imc_sqlite *db;
  ck_assert_int_eq(imc_sqlite_new(&db, path, NULL, NULL), 0);
  imc_sqlite_del(db);
  exec_sql(path, "PRAGMA user_version = 99");
  ck_assert_int_eq(imc_sqlite_new(&db, path, NULL, NULL), IMC_ERR_IO);
  ck_assert_ptr_nonnull(strstr(imc_sqlite_errmsg(db), "newer"));
  imc_sqlite_del(db);
  remove_db(path);
}
END_TEST

START_TEST(wal_mode) {
  char path[384];
  new_path(path, sizeof(path));
  imc_sqlite *db;
  ck_assert_int_eq(imc_sqlite_new(&db, path, NULL, NULL), 0);
  sqlite3 *raw;
  ck_assert_int_eq(sqlite3_open(path, &raw), SQLITE_OK);
  sqlite3_stmt *st;
  ck_assert_int_eq(
      sqlite3_prepare_v2(raw, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
  ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
  ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), "wal");
  sqlite3_finalize(st);
  sqlite3_close(raw);
  imc_sqlite_del(db);
  remove_db(path);
}
END_TEST

START_TEST(group_message_stored_once) {
  char path[384];
  new_path(path, sizeof(path));
  imc_sqlite *db;
  ck_assert_int_eq(imc_sqlite_new(&db, path, NULL, NULL), 0);
  imc_msg m = msg("g1", "g:team", 1, 1);
  static uint8_t body[4096];
  m.body = body;
  m.body_len = sizeof(body);
  imc_inbox_entry e[50];
  char users[50][8];
  for (int i = 0; i < 50; i++) {
    snprintf(users[i], sizeof(users[i]), "u%d", i);
    e[i] = (imc_inbox_entry){users[i], &m};
  }
  res r = {0};
  ck_assert_int_eq(storev->append(db, NULL, 0, e, 50, on_done, &r), 0);
  ck_assert_int_eq(r.status, 0);
  ck_assert_int_eq(count_rows(path, "messages"), 1);
  ck_assert_int_eq(count_rows(path, "inbox"), 50);
  imc_sqlite_del(db);
  remove_db(path);
}
END_TEST

START_TEST(seq_clash_rolls_back) {
  char path[384];
  new_path(path, sizeof(path));
  imc_sqlite *db;
  ck_assert_int_eq(imc_sqlite_new(&db, path, NULL, NULL), 0);
  imc_msg m1 = msg("m1", "c", 1, 1);
  imc_msg other = msg("other", "c", 1, 1); /* same (conversation, seq) */
  imc_msg m2 = msg("m2", "c", 2, 1);
  const imc_msg *first = &m1;
  res r = {0};
  ck_assert_int_eq(storev->append(db, &first, 1, NULL, 0, on_done, &r), 0);
  const imc_msg *batch[] = {&m2, &other};
  imc_inbox_entry e = {"bob", &m2};
  memset(&r, 0, sizeof(r));
  ck_assert_int_eq(storev->append(db, batch, 2, &e, 1, on_done, &r),
                   IMC_ERR_EXISTS);
  ck_assert_int_eq(r.calls, 0);
  ck_assert_str_ne(imc_sqlite_errmsg(db), "");
  /* Nothing of the failed batch was kept. */
  storev->fetch_history(db, "c", 0, 10, on_page, &r);
  ck_assert_uint_eq(r.n, 1);
  storev->fetch_inbox(db, "bob", 0, 10, on_page, &r);
  ck_assert_uint_eq(r.n, 0);
  imc_sqlite_del(db);
  remove_db(path);
}
END_TEST

START_TEST(invalid_arguments) {
  char path[384];
  new_path(path, sizeof(path));
  imc_sqlite *db;
  ck_assert_int_eq(imc_sqlite_new(&db, path, NULL, NULL), 0);
  res r = {0};
  const uint8_t *v = (const uint8_t *)"v";
  ck_assert_int_eq(seqv->next(db, "", on_seq, &r), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(seqv->next(db, "k", NULL, &r), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(dedupv->test_and_set(db, "k", v, 1, 0, on_dedup, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(dedupv->set(db, NULL, v, 1, 5, on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(dedupv->set(db, "k", NULL, 1, 5, on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(storev->fetch_inbox(db, "bob", 0, 0, on_page, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(storev->fetch_history(db, "", 0, 5, on_page, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  imc_msg big = msg("m", "c", (uint64_t)INT64_MAX + 1, 1);
  const imc_msg *bp = &big;
  ck_assert_int_eq(storev->append(db, &bp, 1, NULL, 0, on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  imc_msg noid = msg("", "c", 1, 1);
  imc_inbox_entry e = {"bob", &noid};
  ck_assert_int_eq(storev->append(db, NULL, 0, &e, 1, on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(storev->group_add(db, "g", "", on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(busv->publish(db, "", NULL, 0, v, 1, on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(busv->poll(db, "t", "g", 0, on_batch, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(busv->commit(db, "t", "g", 1, 1, on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(r.calls, 0);
  /* A cursor beyond what SQLite stores finds nothing rather than wrap. */
  ck_assert_int_eq(storev->fetch_inbox(db, "bob", UINT64_MAX, 5, on_page, &r),
                   0);
  ck_assert_uint_eq(r.n, 0);
  ck_assert_int_eq(imc_sqlite_dispatch(NULL), IMC_ERR_INVALID_ARGUMENT);
  imc_sqlite_del(db);
  remove_db(path);
}
END_TEST

/* purge leaves no orphan rows: inbox entries go with their messages, and
 * expired dedup keys go too. */
START_TEST(purge_removes_rows) {
  test_clock tc;
  test_clock_init(&tc, 1700000000000LL);
  char path[384];
  new_path(path, sizeof(path));
  imc_sqlite *db;
  ck_assert_int_eq(imc_sqlite_new(&db, path, &tc.clock, NULL), 0);
  res r = {0};
  const uint8_t *v = (const uint8_t *)"v";
  dedupv->set(db, "short1", v, 1, 10, on_done, &r);
  dedupv->set(db, "short2", v, 1, 10, on_done, &r);
  dedupv->set(db, "long", v, 1, 1000, on_done, &r);
  imc_msg old = msg("old", "g:t", 1, 1000);
  imc_msg young = msg("young", "g:t", 2, 5000);
  imc_inbox_entry e[] = {{"a", &old}, {"b", &old}, {"a", &young}};
  ck_assert_int_eq(storev->append(db, NULL, 0, e, 3, on_done, &r), 0);
  test_clock_advance(&tc, 20000);
  ck_assert_int_eq(count_rows(path, "dedup"), 3);
  ck_assert_int_eq(storev->purge(db, 2000, on_done, &r), 0);
  ck_assert_int_eq(count_rows(path, "dedup"), 1);
  ck_assert_int_eq(count_rows(path, "messages"), 1);
  ck_assert_int_eq(count_rows(path, "inbox"), 1);
  imc_sqlite_del(db);
  remove_db(path);
}
END_TEST

START_TEST(poll_and_dispatch_rules) {
  char path[384];
  new_path(path, sizeof(path));
  imc_sqlite *db;
  ck_assert_int_eq(imc_sqlite_new(&db, path, NULL, NULL), 0);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 0);
  publish(db, "t", "a");
  res r = {0}, r2 = {0};
  /* Records are waiting, yet the poll completes from dispatch only. */
  ck_assert_int_eq(busv->poll(db, "t", "g", 10, on_batch, &r), 0);
  ck_assert_int_eq(r.calls, 0);
  ck_assert_int_eq(busv->poll(db, "t", "g", 10, on_batch, &r2), IMC_ERR_EXISTS);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 1);
  ck_assert_int_eq(r.calls, 1);
  ck_assert_uint_eq(r.n, 1);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 0);
  /* An idle poll costs nothing until a publish to its topic. */
  ck_assert_int_eq(busv->poll(db, "t", "g", 10, on_batch, &r2), 0);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 0);
  publish(db, "other", "x");
  ck_assert_int_eq(imc_sqlite_dispatch(db), 0);
  publish(db, "t", "b");
  ck_assert_int_eq(r2.calls, 0);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 1);
  ck_assert_int_eq(r2.calls, 1);
  imc_sqlite_del(db);
  remove_db(path);
}
END_TEST

/* The deferred polls' wakeup: 0 exactly while a dispatch has work, so a
 * host that sleeps on -1 neither stalls nor spins. */
START_TEST(wakeup_deadline) {
  char path[384];
  new_path(path, sizeof(path));
  imc_sqlite *db;
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(NULL), -1);
  ck_assert_int_eq(imc_sqlite_new(&db, path, NULL, NULL), 0);
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), -1);
  publish(db, "t", "a");
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), -1); /* nobody polls */
  res r = {0};
  ck_assert_int_eq(busv->poll(db, "t", "g", 1, on_batch, &r), 0);
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), 0);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 1);
  ck_assert_int_eq(r.calls, 1);
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), -1); /* no poll */
  /* An idle poll: one dispatch finds the topic empty, then silence until
   * a publish to its topic. */
  ck_assert_int_eq(busv->poll(db, "t", "g", 1, on_batch, &r), 0);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 0);
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), -1);
  publish(db, "other", "x");
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), -1);
  publish(db, "t", "b");
  publish(db, "t", "c");
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), 0);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 1);
  ck_assert_int_eq(r.calls, 2);
  /* A poll made right after (as a consumer does from its completion)
   * with a record still waiting is due at once. */
  ck_assert_int_eq(busv->poll(db, "t", "g", 1, on_batch, &r), 0);
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), 0);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 1);
  ck_assert_int_eq(r.calls, 3);
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), -1);
  imc_sqlite_del(db);
  remove_db(path);
}
END_TEST

START_TEST(queue_trimmed_when_all_groups_commit) {
  char path[384];
  new_path(path, sizeof(path));
  imc_sqlite *db;
  ck_assert_int_eq(imc_sqlite_new(&db, path, NULL, NULL), 0);
  res a, b;
  publish(db, "t", "1");
  publish(db, "t", "2");
  publish(db, "t", "3");
  publish(db, "u", "kept");
  poll_now(db, "t", "ga", &a);
  poll_now(db, "t", "gb", &b);
  ck_assert_uint_eq(a.n, 3);
  commit(db, "t", "ga", a.last_offset);
  ck_assert_int_eq(count_rows(path, "queue"), 4);
  commit(db, "t", "gb", b.first_offset);
  ck_assert_int_eq(count_rows(path, "queue"), 3);
  commit(db, "t", "gb", b.last_offset);
  ck_assert_int_eq(count_rows(path, "queue"), 1); /* topic u untouched */
  /* A commit below the committed offset is ignored. */
  commit(db, "t", "gb", b.first_offset);
  imc_sqlite_del(db);
  ck_assert_int_eq(imc_sqlite_new(&db, path, NULL, NULL), 0);
  publish(db, "t", "4");
  poll_now(db, "t", "gb", &b);
  ck_assert_uint_eq(b.n, 1);
  ck_assert_uint_gt(b.first_offset, a.last_offset);
  imc_sqlite_del(db);
  remove_db(path);
}
END_TEST

START_TEST(del_completes_polls) {
  char path[384];
  new_path(path, sizeof(path));
  imc_sqlite *db;
  ck_assert_int_eq(imc_sqlite_new(&db, path, NULL, NULL), 0);
  res r = {0};
  ck_assert_int_eq(busv->poll(db, "t", "g", 10, on_batch, &r), 0);
  imc_sqlite_del(db);
  ck_assert_int_eq(r.calls, 1);
  ck_assert_int_eq(r.status, IMC_ERR_CLOSED);
  ck_assert_uint_eq(r.n, 0);
  remove_db(path);
}
END_TEST

static Suite *sqlite_suite(void) {
  Suite *s = suite_create("sqlite");
  TCase *tc = tcase_create("sqlite");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, reopen_keeps_everything);
  tcase_add_test(tc, survives_kill9);
  tcase_add_test(tc, new_allocation_failures);
  tcase_add_test(tc, operation_allocation_failures);
  tcase_add_test(tc, unusable_paths);
  tcase_add_test(tc, newer_schema_refused);
  tcase_add_test(tc, wal_mode);
  tcase_add_test(tc, group_message_stored_once);
  tcase_add_test(tc, seq_clash_rolls_back);
  tcase_add_test(tc, invalid_arguments);
  tcase_add_test(tc, purge_removes_rows);
  tcase_add_test(tc, poll_and_dispatch_rules);
  tcase_add_test(tc, wakeup_deadline);
  tcase_add_test(tc, queue_trimmed_when_all_groups_commit);
  tcase_add_test(tc, del_completes_polls);
  suite_add_tcase(s, tc);
  return s;
}

static void remove_tmpdir(void) {
  DIR *d = opendir(tmpdir);
  if (d) {
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
      char p[1024];
      if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
        continue;
      snprintf(p, sizeof(p), "%s/%s", tmpdir, de->d_name);
      unlink(p);
    }
    closedir(d);
  }
  rmdir(tmpdir);
}

int main(void) {
  const char *base = getenv("TMPDIR");
  snprintf(tmpdir, sizeof(tmpdir), "%s/imc-test-sqlite-XXXXXX",
           base && *base ? base : "/tmp");
  if (mkdtemp(tmpdir) == NULL) {
    perror("mkdtemp");
    return EXIT_FAILURE;
  }
  seqv = factory.seq = imc_sqlite_seq_vtbl();
  dedupv = factory.dedup = imc_sqlite_dedup_vtbl();
  storev = factory.store = imc_sqlite_store_vtbl();
  busv = factory.bus = imc_sqlite_bus_vtbl();

  SRunner *sr = srunner_create(conformance_seq_suite(&factory));
  srunner_add_suite(sr, conformance_dedup_suite(&factory));
  srunner_add_suite(sr, conformance_store_suite(&factory));
  srunner_add_suite(sr, conformance_bus_suite(&factory));
  srunner_add_suite(sr, sqlite_suite());
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  remove_tmpdir();
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
