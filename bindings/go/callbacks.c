/* Trampolines from libimchat's callbacks to the Go exports. */
#include "callbacks.h"

#include <string.h>

#include "_cgo_export.h"

/*
 * A copy of m that Go may read member by member: members past the
 * sender's struct_size are zero (read as "" and 0).
 */
static void msg_view(imc_msg *v, const imc_msg *m) {
  size_t n = m->struct_size < sizeof(*v) ? m->struct_size : sizeof(*v);
  memset(v, 0, sizeof(*v));
  memcpy(v, m, n);
  v->struct_size = sizeof(*v);
}

static void on_state(void *ud, imc_client_state state, int reason) {
  imcgoState((uintptr_t)ud, state, reason);
}

static void on_message(void *ud, const imc_msg *msg, uint32_t flags,
                       uint64_t last_seq) {
  imc_msg v;
  msg_view(&v, msg);
  imcgoMessage((uintptr_t)ud, &v, flags, last_seq);
}

static void on_send_ack(void *ud, const char *client_msg_id, const char *msg_id,
                        const char *conversation_id, uint64_t seq) {
  imcgoSendAck((uintptr_t)ud, (char *)client_msg_id, (char *)msg_id,
               (char *)conversation_id, seq);
}

static void on_status(void *ud, const char *client_msg_id, const char *msg_id,
                      imc_delivery_state state, const char *user_id) {
  imcgoStatus((uintptr_t)ud, (char *)client_msg_id, (char *)msg_id, state,
              (char *)user_id);
}

static void on_send_error(void *ud, const char *client_msg_id, int error,
                          const char *message) {
  imcgoSendError((uintptr_t)ud, (char *)client_msg_id, error, (char *)message);
}

static void on_log(void *ud, imc_log_level level, const char *line) {
  imcgoLog((uintptr_t)ud, level, (char *)line);
}

static void on_history(void *ud, const imc_msg *msg) {
  imc_msg v;
  msg_view(&v, msg);
  imcgoHistory((uintptr_t)ud, &v);
}

int imcgo_client_options_set_hooks(imc_client_options *opt, uintptr_t h,
                                   int log_level) {
  imc_client_callbacks cb = {
      .struct_size = sizeof(cb),
      .state = on_state,
      .message = on_message,
      .send_ack = on_send_ack,
      .status = on_status,
      .send_error = on_send_error,
  };
  int rv = imc_client_options_set_callbacks(opt, &cb, (void *)h);
  if (rv == 0 && log_level >= 0)
    rv = imc_client_options_set_log(opt, on_log, (void *)h,
                                    (imc_log_level)log_level);
  return rv;
}

int imcgo_client_history_response(imc_client *c, const uint8_t *data,
                                  size_t len, uintptr_t h,
                                  uint64_t *next_after_seq) {
  return imc_client_history_response(c, data, len, h ? on_history : NULL,
                                     (void *)h, next_after_seq);
}
