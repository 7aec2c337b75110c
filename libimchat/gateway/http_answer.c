/*
 * Complete HTTP answers (status line, headers, body), including the
 * JSON error bodies of the protocol contract.
 */
#include "gateway/gateway_int.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static const char *status_text(int status) {
  switch (status) {
  case 200:
    return "OK";
  case 304:
    return "Not Modified";
  case 400:
    return "Bad Request";
  case 401:
    return "Unauthorized";
  case 403:
    return "Forbidden";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 409:
    return "Conflict";
  case 411:
    return "Length Required";
  case 413:
    return "Payload Too Large";
  case 415:
    return "Unsupported Media Type";
  case 426:
    return "Upgrade Required";
  case 429:
    return "Too Many Requests";
  case 431:
    return "Request Header Fields Too Large";
  case 500:
    return "Internal Server Error";
  case 503:
    return "Service Unavailable";
  default:
    return "Internal Server Error";
  }
}

/* 1 if the header lines in extra include one named name (with ':'). */
static int has_header(const char *extra, const char *name) {
  size_t n = strlen(name);
  for (const char *l = extra; l && *l;) {
    if (strncasecmp(l, name, n) == 0)
      return 1;
    const char *nl = strchr(l, '\n');
    l = nl ? nl + 1 : NULL;
  }
  return 0;
}

/*
 * Queues a complete HTTP answer and closes the connection once it is
 * written. extra holds additional header lines, each ending in CRLF; a
 * Cache-Control line among them replaces the default no-store. The
 * answer to a HEAD request has the same head, Content-Length included,
 * and no body. A 401 without a challenge gets the Bearer one (RFC 9110
 * 11.6.1, RFC 6750 3): with error="invalid_token" when the request
 * carried a credential.
 */
int gw_http_answer(imc_conn *c, int status, const char *ctype,
                   const char *extra, const char *body, size_t body_len) {
  char head[512];
  const char *challenge = "";
  if (status == 401 && !has_header(extra, "www-authenticate:"))
    challenge = (c->flags & F_BEARER)
                    ? "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n"
                    : "WWW-Authenticate: Bearer\r\n";
  int n = snprintf(
      head, sizeof(head),
      "HTTP/1.1 %d %s\r\nContent-Type: %.200s\r\n"
      "Content-Length: %zu\r\n%s%sConnection: close\r\n",
      status, status_text(status), ctype, body_len,
      has_header(extra, "cache-control:") ? "" : "Cache-Control: no-store\r\n",
      challenge);
  c->state = ST_DONE;
  c->close_at = now_ms(c->gw) + CLOSE_WAIT_MS;
  gw_conn_schedule(c);
  if (status >= 400)
    stat_inc(c->gw,
             status == 401 ? IMC_GW_STAT_AUTH_FAILED : IMC_GW_STAT_HTTP_ERRORS);
  if (c->flags & F_HEAD)
    body_len = 0;
  if (gw_queue_bytes(c, head, (size_t)n) != 0 ||
      gw_queue_bytes(c, extra ? extra : "", extra ? strlen(extra) : 0) != 0 ||
      gw_queue_bytes(c, "\r\n", 2) != 0 ||
      gw_queue_bytes(c, body, body_len) != 0) {
    c->flags |= F_ABORT | F_NOMEM;
    return IMC_ERR_NOMEM;
  }
  return 0;
}

int gw_http_error(imc_conn *c, int status, const char *code,
                  const char *message, const char *extra) {
  char body[256];
  int n = snprintf(body, sizeof(body),
                   "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}\n", code,
                   message);
  return gw_http_answer(c, status, "application/json", extra, body, (size_t)n);
}
