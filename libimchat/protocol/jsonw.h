/*
 * Writing text out: a growable byte buffer and a JSON writer over it.
 *
 * Both carry a sticky error, so a caller can write a whole document and
 * check once at the end: after the first failed allocation (or misuse)
 * every later call is a no-op and err keeps the first error.
 */
#ifndef IMC_JSONW_H
#define IMC_JSONW_H

#include <imchat/common.h>

#include <stdint.h>

/* Bytes allocated through mem; p is not NUL-terminated. */
typedef struct imc_wbuf {
  const imc_mem *mem; /* borrowed */
  char *p;
  size_t len, cap;
  int err; /* 0 or the first IMC_ERR_* */
} imc_wbuf;

void imc_wbuf_init(imc_wbuf *b, const imc_mem *mem);
/* Releases the bytes; b may be initialised again. */
void imc_wbuf_free(imc_wbuf *b);

/*
 * Room for n more bytes at p + len (len is not advanced), or NULL and
 * err set.
 */
char *imc_wbuf_reserve(imc_wbuf *b, size_t n);
void imc_wbuf_append(imc_wbuf *b, const void *data, size_t n);
void imc_wbuf_puts(imc_wbuf *b, const char *s);
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
void imc_wbuf_printf(imc_wbuf *b, const char *fmt, ...);
/* Standard base64 (RFC 4648, with padding). */
void imc_wbuf_base64(imc_wbuf *b, const uint8_t *data, size_t n);

#define IMC_JSONW_MAX_DEPTH 32

/*
 * A JSON writer. Inside an object, call imc_jsonw_key before each value;
 * commas are placed by the writer. Nesting deeper than
 * IMC_JSONW_MAX_DEPTH, or closing more than was opened, sets
 * IMC_ERR_INVALID_ARGUMENT on the buffer.
 */
typedef struct imc_jsonw {
  imc_wbuf *b;
  uint32_t depth;
  uint32_t started; /* bit d: the container at depth d has a member */
  int after_key;    /* the next value belongs to a key just written */
} imc_jsonw;

void imc_jsonw_init(imc_jsonw *w, imc_wbuf *b);
void imc_jsonw_object_begin(imc_jsonw *w);
void imc_jsonw_object_end(imc_jsonw *w);
void imc_jsonw_array_begin(imc_jsonw *w);
void imc_jsonw_array_end(imc_jsonw *w);
void imc_jsonw_key(imc_jsonw *w, const char *name);
/*
 * Strings (and keys) are escaped: '"' and '\\' with a backslash, control
 * characters U+0000-U+001F (NUL included, for string_n) as \u00XX. Valid
 * UTF-8 passes through unchanged. Invalid UTF-8 is never written raw:
 * each maximal ill-formed subpart (Unicode's "best practice") becomes one
 * U+FFFD, so the output is always valid UTF-8 and valid JSON, and a
 * reader sees where bytes were lost rather than a document it cannot
 * parse at all.
 */
void imc_jsonw_string(imc_jsonw *w, const char *s);
void imc_jsonw_string_n(imc_jsonw *w, const char *s, size_t n);
/* A string value holding the standard base64 of data. */
void imc_jsonw_base64(imc_jsonw *w, const uint8_t *data, size_t n);
void imc_jsonw_uint64(imc_jsonw *w, uint64_t v);
void imc_jsonw_int64(imc_jsonw *w, int64_t v);
void imc_jsonw_bool(imc_jsonw *w, int v);
void imc_jsonw_null(imc_jsonw *w);

/* Shorthands for a member of an object: key, then value. */
void imc_jsonw_kv_string(imc_jsonw *w, const char *key, const char *s);
void imc_jsonw_kv_uint64(imc_jsonw *w, const char *key, uint64_t v);
void imc_jsonw_kv_int64(imc_jsonw *w, const char *key, int64_t v);
void imc_jsonw_kv_bool(imc_jsonw *w, const char *key, int v);

#endif /* IMC_JSONW_H */
