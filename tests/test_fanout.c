/*
 * Group fan-out driven through its public API: a mock group bus with
 * several partitions, a mock store answering group membership, and a
 * gateway with no connections (pushes are not the subject here).
 */
#include <imchat/fanout.h>
#include <imchat/membus.h>
#include <imchat/memreg.h>

#include "im.pb-c.h"
#include "testjwt.h"
#include "testutil.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T0 1700000000000LL
#define NPART 3
#define MAXREC 64

/* ------------------------------------------------------------------ */
/* Mock bus                                                             */
/* ------------------------------------------------------------------ */

typedef struct mrec {
  uint8_t *val;
  size_t len;
  int32_t part;
  uint64_t off;
} mrec;

typedef struct mbus {
  mrec recs[MAXREC];
  size_t n, next; /* next: first record not yet delivered */
  uint64_t next_off[NPART];
  uint64_t committed[NPART];
  int commit_calls[NPART];
  int polls, polling, async_commit, revoke;
  imc_bus_batch_cb cb;
  void *cb_ud;
  size_t max;
  char topic[64], group[64]; /* names of the last poll */
  int name_mismatch;         /* a commit named another topic or group */
  /* held commit completions */
  imc_done_cb held[NPART * 4];
  void *held_ud[NPART * 4];
  size_t n_held;
} mbus;

static mbus B;
static test_mem tm;
static test_clock tc;

static int b_publish(void *ud, const char *topic, const uint8_t *key,
                     size_t key_len, const uint8_t *value, size_t value_len,
                     imc_done_cb done, void *done_ud) {
  (void)ud, (void)topic, (void)key, (void)key_len, (void)value;
  (void)value_len, (void)done, (void)done_ud;
  return IMC_ERR_INTERNAL; /* the fan-out never publishes */
}

static int b_poll(void *ud, const char *topic, const char *group, size_t max,
                  imc_bus_batch_cb done, void *done_ud) {
  ck_assert_ptr_eq(ud, &B);
  if (B.polling)
    return IMC_ERR_EXISTS;
  B.polls++;
  B.polling = 1;
  B.cb = done;
  B.cb_ud = done_ud;
  B.max = max;
  snprintf(B.topic, sizeof(B.topic), "%s", topic);
  snprintf(B.group, sizeof(B.group), "%s", group);
  return 0;
}

static int b_commit(void *ud, const char *topic, const char *group,
                    int32_t part, uint64_t off, imc_done_cb done,
                    void *done_ud) {
  ck_assert_ptr_eq(ud, &B);
  ck_assert_int_ge(part, 0);
  ck_assert_int_lt(part, NPART);
  if (strcmp(topic, B.topic) != 0 || strcmp(group, B.group) != 0)
    B.name_mismatch++;
  B.commit_calls[part]++;
  if (B.revoke)
    return IMC_ERR_REVOKED;
  if (off > B.committed[part])
    B.committed[part] = off;
  if (B.async_commit) {
    ck_assert_uint_lt(B.n_held, NPART * 4);
    B.held[B.n_held] = done;
    B.held_ud[B.n_held++] = done_ud;
    return 0;
  }
  done(done_ud, 0);
  return 0;
}

static const imc_bus_vtbl bus_vt = {sizeof(imc_bus_vtbl), b_publish, b_poll,
                                    b_commit};

static void b_add(int32_t part, const char *group_id) {
  ck_assert_uint_lt(B.n, MAXREC);
  Imchat__V1__Message m = IMCHAT__V1__MESSAGE__INIT;
  char id[32];
  snprintf(id, sizeof(id), "m%zu", B.n);
  m.msg_id = id;
  m.conversation_id = "g:team";
  m.seq = B.n + 1;
  m.from_user = "alice";
  m.group_id = (char *)group_id;
  m.content_type = "text/plain";
  m.sent_at_ms = T0;
  mrec *r = &B.recs[B.n++];
  r->len = imchat__v1__message__get_packed_size(&m);
  r->val = malloc(r->len ? r->len : 1);
  imchat__v1__message__pack(&m, r->val);
  r->part = part;
  r->off = ++B.next_off[part];
}

