/*
 * The in-process bus: the bus conformance suite, plus its memory bound,
 * retention and allocation failures.
 */
#include <imchat/membus.h>

#include "conformance.h"
#include "testutil.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* The factory for the conformance suite                                */
/* ------------------------------------------------------------------ */

static test_mem fx_mem;

static void *fx_create(void *ctx, const imc_clock *clock) {
  (void)ctx;
  (void)clock;
  test_mem_init(&fx_mem);
  imc_membus *bus = NULL;
  ck_assert_int_eq(imc_membus_new(&bus, &fx_mem.mem), 0);
  return bus;
}

static void fx_destroy(void *ctx, void *ud) {
  (void)ctx;
  imc_membus_del(ud);
  ck_assert_int_eq(fx_mem.live, 0);
}

static int fx_dispatch(void *ctx, void *ud) {
  (void)ctx;
  return imc_membus_dispatch(ud);
}

static conformance_factory factory = {
    .name = "membus",
    .create = fx_create,
    .destroy = fx_destroy,
    .dispatch = fx_dispatch, /* not durable: no reopen */
};

/* ------------------------------------------------------------------ */
/* Helpers                                                              */
/* ------------------------------------------------------------------ */

static const imc_bus_vtbl *busv;

typedef struct res {
  int calls;
  int status;
  size_t n;
  uint64_t first, last;
  char values[64][16];
  imc_membus *commit_bus; /* commit the batch inside the completion */
} res;

static void on_done(void *p, int status) {
  res *r = p;
  r->calls++;
  r->status = status;
}

static void on_batch(void *p, int status, const imc_bus_record *recs,
                     size_t n) {
  res *r = p;
  r->calls++;
  r->status = status;
  r->n = n;
  if (n == 0)
    return;
  r->first = recs[0].offset;
  r->last = recs[n - 1].offset;
  if (r->commit_bus) {
    res d = {0};
    ck_assert_int_eq(
        busv->commit(r->commit_bus, "t", "g", 0, r->last, on_done, &d), 0);
  }
  /* Read after the commit: the records must still be there. */
  for (size_t i = 0; i < n && i < 64; i++) {
    size_t len = recs[i].value_len < 15 ? recs[i].value_len : 15;
    memcpy(r->values[i], recs[i].value, len);
    r->values[i][len] = '\0';
  }
}

static int publish(imc_membus *bus, const char *topic, const char *v) {
  res r = {0};
  int rv = busv->publish(bus, topic, (const uint8_t *)"k", 1,
                         (const uint8_t *)v, strlen(v), on_done, &r);
  ck_assert_int_eq(r.calls, rv == 0 ? 1 : 0);
  return rv;
}

static void commit(imc_membus *bus, const char *topic, const char *group,
                   uint64_t off) {
  res r = {0};
  ck_assert_int_eq(busv->commit(bus, topic, group, 0, off, on_done, &r), 0);
  ck_assert_int_eq(r.calls, 1);
}

static void poll_now(imc_membus *bus, const char *topic, const char *group,
                     size_t max, res *r) {
  imc_membus *cb = r->commit_bus;
  memset(r, 0, sizeof(*r));
  r->commit_bus = cb;
  ck_assert_int_eq(busv->poll(bus, topic, group, max, on_batch, r), 0);
  ck_assert_int_eq(r->calls, 0);
  ck_assert_int_eq(imc_membus_dispatch(bus), 1);
  ck_assert_int_eq(r->calls, 1);
  ck_assert_int_eq(r->status, 0);
}

/* ------------------------------------------------------------------ */
/* Tests                                                                */
/* ------------------------------------------------------------------ */

