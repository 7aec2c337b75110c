/*
 * Answers to calls: a trailers-only HEADERS frame for a failure, or
 * HEADERS, the length-prefixed response in DATA and grpc-status 0 in the
 * trailers; and the imc_grpc_call_* functions of handlers.
 */
#include "rpc/rpc_int.h"

#include <stdio.h>
#include <string.h>

static const nghttp2_nv ok_trailer[] = {RPC_NV("grpc-status", "0", 1)};

static ssize_t read_response(nghttp2_session *h2, int32_t stream_id,
                             uint8_t *buf, size_t length, uint32_t *flags,
                             nghttp2_data_source *source, void *ud) {
  imc_grpc_call *call = source->ptr;
  size_t n = call->out_len - call->out_pos;
  if (n > length)
    n = length;
  memcpy(buf, call->out + call->out_pos, n);
  call->out_pos += n;
  if (call->out_pos == call->out_len) {
    *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    if (nghttp2_submit_trailer(h2, stream_id, ok_trailer, 1) != 0)
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    imc_free(&call->s->mem, call->out);
    call->out = NULL;
  }
  return (ssize_t)n;
}

/* A stream we cannot answer for want of memory. */
static int reset(imc_grpc_call *call) {
  if (nghttp2_submit_rst_stream(call->conn->w.h2, NGHTTP2_FLAG_NONE,
                                call->stream_id, NGHTTP2_INTERNAL_ERROR) != 0)
    call->conn->broken = 1;
  return IMC_ERR_NOMEM;
}

static int answer_failure(imc_grpc_call *call, int http, int status,
                          const char *message, int error) {
  nghttp2_session *h2 = call->conn->w.h2;
  char http_s[8], status_s[8], error_s[8];
  int hn = snprintf(http_s, sizeof(http_s), "%d", http);
  int sn = snprintf(status_s, sizeof(status_s), "%d", status);
  nghttp2_nv nv[6] = {
      RPC_NV(":status", http_s, (size_t)hn),
      RPC_NV("content-type", RPC_CT, sizeof(RPC_CT) - 1),
      RPC_NV("grpc-status", status_s, (size_t)sn),
  };
  size_t n = 3;
  char *enc = NULL;
  if (message != NULL && message[0] != '\0') {
    enc = rpc_pct_encode(&call->s->mem, message);
    if (enc == NULL)
      return reset(call);
    nv[n++] = (nghttp2_nv)RPC_NV("grpc-message", enc, strlen(enc));
  }
  if (error < 0) {
    int en = snprintf(error_s, sizeof(error_s), "%d", error);
    nv[n++] = (nghttp2_nv)RPC_NV(RPC_IMC_ERROR, error_s, (size_t)en);
  }
  int rv = nghttp2_submit_response(h2, call->stream_id, nv, n, NULL);
  imc_free(&call->s->mem, enc);
  return rv != 0 ? reset(call) : 0;
}

static int answer_ok(imc_grpc_call *call, const uint8_t *resp, size_t len) {
  call->out = imc_malloc(&call->s->mem, 5 + len);
  if (call->out == NULL)
    return reset(call);
  rpc_prefix(call->out, len);
  if (len)
    memcpy(call->out + 5, resp, len);
  call->out_len = 5 + len;
  call->out_pos = 0;
  const nghttp2_nv nv[] = {
      RPC_NV(":status", "200", 3),
      RPC_NV("content-type", RPC_CT, sizeof(RPC_CT) - 1),
  };
  nghttp2_data_provider dp = {.source.ptr = call,
                              .read_callback = read_response};
  if (nghttp2_submit_response(call->conn->w.h2, call->stream_id, nv, 2, &dp) !=
      0) {
    imc_free(&call->s->mem, call->out);
    call->out = NULL;
    return reset(call);
  }
  return 0;
}

int rpc_call_answer(imc_grpc_call *call, int http, int status,
                    const char *message, int error, const uint8_t *resp,
                    size_t len) {
  call->flags |= C_ENDED;
  imc_theap_remove(&call->s->timers, &call->timer);
  if (status == IMC_GRPC_OK)
    return answer_ok(call, resp, len);
  return answer_failure(call, http, status, message, error);
}

/* The handler's answer: sent if the call is still on, then the call is
 * no longer the handler's. */
static int finish(imc_grpc_call *call, int status, const char *message,
                  int error, const uint8_t *resp, size_t len) {
  imc_grpc_server *s = call->s;
  call->flags &= ~C_HANDLER;
  s->pending--;
  if (call->conn)
    call->conn->held--;
  int rv = 0;
  if (call->conn && !(call->flags & C_ENDED))
    rv = rpc_call_answer(call, 200, status, message, error, resp, len);
  rpc_call_release(call);
  return rv;
}

int imc_grpc_call_reply(imc_grpc_call *call, int status, const char *message,
                        const uint8_t *resp, size_t len) {
  if (call == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (status < IMC_GRPC_OK || status > IMC_GRPC_UNAUTHENTICATED ||
      (status == IMC_GRPC_OK && resp == NULL && len > 0)) {
    finish(call, IMC_GRPC_INTERNAL, "server answered with a bad status", 0,
           NULL, 0);
    return IMC_ERR_INVALID_ARGUMENT;
  }
  return finish(call, status, message, 0, resp, len);
}

int imc_grpc_call_fail(imc_grpc_call *call, int error, const char *message) {
  if (call == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (error >= 0) {
    finish(call, IMC_GRPC_INTERNAL, "server failed without an error", 0, NULL,
           0);
    return IMC_ERR_INVALID_ARGUMENT;
  }
  return finish(call, imc_grpc_status_from_error(error), message, error, NULL,
                0);
}

int imc_grpc_call_cancelled(const imc_grpc_call *call) {
  return call == NULL || call->conn == NULL || (call->flags & C_ENDED) != 0;
}

void *imc_grpc_call_conn_user_data(const imc_grpc_call *call) {
  return call && call->conn ? call->conn->w.conn_ud : NULL;
}
