/*
 * The store vtable on MariaDB: each call checks its arguments, copies
 * them into an op and queues it (see batch.c, purge.c and reads.c for
 * what runs). A message is read up to its struct_size: members it does
 * not have are "" or 0.
 */
#include "mariadb/mariadb_int.h"

#include <string.h>

#define MSTR(m, f) (IMC_HAS_MEMBER(m, imc_msg, f) && (m)->f ? (m)->f : "")
#define MNUM(m, f) (IMC_HAS_MEMBER(m, imc_msg, f) ? (m)->f : 0)

/* TEXT columns hold 65535 bytes. */
#define MDB_TEXT_MAX 65535

static int id_ok(const char *s) {
  if (s == NULL || *s == '\0')
    return 0;
  return strlen(s) <= MDB_ID_MAX;
}

static int msg_valid(const imc_msg *m) {
  if (m == NULL || !id_ok(MSTR(m, msg_id)) || !id_ok(MSTR(m, conversation_id)))
    return 0;
  const char *ids[4] = {MSTR(m, from_user), MSTR(m, to_user), MSTR(m, group_id),
                        MSTR(m, from_device)};
  for (int i = 0; i < 4; i++)
    if (strlen(ids[i]) > MDB_ID_MAX)
      return 0;
  if (strlen(MSTR(m, content_type)) > MDB_TEXT_MAX ||
      strlen(MSTR(m, client_msg_id)) > MDB_TEXT_MAX)
    return 0;
  size_t blen = MNUM(m, body_len);
  if (blen > MDB_BODY_MAX)
    return 0;
  return blen == 0 || (IMC_HAS_MEMBER(m, imc_msg, body) && m->body != NULL);
}

/* A normalised copy of m in one allocation; its SQL size into *est. */
static imc_msg *msg_copy(imc_mariadb *db, const imc_msg *m, size_t *est) {
  const char *s[8] = {MSTR(m, msg_id),        MSTR(m, conversation_id),
                      MSTR(m, from_user),     MSTR(m, to_user),
                      MSTR(m, group_id),      MSTR(m, content_type),
                      MSTR(m, client_msg_id), MSTR(m, from_device)};
  size_t blen = MNUM(m, body_len);
  size_t l[8], need = sizeof(imc_msg) + blen + 1;
  *est += 64 + 2 * blen + 3; /* punctuation, two numbers, the hex body */
  for (int i = 0; i < 8; i++) {
    l[i] = strlen(s[i]);
    need += l[i] + 1;
    *est += mdb_sql_str_est(s[i]);
  }
  imc_msg *c = mdb_malloc(db, need);
  if (c == NULL)
    return NULL;
  *c = (imc_msg){.struct_size = sizeof(imc_msg),
                 .seq = MNUM(m, seq),
                 .body_len = blen,
                 .sent_at_ms = MNUM(m, sent_at_ms),
                 .from_node = ""};
  char *p = (char *)(c + 1);
  const char **d[8] = {&c->msg_id,        &c->conversation_id, &c->from_user,
                       &c->to_user,       &c->group_id,        &c->content_type,
                       &c->client_msg_id, &c->from_device};
  for (int i = 0; i < 8; i++) {
    memcpy(p, s[i], l[i] + 1);
    *d[i] = p;
    p += l[i] + 1;
  }
  if (blen)
    memcpy(p, m->body, blen);
  c->body = (const uint8_t *)p;
  return c;
}

