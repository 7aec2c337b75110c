/*
 * How answers go out: each request context is freed once its answer is
 * handed to the gateway (see internal.h).
 */
#include "api/internal.h"

#include "util/alloc.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* Answer when not even an error body can be built. */
const char imc_api_oom_body[] =
    "{\"error\":{\"code\":\"INTERNAL\",\"message\":\"out of memory\"}}\n";
const size_t imc_api_oom_body_len = sizeof(imc_api_oom_body) - 1;

static const char *const route_names[] = {
    "GET /offline",        "GET history",       "PUT group member",
    "DELETE group member", "GET group members", "GET /readyz",
    "GET /metrics"};

const char *imc_api_route_name(enum route route) {
  return route_names[route];
}

int64_t imc_api_now_ms(imc_api *a) {
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
            imc_api_now_ms(a) - r->started);
  imc_free(&a->mem, r);
}

void imc_api_finish(api_req *r, int status, const char *ctype, const void *body,
                    size_t len) {
  finish_headers(r, status, ctype, NULL, body, len);
}

/* Answers {"error":{...}}. message is one of our constant texts, so it
 * needs no escaping and the body no allocation. */
void imc_api_finish_error(api_req *r, int status, const char *message) {
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

void imc_api_finish_oom(api_req *r) {
  imc_api_finish(r, 500, CT_JSON, imc_api_oom_body, imc_api_oom_body_len);
}

/* A failed store or group operation: NOMEM is ours, the rest is the
 * backend's, which may recover. */
void imc_api_finish_backend_error(api_req *r, int status) {
  if (status == IMC_ERR_NOMEM) {
    imc_api_finish_oom(r);
    return;
  }
  api_log(r->api, IMC_LOG_WARN, "%s: %s", route_names[r->route],
          imc_strerror(status));
  imc_api_finish_error(r, 503, "backend unavailable");
}

/* Sends what w holds, or 500 if building it failed. Frees b. */
void imc_api_finish_wbuf(api_req *r, int status, const char *ctype,
                         imc_wbuf *b) {
  if (b->err != 0)
    imc_api_finish_oom(r);
  else
    imc_api_finish(r, status, ctype, b->p, b->len);
  imc_wbuf_free(b);
}

void imc_api_op_begin(imc_api *a) {
  a->pending++;
}

void imc_api_op_end(imc_api *a) {
  a->pending--;
}
