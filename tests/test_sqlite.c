/*
 * The SQLite embedded backends: the conformance suites for seq, dedup,
 * store and bus, plus what is particular to SQLite (files, durability,
 * allocation failures, the dispatch rule).
 */
#include <imchat/sqlite.h>

#include "backends/sqlite_int.h" /* the connection, for a failing commit */
#include "conformance.h"
#include "testutil.h"

#include <check.h>
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
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

/* The same suites with group commit, batches run on the caller's thread
 * (the synchronous form). */
static void *fx_create_gc(void *p, const imc_clock *clock) {
  imc_sqlite *db = fx_create(p, clock);
  ck_assert_int_eq(imc_sqlite_set_group_commit(db, 64), 0);
  return db;
}

static void *fx_reopen_gc(void *p, void *ud) {
  imc_sqlite *db = fx_reopen(p, ud);
  ck_assert_int_eq(imc_sqlite_set_group_commit(db, 64), 0);
  return db;
}

/* One loop turn of a synchronous host: submit, run, dispatch. */
static int sync_turn(imc_sqlite *db) {
  int rv = imc_sqlite_submit(db);
  if (rv < 0)
    return rv;
  while ((rv = imc_sqlite_run_batch(db)) > 0)
    ;
  return rv < 0 ? rv : imc_sqlite_dispatch(db);
}

static int fx_dispatch_gc(void *p, void *ud) {
  (void)p;
  return sync_turn(ud);
}

static conformance_factory factory_gc = {
    .name = "sqlite-gc",
    .ctx = &ctx,
    .create = fx_create_gc,
    .destroy = fx_destroy,
    .reopen = fx_reopen_gc,
    .dispatch = fx_dispatch_gc,
};

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
  /* The child's block was reserved, not given back: the counter skips
   * the rest of it, never reuses a value. */
  seqv->next(db, "k", on_seq, &r);
  ck_assert_uint_gt(r.seq, 1);
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
      tm.fail_at = -1;
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

/* ------------------------------------------------------------------ */
/* Group commit                                                         */
/* ------------------------------------------------------------------ */

static imc_sqlite *open_gc(const char *path, uint32_t max_ops) {
  imc_sqlite *db;
  ck_assert_int_eq(imc_sqlite_new(&db, path, NULL, NULL), 0);
  ck_assert_int_eq(imc_sqlite_set_group_commit(db, max_ops), 0);
  return db;
}

/* Completions run from dispatch only, after the batch's commit, once. */
START_TEST(gc_completions_after_commit) {
  char path[384];
  new_path(path, sizeof(path));
  imc_sqlite *db = open_gc(path, 64);
  res a = {0}, b = {0}, c = {0};
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), -1);
  ck_assert_int_eq(
      busv->publish(db, "q", NULL, 0, (const uint8_t *)"x", 1, on_done, &a), 0);
  ck_assert_int_eq(
      dedupv->set(db, "k", (const uint8_t *)"ok", 2, 60, on_done, &b), 0);
  imc_msg m = msg("m1", "p:a:b", 1, 1);
  const imc_msg *mp = &m;
  ck_assert_int_eq(storev->append(db, &mp, 1, NULL, 0, on_done, &c), 0);
  /* To submit within the batch wait (1 ms; the system clock runs). */
  ck_assert_int_ge(imc_sqlite_next_timeout_ms(db), 0);
  ck_assert_int_le(imc_sqlite_next_timeout_ms(db), 1);
  ck_assert_int_eq(imc_sqlite_submit(db), 3);
  ck_assert_int_eq(imc_sqlite_batch_queued(db), 3);
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), -1);
  ck_assert_int_eq(count_rows(path, "queue"), 0);
  ck_assert_int_eq(imc_sqlite_run_batch(db), 3);
  ck_assert_int_eq(imc_sqlite_run_batch(db), 0);
  /* Committed (another connection sees it), not yet completed. */
  ck_assert_int_eq(count_rows(path, "queue"), 1);
  ck_assert_int_eq(count_rows(path, "dedup"), 1);
  ck_assert_int_eq(count_rows(path, "messages"), 1);
  ck_assert_int_eq(a.calls + b.calls + c.calls, 0);
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), 0); /* to dispatch */
  ck_assert_int_eq(imc_sqlite_dispatch(db), 3);
  ck_assert_int_eq(a.calls, 1);
  ck_assert_int_eq(b.calls, 1);
  ck_assert_int_eq(c.calls, 1);
  ck_assert_int_eq(a.status | b.status | c.status, 0);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 0);
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), -1);
  /* Reads are ops of the batch too, and see it. */
  memset(&b, 0, sizeof(b));
  ck_assert_int_eq(dedupv->get(db, "k", on_dedup, &b), 0);
  ck_assert_int_eq(b.calls, 0);
  ck_assert_int_eq(sync_turn(db), 1);
  ck_assert_int_eq(b.calls, 1);
  ck_assert_int_eq(b.found, 1);
  imc_sqlite_del(db);
  remove_db(path);
}
END_TEST

