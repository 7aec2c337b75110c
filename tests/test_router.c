/*
 * The router against mock backends: path choice per recipient, devices,
 * statuses, resend dedup, groups, the content filter and failures of
 * every backend it calls.
 */
#include <imchat/router.h>

#include "queue.pb-c.h"
#include "testutil.h"

#include <check.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define T0 1700000000000LL

/* ------------------------------------------------------------------ */
/* Mock backends                                                        */
/* ------------------------------------------------------------------ */

#define MAX_ENTRIES 16
#define MAX_USERS 16 /* users in one lookup_many */
#define MAX_RECS 128
#define MAX_COMPS 1024

/*
 * A completion a mock owes the router. In deferred mode the mocks do
 * their work when called (as a server does when the request arrives) but
 * queue the reply; settle() runs the queue in a seeded shuffled order, as
 * replies from Redis, etcd and Kafka connections arrive.
 */
typedef enum {
  C_DONE,
  C_LOOKUP,
  C_SEQ,
  C_DEDUP,
  C_LIST,
  C_COUNT,
  C_ALIVE
} comp_kind;

typedef struct comp {
  comp_kind kind;
  union {
    imc_done_cb done;
    imc_lookup_many_cb lookup;
    imc_seq_cb seq;
    imc_dedup_cb dedup;
    imc_list_cb list;
    imc_count_cb count;
    imc_alive_cb alive;
  } cb;
  void *ud;
  int status, found, count;
  uint64_t seq;
  imc_reg_entry entries[MAX_ENTRIES]; /* strings live in the mock */
  size_t offsets[MAX_USERS + 1];      /* C_LOOKUP: n users' entries */
  const char *items[16];
  size_t n;
  char value[128];
} comp;

typedef struct mock {
  test_clock tc;
  int deferred;
  size_t status_max; /* router_make: the status memory's bound, 0: default */
  uint64_t rng;
  comp *comps[MAX_COMPS];
  int n_comps;
  imc_reg_entry reg[MAX_ENTRIES];
  char reg_strs[MAX_ENTRIES][3][80];
  int n_reg;
  int lookup_fail; /* 1: complete with UNAVAILABLE; 2: refuse the call */
  int n_lookups;   /* lookup_many calls: registry round trips */
  int n_looked_up; /* users asked for, over every call */
  char last_batch[MAX_USERS][80]; /* the users of the last call */
  size_t last_batch_n;
  int lookups_out, max_lookups_out; /* deferred lookups not yet answered */
  /* seq */
  char seq_keys[16][160];
  uint64_t seq_vals[16];
  int n_seq;
  int seq_fail;
  /* dedup: key, value, expiry */
  char dk[MAX_RECS][200];
  char dv[MAX_RECS][128];
  int64_t dexp[MAX_RECS];
  int n_dedup;
  int dedup_fail;
  int n_warnings;     /* warning lines the router logged */
  char warning[256];  /* the last one */
  int dedup_set_fail; /* the next sets refused */
  int record_first;
  char ok_at_publish[128]; /* alice's c1 in the dedup set at a publish */
  int n_cas;
  /* router liveness (router_make with M.liveness set) */
  int liveness;
  uint32_t dead[4];
  int n_dead;
  int alive_fail; /* 1: complete with UNAVAILABLE; 2: refuse the call */
  int n_alive_asked;
  uint32_t alive_asked;
  /* store: group members */
  char members[16][80];
  char member_group[16][80];
  int n_members;
  /* the topics the router must publish to */
  const char *offline_topic, *group_topic;
  /* queue */
  Imchat__V1__OfflineJob *jobs[MAX_RECS];
  char job_keys[MAX_RECS][160];
  int n_jobs;
  int queue_fail;
  /* group bus */
  char group_keys[MAX_RECS][80];
  char group_ids[MAX_RECS][40]; /* msg_id of each record */
  int n_group;
  /* gwlink */
  char delivers[MAX_RECS][200];     /* "node user skip" */
  char deliver_msgs[MAX_RECS][200]; /* "msg_id seq from_node body" */
  int n_delivers;
  int deliver_count;            /* what deliver reports */
  char statuses[MAX_RECS][200]; /* "node user device state recipient" */
  int n_statuses;
} mock;

static mock M;

static void fire(comp *c) {
  switch (c->kind) {
  case C_DONE:
    c->cb.done(c->ud, c->status);
    break;
  case C_LOOKUP: {
    if (M.deferred)
      M.lookups_out--;
    /* Handed out by pointer, as a backend with its own entry size does. */
    const imc_reg_entry *ptrs[MAX_ENTRIES];
    for (size_t i = 0; c->status == 0 && i < c->offsets[c->n]; i++)
      ptrs[i] = &c->entries[i];
    if (c->status != 0)
      c->cb.lookup(c->ud, c->status, NULL, NULL, 0);
    else
      c->cb.lookup(c->ud, 0, ptrs, c->offsets, c->n);
    break;
  }
  case C_SEQ:
    c->cb.seq(c->ud, c->status, c->seq);
    break;
  case C_DEDUP:
    c->cb.dedup(c->ud, c->status, c->found, (const uint8_t *)c->value,
                strlen(c->value));
    break;
  case C_LIST:
    c->cb.list(c->ud, c->status, c->items, c->n);
    break;
  case C_COUNT:
    c->cb.count(c->ud, c->status, c->count);
    break;
  case C_ALIVE:
    c->cb.alive(c->ud, c->status, c->found);
    break;
  }
}

/* Runs c now (synchronous mode) or queues it (deferred mode). */
static void complete(const comp *c) {
  if (!M.deferred) {
    comp copy = *c;
    fire(&copy);
    return;
  }
  ck_assert_int_lt(M.n_comps, MAX_COMPS);
  comp *q = malloc(sizeof(*q));
  ck_assert_ptr_nonnull(q);
  *q = *c;
  M.comps[M.n_comps++] = q;
}

/* Runs the i-th queued completion (in the order they were queued). */
static void fire_at(int i) {
  ck_assert_int_lt(i, M.n_comps);
  comp *c = M.comps[i];
  memmove(&M.comps[i], &M.comps[i + 1],
          (size_t)(M.n_comps - i - 1) * sizeof(comp *));
  M.n_comps--;
  fire(c);
  free(c);
}

/* xorshift64: reproducible from the seed set in setup. */
static uint64_t rng_next(void) {
  M.rng ^= M.rng << 13;
  M.rng ^= M.rng >> 7;
  M.rng ^= M.rng << 17;
  return M.rng;
}

/* Runs every queued completion, and those they cause, in shuffled order.
 */
static void settle(void) {
  while (M.n_comps > 0)
    fire_at((int)(rng_next() % (uint64_t)M.n_comps));
}

static void complete_done(imc_done_cb done, void *ud, int status) {
  comp c = {.kind = C_DONE, .cb.done = done, .ud = ud, .status = status};
  complete(&c);
}

static void add_entry(const char *user, const char *device, const char *node) {
  ck_assert_int_lt(M.n_reg, MAX_ENTRIES);
  int i = M.n_reg++;
  snprintf(M.reg_strs[i][0], 80, "%s", user);
  snprintf(M.reg_strs[i][1], 80, "%s", device);
  snprintf(M.reg_strs[i][2], 80, "%s", node);
  M.reg[i].struct_size = sizeof(M.reg[i]);
  M.reg[i].user_id = M.reg_strs[i][0];
  M.reg[i].device_id = M.reg_strs[i][1];
  M.reg[i].node_id = M.reg_strs[i][2];
  M.reg[i].conn_id = (uint64_t)i + 1;
}

/* Reads the whole batch when called (users is only valid during the
 * call); the answer may come later. */
static int r_lookup_many(void *ud, const char *const *users, size_t n,
                         imc_lookup_many_cb done, void *done_ud) {
  (void)ud;
  ck_assert(done != NULL);
  ck_assert_uint_le(n, MAX_USERS);
  ck_assert(n == 0 || users != NULL);
  M.n_lookups++;
  M.n_looked_up += (int)n;
  M.last_batch_n = n;
  for (size_t u = 0; u < n; u++) {
    ck_assert_ptr_nonnull(users[u]);
    snprintf(M.last_batch[u], sizeof(M.last_batch[u]), "%s", users[u]);
  }
  if (M.lookup_fail == 2)
    return IMC_ERR_UNAVAILABLE; /* refused: done is not called */
  if (M.deferred && ++M.lookups_out > M.max_lookups_out)
    M.max_lookups_out = M.lookups_out;
  comp c = {.kind = C_LOOKUP, .cb.lookup = done, .ud = done_ud, .n = n};
  if (M.lookup_fail) {
    c.status = IMC_ERR_UNAVAILABLE;
    complete(&c);
    return 0;
  }
  size_t k = 0;
  for (size_t u = 0; u < n; u++) {
    c.offsets[u] = k;
    for (int i = 0; i < M.n_reg; i++)
      if (strcmp(M.reg[i].user_id, users[u]) == 0) {
        ck_assert_uint_lt(k, MAX_ENTRIES);
        c.entries[k++] = M.reg[i];
      }
  }
  c.offsets[n] = k;
  complete(&c);
  return 0;
}

static const imc_registry_vtbl registry = {
    .struct_size = sizeof(imc_registry_vtbl), .lookup_many = r_lookup_many};

static int s_next(void *ud, const char *key, imc_seq_cb done, void *done_ud) {
  (void)ud;
  if (M.seq_fail) {
    M.seq_fail--;
    return IMC_ERR_UNAVAILABLE;
  }
  comp c = {.kind = C_SEQ, .cb.seq = done, .ud = done_ud};
  for (int i = 0; i < M.n_seq; i++)
    if (strcmp(M.seq_keys[i], key) == 0) {
      c.seq = ++M.seq_vals[i];
      complete(&c);
      return 0;
    }
  ck_assert_int_lt(M.n_seq, 16);
  snprintf(M.seq_keys[M.n_seq], 160, "%s", key);
  M.seq_vals[M.n_seq] = 1;
  c.seq = M.seq_vals[M.n_seq++];
  complete(&c);
  return 0;
}

static const imc_seq_vtbl seqv = {sizeof(imc_seq_vtbl), s_next};

static int d_find(const char *key) {
  for (int i = 0; i < M.n_dedup; i++)
    if (strcmp(M.dk[i], key) == 0 && M.dexp[i] > M.tc.now)
      return i;
  return -1;
}

