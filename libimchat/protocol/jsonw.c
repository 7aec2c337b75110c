#include "protocol/jsonw.h"
#include "protocol/utf8.h"
#include "util/alloc.h"

#include <openssl/evp.h>

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define WBUF_MIN 256
/* Base64 is produced in slices: EVP_EncodeBlock counts in int. */
#define B64_SLICE (3 * 16384)

void imc_wbuf_init(imc_wbuf *b, const imc_mem *mem) {
  memset(b, 0, sizeof(*b));
  b->mem = mem;
}

void imc_wbuf_free(imc_wbuf *b) {
  imc_free(b->mem, b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

char *imc_wbuf_reserve(imc_wbuf *b, size_t n) {
  if (b->err != 0)
    return NULL;
  if (b->cap - b->len >= n)
    return b->p + b->len;
  if (n > SIZE_MAX / 2 - b->len) {
    b->err = IMC_ERR_NOMEM;
    return NULL;
  }
  size_t cap = b->cap ? b->cap : WBUF_MIN;
  while (cap - b->len < n)
    cap *= 2;
  char *p = imc_realloc(b->mem, b->p, cap);
  if (p == NULL) {
    b->err = IMC_ERR_NOMEM;
    return NULL;
  }
  b->p = p;
  b->cap = cap;
  return p + b->len;
}

void imc_wbuf_append(imc_wbuf *b, const void *data, size_t n) {
  if (n == 0)
    return;
  char *p = imc_wbuf_reserve(b, n);
  if (p == NULL)
    return;
  memcpy(p, data, n);
  b->len += n;
}

void imc_wbuf_puts(imc_wbuf *b, const char *s) {
  imc_wbuf_append(b, s, strlen(s));
}

void imc_wbuf_printf(imc_wbuf *b, const char *fmt, ...) {
  if (b->err != 0)
    return;
  /* Most lines fit the room already there; measure only if not. */
  va_list ap;
  va_start(ap, fmt);
  size_t room = b->cap - b->len;
  int n = vsnprintf(room ? b->p + b->len : NULL, room, fmt, ap);
  va_end(ap);
  if (n < 0) {
    b->err = IMC_ERR_INVALID_ARGUMENT;
    return;
  }
  if ((size_t)n >= room) {
    char *p = imc_wbuf_reserve(b, (size_t)n + 1);
    if (p == NULL)
      return;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
  }
  b->len += (size_t)n;
}

void imc_wbuf_base64(imc_wbuf *b, const uint8_t *data, size_t n) {
  while (n > 0) {
    size_t take = n > B64_SLICE ? B64_SLICE : n;
    size_t out = (take + 2) / 3 * 4;
    /* EVP_EncodeBlock adds a NUL, which the next append overwrites. */
    char *p = imc_wbuf_reserve(b, out + 1);
    if (p == NULL)
      return;
    EVP_EncodeBlock((unsigned char *)p, data, (int)take);
    b->len += out;
    data += take;
    n -= take;
  }
}

/* ------------------------------------------------------------------ */
/* JSON                                                                 */
/* ------------------------------------------------------------------ */

void imc_jsonw_init(imc_jsonw *w, imc_wbuf *b) {
  memset(w, 0, sizeof(*w));
  w->b = b;
}

/* Puts the comma before a value, unless it follows its key. */
static void value_start(imc_jsonw *w) {
  if (w->after_key) {
    w->after_key = 0;
    return;
  }
  uint32_t bit = UINT32_C(1) << w->depth;
  if (w->started & bit)
    imc_wbuf_append(w->b, ",", 1);
  w->started |= bit;
}

static void jw_open(imc_jsonw *w, char c) {
  if (w->depth + 1 >= IMC_JSONW_MAX_DEPTH) {
    if (w->b->err == 0)
      w->b->err = IMC_ERR_INVALID_ARGUMENT;
    return;
  }
  value_start(w);
  imc_wbuf_append(w->b, &c, 1);
  w->depth++;
  w->started &= ~(UINT32_C(1) << w->depth);
}

static void jw_close(imc_jsonw *w, char c) {
  if (w->depth == 0) {
    if (w->b->err == 0)
      w->b->err = IMC_ERR_INVALID_ARGUMENT;
    return;
  }
  w->depth--;
  w->after_key = 0;
  imc_wbuf_append(w->b, &c, 1);
}

void imc_jsonw_object_begin(imc_jsonw *w) {
  jw_open(w, '{');
}

void imc_jsonw_object_end(imc_jsonw *w) {
  jw_close(w, '}');
}

void imc_jsonw_array_begin(imc_jsonw *w) {
  jw_open(w, '[');
}

void imc_jsonw_array_end(imc_jsonw *w) {
  jw_close(w, ']');
}

/* U+FFFD, written for each maximal ill-formed subpart of the input. */
static const char replacement[3] = {'\xef', '\xbf', '\xbd'};

static void put_escaped(imc_wbuf *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  const uint8_t *u = (const uint8_t *)s;
  imc_wbuf_append(b, "\"", 1);
  size_t run = 0; /* bytes that need no escape, copied in one go */
  size_t i = 0;
  while (i < n) {
    unsigned char c = u[i];
    if (c >= 0x80) {
      size_t bad = 0;
      size_t k = imc_utf8_next(u + i, n - i, &bad);
      if (k > 0) {
        i += k;
        continue;
      }
      /* Raw invalid UTF-8 would make the whole document unreadable. */
      imc_wbuf_append(b, s + run, i - run);
      imc_wbuf_append(b, replacement, sizeof(replacement));
      i += bad;
      run = i;
      continue;
    }
    if (c >= 0x20 && c != '"' && c != '\\') {
      i++;
      continue;
    }
    imc_wbuf_append(b, s + run, i - run);
    if (c == '"' || c == '\\') {
      char e[2] = {'\\', (char)c};
      imc_wbuf_append(b, e, 2);
    } else {
      char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
      imc_wbuf_append(b, e, 6);
    }
    i++;
    run = i;
  }
  imc_wbuf_append(b, s + run, n - run);
  imc_wbuf_append(b, "\"", 1);
}

void imc_jsonw_key(imc_jsonw *w, const char *name) {
  value_start(w);
  put_escaped(w->b, name, strlen(name));
  imc_wbuf_append(w->b, ":", 1);
  w->after_key = 1;
}

void imc_jsonw_string_n(imc_jsonw *w, const char *s, size_t n) {
  value_start(w);
  put_escaped(w->b, s ? s : "", s ? n : 0);
}

void imc_jsonw_string(imc_jsonw *w, const char *s) {
  imc_jsonw_string_n(w, s, s ? strlen(s) : 0);
}

void imc_jsonw_base64(imc_jsonw *w, const uint8_t *data, size_t n) {
  value_start(w);
  imc_wbuf_append(w->b, "\"", 1);
  imc_wbuf_base64(w->b, data, n);
  imc_wbuf_append(w->b, "\"", 1);
}

void imc_jsonw_uint64(imc_jsonw *w, uint64_t v) {
  value_start(w);
  imc_wbuf_printf(w->b, "%" PRIu64, v);
}

void imc_jsonw_int64(imc_jsonw *w, int64_t v) {
  value_start(w);
  imc_wbuf_printf(w->b, "%" PRId64, v);
}

void imc_jsonw_bool(imc_jsonw *w, int v) {
  value_start(w);
  imc_wbuf_puts(w->b, v ? "true" : "false");
}

void imc_jsonw_null(imc_jsonw *w) {
  value_start(w);
  imc_wbuf_puts(w->b, "null");
}

void imc_jsonw_kv_string(imc_jsonw *w, const char *key, const char *s) {
  imc_jsonw_key(w, key);
  imc_jsonw_string(w, s);
}

void imc_jsonw_kv_uint64(imc_jsonw *w, const char *key, uint64_t v) {
  imc_jsonw_key(w, key);
  imc_jsonw_uint64(w, v);
}

void imc_jsonw_kv_int64(imc_jsonw *w, const char *key, int64_t v) {
  imc_jsonw_key(w, key);
  imc_jsonw_int64(w, v);
}

void imc_jsonw_kv_bool(imc_jsonw *w, const char *key, int v) {
  imc_jsonw_key(w, key);
  imc_jsonw_bool(w, v);
}