static int refuse_commit(void *ud) {
  int *left = ud;
  if (*left == 0)
    return 0;
  (*left)--;
  return 1; /* SQLite turns the COMMIT into a ROLLBACK */
}

/* A failed commit fails every op of its batch, once each, and leaves
 * nothing in the file; one op's own failure fails it alone. */
START_TEST(gc_failed_commit_fails_batch) {
  char path[384];
  new_path(path, sizeof(path));
  imc_sqlite *db = open_gc(path, 64);
  int refuse = 1;
  sqlite3_commit_hook(db->db, refuse_commit, &refuse);
  res r[4] = {{0}};
  ck_assert_int_eq(
      busv->publish(db, "q", NULL, 0, (const uint8_t *)"x", 1, on_done, &r[0]),
      0);
  ck_assert_int_eq(dedupv->test_and_set(db, "k", (const uint8_t *)"v", 1, 60,
                                        on_dedup, &r[1]),
                   0);
  ck_assert_int_eq(seqv->next(db, "conv", on_seq, &r[2]), 0);
  ck_assert_int_eq(storev->fetch_inbox(db, "bob", 0, 10, on_page, &r[3]), 0);
  ck_assert_int_eq(sync_turn(db), 4);
  for (int i = 0; i < 4; i++) {
    ck_assert_int_eq(r[i].calls, 1);
    ck_assert_int_lt(r[i].status, 0);
  }
  ck_assert_int_eq(r[1].found, 0);
  ck_assert_str_ne(imc_sqlite_errmsg(db), "");
  ck_assert_int_eq(sync_turn(db), 0); /* nothing completes twice */
  ck_assert_int_eq(count_rows(path, "queue"), 0);
  ck_assert_int_eq(count_rows(path, "dedup"), 0);
  ck_assert_int_eq(count_rows(path, "seq"), 0);

  /* The same again, committed; one failing op (a taken seq) fails
   * alone. */
  imc_msg m1 = msg("m1", "p:a:b", 1, 1), m2 = msg("m2", "p:a:b", 1, 1);
  const imc_msg *p1 = &m1, *p2 = &m2;
  memset(r, 0, sizeof(r));
  res e = {0}, f = {0};
  ck_assert_int_eq(
      busv->publish(db, "q", NULL, 0, (const uint8_t *)"x", 1, on_done, &r[0]),
      0);
  ck_assert_int_eq(storev->append(db, &p1, 1, NULL, 0, on_done, &e), 0);
  ck_assert_int_eq(storev->append(db, &p2, 1, NULL, 0, on_done, &f), 0);
  ck_assert_int_eq(seqv->next(db, "conv", on_seq, &r[2]), 0);
  ck_assert_int_eq(sync_turn(db), 4);
  ck_assert_int_eq(r[0].status, 0);
  ck_assert_int_eq(e.status, 0);
  ck_assert_int_eq(f.calls, 1);
  ck_assert_int_eq(f.status, IMC_ERR_EXISTS);
  ck_assert_int_eq(r[2].status, 0);
  ck_assert_uint_eq(r[2].seq, 1);
  ck_assert_int_eq(count_rows(path, "queue"), 1);
  ck_assert_int_eq(count_rows(path, "messages"), 1);
  imc_sqlite_del(db);
  remove_db(path);
}
END_TEST

