/*
 * Dispatch of the HTTP API's routes (SPEC 3.2), and the checks every
 * route starts with: the path's segments, the caller, the admin token.
 */
#include "api/internal.h"

#include "protocol/utf8.h"
#include "util/alloc.h"

#include <openssl/crypto.h>

#include <stdio.h>
#include <string.h>

#define MAX_SEGS 6

/* ------------------------------------------------------------------ */
/* Request parsing                                                      */
/* ------------------------------------------------------------------ */

static int span_is(imc_span s, const char *lit) {
  size_t n = strlen(lit);
  return s.len == n && memcmp(s.p, lit, n) == 0;
}

/*
 * Splits "/a/b/c" into its segments (still percent-encoded). Returns the
 * count, or 0 for a path that none of our routes can match (no leading
 * '/', an empty segment, too many segments).
 */
static size_t split_path(const char *path, imc_span *segs, size_t max) {
  if (path[0] != '/')
    return 0;
  size_t n = 0;
  const char *p = path + 1;
  for (;;) {
    const char *end = strchr(p, '/');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len == 0 || n == max)
      return 0;
    segs[n].p = p;
    segs[n].len = len;
    n++;
    if (end == NULL)
      return n;
    p = end + 1;
  }
}

/* Percent-decodes seg into out (capacity cap) as a valid id. */
int imc_api_seg_id(imc_span seg, char *out, size_t cap) {
  ssize_t n = imc_pct_decode(seg, out, cap);
  return n > 0 && imc_id_valid(out, (size_t)n);
}

/* Copies the authenticated caller into r->user; answers 401 and returns
 * 0 if there is none. */
int imc_api_need_user(api_req *r, const imc_http_request *hr) {
  if (hr->user_id == NULL || strlen(hr->user_id) > IMC_ID_MAX) {
    imc_api_finish_error(r, 401,
                         hr->bearer ? "invalid or expired token"
                                    : "missing bearer token");
    return 0;
  }
  snprintf(r->user, sizeof(r->user), "%s", hr->user_id);
  return 1;
}

/* Checks the admin token; answers 403/401 and returns 0 if it fails. */
int imc_api_need_admin(api_req *r, const imc_http_request *hr) {
  imc_api *a = r->api;
  if (a->o.admin == NULL) {
    imc_api_finish_error(r, 403, "admin API disabled");
    return 0;
  }
  if (hr->bearer == NULL || hr->bearer[0] == '\0') {
    imc_api_finish_error(r, 401, "missing admin token");
    return 0;
  }
  size_t n = strlen(hr->bearer);
  /* Constant time over the token, so its bytes cannot be timed out. */
  if (n != a->o.admin_len || CRYPTO_memcmp(hr->bearer, a->o.admin, n) != 0) {
    api_log(a, IMC_LOG_INFO, "%s: wrong admin token",
            imc_api_route_name(r->route));
    imc_api_finish_error(r, 403, "invalid admin token");
    return 0;
  }
  return 1;
}

/* ------------------------------------------------------------------ */
/* The handler                                                          */
/* ------------------------------------------------------------------ */

static int accepts_protobuf(const char *accept) {
  return accept != NULL && strcasestr(accept, CT_PROTO) != NULL;
}

/*
 * Every query key and value, read by a route or not, must percent-decode
 * to UTF-8 without NUL (SPEC 3.1's rule for strings, applied to HTTP).
 * Answers 400 (500 without memory) and returns 0 if not.
 */
static int query_clean(api_req *r, const char *query) {
  size_t qlen = strlen(query);
  if (qlen == 0)
    return 1;
  /* A decoded part is never longer than the raw query. */
  char *buf = imc_malloc(&r->api->mem, qlen + 1);
  if (buf == NULL) {
    imc_api_finish_oom(r);
    return 0;
  }
  imc_span q = {query, qlen};
  size_t pos = 0;
  imc_span k, v;
  int ok = 1;
  while (ok && imc_query_next(q, &pos, &k, &v)) {
    ssize_t n = imc_pct_decode(k, buf, qlen + 1);
    ok = n >= 0 && imc_utf8_valid(buf, (size_t)n);
    if (ok) {
      n = imc_pct_decode(v, buf, qlen + 1);
      ok = n >= 0 && imc_utf8_valid(buf, (size_t)n);
    }
  }
  imc_free(&r->api->mem, buf);
  if (!ok)
    imc_api_finish_error(r, 400, "query parts must be UTF-8 without NUL");
  return ok;
}

static int api_handle(void *ud, const imc_http_request *hr,
                      imc_http_reply *reply) {
  imc_api *a = ud;
  imc_span s[MAX_SEGS];
  size_t n = split_path(hr->path, s, MAX_SEGS);
  int is_get = strcmp(hr->method, "GET") == 0;
  enum route route;
  int allowed = is_get;
  if (n == 1 && span_is(s[0], "offline"))
    route = RT_OFFLINE;
  else if (n == 1 && span_is(s[0], "readyz"))
    route = RT_READYZ;
  else if (n == 1 && span_is(s[0], "metrics"))
    route = RT_METRICS;
  else if (n == 4 && span_is(s[0], "v1") && span_is(s[1], "conversations") &&
           span_is(s[3], "messages"))
    route = RT_HISTORY;
  else if (n == 4 && span_is(s[0], "v1") && span_is(s[1], "groups") &&
           span_is(s[3], "members"))
    route = RT_MEMBERS;
  else if (n == 5 && span_is(s[0], "v1") && span_is(s[1], "groups") &&
           span_is(s[3], "members")) {
    int del = strcmp(hr->method, "DELETE") == 0;
    route = del ? RT_MEMBER_REMOVE : RT_MEMBER_ADD;
    allowed = del || strcmp(hr->method, "PUT") == 0;
  } else
    return 0;

  api_req *r = imc_calloc(&a->mem, 1, sizeof(*r));
  if (r == NULL) {
    int rv = imc_http_reply_send(reply, 500, CT_JSON, NULL,
                                 (const uint8_t *)imc_api_oom_body,
                                 imc_api_oom_body_len);
    if (rv != 0)
      api_log(a, IMC_LOG_WARN, "out of memory; answer not sent: %s",
              imc_strerror(rv));
    return 1;
  }
  r->api = a;
  r->reply = reply;
  r->route = route;
  r->proto = accepts_protobuf(hr->accept);
  r->started = imc_api_now_ms(a);
  if (!allowed) {
    imc_api_finish_error(
        r, 405, route == RT_MEMBER_ADD ? "use PUT or DELETE" : "use GET");
    return 1;
  }
  if (!query_clean(r, hr->query))
    return 1;
  switch (route) {
  case RT_OFFLINE:
    imc_api_serve_offline(r, hr);
    break;
  case RT_HISTORY:
    imc_api_serve_history(r, hr, s[2]);
    break;
  case RT_MEMBER_ADD:
  case RT_MEMBER_REMOVE:
    imc_api_serve_member(r, hr, s[2], s[4]);
    break;
  case RT_MEMBERS:
    imc_api_serve_members(r, hr, s[2]);
    break;
  case RT_READYZ:
    imc_api_serve_readyz(r);
    break;
  case RT_METRICS:
    imc_api_serve_metrics(r);
    break;
  }
  return 1;
}

static const imc_http_handler_vtbl handler_vtbl = {
    sizeof(imc_http_handler_vtbl), api_handle};

const imc_http_handler_vtbl *imc_api_handler_vtbl(void) {
  return &handler_vtbl;
}
