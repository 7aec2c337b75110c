/*
 * SQLite embedded backends: opening the database, its schema, the
 * prepared statements and the helpers the vtables share.
 *
 * One imc_sqlite owns one connection. In immediate mode everything it
 * does runs on the caller's thread, inside the call, except the
 * completion of bus polls, which imc_sqlite_dispatch() makes (see
 * sqlite_queue.c). With group commit, statements run only inside
 * imc_sqlite_run_batch() (see sqlite_batch.c).
 */
#include "backends/sqlite_int.h"

#include <stdio.h>
#include <string.h>

#define SCHEMA_VERSION 1

/*
 * The schema. Offsets, cursors and seqs are SQLite's signed 64-bit
 * integers; the vtables' uint64 values stay below 2^63 in practice and
 * are refused above it. AUTOINCREMENT keeps inbox cursors and queue
 * offsets from being reused after the newest rows are deleted, which
 * committed offsets and client cursors rely on.
 */
static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS seq("
    " key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS dedup("
    " key TEXT PRIMARY KEY, value BLOB NOT NULL,"
    " expires_at INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS dedup_expiry ON dedup(expires_at);"
    "CREATE TABLE IF NOT EXISTS messages("
    " msg_id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL,"
    " seq INTEGER NOT NULL, from_user TEXT NOT NULL, to_user TEXT NOT NULL,"
    " group_id TEXT NOT NULL, body BLOB NOT NULL, content_type TEXT NOT NULL,"
    " sent_at_ms INTEGER NOT NULL, client_msg_id TEXT NOT NULL,"
    " from_device TEXT NOT NULL, UNIQUE(conversation_id, seq));"
    "CREATE INDEX IF NOT EXISTS messages_sent ON messages(sent_at_ms);"
    /* Entries reference the message row: a group message is stored once
     * however many members are offline. */
    "CREATE TABLE IF NOT EXISTS inbox("
    " cursor INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL,"
    " msg_id TEXT NOT NULL, UNIQUE(user_id, msg_id));"
    "CREATE INDEX IF NOT EXISTS inbox_user ON inbox(user_id, cursor);"
    "CREATE INDEX IF NOT EXISTS inbox_msg ON inbox(msg_id);"
    "CREATE TABLE IF NOT EXISTS group_members("
    " group_id TEXT NOT NULL, user_id TEXT NOT NULL,"
    " PRIMARY KEY(group_id, user_id)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS queue("
    " off INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
    " key BLOB NOT NULL, value BLOB NOT NULL);"
    "CREATE INDEX IF NOT EXISTS queue_topic ON queue(topic, off);"
    "CREATE TABLE IF NOT EXISTS queue_groups("
    " topic TEXT NOT NULL, grp TEXT NOT NULL, committed INTEGER NOT NULL,"
    " PRIMARY KEY(topic, grp)) WITHOUT ROWID;"
    "PRAGMA user_version = 1;";

#define MSG_COLS                                                               \
  "m.msg_id, m.conversation_id, m.seq, m.from_user, m.to_user, m.group_id, "   \
  "m.body, m.content_type, m.sent_at_ms, m.client_msg_id, m.from_device"

static const char *const stmt_sql[SQ_COUNT] = {
    [SQ_BEGIN] = "BEGIN IMMEDIATE",
    [SQ_COMMIT] = "COMMIT",
    [SQ_ROLLBACK] = "ROLLBACK",
    /* Each op of a batch runs in a savepoint: a failing op undoes only
     * its own statements. */
    [SQ_SAVEPOINT] = "SAVEPOINT op",
    [SQ_RELEASE] = "RELEASE op",
    [SQ_ROLLBACK_TO] = "ROLLBACK TO op",
    /* seq.value is the high-water mark: every value up to it may have
     * been handed out. A reservation raises it by a block; the values
     * of the block are handed out from memory once it is committed. */
    [SQ_SEQ_RESERVE] = "INSERT INTO seq(key, value) VALUES(?1, ?2)"
                       " ON CONFLICT(key) DO UPDATE SET value = value + ?2"
                       " RETURNING value",
    /* At a clean close: give back the unused part of a block. */
    [SQ_SEQ_LOWER] = "UPDATE seq SET value = ?2 WHERE key = ?1 AND value = ?3",
    [SQ_DEDUP_GET] = "SELECT value FROM dedup WHERE key = ?1"
                     " AND expires_at > ?2",
    [SQ_DEDUP_PUT] = "INSERT OR REPLACE INTO dedup(key, value, expires_at)"
                     " VALUES(?1, ?2, ?3)",
    [SQ_DEDUP_PRUNE] = "DELETE FROM dedup WHERE expires_at <= ?1",
    [SQ_DEDUP_DROP] = "DELETE FROM dedup"
                      " WHERE substr(value, 1, length(?1)) = ?1",
    /* Conflict target msg_id only: a different message claiming a taken
     * (conversation, seq) is an error, not silently dropped. */
    [SQ_MSG_INSERT] = "INSERT INTO messages(msg_id, conversation_id, seq,"
                      " from_user, to_user, group_id, body, content_type,"
                      " sent_at_ms, client_msg_id, from_device)"
                      " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                      " ON CONFLICT(msg_id) DO NOTHING",
    [SQ_INBOX_INSERT] = "INSERT INTO inbox(user_id, msg_id) VALUES(?1, ?2)"
                        " ON CONFLICT(user_id, msg_id) DO NOTHING",
    [SQ_INBOX_FETCH] =
        "SELECT i.cursor, " MSG_COLS " FROM inbox AS i JOIN messages AS m"
        " ON m.msg_id = i.msg_id"
        " WHERE i.user_id = ?1 AND i.cursor > ?2"
        " ORDER BY i.cursor LIMIT ?3",
    [SQ_HISTORY_FETCH] = "SELECT m.seq, " MSG_COLS " FROM messages AS m"
                         " WHERE m.conversation_id = ?1 AND m.seq > ?2"
                         " ORDER BY m.seq LIMIT ?3",
    [SQ_PURGE_INBOX] = "DELETE FROM inbox WHERE msg_id IN"
                       " (SELECT msg_id FROM messages WHERE sent_at_ms < ?1)",
    [SQ_PURGE_MSGS] = "DELETE FROM messages WHERE sent_at_ms < ?1",
    [SQ_GROUP_ADD] = "INSERT OR IGNORE INTO group_members(group_id, user_id)"
                     " VALUES(?1, ?2)",
    [SQ_GROUP_REMOVE] = "DELETE FROM group_members"
                        " WHERE group_id = ?1 AND user_id = ?2",
    [SQ_GROUP_LIST] = "SELECT user_id FROM group_members WHERE group_id = ?1"
                      " ORDER BY user_id",
    [SQ_Q_PUBLISH] = "INSERT INTO queue(topic, key, value) VALUES(?1, ?2, ?3)",
    [SQ_Q_JOIN] = "INSERT OR IGNORE INTO queue_groups(topic, grp, committed)"
                  " VALUES(?1, ?2, 0)",
    [SQ_Q_COMMITTED] = "SELECT committed FROM queue_groups"
                       " WHERE topic = ?1 AND grp = ?2",
    [SQ_Q_FETCH] = "SELECT off, key, value FROM queue"
                   " WHERE topic = ?1 AND off > ?2 ORDER BY off LIMIT ?3",
    [SQ_Q_COMMIT] = "INSERT INTO queue_groups(topic, grp, committed)"
                    " VALUES(?1, ?2, ?3) ON CONFLICT(topic, grp)"
                    " DO UPDATE SET committed = max(committed, ?3)",
    [SQ_Q_TRIM] = "DELETE FROM queue WHERE topic = ?1 AND off <="
                  " (SELECT min(committed) FROM queue_groups"
                  " WHERE topic = ?1)",
};

int imc_sq_fail(imc_sqlite *db, int rc, const char *what) {
  const char *why = sqlite3_errstr(rc);
  if (db->db && (sqlite3_errcode(db->db) & 0xff) == (rc & 0xff))
    why = sqlite3_errmsg(db->db);
  snprintf(db->errbuf, sizeof(db->errmsg), "%s: %s", what, why);
  switch (rc & 0xff) {
  case SQLITE_NOMEM:
    return IMC_ERR_NOMEM;
  case SQLITE_BUSY:
  case SQLITE_LOCKED:
    return IMC_ERR_UNAVAILABLE;
  case SQLITE_CONSTRAINT:
    return IMC_ERR_EXISTS;
  case SQLITE_TOOBIG:
    return IMC_ERR_TOO_LARGE;
  default:
    return IMC_ERR_IO;
  }
}

sqlite3_stmt *imc_sq_get(imc_sqlite *db, imc_sq_stmt which) {
  sqlite3_stmt *st = db->st[which];
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  db->bind_rc = SQLITE_OK;
  return st;
}

static void bind_result(imc_sqlite *db, int rc) {
  if (rc != SQLITE_OK && db->bind_rc == SQLITE_OK)
    db->bind_rc = rc;
}

void imc_sq_text(imc_sqlite *db, sqlite3_stmt *st, int i, const char *s) {
  bind_result(db, sqlite3_bind_text(st, i, s ? s : "", -1, SQLITE_STATIC));
}

void imc_sq_blob(imc_sqlite *db, sqlite3_stmt *st, int i, const void *p,
                 size_t n) {
  /* A NULL pointer would bind SQL NULL; an empty blob needs a non-NULL
   * one. */
  bind_result(db, sqlite3_bind_blob64(st, i, n ? p : (const void *)"", n,
                                      SQLITE_STATIC));
}

void imc_sq_int(imc_sqlite *db, sqlite3_stmt *st, int i, int64_t v) {
  bind_result(db, sqlite3_bind_int64(st, i, v));
}

int imc_sq_step(imc_sqlite *db, sqlite3_stmt *st) {
  if (db->bind_rc != SQLITE_OK) {
    int rc = db->bind_rc;
    db->bind_rc = SQLITE_OK;
    return rc;
  }
  return sqlite3_step(st);
}

int imc_sq_run(imc_sqlite *db, sqlite3_stmt *st, const char *what) {
  int rc = imc_sq_step(db, st);
  int rv = 0;
  if (rc != SQLITE_DONE && rc != SQLITE_ROW)
    rv = imc_sq_fail(db, rc, what);
  sqlite3_reset(st);
  return rv;
}

int imc_sq_begin(imc_sqlite *db) {
  return imc_sq_run(db, imc_sq_get(db, SQ_BEGIN), "begin");
}

int imc_sq_commit(imc_sqlite *db) {
  int rv = imc_sq_run(db, imc_sq_get(db, SQ_COMMIT), "commit");
  if (rv < 0)
    imc_sq_rollback(db);
  return rv;
}

void imc_sq_rollback(imc_sqlite *db) {
  /* Some errors (e.g. SQLITE_FULL) already rolled the transaction back. */
  if (!sqlite3_get_autocommit(db->db))
    imc_sq_run(db, imc_sq_get(db, SQ_ROLLBACK), "rollback");
}

int imc_sq_usable(imc_sqlite *db) {
  if (db == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  return db->db ? 0 : IMC_ERR_CLOSED;
}

static void close_conn(imc_sqlite *db) {
  for (int i = 0; i < SQ_COUNT; i++) {
    sqlite3_finalize(db->st[i]);
    db->st[i] = NULL;
  }
  sqlite3_close(db->db);
  db->db = NULL;
}

static int exec(imc_sqlite *db, const char *sql, const char *what) {
  int rc = sqlite3_exec(db->db, sql, NULL, NULL, NULL);
  return rc == SQLITE_OK ? 0 : imc_sq_fail(db, rc, what);
}

static int schema_version(imc_sqlite *db, int *version) {
  sqlite3_stmt *st;
  int rc = sqlite3_prepare_v2(db->db, "PRAGMA user_version", -1, &st, NULL);
  if (rc != SQLITE_OK)
    return imc_sq_fail(db, rc, "read schema version");
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    *version = sqlite3_column_int(st, 0);
    rc = SQLITE_OK;
  }
  int rv = rc == SQLITE_OK ? 0 : imc_sq_fail(db, rc, "read schema version");
  sqlite3_finalize(st);
  return rv;
}

/* Everything after sqlite3_open: pragmas, schema, statements. */
static int setup(imc_sqlite *db) {
  int rv, version = 0;
  /*
   * WAL with synchronous=NORMAL: a commit is written to the WAL before
   * it returns, so it survives a kill -9 of the process, but the WAL is
   * fsynced only at checkpoints, so a power loss or OS crash may lose the
   * last commits. That is the durability imchatd promises for a single
   * node, and it avoids an fsync per message. Readers never block the
   * writer.
   */
  if ((rv = exec(db, "PRAGMA journal_mode = WAL", "set WAL mode")) < 0 ||
      (rv = exec(db, "PRAGMA synchronous = NORMAL", "set synchronous")) < 0 ||
      (rv = schema_version(db, &version)) < 0)
    return rv;
  if (version > SCHEMA_VERSION) {
    snprintf(db->errmsg, sizeof(db->errmsg),
             "schema version %d is newer than this library (%d)", version,
             SCHEMA_VERSION);
    return IMC_ERR_IO;
  }
  if (version < SCHEMA_VERSION) {
    if ((rv = exec(db, "BEGIN IMMEDIATE", "create schema")) < 0)
      return rv;
    if ((rv = exec(db, schema_sql, "create schema")) < 0 ||
        (rv = exec(db, "COMMIT", "create schema")) < 0) {
      sqlite3_exec(db->db, "ROLLBACK", NULL, NULL, NULL);
      return rv;
    }
  }
  for (int i = 0; i < SQ_COUNT; i++) {
    int rc = sqlite3_prepare_v3(db->db, stmt_sql[i], -1,
                                SQLITE_PREPARE_PERSISTENT, &db->st[i], NULL);
    if (rc != SQLITE_OK)
      return imc_sq_fail(db, rc, "prepare");
  }
  return 0;
}

int imc_sqlite_new(imc_sqlite **out, const char *path, const imc_clock *clock,
                   const imc_mem *mem) {
  if (out == NULL || path == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  *out = NULL;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_sqlite *db = imc_calloc(mem, 1, sizeof(*db));
  if (db == NULL)
    return IMC_ERR_NOMEM;
  db->mem = *mem;
  db->clock = clock ? *clock : *imc_clock_default();
  db->errbuf = db->errmsg;
  db->seq_block = IMC_SQLITE_SEQ_BLOCK_DEFAULT;
  db->max_ops = IMC_SQLITE_BATCH_DEFAULT;
  db->wait_ms = IMC_SQLITE_BATCH_WAIT_MS_DEFAULT;
  if (pthread_mutex_init(&db->mu, NULL) != 0) {
    imc_free(mem, db);
    return IMC_ERR_NOMEM;
  }
  db->mu_init = 1;

  int rc = sqlite3_open_v2(
      path, &db->db,
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
  int rv = rc == SQLITE_OK ? setup(db) : imc_sq_fail(db, rc, "open");
  if (rv == 0) {
    *out = db;
    return 0;
  }
  close_conn(db);
  if (rv == IMC_ERR_NOMEM) {
    pthread_mutex_destroy(&db->mu);
    imc_free(mem, db);
    return rv;
  }
  /* Keep the object so the host can read why with imc_sqlite_errmsg(). */
  *out = db;
  return IMC_ERR_IO;
}

void imc_sqlite_del(imc_sqlite *db) {
  if (db == NULL)
    return;
  imc_sq_batch_close(db);
  imc_sq_queue_close(db, IMC_ERR_CLOSED);
  if (db->db)
    imc_sq_seq_close(db);
  close_conn(db);
  if (db->mu_init)
    pthread_mutex_destroy(&db->mu);
  imc_mem m = db->mem;
  imc_free(&m, db);
}

const char *imc_sqlite_errmsg(imc_sqlite *db) {
  if (db == NULL)
    return "no database";
  if (db->group) {
    /* The storage thread writes its own buffer; take a copy. */
    pthread_mutex_lock(&db->mu);
    memcpy(db->errmsg, db->shared_errmsg, sizeof(db->errmsg));
    pthread_mutex_unlock(&db->mu);
  }
  return db->errmsg;
}

void imc_sqlite_set_user_data(imc_sqlite *db, void *ud) {
  db->user_data = ud;
}

void *imc_sqlite_get_user_data(const imc_sqlite *db) {
  return db->user_data;
}
