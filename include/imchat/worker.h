/*
 * imchat - the offline worker: persists what the router queued.
 *
 * The worker polls the durable offline queue in batches. For each batch
 * it skips jobs the dedup set has already seen, writes the rest to the
 * store in one transaction, marks them in the dedup set, and only then
 * commits the queue: a crash at any point loses nothing, and a job seen by
 * the dedup set is not written twice. A batch may span partitions: the
 * worker commits the highest offset of each. A failed step is retried
 * with backoff; nothing is committed until it succeeds. A commit that
 * completes with IMC_ERR_REVOKED (a rebalance gave the partition to
 * another worker, see imc_bus_vtbl) is not retried: the new owner gets
 * the records again and finds them in the dedup set. A periodic job
 * purges messages older than the retention.
 *
 * One worker belongs to one thread; it never blocks.
 */
#ifndef IMCHAT_WORKER_H
#define IMCHAT_WORKER_H

#include <imchat/backend.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct imc_worker imc_worker;
typedef struct imc_worker_options imc_worker_options;

/*
 * Called once per job of a committed batch: msg is in its history
 * (history != 0) and/or in the inboxes of users. Jobs found in the dedup
 * set are reported too, since a run that died before its commit never
 * reported them: the receiver ignores repeats. Arguments are valid during
 * the call; the hook may stop the worker but not delete it.
 * imc_router_persisted has this shape.
 */
typedef void (*imc_persisted_cb)(void *ud, const imc_msg *msg, int history,
                                 const char *const *users, size_t n_users);

/* Returns 0, IMC_ERR_INVALID_ARGUMENT or IMC_ERR_NOMEM. */
IMC_EXTERN int imc_worker_options_new(imc_worker_options **out,
                                      const imc_mem *mem);
IMC_EXTERN void imc_worker_options_del(imc_worker_options *opt);

/*
 * Required: the offline queue (poll, commit), the store (append; without
 * purge there is no retention run) and the dedup set (get, set).
 * Vtables are copied; each ud is borrowed and must outlive the worker.
 * Each setter returns 0 or IMC_ERR_INVALID_ARGUMENT (NULL opt or vt, a
 * value of 0, a batch_max over 65536).
 */
IMC_EXTERN int imc_worker_options_set_queue(imc_worker_options *opt,
                                            const imc_bus_vtbl *vt, void *ud);
IMC_EXTERN int imc_worker_options_set_store(imc_worker_options *opt,
                                            const imc_store_vtbl *vt, void *ud);
IMC_EXTERN int imc_worker_options_set_dedup(imc_worker_options *opt,
                                            const imc_dedup_vtbl *vt, void *ud);
IMC_EXTERN int imc_worker_options_set_persisted(imc_worker_options *opt,
                                                imc_persisted_cb cb, void *ud);
IMC_EXTERN int imc_worker_options_set_clock(imc_worker_options *opt,
                                            const imc_clock *clock);
IMC_EXTERN int imc_worker_options_set_log(imc_worker_options *opt,
                                          imc_log_cb cb, void *ud,
                                          imc_log_level max_level);
/* Jobs per batch (default 256). */
IMC_EXTERN int imc_worker_options_set_batch_max(imc_worker_options *opt,
                                                uint32_t n);
/* Messages older than this are purged (default 7 days). */
IMC_EXTERN int imc_worker_options_set_retention_s(imc_worker_options *opt,
                                                  uint32_t s);
/* How often the purge runs (default 3600 s; the first run is at start). */
IMC_EXTERN int imc_worker_options_set_purge_interval_s(imc_worker_options *opt,
                                                       uint32_t s);
/* How long persisted jobs stay in the dedup set (default 7 days). */
IMC_EXTERN int imc_worker_options_set_dedup_ttl_s(imc_worker_options *opt,
                                                  uint32_t s);
