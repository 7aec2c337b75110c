/* POST /dev/login (see dev_login.h). */
#include "dev_login.h"

#include "log.h"

#include <imchat/jwt.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

struct devlogin {
  uint8_t *secret;
  size_t secret_len;
  char *issuer, *audience;
  uint32_t ttl_s;
  const imc_http_handler_vtbl *next;
  void *next_ud;
};

static char *dup_or_null(const char *s, int *fail) {
  if (s == NULL)
    return NULL;
  char *d = strdup(s);
  if (d == NULL)
    *fail = 1;
  return d;
}

int devlogin_new(devlogin **out, const uint8_t *secret, size_t secret_len,
                 const char *issuer, const char *audience, uint32_t ttl_s,
                 const imc_http_handler_vtbl *next, void *next_ud) {
  *out = NULL;
  devlogin *d = calloc(1, sizeof(*d));
  if (d == NULL)
    return -ENOMEM;
  int fail = 0;
  d->secret = malloc(secret_len ? secret_len : 1);
  d->issuer = dup_or_null(issuer, &fail);
  d->audience = dup_or_null(audience, &fail);
  if (d->secret == NULL || fail) {
    devlogin_del(d);
    return -ENOMEM;
  }
  memcpy(d->secret, secret, secret_len);
  d->secret_len = secret_len;
  d->ttl_s = ttl_s;
  d->next = next;
  d->next_ud = next_ud;
  *out = d;
  return 0;
}

void devlogin_del(devlogin *d) {
  if (d == NULL)
    return;
  if (d->secret)
    explicit_bzero(d->secret, d->secret_len);
  free(d->secret);
  free(d->issuer);
  free(d->audience);
  free(d);
}

int devlogin_host_is_loopback(const char *host) {
  struct in_addr a4;
  struct in6_addr a6;
  if (strcasecmp(host, "localhost") == 0)
    return 1;
  if (inet_pton(AF_INET, host, &a4) == 1)
    return (ntohl(a4.s_addr) >> 24) == 127;
  if (inet_pton(AF_INET6, host, &a6) == 1)
    return IN6_IS_ADDR_LOOPBACK(&a6);
  return 0;
}

/* JSON whitespace. */
static size_t skip_ws(const uint8_t *b, size_t len, size_t i) {
  while (i < len &&
         (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r'))
    i++;
  return i;
}

/* A string without escapes at b[i] == '"'; sets its span. Returns the
 * index after it, or 0 if there is none. */
static size_t json_str(const uint8_t *b, size_t len, size_t i, size_t *start,
                       size_t *n) {
  if (i >= len || b[i] != '"')
    return 0;
  size_t j = i + 1;
  while (j < len && b[j] != '"') {
    if (b[j] == '\\' || b[j] < 0x20)
      return 0;
    j++;
  }
  if (j >= len)
    return 0;
  *start = i + 1;
  *n = j - i - 1;
  return j + 1;
}

int devlogin_parse_user(const uint8_t *b, size_t len, char *out, size_t cap) {
  size_t i = skip_ws(b, len, 0), ks, kn, vs, vn;
  int found = 0;
  if (i >= len || b[i] != '{')
    return -1;
  i = skip_ws(b, len, i + 1);
  if (i < len && b[i] == '}')
    return -1;
  for (;;) {
    if ((i = json_str(b, len, i, &ks, &kn)) == 0)
      return -1;
    i = skip_ws(b, len, i);
    if (i >= len || b[i] != ':')
      return -1;
    i = skip_ws(b, len, i + 1);
    if ((i = json_str(b, len, i, &vs, &vn)) == 0)
      return -1;
    if (kn == 4 && memcmp(b + ks, "user", 4) == 0) {
      if (found || vn + 1 > cap)
        return -1;
      memcpy(out, b + vs, vn);
      out[vn] = '\0';
      found = 1;
    }
    i = skip_ws(b, len, i);
    if (i < len && b[i] == ',') {
      i = skip_ws(b, len, i + 1);
      continue;
    }
    if (i >= len || b[i] != '}')
      return -1;
    return found && skip_ws(b, len, i + 1) == len ? 0 : -1;
  }
}

static int reply_error(imc_http_reply *reply, int status, const char *code,
                       const char *message, const char *headers) {
  char body[256];
  int n = snprintf(body, sizeof(body),
                   "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}\n", code,
                   message);
  imc_http_reply_send(reply, status, "application/json", headers,
                      (const uint8_t *)body, (size_t)n);
  return 1;
}

/* 1 if the Content-Type is application/json (parameters allowed). */
static int is_json(const char *ct) {
  static const char json[] = "application/json";
  size_t n = sizeof(json) - 1;
  return strncasecmp(ct, json, n) == 0 &&
         (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

static int handle(void *ud, const imc_http_request *req,
                  imc_http_reply *reply) {
  devlogin *d = ud;
  if (strcmp(req->path, "/dev/login") != 0)
    return d->next ? d->next->handle(d->next_ud, req, reply) : 0;
  if (strcmp(req->method, "POST") != 0)
    return reply_error(reply, 405, "METHOD_NOT_ALLOWED", "use POST",
                       "Allow: POST\r\n");
  if (!is_json(req->content_type))
    return reply_error(reply, 415, "UNSUPPORTED_MEDIA_TYPE",
                       "send Content-Type: application/json", NULL);
  char user[128];
  if (devlogin_parse_user(req->body, req->body_len, user, sizeof(user)) < 0 ||
      !imc_id_valid(user, strlen(user)))
    return reply_error(reply, 400, "BAD_REQUEST",
                       "expected {\\\"user\\\": \\\"ID\\\"}, ID 1-64 of "
                       "[A-Za-z0-9_.@-]",
                       NULL);
  char token[IMC_JWT_SIGN_MAX];
  int64_t now = (int64_t)time(NULL);
  int rv = imc_jwt_sign_hs256(d->secret, d->secret_len, user, NULL, d->issuer,
                              d->audience, now, now + d->ttl_s, token,
                              sizeof(token));
  if (rv < 0)
    return reply_error(reply, 500, "INTERNAL", "cannot sign a token", NULL);
  hlog_warn("dev login: handed out a token for '%s' (--dev-login)", user);
  char body[IMC_JWT_SIGN_MAX + 256];
  int n = snprintf(body, sizeof(body),
                   "{\"token\":\"%s\",\"user\":\"%s\",\"expires_in\":%u}\n",
                   token, user, d->ttl_s);
  explicit_bzero(token, sizeof(token));
  imc_http_reply_send(reply, 200, "application/json", NULL,
                      (const uint8_t *)body, (size_t)n);
  explicit_bzero(body, sizeof(body));
  return 1;
}

static const imc_http_handler_vtbl vtbl = {sizeof(imc_http_handler_vtbl),
                                           handle};

const imc_http_handler_vtbl *devlogin_vtbl(void) {
  return &vtbl;
}
