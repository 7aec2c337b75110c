/*
 * Plain HTTP on the gateway port: reading the request head, routing it
 * (/ws, /healthz, the host's handler) and the handler's reply.
 */
#include "gateway/gateway_int.h"

#include <stdio.h>
#include <string.h>

/* Copies span into buf as a string; 0 if it does not fit. */
static int span_str(imc_span sp, char *buf, size_t cap) {
  if (sp.len >= cap)
    return 0;
  memcpy(buf, sp.p, sp.len);
  buf[sp.len] = '\0';
  return 1;
}

/* Frees r and forgets it on its connection, if that is still there. */
static void reply_release(imc_http_reply *r) {
  if (r->c != NULL)
    r->c->reply = NULL;
  imc_free(&r->gw->mem, r);
}

/* Hands a plain HTTP request (body[0..body_len) after the head) to the
 * handler. Returns 1 if it took it. */
static int gw_http_handle(imc_conn *c, const imc_http_req *req,
                          const char *body, size_t body_len) {
  imc_gateway *gw = c->gw;
  if (gw->o.http.handle == NULL)
    return 0;
  char method[16], path[2048], query[2048], accept[256], ctype[256];
  char bearer[IMC_JWT_MAX_LEN + 1];
  const imc_http_hdr *acc = imc_http_find(req, "Accept");
  const imc_http_hdr *ct = imc_http_find(req, "Content-Type");
  /* A HEAD request is served as a GET whose body the gateway drops
   * (gw_http_answer): every handler supports HEAD with the same headers,
   * Content-Length included. */
  if (!span_str((c->flags & F_HEAD) ? (imc_span){"GET", 3} : req->method,
                method, sizeof(method)) ||
      !span_str(req->path, path, sizeof(path)) ||
      !span_str(req->query, query, sizeof(query)) ||
      !span_str(acc ? acc->value : (imc_span){"", 0}, accept, sizeof(accept)) ||
      !span_str(ct ? ct->value : (imc_span){"", 0}, ctype, sizeof(ctype))) {
    gw_http_error(c, 400, "BAD_REQUEST",
                  "request line, Accept or Content-Type too long", NULL);
    return 1;
  }
  imc_http_request hr = {
      method,   path, query, accept,
      NULL,     NULL, "",    body_len ? (const uint8_t *)body : NULL,
      body_len, ctype};
  imc_jwt_claims cl;
  const imc_http_hdr *auth = imc_http_find(req, "Authorization");
  if (auth && auth->value.len > 7 &&
      strncasecmp(auth->value.p, "Bearer ", 7) == 0 &&
      span_str((imc_span){auth->value.p + 7, auth->value.len - 7}, bearer,
               sizeof(bearer))) {
    hr.bearer = bearer;
    c->flags |= F_BEARER;
    imc_jwt_header jh;
    const imc_jwt_key *k = NULL;
    if (imc_jwt_parse_header(bearer, strlen(bearer), &jh) == 0)
      k = gw_pick_key(gw, jh.alg);
    if (k && imc_jwt_verify(bearer, strlen(bearer), k, &gw->policy,
                            imc_clock_wall(&gw->o.clock) / 1000, &cl) == 0) {
      hr.user_id = cl.sub;
      hr.device_id = cl.did;
    }
  }
  imc_http_reply *r = imc_malloc(&gw->mem, sizeof(*r));
  if (r == NULL) {
    c->flags |= F_ABORT | F_NOMEM;
    return 1;
  }
  r->gw = gw;
  r->c = c;
  c->reply = r;
  c->state = ST_REPLY;
  c->close_at = now_ms(gw) + REPLY_WAIT_MS;
  gw_conn_schedule(c);
  if (!gw->o.http.handle(gw->o.http_ud, &hr, r)) {
    reply_release(r);
    c->state = ST_HTTP;
    return 0;
  }
  return 1;
}

