/*
 * The HTTP API of SPEC 3.2, served through the gateway's HTTP handler.
 *
 * Each request the handler takes gets a context (api_req) that carries
 * the reply and what the completions need; it is freed once the answer
 * is handed to the gateway. Answers that need the store or the router go
 * out from their completions, which may run before the backend call
 * returns: after starting one, the code never touches the context again.
 */
#include <imchat/api.h>

#include "util/alloc.h"
#include "util/log.h"
#include "protocol/http.h"
#include "protocol/jsonw.h"
#include "protocol/pb.h"
#include "protocol/utf8.h"
#include "util/vtbl.h"

#include <openssl/crypto.h>

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define LIMIT_DEFAULT 100
#define LIMIT_MAX 1000
#define ADMIN_TOKEN_MAX 4096 /* the gateway passes no longer bearer */
#define CONV_MAX (2 + IMC_ID_MAX + 1 + IMC_ID_MAX) /* "p:<a>:<b>" */
#define MAX_SEGS 6
#define NUM_MAX 32 /* room for a decoded query number */

#define CT_JSON "application/json"
#define CT_PROTO "application/x-protobuf"
#define CT_METRICS "text/plain; version=0.0.4"

/* Answer when not even an error body can be built. */
static const char oom_body[] =
    "{\"error\":{\"code\":\"INTERNAL\",\"message\":\"out of memory\"}}\n";

struct imc_api_options {
  imc_mem mem;
  imc_store_vtbl store;
  void *store_ud;
  imc_router *router;
  char *admin;
  size_t admin_len;
  imc_clock clock;
  imc_logger log;
};

struct imc_api {
  imc_mem mem;
  imc_api_options o; /* admin owned by the api */
  imc_gateway *gw;
  imc_worker *worker;
  imc_api_group_cb group_changed;
  void *group_changed_ud;
  void *user_data;
  size_t pending;
};

/* What a request is about; names for the log. */
enum route {
  RT_OFFLINE,
  RT_HISTORY,
  RT_MEMBER_ADD,
  RT_MEMBER_REMOVE,
  RT_MEMBERS,
  RT_READYZ,
  RT_METRICS
};

static const char *const route_names[] = {
    "GET /offline",        "GET history",       "PUT group member",
    "DELETE group member", "GET group members", "GET /readyz",
    "GET /metrics"};

typedef struct api_req {
  imc_api *api;
  imc_http_reply *reply;
  enum route route;
  int proto; /* answer pages as protobuf */
  uint64_t after;
  uint32_t limit;
  int64_t started;
  char user[IMC_ID_MAX + 1]; /* the caller, or the member for admin routes */
  char group[IMC_ID_MAX + 1];
  char conv[CONV_MAX + 1];
} api_req;

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

int imc_api_options_set_router(imc_api_options *o, imc_router *router) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  o->router = router;
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
/* Helpers                                                              */
/* ------------------------------------------------------------------ */

#define api_log(a, ...) imc_logf(&(a)->o.log, __VA_ARGS__)

static int64_t now_ms(imc_api *a) {
  return imc_clock_now(&a->o.clock);
}

static const char *status_code(int status) {
  switch (status) {
  case 400:
    return "BAD_REQUEST";
  case 401:
    return "UNAUTHENTICATED";
  case 403:
    return "FORBIDDEN";
  case 404:
    return "NOT_FOUND";
  case 405:
    return "METHOD_NOT_ALLOWED";
  case 503:
    return "UNAVAILABLE";
  default:
    return "INTERNAL";
  }
}

/* Hands the answer, with extra header lines, to the gateway and frees r. */
static void finish_headers(api_req *r, int status, const char *ctype,
                           const char *headers, const void *body, size_t len) {
  imc_api *a = r->api;
  const char *what = route_names[r->route];
  int rv = imc_http_reply_send(r->reply, status, ctype, headers, body, len);
  if (rv == IMC_ERR_CLOSED)
    api_log(a, IMC_LOG_DEBUG, "%s: the client left before the answer", what);
  else if (rv != 0)
    api_log(a, IMC_LOG_WARN, "%s: answer %d not sent: %s", what, status,
            imc_strerror(rv));
  else
    api_log(a, IMC_LOG_DEBUG, "%s: %d in %" PRId64 " ms", what, status,
            now_ms(a) - r->started);
  imc_free(&a->mem, r);
}