typedef struct midbatch {
  imc_sqlite *db;
  res *r;
  int fired;
} midbatch;

/* The loop thread's work while a batch runs, played from the commit. */
static int queue_during_commit(void *ud) {
  midbatch *mb = ud;
  if (mb->fired++)
    return 0;
  dedupv->set(mb->db, "late", (const uint8_t *)"v", 1, 60, on_done, mb->r);
  imc_sqlite_submit(mb->db);
  return 0;
}

/* Ops submitted while a batch runs go into the next batch; whole
 * submissions, at most max_ops ops per batch. */
START_TEST(gc_queued_during_batch_goes_next) {
  char path[384];
  new_path(path, sizeof(path));
  imc_sqlite *db = open_gc(path, 2);
  res early = {0}, late = {0};
  midbatch mb = {db, &late, 0};
  sqlite3_commit_hook(db->db, queue_during_commit, &mb);
  ck_assert_int_eq(
      dedupv->set(db, "early", (const uint8_t *)"v", 1, 60, on_done, &early),
      0);
  ck_assert_int_eq(imc_sqlite_submit(db), 1);
  ck_assert_int_eq(imc_sqlite_run_batch(db), 1);
  ck_assert_int_eq(imc_sqlite_batch_queued(db), 1); /* the late one */
  ck_assert_int_eq(imc_sqlite_dispatch(db), 1);
  ck_assert_int_eq(early.calls, 1);
  ck_assert_int_eq(late.calls, 0);
  ck_assert_int_eq(imc_sqlite_run_batch(db), 1);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 1);
  ck_assert_int_eq(late.calls, 1);
  ck_assert_int_eq(late.status, 0);
  sqlite3_commit_hook(db->db, NULL, NULL);

  /* Bound: three submissions of 1, 1 and 3 ops with max_ops 2 run as
   * {1, 1} and {3}: never a submission split. */
  res r[5] = {{0}};
  const char *keys[5] = {"a", "b", "c", "d", "e"};
  for (int i = 0; i < 5; i++) {
    ck_assert_int_eq(
        dedupv->set(db, keys[i], (const uint8_t *)"v", 1, 60, on_done, &r[i]),
        0);
    if (i < 2)
      ck_assert_int_eq(imc_sqlite_submit(db), 1);
  }
  ck_assert_int_eq(imc_sqlite_submit(db), 3);
  ck_assert_int_eq(imc_sqlite_run_batch(db), 2);
  ck_assert_int_eq(imc_sqlite_run_batch(db), 3);
  ck_assert_int_eq(imc_sqlite_run_batch(db), 0);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 5);
  for (int i = 0; i < 5; i++)
    ck_assert_int_eq(r[i].calls, 1);
  imc_sqlite_del(db);
  remove_db(path);
}
END_TEST

static void set_key(imc_sqlite *db, const char *key, res *r) {
  ck_assert_int_eq(
      dedupv->set(db, key, (const uint8_t *)"v", 1, 60, on_done, r), 0);
}

/* Ops not yet submitted close into a submission once the oldest has
 * waited the batch wait, or once they reach the bound: the deadline
 * says when, and a dispatch closes them, with no imc_sqlite_submit (no
 * end of a loop turn) before the batch runs. */