static int db_usable(const imc_mariadb *db) {
  if (db == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  return db->closing ? IMC_ERR_CLOSED : 0;
}

/* Copies the messages, then each entry's message that is not one of
 * them (entries of one fan-out share a message: copied once). */
static int append_fill(imc_mariadb *db, mdb_op *op, const imc_msg *const *msgs,
                       size_t n_msgs, const imc_inbox_entry *entries,
                       size_t n_entries) {
  op->msgs = mdb_calloc(db, n_msgs + n_entries, sizeof(*op->msgs));
  op->entries = mdb_calloc(db, n_entries, sizeof(*op->entries));
  if (op->msgs == NULL || op->entries == NULL)
    return IMC_ERR_NOMEM;
  size_t est = 0;
  for (size_t i = 0; i < n_msgs; i++) {
    if ((op->msgs[i] = msg_copy(db, msgs[i], &est)) == NULL)
      return IMC_ERR_NOMEM;
    op->n_copies++;
  }
  for (size_t i = 0; i < n_entries; i++) {
    const imc_msg *m = entries[i].msg;
    size_t idx = op->n_copies;
    if (i > 0 && m == entries[i - 1].msg)
      idx = op->entries[i - 1].msg;
    for (size_t j = 0; idx == op->n_copies && j < n_msgs; j++)
      if (msgs[j] == m)
        idx = j;
    if (idx == op->n_copies) {
      if ((op->msgs[idx] = msg_copy(db, m, &est)) == NULL)
        return IMC_ERR_NOMEM;
      op->n_copies++;
    }
    if ((op->entries[i].user = mdb_strdup(db, entries[i].user_id)) == NULL)
      return IMC_ERR_NOMEM;
    op->entries[i].msg = idx;
    op->n_entries = i + 1;
    est += 8 + mdb_sql_str_est(entries[i].user_id) +
           mdb_sql_str_est(op->msgs[idx]->msg_id);
  }
  op->est = est;
  return 0;
}

static int store_append(void *ud, const imc_msg *const *msgs, size_t n_msgs,
                        const imc_inbox_entry *entries, size_t n_entries,
                        imc_done_cb done, void *done_ud) {
  imc_mariadb *db = ud;
  int rv = db_usable(db);
  if (rv < 0)
    return rv;
  if ((n_msgs && msgs == NULL) || (n_entries && entries == NULL) ||
      done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  for (size_t i = 0; i < n_msgs; i++)
    if (!msg_valid(msgs[i]))
      return IMC_ERR_INVALID_ARGUMENT;
  for (size_t i = 0; i < n_entries; i++)
    if (!id_ok(entries[i].user_id) || !msg_valid(entries[i].msg))
      return IMC_ERR_INVALID_ARGUMENT;
  mdb_op *op = mdb_op_new(db, MDB_OP_APPEND);
  if (op == NULL)
    return IMC_ERR_NOMEM;
  op->cb.done = done;
  op->cb_ud = done_ud;
  rv = append_fill(db, op, msgs, n_msgs, entries, n_entries);
  if (rv == 0 && op->est > db->o.batch_bytes - MDB_BATCH_HEAD)
    rv = IMC_ERR_TOO_LARGE;
  if (rv < 0) {
    mdb_op_free(db, op);
    return rv;
  }
  return mdb_submit(db, op);
}

/* An op of kind on key (and key2) with the completion cb. */
static int keyed(imc_mariadb *db, mdb_op_kind kind, const char *key,
                 const char *key2, mdb_op **out) {
  int rv = db_usable(db);
  if (rv < 0)
    return rv;
  if (!id_ok(key) || (key2 != NULL && !id_ok(key2)))
    return IMC_ERR_INVALID_ARGUMENT;
  mdb_op *op = mdb_op_new(db, kind);
  if (op == NULL)
    return IMC_ERR_NOMEM;
  op->key = mdb_strdup(db, key);
  op->key2 = key2 ? mdb_strdup(db, key2) : NULL;
  if (op->key == NULL || (key2 && op->key2 == NULL)) {
    mdb_op_free(db, op);
    return IMC_ERR_NOMEM;
  }
  op->est = 16 + mdb_sql_str_est(key) + mdb_sql_str_est(key2);
  *out = op;
  return 0;
}

static int fetch(void *ud, mdb_op_kind kind, const char *key, uint64_t after,
                 uint32_t limit, imc_fetch_cb done, void *done_ud) {
  if (limit == 0 || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  mdb_op *op;
  int rv = keyed(ud, kind, key, NULL, &op);
  if (rv < 0)
    return rv;
  op->num = after;
  op->limit = limit;
  op->cb.fetch = done;
  op->cb_ud = done_ud;
  return mdb_submit(ud, op);
}

static int store_fetch_inbox(void *ud, const char *user_id, uint64_t after,
                             uint32_t limit, imc_fetch_cb done, void *done_ud) {
  return fetch(ud, MDB_OP_INBOX, user_id, after, limit, done, done_ud);
}

static int store_fetch_history(void *ud, const char *conversation_id,
                               uint64_t after_seq, uint32_t limit,
                               imc_fetch_cb done, void *done_ud) {
  return fetch(ud, MDB_OP_HISTORY, conversation_id, after_seq, limit, done,
               done_ud);
}

static int store_purge(void *ud, int64_t before_ms, imc_done_cb done,
                       void *done_ud) {
  imc_mariadb *db = ud;
  int rv = db_usable(db);
  if (rv < 0)
    return rv;
  if (done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  mdb_op *op = mdb_op_new(db, MDB_OP_PURGE);
  if (op == NULL)
    return IMC_ERR_NOMEM;
  op->before_ms = before_ms;
  op->cb.done = done;
  op->cb_ud = done_ud;
  return mdb_submit(db, op);
}

static int group_change(void *ud, mdb_op_kind kind, const char *group_id,
                        const char *user_id, imc_done_cb done, void *done_ud) {
  if (done == NULL || user_id == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  mdb_op *op;
  int rv = keyed(ud, kind, group_id, user_id, &op);
  if (rv < 0)
    return rv;
  op->cb.done = done;
  op->cb_ud = done_ud;
  return mdb_submit(ud, op);
}

static int store_group_add(void *ud, const char *group_id, const char *user_id,
                           imc_done_cb done, void *done_ud) {
  return group_change(ud, MDB_OP_GROUP_ADD, group_id, user_id, done, done_ud);
}

static int store_group_remove(void *ud, const char *group_id,
                              const char *user_id, imc_done_cb done,
                              void *done_ud) {
  return group_change(ud, MDB_OP_GROUP_REMOVE, group_id, user_id, done,
                      done_ud);
}

static int store_group_members(void *ud, const char *group_id, imc_list_cb done,
                               void *done_ud) {
  if (done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  mdb_op *op;
  int rv = keyed(ud, MDB_OP_MEMBERS, group_id, NULL, &op);
  if (rv < 0)
    return rv;
  op->cb.list = done;
  op->cb_ud = done_ud;
  return mdb_submit(ud, op);
}

static const imc_store_vtbl store_vtbl = {
    .struct_size = sizeof(imc_store_vtbl),
    .append = store_append,
    .fetch_inbox = store_fetch_inbox,
    .fetch_history = store_fetch_history,
    .purge = store_purge,
    .group_add = store_group_add,
    .group_remove = store_group_remove,
    .group_members = store_group_members,
};

const imc_store_vtbl *imc_mariadb_store_vtbl(void) {
  return &store_vtbl;
}