static void finish(api_req *r, int status, const char *ctype, const void *body,
                   size_t len) {
  finish_headers(r, status, ctype, NULL, body, len);
}

/* Answers {"error":{...}}. message is one of our constant texts, so it
 * needs no escaping and the body no allocation. */
static void finish_error(api_req *r, int status, const char *message) {
  char body[256];
  int n = snprintf(body, sizeof(body),
                   "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}\n",
                   status_code(status), message);
  if (n < 0 || (size_t)n >= sizeof(body))
    n = 0;
  const char *allow = NULL;
  if (status == 405)
    allow = r->route == RT_MEMBER_ADD || r->route == RT_MEMBER_REMOVE
                ? "Allow: PUT, DELETE\r\n"
                : "Allow: GET\r\n";
  finish_headers(r, status, CT_JSON, allow, body, (size_t)n);
}

static void finish_oom(api_req *r) {
  finish(r, 500, CT_JSON, oom_body, sizeof(oom_body) - 1);
}

/* A failed store or router operation: NOMEM is ours, the rest is the
 * backend's, which may recover. */
static void finish_backend_error(api_req *r, int status) {
  if (status == IMC_ERR_NOMEM) {
    finish_oom(r);
    return;
  }
  api_log(r->api, IMC_LOG_WARN, "%s: %s", route_names[r->route],
          imc_strerror(status));
  finish_error(r, 503, "backend unavailable");
}

/* Sends what w holds, or 500 if building it failed. Frees b. */
static void finish_wbuf(api_req *r, int status, const char *ctype,
                        imc_wbuf *b) {
  if (b->err != 0)
    finish_oom(r);
  else
    finish(r, status, ctype, b->p, b->len);
  imc_wbuf_free(b);
}

static void op_begin(imc_api *a) {
  a->pending++;
}

static void op_end(imc_api *a) {
  a->pending--;
}

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
static int seg_id(imc_span seg, char *out, size_t cap) {
  ssize_t n = imc_pct_decode(seg, out, cap);
  return n > 0 && imc_id_valid(out, (size_t)n);
}

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
    finish_oom(r);
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
    finish_error(r, 400, "query parts must be UTF-8 without NUL");
  return ok;
}

/* Reads the paging parameters into r; answers 400 and returns 0 if they
 * are bad. */
static int page_params(api_req *r, const char *query, const char *after_key) {
  uint64_t limit;
  if (query_u64(query, after_key, 0, 0, UINT64_MAX, &r->after) != 0) {
    finish_error(r, 400,
                 r->route == RT_OFFLINE
                     ? "cursor must be an unsigned 64-bit integer"
                     : "after_seq must be an unsigned 64-bit integer");
    return 0;
  }
  if (query_u64(query, "limit", LIMIT_DEFAULT, 1, LIMIT_MAX, &limit) != 0) {
    finish_error(r, 400, "limit must be an integer from 1 to 1000");
    return 0;
  }
  r->limit = (uint32_t)limit;
  return 1;
}

/* Copies the authenticated caller into r->user; answers 401 and returns
 * 0 if there is none. */
static int need_user(api_req *r, const imc_http_request *hr) {
  if (hr->user_id == NULL || strlen(hr->user_id) > IMC_ID_MAX) {
    finish_error(r, 401,
                 hr->bearer ? "invalid or expired token"
                            : "missing bearer token");
    return 0;
  }
  snprintf(r->user, sizeof(r->user), "%s", hr->user_id);
  return 1;
}

