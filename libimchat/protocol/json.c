/* Allocation-free JSON scanning: validation, member lookup, array
 * iteration, string and integer decoding. */
#include "protocol/json.h"
#include "util/hex.h"

#include <imchat/common.h>

#include <string.h>

static const char *skip_ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
    p++;
  return p;
}

static int is_digit(char c) {
  return c >= '0' && c <= '9';
}

static int read_hex4(const char **pp, const char *end, uint32_t *cp) {
  const char *p = *pp;
  uint32_t v = 0;
  if (end - p < 4)
    return -1;
  for (int i = 0; i < 4; i++) {
    int h = imc_hexval(p[i]);
    if (h < 0)
      return -1;
    v = v << 4 | (uint32_t)h;
  }
  *pp = p + 4;
  *cp = v;
  return 0;
}

/* Bytes past outcap are counted but not stored, so one routine serves
 * validation (outcap 0), comparison and decoding. */
static void put(char *out, size_t outcap, size_t *n, uint32_t b) {
  if (*n < outcap)
    out[*n] = (char)b;
  (*n)++;
}

static void put_utf8(char *out, size_t outcap, size_t *n, uint32_t cp) {
  if (cp < 0x80) {
    put(out, outcap, n, cp);
  } else if (cp < 0x800) {
    put(out, outcap, n, 0xC0 | cp >> 6);
    put(out, outcap, n, 0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    put(out, outcap, n, 0xE0 | cp >> 12);
    put(out, outcap, n, 0x80 | (cp >> 6 & 0x3F));
    put(out, outcap, n, 0x80 | (cp & 0x3F));
  } else {
    put(out, outcap, n, 0xF0 | cp >> 18);
    put(out, outcap, n, 0x80 | (cp >> 12 & 0x3F));
    put(out, outcap, n, 0x80 | (cp >> 6 & 0x3F));
    put(out, outcap, n, 0x80 | (cp & 0x3F));
  }
}

/* *pp points just past the opening quote and is left just past the
 * closing one. *outlen receives the full decoded length. */
static int scan_string(const char **pp, const char *end, char *out,
                       size_t outcap, size_t *outlen) {
  const char *p = *pp;
  size_t n = 0;
  while (p < end) {
    unsigned char c = (unsigned char)*p++;
    if (c == '"') {
      *pp = p;
      *outlen = n;
      return 0;
    }
    if (c < 0x20)
      return IMC_ERR_PROTO;
    if (c != '\\') {
      put(out, outcap, &n, c);
      continue;
    }
    if (p >= end)
      return IMC_ERR_PROTO;
    c = (unsigned char)*p++;
    switch (c) {
    case '"':
    case '\\':
    case '/':
      put(out, outcap, &n, c);
      break;
    case 'b':
      put(out, outcap, &n, '\b');
      break;
    case 'f':
      put(out, outcap, &n, '\f');
      break;
    case 'n':
      put(out, outcap, &n, '\n');
      break;
    case 'r':
      put(out, outcap, &n, '\r');
      break;
    case 't':
      put(out, outcap, &n, '\t');
      break;
    case 'u': {
      uint32_t cp, lo;
      if (read_hex4(&p, end, &cp) < 0)
        return IMC_ERR_PROTO;
      if (cp >= 0xDC00 && cp <= 0xDFFF)
        return IMC_ERR_PROTO;
      if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (end - p < 2 || p[0] != '\\' || p[1] != 'u')
          return IMC_ERR_PROTO;
        p += 2;
        if (read_hex4(&p, end, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF)
          return IMC_ERR_PROTO;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      }
      put_utf8(out, outcap, &n, cp);
      break;
    }
    default:
      return IMC_ERR_PROTO;
    }
  }
  return IMC_ERR_PROTO;
}

static int scan_literal(const char **pp, const char *end, const char *lit) {
  size_t n = strlen(lit);
  if ((size_t)(end - *pp) < n || memcmp(*pp, lit, n) != 0)
    return IMC_ERR_PROTO;
  *pp += n;
  return 0;
}

static int scan_number(const char **pp, const char *end) {
  const char *p = *pp;
  if (p < end && *p == '-')
    p++;
  if (p >= end || !is_digit(*p))
    return IMC_ERR_PROTO;
  if (*p == '0') {
    p++;
  } else {
    while (p < end && is_digit(*p))
      p++;
  }
  if (p < end && *p == '.') {
    p++;
    if (p >= end || !is_digit(*p))
      return IMC_ERR_PROTO;
    while (p < end && is_digit(*p))
      p++;
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    p++;
    if (p < end && (*p == '+' || *p == '-'))
      p++;
    if (p >= end || !is_digit(*p))
      return IMC_ERR_PROTO;
    while (p < end && is_digit(*p))
      p++;
  }
  *pp = p;
  return 0;
}

/* *pp points at the first byte of the value (no leading whitespace). */
static int scan_value(const char **pp, const char *end, int depth,
                      imc_json_type *type) {
  const char *p = *pp;
  size_t n;
  int rv;
  imc_json_type t;

  if (p >= end)
    return IMC_ERR_PROTO;
  switch (*p) {
  case '{':
    if (depth >= IMC_JSON_MAX_DEPTH)
      return IMC_ERR_PROTO;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') {
      p++;
    } else {
      for (;;) {
        if (p >= end || *p != '"')
          return IMC_ERR_PROTO;
        p++;
        if ((rv = scan_string(&p, end, NULL, 0, &n)) < 0)
          return rv;
        p = skip_ws(p, end);
        if (p >= end || *p != ':')
          return IMC_ERR_PROTO;
        p = skip_ws(p + 1, end);
        if ((rv = scan_value(&p, end, depth + 1, &t)) < 0)
          return rv;
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
          p = skip_ws(p + 1, end);
          continue;
        }
        if (p < end && *p == '}') {
          p++;
          break;
        }
        return IMC_ERR_PROTO;
      }
    }
    *type = IMC_JSON_OBJECT;
    break;
  case '[':
    if (depth >= IMC_JSON_MAX_DEPTH)
      return IMC_ERR_PROTO;
    p = skip_ws(p + 1, end);
    if (p < end && *p == ']') {
      p++;
    } else {
      for (;;) {
        if ((rv = scan_value(&p, end, depth + 1, &t)) < 0)
          return rv;
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
          p = skip_ws(p + 1, end);
          continue;
        }
        if (p < end && *p == ']') {
          p++;
          break;
        }
        return IMC_ERR_PROTO;
      }
    }
    *type = IMC_JSON_ARRAY;
    break;
  case '"':
    p++;
    if ((rv = scan_string(&p, end, NULL, 0, &n)) < 0)
      return rv;
    *type = IMC_JSON_STRING;
    break;
  case 't':
    if ((rv = scan_literal(&p, end, "true")) < 0)
      return rv;
    *type = IMC_JSON_TRUE;
    break;
  case 'f':
    if ((rv = scan_literal(&p, end, "false")) < 0)
      return rv;
    *type = IMC_JSON_FALSE;
    break;
  case 'n':
    if ((rv = scan_literal(&p, end, "null")) < 0)
      return rv;
    *type = IMC_JSON_NULL;
    break;
  default:
    if ((rv = scan_number(&p, end)) < 0)
      return rv;
    *type = IMC_JSON_NUMBER;
    break;
  }
  *pp = p;
  return 0;
}

