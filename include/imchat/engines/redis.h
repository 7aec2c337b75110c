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
 *    with EX), set is SET EX, get is GET.
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

/*
 * Settings. Zero members take their defaults; struct_size first, as in
 * the vtables (members are only appended).
 */
typedef struct imc_redis_options {
  uint32_t struct_size;
  const char *host; /* default "127.0.0.1" */
  uint16_t port;    /* default 6379 */
  /* Prepended to every key (default "imc:"), so one Redis can serve
   * several deployments. */
  const char *key_prefix;
  int64_t op_timeout_ms;    /* default 2000 */
  int64_t reconnect_min_ms; /* first backoff, default 100 */
  int64_t reconnect_max_ms; /* backoff cap, default 5000 */
  /*
   * The durable marks of the counters, borrowed (must outlive the
   * engine). Without them the seq vtable refuses every call
   * (IMC_ERR_INVALID_ARGUMENT): a counter that Redis alone holds could go
   * backwards.
   */
  const imc_marks_vtbl *marks;
  void *marks_ud;
  /* How far ahead of the values a mark is raised (default 1000). */
  uint32_t seq_block;
} imc_redis_options;

/*
 * Creates the engine and starts connecting. Returns 0, or
 * IMC_ERR_INVALID_ARGUMENT (loop or opt NULL, struct_size too small) /
 * IMC_ERR_NOMEM. Strings in opt are copied.
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
IMC_EXTERN const char *imc_redis_last_error(const imc_redis *r);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_ENGINES_REDIS_H */
