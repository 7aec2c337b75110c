/*
 * SQLite embedded backends: the store (history, offline inboxes, group
 * membership). Each call becomes an op (sqlite_batch.c) holding copies
 * of its arguments: immediate mode completes it before returning, group
 * commit after its batch commits. Results are copied out of SQLite
 * before the completion runs, because the completion may call back into
 * the store and reset the statement (and, with group commit, the
 * statement belongs to the storage thread).
 */
#include "backends/sqlite_int.h"

#include <string.h>

static int msg_valid(const imc_msg *m) {
  return m && m->msg_id && *m->msg_id && m->conversation_id &&
         *m->conversation_id && m->seq <= (uint64_t)INT64_MAX &&
         (m->body || m->body_len == 0);
}

static int insert_msg(imc_sqlite *db, const imc_msg *m) {
  sqlite3_stmt *st = imc_sq_get(db, SQ_MSG_INSERT);
  imc_sq_text(db, st, 1, m->msg_id);
  imc_sq_text(db, st, 2, m->conversation_id);
  imc_sq_int(db, st, 3, (int64_t)m->seq);
  imc_sq_text(db, st, 4, m->from_user);
  imc_sq_text(db, st, 5, m->to_user);
  imc_sq_text(db, st, 6, m->group_id);
  imc_sq_blob(db, st, 7, m->body, m->body_len);
  imc_sq_text(db, st, 8, m->content_type);
  imc_sq_int(db, st, 9, m->sent_at_ms);
  imc_sq_text(db, st, 10, m->client_msg_id);
  imc_sq_text(db, st, 11, m->from_device);
  return imc_sq_run(db, st, "append message");
}

static int insert_entry(imc_sqlite *db, const imc_inbox_entry *e) {
  sqlite3_stmt *st = imc_sq_get(db, SQ_INBOX_INSERT);
  imc_sq_text(db, st, 1, e->user_id);
  imc_sq_text(db, st, 2, e->msg->msg_id);
  return imc_sq_run(db, st, "append inbox entry");
}

static int append_all(imc_sqlite *db, const imc_msg *const *msgs, size_t n_msgs,
                      const imc_inbox_entry *entries, size_t n_entries) {
  int rv = 0;
  for (size_t i = 0; i < n_msgs && rv == 0; i++)
    rv = insert_msg(db, msgs[i]);
  /* An entry's message may be absent from msgs and from the store: insert
   * it too (a no-op when present). Consecutive entries of a group fan-out
   * share one message, which is inserted once. */
  const imc_msg *last = NULL;
  for (size_t i = 0; i < n_entries && rv == 0; i++) {
    const imc_msg *m = entries[i].msg;
    if (last == NULL || (m != last && strcmp(m->msg_id, last->msg_id) != 0))
      rv = insert_msg(db, m);
    last = m;
    if (rv == 0)
      rv = insert_entry(db, &entries[i]);
  }
  return rv;
}

/* A copy of m's stored members in one allocation. */
static imc_msg *msg_copy(imc_sqlite *db, const imc_msg *m) {
  const char *s[8] = {m->msg_id,        m->conversation_id, m->from_user,
                      m->to_user,       m->group_id,        m->content_type,
                      m->client_msg_id, m->from_device};
  size_t l[8], need = sizeof(imc_msg) + m->body_len + 1;
  for (int i = 0; i < 8; i++) {
    l[i] = s[i] ? strlen(s[i]) : 0;
    need += l[i] + 1;
  }
  imc_msg *c = imc_malloc(&db->mem, need);
  if (c == NULL)
    return NULL;
  *c = (imc_msg){.struct_size = sizeof(imc_msg),
                 .seq = m->seq,
                 .body_len = m->body_len,
                 .sent_at_ms = m->sent_at_ms,
                 .from_node = ""};
  char *p = (char *)(c + 1);
  const char **d[8] = {&c->msg_id,        &c->conversation_id, &c->from_user,
                       &c->to_user,       &c->group_id,        &c->content_type,
                       &c->client_msg_id, &c->from_device};
  for (int i = 0; i < 8; i++) {
    if (l[i])
      memcpy(p, s[i], l[i]);
    p[l[i]] = '\0';
    *d[i] = p;
    p += l[i] + 1;
  }
  if (m->body_len)
    memcpy(p, m->body, m->body_len);
  c->body = (const uint8_t *)p;
  return c;
}