static void d_store(const char *key, const uint8_t *v, size_t vl,
                    uint32_t ttl) {
  int i = -1;
  for (int j = 0; j < M.n_dedup; j++)
    if (strcmp(M.dk[j], key) == 0)
      i = j;
  if (i < 0) {
    ck_assert_int_lt(M.n_dedup, MAX_RECS);
    i = M.n_dedup++;
  }
  snprintf(M.dk[i], 200, "%s", key);
  snprintf(M.dv[i], 128, "%.*s", (int)vl, (const char *)v);
  M.dexp[i] = M.tc.now + (int64_t)ttl * 1000;
}

static int d_set(void *ud, const char *key, const uint8_t *v, size_t vl,
                 uint32_t ttl, imc_done_cb done, void *done_ud) {
  (void)ud;
  if (M.dedup_fail)
    return IMC_ERR_UNAVAILABLE;
  if (M.dedup_set_fail) {
    M.dedup_set_fail--;
    return IMC_ERR_UNAVAILABLE;
  }
  d_store(key, v, vl, ttl);
  complete_done(done, done_ud, 0);
  return 0;
}

static int d_tas(void *ud, const char *key, const uint8_t *v, size_t vl,
                 uint32_t ttl, imc_dedup_cb done, void *done_ud) {
  (void)ud;
  if (M.dedup_fail)
    return IMC_ERR_UNAVAILABLE;
  comp c = {.kind = C_DEDUP, .cb.dedup = done, .ud = done_ud};
  int i = d_find(key);
  if (i >= 0) {
    c.found = 1;
    snprintf(c.value, sizeof(c.value), "%s", M.dv[i]);
  } else {
    d_store(key, v, vl, ttl);
  }
  complete(&c);
  return 0;
}

static int d_cas(void *ud, const char *key, const uint8_t *expect, size_t el,
                 const uint8_t *v, size_t vl, uint32_t ttl, imc_dedup_cb done,
                 void *done_ud) {
  (void)ud;
  if (M.dedup_fail)
    return IMC_ERR_UNAVAILABLE;
  M.n_cas++;
  comp c = {.kind = C_DEDUP, .cb.dedup = done, .ud = done_ud};
  int i = d_find(key);
  if (i >= 0 && strlen(M.dv[i]) == el && memcmp(M.dv[i], expect, el) == 0) {
    d_store(key, v, vl, ttl);
    c.found = 1;
    snprintf(c.value, sizeof(c.value), "%.*s", (int)vl, (const char *)v);
  }
  complete(&c);
  return 0;
}

static const imc_dedup_vtbl dedup = {sizeof(imc_dedup_vtbl), d_tas, d_set, NULL,
                                     d_cas};

/* Router liveness: the instances in M.dead are dead, the others alive. */
static int alive_ask(void *ud, uint32_t instance, imc_alive_cb done,
                     void *done_ud) {
  (void)ud;
  M.n_alive_asked++;
  M.alive_asked = instance;
  if (M.alive_fail == 2)
    return IMC_ERR_UNAVAILABLE;
  int alive = 1;
  for (int i = 0; i < M.n_dead; i++)
    alive &= M.dead[i] != instance;
  comp c = {.kind = C_ALIVE,
            .cb.alive = done,
            .ud = done_ud,
            .status = M.alive_fail ? IMC_ERR_UNAVAILABLE : 0,
            .found = alive};
  complete(&c);
  return 0;
}

static int g_members(void *ud, const char *group, imc_list_cb done,
                     void *done_ud) {
  (void)ud;
  comp c = {.kind = C_LIST, .cb.list = done, .ud = done_ud};
  for (int i = 0; i < M.n_members; i++)
    if (strcmp(M.member_group[i], group) == 0)
      c.items[c.n++] = M.members[i];
  complete(&c);
  return 0;
}

static int g_add(void *ud, const char *group, const char *user,
                 imc_done_cb done, void *done_ud) {
  (void)ud;
  snprintf(M.member_group[M.n_members], 80, "%s", group);
  snprintf(M.members[M.n_members++], 80, "%s", user);
  complete_done(done, done_ud, 0);
  return 0;
}

static int g_remove(void *ud, const char *group, const char *user,
                    imc_done_cb done, void *done_ud) {
  (void)ud;
  for (int i = 0; i < M.n_members; i++)
    if (strcmp(M.member_group[i], group) == 0 &&
        strcmp(M.members[i], user) == 0)
      M.member_group[i][0] = '\0';
  complete_done(done, done_ud, 0);
  return 0;
}

static const imc_store_vtbl store = {
    sizeof(imc_store_vtbl), NULL, NULL, NULL, NULL, g_add, g_remove, g_members};

static int q_publish(void *ud, const char *topic, const uint8_t *key, size_t kl,
                     const uint8_t *v, size_t vl, imc_done_cb done,
                     void *done_ud) {
  (void)ud;
  ck_assert_str_eq(topic, M.offline_topic);
  if (M.queue_fail) {
    M.queue_fail--;
    complete_done(done, done_ud, IMC_ERR_IO);
    return 0;
  }
  int d = d_find("send:alice:c1");
  snprintf(M.ok_at_publish, sizeof(M.ok_at_publish), "%s",
           d >= 0 ? M.dv[d] : "");
  ck_assert_int_lt(M.n_jobs, MAX_RECS);
  Imchat__V1__OfflineJob *job = imchat__v1__offline_job__unpack(NULL, vl, v);
  ck_assert_ptr_nonnull(job);
  snprintf(M.job_keys[M.n_jobs], 160, "%.*s", (int)kl, (const char *)key);
  M.jobs[M.n_jobs++] = job;
  complete_done(done, done_ud, 0);
  return 0;
}

static const imc_bus_vtbl queue = {sizeof(imc_bus_vtbl), q_publish, NULL, NULL};

static int gb_publish(void *ud, const char *topic, const uint8_t *key,
                      size_t kl, const uint8_t *v, size_t vl, imc_done_cb done,
                      void *done_ud) {
  (void)ud;
  ck_assert_str_eq(topic, M.group_topic);
  Imchat__V1__Message *m = imchat__v1__message__unpack(NULL, vl, v);
  ck_assert_ptr_nonnull(m);
  ck_assert_int_lt(M.n_group, MAX_RECS);
  snprintf(M.group_ids[M.n_group], 40, "%s", m->msg_id);
  imchat__v1__message__free_unpacked(m, NULL);
  snprintf(M.group_keys[M.n_group++], 80, "%.*s", (int)kl, (const char *)key);
  complete_done(done, done_ud, 0);
  return 0;
}

static const imc_bus_vtbl group_bus = {sizeof(imc_bus_vtbl), gb_publish, NULL,
                                       NULL};

static int l_deliver(void *ud, const char *node, const char *user,
                     const char *skip, const imc_msg *msg, imc_count_cb done,
                     void *done_ud) {
  (void)ud;
  ck_assert_int_lt(M.n_delivers, MAX_RECS);
  snprintf(M.deliver_msgs[M.n_delivers], 200, "%s %llu %s %.*s", msg->msg_id,
           (unsigned long long)msg->seq, msg->from_node, (int)msg->body_len,
           (const char *)msg->body);
  snprintf(M.delivers[M.n_delivers++], 200, "%s %s %s", node, user,
           skip ? skip : "-");
  comp c = {.kind = C_COUNT, .cb.count = done, .ud = done_ud};
  c.count = M.deliver_count;
  complete(&c);
  return 0;
}

static int l_status(void *ud, const char *node, const char *user,
                    const char *device, const char *msg_id,
                    const char *client_msg_id, imc_delivery_state state,
                    const char *recipient, imc_done_cb done, void *done_ud) {
  (void)ud;
  (void)msg_id;
  (void)client_msg_id;
  if (M.n_statuses < MAX_RECS) /* counted beyond, not kept */
    snprintf(M.statuses[M.n_statuses], 200, "%s %s %s %s %s", node, user,
             device, state == IMC_DELIVERED ? "DELIVERED" : "STORED",
             recipient[0] ? recipient : "-");
  M.n_statuses++;
  complete_done(done, done_ud, 0);
  return 0;
}

static const imc_gwlink_vtbl gwlink = {sizeof(imc_gwlink_vtbl), l_deliver,
                                       l_status};

/* ------------------------------------------------------------------ */
/* Harness                                                              */
/* ------------------------------------------------------------------ */

static test_mem TM;
static imc_router *R;

static void on_log(void *ud, imc_log_level level, const char *line) {
  (void)ud;
  if (level == IMC_LOG_WARN) {
    M.n_warnings++;
    snprintf(M.warning, sizeof(M.warning), "%s", line);
  }
}

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
  imc_router_options_set_log(o, on_log, NULL, IMC_LOG_WARN);
  if (M.liveness)
    ck_assert_int_eq(imc_router_options_set_liveness(o, alive_ask, NULL), 0);
  if (M.record_first)
    ck_assert_int_eq(imc_router_options_set_record_first(o, 1), 0);
  if (M.status_max)
    ck_assert_int_eq(
        imc_router_options_set_status_memory(o, 600000, M.status_max), 0);
  if (filter_words)
    ck_assert_int_eq(
        imc_router_options_set_filter(o, (const uint8_t *)filter_words,
                                      strlen(filter_words), action),
        0);
  ck_assert_int_eq(imc_router_new(&R, o, &TM.mem), 0);
  imc_router_options_del(o);
}

static void setup(void) {
  memset(&M, 0, sizeof(M));
  test_clock_init(&M.tc, T0);
  test_mem_init(&TM);
  M.deliver_count = 1;
  M.offline_topic = "offline_msg";
  M.group_topic = "group_msg";
  const char *seed = getenv("IMC_TEST_SEED");
  M.rng = seed ? strtoull(seed, NULL, 0) : 0x9e3779b97f4a7c15u;
  if (M.rng == 0)
    M.rng = 1;
  router_make(NULL, 0);
}

/* The same cases with every backend completing later, out of order. */
static void setup_deferred(void) {
  setup();
  M.deferred = 1;
}

