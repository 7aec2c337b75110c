/*
 * SQLite embedded backends: the store (history, offline inboxes, group
 * membership). Every operation completes before returning. Results are
 * copied out of SQLite before the completion runs, because the
 * completion may call back into the store and reset the statement.
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

  if ((rv = imc_sq_begin(db)) < 0)
    return rv;
  rv = append_all(db, msgs, n_msgs, entries, n_entries);
  if (rv == 0)
    rv = imc_sq_commit(db);
  else
    imc_sq_rollback(db);
  if (rv < 0)
    return rv;
  done(done_ud, 0);
  return 0;
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

static int fetch(imc_sqlite *db, imc_sq_stmt which, const char *key,
                 uint64_t after, uint32_t limit, imc_fetch_cb done,
                 void *done_ud, const char *what) {
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if (key == NULL || *key == '\0' || limit == 0 || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  sqlite3_stmt *st = imc_sq_get(db, which);
  imc_sq_text(db, st, 1, key);
  /* Nothing lies above INT64_MAX: clamp instead of wrapping negative. */
  imc_sq_int(db, st, 2, after > INT64_MAX ? INT64_MAX : (int64_t)after);
  imc_sq_int(db, st, 3, (int64_t)limit + 1);
  page pg = {0};
  rv = page_read(db, st, limit, &pg, what);
  sqlite3_reset(st);
  if (rv == 0)
    done(done_ud, 0, pg.msgs, pg.cursors, pg.n, pg.has_more);
  page_free(db, &pg);
  return rv;
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

static int purge_all(imc_sqlite *db, int64_t before_ms) {
  sqlite3_stmt *st = imc_sq_get(db, SQ_PURGE_INBOX);
  imc_sq_int(db, st, 1, before_ms);
  int rv = imc_sq_run(db, st, "purge inbox");
  if (rv == 0) {
    st = imc_sq_get(db, SQ_PURGE_MSGS);
    imc_sq_int(db, st, 1, before_ms);
    rv = imc_sq_run(db, st, "purge messages");
  }
  /* The dedup set shares the file; its expired rows go at the same
   * time so the host needs one retention timer, not two. */
  if (rv == 0) {
    st = imc_sq_get(db, SQ_DEDUP_PRUNE);
    imc_sq_int(db, st, 1, imc_clock_wall(&db->clock));
    rv = imc_sq_run(db, st, "purge dedup");
  }
  return rv;
}

static int store_purge(void *ud, int64_t before_ms, imc_done_cb done,
                       void *done_ud) {
  imc_sqlite *db = ud;
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if (done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if ((rv = imc_sq_begin(db)) < 0)
    return rv;
  rv = purge_all(db, before_ms);
  if (rv == 0)
    rv = imc_sq_commit(db);
  else
    imc_sq_rollback(db);
  if (rv < 0)
    return rv;
  done(done_ud, 0);
  return 0;
}

/* ------------------------------------------------------------------ */
/* Group membership                                                     */
/* ------------------------------------------------------------------ */

static int group_change(void *ud, imc_sq_stmt which, const char *group_id,
                        const char *user_id, imc_done_cb done, void *done_ud) {
  imc_sqlite *db = ud;
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if (group_id == NULL || *group_id == '\0' || user_id == NULL ||
      *user_id == '\0' || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  sqlite3_stmt *st = imc_sq_get(db, which);
  imc_sq_text(db, st, 1, group_id);
  imc_sq_text(db, st, 2, user_id);
  if ((rv = imc_sq_run(db, st, "change group")) < 0)
    return rv;
  done(done_ud, 0);
  return 0;
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

static int store_group_members(void *ud, const char *group_id, imc_list_cb done,
                               void *done_ud) {
  imc_sqlite *db = ud;
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if (group_id == NULL || *group_id == '\0' || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  sqlite3_stmt *st = imc_sq_get(db, SQ_GROUP_LIST);
  imc_sq_text(db, st, 1, group_id);
  strlist l = {0};
  rv = strlist_read(db, st, &l);
  sqlite3_reset(st);
  if (rv == 0)
    done(done_ud, 0, (const char *const *)l.items, l.n);
  strlist_free(db, &l);
  return rv;
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
