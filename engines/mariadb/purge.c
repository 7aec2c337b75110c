/*
 * Retention: a purge deletes the messages sent before before_ms, and
 * their inbox entries, a chunk at a time. Each chunk is one transaction
 * of two round trips:
 *
 *   START TRANSACTION;
 *   SELECT msg_id FROM messages WHERE sent_at_ms < T
 *     ORDER BY sent_at_ms LIMIT n FOR UPDATE
 *   -- then, with those ids:
 *   DELETE FROM inbox WHERE msg_id IN (...);
 *   DELETE FROM messages WHERE msg_id IN (...);
 *   COMMIT
 *
 * The locked rows keep a concurrent append of one of those messages from
 * adding an entry that would outlive its message. After a full chunk the
 * purge goes back to the tail of the write queue (with a fresh deadline),
 * so write batches that queued meanwhile run between chunks; a chunk
 * that finds fewer than n messages is the last.
 */
#include "mariadb/mariadb_int.h"

#include <inttypes.h>

enum { STEP_SELECT, STEP_DELETE, STEP_ROLLBACK, STEP_ABORT };

void mdb_purge_lost(mdb_conn *c) {
  for (size_t i = 0; i < c->n_purge_ids; i++)
    mdb_free(c->db, c->purge_ids[i]);
  mdb_free(c->db, c->purge_ids);
  c->purge_ids = NULL;
  c->n_purge_ids = 0;
  c->purge_oom = 0;
}

/* The chunk is over: committed (failed 0) or rolled back after the
 * server error failed. */
static void chunk_done(mdb_conn *c, unsigned failed, int status) {
  imc_mariadb *db = c->db;
  mdb_op *op = c->ops;
  int more = status == 0 && c->n_purge_ids == db->o.purge_chunk;
  mdb_purge_lost(c);
  db->writing = 0;
  mdb_conn_release(c);
  if (status == 0 && more) {
    op->deadline = mdb_now_ms() + db->o.op_timeout_ms;
    mdb_queue_push(&db->wq, op);
  } else if (failed && mdb_err_is_retry(failed)) {
    mdb_queue_front(&db->wq, op);
  } else {
    mdb_op_finish(db, op, status);
  }
  mdb_kick(db);
}

void mdb_purge_start(mdb_conn *c) {
  imc_mariadb *db = c->db;
  mdb_op *op = mdb_queue_pop(&db->wq);
  c->job = MDB_JOB_PURGE;
  c->ops = op;
  c->err = 0;
  c->step = STEP_SELECT;
  mdb_sql *s = &c->sql;
  mdb_sql_reset(s);
  mdb_sql_addf(s,
               "START TRANSACTION;SELECT msg_id FROM messages"
               " WHERE sent_at_ms < %" PRId64
               " ORDER BY sent_at_ms LIMIT %" PRIu32 " FOR UPDATE",
               op->before_ms, db->o.purge_chunk);
  if (s->oom) {
    chunk_done(c, 0, IMC_ERR_NOMEM);
    return;
  }
  mdb_conn_query(c, s->p, s->len);
}

void mdb_purge_result(mdb_conn *c, unsigned i, MYSQL_RES *res,
                      uint64_t affected) {
  (void)i;
  (void)affected;
  if (res == NULL)
    return;
  if (c->step == STEP_SELECT && c->purge_ids == NULL) {
    size_t n = (size_t)mysql_num_rows(res);
    c->purge_ids = mdb_calloc(c->db, n, sizeof(char *));
    c->purge_oom = c->purge_ids == NULL;
    MYSQL_ROW row;
    while (!c->purge_oom && (row = mysql_fetch_row(res)) != NULL) {
      char *id = row[0] ? mdb_strdup(c->db, row[0]) : NULL;
      if (id == NULL) {
        c->purge_oom = 1;
        break;
      }
      c->purge_ids[c->n_purge_ids++] = id;
    }
  }
  mysql_free_result(res);
}

static void add_ids(mdb_sql *s, MYSQL *my, char **ids, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (i)
      mdb_sql_add(s, ",");
    mdb_sql_str(s, my, ids[i]);
  }
}

/* Ends the transaction without deleting anything. */
static void rollback(mdb_conn *c, int step) {
  c->step = step;
  mdb_conn_query(c, "ROLLBACK", 8);
}

void mdb_purge_step_done(mdb_conn *c, unsigned err, const char *msg) {
  switch (c->step) {
  case STEP_SELECT:
  case STEP_DELETE:
    if (err) {
      mdb_log(c->db, IMC_LOG_WARN, "mariadb: purge failed: %s", msg);
      c->err = err;
      rollback(c, STEP_ROLLBACK);
    } else if (c->step == STEP_DELETE) {
      chunk_done(c, 0, 0);
    } else {
      mdb_sql *s = &c->sql;
      mdb_sql_reset(s);
      if (c->n_purge_ids == 0) {
        mdb_sql_add(s, "COMMIT");
      } else {
        mdb_sql_add(s, "DELETE FROM inbox WHERE msg_id IN (");
        add_ids(s, c->my, c->purge_ids, c->n_purge_ids);
        mdb_sql_add(s, ");DELETE FROM messages WHERE msg_id IN (");
        add_ids(s, c->my, c->purge_ids, c->n_purge_ids);
        mdb_sql_add(s, ");COMMIT");
      }
      if (c->purge_oom || s->oom) {
        rollback(c, STEP_ABORT);
        return;
      }
      c->step = STEP_DELETE;
      mdb_conn_query(c, s->p, s->len);
    }
    return;
  case STEP_ROLLBACK:
  case STEP_ABORT:
    if (err)
      mdb_conn_drop(c, msg); /* the session's end rolls back for sure */
    else if (c->step == STEP_ABORT)
      chunk_done(c, 0, IMC_ERR_NOMEM);
    else
      chunk_done(c, c->err, mdb_status_of(c->err));
    return;
  }
}
