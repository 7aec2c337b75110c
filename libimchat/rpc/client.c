/*
 * The gRPC client object: starting calls as request streams, writing the
 * connection, deadlines, and the end of calls when the connection ends.
 */
#include "rpc/rpc_int.h"

#include <string.h>

#define USER_AGENT "imchat-grpc"

static void client_free(imc_grpc_client *c) {
  imc_mem m = c->mem;
  if (c->w.h2)
    nghttp2_session_del(c->w.h2);
  c->w.h2 = NULL;
  while (c->calls)
    rpc_ccall_free(c->calls);
  imc_bufq_free(&c->w.out, &c->mem);
  imc_theap_free(&c->timers, &m);
  imc_free(&m, c->authority);
  imc_free(&m, c);
}

static int make_session(imc_grpc_client *c) {
  nghttp2_session_callbacks *cbs;
  nghttp2_option *opt;
  if (nghttp2_session_callbacks_new(&cbs) != 0)
    return IMC_ERR_NOMEM;
  if (nghttp2_option_new(&opt) != 0) {
    nghttp2_session_callbacks_del(cbs);
    return IMC_ERR_NOMEM;
  }
  rpc_client_callbacks(cbs);
  nghttp2_option_set_no_closed_streams(opt, 1);
  nghttp2_option_set_max_continuations(opt, 8);
  rpc_h2_mem(&c->h2mem, &c->mem);
  int rv = nghttp2_session_client_new3(&c->w.h2, cbs, c, opt, &c->h2mem);
  nghttp2_session_callbacks_del(cbs);
  nghttp2_option_del(opt);
  if (rv != 0)
    return IMC_ERR_NOMEM;
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, RPC_WINDOW},
  };
  if (nghttp2_submit_settings(c->w.h2, NGHTTP2_FLAG_NONE, iv, 2) != 0 ||
      nghttp2_session_set_local_window_size(c->w.h2, NGHTTP2_FLAG_NONE, 0,
                                            RPC_CONN_WINDOW) != 0)
    return IMC_ERR_NOMEM;
  return 0;
}