START_TEST(gc_batch_closes_at_wait) {
  char path[384];
  new_path(path, sizeof(path));
  test_clock tc;
  test_clock_init(&tc, 1700000000000LL);
  imc_sqlite *db;
  ck_assert_int_eq(imc_sqlite_new(&db, path, &tc.clock, NULL), 0);
  ck_assert_int_eq(imc_sqlite_set_group_commit(db, 4), 0);
  ck_assert_int_eq(imc_sqlite_set_batch_wait_ms(db, 3), 0);
  res r[8] = {{0}};
  set_key(db, "a", &r[0]);
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), 3);
  test_clock_advance(&tc, 2);
  set_key(db, "b", &r[1]);
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), 1); /* from the oldest */
  /* Not due yet: a dispatch leaves them open. */
  ck_assert_int_eq(imc_sqlite_dispatch(db), 0);
  ck_assert_uint_eq(imc_sqlite_batch_queued(db), 0);
  ck_assert_int_eq(imc_sqlite_run_batch(db), 0);
  test_clock_advance(&tc, 1);
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), 0);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 0); /* closes; none completed */
  ck_assert_uint_eq(imc_sqlite_batch_queued(db), 2);
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), -1);
  ck_assert_int_eq(imc_sqlite_run_batch(db), 2);
  ck_assert_int_eq(count_rows(path, "dedup"), 2);
  ck_assert_int_eq(r[0].calls + r[1].calls, 0);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 2);
  ck_assert_int_eq(r[0].calls, 1);
  ck_assert_int_eq(r[1].calls, 1);
  ck_assert_int_eq(r[0].status | r[1].status, 0);
  /* A host that submits at the end of its turn learns what dispatch
   * closed since, to wake its batch runner. */
  ck_assert_int_eq(imc_sqlite_submit(db), 2);
  ck_assert_int_eq(imc_sqlite_submit(db), 0);
  set_key(db, "c", &r[2]);
  test_clock_advance(&tc, 3);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 0);
  set_key(db, "d", &r[3]);
  ck_assert_int_eq(imc_sqlite_submit(db), 2);
  ck_assert_int_eq(imc_sqlite_submit(db), 0);
  ck_assert_int_eq(imc_sqlite_run_batch(db), 2); /* c, then d */
  ck_assert_int_eq(imc_sqlite_dispatch(db), 2);
  /* The bound: four ops are due at once, with no time passing. */
  set_key(db, "e", &r[4]);
  set_key(db, "f", &r[5]);
  set_key(db, "g", &r[6]);
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), 3);
  set_key(db, "h", &r[7]);
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), 0);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 0);
  ck_assert_uint_eq(imc_sqlite_batch_queued(db), 4);
  ck_assert_int_eq(imc_sqlite_run_batch(db), 4);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 4);
  for (int i = 0; i < 8; i++)
    ck_assert_int_eq(r[i].calls, 1);
  ck_assert_int_eq(count_rows(path, "dedup"), 8);
  /* Wait 0: every op is due at once. */
  ck_assert_int_eq(imc_sqlite_set_batch_wait_ms(db, 0), 0);
  res z = {0};
  set_key(db, "z", &z);
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), 0);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 0);
  ck_assert_int_eq(imc_sqlite_run_batch(db), 1);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 1);
  ck_assert_int_eq(z.calls, 1);
  ck_assert_int_eq(imc_sqlite_set_batch_wait_ms(NULL, 1),
                   IMC_ERR_INVALID_ARGUMENT);
  imc_sqlite_del(db);
  remove_db(path);
}
END_TEST

/* A submission closes between calls, never inside one: ops made one
 * after the other stay together past the bound (a router's job and its
 * dedup record are two calls), and run whole. */