/* Checks the admin token; answers 403/401 and returns 0 if it fails. */
static int need_admin(api_req *r, const imc_http_request *hr) {
  imc_api *a = r->api;
  if (a->o.admin == NULL) {
    finish_error(r, 403, "admin API disabled");
    return 0;
  }
  if (hr->bearer == NULL || hr->bearer[0] == '\0') {
    finish_error(r, 401, "missing admin token");
    return 0;
  }
  size_t n = strlen(hr->bearer);
  /* Constant time over the token, so its bytes cannot be timed out. */
  if (n != a->o.admin_len || CRYPTO_memcmp(hr->bearer, a->o.admin, n) != 0) {
    api_log(a, IMC_LOG_INFO, "%s: wrong admin token", route_names[r->route]);
    finish_error(r, 403, "invalid admin token");
    return 0;
  }
  return 1;
}

/* The router for group operations; answers 503 and returns NULL if there
 * is none. */
static imc_router *need_router(api_req *r) {
  imc_router *rt = r->api->o.router;
  if (rt == NULL)
    finish_error(r, 503, "group membership is not configured");
  return rt;
}

/* ------------------------------------------------------------------ */
/* Pages of messages                                                    */
/* ------------------------------------------------------------------ */

static void json_msg(imc_jsonw *w, const imc_msg *m, uint64_t cursor) {
  imc_jsonw_object_begin(w);
  imc_jsonw_kv_string(w, "msg_id", m->msg_id);
  imc_jsonw_kv_string(w, "conversation_id", m->conversation_id);
  imc_jsonw_kv_uint64(w, "seq", m->seq);
  imc_jsonw_kv_string(w, "from_user", m->from_user);
  imc_jsonw_kv_string(w, "to_user", m->to_user);
  imc_jsonw_kv_string(w, "group_id", m->group_id);
  imc_jsonw_key(w, "body");
  imc_jsonw_base64(w, m->body, m->body_len);
  imc_jsonw_kv_string(w, "content_type", m->content_type);
  imc_jsonw_kv_int64(w, "sent_at_ms", m->sent_at_ms);
  imc_jsonw_kv_string(w, "client_msg_id", m->client_msg_id);
  imc_jsonw_kv_string(w, "from_device", m->from_device);
  imc_jsonw_kv_uint64(w, "cursor", cursor);
  imc_jsonw_object_end(w);
}

/* Packs an OfflinePage into b. The message views borrow from msgs. */
static void pack_page(imc_wbuf *b, const imc_msg *const *msgs,
                      const uint64_t *cursors, size_t n, uint64_t next,
                      int has_more) {
  const size_t per = sizeof(Imchat__V1__OfflineMessage *) +
                     sizeof(Imchat__V1__OfflineMessage) +
                     sizeof(Imchat__V1__Message);
  if (n > SIZE_MAX / per) {
    b->err = IMC_ERR_NOMEM;
    return;
  }
  /* One block: the pointer array, then the entries, then the messages;
   * each part keeps pointer alignment. */
  void *blk = NULL;
  Imchat__V1__OfflineMessage **pp = NULL;
  if (n > 0) {
    blk = imc_malloc(b->mem, n * per);
    if (blk == NULL) {
      b->err = IMC_ERR_NOMEM;
      return;
    }
    pp = blk;
    Imchat__V1__OfflineMessage *om = (void *)(pp + n);
    Imchat__V1__Message *pm = (void *)(om + n);
    for (size_t i = 0; i < n; i++) {
      imc_pb_from_msg(&pm[i], msgs[i]);
      imchat__v1__offline_message__init(&om[i]);
      om[i].message = &pm[i];
      om[i].cursor = cursors[i];
      pp[i] = &om[i];
    }
  }
  Imchat__V1__OfflinePage page = IMCHAT__V1__OFFLINE_PAGE__INIT;
  page.n_messages = n;
  page.messages = pp;
  page.next_cursor = next;
  page.has_more = has_more != 0;
  size_t len = imchat__v1__offline_page__get_packed_size(&page);
  char *p = imc_wbuf_reserve(b, len);
  if (p != NULL)
    b->len += imchat__v1__offline_page__pack(&page, (uint8_t *)p);
  imc_free(b->mem, blk);
}

