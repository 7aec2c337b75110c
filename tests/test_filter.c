/* Unit tests of the sensitive-word filter (libimchat/filter.c). */
#include "router/filter.h"
#include "testutil.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Builds a filter over the NUL-terminated words of list (NULL-ended). */
static imc_filter *make(const char *const *list) {
  imc_filter *f = NULL;
  ck_assert_int_eq(imc_filter_new(&f, NULL), 0);
  for (; *list != NULL; list++)
    ck_assert_int_eq(imc_filter_add(f, *list, strlen(*list)), 0);
  ck_assert_int_eq(imc_filter_build(f), 0);
  return f;
}

/* Masks text and checks the result and the number of occurrences. */
static void check_mask(const imc_filter *f, const char *text, const char *want,
                       int want_count) {
  size_t len = strlen(text), outlen = 12345;
  uint8_t *out = malloc(len + 1);
  int rv = imc_filter_mask(f, (const uint8_t *)text, len, out, len, &outlen);
  ck_assert_int_eq(rv, want_count);
  ck_assert_uint_eq(outlen, strlen(want));
  ck_assert_mem_eq(out, want, outlen);
  ck_assert_int_eq(imc_filter_match(f, (const uint8_t *)text, len),
                   want_count > 0);
  free(out);
}

START_TEST(single_word) {
  const char *w[] = {"bad", NULL};
  imc_filter *f = make(w);
  ck_assert_uint_eq(imc_filter_size(f), 1);
  check_mask(f, "this is bad stuff", "this is *** stuff", 1);
  check_mask(f, "bad", "***", 1);
  check_mask(f, "badbad", "******", 2);
  check_mask(f, "ba d", "ba d", 0);
  imc_filter_del(f);
}
END_TEST

START_TEST(multiple_words) {
  const char *w[] = {"foo", "bar", "quux", NULL};
  imc_filter *f = make(w);
  ck_assert_uint_eq(imc_filter_size(f), 3);
  check_mask(f, "foo and bar, not baz", "*** and ***, not baz", 2);
  check_mask(f, "xquuxfoox", "x*******x", 2);
  imc_filter_del(f);
}
END_TEST

START_TEST(overlapping) {
  const char *w[] = {"he", "she", "hers", "his", NULL};
  imc_filter *f = make(w);
  check_mask(f, "ushers", "u*****", 3);     /* she, he, hers */
  check_mask(f, "ahishers", "a*******", 4); /* his, she, he, hers */
  check_mask(f, "hi s", "hi s", 0);
  imc_filter_del(f);

  /* words inside words, and a long match that covers earlier short ones
   * with gaps between them */
  const char *w2[] = {"a", "aa", "aaa", "xbcdy", "b", "d", NULL};
  f = make(w2);
  check_mask(f, "aaaa", "****", 9);
  check_mask(f, "-xbcdy-", "-*****-", 3);
  check_mask(f, "abcde", "**c*e", 3);
  check_mask(f, "xbcdz", "x*c*z", 2);
  imc_filter_del(f);
}
END_TEST

START_TEST(ascii_case) {
  const char *w[] = {"BadWord", "\xC3\xA4pfel", NULL}; /* "äpfel" */
  imc_filter *f = make(w);
  check_mask(f, "BADWORD badword bAdWoRd", "******* ******* *******", 3);
  check_mask(f, "\xC3\xA4PFEL", "*****", 1);
  /* only ASCII folds: "Äpfel" stays */
  check_mask(f, "\xC3\x84pfel", "\xC3\x84pfel", 0);
  imc_filter_del(f);
}
END_TEST

START_TEST(cjk) {
  const char *w[] = {"敏感", "敏感词", NULL};
  imc_filter *f = make(w);
  check_mask(f, "这是一个敏感词测试，还有敏感内容。",
             "这是一个***测试，还有**内容。", 3);
  check_mask(f, "敏捷的感觉", "敏捷的感觉", 0);
  check_mask(f, "敏感敏感", "****", 2);
  imc_filter_del(f);
}
END_TEST

