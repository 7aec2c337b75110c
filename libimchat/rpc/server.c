/*
 * The gRPC server object: its connections, writing their frames, call
 * deadlines, and the lifetime of calls.
 */
#include "rpc/rpc_int.h"

#include <stdlib.h>
#include <string.h>

static int method_cmp(const void *a, const void *b) {
  return strcmp(((const rpc_method *)a)->name, ((const rpc_method *)b)->name);
}

static void server_free(imc_grpc_server *s) {
  imc_mem m = s->mem;
  if (s->methods)
    for (size_t i = 0; i < s->n_methods; i++)
      imc_free(&m, s->methods[i].name);
  imc_free(&m, s->methods);
  if (s->cbs)
    nghttp2_session_callbacks_del(s->cbs);
  if (s->h2opt)
    nghttp2_option_del(s->h2opt);
  imc_theap_free(&s->timers, &m);
  imc_free(&m, s);
}

static int copy_methods(imc_grpc_server *s, const imc_grpc_server_options *o) {
  if (o->n_methods == 0)
    return 0;
  s->methods = imc_calloc(&s->mem, o->n_methods, sizeof(*s->methods));
  if (s->methods == NULL)
    return IMC_ERR_NOMEM;
  for (size_t i = 0; i < o->n_methods; i++) {
    s->methods[i] = o->methods[i];
    s->methods[i].name = imc_strdup(&s->mem, o->methods[i].name);
    s->n_methods = i + 1;
    if (s->methods[i].name == NULL)
      return IMC_ERR_NOMEM;
  }
  qsort(s->methods, s->n_methods, sizeof(*s->methods), method_cmp);
  return 0;
}

static int make_h2(imc_grpc_server *s) {
  if (nghttp2_session_callbacks_new(&s->cbs) != 0)
    return IMC_ERR_NOMEM;
  rpc_server_callbacks(s->cbs);
  if (nghttp2_option_new(&s->h2opt) != 0)
    return IMC_ERR_NOMEM;
  nghttp2_option *o = s->h2opt;
  nghttp2_option_set_no_closed_streams(o, 1);
  /* nghttp2's own flood bounds, stated rather than inherited. */
  nghttp2_option_set_max_continuations(o, 8);
  nghttp2_option_set_max_settings(o, 32);
  nghttp2_option_set_max_outbound_ack(o, 1000);
  /* A backstop behind our own reset bound (server_stream.c), which
   * answers with ENHANCE_YOUR_CALM first. */
  uint64_t rate = (uint64_t)s->reset_max * 1000 / s->reset_interval_ms;
  nghttp2_option_set_stream_reset_rate_limit(o, (uint64_t)s->reset_max * 2,
                                             rate ? rate : 1);
  rpc_h2_mem(&s->h2mem, &s->mem);
  return 0;
}

int imc_grpc_server_new(imc_grpc_server **out, const imc_grpc_server_options *o,
                        const imc_mem *mem) {
  if (out == NULL || o == NULL || o->tv.send == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_grpc_server *s = imc_calloc(mem, 1, sizeof(*s));
  if (s == NULL)
    return IMC_ERR_NOMEM;
  s->mem = *mem;
  s->tv = o->tv;
  s->tud = o->tud;
  s->clock = o->clock;
  s->log = o->log;
  s->max_message = o->max_message;
  s->max_streams = o->max_streams;
  s->max_header_list = o->max_header_list;
  s->reset_max = o->reset_max;
  s->reset_interval_ms = o->reset_interval_ms;
  int rv = copy_methods(s, o);
  if (rv == 0)
    rv = make_h2(s);
  if (rv < 0) {
    server_free(s);
    return rv;
  }
  *out = s;
  return 0;
}

static imc_grpc_call *call_of_timer(imc_timer *t) {
  return (imc_grpc_call *)(void *)((char *)t - offsetof(imc_grpc_call, timer));
}

static void call_free(imc_grpc_call *call) {
  imc_grpc_server *s = call->s;
  size_t spare = 0;
  imc_theap_remove(&s->timers, &call->timer);
  rpc_msgin_free(&call->in, &s->mem, call->conn ? &call->conn->budget : &spare);
  imc_free(&s->mem, call->out);
  imc_free(&s->mem, call);
}

static void call_unlink(imc_grpc_call *call) {
  imc_grpc_conn *c = call->conn;
  if (call->prev)
    call->prev->next = call->next;
  else
    c->calls = call->next;
  if (call->next)
    call->next->prev = call->prev;
  call->prev = call->next = NULL;
}

void rpc_call_release(imc_grpc_call *call) {
  if (call->flags & (C_STREAM | C_HANDLER))
    return;
  if (call->conn)
    call_unlink(call);
  call_free(call);
}

imc_grpc_call *rpc_call_of(imc_grpc_conn *c, int32_t stream_id) {
  return nghttp2_session_get_stream_user_data(c->w.h2, stream_id);
}

/* Frees c without the transport; calls with handlers stay theirs. */
static void conn_free(imc_grpc_conn *c) {
  imc_grpc_server *s = c->s;
  while (c->calls) {
    imc_grpc_call *call = c->calls;
    call_unlink(call);
    size_t spare = 0;
    rpc_msgin_free(&call->in, &s->mem, &spare);
    call->conn = NULL;
    call->flags = (call->flags & ~C_STREAM) | C_ENDED;
    imc_theap_remove(&s->timers, &call->timer);
    rpc_call_release(call);
  }
  rpc_wire_free(&c->w);
  if (c->prev)
    c->prev->next = c->next;
  else
    s->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  imc_free(&s->mem, c);
}

void rpc_conn_close(imc_grpc_conn *c) {
  imc_grpc_server *s = c->s;
  void *conn_ud = c->w.conn_ud;
  conn_free(c);
  s->tv.close(s->tud, conn_ud);
}

void imc_grpc_server_del(imc_grpc_server *s) {
  if (s == NULL)
    return;
  while (s->conns)
    conn_free(s->conns);
  server_free(s);
}

void imc_grpc_server_set_user_data(imc_grpc_server *s, void *ud) {
  if (s)
    s->user_data = ud;
}

void *imc_grpc_server_get_user_data(const imc_grpc_server *s) {
  return s ? s->user_data : NULL;
}

static int conn_settings(imc_grpc_conn *c) {
  imc_grpc_server *s = c->s;
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, s->max_streams},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, s->max_header_list},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, RPC_WINDOW},
  };
  if (nghttp2_submit_settings(c->w.h2, NGHTTP2_FLAG_NONE, iv,
                              sizeof(iv) / sizeof(iv[0])) != 0 ||
      nghttp2_session_set_local_window_size(c->w.h2, NGHTTP2_FLAG_NONE, 0,
                                            RPC_CONN_WINDOW) != 0)
    return IMC_ERR_NOMEM;
  return 0;
}