static void teardown(void) {
  settle();
  ck_assert_uint_eq(imc_router_pending(R), 0);
  imc_router_del(R);
  for (int i = 0; i < M.n_jobs; i++)
    imchat__v1__offline_job__free_unpacked(M.jobs[i], NULL);
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

/* The answer of a send, into the answer at ud. */
typedef struct answer {
  int calls, status;
  char msg_id[64], conv[200];
  uint64_t seq;
} answer;

static void answered_into(void *ud, int status, const imc_send_result *res,
                          const char *message) {
  (void)message;
  answer *a = ud;
  a->calls++;
  a->status = status;
  if (status == 0) {
    snprintf(a->msg_id, sizeof(a->msg_id), "%s", res->msg_id);
    snprintf(a->conv, sizeof(a->conv), "%s", res->conversation_id);
    a->seq = res->seq;
  }
}

static void done_count(void *ud, int status) {
  ck_assert_int_eq(status, 0);
  (*(int *)ud)++;
}

/* A send of from/phone through node (a resend after a reconnect may come
 * through another one); returns its status. */
static int send_via(const char *node, const char *from, const char *to,
                    const char *group, const char *cmid) {
  imc_send_req q = {.struct_size = sizeof(q),
                    .from_user = from,
                    .from_device = "phone",
                    .node_id = node,
                    .conn_id = 2,
                    .client_msg_id = cmid,
                    .to_user = to ? to : "",
                    .group_id = group ? group : "",
                    .body = (const uint8_t *)"hi",
                    .body_len = 2,
                    .content_type = "text/plain"};
  memset(&A, 0, sizeof(A));
  ck_assert_int_eq(imc_router_send(R, &q, answered, NULL), 0);
  settle();
  ck_assert_int_eq(A.calls, 1);
  return A.status;
}

static int send_full(const char *from, const char *device, const char *to,
                     const char *group, const char *cmid, const char *body,
                     const char *ctype) {
  imc_send_req q = {.struct_size = sizeof(q),
                    .from_user = from,
                    .from_device = device,
                    .node_id = "n1",
                    .conn_id = 1,
                    .client_msg_id = cmid,
                    .to_user = to ? to : "",
                    .group_id = group ? group : "",
                    .body = (const uint8_t *)body,
                    .body_len = strlen(body),
                    .content_type = ctype};
  memset(&A, 0, sizeof(A));
  ck_assert_int_eq(imc_router_send(R, &q, answered, NULL), 0);
  settle();
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
  /* Recipient and sender in one registry round trip. */
  ck_assert_int_eq(M.n_lookups, 1);
  ck_assert_uint_eq(M.last_batch_n, 2);
  ck_assert_str_eq(M.last_batch[0], "bob");
  ck_assert_str_eq(M.last_batch[1], "alice");
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
  /* The sender is the recipient: asked for once. */
  ck_assert_int_eq(M.n_lookups, 1);
  ck_assert_uint_eq(M.last_batch_n, 1);
}
END_TEST

/*
 * doc/protocol.md: the sender's own inbox never receives its own
 * messages, a message to oneself included; its devices catch up from the
 * history. Not when the sending device is the only one online (the push
 * reached nobody), nor when no device of the sender is registered.
 */
START_TEST(message_to_self_not_in_inbox) {
  if (_i == 0) {
    add_entry("alice", "phone", "n1"); /* the sending device only */
    M.deliver_count = 0;
  }
  send1("alice", "alice", "c1");
  settle();
  ck_assert_int_eq(A.status, 0);
  ck_assert_int_eq(M.n_jobs, 1); /* the history, and no inbox job */
  ck_assert(job(0)->history);
  ck_assert_uint_eq(job(0)->n_inbox_users, 0);
}
END_TEST

/* The message of job i. */
static imc_msg job_msg(int i) {
  Imchat__V1__Message *pm = job(i)->message;
  imc_msg m = {.struct_size = sizeof(m),
               .msg_id = pm->msg_id,
               .conversation_id = pm->conversation_id,
               .seq = pm->seq,
               .from_user = pm->from_user,
               .to_user = pm->to_user,
               .group_id = pm->group_id,
               .body = pm->body.data,
               .body_len = pm->body.len,
               .content_type = pm->content_type,
               .sent_at_ms = pm->sent_at_ms,
               .client_msg_id = pm->client_msg_id,
               .from_device = pm->from_device,
               .from_node = job(i)->from_node,
               .from_conn_id = job(i)->from_conn_id};
  return m;
}

static imc_msg last_msg(void) {
  return job_msg(0);
}

/* A resend answered from the dedup set gets the status the first
 * attempt had, at the node the resend came through: the sender may have
 * lost the first one with its connection. */
START_TEST(resend_gets_status_again) {
  add_entry("bob", "phone", "n2");
  ck_assert_int_eq(send1("alice", "bob", "c1"), 0);
  imc_msg m = last_msg();
  imc_router_delivered(R, &m, "bob", "phone");
  settle();
  ck_assert_int_eq(M.n_statuses, 1);
  ck_assert_str_eq(M.statuses[0], "n1 alice phone DELIVERED bob");
  ck_assert_int_eq(send_via("n7", "alice", "bob", NULL, "c1"), 0);
  ck_assert_str_eq(A.msg_id, m.msg_id);
  ck_assert_int_eq(M.n_statuses, 2);
  ck_assert_str_eq(M.statuses[1], "n7 alice phone DELIVERED bob");
  ck_assert_int_eq(M.n_jobs, 1); /* not routed again */
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_DELIVERED), 1);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_STATUS_REPEATS), 1);
  /* Every resend gets it. */
  ck_assert_int_eq(send_via("n1", "alice", "bob", NULL, "c1"), 0);
  ck_assert_int_eq(M.n_statuses, 3);
  ck_assert_str_eq(M.statuses[2], "n1 alice phone DELIVERED bob");
}
END_TEST

/* STORED is repeated the same way, for 1:1 and group messages. */
START_TEST(resend_gets_stored_again) {
  ck_assert_int_eq(send1("alice", "bob", "c1"), 0);
  imc_msg m = last_msg();
  const char *users[] = {"bob"};
  imc_router_persisted(R, &m, 1, users, 1);
  settle();
  ck_assert_int_eq(send_via("n3", "alice", "bob", NULL, "c1"), 0);
  ck_assert_int_eq(M.n_statuses, 2);
  ck_assert_str_eq(M.statuses[1], "n3 alice phone STORED bob");

  int n = 0;
  imc_router_group_add(R, "team", "alice", done_count, &n);
  imc_router_group_add(R, "team", "carol", done_count, &n);
  settle();
  ck_assert_int_eq(send_via("n1", "alice", NULL, "team", "g1"), 0);
  Imchat__V1__OfflineJob *j = job(M.n_jobs - 1);
  imc_msg gm = {.struct_size = sizeof(gm),
                .msg_id = j->message->msg_id,
                .from_user = "alice",
                .to_user = "",
                .group_id = "team",
                .client_msg_id = "g1",
                .from_device = "phone",
                .from_node = "n1"};
  imc_router_persisted(R, &gm, 1, NULL, 0);
  settle();
  ck_assert_int_eq(M.n_statuses, 3);
  ck_assert_int_eq(send_via("n4", "alice", NULL, "team", "g1"), 0);
  ck_assert_int_eq(M.n_statuses, 4);
  ck_assert_str_eq(M.statuses[3], "n4 alice phone STORED -");
}
END_TEST

/* No status yet (the recipient has not ACKed, nothing stored): the
 * resend gets its SendAck only; the status comes when it is due. Nor
 * once the router has forgotten it. */
START_TEST(resend_before_status_or_after_memory) {
  add_entry("bob", "phone", "n2");
  ck_assert_int_eq(send1("alice", "bob", "c1"), 0);
  imc_msg m = last_msg();
  ck_assert_int_eq(send_via("n7", "alice", "bob", NULL, "c1"), 0);
  ck_assert_int_eq(M.n_statuses, 0);
  /* Its own message, still on its way: not delivered again. */
  ck_assert_int_eq(M.n_delivers, 1);
  imc_router_delivered(R, &m, "bob", "phone");
  settle();
  ck_assert_int_eq(M.n_statuses, 1);
  test_clock_advance(&M.tc, 600000);
  ck_assert_int_eq(send_via("n7", "alice", "bob", NULL, "c1"), 0);
  ck_assert_str_eq(A.msg_id, m.msg_id);
  ck_assert_int_eq(M.n_statuses, 1);
  ck_assert_int_eq(M.n_delivers, 1);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_STATUS_REPEATS), 0);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_REDRIVES), 0);
}
END_TEST

/* A router restarted on the same dedup set and queue: its status
 * memory is empty, and the messages of the one before are not its own. */
static void router_restart(void) {
  settle();
  ck_assert_uint_eq(imc_router_pending(R), 0);
  imc_router_del(R);
  router_make(NULL, 0);
}

/*
 * The router died while the push to an online recipient was in flight:
 * the message is durable (history, "ok") but has no status. The resend
 * through the restarted router gets the same SendAck and delivers the
 * message again (same msg_id, seq and sent_at, the resend's node), and
 * queues its history part again (the router may have died before the
 * queue had the job; the store keeps one copy); the recipient's ACK gives
 * the sender DELIVERED.
 */
START_TEST(resend_after_restart_pushes_again) {
  add_entry("bob", "phone", "n2");
  ck_assert_int_eq(send1("alice", "bob", "c1"), 0);
  char id[64];
  snprintf(id, sizeof(id), "%s", A.msg_id);
  uint64_t seq = A.seq;
  ck_assert_int_eq(M.n_delivers, 1);
  router_restart();
  ck_assert_int_eq(send_via("n7", "alice", "bob", NULL, "c1"), 0);
  ck_assert_str_eq(A.msg_id, id);
  ck_assert_uint_eq(A.seq, seq);
  ck_assert_int_eq(M.n_delivers, 2);
  ck_assert_str_eq(M.delivers[1], "n2 bob -");
  char want[200];
  snprintf(want, sizeof(want), "%s %llu n7 hi", id, (unsigned long long)seq);
  ck_assert_str_eq(M.deliver_msgs[1], want);
  ck_assert_int_eq(M.n_jobs, 2);
  ck_assert(job(1)->history);
  ck_assert_uint_eq(job(1)->n_inbox_users, 0); /* bob is online */
  ck_assert_str_eq(job(1)->message->msg_id, id);
  ck_assert_int_eq(M.n_statuses, 0);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_DUPLICATES), 1);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_REDRIVES), 1);
  imc_msg m = job_msg(0);
  m.from_node = "n7"; /* as pushed by the re-drive */
  imc_router_delivered(R, &m, "bob", "phone");
  settle();
  ck_assert_int_eq(M.n_statuses, 1);
  ck_assert_str_eq(M.statuses[0], "n7 alice phone DELIVERED bob");
  /* Now the status is known: a resend gets it again, and no push. */
  ck_assert_int_eq(send_via("n8", "alice", "bob", NULL, "c1"), 0);
  ck_assert_int_eq(M.n_delivers, 2);
  ck_assert_int_eq(M.n_statuses, 2);
  ck_assert_str_eq(M.statuses[1], "n8 alice phone DELIVERED bob");
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_REDRIVES), 1);
}
END_TEST

