/* Trampoline from the server's log hook to the Go export. */
#include "log.h"

#include "_cgo_export.h"

static void on_log(void *ud, imc_log_level level, const char *line) {
  imcgoServerLog((uintptr_t)ud, level, (char *)line);
}

void imcgo_server_set_log(imc_server *s, uintptr_t h) {
  imc_server_set_log(s, on_log, (void *)h);
}
