/*
 * Host logging: one line per event on stderr, prefixed with an ISO-8601
 * UTC timestamp and the level. Shared by every host; the library's log
 * hook is routed here with hlog_imc_cb.
 */
#ifndef IMC_HOST_LOG_H
#define IMC_HOST_LOG_H

#include <imchat/common.h>

/* Lines above level are dropped (default IMC_LOG_INFO). */
void hlog_set_level(imc_log_level level);
imc_log_level hlog_get_level(void);

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
