/* Shared helpers of the unit suites: a counting allocator that can fail
 * on demand, and a fake clock. */
#ifndef IMC_TESTUTIL_H
#define IMC_TESTUTIL_H

#include <imchat/common.h>

typedef struct test_mem {
  imc_mem mem;  /* pass &tm.mem to constructors */
  long live;    /* allocations not yet freed */
  long count;   /* allocations made */
  long fail_at; /* fail the allocation with this 0-based index; -1: never */
} test_mem;

void test_mem_init(test_mem *tm);

typedef struct test_clock {
  imc_clock clock; /* pass &tc.clock to options */
  int64_t now;     /* monotonic ms */
  int64_t wall;    /* Unix ms */
} test_clock;

void test_clock_init(test_clock *tc, int64_t wall_ms);
/* Moves both clocks forward. */
void test_clock_advance(test_clock *tc, int64_t ms);

#endif
