/*
 * GET /metrics: the Prometheus text format (version 0.0.4), written by
 * the configured sources in order through a small writer; and GET
 * /readyz, ready while every source that can tell is.
 */
#include "api/internal.h"

#include <inttypes.h>
#include <string.h>

struct imc_metrics {
  imc_wbuf b;
};

/* [a-zA-Z_:][a-zA-Z0-9_:]* (colons: colon 1) */
static int name_ok(const char *s, int colon) {
  if (s == NULL || *s == '\0' || (*s >= '0' && *s <= '9'))
    return 0;
  for (; *s; s++) {
    char c = *s;
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '_' || (colon && c == ':')))
      return 0;
  }
  return 1;
}

/* Appends s with '\\', '\n' and, if quote, '"' escaped. */
static void put_escaped(imc_wbuf *b, const char *s, int quote) {
  for (; *s; s++) {
    if (*s == '\\')
      imc_wbuf_puts(b, "\\\\");
    else if (*s == '\n')
      imc_wbuf_puts(b, "\\n");
    else if (quote && *s == '"')
      imc_wbuf_puts(b, "\\\"");
    else
      imc_wbuf_append(b, s, 1);
  }
}

/* The HELP and TYPE lines of a family. */
static void put_family(imc_wbuf *b, const char *name, const char *type,
                       const char *help) {
  imc_wbuf_printf(b, "# HELP %s ", name);
  put_escaped(b, help ? help : "", 0);
  imc_wbuf_printf(b, "\n# TYPE %s %s\n", name, type);
}

int imc_metrics_family(imc_metrics *m, const char *name, imc_metric_type type,
                       const char *help) {
  if (m == NULL || !name_ok(name, 1) ||
      (type != IMC_METRIC_COUNTER && type != IMC_METRIC_GAUGE))
    return IMC_ERR_INVALID_ARGUMENT;
  put_family(&m->b, name, type == IMC_METRIC_COUNTER ? "counter" : "gauge",
             help);
  return m->b.err != 0 ? IMC_ERR_NOMEM : 0;
}

int imc_metrics_sample(imc_metrics *m, const char *name, const char *label,
                       const char *label_value, uint64_t value) {
  if (m == NULL || !name_ok(name, 1) ||
      (label != NULL && (!name_ok(label, 0) || label_value == NULL)))
    return IMC_ERR_INVALID_ARGUMENT;
  imc_wbuf_puts(&m->b, name);
  if (label != NULL) {
    imc_wbuf_printf(&m->b, "{%s=\"", label);
    put_escaped(&m->b, label_value, 1);
    imc_wbuf_puts(&m->b, "\"}");
  }
  imc_wbuf_printf(&m->b, " %" PRIu64 "\n", value);
  return m->b.err != 0 ? IMC_ERR_NOMEM : 0;
}

/* Appends v / 10^decimals in decimal, without trailing zeros: integer
 * arithmetic, so neither rounding nor the locale's decimal point. */
static void put_fixed(imc_wbuf *b, uint64_t v, unsigned decimals) {
  uint64_t den = 1;
  for (unsigned i = 0; i < decimals; i++)
    den *= 10;
  imc_wbuf_printf(b, "%" PRIu64, v / den);
  uint64_t frac = v % den;
  if (frac == 0)
    return;
  int digits = (int)decimals;
  for (; frac % 10 == 0; frac /= 10)
    digits--;
  imc_wbuf_printf(b, ".%0*" PRIu64, digits, frac);
}

int imc_metrics_histogram(imc_metrics *m, const char *name, const char *help,
                          const uint64_t *bounds, size_t n,
                          const uint64_t *counts, uint64_t sum,
                          unsigned decimals) {
  if (m == NULL || !name_ok(name, 1) || counts == NULL ||
      (bounds == NULL && n > 0) || decimals > 9)
    return IMC_ERR_INVALID_ARGUMENT;
  for (size_t i = 1; i < n; i++)
    if (bounds[i] <= bounds[i - 1])
      return IMC_ERR_INVALID_ARGUMENT;
  put_family(&m->b, name, "histogram", help);
  uint64_t total = 0;
  for (size_t i = 0; i <= n; i++) {
    total += counts[i];
    imc_wbuf_printf(&m->b, "%s_bucket{le=\"", name);
    if (i < n)
      put_fixed(&m->b, bounds[i], decimals);
    else
      imc_wbuf_puts(&m->b, "+Inf");
    imc_wbuf_printf(&m->b, "\"} %" PRIu64 "\n", total);
  }
  imc_wbuf_printf(&m->b, "%s_sum ", name);
  put_fixed(&m->b, sum, decimals);
  imc_wbuf_printf(&m->b, "\n%s_count %" PRIu64 "\n", name, total);
  return m->b.err != 0 ? IMC_ERR_NOMEM : 0;
}

void imc_api_serve_metrics(api_req *r) {
  imc_api *a = r->api;
  imc_metrics m;
  imc_wbuf_init(&m.b, &a->mem);
  int rv = 0;
  for (size_t i = 0; i < a->n_sources && rv == 0; i++)
    rv = a->sources[i].vt.collect(a->sources[i].ud, &m);
  if (rv != 0 && m.b.err == 0) {
    imc_wbuf_free(&m.b);
    imc_api_finish_backend_error(r, rv);
    return;
  }
  imc_api_finish_wbuf(r, 200, CT_METRICS, &m.b); /* 500 after NOMEM */
}

void imc_api_serve_readyz(api_req *r) {
  imc_api *a = r->api;
  const char *component[IMC_API_SOURCES_MAX], *state[IMC_API_SOURCES_MAX];
  size_t n = 0;
  for (size_t i = 0; i < a->n_sources; i++) {
    const api_source *s = &a->sources[i];
    const char *c = NULL, *st = NULL;
    if (s->vt.ready == NULL || s->vt.ready(s->ud, &c, &st))
      continue;
    component[n] = c ? c : "source";
    state[n] = st ? st : "not ready";
    n++;
  }
  if (n == 0) {
    static const char ready[] = "{\"status\":\"ready\"}\n";
    imc_api_finish(r, 200, CT_JSON, ready, sizeof(ready) - 1);
    return;
  }
  imc_wbuf b;
  imc_wbuf_init(&b, &a->mem);
  imc_jsonw w;
  imc_jsonw_init(&w, &b);
  imc_jsonw_object_begin(&w);
  imc_jsonw_kv_string(&w, "status", "unavailable");
  for (size_t i = 0; i < n; i++)
    imc_jsonw_kv_string(&w, component[i], state[i]);
  imc_jsonw_object_end(&w);
  imc_wbuf_append(&b, "\n", 1);
  imc_api_finish_wbuf(r, 503, CT_JSON, &b);
}