/*
 * The queue's topic (default "offline_msg", as the router publishes) and
 * the worker's consumer group on it (default "worker"; every worker of a
 * deployment shares it, so each job is persisted by one of them). The
 * string is copied. Returns 0 or IMC_ERR_INVALID_ARGUMENT (NULL opt, a
 * NULL or empty name, a name of 128 bytes or more).
 */
IMC_EXTERN int imc_worker_options_set_topic(imc_worker_options *opt,
                                            const char *topic);
IMC_EXTERN int imc_worker_options_set_group(imc_worker_options *opt,
                                            const char *group);

/*
 * Creates a worker. Returns 0, IMC_ERR_INVALID_ARGUMENT (a required
 * vtable is missing) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_worker_new(imc_worker **out, const imc_worker_options *opt,
                              const imc_mem *mem);
/*
 * The host must let pending backend operations complete first, and close
 * or delete the queue backend before the worker (see imc_worker_stop()).
 * NULL is a no-op.
 */
IMC_EXTERN void imc_worker_del(imc_worker *w);

IMC_EXTERN void imc_worker_set_user_data(imc_worker *w, void *ud);
IMC_EXTERN void *imc_worker_get_user_data(const imc_worker *w);

/*
 * Starts consuming (the first poll) and runs the first purge. Returns 0
 * (also if already started), IMC_ERR_INVALID_ARGUMENT (w NULL) or the
 * error of the queue's poll (the worker retries it on its timer then).
 * After imc_worker_stop() it resumes.
 */
IMC_EXTERN int imc_worker_start(imc_worker *w);

/*
 * Stop polling for new batches and stop the purge; the batch in flight
 * completes (a failing step keeps retrying on the timer). Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT (w NULL). imc_worker_pending() becomes 0 when
 * the batch is done.
 *
 * The poll made before the stop may stay outstanding, since a queue
 * completes a poll only when records arrive. It no longer counts as
 * pending: should it deliver, the records are persisted as one more
 * batch (pending rises again); should it fail, nothing is retried. To
 * shut down, stop the worker, run the loop until imc_worker_pending() is
 * 0, close or delete the queue backend (which completes the poll, e.g.
 * the embedded queues with IMC_ERR_CLOSED), then delete the worker.
 */
IMC_EXTERN int imc_worker_stop(imc_worker *w);

/*
 * Backend operations not yet completed, a poll included (until
 * imc_worker_stop()), plus one while a batch waits for a retry.
 */
IMC_EXTERN size_t imc_worker_pending(const imc_worker *w);

/* Timers (retry backoff, purge): as the gateway's. */
IMC_EXTERN int64_t imc_worker_next_timeout_ms(imc_worker *w);
IMC_EXTERN int imc_worker_on_timeout(imc_worker *w);

/*
 * 1 while the last store or queue operation succeeded, 0 while failing.
 * It stays 0 if a delivered batch could not be copied for want of
 * memory: the worker then stops consuming (committing later records
 * would skip it) and the host recreates it; the queue redelivers.
 */
IMC_EXTERN int imc_worker_healthy(const imc_worker *w);

typedef enum imc_worker_stat {
  IMC_WK_STAT_BATCHES = 0,   /* batches committed */
  IMC_WK_STAT_JOBS,          /* jobs persisted */
  IMC_WK_STAT_DUPLICATES,    /* jobs skipped by the dedup set */
  IMC_WK_STAT_BAD_RECORDS,   /* undecodable records (committed, dropped) */
  IMC_WK_STAT_FAILURES,      /* failed steps (each retried) */
  IMC_WK_STAT_LAST_BATCH,    /* gauge: jobs in the last batch */
  IMC_WK_STAT_LAST_BATCH_MS, /* gauge: poll-to-commit time of it */
  IMC_WK_STAT_PURGES,        /* retention runs */
  IMC_WK_STAT_REVOKED,       /* commits refused: partition revoked */
  IMC_WK_STAT_COUNT_
} imc_worker_stat;

IMC_EXTERN uint64_t imc_worker_stat_get(const imc_worker *w,
                                        imc_worker_stat stat);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_WORKER_H */
