/* Leveled logging to stderr for the hosts (see log.h). */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 4096

static imc_log_level max_level = IMC_LOG_INFO;
static _Thread_local const hlog_sink *bound;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void hlog_set_level(imc_log_level level) {
  max_level = level;
}

imc_log_level hlog_get_level(void) {
  return bound ? bound->level : max_level;
}

const hlog_sink *hlog_bind(const hlog_sink *sink) {
  const hlog_sink *prev = bound;
  bound = sink;
  return prev;
}

/* One event, one line: log readers split on newlines. */
static void flatten(char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] == '\n' || s[i] == '\r')
      s[i] = ' ';
}

int hlog_parse_level(const char *s, imc_log_level *out) {
  for (int i = IMC_LOG_ERROR; i <= IMC_LOG_DEBUG; i++) {
    if (strcmp(s, level_names[i]) == 0) {
      *out = (imc_log_level)i;
      return 0;
    }
  }
  return -1;
}

/* The timestamped line on stderr, whatever the level. */
__attribute__((format(printf, 3, 0))) static void to_stderr(imc_log_level level,
                                                            const char *prefix,
                                                            const char *fmt,
                                                            va_list ap) {
  char line[LINE_MAX_BYTES];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  size_t n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
  int m = snprintf(line + n, sizeof(line) - n, ".%03ldZ %-5s %s",
                   ts.tv_nsec / 1000000, level_names[level], prefix);
  if (m > 0)
    n += (size_t)m;
  if (n < sizeof(line)) {
    m = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    if (m > 0)
      n += (size_t)m;
  }
  if (n > sizeof(line) - 2)
    n = sizeof(line) - 2; /* truncated: keep room for the newline */
  flatten(line, n);
  line[n++] = '\n';
  /* A single write keeps lines of concurrent writers whole. */
  ssize_t w = write(STDERR_FILENO, line, n);
  (void)w;
}

/* The message alone, to the bound sink. */
__attribute__((format(printf, 3, 0))) static void
to_sink(imc_log_level level, const char *prefix, const char *fmt, va_list ap) {
  char line[LINE_MAX_BYTES];
  int m = snprintf(line, sizeof(line), "%s", prefix);
  size_t n = m > 0 ? (size_t)m : 0;
  if (n < sizeof(line))
    vsnprintf(line + n, sizeof(line) - n, fmt, ap);
  flatten(line, strlen(line));
  bound->cb(bound->ud, level, line);
}

__attribute__((format(printf, 3, 0))) static void
vlog(imc_log_level level, const char *prefix, const char *fmt, va_list ap) {
  if (level > hlog_get_level())
    return;
  if ((int)level < IMC_LOG_ERROR || level > IMC_LOG_DEBUG)
    level = IMC_LOG_ERROR;
  if (bound)
    to_sink(level, prefix, fmt, ap);
  else
    to_stderr(level, prefix, fmt, ap);
}

__attribute__((format(printf, 3, 4))) static void
stderr_line(imc_log_level level, const char *prefix, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  to_stderr(level, prefix, fmt, ap);
  va_end(ap);
}

void hlog_stderr(imc_log_level level, const char *line) {
  if ((int)level < IMC_LOG_ERROR || level > IMC_LOG_DEBUG)
    level = IMC_LOG_ERROR;
  stderr_line(level, "", "%s", line ? line : "");
}

void hlog(imc_log_level level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog(level, "", fmt, ap);
  va_end(ap);
}

__attribute__((format(printf, 3, 4))) static void
log_prefixed(imc_log_level level, const char *prefix, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog(level, prefix, fmt, ap);
  va_end(ap);
}

void hlog_imc_cb(void *ud, imc_log_level level, const char *line) {
  (void)ud;
  log_prefixed(level, "libimchat: ", "%s", line ? line : "");
}