START_TEST(queue_bound) {
  test_mem tm;
  test_mem_init(&tm);
  imc_membus *bus;
  ck_assert_int_eq(imc_membus_new(&bus, &tm.mem), 0);
  ck_assert_int_eq(imc_membus_set_max_records(bus, 3), 0);
  ck_assert_int_eq(imc_membus_set_max_records(bus, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(publish(bus, "t", "1"), 0);
  ck_assert_int_eq(publish(bus, "u", "2"), 0); /* the bound spans topics */
  ck_assert_int_eq(publish(bus, "t", "3"), 0);
  ck_assert_int_eq(publish(bus, "t", "4"), IMC_ERR_QUEUE_FULL);
  ck_assert_uint_eq(imc_membus_size(bus), 3);
  res r = {0};
  poll_now(bus, "t", "g", 10, &r);
  ck_assert_uint_eq(r.n, 2);
  ck_assert_int_eq(publish(bus, "t", "4"), IMC_ERR_QUEUE_FULL);
  commit(bus, "t", "g", r.last);
  ck_assert_uint_eq(imc_membus_size(bus), 1);
  ck_assert_int_eq(publish(bus, "t", "4"), 0);
  /* Lowering the bound below the count refuses until drained. */
  ck_assert_int_eq(imc_membus_set_max_records(bus, 1), 0);
  ck_assert_int_eq(publish(bus, "t", "5"), IMC_ERR_QUEUE_FULL);
  imc_membus_del(bus);
  ck_assert_int_eq(tm.live, 0);
}
END_TEST

START_TEST(retained_until_every_group_commits) {
  imc_membus *bus;
  ck_assert_int_eq(imc_membus_new(&bus, NULL), 0);
  res a = {0}, b = {0};
  ck_assert_int_eq(busv->poll(bus, "t", "ga", 10, on_batch, &a), 0);
  ck_assert_int_eq(busv->poll(bus, "t", "gb", 10, on_batch, &b), 0);
  ck_assert_int_eq(imc_membus_dispatch(bus), 0);
  publish(bus, "t", "x");
  publish(bus, "t", "y");
  ck_assert_int_eq(imc_membus_dispatch(bus), 2);
  ck_assert_uint_eq(a.n, 2);
  ck_assert_uint_eq(b.n, 2);
  ck_assert_uint_eq(a.first, 1); /* offsets start at 1 per topic */
  commit(bus, "t", "ga", a.last);
  ck_assert_uint_eq(imc_membus_size(bus), 2);
  commit(bus, "t", "gb", b.first);
  ck_assert_uint_eq(imc_membus_size(bus), 1);
  commit(bus, "t", "gb", b.last);
  ck_assert_uint_eq(imc_membus_size(bus), 0);
  /* A group that joins late starts at the oldest record kept. */
  publish(bus, "t", "z");
  res c = {0};
  poll_now(bus, "t", "gc", 10, &c);
  ck_assert_uint_eq(c.n, 1);
  ck_assert_str_eq(c.values[0], "z");
  ck_assert_uint_eq(c.first, 3);
  imc_membus_del(bus);
}
END_TEST

START_TEST(no_group_keeps_records) {
  imc_membus *bus;
  ck_assert_int_eq(imc_membus_new(&bus, NULL), 0);
  publish(bus, "t", "early");
  ck_assert_uint_eq(imc_membus_size(bus), 1);
  res r = {0};
  poll_now(bus, "t", "g", 10, &r);
  ck_assert_str_eq(r.values[0], "early");
  imc_membus_del(bus);
}
END_TEST

START_TEST(commit_inside_completion_defers_free) {
  test_mem tm;
  test_mem_init(&tm);
  imc_membus *bus;
  ck_assert_int_eq(imc_membus_new(&bus, &tm.mem), 0);
  publish(bus, "t", "aaaa");
  publish(bus, "t", "bbbb");
  res r = {0};
  r.commit_bus = bus;
  poll_now(bus, "t", "g", 10, &r);
  ck_assert_str_eq(r.values[0], "aaaa");
  ck_assert_str_eq(r.values[1], "bbbb");
  ck_assert_uint_eq(imc_membus_size(bus), 0); /* freed after the call */
  imc_membus_del(bus);
  ck_assert_int_eq(tm.live, 0);
}
END_TEST

/* Interleaved publishes, partial polls and commits keep order across the
 * queue's compaction and growth. */
START_TEST(long_run_order) {
  test_mem tm;
  test_mem_init(&tm);
  imc_membus *bus;
  ck_assert_int_eq(imc_membus_new(&bus, &tm.mem), 0);
  int next_pub = 0, next_read = 0;
  char v[16];
  while (next_read < 1000) {
    for (int i = 0; i < 5 && next_pub < 1000; i++) {
      snprintf(v, sizeof(v), "%d", next_pub++);
      ck_assert_int_eq(publish(bus, "t", v), 0);
    }
    res r = {0};
    poll_now(bus, "t", "g", 3, &r);
    for (size_t i = 0; i < r.n; i++) {
      snprintf(v, sizeof(v), "%d", next_read);
      ck_assert_str_eq(r.values[i], v);
      ck_assert_uint_eq(r.first + i, (uint64_t)next_read + 1);
      next_read++;
    }
    commit(bus, "t", "g", r.last);
    ck_assert_uint_eq(imc_membus_size(bus), (size_t)(next_pub - next_read));
  }
  imc_membus_del(bus);
  ck_assert_int_eq(tm.live, 0);
}
END_TEST

START_TEST(dispatch_rules) {
  imc_membus *bus;
  ck_assert_int_eq(imc_membus_new(&bus, NULL), 0);
  publish(bus, "t", "a");
  res r = {0}, r2 = {0};
  ck_assert_int_eq(busv->poll(bus, "t", "g", 10, on_batch, &r), 0);
  ck_assert_int_eq(r.calls, 0); /* records wait, the poll still waits */
  ck_assert_int_eq(busv->poll(bus, "t", "g", 10, on_batch, &r2),
                   IMC_ERR_EXISTS);
  ck_assert_int_eq(imc_membus_dispatch(bus), 1);
  ck_assert_int_eq(r.calls, 1);
  ck_assert_int_eq(imc_membus_dispatch(bus), 0);
  ck_assert_int_eq(imc_membus_dispatch(NULL), IMC_ERR_INVALID_ARGUMENT);
  imc_membus_del(bus);
}
END_TEST

START_TEST(invalid_arguments) {
  imc_membus *bus;
  ck_assert_int_eq(imc_membus_new(NULL, NULL), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_membus_new(&bus, NULL), 0);
  res r = {0};
  const uint8_t *v = (const uint8_t *)"v";
  ck_assert_int_eq(busv->publish(bus, "", NULL, 0, v, 1, on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(busv->publish(bus, "t", NULL, 1, v, 1, on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(busv->publish(bus, "t", NULL, 0, v, 1, NULL, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(busv->poll(bus, "t", "", 1, on_batch, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(busv->poll(bus, "t", "g", 0, on_batch, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(busv->commit(bus, "t", "g", 2, 1, on_done, &r),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(r.calls, 0);
  ck_assert_uint_eq(imc_membus_size(NULL), 0);
  imc_membus_del(bus);
  imc_membus_del(NULL);
}
END_TEST

/* The deferred polls' wakeup: 0 exactly while a dispatch would complete
 * a poll. */
static void repoll(void *p, int status, const imc_bus_record *recs, size_t n);

typedef struct chain {
  imc_membus *bus;
  int calls, repolls;
} chain;

static void repoll(void *p, int status, const imc_bus_record *recs, size_t n) {
  chain *c = p;
  (void)recs;
  ck_assert_int_eq(status, 0);
  ck_assert_uint_eq(n, 1);
  c->calls++;
  if (c->repolls-- > 0)
    ck_assert_int_eq(busv->poll(c->bus, "t", "g", 1, repoll, c), 0);
}

START_TEST(wakeup_deadline) {
  test_mem tm;
  test_mem_init(&tm);
  imc_membus *bus;
  ck_assert_int_eq(imc_membus_next_timeout_ms(NULL), -1);
  ck_assert_int_eq(imc_membus_new(&bus, &tm.mem), 0);
  ck_assert_int_eq(imc_membus_next_timeout_ms(bus), -1);
  chain c = {bus, 0, 2};
  ck_assert_int_eq(busv->poll(bus, "t", "g", 1, repoll, &c), 0);
  ck_assert_int_eq(imc_membus_next_timeout_ms(bus), -1); /* nothing yet */
  ck_assert_int_eq(publish(bus, "u", "x"), 0);
  ck_assert_int_eq(imc_membus_next_timeout_ms(bus), -1); /* other topic */
  ck_assert_int_eq(publish(bus, "t", "1"), 0);
  ck_assert_int_eq(publish(bus, "t", "2"), 0);
  ck_assert_int_eq(publish(bus, "t", "3"), 0);
  ck_assert_int_eq(imc_membus_next_timeout_ms(bus), 0);
  /* Each dispatch serves one round; the poll made by a completion waits
   * for the next dispatch, and the deadline says so. */
  ck_assert_int_eq(imc_membus_dispatch(bus), 1);
  ck_assert_int_eq(c.calls, 1);
  ck_assert_int_eq(imc_membus_next_timeout_ms(bus), 0);
  ck_assert_int_eq(imc_membus_dispatch(bus), 1);
  ck_assert_int_eq(imc_membus_next_timeout_ms(bus), 0);
  ck_assert_int_eq(imc_membus_dispatch(bus), 1);
  ck_assert_int_eq(c.calls, 3);
  ck_assert_int_eq(imc_membus_next_timeout_ms(bus), -1); /* no poll */
  ck_assert_int_eq(imc_membus_dispatch(bus), 0);
  imc_membus_del(bus);
  ck_assert_int_eq(tm.live, 0);
}
END_TEST

START_TEST(del_completes_polls) {
  imc_membus *bus;
  ck_assert_int_eq(imc_membus_new(&bus, NULL), 0);
  publish(bus, "t", "unread");
  res r = {0};
  ck_assert_int_eq(busv->poll(bus, "t", "g", 10, on_batch, &r), 0);
  imc_membus_del(bus);
  ck_assert_int_eq(r.calls, 1);
  ck_assert_int_eq(r.status, IMC_ERR_CLOSED);
  ck_assert_uint_eq(r.n, 0);
}
END_TEST

START_TEST(allocation_failures) {
  /* Each step either works or fails with IMC_ERR_NOMEM, leaving the bus
   * usable; every allocation index is failed once. */
  for (long fail = 0; fail < 200; fail++) {
    test_mem tm;
    test_mem_init(&tm);
    tm.fail_at = fail;
    imc_membus *bus = NULL;
    int rv = imc_membus_new(&bus, &tm.mem);
    if (rv < 0) {
      ck_assert_int_eq(rv, IMC_ERR_NOMEM);
      ck_assert_int_eq(tm.live, 0);
      continue;
    }
    int published = 0;
    for (int i = 0; i < 3; i++) {
      rv = publish(bus, i == 1 ? "u" : "t", "v");
      ck_assert(rv == 0 || rv == IMC_ERR_NOMEM);
      published += rv == 0;
    }
    res r = {0};
    rv = busv->poll(bus, "t", "g", 10, on_batch, &r);
    ck_assert(rv == 0 || rv == IMC_ERR_NOMEM);
    if (rv == 0) {
      ck_assert_int_ge(imc_membus_dispatch(bus), 0);
      ck_assert(r.calls <= 1);
      if (r.calls)
        ck_assert(r.status == 0 || r.status == IMC_ERR_NOMEM);
      if (r.calls && r.status == 0) {
        res d = {0};
        rv = busv->commit(bus, "t", "g", 0, r.last, on_done, &d);
        ck_assert(rv == 0 || rv == IMC_ERR_NOMEM);
      }
    }
    ck_assert_uint_le(imc_membus_size(bus), (size_t)published);
    imc_membus_del(bus); /* completes a still-pending poll */
    ck_assert_int_eq(tm.live, 0);
    if (tm.count <= fail)
      return; /* every allocation has been failed once */
  }
  ck_abort_msg("more allocations than the loop covers");
}
END_TEST

static Suite *membus_suite(void) {
  Suite *s = suite_create("membus");
  TCase *tc = tcase_create("membus");
  tcase_add_test(tc, queue_bound);
  tcase_add_test(tc, retained_until_every_group_commits);
  tcase_add_test(tc, no_group_keeps_records);
  tcase_add_test(tc, commit_inside_completion_defers_free);
  tcase_add_test(tc, long_run_order);
  tcase_add_test(tc, dispatch_rules);
  tcase_add_test(tc, wakeup_deadline);
  tcase_add_test(tc, invalid_arguments);
  tcase_add_test(tc, del_completes_polls);
  tcase_add_test(tc, allocation_failures);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  busv = factory.bus = imc_membus_vtbl();
  SRunner *sr = srunner_create(conformance_bus_suite(&factory));
  srunner_add_suite(sr, membus_suite());
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
