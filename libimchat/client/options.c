/* The client's options object and its setters. */
#include "client/client_int.h"

#include <string.h>

int imc_client_options_new(imc_client_options **out, const imc_mem *mem) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  *out = NULL;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_client_options *o = imc_calloc(mem, 1, sizeof(*o));
  if (o == NULL)
    return IMC_ERR_NOMEM;
  o->mem = *mem;
  imc_clock_assign(&o->clock, NULL);
  o->backoff_initial_ms = 500;
  o->backoff_max_ms = 30000;
  o->pong_timeout_ms = 10000;
  o->handshake_ms = 10000;
  o->resend_ms = 15000;
  o->page_limit = 100;
  o->host = imc_strdup(mem, "localhost");
  o->ws_path = imc_strdup(mem, "/ws");
  if (o->host == NULL || o->ws_path == NULL) {
    imc_client_options_del(o);
    return IMC_ERR_NOMEM;
  }
  *out = o;
  return 0;
}

void imc_client_options_del(imc_client_options *o) {
  if (o == NULL)
    return;
  imc_mem m = o->mem;
  imc_free(&m, o->store_path);
  imc_free(&m, o->token);
  imc_free(&m, o->host);
  imc_free(&m, o->ws_path);
  imc_free(&m, o);
}

/* A copy of s made with o's allocator into *slot (the old one freed). */
static int set_str(imc_client_options *o, char **slot, const char *s) {
  if (o == NULL || s == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  char *d = imc_strdup(&o->mem, s);
  if (d == NULL)
    return IMC_ERR_NOMEM;
  imc_free(&o->mem, *slot);
  *slot = d;
  return 0;
}

/* Printable ASCII without spaces: what fits in a header or request line. */
static int token_chars(const char *s) {
  if (s == NULL || *s == '\0')
    return 0;
  for (; *s; s++)
    if (*s <= ' ' || *s > '~')
      return 0;
  return 1;
}

int imc_client_options_set_store_path(imc_client_options *o, const char *p) {
  if (p == NULL || *p == '\0')
    return IMC_ERR_INVALID_ARGUMENT;
  return set_str(o, &o->store_path, p);
}

int imc_client_options_set_token(imc_client_options *o, const char *t) {
  if (!token_chars(t))
    return IMC_ERR_INVALID_ARGUMENT;
  return set_str(o, &o->token, t);
}

int imc_client_options_set_host(imc_client_options *o, const char *h) {
  if (!token_chars(h))
    return IMC_ERR_INVALID_ARGUMENT;
  return set_str(o, &o->host, h);
}

int imc_client_options_set_ws_path(imc_client_options *o, const char *p) {
  if (!token_chars(p) || p[0] != '/')
    return IMC_ERR_INVALID_ARGUMENT;
  return set_str(o, &o->ws_path, p);
}

int imc_client_options_set_callbacks(imc_client_options *o,
                                     const imc_client_callbacks *cb, void *ud) {
  if (o == NULL || cb == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  memset(&o->cb, 0, sizeof(o->cb));
  size_t n = cb->struct_size < sizeof(o->cb) ? cb->struct_size : sizeof(o->cb);
  memcpy(&o->cb, cb, n);
  o->cb.struct_size = sizeof(o->cb);
  o->cb_ud = ud;
  return 0;
}

int imc_client_options_set_clock(imc_client_options *o,
                                 const imc_clock *clock) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  return imc_clock_assign(&o->clock, clock);
}

int imc_client_options_set_random(imc_client_options *o, imc_random_fn fn,
                                  void *ud) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  o->rnd = fn;
  o->rnd_ud = ud;
  return 0;
}

int imc_client_options_set_backoff(imc_client_options *o, uint32_t initial_ms,
                                   uint32_t max_ms) {
  if (o == NULL || initial_ms == 0 || max_ms < initial_ms)
    return IMC_ERR_INVALID_ARGUMENT;
  o->backoff_initial_ms = initial_ms;
  o->backoff_max_ms = max_ms;
  return 0;
}

int imc_client_options_set_heartbeat(imc_client_options *o,
                                     uint32_t interval_ms,
                                     uint32_t pong_timeout_ms) {
  if (o == NULL || pong_timeout_ms == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->heartbeat_ms = interval_ms;
  o->pong_timeout_ms = pong_timeout_ms;
  return 0;
}

int imc_client_options_set_handshake_timeout_ms(imc_client_options *o,
                                                uint32_t ms) {
  if (o == NULL || ms == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->handshake_ms = ms;
  return 0;
}

int imc_client_options_set_resend_ms(imc_client_options *o, uint32_t ms) {
  if (o == NULL || ms == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->resend_ms = ms;
  return 0;
}

int imc_client_options_set_page_limit(imc_client_options *o, uint32_t limit) {
  if (o == NULL || limit == 0 || limit > 1000)
    return IMC_ERR_INVALID_ARGUMENT;
  o->page_limit = limit;
  return 0;
}

int imc_client_options_set_log(imc_client_options *o, imc_log_cb cb, void *ud,
                               imc_log_level max_level) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  return imc_logger_assign(&o->log, cb, ud, max_level);
}
