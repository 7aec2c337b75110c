/* imchat - the in-process bus (embedded default). */
#ifndef IMCHAT_MEMBUS_H
#define IMCHAT_MEMBUS_H

#include <imchat/backend.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * In-process bus: topics in memory, for group_msg fan-out inside one
 * process. Not durable. publish and commit complete before returning;
 * polls complete only from imc_membus_dispatch(), with the same rules as
 * imc_sqlite_dispatch(): the host runs it whenever
 * imc_membus_next_timeout_ms() is 0, and never sleeps while it is.
 * Offsets start at 1 per topic, in partition 0. The bus has one consumer
 * per group, so it never revokes a partition (no IMC_ERR_REVOKED).
 * A consumer group is known to a topic from its first poll or commit;
 * a record is freed once every known group has committed it, and a group
 * that joins later starts from the oldest record kept. At most
 * max_records records (default 65536) are kept over all topics: publish
 * beyond returns IMC_ERR_QUEUE_FULL.
 *
 * Operations return IMC_ERR_INVALID_ARGUMENT (NULL or empty names, max 0,
 * partition other than 0), IMC_ERR_NOMEM, IMC_ERR_QUEUE_FULL (publish)
 * or IMC_ERR_EXISTS (a poll of that topic and group is outstanding).
 */
typedef struct imc_membus imc_membus;

/* mem may be NULL (malloc). Returns 0, IMC_ERR_INVALID_ARGUMENT (out
 * NULL) or IMC_ERR_NOMEM. */
IMC_EXTERN int imc_membus_new(imc_membus **out, const imc_mem *mem);
/* Outstanding polls complete first with IMC_ERR_CLOSED. NULL is a no-op. */
IMC_EXTERN void imc_membus_del(imc_membus *bus);
IMC_EXTERN void imc_membus_set_user_data(imc_membus *bus, void *ud);
IMC_EXTERN void *imc_membus_get_user_data(const imc_membus *bus);
/* The vtable; its ud is the imc_membus. */
IMC_EXTERN const imc_bus_vtbl *imc_membus_vtbl(void);
/*
 * Complete the outstanding polls that have records; returns how many
 * (call again before blocking if positive), or IMC_ERR_INVALID_ARGUMENT
 * (bus NULL). A poll that cannot get memory completes with
 * IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_membus_dispatch(imc_membus *bus);
/*
 * The wakeup of the deferred completions: 0 if imc_membus_dispatch()
 * would complete a poll now (an outstanding poll has records after its
 * position), -1 if nothing is ready (or bus is NULL). Never positive.
 * Cheap: call it before every wait of the event loop; imc_membus_dispatch()
 * is the "on timeout" action.
 */
IMC_EXTERN int64_t imc_membus_next_timeout_ms(const imc_membus *bus);
/*
 * Bound the records kept over all topics. Lowering it below the current
 * count refuses publishes until consumers catch up. Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT (bus NULL or max 0).
 */
IMC_EXTERN int imc_membus_set_max_records(imc_membus *bus, size_t max);
/* Records currently kept over all topics (for metrics and tests). */
IMC_EXTERN size_t imc_membus_size(imc_membus *bus);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_MEMBUS_H */