int imc_grpc_client_new(imc_grpc_client **out, const imc_grpc_client_options *o,
                        const imc_mem *mem) {
  if (out == NULL || o == NULL || o->tv.send == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_grpc_client *c = imc_calloc(mem, 1, sizeof(*c));
  if (c == NULL)
    return IMC_ERR_NOMEM;
  c->mem = *mem;
  c->w.mem = &c->mem;
  c->w.tv = o->tv;
  c->w.tud = o->tud;
  c->clock = o->clock;
  c->log = o->log;
  c->max_message = o->max_message;
  size_t budget = 4 * c->max_message;
  c->budget = budget < RPC_BUDGET_MIN ? RPC_BUDGET_MIN : budget;
  c->authority = imc_strdup(&c->mem, o->authority ? o->authority : "localhost");
  int rv = c->authority ? make_session(c) : IMC_ERR_NOMEM;
  if (rv < 0) {
    client_free(c);
    return rv;
  }
  *out = c;
  return 0;
}

/* Completes every call not yet completed with status. */
static void complete_all(imc_grpc_client *c, int status, const char *why) {
  for (rpc_ccall *call = c->calls; call; call = call->next)
    rpc_ccall_complete(call, status, 0, why, NULL, 0, 0);
}

void imc_grpc_client_del(imc_grpc_client *c) {
  if (c == NULL)
    return;
  if (c->state != CL_CLOSED) {
    c->state = CL_CLOSED;
    complete_all(c, IMC_GRPC_CANCELLED, "client deleted");
  }
  client_free(c);
}

void imc_grpc_client_set_user_data(imc_grpc_client *c, void *ud) {
  if (c) {
    c->user_data = ud;
    c->w.conn_ud = ud;
  }
}

void *imc_grpc_client_get_user_data(const imc_grpc_client *c) {
  return c ? c->user_data : NULL;
}

static ssize_t read_request(nghttp2_session *h2, int32_t stream_id,
                            uint8_t *buf, size_t length, uint32_t *flags,
                            nghttp2_data_source *source, void *ud) {
  rpc_ccall *call = source->ptr;
  size_t n = call->req_len - call->req_pos;
  if (n > length)
    n = length;
  memcpy(buf, call->req + call->req_pos, n);
  call->req_pos += n;
  if (call->req_pos == call->req_len)
    *flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

static int method_ok(const char *method) {
  return method[0] == '/' && strchr(method + 1, '/') != NULL;
}

/* Submits call's request stream. Returns 0 or an IMC_ERR_*. */
static int submit(imc_grpc_client *c, rpc_ccall *call, const char *method,
                  int64_t deadline_ms) {
  char tbuf[16];
  nghttp2_nv nv[8] = {
      RPC_NV(":method", "POST", 4),
      RPC_NV(":scheme", "http", 4),
      RPC_NV(":path", method, strlen(method)),
      RPC_NV(":authority", c->authority, strlen(c->authority)),
      RPC_NV("content-type", RPC_CT, sizeof(RPC_CT) - 1),
      RPC_NV("te", "trailers", 8),
      RPC_NV("user-agent", USER_AGENT, sizeof(USER_AGENT) - 1),
  };
  size_t n = 7;
  if (deadline_ms > 0)
    nv[n++] = (nghttp2_nv)RPC_NV("grpc-timeout", tbuf,
                                 rpc_timeout_format(deadline_ms, tbuf));
  nghttp2_data_provider dp = {.source.ptr = call,
                              .read_callback = read_request};
  int32_t id = nghttp2_submit_request(c->w.h2, NULL, nv, n, &dp, call);
  if (id == NGHTTP2_ERR_NOMEM)
    return IMC_ERR_NOMEM;
  if (id < 0) {
    /* Stream ids are spent: this connection is done. */
    c->state = CL_DRAIN;
    return IMC_ERR_CLOSED;
  }
  call->stream_id = id;
  return 0;
}

int imc_grpc_client_call(imc_grpc_client *c, const char *method,
                         const uint8_t *req, size_t len, int64_t deadline_ms,
                         imc_grpc_done_cb done, void *done_ud) {
  if (c == NULL || method == NULL || done == NULL || !method_ok(method) ||
      (req == NULL && len > 0) || deadline_ms < 0)
    return IMC_ERR_INVALID_ARGUMENT;
  if (len > RPC_MESSAGE_CEILING)
    return IMC_ERR_TOO_LARGE;
  if (c->state != CL_OPEN)
    return IMC_ERR_CLOSED;
  rpc_ccall *call = imc_calloc(&c->mem, 1, sizeof(*call));
  if (call == NULL)
    return IMC_ERR_NOMEM;
  call->c = c;
  call->done = done;
  call->done_ud = done_ud;
  call->grpc_status = -1;
  imc_timer_init(&call->timer);
  call->req = imc_malloc(&c->mem, 5 + len);
  int rv = call->req ? 0 : IMC_ERR_NOMEM;
  if (rv == 0 && deadline_ms > 0)
    rv = imc_theap_set(&c->timers, &c->mem, &call->timer,
                       imc_clock_now(&c->clock) + deadline_ms);
  if (rv == 0) {
    rpc_prefix(call->req, len);
    if (len)
      memcpy(call->req + 5, req, len);
    call->req_len = 5 + len;
    rv = submit(c, call, method, deadline_ms);
  }
  if (rv < 0) {
    imc_theap_remove(&c->timers, &call->timer);
    imc_free(&c->mem, call->req);
    imc_free(&c->mem, call);
    return rv;
  }
  call->next = c->calls;
  if (c->calls)
    c->calls->prev = call;
  c->calls = call;
  c->pending++;
  return 0;
}

void rpc_ccall_complete(rpc_ccall *call, int status, int error,
                        const char *message, const uint8_t *resp, size_t len,
                        int rst) {
  imc_grpc_client *c = call->c;
  if (call->completed)
    return;
  call->completed = 1;
  c->pending--;
  imc_theap_remove(&c->timers, &call->timer);
  if (rst && c->state != CL_CLOSED)
    (void)nghttp2_submit_rst_stream(c->w.h2, NGHTTP2_FLAG_NONE, call->stream_id,
                                    NGHTTP2_CANCEL);
  if (error == 0)
    error = imc_grpc_status_to_error(status);
  if (status != IMC_GRPC_OK) {
    resp = NULL;
    len = 0;
  }
  call->done(call->done_ud, status, error, message ? message : "", resp, len);
}

void rpc_ccall_free(rpc_ccall *call) {
  imc_grpc_client *c = call->c;
  if (call->prev)
    call->prev->next = call->next;
  else
    c->calls = call->next;
  if (call->next)
    call->next->prev = call->prev;
  imc_theap_remove(&c->timers, &call->timer);
  rpc_msgin_free(&call->in, &c->mem, &c->budget);
  imc_free(&c->mem, call->req);
  imc_free(&c->mem, call->message);
  imc_free(&c->mem, call);
}

void rpc_client_lost(imc_grpc_client *c, const char *why) {
  if (c->state == CL_CLOSED)
    return;
  c->state = CL_CLOSED;
  imc_logf(&c->log, IMC_LOG_DEBUG, "grpc: %s", why);
  complete_all(c, IMC_GRPC_UNAVAILABLE, why);
}

/* The connection failed with rv: calls end, the transport closes. */
static int fail(imc_grpc_client *c, int rv, const char *why) {
  rpc_client_lost(c, why);
  c->w.tv.close(c->w.tud, c->w.conn_ud);
  return rv;
}

int imc_grpc_client_recv(imc_grpc_client *c, const uint8_t *data, size_t len) {
  if (c == NULL || (data == NULL && len > 0))
    return IMC_ERR_INVALID_ARGUMENT;
  if (c->state == CL_CLOSED)
    return IMC_ERR_CLOSED;
  ssize_t n = nghttp2_session_mem_recv(c->w.h2, data, len);
  if (n >= 0)
    return 0;
  (void)rpc_wire_flush(&c->w);
  if (n == NGHTTP2_ERR_NOMEM)
    return fail(c, IMC_ERR_NOMEM, "out of memory");
  return fail(c, IMC_ERR_PROTO, "protocol error from the server");
}

int imc_grpc_client_flush(imc_grpc_client *c) {
  if (c == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (c->state == CL_CLOSED)
    return IMC_ERR_CLOSED;
  int rv = rpc_wire_flush(&c->w);
  if (rv == 0)
    return 0;
  if (rv == RPC_WIRE_DONE)
    return fail(c, IMC_ERR_CLOSED, "connection finished");
  return fail(c, rv, "connection lost");
}

void imc_grpc_client_closed(imc_grpc_client *c) {
  if (c)
    rpc_client_lost(c, "connection lost");
}

int imc_grpc_client_usable(const imc_grpc_client *c) {
  return c != NULL && c->state == CL_OPEN;
}

size_t imc_grpc_client_pending(const imc_grpc_client *c) {
  return c ? c->pending : 0;
}

int64_t imc_grpc_client_next_timeout_ms(imc_grpc_client *c) {
  imc_timer *t = c ? imc_theap_top(&c->timers) : NULL;
  if (t == NULL)
    return -1;
  int64_t d = t->at - imc_clock_now(&c->clock);
  return d > 0 ? d : 0;
}

static rpc_ccall *call_of_timer(imc_timer *t) {
  return (rpc_ccall *)(void *)((char *)t - offsetof(rpc_ccall, timer));
}

int imc_grpc_client_on_timeout(imc_grpc_client *c) {
  if (c == NULL)
    return 0;
  int64_t now = imc_clock_now(&c->clock);
  imc_timer *t;
  while ((t = imc_theap_top(&c->timers)) != NULL && t->at <= now)
    rpc_ccall_complete(call_of_timer(t), IMC_GRPC_DEADLINE_EXCEEDED, 0,
                       "deadline exceeded", NULL, 0, 1);
  return 0;
}