/* Completes the outstanding poll with every record not yet delivered. */
static int b_dispatch(void) {
  if (!B.polling || B.next == B.n)
    return 0;
  imc_bus_record recs[MAXREC];
  size_t n = 0;
  for (; B.next < B.n && n < B.max; B.next++, n++) {
    const mrec *r = &B.recs[B.next];
    recs[n] = (imc_bus_record){NULL, 0, r->val, r->len, r->part, r->off};
  }
  B.polling = 0;
  B.cb(B.cb_ud, 0, recs, n);
  return 1;
}

static void b_release(void) {
  size_t n = B.n_held;
  B.n_held = 0;
  for (size_t i = 0; i < n; i++)
    B.held[i](B.held_ud[i], 0);
}

/* ------------------------------------------------------------------ */
/* Mock store: group membership only                                    */
/* ------------------------------------------------------------------ */

static int member_lookups;
/* With big_group set, the group has these members. */
#define BIG 1200
static int big_group;
static char big_names[BIG][16];

static int s_members(void *ud, const char *group_id, imc_list_cb done,
                     void *done_ud) {
  (void)ud;
  member_lookups++;
  ck_assert_str_eq(group_id, "team");
  if (big_group) {
    static const char *items[BIG];
    for (int i = 0; i < BIG; i++)
      items[i] = big_names[i];
    done(done_ud, 0, items, BIG);
    return 0;
  }
  const char *const items[] = {"nobody-here"};
  done(done_ud, 0, items, 1);
  return 0;
}

static const imc_store_vtbl store_vt = {
    sizeof(imc_store_vtbl), NULL, NULL, NULL, NULL, NULL, NULL, s_members};

/* ------------------------------------------------------------------ */
/* Fixture                                                              */
/* ------------------------------------------------------------------ */

static imc_memreg *reg;
static imc_gateway *gw;

static void setup(void) {
  memset(&B, 0, sizeof(B));
  member_lookups = 0;
  big_group = 0;
  test_mem_init(&tm);
  test_clock_init(&tc, T0);
  ck_assert_int_eq(imc_memreg_new(&reg, &tc.clock, &tm.mem), 0);
  imc_gateway_options *o = NULL;
  ck_assert_int_eq(imc_gateway_options_new(&o, &tm.mem), 0);
  ck_assert_int_eq(
      imc_gateway_options_set_transport(o, &test_sock_transport, NULL), 0);
  ck_assert_int_eq(imc_gateway_options_set_registry(o, imc_memreg_vtbl(), reg),
                   0);
  ck_assert_int_eq(imc_gateway_options_set_clock(o, &tc.clock), 0);
  ck_assert_int_eq(
      imc_gateway_options_set_jwt_secret(
          o, (const uint8_t *)"0123456789abcdef0123456789abcdef", 32),
      0);
  ck_assert_int_eq(imc_gateway_options_set_node_id(o, "n1"), 0);
  ck_assert_int_eq(imc_gateway_new(&gw, o, &tm.mem), 0);
  imc_gateway_options_del(o);
}

static void teardown(void) {
  for (size_t i = 0; i < B.n; i++)
    free(B.recs[i].val);
  imc_gateway_del(gw);
  imc_memreg_del(reg);
  ck_assert_int_eq(tm.live, 0);
}

static imc_fanout *mk_fanout(void) {
  imc_fanout *f = NULL;
  ck_assert_int_eq(imc_fanout_new(&f, gw, &bus_vt, &B, &store_vt, NULL,
                                  &tc.clock, 1000, &tm.mem),
                   0);
  return f;
}

/* ------------------------------------------------------------------ */
/* Tests                                                                */
/* ------------------------------------------------------------------ */

/* A batch spanning partitions commits the highest offset of each, not
 * only the last record's partition; the next poll follows the commits. */
