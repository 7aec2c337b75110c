/*
 * A small JSON scanner for the documents libimchat reads (JWT headers and
 * claims). It never allocates: values are spans into the caller's text,
 * strings are decoded into caller buffers, and nesting is bounded by
 * IMC_JSON_MAX_DEPTH so recursion stays shallow on hostile input.
 */
#ifndef IMC_JSON_H
#define IMC_JSON_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define IMC_JSON_MAX_DEPTH 32 /* arrays and objects nested deeper: PROTO */
#define IMC_JSON_NAME_MAX 128 /* longest member name imc_json_member finds */

typedef enum imc_json_type {
  IMC_JSON_NULL = 0,
  IMC_JSON_FALSE,
  IMC_JSON_TRUE,
  IMC_JSON_NUMBER,
  IMC_JSON_STRING,
  IMC_JSON_ARRAY,
  IMC_JSON_OBJECT
} imc_json_type;

/* A value: its raw text, quotes and brackets included, in the caller's
 * buffer. Valid as long as that buffer is. */
typedef struct imc_json_value {
  imc_json_type type;
  const char *p;
  size_t len;
} imc_json_value;

/*
 * Validates text[0..len) as exactly one JSON value (whitespace around it
 * allowed) and describes it in out. Returns 0, or IMC_ERR_PROTO if the
 * text is not valid JSON or nests deeper than IMC_JSON_MAX_DEPTH.
 */
int imc_json_parse(const char *text, size_t len, imc_json_value *out);

/*
 * Finds the member called name (compared after unescaping the member
 * names) in the object obj, a value from imc_json_parse. Returns 0 and
 * sets out; IMC_ERR_NOT_FOUND; IMC_ERR_PROTO if name occurs more than
 * once (a document with two meanings is refused); or
 * IMC_ERR_INVALID_ARGUMENT if obj is not an object or name is longer
 * than IMC_JSON_NAME_MAX.
 */
int imc_json_member(const imc_json_value *obj, const char *name,
                    imc_json_value *out);

/*
 * Iterates the elements of the array arr: *pos starts at 0. Returns 1 and
 * sets elem, 0 at the end, IMC_ERR_INVALID_ARGUMENT if arr is not an
 * array, or IMC_ERR_PROTO if the array text is malformed.
 */
int imc_json_array_next(const imc_json_value *arr, size_t *pos,
                        imc_json_value *elem);

/*
 * Decodes the string value v (escapes, \uXXXX and surrogate pairs to
 * UTF-8) into out, capacity outcap, NUL-terminated. Returns the length;
 * IMC_ERR_INVALID_ARGUMENT if v is not a string; IMC_ERR_PROTO for a
 * bad escape, an unpaired surrogate or an encoded NUL; IMC_ERR_TOO_LARGE
 * if out is too small.
 */
ssize_t imc_json_string(const imc_json_value *v, char *out, size_t outcap);

/*
 * Reads the number v as an int64, truncating any fraction toward zero
 * (1.9 -> 1, -1.9 -> -1, 1.5e3 -> 1500). Returns 0;
 * IMC_ERR_INVALID_ARGUMENT if v is not a number; IMC_ERR_TOO_LARGE if it
 * lies outside the int64 range.
 */
int imc_json_int64(const imc_json_value *v, int64_t *out);

#endif /* IMC_JSON_H */
