/*
 * The MariaDB engine's schema: numbered migrations, each applied once
 * and recorded in schema_version, and the job that checks the version
 * and applies what is missing.
 *
 * Applying runs under a named server lock (GET_LOCK, per database), so
 * processes that start together migrate once; the server drops the lock
 * with the session if the process dies. Each migration runs in a
 * transaction with its schema_version row, but MariaDB and MySQL commit
 * implicitly around DDL: a migration interrupted half-way runs again
 * from its start, so every statement of a migration must be idempotent
 * (CREATE TABLE IF NOT EXISTS, ADD COLUMN IF NOT EXISTS, ...).
 * Migrations are only ever appended.
 *
 * Text columns are utf8mb4 with the binary collation: ids compare byte
 * for byte (no case folding). Bodies are MEDIUMBLOBs.
 */
#include "mariadb/mariadb_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mysqld_error.h>

#define TABLE_OPTS " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"

typedef struct migration {
  const char *what;
  const char *sql;
} migration;

/* migrations[i] brings the schema to version i + 1. */
static const migration migrations[] = {
    {"history, inboxes and group membership",
     /* History, clustered by conversation so a page is one range scan.
      * A message is stored once; inbox entries point at it by msg_id. */
     "CREATE TABLE IF NOT EXISTS messages ("
     " conversation_id VARCHAR(191) NOT NULL,"
     " seq BIGINT UNSIGNED NOT NULL,"
     " msg_id VARCHAR(191) NOT NULL,"
     " from_user VARCHAR(191) NOT NULL,"
     " to_user VARCHAR(191) NOT NULL,"
     " group_id VARCHAR(191) NOT NULL,"
     " body MEDIUMBLOB NOT NULL,"
     " content_type TEXT NOT NULL,"
     " sent_at_ms BIGINT NOT NULL,"
     " client_msg_id TEXT NOT NULL,"
     " from_device VARCHAR(191) NOT NULL,"
     " PRIMARY KEY (conversation_id, seq),"
     " UNIQUE KEY messages_msg_id (msg_id),"
     " KEY messages_sent (sent_at_ms))" TABLE_OPTS ";"
     /* id is the inbox cursor: AUTO_INCREMENT values are never reused,
      * also after the newest rows are purged and the server restarts. */
     "CREATE TABLE IF NOT EXISTS inbox ("
     " id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,"
     " user_id VARCHAR(191) NOT NULL,"
     " msg_id VARCHAR(191) NOT NULL,"
     " PRIMARY KEY (id),"
     " UNIQUE KEY inbox_user_msg (user_id, msg_id),"
     " KEY inbox_user (user_id, id),"
     " KEY inbox_msg (msg_id))" TABLE_OPTS ";"
     "CREATE TABLE IF NOT EXISTS group_members ("
     " group_id VARCHAR(191) NOT NULL,"
     " user_id VARCHAR(191) NOT NULL,"
     " PRIMARY KEY (group_id, user_id))" TABLE_OPTS},
    {"high-water marks of counters", "CREATE TABLE IF NOT EXISTS marks ("
                                     " k VARCHAR(191) NOT NULL,"
                                     " v BIGINT UNSIGNED NOT NULL,"
                                     " PRIMARY KEY (k))" TABLE_OPTS},
};

#define LATEST ((int)(sizeof(migrations) / sizeof(migrations[0])))

#define LOCK_NAME "CONCAT('imchat.schema.', MD5(DATABASE()))"
#define LOCK_WAIT_S 10

enum { S_VERSION, S_MIGRATE, S_UNLOCK, S_CLEANUP };

int imc_mariadb_schema_version(void) {
  return LATEST;
}

static void send(mdb_conn *c) {
  if (c->sql.oom) {
    mdb_conn_drop(c, "out of memory");
    return;
  }
  mdb_conn_query(c, c->sql.p, c->sql.len);
}

static void send_version(mdb_conn *c) {
  mdb_sql *s = &c->sql;
  mdb_sql_reset(s);
  c->step = S_VERSION;
  c->schema_version = -1;
  c->schema_locked = 0;
  if (c->db->apply)
    mdb_sql_addf(s,
                 "SELECT GET_LOCK(" LOCK_NAME ", %d);"
                 "CREATE TABLE IF NOT EXISTS schema_version ("
                 " version INT UNSIGNED NOT NULL,"
                 " description VARCHAR(255) NOT NULL,"
                 " applied_at DATETIME(3) NOT NULL"
                 " DEFAULT CURRENT_TIMESTAMP(3),"
                 " PRIMARY KEY (version))" TABLE_OPTS ";",
                 LOCK_WAIT_S);
  mdb_sql_add(s, "SELECT COALESCE(MAX(version), 0) FROM schema_version");
  send(c);
}

void mdb_schema_start(mdb_conn *c) {
  c->job = MDB_JOB_SCHEMA;
  c->ops = NULL;
  send_version(c);
}