START_TEST(test_commit_every_partition) {
  b_add(0, "team"); /* p0 off 1 */
  b_add(1, "team"); /* p1 off 1 */
  b_add(0, "team"); /* p0 off 2 */
  b_add(2, "team"); /* p2 off 1 */
  b_add(1, "team"); /* p1 off 2 */
  b_add(1, "team"); /* p1 off 3 */
  b_add(0, "team"); /* p0 off 3: the last record */
  B.async_commit = 1;
  imc_fanout *f = mk_fanout();
  ck_assert_int_eq(imc_fanout_start(f), 0);
  ck_assert_str_eq(B.topic, "group_msg");
  ck_assert_str_eq(B.group, "gw-n1");
  ck_assert_int_eq(b_dispatch(), 1);
  ck_assert_int_eq(member_lookups, 1); /* cached after the first */
  for (int p = 0; p < NPART; p++)
    ck_assert_int_eq(B.commit_calls[p], 1);
  ck_assert_uint_eq(B.committed[0], 3);
  ck_assert_uint_eq(B.committed[1], 3);
  ck_assert_uint_eq(B.committed[2], 1);
  ck_assert_int_eq(B.name_mismatch, 0);
  /* No poll until every commit has completed. */
  ck_assert_int_eq(B.polls, 1);
  ck_assert_uint_eq(imc_fanout_pending(f), NPART);
  b_release();
  ck_assert_int_eq(B.polls, 2);
  ck_assert_uint_eq(imc_fanout_pending(f), 1);

  /* Synchronous commits, one partition. */
  B.async_commit = 0;
  b_add(2, "team");
  ck_assert_int_eq(b_dispatch(), 1);
  ck_assert_int_eq(B.commit_calls[2], 2);
  ck_assert_int_eq(B.commit_calls[0], 1);
  ck_assert_uint_eq(B.committed[2], 2);
  ck_assert_int_eq(B.polls, 3);
  imc_fanout_stop(f);
  imc_fanout_del(f);
}
END_TEST

#define SECRET32 "0123456789abcdef0123456789abcdef"

/* Connects user over s as a client would; c is the gateway's handle. */
static void connect_user(test_sock *s, imc_conn **c, const char *user) {
  char payload[256], tok[1024], req[2048];
  snprintf(payload, sizeof(payload), "{\"sub\":\"%s\",\"exp\":%lld}", user,
           (long long)(T0 / 1000 + 3600));
  testjwt_make(tok, sizeof(tok), "{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payload,
               TJ_HS256, NULL, (const uint8_t *)SECRET32, 32);
  snprintf(req, sizeof(req),
           "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n"
           "Authorization: Bearer %s\r\n\r\n",
           tok);
  ck_assert_int_eq(imc_gateway_conn_new(gw, c, s), 0);
  ck_assert_int_eq(
      imc_gateway_conn_recv(gw, *c, (const uint8_t *)req, strlen(req)), 0);
}

/*
 * A message to a large group is encoded once for every member here and
 * queued by reference (no copy of the frame per member), and it is
 * pushed over several loop turns: at most 512 members per turn, the next
 * turn due at once.
 */
START_TEST(test_group_encoded_once_over_turns) {
  static test_sock socks[BIG];
  static imc_conn *conns[BIG];
  memset(socks, 0, sizeof(socks));
  big_group = 1;
  for (int i = 0; i < BIG; i++) {
    snprintf(big_names[i], sizeof(big_names[i]), "u%d", i);
    connect_user(&socks[i], &conns[i], big_names[i]);
  }
  imc_gateway_flush(gw);
  ck_assert_uint_eq(imc_gateway_stat_get(gw, IMC_GW_STAT_WEBSOCKETS), BIG);
  static size_t welcomed[BIG];
  for (int i = 0; i < BIG; i++)
    welcomed[i] = socks[i].len;
  b_add(0, "team");
  imc_fanout *f = mk_fanout();
  long allocs = tm.count;
  ck_assert_int_eq(imc_fanout_start(f), 0);
  ck_assert_int_eq(b_dispatch(), 1);
  /* The first turn at once; the rest waits for the next turns. */
  ck_assert_uint_eq(imc_gateway_stat_get(gw, IMC_GW_STAT_PUSHES), 512);
  ck_assert_int_eq(imc_gateway_next_timeout_ms(gw), 0);
  imc_gateway_on_timeout(gw);
  ck_assert_uint_eq(imc_gateway_stat_get(gw, IMC_GW_STAT_PUSHES), 1024);
  ck_assert_int_eq(imc_gateway_next_timeout_ms(gw), 0);
  imc_gateway_on_timeout(gw);
  ck_assert_uint_eq(imc_gateway_stat_get(gw, IMC_GW_STAT_PUSHES), BIG);
  ck_assert_int_gt(imc_gateway_next_timeout_ms(gw), 0);
  /* One encode; per member a push record and a queue reference. */
  ck_assert_uint_eq(imc_gateway_stat_get(gw, IMC_GW_STAT_DELIVER_ENCODES), 1);
  ck_assert_int_le(tm.count - allocs, 2 * BIG + 64);
  imc_gateway_flush(gw);
  /* Every member got the same bytes. */
  size_t frame = socks[0].len - welcomed[0];
  ck_assert_uint_gt(frame, 10);
  for (int i = 1; i < BIG; i++) {
    ck_assert_uint_eq(socks[i].len - welcomed[i], frame);
    ck_assert_int_eq(
        memcmp(socks[i].out + welcomed[i], socks[0].out + welcomed[0], frame),
        0);
  }
  imc_fanout_stop(f);
  imc_fanout_del(f);
  for (int i = 0; i < BIG; i++)
    imc_gateway_conn_closed(gw, conns[i]);
  for (int i = 0; i < BIG; i++)
    free(socks[i].out);
}
END_TEST

