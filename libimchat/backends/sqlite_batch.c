/*
 * SQLite embedded backends: operations and group commit.
 *
 * Every vtable call becomes an imc_sq_op. In immediate mode (the
 * default) the op runs at once, in its own transaction, and completes
 * before the call returns. With group commit the op joins the loop
 * side's open list; imc_sqlite_submit() closes the list (one submission,
 * normally one loop turn) and hands it to the shared submitted list, and
 * so does imc_sqlite_dispatch() once the list is due: max_ops ops, or
 * its first op made wait_ms ago (the deadline imc_sqlite_next_timeout_ms
 * announces). Lists close only in those calls, between the caller's
 * units of work, never inside a vtable call: what one call stack issues
 * (a router's job and its dedup record) stays in one submission;
 * imc_sqlite_run_batch() takes whole submissions, up to max_ops ops, and
 * runs them in one transaction, each op in a savepoint; the ops then wait
 * in the finished list until imc_sqlite_dispatch() completes them on the
 * loop thread. A completion therefore always runs after the commit that
 * made its op durable, and a failed commit fails every op of its batch.
 *
 * Threads: the open list, the consumers and the seq counters belong to
 * the loop thread; the connection and its statements belong to whoever
 * runs the batch (one thread at a time); the submitted and finished
 * lists are the handoff and are guarded by db->mu.
 */
#include "backends/sqlite_int.h"

#include <string.h>

static void list_push(imc_sq_list *l, imc_sq_op *op) {
  op->next = NULL;
  if (l->tail)
    l->tail->next = op;
  else
    l->head = op;
  l->tail = op;
  l->n++;
}

/* Moves every op of src to the end of dst. */
static void list_move(imc_sq_list *dst, imc_sq_list *src) {
  if (src->head == NULL)
    return;
  if (dst->tail)
    dst->tail->next = src->head;
  else
    dst->head = src->head;
  dst->tail = src->tail;
  dst->n += src->n;
  *src = (imc_sq_list){0};
}

void imc_sq_op_free(imc_sqlite *db, imc_sq_op *op) {
  if (op->type->release)
    op->type->release(db, op);
  imc_free(&db->mem, op);
}

/* Immediate mode: op in its own transaction if it writes. */
static int run_alone(imc_sqlite *db, imc_sq_op *op) {
  if (!op->type->write)
    return op->type->exec(db, op);
  int rv = imc_sq_begin(db);
  if (rv < 0)
    return rv;
  rv = op->type->exec(db, op);
  if (rv == 0)
    rv = imc_sq_commit(db);
  else
    imc_sq_rollback(db);
  return rv;
}

int imc_sq_submit_op(imc_sqlite *db, imc_sq_op *op) {
  op->status = 0;
  op->chunk_end = 0;
  op->next = NULL;
  if (db->group) {
    if (db->closing) {
      imc_sq_op_free(db, op);
      return IMC_ERR_CLOSED;
    }
    if (db->open.n == 0)
      db->open_at = imc_clock_now(&db->clock);
    list_push(&db->open, op);
    return 0;
  }
  int rv = run_alone(db, op);
  if (rv == 0)
    (void)op->type->complete(db, op);
  imc_sq_op_free(db, op);
  return rv;
}

/* ------------------------------------------------------------------ */
/* Loop side                                                            */
/* ------------------------------------------------------------------ */