/* Completion of fetch_inbox and fetch_history. */
static void page_done(void *ud, int status, const imc_msg *const *msgs,
                      const uint64_t *cursors, size_t n, int has_more) {
  api_req *r = ud;
  imc_api *a = r->api;
  op_end(a);
  if (status != 0) {
    finish_backend_error(r, status);
    return;
  }
  uint64_t next = n > 0 ? cursors[n - 1] : r->after;
  imc_wbuf b;
  imc_wbuf_init(&b, &a->mem);
  if (r->proto) {
    pack_page(&b, msgs, cursors, n, next, has_more);
    finish_wbuf(r, 200, CT_PROTO, &b);
    return;
  }
  imc_jsonw w;
  imc_jsonw_init(&w, &b);
  imc_jsonw_object_begin(&w);
  imc_jsonw_key(&w, "messages");
  imc_jsonw_array_begin(&w);
  for (size_t i = 0; i < n; i++)
    json_msg(&w, msgs[i], cursors[i]);
  imc_jsonw_array_end(&w);
  imc_jsonw_kv_uint64(&w, "next_cursor", next);
  imc_jsonw_kv_bool(&w, "has_more", has_more);
  imc_jsonw_object_end(&w);
  imc_wbuf_append(&b, "\n", 1);
  finish_wbuf(r, 200, CT_JSON, &b);
}

static void fetch_history(api_req *r) {
  imc_api *a = r->api;
  op_begin(a);
  int rv = a->o.store.fetch_history(a->o.store_ud, r->conv, r->after, r->limit,
                                    page_done, r);
  if (rv != 0) {
    op_end(a);
    finish_backend_error(r, rv);
  }
}

/* ------------------------------------------------------------------ */
/* GET /offline                                                         */
/* ------------------------------------------------------------------ */

static void serve_offline(api_req *r, const imc_http_request *hr) {
  imc_api *a = r->api;
  if (!need_user(r, hr) || !page_params(r, hr->query, "cursor"))
    return;
  op_begin(a);
  int rv = a->o.store.fetch_inbox(a->o.store_ud, r->user, r->after, r->limit,
                                  page_done, r);
  if (rv != 0) {
    op_end(a);
    finish_backend_error(r, rv);
  }
}

/* ------------------------------------------------------------------ */
/* GET /v1/conversations/{id}/messages                                  */
/* ------------------------------------------------------------------ */

/* Members of the group of a g: conversation: is the caller one? */
static void members_checked(void *ud, int status, const char *const *items,
                            size_t n) {
  api_req *r = ud;
  op_end(r->api);
  if (status == IMC_ERR_NOT_FOUND) {
    status = 0; /* no such group: nobody is a member */
    n = 0;
  }
  if (status != 0) {
    finish_backend_error(r, status);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    if (strcmp(items[i], r->user) == 0) {
      fetch_history(r);
      return;
    }
  }
  finish_error(r, 403, "not a member of the group");
}

/* Byte order of two ids given as spans. */
static int span_cmp(imc_span x, imc_span y) {
  int c = memcmp(x.p, y.p, x.len < y.len ? x.len : y.len);
  if (c != 0)
    return c;
  return x.len < y.len ? -1 : x.len > y.len;
}

static void serve_history(api_req *r, const imc_http_request *hr,
                          imc_span seg) {
  imc_api *a = r->api;
  if (!need_user(r, hr))
    return;
  ssize_t n = imc_pct_decode(seg, r->conv, sizeof(r->conv));
  if (n <= 0 || !imc_utf8_valid(r->conv, (size_t)n)) {
    finish_error(r, 400, "invalid conversation id");
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
      finish_error(r, 400, "invalid conversation id");
      return;
    }
    size_t ul = strlen(r->user);
    if (!(ul == x.len && memcmp(x.p, r->user, ul) == 0) &&
        !(ul == y.len && memcmp(y.p, r->user, ul) == 0)) {
      finish_error(r, 403, "not a participant of the conversation");
      return;
    }
    fetch_history(r);
    return;
  }
  if (strncmp(cv, "g:", 2) != 0 || !imc_id_valid(cv + 2, strlen(cv + 2))) {
    finish_error(r, 400, "invalid conversation id");
    return;
  }
  snprintf(r->group, sizeof(r->group), "%s", cv + 2);
  imc_router *rt = need_router(r);
  if (rt == NULL)
    return;
  op_begin(a);
  int rv = imc_router_group_members(rt, r->group, members_checked, r);
  if (rv != 0) {
    op_end(a);
    finish_backend_error(r, rv);
  }
}