/* A revoked partition is not retried: the fan-out polls on. */
START_TEST(test_commit_revoked) {
  b_add(0, "team");
  b_add(1, "team");
  B.revoke = 1;
  imc_fanout *f = mk_fanout();
  ck_assert_int_eq(imc_fanout_start(f), 0);
  ck_assert_int_eq(b_dispatch(), 1);
  ck_assert_int_eq(B.commit_calls[0], 1);
  ck_assert_int_eq(B.commit_calls[1], 1);
  ck_assert_int_eq(B.polls, 2);
  ck_assert_uint_eq(imc_fanout_pending(f), 1);
  imc_fanout_stop(f);
  imc_fanout_del(f);
}
END_TEST

START_TEST(test_topic_group) {
  imc_fanout *f = mk_fanout();
  ck_assert_int_eq(imc_fanout_set_topic(NULL, "t"), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_fanout_set_topic(f, NULL), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_fanout_set_topic(f, ""), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_fanout_set_group(f, ""), IMC_ERR_INVALID_ARGUMENT);
  char name[140];
  memset(name, 'x', sizeof(name) - 1);
  name[sizeof(name) - 1] = '\0';
  ck_assert_int_eq(imc_fanout_set_group(f, name), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_fanout_set_topic(f, "groups-eu"), 0);
  ck_assert_int_eq(imc_fanout_set_group(f, "edge-7"), 0);
  ck_assert_int_eq(imc_fanout_start(f), 0);
  ck_assert_str_eq(B.topic, "groups-eu");
  ck_assert_str_eq(B.group, "edge-7");
  /* Not while running: the poll and its commits share the names. */
  ck_assert_int_eq(imc_fanout_set_topic(f, "other"), IMC_ERR_INVALID_ARGUMENT);
  b_add(1, "team");
  ck_assert_int_eq(b_dispatch(), 1);
  ck_assert_int_eq(B.commit_calls[1], 1);
  ck_assert_int_eq(B.name_mismatch, 0);
  imc_fanout_stop(f);
  imc_fanout_del(f);
}
END_TEST

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

/* A gateway, a bus and a fan-out over them on clk, with the recording
 * store above; the fan-out is started. */
static struct {
  imc_store_vtbl store;
  imc_gateway *g;
  imc_membus *bus;
  imc_fanout *f;
} rec;

static void rec_start(test_clock *clk) {
  memset(&st, 0, sizeof(st));
  memset(&rec.store, 0, sizeof(rec.store));
  rec.store.struct_size = sizeof(rec.store);
  rec.store.group_members = st_group_members;
  imc_gateway_options *o;
  ck_assert_int_eq(imc_gateway_options_new(&o, NULL), 0);
  ck_assert_int_eq(
      imc_gateway_options_set_transport(o, &test_sock_transport, NULL), 0);
  ck_assert_int_eq(imc_gateway_options_set_jwt_secret(
                       o, (const uint8_t *)SECRET, strlen(SECRET)),
                   0);
  ck_assert_int_eq(imc_gateway_new(&rec.g, o, NULL), 0);
  imc_gateway_options_del(o);
  ck_assert_int_eq(imc_membus_new(&rec.bus, NULL), 0);
  ck_assert_int_eq(imc_fanout_new(&rec.f, rec.g, imc_membus_vtbl(), rec.bus,
                                  &rec.store, NULL, &clk->clock, 0, NULL),
                   0);
  ck_assert_int_eq(imc_fanout_start(rec.f), 0);
}

