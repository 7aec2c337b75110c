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
 * a file. It starts no threads.
 *
 * Two modes.
 *
 * Immediate (the default): every operation runs in its own transaction
 * on the caller's thread; seq, dedup, store, publish and commit complete
 * before returning. Simple, and one commit per operation.
 *
 * Group commit (imc_sqlite_set_group_commit()): operations are queued and
 * complete later, after the transaction that made them durable:
 *   - the loop thread makes operations through the vtables; each returns
 *     at once (0, or an error and no completion);
 *   - imc_sqlite_submit() (loop thread, once per loop turn, after the
 *     turn's work) closes the turn's operations into one submission;
 *     imc_sqlite_dispatch() closes them earlier once they are due: the
 *     batch bound is reached, or the batch wait has passed since the
 *     oldest of them was made (imc_sqlite_set_batch_wait_ms(), 1 ms by
 *     default);
 *   - imc_sqlite_run_batch() runs submitted operations in ONE
 *     transaction: whole submissions, in order, up to the batch bound;
 *     operations submitted while it runs go to the next batch. Each
 *     operation runs in a savepoint, so one failing operation (a store
 *     append whose seq is taken, say) fails alone; a failing commit
 *     fails every operation of the batch, each exactly once;
 *   - imc_sqlite_dispatch() (loop thread) calls the completions of the
 *     batches that have run, in order, never before their commit.
 * Operations of one submission are never split between batches: what the
 * router issues in one turn (an offline job and its dedup record) commits
 * or fails together. Reads (fetches, dedup get, group members, the read
 * behind a poll) are operations of the batch too: they run where the
 * writes run and see every earlier write of their batch. WAL checkpoints
 * happen inside the commits, so they run where the batch runs.
 *
 * Threads. Every function runs on the loop thread (the thread that
 * created db) except imc_sqlite_run_batch(), which is the one function a
 * host may call from another thread (its storage thread) while the loop
 * thread keeps making operations, submitting, dispatching and reading
 * imc_sqlite_next_timeout_ms() and imc_sqlite_errmsg(): the handoff
 * (submitted and finished operations, the error message) is guarded by a
 * mutex inside db. At most one imc_sqlite_run_batch() may run at a time.
 * The host wakes the loop when a batch has run (an eventfd, say), since
 * imc_sqlite_next_timeout_ms() is then 0. A host without a storage thread
 * calls imc_sqlite_run_batch() on the loop thread after submitting (the
 * synchronous form: tests, simple embedders). Stop the storage thread
 * (join it) before imc_sqlite_del(). imc_sqlite_run_batch() allocates
 * (the results of reads) from db's imc_mem, and the loop thread frees
 * them: with a storage thread, the allocator must be thread-safe (malloc,
 * the default, is). The clock is read on the loop thread only.
 *
 * Sequence numbers are served from memory: the file holds a high-water
 * mark per counter, raised a block at a time (imc_sqlite_set_seq_block(),
 * 1000 by default); a value is handed out only once the reservation that
 * covers it is committed. So next() usually completes inside the call
 * with no write, in both modes. After a crash the unused rest of each
 * block is skipped: a counter jumps ahead (a gap) but never repeats or
 * goes back. imc_sqlite_del() gives the unused rest back, so a clean
 * restart continues without a gap.
 *
 * Immediate mode: a poll never completes inside the call, even if
 * records are waiting: it is deferred work, and the host runs it as a timer
 * (curl multi's way): imc_sqlite_next_timeout_ms() says 0 while a poll can be
 * completed and -1 while nothing is ready, and imc_sqlite_dispatch() is the "on
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
 * With group commit, polls complete from imc_sqlite_dispatch() too, and
 * imc_sqlite_next_timeout_ms() is the deadline of the operations not yet
 * submitted: 0 once they are due (the batch bound, or the batch wait
 * since the oldest), the time left until then while they are not, 0 while
 * a poll needs a read or completions wait to be dispatched, -1 when none
 * of this holds (a submitted batch that has not run yet is the host's
 * business: it knows it handed it over). The batch wait bounds what an
 * operation waits for its submission to close, without a timer: a host
 * that submits at the end of every loop turn closes them sooner, one
 * whose turns run long, or that submits less often, is woken at the
 * deadline and closes them with imc_sqlite_dispatch(). Submissions close
 * only in imc_sqlite_submit() and imc_sqlite_dispatch(), never inside a
 * vtable call, so what a caller issues in one call stack (an offline job
 * and its dedup record) stays in one submission. Under load the batches
 * grow by themselves, up to the bound.
 *
 * Besides the codes of each vtable, operations may return
 * IMC_ERR_INVALID_ARGUMENT (NULL or empty ids, limit or max 0, partition
 * other than 0), IMC_ERR_NOMEM, IMC_ERR_IO (reason: imc_sqlite_errmsg()),
 * IMC_ERR_UNAVAILABLE (the file is locked by another process),
 * IMC_ERR_EXISTS (store append: a different msg_id already holds the
 * (conversation_id, seq); bus poll: a poll of that topic and group is
 * outstanding) and IMC_ERR_CLOSED (imc_sqlite_new failed, or with group
 * commit: imc_sqlite_del() is running). With group commit a completion
 * may report any of them, plus IMC_ERR_CLOSED for an operation still
 * queued when imc_sqlite_del() ran.
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
 * Close the database. With group commit, operations whose batch has run
 * complete as they ran; queued ones complete with IMC_ERR_CLOSED (run the
 * last batches first to keep them). Outstanding polls complete with
 * IMC_ERR_CLOSED. The unused rest of each seq block is given back. No
 * imc_sqlite_run_batch() may be running. NULL is a no-op.
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
 * these completions waits for the next call). With group commit:
 * complete the operations whose batch has run, and close the operations
 * not yet submitted into a submission if they are due (before and after
 * the completions; see imc_sqlite_next_timeout_ms()), so that a host
 * woken by the deadline need not end its loop turn; the next
 * imc_sqlite_submit() counts them. Returns the number of
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
 * empty and no publish has happened since). Never positive in immediate
 * mode; with group commit, the milliseconds until the operations not yet
 * submitted are due (see above). Also -1 for a NULL db or one whose
 * imc_sqlite_new failed.
 * Cheap (no query): call it before every wait of the event loop. A 0 may
 * be followed by a dispatch that finds the topic empty after all (a
 * record another group committed away, say); the timeout is then -1.
 */