START_TEST(gc_bound_never_splits_between_calls) {
  char path[384];
  new_path(path, sizeof(path));
  test_clock tc;
  test_clock_init(&tc, 1700000000000LL);
  imc_sqlite *db;
  ck_assert_int_eq(imc_sqlite_new(&db, path, &tc.clock, NULL), 0);
  ck_assert_int_eq(imc_sqlite_set_group_commit(db, 2), 0);
  res r[3] = {{0}};
  set_key(db, "a", &r[0]);
  set_key(db, "b", &r[1]);
  test_clock_advance(&tc, 5); /* past the wait too */
  set_key(db, "c", &r[2]);
  ck_assert_uint_eq(imc_sqlite_batch_queued(db), 0);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 0);
  ck_assert_uint_eq(imc_sqlite_batch_queued(db), 3);
  ck_assert_int_eq(imc_sqlite_run_batch(db), 3);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 3);
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(r[i].calls, 1);
  imc_sqlite_del(db);
  remove_db(path);
}
END_TEST

/* Ops still queued when the object is deleted complete with
 * IMC_ERR_CLOSED; those whose batch ran complete as they ran. */
START_TEST(gc_del_completes_queued) {
  char path[384];
  new_path(path, sizeof(path));
  imc_sqlite *db = open_gc(path, 64);
  res ran = {0}, queued = {0}, poll = {0};
  dedupv->set(db, "a", (const uint8_t *)"v", 1, 60, on_done, &ran);
  ck_assert_int_eq(imc_sqlite_submit(db), 1);
  ck_assert_int_eq(imc_sqlite_run_batch(db), 1);
  dedupv->set(db, "b", (const uint8_t *)"v", 1, 60, on_done, &queued);
  ck_assert_int_eq(busv->poll(db, "t", "g", 10, on_batch, &poll), 0);
  imc_sqlite_del(db);
  ck_assert_int_eq(ran.calls, 1);
  ck_assert_int_eq(ran.status, 0);
  ck_assert_int_eq(queued.calls, 1);
  ck_assert_int_eq(queued.status, IMC_ERR_CLOSED);
  ck_assert_int_eq(poll.calls, 1);
  ck_assert_int_eq(poll.status, IMC_ERR_CLOSED);
  ck_assert_int_eq(count_rows(path, "dedup"), 1);
  remove_db(path);
}
END_TEST

/* A storage thread runs the batches while this thread keeps making
 * ops and submitting: each op completes once, in order, after its
 * commit. */
#define THREAD_OPS 2000

typedef struct storage_thread {
  imc_sqlite *db;
  int efd;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int kicked, stop;
} storage_thread;

static void *storage_main(void *p) {
  storage_thread *t = p;
  pthread_mutex_lock(&t->mu);
  for (;;) {
    while (!t->kicked && !t->stop)
      pthread_cond_wait(&t->cv, &t->mu);
    if (!t->kicked && t->stop)
      break;
    t->kicked = 0;
    pthread_mutex_unlock(&t->mu);
    while (imc_sqlite_run_batch(t->db) > 0) {
      uint64_t one = 1;
      ck_assert_int_eq(write(t->efd, &one, sizeof(one)), sizeof(one));
    }
    pthread_mutex_lock(&t->mu);
  }
  pthread_mutex_unlock(&t->mu);
  return NULL;
}

typedef struct ordered {
  int next; /* the index the next completion must carry */
  int bad;
} ordered;

typedef struct ordered_op {
  ordered *o;
  int i;
} ordered_op;

static void on_ordered(void *p, int status) {
  ordered_op *op = p;
  if (status != 0 || op->i != op->o->next)
    op->o->bad++;
  op->o->next++;
}

