/*
 * HTTP/1.1 request heads, query strings, origins and the WebSocket keys.
 * Parsers only: they never allocate and work over the caller's buffer;
 * every span they return points into that buffer (or is a constant).
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
  imc_span target;    /* the raw request-target */
  imc_span authority; /* host[:port] of an absolute-form target, or empty */
  imc_span path;      /* target up to '?' (not decoded); "/" for an
                         absolute-form target without a path */
  imc_span query;     /* after '?', empty if none (not decoded) */
  int minor_version;  /* HTTP/1.x */
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
 * obsolete line folding). Lone LF line ends are accepted. An
 * absolute-form target (RFC 9112 3.2.2: "http://host/ws?q") is split like
 * an origin-form one, its host in authority; one with userinfo or
 * without a valid host is IMC_ERR_PROTO.
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

/* How many header lines are named name (case-insensitive). */
size_t imc_http_count(const imc_http_req *req, const char *name);

/*
 * 1 if span is a valid host[:port] (RFC 3986 3.2.2-3.2.3: a reg-name, an
 * IPv4 address or a bracketed IP literal, then an optional decimal port),
 * else 0. Empty is not valid.
 */
int imc_http_host_valid(imc_span span);

/*
 * The host the request is for (RFC 9112 3.2): the authority of an
 * absolute-form target, else the Host header. An HTTP/1.1 request must
 * carry exactly one Host header and an HTTP/1.0 one at most one, with a
 * valid value (empty only if an absolute-form target gives the host).
 * Returns 0 and sets *host (empty when an HTTP/1.0 request names none),
 * or IMC_ERR_PROTO.
 */
int imc_http_host(const imc_http_req *req, imc_span *host);

/*
 * The Content-Length of the request (RFC 9112 6.3): 0 with *len = 0 when
 * there is none, 1 with *len set, or IMC_ERR_PROTO when it is not one
 * decimal number (a list, or the header repeated, even with equal
 * values, are refused: a disagreement between parsers is what request
 * smuggling lives on) or does not fit in 64 bits.
 */
int imc_http_content_length(const imc_http_req *req, unsigned long long *len);

/*
 * Writes the serialized origin (RFC 6454 6.2) of an Origin header value
 * "scheme://host[:port]" into out: scheme and host in lower case, the
 * port left out when it is the scheme's default (80 for http and ws, 443
 * for https and wss), NUL-terminated. With host set, the host part of the
 * value is replaced by it (a request's Host, to build the origin of the
 * server's own pages under the value's scheme). Returns the length,
 * IMC_ERR_PROTO if value is not such an origin (a path, userinfo, "null",
 * a bad host) or IMC_ERR_TOO_LARGE if out is too small.
 */
ssize_t imc_http_origin(imc_span value, const imc_span *host, char *out,
                        size_t cap);

/*
 * 1 if key is a valid Sec-WebSocket-Key (RFC 6455 4.1): the base64 of
 * exactly 16 bytes, that is 22 characters of the standard alphabet, the
 * last of them with its 4 padding bits zero, and "==". Else 0.
 */
int imc_ws_key_valid(imc_span key);

/*
 * Writes the Sec-WebSocket-Accept value for the client's key (base64 of
 * SHA-1(key + GUID)) into out as a NUL-terminated string of 28 chars.
 */
void imc_ws_accept(imc_span key, char out[29]);

#endif /* IMC_HTTP_H */