int imc_grpc_conn_new(imc_grpc_server *s, imc_grpc_conn **out, void *conn_ud) {
  if (s == NULL || out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_grpc_conn *c = imc_calloc(&s->mem, 1, sizeof(*c));
  if (c == NULL)
    return IMC_ERR_NOMEM;
  c->s = s;
  c->w.mem = &s->mem;
  c->w.tv = s->tv;
  c->w.tud = s->tud;
  c->w.conn_ud = conn_ud;
  size_t budget = 4 * s->max_message;
  c->budget = budget < RPC_BUDGET_MIN ? RPC_BUDGET_MIN : budget;
  c->reset_start = imc_clock_now(&s->clock);
  if (nghttp2_session_server_new3(&c->w.h2, s->cbs, c, s->h2opt, &s->h2mem) !=
      0) {
    imc_free(&s->mem, c);
    return IMC_ERR_NOMEM;
  }
  c->next = s->conns;
  if (s->conns)
    s->conns->prev = c;
  s->conns = c;
  if (conn_settings(c) < 0) {
    conn_free(c);
    return IMC_ERR_NOMEM;
  }
  *out = c;
  return 0;
}

int imc_grpc_conn_recv(imc_grpc_conn *c, const uint8_t *data, size_t len) {
  if (c == NULL || (data == NULL && len > 0))
    return IMC_ERR_INVALID_ARGUMENT;
  ssize_t n = nghttp2_session_mem_recv(c->w.h2, data, len);
  if (n >= 0)
    return 0;
  imc_logf(&c->s->log, IMC_LOG_DEBUG, "grpc: connection dropped: %s",
           nghttp2_strerror((int)n));
  /* Best effort for the GOAWAY nghttp2 may have queued. */
  (void)rpc_wire_flush(&c->w);
  rpc_conn_close(c);
  return n == NGHTTP2_ERR_NOMEM ? IMC_ERR_NOMEM : IMC_ERR_PROTO;
}

/* Writes c; closes it if it is finished or broken. Returns 0 or the
 * reason it was closed. */
static int conn_write(imc_grpc_conn *c) {
  int rv = c->broken ? IMC_ERR_NOMEM : rpc_wire_flush(&c->w);
  if (rv == 0)
    return 0;
  if (rv == RPC_WIRE_DONE)
    rv = IMC_ERR_CLOSED;
  rpc_conn_close(c);
  return rv;
}

int imc_grpc_conn_writable(imc_grpc_conn *c) {
  if (c == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  return conn_write(c);
}

void imc_grpc_conn_closed(imc_grpc_conn *c) {
  if (c)
    conn_free(c);
}

void *imc_grpc_conn_get_user_data(const imc_grpc_conn *c) {
  return c ? c->w.conn_ud : NULL;
}

int imc_grpc_server_flush(imc_grpc_server *s) {
  if (s == NULL)
    return 0;
  int closed = 0;
  imc_grpc_conn *next;
  for (imc_grpc_conn *c = s->conns; c; c = next) {
    next = c->next;
    closed += conn_write(c) < 0;
  }
  return closed;
}

int imc_grpc_server_shutdown(imc_grpc_server *s) {
  if (s == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  for (imc_grpc_conn *c = s->conns; c; c = c->next) {
    int32_t last = nghttp2_session_get_last_proc_stream_id(c->w.h2);
    if (nghttp2_submit_goaway(c->w.h2, NGHTTP2_FLAG_NONE, last,
                              NGHTTP2_NO_ERROR, NULL, 0) != 0)
      c->broken = 1;
  }
  return 0;
}

int64_t imc_grpc_server_next_timeout_ms(imc_grpc_server *s) {
  imc_timer *t = s ? imc_theap_top(&s->timers) : NULL;
  if (t == NULL)
    return -1;
  int64_t d = t->at - imc_clock_now(&s->clock);
  return d > 0 ? d : 0;
}

int imc_grpc_server_on_timeout(imc_grpc_server *s) {
  if (s == NULL)
    return 0;
  int64_t now = imc_clock_now(&s->clock);
  imc_timer *t;
  while ((t = imc_theap_top(&s->timers)) != NULL && t->at <= now) {
    imc_grpc_call *call = call_of_timer(t);
    imc_theap_remove(&s->timers, t);
    if (!(call->flags & C_ENDED) && call->conn)
      rpc_call_answer(call, 200, IMC_GRPC_DEADLINE_EXCEEDED,
                      "deadline exceeded", 0, NULL, 0);
  }
  return 0;
}

size_t imc_grpc_server_pending(const imc_grpc_server *s) {
  return s ? s->pending : 0;
}