int imc_json_parse(const char *text, size_t len, imc_json_value *out) {
  if (text == NULL || out == NULL)
    return IMC_ERR_PROTO;
  const char *end = text + len;
  const char *start = skip_ws(text, end);
  const char *p = start;
  imc_json_type t;
  int rv = scan_value(&p, end, 0, &t);
  if (rv < 0)
    return rv;
  if (skip_ws(p, end) != end)
    return IMC_ERR_PROTO;
  out->type = t;
  out->p = start;
  out->len = (size_t)(p - start);
  return 0;
}

int imc_json_member(const imc_json_value *obj, const char *name,
                    imc_json_value *out) {
  if (obj == NULL || obj->type != IMC_JSON_OBJECT || name == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  size_t nlen = strlen(name);
  if (nlen > IMC_JSON_NAME_MAX)
    return IMC_ERR_INVALID_ARGUMENT;

  const char *end = obj->p + obj->len;
  const char *p = skip_ws(obj->p + 1, end);
  char key[IMC_JSON_NAME_MAX];
  int found = 0;
  int rv;

  if (p < end && *p == '}')
    return IMC_ERR_NOT_FOUND;
  for (;;) {
    size_t klen;
    imc_json_type t;
    if (p >= end || *p != '"')
      return IMC_ERR_PROTO;
    p++;
    if ((rv = scan_string(&p, end, key, sizeof(key), &klen)) < 0)
      return rv;
    p = skip_ws(p, end);
    if (p >= end || *p != ':')
      return IMC_ERR_PROTO;
    p = skip_ws(p + 1, end);
    const char *vstart = p;
    if ((rv = scan_value(&p, end, 1, &t)) < 0)
      return rv;
    if (klen == nlen && memcmp(key, name, nlen) == 0) {
      if (found)
        return IMC_ERR_PROTO;
      found = 1;
      if (out != NULL) {
        out->type = t;
        out->p = vstart;
        out->len = (size_t)(p - vstart);
      }
    }
    p = skip_ws(p, end);
    if (p < end && *p == ',') {
      p = skip_ws(p + 1, end);
      continue;
    }
    if (p < end && *p == '}')
      break;
    return IMC_ERR_PROTO;
  }
  return found ? 0 : IMC_ERR_NOT_FOUND;
}

int imc_json_array_next(const imc_json_value *arr, size_t *pos,
                        imc_json_value *elem) {
  if (arr == NULL || arr->type != IMC_JSON_ARRAY || pos == NULL ||
      *pos >= arr->len)
    return IMC_ERR_INVALID_ARGUMENT;

  const char *end = arr->p + arr->len;
  const char *p = skip_ws(arr->p + (*pos == 0 ? 1 : *pos), end);
  if (p < end && *p == ']')
    return 0;
  if (*pos != 0) {
    if (p >= end || *p != ',')
      return IMC_ERR_PROTO;
    p = skip_ws(p + 1, end);
  }
  const char *vstart = p;
  imc_json_type t;
  int rv = scan_value(&p, end, 1, &t);
  if (rv < 0)
    return rv;
  if (elem != NULL) {
    elem->type = t;
    elem->p = vstart;
    elem->len = (size_t)(p - vstart);
  }
  *pos = (size_t)(p - arr->p);
  return 1;
}

ssize_t imc_json_string(const imc_json_value *v, char *out, size_t outcap) {
  if (v == NULL || v->type != IMC_JSON_STRING || v->len < 2)
    return IMC_ERR_INVALID_ARGUMENT;
  if (out == NULL)
    outcap = 0;
  const char *p = v->p + 1;
  size_t n;
  int rv = scan_string(&p, v->p + v->len, out, outcap, &n);
  if (rv < 0)
    return rv;
  if (n >= outcap)
    return IMC_ERR_TOO_LARGE;
  /* Callers treat the result as a C string: an embedded NUL would let
   * "alice\u0000x" pass as "alice". */
  if (memchr(out, '\0', n) != NULL)
    return IMC_ERR_PROTO;
  out[n] = '\0';
  return (ssize_t)n;
}

int imc_json_int64(const imc_json_value *v, int64_t *out) {
  if (v == NULL || v->type != IMC_JSON_NUMBER || v->len == 0)
    return IMC_ERR_INVALID_ARGUMENT;

  const char *p = v->p, *end = v->p + v->len;
  int neg = 0;
  if (*p == '-') {
    neg = 1;
    p++;
  }
  const char *ip = p;
  while (p < end && is_digit(*p))
    p++;
  int64_t ni = p - ip;
  const char *fp = p;
  int64_t nf = 0;
  if (p < end && *p == '.') {
    fp = ++p;
    while (p < end && is_digit(*p))
      p++;
    nf = p - fp;
  }
  int64_t e = 0;
  if (p < end && (*p == 'e' || *p == 'E')) {
    int eneg = 0;
    p++;
    if (p < end && (*p == '+' || *p == '-'))
      eneg = *p++ == '-';
    /* Capped: past it any nonzero value overflows, and zero stays zero. */
    for (; p < end && is_digit(*p); p++)
      if (e < 100000)
        e = e * 10 + (*p - '0');
    if (eneg)
      e = -e;
  }
  if (p != end)
    return IMC_ERR_INVALID_ARGUMENT;

  /* The integer part is the first ni + e digits of int||frac, padded with
   * zeros; the rest is the truncated fraction. */
  uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
  uint64_t acc = 0;
  int64_t ndig = ni + e;
  for (int64_t i = 0; i < ndig; i++) {
    unsigned d = 0;
    if (i < ni)
      d = (unsigned)(ip[i] - '0');
    else if (i - ni < nf)
      d = (unsigned)(fp[i - ni] - '0');
    if (acc > (limit - d) / 10)
      return IMC_ERR_TOO_LARGE;
    acc = acc * 10 + d;
  }
  if (neg)
    *out = acc == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)acc;
  else
    *out = (int64_t)acc;
  return 0;
}
