#include "testutil.h"

#include <malloc.h>
#include <stdlib.h>
#include <string.h>

/* Each block carries its size in front so realloc and the live count
 * stay exact. */
static int tm_should_fail(test_mem *tm) {
  return tm->count++ == tm->fail_at;
}

static void tm_add(test_mem *tm, void *p) {
  tm->bytes += malloc_usable_size(p);
  if (tm->bytes > tm->peak)
    tm->peak = tm->bytes;
}

static void *tm_malloc(size_t n, void *ud) {
  test_mem *tm = ud;
  if (tm_should_fail(tm))
    return NULL;
  void *p = malloc(n ? n : 1);
  if (p) {
    tm->live++;
    tm_add(tm, p);
  }
  return p;
}

static void tm_free(void *p, void *ud) {
  test_mem *tm = ud;
  if (p) {
    tm->live--;
    tm->bytes -= malloc_usable_size(p);
    free(p);
  }
}

static void *tm_calloc(size_t nmemb, size_t n, void *ud) {
  test_mem *tm = ud;
  if (tm_should_fail(tm))
    return NULL;
  void *p = calloc(nmemb ? nmemb : 1, n ? n : 1);
  if (p) {
    tm->live++;
    tm_add(tm, p);
  }
  return p;
}

static void *tm_realloc(void *p, size_t n, void *ud) {
  test_mem *tm = ud;
  if (tm_should_fail(tm))
    return NULL;
  size_t old = p ? malloc_usable_size(p) : 0;
  void *q = realloc(p, n ? n : 1);
  if (q && !p)
    tm->live++;
  if (q) {
    tm->bytes -= old;
    tm_add(tm, q);
  }
  return q;
}

void test_mem_init(test_mem *tm) {
  memset(tm, 0, sizeof(*tm));
  tm->fail_at = -1;
  tm->mem.ud = tm;
  tm->mem.malloc = tm_malloc;
  tm->mem.free = tm_free;
  tm->mem.calloc = tm_calloc;
  tm->mem.realloc = tm_realloc;
}

static int64_t tc_now(void *ud) {
  return ((test_clock *)ud)->now;
}

static int64_t tc_wall(void *ud) {
  return ((test_clock *)ud)->wall;
}

void test_clock_init(test_clock *tc, int64_t wall_ms) {
  tc->now = 1000;
  tc->wall = wall_ms;
  tc->clock.ud = tc;
  tc->clock.now_ms = tc_now;
  tc->clock.wall_ms = tc_wall;
}

void test_clock_advance(test_clock *tc, int64_t ms) {
  tc->now += ms;
  tc->wall += ms;
}

static ssize_t sock_send(void *ud, void *conn_ud, const struct iovec *iov,
                         int n) {
  test_sock *t = conn_ud;
  (void)ud;
  if (t->block)
    return IMC_ERR_WOULDBLOCK;
  size_t total = 0;
  for (int i = 0; i < n; i++) {
    if (t->len + iov[i].iov_len > t->cap) {
      t->cap = (t->len + iov[i].iov_len) * 2;
      t->out = realloc(t->out, t->cap);
    }
    memcpy(t->out + t->len, iov[i].iov_base, iov[i].iov_len);
    t->len += iov[i].iov_len;
    total += iov[i].iov_len;
  }
  return (ssize_t)total;
}

static void sock_close(void *ud, void *conn_ud) {
  (void)ud;
  ((test_sock *)conn_ud)->closed++;
}

static void sock_set_read(void *ud, void *conn_ud, int enabled) {
  (void)ud;
  test_sock *s = conn_ud;
  s->paused = !enabled;
  s->pauses += !enabled;
}

const imc_transport_vtbl test_sock_transport = {
    sizeof(imc_transport_vtbl), sock_send, sock_close, sock_set_read};
