/*
 * HTTP/1.1 request heads, query strings and the WebSocket accept key.
 * Parsers only: they never allocate and work over the caller's buffer;
 * every span they return points into that buffer.
 */
#ifndef IMC_HTTP_H
#define IMC_HTTP_H

#include <stddef.h>
#include <sys/types.h>

typedef struct imc_span {
  const char *p;
  size_t len;
} imc_span;

typedef struct imc_http_hdr {
  imc_span name;
  imc_span value; /* without surrounding whitespace */
} imc_http_hdr;

typedef struct imc_http_req {
  imc_span method;
  imc_span target;   /* the raw request-target */
  imc_span path;     /* target up to '?' (not decoded) */
  imc_span query;    /* after '?', empty if none (not decoded) */
  int minor_version; /* HTTP/1.x */
  imc_http_hdr *hdrs;
  size_t n_hdrs;
} imc_http_req;

/*
 * Parses the request head at buf[0..len) into req, storing at most
 * max_hdrs headers in hdrs. Returns the length of the head including the
 * final CRLFCRLF, IMC_ERR_INCOMPLETE if the head is not complete yet,
 * IMC_ERR_TOO_LARGE if it has more than max_hdrs headers, or
 * IMC_ERR_PROTO if it is malformed (bad request line, not HTTP/1.x, a
 * header line without a colon or with a bad name, control characters,
 * obsolete line folding). Lone LF line ends are accepted.
 */
int imc_http_parse_request(const char *buf, size_t len, imc_http_req *req,
                           imc_http_hdr *hdrs, size_t max_hdrs);

/* The first header named name (case-insensitive), or NULL. */
const imc_http_hdr *imc_http_find(const imc_http_req *req, const char *name);

/*
 * 1 if the comma-separated header value contains token
 * (case-insensitive, surrounding whitespace ignored), else 0.
 */
int imc_http_has_token(imc_span value, const char *token);

/* 1 if span equals the NUL-terminated s, case-insensitive. */
int imc_span_ieq(imc_span span, const char *s);

/*
 * Iterates the key=value pairs of a query string: *pos starts at 0.
 * Returns 1 and sets key and value (raw, not decoded; value empty for a
 * key without '=') or 0 at the end. Empty pairs ("a=1&&b=2") are skipped.
 */
int imc_query_next(imc_span query, size_t *pos, imc_span *key, imc_span *value);

/*
 * Percent-decodes in into out (capacity outcap), turning '+' into ' ' and
 * NUL-terminating. Returns the decoded length, IMC_ERR_PROTO for a bad
 * escape or an encoded NUL, or IMC_ERR_TOO_LARGE if out is too small.
 */
ssize_t imc_pct_decode(imc_span in, char *out, size_t outcap);

/*
 * Finds key in query and percent-decodes its value into out. Returns the
 * decoded length, IMC_ERR_NOT_FOUND, or an error of imc_pct_decode.
 */
ssize_t imc_query_get(imc_span query, const char *key, char *out,
                      size_t outcap);

/*
 * Writes the Sec-WebSocket-Accept value for the client's key (base64 of
 * SHA-1(key + GUID)) into out as a NUL-terminated string of 28 chars.
 */
void imc_ws_accept(imc_span key, char out[29]);

#endif /* IMC_HTTP_H */
