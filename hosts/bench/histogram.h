/*
 * A log-linear latency histogram in the manner of HdrHistogram.
 *
 * Values (nanoseconds, or any unsigned unit) from 0 to BHIST_MAX_VALUE are
 * counted in buckets whose width is at most 1/1024 of the value: values
 * below 2048 are exact, above that each power-of-two range is split in
 * 1024 equal sub-buckets. A reported value (a percentile, the max) is the
 * largest value of its bucket, capped at the largest value recorded, so it
 * is never below the truth and at most 0.1 % above it (3 significant
 * digits). Values above BHIST_MAX_VALUE are counted as BHIST_MAX_VALUE.
 *
 * The struct is plain data of a fixed size: workers send it to the parent
 * as bytes and the parent adds them up with bhist_merge(). No allocation.
 */
#ifndef IMC_BENCH_HISTOGRAM_H
#define IMC_BENCH_HISTOGRAM_H

#include <stdint.h>

#define BHIST_SUB_BITS 11 /* 2048 exact values, then 1024 per octave */
#define BHIST_OCTAVES 31  /* up to 2^42 - 1 (≈ 4398 s in ns) */
#define BHIST_BUCKETS                                                          \
  ((1u << BHIST_SUB_BITS) + BHIST_OCTAVES * (1u << (BHIST_SUB_BITS - 1)))
#define BHIST_MAX_VALUE ((UINT64_C(1) << (BHIST_SUB_BITS + BHIST_OCTAVES)) - 1)

typedef struct bhist {
  uint64_t total; /* values recorded */
  uint64_t min;   /* exact; UINT64_MAX when empty */
  uint64_t max;   /* exact (after clamping) */
  double sum;     /* for the mean */
  uint64_t counts[BHIST_BUCKETS];
} bhist;

/* Empties h. */
void bhist_init(bhist *h);

/* Counts value v n times. */
void bhist_record_n(bhist *h, uint64_t v, uint64_t n);
void bhist_record(bhist *h, uint64_t v);

/* Adds every count of src to dst. */
void bhist_merge(bhist *dst, const bhist *src);

/*
 * The value at percentile p (0..100): the smallest recorded bucket value
 * with at least p % of the values at or below it. 0 when h is empty.
 */
uint64_t bhist_percentile(const bhist *h, double p);

/* The mean of the values recorded (exact), 0 when empty. */
double bhist_mean(const bhist *h);

/* The bucket index of v and the largest value of bucket i (for tests). */
uint32_t bhist_index(uint64_t v);
uint64_t bhist_bucket_high(uint32_t i);

#endif
