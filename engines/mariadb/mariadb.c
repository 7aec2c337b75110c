/*
 * The MariaDB engine object: its queues of operations, the scheduler
 * that gives idle connections their jobs, operation deadlines, health,
 * and the dispatch of connection events to the job kinds.
 */
#include "mariadb/mariadb_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <errmsg.h>
#include <mysqld_error.h>

#define SCHEMA_RETRY_MS 5000

/* ------------------------------------------------------------------ */
/* Memory, time, log                                                    */
/* ------------------------------------------------------------------ */

void *mdb_malloc(imc_mariadb *db, size_t n) {
  return db->mem.malloc(n ? n : 1, db->mem.ud);
}

void *mdb_calloc(imc_mariadb *db, size_t n, size_t size) {
  return db->mem.calloc(n ? n : 1, size ? size : 1, db->mem.ud);
}

void *mdb_realloc(imc_mariadb *db, void *p, size_t n) {
  return db->mem.realloc(p, n ? n : 1, db->mem.ud);
}

void mdb_free(imc_mariadb *db, void *p) {
  if (p)
    db->mem.free(p, db->mem.ud);
}

char *mdb_strdup(imc_mariadb *db, const char *s) {
  size_t n = strlen(s) + 1;
  char *d = mdb_malloc(db, n);
  if (d)
    memcpy(d, s, n);
  return d;
}

static void *std_malloc(size_t n, void *ud) {
  (void)ud;
  return malloc(n);
}
static void std_free(void *p, void *ud) {
  (void)ud;
  free(p);
}
static void *std_calloc(size_t n, size_t s, void *ud) {
  (void)ud;
  return calloc(n, s);
}
static void *std_realloc(void *p, size_t n, void *ud) {
  (void)ud;
  return realloc(p, n);
}

int64_t mdb_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void mdb_log(imc_mariadb *db, imc_log_level level, const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  if (level <= IMC_LOG_WARN) {
    size_t n = strnlen(line, sizeof(db->errmsg) - 1);
    memcpy(db->errmsg, line, n);
    db->errmsg[n] = '\0';
  }
  if (db->o.log)
    db->o.log(db->o.log_ud, level, line);
}

/* ------------------------------------------------------------------ */
/* Errors                                                               */
/* ------------------------------------------------------------------ */

int mdb_err_is_conn(unsigned err) {
  if (err >= CR_MIN_ERROR && err <= CR_MAX_ERROR)
    return 1; /* client side: the connection's state is unknown */
  if (err >= CER_MIN_ERROR && err <= CER_MAX_ERROR)
    return 1; /* libmariadb's own client errors */
  switch (err) {
  case ER_CON_COUNT_ERROR:
  case ER_SERVER_SHUTDOWN:
  case ER_ABORTING_CONNECTION:
  case ER_NET_PACKET_TOO_LARGE:
  case ER_NET_READ_ERROR_FROM_PIPE:
  case ER_NET_FCNTL_ERROR:
  case ER_NET_PACKETS_OUT_OF_ORDER:
  case ER_NET_UNCOMPRESS_ERROR:
  case ER_NET_READ_ERROR:
  case ER_NET_READ_INTERRUPTED:
  case ER_NET_ERROR_ON_WRITE:
  case ER_NET_WRITE_INTERRUPTED:
  case ER_NEW_ABORTING_CONNECTION:
  case ER_CONNECTION_KILLED:
  /* read_only: a failed-over primary; a new connection may reach the
   * new one. */
  case ER_OPTION_PREVENTS_STATEMENT:
  case ER_READ_ONLY_MODE:
    return 1;
  default:
    return 0;
  }
}

int mdb_err_is_retry(unsigned err) {
  /* ER_SUBQUERY_NO_1_ROW: the inbox lock guard (batch.c) */
  return err == ER_LOCK_DEADLOCK || err == ER_LOCK_WAIT_TIMEOUT ||
         err == ER_QUERY_INTERRUPTED || err == ER_SUBQUERY_NO_1_ROW;
}

