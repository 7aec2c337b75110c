/*
 * The MariaDB engine's internals (see <imchat/engines/mariadb.h>).
 *
 * Files:
 *   options.c  - the options object, the address, credentials from env
 *   mariadb.c  - the engine object: queues of operations, the scheduler
 *                that hands jobs to idle connections, deadlines, health
 *   conn.c     - one pooled connection: libmariadb's _start/_cont calls
 *                driven by the loop, multi-statement results, loss and
 *                reconnect with backoff
 *   sql.c      - building SQL text: escaped strings, hex blobs, numbers
 *   schema.c   - the migrations and the job that applies or checks them
 *   batch.c    - group commit: a write batch as one transaction, and what
 *                happens when it fails
 *   purge.c    - retention, one chunk per transaction
 *   reads.c    - the SELECTs of fetches, group members and marks, and
 *                pages that point into the result set
 *   store.c    - the store vtable: checking and copying arguments
 *   marks.c    - the marks vtable
 *
 * Flow: a vtable call checks its arguments, copies them into an mdb_op
 * and queues it (writes on wq, reads on rq), then arms the kick timer.
 * The kick (next loop turn) runs pump() (mariadb.c): it starts the
 * connections that are down and gives each idle connection a job: the
 * schema job first, then a write batch (one in flight), then reads. A
 * connection runs its job's SQL steps and calls the job's handlers
 * (mdb_job_*), which complete the operations or queue them again.
 * Everything that changes the schedule arms the kick instead of calling
 * pump() from inside a connection's callbacks.
 */
#ifndef IMC_ENGINES_MARIADB_INT_H
#define IMC_ENGINES_MARIADB_INT_H

#include <imchat/engines/mariadb.h>

#include <mysql.h>

#include <sys/types.h>

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* Ids, keys and names are VARCHAR(191) (utf8mb4: 764 bytes a key part). */
#define MDB_ID_MAX 191
#define MDB_POOL_MAX 16
/* SQL a batch spends on statement heads, beyond its rows. */
#define MDB_BATCH_HEAD 2048
/* The longest body a MEDIUMBLOB holds. */
#define MDB_BODY_MAX ((size_t)16 * 1024 * 1024 - 1)

/* ------------------------------------------------------------------ */
/* Options                                                              */
/* ------------------------------------------------------------------ */

struct imc_mariadb_options {
  char *host;
  unsigned port;
  char *dbname;
  char *user;
  char *password;
  unsigned pool;
  int64_t op_timeout_ms;
  int64_t connect_timeout_ms;
  int64_t max_backoff_ms;
  size_t batch_ops;
  size_t batch_bytes;
  uint32_t purge_chunk;
  int migrate;
  imc_log_cb log;
  void *log_ud;
};

/* Copies src into dst, its strings allocated from mem. */
int mdb_opts_copy(imc_mariadb_options *dst, const imc_mariadb_options *src,
                  const imc_mem *mem);
/* Frees dst's strings (wiping the password) into mem. */
void mdb_opts_clear(imc_mariadb_options *o, const imc_mem *mem);

/* ------------------------------------------------------------------ */
/* Operations                                                           */
/* ------------------------------------------------------------------ */

typedef enum mdb_op_kind {
  /* writes (wq) */
  MDB_OP_APPEND,
  MDB_OP_GROUP_ADD,
  MDB_OP_GROUP_REMOVE,
  MDB_OP_RAISE,
  MDB_OP_PURGE, /* its own jobs, a chunk at a time */
  /* reads (rq) */
  MDB_OP_INBOX,
  MDB_OP_HISTORY,
  MDB_OP_MEMBERS,
  MDB_OP_MARK,
  /* waits for the schema (db->migrate_waiters) */
  MDB_OP_MIGRATE
} mdb_op_kind;

/* An inbox entry of an append: the user and which of the op's msgs. */
typedef struct mdb_entry {
  char *user;
  size_t msg;
} mdb_entry;

typedef struct mdb_op mdb_op;
struct mdb_op {
  mdb_op *next;
  mdb_op_kind kind;
  int64_t deadline; /* monotonic ms */
  int solo;         /* write: runs in a transaction of its own */
  size_t est;       /* write: upper bound of its SQL, in bytes */
  union {
    imc_done_cb done;
    imc_fetch_cb fetch;
    imc_list_cb list;
    imc_mark_cb mark;
  } cb;
  void *cb_ud;
  /* Arguments: the user, conversation, group or mark key; the group
   * op's user; the cursor, seq or mark value; the page size; the purge
   * time. */
  char *key;
  char *key2;
  uint64_t num;
  uint32_t limit;
  int64_t before_ms;
  /* Append: copies of the messages (each one allocation), then of the
   * entries' messages that are not among them. */
  imc_msg **msgs;
  size_t n_copies;
  mdb_entry *entries;
  size_t n_entries;
  /* Read results: point into res, which the op owns until released. */
  MYSQL_RES *res;
  imc_msg *rows;
  const imc_msg **row_ptrs;
  uint64_t *cursors;
  const char **items;
  size_t n;
  int has_more;
  uint64_t mark;
};