/* A resend while the re-drive has no status yet is not driven again. */
START_TEST(redrive_once_until_status) {
  add_entry("bob", "phone", "n2");
  ck_assert_int_eq(send1("alice", "bob", "c1"), 0);
  router_restart();
  ck_assert_int_eq(send_via("n7", "alice", "bob", NULL, "c1"), 0);
  ck_assert_int_eq(send_via("n7", "alice", "bob", NULL, "c1"), 0);
  ck_assert_int_eq(M.n_delivers, 2);
  ck_assert_int_eq(M.n_statuses, 0);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_DUPLICATES), 2);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_REDRIVES), 1);
  /* Its push went unacknowledged: the inbox, and STORED. */
  imc_msg m = job_msg(0);
  m.from_node = "n7";
  imc_router_undelivered(R, &m, "bob");
  settle();
  ck_assert_int_eq(M.n_jobs, 3); /* the first, the re-drive's, the inbox */
  ck_assert(!job(2)->history);
  ck_assert_str_eq(job(2)->inbox_users[0], "bob");
  imc_msg s = job_msg(2);
  imc_router_persisted(R, &s, 0, (const char *[]){"bob"}, 1);
  settle();
  ck_assert_int_eq(M.n_statuses, 1);
  ck_assert_str_eq(M.statuses[0], "n7 alice phone STORED bob");
}
END_TEST

/*
 * The recipient has no online device now: the re-drive queues the job
 * again with bob's inbox entry (same msg_id), and once the worker reports it
 * stored the sender gets STORED at the resend's node. A recipient online
 * on a node whose gateway no longer has it gets the inbox entry too.
 */
START_TEST(resend_after_restart_offline_gets_inbox) {
  if (_i == 1) {
    add_entry("bob", "phone", "n2");
  }
  ck_assert_int_eq(send1("alice", "bob", "c1"), 0);
  char id[64];
  snprintf(id, sizeof(id), "%s", A.msg_id);
  int jobs = M.n_jobs;
  router_restart();
  if (_i == 1)
    M.deliver_count = 0; /* bob left that gateway in between */
  else
    M.lookup_fail = _i == 2; /* whereabouts unknown: the inbox */
  ck_assert_int_eq(send_via("n7", "alice", "bob", NULL, "c1"), 0);
  ck_assert_str_eq(A.msg_id, id);
  M.lookup_fail = 0;
  /* Online on a node that no longer has bob: the job again with its
   * history part, then his inbox entry when the push finds nobody. */
  ck_assert_int_eq(M.n_jobs, jobs + (_i == 1 ? 2 : 1));
  ck_assert(job(jobs)->history);
  Imchat__V1__OfflineJob *j = job(M.n_jobs - 1);
  ck_assert(j->history == (_i != 1));
  ck_assert_uint_eq(j->n_inbox_users, 1);
  ck_assert_str_eq(j->inbox_users[0], "bob");
  ck_assert_str_eq(j->message->msg_id, id);
  ck_assert_str_eq(j->from_node, "n7");
  imc_msg m = job_msg(M.n_jobs - 1);
  imc_router_persisted(R, &m, _i != 1, (const char *[]){"bob"}, 1);
  settle();
  ck_assert_int_eq(M.n_statuses, 1);
  ck_assert_str_eq(M.statuses[0], "n7 alice phone STORED bob");
}
END_TEST

/* A status the restarted router does know (it sent it) is repeated, and
 * nothing is delivered again. */
START_TEST(resend_after_restart_with_status_known) {
  ck_assert_int_eq(send1("alice", "bob", "c1"), 0);
  router_restart();
  ck_assert_int_eq(send_via("n7", "alice", "bob", NULL, "c1"), 0);
  imc_msg m = job_msg(1);
  imc_router_persisted(R, &m, 0, (const char *[]){"bob"}, 1);
  settle();
  ck_assert_int_eq(M.n_statuses, 1);
  int jobs = M.n_jobs;
  ck_assert_int_eq(send_via("n8", "alice", "bob", NULL, "c1"), 0);
  ck_assert_int_eq(M.n_jobs, jobs);
  ck_assert_int_eq(M.n_statuses, 2);
  ck_assert_str_eq(M.statuses[1], "n8 alice phone STORED bob");
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_STATUS_REPEATS), 1);
}
END_TEST

/* The status memory is bounded: past its size the oldest statuses are
 * forgotten, so a resend of that message gets its SendAck only. */
START_TEST(status_memory_is_bounded) {
  imc_router_del(R);
  M.status_max = 2;
  router_make(NULL, 0);
  add_entry("bob", "phone", "n2");
  const char *ids[] = {"c1", "c2", "c3"};
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(send1("alice", "bob", ids[i]), 0);
    imc_msg m = job_msg(i);
    imc_router_delivered(R, &m, "bob", "phone");
    settle();
  }
  ck_assert_int_eq(M.n_statuses, 3);
  ck_assert_int_eq(send_via("n7", "alice", "bob", NULL, "c1"), 0);
  ck_assert_int_eq(M.n_statuses, 3); /* c1 was forgotten */
  ck_assert_int_eq(send_via("n7", "alice", "bob", NULL, "c3"), 0);
  ck_assert_int_eq(M.n_statuses, 4);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_STATUS_REPEATS), 1);

  imc_router_options *o;
  ck_assert_int_eq(imc_router_options_new(&o, &TM.mem), 0);
  ck_assert_int_eq(imc_router_options_set_status_memory(o, 0, 1),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_router_options_set_status_memory(o, 1, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  imc_router_options_del(o);
}
END_TEST

/* A push of a message to oneself that another device did not ACK goes
 * to nobody's inbox either. */
START_TEST(message_to_self_undelivered) {
  add_entry("alice", "phone", "n1");
  add_entry("alice", "laptop", "n2");
  send1("alice", "alice", "c1");
  settle();
  ck_assert_int_eq(M.n_jobs, 1);
  imc_msg m = last_msg();
  imc_router_undelivered(R, &m, "alice");
  settle();
  ck_assert_int_eq(M.n_jobs, 1);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_SLOW_PATH), 0);
}
END_TEST

START_TEST(delivered_status_once) {
  add_entry("bob", "phone", "n2");
  add_entry("alice", "phone", "n1");
  send1("alice", "bob", "c1");
  imc_msg m = last_msg();
  imc_router_delivered(R, &m, "bob", "phone");
  settle();
  ck_assert_int_eq(M.n_statuses, 1);
  ck_assert_str_eq(M.statuses[0], "n1 alice phone DELIVERED bob");
  /* A second device's ACK, a later STORED: still one status. */
  imc_router_delivered(R, &m, "bob", "laptop");
  settle();
  const char *users[] = {"bob"};
  imc_router_persisted(R, &m, 0, users, 1);
  settle();
  ck_assert_int_eq(M.n_statuses, 1);
  /* The sender's own other device ACKing is not a delivery. */
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_DELIVERED), 1);
}
END_TEST

/* The message says where the sender sent from: its status needs no
 * registry lookup, even when the registry would say otherwise. */
START_TEST(status_goes_to_from_node) {
  add_entry("alice", "phone", "n9");
  send1("alice", "bob", "c1");
  ck_assert_str_eq(job(0)->from_node, "n1");
  ck_assert_uint_eq(job(0)->from_conn_id, 1);
  imc_msg m = last_msg();
  int lookups = M.n_lookups;
  imc_router_delivered(R, &m, "bob", "phone");
  settle();
  ck_assert_int_eq(M.n_lookups, lookups);
  ck_assert_int_eq(M.n_statuses, 1);
  ck_assert_str_eq(M.statuses[0], "n1 alice phone DELIVERED bob");
}
END_TEST

/* A message that lost its node (from_node ""): the registry finds it. */
START_TEST(status_falls_back_to_lookup) {
  add_entry("alice", "phone", "n9");
  add_entry("alice", "laptop", "n8");
  send1("alice", "bob", "c1");
  imc_msg m = last_msg();
  m.from_node = "";
  m.from_conn_id = 0;
  int lookups = M.n_lookups;
  const char *users[] = {"bob"};
  imc_router_persisted(R, &m, 1, users, 1);
  settle();
  /* One for the sender's status, one for bob (see the next test). */
  ck_assert_int_eq(M.n_lookups, lookups + 2);
  ck_assert_int_eq(M.n_statuses, 1);
  ck_assert_str_eq(M.statuses[0], "n9 alice phone STORED bob");
}
END_TEST

/* A recipient who comes online between the slow path and the store may
 * have synced before the message was stored: once stored, it is pushed
 * to the devices online then, once. */
START_TEST(stored_message_pushed_to_recipient_now_online) {
  add_entry("alice", "phone", "n1");
  send1("alice", "bob", "c1"); /* bob offline: the slow path */
  imc_msg m = last_msg();
  int delivers = M.n_delivers;
  const char *users[] = {"bob"};
  imc_router_persisted(R, &m, 1, users, 1);
  settle();
  ck_assert_int_eq(M.n_delivers, delivers); /* still offline: no push */

  send1("alice", "bob", "c2");
  imc_msg m2 = job_msg(1);
  add_entry("bob", "phone", "n2"); /* bob connects before the store */
  add_entry("bob", "laptop", "n2");
  imc_router_persisted(R, &m2, 1, users, 1);
  settle();
  ck_assert_int_eq(M.n_delivers, delivers + 1); /* one push per node */
  ck_assert_str_eq(M.delivers[M.n_delivers - 1], "n2 bob -");
  ck_assert_int_eq(M.n_statuses, 2); /* STORED for each, once */
}
END_TEST

/* A 1:1 message from device dev of from, sent through node (""
 * for a message that lost it). */