int mdb_status_of(unsigned err) {
  if (mdb_err_is_conn(err) || mdb_err_is_retry(err))
    return IMC_ERR_UNAVAILABLE;
  switch (err) {
  case ER_BAD_NULL_ERROR: /* a taken (conversation, seq): see batch.c */
  case ER_DUP_ENTRY:
    return IMC_ERR_EXISTS;
  case ER_DATA_TOO_LONG:
  case ER_TRUNCATED_WRONG_VALUE_FOR_FIELD:
  case ER_WARN_DATA_OUT_OF_RANGE:
  case ER_TRUNCATED_WRONG_VALUE:
  case ER_INVALID_CHARACTER_STRING:
    return IMC_ERR_INVALID_ARGUMENT;
  default:
    return IMC_ERR_IO;
  }
}

/* ------------------------------------------------------------------ */
/* Operations and queues                                                */
/* ------------------------------------------------------------------ */

mdb_op *mdb_op_new(imc_mariadb *db, mdb_op_kind kind) {
  mdb_op *op = mdb_calloc(db, 1, sizeof(*op));
  if (op) {
    op->kind = kind;
    op->deadline = mdb_now_ms() + db->o.op_timeout_ms;
  }
  return op;
}

void mdb_op_free(imc_mariadb *db, mdb_op *op) {
  for (size_t i = 0; op->msgs && i < op->n_copies; i++)
    mdb_free(db, op->msgs[i]);
  for (size_t i = 0; op->entries && i < op->n_entries; i++)
    mdb_free(db, op->entries[i].user);
  mdb_free(db, op->msgs);
  mdb_free(db, op->entries);
  mdb_free(db, op->key);
  mdb_free(db, op->key2);
  if (op->res)
    mysql_free_result(op->res);
  mdb_free(db, op->rows);
  mdb_free(db, op->row_ptrs);
  mdb_free(db, op->cursors);
  mdb_free(db, op->items);
  mdb_free(db, op);
}

void mdb_op_finish(imc_mariadb *db, mdb_op *op, int status) {
  switch (op->kind) {
  case MDB_OP_INBOX:
  case MDB_OP_HISTORY:
    if (status < 0)
      op->cb.fetch(op->cb_ud, status, NULL, NULL, 0, 0);
    else
      op->cb.fetch(op->cb_ud, 0, op->row_ptrs, op->cursors, op->n,
                   op->has_more);
    break;
  case MDB_OP_MEMBERS:
    if (status < 0)
      op->cb.list(op->cb_ud, status, NULL, 0);
    else
      op->cb.list(op->cb_ud, 0, op->items, op->n);
    break;
  case MDB_OP_MARK:
    op->cb.mark(op->cb_ud, status, status < 0 ? 0 : op->mark);
    break;
  default:
    op->cb.done(op->cb_ud, status);
    break;
  }
  mdb_op_free(db, op);
}

void mdb_ops_finish(imc_mariadb *db, mdb_op *list, int status) {
  while (list) {
    mdb_op *next = list->next;
    list->next = NULL;
    mdb_op_finish(db, list, status);
    list = next;
  }
}

void mdb_queue_push(mdb_queue *q, mdb_op *op) {
  op->next = NULL;
  if (q->tail)
    q->tail->next = op;
  else
    q->head = op;
  q->tail = op;
}

void mdb_queue_front(mdb_queue *q, mdb_op *list) {
  if (list == NULL)
    return;
  mdb_op *last = list;
  while (last->next)
    last = last->next;
  last->next = q->head;
  if (q->head == NULL)
    q->tail = last;
  q->head = list;
}

mdb_op *mdb_queue_pop(mdb_queue *q) {
  mdb_op *op = q->head;
  if (op) {
    q->head = op->next;
    if (q->head == NULL)
      q->tail = NULL;
    op->next = NULL;
  }
  return op;
}

/* Takes the ops at the head of q whose deadline has passed (queues are
 * in deadline order) onto *out. */
static void queue_expire(mdb_queue *q, int64_t now, mdb_op ***out) {
  while (q->head && q->head->deadline <= now) {
    mdb_op *op = mdb_queue_pop(q);
    **out = op;
    *out = &op->next;
  }
}

