/*
 * imchat - the MariaDB/MySQL engine: the store (conversation history,
 * offline inboxes, group membership) and durable high-water marks on a
 * MariaDB or MySQL server, through libmariadb's non-blocking API on the
 * host's loop.
 *
 * Connections. A small pool (imc_mariadb_options_set_pool_size(), 2 by
 * default) connects at imc_mariadb_new() and reconnects with backoff
 * whenever a connection breaks. Writes go through one connection at a
 * time, reads through the others, so a long read never holds up writes
 * (with a pool of one they share it). Nothing blocks the loop thread:
 * connecting, the queries and their results all run on the loop's fd
 * watches and timers. One exception belongs to libmariadb: it resolves
 * a host name with a blocking getaddrinfo(), so give an IP address (or a
 * name /etc/hosts answers). "localhost" means the server's Unix socket
 * to libmariadb: use 127.0.0.1.
 *
 * Group commit. The write operations (store append, purge, group_add,
 * group_remove, marks raise) made during one loop turn go into ONE
 * transaction, as multi-row statements, bounded by
 * imc_mariadb_options_set_batch_limits(); the next batch forms while one
 * is in flight. Completions run only after COMMIT succeeded. A batch
 * whose connection breaks (the server restarted, say) is sent again
 * once a connection is back: the unique keys make that retry idempotent
 * (a message, an inbox entry, a membership is never written twice, and a
 * mark never goes down). A batch that fails for any other reason is rolled
 * back and each of its operations runs again alone, so one bad operation
 * fails alone. Inbox cursors are AUTO_INCREMENT ids, which must become
 * visible in the order they are handed out (or a reader's cursor could
 * pass an entry that commits later): an engine never overlaps its write
 * batches, and a batch that adds inbox entries holds a lock per database
 * until its COMMIT, so the processes sharing a database take turns.
 * Reads run on their own connection, each in its own snapshot. A purge
 * deletes in chunks of imc_mariadb_options_set_purge_chunk() messages, one
 * transaction each, and lets waiting writes in between chunks.
 *
 * Operation timeout. An operation that has not completed within
 * imc_mariadb_options_set_op_timeout_ms() (5 s by default) completes with
 * IMC_ERR_UNAVAILABLE: no connection came up in time, or its statement
 * did not answer (its connection is then dropped and made again). A write
 * that fails this way may still have been committed; the caller retries
 * it, which is harmless.
 *
 * Schema. The tables are created and upgraded by numbered migrations,
 * each applied once and recorded in the table schema_version, under a
 * server lock so that several processes starting together apply them
 * once. By default imc_mariadb_new() applies the missing ones when it
 * first connects; with imc_mariadb_options_set_migrate(o, 0) it only checks
 * the version and serves nothing until someone has migrated (a host's
 * --migrate-only run, or imc_mariadb_migrate()). A database whose schema
 * is newer than this build is refused.
 *
 * Operations return 0 and complete later from the loop (never inside the
 * call), or return IMC_ERR_INVALID_ARGUMENT (NULL or empty ids, ids over
 * 191 bytes, limit 0, done NULL), IMC_ERR_TOO_LARGE (an append whose
 * statements would not fit in one batch), IMC_ERR_NOMEM or IMC_ERR_CLOSED
 * (imc_mariadb_del() is running) without completing. Completions report
 * 0, IMC_ERR_UNAVAILABLE (see above), IMC_ERR_EXISTS (store append: a
 * different msg_id already holds the (conversation_id, seq)),
 * IMC_ERR_INVALID_ARGUMENT (the server refused a value, e.g. invalid
 * UTF-8), IMC_ERR_IO (any other server error; imc_mariadb_errmsg() says
 * which), IMC_ERR_NOMEM, or IMC_ERR_CLOSED (imc_mariadb_del() ran first).
 *
 * Like every engine, an imc_mariadb belongs to the thread that runs its
 * loop, and its completions run from that loop. A completion may make
 * new operations, but must not delete the engine.
 */
#ifndef IMCHAT_ENGINES_MARIADB_H
#define IMCHAT_ENGINES_MARIADB_H

#include <imchat/engines/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ */
/* Options                                                              */
/* ------------------------------------------------------------------ */

typedef struct imc_mariadb_options imc_mariadb_options;

/*
 * New options with the defaults (no address, no credentials). Returns 0,
 * IMC_ERR_INVALID_ARGUMENT (out NULL) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_mariadb_options_new(imc_mariadb_options **out);
/* Frees o, wiping the password it holds. NULL is a no-op. */
IMC_EXTERN void imc_mariadb_options_del(imc_mariadb_options *o);