static imc_msg msg_from(const char *id, const char *from, const char *dev,
                        const char *node, const char *to) {
  imc_msg m = {.struct_size = sizeof(m),
               .msg_id = id,
               .conversation_id = "p:x:y",
               .seq = 1,
               .from_user = from,
               .to_user = to,
               .group_id = "",
               .body = (const uint8_t *)"x",
               .body_len = 1,
               .content_type = "text/plain",
               .sent_at_ms = T0,
               .client_msg_id = id,
               .from_device = dev,
               .from_node = node};
  return m;
}

/* The statuses of a batch of acks: the messages that know their node
 * need no lookup, the others share one lookup_many; each message gets
 * one status; acks that are no delivery are skipped. */
START_TEST(delivered_many_one_lookup) {
  add_entry("alice", "phone", "n9");
  add_entry("carol", "tablet", "n8");
  imc_msg m1 = msg_from("m1", "alice", "phone", "n1", "bob");
  imc_msg m2 = msg_from("m2", "alice", "phone", "n1", "bob");
  imc_msg m3 = msg_from("m3", "alice", "phone", "", "bob");
  imc_msg m4 = msg_from("m4", "carol", "tablet", "", "bob");
  imc_msg g = msg_from("g1", "alice", "phone", "n1", "");
  g.group_id = "team";
  imc_delivery_ack acks[] = {
      {&m1, "bob", "phone"},   {&m3, "bob", "phone"},
      {&m1, "bob", "laptop"},  /* a second device: one status */
      {&m2, "alice", "phone"}, /* the sender's own device: none */
      {&g, "bob", "phone"},    /* a group: no DELIVERED */
      {&m4, "bob", "phone"},   {&m2, "bob", "phone"},
      {NULL, "bob", "phone"},  {&m1, NULL, NULL}};
  imc_router_delivered_many(R, acks, sizeof(acks) / sizeof(acks[0]));
  settle();
  ck_assert_int_eq(M.n_lookups, 1);
  ck_assert_uint_eq(M.last_batch_n, 2);
  ck_assert_str_eq(M.last_batch[0], "alice");
  ck_assert_str_eq(M.last_batch[1], "carol");
  ck_assert_int_eq(M.n_statuses, 4);
  ck_assert_str_eq(M.statuses[0], "n1 alice phone DELIVERED bob");
  ck_assert_str_eq(M.statuses[1], "n1 alice phone DELIVERED bob");
  /* The looked-up ones, in the batch's order. */
  ck_assert_str_eq(M.statuses[2], "n9 alice phone DELIVERED bob");
  ck_assert_str_eq(M.statuses[3], "n8 carol tablet DELIVERED bob");
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_DELIVERED), 4);
  /* The same acks again: every message had its status. */
  imc_router_delivered_many(R, acks, sizeof(acks) / sizeof(acks[0]));
  settle();
  ck_assert_int_eq(M.n_statuses, 4);
  ck_assert_int_eq(M.n_lookups, 1);
  imc_router_delivered_many(R, NULL, 0);
  imc_router_delivered_many(NULL, acks, 1);
}
END_TEST

/* Through the in-process upstream vtable, which completes at once; a
 * failed lookup loses those statuses only. */
START_TEST(delivered_many_upstream) {
  const imc_upstream_vtbl *up = imc_router_upstream_vtbl();
  ck_assert(IMC_HAS_MEMBER(up, imc_upstream_vtbl, delivered_many));
  imc_msg m1 = msg_from("m1", "alice", "phone", "n1", "bob");
  imc_msg m2 = msg_from("m2", "alice", "phone", "", "bob");
  imc_delivery_ack acks[] = {{&m1, "bob", "phone"}, {&m2, "bob", "phone"}};
  M.lookup_fail = 1;
  int done = 0;
  ck_assert_int_eq(up->delivered_many(R, acks, 2, done_count, &done), 0);
  ck_assert_int_eq(done, 1);
  settle();
  ck_assert_int_eq(M.n_lookups, 1);
  ck_assert_int_eq(M.n_statuses, 1);
  ck_assert_str_eq(M.statuses[0], "n1 alice phone DELIVERED bob");
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_BACKEND_ERRORS), 1);
}
END_TEST

/* Many messages with a status (more than the seen cache's first table
 * holds): each is still found, once, until it is forgotten. */
START_TEST(status_memory_grows) {
  enum { N = 3000, BATCH = 500 };
  static char ids[N][16];
  static imc_msg msgs[N];
  static imc_delivery_ack acks[N];
  for (int i = 0; i < N; i++) {
    snprintf(ids[i], sizeof(ids[i]), "s%d", i);
    msgs[i] = msg_from(ids[i], "alice", "phone", "n1", "bob");
    acks[i] = (imc_delivery_ack){&msgs[i], "bob", "phone"};
  }
  for (int round = 0; round < 2; round++)
    for (int i = 0; i < N; i += BATCH) {
      imc_router_delivered_many(R, acks + i, BATCH);
      settle();
    }
  ck_assert_int_eq(M.n_statuses, N);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_DELIVERED), N);
  /* Remembered until STATUS_MEMORY_MS has passed, then forgotten. */
  test_clock_advance(&M.tc, 600000 - 1);
  imc_router_delivered_many(R, acks + N - 1, 1);
  settle();
  ck_assert_int_eq(M.n_statuses, N);
  test_clock_advance(&M.tc, 1);
  ck_assert_int_eq(imc_router_on_timeout(R), 0);
  imc_router_delivered_many(R, acks, BATCH);
  settle();
  ck_assert_int_eq(M.n_statuses, N + BATCH);
}
END_TEST

/* Callers built against an older header: members past their
 * struct_size are absent. */
START_TEST(struct_size_respected) {
  imc_send_req q = {.struct_size = sizeof(q),
                    .from_user = "alice",
                    .from_device = "phone",
                    .node_id = "n1",
                    .conn_id = 7,
                    .client_msg_id = "c1",
                    .to_user = "bob",
                    .group_id = "",
                    .body = (const uint8_t *)"hi",
                    .body_len = 2,
                    .content_type = "text/plain"};
  /* No struct_size: no sender. */
  q.struct_size = 0;
  ck_assert_int_eq(imc_router_send(R, &q, answered, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  /* Everything up to content_type, nothing after. */
  q.struct_size = (uint32_t)offsetof(imc_send_req, content_type);
  memset(&A, 0, sizeof(A));
  ck_assert_int_eq(imc_router_send(R, &q, answered, NULL), 0);
  settle();
  ck_assert_int_eq(A.status, 0);
  ck_assert_str_eq(job(0)->message->content_type, "");
  ck_assert_str_eq(job(0)->from_node, "n1");
  /* A message from before from_node: the status looks the sender up. */
  add_entry("alice", "phone", "n9");
  imc_msg m = last_msg();
  m.struct_size = (uint32_t)offsetof(imc_msg, from_node);
  int lookups = M.n_lookups;
  imc_router_delivered(R, &m, "bob", "phone");
  settle();
  ck_assert_int_eq(M.n_lookups, lookups + 1);
  ck_assert_int_eq(M.n_statuses, 1);
  ck_assert_str_eq(M.statuses[0], "n9 alice phone DELIVERED bob");
}
END_TEST

START_TEST(own_device_ack_is_not_delivery) {
  add_entry("alice", "phone", "n1");
  send1("alice", "bob", "c1");
  imc_msg m = last_msg();
  imc_router_delivered(R, &m, "alice", "laptop");
  settle();
  ck_assert_int_eq(M.n_statuses, 0);
}
END_TEST

START_TEST(stored_status_offline) {
  add_entry("alice", "phone", "n1");
  send1("alice", "bob", "c1");
  imc_msg m = last_msg();
  const char *users[] = {"bob"};
  imc_router_persisted(R, &m, 1, users, 1);
  settle();
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
  settle();
  ck_assert_int_eq(M.n_statuses, 0);
}
END_TEST

START_TEST(undelivered_goes_to_inbox) {
  add_entry("bob", "phone", "n1");
  send1("alice", "bob", "c1");
  imc_msg m = last_msg();
  imc_router_undelivered(R, &m, "bob");
  settle();
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
  settle();
  ck_assert_int_eq(M.n_jobs, 1);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_RETRY_QUEUE), 1);
  for (int i = 0; i < 10 && M.n_jobs == 1; i++) {
    int64_t t = imc_router_next_timeout_ms(R);
    ck_assert_int_ge(t, 0);
    test_clock_advance(&M.tc, t);
    imc_router_on_timeout(R);
    settle();
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

/*
 * The queue took the job but the dedup set refused its "ok": the message
 * is durable, so the sender has its SendAck, and the claim stays (a
 * resend waits) until the record, written again with backoff, is in. The
 * resend then gets the same msg_id: one message, never a second.
 */
START_TEST(ok_record_failure_still_acks) {
  M.dedup_set_fail = 3; /* the "ok" and its next two writes */
  ck_assert_int_eq(send1("alice", "bob", "c1"), 0);
  char id[64];
  snprintf(id, sizeof(id), "%s", A.msg_id);
  ck_assert_int_eq(M.n_jobs, 1);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_DEDUP_OWED), 1);
  ck_assert_int_eq(send1("alice", "bob", "c1"), IMC_ERR_UNAVAILABLE);
  int64_t waits[3];
  for (int i = 0; i < 3; i++) {
    waits[i] = imc_router_next_timeout_ms(R);
    ck_assert_int_gt(waits[i], 0);
    test_clock_advance(&M.tc, waits[i]);
    ck_assert_int_eq(imc_router_on_timeout(R), 0);
    settle();
  }
  ck_assert_int_eq(waits[1], 2 * waits[0]); /* backing off */
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_DEDUP_OWED), 0);
  ck_assert_int_eq(imc_router_next_timeout_ms(R), -1);
  ck_assert_int_eq(send1("alice", "bob", "c1"), 0);
  ck_assert_str_eq(A.msg_id, id);
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

/* Puts a claim of instance under alice's c1, as a router that died mid-send
 * left it. */
static void dead_claim(uint32_t instance) {
  char v[24];
  snprintf(v, sizeof(v), "pending %08x", (unsigned)instance);
  d_store("send:alice:c1", (const uint8_t *)v, strlen(v), 60);
}

/* record_first: the "ok" is in the dedup set before the job goes to the
 * queue, not in the same turn. */
static void router_record_first(void) {
  imc_router_del(R);
  M.record_first = 1;
  router_make(NULL, 0);
}