/* Dispatches until the bus is idle. */
static void rec_dispatch(void) {
  for (int i = 0; i < 10 && imc_membus_dispatch(rec.bus) > 0; i++)
    ;
}

/* Checks the fan-out committed the batch and waits on its next poll,
 * then frees everything. */
static void rec_stop(void) {
  ck_assert_uint_eq(imc_fanout_pending(rec.f), 1); /* committed, polling */
  imc_fanout_stop(rec.f);
  imc_membus_del(rec.bus);
  imc_fanout_del(rec.f);
  imc_gateway_del(rec.g);
}

/* Message{msg_id 1, from_user 4, group_id 6, content_type 8} records:
 * three each with one bad string, then a clean one. */
START_TEST(bad_string_records_skipped) {
  static const char bad_from[] = "\x0a\x02m1\x22\x03\xed\xa0\x80\x32\x02g2";
  static const char nul_group[] = "\x0a\x02m2\x22\x01"
                                  "a\x32\x04g3\0x";
  static const char overlong[] = "\x0a\x02m3\x22\x01"
                                 "a\x32\x02g4\x42\x02\xc0\xaf";
  static const char good[] = "\x0a\x02m4\x22\x01"
                             "a\x32\x02g1";
  /* The consumer group is known to the bus from the first poll on. The
   * records carry no send time: the clock starts near 0. */
  test_clock near_zero;
  test_clock_init(&near_zero, 30000);
  rec_start(&near_zero);
  publish(rec.bus, bad_from, sizeof(bad_from) - 1);
  publish(rec.bus, nul_group, sizeof(nul_group) - 1);
  publish(rec.bus, overlong, sizeof(overlong) - 1);
  publish(rec.bus, good, sizeof(good) - 1);
  rec_dispatch();
  /* Only the clean record got as far as a member lookup; "g3\0x" was
   * not read as "g3". */
  ck_assert_int_eq(st.calls, 1);
  ck_assert_str_eq(st.groups[0], "g1");
  rec_stop();
}
END_TEST

/* Messages sent over a minute before the fan-out started are committed,
 * not pushed (a node that starts a new consumer group does not replay the
 * topic); later ones, and those within the clocks' slack, are. */
START_TEST(stale_records_skipped) {
  test_clock clk;
  test_clock_init(&clk, T0);
  rec_start(&clk);
  static const struct {
    const char *group;
    int64_t sent_at_ms;
  } recs[] = {{"old", T0 - 61000}, {"slack", T0 - 59000}, {"new", T0 + 5}};
  for (size_t i = 0; i < 3; i++) {
    Imchat__V1__Message m = IMCHAT__V1__MESSAGE__INIT;
    m.msg_id = (char *)"m";
    m.from_user = (char *)"a";
    m.group_id = (char *)recs[i].group;
    m.sent_at_ms = recs[i].sent_at_ms;
    uint8_t buf[64];
    ck_assert_uint_le(imchat__v1__message__get_packed_size(&m), sizeof(buf));
    publish(rec.bus, buf, imchat__v1__message__pack(&m, buf));
  }
  rec_dispatch();
  ck_assert_int_eq(st.calls, 2);
  ck_assert_str_eq(st.groups[0], "slack");
  ck_assert_str_eq(st.groups[1], "new");
  rec_stop();
}
END_TEST

static Suite *fanout_suite(void) {
  Suite *s = suite_create("fanout");
  TCase *tc_core = tcase_create("core");
  tcase_add_checked_fixture(tc_core, setup, teardown);
  tcase_add_test(tc_core, test_group_encoded_once_over_turns);
  tcase_add_test(tc_core, test_commit_every_partition);
  tcase_add_test(tc_core, test_commit_revoked);
  tcase_add_test(tc_core, test_topic_group);
  suite_add_tcase(s, tc_core);
  TCase *tc_records = tcase_create("records");
  tcase_add_test(tc_records, bad_string_records_skipped);
  tcase_add_test(tc_records, stale_records_skipped);
  suite_add_tcase(s, tc_records);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(fanout_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
