/*
 * Internals of the SQLite embedded backends, shared by sqlite.c (open,
 * schema, helpers), sqlite_kv.c (seq, dedup), sqlite_store.c and
 * sqlite_queue.c (the durable bus).
 */
#ifndef IMC_SQLITE_INT_H
#define IMC_SQLITE_INT_H

#include <imchat/sqlite.h>

#include <sqlite3.h>

#include "util/alloc.h"

/* Every statement the backends run, prepared once by imc_sqlite_new(). */
typedef enum imc_sq_stmt {
  SQ_BEGIN,
  SQ_COMMIT,
  SQ_ROLLBACK,
  SQ_SEQ_NEXT,
  SQ_DEDUP_GET,
  SQ_DEDUP_PUT,
  SQ_DEDUP_PRUNE,
  SQ_MSG_INSERT,
  SQ_INBOX_INSERT,
  SQ_INBOX_FETCH,
  SQ_HISTORY_FETCH,
  SQ_PURGE_INBOX,
  SQ_PURGE_MSGS,
  SQ_GROUP_ADD,
  SQ_GROUP_REMOVE,
  SQ_GROUP_LIST,
  SQ_Q_PUBLISH,
  SQ_Q_JOIN,
  SQ_Q_COMMITTED,
  SQ_Q_FETCH,
  SQ_Q_COMMIT,
  SQ_Q_TRIM,
  SQ_COUNT
} imc_sq_stmt;

/*
 * A consumer group of a topic as seen by this instance: its read position
 * and its outstanding poll, if any. Created by the group's first poll or
 * commit and kept until imc_sqlite_del().
 */
typedef struct imc_sq_consumer {
  char *topic;
  char *group;
  uint64_t pos; /* highest offset delivered or committed (this instance) */
  int pending;  /* a poll is outstanding */
  int dirty;    /* records may have arrived: query at the next dispatch */
  uint64_t gen; /* dispatch generation the poll was made in */
  size_t max;
  imc_bus_batch_cb done;
  void *done_ud;
} imc_sq_consumer;

struct imc_sqlite {
  imc_mem mem;
  imc_clock clock;
  void *user_data;
  sqlite3 *db; /* NULL if imc_sqlite_new() failed with IMC_ERR_IO */
  sqlite3_stmt *st[SQ_COUNT];
  int bind_rc; /* first failed bind since the last imc_sq_step() */
  imc_sq_consumer **consumers;
  size_t n_consumers;
  size_t cap_consumers;
  uint64_t gen; /* bumped by every dispatch */
  int closing;  /* imc_sqlite_del() is completing the outstanding polls */
  char errmsg[256];
};

/*
 * Map an SQLite result code to an IMC_ERR_* and record the reason for
 * imc_sqlite_errmsg(). Call before resetting the failed statement.
 */
int imc_sq_fail(imc_sqlite *db, int rc, const char *what);

/* The statement, with its bindings cleared. */
sqlite3_stmt *imc_sq_get(imc_sqlite *db, imc_sq_stmt which);

/*
 * Bind helpers: text (NULL binds ""), bytes (an empty or NULL buffer binds
 * an empty blob, never SQL NULL) and integers. Pointers are bound without
 * a copy, so they must stay valid until the statement is reset. A failed
 * bind is remembered and reported by the next imc_sq_step().
 */
void imc_sq_text(imc_sqlite *db, sqlite3_stmt *st, int i, const char *s);
void imc_sq_blob(imc_sqlite *db, sqlite3_stmt *st, int i, const void *p,
                 size_t n);
void imc_sq_int(imc_sqlite *db, sqlite3_stmt *st, int i, int64_t v);

/* sqlite3_step(), or the pending bind failure. */
int imc_sq_step(imc_sqlite *db, sqlite3_stmt *st);

/* Step a statement that returns no rows, then reset it; 0 or IMC_ERR_*. */
int imc_sq_run(imc_sqlite *db, sqlite3_stmt *st, const char *what);

/* Transactions: 0 or IMC_ERR_*. A failed commit rolls back. */
int imc_sq_begin(imc_sqlite *db);
int imc_sq_commit(imc_sqlite *db);
void imc_sq_rollback(imc_sqlite *db);

/* 0 if db can run statements, IMC_ERR_INVALID_ARGUMENT if db is NULL,
 * IMC_ERR_CLOSED if it failed to open. */
int imc_sq_usable(imc_sqlite *db);

/* Complete every outstanding poll with status and free the consumers. */
void imc_sq_queue_close(imc_sqlite *db, int status);

#endif /* IMC_SQLITE_INT_H */
