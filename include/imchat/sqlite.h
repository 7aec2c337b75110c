/* imchat - SQLite backends (embedded default). */
#ifndef IMCHAT_SQLITE_H
#define IMCHAT_SQLITE_H

#include <imchat/backend.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * SQLite backends: sequence counters, the dedup set, the store and a
 * durable queue (the bus) in one database file, in WAL mode with
 * synchronous=NORMAL: a completed operation survives a crash of the
 * process, though not necessarily a power loss. One imc_sqlite should own
 * a file; it is single-threaded and starts no threads.
 *
 * seq, dedup, store, publish and commit complete before returning. A poll
 * never completes inside the call, even if records are waiting: it is
 * deferred work, and the host runs it as a timer (curl multi's way):
 * imc_sqlite_next_timeout_ms() says 0 while a poll can be completed and
 * -1 while nothing is ready, and imc_sqlite_dispatch() is the "on
 * timeout" action. The host must not sleep while the timeout is 0 (else
 * a backlog waits for unrelated traffic) and need not call dispatch while
 * it is -1 (nothing to do: no busy loop). A completion may call the
 * backend again, but must not delete it.
 *
 * Dedup TTLs run on the clock's wall time (NULL: the system clock); a
 * TTL of 0 is refused with IMC_ERR_INVALID_ARGUMENT. The store's purge
 * also drops expired dedup keys. Seqs and offsets above INT64_MAX are
 * refused; a cursor above it finds nothing. Bus records are in partition
 * 0; a consumer group is known to a topic from its first poll or commit,
 * and records are deleted once every known group has committed them. Within one
 * imc_sqlite each record is delivered to a group once; after a restart
 * every uncommitted record is delivered again.
 *
 * Besides the codes of each vtable, operations may return
 * IMC_ERR_INVALID_ARGUMENT (NULL or empty ids, limit or max 0, partition
 * other than 0), IMC_ERR_NOMEM, IMC_ERR_IO (reason: imc_sqlite_errmsg()),
 * IMC_ERR_UNAVAILABLE (the file is locked by another process),
 * IMC_ERR_EXISTS (store append: a different msg_id already holds the
 * (conversation_id, seq); bus poll: a poll of that topic and group is
 * outstanding) and IMC_ERR_CLOSED (imc_sqlite_new failed).
 */
typedef struct imc_sqlite imc_sqlite;

/*
 * Open the database at path, creating the file and its schema if needed.
 * clock and mem may be NULL (system clock, malloc); both must outlive the
 * object. Returns 0, IMC_ERR_INVALID_ARGUMENT (out or path NULL),
 * IMC_ERR_NOMEM (*out is NULL) or IMC_ERR_IO (the file cannot be opened,
 * created or used: *out is then set to an object on which only
 * imc_sqlite_errmsg() and imc_sqlite_del() are legal, and the caller
 * must still delete it).
 */
IMC_EXTERN int imc_sqlite_new(imc_sqlite **out, const char *path,
                              const imc_clock *clock, const imc_mem *mem);
/*
 * Close the database. Outstanding polls complete first with
 * IMC_ERR_CLOSED. NULL is a no-op.
 */
IMC_EXTERN void imc_sqlite_del(imc_sqlite *db);
IMC_EXTERN void imc_sqlite_set_user_data(imc_sqlite *db, void *ud);
IMC_EXTERN void *imc_sqlite_get_user_data(const imc_sqlite *db);
/*
 * Why the last operation failed with IMC_ERR_IO (or another storage
 * error); "" if none has. Valid until the next call on db.
 */
IMC_EXTERN const char *imc_sqlite_errmsg(imc_sqlite *db);
/* The vtables; their ud is the imc_sqlite. */
IMC_EXTERN const imc_seq_vtbl *imc_sqlite_seq_vtbl(void);
IMC_EXTERN const imc_dedup_vtbl *imc_sqlite_dedup_vtbl(void);
IMC_EXTERN const imc_store_vtbl *imc_sqlite_store_vtbl(void);
IMC_EXTERN const imc_bus_vtbl *imc_sqlite_bus_vtbl(void);
/*
 * Complete the outstanding polls that have records (a poll made by one of
 * these completions waits for the next call). Returns the number of
 * completions made: if positive, call again before blocking, since the
 * completions may have made more work. Returns IMC_ERR_INVALID_ARGUMENT
 * (db NULL) or IMC_ERR_CLOSED (imc_sqlite_new failed). A poll whose read
 * fails completes with the error and counts as a completion.
 */
IMC_EXTERN int imc_sqlite_dispatch(imc_sqlite *db);
/*
 * The wakeup of the deferred completions: 0 if imc_sqlite_dispatch()
 * has work now (an outstanding poll whose topic may have records, a
 * poll made by a completion of the last dispatch included), -1 if
 * nothing is pending (no poll, or every outstanding poll found its topic
 * empty and no publish has happened since). Never positive: nothing is
 * time-based. Also -1 for a NULL db or one whose imc_sqlite_new failed.
 * Cheap (no query): call it before every wait of the event loop. A 0 may
 * be followed by a dispatch that finds the topic empty after all (a
 * record another group committed away, say); the timeout is then -1.
 */
IMC_EXTERN int64_t imc_sqlite_next_timeout_ms(const imc_sqlite *db);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_SQLITE_H */