int mdb_submit(imc_mariadb *db, mdb_op *op) {
  int rv = mdb_kick(db);
  if (rv < 0) {
    mdb_op_free(db, op);
    return rv;
  }
  if (op->kind <= MDB_OP_PURGE)
    mdb_queue_push(&db->wq, op);
  else if (op->kind < MDB_OP_MIGRATE)
    mdb_queue_push(&db->rq, op);
  else
    mdb_queue_push(&db->waiters, op);
  return 0;
}

/* ------------------------------------------------------------------ */
/* Scheduling                                                           */
/* ------------------------------------------------------------------ */

static void pump(imc_mariadb *db);

static void on_kick(void *ud) {
  imc_mariadb *db = ud;
  db->kick = NULL;
  pump(db);
}

int mdb_kick(imc_mariadb *db) {
  if (db->kick || db->closing)
    return 0;
  if (db->loop.vtbl->timer_add(db->loop.ud, 0, on_kick, db, &db->kick) < 0) {
    db->kick = NULL;
    return IMC_ERR_NOMEM;
  }
  return 0;
}

static void on_deadline(void *ud);

static int64_t ops_earliest(const mdb_op *op, int64_t t) {
  for (; op; op = op->next)
    if (op->deadline < t)
      t = op->deadline;
  return t;
}

/* Arms the deadline timer for the earliest deadline of a waiting or
 * running op, unless it is armed (it then fires no later: deadlines only
 * grow along the queues). */
static void arm_deadline(imc_mariadb *db) {
  if (db->deadline_timer || db->closing)
    return;
  int64_t t = INT64_MAX;
  const mdb_queue *qs[3] = {&db->wq, &db->rq, &db->waiters};
  for (int i = 0; i < 3; i++)
    if (qs[i]->head && qs[i]->head->deadline < t)
      t = qs[i]->head->deadline;
  for (unsigned i = 0; i < db->o.pool; i++)
    t = ops_earliest(db->conns[i].ops, t);
  if (t == INT64_MAX)
    return;
  int64_t wait = t - mdb_now_ms();
  if (db->loop.vtbl->timer_add(db->loop.ud, wait < 0 ? 0 : wait, on_deadline,
                               db, &db->deadline_timer) < 0)
    db->deadline_timer = NULL;
}

static void on_deadline(void *ud) {
  imc_mariadb *db = ud;
  db->deadline_timer = NULL;
  int64_t now = mdb_now_ms();
  /* A statement that outlived an op's deadline: drop its connection (its
   * ops go back to their queue, and those past due end below). */
  for (unsigned i = 0; i < db->o.pool; i++) {
    mdb_conn *c = &db->conns[i];
    if (c->state == MDB_CONN_BUSY && ops_earliest(c->ops, INT64_MAX) <= now)
      mdb_conn_drop(c, "no answer within the operation timeout");
  }
  mdb_op *expired = NULL, **tail = &expired;
  queue_expire(&db->wq, now, &tail);
  queue_expire(&db->rq, now, &tail);
  queue_expire(&db->waiters, now, &tail);
  if (expired) {
    size_t n = 0;
    for (mdb_op *op = expired; op; op = op->next)
      n++;
    mdb_log(db, IMC_LOG_WARN,
            "mariadb: %zu operation(s) timed out; last error: %s", n,
            db->errmsg[0] ? db->errmsg : "none");
    mdb_ops_finish(db, expired, IMC_ERR_UNAVAILABLE);
  }
  arm_deadline(db);
}

static void on_schema_timer(void *ud) {
  imc_mariadb *db = ud;
  db->schema_timer = NULL;
  db->schema = MDB_SCHEMA_UNKNOWN;
  pump(db);
}

void mdb_schema_failed(imc_mariadb *db, int status) {
  db->schema = MDB_SCHEMA_FAILED;
  db->schema_err = status;
  /* Someone may migrate meanwhile: check again, without flooding the log. */
  int64_t wait = db->o.max_backoff_ms < SCHEMA_RETRY_MS ? SCHEMA_RETRY_MS
                                                        : db->o.max_backoff_ms;
  if (db->schema_timer == NULL &&
      db->loop.vtbl->timer_add(db->loop.ud, wait, on_schema_timer, db,
                               &db->schema_timer) < 0)
    db->schema_timer = NULL;
  if (status != IMC_ERR_UNAVAILABLE) {
    mdb_op *w = db->waiters.head;
    db->waiters.head = db->waiters.tail = NULL;
    mdb_ops_finish(db, w, status);
  }
  mdb_kick(db);
}