/* ------------------------------------------------------------------ */
/* Group membership                                                     */
/* ------------------------------------------------------------------ */

static void member_changed(void *ud, int status) {
  api_req *r = ud;
  imc_api *a = r->api;
  op_end(a);
  if (status != 0) {
    finish_backend_error(r, status);
    return;
  }
  int added = r->route == RT_MEMBER_ADD;
  api_log(a, IMC_LOG_INFO, "group %s: %s %s", r->group,
          added ? "added" : "removed", r->user);
  if (a->group_changed)
    a->group_changed(a->group_changed_ud, r->group);
  imc_wbuf b;
  imc_wbuf_init(&b, &a->mem);
  imc_jsonw w;
  imc_jsonw_init(&w, &b);
  imc_jsonw_object_begin(&w);
  imc_jsonw_kv_string(&w, "group_id", r->group);
  imc_jsonw_kv_string(&w, "user_id", r->user);
  imc_jsonw_kv_bool(&w, "member", added);
  imc_jsonw_object_end(&w);
  imc_wbuf_append(&b, "\n", 1);
  finish_wbuf(r, 200, CT_JSON, &b);
}

static void serve_member(api_req *r, const imc_http_request *hr, imc_span gseg,
                         imc_span useg) {
  imc_api *a = r->api;
  if (!need_admin(r, hr))
    return;
  if (!seg_id(gseg, r->group, sizeof(r->group))) {
    finish_error(r, 400, "invalid group id");
    return;
  }
  if (!seg_id(useg, r->user, sizeof(r->user))) {
    finish_error(r, 400, "invalid user id");
    return;
  }
  imc_router *rt = need_router(r);
  if (rt == NULL)
    return;
  op_begin(a);
  int rv =
      r->route == RT_MEMBER_ADD
          ? imc_router_group_add(rt, r->group, r->user, member_changed, r)
          : imc_router_group_remove(rt, r->group, r->user, member_changed, r);
  if (rv != 0) {
    op_end(a);
    finish_backend_error(r, rv);
  }
}

static void members_listed(void *ud, int status, const char *const *items,
                           size_t n) {
  api_req *r = ud;
  imc_api *a = r->api;
  op_end(a);
  if (status == IMC_ERR_NOT_FOUND) {
    status = 0;
    n = 0;
  }
  if (status != 0) {
    finish_backend_error(r, status);
    return;
  }
  imc_wbuf b;
  imc_wbuf_init(&b, &a->mem);
  imc_jsonw w;
  imc_jsonw_init(&w, &b);
  imc_jsonw_object_begin(&w);
  imc_jsonw_key(&w, "members");
  imc_jsonw_array_begin(&w);
  for (size_t i = 0; i < n; i++)
    imc_jsonw_string(&w, items[i]);
  imc_jsonw_array_end(&w);
  imc_jsonw_object_end(&w);
  imc_wbuf_append(&b, "\n", 1);
  finish_wbuf(r, 200, CT_JSON, &b);
}

static void serve_members(api_req *r, const imc_http_request *hr,
                          imc_span gseg) {
  imc_api *a = r->api;
  if (!need_admin(r, hr))
    return;
  if (!seg_id(gseg, r->group, sizeof(r->group))) {
    finish_error(r, 400, "invalid group id");
    return;
  }
  imc_router *rt = need_router(r);
  if (rt == NULL)
    return;
  op_begin(a);
  int rv = imc_router_group_members(rt, r->group, members_listed, r);
  if (rv != 0) {
    op_end(a);
    finish_backend_error(r, rv);
  }
}