START_TEST(gc_storage_thread) {
  char path[384];
  new_path(path, sizeof(path));
  imc_sqlite *db = open_gc(path, 64);
  storage_thread t = {.db = db};
  t.efd = eventfd(0, EFD_CLOEXEC);
  ck_assert_int_ge(t.efd, 0);
  pthread_mutex_init(&t.mu, NULL);
  pthread_cond_init(&t.cv, NULL);
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, storage_main, &t), 0);
  static ordered_op ops[THREAD_OPS];
  ordered o = {0};
  int made = 0;
  while (o.next < THREAD_OPS) {
    /* A loop turn: a few ops, submit, kick; then wait for a batch. */
    for (int k = 0; k < 7 && made < THREAD_OPS; k++, made++) {
      char key[32];
      snprintf(key, sizeof(key), "k%d", made);
      ops[made] = (ordered_op){&o, made};
      ck_assert_int_eq(dedupv->set(db, key, (const uint8_t *)"v", 1, 60,
                                   on_ordered, &ops[made]),
                       0);
    }
    if (imc_sqlite_submit(db) > 0) {
      pthread_mutex_lock(&t.mu);
      t.kicked = 1;
      pthread_cond_signal(&t.cv);
      pthread_mutex_unlock(&t.mu);
    }
    if (made == THREAD_OPS && imc_sqlite_next_timeout_ms(db) != 0) {
      uint64_t n;
      ck_assert_int_eq(read(t.efd, &n, sizeof(n)), sizeof(n));
    }
    imc_sqlite_dispatch(db);
  }
  pthread_mutex_lock(&t.mu);
  t.stop = 1;
  pthread_cond_signal(&t.cv);
  pthread_mutex_unlock(&t.mu);
  ck_assert_int_eq(pthread_join(th, NULL), 0);
  ck_assert_int_eq(o.bad, 0);
  ck_assert_int_eq(o.next, THREAD_OPS);
  ck_assert_int_eq(imc_sqlite_dispatch(db), 0);
  imc_sqlite_del(db);
  close(t.efd);
  pthread_cond_destroy(&t.cv);
  pthread_mutex_destroy(&t.mu);
  ck_assert_int_eq(count_rows(path, "dedup"), THREAD_OPS);
  remove_db(path);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Sequence numbers across crashes                                      */
/* ------------------------------------------------------------------ */

/* In a child: open (group commit if gc), take n values of each key,
 * write the last value handed out of each to fd, then die by SIGKILL
 * with no clean close. */
static void seq_child(const char *path, int gc, int n, int fd) {
  imc_sqlite *db;
  if (imc_sqlite_new(&db, path, NULL, NULL) != 0 ||
      imc_sqlite_set_seq_block(db, 10) != 0 ||
      (gc && imc_sqlite_set_group_commit(db, 64) != 0))
    _exit(1);
  const char *keys[2] = {"p:a:b", "g:team"};
  uint64_t last[2] = {0, 0};
  for (int k = 0; k < 2; k++)
    for (int i = 0; i < n; i++) {
      res r = {0};
      if (seqv->next(db, keys[k], on_seq, &r) != 0)
        _exit(2);
      while (gc && r.calls == 0)
        if (sync_turn(db) < 0)
          _exit(3);
      if (r.calls != 1 || r.status != 0 || r.seq <= last[k])
        _exit(4);
      last[k] = r.seq;
    }
  if (write(fd, last, sizeof(last)) != sizeof(last))
    _exit(5);
  raise(SIGKILL);
  _exit(6);
}

START_TEST(seq_never_reused_after_crash) {
  char path[384];
  new_path(path, sizeof(path));
  uint64_t prev[2] = {0, 0};
  /* Crash rounds, alternating modes, some ending mid-block. */
  const int counts[4] = {3, 10, 17, 1};
  for (int round = 0; round < 4; round++) {
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
      close(fds[0]);
      seq_child(path, round % 2, counts[round], fds[1]);
    }
    close(fds[1]);
    uint64_t last[2];
    ck_assert_int_eq(read(fds[0], last, sizeof(last)), sizeof(last));
    close(fds[0]);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    for (int k = 0; k < 2; k++) {
      if (round == 0)
        ck_assert_uint_eq(last[k], (uint64_t)counts[0]); /* from 1 */
      ck_assert_uint_ge(last[k], prev[k] + (uint64_t)counts[round]);
      prev[k] = last[k];
    }
  }
  /* After the last crash, both modes continue above every value. */
  for (int gc = 0; gc < 2; gc++) {
    imc_sqlite *db;
    ck_assert_int_eq(imc_sqlite_new(&db, path, NULL, NULL), 0);
    if (gc)
      ck_assert_int_eq(imc_sqlite_set_group_commit(db, 64), 0);
    res r = {0};
    ck_assert_int_eq(seqv->next(db, "p:a:b", on_seq, &r), 0);
    while (r.calls == 0)
      ck_assert_int_ge(sync_turn(db), 0);
    ck_assert_int_eq(r.status, 0);
    ck_assert_uint_gt(r.seq, prev[0]);
    prev[0] = r.seq;
    imc_sqlite_del(db); /* clean: the rest of the block is given back */
  }
  imc_sqlite *db;
  ck_assert_int_eq(imc_sqlite_new(&db, path, NULL, NULL), 0);
  res r = {0};
  seqv->next(db, "p:a:b", on_seq, &r);
  ck_assert_uint_eq(r.seq, prev[0] + 1); /* no gap after a clean close */
  seqv->next(db, "new", on_seq, &r);
  ck_assert_uint_eq(r.seq, 1);
  imc_sqlite_del(db);
  remove_db(path);
}
END_TEST

