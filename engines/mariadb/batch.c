/*
 * Group commit: the write operations waiting at the head of db->wq (up
 * to the batch bounds, stopping at a purge) become ONE transaction sent
 * as one multi-statement query:
 *
 *   START TRANSACTION;
 *   INSERT INTO messages ... VALUES (...),(...) ON DUPLICATE KEY ...;
 *   INSERT INTO inbox ... VALUES (...),(...) ON DUPLICATE KEY ...;
 *   INSERT INTO marks ... ON DUPLICATE KEY UPDATE v = GREATEST(...);
 *   runs of group additions and removals, in the order they were made;
 *   COMMIT
 *
 * Appends and marks commute with the group changes, so only the group
 * changes keep their relative order; rows keep the order of their
 * operations, so inbox cursors follow arrival order. Only one batch is
 * in flight at a time: cursors (AUTO_INCREMENT ids) become visible in
 * the order they were handed out, so a reader's cursor never skips an
 * entry that commits later.
 *
 * The operations complete after COMMIT succeeded. If the connection
 * breaks, the whole batch goes back to the head of the queue and is sent
 * again on the next connection: the unique keys make the second run
 * harmless whether or not the first committed. If a statement fails, the
 * batch is rolled back; a deadlock or lock timeout retries it as is, any
 * other error sends each of its operations again in a transaction of its
 * own, so only the bad one fails.
 */
#include "mariadb/mariadb_int.h"

#include <inttypes.h>

enum { STEP_BATCH, STEP_ROLLBACK };

static mdb_op *take_batch(imc_mariadb *db) {
  mdb_queue *q = &db->wq;
  mdb_op *list = q->head, *last = list;
  size_t n = 1, bytes = MDB_BATCH_HEAD + list->est;
  if (!list->solo) {
    while (last->next && !last->next->solo &&
           last->next->kind != MDB_OP_PURGE && n < db->o.batch_ops &&
           bytes + last->next->est <= db->o.batch_bytes) {
      last = last->next;
      bytes += last->est;
      n++;
    }
  }
  q->head = last->next;
  if (q->head == NULL)
    q->tail = NULL;
  q->n -= n;
  last->next = NULL;
  return list;
}

/*
 * A message whose msg_id is stored changes nothing (a retry). One whose
 * (conversation_id, seq) is held by another msg_id sets seq to NULL,
 * which strict mode refuses (ER_BAD_NULL_ERROR): the batch fails, and
 * the append, run alone, fails with IMC_ERR_EXISTS rather than losing a
 * message silently.
 */
#define MSG_INSERT                                                             \
  "INSERT INTO messages (msg_id, conversation_id, seq, from_user, to_user,"    \
  " group_id, body, content_type, sent_at_ms, client_msg_id, from_device)"     \
  " VALUES "
#define MSG_UPSERT                                                             \
  " ON DUPLICATE KEY UPDATE seq = IF(msg_id = VALUES(msg_id), seq, NULL)"

static void msg_row(mdb_sql *s, MYSQL *my, const imc_msg *m) {
  mdb_sql_add(s, "(");
  mdb_sql_str(s, my, m->msg_id);
  mdb_sql_add(s, ",");
  mdb_sql_str(s, my, m->conversation_id);
  mdb_sql_addf(s, ",%" PRIu64 ",", m->seq);
  mdb_sql_str(s, my, m->from_user);
  mdb_sql_add(s, ",");
  mdb_sql_str(s, my, m->to_user);
  mdb_sql_add(s, ",");
  mdb_sql_str(s, my, m->group_id);
  mdb_sql_add(s, ",");
  mdb_sql_bin(s, m->body, m->body_len);
  mdb_sql_add(s, ",");
  mdb_sql_str(s, my, m->content_type);
  mdb_sql_addf(s, ",%" PRId64 ",", m->sent_at_ms);
  mdb_sql_str(s, my, m->client_msg_id);
  mdb_sql_add(s, ",");
  mdb_sql_str(s, my, m->from_device);
  mdb_sql_add(s, ")");
}

static void add_messages(mdb_sql *s, MYSQL *my, const mdb_op *list) {
  int first = 1;
  for (const mdb_op *op = list; op; op = op->next) {
    if (op->kind != MDB_OP_APPEND)
      continue;
    for (size_t i = 0; i < op->n_copies; i++) {
      mdb_sql_add(s, first ? ";" MSG_INSERT : ",");
      first = 0;
      msg_row(s, my, op->msgs[i]);
    }
  }
  if (!first)
    mdb_sql_add(s, MSG_UPSERT);
}

