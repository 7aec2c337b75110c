/*
 * The client store in SQLite: the outbox, the inbox dedup set, the last
 * seq of each conversation and small values (offline cursor, user id).
 *
 * WAL with synchronous=NORMAL: a row written before a call returns
 * survives a crash of the process (the outbox's promise), though not
 * necessarily a power loss.
 */
#include "client/client_int.h"

#include <string.h>

/* Seen msg_ids older than this are pruned at open: the server keeps
 * messages 7 days, so none older can come back. */
#define SEEN_KEEP_MS (8LL * 86400 * 1000)

static const char schema_sql[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=NORMAL;"
    "CREATE TABLE IF NOT EXISTS outbox("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " client_msg_id TEXT NOT NULL UNIQUE, to_user TEXT NOT NULL,"
    " group_id TEXT NOT NULL, body BLOB NOT NULL,"
    " content_type TEXT NOT NULL, created_ms INTEGER NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0, msg_id TEXT NOT NULL DEFAULT '');"
    "CREATE TABLE IF NOT EXISTS seen("
    " msg_id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL,"
    " seq INTEGER NOT NULL, at_ms INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS seen_at ON seen(at_ms);"
    "CREATE TABLE IF NOT EXISTS convs("
    " conversation_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL)"
    " WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS kv("
    " key TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID;";

static const char *const stmt_sql[CS_COUNT] = {
    [CS_OB_INSERT] = "INSERT INTO outbox(client_msg_id, to_user, group_id,"
                     " body, content_type, created_ms)"
                     " VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
    [CS_OB_DELETE] = "DELETE FROM outbox WHERE id = ?1",
    [CS_OB_BODY] = "SELECT client_msg_id, to_user, group_id, body,"
                   " content_type FROM outbox WHERE id = ?1",
    [CS_OB_ATTEMPT] = "UPDATE outbox SET attempts = attempts + 1"
                      " WHERE id = ?1",
    [CS_OB_ACKED] = "UPDATE outbox SET msg_id = ?2 WHERE id = ?1",
    [CS_OB_LIST] = "SELECT id, client_msg_id, attempts, msg_id FROM outbox"
                   " ORDER BY id",
    [CS_SEEN_GET] = "SELECT 1 FROM seen WHERE msg_id = ?1",
    [CS_SEEN_PUT] = "INSERT OR IGNORE INTO seen(msg_id, conversation_id, seq,"
                    " at_ms) VALUES(?1, ?2, ?3, ?4)",
    [CS_CONV_GET] = "SELECT last_seq FROM convs WHERE conversation_id = ?1",
    [CS_CONV_PUT] = "INSERT INTO convs(conversation_id, last_seq)"
                    " VALUES(?1, ?2) ON CONFLICT(conversation_id)"
                    " DO UPDATE SET last_seq = max(last_seq, ?2)",
    [CS_KV_GET] = "SELECT value FROM kv WHERE key = ?1",
    [CS_KV_PUT] = "INSERT OR REPLACE INTO kv(key, value) VALUES(?1, ?2)",
};

int cl_store_err(imc_client *c, int rc, const char *what) {
  cl_log(c, IMC_LOG_ERROR, "store: %s: %s", what,
         c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
  switch (rc & 0xff) {
  case SQLITE_NOMEM:
    return IMC_ERR_NOMEM;
  case SQLITE_BUSY:
  case SQLITE_LOCKED:
    return IMC_ERR_UNAVAILABLE;
  default:
    return IMC_ERR_IO;
  }
}

sqlite3_stmt *cl_st(imc_client *c, enum cl_stmt which) {
  sqlite3_stmt *st = c->st[which];
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return st;
}

int cl_exec(imc_client *c, const char *sql) {
  int rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);
  return rc == SQLITE_OK ? 0 : cl_store_err(c, rc, sql);
}

int cl_store_open(imc_client *c) {
  int rc = sqlite3_open_v2(
      c->o.store_path, &c->db,
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc != SQLITE_OK)
    return cl_store_err(c, rc, "open");
  sqlite3_busy_timeout(c->db, 2000);
  rc = sqlite3_exec(c->db, schema_sql, NULL, NULL, NULL);
  if (rc != SQLITE_OK)
    return cl_store_err(c, rc, "schema");
  for (int i = 0; i < CS_COUNT; i++) {
    rc = sqlite3_prepare_v3(c->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                            &c->st[i], NULL);
    if (rc != SQLITE_OK)
      return cl_store_err(c, rc, "prepare");
  }
  sqlite3_stmt *st;
  rc = sqlite3_prepare_v2(c->db, "DELETE FROM seen WHERE at_ms < ?1", -1, &st,
                          NULL);
  if (rc != SQLITE_OK)
    return cl_store_err(c, rc, "prepare");
  sqlite3_bind_int64(st, 1, imc_clock_wall(&c->o.clock) - SEEN_KEEP_MS);
  rc = sqlite3_step(st);
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE)
    return cl_store_err(c, rc, "prune");
  return 0;
}