START_TEST(record_first_ok_before_job) {
  router_record_first();
  ck_assert_int_eq(send1("alice", "bob", "c1"), 0);
  ck_assert_int_eq(M.n_jobs, 1);
  char ok[100];
  snprintf(ok, sizeof(ok), "ok %s ", A.msg_id);
  ck_assert_int_eq(strncmp(M.ok_at_publish, ok, strlen(ok)), 0);
}
END_TEST

/*
 * The queue refuses the job after its "ok" is in (a resend may have had
 * its SendAck from it already): the send is answered and the job retried;
 * if the router dies before, the resend's router queues it under the same
 * msg_id (a re-drive), never a second message.
 */
START_TEST(record_first_job_refused) {
  router_record_first();
  M.queue_fail = 1;
  ck_assert_int_eq(send1("alice", "bob", "c1"), 0);
  char id[64];
  snprintf(id, sizeof(id), "%s", A.msg_id);
  ck_assert_int_eq(M.n_jobs, 0);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_RETRY_QUEUE), 1);
  if (_i == 0) {
    test_clock_advance(&M.tc, imc_router_next_timeout_ms(R));
    ck_assert_int_eq(imc_router_on_timeout(R), 0);
    settle();
  } else {
    router_restart();
    ck_assert_int_eq(send_via("n7", "alice", "bob", NULL, "c1"), 0);
    ck_assert_str_eq(A.msg_id, id);
  }
  ck_assert_int_eq(M.n_jobs, 1);
  ck_assert(job(0)->history);
  ck_assert_str_eq(job(0)->message->msg_id, id);
}
END_TEST

static void router_with_liveness(void) {
  imc_router_del(R);
  M.liveness = 1;
  router_make(NULL, 0);
}

/* The claim of a dead router is taken over at once: the send goes on. */
START_TEST(dead_router_claim_taken_over) {
  router_with_liveness();
  M.dead[M.n_dead++] = 0xdeadbeef;
  dead_claim(0xdeadbeef);
  ck_assert_int_eq(send1("alice", "bob", "c1"), 0);
  ck_assert_int_eq(M.n_alive_asked, 1);
  ck_assert_uint_eq(M.alive_asked, 0xdeadbeef);
  ck_assert_int_eq(M.n_jobs, 1);
  ck_assert_str_eq(job(0)->message->msg_id, A.msg_id);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_TAKEOVERS), 1);
  char ok[100];
  snprintf(ok, sizeof(ok), "ok %s 1 ", A.msg_id);
  ck_assert_int_eq(strncmp(M.dv[d_find("send:alice:c1")], ok, strlen(ok)), 0);
  /* A resend gets the same answer, with nobody asked. */
  char id[64];
  snprintf(id, sizeof(id), "%s", A.msg_id);
  ck_assert_int_eq(send1("alice", "bob", "c1"), 0);
  ck_assert_str_eq(A.msg_id, id);
  ck_assert_int_eq(M.n_alive_asked, 1);
}
END_TEST

/* A live router's claim, liveness that cannot be told, and the router's
 * own claim are honoured: UNAVAILABLE, nothing taken. */
START_TEST(live_router_claim_honoured) {
  router_with_liveness();
  M.dead[M.n_dead++] = 0xdeadbeef;
  dead_claim(0x12345678);
  ck_assert_int_eq(send1("alice", "bob", "c1"), IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(M.n_alive_asked, 1);
  M.alive_fail = 1;
  dead_claim(0xdeadbeef);
  ck_assert_int_eq(send1("alice", "bob", "c1"), IMC_ERR_UNAVAILABLE);
  M.alive_fail = 2;
  ck_assert_int_eq(send1("alice", "bob", "c1"), IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(M.n_alive_asked, 3);
  M.alive_fail = 0;
  dead_claim(imc_router_instance(R)); /* in progress here */
  ck_assert_int_eq(send1("alice", "bob", "c1"), IMC_ERR_UNAVAILABLE);
  d_store("send:alice:c1", (const uint8_t *)"pending", 7, 60); /* foreign */
  ck_assert_int_eq(send1("alice", "bob", "c1"), IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(M.n_alive_asked, 3);
  ck_assert_int_eq(M.n_cas, 0);
  ck_assert_int_eq(M.n_jobs, 0);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_TAKEOVERS), 0);
  /* Without liveness the claim waits for its TTL, as before. */
  imc_router_del(R);
  M.liveness = 0;
  router_make(NULL, 0);
  dead_claim(0xdeadbeef);
  ck_assert_int_eq(send1("alice", "bob", "c1"), IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(M.n_alive_asked, 3);
}
END_TEST

/*
 * Two routers meet the dead router's claim at once: both ask, both try to
 * take it over, one wins. The other finds the winner's claim (alive) and
 * answers UNAVAILABLE; its resend gets the winner's msg_id. One
 * client_msg_id, one msg_id.
 */
START_TEST(takeover_race_one_winner) {
  router_with_liveness();
  imc_router *r1 = R;
  router_make(NULL, 0);
  imc_router *r2 = R;
  M.dead[M.n_dead++] = 0xdeadbeef;
  dead_claim(0xdeadbeef);
  imc_send_req q = {.struct_size = sizeof(q),
                    .from_user = "alice",
                    .from_device = "phone",
                    .node_id = "n1",
                    .client_msg_id = "c1",
                    .to_user = "bob",
                    .body = (const uint8_t *)"hi",
                    .body_len = 2};
  answer a[2];
  memset(a, 0, sizeof(a));
  imc_router *rs[2] = {r1, r2};
  for (int i = 0; i < 2; i++)
    ck_assert_int_eq(imc_router_send(rs[i], &q, answered_into, &a[i]), 0);
  settle();
  ck_assert_int_eq(a[0].calls + a[1].calls, 2);
  /* Deferred, both met the dead claim and both tried to take it over. */
  ck_assert_int_eq(M.n_cas, M.deferred ? 2 : 1);
  ck_assert_uint_eq(imc_router_stat_get(r1, IMC_RT_STAT_TAKEOVERS) +
                        imc_router_stat_get(r2, IMC_RT_STAT_TAKEOVERS),
                    1);
  ck_assert_int_eq(M.n_jobs >= 1, 1);
  ck_assert(job(0)->history);
  const char *id = job(0)->message->msg_id;
  for (int i = 1; i < M.n_jobs; i++) /* a re-drive's, of the same message */
    ck_assert_str_eq(job(i)->message->msg_id, id);
  /* The loser either met the winner's claim in progress or its answer. */
  for (int i = 0; i < 2; i++) {
    if (a[i].status == 0) {
      ck_assert_str_eq(a[i].msg_id, id);
      continue;
    }
    ck_assert_int_eq(a[i].status, IMC_ERR_UNAVAILABLE);
    memset(&a[i], 0, sizeof(a[i]));
    ck_assert_int_eq(imc_router_send(rs[i], &q, answered_into, &a[i]), 0);
    settle();
    ck_assert_int_eq(a[i].status, 0);
    ck_assert_str_eq(a[i].msg_id, id);
  }
  settle();
  ck_assert_uint_eq(imc_router_pending(r2), 0);
  imc_router_del(r2);
  R = r1;
}
END_TEST

/* Liveness needs a dedup set that can take a claim over. */
START_TEST(liveness_needs_compare_and_set) {
  imc_router_options *o;
  ck_assert_int_eq(imc_router_options_new(&o, &TM.mem), 0);
  imc_dedup_vtbl d = dedup;
  d.struct_size = offsetof(imc_dedup_vtbl, compare_and_set);
  imc_router_options_set_registry(o, &registry, NULL);
  imc_router_options_set_seq(o, &seqv, NULL);
  imc_router_options_set_dedup(o, &d, NULL);
  imc_router_options_set_store(o, &store, NULL);
  imc_router_options_set_queue(o, &queue, NULL);
  imc_router_options_set_gwlink(o, &gwlink, NULL);
  ck_assert_int_eq(imc_router_options_set_liveness(NULL, alive_ask, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_router_options_set_liveness(o, alive_ask, NULL), 0);
  imc_router *r = NULL;
  ck_assert_int_eq(imc_router_new(&r, o, &TM.mem), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_router_options_set_liveness(o, NULL, NULL), 0);
  ck_assert_int_eq(imc_router_new(&r, o, &TM.mem), 0);
  ck_assert_uint_eq(imc_router_instance(NULL), 0);
  imc_router_del(r);
  imc_router_options_del(o);
}
END_TEST

/* A backend that is down fails every send: one warning a second, which
 * counts the failures it did not log; the counter has every one. */
START_TEST(backend_errors_logged_once_a_second) {
  M.dedup_fail = 1;
  char cmid[16];
  for (int i = 0; i < 5; i++) {
    snprintf(cmid, sizeof(cmid), "e%d", i);
    ck_assert_int_eq(send1("alice", "bob", cmid), IMC_ERR_UNAVAILABLE);
  }
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_BACKEND_ERRORS), 5);
  ck_assert_int_eq(M.n_warnings, 1);
  ck_assert_str_eq(M.warning, "dedup: test_and_set: service unavailable");
  test_clock_advance(&M.tc, 999);
  ck_assert_int_eq(send1("alice", "bob", "e5"), IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(M.n_warnings, 1);
  test_clock_advance(&M.tc, 1);
  ck_assert_int_eq(send1("alice", "bob", "e6"), IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(M.n_warnings, 2);
  ck_assert_str_eq(M.warning, "dedup: test_and_set: service unavailable (5 "
                              "more backend errors since the last line)");
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_BACKEND_ERRORS), 7);
  M.dedup_fail = 0;
}
END_TEST

START_TEST(dedup_and_registry_failures) {
  M.dedup_fail = 1;
  ck_assert_int_eq(send1("alice", "bob", "c1"), IMC_ERR_UNAVAILABLE);
  M.dedup_fail = 0;
  /* An unknown location is treated as offline: the inbox is safe. */
  add_entry("bob", "phone", "n1");
  M.lookup_fail = 1;
  ck_assert_int_eq(send1("alice", "bob", "c2"), 0);
  ck_assert_uint_eq(job(0)->n_inbox_users, 1);
  ck_assert_str_eq(job(0)->inbox_users[0], "bob");
  ck_assert_int_eq(M.n_delivers, 0);
  /* So is a lookup the registry refused outright. */
  M.lookup_fail = 2;
  ck_assert_int_eq(send1("alice", "bob", "c3"), 0);
  ck_assert_uint_eq(job(1)->n_inbox_users, 1);
  ck_assert_str_eq(job(1)->inbox_users[0], "bob");
  ck_assert_int_eq(M.n_delivers, 0);
  ck_assert_int_eq(M.n_lookups, 2);
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
  settle();
  imc_router_group_add(R, "team", "bob", done_ok, &n);
  settle();
  imc_router_group_add(R, "team", "carol", done_ok, &n);
  settle();
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
  /* Every other member in one registry round trip. */
  ck_assert_int_eq(M.n_lookups, 1);
  /* Published once, keyed by the group; no per-user pushes. */
  ck_assert_int_eq(M.n_group, 1);
  ck_assert_str_eq(M.group_keys[0], "team");
  ck_assert_int_eq(M.n_delivers, 0);
  /* STORED once the history has it, with no user. */
  imc_msg m = last_msg();
  imc_router_persisted(R, &m, 1, (const char *[]){"carol"}, 1);
  settle();
  ck_assert_int_eq(M.n_statuses, 1);
  ck_assert_str_eq(M.statuses[0], "n1 alice phone STORED -");
  /* A member's ACK is no DELIVERED for a group. */
  imc_router_delivered(R, &m, "bob", "phone");
  settle();
  ck_assert_int_eq(M.n_statuses, 1);
}
END_TEST

/*
 * A group message whose router died after its SendAck: the resend through
 * the restarted router publishes it on the group bus again (the online
 * members' gateways push it, with their ACK handling) and queues the
 * inboxes of members with no online device with its history part, which
 * the worker finds persisted and reports: the sender gets STORED.
 */
START_TEST(group_resend_after_restart) {
  members3();
  add_entry("alice", "phone", "n1");
  add_entry("bob", "phone", "n2");
  ck_assert_int_eq(
      send_full("alice", "phone", NULL, "team", "g1", "hi", "text/plain"), 0);
  char id[64];
  snprintf(id, sizeof(id), "%s", A.msg_id);
  router_restart();
  ck_assert_int_eq(send_via("n7", "alice", NULL, "team", "g1"), 0);
  ck_assert_str_eq(A.msg_id, id);
  ck_assert_uint_eq(A.seq, 1);
  ck_assert_int_eq(M.n_group, 2);
  ck_assert_str_eq(M.group_keys[1], "team");
  ck_assert_str_eq(M.group_ids[1], id);
  ck_assert_int_eq(M.n_jobs, 2);
  ck_assert(job(1)->history);
  ck_assert_uint_eq(job(1)->n_inbox_users, 1);
  ck_assert_str_eq(job(1)->inbox_users[0], "carol");
  ck_assert_str_eq(job(1)->message->msg_id, id);
  imc_msg m = job_msg(1);
  imc_router_persisted(R, &m, 1, (const char *[]){"carol"}, 1);
  settle();
  ck_assert_int_eq(M.n_statuses, 1);
  ck_assert_str_eq(M.statuses[0], "n7 alice phone STORED -");
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_REDRIVES), 1);
}
END_TEST

