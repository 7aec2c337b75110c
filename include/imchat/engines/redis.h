/*
 * imchat engines - Redis: sequence numbers and the dedup set.
 *
 * One imc_redis holds one connection to a Redis server (hiredis' async
 * API on the host's imc_loop) and serves two vtables of backend.h:
 *
 *  - imc_seq_vtbl: next(key) is an INCR of the counter, pipelined with
 *    every other command of the turn. Sequence numbers never go
 *    backwards, even when Redis restarts empty or fails over to a replica
 *    that lagged: a durable high-water mark per counter (imc_marks_vtbl,
 *    e.g. the MariaDB engine's) is raised a block ahead of the values
 *    handed out, a value above the mark is handed out only once the raise
 *    is durable, and a counter Redis may have lost (missing, gone
 *    backwards, or on a server whose run id changed since the last
 *    connection) is first set above its mark. After such a loss a counter
 *    jumps ahead (a gap) but never repeats.
 *  - imc_dedup_vtbl: test_and_set is one atomic script (GET, else SET
 *    with EX), set is SET EX, get is GET, compare_and_set one atomic
 *    script (GET, and SET with EX if it equals the expected bytes).
 *
 * Failures. While the connection is down every operation fails at once
 * with IMC_ERR_UNAVAILABLE (the return code); an operation that gets no
 * answer within the operation timeout fails with IMC_ERR_UNAVAILABLE and
 * drops the connection, since its fate is unknown. The engine reconnects
 * by itself, with exponential backoff.
 *
 * Threads: one imc_redis belongs to the thread running its loop, and
 * completions run from that loop. It starts no thread.
 */
#ifndef IMCHAT_ENGINES_REDIS_H
#define IMCHAT_ENGINES_REDIS_H

#include <imchat/engines/common.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct imc_redis imc_redis;
typedef struct imc_redis_options imc_redis_options;

/* Creates options with the defaults. Returns 0, IMC_ERR_INVALID_ARGUMENT
 * (out NULL) or IMC_ERR_NOMEM. */
IMC_EXTERN int imc_redis_options_new(imc_redis_options **out);
IMC_EXTERN void imc_redis_options_del(imc_redis_options *opt);

/*
 * The server, "host:port" or "[v6]:port" (default "127.0.0.1:6379"); use
 * an IP address: hiredis resolves names with a blocking call. Copied.
 * Returns 0, IMC_ERR_INVALID_ARGUMENT (malformed) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_redis_options_set_address(imc_redis_options *opt,
                                             const char *address);
/*
 * Prepended to every key (default "imc:"), so one Redis can serve several
 * deployments; 1..128 bytes. Copied. Returns 0, IMC_ERR_INVALID_ARGUMENT
 * or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_redis_options_set_prefix(imc_redis_options *opt,
                                            const char *prefix);
/*
 * How long a command may wait for its answer, 10..600000 ms (default
 * 2000). Returns 0 or IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_redis_options_set_timeout_ms(imc_redis_options *opt,
                                                int64_t ms);
/*
 * Reconnect backoff: first wait min_ms, doubling up to max_ms (defaults
 * 100 and 5000; 1 <= min_ms <= max_ms <= 600000). Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_redis_options_set_reconnect(imc_redis_options *opt,
                                               int64_t min_ms, int64_t max_ms);
/*
 * The durable marks of the counters (e.g. imc_mariadb_marks_vtbl() and
 * its engine), borrowed: ud must outlive the engine. Without marks the
 * seq vtable refuses every call (IMC_ERR_INVALID_ARGUMENT): a counter
 * that Redis alone holds could go backwards. The vtable is copied.
 * Returns 0 or IMC_ERR_INVALID_ARGUMENT (vtbl NULL or too small).
 */
IMC_EXTERN int imc_redis_options_set_marks(imc_redis_options *opt,
                                           const imc_marks_vtbl *vtbl,
                                           void *ud);
/*
 * How far ahead of the values a mark is raised, 1..10000000 (default
 * 1000): one write to the marks per counter per block. Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_redis_options_set_seq_block(imc_redis_options *opt,
                                               uint32_t block);

/*
 * Creates the engine on loop (borrowed: it must outlive the engine) with
 * a copy of opt, and starts connecting. Returns 0, or
 * IMC_ERR_INVALID_ARGUMENT (out, loop or opt NULL) / IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_redis_new(imc_redis **out, const imc_loop *loop,
                             const imc_redis_options *opt);

/*
 * Completes every operation still waiting with IMC_ERR_CLOSED and closes
 * the connection. Raises of marks still out are left to finish: the last
 * of the engine's memory is released when the marks backend completes
 * them (so delete the marks backend after the engine).
 */
IMC_EXTERN void imc_redis_del(imc_redis *r);

/* The vtables; their ud is the imc_redis. */
IMC_EXTERN const imc_seq_vtbl *imc_redis_seq_vtbl(void);
IMC_EXTERN const imc_dedup_vtbl *imc_redis_dedup_vtbl(void);

/*
 * 0 while connected to a server that answers, IMC_ERR_UNAVAILABLE while
 * not (connecting, or waiting to reconnect): what a host's /readyz
 * reports.
 */
IMC_EXTERN int imc_redis_health(const imc_redis *r);

/* Why the connection last failed ("" if it never did); for logs. */
IMC_EXTERN const char *imc_redis_errmsg(const imc_redis *r);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_ENGINES_REDIS_H */