static void pump(imc_mariadb *db) {
  if (db->closing)
    return;
  unsigned pool = db->o.pool;
  for (unsigned i = 0; i < pool; i++)
    if (db->conns[i].state == MDB_CONN_DOWN)
      mdb_conn_connect(&db->conns[i]);
  if (db->schema == MDB_SCHEMA_UNKNOWN) {
    for (unsigned i = 0; i < pool; i++) {
      if (db->conns[i].state == MDB_CONN_IDLE) {
        db->schema = MDB_SCHEMA_RUNNING;
        mdb_schema_start(&db->conns[i]);
        break;
      }
    }
  }
  if (db->schema == MDB_SCHEMA_READY) {
    mdb_op *w = db->waiters.head;
    db->waiters.head = db->waiters.tail = NULL;
    mdb_ops_finish(db, w, 0);
    unsigned max_reads = pool > 1 ? pool - 1 : 1;
    for (unsigned i = 0; i < pool; i++) {
      mdb_conn *c = &db->conns[i];
      if (c->state != MDB_CONN_IDLE)
        continue;
      if (!db->writing && db->wq.head) {
        db->writing = 1;
        if (db->wq.head->kind == MDB_OP_PURGE)
          mdb_purge_start(c);
        else
          mdb_batch_start(c);
      } else if (db->rq.head && db->reading < max_reads) {
        db->reading++;
        mdb_read_start(c);
      }
    }
  }
  arm_deadline(db);
}

/* ------------------------------------------------------------------ */
/* Connection events, by job kind                                       */
/* ------------------------------------------------------------------ */

void mdb_job_result(mdb_conn *c, unsigned i, MYSQL_RES *res,
                    uint64_t affected) {
  switch (c->job) {
  case MDB_JOB_SCHEMA:
    mdb_schema_result(c, i, res);
    break;
  case MDB_JOB_PURGE:
    mdb_purge_result(c, i, res, affected);
    break;
  case MDB_JOB_READ:
    mdb_read_result(c, i, res);
    break;
  default:
    if (res)
      mysql_free_result(res);
    break;
  }
}

void mdb_job_step_done(mdb_conn *c, unsigned err, const char *msg) {
  switch (c->job) {
  case MDB_JOB_SCHEMA:
    mdb_schema_step_done(c, err, msg);
    break;
  case MDB_JOB_WRITE:
    mdb_batch_step_done(c, err, msg);
    break;
  case MDB_JOB_PURGE:
    mdb_purge_step_done(c, err, msg);
    break;
  case MDB_JOB_READ:
    mdb_read_step_done(c, err, msg);
    break;
  case MDB_JOB_NONE:
    mdb_conn_release(c);
    break;
  }
}

void mdb_job_lost(mdb_conn *c) {
  imc_mariadb *db = c->db;
  mdb_op *ops = c->ops;
  switch (c->job) {
  case MDB_JOB_SCHEMA:
    mdb_schema_lost(c);
    break;
  case MDB_JOB_WRITE:
    db->writing = 0;
    mdb_queue_front(&db->wq, ops);
    break;
  case MDB_JOB_PURGE:
    db->writing = 0;
    mdb_purge_lost(c);
    mdb_queue_front(&db->wq, ops);
    break;
  case MDB_JOB_READ:
    db->reading--;
    for (mdb_op *op = ops; op; op = op->next)
      if (op->res) {
        mysql_free_result(op->res);
        op->res = NULL;
      }
    mdb_queue_front(&db->rq, ops);
    break;
  case MDB_JOB_NONE:
    break;
  }
  c->job = MDB_JOB_NONE;
  c->ops = NULL;
  mdb_kick(db);
}

/* ------------------------------------------------------------------ */
/* The object                                                           */
/* ------------------------------------------------------------------ */