int imc_http_reply_send(imc_http_reply *reply, int status,
                        const char *content_type, const char *headers,
                        const uint8_t *body, size_t len) {
  if (reply == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_conn *c = reply->c;
  reply_release(reply);
  if (c == NULL || c->state != ST_REPLY)
    return IMC_ERR_CLOSED;
  int rv = gw_http_answer(c, status, content_type ? content_type : "text/plain",
                          headers, (const char *)body, body ? len : 0);
  return rv;
}

/*
 * The length of the body that follows a request head: 0 (none), the
 * Content-Length, or -1 after answering an error (a bad, repeated or too
 * large Content-Length, a chunked body).
 */
static long long body_length(imc_conn *c, const imc_http_req *req) {
  if (imc_http_find(req, "Transfer-Encoding") != NULL) {
    gw_http_error(c, 411, "LENGTH_REQUIRED",
                  "send the body with a Content-Length", NULL);
    return -1;
  }
  unsigned long long v;
  if (imc_http_content_length(req, &v) < 0) {
    gw_http_error(c, 400, "BAD_REQUEST",
                  "Content-Length must be one decimal number", NULL);
    return -1;
  }
  if (v > IMC_HTTP_BODY_MAX) {
    gw_http_error(c, 413, "TOO_LARGE", "request body too large", NULL);
    return -1;
  }
  return (long long)v;
}

/* buf[0..len) holds the head (head_len bytes) and at least the body. */
static int handle_request(imc_conn *c, const imc_http_req *req, const char *buf,
                          size_t len, size_t head_len, size_t body_len) {
  if (imc_span_ieq(req->path, "/ws") && !c->gw->o.http_only)
    return gw_handle_upgrade(c, req, buf, len, head_len, NULL);
  if (imc_span_ieq(req->path, "/healthz")) {
    if (!imc_span_ieq(req->method, "GET") && !imc_span_ieq(req->method, "HEAD"))
      gw_http_error(c, 405, "METHOD_NOT_ALLOWED", "use GET", "Allow: GET\r\n");
    else
      gw_http_answer(c, 200, "application/json", NULL, "{\"status\":\"ok\"}\n",
                     16);
    return gw_conn_check(c);
  }
  if (gw_http_handle(c, req, buf + head_len, body_len))
    return gw_conn_check(c);
  gw_http_error(c, 404, "NOT_FOUND", "no such resource", NULL);
  return gw_conn_check(c);
}

/* Request head bytes. Returns 0 or a negative code (c freed). */
int gw_http_recv(imc_conn *c, const uint8_t *data, size_t len) {
  imc_gateway *gw = c->gw;
  const char *buf = (const char *)data;
  size_t blen = len;
  if (c->head != NULL) {
    char *nb = imc_realloc(&gw->mem, c->head, c->head_len + len);
    if (nb == NULL) {
      c->flags |= F_ABORT | F_NOMEM;
      return gw_conn_check(c);
    }
    memcpy(nb + c->head_len, data, len);
    c->head = nb;
    c->head_len += len;
    buf = nb;
    blen = c->head_len;
  }
  imc_http_hdr hdrs[MAX_HDRS];
  imc_http_req req;
  int n = imc_http_parse_request(buf, blen, &req, hdrs, MAX_HDRS);
  if (n == IMC_ERR_INCOMPLETE && blen <= HEAD_MAX) {
    if (c->head == NULL && gw_keep_head(c, buf, blen) != 0) {
      c->flags |= F_ABORT | F_NOMEM;
      return gw_conn_check(c);
    }
    return 0;
  }
  if (n == IMC_ERR_INCOMPLETE || n == IMC_ERR_TOO_LARGE || n > HEAD_MAX) {
    gw_http_error(c, 431, "TOO_LARGE", "request head too large", NULL);
    return gw_conn_check(c);
  }
  if (n < 0) {
    gw_http_error(c, 400, "BAD_REQUEST", "malformed request", NULL);
    return gw_conn_check(c);
  }
  /* HEAD is GET without the body (RFC 9110 9.3.2); methods are
   * case-sensitive. */
  if (req.method.len == 4 && memcmp(req.method.p, "HEAD", 4) == 0)
    c->flags |= F_HEAD;
  imc_span host;
  if (imc_http_host(&req, &host) != 0) {
    gw_http_error(c, 400, "BAD_REQUEST",
                  "a request needs exactly one valid Host header", NULL);
    return gw_conn_check(c);
  }
  /* A body is read whole before the handler sees the request. */
  long long body = body_length(c, &req);
  if (body < 0)
    return gw_conn_check(c);
  if (imc_span_ieq(req.path, "/ws") && !gw->o.http_only) {
    if (body > 0) {
      gw_http_error(c, 400, "BAD_REQUEST", "an upgrade request has no body",
                    NULL);
      return gw_conn_check(c);
    }
    return handle_request(c, &req, buf, blen, (size_t)n, 0);
  }
  if (blen - (size_t)n < (size_t)body) {
    if (c->head == NULL && gw_keep_head(c, buf, blen) != 0) {
      c->flags |= F_ABORT | F_NOMEM;
      return gw_conn_check(c);
    }
    return 0;
  }
  return handle_request(c, &req, buf, blen, (size_t)n, (size_t)body);
}
