/* Shared helpers of the unit suites: a counting allocator that can fail
 * on demand, and a fake clock. */
#ifndef IMC_TESTUTIL_H
#define IMC_TESTUTIL_H

#include <imchat/backend.h>

typedef struct test_mem {
  imc_mem mem;  /* pass &tm.mem to constructors */
  long live;    /* allocations not yet freed */
  long count;   /* allocations made */
  long fail_at; /* fail the allocation with this 0-based index; -1: never */
  size_t bytes; /* live bytes (as malloc_usable_size counts them) */
  size_t peak;  /* the most live bytes so far; the test may reset it */
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

/*
 * A client socket for the transport vtable: everything the library writes
 * accumulates in out; pos is where the test has read up to. With block
 * set, writes fail with IMC_ERR_WOULDBLOCK. Pass the test_sock as the
 * connection's conn_ud; free out when done.
 */
typedef struct test_sock {
  uint8_t *out;
  size_t len, cap, pos;
  int closed; /* times the transport's close was called */
  int block;
  int paused; /* the library paused reads (set_read 0), until set_read 1 */
  int pauses; /* times it paused them */
} test_sock;

extern const imc_transport_vtbl test_sock_transport;

#endif
