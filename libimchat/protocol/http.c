/* HTTP/1.1 request-head parsing (RFC 9112) over the caller's buffer,
 * query strings and the WebSocket accept key. Nothing here allocates. */
#include "protocol/http.h"
#include "util/hex.h"

#include <imchat/common.h>

#include <limits.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

static int is_tchar(unsigned char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
      (c >= 'A' && c <= 'Z'))
    return 1;
  return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static unsigned char ascii_lower(unsigned char c) {
  return c >= 'A' && c <= 'Z' ? (unsigned char)(c + ('a' - 'A')) : c;
}

/* Consumes CRLF or a lone LF. */
static int eat_eol(const char **pp, const char *end) {
  const char *p = *pp;
  if (p >= end)
    return IMC_ERR_INCOMPLETE;
  if (*p == '\n') {
    *pp = p + 1;
    return 0;
  }
  if (*p != '\r')
    return IMC_ERR_PROTO;
  if (p + 1 >= end)
    return IMC_ERR_INCOMPLETE;
  if (p[1] != '\n')
    return IMC_ERR_PROTO;
  *pp = p + 2;
  return 0;
}

/*
 * Left to right, deciding each byte as soon as it is seen: a prefix of
 * the input yields either IMC_ERR_INCOMPLETE or the same result as the
 * whole, so garbage is refused without waiting for the end of the head.
 */
static int parse_head(const char *buf, size_t len, imc_http_req *req,
                      imc_http_hdr *hdrs, size_t max_hdrs) {
  const char *p = buf, *end = buf + len;
  const char *start;
  size_t n = 0;
  int rv;

  /* RFC 9112 2.2: empty lines before the request line are ignored. */
  while (p < end && (*p == '\r' || *p == '\n'))
    if ((rv = eat_eol(&p, end)) < 0)
      return rv;

  start = p;
  while (p < end && is_tchar((unsigned char)*p))
    p++;
  if (p >= end)
    return IMC_ERR_INCOMPLETE;
  if (p == start || *p != ' ')
    return IMC_ERR_PROTO;
  req->method.p = start;
  req->method.len = (size_t)(p - start);

  start = ++p;
  /* Visible ASCII only: clients percent-encode everything else. */
  while (p < end && (unsigned char)*p > 0x20 && (unsigned char)*p < 0x7F)
    p++;
  if (p >= end)
    return IMC_ERR_INCOMPLETE;
  if (p == start || *p != ' ')
    return IMC_ERR_PROTO;
  req->target.p = start;
  req->target.len = (size_t)(p - start);

  static const char version[] = "HTTP/1.";
  p++;
  for (size_t i = 0; i < sizeof(version) - 1; i++, p++) {
    if (p >= end)
      return IMC_ERR_INCOMPLETE;
    if (*p != version[i])
      return IMC_ERR_PROTO;
  }
  if (p >= end)
    return IMC_ERR_INCOMPLETE;
  if (*p != '0' && *p != '1')
    return IMC_ERR_PROTO;
  req->minor_version = *p++ - '0';
  if ((rv = eat_eol(&p, end)) < 0)
    return rv;

  for (;;) {
    if (p >= end)
      return IMC_ERR_INCOMPLETE;
    if (*p == '\r' || *p == '\n') {
      if ((rv = eat_eol(&p, end)) < 0)
        return rv;
      break;
    }
    /* obs-fold, or whitespace between the request line and the first
     * header: both must be rejected (RFC 9112 2.2, 5.2). */
    if (*p == ' ' || *p == '\t')
      return IMC_ERR_PROTO;
    if (n == max_hdrs)
      return IMC_ERR_TOO_LARGE;

    start = p;
    while (p < end && is_tchar((unsigned char)*p))
      p++;
    if (p >= end)
      return IMC_ERR_INCOMPLETE;
    /* No whitespace before the colon (RFC 9112 5.1). */
    if (p == start || *p != ':')
      return IMC_ERR_PROTO;
    hdrs[n].name.p = start;
    hdrs[n].name.len = (size_t)(p - start);

    p++;
    while (p < end && (*p == ' ' || *p == '\t'))
      p++;
    start = p;
    while (p < end && *p != '\r' && *p != '\n') {
      unsigned char c = (unsigned char)*p;
      if ((c < 0x20 && c != '\t') || c == 0x7F)
        return IMC_ERR_PROTO;
      p++;
    }
    if (p >= end)
      return IMC_ERR_INCOMPLETE;
    const char *vend = p;
    while (vend > start && (vend[-1] == ' ' || vend[-1] == '\t'))
      vend--;
    hdrs[n].value.p = start;
    hdrs[n].value.len = (size_t)(vend - start);
    if ((rv = eat_eol(&p, end)) < 0)
      return rv;
    n++;
  }

  req->hdrs = hdrs;
  req->n_hdrs = n;
  return (int)(p - buf);
}

