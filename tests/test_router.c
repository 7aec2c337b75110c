/*
 * The router against mock backends: path choice per recipient, devices,
 * statuses, resend dedup, groups, the content filter and failures of
 * every backend it calls.
 */
#include <imchat/router.h>

#include "queue.pb-c.h"
#include "testutil.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define T0 1700000000000LL

/* ------------------------------------------------------------------ */
/* Mock backends                                                        */
/* ------------------------------------------------------------------ */

#define MAX_ENTRIES 16
#define MAX_RECS 64

typedef struct mock {
  test_clock tc;
  imc_reg_entry reg[MAX_ENTRIES];
  char reg_strs[MAX_ENTRIES][3][80];
  int n_reg;
  int lookup_fail;
  /* seq */
  char seq_keys[16][160];
  uint64_t seq_vals[16];
  int n_seq;
  int seq_fail;
  /* dedup: key, value, expiry */
  char dk[32][200];
  char dv[32][128];
  int64_t dexp[32];
  int n_dedup;
  int dedup_fail;
  /* store: group members */
  char members[16][80];
  char member_group[16][80];
  int n_members;
  /* queue */
  Imchat__V1__OfflineJob *jobs[MAX_RECS];
  char job_keys[MAX_RECS][160];
  int n_jobs;
  int queue_fail;
  /* group bus */
  char group_keys[MAX_RECS][80];
  int n_group;
  /* gwlink */
  char delivers[MAX_RECS][200]; /* "node user skip" */
  int n_delivers;
  int deliver_count;            /* what deliver reports */
  char statuses[MAX_RECS][200]; /* "node user device state recipient" */
  int n_statuses;
} mock;

static mock M;

static void add_entry(const char *user, const char *device, const char *node) {
  int i = M.n_reg++;
  snprintf(M.reg_strs[i][0], 80, "%s", user);
  snprintf(M.reg_strs[i][1], 80, "%s", device);
  snprintf(M.reg_strs[i][2], 80, "%s", node);
  M.reg[i].user_id = M.reg_strs[i][0];
  M.reg[i].device_id = M.reg_strs[i][1];
  M.reg[i].node_id = M.reg_strs[i][2];
  M.reg[i].conn_id = (uint64_t)i + 1;
}

static int r_lookup(void *ud, const char *user, imc_lookup_cb done,
                    void *done_ud) {
  (void)ud;
  if (M.lookup_fail) {
    done(done_ud, IMC_ERR_UNAVAILABLE, NULL, 0);
    return 0;
  }
  imc_reg_entry out[MAX_ENTRIES];
  size_t n = 0;
  for (int i = 0; i < M.n_reg; i++)
    if (strcmp(M.reg[i].user_id, user) == 0)
      out[n++] = M.reg[i];
  done(done_ud, 0, out, n);
  return 0;
}

static const imc_registry_vtbl registry = {
    sizeof(imc_registry_vtbl), NULL, NULL, NULL, r_lookup, NULL};

static int s_next(void *ud, const char *key, imc_seq_cb done, void *done_ud) {
  (void)ud;
  if (M.seq_fail) {
    M.seq_fail--;
    return IMC_ERR_UNAVAILABLE;
  }
  for (int i = 0; i < M.n_seq; i++)
    if (strcmp(M.seq_keys[i], key) == 0) {
      done(done_ud, 0, ++M.seq_vals[i]);
      return 0;
    }
  snprintf(M.seq_keys[M.n_seq], 160, "%s", key);
  M.seq_vals[M.n_seq] = 1;
  done(done_ud, 0, M.seq_vals[M.n_seq++]);
  return 0;
}

static const imc_seq_vtbl seqv = {sizeof(imc_seq_vtbl), s_next};

static int d_find(const char *key) {
  for (int i = 0; i < M.n_dedup; i++)
    if (strcmp(M.dk[i], key) == 0 && M.dexp[i] > M.tc.now)
      return i;
  return -1;
}