START_TEST(topics_configurable) {
  imc_router_options *o;
  ck_assert_int_eq(imc_router_options_new(&o, &TM.mem), 0);
  ck_assert_int_eq(imc_router_options_set_topics(o, "", "g"),
                   IMC_ERR_INVALID_ARGUMENT);
  char longname[200];
  memset(longname, 'x', sizeof(longname) - 1);
  longname[sizeof(longname) - 1] = '\0';
  ck_assert_int_eq(imc_router_options_set_topics(o, "o", longname),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_router_options_set_topics(NULL, "o", "g"),
                   IMC_ERR_INVALID_ARGUMENT);
  imc_router_options_del(o);

  /* A router on other topics publishes jobs and group records there. */
  imc_router_del(R);
  ck_assert_int_eq(imc_router_options_new(&o, &TM.mem), 0);
  imc_router_options_set_registry(o, &registry, NULL);
  imc_router_options_set_seq(o, &seqv, NULL);
  imc_router_options_set_dedup(o, &dedup, NULL);
  imc_router_options_set_store(o, &store, NULL);
  imc_router_options_set_queue(o, &queue, NULL);
  imc_router_options_set_group_bus(o, &group_bus, NULL);
  imc_router_options_set_gwlink(o, &gwlink, NULL);
  imc_router_options_set_clock(o, &M.tc.clock);
  ck_assert_int_eq(
      imc_router_options_set_topics(o, "tenant1.offline", "tenant1.groups"), 0);
  ck_assert_int_eq(imc_router_new(&R, o, &TM.mem), 0);
  imc_router_options_del(o);
  M.offline_topic = "tenant1.offline";
  M.group_topic = "tenant1.groups";
  members3();
  add_entry("bob", "phone", "n2");
  ck_assert_int_eq(
      send_full("alice", "phone", NULL, "team", "c1", "hi", "text/plain"), 0);
  ck_assert_int_eq(
      send_full("alice", "phone", "carol", NULL, "c2", "hi", "text/plain"), 0);
  settle();
  ck_assert_int_eq(M.n_jobs, 2);
  ck_assert_int_eq(M.n_group, 1);
}
END_TEST