typedef struct append_op {
  imc_sq_op base;
  imc_done_cb done;
  void *done_ud;
  imc_msg **msgs; /* n_msgs copies, then the entries' own copies */
  size_t n_msgs, n_copies;
  imc_inbox_entry *entries;
  size_t n_entries;
  char **users;
} append_op;

static int append_exec(imc_sqlite *db, imc_sq_op *o) {
  append_op *op = (append_op *)o;
  return append_all(db, (const imc_msg *const *)op->msgs, op->n_msgs,
                    op->entries, op->n_entries);
}

static int append_complete(imc_sqlite *db, imc_sq_op *o) {
  append_op *op = (append_op *)o;
  op->done(op->done_ud, op->base.status);
  return 1;
}

static void append_release(imc_sqlite *db, imc_sq_op *o) {
  append_op *op = (append_op *)o;
  for (size_t i = 0; op->msgs && i < op->n_copies; i++)
    imc_free(&db->mem, op->msgs[i]);
  for (size_t i = 0; op->users && i < op->n_entries; i++)
    imc_free(&db->mem, op->users[i]);
  imc_free(&db->mem, op->msgs);
  imc_free(&db->mem, op->users);
  imc_free(&db->mem, op->entries);
}

static const imc_sq_op_type append_type = {.write = 1,
                                           .exec = append_exec,
                                           .complete = append_complete,
                                           .release = append_release};

/* Copies the arguments: the messages, and each distinct message of the
 * entries (consecutive entries of a fan-out share one). */
static int append_fill(imc_sqlite *db, append_op *op,
                       const imc_msg *const *msgs, size_t n_msgs,
                       const imc_inbox_entry *entries, size_t n_entries) {
  size_t cap = n_msgs + n_entries;
  op->msgs = imc_calloc(&db->mem, cap ? cap : 1, sizeof(*op->msgs));
  op->entries =
      imc_calloc(&db->mem, n_entries ? n_entries : 1, sizeof(*op->entries));
  op->users = imc_calloc(&db->mem, n_entries ? n_entries : 1, sizeof(char *));
  if (op->msgs == NULL || op->entries == NULL || op->users == NULL)
    return IMC_ERR_NOMEM;
  for (size_t i = 0; i < n_msgs; i++) {
    if ((op->msgs[i] = msg_copy(db, msgs[i])) == NULL)
      return IMC_ERR_NOMEM;
    op->n_copies++;
  }
  op->n_msgs = n_msgs;
  const imc_msg *last = NULL;
  for (size_t i = 0; i < n_entries; i++) {
    const imc_msg *m = entries[i].msg;
    if (last == NULL || m != last) {
      if ((op->msgs[op->n_copies] = msg_copy(db, m)) == NULL)
        return IMC_ERR_NOMEM;
      op->n_copies++;
      last = m;
    }
    if ((op->users[i] = imc_strdup(&db->mem, entries[i].user_id)) == NULL)
      return IMC_ERR_NOMEM;
    op->n_entries = i + 1;
    op->entries[i].user_id = op->users[i];
    op->entries[i].msg = op->msgs[op->n_copies - 1];
  }
  return 0;
}

