#include "util/log.h"

#include <stdarg.h>
#include <stdio.h>

void imc_logf(const imc_logger *lg, imc_log_level level, const char *fmt, ...) {
  if (lg->cb == NULL || level > lg->level)
    return;
  char line[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  lg->cb(lg->ud, level, line);
}

int imc_logger_assign(imc_logger *lg, imc_log_cb cb, void *ud,
                      imc_log_level max_level) {
  lg->cb = cb;
  lg->ud = ud;
  lg->level = max_level;
  return 0;
}