/* Values wait for their reservation's commit; many waiters of one key
 * are served in order across blocks. */
START_TEST(seq_waits_for_reservation) {
  char path[384];
  new_path(path, sizeof(path));
  imc_sqlite *db = open_gc(path, 64);
  ck_assert_int_eq(imc_sqlite_set_seq_block(db, 4), 0);
  res r[10] = {{0}};
  for (int i = 0; i < 10; i++)
    ck_assert_int_eq(seqv->next(db, "k", on_seq, &r[i]), 0);
  for (int i = 0; i < 10; i++)
    ck_assert_int_eq(r[i].calls, 0);
  ck_assert_int_eq(count_rows(path, "seq"), 0);
  while (r[9].calls == 0)
    ck_assert_int_ge(sync_turn(db), 0);
  for (int i = 0; i < 10; i++) {
    ck_assert_int_eq(r[i].calls, 1);
    ck_assert_uint_eq(r[i].seq, (uint64_t)i + 1);
  }
  /* Served from memory now: inside the call, no op. */
  res x = {0};
  ck_assert_int_eq(seqv->next(db, "k", on_seq, &x), 0);
  ck_assert_int_eq(x.calls, 1);
  ck_assert_uint_eq(x.seq, 11);
  imc_sqlite_del(db);
  remove_db(path);
}
END_TEST

