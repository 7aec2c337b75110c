/*
 * The log-linear histogram of histogram.h.
 */
#include "histogram.h"

#include <string.h>

#define SUB (1u << BHIST_SUB_BITS)        /* values below are exact */
#define HALF (1u << (BHIST_SUB_BITS - 1)) /* sub-buckets per octave */

void bhist_init(bhist *h) {
  memset(h, 0, sizeof(*h));
  h->min = UINT64_MAX;
}

uint32_t bhist_index(uint64_t v) {
  if (v > BHIST_MAX_VALUE)
    v = BHIST_MAX_VALUE;
  if (v < SUB)
    return (uint32_t)v;
  /* msb >= BHIST_SUB_BITS; keep the top BHIST_SUB_BITS bits. */
  unsigned msb = 63u - (unsigned)__builtin_clzll(v);
  unsigned shift = msb - (BHIST_SUB_BITS - 1);
  uint64_t sub = v >> shift; /* in [HALF, SUB) */
  return SUB + (shift - 1) * HALF + (uint32_t)(sub - HALF);
}

uint64_t bhist_bucket_high(uint32_t i) {
  if (i < SUB)
    return i;
  uint32_t j = i - SUB;
  unsigned shift = j / HALF + 1;
  uint64_t sub = HALF + j % HALF;
  return ((sub + 1) << shift) - 1;
}

void bhist_record_n(bhist *h, uint64_t v, uint64_t n) {
  if (n == 0)
    return;
  if (v > BHIST_MAX_VALUE)
    v = BHIST_MAX_VALUE;
  h->counts[bhist_index(v)] += n;
  h->total += n;
  h->sum += (double)v * (double)n;
  if (v < h->min)
    h->min = v;
  if (v > h->max)
    h->max = v;
}

void bhist_record(bhist *h, uint64_t v) {
  bhist_record_n(h, v, 1);
}

void bhist_merge(bhist *dst, const bhist *src) {
  if (src->total == 0)
    return;
  for (uint32_t i = 0; i < BHIST_BUCKETS; i++)
    dst->counts[i] += src->counts[i];
  dst->total += src->total;
  dst->sum += src->sum;
  if (src->min < dst->min)
    dst->min = src->min;
  if (src->max > dst->max)
    dst->max = src->max;
}

uint64_t bhist_percentile(const bhist *h, double p) {
  if (h->total == 0)
    return 0;
  if (p < 0)
    p = 0;
  if (p > 100)
    p = 100;
  /* The rank of the value: ceil(p/100 * total), at least 1; a product
   * within rounding error of an integer is that integer. */
  double r = p * (double)h->total / 100.0;
  uint64_t rank = (uint64_t)r;
  if (r - (double)rank > 1e-9 * r)
    rank++;
  if (rank == 0)
    rank = 1;
  uint64_t seen = 0;
  for (uint32_t i = 0; i < BHIST_BUCKETS; i++) {
    seen += h->counts[i];
    if (seen >= rank) {
      uint64_t v = bhist_bucket_high(i);
      if (v > h->max)
        v = h->max;
      if (v < h->min)
        v = h->min;
      return v;
    }
  }
  return h->max;
}

double bhist_mean(const bhist *h) {
  return h->total ? h->sum / (double)h->total : 0.0;
}
