/*
 * HTTP/1.x answers as the gateway sends them: a status line, headers and
 * a body of Content-Length bytes. Allocation-free, over the caller's
 * bytes.
 */
#include "client/client_int.h"

#include <string.h>

size_t cl_http_head_len(const uint8_t *data, size_t len) {
  for (size_t i = 0; i + 1 < len; i++) {
    if (data[i] != '\n')
      continue;
    if (data[i + 1] == '\n')
      return i + 2;
    if (i + 2 < len && data[i + 1] == '\r' && data[i + 2] == '\n')
      return i + 3;
  }
  return 0;
}

static int ieq(const char *a, size_t n, const char *b) {
  if (strlen(b) != n)
    return 0;
  for (size_t i = 0; i < n; i++) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z')
      x = (char)(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z')
      y = (char)(y - 'A' + 'a');
    if (x != y)
      return 0;
  }
  return 1;
}

int cl_http_header(const uint8_t *head, size_t len, const char *name,
                   const char **val, size_t *val_len) {
  const char *p = (const char *)head, *end = p + len;
  const char *nl = memchr(p, '\n', len); /* skip the status line */
  while (nl && nl + 1 < end) {
    const char *line = nl + 1;
    nl = memchr(line, '\n', (size_t)(end - line));
    if (nl == NULL)
      break;
    const char *le = nl;
    if (le > line && le[-1] == '\r')
      le--;
    const char *colon = memchr(line, ':', (size_t)(le - line));
    if (colon == NULL)
      continue;
    if (!ieq(line, (size_t)(colon - line), name))
      continue;
    const char *v = colon + 1;
    while (v < le && (*v == ' ' || *v == '\t'))
      v++;
    const char *ve = le;
    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
      ve--;
    *val = v;
    *val_len = (size_t)(ve - v);
    return 1;
  }
  return 0;
}

int cl_http_response(const uint8_t *data, size_t len, int *status,
                     const uint8_t **body, size_t *body_len) {
  size_t hl = cl_http_head_len(data, len);
  if (hl == 0)
    return len > 16384 ? IMC_ERR_PROTO : IMC_ERR_INCOMPLETE;
  /* "HTTP/1.x NNN" */
  if (hl < 12 || memcmp(data, "HTTP/1.", 7) != 0 || data[8] != ' ')
    return IMC_ERR_PROTO;
  int s = 0;
  for (int i = 9; i < 12; i++) {
    if (data[i] < '0' || data[i] > '9')
      return IMC_ERR_PROTO;
    s = s * 10 + (data[i] - '0');
  }
  *status = s;
  const char *v;
  size_t vl;
  size_t clen = len - hl;
  if (cl_http_header(data, hl, "Content-Length", &v, &vl)) {
    uint64_t n = 0;
    if (vl == 0 || vl > 12)
      return IMC_ERR_PROTO;
    for (size_t i = 0; i < vl; i++) {
      if (v[i] < '0' || v[i] > '9')
        return IMC_ERR_PROTO;
      n = n * 10 + (uint64_t)(v[i] - '0');
    }
    if (len - hl < n)
      return IMC_ERR_INCOMPLETE;
    clen = (size_t)n;
  }
  *body = data + hl;
  *body_len = clen;
  return 0;
}