START_TEST(dedup_drop_by_value) {
  char path[384];
  new_path(path, sizeof(path));
  imc_sqlite *db;
  ck_assert_int_eq(imc_sqlite_new(&db, path, NULL, NULL), 0);
  res r = {0};
  dedupv->set(db, "a", (const uint8_t *)"pending 1", 9, 60, on_done, &r);
  dedupv->set(db, "b", (const uint8_t *)"ok m 1 1", 8, 60, on_done, &r);
  dedupv->set(db, "c", (const uint8_t *)"pending", 7, 60, on_done, &r);
  ck_assert_int_eq(imc_sqlite_dedup_drop(db, (const uint8_t *)"pending", 7), 2);
  ck_assert_int_eq(imc_sqlite_dedup_drop(NULL, (const uint8_t *)"p", 1),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_sqlite_dedup_drop(db, NULL, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  memset(&r, 0, sizeof(r));
  dedupv->get(db, "b", on_dedup, &r);
  ck_assert_int_eq(r.found, 1);
  dedupv->get(db, "a", on_dedup, &r);
  ck_assert_int_eq(r.found, 0);
  imc_sqlite_del(db);
  remove_db(path);
}
END_TEST

/* Group commit: an op that cannot be made fails with IMC_ERR_NOMEM and
 * never completes; one whose results cannot be copied completes once
 * with the error; nothing leaks. */
START_TEST(gc_allocation_failures) {
  test_mem_init(&ctx.tm);
  ctx.clock = NULL;
  new_path(ctx.path, sizeof(ctx.path));
  imc_sqlite *db = open_db(&ctx);
  ck_assert_int_eq(imc_sqlite_set_group_commit(db, 64), 0);
  imc_msg m = msg("m1", "p:a:b", 1, 1);
  m.body = (const uint8_t *)"body";
  m.body_len = 4;
  imc_inbox_entry e = {"bob", &m};
  const imc_msg *mp = &m;
  res r = {0};
  ck_assert_int_eq(storev->append(db, &mp, 1, &e, 1, on_done, &r), 0);
  ck_assert_int_eq(
      dedupv->set(db, "k", (const uint8_t *)"v", 1, 60, on_done, &r), 0);
  while (r.calls < 2)
    ck_assert_int_ge(sync_turn(db), 0);
  for (int op = 0; op < 5; op++) {
    int ok = 0;
    for (long k = 0; k < 60 && !ok; k++) {
      memset(&r, 0, sizeof(r));
      ctx.tm.fail_at = ctx.tm.count + k;
      int rv;
      switch (op) {
      case 0:
        rv = storev->fetch_inbox(db, "bob", 0, 10, on_page, &r);
        break;
      case 1:
        rv = dedupv->get(db, "k", on_dedup, &r);
        break;
      case 2:
        rv = storev->append(db, &mp, 1, &e, 1, on_done, &r);
        break;
      case 3:
        rv = seqv->next(db, k % 2 ? "s1" : "s2", on_seq, &r);
        break;
      default:
        rv = busv->publish(db, "t", NULL, 0, (const uint8_t *)"x", 1, on_done,
                           &r);
        break;
      }
      if (rv != 0) {
        ck_assert_int_eq(rv, IMC_ERR_NOMEM);
        ck_assert_int_eq(r.calls, 0);
        continue;
      }
      for (int i = 0; i < 10 && r.calls == 0; i++)
        sync_turn(db); /* a failed allocation here just retries */
      ctx.tm.fail_at = -1;
      for (int i = 0; i < 10 && r.calls == 0; i++)
        ck_assert_int_ge(sync_turn(db), 0);
      ck_assert_int_eq(r.calls, 1);
      ck_assert(r.status == 0 || r.status == IMC_ERR_NOMEM);
      ok = r.status == 0;
    }
    ctx.tm.fail_at = -1;
    ck_assert_msg(ok, "operation %d never succeeded", op);
    ck_assert_int_eq(sync_turn(db), 0); /* nothing completes twice */
    ck_assert_int_eq(r.calls, 1);
  }
  imc_sqlite_del(db);
  ck_assert_int_eq(ctx.tm.live, 0);
  remove_db(ctx.path);
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
  tcase_add_test(tc, gc_completions_after_commit);
  tcase_add_test(tc, gc_failed_commit_fails_batch);
  tcase_add_test(tc, gc_queued_during_batch_goes_next);
  tcase_add_test(tc, gc_del_completes_queued);
  tcase_add_test(tc, gc_batch_closes_at_wait);
  tcase_add_test(tc, gc_bound_never_splits_between_calls);
  tcase_add_test(tc, gc_storage_thread);
  tcase_add_test(tc, gc_allocation_failures);
  tcase_add_test(tc, seq_never_reused_after_crash);
  tcase_add_test(tc, seq_waits_for_reservation);
  tcase_add_test(tc, dedup_drop_by_value);
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
  factory_gc.seq = factory.seq;
  factory_gc.dedup = factory.dedup;
  factory_gc.store = factory.store;
  factory_gc.bus = factory.bus;
  srunner_add_suite(sr, conformance_seq_suite(&factory_gc));
  srunner_add_suite(sr, conformance_dedup_suite(&factory_gc));
  srunner_add_suite(sr, conformance_store_suite(&factory_gc));
  srunner_add_suite(sr, conformance_bus_suite(&factory_gc));
  srunner_add_suite(sr, sqlite_suite());
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  remove_tmpdir();
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
