/*
 * The server's log hook, bound to a runtime/cgo.Handle of the Go
 * function (passed as an integer: no Go pointer is stored in C).
 */
#ifndef IMCHAT_GO_SERVER_LOG_H
#define IMCHAT_GO_SERVER_LOG_H

#include <stdint.h>

#include <imchat/server.h>

/* imc_server_set_log with the trampoline to imcgoServerLog and ud h. */
void imcgo_server_set_log(imc_server *s, uintptr_t h);

#endif
