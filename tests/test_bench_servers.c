/* Unit tests of imchat-bench's servers of a run: the --port and
 * --server-pid lists, how connections spread over the ports (pairs across
 * two servers, groups evenly) and the /proc sampling of processes. */
#include "servers.h"

#include <check.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

START_TEST(parse_lists) {
  int v[4], n = 0;
  ck_assert_int_eq(bench_parse_ints("8080", 1, 65535, v, &n, 4), 0);
  ck_assert_int_eq(n, 1);
  ck_assert_int_eq(v[0], 8080);
  /* A second list (the flag repeated) appends. */
  ck_assert_int_eq(bench_parse_ints("1,65535", 1, 65535, v, &n, 4), 0);
  ck_assert_int_eq(n, 3);
  ck_assert_int_eq(v[1], 1);
  ck_assert_int_eq(v[2], 65535);
  ck_assert_int_eq(bench_parse_ints("7", 1, 65535, v, &n, 4), 0);
  ck_assert_int_eq(n, 4);
  ck_assert_int_eq(v[3], 7);
}
END_TEST

START_TEST(parse_rejects) {
  static const char *const bad[] = {
      "",    ",",     "1,",  ",1",   "1,,2",
      "0",   "65536", "12a", " 1",   "-1",
      "+1",  "1 ,2",  "1;2", "0x10", "99999999999999999999",
      "1, 2"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    int v[8] = {0}, n = 1;
    ck_assert_msg(bench_parse_ints(bad[i], 1, 65535, v, &n, 8) == -1,
                  "accepted '%s'", bad[i]);
    ck_assert_int_eq(n, 1);
  }
  int v[8], n = 0;
  ck_assert_int_eq(bench_parse_ints(NULL, 1, 65535, v, &n, 8), -1);
  /* More than cap in all: refused whole, what was there stays. */
  ck_assert_int_eq(bench_parse_ints("1,2", 1, 9, v, &n, 3), 0);
  ck_assert_int_eq(bench_parse_ints("3,4", 1, 9, v, &n, 3), -1);
  ck_assert_int_eq(n, 2);
  ck_assert_int_eq(bench_parse_ints("3", 1, 9, v, &n, 3), 0);
  ck_assert_int_eq(n, 3);
  ck_assert_int_eq(bench_parse_ints("4", 1, 9, v, &n, 3), -1);
}
END_TEST

START_TEST(one_port_takes_all) {
  int p[] = {9000};
  for (int i = 0; i < 1000; i++)
    ck_assert_int_eq(bench_conn_port(p, 1, i), 9000);
}
END_TEST

START_TEST(pairs_cross_servers) {
  /* For any number of servers above one, the ends of every pair
   * (connections 2j and 2j + 1) are on different servers. */
  int p[BENCH_MAX_PORTS];
  for (int k = 0; k < BENCH_MAX_PORTS; k++)
    p[k] = 10000 + k;
  int same = 0;
  for (int n = 2; n <= BENCH_MAX_PORTS; n++)
    for (int j = 0; j < 50000; j++)
      same += bench_conn_port(p, n, 2 * j) == bench_conn_port(p, n, 2 * j + 1);
  ck_assert_int_eq(same, 0);
}
END_TEST

START_TEST(spread_is_even) {
  /* 100,000 connections over 5 servers: 20,000 each; 1,001 group members
   * over 3: 334, 334, 333; every server gets some pairs' first ends. */
  int p[] = {1, 2, 3, 4, 5}, count[6] = {0}, first[6] = {0};
  for (int i = 0; i < 100000; i++)
    count[bench_conn_port(p, 5, i)]++;
  for (int i = 0; i < 100000; i += 2)
    first[bench_conn_port(p, 5, i)]++;
  for (int k = 1; k <= 5; k++) {
    ck_assert_int_eq(count[k], 20000);
    ck_assert_int_eq(first[k], 10000);
  }
  int c3[4] = {0};
  for (int i = 0; i < 1001; i++)
    c3[bench_conn_port(p, 3, i)]++;
  ck_assert_int_eq(c3[1], 334);
  ck_assert_int_eq(c3[2], 334);
  ck_assert_int_eq(c3[3], 333);
}
END_TEST

START_TEST(sample_processes) {
  long rss0, rss1;
  double cpu0, cpu1;
  ck_assert_int_eq(bench_proc_sample((int)getpid(), &rss0, &cpu0), 0);
  ck_assert_int_gt(rss0, 0);
  ck_assert(cpu0 >= 0);
  /* 64 MiB touched (through a volatile pointer, so that the writes
   * stay): the resident set grows by about as much. */
  size_t sz = 64u << 20;
  char *big = malloc(sz);
  ck_assert_ptr_nonnull(big);
  volatile char *touch = big;
  for (size_t i = 0; i < sz; i += 4096)
    touch[i] = 1;
  ck_assert_int_eq(bench_proc_sample((int)getpid(), &rss1, &cpu1), 0);
  ck_assert_int_ge(rss1 - rss0, 60 * 1024);
  ck_assert(cpu1 >= cpu0);
  free(big);

  /* Another process while it lives; not once it was reaped. */
  int ready[2];
  ck_assert_int_eq(pipe(ready), 0);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    close(ready[1]);
    char b;
    _exit(read(ready[0], &b, 1) < 0);
  }
  close(ready[0]);
  long rss;
  double cpu;
  ck_assert_int_eq(bench_proc_sample((int)pid, &rss, &cpu), 0);
  ck_assert_int_gt(rss, 0);
  close(ready[1]); /* the child's read returns: it exits */
  int st;
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert_int_eq(bench_proc_sample((int)pid, &rss, &cpu), -1);
}
END_TEST

int main(void) {
  Suite *su = suite_create("bench_servers");
  TCase *t = tcase_create("servers");
  tcase_add_test(t, parse_lists);
  tcase_add_test(t, parse_rejects);
  tcase_add_test(t, one_port_takes_all);
  tcase_add_test(t, pairs_cross_servers);
  tcase_add_test(t, spread_is_even);
  tcase_add_test(t, sample_processes);
  suite_add_tcase(su, t);
  SRunner *sr = srunner_create(su);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