/* ------------------------------------------------------------------ */
/* Connections                                                          */
/* ------------------------------------------------------------------ */

typedef enum mdb_conn_state {
  MDB_CONN_DOWN,       /* no connection and no attempt: the pump connects */
  MDB_CONN_CONNECTING, /* mysql_real_connect in progress */
  MDB_CONN_IDLE,       /* up, no job */
  MDB_CONN_BUSY,       /* up, running a job */
  MDB_CONN_BACKOFF     /* waiting before the next attempt */
} mdb_conn_state;

typedef enum mdb_call {
  MDB_CALL_NONE,
  MDB_CALL_CONNECT,
  MDB_CALL_QUERY,
  MDB_CALL_STORE,
  MDB_CALL_NEXT
} mdb_call;

typedef enum mdb_job_kind {
  MDB_JOB_NONE,
  MDB_JOB_SCHEMA,
  MDB_JOB_WRITE,
  MDB_JOB_PURGE,
  MDB_JOB_READ
} mdb_job_kind;

typedef struct mdb_sql {
  imc_mariadb *db;
  char *p;
  size_t len, cap;
  int oom;
} mdb_sql;

typedef struct mdb_conn {
  imc_mariadb *db;
  unsigned index;
  MYSQL *my;
  mdb_conn_state state;
  mdb_call call;
  int fd;       /* the watched duplicate of libmariadb's socket */
  ino_t fd_ino; /* which socket it is */
  void *fd_handle;
  unsigned fd_events;
  void *wait_timer;  /* MYSQL_WAIT_TIMEOUT of the call in progress */
  void *retry_timer; /* BACKOFF */
  int64_t backoff_ms;
  /* The call in progress returns into one of these. */
  MYSQL *ret_my;
  int ret_int;
  MYSQL_RES *ret_res;
  unsigned result; /* results of the current query read so far */
  int driving;     /* conn_drive is running: new calls only record st */
  int st;          /* status of the call a handler started */
  /* The job. */
  mdb_job_kind job;
  mdb_op *ops; /* its operations, in order */
  int step;
  unsigned err;         /* the server error a job is cleaning up after */
  int batch_locked;     /* write job: the batch takes the inbox lock */
  int schema_version;   /* schema job: the version the database is at */
  int schema_locked;    /* schema job: GET_LOCK answered 1 */
  char schema_msg[256]; /* schema job: the error being cleaned up after */
  char **purge_ids;     /* purge job: the msg_ids of the chunk */
  size_t n_purge_ids;
  int purge_oom; /* purge job: the ids could not be kept */
  mdb_sql sql;
} mdb_conn;

/* Starts connecting c (state DOWN). */
void mdb_conn_connect(mdb_conn *c);
/*
 * Sends the len bytes of sql (one or more statements) on c (IDLE or
 * BUSY, no call in progress); c becomes BUSY. Results arrive through
 * mdb_job_result() and mdb_job_step_done(), or the job ends through
 * mdb_job_lost().
 */
void mdb_conn_query(mdb_conn *c, const char *sql, size_t len);
/* The job of c is over: c becomes IDLE and watches for a server close. */
void mdb_conn_release(mdb_conn *c);
/*
 * Breaks c's connection (a call in progress is aborted): its job's
 * operations go through mdb_job_lost(), and c retries after backoff.
 * why is logged and kept as the errmsg.
 */
void mdb_conn_drop(mdb_conn *c, const char *why);
/* Closes c for good (imc_mariadb_del): the job's ops stay in c->ops. */
void mdb_conn_close(mdb_conn *c);

/* ------------------------------------------------------------------ */
/* The engine                                                           */
/* ------------------------------------------------------------------ */

typedef struct mdb_queue {
  mdb_op *head, *tail;
} mdb_queue;

typedef enum mdb_schema_state {
  MDB_SCHEMA_UNKNOWN, /* to check (and apply) on the next idle connection */
  MDB_SCHEMA_RUNNING,
  MDB_SCHEMA_READY,
  MDB_SCHEMA_FAILED /* checked again after a delay */
} mdb_schema_state;

struct imc_mariadb {
  imc_loop loop;
  imc_mem mem;
  imc_mariadb_options o;
  void *user_data;
  int closing;
  mdb_conn conns[MDB_POOL_MAX];
  mdb_queue wq, rq, waiters;
  int writing;      /* a write or purge job is in flight */
  unsigned reading; /* read jobs in flight */
  mdb_schema_state schema;
  int apply;          /* apply migrations (else only check) */
  int schema_err;     /* FAILED: IMC_ERR_IO for a schema problem */
  void *schema_timer; /* FAILED: the next check */
  void *kick;         /* next-turn timer that runs the pump */
  void *deadline_timer;
  char errmsg[256];
};