START_TEST(group_membership_cache_invalidated) {
  members3();
  ck_assert_int_eq(
      send_full("dave", "x", NULL, "team", "c1", "hi", "text/plain"),
      IMC_ERR_FORBIDDEN);
  int n = 0;
  imc_router_group_add(R, "team", "dave", done_ok, &n);
  settle();
  ck_assert_int_eq(
      send_full("dave", "x", NULL, "team", "c2", "hi", "text/plain"), 0);
  imc_router_group_remove(R, "team", "dave", done_ok, &n);
  settle();
  ck_assert_int_eq(
      send_full("dave", "x", NULL, "team", "c3", "hi", "text/plain"),
      IMC_ERR_FORBIDDEN);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Filter                                                               */
/* ------------------------------------------------------------------ */

static const char *words = "# blocked words\nbadword\n敏感\n";

START_TEST(filter_not_configured) {
  ck_assert_int_eq(imc_router_set_filter_words(R, (const uint8_t *)"x\n", 2),
                   IMC_ERR_NOT_FOUND);
  imc_router_options *o;
  ck_assert_int_eq(imc_router_options_new(&o, &TM.mem), 0);
  ck_assert_int_eq(imc_router_options_set_filter(o, (const uint8_t *)"\xff", 1,
                                                 IMC_FILTER_REJECT),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_router_options_set_filter(o, (const uint8_t *)"x", 1, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  imc_router_options_del(o);
}
END_TEST

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
  static const char fresh[] = "newword\n";
  ck_assert_int_eq(
      imc_router_set_filter_words(R, (const uint8_t *)fresh, strlen(fresh)), 0);
  ck_assert_int_eq(
      send_full("alice", "p", "bob", NULL, "c1", "badword", "text/plain"), 0);
  ck_assert_int_eq(
      send_full("alice", "p", "bob", NULL, "c2", "newword", "text/plain"),
      IMC_ERR_BLOCKED);
  /* A list that is not UTF-8 is refused; the old list stays. */
  static const char bad[] = "good\nbad\xff\n";
  ck_assert_int_eq(
      imc_router_set_filter_words(R, (const uint8_t *)bad, strlen(bad)),
      IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_router_set_filter_words(R, NULL, 3),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(
      send_full("alice", "p", "bob", NULL, "c3", "newword", "text/plain"),
      IMC_ERR_BLOCKED);
  /* An empty list blocks nothing. */
  ck_assert_int_eq(imc_router_set_filter_words(R, NULL, 0), 0);
  ck_assert_int_eq(
      send_full("alice", "p", "bob", NULL, "c4", "newword", "text/plain"), 0);
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
      imc_send_req q = {.struct_size = sizeof(q),
                        .from_user = "alice",
                        .from_device = "phone",
                        .node_id = "n1",
                        .conn_id = 1,
                        .client_msg_id = "c1",
                        .to_user = "bob",
                        .group_id = "",
                        .body = (const uint8_t *)"x",
                        .body_len = 1,
                        .content_type = "text/plain"};
      char cmid[32];
      snprintf(cmid, sizeof(cmid), "c%ld", i);
      q.client_msg_id = cmid;
      memset(&A, 0, sizeof(A));
      rv = imc_router_send(R, &q, answered, NULL);
      ck_assert(rv == 0 || rv == IMC_ERR_NOMEM);
      settle();
      if (rv == 0) {
        ck_assert_int_eq(A.calls, 1);
        imc_msg m = {.struct_size = sizeof(m),
                     .msg_id = "m1",
                     .conversation_id = "p:alice:bob",
                     .seq = 1,
                     .from_user = "alice",
                     .to_user = "bob",
                     .group_id = "",
                     .body = (const uint8_t *)"x",
                     .body_len = 1,
                     .content_type = "text/plain",
                     .sent_at_ms = T0,
                     .client_msg_id = "c1",
                     .from_device = "phone",
                     .from_node = "n1",
                     .from_conn_id = 1};
        imc_router_undelivered(R, &m, "bob");
        settle();
        imc_router_delivered(R, &m, "bob", "phone");
        settle();
        /* A batch whose message lost its node: a lookup. */
        imc_msg lost = m;
        lost.msg_id = "m2";
        lost.from_node = "";
        imc_delivery_ack acks[] = {{&lost, "bob", "phone"}};
        imc_router_delivered_many(R, acks, 1);
        settle();
        /* A resend of a message with a status: the status again. */
        rv = imc_router_send(R, &q, answered, NULL);
        ck_assert(rv == 0 || rv == IMC_ERR_NOMEM);
        settle();
        if (rv == 0 && A.status == 0) {
          imc_msg first = m;
          first.msg_id = A.msg_id;
          imc_router_delivered(R, &first, "bob", "phone");
          settle();
          rv = imc_router_send(R, &q, answered, NULL);
          ck_assert(rv == 0 || rv == IMC_ERR_NOMEM);
          settle();
        }
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

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* Many sends in flight at once, their backend calls completing in any
 * order: each is answered once, with its own msg_id, and the seqs of a
 * conversation run 1, 2, 3... with neither gap nor repeat. */
START_TEST(many_sends_in_flight) {
  enum { N = 60 };
  static answer ans[N];
  memset(ans, 0, sizeof(ans));
  add_entry("bob", "phone", "n2");
  add_entry("alice", "phone", "n1");
  static const char *const from[] = {"alice", "carol", "alice", "bob"};
  static const char *const to[] = {"bob", "bob", "dave", "alice"};
  for (int i = 0; i < N; i++) {
    char cmid[16];
    snprintf(cmid, sizeof(cmid), "m%d", i);
    imc_send_req q = {.struct_size = sizeof(q),
                      .from_user = from[i % 4],
                      .from_device = "phone",
                      .node_id = "n1",
                      .conn_id = 1,
                      .client_msg_id = cmid,
                      .to_user = to[i % 4],
                      .group_id = "",
                      .body = (const uint8_t *)"hi",
                      .body_len = 2,
                      .content_type = "text/plain"};
    ck_assert_int_eq(imc_router_send(R, &q, answered_into, &ans[i]), 0);
  }
  if (M.deferred)
    ck_assert_int_gt(M.n_comps, N / 2); /* really in flight together */
  settle();
  ck_assert_uint_eq(imc_router_pending(R), 0);
  static const char *const convs[] = {"p:alice:bob", "p:bob:carol",
                                      "p:alice:dave"};
  for (int c = 0; c < 3; c++) {
    uint64_t seqs[N];
    size_t n = 0;
    for (int i = 0; i < N; i++) {
      ck_assert_int_eq(ans[i].calls, 1);
      ck_assert_int_eq(ans[i].status, 0);
      if (strcmp(ans[i].conv, convs[c]) == 0)
        seqs[n++] = ans[i].seq;
    }
    ck_assert_uint_gt(n, 0);
    qsort(seqs, n, sizeof(seqs[0]), cmp_u64);
    for (size_t k = 0; k < n; k++)
      ck_assert_uint_eq(seqs[k], k + 1);
  }
  for (int i = 0; i < N; i++)
    for (int j = i + 1; j < N; j++)
      ck_assert_str_ne(ans[i].msg_id, ans[j].msg_id);
  /* Every acknowledged message is in the queue with what its answer said. */
  ck_assert_int_eq(M.n_jobs, N);
  for (int i = 0; i < N; i++) {
    int found = 0;
    for (int j = 0; j < M.n_jobs; j++)
      if (strcmp(job(j)->message->msg_id, ans[i].msg_id) == 0) {
        found++;
        ck_assert_uint_eq(job(j)->message->seq, ans[i].seq);
        ck_assert_str_eq(M.job_keys[j], ans[i].conv);
      }
    ck_assert_int_eq(found, 1);
  }
}
END_TEST

/* A group send looks every other member up at once: one lookup_many
 * call for them all, never one per member. */
START_TEST(group_lookups_all_at_once) {
  static const char *const users[] = {"alice", "bob",  "carol",
                                      "dave",  "erin", "frank"};
  int n = 0;
  for (int i = 0; i < 6; i++)
    imc_router_group_add(R, "big", users[i], done_ok, &n);
  settle();
  add_entry("erin", "phone", "n2");
  ck_assert_int_eq(
      send_full("alice", "phone", NULL, "big", "c1", "hi", "text/plain"), 0);
  ck_assert_int_eq(M.n_lookups, 1);
  ck_assert_int_eq(M.n_looked_up, 5);
  ck_assert_uint_eq(M.last_batch_n, 5);
  for (size_t i = 0; i < 5; i++) /* every member but the sender */
    ck_assert_str_eq(M.last_batch[i], users[i + 1]);
  if (M.deferred)
    ck_assert_int_eq(M.max_lookups_out, 1);
  ck_assert_uint_eq(job(0)->n_inbox_users, 4); /* all but erin */
}
END_TEST

/* A group send whose one batched lookup fails: every member but the
 * sender goes to the offline queue, whatever the registry holds. */
START_TEST(group_registry_failure) {
  int n = 0;
  static const char *const users[] = {"alice", "bob", "carol", "dave"};
  for (int i = 0; i < 4; i++)
    imc_router_group_add(R, "team", users[i], done_ok, &n);
  settle();
  add_entry("bob", "phone", "n2");
  add_entry("carol", "phone", "n3");
  for (int mode = 1; mode <= 2; mode++) {
    M.lookup_fail = mode;
    char cmid[8];
    snprintf(cmid, sizeof(cmid), "c%d", mode);
    ck_assert_int_eq(
        send_full("alice", "phone", NULL, "team", cmid, "hi", "text/plain"), 0);
    Imchat__V1__OfflineJob *j = job(mode - 1);
    ck_assert(j->history);
    ck_assert_uint_eq(j->n_inbox_users, 3);
    ck_assert_str_eq(j->inbox_users[0], "bob");
    ck_assert_str_eq(j->inbox_users[1], "carol");
    ck_assert_str_eq(j->inbox_users[2], "dave");
  }
  ck_assert_int_eq(M.n_lookups, 2);
  ck_assert_uint_eq(imc_router_stat_get(R, IMC_RT_STAT_SLOW_PATH), 6);
}
END_TEST

/*
 * A member added while the group's members are being loaded: the load
 * may have read the old list, so a send after the add must not be
 * answered from it.
 */

START_TEST(group_add_during_members_load) {
  members3();
  M.deferred = 1;
  imc_send_req q = {.struct_size = sizeof(q),
                    .from_user = "dave",
                    .from_device = "x",
                    .node_id = "n1",
                    .conn_id = 1,
                    .client_msg_id = "c1",
                    .to_user = "",
                    .group_id = "team",
                    .body = (const uint8_t *)"hi",
                    .body_len = 2,
                    .content_type = "text/plain"};
  answer first = {0}, second = {0};
  ck_assert_int_eq(imc_router_send(R, &q, answered_into, &first), 0);
  ck_assert_int_eq(M.n_comps, 1); /* the members load, without dave */
  int n = 0;
  ck_assert_int_eq(imc_router_group_add(R, "team", "dave", done_ok, &n), 0);
  fire_at(1); /* the add completes first */
  ck_assert_int_eq(n, 1);
  q.client_msg_id = "c2";
  ck_assert_int_eq(imc_router_send(R, &q, answered_into, &second), 0);
  settle();
  ck_assert_int_eq(first.calls, 1);
  ck_assert_int_eq(first.status, IMC_ERR_FORBIDDEN); /* raced the add */
  ck_assert_int_eq(second.calls, 1);
  ck_assert_int_eq(second.status, 0);
}
END_TEST

static Suite *router_suite(void) {
  Suite *s = suite_create("router");
  /* Every case runs twice: backends completing at once, then later and
   * out of order. */
  void (*const setups[2])(void) = {setup, setup_deferred};
  for (int m = 0; m < 2; m++) {
    TCase *t = tcase_create(m ? "direct deferred" : "direct");
    tcase_add_checked_fixture(t, setups[m], teardown);
    tcase_add_test(t, offline_recipient);
    tcase_add_test(t, seq_per_conversation);
    tcase_add_test(t, online_recipient_devices);
    tcase_add_test(t, stale_registry_falls_back);
    tcase_add_test(t, resend_dedup);
    tcase_add_test(t, message_to_self);
    tcase_add_loop_test(t, message_to_self_not_in_inbox, 0, 2);
    tcase_add_test(t, message_to_self_undelivered);
    tcase_add_test(t, delivered_status_once);
    tcase_add_test(t, status_goes_to_from_node);
    tcase_add_test(t, status_falls_back_to_lookup);
    tcase_add_test(t, stored_message_pushed_to_recipient_now_online);
    tcase_add_test(t, delivered_many_one_lookup);
    tcase_add_test(t, delivered_many_upstream);
    tcase_add_test(t, status_memory_grows);
    tcase_add_test(t, resend_gets_status_again);
    tcase_add_test(t, resend_gets_stored_again);
    tcase_add_test(t, resend_before_status_or_after_memory);
    tcase_add_test(t, status_memory_is_bounded);
    tcase_add_test(t, resend_after_restart_pushes_again);
    tcase_add_test(t, redrive_once_until_status);
    tcase_add_loop_test(t, resend_after_restart_offline_gets_inbox, 0, 3);
    tcase_add_test(t, resend_after_restart_with_status_known);
    tcase_add_test(t, struct_size_respected);
    tcase_add_test(t, own_device_ack_is_not_delivery);
    tcase_add_test(t, stored_status_offline);
    tcase_add_test(t, history_only_is_not_stored);
    tcase_add_test(t, undelivered_goes_to_inbox);
    tcase_add_test(t, undelivered_retried_until_queued);
    tcase_add_test(t, many_sends_in_flight);
    suite_add_tcase(s, t);

    t = tcase_create(m ? "failures deferred" : "failures");
    tcase_add_checked_fixture(t, setups[m], teardown);
    tcase_add_test(t, invalid_requests);
    tcase_add_test(t, seq_failure_then_resend);
    tcase_add_test(t, queue_failure_no_ack);
    tcase_add_test(t, in_flight_duplicate);
    tcase_add_test(t, ok_record_failure_still_acks);
    tcase_add_test(t, record_first_ok_before_job);
    tcase_add_loop_test(t, record_first_job_refused, 0, 2);
    tcase_add_test(t, dead_router_claim_taken_over);
    tcase_add_test(t, live_router_claim_honoured);
    tcase_add_test(t, takeover_race_one_winner);
    tcase_add_test(t, liveness_needs_compare_and_set);
    tcase_add_test(t, dedup_and_registry_failures);
    tcase_add_test(t, backend_errors_logged_once_a_second);
    tcase_add_test(t, alloc_failures);
    suite_add_tcase(s, t);

    t = tcase_create(m ? "groups deferred" : "groups");
    tcase_add_checked_fixture(t, setups[m], teardown);
    tcase_add_test(t, group_forbidden_for_non_member);
    tcase_add_test(t, group_offline_member);
    tcase_add_test(t, group_resend_after_restart);
    tcase_add_test(t, topics_configurable);
    tcase_add_test(t, group_membership_cache_invalidated);
    tcase_add_test(t, group_add_during_members_load);
    tcase_add_test(t, group_lookups_all_at_once);
    tcase_add_test(t, group_registry_failure);
    suite_add_tcase(s, t);

    t = tcase_create(m ? "filter deferred" : "filter");
    tcase_add_checked_fixture(t, setups[m], teardown);
    tcase_add_test(t, filter_reject);
    tcase_add_test(t, filter_mask);
    tcase_add_test(t, filter_reload);
    tcase_add_test(t, filter_not_configured);
    suite_add_tcase(s, t);
  }
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(router_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