START_TEST(mixed_scripts) {
  const char *w[] = {"badトーク", "cat猫", "Ωmega", NULL};
  imc_filter *f = make(w);
  check_mask(f, "a BADトーク and CAT猫! Ωmega", "a ****** and ****! *****", 3);
  /* "ω" is not ASCII, so it does not fold to "Ω" */
  check_mask(f, "ωmega catneko", "ωmega catneko", 0);
  imc_filter_del(f);
}
END_TEST

START_TEST(no_false_positives) {
  const char *w[] = {"abc", "敏感", "\xE6\x95\x8F", NULL}; /* last: 敏 */
  imc_filter *f = make(w);
  check_mask(f, "ab c abd bc acb", "ab c abd bc acb", 0);
  /* 故 (E6 95 85) shares two bytes with 敏 (E6 95 8F) */
  check_mask(f, "故事", "故事", 0);
  check_mask(f, "a敏b", "a*b", 1);
  imc_filter_del(f);
}
END_TEST

START_TEST(empty_text) {
  const char *w[] = {"x", NULL};
  imc_filter *f = make(w);
  size_t outlen = 7;
  uint8_t out[1];
  ck_assert_int_eq(imc_filter_match(f, NULL, 0), 0);
  ck_assert_int_eq(imc_filter_match(f, (const uint8_t *)"", 0), 0);
  ck_assert_int_eq(imc_filter_mask(f, NULL, 0, NULL, 0, &outlen), 0);
  ck_assert_uint_eq(outlen, 0);
  ck_assert_int_eq(imc_filter_mask(f, (const uint8_t *)"", 0, out, 0, &outlen),
                   0);
  imc_filter_del(f);

  /* a filter without words matches nothing */
  const char *none[] = {NULL};
  f = make(none);
  ck_assert_uint_eq(imc_filter_size(f), 0);
  check_mask(f, "anything", "anything", 0);
  imc_filter_del(f);
}
END_TEST

START_TEST(invalid_text_bytes) {
  const char *w[] = {"ab", "敏", NULL};
  imc_filter *f = make(w);
  /* bad bytes are one-byte characters and pass through unchanged */
  check_mask(f,
             "\xFF"
             "ab\xE6",
             "\xFF**\xE6", 1);
  check_mask(f, "\xE6敏\x95", "\xE6*\x95", 1);
  check_mask(f, "\xC0\xAF\xED\xA0\x80", "\xC0\xAF\xED\xA0\x80", 0);
  imc_filter_del(f);
}
END_TEST

START_TEST(duplicates) {
  const char *w[] = {"foo", "FOO", "Foo", "bar", NULL};
  imc_filter *f = make(w);
  ck_assert_uint_eq(imc_filter_size(f), 2);
  check_mask(f, "fOo", "***", 1);
  imc_filter_del(f);
}
END_TEST