void *mdb_malloc(imc_mariadb *db, size_t n);
void *mdb_calloc(imc_mariadb *db, size_t n, size_t size);
void *mdb_realloc(imc_mariadb *db, void *p, size_t n);
void mdb_free(imc_mariadb *db, void *p);
char *mdb_strdup(imc_mariadb *db, const char *s);

int64_t mdb_now_ms(void);
/* Logs a line and keeps it as the errmsg (level ERROR/WARN). */
void mdb_log(imc_mariadb *db, imc_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Arms the next-turn timer that runs the pump (a no-op while it is
 * armed). Returns 0 or IMC_ERR_NOMEM; callers other than mdb_submit may
 * ignore a failure: the deadline timer still ends what waits.
 */
int mdb_kick(imc_mariadb *db);

/* A new op of kind with the engine's deadline (or NULL). */
mdb_op *mdb_op_new(imc_mariadb *db, mdb_op_kind kind);
/* Queues op (allocated by mdb_op_new) and kicks. Returns 0, or
 * IMC_ERR_NOMEM (op is freed). */
int mdb_submit(imc_mariadb *db, mdb_op *op);
/* Calls op's completion with status (its results if 0), then frees it. */
void mdb_op_finish(imc_mariadb *db, mdb_op *op, int status);
void mdb_op_free(imc_mariadb *db, mdb_op *op);
/* Completes every op of the list with status. */
void mdb_ops_finish(imc_mariadb *db, mdb_op *list, int status);
/* Puts the list (in order) back at the head of q. */
void mdb_queue_front(mdb_queue *q, mdb_op *list);
void mdb_queue_push(mdb_queue *q, mdb_op *op);
mdb_op *mdb_queue_pop(mdb_queue *q);

/* Maps a server or client error number to IMC_ERR_*. */
int mdb_status_of(unsigned err);
/* 1 if err means the connection is gone or unusable. */
int mdb_err_is_conn(unsigned err);
/* 1 if err is transient: the same transaction may simply be retried. */
int mdb_err_is_retry(unsigned err);

/* ------------------------------------------------------------------ */
/* Jobs: what a connection reports to the job it runs                   */
/* ------------------------------------------------------------------ */

/*
 * Result number i of the step's query: res is a result set (owned by the
 * job from now on) or NULL for a statement without one.
 */
void mdb_job_result(mdb_conn *c, unsigned i, MYSQL_RES *res, uint64_t affected);
/*
 * The step's query is over: err is 0, or the server's error for the
 * statement that failed (the following ones did not run). The handler
 * sends the next step or releases c.
 */
void mdb_job_step_done(mdb_conn *c, unsigned err, const char *msg);
/*
 * c's connection broke while running the job (or the job's deadline
 * passed: the ops whose deadline passed complete with
 * IMC_ERR_UNAVAILABLE). The job's ops go back to their queue.
 */
void mdb_job_lost(mdb_conn *c);

/* schema.c */
void mdb_schema_start(mdb_conn *c);
/* mariadb.c: the schema job failed with status (IMC_ERR_IO: a schema
 * problem, which also fails the migrate waiters; IMC_ERR_UNAVAILABLE:
 * try again later); it runs again after a delay. */
void mdb_schema_failed(imc_mariadb *db, int status);
void mdb_schema_result(mdb_conn *c, unsigned i, MYSQL_RES *res);
void mdb_schema_step_done(mdb_conn *c, unsigned err, const char *msg);
void mdb_schema_lost(mdb_conn *c);

/* batch.c: takes the next batch off db->wq. */
void mdb_batch_start(mdb_conn *c);
void mdb_batch_step_done(mdb_conn *c, unsigned err, const char *msg);

/* purge.c: the purge op at the head of db->wq. */
void mdb_purge_start(mdb_conn *c);
/* Frees the chunk's ids (the job ends without its steps finishing). */
void mdb_purge_lost(mdb_conn *c);
void mdb_purge_result(mdb_conn *c, unsigned i, MYSQL_RES *res,
                      uint64_t affected);
void mdb_purge_step_done(mdb_conn *c, unsigned err, const char *msg);

/* reads.c: the read op at the head of db->rq. */
void mdb_read_start(mdb_conn *c);
void mdb_read_result(mdb_conn *c, unsigned i, MYSQL_RES *res);
void mdb_read_step_done(mdb_conn *c, unsigned err, const char *msg);

/* ------------------------------------------------------------------ */
/* SQL text                                                             */
/* ------------------------------------------------------------------ */

void mdb_sql_init(mdb_sql *s, imc_mariadb *db);
void mdb_sql_reset(mdb_sql *s);
void mdb_sql_free(mdb_sql *s);
void mdb_sql_add(mdb_sql *s, const char *text);
void mdb_sql_addf(mdb_sql *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* A quoted string literal, escaped for my's connection. */
void mdb_sql_str(mdb_sql *s, MYSQL *my, const char *str);
/* A hex literal (X'..'): any bytes. */
void mdb_sql_bin(mdb_sql *s, const uint8_t *b, size_t n);
/* Bytes mdb_sql_str needs at most for str. */
size_t mdb_sql_str_est(const char *str);

#endif