int imc_http_parse_request(const char *buf, size_t len, imc_http_req *req,
                           imc_http_hdr *hdrs, size_t max_hdrs) {
  if (req == NULL || (buf == NULL && len > 0) || (hdrs == NULL && max_hdrs > 0))
    return IMC_ERR_INVALID_ARGUMENT;
  if (len == 0)
    return IMC_ERR_INCOMPLETE;

  /* The head length must fit the int result. */
  int clamped = len > INT_MAX;
  if (clamped)
    len = INT_MAX;

  imc_http_req r;
  memset(&r, 0, sizeof(r));
  int rv = parse_head(buf, len, &r, hdrs, max_hdrs);
  if (rv == IMC_ERR_INCOMPLETE && clamped)
    return IMC_ERR_TOO_LARGE;
  if (rv < 0)
    return rv;

  const char *q = memchr(r.target.p, '?', r.target.len);
  r.path.p = r.target.p;
  if (q != NULL) {
    r.path.len = (size_t)(q - r.target.p);
    r.query.p = q + 1;
    r.query.len = r.target.len - r.path.len - 1;
  } else {
    r.path.len = r.target.len;
    r.query.p = r.target.p + r.target.len;
    r.query.len = 0;
  }
  *req = r;
  return rv;
}

int imc_span_ieq(imc_span span, const char *s) {
  if (s == NULL)
    return 0;
  size_t n = strlen(s);
  if (span.len != n)
    return 0;
  for (size_t i = 0; i < n; i++)
    if (ascii_lower((unsigned char)span.p[i]) !=
        ascii_lower((unsigned char)s[i]))
      return 0;
  return 1;
}

const imc_http_hdr *imc_http_find(const imc_http_req *req, const char *name) {
  if (req == NULL || name == NULL)
    return NULL;
  for (size_t i = 0; i < req->n_hdrs; i++)
    if (imc_span_ieq(req->hdrs[i].name, name))
      return &req->hdrs[i];
  return NULL;
}

int imc_http_has_token(imc_span value, const char *token) {
  if (token == NULL || *token == '\0' || value.p == NULL)
    return 0;
  const char *p = value.p, *end = value.p + value.len;
  while (p <= end) {
    const char *comma = memchr(p, ',', (size_t)(end - p));
    const char *e = comma != NULL ? comma : end;
    const char *s = p;
    while (s < e && (*s == ' ' || *s == '\t'))
      s++;
    const char *t = e;
    while (t > s && (t[-1] == ' ' || t[-1] == '\t'))
      t--;
    imc_span item = {s, (size_t)(t - s)};
    if (imc_span_ieq(item, token))
      return 1;
    if (comma == NULL)
      break;
    p = comma + 1;
  }
  return 0;
}

