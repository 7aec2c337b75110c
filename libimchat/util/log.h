/* The log hook of a library object: a callback, its user pointer and the
 * most verbose level wanted. */
#ifndef IMC_LOG_H
#define IMC_LOG_H

#include <imchat/common.h>

typedef struct imc_logger {
  imc_log_cb cb; /* NULL: logging off */
  void *ud;
  imc_log_level level;
} imc_logger;

/* Sets the hook (cb NULL: logging off). Returns 0. */
int imc_logger_assign(imc_logger *lg, imc_log_cb cb, void *ud,
                      imc_log_level max_level);

/* Formats one line (truncated at 255 bytes) and hands it to the hook. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
void imc_logf(const imc_logger *lg, imc_log_level level, const char *fmt, ...);

#endif /* IMC_LOG_H */
