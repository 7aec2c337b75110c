/*
 * Internals of the SQLite embedded backends, shared by sqlite.c (open,
 * schema, helpers), sqlite_batch.c (operations, group commit and the
 * handoff between the loop thread and the storage thread), sqlite_kv.c
 * (seq, dedup), sqlite_store.c and sqlite_queue.c (the durable bus).
 */
#ifndef IMC_SQLITE_INT_H
#define IMC_SQLITE_INT_H

#include <imchat/sqlite.h>

#include <pthread.h>
#include <sqlite3.h>

#include "util/alloc.h"

#define IMC_SQLITE_SEQ_BLOCK_DEFAULT 1000
#define IMC_SQLITE_BATCH_DEFAULT 512
#define IMC_SQLITE_BATCH_WAIT_MS_DEFAULT 1
#define IMC_SQLITE_SEQ_CACHE 65536 /* counters kept in memory */

/* Every statement the backends run, prepared once by imc_sqlite_new(). */
typedef enum imc_sq_stmt {
  SQ_BEGIN,
  SQ_COMMIT,
  SQ_ROLLBACK,
  SQ_SAVEPOINT,
  SQ_RELEASE,
  SQ_ROLLBACK_TO,
  SQ_SEQ_RESERVE,
  SQ_SEQ_LOWER,
  SQ_DEDUP_GET,
  SQ_DEDUP_PUT,
  SQ_DEDUP_PRUNE,
  SQ_DEDUP_DROP,
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
 * One backend operation, its arguments copied. In immediate mode it runs
 * inside the vtable call, in its own transaction; with group commit it
 * waits in a list until a batch runs it (on whatever thread the host
 * calls imc_sqlite_run_batch() from) and completes from
 * imc_sqlite_dispatch() on the loop thread. exec touches only the
 * connection and the op itself, never loop-side state (consumers, seq
 * counters), so it may run on the storage thread.
 */
typedef struct imc_sq_op imc_sq_op;
typedef struct imc_sq_op_type {
  int write; /* changes the file: runs inside a savepoint of the batch */
  /* Run the statements; 0 or IMC_ERR_*. Results stay in the op. */
  int (*exec)(imc_sqlite *db, imc_sq_op *op);
  /* Call the completion with op->status (loop thread); returns the
   * number of callbacks made. */
  int (*complete)(imc_sqlite *db, imc_sq_op *op);
  /* Free what exec or the constructor allocated besides the op; NULL if
   * nothing. */
  void (*release)(imc_sqlite *db, imc_sq_op *op);
} imc_sq_op_type;

struct imc_sq_op {
  imc_sq_op *next;
  const imc_sq_op_type *type;
  int status;
  int chunk_end; /* last op of one imc_sqlite_submit() */
};

typedef struct imc_sq_list {
  imc_sq_op *head, *tail;
  size_t n;
} imc_sq_list;

/* An in-memory sequence counter: values next..limit are reserved in the
 * file (seq.value = limit) and not yet handed out. */
typedef struct imc_sq_seq_waiter {
  struct imc_sq_seq_waiter *next;
  imc_seq_cb done;
  void *done_ud;
} imc_sq_seq_waiter;

typedef struct imc_sq_seq {
  struct imc_sq_seq *hnext;         /* hash chain */
  struct imc_sq_seq *newer, *older; /* use order, for eviction */
  uint64_t next, limit;             /* next > limit: nothing reserved */
  int reserving;                    /* a reservation op is outstanding */
  int serving;                      /* its waiters are being answered */
  imc_sq_seq_waiter *waiters, *waiters_tail;
  char key[];
} imc_sq_seq;

/*
 * A consumer group of a topic as seen by this instance: its read position
 * and its outstanding poll, if any. Created by the group's first poll or
 * commit and kept until imc_sqlite_del().
 */
typedef struct imc_sq_consumer {
  char *topic;
  char *group;
  uint64_t pos;  /* highest offset delivered or committed (this instance) */
  int pending;   /* a poll is outstanding */
  int dirty;     /* records may have arrived: query at the next dispatch */
  uint64_t gen;  /* dispatch generation the poll was made in */
  uint64_t pubs; /* publishes to the topic seen (group commit) */
  int reading;   /* a read op is outstanding (group commit) */
  int joined;    /* registered in the file (group commit) */
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
  char *errbuf; /* where imc_sq_fail() writes: errmsg, or batch_errmsg */

  /* Sequence counters in memory (sqlite_kv.c). */
  imc_sq_seq **seq_buckets;
  size_t seq_nbuckets, seq_count, seq_cap;
  imc_sq_seq *seq_newest, *seq_oldest;
  uint32_t seq_block;

  /* Group commit (sqlite_batch.c). Loop side: */
  int group;        /* group commit on */
  uint32_t max_ops; /* batch bound, in ops (whole submissions) */
  imc_sq_list open; /* queued since the submission before */
  int64_t open_at;  /* when the first op of open was made */
  uint32_t wait_ms; /* how long that op may wait for open to close */
  size_t closed;    /* ops dispatch closed since imc_sqlite_submit() */
  /* Shared between the loop and the storage thread, under mu: */
  pthread_mutex_t mu;
  int mu_init;
  imc_sq_list submitted; /* waiting for a batch */
  imc_sq_list finished;  /* run (committed or failed), to dispatch */
  char shared_errmsg[256];
  /* Storage side (the thread in imc_sqlite_run_batch): */
  char batch_errmsg[256];
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

/*
 * Hands op (allocated from db->mem, type and arguments set) to the
 * backend. Immediate mode: runs it now in its own transaction and
 * completes it before returning 0, or returns its error without
 * completing it. Group commit: queues it and returns 0 (it completes
 * from imc_sqlite_dispatch()), or IMC_ERR_CLOSED while closing. Either
 * way op is consumed. (sqlite_batch.c)
 */
int imc_sq_submit_op(imc_sqlite *db, imc_sq_op *op);

/* Frees op and what it holds. (sqlite_batch.c) */
void imc_sq_op_free(imc_sqlite *db, imc_sq_op *op);

/* Group commit: queue read ops for the polls that need a read. Loop
 * side. (sqlite_queue.c) */
int imc_sq_queue_reads(imc_sqlite *db);
/* Group commit: 1 if a poll needs a read op. (sqlite_queue.c) */
int imc_sq_reads_due(const imc_sqlite *db);

/* Group commit: complete the finished ops; the number of callbacks.
 * (sqlite_batch.c) */
int imc_sq_batch_dispatch(imc_sqlite *db);
/* Group commit: imc_sqlite_next_timeout_ms(). (sqlite_batch.c) */
int64_t imc_sq_batch_timeout(const imc_sqlite *db);

/* Dispatches what is finished and completes everything else queued with
 * IMC_ERR_CLOSED (imc_sqlite_del). (sqlite_batch.c) */
void imc_sq_batch_close(imc_sqlite *db);

/* Writes back the unused part of every reservation and frees the
 * counters (imc_sqlite_del). (sqlite_kv.c) */
void imc_sq_seq_close(imc_sqlite *db);

#endif /* IMC_SQLITE_INT_H */