static int d_set(void *ud, const char *key, const uint8_t *v, size_t vl,
                 uint32_t ttl, imc_done_cb done, void *done_ud) {
  (void)ud;
  if (M.dedup_fail)
    return IMC_ERR_UNAVAILABLE;
  int i = -1;
  for (int j = 0; j < M.n_dedup; j++)
    if (strcmp(M.dk[j], key) == 0)
      i = j;
  if (i < 0)
    i = M.n_dedup++;
  snprintf(M.dk[i], 200, "%s", key);
  snprintf(M.dv[i], 128, "%.*s", (int)vl, (const char *)v);
  M.dexp[i] = M.tc.now + (int64_t)ttl * 1000;
  done(done_ud, 0);
  return 0;
}

static void d_set_done(void *ud, int status) {
  (void)ud;
  (void)status;
}

static int d_tas(void *ud, const char *key, const uint8_t *v, size_t vl,
                 uint32_t ttl, imc_dedup_cb done, void *done_ud) {
  if (M.dedup_fail)
    return IMC_ERR_UNAVAILABLE;
  int i = d_find(key);
  if (i >= 0) {
    done(done_ud, 0, 1, (const uint8_t *)M.dv[i], strlen(M.dv[i]));
    return 0;
  }
  d_set(ud, key, v, vl, ttl, d_set_done, NULL);
  done(done_ud, 0, 0, NULL, 0);
  return 0;
}

static const imc_dedup_vtbl dedup = {sizeof(imc_dedup_vtbl), d_tas, d_set,
                                     NULL};

static int g_members(void *ud, const char *group, imc_list_cb done,
                     void *done_ud) {
  (void)ud;
  const char *items[16];
  size_t n = 0;
  for (int i = 0; i < M.n_members; i++)
    if (strcmp(M.member_group[i], group) == 0)
      items[n++] = M.members[i];
  done(done_ud, 0, items, n);
  return 0;
}

static int g_add(void *ud, const char *group, const char *user,
                 imc_done_cb done, void *done_ud) {
  (void)ud;
  snprintf(M.member_group[M.n_members], 80, "%s", group);
  snprintf(M.members[M.n_members++], 80, "%s", user);
  done(done_ud, 0);
  return 0;
}

static int g_remove(void *ud, const char *group, const char *user,
                    imc_done_cb done, void *done_ud) {
  (void)ud;
  for (int i = 0; i < M.n_members; i++)
    if (strcmp(M.member_group[i], group) == 0 &&
        strcmp(M.members[i], user) == 0)
      M.member_group[i][0] = '\0';
  done(done_ud, 0);
  return 0;
}

static const imc_store_vtbl store = {
    sizeof(imc_store_vtbl), NULL, NULL, NULL, NULL, g_add, g_remove, g_members};

static int q_publish(void *ud, const char *topic, const uint8_t *key, size_t kl,
                     const uint8_t *v, size_t vl, imc_done_cb done,
                     void *done_ud) {
  (void)ud;
  ck_assert_str_eq(topic, "offline_msg");
  if (M.queue_fail) {
    M.queue_fail--;
    done(done_ud, IMC_ERR_IO);
    return 0;
  }
  Imchat__V1__OfflineJob *job = imchat__v1__offline_job__unpack(NULL, vl, v);
  ck_assert_ptr_nonnull(job);
  snprintf(M.job_keys[M.n_jobs], 160, "%.*s", (int)kl, (const char *)key);
  M.jobs[M.n_jobs++] = job;
  done(done_ud, 0);
  return 0;
}

static const imc_bus_vtbl queue = {sizeof(imc_bus_vtbl), q_publish, NULL, NULL};

static int gb_publish(void *ud, const char *topic, const uint8_t *key,
                      size_t kl, const uint8_t *v, size_t vl, imc_done_cb done,
                      void *done_ud) {
  (void)ud;
  ck_assert_str_eq(topic, "group_msg");
  Imchat__V1__Message *m = imchat__v1__message__unpack(NULL, vl, v);
  ck_assert_ptr_nonnull(m);
  imchat__v1__message__free_unpacked(m, NULL);
  snprintf(M.group_keys[M.n_group++], 80, "%.*s", (int)kl, (const char *)key);
  done(done_ud, 0);
  return 0;
}

static const imc_bus_vtbl group_bus = {sizeof(imc_bus_vtbl), gb_publish, NULL,
                                       NULL};

