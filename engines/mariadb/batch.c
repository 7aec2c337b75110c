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
 * operations, so inbox cursors follow arrival order.
 *
 * Inbox cursors are AUTO_INCREMENT ids: they must become visible in the
 * order they were handed out, or a reader's cursor could pass an id that
 * commits later. An engine has one batch in flight at a time; across
 * processes (several workers writing one user's inbox), a batch that
 * adds inbox entries holds a lock per database (GET_LOCK) from before
 * its first insert until after its COMMIT. All of it is one round trip:
 * the guard statement fails when the lock is not the session's (its
 * wait timed out), and the server then runs nothing after it.
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

#define INBOX_LOCK "CONCAT('imchat.inbox.', MD5(DATABASE()))"
/* Two rows, so ER_SUBQUERY_NO_1_ROW, unless this session holds the lock
 * (a SET, since DO discards the error). */
#define INBOX_LOCK_GUARD                                                       \
  "SET @imc_inbox_lock = (SELECT 1 UNION ALL SELECT 2 FROM DUAL"               \
  " WHERE NOT (IS_USED_LOCK(" INBOX_LOCK ") <=> CONNECTION_ID()))"

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
  c->batch_locked = 0;
  for (const mdb_op *op = list; op && !c->batch_locked; op = op->next)
    c->batch_locked = op->kind == MDB_OP_APPEND && op->n_entries > 0;
  mdb_sql *s = &c->sql;
  mdb_sql_reset(s);
  if (c->batch_locked) {
    /* Wait for the lock within the operations' timeout (in seconds). */
    int64_t wait_s = db->o.op_timeout_ms / 1000;
    mdb_sql_addf(s, "DO GET_LOCK(" INBOX_LOCK ", %d);" INBOX_LOCK_GUARD ";",
                 (int)(wait_s < 1 ? 1 : wait_s));
  }
  mdb_sql_add(s, "START TRANSACTION");
  add_messages(s, c->my, list);
  add_entries(s, c->my, list);
  add_marks(s, c->my, list);
  add_groups(s, c->my, list);
  mdb_sql_add(s, ";COMMIT");
  if (c->batch_locked)
    mdb_sql_add(s, ";DO RELEASE_LOCK(" INBOX_LOCK ")");
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
    if (c->batch_locked) {
      static const char sql[] = "ROLLBACK;DO RELEASE_LOCK(" INBOX_LOCK ")";
      mdb_conn_query(c, sql, sizeof(sql) - 1);
    } else {
      mdb_conn_query(c, "ROLLBACK", 8);
    }
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
