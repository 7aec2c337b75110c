/*
 * The engines' loop adapter on the hosts' epoll loop
 * (hosts/common/engine_loop.c): timers fire in deadline order, a timer
 * armed from a timer waits for the next turn, fd watches report read and
 * write readiness, and watches and timers can be removed from callbacks.
 */
#include "engine_test.h"

#include <check.h>

#include <stdlib.h>
#include <unistd.h>

static eng_loop t;

static void setup(void) {
  eng_loop_init(&t);
}

static void teardown(void) {
  eng_loop_fini(&t);
}

static char order[16];
static int norder;

static void on_timer(void *ud) {
  order[norder++] = *(const char *)ud;
}

START_TEST(timers_fire_in_deadline_order) {
  void *h;
  static const char a = 'a', b = 'b', c = 'c';
  norder = 0;
  ck_assert_int_eq(
      t.loop->vtbl->timer_add(t.loop->ud, 40, on_timer, (void *)&c, &h), 0);
  ck_assert_int_eq(
      t.loop->vtbl->timer_add(t.loop->ud, 0, on_timer, (void *)&a, &h), 0);
  ck_assert_int_eq(
      t.loop->vtbl->timer_add(t.loop->ud, 20, on_timer, (void *)&b, &h), 0);
  int64_t end = eng_now_ms() + 5000;
  while (norder < 3 && eng_now_ms() < end)
    eng_loop_turn(&t, 100);
  ck_assert_int_eq(norder, 3);
  ck_assert_mem_eq(order, "abc", 3);
}
END_TEST

static void *victim;

static void on_cancel_other(void *ud) {
  t.loop->vtbl->timer_del(t.loop->ud, victim);
  on_timer(ud);
}

START_TEST(a_cancelled_timer_does_not_fire) {
  void *h;
  static const char a = 'a', v = 'v';
  norder = 0;
  ck_assert_int_eq(
      t.loop->vtbl->timer_add(t.loop->ud, 0, on_cancel_other, (void *)&a, &h),
      0);
  ck_assert_int_eq(
      t.loop->vtbl->timer_add(t.loop->ud, 0, on_timer, (void *)&v, &victim), 0);
  for (int i = 0; i < 5; i++)
    eng_loop_turn(&t, 10);
  ck_assert_int_eq(norder, 1);
  ck_assert_int_eq(order[0], 'a');
}
END_TEST

static int rearms;

static void on_rearm(void *ud) {
  void *h;
  rearms++;
  ck_assert_int_eq(t.loop->vtbl->timer_add(t.loop->ud, 0, on_rearm, ud, &h), 0);
}

START_TEST(a_timer_armed_from_a_timer_waits_a_turn) {
  void *h;
  rearms = 0;
  ck_assert_int_eq(t.loop->vtbl->timer_add(t.loop->ud, 0, on_rearm, NULL, &h),
                   0);
  for (int i = 0; i < 4; i++)
    eng_loop_turn(&t, 10);
  /* One firing per turn at most, not an endless loop in the first. */
  ck_assert_int_ge(rearms, 1);
  ck_assert_int_le(rearms, 4);
}
END_TEST

typedef struct fd_res {
  int calls;
  unsigned events;
  void *handle;
  int del_in_cb;
} fd_res;

static void on_fd(void *ud, int fd, unsigned events) {
  fd_res *r = ud;
  (void)fd;
  r->calls++;
  r->events |= events;
  if (r->del_in_cb)
    t.loop->vtbl->fd_del(t.loop->ud, r->handle);
}

START_TEST(fd_watches_report_readiness) {
  int p[2];
  ck_assert_int_eq(pipe(p), 0);
  fd_res rd = {0}, wr = {0};
  ck_assert_int_eq(t.loop->vtbl->fd_add(t.loop->ud, p[0], IMC_LOOP_READ, on_fd,
                                        &rd, &rd.handle),
                   0);
  ck_assert_int_eq(
      t.loop->vtbl->fd_add(t.loop->ud, p[1], 0, on_fd, &wr, &wr.handle), 0);
  eng_loop_turn(&t, 10);
  ck_assert_int_eq(rd.calls, 0); /* nothing to read */
  ck_assert_int_eq(wr.calls, 0); /* no events asked for */

  ck_assert_int_eq(t.loop->vtbl->fd_set(t.loop->ud, wr.handle, IMC_LOOP_WRITE),
                   0);
  wr.del_in_cb = 1;
  eng_loop_turn(&t, 100);
  ck_assert_int_eq(wr.calls, 1);
  ck_assert_uint_eq(wr.events & IMC_LOOP_WRITE, IMC_LOOP_WRITE);

  ck_assert_int_eq(write(p[1], "x", 1), 1);
  ck_assert_int_eq(eng_loop_until(&t, &rd.calls, 2000), 1);
  ck_assert_uint_eq(rd.events & IMC_LOOP_READ, IMC_LOOP_READ);
  t.loop->vtbl->fd_del(t.loop->ud, rd.handle);
  rd.calls = 0;
  eng_loop_turn(&t, 10); /* still readable, but no longer watched */
  ck_assert_int_eq(rd.calls, 0);
  close(p[0]);
  close(p[1]);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("engine_loop");
  TCase *tc = tcase_create("core");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, timers_fire_in_deadline_order);
  tcase_add_test(tc, a_cancelled_timer_does_not_fire);
  tcase_add_test(tc, a_timer_armed_from_a_timer_waits_a_turn);
  tcase_add_test(tc, fd_watches_report_readiness);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