static int l_deliver(void *ud, const char *node, const char *user,
                     const char *skip, const imc_msg *msg, imc_count_cb done,
                     void *done_ud) {
  (void)ud;
  (void)msg;
  snprintf(M.delivers[M.n_delivers++], 200, "%s %s %s", node, user,
           skip ? skip : "-");
  done(done_ud, 0, M.deliver_count);
  return 0;
}

static int l_status(void *ud, const char *node, const char *user,
                    const char *device, const char *msg_id,
                    const char *client_msg_id, imc_delivery_state state,
                    const char *recipient, imc_done_cb done, void *done_ud) {
  (void)ud;
  (void)msg_id;
  (void)client_msg_id;
  snprintf(M.statuses[M.n_statuses++], 200, "%s %s %s %s %s", node, user,
           device, state == IMC_DELIVERED ? "DELIVERED" : "STORED",
           recipient[0] ? recipient : "-");
  done(done_ud, 0);
  return 0;
}

static const imc_gwlink_vtbl gwlink = {sizeof(imc_gwlink_vtbl), l_deliver,
                                       l_status};

/* ------------------------------------------------------------------ */
/* Harness                                                              */
/* ------------------------------------------------------------------ */

static test_mem TM;
static imc_router *R;
static char filter_path[64];

static void router_make(const char *filter_words, imc_filter_action action) {
  imc_router_options *o;
  ck_assert_int_eq(imc_router_options_new(&o, &TM.mem), 0);
  imc_router_options_set_registry(o, &registry, NULL);
  imc_router_options_set_seq(o, &seqv, NULL);
  imc_router_options_set_dedup(o, &dedup, NULL);
  imc_router_options_set_store(o, &store, NULL);
  imc_router_options_set_queue(o, &queue, NULL);
  imc_router_options_set_group_bus(o, &group_bus, NULL);
  imc_router_options_set_gwlink(o, &gwlink, NULL);
  imc_router_options_set_clock(o, &M.tc.clock);
  imc_router_options_set_max_body(o, 1000);
  if (filter_words) {
    snprintf(filter_path, sizeof(filter_path), "/tmp/imc-words-%d",
             (int)getpid());
    FILE *f = fopen(filter_path, "w");
    fputs(filter_words, f);
    fclose(f);
    ck_assert_int_eq(imc_router_options_set_filter(o, filter_path, action), 0);
  }
  ck_assert_int_eq(imc_router_new(&R, o, &TM.mem), 0);
  imc_router_options_del(o);
}

static void setup(void) {
  memset(&M, 0, sizeof(M));
  test_clock_init(&M.tc, T0);
  test_mem_init(&TM);
  M.deliver_count = 1;
  router_make(NULL, 0);
}

static void teardown(void) {
  ck_assert_uint_eq(imc_router_pending(R), 0);
  imc_router_del(R);
  for (int i = 0; i < M.n_jobs; i++)
    imchat__v1__offline_job__free_unpacked(M.jobs[i], NULL);
  if (filter_path[0])
    unlink(filter_path);
  filter_path[0] = '\0';
  ck_assert_int_eq(TM.live, 0);
}

/* The answer of the last send. */
static struct {
  int calls, status;
  char msg_id[64], conv[200], cmid[200], message[200];
  uint64_t seq;
} A;

static void answered(void *ud, int status, const imc_send_result *res,
                     const char *message) {
  (void)ud;
  A.calls++;
  A.status = status;
  if (status == 0) {
    snprintf(A.msg_id, sizeof(A.msg_id), "%s", res->msg_id);
    snprintf(A.conv, sizeof(A.conv), "%s", res->conversation_id);
    snprintf(A.cmid, sizeof(A.cmid), "%s", res->client_msg_id);
    A.seq = res->seq;
  }
  snprintf(A.message, sizeof(A.message), "%s", message ? message : "");
}

static int send_full(const char *from, const char *device, const char *to,
                     const char *group, const char *cmid, const char *body,
                     const char *ctype) {
  imc_send_req q = {from,
                    device,
                    "n1",
                    1,
                    cmid,
                    to ? to : "",
                    group ? group : "",
                    (const uint8_t *)body,
                    strlen(body),
                    ctype};
  memset(&A, 0, sizeof(A));
  ck_assert_int_eq(imc_router_send(R, &q, answered, NULL), 0);
  ck_assert_int_eq(A.calls, 1);
  return A.status;
}

