/*
 * imchat - common definitions of libimchat: export macro, error codes,
 * the per-instance allocator, the clock and the log hook.
 *
 * libimchat keeps no global state, starts no threads, never prints and
 * never exits. Every object is created with imc_X_new(&out, ..., mem) and
 * released with imc_X_del(); a NULL mem means malloc/free.
 */
#ifndef IMCHAT_COMMON_H
#define IMCHAT_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(IMC_BUILDING_LIBRARY) && defined(__GNUC__)
#define IMC_EXTERN __attribute__((visibility("default")))
#else
#define IMC_EXTERN
#endif

/*
 * Error codes. Every function that can fail returns 0 (or a count) on
 * success and one of these negative values on failure. Codes at or below
 * IMC_ERR_FATAL leave the object unusable: only its _del is legal then.
 */
typedef enum imc_error {
  IMC_OK = 0,
  IMC_ERR_INVALID_ARGUMENT = -501, /* a parameter is out of its domain */
  IMC_ERR_NOMEM = -502,            /* an allocation failed; nothing changed */
  IMC_ERR_WOULDBLOCK = -503,       /* transport: try again when writable */
  IMC_ERR_PROTO = -504,            /* malformed input from a peer */
  IMC_ERR_INCOMPLETE = -505,       /* parser: more input is needed */
  IMC_ERR_TOO_LARGE = -506,        /* input exceeds a configured limit */
  IMC_ERR_NOT_FOUND = -507,        /* no such key, connection or user */
  IMC_ERR_AUTH = -508,             /* credentials missing or invalid */
  IMC_ERR_EXPIRED = -509,          /* credentials expired or not yet valid */
  IMC_ERR_FORBIDDEN = -510,        /* authenticated but not allowed */
  IMC_ERR_UNAVAILABLE = -511,      /* a backend cannot serve right now */
  IMC_ERR_CLOSED = -512,           /* the connection or object is closing */
  IMC_ERR_QUEUE_FULL = -513,       /* a bounded queue has no room */
  IMC_ERR_RATE_LIMITED = -514,     /* a rate limit was exceeded */
  IMC_ERR_BLOCKED = -515,          /* rejected by the content filter */
  IMC_ERR_IO = -516,               /* an I/O or storage operation failed */
  IMC_ERR_EXISTS = -517,           /* the key already exists */
  IMC_ERR_REVOKED = -518,          /* bus: the partition has another owner */
  IMC_ERR_FATAL = -900,            /* threshold; not returned itself */
  IMC_ERR_CALLBACK_FAILURE = -901, /* a vtable call reported a fatal error */
  IMC_ERR_INTERNAL = -902          /* a broken invariant inside libimchat */
} imc_error;

/* A static English description of rv; never NULL. */
IMC_EXTERN const char *imc_strerror(int rv);

/* Nonzero if rv leaves the object that returned it unusable. */
IMC_EXTERN int imc_err_is_fatal(int rv);

/* The library version string, e.g. "0.1.0". */
IMC_EXTERN const char *imc_version(void);

/*
 * Per-instance allocator. Every callback receives ud. A NULL imc_mem
 * pointer given to a constructor selects malloc/calloc/realloc/free.
 */
typedef struct imc_mem {
  void *ud;
  void *(*malloc)(size_t size, void *ud);
  void (*free)(void *ptr, void *ud);
  void *(*calloc)(size_t nmemb, size_t size, void *ud);
  void *(*realloc)(void *ptr, size_t size, void *ud);
} imc_mem;

/*
 * Clock. now_ms is monotonic milliseconds and drives every timer;
 * wall_ms is Unix time in milliseconds and stamps messages. A NULL
 * imc_clock pointer selects CLOCK_MONOTONIC and CLOCK_REALTIME. Tests
 * pass a fake clock.
 */
typedef struct imc_clock {
  void *ud;
  int64_t (*now_ms)(void *ud);
  int64_t (*wall_ms)(void *ud);
} imc_clock;

typedef enum imc_log_level {
  IMC_LOG_ERROR = 0,
  IMC_LOG_WARN = 1,
  IMC_LOG_INFO = 2,
  IMC_LOG_DEBUG = 3
} imc_log_level;

/*
 * Log hook. The library hands one line (without newline, valid only for
 * the duration of the call) to the host, which decides where it goes.
 */
typedef void (*imc_log_cb)(void *ud, imc_log_level level, const char *line);

/*
 * Completion of a backend operation. status is 0 or a negative IMC_ERR_*.
 * Every backend operation that takes a completion calls it exactly once,
 * either before returning 0 or later from the host's event loop; if the
 * operation returns a negative code, the completion is never called.
 */
typedef void (*imc_done_cb)(void *done_ud, int status);

/*
 * Ids (users, devices, groups): 1..64 bytes of [A-Za-z0-9_.@-].
 * Returns 1 if the len bytes at id form a valid id, else 0.
 */
IMC_EXTERN int imc_id_valid(const char *id, size_t len);

#define IMC_ID_MAX 64

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_COMMON_H */
