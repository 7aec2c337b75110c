/*
 * The marks vtable on MariaDB: get is a read; raise is a write of the
 * group commit (batch.c), INSERT ... ON DUPLICATE KEY UPDATE
 * v = GREATEST(v, VALUES(v)), so a mark never goes down, however raises
 * are ordered, batched or retried.
 */
#include "mariadb/mariadb_int.h"

#include <string.h>

static int key_ok(const char *key) {
  return key != NULL && *key != '\0' && strlen(key) <= MDB_ID_MAX;
}

static int marks_get(void *ud, const char *key, imc_mark_cb done,
                     void *done_ud) {
  imc_mariadb *db = ud;
  if (db == NULL || done == NULL || !key_ok(key))
    return IMC_ERR_INVALID_ARGUMENT;
  if (db->closing)
    return IMC_ERR_CLOSED;
  mdb_op *op = mdb_op_new(db, MDB_OP_MARK);
  if (op == NULL || (op->key = mdb_strdup(db, key)) == NULL) {
    if (op)
      mdb_op_free(db, op);
    return IMC_ERR_NOMEM;
  }
  op->cb.mark = done;
  op->cb_ud = done_ud;
  return mdb_submit(db, op);
}

static int marks_raise(void *ud, const char *key, uint64_t value,
                       imc_done_cb done, void *done_ud) {
  imc_mariadb *db = ud;
  if (db == NULL || done == NULL || !key_ok(key))
    return IMC_ERR_INVALID_ARGUMENT;
  if (db->closing)
    return IMC_ERR_CLOSED;
  mdb_op *op = mdb_op_new(db, MDB_OP_RAISE);
  if (op == NULL || (op->key = mdb_strdup(db, key)) == NULL) {
    if (op)
      mdb_op_free(db, op);
    return IMC_ERR_NOMEM;
  }
  op->num = value;
  op->est = 32 + mdb_sql_str_est(key);
  op->cb.done = done;
  op->cb_ud = done_ud;
  return mdb_submit(db, op);
}

static const imc_marks_vtbl marks_vtbl = {
    .struct_size = sizeof(imc_marks_vtbl),
    .get = marks_get,
    .raise = marks_raise,
};

const imc_marks_vtbl *imc_mariadb_marks_vtbl(void) {
  return &marks_vtbl;
}