static int send1(const char *from, const char *to, const char *cmid) {
  return send_full(from, "phone", to, NULL, cmid, "hello", "text/plain");
}

static Imchat__V1__OfflineJob *job(int i) {
  ck_assert_int_lt(i, M.n_jobs);
  return M.jobs[i];
}

/* ------------------------------------------------------------------ */
/* 1:1                                                                  */
/* ------------------------------------------------------------------ */

START_TEST(offline_recipient) {
  ck_assert_int_eq(send1("alice", "bob", "c1"), 0);
  ck_assert_str_eq(A.conv, "p:alice:bob");
  ck_assert_uint_eq(A.seq, 1);
  ck_assert_str_eq(A.cmid, "c1");
  ck_assert_int_eq(strlen(A.msg_id), 32);
  ck_assert_int_eq(M.n_jobs, 1);
  ck_assert(job(0)->history);
  ck_assert_uint_eq(job(0)->n_inbox_users, 1);
  ck_assert_str_eq(job(0)->inbox_users[0], "bob");
  ck_assert_str_eq(job(0)->message->msg_id, A.msg_id);
  ck_assert_str_eq(job(0)->message->from_device, "phone");
  ck_assert_str_eq(M.job_keys[0], "p:alice:bob");
  ck_assert_int_eq(M.n_delivers, 0);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_SLOW_PATH), 1);
}
END_TEST

START_TEST(seq_per_conversation) {
  send1("alice", "bob", "c1");
  send1("bob", "alice", "c2");
  ck_assert_str_eq(A.conv, "p:alice:bob");
  ck_assert_uint_eq(A.seq, 2);
  send1("alice", "carol", "c3");
  ck_assert_str_eq(A.conv, "p:alice:carol");
  ck_assert_uint_eq(A.seq, 1);
  send1("alice", "bob", "c4");
  ck_assert_uint_eq(A.seq, 3);
}
END_TEST

START_TEST(online_recipient_devices) {
  add_entry("bob", "phone", "n1");
  add_entry("bob", "laptop", "n1");
  add_entry("bob", "tablet", "n2");
  add_entry("alice", "phone", "n1");   /* the sending device */
  add_entry("alice", "desktop", "n3"); /* another device of the sender */
  ck_assert_int_eq(send1("alice", "bob", "c1"), 0);
  ck_assert_int_eq(M.n_jobs, 1);
  ck_assert(job(0)->history);
  ck_assert_uint_eq(job(0)->n_inbox_users, 0);
  /* One push per node of bob, one to the sender's other node. */
  ck_assert_int_eq(M.n_delivers, 3);
  ck_assert_str_eq(M.delivers[0], "n1 bob -");
  ck_assert_str_eq(M.delivers[1], "n2 bob -");
  ck_assert_str_eq(M.delivers[2], "n3 alice phone");
}
END_TEST

START_TEST(stale_registry_falls_back) {
  add_entry("bob", "phone", "n1");
  M.deliver_count = 0; /* the gateway no longer has bob */
  send1("alice", "bob", "c1");
  ck_assert_int_eq(M.n_jobs, 2);
  ck_assert(!job(1)->history);
  ck_assert_str_eq(job(1)->inbox_users[0], "bob");
}
END_TEST

START_TEST(resend_dedup) {
  add_entry("bob", "phone", "n1");
  send1("alice", "bob", "same");
  char first[64];
  strcpy(first, A.msg_id);
  uint64_t seq = A.seq;
  send1("alice", "bob", "same");
  ck_assert_int_eq(A.status, 0);
  ck_assert_str_eq(A.msg_id, first);
  ck_assert_uint_eq(A.seq, seq);
  ck_assert_int_eq(M.n_jobs, 1);     /* not routed again */
  ck_assert_int_eq(M.n_delivers, 1); /* not pushed again */
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_DUPLICATES), 1);
  /* Another sender may use the same client id. */
  send1("carol", "bob", "same");
  ck_assert_str_ne(A.msg_id, first);
}
END_TEST

