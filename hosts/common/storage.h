/*
 * The storage thread of the hosts: runs an imc_sqlite's group commits
 * off the network loop.
 *
 * The library starts no thread; this is the host side of its two-sided
 * API (see imchat/sqlite.h). The loop thread makes operations through
 * the vtables; at the end of every loop turn a hook submits them
 * (imc_sqlite_submit) and wakes the storage thread, which runs batches
 * (imc_sqlite_run_batch: one transaction each, commits and WAL
 * checkpoints included) until none is left, and signals an eventfd after
 * each. The loop watches the eventfd; the imc_sqlite's deadline is then 0
 * and the host's dispatch hook completes the batch's operations
 * (imc_sqlite_dispatch), which also closes operations that waited the
 * batch wait (imc_sqlite_set_batch_wait_ms) into a submission; a second
 * hook wakes the loop at that deadline for operations made after the
 * end-of-turn hook. So the network loop never waits on the disk:
 * while a batch commits it keeps reading sockets, and what it queues
 * meanwhile forms the next batch.
 *
 * Without a thread (threaded = 0, or after hstorage_stop) the same hook
 * runs the batches on the loop thread: the synchronous form, for tests
 * and for the drain at shutdown.
 *
 * Functions returning int return 0 or a negative errno value; loop
 * thread only.
 */
#ifndef IMC_HOST_STORAGE_H
#define IMC_HOST_STORAGE_H

#include "loop.h"

#include <imchat/sqlite.h>

typedef struct hstorage hstorage;

/*
 * Switches db to group commit with batches of up to max_ops operations,
 * adds the end-of-turn hook to loop (add it after the hooks that make
 * operations, so their work of the turn joins the same submission) and,
 * if threaded, the eventfd watcher and the storage thread. db and loop
 * must outlive the object.
 */
int hstorage_new(hstorage **out, hloop *loop, imc_sqlite *db, uint32_t max_ops,
                 int threaded);

/*
 * Joins the storage thread after it ran everything submitted; from then
 * on batches run on the loop thread. Idempotent.
 */
void hstorage_stop(hstorage *s);

/* Submits and runs what is queued now (synchronously once stopped). */
void hstorage_flush(hstorage *s);

/* Stops the thread, removes the hook and the watcher. NULL is a no-op.
 * Delete it before db. */
void hstorage_del(hstorage *s);

#endif
