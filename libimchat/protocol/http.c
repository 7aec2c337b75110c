/* HTTP/1.1 request-head parsing (RFC 9112) over the caller's buffer,
 * the message-level rules a server checks (Host, Content-Length), query
 * strings, origins and the WebSocket keys. Nothing here allocates. */
#include "protocol/http.h"
#include "util/hex.h"

#include <imchat/common.h>

#include <limits.h>
#include <stdio.h>
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

static int is_alpha(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_digit(unsigned char c) {
  return c >= '0' && c <= '9';
}

/* The length of a scheme and its "://" at the start of t, or 0. */
static size_t scheme_len(imc_span t) {
  size_t i = 0;
  if (t.len == 0 || !is_alpha((unsigned char)t.p[0]))
    return 0;
  while (i < t.len &&
         (is_alpha((unsigned char)t.p[i]) || is_digit((unsigned char)t.p[i]) ||
          t.p[i] == '+' || t.p[i] == '-' || t.p[i] == '.'))
    i++;
  if (t.len - i < 3 || memcmp(t.p + i, "://", 3) != 0)
    return 0;
  return i + 3;
}

/* scheme_len for the http and https schemes only. */
static size_t http_scheme_len(imc_span t) {
  size_t n = scheme_len(t);
  imc_span scheme = {t.p, n >= 3 ? n - 3 : 0};
  return imc_span_ieq(scheme, "http") || imc_span_ieq(scheme, "https") ? n : 0;
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

  imc_span rest = r.target;
  size_t sl = http_scheme_len(r.target);
  if (sl > 0) {
    /* absolute-form: "http://" authority, then origin-form's parts. */
    const char *a = r.target.p + sl, *end = r.target.p + r.target.len;
    const char *e = a;
    while (e < end && *e != '/' && *e != '?')
      e++;
    r.authority.p = a;
    r.authority.len = (size_t)(e - a);
    if (!imc_http_host_valid(r.authority))
      return IMC_ERR_PROTO; /* no host, or userinfo (RFC 9110 4.2.4) */
    rest.p = e;
    rest.len = (size_t)(end - e);
  } else {
    r.authority.p = r.target.p;
  }
  const char *q = memchr(rest.p, '?', rest.len);
  r.path.p = rest.p;
  if (q != NULL) {
    r.path.len = (size_t)(q - rest.p);
    r.query.p = q + 1;
    r.query.len = rest.len - r.path.len - 1;
  } else {
    r.path.len = rest.len;
    r.query.p = rest.p + rest.len;
    r.query.len = 0;
  }
  if (sl > 0 && r.path.len == 0) {
    r.path.p = "/";
    r.path.len = 1;
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

size_t imc_http_count(const imc_http_req *req, const char *name) {
  size_t n = 0;
  if (req == NULL || name == NULL)
    return 0;
  for (size_t i = 0; i < req->n_hdrs; i++)
    n += imc_span_ieq(req->hdrs[i].name, name);
  return n;
}

static int is_hex(unsigned char c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* reg-name characters (RFC 3986 3.2.2): unreserved and sub-delims;
 * percent-escapes are checked by the caller. */
static int is_regname(unsigned char c) {
  return is_alpha(c) || is_digit(c) ||
         (c != '\0' && strchr("-._~!$&'()*+,;=", c));
}

/* Where the host of a host[:port] ends (0 if the host is not valid). */
static size_t host_end(imc_span s) {
  size_t i = 0;
  if (s.len > 0 && s.p[0] == '[') {
    /* IP-literal: an IPv6 address or IPvFuture, in brackets. */
    for (i = 1; i < s.len && s.p[i] != ']'; i++)
      if (!is_regname((unsigned char)s.p[i]) && s.p[i] != ':')
        return 0;
    return i < s.len && i > 1 ? i + 1 : 0;
  }
  while (i < s.len && s.p[i] != ':') {
    if (s.p[i] == '%') {
      if (s.len - i < 3 || !is_hex((unsigned char)s.p[i + 1]) ||
          !is_hex((unsigned char)s.p[i + 2]))
        return 0;
      i += 3;
      continue;
    }
    if (!is_regname((unsigned char)s.p[i]))
      return 0;
    i++;
  }
  return i;
}

/* The port after the host at s[at..): 0 if none (or empty), -1 if bad. */
static long port_of(imc_span s, size_t at) {
  if (at == s.len || at + 1 == s.len)
    return at == s.len || s.p[at] == ':' ? 0 : -1;
  if (s.p[at] != ':' || s.len - at - 1 > 5)
    return -1;
  long v = 0;
  for (size_t i = at + 1; i < s.len; i++) {
    if (!is_digit((unsigned char)s.p[i]))
      return -1;
    v = v * 10 + (s.p[i] - '0');
  }
  return v <= 65535 ? v : -1;
}

int imc_http_host_valid(imc_span s) {
  if (s.p == NULL)
    return 0;
  size_t e = host_end(s);
  return e > 0 && port_of(s, e) >= 0;
}

int imc_http_host(const imc_http_req *req, imc_span *host) {
  if (req == NULL || host == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  size_t n = imc_http_count(req, "Host");
  const imc_http_hdr *h = imc_http_find(req, "Host");
  if (n > 1 || (n == 0 && req->minor_version == 1))
    return IMC_ERR_PROTO;
  /* An absolute-form target names the host; Host must still be there
   * (HTTP/1.1) and well-formed, but is not used (RFC 9112 3.2.2). */
  if (h != NULL && !imc_http_host_valid(h->value) &&
      !(h->value.len == 0 && req->authority.len > 0))
    return IMC_ERR_PROTO;
  if (req->authority.len > 0)
    *host = req->authority;
  else if (h != NULL)
    *host = h->value;
  else
    *host = (imc_span){"", 0};
  return 0;
}

int imc_http_content_length(const imc_http_req *req, unsigned long long *len) {
  if (req == NULL || len == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  *len = 0;
  size_t n = imc_http_count(req, "Content-Length");
  if (n == 0)
    return 0;
  const imc_http_hdr *h = imc_http_find(req, "Content-Length");
  /* 19 digits always fit in 64 bits. */
  if (n > 1 || h->value.len == 0 || h->value.len > 19)
    return IMC_ERR_PROTO;
  unsigned long long v = 0;
  for (size_t i = 0; i < h->value.len; i++) {
    if (!is_digit((unsigned char)h->value.p[i]))
      return IMC_ERR_PROTO;
    v = v * 10 + (unsigned)(h->value.p[i] - '0');
  }
  *len = v;
  return 1;
}

/* Appends s[0..n) in lower case to out at *at; 0 if it does not fit. */
static int put_lower(char *out, size_t cap, size_t *at, const char *s,
                     size_t n) {
  if (cap - *at <= n)
    return 0;
  for (size_t i = 0; i < n; i++)
    out[(*at)++] = (char)ascii_lower((unsigned char)s[i]);
  out[*at] = '\0';
  return 1;
}

ssize_t imc_http_origin(imc_span value, const imc_span *host, char *out,
                        size_t cap) {
  if (out == NULL || cap == 0 || (value.p == NULL && value.len > 0))
    return IMC_ERR_INVALID_ARGUMENT;
  size_t sl = scheme_len(value);
  if (sl == 0)
    return IMC_ERR_PROTO;
  imc_span scheme = {value.p, sl - 3};
  imc_span auth = {value.p + sl, value.len - sl};
  if (!imc_http_host_valid(auth) || (host && !imc_http_host_valid(*host)))
    return IMC_ERR_PROTO;
  if (host)
    auth = *host;
  size_t he = host_end(auth);
  long port = port_of(auth, he);
  long def = imc_span_ieq(scheme, "http") || imc_span_ieq(scheme, "ws") ? 80
             : imc_span_ieq(scheme, "https") || imc_span_ieq(scheme, "wss")
                 ? 443
                 : 0;
  size_t at = 0;
  out[0] = '\0';
  if (!put_lower(out, cap, &at, scheme.p, scheme.len) ||
      !put_lower(out, cap, &at, "://", 3) ||
      !put_lower(out, cap, &at, auth.p, he))
    return IMC_ERR_TOO_LARGE;
  if (port > 0 && port != def) {
    char num[8];
    int n = snprintf(num, sizeof(num), ":%ld", port);
    if (!put_lower(out, cap, &at, num, (size_t)n))
      return IMC_ERR_TOO_LARGE;
  }
  return (ssize_t)at;
}

/* The value of a base64 digit (standard alphabet), or -1. */
static int b64_digit(unsigned char c) {
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (is_digit(c))
    return c - '0' + 52;
  return c == '+' ? 62 : c == '/' ? 63 : -1;
}

int imc_ws_key_valid(imc_span key) {
  if (key.p == NULL || key.len != 24 || key.p[22] != '=' || key.p[23] != '=')
    return 0;
  for (size_t i = 0; i < 22; i++)
    if (b64_digit((unsigned char)key.p[i]) < 0)
      return 0;
  /* 16 bytes are 128 bits: the 22nd digit carries 2 of them and 4 zero
   * bits of padding. */
  return (b64_digit((unsigned char)key.p[21]) & 0x0f) == 0;
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