int imc_sqlite_set_group_commit(imc_sqlite *db, uint32_t max_ops) {
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if (max_ops == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  db->max_ops = max_ops;
  if (!db->group) {
    /* Polls made so far have joined their group in the file. */
    for (size_t i = 0; i < db->n_consumers; i++)
      db->consumers[i]->joined = 1;
    /* Any thread may now run the batch: from here on, statements run
     * only inside imc_sqlite_run_batch(), which writes its own buffer. */
    memcpy(db->shared_errmsg, db->errmsg, sizeof(db->errmsg));
    memcpy(db->batch_errmsg, db->errmsg, sizeof(db->errmsg));
    db->errbuf = db->batch_errmsg;
    db->group = 1;
  }
  return 0;
}

int imc_sqlite_set_batch_wait_ms(imc_sqlite *db, uint32_t ms) {
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  db->wait_ms = ms;
  return 0;
}

/* Queues the reads polls need, then makes the open list one submission.
 * Returns the ops it submitted, or IMC_ERR_NOMEM (a read could not be
 * queued; nothing was submitted). */
static int close_open(imc_sqlite *db) {
  int rv;
  if (!db->closing && (rv = imc_sq_queue_reads(db)) < 0)
    return rv;
  if (db->open.n == 0)
    return 0;
  db->open.tail->chunk_end = 1;
  size_t n = db->open.n;
  pthread_mutex_lock(&db->mu);
  list_move(&db->submitted, &db->open);
  pthread_mutex_unlock(&db->mu);
  return n > INT32_MAX ? INT32_MAX : (int)n;
}

/* 1 once the open list must close: max_ops ops, or its first op made
 * wait_ms ago; or a poll needs a read. */
static int open_due(const imc_sqlite *db, int64_t now) {
  if (imc_sq_reads_due(db))
    return 1;
  return db->open.n > 0 && (db->open.n >= db->max_ops ||
                            now - db->open_at >= (int64_t)db->wait_ms);
}

/* Closes the open list if it is due; the ops count toward the next
 * imc_sqlite_submit()'s return. */
static void close_if_due(imc_sqlite *db) {
  if (!db->closing && open_due(db, imc_clock_now(&db->clock))) {
    int n = close_open(db);
    if (n > 0)
      db->closed += (size_t)n;
  }
}

int imc_sqlite_submit(imc_sqlite *db) {
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if (!db->group)
    return IMC_ERR_INVALID_ARGUMENT;
  if ((rv = close_open(db)) < 0)
    return rv;
  size_t n = (size_t)rv + db->closed;
  db->closed = 0;
  return n > INT32_MAX ? INT32_MAX : (int)n;
}

/* Completes the ops whose batch has run; the number of callbacks. */
static int complete_finished(imc_sqlite *db) {
  pthread_mutex_lock(&db->mu);
  imc_sq_list l = db->finished;
  db->finished = (imc_sq_list){0};
  pthread_mutex_unlock(&db->mu);
  int count = 0;
  imc_sq_op *op = l.head;
  while (op) {
    imc_sq_op *next = op->next;
    count += op->type->complete(db, op);
    imc_sq_op_free(db, op);
    op = next;
  }
  return count;
}

int imc_sq_batch_dispatch(imc_sqlite *db) {
  /* Before the completions: ops the host made since its last call. */
  close_if_due(db);
  int count = complete_finished(db);
  /* After them: what they made is whole units of work too. */
  close_if_due(db);
  return count;
}

int64_t imc_sq_batch_timeout(const imc_sqlite *db) {
  imc_sqlite *m = (imc_sqlite *)db; /* the mutex is not part of the value */
  pthread_mutex_lock(&m->mu);
  size_t n = m->finished.n;
  pthread_mutex_unlock(&m->mu);
  int64_t now = imc_clock_now(&db->clock);
  if (n > 0 || open_due(db, now))
    return 0;
  if (db->open.n == 0)
    return -1;
  return db->open_at + (int64_t)db->wait_ms - now;
}

size_t imc_sqlite_batch_queued(imc_sqlite *db) {
  if (db == NULL || !db->group)
    return 0;
  pthread_mutex_lock(&db->mu);
  size_t n = db->submitted.n;
  pthread_mutex_unlock(&db->mu);
  return n;
}

void imc_sq_batch_close(imc_sqlite *db) {
  if (!db->group)
    return;
  db->closing = 1;
  /* What ran is reported as it ran; what did not is refused. Completions
   * cannot queue more (closing), so this ends. */
  for (;;) {
    imc_sq_batch_dispatch(db);
    pthread_mutex_lock(&db->mu);
    imc_sq_list l = db->submitted;
    db->submitted = (imc_sq_list){0};
    list_move(&l, &db->open);
    for (imc_sq_op *op = l.head; op; op = op->next)
      op->status = IMC_ERR_CLOSED;
    list_move(&db->finished, &l);
    size_t n = db->finished.n;
    pthread_mutex_unlock(&db->mu);
    if (n == 0)
      break;
  }
}

/* ------------------------------------------------------------------ */
/* Storage side                                                         */
/* ------------------------------------------------------------------ */

/* One op of a batch, in a savepoint if it writes: a failing op undoes
 * its own statements and leaves the others' in the transaction. */
static int exec_in_batch(imc_sqlite *db, imc_sq_op *op) {
  if (!op->type->write)
    return op->type->exec(db, op);
  int rv = imc_sq_run(db, imc_sq_get(db, SQ_SAVEPOINT), "savepoint");
  if (rv < 0)
    return rv;
  rv = op->type->exec(db, op);
  if (sqlite3_get_autocommit(db->db))
    return rv < 0 ? rv : IMC_ERR_IO; /* the transaction is gone */
  if (rv < 0)
    imc_sq_run(db, imc_sq_get(db, SQ_ROLLBACK_TO), "rollback op");
  int rv2 = imc_sq_run(db, imc_sq_get(db, SQ_RELEASE), "release op");
  return rv < 0 ? rv : rv2;
}

/* Takes whole submissions from the submitted list, at least one and at
 * most max_ops ops unless the first alone is larger. Under mu. */
static imc_sq_list take_batch(imc_sqlite *db) {
  imc_sq_list b = {0};
  imc_sq_op *p = db->submitted.head, *last = NULL;
  size_t taken = 0;
  while (p) {
    size_t n = 0;
    imc_sq_op *end = p;
    for (n = 1; !end->chunk_end && end->next; n++)
      end = end->next;
    if (taken > 0 && taken + n > db->max_ops)
      break;
    taken += n;
    last = end;
    p = end->next;
  }
  if (last == NULL)
    return b;
  b.head = db->submitted.head;
  b.tail = last;
  b.n = taken;
  db->submitted.head = last->next;
  if (db->submitted.head == NULL)
    db->submitted.tail = NULL;
  db->submitted.n -= taken;
  last->next = NULL;
  return b;
}

int imc_sqlite_run_batch(imc_sqlite *db) {
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if (!db->group)
    return IMC_ERR_INVALID_ARGUMENT;
  pthread_mutex_lock(&db->mu);
  imc_sq_list b = take_batch(db);
  pthread_mutex_unlock(&db->mu);
  if (b.n == 0)
    return 0;
  rv = imc_sq_begin(db);
  for (imc_sq_op *op = b.head; op && rv == 0; op = op->next) {
    op->status = exec_in_batch(db, op);
    if (op->status < 0 && sqlite3_get_autocommit(db->db))
      rv = op->status; /* SQLite rolled the whole transaction back */
  }
  if (rv == 0)
    rv = imc_sq_commit(db);
  else
    imc_sq_rollback(db);
  if (rv < 0)
    for (imc_sq_op *op = b.head; op; op = op->next)
      op->status = rv;
  int failed = rv < 0;
  for (imc_sq_op *op = b.head; op && !failed; op = op->next)
    failed = op->status < 0;
  size_t n = b.n;
  pthread_mutex_lock(&db->mu);
  list_move(&db->finished, &b);
  if (failed)
    memcpy(db->shared_errmsg, db->batch_errmsg, sizeof(db->shared_errmsg));
  pthread_mutex_unlock(&db->mu);
  return n > INT32_MAX ? INT32_MAX : (int)n;
}