static int store_append(void *ud, const imc_msg *const *msgs, size_t n_msgs,
                        const imc_inbox_entry *entries, size_t n_entries,
                        imc_done_cb done, void *done_ud) {
  imc_sqlite *db = ud;
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if ((n_msgs && msgs == NULL) || (n_entries && entries == NULL) ||
      done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  for (size_t i = 0; i < n_msgs; i++)
    if (!msg_valid(msgs[i]))
      return IMC_ERR_INVALID_ARGUMENT;
  for (size_t i = 0; i < n_entries; i++)
    if (entries[i].user_id == NULL || *entries[i].user_id == '\0' ||
        !msg_valid(entries[i].msg))
      return IMC_ERR_INVALID_ARGUMENT;
  append_op *op = imc_calloc(&db->mem, 1, sizeof(*op));
  if (op == NULL)
    return IMC_ERR_NOMEM;
  op->base.type = &append_type;
  op->done = done;
  op->done_ud = done_ud;
  if ((rv = append_fill(db, op, msgs, n_msgs, entries, n_entries)) < 0) {
    imc_sq_op_free(db, &op->base);
    return rv;
  }
  return imc_sq_submit_op(db, &op->base);
}

/* ------------------------------------------------------------------ */
/* Fetching pages                                                       */
/* ------------------------------------------------------------------ */

/* Result columns after the cursor column, in MSG_COLS order (sqlite.c). */
enum {
  COL_MSG_ID = 1,
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

typedef struct text_col {
  const char *p;
  size_t n;
} text_col;

static const char *put(char **dst, const void *src, size_t n) {
  char *d = *dst;
  if (n)
    memcpy(d, src, n);
  d[n] = '\0';
  *dst += n + 1;
  return d;
}

/* The current row as one allocation: the imc_msg, then its bytes. */
static imc_msg *copy_row(imc_sqlite *db, sqlite3_stmt *st) {
  text_col c[N_COLS] = {{0}};
  size_t need = sizeof(imc_msg);
  for (int i = COL_MSG_ID; i < N_COLS; i++) {
    if (i == COL_SEQ || i == COL_SENT)
      continue;
    /* Pointer first, then length: the documented safe order. */
    c[i].p = i == COL_BODY ? sqlite3_column_blob(st, i)
                           : (const char *)sqlite3_column_text(st, i);
    c[i].n = c[i].p ? (size_t)sqlite3_column_bytes(st, i) : 0;
    need += c[i].n + 1;
  }
  imc_msg *m = imc_malloc(&db->mem, need);
  if (m == NULL)
    return NULL;
  char *p = (char *)(m + 1);
  m->msg_id = put(&p, c[COL_MSG_ID].p, c[COL_MSG_ID].n);
  m->conversation_id = put(&p, c[COL_CONV].p, c[COL_CONV].n);
  m->seq = (uint64_t)sqlite3_column_int64(st, COL_SEQ);
  m->from_user = put(&p, c[COL_FROM].p, c[COL_FROM].n);
  m->to_user = put(&p, c[COL_TO].p, c[COL_TO].n);
  m->group_id = put(&p, c[COL_GROUP].p, c[COL_GROUP].n);
  m->body = (const uint8_t *)put(&p, c[COL_BODY].p, c[COL_BODY].n);
  m->body_len = c[COL_BODY].n;
  m->content_type = put(&p, c[COL_CTYPE].p, c[COL_CTYPE].n);
  m->sent_at_ms = sqlite3_column_int64(st, COL_SENT);
  m->client_msg_id = put(&p, c[COL_CMID].p, c[COL_CMID].n);
  m->from_device = put(&p, c[COL_DEVICE].p, c[COL_DEVICE].n);
  m->struct_size = sizeof(*m);
  m->from_node = ""; /* routing metadata: not stored */
  m->from_conn_id = 0;
  return m;
}

typedef struct page {
  const imc_msg **msgs;
  uint64_t *cursors;
  size_t n, cap;
  int has_more;
} page;

static void page_free(imc_sqlite *db, page *pg) {
  for (size_t i = 0; i < pg->n; i++)
    imc_free(&db->mem, (void *)pg->msgs[i]);
  imc_free(&db->mem, pg->msgs);
  imc_free(&db->mem, pg->cursors);
}

static int page_grow(imc_sqlite *db, page *pg) {
  size_t cap = pg->cap ? pg->cap * 2 : 16;
  const imc_msg **msgs = imc_realloc(&db->mem, pg->msgs, cap * sizeof(*msgs));
  if (msgs == NULL)
    return IMC_ERR_NOMEM;
  pg->msgs = msgs;
  uint64_t *cursors =
      imc_realloc(&db->mem, pg->cursors, cap * sizeof(*cursors));
  if (cursors == NULL)
    return IMC_ERR_NOMEM;
  pg->cursors = cursors;
  pg->cap = cap;
  return 0;
}

/* Read up to limit rows into pg; one more row only sets has_more. */
static int page_read(imc_sqlite *db, sqlite3_stmt *st, uint32_t limit, page *pg,
                     const char *what) {
  int rc;
  while ((rc = imc_sq_step(db, st)) == SQLITE_ROW) {
    if (pg->n == limit) {
      pg->has_more = 1;
      return 0;
    }
    if (pg->n == pg->cap && page_grow(db, pg) < 0)
      return IMC_ERR_NOMEM;
    const imc_msg *m = copy_row(db, st);
    if (m == NULL)
      return IMC_ERR_NOMEM;
    pg->msgs[pg->n] = m;
    pg->cursors[pg->n++] = (uint64_t)sqlite3_column_int64(st, 0);
  }
  return rc == SQLITE_DONE ? 0 : imc_sq_fail(db, rc, what);
}

typedef struct fetch_op {
  imc_sq_op base;
  imc_sq_stmt which;
  uint64_t after;
  uint32_t limit;
  imc_fetch_cb done;
  void *done_ud;
  const char *what;
  page pg;
  char key[];
} fetch_op;

static int fetch_exec(imc_sqlite *db, imc_sq_op *o) {
  fetch_op *op = (fetch_op *)o;
  sqlite3_stmt *st = imc_sq_get(db, op->which);
  imc_sq_text(db, st, 1, op->key);
  /* Nothing lies above INT64_MAX: clamp instead of wrapping negative. */
  imc_sq_int(db, st, 2, op->after > INT64_MAX ? INT64_MAX : (int64_t)op->after);
  imc_sq_int(db, st, 3, (int64_t)op->limit + 1);
  int rv = page_read(db, st, op->limit, &op->pg, op->what);
  sqlite3_reset(st);
  return rv;
}

static int fetch_complete(imc_sqlite *db, imc_sq_op *o) {
  fetch_op *op = (fetch_op *)o;
  if (op->base.status < 0)
    op->done(op->done_ud, op->base.status, NULL, NULL, 0, 0);
  else
    op->done(op->done_ud, 0, op->pg.msgs, op->pg.cursors, op->pg.n,
             op->pg.has_more);
  return 1;
}

static void fetch_release(imc_sqlite *db, imc_sq_op *o) {
  page_free(db, &((fetch_op *)o)->pg);
}

static const imc_sq_op_type fetch_type = {.write = 0,
                                          .exec = fetch_exec,
                                          .complete = fetch_complete,
                                          .release = fetch_release};

static int fetch(imc_sqlite *db, imc_sq_stmt which, const char *key,
                 uint64_t after, uint32_t limit, imc_fetch_cb done,
                 void *done_ud, const char *what) {
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if (key == NULL || *key == '\0' || limit == 0 || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  size_t kl = strlen(key) + 1;
  fetch_op *op = imc_calloc(&db->mem, 1, sizeof(*op) + kl);
  if (op == NULL)
    return IMC_ERR_NOMEM;
  op->base.type = &fetch_type;
  op->which = which;
  op->after = after;
  op->limit = limit;
  op->done = done;
  op->done_ud = done_ud;
  op->what = what;
  memcpy(op->key, key, kl);
  return imc_sq_submit_op(db, &op->base);
}

static int store_fetch_inbox(void *ud, const char *user_id, uint64_t after,
                             uint32_t limit, imc_fetch_cb done, void *done_ud) {
  return fetch(ud, SQ_INBOX_FETCH, user_id, after, limit, done, done_ud,
               "fetch inbox");
}

static int store_fetch_history(void *ud, const char *conversation_id,
                               uint64_t after_seq, uint32_t limit,
                               imc_fetch_cb done, void *done_ud) {
  return fetch(ud, SQ_HISTORY_FETCH, conversation_id, after_seq, limit, done,
               done_ud, "fetch history");
}

/* ------------------------------------------------------------------ */
/* Retention                                                            */
/* ------------------------------------------------------------------ */

typedef struct purge_op {
  imc_sq_op base;
  int64_t before_ms;
  int64_t now;
  imc_done_cb done;
  void *done_ud;
} purge_op;

static int purge_exec(imc_sqlite *db, imc_sq_op *o) {
  purge_op *op = (purge_op *)o;
  sqlite3_stmt *st = imc_sq_get(db, SQ_PURGE_INBOX);
  imc_sq_int(db, st, 1, op->before_ms);
  int rv = imc_sq_run(db, st, "purge inbox");
  if (rv == 0) {
    st = imc_sq_get(db, SQ_PURGE_MSGS);
    imc_sq_int(db, st, 1, op->before_ms);
    rv = imc_sq_run(db, st, "purge messages");
  }
  /* The dedup set shares the file; its expired rows go at the same
   * time so the host needs one retention timer, not two. */
  if (rv == 0) {
    st = imc_sq_get(db, SQ_DEDUP_PRUNE);
    imc_sq_int(db, st, 1, op->now);
    rv = imc_sq_run(db, st, "purge dedup");
  }
  return rv;
}

static int purge_complete(imc_sqlite *db, imc_sq_op *o) {
  purge_op *op = (purge_op *)o;
  op->done(op->done_ud, op->base.status);
  return 1;
}

static const imc_sq_op_type purge_type = {
    .write = 1, .exec = purge_exec, .complete = purge_complete};

static int store_purge(void *ud, int64_t before_ms, imc_done_cb done,
                       void *done_ud) {
  imc_sqlite *db = ud;
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if (done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  purge_op *op = imc_calloc(&db->mem, 1, sizeof(*op));
  if (op == NULL)
    return IMC_ERR_NOMEM;
  op->base.type = &purge_type;
  op->before_ms = before_ms;
  op->now = imc_clock_wall(&db->clock);
  op->done = done;
  op->done_ud = done_ud;
  return imc_sq_submit_op(db, &op->base);
}

/* ------------------------------------------------------------------ */
/* Group membership                                                     */
/* ------------------------------------------------------------------ */

typedef struct group_op {
  imc_sq_op base;
  imc_done_cb done;
  void *done_ud;
  imc_sq_stmt which;
  const char *user;
  char group[];
} group_op;

static int group_exec(imc_sqlite *db, imc_sq_op *o) {
  group_op *op = (group_op *)o;
  sqlite3_stmt *st = imc_sq_get(db, op->which);
  imc_sq_text(db, st, 1, op->group);
  imc_sq_text(db, st, 2, op->user);
  return imc_sq_run(db, st, "change group");
}

static int group_complete(imc_sqlite *db, imc_sq_op *o) {
  group_op *op = (group_op *)o;
  op->done(op->done_ud, op->base.status);
  return 1;
}

static const imc_sq_op_type group_type = {
    .write = 1, .exec = group_exec, .complete = group_complete};

static int group_change(void *ud, imc_sq_stmt which, const char *group_id,
                        const char *user_id, imc_done_cb done, void *done_ud) {
  imc_sqlite *db = ud;
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if (group_id == NULL || *group_id == '\0' || user_id == NULL ||
      *user_id == '\0' || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  size_t gl = strlen(group_id) + 1, ul = strlen(user_id) + 1;
  group_op *op = imc_calloc(&db->mem, 1, sizeof(*op) + gl + ul);
  if (op == NULL)
    return IMC_ERR_NOMEM;
  op->base.type = &group_type;
  op->which = which;
  op->done = done;
  op->done_ud = done_ud;
  memcpy(op->group, group_id, gl);
  memcpy(op->group + gl, user_id, ul);
  op->user = op->group + gl;
  return imc_sq_submit_op(db, &op->base);
}

static int store_group_add(void *ud, const char *group_id, const char *user_id,
                           imc_done_cb done, void *done_ud) {
  return group_change(ud, SQ_GROUP_ADD, group_id, user_id, done, done_ud);
}

static int store_group_remove(void *ud, const char *group_id,
                              const char *user_id, imc_done_cb done,
                              void *done_ud) {
  return group_change(ud, SQ_GROUP_REMOVE, group_id, user_id, done, done_ud);
}

typedef struct strlist {
  char **items;
  size_t n, cap;
} strlist;

static void strlist_free(imc_sqlite *db, strlist *l) {
  for (size_t i = 0; i < l->n; i++)
    imc_free(&db->mem, l->items[i]);
  imc_free(&db->mem, l->items);
}

static int strlist_read(imc_sqlite *db, sqlite3_stmt *st, strlist *l) {
  int rc;
  while ((rc = imc_sq_step(db, st)) == SQLITE_ROW) {
    if (l->n == l->cap) {
      size_t cap = l->cap ? l->cap * 2 : 16;
      char **items = imc_realloc(&db->mem, l->items, cap * sizeof(*items));
      if (items == NULL)
        return IMC_ERR_NOMEM;
      l->items = items;
      l->cap = cap;
    }
    const char *s = (const char *)sqlite3_column_text(st, 0);
    size_t len = s ? (size_t)sqlite3_column_bytes(st, 0) : 0;
    char *copy = imc_strndup(&db->mem, s ? s : "", len);
    if (copy == NULL)
      return IMC_ERR_NOMEM;
    l->items[l->n++] = copy;
  }
  return rc == SQLITE_DONE ? 0 : imc_sq_fail(db, rc, "list group");
}

typedef struct members_op {
  imc_sq_op base;
  imc_list_cb done;
  void *done_ud;
  strlist l;
  char group[];
} members_op;

static int members_exec(imc_sqlite *db, imc_sq_op *o) {
  members_op *op = (members_op *)o;
  sqlite3_stmt *st = imc_sq_get(db, SQ_GROUP_LIST);
  imc_sq_text(db, st, 1, op->group);
  int rv = strlist_read(db, st, &op->l);
  sqlite3_reset(st);
  return rv;
}

static int members_complete(imc_sqlite *db, imc_sq_op *o) {
  members_op *op = (members_op *)o;
  if (op->base.status < 0)
    op->done(op->done_ud, op->base.status, NULL, 0);
  else
    op->done(op->done_ud, 0, (const char *const *)op->l.items, op->l.n);
  return 1;
}

static void members_release(imc_sqlite *db, imc_sq_op *o) {
  strlist_free(db, &((members_op *)o)->l);
}

static const imc_sq_op_type members_type = {.write = 0,
                                            .exec = members_exec,
                                            .complete = members_complete,
                                            .release = members_release};

static int store_group_members(void *ud, const char *group_id, imc_list_cb done,
                               void *done_ud) {
  imc_sqlite *db = ud;
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if (group_id == NULL || *group_id == '\0' || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  size_t gl = strlen(group_id) + 1;
  members_op *op = imc_calloc(&db->mem, 1, sizeof(*op) + gl);
  if (op == NULL)
    return IMC_ERR_NOMEM;
  op->base.type = &members_type;
  op->done = done;
  op->done_ud = done_ud;
  memcpy(op->group, group_id, gl);
  return imc_sq_submit_op(db, &op->base);
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

const imc_store_vtbl *imc_sqlite_store_vtbl(void) {
  return &store_vtbl;
}
