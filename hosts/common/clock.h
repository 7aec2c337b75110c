/* The monotonic clock the hosts' loops and timers run on. */
#ifndef HCLOCK_H
#define HCLOCK_H

#include <stdint.h>
#include <time.h>

/* Milliseconds of CLOCK_MONOTONIC. */
static inline int64_t hclock_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The earlier of two timeouts in milliseconds, where -1 means none. */
static inline int64_t htimeout_min(int64_t a, int64_t b) {
  if (a < 0)
    return b;
  if (b < 0)
    return a;
  return a < b ? a : b;
}

#endif /* HCLOCK_H */
