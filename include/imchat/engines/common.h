/*
 * imchat - what the real engines (libimchat-engines) share: the host's
 * event loop as they see it, and durable high-water marks for counters.
 *
 * libimchat-engines implements the backend vtables of backend.h on real
 * servers: Redis (redis.h), MariaDB/MySQL (mariadb.h), etcd (etcd.h) and
 * Kafka (kafka.h). Unlike libimchat it talks to sockets, but it still
 * owns no event loop and starts no thread of its own (librdkafka's
 * threads are the client library's and reach the loop through an fd):
 * every engine is given an imc_loop, the host's loop behind a small
 * vtable, in the manner of hiredis' adapters. An embedder on libuv or
 * libevent writes one short adapter; hosts/common implements it on epoll.
 *
 * Like the rest of libimchat, each engine object belongs to the thread
 * that runs its loop, and completions run from that loop.
 */
#ifndef IMCHAT_ENGINES_COMMON_H
#define IMCHAT_ENGINES_COMMON_H

#include <imchat/backend.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ */
/* The host's event loop                                                */
/* ------------------------------------------------------------------ */

#define IMC_LOOP_READ 0x1u
#define IMC_LOOP_WRITE 0x2u
/* Reported only: the fd is in error or hung up (the engine reads or
 * writes to learn why). */
#define IMC_LOOP_ERROR 0x4u

/* fd is ready for the IMC_LOOP_* bits of events. */
typedef void (*imc_loop_fd_cb)(void *cb_ud, int fd, unsigned events);
typedef void (*imc_loop_timer_cb)(void *cb_ud);

/*
 * The loop. Handles are the loop's own (opaque to the engine); a callback
 * may add, change or remove any watch or timer, its own included, and
 * after remove/stop returns the callback is not called again for it.
 */
typedef struct imc_loop_vtbl {
  uint32_t struct_size;
  /*
   * Watch fd (not owned by the loop) for events (IMC_LOOP_READ and/or
   * IMC_LOOP_WRITE; 0 watches nothing until fd_set). Level-triggered:
   * cb runs on every turn while the fd is ready. Sets *handle and
   * returns 0, or a negative IMC_ERR_* (IMC_ERR_NOMEM, IMC_ERR_IO).
   */
  int (*fd_add)(void *ud, int fd, unsigned events, imc_loop_fd_cb cb,
                void *cb_ud, void **handle);
  /* Change the events watched. Returns 0 or a negative IMC_ERR_*. */
  int (*fd_set)(void *ud, void *handle, unsigned events);
  /* Stop watching; handle is invalid afterwards. The fd stays open. */
  void (*fd_del)(void *ud, void *handle);
  /*
   * Call cb once, after at least ms milliseconds (0: on the next turn).
   * Sets *handle and returns 0, or IMC_ERR_NOMEM.
   */
  int (*timer_add)(void *ud, int64_t ms, imc_loop_timer_cb cb, void *cb_ud,
                   void **handle);
  /* Cancel a timer that has not fired; handle is invalid afterwards. A
   * timer that fired is already gone: do not delete it. */
  void (*timer_del)(void *ud, void *handle);
} imc_loop_vtbl;

/* A loop as an engine is given one: the vtable and its ud. Both are
 * borrowed and must outlive the engine. */
typedef struct imc_loop {
  const imc_loop_vtbl *vtbl;
  void *ud;
} imc_loop;

/* ------------------------------------------------------------------ */
/* Durable high-water marks                                             */
/* ------------------------------------------------------------------ */

/* Completion of floor get: mark is 0 for a counter never raised. */
typedef void (*imc_mark_cb)(void *done_ud, int status, uint64_t mark);

/*
 * Durable high-water marks of named counters: a value no counter has
 * gone past. An engine whose own counters may be lost (Redis restarted
 * empty, or failed over to a replica that lagged) raises the mark ahead
 * of the values it hands out and, when it cannot trust a counter, starts
 * it above the mark, so a sequence never goes backwards. The MariaDB
 * engine keeps them (imc_mariadb_marks_vtbl). Rules as in backend.h.
 */
typedef struct imc_marks_vtbl {
  uint32_t struct_size;
  /* key's mark. Completes with (0, mark) or (negative code, 0). */
  int (*get)(void *ud, const char *key, imc_mark_cb done, void *done_ud);
  /*
   * Raise key's mark to at least value, durably before done runs with 0;
   * a mark never goes down (a lower value leaves it as it is).
   */
  int (*raise)(void *ud, const char *key, uint64_t value, imc_done_cb done,
               void *done_ud);
} imc_marks_vtbl;

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_ENGINES_COMMON_H */
