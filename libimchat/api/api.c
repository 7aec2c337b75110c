/*
 * The HTTP API of SPEC 3.2, served through the gateway's HTTP handler:
 * its options and life cycle. The routes are in routes.c and the files it
 * names (see internal.h).
 *
 * Each request the handler takes gets a context (api_req) that carries
 * the reply and what the completions need; it is freed once the answer
 * is handed to the gateway. Answers that need the store or group
 * membership go out from their completions, which may run before the
 * backend call returns: after starting one, the code never touches the
 * context again.
 */
#include "api/internal.h"

#include "util/alloc.h"
#include "util/vtbl.h"

#include <openssl/crypto.h>

#include <string.h>

#define ADMIN_TOKEN_MAX 4096 /* the gateway passes no longer bearer */

/* ------------------------------------------------------------------ */
/* Options                                                              */
/* ------------------------------------------------------------------ */

int imc_api_options_new(imc_api_options **out, const imc_mem *mem) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_api_options *o = imc_calloc(mem, 1, sizeof(*o));
  if (o == NULL)
    return IMC_ERR_NOMEM;
  o->mem = *mem;
  o->clock = *imc_clock_default();
  o->log.level = IMC_LOG_INFO;
  *out = o;
  return 0;
}

/* Frees a copy of the admin token, wiping it first. */
static void token_free(const imc_mem *m, char *tok, size_t len) {
  if (tok == NULL)
    return;
  OPENSSL_cleanse(tok, len);
  imc_free(m, tok);
}

void imc_api_options_del(imc_api_options *o) {
  if (o == NULL)
    return;
  imc_mem m = o->mem;
  token_free(&m, o->admin, o->admin_len);
  imc_free(&m, o);
}

int imc_api_options_set_store(imc_api_options *o, const imc_store_vtbl *vt,
                              void *ud) {
  if (o == NULL || vt == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_vtbl_copy(&o->store, sizeof(o->store), vt, vt->struct_size);
  o->store_ud = ud;
  return 0;
}

int imc_api_options_set_groups(imc_api_options *o, const imc_groups_vtbl *vt,
                               void *ud) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_groups_vtbl g;
  memset(&g, 0, sizeof(g));
  if (vt != NULL) {
    imc_vtbl_copy(&g, sizeof(g), vt, vt->struct_size);
    if (g.add == NULL || g.remove == NULL || g.members == NULL)
      return IMC_ERR_INVALID_ARGUMENT;
  }
  o->groups = g;
  o->groups_ud = vt != NULL ? ud : NULL;
  return 0;
}

int imc_api_options_set_admin_token(imc_api_options *o, const char *token) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  char *copy = NULL;
  size_t len = 0;
  if (token != NULL) {
    len = strnlen(token, ADMIN_TOKEN_MAX + 1);
    if (len == 0 || len > ADMIN_TOKEN_MAX)
      return IMC_ERR_INVALID_ARGUMENT;
    /* It travels in a header: visible ASCII only. */
    for (size_t i = 0; i < len; i++)
      if ((unsigned char)token[i] <= 0x20 || (unsigned char)token[i] >= 0x7f)
        return IMC_ERR_INVALID_ARGUMENT;
    copy = imc_strndup(&o->mem, token, len);
    if (copy == NULL)
      return IMC_ERR_NOMEM;
  }
  token_free(&o->mem, o->admin, o->admin_len);
  o->admin = copy;
  o->admin_len = len;
  return 0;
}

int imc_api_options_set_clock(imc_api_options *o, const imc_clock *clock) {
  return o ? imc_clock_assign(&o->clock, clock) : IMC_ERR_INVALID_ARGUMENT;
}

int imc_api_options_set_log(imc_api_options *o, imc_log_cb cb, void *ud,
                            imc_log_level max_level) {
  return o ? imc_logger_assign(&o->log, cb, ud, max_level)
           : IMC_ERR_INVALID_ARGUMENT;
}

/* ------------------------------------------------------------------ */
/* Life cycle                                                           */
/* ------------------------------------------------------------------ */

int imc_api_new(imc_api **out, const imc_api_options *opt, const imc_mem *mem) {
  if (out == NULL || opt == NULL || opt->store.fetch_inbox == NULL ||
      opt->store.fetch_history == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_api *a = imc_calloc(mem, 1, sizeof(*a));
  if (a == NULL)
    return IMC_ERR_NOMEM;
  a->mem = *mem;
  a->o = *opt;
  a->o.mem = *mem;
  if (opt->admin != NULL) {
    a->o.admin = imc_strndup(mem, opt->admin, opt->admin_len);
    if (a->o.admin == NULL) {
      imc_free(mem, a);
      return IMC_ERR_NOMEM;
    }
  }
  *out = a;
  return 0;
}

void imc_api_del(imc_api *a) {
  if (a == NULL)
    return;
  imc_mem m = a->mem;
  token_free(&m, a->o.admin, a->o.admin_len);
  imc_free(&m, a);
}

void imc_api_set_user_data(imc_api *a, void *ud) {
  if (a != NULL)
    a->user_data = ud;
}

void *imc_api_get_user_data(const imc_api *a) {
  return a ? a->user_data : NULL;
}

int imc_api_set_sources(imc_api *a, const imc_metrics_source *src, size_t n) {
  if (a == NULL || (src == NULL && n > 0))
    return IMC_ERR_INVALID_ARGUMENT;
  if (n > IMC_API_SOURCES_MAX)
    return IMC_ERR_TOO_LARGE;
  api_source copy[IMC_API_SOURCES_MAX];
  for (size_t i = 0; i < n; i++) {
    const imc_metrics_source_vtbl *vt = src[i].vt;
    if (vt == NULL)
      return IMC_ERR_INVALID_ARGUMENT;
    imc_vtbl_copy(&copy[i].vt, sizeof(copy[i].vt), vt, vt->struct_size);
    if (copy[i].vt.collect == NULL)
      return IMC_ERR_INVALID_ARGUMENT;
    copy[i].ud = src[i].ud;
  }
  if (n > 0)
    memcpy(a->sources, copy, n * sizeof(copy[0]));
  a->n_sources = n;
  return 0;
}

void imc_api_set_group_changed(imc_api *a, imc_api_group_cb cb, void *ud) {
  if (a == NULL)
    return;
  a->group_changed = cb;
  a->group_changed_ud = ud;
}

size_t imc_api_pending(const imc_api *a) {
  return a ? a->pending : 0;
}
