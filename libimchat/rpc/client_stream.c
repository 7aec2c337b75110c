/*
 * nghttp2's callbacks on the client: the response head and trailers of
 * each call (HTTP status, content-type, grpc-status, grpc-message,
 * imc-error), its one message, and its completion when the stream ends.
 */
#include "rpc/rpc_int.h"

#include <string.h>

#define IS(name, len, lit)                                                     \
  ((len) == sizeof(lit) - 1 && memcmp((name), (lit), sizeof(lit) - 1) == 0)

static rpc_ccall *call_of(nghttp2_session *h2, int32_t stream_id) {
  return nghttp2_session_get_stream_user_data(h2, stream_id);
}

static int on_header(nghttp2_session *h2, const nghttp2_frame *frame,
                     const uint8_t *name, size_t namelen, const uint8_t *value,
                     size_t valuelen, uint8_t flags, void *ud) {
  imc_grpc_client *c = ud;
  rpc_ccall *call = call_of(h2, frame->hd.stream_id);
  if (call == NULL || call->completed)
    return 0;
  if (IS(name, namelen, ":status")) {
    int st = 0;
    for (size_t i = 0; i < valuelen && i < 3; i++)
      st = st * 10 + (value[i] - '0');
    call->http_status = st;
  } else if (IS(name, namelen, "content-type")) {
    call->ct_ok = rpc_grpc_content_type(value, valuelen);
  } else if (IS(name, namelen, "grpc-status")) {
    call->grpc_status = rpc_status_parse(value, valuelen);
  } else if (IS(name, namelen, "grpc-message")) {
    imc_free(&c->mem, call->message);
    /* Without memory the message is lost, not the status. */
    call->message = rpc_pct_decode(&c->mem, value, valuelen);
  } else if (IS(name, namelen, RPC_IMC_ERROR)) {
    if (rpc_error_parse(value, valuelen, &call->error) < 0)
      call->error = 0;
  }
  return 0;
}

/* The server ended the stream (reset_code < 0) or it was reset with
 * reset_code: complete the call from what arrived. */
static void finish(rpc_ccall *call, int reset_code) {
  imc_grpc_client *c = call->c;
  if (call->completed)
    return;
  if (call->grpc_status > IMC_GRPC_OK) {
    rpc_ccall_complete(call, call->grpc_status, call->error, call->message,
                       NULL, 0, 0);
  } else if (call->grpc_status == IMC_GRPC_OK && call->http_status == 200 &&
             call->ct_ok) {
    const uint8_t *msg;
    size_t len;
    if (rpc_msgin_finish(&call->in, &msg, &len) == 0)
      rpc_ccall_complete(call, IMC_GRPC_OK, 0, NULL, msg, len, 0);
    else
      rpc_ccall_complete(call, IMC_GRPC_INTERNAL, 0,
                         "no complete response message", NULL, 0, 0);
  } else if (call->http_status != 0 && call->http_status != 200) {
    rpc_ccall_complete(call, rpc_status_from_http(call->http_status), 0,
                       "HTTP status without grpc-status", NULL, 0, 0);
  } else if (reset_code > 0) {
    rpc_ccall_complete(call, rpc_status_from_h2((uint32_t)reset_code), 0,
                       reset_code == NGHTTP2_REFUSED_STREAM
                           ? "stream refused by the server"
                           : "stream reset by the server",
                       NULL, 0, 0);
  } else if (call->http_status == 200 && !call->ct_ok) {
    rpc_ccall_complete(call, IMC_GRPC_UNKNOWN, 0,
                       "response content-type is not application/grpc", NULL, 0,
                       0);
  } else {
    rpc_ccall_complete(call, IMC_GRPC_INTERNAL, 0,
                       "response without grpc-status", NULL, 0, 0);
  }
  rpc_msgin_free(&call->in, &c->mem, &c->budget);
}

static int on_data(nghttp2_session *h2, uint8_t flags, int32_t stream_id,
                   const uint8_t *data, size_t len, void *ud) {
  imc_grpc_client *c = ud;
  rpc_ccall *call = call_of(h2, stream_id);
  if (call == NULL || call->completed || call->http_status != 200 ||
      !call->ct_ok)
    return 0;
  int rv =
      rpc_msgin_add(&call->in, &c->mem, data, len, c->max_message, &c->budget);
  if (rv == 0)
    return 0;
  switch (rv) {
  case RPC_MSG_TOO_LARGE:
    rpc_ccall_complete(call, IMC_GRPC_RESOURCE_EXHAUSTED, 0,
                       "response message larger than the client's limit", NULL,
                       0, 1);
    break;
  case RPC_MSG_COMPRESSED:
    rpc_ccall_complete(call, IMC_GRPC_INTERNAL, 0,
                       "compressed response, which was not asked for", NULL, 0,
                       1);
    break;
  case RPC_MSG_MANY:
    rpc_ccall_complete(call, IMC_GRPC_INTERNAL, 0,
                       "more than one response message in a unary call", NULL,
                       0, 1);
    break;
  case RPC_MSG_BAD_FLAG:
    rpc_ccall_complete(call, IMC_GRPC_INTERNAL, 0, "malformed message prefix",
                       NULL, 0, 1);
    break;
  default:
    rpc_ccall_complete(call, IMC_GRPC_RESOURCE_EXHAUSTED, 0,
                       "client out of memory", NULL, 0, 1);
    break;
  }
  rpc_msgin_free(&call->in, &c->mem, &c->budget);
  return 0;
}

static int on_frame_recv(nghttp2_session *h2, const nghttp2_frame *frame,
                         void *ud) {
  imc_grpc_client *c = ud;
  if (frame->hd.type == NGHTTP2_GOAWAY) {
    if (c->state == CL_OPEN)
      c->state = CL_DRAIN;
    imc_logf(&c->log, IMC_LOG_DEBUG, "grpc: GOAWAY (error %u)",
             frame->goaway.error_code);
    return 0;
  }
  if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
      (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
    rpc_ccall *call = call_of(h2, frame->hd.stream_id);
    if (call)
      finish(call, -1);
  }
  return 0;
}

static int on_stream_close(nghttp2_session *h2, int32_t stream_id,
                           uint32_t error_code, void *ud) {
  rpc_ccall *call = call_of(h2, stream_id);
  if (call == NULL)
    return 0;
  finish(call, (int)error_code);
  rpc_ccall_free(call);
  return 0;
}

void rpc_client_callbacks(nghttp2_session_callbacks *cbs) {
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
}