START_TEST(invalid_inputs) {
  imc_filter *f = NULL;
  ck_assert_int_eq(imc_filter_new(NULL, NULL), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_filter_new(&f, NULL), 0);
  static const char *const bad[] = {
      "\xFF",             /* never valid */
      "\xC0\xAF",         /* overlong '/' */
      "\xE0\x80\xAF",     /* overlong */
      "\xED\xA0\x80",     /* surrogate */
      "\xF4\x90\x80\x80", /* above U+10FFFF */
      "\xE6\x95",         /* truncated */
      "a\x80",            /* stray continuation */
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    ck_assert_int_eq(imc_filter_add(f, bad[i], strlen(bad[i])),
                     IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_filter_add(f, "", 0), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_filter_add(f, NULL, 3), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_filter_add(NULL, "a", 1), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_uint_eq(imc_filter_size(f), 0);

  /* not built yet */
  uint8_t out[16];
  size_t outlen;
  ck_assert_int_eq(imc_filter_match(f, (const uint8_t *)"a", 1),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(
      imc_filter_mask(f, (const uint8_t *)"a", 1, out, 16, &outlen),
      IMC_ERR_INVALID_ARGUMENT);

  ck_assert_int_eq(imc_filter_add(f, "a\0b", 3), 0); /* NUL is UTF-8 */
  ck_assert_int_eq(imc_filter_add(f, "\xF0\x9F\x98\x80", 4), 0); /* emoji */
  ck_assert_int_eq(imc_filter_build(f), 0);
  ck_assert_int_eq(imc_filter_build(f), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_filter_add(f, "c", 1), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_uint_eq(imc_filter_size(f), 2);

  ck_assert_int_eq(imc_filter_match(f, (const uint8_t *)"xa\0by", 5), 1);
  ck_assert_int_eq(imc_filter_mask(f, (const uint8_t *)"x\xF0\x9F\x98\x80", 5,
                                   out, 5, &outlen),
                   1);
  ck_assert_uint_eq(outlen, 2);
  ck_assert_mem_eq(out, "x*", 2);
  /* out must hold len bytes even though the result is shorter */
  ck_assert_int_eq(imc_filter_mask(f, (const uint8_t *)"x\xF0\x9F\x98\x80", 5,
                                   out, 4, &outlen),
                   IMC_ERR_TOO_LARGE);
  ck_assert_int_eq(
      imc_filter_mask(f, (const uint8_t *)"x", 1, NULL, 1, &outlen),
      IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_filter_mask(f, (const uint8_t *)"x", 1, out, 1, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_filter_match(f, NULL, 1), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_filter_match(NULL, (const uint8_t *)"x", 1),
                   IMC_ERR_INVALID_ARGUMENT);
  imc_filter_del(f);
  imc_filter_del(NULL);
  ck_assert_uint_eq(imc_filter_size(NULL), 0);
}
END_TEST

/* Writes data to a new temporary file; returns its malloc'd path. */
START_TEST(from_words) {
  static const char list[] = "\xEF\xBB\xBF# sensitive words\r\n"
                             "\r\n"
                             "foo\r\n"
                             "  bar baz \t\r\n"
                             "#notaword\n"
                             "\n"
                             "敏感\n"
                             "last";
  imc_filter *f = NULL;
  ck_assert_int_eq(
      imc_filter_from_words(&f, (const uint8_t *)list, sizeof(list) - 1, NULL),
      0);
  ck_assert_uint_eq(imc_filter_size(f), 4);
  check_mask(f, "FOO, bar baz, notaword, # 敏感 and last",
             "***, *******, notaword, # ** and ****", 4);
  check_mask(f, "bar", "bar", 0);
  ck_assert_int_eq(imc_filter_add(f, "x", 1), IMC_ERR_INVALID_ARGUMENT);
  imc_filter_del(f);

  /* empty and comment-only lists give empty filters */
  f = NULL;
  ck_assert_int_eq(
      imc_filter_from_words(&f, (const uint8_t *)"# nothing\n\n", 11, NULL), 0);
  ck_assert_uint_eq(imc_filter_size(f), 0);
  imc_filter_del(f);
  f = NULL;
  ck_assert_int_eq(imc_filter_from_words(&f, NULL, 0, NULL), 0);
  ck_assert_uint_eq(imc_filter_size(f), 0);
  imc_filter_del(f);
}
END_TEST

START_TEST(from_words_errors) {
  imc_filter *f = NULL;
  ck_assert_int_eq(imc_filter_from_words(NULL, (const uint8_t *)"x", 1, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_filter_from_words(&f, NULL, 1, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  test_mem tm;
  test_mem_init(&tm);
  ck_assert_int_eq(imc_filter_from_words(&f, (const uint8_t *)"good\nbad\xFF\n",
                                         10, &tm.mem),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_null(f);
  ck_assert_int_eq(tm.live, 0);
}
END_TEST

/* --- randomized comparison against a brute-force reference --- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(uint32_t n) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint32_t)(rng_state % n);
}

static uint8_t lower(uint8_t c) {
  return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c;
}

static int eq_fold(const uint8_t *a, const uint8_t *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (lower(a[i]) != lower(b[i]))
      return 0;
  return 1;
}

typedef struct rword {
  char s[64];
  size_t len;
} rword;

static int rword_cmp(const void *a, const void *b) {
  const rword *x = a, *y = b;
  int c = memcmp(x->s, y->s, x->len < y->len ? x->len : y->len);
  if (c != 0)
    return c;
  return (x->len > y->len) - (x->len < y->len);
}

/* Symbols the random words and texts are made of. The texts also use
 * symbols no word contains and bytes that are not valid UTF-8; a lone
 * 0xE6 can never combine with a following symbol into a valid sequence,
 * so every symbol is one character for the filter too. */
static const char *const word_syms[] = {"a", "b",  "c",  "A",
                                        "B", "敏", "感", "词"};
static const char *const text_syms[] = {"a",  "b",  "c",    "A",   "B",
                                        "敏", "感", "词",   "x",   "Y",
                                        " ",  "猫", "\xFF", "\xE6"};
#define NSYM(a) (sizeof(a) / sizeof((a)[0]))

/* The first nshort words are two symbols long, the others minlen to
 * maxlen symbols. */
static void random_round(size_t nwords, size_t nshort, uint32_t minlen,
                         uint32_t maxlen, size_t ntexts) {
  rword *words = calloc(nwords, sizeof(*words));
  imc_filter *f = NULL;
  ck_assert_int_eq(imc_filter_new(&f, NULL), 0);
  for (size_t i = 0; i < nwords; i++) {
    uint32_t n = i < nshort ? 2 : minlen + rnd(maxlen - minlen + 1);
    for (uint32_t j = 0; j < n; j++) {
      const char *sym = word_syms[rnd(NSYM(word_syms))];
      memcpy(words[i].s + words[i].len, sym, strlen(sym));
      words[i].len += strlen(sym);
    }
    ck_assert_int_eq(imc_filter_add(f, words[i].s, words[i].len), 0);
  }
  ck_assert_int_eq(imc_filter_build(f), 0);

  /* distinct words after folding */
  for (size_t i = 0; i < nwords; i++)
    for (size_t j = 0; j < words[i].len; j++)
      words[i].s[j] = (char)lower((uint8_t)words[i].s[j]);
  qsort(words, nwords, sizeof(*words), rword_cmp);
  size_t distinct = 0;
  for (size_t i = 0; i < nwords; i++)
    if (i == 0 || rword_cmp(&words[i - 1], &words[i]) != 0)
      words[distinct++] = words[i];
  ck_assert_uint_eq(imc_filter_size(f), distinct);
  /* sorted words with the same first byte are adjacent */
  size_t first[257];
  for (size_t c = 0, w = 0; c <= 256; c++) {
    while (w < distinct && (uint8_t)words[w].s[0] < c)
      w++;
    first[c] = w;
  }

  size_t hits = 0;
  for (size_t t = 0; t < ntexts; t++) {
    uint8_t text[512], out[512], want[512], cover[512];
    size_t starts[128], nsym = rnd(100), len = 0;
    for (size_t i = 0; i < nsym; i++) {
      const char *sym = text_syms[rnd(NSYM(text_syms))];
      starts[i] = len;
      memcpy(text + len, sym, strlen(sym));
      len += strlen(sym);
    }
    starts[nsym] = len;

    /* brute force: every word at every offset */
    size_t count = 0;
    memset(cover, 0, sizeof(cover));
    for (size_t i = 0; i < len; i++)
      for (size_t w = first[lower(text[i])]; w < first[lower(text[i]) + 1]; w++)
        if (words[w].len <= len - i &&
            eq_fold(text + i, (const uint8_t *)words[w].s, words[w].len)) {
          count++;
          memset(cover + i, 1, words[w].len);
        }
    size_t wlen = 0;
    for (size_t i = 0; i < nsym; i++) {
      size_t k = starts[i + 1] - starts[i];
      if (cover[starts[i]]) {
        want[wlen++] = '*';
      } else {
        memcpy(want + wlen, text + starts[i], k);
        wlen += k;
      }
    }

    size_t outlen = 0;
    ck_assert_int_eq(imc_filter_match(f, text, len), count > 0);
    ck_assert_int_eq(imc_filter_mask(f, text, len, out, len, &outlen),
                     (int)count);
    ck_assert_uint_eq(outlen, wlen);
    ck_assert_mem_eq(out, want, wlen);
    hits += count > 0;
  }
  /* the parameters are chosen so that both outcomes occur */
  ck_assert_uint_gt(hits, 0);
  ck_assert_uint_lt(hits, ntexts);
  imc_filter_del(f);
  free(words);
}

START_TEST(random_vs_bruteforce) {
  /* sparse: many texts without a match */
  random_round(10000, 0, 5, 8, 200);
  /* dense: nearly every byte is covered, overlapping everywhere */
  random_round(10000, 0, 2, 5, 60);
  /* short matches with gaps between them that long ones then span */
  random_round(10000, 20, 6, 8, 300);
}
END_TEST

/* --- allocation failures --- */

static const char *const alloc_words[] = {"alpha",  "beta", "gamma", "敏感",
                                          "敏感词", "he",   "she",   "hers"};

/* Adds 200 words (enough to grow both word arrays several times). When an
 * allocation fails, the call must report it and change nothing, so the
 * same call is retried with failures off. */
START_TEST(alloc_failures) {
  for (long k = 0;; k++) {
    test_mem tm;
    test_mem_init(&tm);
    tm.fail_at = k;
    int failed = 0, rv;
    imc_filter *f = NULL;
    while ((rv = imc_filter_new(&f, &tm.mem)) != 0) {
      ck_assert_int_eq(rv, IMC_ERR_NOMEM);
      failed = 1;
      tm.fail_at = -1;
    }
    for (int i = 0; i < 200; i++) {
      char w[64];
      snprintf(w, sizeof(w), "%s%d", alloc_words[i % 8], i / 8);
      while ((rv = imc_filter_add(f, w, strlen(w))) != 0) {
        ck_assert_int_eq(rv, IMC_ERR_NOMEM);
        failed = 1;
        tm.fail_at = -1;
      }
    }
    ck_assert_uint_eq(imc_filter_size(f), 200);
    while ((rv = imc_filter_build(f)) != 0) {
      ck_assert_int_eq(rv, IMC_ERR_NOMEM);
      failed = 1;
      tm.fail_at = -1;
    }
    ck_assert_uint_eq(imc_filter_size(f), 200);
    check_mask(f, "she0 hers3 敏感词0x", "**** ***** ****x", 4);
    imc_filter_del(f);
    ck_assert_int_eq(tm.live, 0);
    ck_assert_int_eq(failed, tm.count > k);
    if (!failed)
      break;
  }

  static const char list[] = "# words\nfoo\nbar\n敏感\n";
  for (long k = 0;; k++) {
    test_mem tm;
    test_mem_init(&tm);
    tm.fail_at = k;
    imc_filter *f = NULL;
    int rv = imc_filter_from_words(&f, (const uint8_t *)list, sizeof(list) - 1,
                                   &tm.mem);
    if (tm.count > k) {
      ck_assert_int_eq(rv, IMC_ERR_NOMEM);
      ck_assert_ptr_null(f);
    } else {
      ck_assert_int_eq(rv, 0);
      check_mask(f, "foo 敏感", "*** **", 2);
    }
    imc_filter_del(f);
    ck_assert_int_eq(tm.live, 0);
    if (rv == 0)
      break;
  }
}
END_TEST

static Suite *filter_suite(void) {
  Suite *s = suite_create("filter");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, single_word);
  tcase_add_test(tc, multiple_words);
  tcase_add_test(tc, overlapping);
  tcase_add_test(tc, ascii_case);
  tcase_add_test(tc, cjk);
  tcase_add_test(tc, mixed_scripts);
  tcase_add_test(tc, no_false_positives);
  tcase_add_test(tc, empty_text);
  tcase_add_test(tc, invalid_text_bytes);
  tcase_add_test(tc, duplicates);
  tcase_add_test(tc, invalid_inputs);
  tcase_add_test(tc, from_words);
  tcase_add_test(tc, from_words_errors);
  tcase_add_test(tc, random_vs_bruteforce);
  tcase_add_test(tc, alloc_failures);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(filter_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
