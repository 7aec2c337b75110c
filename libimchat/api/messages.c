/*
 * GET /offline and GET /v1/conversations/{id}/messages: a page from the
 * store, for the caller or for a participant of the conversation.
 */
#include "api/internal.h"
#include "protocol/utf8.h"

#include <stdio.h>
#include <string.h>

#define LIMIT_DEFAULT 100
#define LIMIT_MAX 1000
#define NUM_MAX 32 /* room for a decoded query number */

/*
 * The query parameter key as a decimal number in [min, max], or def when
 * absent. Returns 0, or -1 for anything else (empty, a sign, a non-digit,
 * overflow, out of range).
 */
static int query_u64(const char *query, const char *key, uint64_t def,
                     uint64_t min, uint64_t max, uint64_t *out) {
  char buf[NUM_MAX];
  imc_span q = {query, strlen(query)};
  ssize_t n = imc_query_get(q, key, buf, sizeof(buf));
  if (n == IMC_ERR_NOT_FOUND) {
    *out = def;
    return 0;
  }
  if (n <= 0)
    return -1;
  uint64_t v = 0;
  for (ssize_t i = 0; i < n; i++) {
    if (buf[i] < '0' || buf[i] > '9')
      return -1;
    unsigned d = (unsigned)(buf[i] - '0');
    if (v > (UINT64_MAX - d) / 10)
      return -1;
    v = v * 10 + d;
  }
  if (v < min || v > max)
    return -1;
  *out = v;
  return 0;
}

/* Reads the paging parameters into r; answers 400 and returns 0 if they
 * are bad. */
static int page_params(api_req *r, const char *query, const char *after_key) {
  uint64_t limit;
  if (query_u64(query, after_key, 0, 0, UINT64_MAX, &r->after) != 0) {
    imc_api_finish_error(r, 400,
                         r->route == RT_OFFLINE
                             ? "cursor must be an unsigned 64-bit integer"
                             : "after_seq must be an unsigned 64-bit integer");
    return 0;
  }
  if (query_u64(query, "limit", LIMIT_DEFAULT, 1, LIMIT_MAX, &limit) != 0) {
    imc_api_finish_error(r, 400, "limit must be an integer from 1 to 1000");
    return 0;
  }
  r->limit = (uint32_t)limit;
  return 1;
}
/* Completion of fetch_inbox and fetch_history. */
static void page_done(void *ud, int status, const imc_msg *const *msgs,
                      const uint64_t *cursors, size_t n, int has_more) {
  api_req *r = ud;
  imc_api *a = r->api;
  imc_api_op_end(a);
  if (status != 0) {
    imc_api_finish_backend_error(r, status);
    return;
  }
  uint64_t next = n > 0 ? cursors[n - 1] : r->after;
  imc_wbuf b;
  imc_wbuf_init(&b, &a->mem);
  imc_api_page_encode(&b, r->proto, msgs, cursors, n, next, has_more);
  imc_api_finish_wbuf(r, 200, r->proto ? CT_PROTO : CT_JSON, &b);
}

static void fetch_history(api_req *r) {
  imc_api *a = r->api;
  imc_api_op_begin(a);
  int rv = a->o.store.fetch_history(a->o.store_ud, r->conv, r->after, r->limit,
                                    page_done, r);
  if (rv != 0) {
    imc_api_op_end(a);
    imc_api_finish_backend_error(r, rv);
  }
}

/* ------------------------------------------------------------------ */
/* GET /offline                                                         */
/* ------------------------------------------------------------------ */

void imc_api_serve_offline(api_req *r, const imc_http_request *hr) {
  imc_api *a = r->api;
  if (!imc_api_need_user(r, hr) || !page_params(r, hr->query, "cursor"))
    return;
  imc_api_op_begin(a);
  int rv = a->o.store.fetch_inbox(a->o.store_ud, r->user, r->after, r->limit,
                                  page_done, r);
  if (rv != 0) {
    imc_api_op_end(a);
    imc_api_finish_backend_error(r, rv);
  }
}

/* ------------------------------------------------------------------ */
/* GET /v1/conversations/{id}/messages                                  */
/* ------------------------------------------------------------------ */

/* Members of the group of a g: conversation: is the caller one? */
static void members_checked(void *ud, int status, const char *const *items,
                            size_t n) {
  api_req *r = ud;
  imc_api_op_end(r->api);
  if (status == IMC_ERR_NOT_FOUND) {
    status = 0; /* no such group: nobody is a member */
    n = 0;
  }
  if (status != 0) {
    imc_api_finish_backend_error(r, status);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    if (strcmp(items[i], r->user) == 0) {
      fetch_history(r);
      return;
    }
  }
  imc_api_finish_error(r, 403, "not a member of the group");
}

/* Byte order of two ids given as spans. */
static int span_cmp(imc_span x, imc_span y) {
  int c = memcmp(x.p, y.p, x.len < y.len ? x.len : y.len);
  if (c != 0)
    return c;
  return x.len < y.len ? -1 : x.len > y.len;
}

void imc_api_serve_history(api_req *r, const imc_http_request *hr,
                           imc_span seg) {
  if (!imc_api_need_user(r, hr))
    return;
  ssize_t n = imc_pct_decode(seg, r->conv, sizeof(r->conv));
  if (n <= 0 || !imc_utf8_valid(r->conv, (size_t)n)) {
    imc_api_finish_error(r, 400, "invalid conversation id");
    return;
  }
  if (!page_params(r, hr->query, "after_seq"))
    return;
  const char *cv = r->conv;
  if (strncmp(cv, "p:", 2) == 0) {
    const char *colon = strchr(cv + 2, ':');
    imc_span x = {cv + 2, colon ? (size_t)(colon - cv - 2) : 0};
    imc_span y = {colon ? colon + 1 : "", colon ? strlen(colon + 1) : 0};
    if (!imc_id_valid(x.p, x.len) || !imc_id_valid(y.p, y.len) ||
        span_cmp(x, y) > 0) {
      imc_api_finish_error(r, 400, "invalid conversation id");
      return;
    }
    size_t ul = strlen(r->user);
    if (!(ul == x.len && memcmp(x.p, r->user, ul) == 0) &&
        !(ul == y.len && memcmp(y.p, r->user, ul) == 0)) {
      imc_api_finish_error(r, 403, "not a participant of the conversation");
      return;
    }
    fetch_history(r);
    return;
  }
  if (strncmp(cv, "g:", 2) != 0 || !imc_id_valid(cv + 2, strlen(cv + 2))) {
    imc_api_finish_error(r, 400, "invalid conversation id");
    return;
  }
  snprintf(r->group, sizeof(r->group), "%s", cv + 2);
  imc_api_group_members(r, members_checked);
}