void cl_store_close(imc_client *c) {
  for (int i = 0; i < CS_COUNT; i++)
    sqlite3_finalize(c->st[i]);
  sqlite3_close(c->db);
  c->db = NULL;
}

int cl_kv_get_u64(imc_client *c, const char *key, uint64_t *out) {
  sqlite3_stmt *st = cl_st(c, CS_KV_GET);
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW)
    *out = (uint64_t)sqlite3_column_int64(st, 0);
  sqlite3_reset(st);
  return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0
                                               : cl_store_err(c, rc, "kv get");
}

int cl_kv_put_u64(imc_client *c, const char *key, uint64_t v) {
  sqlite3_stmt *st = cl_st(c, CS_KV_PUT);
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, (int64_t)v);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : cl_store_err(c, rc, "kv put");
}

int cl_kv_get_str(imc_client *c, const char *key, char *out, size_t cap) {
  sqlite3_stmt *st = cl_st(c, CS_KV_GET);
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    const unsigned char *v = sqlite3_column_text(st, 0);
    size_t n = (size_t)sqlite3_column_bytes(st, 0);
    if (v && n < cap) {
      memcpy(out, v, n);
      out[n] = '\0';
    }
  }
  sqlite3_reset(st);
  return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0
                                               : cl_store_err(c, rc, "kv get");
}

int cl_kv_put_str(imc_client *c, const char *key, const char *v) {
  sqlite3_stmt *st = cl_st(c, CS_KV_PUT);
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, v, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : cl_store_err(c, rc, "kv put");
}

static int seen(imc_client *c, const char *msg_id, int *found) {
  sqlite3_stmt *st = cl_st(c, CS_SEEN_GET);
  sqlite3_bind_text(st, 1, msg_id, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  *found = rc == SQLITE_ROW;
  sqlite3_reset(st);
  return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0
                                               : cl_store_err(c, rc, "seen");
}

static int last_seq(imc_client *c, const char *conv, uint64_t *out) {
  sqlite3_stmt *st = cl_st(c, CS_CONV_GET);
  sqlite3_bind_text(st, 1, conv, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  *out = rc == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 0) : 0;
  sqlite3_reset(st);
  return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0
                                               : cl_store_err(c, rc, "convs");
}

int cl_inbox_mark(imc_client *c, const char *msg_id, const char *conv,
                  uint64_t seq) {
  sqlite3_stmt *st = cl_st(c, CS_SEEN_PUT);
  sqlite3_bind_text(st, 1, msg_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, conv, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, (int64_t)seq);
  sqlite3_bind_int64(st, 4, imc_clock_wall(&c->o.clock));
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE)
    return cl_store_err(c, rc, "seen put");
  st = cl_st(c, CS_CONV_PUT);
  sqlite3_bind_text(st, 1, conv, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, (int64_t)seq);
  rc = sqlite3_step(st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : cl_store_err(c, rc, "convs put");
}

/*
 * Surfaced first, recorded after: a crash in between surfaces the message
 * once more on the next delivery (at least once), never loses it.
 */
int cl_inbox_take(imc_client *c, const imc_msg *msg, uint32_t flags) {
  int found, rv;
  uint64_t last;
  if (msg->msg_id == NULL || msg->msg_id[0] == '\0' ||
      msg->conversation_id == NULL)
    return IMC_ERR_PROTO;
  if ((rv = seen(c, msg->msg_id, &found)) != 0)
    return rv;
  if (found)
    return 0;
  if ((rv = last_seq(c, msg->conversation_id, &last)) != 0)
    return rv;
  if (msg->seq > last + 1)
    flags |= IMC_CLIENT_MSG_GAP;
  if (c->o.cb.message)
    c->o.cb.message(c->o.cb_ud, msg, flags, last);
  if ((rv = cl_inbox_mark(c, msg->msg_id, msg->conversation_id, msg->seq)) != 0)
    return rv;
  return 1;
}