IMC_EXTERN int64_t imc_sqlite_next_timeout_ms(const imc_sqlite *db);

/*
 * Switch db to group commit (see above), with batches of at most max_ops
 * operations (a single submission larger than that runs whole, alone).
 * Loop thread, before any storage thread runs; there is no way back. May
 * be called again to change max_ops. Returns 0,
 * IMC_ERR_INVALID_ARGUMENT (db NULL, max_ops 0) or IMC_ERR_CLOSED
 * (imc_sqlite_new failed).
 */
IMC_EXTERN int imc_sqlite_set_group_commit(imc_sqlite *db, uint32_t max_ops);

/*
 * Group commit, loop thread: close the operations made since the last
 * call (and a read for every poll that needs one) into one submission
 * for the next batch. Call once per loop turn, after the turn's work,
 * then wake whoever runs batches. Returns the number of operations
 * submitted since the last call that returned a count, those that
 * imc_sqlite_dispatch() closed included (0: nothing to run),
 * IMC_ERR_INVALID_ARGUMENT (db NULL or not in group commit),
 * IMC_ERR_NOMEM (a poll's read could not be queued; the operations stay
 * queued, call again) or IMC_ERR_CLOSED (imc_sqlite_new failed).
 */
IMC_EXTERN int imc_sqlite_submit(imc_sqlite *db);

/*
 * Group commit, any one thread at a time (the host's storage thread, or
 * the loop thread in the synchronous form): run the oldest submitted
 * operations in one transaction, then hand them to dispatch. Returns the
 * number of operations run (0: nothing was submitted; call again while
 * positive to drain), IMC_ERR_INVALID_ARGUMENT (db NULL or not in group
 * commit) or IMC_ERR_CLOSED (imc_sqlite_new failed). Failures of the
 * batch are reported through the operations' completions, not here.
 */
IMC_EXTERN int imc_sqlite_run_batch(imc_sqlite *db);

/*
 * Group commit: the longest an operation waits for its submission to
 * close (default 1 ms), counted from the oldest operation not yet
 * submitted; reaching the batch bound closes it at once. 0 makes every
 * operation due at once (imc_sqlite_next_timeout_ms() is 0 while any is
 * waiting). Loop thread; may be set before or after
 * imc_sqlite_set_group_commit(). Returns 0, IMC_ERR_INVALID_ARGUMENT (db
 * NULL) or IMC_ERR_CLOSED (imc_sqlite_new failed).
 */
IMC_EXTERN int imc_sqlite_set_batch_wait_ms(imc_sqlite *db, uint32_t ms);

/*
 * Group commit, any thread: the number of submitted operations that no
 * batch has taken yet. 0 for NULL or in immediate mode.
 */
IMC_EXTERN size_t imc_sqlite_batch_queued(imc_sqlite *db);

/*
 * Sequence values reserved per write (default 1000): the largest jump a
 * counter makes after a crash. Loop thread. Returns 0,
 * IMC_ERR_INVALID_ARGUMENT (db NULL, block 0) or IMC_ERR_CLOSED.
 */
IMC_EXTERN int imc_sqlite_set_seq_block(imc_sqlite *db, uint32_t block);

/*
 * Delete every dedup key whose value begins with the len bytes of
 * prefix, at once, in its own transaction: for a host that owns the file
 * alone to settle, at start, the claims a crashed predecessor left (the
 * router's "pending" claims). Only while no imc_sqlite_run_batch() can
 * run (before group commit, or before the storage thread starts).
 * Returns the number of keys deleted, IMC_ERR_INVALID_ARGUMENT (db or
 * prefix NULL, len 0), IMC_ERR_IO or IMC_ERR_UNAVAILABLE (reason:
 * imc_sqlite_errmsg()), IMC_ERR_CLOSED (imc_sqlite_new failed).
 */
IMC_EXTERN int imc_sqlite_dedup_drop(imc_sqlite *db, const uint8_t *prefix,
                                     size_t len);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_SQLITE_H */
