/*
 * Host logging: one line per event on stderr, prefixed with an ISO-8601
 * UTC timestamp and the level. Shared by every host; the library's log
 * hook is routed here with hlog_imc_cb.
 *
 * A thread may bind a sink (hlog_bind): its lines then go to the sink's
 * callback, filtered at the sink's level, instead. libimchat-server binds
 * one per server while it runs on the caller's thread, so two servers in
 * one process each keep their own level and destination.
 */
#ifndef IMC_HOST_LOG_H
#define IMC_HOST_LOG_H

#include <imchat/common.h>

/* Lines above level are dropped (default IMC_LOG_INFO). */
void hlog_set_level(imc_log_level level);
/* The bound sink's level, else the level set above. */
imc_log_level hlog_get_level(void);

/* Where the calling thread's lines go: cb gets each line (no timestamp)
 * at or below level. */
typedef struct hlog_sink {
  imc_log_level level;
  imc_log_cb cb;
  void *ud;
} hlog_sink;

/* Binds sink to the calling thread (NULL: back to stderr); returns the
 * previous binding, for the caller to restore. sink must outlive it. */
const hlog_sink *hlog_bind(const hlog_sink *sink);

/* Writes line on stderr as hlog does, whatever the level. */
void hlog_stderr(imc_log_level level, const char *line);

/* Parses "error", "warn", "info" or "debug". Returns 0 or -1. */
int hlog_parse_level(const char *s, imc_log_level *out);

/* Writes one line; newlines in the message become spaces. */
void hlog(imc_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define hlog_error(...) hlog(IMC_LOG_ERROR, __VA_ARGS__)
#define hlog_warn(...) hlog(IMC_LOG_WARN, __VA_ARGS__)
#define hlog_info(...) hlog(IMC_LOG_INFO, __VA_ARGS__)
#define hlog_debug(...) hlog(IMC_LOG_DEBUG, __VA_ARGS__)

/* An imc_log_cb for *_options_set_log(); ud is unused. */
void hlog_imc_cb(void *ud, imc_log_level level, const char *line);

#endif