/* ------------------------------------------------------------------ */
/* GET /readyz, GET /metrics                                            */
/* ------------------------------------------------------------------ */

static void serve_readyz(api_req *r) {
  imc_api *a = r->api;
  int gw_ok = a->gw == NULL || imc_gateway_accepting(a->gw);
  int wk_ok = a->worker == NULL || imc_worker_healthy(a->worker);
  if (gw_ok && wk_ok) {
    static const char ready[] = "{\"status\":\"ready\"}\n";
    finish(r, 200, CT_JSON, ready, sizeof(ready) - 1);
    return;
  }
  char body[128];
  int n = snprintf(body, sizeof(body), "{\"status\":\"unavailable\"%s%s}\n",
                   gw_ok ? "" : ",\"gateway\":\"shutting down\"",
                   wk_ok ? "" : ",\"worker\":\"failing\"");
  finish(r, 503, CT_JSON, body, (size_t)n);
}

/* One metric line; help and type are written for the first line of a
 * family only (help != NULL). */
typedef struct metric {
  int stat;
  const char *name;
  const char *type;
  const char *help;
  const char *labels; /* e.g. path="fast", or NULL */
} metric;

#define COUNTER "counter"
#define GAUGE "gauge"

static const metric gw_metrics[] = {
    {IMC_GW_STAT_CONNECTIONS, "imchat_gateway_connections", GAUGE,
     "Connections held.", NULL},
    {IMC_GW_STAT_WEBSOCKETS, "imchat_gateway_websockets", GAUGE,
     "Upgraded WebSocket connections.", NULL},
    {IMC_GW_STAT_ACCEPTED, "imchat_gateway_accepted_total", COUNTER,
     "Connections accepted.", NULL},
    {IMC_GW_STAT_UPGRADED, "imchat_gateway_upgraded_total", COUNTER,
     "WebSocket upgrades.", NULL},
    {IMC_GW_STAT_AUTH_FAILED, "imchat_gateway_auth_failures_total", COUNTER,
     "HTTP 401 answers.", NULL},
    {IMC_GW_STAT_HTTP_ERRORS, "imchat_gateway_http_errors_total", COUNTER,
     "HTTP error answers other than 401.", NULL},
    {IMC_GW_STAT_FRAMES_IN, "imchat_gateway_frames_in_total", COUNTER,
     "ClientFrames decoded.", NULL},
    {IMC_GW_STAT_FRAMES_OUT, "imchat_gateway_frames_out_total", COUNTER,
     "ServerFrames queued.", NULL},
    {IMC_GW_STAT_BAD_FRAMES, "imchat_gateway_bad_frames_total", COUNTER,
     "Undecodable ClientFrames.", NULL},
    {IMC_GW_STAT_SLOW_CLOSED, "imchat_gateway_slow_reader_closes_total",
     COUNTER, "Connections closed for a full outbound queue.", NULL},
    {IMC_GW_STAT_IDLE_CLOSED, "imchat_gateway_idle_closes_total", COUNTER,
     "Connections closed for silence.", NULL},
    {IMC_GW_STAT_HANDSHAKE_TIMEOUTS, "imchat_gateway_handshake_timeouts_total",
     COUNTER, "Connections closed without a request head in time.", NULL},
    {IMC_GW_STAT_PUSHES, "imchat_gateway_pushes_total", COUNTER,
     "Deliver frames pushed.", NULL},
    {IMC_GW_STAT_ACKS, "imchat_gateway_acks_total", COUNTER,
     "Pushes acknowledged.", NULL},
    {IMC_GW_STAT_ACK_TIMEOUTS, "imchat_gateway_ack_timeouts_total", COUNTER,
     "Pushes not acknowledged in time.", NULL},
    {IMC_GW_STAT_UNDELIVERED, "imchat_gateway_undelivered_total", COUNTER,
     "Pushes handed back for the slow path.", NULL},
    {IMC_GW_STAT_RATE_LIMITED, "imchat_gateway_rate_limited_total", COUNTER,
     "Sends refused by the rate limit.", NULL},
    {IMC_GW_STAT_OUTBOUND_BYTES, "imchat_gateway_outbound_queued_bytes", GAUGE,
     "Bytes queued for writing.", NULL},
};

