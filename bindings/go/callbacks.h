/*
 * The C side of the Go callbacks: trampolines that adapt libimchat's
 * callback signatures (const strings, a void * user pointer) to the
 * functions exported by callbacks.go, which take the runtime/cgo.Handle
 * of their Go object as an integer. No Go pointer is ever stored in C.
 */
#ifndef IMCHAT_GO_CALLBACKS_H
#define IMCHAT_GO_CALLBACKS_H

#include <stdint.h>

#include <imchat/client.h>

/*
 * Sets every client callback, and the log hook when log_level >= 0, with
 * the handle h as user pointer. Returns 0 or the setter's IMC_ERR_*.
 */
int imcgo_client_options_set_hooks(imc_client_options *opt, uintptr_t h,
                                   int log_level);

/*
 * imc_client_history_response with the history callback bound to the
 * handle h (each message of the page goes to imcgoHistory), or, when h
 * is 0, with no callback (the messages go through the inbox).
 */
int imcgo_client_history_response(imc_client *c, const uint8_t *data,
                                  size_t len, uintptr_t h,
                                  uint64_t *next_after_seq);

#endif
