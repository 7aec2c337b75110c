/*
 * Reads of the MariaDB engine: inbox and history pages, group members
 * and marks, one SELECT each, each in its own snapshot (autocommit).
 * The result set is stored whole (mysql_store_result) and kept by the op
 * until its completion has run: the pages' messages point into it, and
 * its fields are NUL-terminated, bodies counted by their lengths.
 */
#include "mariadb/mariadb_int.h"

#include <inttypes.h>
#include <stdlib.h>

#define MSG_COLS                                                               \
  "m.msg_id, m.conversation_id, m.seq, m.from_user, m.to_user, m.group_id,"    \
  " m.body, m.content_type, m.sent_at_ms, m.client_msg_id, m.from_device"

/* The columns of a page row: the cursor, then MSG_COLS. */
enum {
  COL_CURSOR,
  COL_MSG_ID,
  COL_CONV,
  COL_SEQ,
  COL_FROM,
  COL_TO,
  COL_GROUP,
  COL_BODY,
  COL_CTYPE,
  COL_SENT,
  COL_CMID,
  COL_DEVICE,
  N_COLS
};

void mdb_read_start(mdb_conn *c) {
  imc_mariadb *db = c->db;
  mdb_op *op = mdb_queue_pop(&db->rq);
  c->job = MDB_JOB_READ;
  c->ops = op;
  mdb_sql *s = &c->sql;
  mdb_sql_reset(s);
  /* One row past the page tells whether there is more. */
  uint64_t rows = (uint64_t)op->limit + 1;
  switch (op->kind) {
  case MDB_OP_INBOX:
    mdb_sql_add(s, "SELECT i.id, " MSG_COLS " FROM inbox AS i"
                   " JOIN messages AS m ON m.msg_id = i.msg_id"
                   " WHERE i.user_id = ");
    mdb_sql_str(s, c->my, op->key);
    mdb_sql_addf(s, " AND i.id > %" PRIu64 " ORDER BY i.id LIMIT %" PRIu64,
                 op->num, rows);
    break;
  case MDB_OP_HISTORY:
    mdb_sql_add(s, "SELECT m.seq, " MSG_COLS " FROM messages AS m"
                   " WHERE m.conversation_id = ");
    mdb_sql_str(s, c->my, op->key);
    mdb_sql_addf(s, " AND m.seq > %" PRIu64 " ORDER BY m.seq LIMIT %" PRIu64,
                 op->num, rows);
    break;
  case MDB_OP_MEMBERS:
    mdb_sql_add(s, "SELECT user_id FROM group_members WHERE group_id = ");
    mdb_sql_str(s, c->my, op->key);
    mdb_sql_add(s, " ORDER BY user_id");
    break;
  default: /* MDB_OP_MARK */
    mdb_sql_add(s, "SELECT v FROM marks WHERE k = ");
    mdb_sql_str(s, c->my, op->key);
    break;
  }
  if (s->oom) {
    db->reading--;
    mdb_conn_release(c);
    mdb_op_finish(db, op, IMC_ERR_NOMEM);
    mdb_kick(db);
    return;
  }
  mdb_conn_query(c, s->p, s->len);
}

void mdb_read_result(mdb_conn *c, unsigned i, MYSQL_RES *res) {
  mdb_op *op = c->ops;
  if (res == NULL)
    return;
  if (i == 0 && op->res == NULL)
    op->res = res;
  else
    mysql_free_result(res);
}

/* The page of op->res: messages pointing into the rows. */
static int read_page(imc_mariadb *db, mdb_op *op) {
  size_t n = (size_t)mysql_num_rows(op->res);
  if (mysql_num_fields(op->res) != N_COLS)
    return IMC_ERR_IO;
  if (n > op->limit) {
    n = op->limit;
    op->has_more = 1;
  }
  op->rows = mdb_calloc(db, n, sizeof(*op->rows));
  op->row_ptrs = mdb_calloc(db, n, sizeof(*op->row_ptrs));
  op->cursors = mdb_calloc(db, n, sizeof(*op->cursors));
  if (op->rows == NULL || op->row_ptrs == NULL || op->cursors == NULL)
    return IMC_ERR_NOMEM;
  for (size_t i = 0; i < n; i++) {
    MYSQL_ROW r = mysql_fetch_row(op->res);
    unsigned long *len = mysql_fetch_lengths(op->res);
    if (r == NULL || len == NULL)
      return IMC_ERR_IO;
    for (int k = 0; k < N_COLS; k++)
      if (r[k] == NULL)
        return IMC_ERR_IO; /* every column is NOT NULL */
    imc_msg *m = &op->rows[i];
    *m = (imc_msg){.struct_size = sizeof(imc_msg),
                   .msg_id = r[COL_MSG_ID],
                   .conversation_id = r[COL_CONV],
                   .seq = strtoull(r[COL_SEQ], NULL, 10),
                   .from_user = r[COL_FROM],
                   .to_user = r[COL_TO],
                   .group_id = r[COL_GROUP],
                   .body = (const uint8_t *)r[COL_BODY],
                   .body_len = len[COL_BODY],
                   .content_type = r[COL_CTYPE],
                   .sent_at_ms = strtoll(r[COL_SENT], NULL, 10),
                   .client_msg_id = r[COL_CMID],
                   .from_device = r[COL_DEVICE],
                   .from_node = ""};
    op->row_ptrs[i] = m;
    op->cursors[i] = strtoull(r[COL_CURSOR], NULL, 10);
  }
  op->n = n;
  return 0;
}

static int read_members(imc_mariadb *db, mdb_op *op) {
  size_t n = (size_t)mysql_num_rows(op->res);
  op->items = mdb_calloc(db, n, sizeof(*op->items));
  if (op->items == NULL)
    return IMC_ERR_NOMEM;
  for (size_t i = 0; i < n; i++) {
    MYSQL_ROW r = mysql_fetch_row(op->res);
    if (r == NULL || r[0] == NULL)
      return IMC_ERR_IO;
    op->items[i] = r[0];
  }
  op->n = n;
  return 0;
}

static int read_mark(mdb_op *op) {
  MYSQL_ROW r = mysql_fetch_row(op->res);
  op->mark = r && r[0] ? strtoull(r[0], NULL, 10) : 0;
  return 0;
}

void mdb_read_step_done(mdb_conn *c, unsigned err, const char *msg) {
  imc_mariadb *db = c->db;
  mdb_op *op = c->ops;
  db->reading--;
  mdb_conn_release(c);
  int status;
  if (err) {
    if (op->res)
      mysql_free_result(op->res);
    op->res = NULL;
    if (mdb_err_is_retry(err)) {
      mdb_queue_front(&db->rq, op);
      mdb_kick(db);
      return;
    }
    mdb_log(db, IMC_LOG_WARN, "mariadb: a read failed: %s", msg);
    status = mdb_status_of(err);
  } else if (op->res == NULL) {
    status = IMC_ERR_IO; /* a SELECT without a result set */
  } else if (op->kind == MDB_OP_MEMBERS) {
    status = read_members(db, op);
  } else if (op->kind == MDB_OP_MARK) {
    status = read_mark(op);
  } else {
    status = read_page(db, op);
  }
  mdb_op_finish(db, op, status);
  mdb_kick(db);
}