static void send_migration(mdb_conn *c) {
  int v = c->schema_version + 1;
  const migration *m = &migrations[v - 1];
  mdb_sql *s = &c->sql;
  mdb_sql_reset(s);
  c->step = S_MIGRATE;
  mdb_sql_add(s, "START TRANSACTION;");
  mdb_sql_add(s, m->sql);
  mdb_sql_addf(s,
               ";INSERT INTO schema_version (version, description) "
               "VALUES (%d, ",
               v);
  mdb_sql_str(s, c->my, m->what);
  mdb_sql_add(s, ");COMMIT");
  send(c);
}

static void send_simple(mdb_conn *c, int step, const char *sql) {
  mdb_sql_reset(&c->sql);
  c->step = step;
  mdb_sql_add(&c->sql, sql);
  send(c);
}

static void ready(mdb_conn *c) {
  imc_mariadb *db = c->db;
  mdb_conn_release(c);
  db->schema = MDB_SCHEMA_READY;
  db->schema_err = 0;
  mdb_log(db, IMC_LOG_INFO, "mariadb: schema at version %d", LATEST);
  mdb_kick(db);
}

static void failed(mdb_conn *c, int status, const char *msg) {
  imc_mariadb *db = c->db;
  mdb_conn_release(c);
  mdb_log(db, IMC_LOG_ERROR, "mariadb: schema: %s", msg);
  mdb_schema_failed(db, status);
}

/* The first column of the first row as an integer; -1 if NULL or none. */
static long long first_value(MYSQL_RES *res) {
  MYSQL_ROW row = mysql_fetch_row(res);
  if (row == NULL || row[0] == NULL)
    return -1;
  return strtoll(row[0], NULL, 10);
}

void mdb_schema_result(mdb_conn *c, unsigned i, MYSQL_RES *res) {
  if (res == NULL)
    return;
  if (c->step == S_VERSION) {
    long long v = first_value(res);
    if (c->db->apply && i == 0)
      c->schema_locked = v == 1;
    else
      c->schema_version = v < 0               ? 0
                          : v > LATEST + 1000 ? LATEST + 1000
                                              : (int)v;
  }
  mysql_free_result(res);
}

/* The version is known: on to what it calls for. */
static void version_known(mdb_conn *c) {
  imc_mariadb *db = c->db;
  char msg[256];
  int v = c->schema_version;
  if (v > LATEST) {
    snprintf(msg, sizeof(msg),
             "the database is at schema version %d, newer than this "
             "build's %d: run a newer build",
             v, LATEST);
  } else if (v == LATEST) {
    if (db->apply)
      send_simple(c, S_UNLOCK, "SELECT RELEASE_LOCK(" LOCK_NAME ")");
    else
      ready(c);
    return;
  } else if (db->apply) {
    send_migration(c);
    return;
  } else {
    snprintf(msg, sizeof(msg),
             "the database is at schema version %d and this build needs "
             "%d: run the migrations (imc_mariadb_migrate, a host's "
             "--migrate-only)",
             v, LATEST);
  }
  if (db->apply) {
    snprintf(c->schema_msg, sizeof(c->schema_msg), "%s", msg);
    c->err = 0;
    send_simple(c, S_CLEANUP, "SELECT RELEASE_LOCK(" LOCK_NAME ")");
  } else {
    failed(c, IMC_ERR_IO, msg);
  }
}

void mdb_schema_step_done(mdb_conn *c, unsigned err, const char *msg) {
  imc_mariadb *db = c->db;
  switch (c->step) {
  case S_VERSION:
    if (err == ER_NO_SUCH_TABLE && !db->apply) {
      c->schema_version = 0;
    } else if (err) {
      snprintf(c->schema_msg, sizeof(c->schema_msg),
               "reading the schema version: %s", msg);
      if (db->apply)
        send_simple(c, S_CLEANUP,
                    "ROLLBACK;SELECT RELEASE_LOCK(" LOCK_NAME ")");
      else
        failed(c, IMC_ERR_IO, c->schema_msg);
      return;
    } else if (db->apply && !c->schema_locked) {
      failed(c, IMC_ERR_UNAVAILABLE,
             "the schema lock is held by another process (migrating?)");
      return;
    }
    version_known(c);
    return;
  case S_MIGRATE:
    if (err) {
      snprintf(c->schema_msg, sizeof(c->schema_msg), "migration %d: %s",
               c->schema_version + 1, msg);
      send_simple(c, S_CLEANUP, "ROLLBACK;SELECT RELEASE_LOCK(" LOCK_NAME ")");
      return;
    }
    c->schema_version++;
    mdb_log(db, IMC_LOG_INFO, "mariadb: applied schema migration %d (%s)",
            c->schema_version, migrations[c->schema_version - 1].what);
    version_known(c);
    return;
  case S_UNLOCK:
    ready(c);
    return;
  case S_CLEANUP:
    failed(c, IMC_ERR_IO, c->schema_msg);
    return;
  }
}

void mdb_schema_lost(mdb_conn *c) {
  /* The server released the lock with the session; the next idle
   * connection starts over. */
  c->db->schema = MDB_SCHEMA_UNKNOWN;
}