START_TEST(message_to_self) {
  add_entry("alice", "phone", "n1");
  add_entry("alice", "laptop", "n1");
  send1("alice", "alice", "c1");
  ck_assert_str_eq(A.conv, "p:alice:alice");
  ck_assert_int_eq(M.n_delivers, 1);
  ck_assert_str_eq(M.delivers[0], "n1 alice phone");
}
END_TEST

static imc_msg last_msg(void) {
  Imchat__V1__Message *pm = job(0)->message;
  imc_msg m = {pm->msg_id,     pm->conversation_id, pm->seq,
               pm->from_user,  pm->to_user,         pm->group_id,
               pm->body.data,  pm->body.len,        pm->content_type,
               pm->sent_at_ms, pm->client_msg_id,   pm->from_device};
  return m;
}

START_TEST(delivered_status_once) {
  add_entry("bob", "phone", "n2");
  add_entry("alice", "phone", "n1");
  send1("alice", "bob", "c1");
  imc_msg m = last_msg();
  imc_router_delivered(R, &m, "bob", "phone");
  ck_assert_int_eq(M.n_statuses, 1);
  ck_assert_str_eq(M.statuses[0], "n1 alice phone DELIVERED bob");
  /* A second device's ACK, a later STORED: still one status. */
  imc_router_delivered(R, &m, "bob", "laptop");
  const char *users[] = {"bob"};
  imc_router_persisted(R, &m, 0, users, 1);
  ck_assert_int_eq(M.n_statuses, 1);
  /* The sender's own other device ACKing is not a delivery. */
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_DELIVERED), 1);
}
END_TEST

START_TEST(own_device_ack_is_not_delivery) {
  add_entry("alice", "phone", "n1");
  send1("alice", "bob", "c1");
  imc_msg m = last_msg();
  imc_router_delivered(R, &m, "alice", "laptop");
  ck_assert_int_eq(M.n_statuses, 0);
}
END_TEST

START_TEST(stored_status_offline) {
  add_entry("alice", "phone", "n1");
  send1("alice", "bob", "c1");
  imc_msg m = last_msg();
  const char *users[] = {"bob"};
  imc_router_persisted(R, &m, 1, users, 1);
  ck_assert_int_eq(M.n_statuses, 1);
  ck_assert_str_eq(M.statuses[0], "n1 alice phone STORED bob");
}
END_TEST

START_TEST(history_only_is_not_stored) {
  add_entry("alice", "phone", "n1");
  add_entry("bob", "phone", "n1");
  send1("alice", "bob", "c1");
  imc_msg m = last_msg();
  imc_router_persisted(R, &m, 1, NULL, 0);
  ck_assert_int_eq(M.n_statuses, 0);
}
END_TEST

START_TEST(undelivered_goes_to_inbox) {
  add_entry("bob", "phone", "n1");
  send1("alice", "bob", "c1");
  imc_msg m = last_msg();
  imc_router_undelivered(R, &m, "bob");
  ck_assert_int_eq(M.n_jobs, 2);
  ck_assert(!job(1)->history);
  ck_assert_str_eq(job(1)->inbox_users[0], "bob");
  ck_assert_str_eq(job(1)->message->msg_id, m.msg_id);
}
END_TEST

START_TEST(undelivered_retried_until_queued) {
  add_entry("bob", "phone", "n1");
  send1("alice", "bob", "c1");
  imc_msg m = last_msg();
  M.queue_fail = 3;
  imc_router_undelivered(R, &m, "bob");
  ck_assert_int_eq(M.n_jobs, 1);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_RETRY_QUEUE), 1);
  for (int i = 0; i < 10 && M.n_jobs == 1; i++) {
    int64_t t = imc_router_next_timeout_ms(R);
    ck_assert_int_ge(t, 0);
    test_clock_advance(&M.tc, t);
    imc_router_on_timeout(R);
  }
  ck_assert_int_eq(M.n_jobs, 2);
  ck_assert_int_eq(imc_router_next_timeout_ms(R), -1);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_QUEUE_ERRORS), 3);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_RETRY_QUEUE), 0);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Validation and failures                                              */
/* ------------------------------------------------------------------ */