int imc_mariadb_new(imc_mariadb **out, const imc_loop *loop,
                    const imc_mariadb_options *opts, const imc_mem *mem) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  *out = NULL;
  if (loop == NULL || loop->vtbl == NULL ||
      loop->vtbl->struct_size < sizeof(imc_loop_vtbl) || opts == NULL ||
      opts->host == NULL || opts->dbname == NULL || opts->user == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_mem m = {NULL, std_malloc, std_free, std_calloc, std_realloc};
  if (mem)
    m = *mem;
  imc_mariadb *db = m.calloc(1, sizeof(*db), m.ud);
  if (db == NULL)
    return IMC_ERR_NOMEM;
  db->mem = m;
  db->loop = *loop;
  if (mdb_opts_copy(&db->o, opts, &m) < 0) {
    m.free(db, m.ud);
    return IMC_ERR_NOMEM;
  }
  db->apply = db->o.migrate;
  for (unsigned i = 0; i < MDB_POOL_MAX; i++) {
    mdb_conn *c = &db->conns[i];
    c->db = db;
    c->index = i;
    c->fd = -1;
    mdb_sql_init(&c->sql, db);
  }
  pump(db);
  *out = db;
  return 0;
}

void imc_mariadb_del(imc_mariadb *db) {
  if (db == NULL)
    return;
  db->closing = 1;
  const imc_loop_vtbl *lv = db->loop.vtbl;
  void **timers[3] = {&db->kick, &db->deadline_timer, &db->schema_timer};
  for (int i = 0; i < 3; i++) {
    if (*timers[i])
      lv->timer_del(db->loop.ud, *timers[i]);
    *timers[i] = NULL;
  }
  mdb_op *pending = NULL, **tail = &pending;
  for (unsigned i = 0; i < MDB_POOL_MAX; i++) {
    mdb_conn *c = &db->conns[i];
    mdb_conn_close(c);
    if (c->job == MDB_JOB_PURGE)
      mdb_purge_lost(c);
    *tail = c->ops;
    while (*tail)
      tail = &(*tail)->next;
    c->ops = NULL;
    c->job = MDB_JOB_NONE;
  }
  mdb_queue *qs[3] = {&db->wq, &db->rq, &db->waiters};
  for (int i = 0; i < 3; i++) {
    *tail = qs[i]->head;
    while (*tail)
      tail = &(*tail)->next;
    qs[i]->head = qs[i]->tail = NULL;
  }
  mdb_ops_finish(db, pending, IMC_ERR_CLOSED);
  for (unsigned i = 0; i < MDB_POOL_MAX; i++)
    mdb_sql_free(&db->conns[i].sql);
  mdb_opts_clear(&db->o, &db->mem);
  imc_mem m = db->mem;
  m.free(db, m.ud);
}

void imc_mariadb_set_user_data(imc_mariadb *db, void *ud) {
  if (db)
    db->user_data = ud;
}

void *imc_mariadb_get_user_data(const imc_mariadb *db) {
  return db ? db->user_data : NULL;
}

int imc_mariadb_health(const imc_mariadb *db) {
  if (db == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  int up = 0;
  for (unsigned i = 0; i < db->o.pool; i++)
    if (db->conns[i].state == MDB_CONN_IDLE ||
        db->conns[i].state == MDB_CONN_BUSY)
      up = 1;
  if (!up)
    return IMC_ERR_UNAVAILABLE;
  if (db->schema == MDB_SCHEMA_READY)
    return 0;
  if (db->schema == MDB_SCHEMA_FAILED)
    return db->schema_err;
  return IMC_ERR_UNAVAILABLE; /* still checking */
}

const char *imc_mariadb_errmsg(const imc_mariadb *db) {
  return db ? db->errmsg : "";
}

int imc_mariadb_migrate(imc_mariadb *db, imc_done_cb done, void *done_ud) {
  if (db == NULL || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (db->closing)
    return IMC_ERR_CLOSED;
  mdb_op *op = mdb_op_new(db, MDB_OP_MIGRATE);
  if (op == NULL)
    return IMC_ERR_NOMEM;
  op->cb.done = done;
  op->cb_ud = done_ud;
  db->apply = 1;
  if (db->schema == MDB_SCHEMA_FAILED) {
    /* Check again now (applying, this time), not at the next retry. */
    if (db->schema_timer)
      db->loop.vtbl->timer_del(db->loop.ud, db->schema_timer);
    db->schema_timer = NULL;
    db->schema = MDB_SCHEMA_UNKNOWN;
  }
  return mdb_submit(db, op);
}