/*
 * The server and database: "host:port/db" ("host/db" means port 3306;
 * an IPv6 address goes in brackets: "[::1]:3306/db"). The database name
 * is 1..64 bytes of [A-Za-z0-9_$]. Returns 0, IMC_ERR_INVALID_ARGUMENT
 * (o or address NULL, or malformed) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_mariadb_options_set_address(imc_mariadb_options *o,
                                               const char *address);
/*
 * The account to log in with; password may be NULL or "" (none). Both
 * are copied. Pass them from a file or the environment
 * (imc_mariadb_options_credentials_from_env()), never from a command line,
 * where other users can read them. Returns 0, IMC_ERR_INVALID_ARGUMENT
 * (o or user NULL, user empty) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_mariadb_options_set_credentials(imc_mariadb_options *o,
                                                   const char *user,
                                                   const char *password);
/*
 * The account from the environment: IMCHAT_MYSQL_USER and
 * IMCHAT_MYSQL_PASSWORD (which may be unset: no password). Returns 0,
 * IMC_ERR_NOT_FOUND (IMCHAT_MYSQL_USER unset or empty; o unchanged),
 * IMC_ERR_INVALID_ARGUMENT (o NULL) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_mariadb_options_credentials_from_env(imc_mariadb_options *o);
/*
 * Connections in the pool, 1..16 (default 2). Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_mariadb_options_set_pool_size(imc_mariadb_options *o,
                                                 unsigned n);
/*
 * How long an operation may take before it completes with
 * IMC_ERR_UNAVAILABLE, in ms (100..3600000, default 5000). Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_mariadb_options_set_op_timeout_ms(imc_mariadb_options *o,
                                                     int64_t ms);
/*
 * How long one connection attempt may take, in ms (100..600000, default
 * 3000); after a failed attempt the next waits 100 ms, doubling up to
 * max_backoff_ms (100..600000, default 2000). Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_mariadb_options_set_connect(imc_mariadb_options *o,
                                               int64_t timeout_ms,
                                               int64_t max_backoff_ms);
/*
 * Bounds of one write batch: at most max_ops operations (1..100000,
 * default 512) and max_bytes bytes of SQL (64 KiB..1 GiB, default 4 MiB;
 * keep it below the server's max_allowed_packet). An append that alone
 * needs more than max_bytes is refused with IMC_ERR_TOO_LARGE. Returns 0
 * or IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_mariadb_options_set_batch_limits(imc_mariadb_options *o,
                                                    size_t max_ops,
                                                    size_t max_bytes);
/*
 * Messages a purge deletes per transaction (1..100000, default 1000).
 * Returns 0 or IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_mariadb_options_set_purge_chunk(imc_mariadb_options *o,
                                                   uint32_t rows);
/*
 * 1 (default): apply missing schema migrations when first connected.
 * 0: only check the schema version; serve nothing until it is current.
 * Returns 0 or IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_mariadb_options_set_migrate(imc_mariadb_options *o,
                                               int apply);
/*
 * Where the engine logs (connections lost and made, migrations applied,
 * failed batches); cb NULL: nowhere. Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_mariadb_options_set_log(imc_mariadb_options *o,
                                           imc_log_cb cb, void *ud);

/* ------------------------------------------------------------------ */
/* The engine                                                           */
/* ------------------------------------------------------------------ */

typedef struct imc_mariadb imc_mariadb;

/*
 * A new engine on loop (borrowed: it must outlive the engine), with a
 * copy of opts, which needs an address and credentials. It starts
 * connecting at once and returns without waiting; operations made before
 * the first connection is up wait for it (up to their timeout). mem may
 * be NULL (malloc; libmariadb allocates with malloc whatever mem is).
 * Returns 0, IMC_ERR_INVALID_ARGUMENT (out, loop or opts NULL, no address
 * or credentials in opts) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_mariadb_new(imc_mariadb **out, const imc_loop *loop,
                               const imc_mariadb_options *opts,
                               const imc_mem *mem);
/*
 * Closes the connections (a transaction in flight is rolled back by the
 * server) and completes every pending operation with IMC_ERR_CLOSED.
 * Not from one of the engine's completions. NULL is a no-op.
 */
IMC_EXTERN void imc_mariadb_del(imc_mariadb *db);
IMC_EXTERN void imc_mariadb_set_user_data(imc_mariadb *db, void *ud);
IMC_EXTERN void *imc_mariadb_get_user_data(const imc_mariadb *db);

/* The vtables; their ud is the imc_mariadb. */
IMC_EXTERN const imc_store_vtbl *imc_mariadb_store_vtbl(void);
IMC_EXTERN const imc_marks_vtbl *imc_mariadb_marks_vtbl(void);

/*
 * For a host's /readyz: 0 when a connection to the server is up and the
 * schema is current; IMC_ERR_UNAVAILABLE when no connection is up (the
 * server is down or unreachable, the login failed, or the first
 * connection is still being made); IMC_ERR_IO when the server answers but
 * the schema is unusable (not migrated, newer than this build, or a
 * migration failed). imc_mariadb_errmsg() says why. An idle connection
 * that the server closes is noticed at once.
 */
IMC_EXTERN int imc_mariadb_health(const imc_mariadb *db);
/*
 * The last error the engine met (a server error, a lost connection, a
 * schema problem), for logs; "" if none. Valid until the next turn of
 * the loop.
 */
IMC_EXTERN const char *imc_mariadb_errmsg(const imc_mariadb *db);

/*
 * Bring the schema up to this build's version now, whatever
 * imc_mariadb_options_set_migrate() said: for a host's --migrate-only run
 * (new, migrate, run the loop until done, del). done runs with 0 once the
 * schema is current (at once, from the loop, if it already is), or with
 * IMC_ERR_IO (a migration failed, or the schema is newer than this
 * build), IMC_ERR_UNAVAILABLE (no connection within the operation
 * timeout) or IMC_ERR_CLOSED. Returns 0, IMC_ERR_INVALID_ARGUMENT (db or
 * done NULL), IMC_ERR_NOMEM or IMC_ERR_CLOSED.
 */
IMC_EXTERN int imc_mariadb_migrate(imc_mariadb *db, imc_done_cb done,
                                   void *done_ud);
/* The schema version this build creates and needs. */
IMC_EXTERN int imc_mariadb_schema_version(void);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_ENGINES_MARIADB_H */