START_TEST(invalid_requests) {
  ck_assert_int_eq(send1("alice", "bad id", "c1"), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(send1("alice", "", "c1"), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(send1("alice", "bob", ""), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(send1("alice", "bob", "bad\nid"), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(
      send_full("alice", "phone", "bob", "g1", "c1", "x", "text/plain"),
      IMC_ERR_INVALID_ARGUMENT);
  char big[1002];
  memset(big, 'x', 1001);
  big[1001] = '\0';
  ck_assert_int_eq(
      send_full("alice", "phone", "bob", NULL, "c1", big, "text/plain"),
      IMC_ERR_TOO_LARGE);
  char longid[70];
  memset(longid, 'a', 65);
  longid[65] = '\0';
  ck_assert_int_eq(send1("alice", longid, "c1"), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(M.n_jobs, 0);
  ck_assert_int_eq(M.n_seq, 0);
}
END_TEST

START_TEST(seq_failure_then_resend) {
  M.seq_fail = 1;
  ck_assert_int_eq(send1("alice", "bob", "c1"), IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(M.n_jobs, 0);
  /* The claim is released quickly: a resend a second later works. */
  test_clock_advance(&M.tc, 1000);
  ck_assert_int_eq(send1("alice", "bob", "c1"), 0);
  ck_assert_uint_eq(A.seq, 1);
}
END_TEST

START_TEST(queue_failure_no_ack) {
  M.queue_fail = 1;
  ck_assert_int_eq(send1("alice", "bob", "c1"), IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(M.n_jobs, 0);
  test_clock_advance(&M.tc, 1000);
  ck_assert_int_eq(send1("alice", "bob", "c1"), 0);
  ck_assert_int_eq(M.n_jobs, 1);
}
END_TEST

START_TEST(in_flight_duplicate) {
  /* A claim left by a send that never finished. */
  const char *key = "send:alice:c1";
  snprintf(M.dk[0], 200, "%s", key);
  strcpy(M.dv[0], "pending");
  M.dexp[0] = M.tc.now + 60000;
  M.n_dedup = 1;
  ck_assert_int_eq(send1("alice", "bob", "c1"), IMC_ERR_UNAVAILABLE);
  test_clock_advance(&M.tc, 60000);
  ck_assert_int_eq(send1("alice", "bob", "c1"), 0);
}
END_TEST

START_TEST(dedup_and_registry_failures) {
  M.dedup_fail = 1;
  ck_assert_int_eq(send1("alice", "bob", "c1"), IMC_ERR_UNAVAILABLE);
  M.dedup_fail = 0;
  /* An unknown location is treated as offline: the inbox is safe. */
  M.lookup_fail = 1;
  ck_assert_int_eq(send1("alice", "bob", "c2"), 0);
  ck_assert_str_eq(job(0)->inbox_users[0], "bob");
}
END_TEST

/* ------------------------------------------------------------------ */
/* Groups                                                               */
/* ------------------------------------------------------------------ */

static void done_ok(void *ud, int status) {
  ck_assert_int_eq(status, 0);
  (*(int *)ud)++;
}

static void members3(void) {
  int n = 0;
  imc_router_group_add(R, "team", "alice", done_ok, &n);
  imc_router_group_add(R, "team", "bob", done_ok, &n);
  imc_router_group_add(R, "team", "carol", done_ok, &n);
  ck_assert_int_eq(n, 3);
}

START_TEST(group_forbidden_for_non_member) {
  members3();
  ck_assert_int_eq(
      send_full("mallory", "x", NULL, "team", "c1", "hi", "text/plain"),
      IMC_ERR_FORBIDDEN);
  ck_assert_int_eq(M.n_seq, 0);
  ck_assert_int_eq(M.n_group, 0);
}
END_TEST

START_TEST(group_offline_member) {
  members3();
  add_entry("alice", "phone", "n1");
  add_entry("bob", "phone", "n2");
  ck_assert_int_eq(
      send_full("alice", "phone", NULL, "team", "c1", "hi", "text/plain"), 0);
  ck_assert_str_eq(A.conv, "g:team");
  ck_assert_uint_eq(A.seq, 1);
  ck_assert_int_eq(M.n_jobs, 1);
  ck_assert(job(0)->history);
  ck_assert_uint_eq(job(0)->n_inbox_users, 1);
  ck_assert_str_eq(job(0)->inbox_users[0], "carol");
  /* Published once, keyed by the group; no per-user pushes. */
  ck_assert_int_eq(M.n_group, 1);
  ck_assert_str_eq(M.group_keys[0], "team");
  ck_assert_int_eq(M.n_delivers, 0);
  /* STORED once the history has it, with no user. */
  imc_msg m = last_msg();
  imc_router_persisted(R, &m, 1, (const char *[]){"carol"}, 1);
  ck_assert_int_eq(M.n_statuses, 1);
  ck_assert_str_eq(M.statuses[0], "n1 alice phone STORED -");
  /* A member's ACK is no DELIVERED for a group. */
  imc_router_delivered(R, &m, "bob", "phone");
  ck_assert_int_eq(M.n_statuses, 1);
}
END_TEST

START_TEST(group_membership_cache_invalidated) {
  members3();
  ck_assert_int_eq(
      send_full("dave", "x", NULL, "team", "c1", "hi", "text/plain"),
      IMC_ERR_FORBIDDEN);
  int n = 0;
  imc_router_group_add(R, "team", "dave", done_ok, &n);
  ck_assert_int_eq(
      send_full("dave", "x", NULL, "team", "c2", "hi", "text/plain"), 0);
  imc_router_group_remove(R, "team", "dave", done_ok, &n);
  ck_assert_int_eq(
      send_full("dave", "x", NULL, "team", "c3", "hi", "text/plain"),
      IMC_ERR_FORBIDDEN);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Filter                                                               */
/* ------------------------------------------------------------------ */

static const char *words = "# blocked words\nbadword\n敏感\n";

START_TEST(filter_reject) {
  imc_router_del(R);
  router_make(words, IMC_FILTER_REJECT);
  ck_assert_int_eq(send_full("alice", "p", "bob", NULL, "c1",
                             "this is a BadWord here", "text/plain"),
                   IMC_ERR_BLOCKED);
  ck_assert_int_eq(
      send_full("alice", "p", "bob", NULL, "c2", "这是敏感内容", "text/plain"),
      IMC_ERR_BLOCKED);
  /* Not text: not filtered. */
  ck_assert_int_eq(send_full("alice", "p", "bob", NULL, "c3", "badword",
                             "application/octet-stream"),
                   0);
  ck_assert_int_eq(
      send_full("alice", "p", "bob", NULL, "c4", "clean text", "text/plain"),
      0);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_BLOCKED), 2);
}
END_TEST

START_TEST(filter_mask) {
  imc_router_del(R);
  router_make(words, IMC_FILTER_MASK);
  ck_assert_int_eq(send_full("alice", "p", "bob", NULL, "c1",
                             "a BADWORD and 敏感 text", "text/plain; utf-8"),
                   0);
  Imchat__V1__Message *pm = job(0)->message;
  ck_assert_int_eq((int)pm->body.len, (int)strlen("a ******* and ** text"));
  ck_assert_int_eq(memcmp(pm->body.data, "a ******* and ** text", pm->body.len),
                   0);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_MASKED), 1);
}
END_TEST

START_TEST(filter_reload) {
  imc_router_del(R);
  router_make(words, IMC_FILTER_REJECT);
  FILE *f = fopen(filter_path, "w");
  fputs("newword\n", f);
  fclose(f);
  ck_assert_int_eq(imc_router_reload_filter(R), 0);
  ck_assert_int_eq(
      send_full("alice", "p", "bob", NULL, "c1", "badword", "text/plain"), 0);
  ck_assert_int_eq(
      send_full("alice", "p", "bob", NULL, "c2", "newword", "text/plain"),
      IMC_ERR_BLOCKED);
  unlink(filter_path);
  ck_assert_int_ne(imc_router_reload_filter(R), 0);
  /* The old list stays. */
  ck_assert_int_eq(
      send_full("alice", "p", "bob", NULL, "c3", "newword", "text/plain"),
      IMC_ERR_BLOCKED);
}
END_TEST

/* ------------------------------------------------------------------ */

START_TEST(alloc_failures) {
  imc_router_del(R);
  R = NULL;
  int failures = 0;
  for (long i = 0;; i++) {
    test_mem_init(&TM);
    TM.fail_at = i;
    imc_router_options *o = NULL;
    int rv = imc_router_options_new(&o, &TM.mem);
    if (rv == 0) {
      imc_router_options_set_registry(o, &registry, NULL);
      imc_router_options_set_seq(o, &seqv, NULL);
      imc_router_options_set_dedup(o, &dedup, NULL);
      imc_router_options_set_store(o, &store, NULL);
      imc_router_options_set_queue(o, &queue, NULL);
      imc_router_options_set_group_bus(o, &group_bus, NULL);
      imc_router_options_set_gwlink(o, &gwlink, NULL);
      imc_router_options_set_clock(o, &M.tc.clock);
      rv = imc_router_new(&R, o, &TM.mem);
      imc_router_options_del(o);
    }
    if (rv == 0) {
      for (int j = 0; j < M.n_jobs; j++)
        imchat__v1__offline_job__free_unpacked(M.jobs[j], NULL);
      M.n_jobs = M.n_delivers = M.n_statuses = M.n_reg = 0;
      M.n_dedup = M.n_seq = 0;
      add_entry("bob", "phone", "n1");
      imc_send_req q = {"alice", "phone",     "n1", 1,
                        "c1",    "bob",       "",   (const uint8_t *)"x",
                        1,       "text/plain"};
      char cmid[32];
      snprintf(cmid, sizeof(cmid), "c%ld", i);
      q.client_msg_id = cmid;
      memset(&A, 0, sizeof(A));
      rv = imc_router_send(R, &q, answered, NULL);
      ck_assert(rv == 0 || rv == IMC_ERR_NOMEM);
      if (rv == 0) {
        ck_assert_int_eq(A.calls, 1);
        imc_msg m = {
            "m1", "p:alice:bob", 1,  "alice", "bob",  "", (const uint8_t *)"x",
            1,    "text/plain",  T0, "c1",    "phone"};
        imc_router_undelivered(R, &m, "bob");
        imc_router_delivered(R, &m, "bob", "phone");
      }
      ck_assert_uint_eq(imc_router_pending(R), 0);
      imc_router_del(R);
      R = NULL;
    } else {
      ck_assert_int_eq(rv, IMC_ERR_NOMEM);
    }
    ck_assert_msg(TM.live == 0, "leak with allocation %ld failing", i);
    failures++;
    if (TM.count <= i)
      break;
  }
  ck_assert_int_gt(failures, 5);
  test_mem_init(&TM);
  router_make(NULL, 0);
}
END_TEST

static Suite *router_suite(void) {
  Suite *s = suite_create("router");
  TCase *t = tcase_create("direct");
  tcase_add_checked_fixture(t, setup, teardown);
  tcase_add_test(t, offline_recipient);
  tcase_add_test(t, seq_per_conversation);
  tcase_add_test(t, online_recipient_devices);
  tcase_add_test(t, stale_registry_falls_back);
  tcase_add_test(t, resend_dedup);
  tcase_add_test(t, message_to_self);
  tcase_add_test(t, delivered_status_once);
  tcase_add_test(t, own_device_ack_is_not_delivery);
  tcase_add_test(t, stored_status_offline);
  tcase_add_test(t, history_only_is_not_stored);
  tcase_add_test(t, undelivered_goes_to_inbox);
  tcase_add_test(t, undelivered_retried_until_queued);
  suite_add_tcase(s, t);

  t = tcase_create("failures");
  tcase_add_checked_fixture(t, setup, teardown);
  tcase_add_test(t, invalid_requests);
  tcase_add_test(t, seq_failure_then_resend);
  tcase_add_test(t, queue_failure_no_ack);
  tcase_add_test(t, in_flight_duplicate);
  tcase_add_test(t, dedup_and_registry_failures);
  tcase_add_test(t, alloc_failures);
  suite_add_tcase(s, t);

  t = tcase_create("groups");
  tcase_add_checked_fixture(t, setup, teardown);
  tcase_add_test(t, group_forbidden_for_non_member);
  tcase_add_test(t, group_offline_member);
  tcase_add_test(t, group_membership_cache_invalidated);
  suite_add_tcase(s, t);

  t = tcase_create("filter");
  tcase_add_checked_fixture(t, setup, teardown);
  tcase_add_test(t, filter_reject);
  tcase_add_test(t, filter_mask);
  tcase_add_test(t, filter_reload);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(router_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
