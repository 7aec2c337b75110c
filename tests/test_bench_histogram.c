/* Unit tests of imchat-bench's log-linear latency histogram: bucket
 * bounds, percentile accuracy within the documented 0.1 %, and merging. */
#include "histogram.h"

#include <check.h>
#include <stdint.h>
#include <stdlib.h>

static bhist h, h2;

/* Reported values are never below the truth and at most 1/1024 above. */
static void assert_close(uint64_t got, uint64_t want) {
  ck_assert_uint_ge(got, want);
  ck_assert_uint_le(got - want, want / 1024);
}

START_TEST(exact_below_2048) {
  for (uint64_t v = 0; v < 2048; v++) {
    ck_assert_uint_eq(bhist_index(v), v);
    ck_assert_uint_eq(bhist_bucket_high((uint32_t)v), v);
  }
}
END_TEST

START_TEST(buckets_are_contiguous_and_narrow) {
  /* Every bucket starts right after the previous one and is at most
   * 1/1024 of its values wide. */
  uint64_t prev_high = bhist_bucket_high(2047);
  for (uint32_t i = 2048; i < BHIST_BUCKETS; i++) {
    uint64_t hi = bhist_bucket_high(i), lo = prev_high + 1;
    ck_assert_uint_gt(hi, prev_high);
    ck_assert_uint_eq(bhist_index(lo), i);
    ck_assert_uint_eq(bhist_index(hi), i);
    ck_assert_uint_le(hi - lo, lo / 1024);
    prev_high = hi;
  }
  ck_assert_uint_eq(prev_high, BHIST_MAX_VALUE);
  ck_assert_uint_eq(bhist_index(UINT64_MAX), BHIST_BUCKETS - 1);
}
END_TEST

START_TEST(percentiles_uniform) {
  /* 1..100000 µs in ns: the p-th percentile is p * 1000 µs. */
  bhist_init(&h);
  for (uint64_t i = 1; i <= 100000; i++)
    bhist_record(&h, i * 1000);
  ck_assert_uint_eq(h.total, 100000);
  ck_assert_uint_eq(h.min, 1000);
  ck_assert_uint_eq(h.max, 100000000);
  assert_close(bhist_percentile(&h, 50), 50000000);
  assert_close(bhist_percentile(&h, 90), 90000000);
  assert_close(bhist_percentile(&h, 99), 99000000);
  assert_close(bhist_percentile(&h, 99.9), 99900000);
  ck_assert_uint_eq(bhist_percentile(&h, 100), 100000000);
  ck_assert_uint_eq(bhist_percentile(&h, 0), 1000);
  ck_assert(bhist_mean(&h) > 50000499.0 && bhist_mean(&h) < 50000501.0);
}
END_TEST

START_TEST(percentiles_random_vs_sorted) {
  /* Against the exact order statistic of random log-spread values. */
  enum { N = 20000 };
  static uint64_t v[N];
  uint64_t x = 88172645463325252ull;
  bhist_init(&h);
  for (int i = 0; i < N; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v[i] = (x % 1000000) * (1u << (x >> 60)) + 1;
    bhist_record(&h, v[i]);
  }
  /* Insertion-free check: count values <= the reported percentile. */
  static const double ps[] = {1, 25, 50, 75, 90, 99, 99.9};
  for (size_t j = 0; j < sizeof(ps) / sizeof(ps[0]); j++) {
    uint64_t got = bhist_percentile(&h, ps[j]);
    uint64_t lower = got - got / 1024, le = 0, lt = 0;
    for (int i = 0; i < N; i++) {
      le += v[i] <= got;
      lt += v[i] < lower;
    }
    uint64_t rank = (uint64_t)(ps[j] / 100.0 * N + 0.999999);
    ck_assert_uint_ge(le, rank); /* at least p % at or below */
    ck_assert_uint_lt(lt, rank); /* and the true value is within 0.1 % */
  }
}
END_TEST

START_TEST(merge_equals_single) {
  bhist_init(&h);
  bhist_init(&h2);
  bhist all;
  bhist_init(&all);
  for (uint64_t i = 1; i <= 5000; i++) {
    bhist_record(i % 2 ? &h : &h2, i * 37);
    bhist_record(&all, i * 37);
  }
  bhist_merge(&h, &h2);
  ck_assert_uint_eq(h.total, all.total);
  ck_assert_uint_eq(h.min, all.min);
  ck_assert_uint_eq(h.max, all.max);
  for (double p = 0; p <= 100; p += 0.5)
    ck_assert_uint_eq(bhist_percentile(&h, p), bhist_percentile(&all, p));
  /* Merging an empty histogram changes nothing. */
  bhist_init(&h2);
  bhist_merge(&h, &h2);
  ck_assert_uint_eq(h.total, 5000);
  ck_assert_uint_eq(h.min, 37);
}
END_TEST

START_TEST(empty_and_clamped) {
  bhist_init(&h);
  ck_assert_uint_eq(bhist_percentile(&h, 50), 0);
  ck_assert(bhist_mean(&h) == 0.0);
  bhist_record_n(&h, UINT64_MAX, 3);
  ck_assert_uint_eq(h.total, 3);
  ck_assert_uint_eq(bhist_percentile(&h, 99), BHIST_MAX_VALUE);
  bhist_record_n(&h, 5, 0);
  ck_assert_uint_eq(h.total, 3);
}
END_TEST

int main(void) {
  Suite *su = suite_create("bench_histogram");
  TCase *t = tcase_create("histogram");
  tcase_add_test(t, exact_below_2048);
  tcase_add_test(t, buckets_are_contiguous_and_narrow);
  tcase_add_test(t, percentiles_uniform);
  tcase_add_test(t, percentiles_random_vs_sorted);
  tcase_add_test(t, merge_equals_single);
  tcase_add_test(t, empty_and_clamped);
  suite_add_tcase(su, t);
  SRunner *sr = srunner_create(su);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