static const metric rt_metrics[] = {
    {IMC_RT_STAT_SENDS, "imchat_router_sends_total", COUNTER, "Sends accepted.",
     NULL},
    {IMC_RT_STAT_DUPLICATES, "imchat_router_duplicates_total", COUNTER,
     "Resends answered from the dedup set.", NULL},
    {IMC_RT_STAT_REJECTED, "imchat_router_rejected_total", COUNTER,
     "Sends refused with an error.", NULL},
    {IMC_RT_STAT_FAST_PATH, "imchat_router_routed_total", COUNTER,
     "Messages routed, by path.", "path=\"fast\""},
    {IMC_RT_STAT_SLOW_PATH, "imchat_router_routed_total", COUNTER, NULL,
     "path=\"slow\""},
    {IMC_RT_STAT_GROUP_SENDS, "imchat_router_group_sends_total", COUNTER,
     "Group messages published.", NULL},
    {IMC_RT_STAT_DELIVERED, "imchat_router_statuses_total", COUNTER,
     "Delivery statuses sent, by state.", "state=\"delivered\""},
    {IMC_RT_STAT_STORED, "imchat_router_statuses_total", COUNTER, NULL,
     "state=\"stored\""},
    {IMC_RT_STAT_BLOCKED, "imchat_router_blocked_total", COUNTER,
     "Sends refused by the content filter.", NULL},
    {IMC_RT_STAT_MASKED, "imchat_router_masked_total", COUNTER,
     "Bodies masked by the content filter.", NULL},
    {IMC_RT_STAT_BACKEND_ERRORS, "imchat_router_backend_errors_total", COUNTER,
     "Failed backend operations.", NULL},
    {IMC_RT_STAT_QUEUE_ERRORS, "imchat_router_queue_errors_total", COUNTER,
     "Failed offline-queue publishes.", NULL},
    {IMC_RT_STAT_RETRY_QUEUE, "imchat_router_retry_queue_jobs", GAUGE,
     "Slow-path jobs waiting to be queued again.", NULL},
};

static const metric wk_metrics[] = {
    {IMC_WK_STAT_BATCHES, "imchat_worker_batches_total", COUNTER,
     "Batches committed.", NULL},
    {IMC_WK_STAT_JOBS, "imchat_worker_jobs_total", COUNTER, "Jobs persisted.",
     NULL},
    {IMC_WK_STAT_DUPLICATES, "imchat_worker_duplicates_total", COUNTER,
     "Jobs skipped by the dedup set.", NULL},
    {IMC_WK_STAT_BAD_RECORDS, "imchat_worker_bad_records_total", COUNTER,
     "Undecodable records dropped.", NULL},
    {IMC_WK_STAT_FAILURES, "imchat_worker_failures_total", COUNTER,
     "Failed steps (each retried).", NULL},
    {IMC_WK_STAT_LAST_BATCH, "imchat_worker_last_batch_size", GAUGE,
     "Jobs in the last batch.", NULL},
    {IMC_WK_STAT_LAST_BATCH_MS, "imchat_worker_last_batch_latency_ms", GAUGE,
     "Poll-to-commit time of the last batch in milliseconds.", NULL},
    {IMC_WK_STAT_PURGES, "imchat_worker_purges_total", COUNTER,
     "Retention runs.", NULL},
};

/* Error names by imchat.v1.Error code. */
static const char *const error_codes[] = {
    NULL,        "BAD_REQUEST",  "UNAUTHENTICATED", "FORBIDDEN",   "NOT_FOUND",
    "TOO_LARGE", "RATE_LIMITED", "BLOCKED",         "UNAVAILABLE", "INTERNAL"};

static void metric_line(imc_wbuf *b, const metric *m, uint64_t v) {
  if (m->help)
    imc_wbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help,
                    m->name, m->type);
  if (m->labels)
    imc_wbuf_printf(b, "%s{%s} %" PRIu64 "\n", m->name, m->labels, v);
  else
    imc_wbuf_printf(b, "%s %" PRIu64 "\n", m->name, v);
}