int imc_query_next(imc_span query, size_t *pos, imc_span *key,
                   imc_span *value) {
  if (pos == NULL || query.p == NULL)
    return 0;
  size_t i = *pos;
  while (i < query.len && query.p[i] == '&')
    i++;
  if (i >= query.len) {
    *pos = query.len;
    return 0;
  }
  size_t start = i;
  while (i < query.len && query.p[i] != '&')
    i++;
  const char *pair = query.p + start;
  size_t plen = i - start;
  const char *eq = memchr(pair, '=', plen);
  imc_span k, v;
  if (eq != NULL) {
    k.p = pair;
    k.len = (size_t)(eq - pair);
    v.p = eq + 1;
    v.len = plen - k.len - 1;
  } else {
    k.p = pair;
    k.len = plen;
    v.p = pair + plen;
    v.len = 0;
  }
  if (key != NULL)
    *key = k;
  if (value != NULL)
    *value = v;
  *pos = i;
  return 1;
}

ssize_t imc_pct_decode(imc_span in, char *out, size_t outcap) {
  if (out == NULL)
    return outcap == 0 ? IMC_ERR_TOO_LARGE : IMC_ERR_INVALID_ARGUMENT;
  if (in.p == NULL && in.len > 0)
    return IMC_ERR_INVALID_ARGUMENT;
  size_t n = 0;
  for (size_t i = 0; i < in.len; i++) {
    char c = in.p[i];
    if (c == '+') {
      c = ' ';
    } else if (c == '%') {
      if (in.len - i < 3)
        return IMC_ERR_PROTO;
      int hi = imc_hexval(in.p[i + 1]), lo = imc_hexval(in.p[i + 2]);
      if (hi < 0 || lo < 0)
        return IMC_ERR_PROTO;
      c = (char)(hi << 4 | lo);
      i += 2;
    }
    /* The output is a C string: a NUL would truncate it silently. */
    if (c == '\0')
      return IMC_ERR_PROTO;
    if (n + 1 >= outcap)
      return IMC_ERR_TOO_LARGE;
    out[n++] = c;
  }
  if (outcap == 0)
    return IMC_ERR_TOO_LARGE;
  out[n] = '\0';
  return (ssize_t)n;
}

ssize_t imc_query_get(imc_span query, const char *key, char *out,
                      size_t outcap) {
  if (key == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  size_t klen = strlen(key);
  size_t pos = 0;
  imc_span k, v;
  while (imc_query_next(query, &pos, &k, &v))
    if (k.len == klen && memcmp(k.p, key, klen) == 0)
      return imc_pct_decode(v, out, outcap);
  return IMC_ERR_NOT_FOUND;
}

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_KEY_STACK 128 /* a valid key is 24 chars; longer ones are rare */

void imc_ws_accept(imc_span key, char out[29]) {
  unsigned char md[SHA_DIGEST_LENGTH];
  const size_t glen = sizeof(WS_GUID) - 1;

  memset(md, 0, sizeof(md));
  if (key.p == NULL)
    key.len = 0;
  if (key.len <= WS_KEY_STACK) {
    unsigned char in[WS_KEY_STACK + sizeof(WS_GUID)];
    if (key.len > 0)
      memcpy(in, key.p, key.len);
    memcpy(in + key.len, WS_GUID, glen);
    SHA1(in, key.len + glen, md);
  } else {
    /* Only an oversized key costs an OpenSSL allocation. If it fails the
     * zero digest yields an accept value the client will refuse. */
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) != 1 ||
        EVP_DigestUpdate(ctx, key.p, key.len) != 1 ||
        EVP_DigestUpdate(ctx, WS_GUID, glen) != 1 ||
        EVP_DigestFinal_ex(ctx, md, NULL) != 1)
      memset(md, 0, sizeof(md));
    EVP_MD_CTX_free(ctx);
  }
  /* 20 bytes encode to 28 chars plus the NUL EVP_EncodeBlock writes. */
  EVP_EncodeBlock((unsigned char *)out, md, (int)sizeof(md));
}
