/*
 * nghttp2's callbacks on a server connection: a call per request stream,
 * its head checked (method, content-type, grpc-timeout, size), its one
 * message reassembled and handed to the method's handler, resets counted
 * against the Rapid Reset bound.
 */
#include "rpc/rpc_int.h"

#include <string.h>

static const rpc_method *find_method(const imc_grpc_server *s,
                                     const uint8_t *path, size_t len) {
  size_t lo = 0, hi = s->n_methods;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    const char *name = s->methods[mid].name;
    size_t nlen = strlen(name);
    int cmp = memcmp(name, path, nlen < len ? nlen : len);
    if (cmp == 0)
      cmp = nlen < len ? -1 : nlen > len;
    if (cmp == 0)
      return &s->methods[mid];
    if (cmp < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

#define IS(name, len, lit)                                                     \
  ((len) == sizeof(lit) - 1 && memcmp((name), (lit), sizeof(lit) - 1) == 0)

static int on_begin_headers(nghttp2_session *h2, const nghttp2_frame *frame,
                            void *ud) {
  imc_grpc_conn *c = ud;
  if (frame->hd.type != NGHTTP2_HEADERS ||
      frame->headers.cat != NGHTTP2_HCAT_REQUEST)
    return 0;
  imc_grpc_call *call = imc_calloc(&c->s->mem, 1, sizeof(*call));
  if (call == NULL)
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  call->s = c->s;
  call->conn = c;
  call->stream_id = frame->hd.stream_id;
  call->flags = C_STREAM;
  imc_timer_init(&call->timer);
  if (nghttp2_session_set_stream_user_data(h2, call->stream_id, call) != 0) {
    imc_free(&c->s->mem, call);
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  call->next = c->calls;
  if (c->calls)
    c->calls->prev = call;
  c->calls = call;
  return 0;
}

static int on_header(nghttp2_session *h2, const nghttp2_frame *frame,
                     const uint8_t *name, size_t namelen, const uint8_t *value,
                     size_t valuelen, uint8_t flags, void *ud) {
  imc_grpc_conn *c = ud;
  imc_grpc_server *s = c->s;
  imc_grpc_call *call = rpc_call_of(c, frame->hd.stream_id);
  if (call == NULL || (call->flags & (C_ENDED | C_HEAD_BIG)) ||
      frame->headers.cat != NGHTTP2_HCAT_REQUEST)
    return 0;
  call->hdr_bytes += namelen + valuelen + 32;
  if (call->hdr_bytes > s->max_header_list) {
    call->flags |= C_HEAD_BIG;
    return 0;
  }
  if (IS(name, namelen, ":method")) {
    if (IS(value, valuelen, "POST"))
      call->flags |= C_POST;
  } else if (IS(name, namelen, ":path")) {
    call->method = find_method(s, value, valuelen);
  } else if (IS(name, namelen, "content-type")) {
    if (rpc_grpc_content_type(value, valuelen))
      call->flags |= C_CT;
  } else if (IS(name, namelen, "grpc-timeout")) {
    int64_t ms;
    if (rpc_timeout_parse(value, valuelen, &ms) < 0) {
      call->flags |= C_BAD_TIMEOUT;
    } else if (imc_theap_set(&s->timers, &s->mem, &call->timer,
                             imc_clock_now(&s->clock) + ms) < 0) {
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
  }
  return 0;
}

/* Checks a complete request head; answers a bad one. Returns 1 if the
 * call goes on. */
static int head_ok(imc_grpc_call *call) {
  if (call->flags & C_HEAD_BIG)
    rpc_call_answer(call, 200, IMC_GRPC_RESOURCE_EXHAUSTED,
                    "request head too large", 0, NULL, 0);
  else if (!(call->flags & C_POST))
    rpc_call_answer(call, 405, IMC_GRPC_INTERNAL, "method must be POST", 0,
                    NULL, 0);
  else if (!(call->flags & C_CT))
    rpc_call_answer(call, 415, IMC_GRPC_INVALID_ARGUMENT,
                    "content-type must be application/grpc", 0, NULL, 0);
  else if (call->flags & C_BAD_TIMEOUT)
    rpc_call_answer(call, 200, IMC_GRPC_INTERNAL, "malformed grpc-timeout", 0,
                    NULL, 0);
  else if (call->method == NULL)
    rpc_call_answer(call, 200, IMC_GRPC_UNIMPLEMENTED, "unknown method", 0,
                    NULL, 0);
  else
    return 1;
  return 0;
}

/* The request is complete: hand its message to the handler. */
static void request_done(imc_grpc_call *call) {
  imc_grpc_conn *c = call->conn;
  imc_grpc_server *s = call->s;
  const uint8_t *msg;
  size_t len;
  int rv = rpc_msgin_finish(&call->in, &msg, &len);
  if (rv == RPC_MSG_NONE) {
    rpc_call_answer(call, 200, IMC_GRPC_INTERNAL, "no request message", 0, NULL,
                    0);
  } else if (rv < 0) {
    rpc_call_answer(call, 200, IMC_GRPC_INTERNAL, "truncated request message",
                    0, NULL, 0);
  } else if (c->held >= 2 * (size_t)s->max_streams) {
    rpc_call_answer(call, 200, IMC_GRPC_RESOURCE_EXHAUSTED,
                    "too many calls in progress", 0, NULL, 0);
  } else {
    call->flags |= C_HANDLER;
    c->held++;
    s->pending++;
    /* The stream outlives the handler's answer (it closes when nghttp2
     * has sent it), so call is still ours afterwards. */
    call->method->handler(call->method->ud, call, msg, len);
  }
  rpc_msgin_free(&call->in, &s->mem, &c->budget);
}

static void count_reset(imc_grpc_conn *c, nghttp2_session *h2) {
  imc_grpc_server *s = c->s;
  int64_t now = imc_clock_now(&s->clock);
  if (now - c->reset_start >= s->reset_interval_ms) {
    c->reset_start = now;
    c->resets = 0;
  }
  if (++c->resets == s->reset_max + 1) {
    imc_logf(&s->log, IMC_LOG_WARN,
             "grpc: more than %u stream resets in %u ms; GOAWAY", s->reset_max,
             s->reset_interval_ms);
    nghttp2_session_terminate_session(h2, NGHTTP2_ENHANCE_YOUR_CALM);
  }
}

static int on_frame_recv(nghttp2_session *h2, const nghttp2_frame *frame,
                         void *ud) {
  imc_grpc_conn *c = ud;
  if (frame->hd.type == NGHTTP2_RST_STREAM) {
    count_reset(c, h2);
    return 0;
  }
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA)
    return 0;
  imc_grpc_call *call = rpc_call_of(c, frame->hd.stream_id);
  if (call == NULL || (call->flags & C_ENDED))
    return 0;
  if (frame->hd.type == NGHTTP2_HEADERS &&
      frame->headers.cat == NGHTTP2_HCAT_REQUEST && !head_ok(call))
    return 0;
  if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
    request_done(call);
  return 0;
}

static int on_data(nghttp2_session *h2, uint8_t flags, int32_t stream_id,
                   const uint8_t *data, size_t len, void *ud) {
  imc_grpc_conn *c = ud;
  imc_grpc_server *s = c->s;
  imc_grpc_call *call = rpc_call_of(c, stream_id);
  if (call == NULL || (call->flags & C_ENDED))
    return 0;
  int rv =
      rpc_msgin_add(&call->in, &s->mem, data, len, s->max_message, &c->budget);
  switch (rv) {
  case 0:
    break;
  case RPC_MSG_TOO_LARGE:
    rpc_call_answer(call, 200, IMC_GRPC_RESOURCE_EXHAUSTED,
                    "request message larger than the server's limit", 0, NULL,
                    0);
    break;
  case RPC_MSG_COMPRESSED:
    rpc_call_answer(call, 200, IMC_GRPC_UNIMPLEMENTED,
                    "compressed messages are not supported", 0, NULL, 0);
    break;
  case RPC_MSG_MANY:
    rpc_call_answer(call, 200, IMC_GRPC_INTERNAL,
                    "more than one request message in a unary call", 0, NULL,
                    0);
    break;
  case RPC_MSG_BAD_FLAG:
    rpc_call_answer(call, 200, IMC_GRPC_INTERNAL, "malformed message prefix", 0,
                    NULL, 0);
    break;
  default:
    rpc_call_answer(call, 200, IMC_GRPC_RESOURCE_EXHAUSTED,
                    "server out of memory", 0, NULL, 0);
    break;
  }
  if (rv < 0)
    rpc_msgin_free(&call->in, &s->mem, &c->budget);
  return 0;
}

static int on_stream_close(nghttp2_session *h2, int32_t stream_id,
                           uint32_t error_code, void *ud) {
  imc_grpc_conn *c = ud;
  imc_grpc_call *call = rpc_call_of(c, stream_id);
  if (call == NULL)
    return 0;
  call->flags = (call->flags & ~C_STREAM) | C_ENDED;
  imc_theap_remove(&c->s->timers, &call->timer);
  rpc_msgin_free(&call->in, &c->s->mem, &c->budget);
  rpc_call_release(call);
  return 0;
}

/* The answer ended our side while the request is still arriving: stop
 * it (gRPC: RST_STREAM NO_ERROR after the trailers). Submitted only now,
 * as a reset queued earlier would overtake the answer. */
static int on_frame_send(nghttp2_session *h2, const nghttp2_frame *frame,
                         void *ud) {
  imc_grpc_conn *c = ud;
  if (frame->hd.type == NGHTTP2_HEADERS &&
      (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
      nghttp2_session_get_stream_remote_close(h2, frame->hd.stream_id) == 0 &&
      nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                NGHTTP2_NO_ERROR) != 0)
    c->broken = 1;
  return 0;
}

void rpc_server_callbacks(nghttp2_session_callbacks *cbs) {
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs,
                                                          on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
}