static void serve_metrics(api_req *r) {
  imc_api *a = r->api;
  imc_wbuf b;
  imc_wbuf_init(&b, &a->mem);
  if (a->gw) {
    for (size_t i = 0; i < sizeof(gw_metrics) / sizeof(gw_metrics[0]); i++)
      metric_line(
          &b, &gw_metrics[i],
          imc_gateway_stat_get(a->gw, (imc_gateway_stat)gw_metrics[i].stat));
    imc_wbuf_puts(&b, "# HELP imchat_gateway_errors_total Error frames "
                      "sent, by code.\n"
                      "# TYPE imchat_gateway_errors_total counter\n");
    for (int code = 1;
         code < (int)(sizeof(error_codes) / sizeof(error_codes[0])); code++)
      imc_wbuf_printf(&b,
                      "imchat_gateway_errors_total{code=\"%s\"} %" PRIu64 "\n",
                      error_codes[code], imc_gateway_errors_sent(a->gw, code));
  }
  if (a->o.router) {
    for (size_t i = 0; i < sizeof(rt_metrics) / sizeof(rt_metrics[0]); i++)
      metric_line(&b, &rt_metrics[i],
                  imc_router_stat_get(a->o.router,
                                      (imc_router_stat)rt_metrics[i].stat));
  }
  if (a->worker) {
    for (size_t i = 0; i < sizeof(wk_metrics) / sizeof(wk_metrics[0]); i++)
      metric_line(
          &b, &wk_metrics[i],
          imc_worker_stat_get(a->worker, (imc_worker_stat)wk_metrics[i].stat));
    static const metric healthy = {0, "imchat_worker_healthy", GAUGE,
                                   "1 while the worker's last store or "
                                   "queue operation succeeded.",
                                   NULL};
    metric_line(&b, &healthy, imc_worker_healthy(a->worker) ? 1 : 0);
  }
  finish_wbuf(r, 200, CT_METRICS, &b);
}

/* ------------------------------------------------------------------ */
/* The handler                                                          */
/* ------------------------------------------------------------------ */

static int accepts_protobuf(const char *accept) {
  return accept != NULL && strcasestr(accept, CT_PROTO) != NULL;
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
    int rv =
        imc_http_reply_send(reply, 500, CT_JSON, NULL,
                            (const uint8_t *)oom_body, sizeof(oom_body) - 1);
    if (rv != 0)
      api_log(a, IMC_LOG_WARN, "out of memory; answer not sent: %s",
              imc_strerror(rv));
    return 1;
  }
  r->api = a;
  r->reply = reply;
  r->route = route;
  r->proto = accepts_protobuf(hr->accept);
  r->started = now_ms(a);
  if (!allowed) {
    finish_error(r, 405,
                 route == RT_MEMBER_ADD ? "use PUT or DELETE" : "use GET");
    return 1;
  }
  if (!query_clean(r, hr->query))
    return 1;
  switch (route) {
  case RT_OFFLINE:
    serve_offline(r, hr);
    break;
  case RT_HISTORY:
    serve_history(r, hr, s[2]);
    break;
  case RT_MEMBER_ADD:
  case RT_MEMBER_REMOVE:
    serve_member(r, hr, s[2], s[4]);
    break;
  case RT_MEMBERS:
    serve_members(r, hr, s[2]);
    break;
  case RT_READYZ:
    serve_readyz(r);
    break;
  case RT_METRICS:
    serve_metrics(r);
    break;
  }
  return 1;
}

static const imc_http_handler_vtbl handler_vtbl = {
    sizeof(imc_http_handler_vtbl), api_handle};

const imc_http_handler_vtbl *imc_api_handler_vtbl(void) {
  return &handler_vtbl;
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

int imc_api_attach(imc_api *a, imc_gateway *gw, imc_worker *w) {
  if (a == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  a->gw = gw;
  a->worker = w;
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