static void add_entries(mdb_sql *s, MYSQL *my, const mdb_op *list) {
  int first = 1;
  for (const mdb_op *op = list; op; op = op->next) {
    if (op->kind != MDB_OP_APPEND)
      continue;
    for (size_t i = 0; i < op->n_entries; i++) {
      mdb_sql_add(s, first ? ";INSERT INTO inbox (user_id, msg_id) VALUES ("
                           : ",(");
      first = 0;
      mdb_sql_str(s, my, op->entries[i].user);
      mdb_sql_add(s, ",");
      mdb_sql_str(s, my, op->msgs[op->entries[i].msg]->msg_id);
      mdb_sql_add(s, ")");
    }
  }
  if (!first)
    mdb_sql_add(s, " ON DUPLICATE KEY UPDATE id = id");
}

static void add_marks(mdb_sql *s, MYSQL *my, const mdb_op *list) {
  int first = 1;
  for (const mdb_op *op = list; op; op = op->next) {
    if (op->kind != MDB_OP_RAISE)
      continue;
    mdb_sql_add(s, first ? ";INSERT INTO marks (k, v) VALUES (" : ",(");
    first = 0;
    mdb_sql_str(s, my, op->key);
    mdb_sql_addf(s, ",%" PRIu64 ")", op->num);
  }
  if (!first)
    mdb_sql_add(s, " ON DUPLICATE KEY UPDATE v = GREATEST(v, VALUES(v))");
}

static void end_group_run(mdb_sql *s, int run) {
  if (run == MDB_OP_GROUP_ADD)
    mdb_sql_add(s, " ON DUPLICATE KEY UPDATE user_id = user_id");
  else if (run == MDB_OP_GROUP_REMOVE)
    mdb_sql_add(s, ")");
}

static void add_groups(mdb_sql *s, MYSQL *my, const mdb_op *list) {
  int run = -1;
  for (const mdb_op *op = list; op; op = op->next) {
    if (op->kind != MDB_OP_GROUP_ADD && op->kind != MDB_OP_GROUP_REMOVE)
      continue;
    if ((int)op->kind != run) {
      end_group_run(s, run);
      run = (int)op->kind;
      mdb_sql_add(s, run == MDB_OP_GROUP_ADD
                         ? ";INSERT INTO group_members (group_id, user_id)"
                           " VALUES "
                         : ";DELETE FROM group_members"
                           " WHERE (group_id, user_id) IN (");
    } else {
      mdb_sql_add(s, ",");
    }
    mdb_sql_add(s, "(");
    mdb_sql_str(s, my, op->key);
    mdb_sql_add(s, ",");
    mdb_sql_str(s, my, op->key2);
    mdb_sql_add(s, ")");
  }
  end_group_run(s, run);
}

void mdb_batch_start(mdb_conn *c) {
  imc_mariadb *db = c->db;
  mdb_op *list = take_batch(db);
  c->job = MDB_JOB_WRITE;
  c->ops = list;
  c->step = STEP_BATCH;
  mdb_sql *s = &c->sql;
  mdb_sql_reset(s);
  mdb_sql_add(s, "START TRANSACTION");
  add_messages(s, c->my, list);
  add_entries(s, c->my, list);
  add_marks(s, c->my, list);
  add_groups(s, c->my, list);
  mdb_sql_add(s, ";COMMIT");
  if (s->oom) {
    db->writing = 0;
    mdb_conn_release(c);
    mdb_ops_finish(db, list, IMC_ERR_NOMEM);
    mdb_kick(db);
    return;
  }
  mdb_conn_query(c, s->p, s->len);
}

void mdb_batch_step_done(mdb_conn *c, unsigned err, const char *msg) {
  imc_mariadb *db = c->db;
  if (c->step == STEP_BATCH && err) {
    /* The server stopped at the failing statement, inside the
     * transaction: roll it back before the connection serves again. */
    c->err = err;
    size_t n = 0;
    for (mdb_op *op = c->ops; op; op = op->next)
      n++;
    mdb_log(db, IMC_LOG_WARN, "mariadb: a write batch of %zu failed: %s", n,
            msg);
    c->step = STEP_ROLLBACK;
    mdb_conn_query(c, "ROLLBACK", 8);
    return;
  }
  mdb_op *list = c->ops;
  unsigned failed = c->step == STEP_ROLLBACK ? c->err : 0;
  if (err) {
    /* ROLLBACK failed: end the session, which rolls back for sure. */
    mdb_conn_drop(c, msg);
    return;
  }
  db->writing = 0;
  mdb_conn_release(c);
  if (failed == 0) {
    mdb_ops_finish(db, list, 0);
  } else if (mdb_err_is_retry(failed)) {
    mdb_queue_front(&db->wq, list);
  } else if (list->next == NULL) {
    mdb_ops_finish(db, list, mdb_status_of(failed));
  } else {
    for (mdb_op *op = list; op; op = op->next)
      op->solo = 1;
    mdb_queue_front(&db->wq, list);
  }
  mdb_kick(db);
}
