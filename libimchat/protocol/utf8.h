/*
 * UTF-8 well-formedness (Unicode 15, table 3-7): no overlong forms, no
 * surrogates, nothing above U+10FFFF, no truncated sequences.
 * Allocation-free; fuzzable alone.
 */
#ifndef IMC_UTF8_H
#define IMC_UTF8_H

#include <stddef.h>
#include <stdint.h>

/*
 * Returns 1 if s[0..len) is well-formed UTF-8 holding no NUL byte, else
 * 0. NUL is refused because the library hands strings on as C strings,
 * where a NUL would silently cut them short.
 */
int imc_utf8_valid(const char *s, size_t len);

/*
 * The length (1-4) of the well-formed sequence that starts at s (n > 0),
 * or 0 if none does; then *bad (if not NULL) is the length of the maximal
 * ill-formed subpart there (at least 1): what a decoder replaces with one
 * U+FFFD, as Unicode recommends. NUL counts as well-formed here.
 */
size_t imc_utf8_next(const uint8_t *s, size_t n, size_t *bad);

#endif /* IMC_UTF8_H */
