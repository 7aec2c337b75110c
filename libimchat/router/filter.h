/*
 * Sensitive-word filter: an Aho-Corasick automaton over UTF-8 bytes.
 *
 * Words are added, then the automaton is built once; a built filter is
 * immutable, so one filter can be shared by threads that only match and
 * mask. Matching folds ASCII letters to lower case on both sides; every
 * other byte (CJK and all other scripts) must match exactly.
 *
 * States live in one array with their children stored next to each other
 * in breadth-first order, so a state costs about 20 bytes whatever the
 * alphabet; a 100K-word list stays within a few megabytes.
 */
#ifndef IMC_FILTER_H
#define IMC_FILTER_H

#include <imchat/common.h>

typedef struct imc_filter imc_filter;

/*
 * Creates an empty filter in *out; mem (NULL: malloc/free) is copied and
 * used for every allocation of the filter. Free it with imc_filter_del.
 * Returns 0, IMC_ERR_INVALID_ARGUMENT (out is NULL) or IMC_ERR_NOMEM.
 */
int imc_filter_new(imc_filter **out, const imc_mem *mem);

/*
 * Adds the len bytes at word (copied; not NUL-terminated) as one word.
 * Returns 0; IMC_ERR_INVALID_ARGUMENT if word is empty or not valid UTF-8
 * or the filter is already built; IMC_ERR_TOO_LARGE if the word list
 * would exceed 4 GiB; IMC_ERR_NOMEM (the filter is unchanged).
 */
int imc_filter_add(imc_filter *f, const char *word, size_t len);

/*
 * Builds the automaton from the words added so far and frees the word
 * list; duplicates (after ASCII case folding) count once. A filter with
 * no words is valid and matches nothing. Returns 0,
 * IMC_ERR_INVALID_ARGUMENT if already built, or IMC_ERR_NOMEM (the filter
 * stays unbuilt and build may be retried).
 */
int imc_filter_build(imc_filter *f);

/*
 * Creates a built filter in *out from the len bytes at words (borrowed;
 * the text of a word list, not NUL-terminated): one UTF-8 word per line;
 * blank lines and lines starting with '#' are skipped; spaces and tabs
 * around a word, CRLF line ends and a leading UTF-8 BOM are ignored.
 * Returns 0; IMC_ERR_INVALID_ARGUMENT if a line is not valid UTF-8 (or
 * out is NULL, or words is NULL with len > 0); IMC_ERR_TOO_LARGE;
 * IMC_ERR_NOMEM. On error *out is untouched.
 */
int imc_filter_from_words(imc_filter **out, const uint8_t *words, size_t len,
                          const imc_mem *mem);

/* Frees f and everything it owns. NULL is a no-op. */
void imc_filter_del(imc_filter *f);

/*
 * The number of words: distinct words once built, words added before.
 */
size_t imc_filter_size(const imc_filter *f);

/*
 * Returns 1 if any word occurs in text[0..len), 0 if none does, or
 * IMC_ERR_INVALID_ARGUMENT if the filter is not built (or text is NULL
 * with len > 0). Never allocates.
 */
int imc_filter_match(const imc_filter *f, const uint8_t *text, size_t len);

/*
 * Copies text[0..len) to out, replacing every character (UTF-8 code
 * point; a byte that does not start a valid sequence counts as one
 * character) that lies inside any occurrence of a word by one '*'.
 * Overlapping occurrences are all masked. The result is never longer than
 * len, so outcap >= len always suffices; *outlen receives its length.
 * text is only read; out must not overlap it. Never allocates.
 * Returns the number of occurrences (overlapping ones counted each;
 * saturating at INT_MAX),
 * IMC_ERR_TOO_LARGE if outcap < len, or IMC_ERR_INVALID_ARGUMENT if the
 * filter is not built or a pointer is NULL.
 */
int imc_filter_mask(const imc_filter *f, const uint8_t *text, size_t len,
                    uint8_t *out, size_t outcap, size_t *outlen);

#endif /* IMC_FILTER_H */
