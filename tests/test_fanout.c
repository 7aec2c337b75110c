/* Unit tests of the group fan-out's handling of bus records. */
#include <imchat/fanout.h>
#include <imchat/membus.h>

#include "im.pb-c.h"
#include "testutil.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#define SECRET "fanout-test-secret-0123456789abcdef"

/* A store that knows only group_members: it records the groups asked
 * for and answers with no members. */
static struct {
  int calls;
  char groups[8][80];
} st;

static int st_group_members(void *ud, const char *g, imc_list_cb done,
                            void *done_ud) {
  (void)ud;
  if (st.calls < 8)
    strncpy(st.groups[st.calls], g, sizeof(st.groups[0]) - 1);
  st.calls++;
  done(done_ud, 0, NULL, 0);
  return 0;
}

static void published(void *ud, int status) {
  (void)ud;
  ck_assert_int_eq(status, 0);
}

static void publish(imc_membus *bus, const void *val, size_t len) {
  ck_assert_int_eq(imc_membus_vtbl()->publish(bus, "group_msg",
                                              (const uint8_t *)"k", 1, val, len,
                                              published, NULL),
                   0);
}

/* Message{msg_id 1, from_user 4, group_id 6, content_type 8} records:
 * three each with one bad string, then a clean one. */
START_TEST(bad_string_records_skipped) {
  memset(&st, 0, sizeof(st));
  imc_store_vtbl store;
  memset(&store, 0, sizeof(store));
  store.struct_size = sizeof(store);
  store.group_members = st_group_members;

  imc_gateway_options *o;
  imc_gateway *gw;
  ck_assert_int_eq(imc_gateway_options_new(&o, NULL), 0);
  ck_assert_int_eq(
      imc_gateway_options_set_transport(o, &test_sock_transport, NULL), 0);
  ck_assert_int_eq(imc_gateway_options_set_jwt_secret(
                       o, (const uint8_t *)SECRET, strlen(SECRET)),
                   0);
  ck_assert_int_eq(imc_gateway_new(&gw, o, NULL), 0);
  imc_gateway_options_del(o);
  imc_membus *bus;
  ck_assert_int_eq(imc_membus_new(&bus, NULL), 0);

  static const char bad_from[] = "\x0a\x02m1\x22\x03\xed\xa0\x80\x32\x02g2";
  static const char nul_group[] = "\x0a\x02m2\x22\x01"
                                  "a\x32\x04g3\0x";
  static const char overlong[] = "\x0a\x02m3\x22\x01"
                                 "a\x32\x02g4\x42\x02\xc0\xaf";
  static const char good[] = "\x0a\x02m4\x22\x01"
                             "a\x32\x02g1";
  /* The consumer group is known to the bus from the first poll on. */
  imc_fanout *f;
  ck_assert_int_eq(imc_fanout_new(&f, gw, imc_membus_vtbl(), bus, &store, NULL,
                                  NULL, 0, NULL),
                   0);
  ck_assert_int_eq(imc_fanout_start(f), 0);
  publish(bus, bad_from, sizeof(bad_from) - 1);
  publish(bus, nul_group, sizeof(nul_group) - 1);
  publish(bus, overlong, sizeof(overlong) - 1);
  publish(bus, good, sizeof(good) - 1);

  for (int i = 0; i < 10 && imc_membus_dispatch(bus) > 0; i++)
    ;
  /* Only the clean record got as far as a member lookup; "g3\0x" was
   * not read as "g3". */
  ck_assert_int_eq(st.calls, 1);
  ck_assert_str_eq(st.groups[0], "g1");
  /* The batch was committed: the fan-out waits on its next poll. */
  ck_assert_uint_eq(imc_fanout_pending(f), 1);

  imc_fanout_stop(f);
  imc_membus_del(bus);
  imc_fanout_del(f);
  imc_gateway_del(gw);
}
END_TEST

int main(void) {
  Suite *su = suite_create("fanout");
  TCase *t = tcase_create("records");
  tcase_add_test(t, bad_string_records_skipped);
  suite_add_tcase(su, t);
  SRunner *sr = srunner_create(su);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
