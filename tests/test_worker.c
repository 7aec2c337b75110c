/*
 * The offline worker driven through its public API with mock vtables: an
 * in-memory queue that delivers on mq_dispatch() and redelivers what was
 * not committed after a "crash", a store and a dedup map that record what
 * they get and fail on demand (in the call or in the completion), and
 * completions that can be held back and released one by one.
 *
 * The queue checks an invariant on every commit: each job up to the
 * committed offset is in the store and marked in the dedup map. The hook
 * recorder checks that every hook comes after the commit of its job.
 */
#include <imchat/membus.h>
#include <imchat/sqlite.h>
#include <imchat/worker.h>

#include "queue.pb-c.h"
#include "testutil.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define T0 1700000000000LL /* wall clock at start, ms */
#define MAXREC 1024
#define MAXITEM 4096
#define NPART 4
#define MAXUSERS 4

/* ------------------------------------------------------------------ */
/* Held completions                                                     */
/* ------------------------------------------------------------------ */

enum later_type { L_DONE, L_DEDUP, L_COMMIT };

typedef struct later {
  int type;
  imc_done_cb done;
  imc_dedup_cb dcb;
  void *ud;
  int status;
  int found;
  int32_t part;
  uint64_t off;
} later;

static later lq[MAXITEM];
static size_t lq_head, lq_n;

static void later_push(later l) {
  ck_assert_uint_lt(lq_n, MAXITEM);
  lq[lq_n++] = l;
}

static void commit_apply(int32_t part, uint64_t off);

/* Completes the oldest held operation; 0 if none is held. */
static int flush_one(void) {
  if (lq_head == lq_n) {
    lq_head = lq_n = 0;
    return 0;
  }
  later l = lq[lq_head++];
  switch (l.type) {
  case L_DONE:
    l.done(l.ud, l.status);
    break;
  case L_DEDUP:
    l.dcb(l.ud, l.status, l.found, l.found ? (const uint8_t *)"1" : NULL,
          l.found ? 1 : 0);
    break;
  case L_COMMIT:
    if (l.status == 0)
      commit_apply(l.part, l.off);
    l.done(l.ud, l.status);
    break;
  }
  return 1;
}

static int flush_all(void) {
  int n = 0;
  while (flush_one())
    n++;
  return n;
}

/* The process died: held completions never come. */
static void later_drop(void) {
  lq_head = lq_n = 0;
}

/* ------------------------------------------------------------------ */
/* Mock queue                                                           */
/* ------------------------------------------------------------------ */

typedef struct mrec {
  uint8_t *val;
  size_t len;
  int32_t part;
  uint64_t off;
  int delivered;
  /* what the record asks for, if it is a valid job */
  int valid;
  char id[80];
  int history;
  char users[MAXUSERS][32];
  size_t n_users;
} mrec;

typedef struct mqueue {
  mrec recs[MAXREC];
  size_t n;
  uint64_t next_off[NPART];
  uint64_t committed[NPART];
  int polling;
  imc_bus_batch_cb cb;
  void *cb_ud;
  size_t max;
  int sync_poll; /* complete polls inside poll() when records wait */
  int polls, commit_calls, commits, bad_topic, violations;
  int fail_poll_sync, fail_poll_async;
  int fail_commit_sync, fail_commit_async;
  int async_commit;
  unsigned revoked;  /* bit p: partition p has another owner */
  int revoked_sync;  /* refuse in the call instead of the completion */
  int revocations;   /* commits answered with IMC_ERR_REVOKED */
  const char *topic; /* expected names; NULL: the defaults */
  const char *group;
} mqueue;

typedef struct mstore {
  char *hist[MAXITEM];
  size_t n_hist;
  char *in_user[MAXITEM];
  char *in_msg[MAXITEM];
  size_t n_inbox;
  int calls, appends, reappends, bad_entries;
  size_t sizes[64]; /* msgs + entries of each successful append */
  size_t last_msgs, last_entries;
  int fail_sync, fail_async, async;
  int purges;
  int64_t cutoffs[64];
  int fail_purge_sync, async_purge;
} mstore;

typedef struct mdedup {
  char *keys[MAXITEM];
  size_t n;
  int gets, sets;
  uint32_t ttl;
  int fail_get_sync, fail_get_async, fail_set_sync, fail_set_async;
  int async_get, async_set;
  int not_found_status; /* report misses as IMC_ERR_NOT_FOUND */
} mdedup;

typedef struct hookrec {
  int calls, before_commit, bad_ud;
  char *ids[MAXITEM];
  int history[MAXITEM];
  size_t n_users[MAXITEM];
} hookrec;

static test_mem tm;
static test_clock tc;
static mqueue q;
static mstore st;
static mdedup dd;
static hookrec hk;
static int warn_lines;
static char last_line[256];

static void deliver(void) {
  imc_bus_record recs[MAXREC];
  uint8_t *scratch[MAXREC];
  size_t n = 0;
  for (size_t i = 0; i < q.n && n < q.max; i++) {
    mrec *r = &q.recs[i];
    if (r->delivered || r->off <= q.committed[r->part])
      continue;
    r->delivered = 1;
    /* A scratch copy, scribbled over afterwards: the worker must copy. */
    scratch[n] = malloc(r->len ? r->len : 1);
    memcpy(scratch[n], r->val, r->len);
    recs[n].key = NULL;
    recs[n].key_len = 0;
    recs[n].value = scratch[n];
    recs[n].value_len = r->len;
    recs[n].partition = r->part;
    recs[n].offset = r->off;
    n++;
  }
  if (n == 0)
    return;
  q.polling = 0;
  q.cb(q.cb_ud, 0, recs, n);
  for (size_t i = 0; i < n; i++) {
    memset(scratch[i], 0xAA, recs[i].value_len);
    free(scratch[i]);
  }
}

static int has_pending_records(void) {
  for (size_t i = 0; i < q.n; i++)
    if (!q.recs[i].delivered && q.recs[i].off > q.committed[q.recs[i].part])
      return 1;
  return 0;
}

/* Completes the outstanding poll if records wait; returns 1 if it did. */
static int mq_dispatch(void) {
  if (!q.polling)
    return 0;
  if (q.fail_poll_async > 0) {
    q.fail_poll_async--;
    q.polling = 0;
    q.cb(q.cb_ud, IMC_ERR_IO, NULL, 0);
    return 1;
  }
  if (!has_pending_records())
    return 0;
  deliver();
  return 1;
}

/* The host closes the queue: the outstanding poll ends. */
static void mq_close(void) {
  if (!q.polling)
    return;
  q.polling = 0;
  q.cb(q.cb_ud, IMC_ERR_CLOSED, NULL, 0);
}

/* The consumer died: its poll is forgotten, uncommitted records are
 * delivered again. */
static void mq_crash(void) {
  q.polling = 0;
  later_drop();
  for (size_t i = 0; i < q.n; i++)
    q.recs[i].delivered = 0;
}

static int names_ok(const char *topic, const char *group) {
  return strcmp(topic, q.topic ? q.topic : "offline_msg") == 0 &&
         strcmp(group, q.group ? q.group : "worker") == 0;
}

static int q_poll(void *ud, const char *topic, const char *group, size_t max,
                  imc_bus_batch_cb done, void *done_ud) {
  ck_assert_ptr_eq(ud, &q);
  if (!names_ok(topic, group))
    q.bad_topic++;
  if (q.polling)
    return IMC_ERR_EXISTS;
  if (q.fail_poll_sync > 0) {
    q.fail_poll_sync--;
    return IMC_ERR_UNAVAILABLE;
  }
  q.polls++;
  q.polling = 1;
  q.cb = done;
  q.cb_ud = done_ud;
  q.max = max;
  if (q.sync_poll && has_pending_records())
    deliver();
  return 0;
}

static int msg_stored(const char *id) {
  for (size_t i = 0; i < st.n_hist; i++)
    if (strcmp(st.hist[i], id) == 0)
      return 1;
  return 0;
}

static int entry_stored(const char *user, const char *id) {
  for (size_t i = 0; i < st.n_inbox; i++)
    if (strcmp(st.in_user[i], user) == 0 && strcmp(st.in_msg[i], id) == 0)
      return 1;
  return 0;
}

static int key_marked(const char *key) {
  for (size_t i = 0; i < dd.n; i++)
    if (strcmp(dd.keys[i], key) == 0)
      return 1;
  return 0;
}

static int job_persisted(const mrec *r) {
  char key[160];
  if (r->history) {
    snprintf(key, sizeof(key), "persist:%s:h", r->id);
    if (!msg_stored(r->id) || !key_marked(key))
      return 0;
  }
  for (size_t u = 0; u < r->n_users; u++) {
    snprintf(key, sizeof(key), "persist:%s:u:%s", r->id, r->users[u]);
    if (!entry_stored(r->users[u], r->id) || !key_marked(key))
      return 0;
  }
  return 1;
}

static void commit_apply(int32_t part, uint64_t off) {
  for (size_t i = 0; i < q.n; i++) {
    const mrec *r = &q.recs[i];
    if (r->part == part && r->off <= off && r->valid && !job_persisted(r))
      q.violations++;
  }
  if (off > q.committed[part])
    q.committed[part] = off;
  q.commits++;
}

static int q_commit(void *ud, const char *topic, const char *group,
                    int32_t part, uint64_t off, imc_done_cb done,
                    void *done_ud) {
  ck_assert_ptr_eq(ud, &q);
  ck_assert_int_ge(part, 0);
  ck_assert_int_lt(part, NPART);
  if (!names_ok(topic, group))
    q.bad_topic++;
  q.commit_calls++;
  if (q.fail_commit_sync > 0) {
    q.fail_commit_sync--;
    return IMC_ERR_UNAVAILABLE;
  }
  if (q.revoked & (1u << part)) {
    q.revocations++;
    if (q.revoked_sync)
      return IMC_ERR_REVOKED;
    done(done_ud, IMC_ERR_REVOKED);
    return 0;
  }
  later l = {L_COMMIT, done, NULL, done_ud, 0, 0, part, off};
  if (q.fail_commit_async > 0) {
    q.fail_commit_async--;
    l.status = IMC_ERR_IO;
  }
  if (q.async_commit) {
    later_push(l);
    return 0;
  }
  if (l.status == 0)
    commit_apply(part, off);
  done(done_ud, l.status);
  return 0;
}

static int q_publish(void *ud, const char *topic, const uint8_t *key,
                     size_t key_len, const uint8_t *value, size_t value_len,
                     imc_done_cb done, void *done_ud) {
  (void)ud, (void)topic, (void)key, (void)key_len, (void)value;
  (void)value_len, (void)done, (void)done_ud;
  return IMC_ERR_INTERNAL; /* the worker never publishes */
}

static const imc_bus_vtbl queue_vt = {sizeof(imc_bus_vtbl), q_publish, q_poll,
                                      q_commit};

static void q_add(int32_t part, const uint8_t *val, size_t len, mrec **out) {
  ck_assert_uint_lt(q.n, MAXREC);
  mrec *r = &q.recs[q.n++];
  memset(r, 0, sizeof(*r));
  r->val = malloc(len ? len : 1);
  if (len)
    memcpy(r->val, val, len);
  r->len = len;
  r->part = part;
  r->off = ++q.next_off[part];
  if (out)
    *out = r;
}

/* The OfflineJob record the router would queue for msg_id; free it. */
static uint8_t *pack_job(const char *id, int history, const char *const *users,
                         size_t n_users, size_t *len_out) {
  char body[100];
  snprintf(body, sizeof(body), "body:%s", id);
  Imchat__V1__Message m = IMCHAT__V1__MESSAGE__INIT;
  m.msg_id = (char *)id;
  m.conversation_id = "p:alice:bob";
  m.seq = 7;
  m.from_user = "alice";
  m.to_user = "bob";
  m.body.data = (uint8_t *)body;
  m.body.len = strlen(body);
  m.content_type = "text/plain";
  m.sent_at_ms = T0;
  m.client_msg_id = "c1";
  m.from_device = "phone";
  Imchat__V1__OfflineJob j = IMCHAT__V1__OFFLINE_JOB__INIT;
  j.message = &m;
  j.history = history;
  j.n_inbox_users = n_users;
  j.inbox_users = (char **)users;
  size_t len = imchat__v1__offline_job__get_packed_size(&j);
  uint8_t *buf = malloc(len ? len : 1);
  imchat__v1__offline_job__pack(&j, buf);
  *len_out = len;
  return buf;
}

/* Queues a job for msg_id, as the router would. */
static void add_job_part(int32_t part, const char *id, int history,
                         const char *const *users, size_t n_users) {
  size_t len;
  uint8_t *buf = pack_job(id, history, users, n_users, &len);
  mrec *r;
  q_add(part, buf, len, &r);
  free(buf);
  r->valid = 1;
  snprintf(r->id, sizeof(r->id), "%s", id);
  r->history = history;
  ck_assert_uint_le(n_users, MAXUSERS);
  for (size_t i = 0; i < n_users; i++)
    snprintf(r->users[i], sizeof(r->users[i]), "%s", users[i]);
  r->n_users = n_users;
}

static void add_job(const char *id, int history, const char *const *users,
                    size_t n_users) {
  add_job_part(0, id, history, users, n_users);
}

/* ------------------------------------------------------------------ */
/* Mock store                                                           */
/* ------------------------------------------------------------------ */

static void complete(int async, imc_done_cb done, void *done_ud, int status) {
  if (async) {
    later l = {L_DONE, done, NULL, done_ud, status, 0, 0, 0};
    later_push(l);
  } else {
    done(done_ud, status);
  }
}

/* The message must be whole wherever it comes from. */
static int msg_whole(const imc_msg *m) {
  char body[100];
  snprintf(body, sizeof(body), "body:%s", m->msg_id);
  return m->msg_id[0] && strcmp(m->conversation_id, "p:alice:bob") == 0 &&
         m->seq == 7 && strcmp(m->from_user, "alice") == 0 &&
         m->body_len == strlen(body) &&
         memcmp(m->body, body, m->body_len) == 0 &&
         strcmp(m->content_type, "text/plain") == 0 && m->sent_at_ms == T0;
}

static int s_append(void *ud, const imc_msg *const *msgs, size_t n_msgs,
                    const imc_inbox_entry *entries, size_t n_entries,
                    imc_done_cb done, void *done_ud) {
  ck_assert_ptr_eq(ud, &st);
  st.calls++;
  if (st.fail_sync > 0) {
    st.fail_sync--;
    return IMC_ERR_IO;
  }
  if (st.fail_async > 0) {
    st.fail_async--;
    complete(st.async, done, done_ud, IMC_ERR_IO);
    return 0;
  }
  /* Durable at once, like a committed transaction; repeats are ignored
   * but counted: they would be double persists without the store's
   * idempotence. */
  for (size_t i = 0; i < n_msgs; i++) {
    if (!msg_whole(msgs[i]))
      st.bad_entries++;
    if (msg_stored(msgs[i]->msg_id)) {
      st.reappends++;
      continue;
    }
    ck_assert_uint_lt(st.n_hist, MAXITEM);
    st.hist[st.n_hist++] = strdup(msgs[i]->msg_id);
  }
  for (size_t i = 0; i < n_entries; i++) {
    if (!msg_whole(entries[i].msg))
      st.bad_entries++;
    if (entry_stored(entries[i].user_id, entries[i].msg->msg_id)) {
      st.reappends++;
      continue;
    }
    ck_assert_uint_lt(st.n_inbox, MAXITEM);
    st.in_user[st.n_inbox] = strdup(entries[i].user_id);
    st.in_msg[st.n_inbox] = strdup(entries[i].msg->msg_id);
    st.n_inbox++;
  }
  if (st.appends < 64)
    st.sizes[st.appends] = n_msgs + n_entries;
  st.appends++;
  st.last_msgs = n_msgs;
  st.last_entries = n_entries;
  complete(st.async, done, done_ud, 0);
  return 0;
}

static int s_purge(void *ud, int64_t before_ms, imc_done_cb done,
                   void *done_ud) {
  ck_assert_ptr_eq(ud, &st);
  if (st.fail_purge_sync > 0) {
    st.fail_purge_sync--;
    return IMC_ERR_IO;
  }
  if (st.purges < 64)
    st.cutoffs[st.purges] = before_ms;
  st.purges++;
  complete(st.async_purge, done, done_ud, 0);
  return 0;
}

static const imc_store_vtbl store_vt = {
    sizeof(imc_store_vtbl), s_append, NULL, NULL, s_purge, NULL, NULL, NULL};

/* ------------------------------------------------------------------ */
/* Mock dedup map                                                       */
/* ------------------------------------------------------------------ */

static void mark(const char *key) {
  if (key_marked(key))
    return;
  ck_assert_uint_lt(dd.n, MAXITEM);
  dd.keys[dd.n++] = strdup(key);
}

/* A part persisted by an earlier run: in the store and marked. */
static void seed_history(const char *id) {
  char key[160];
  snprintf(key, sizeof(key), "persist:%s:h", id);
  mark(key);
  st.hist[st.n_hist++] = strdup(id);
}

static void seed_inbox(const char *id, const char *user) {
  char key[160];
  snprintf(key, sizeof(key), "persist:%s:u:%s", id, user);
  mark(key);
  st.in_user[st.n_inbox] = strdup(user);
  st.in_msg[st.n_inbox] = strdup(id);
  st.n_inbox++;
}

static int d_get(void *ud, const char *key, imc_dedup_cb done, void *done_ud) {
  ck_assert_ptr_eq(ud, &dd);
  dd.gets++;
  if (dd.fail_get_sync > 0) {
    dd.fail_get_sync--;
    return IMC_ERR_UNAVAILABLE;
  }
  later l = {L_DEDUP, NULL, done, done_ud, 0, key_marked(key), 0, 0};
  if (dd.fail_get_async > 0) {
    dd.fail_get_async--;
    l.status = IMC_ERR_IO;
    l.found = 0;
  } else if (!l.found && dd.not_found_status) {
    l.status = IMC_ERR_NOT_FOUND;
  }
  if (dd.async_get) {
    later_push(l);
    return 0;
  }
  done(done_ud, l.status, l.found, l.found ? (const uint8_t *)"1" : NULL,
       l.found ? 1 : 0);
  return 0;
}

static int d_set(void *ud, const char *key, const uint8_t *value,
                 size_t value_len, uint32_t ttl_s, imc_done_cb done,
                 void *done_ud) {
  ck_assert_ptr_eq(ud, &dd);
  ck_assert_uint_eq(value_len, 1);
  ck_assert_int_eq(value[0], '1');
  dd.sets++;
  dd.ttl = ttl_s;
  if (dd.fail_set_sync > 0) {
    dd.fail_set_sync--;
    return IMC_ERR_UNAVAILABLE;
  }
  if (dd.fail_set_async > 0) {
    dd.fail_set_async--;
    complete(dd.async_set, done, done_ud, IMC_ERR_IO);
    return 0;
  }
  mark(key);
  complete(dd.async_set, done, done_ud, 0);
  return 0;
}

static int d_tas(void *ud, const char *key, const uint8_t *value,
                 size_t value_len, uint32_t ttl_s, imc_dedup_cb done,
                 void *done_ud) {
  (void)ud, (void)key, (void)value, (void)value_len, (void)ttl_s;
  (void)done, (void)done_ud;
  return IMC_ERR_INTERNAL; /* the worker uses get and set */
}

static const imc_dedup_vtbl dedup_vt = {sizeof(imc_dedup_vtbl), d_tas, d_set,
                                        d_get, NULL};

/* ------------------------------------------------------------------ */
/* Hook and log                                                         */
/* ------------------------------------------------------------------ */

static int committed_id(const char *id) {
  for (size_t i = 0; i < q.n; i++)
    if (q.recs[i].valid && strcmp(q.recs[i].id, id) == 0 &&
        q.recs[i].off <= q.committed[q.recs[i].part])
      return 1;
  return 0;
}

static void hook(void *ud, const imc_msg *msg, int history,
                 const char *const *users, size_t n_users) {
  if (ud != &hk)
    hk.bad_ud++;
  if (!committed_id(msg->msg_id))
    hk.before_commit++;
  for (size_t i = 0; i < n_users; i++)
    ck_assert_ptr_nonnull(users[i]);
  ck_assert_int_lt(hk.calls, MAXITEM);
  hk.ids[hk.calls] = strdup(msg->msg_id);
  hk.history[hk.calls] = history;
  hk.n_users[hk.calls] = n_users;
  hk.calls++;
}

static int hook_count(const char *id) {
  int n = 0;
  for (int i = 0; i < hk.calls; i++)
    n += strcmp(hk.ids[i], id) == 0;
  return n;
}

static void log_cb(void *ud, imc_log_level level, const char *line) {
  (void)ud;
  if (level <= IMC_LOG_WARN)
    warn_lines++;
  snprintf(last_line, sizeof(last_line), "%s", line);
}

/* ------------------------------------------------------------------ */
/* Fixture                                                              */
/* ------------------------------------------------------------------ */

static void mocks_free(void) {
  for (size_t i = 0; i < q.n; i++)
    free(q.recs[i].val);
  for (size_t i = 0; i < st.n_hist; i++)
    free(st.hist[i]);
  for (size_t i = 0; i < st.n_inbox; i++) {
    free(st.in_user[i]);
    free(st.in_msg[i]);
  }
  for (size_t i = 0; i < dd.n; i++)
    free(dd.keys[i]);
  for (int i = 0; i < hk.calls; i++)
    free(hk.ids[i]);
}

static void mocks_reset(void) {
  memset(&q, 0, sizeof(q));
  memset(&st, 0, sizeof(st));
  memset(&dd, 0, sizeof(dd));
  memset(&hk, 0, sizeof(hk));
  later_drop();
  warn_lines = 0;
  last_line[0] = '\0';
}

static void setup(void) {
  test_mem_init(&tm);
  test_clock_init(&tc, T0);
  mocks_reset();
}

static void teardown(void) {
  mocks_free();
  mocks_reset();
}

typedef struct wcfg {
  uint32_t batch_max; /* 0: default */
  uint32_t retention_s, purge_interval_s;
  const imc_bus_vtbl *queue; /* NULL: the mock queue */
  void *queue_ud;
} wcfg;

static int try_worker(imc_worker **out, const wcfg *cfg) {
  imc_worker_options *o = NULL;
  int rv = imc_worker_options_new(&o, &tm.mem);
  if (rv != 0)
    return rv;
  if (cfg && cfg->queue)
    ck_assert_int_eq(imc_worker_options_set_queue(o, cfg->queue, cfg->queue_ud),
                     0);
  else
    ck_assert_int_eq(imc_worker_options_set_queue(o, &queue_vt, &q), 0);
  ck_assert_int_eq(imc_worker_options_set_store(o, &store_vt, &st), 0);
  ck_assert_int_eq(imc_worker_options_set_dedup(o, &dedup_vt, &dd), 0);
  ck_assert_int_eq(imc_worker_options_set_persisted(o, hook, &hk), 0);
  ck_assert_int_eq(imc_worker_options_set_clock(o, &tc.clock), 0);
  ck_assert_int_eq(imc_worker_options_set_log(o, log_cb, NULL, IMC_LOG_DEBUG),
                   0);
  if (cfg && cfg->batch_max)
    ck_assert_int_eq(imc_worker_options_set_batch_max(o, cfg->batch_max), 0);
  if (cfg && cfg->retention_s)
    ck_assert_int_eq(imc_worker_options_set_retention_s(o, cfg->retention_s),
                     0);
  if (cfg && cfg->purge_interval_s)
    ck_assert_int_eq(
        imc_worker_options_set_purge_interval_s(o, cfg->purge_interval_s), 0);
  rv = imc_worker_new(out, o, &tm.mem);
  imc_worker_options_del(o);
  return rv;
}

static imc_worker *mk_worker(const wcfg *cfg) {
  imc_worker *w = NULL;
  ck_assert_int_eq(try_worker(&w, cfg), 0);
  return w;
}

/* Runs the "event loop" until nothing moves. */
static void run(void) {
  while (mq_dispatch() + flush_all() > 0)
    ;
}

/* Advances the clock by ms and fires the worker's timers. */
static void tick(imc_worker *w, int64_t ms) {
  test_clock_advance(&tc, ms);
  ck_assert_int_eq(imc_worker_on_timeout(w), 0);
}

static void del_worker(imc_worker *w) {
  imc_worker_del(w);
  ck_assert_int_eq(tm.live, 0);
}

static const char *const BOB[] = {"bob"};
static const char *const BOB_CAROL[] = {"bob", "carol"};

/* ------------------------------------------------------------------ */
/* Tests                                                                */
/* ------------------------------------------------------------------ */

START_TEST(test_options) {
  imc_worker_options *o = NULL;
  imc_worker *w = NULL;
  ck_assert_int_eq(imc_worker_options_new(NULL, &tm.mem),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_options_new(&o, &tm.mem), 0);
  ck_assert_int_eq(imc_worker_options_set_queue(o, NULL, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_options_set_store(NULL, &store_vt, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_options_set_dedup(o, NULL, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_options_set_batch_max(o, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_options_set_batch_max(o, 65537),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_options_set_retention_s(o, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_options_set_purge_interval_s(o, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_options_set_dedup_ttl_s(o, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_options_set_persisted(NULL, hook, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_options_set_clock(NULL, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_options_set_log(NULL, NULL, NULL, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_options_set_clock(o, NULL), 0);
  ck_assert_int_eq(imc_worker_options_set_dedup_ttl_s(o, 60), 0);

  /* Each required vtable missing in turn. */
  ck_assert_int_eq(imc_worker_new(&w, o, &tm.mem), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_options_set_queue(o, &queue_vt, &q), 0);
  ck_assert_int_eq(imc_worker_new(&w, o, &tm.mem), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_options_set_store(o, &store_vt, &st), 0);
  ck_assert_int_eq(imc_worker_new(&w, o, &tm.mem), IMC_ERR_INVALID_ARGUMENT);
  /* A dedup vtable from an older build without get and set. */
  imc_dedup_vtbl old = dedup_vt;
  old.struct_size = offsetof(imc_dedup_vtbl, set);
  ck_assert_int_eq(imc_worker_options_set_dedup(o, &old, &dd), 0);
  ck_assert_int_eq(imc_worker_new(&w, o, &tm.mem), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_options_set_dedup(o, &dedup_vt, &dd), 0);
  ck_assert_int_eq(imc_worker_new(NULL, o, &tm.mem), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_new(&w, NULL, &tm.mem), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_new(&w, o, &tm.mem), 0);
  imc_worker_options_del(o);
  imc_worker_options_del(NULL);

  /* Fresh worker: healthy, idle, no timers before start. */
  ck_assert_int_eq(imc_worker_healthy(w), 1);
  ck_assert_uint_eq(imc_worker_pending(w), 0);
  ck_assert_int_eq(imc_worker_next_timeout_ms(w), -1);
  int x;
  imc_worker_set_user_data(w, &x);
  ck_assert_ptr_eq(imc_worker_get_user_data(w), &x);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_COUNT_), 0);
  ck_assert_uint_eq(imc_worker_stat_get(w, (imc_worker_stat)-1), 0);

  /* NULL is refused everywhere. */
  ck_assert_int_eq(imc_worker_start(NULL), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_stop(NULL), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_on_timeout(NULL), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_next_timeout_ms(NULL), -1);
  ck_assert_uint_eq(imc_worker_pending(NULL), 0);
  ck_assert_int_eq(imc_worker_healthy(NULL), 0);
  ck_assert_uint_eq(imc_worker_stat_get(NULL, IMC_WK_STAT_JOBS), 0);
  ck_assert_ptr_null(imc_worker_get_user_data(NULL));
  imc_worker_set_user_data(NULL, NULL);
  imc_worker_del(NULL);
  del_worker(w);
}
END_TEST

START_TEST(test_batch) {
  add_job("m1", 1, BOB_CAROL, 2);
  add_job("m2", 1, NULL, 0);
  add_job("m3", 0, BOB, 1);
  imc_worker *w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  ck_assert_int_eq(q.polls, 1);
  ck_assert_uint_eq(q.max, 256);
  ck_assert_uint_eq(imc_worker_pending(w), 1);

  ck_assert_int_eq(mq_dispatch(), 1);
  ck_assert_int_eq(st.appends, 1);
  ck_assert_uint_eq(st.last_msgs, 2);
  ck_assert_uint_eq(st.last_entries, 3);
  ck_assert_int_eq(st.bad_entries, 0);
  ck_assert(msg_stored("m1") && msg_stored("m2") && !msg_stored("m3"));
  ck_assert(entry_stored("bob", "m1") && entry_stored("carol", "m1"));
  ck_assert(entry_stored("bob", "m3"));
  ck_assert_int_eq(dd.gets, 5);
  ck_assert_uint_eq(dd.n, 5);
  ck_assert(key_marked("persist:m1:h"));
  ck_assert(key_marked("persist:m1:u:carol"));
  ck_assert(key_marked("persist:m3:u:bob"));
  ck_assert(!key_marked("persist:m3:h"));
  ck_assert_uint_eq(dd.ttl, 7 * 24 * 3600);
  ck_assert_int_eq(q.commits, 1);
  ck_assert_uint_eq(q.committed[0], 3);
  ck_assert_int_eq(q.violations, 0);
  ck_assert_int_eq(q.bad_topic, 0);

  ck_assert_int_eq(hk.calls, 3);
  ck_assert_int_eq(hk.before_commit, 0);
  ck_assert_int_eq(hk.bad_ud, 0);
  ck_assert_str_eq(hk.ids[0], "m1");
  ck_assert_int_eq(hk.history[0], 1);
  ck_assert_uint_eq(hk.n_users[0], 2);
  ck_assert_int_eq(hk.history[2], 0);
  ck_assert_uint_eq(hk.n_users[2], 1);

  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_BATCHES), 1);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_JOBS), 3);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_DUPLICATES), 0);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_LAST_BATCH), 3);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_FAILURES), 0);
  ck_assert_int_eq(imc_worker_healthy(w), 1);
  /* Polling again for the next batch. */
  ck_assert_int_eq(q.polls, 2);
  ck_assert_uint_eq(imc_worker_pending(w), 1);
  ck_assert_int_eq(warn_lines, 0);
  del_worker(w);
}
END_TEST

START_TEST(test_one_append_per_batch) {
  char id[16];
  for (int i = 0; i < 300; i++) {
    snprintf(id, sizeof(id), "m%03d", i);
    add_job(id, 1, BOB, 1);
  }
  imc_worker *w = mk_worker(&(wcfg){.batch_max = 256});
  ck_assert_int_eq(imc_worker_start(w), 0);
  run();
  ck_assert_int_eq(st.appends, 2);
  ck_assert_uint_eq(st.sizes[0], 512);
  ck_assert_uint_eq(st.sizes[1], 88);
  ck_assert_int_eq(q.commits, 2);
  ck_assert_uint_eq(q.committed[0], 300);
  ck_assert_int_eq(q.violations, 0);
  ck_assert_int_eq(hk.calls, 300);
  ck_assert_int_eq(hk.before_commit, 0);
  ck_assert_uint_eq(st.n_hist, 300);
  ck_assert_uint_eq(st.n_inbox, 300);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_BATCHES), 2);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_JOBS), 300);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_LAST_BATCH), 44);
  del_worker(w);
}
END_TEST

/* With every completion held, each step waits for the previous one. */
START_TEST(test_step_order) {
  dd.async_get = dd.async_set = st.async = q.async_commit = 1;
  add_job("m1", 1, NULL, 0);
  add_job("m2", 0, BOB, 1);
  imc_worker *w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  ck_assert_int_eq(mq_dispatch(), 1);
  ck_assert_int_eq(dd.gets, 2);
  ck_assert_uint_eq(imc_worker_pending(w), 2);
  ck_assert_int_eq(flush_one(), 1); /* first get */
  ck_assert_int_eq(st.calls, 0);
  ck_assert_int_eq(flush_one(), 1); /* second get */
  ck_assert_int_eq(st.calls, 1);    /* one append for both */
  ck_assert_int_eq(dd.sets, 0);
  ck_assert_uint_eq(imc_worker_pending(w), 1);
  ck_assert_int_eq(flush_one(), 1); /* append done */
  ck_assert_int_eq(dd.sets, 2);
  ck_assert_int_eq(q.commit_calls, 0);
  ck_assert_int_eq(flush_one(), 1);
  ck_assert_int_eq(q.commit_calls, 0); /* one set still out */
  ck_assert_int_eq(flush_one(), 1);
  ck_assert_int_eq(q.commit_calls, 1);
  ck_assert_int_eq(q.commits, 0);
  ck_assert_int_eq(hk.calls, 0);
  ck_assert_int_eq(q.polls, 1);
  ck_assert_int_eq(flush_one(), 1); /* commit done */
  ck_assert_int_eq(q.commits, 1);
  ck_assert_int_eq(hk.calls, 2);
  ck_assert_int_eq(hk.before_commit, 0);
  ck_assert_int_eq(q.violations, 0);
  ck_assert_int_eq(q.polls, 2);
  ck_assert_int_eq(flush_one(), 0);
  del_worker(w);
}
END_TEST

START_TEST(test_duplicates) {
  seed_history("m1");
  seed_inbox("m1", "bob");
  seed_history("m2");
  dd.not_found_status = 1; /* misses reported as NOT_FOUND */
  add_job("m1", 1, BOB, 1);
  add_job("m2", 1, BOB, 1);
  add_job("m3", 1, NULL, 0);
  add_job("m3", 1, NULL, 0); /* republished in the same batch */
  const char *twice[] = {"bob", "bob"};
  add_job("m4", 0, twice, 2);
  imc_worker *w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  run();
  ck_assert_int_eq(dd.gets, 6); /* in-batch repeats not asked */
  ck_assert_int_eq(st.appends, 1);
  ck_assert_uint_eq(st.last_msgs, 1);    /* m3 */
  ck_assert_uint_eq(st.last_entries, 2); /* m2/bob, m4/bob */
  ck_assert_int_eq(st.reappends, 0);
  ck_assert_int_eq(st.bad_entries, 0); /* m2/bob carries the full message */
  ck_assert_uint_eq(st.n_hist, 3);
  ck_assert_uint_eq(st.n_inbox, 3);
  ck_assert(entry_stored("bob", "m2") && entry_stored("bob", "m4"));
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_DUPLICATES), 2);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_JOBS), 3);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_LAST_BATCH), 5);
  /* Every job is reported, duplicates included. */
  ck_assert_int_eq(hk.calls, 5);
  ck_assert_int_eq(hook_count("m1"), 1);
  ck_assert_int_eq(hook_count("m3"), 2);
  ck_assert_uint_eq(q.committed[0], 5);
  ck_assert_int_eq(q.violations, 0);
  del_worker(w);
}
END_TEST

START_TEST(test_store_fails_sync) {
  st.fail_sync = 3;
  add_job("m1", 1, BOB, 1);
  add_job("m2", 1, NULL, 0);
  imc_worker *w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  run();
  ck_assert_int_eq(st.calls, 1);
  ck_assert_int_eq(st.appends, 0);
  ck_assert_int_eq(q.commit_calls, 0);
  ck_assert_int_eq(hk.calls, 0);
  ck_assert_int_eq(imc_worker_healthy(w), 0);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_FAILURES), 1);
  ck_assert_int_eq(warn_lines, 1);
  ck_assert_ptr_nonnull(strstr(last_line, "store append"));
  ck_assert_uint_eq(imc_worker_pending(w), 1); /* the batch is held */
  ck_assert_int_eq(imc_worker_next_timeout_ms(w), 100);
  tick(w, 99);
  ck_assert_int_eq(st.calls, 1);
  tick(w, 1);
  ck_assert_int_eq(st.calls, 2);
  ck_assert_int_eq(imc_worker_next_timeout_ms(w), 200);
  tick(w, 200);
  ck_assert_int_eq(st.calls, 3);
  ck_assert_int_eq(imc_worker_next_timeout_ms(w), 400);
  tick(w, 400);
  ck_assert_int_eq(st.calls, 4);
  ck_assert_int_eq(st.appends, 1);
  ck_assert_int_eq(dd.gets, 3); /* the gets were not repeated */
  ck_assert_int_eq(q.commits, 1);
  ck_assert_int_eq(q.violations, 0);
  ck_assert_int_eq(hk.calls, 2);
  ck_assert_int_eq(imc_worker_healthy(w), 1);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_FAILURES), 3);
  /* Success resets the backoff. */
  st.fail_sync = 1;
  add_job("m3", 1, NULL, 0);
  run();
  ck_assert_int_eq(imc_worker_next_timeout_ms(w), 100);
  tick(w, 100);
  ck_assert_int_eq(hk.calls, 3);
  ck_assert_int_eq(st.reappends, 0);
  del_worker(w);
}
END_TEST

START_TEST(test_store_fails_async) {
  st.async = 1;
  st.fail_async = 2;
  add_job("m1", 1, BOB, 1);
  imc_worker *w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  run();
  ck_assert_int_eq(st.calls, 1);
  ck_assert_int_eq(imc_worker_healthy(w), 0);
  ck_assert_int_eq(q.commit_calls, 0);
  tick(w, 100);
  run();
  ck_assert_int_eq(st.calls, 2);
  ck_assert_int_eq(q.commit_calls, 0);
  tick(w, 200);
  run();
  ck_assert_int_eq(st.calls, 3);
  ck_assert_int_eq(st.appends, 1);
  ck_assert_int_eq(q.commits, 1);
  ck_assert_int_eq(hk.calls, 1);
  ck_assert_int_eq(q.violations, 0);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_FAILURES), 2);
  ck_assert_int_eq(imc_worker_healthy(w), 1);
  del_worker(w);
}
END_TEST

START_TEST(test_backoff_cap) {
  static const int64_t waits[] = {100,  200,  400,   800,   1600,
                                  3200, 6400, 10000, 10000, 10000};
  st.fail_sync = 10;
  add_job("m1", 1, NULL, 0);
  imc_worker *w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  run();
  for (int i = 0; i < 10; i++) {
    ck_assert_int_eq(imc_worker_next_timeout_ms(w), waits[i]);
    tick(w, waits[i]);
  }
  ck_assert_int_eq(st.appends, 1);
  ck_assert_int_eq(hk.calls, 1);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_FAILURES), 10);
  del_worker(w);
}
END_TEST

START_TEST(test_dedup_get_fails) {
  dd.fail_get_sync = 1;
  add_job("m1", 1, BOB_CAROL, 2);
  imc_worker *w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  run();
  ck_assert_int_eq(st.calls, 0);
  ck_assert_int_eq(imc_worker_healthy(w), 0);
  ck_assert_int_eq(dd.gets, 1); /* stops at the first failure */
  tick(w, 100);
  ck_assert_int_eq(dd.gets, 4);
  ck_assert_int_eq(st.appends, 1);
  ck_assert_int_eq(hk.calls, 1);

  /* A get failing in its completion while others succeed: only that one
   * is asked again. */
  dd.async_get = 1;
  dd.fail_get_async = 1;
  add_job("m2", 1, BOB_CAROL, 2);
  run();
  ck_assert_int_eq(dd.gets, 7);
  ck_assert_int_eq(st.calls, 1);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_FAILURES), 2);
  tick(w, 100);
  run();
  ck_assert_int_eq(dd.gets, 8);
  ck_assert_int_eq(st.appends, 2);
  ck_assert_uint_eq(st.last_msgs + st.last_entries, 3);
  ck_assert_int_eq(hk.calls, 2);
  ck_assert_int_eq(q.violations, 0);
  ck_assert_int_eq(st.reappends, 0);
  del_worker(w);
}
END_TEST

START_TEST(test_dedup_set_fails) {
  dd.fail_set_sync = 1;
  add_job("m1", 1, BOB, 1);
  imc_worker *w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  run();
  ck_assert_int_eq(st.appends, 1);
  ck_assert_int_eq(q.commit_calls, 0);
  ck_assert_int_eq(imc_worker_healthy(w), 0);
  tick(w, 100);
  ck_assert_int_eq(st.calls, 1); /* not appended again */
  ck_assert_int_eq(q.commits, 1);
  ck_assert_int_eq(hk.calls, 1);

  dd.async_set = 1;
  dd.fail_set_async = 1;
  add_job("m2", 1, BOB, 1);
  run();
  ck_assert_int_eq(st.calls, 2);
  ck_assert_int_eq(q.commits, 1);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_FAILURES), 2);
  int sets = dd.sets;
  tick(w, 100);
  run();
  ck_assert_int_eq(dd.sets, sets + 1); /* only the failed key again */
  ck_assert_int_eq(st.calls, 2);
  ck_assert_int_eq(q.commits, 2);
  ck_assert_int_eq(hk.calls, 2);
  ck_assert_int_eq(q.violations, 0);
  del_worker(w);
}
END_TEST

START_TEST(test_commit_fails) {
  q.fail_commit_sync = 1;
  add_job("m1", 1, BOB, 1);
  imc_worker *w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  run();
  ck_assert_int_eq(st.appends, 1);
  ck_assert_int_eq(q.commits, 0);
  ck_assert_int_eq(hk.calls, 0);
  ck_assert_int_eq(imc_worker_healthy(w), 0);
  ck_assert_int_eq(q.polls, 1);
  tick(w, 100);
  ck_assert_int_eq(q.commits, 1);
  ck_assert_int_eq(hk.calls, 1);
  ck_assert_int_eq(st.calls, 1);
  ck_assert_int_eq(dd.sets, 2);

  q.async_commit = 1;
  q.fail_commit_async = 1;
  add_job("m2", 1, NULL, 0);
  run();
  ck_assert_int_eq(q.commits, 1);
  ck_assert_int_eq(hk.calls, 1);
  tick(w, 100);
  run();
  ck_assert_int_eq(q.commits, 2);
  ck_assert_int_eq(hk.calls, 2);
  ck_assert_int_eq(st.calls, 2);
  ck_assert_int_eq(hk.before_commit, 0);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_FAILURES), 2);
  del_worker(w);
}
END_TEST

START_TEST(test_partitions) {
  add_job_part(0, "a1", 1, NULL, 0);
  add_job_part(1, "b1", 1, NULL, 0);
  add_job_part(0, "a2", 1, NULL, 0);
  add_job_part(1, "b2", 1, NULL, 0);
  add_job_part(1, "b3", 1, NULL, 0);
  q.async_commit = 1;
  q.fail_commit_async = 1;
  imc_worker *w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  run();
  ck_assert_int_eq(q.commit_calls, 2);
  ck_assert_uint_eq(q.committed[0], 0); /* the first commit failed */
  ck_assert_uint_eq(q.committed[1], 3);
  ck_assert_int_eq(hk.calls, 0);
  tick(w, 100);
  run();
  ck_assert_int_eq(q.commit_calls, 3);
  ck_assert_uint_eq(q.committed[0], 2);
  ck_assert_int_eq(hk.calls, 5);
  ck_assert_int_eq(st.appends, 1);
  ck_assert_int_eq(q.violations, 0);
  del_worker(w);
}
END_TEST

/* A rebalance took partition 1 while its batch was in hand: its commit
 * completes with IMC_ERR_REVOKED and is not retried; partition 0 is
 * committed; nothing counts as a failure. When the partition's records
 * come back (to this worker as the new owner), the dedup set recognises
 * them and nothing is appended twice. */
static void check_revoked(int sync) {
  add_job_part(0, "a1", 1, NULL, 0);
  add_job_part(1, "b1", 1, NULL, 0);
  add_job_part(0, "a2", 1, NULL, 0);
  add_job_part(1, "b2", 1, NULL, 0);
  q.revoked = 1u << 1;
  q.revoked_sync = sync;
  imc_worker *w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  run();
  ck_assert_int_eq(q.revocations, 1);
  ck_assert_uint_eq(q.committed[0], 2);
  ck_assert_uint_eq(q.committed[1], 0);
  ck_assert_int_eq(st.appends, 1);
  ck_assert_int_eq(hk.calls, 4); /* persisted all the same */
  ck_assert_int_eq(imc_worker_healthy(w), 1);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_FAILURES), 0);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_REVOKED), 1);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_BATCHES), 1);
  /* No retry is scheduled: only the purge timer remains. */
  ck_assert_int_gt(imc_worker_next_timeout_ms(w), 10000);
  tick(w, 10000);
  run();
  ck_assert_int_eq(q.commit_calls, 2);
  ck_assert_int_eq(q.revocations, 1);
  ck_assert_uint_eq(imc_worker_pending(w), 1); /* the next poll */

  /* The partition is assigned back: its uncommitted records come again. */
  q.revoked = 0;
  for (size_t i = 0; i < q.n; i++)
    if (q.recs[i].part == 1)
      q.recs[i].delivered = 0;
  run();
  ck_assert_uint_eq(q.committed[1], 2);
  ck_assert_int_eq(st.appends, 1);
  ck_assert_int_eq(st.reappends, 0);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_DUPLICATES), 2);
  ck_assert_int_eq(q.violations, 0);
  del_worker(w);
}

START_TEST(test_commit_revoked) {
  check_revoked(0);
}
END_TEST

START_TEST(test_commit_revoked_sync) {
  check_revoked(1);
}
END_TEST

/* Topic and group come from the options. */
START_TEST(test_topic_group) {
  imc_worker_options *o = NULL;
  ck_assert_int_eq(imc_worker_options_new(&o, &tm.mem), 0);
  ck_assert_int_eq(imc_worker_options_set_topic(NULL, "t"),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_options_set_topic(o, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_options_set_topic(o, ""),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_worker_options_set_group(o, ""),
                   IMC_ERR_INVALID_ARGUMENT);
  char longname[200];
  memset(longname, 'x', sizeof(longname) - 1);
  longname[sizeof(longname) - 1] = '\0';
  ck_assert_int_eq(imc_worker_options_set_group(o, longname),
                   IMC_ERR_INVALID_ARGUMENT);
  longname[128] = '\0';
  ck_assert_int_eq(imc_worker_options_set_group(o, longname),
                   IMC_ERR_INVALID_ARGUMENT);
  longname[127] = '\0';
  ck_assert_int_eq(imc_worker_options_set_group(o, longname), 0);
  char topic[16] = "jobs-eu";
  ck_assert_int_eq(imc_worker_options_set_topic(o, topic), 0);
  ck_assert_int_eq(imc_worker_options_set_group(o, "persister"), 0);
  memset(topic, 0, sizeof(topic)); /* copied */
  ck_assert_int_eq(imc_worker_options_set_queue(o, &queue_vt, &q), 0);
  ck_assert_int_eq(imc_worker_options_set_store(o, &store_vt, &st), 0);
  ck_assert_int_eq(imc_worker_options_set_dedup(o, &dedup_vt, &dd), 0);
  imc_worker *w = NULL;
  ck_assert_int_eq(imc_worker_new(&w, o, &tm.mem), 0);
  imc_worker_options_del(o);
  q.topic = "jobs-eu";
  q.group = "persister";
  add_job("m1", 1, BOB, 1);
  ck_assert_int_eq(imc_worker_start(w), 0);
  run();
  ck_assert_int_eq(q.bad_topic, 0);
  ck_assert_int_eq(q.commits, 1);
  ck_assert_int_eq(q.polls, 2);
  del_worker(w);
}
END_TEST

START_TEST(test_poll_fails) {
  q.fail_poll_sync = 1;
  imc_worker *w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(imc_worker_healthy(w), 0);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_FAILURES), 1);
  ck_assert_int_eq(imc_worker_next_timeout_ms(w), 100);
  ck_assert_int_eq(q.polls, 0);
  tick(w, 100);
  ck_assert_int_eq(q.polls, 1);
  q.fail_poll_async = 1;
  ck_assert_int_eq(mq_dispatch(), 1);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_FAILURES), 2);
  ck_assert_int_eq(imc_worker_next_timeout_ms(w), 200);
  tick(w, 200);
  ck_assert_int_eq(q.polls, 2);
  add_job("m1", 1, NULL, 0);
  run();
  ck_assert_int_eq(hk.calls, 1);
  ck_assert_int_eq(imc_worker_healthy(w), 1);
  /* Starting twice is harmless. */
  ck_assert_int_eq(imc_worker_start(w), 0);
  ck_assert_int_eq(q.polls, 3);
  del_worker(w);
}
END_TEST

/* A queue that completes polls inside poll(): batches run in a loop, not
 * in ever deeper recursion. */
START_TEST(test_sync_queue) {
  char id[16];
  for (int i = 0; i < 1000; i++) {
    snprintf(id, sizeof(id), "m%04d", i);
    add_job(id, 1, NULL, 0);
  }
  q.sync_poll = 1;
  imc_worker *w = mk_worker(&(wcfg){.batch_max = 1});
  ck_assert_int_eq(imc_worker_start(w), 0);
  ck_assert_int_eq(st.appends, 1000);
  ck_assert_uint_eq(q.committed[0], 1000);
  ck_assert_int_eq(hk.calls, 1000);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_BATCHES), 1000);
  ck_assert_uint_eq(imc_worker_pending(w), 1);
  del_worker(w);
}
END_TEST

/* The process dies after the store and the dedup marks, before the
 * commit: the redelivered jobs are recognised, nothing is appended again
 * and nothing is lost. */
START_TEST(test_crash_before_commit) {
  q.async_commit = 1;
  add_job("m1", 1, BOB, 1);
  add_job("m2", 1, BOB_CAROL, 2);
  add_job("m3", 0, BOB, 1);
  imc_worker *w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  ck_assert_int_eq(mq_dispatch(), 1);
  ck_assert_int_eq(st.appends, 1);
  ck_assert_int_eq(q.commit_calls, 1);
  ck_assert_int_eq(q.commits, 0);
  mq_crash();
  del_worker(w);

  q.async_commit = 0;
  w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  run();
  ck_assert_int_eq(st.appends, 1); /* nothing new to append */
  ck_assert_int_eq(st.calls, 1);
  ck_assert_int_eq(st.reappends, 0);
  ck_assert_uint_eq(q.committed[0], 3);
  ck_assert_int_eq(q.violations, 0);
  ck_assert_uint_eq(st.n_hist, 2);
  ck_assert_uint_eq(st.n_inbox, 4);
  ck_assert_int_eq(hk.calls, 3);
  ck_assert_int_eq(hook_count("m1"), 1);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_DUPLICATES), 3);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_JOBS), 0);
  del_worker(w);
}
END_TEST

/* Dying between the append and the dedup marks: the jobs are appended
 * again, which the store ignores (it keeps msg_ids and (user, msg_id)
 * once): still nothing lost and nothing stored twice. */
START_TEST(test_crash_before_marks) {
  dd.async_set = 1;
  add_job("m1", 1, BOB, 1);
  add_job("m2", 1, NULL, 0);
  imc_worker *w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  ck_assert_int_eq(mq_dispatch(), 1);
  ck_assert_int_eq(st.appends, 1);
  ck_assert_int_eq(dd.sets, 3);
  ck_assert_uint_eq(dd.n, 3); /* written, not acknowledged */
  /* The set never made it: forget the marks. */
  for (size_t i = 0; i < dd.n; i++)
    free(dd.keys[i]);
  dd.n = 0;
  mq_crash();
  del_worker(w);

  dd.async_set = 0;
  w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  run();
  ck_assert_int_eq(st.appends, 2);
  ck_assert_int_eq(st.reappends, 3);
  ck_assert_uint_eq(st.n_hist, 2);
  ck_assert_uint_eq(st.n_inbox, 1);
  ck_assert_uint_eq(q.committed[0], 2);
  ck_assert_int_eq(q.violations, 0);
  ck_assert_int_eq(hk.calls, 2);
  del_worker(w);
}
END_TEST

/* Strings that are not UTF-8 or hold NUL make a record bad before it is
 * decoded: protobuf-c would take them, and "bo\0b" would become "bo". */
START_TEST(test_bad_string_records) {
  /* Jobs that pass every other check. OfflineJob{message{msg_id "m\xff1",
   * conversation_id "p:a:b"}, history} */
  static const uint8_t bad_id[] = {0x0a, 0x0c, 0x0a, 0x03, 'm', 0xff,
                                   '1',  0x12, 0x05, 'p',  ':', 'a',
                                   ':',  'b',  0x10, 0x01};
  /* OfflineJob{message{msg_id "m2", conversation_id "p:a:b"},
   * inbox_users "bo\0b"} */
  static const uint8_t nul_user[] = {0x0a, 0x0b, 0x0a, 0x02, 'm', '2', 0x12,
                                     0x05, 'p',  ':',  'a',  ':', 'b', 0x1a,
                                     0x04, 'b',  'o',  0x00, 'b'};
  q_add(0, bad_id, sizeof(bad_id), NULL);
  q_add(0, nul_user, sizeof(nul_user), NULL);
  add_job("m5", 1, NULL, 0);
  imc_worker *w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  run();
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_BAD_RECORDS), 2);
  ck_assert_int_eq(st.appends, 1);
  ck_assert_uint_eq(st.last_msgs, 1);
  ck_assert_uint_eq(st.n_inbox, 0);
  ck_assert_uint_eq(q.committed[0], 3);
  del_worker(w);
}
END_TEST

START_TEST(test_bad_records) {
  const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff};
  q_add(0, junk, sizeof(junk), NULL);
  add_job("m1", 1, BOB, 1);
  /* A job without a message. */
  Imchat__V1__OfflineJob j = IMCHAT__V1__OFFLINE_JOB__INIT;
  j.history = 1;
  uint8_t buf[64];
  size_t len = imchat__v1__offline_job__pack(&j, buf);
  q_add(0, buf, len, NULL);
  add_job("", 1, NULL, 0);   /* no msg_id */
  add_job("m2", 0, NULL, 0); /* nothing to persist */
  const char *bad_user[] = {"no spaces"};
  add_job("m3", 0, bad_user, 1); /* not an id */
  q.recs[q.n - 3].valid = 0;
  q.recs[q.n - 2].valid = 0;
  q.recs[q.n - 1].valid = 0;
  q_add(0, NULL, 0, NULL); /* empty value */
  add_job("m4", 1, NULL, 0);
  imc_worker *w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  run();
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_BAD_RECORDS), 6);
  ck_assert_int_eq(warn_lines, 6);
  ck_assert_int_eq(st.appends, 1);
  ck_assert_uint_eq(st.last_msgs, 2);
  ck_assert_uint_eq(st.last_entries, 1);
  ck_assert_uint_eq(q.committed[0], 8);
  ck_assert_int_eq(hk.calls, 2);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_LAST_BATCH), 2);
  ck_assert_int_eq(imc_worker_healthy(w), 1);

  /* A batch of nothing but junk is committed without an append. */
  q_add(0, junk, sizeof(junk), NULL);
  run();
  ck_assert_int_eq(st.calls, 1);
  ck_assert_uint_eq(q.committed[0], 9);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_BATCHES), 2);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_BAD_RECORDS), 7);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_LAST_BATCH), 0);
  del_worker(w);
}
END_TEST

START_TEST(test_purge) {
  imc_worker *w =
      mk_worker(&(wcfg){.retention_s = 3600, .purge_interval_s = 60});
  ck_assert_int_eq(imc_worker_start(w), 0);
  ck_assert_int_eq(st.purges, 1);
  ck_assert_int_eq(st.cutoffs[0], T0 - 3600 * 1000);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_PURGES), 1);
  ck_assert_int_eq(imc_worker_next_timeout_ms(w), 60000);
  tick(w, 59999);
  ck_assert_int_eq(st.purges, 1);
  tick(w, 1);
  ck_assert_int_eq(st.purges, 2);
  ck_assert_int_eq(st.cutoffs[1], T0 + 60000 - 3600 * 1000);
  ck_assert_int_eq(imc_worker_next_timeout_ms(w), 60000);

  st.fail_purge_sync = 1;
  tick(w, 60000);
  ck_assert_int_eq(st.purges, 2);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_PURGES), 2);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_FAILURES), 1);
  ck_assert_int_eq(imc_worker_healthy(w), 0);

  /* An asynchronous purge counts as pending until it completes; a second
   * one is not started meanwhile. */
  st.async_purge = 1;
  tick(w, 60000);
  ck_assert_int_eq(st.purges, 3);
  ck_assert_uint_eq(imc_worker_pending(w), 2);
  tick(w, 60000);
  ck_assert_int_eq(st.purges, 3);
  flush_all();
  ck_assert_uint_eq(imc_worker_pending(w), 1);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_PURGES), 3);
  ck_assert_int_eq(imc_worker_healthy(w), 1);

  ck_assert_int_eq(imc_worker_stop(w), 0);
  ck_assert_int_eq(imc_worker_next_timeout_ms(w), -1);
  tick(w, 3600000);
  ck_assert_int_eq(st.purges, 3);
  mq_close();
  del_worker(w);
}
END_TEST

START_TEST(test_stop_idle) {
  imc_worker *w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  ck_assert_uint_eq(imc_worker_pending(w), 1);
  ck_assert_int_eq(imc_worker_stop(w), 0);
  /* The idle poll no longer counts: the host closes the queue next. */
  ck_assert_uint_eq(imc_worker_pending(w), 0);
  ck_assert_int_eq(imc_worker_next_timeout_ms(w), -1);
  mq_close();
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_FAILURES), 0);
  ck_assert_int_eq(imc_worker_healthy(w), 1);
  ck_assert_int_eq(imc_worker_next_timeout_ms(w), -1);
  ck_assert_int_eq(q.polls, 1);
  ck_assert_uint_eq(imc_worker_pending(w), 0);
  /* Started again, it polls again. */
  ck_assert_int_eq(imc_worker_start(w), 0);
  ck_assert_int_eq(q.polls, 2);
  ck_assert_uint_eq(imc_worker_pending(w), 1);
  ck_assert_int_eq(imc_worker_stop(w), 0);
  mq_close();
  del_worker(w);
}
END_TEST

START_TEST(test_stop_in_batch) {
  st.async = 1;
  add_job("m1", 1, BOB, 1);
  imc_worker *w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  ck_assert_int_eq(mq_dispatch(), 1);
  ck_assert_int_eq(imc_worker_stop(w), 0);
  ck_assert_uint_eq(imc_worker_pending(w), 1);
  flush_all();
  ck_assert_int_eq(q.commits, 1);
  ck_assert_int_eq(hk.calls, 1);
  ck_assert_int_eq(q.polls, 1); /* no new poll */
  ck_assert_uint_eq(imc_worker_pending(w), 0);

  /* A failing step keeps retrying after the stop, and counts. */
  del_worker(w);
  w = mk_worker(NULL);
  st.async = 0;
  st.fail_sync = 1;
  add_job("m2", 1, NULL, 0);
  ck_assert_int_eq(imc_worker_start(w), 0);
  ck_assert_int_eq(mq_dispatch(), 1);
  ck_assert_int_eq(imc_worker_stop(w), 0);
  ck_assert_uint_eq(imc_worker_pending(w), 1);
  ck_assert_int_eq(imc_worker_next_timeout_ms(w), 100);
  tick(w, 100);
  ck_assert_int_eq(hk.calls, 2);
  ck_assert_uint_eq(imc_worker_pending(w), 0);
  ck_assert_int_eq(q.polls, 2);
  del_worker(w);
}
END_TEST

/* A poll made before the stop that then delivers: persisted as one more
 * batch. A failing poll retry is dropped by the stop. */
START_TEST(test_stop_late_records) {
  imc_worker *w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  ck_assert_int_eq(imc_worker_stop(w), 0);
  add_job("m1", 1, NULL, 0);
  ck_assert_int_eq(mq_dispatch(), 1);
  ck_assert_int_eq(hk.calls, 1);
  ck_assert_uint_eq(q.committed[0], 1);
  ck_assert_int_eq(q.polls, 1);
  ck_assert_uint_eq(imc_worker_pending(w), 0);
  del_worker(w);

  q.fail_poll_sync = 1;
  w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), IMC_ERR_UNAVAILABLE);
  ck_assert_int_eq(imc_worker_next_timeout_ms(w), 100);
  ck_assert_int_eq(imc_worker_stop(w), 0);
  ck_assert_int_eq(imc_worker_next_timeout_ms(w), -1);
  tick(w, 1000);
  ck_assert_int_eq(q.polls, 1);
  ck_assert_uint_eq(imc_worker_pending(w), 0);
  del_worker(w);
}
END_TEST

START_TEST(test_last_batch_ms) {
  st.async = 1;
  for (int i = 0; i < 4; i++) {
    char id[8];
    snprintf(id, sizeof(id), "m%d", i);
    add_job(id, 1, NULL, 0);
  }
  imc_worker *w = mk_worker(NULL);
  ck_assert_int_eq(imc_worker_start(w), 0);
  ck_assert_int_eq(mq_dispatch(), 1);
  test_clock_advance(&tc, 50);
  flush_all();
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_LAST_BATCH_MS), 50);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_LAST_BATCH), 4);
  del_worker(w);
}
END_TEST

/* ------------------------------------------------------------------ */
/* The host's wakeups: a backlog drains with no unrelated event         */
/* ------------------------------------------------------------------ */

/*
 * A host loop reduced to its timers, as hosts/common/loop.c runs them:
 * each turn runs exactly what a next_timeout_ms says is due (0), one
 * dispatch per turn and nothing else. When nothing is due the real loop
 * would sleep (until the worker's purge timer, an hour away, or forever),
 * and no other event ever comes here: the fake loop returns the number
 * of turns it ran. Deferred work that did not announce itself is then
 * left undone, which the callers' assertions catch.
 */
static int timers_only_loop(imc_worker *w, imc_sqlite *db, imc_membus *bus) {
  for (int turn = 0; turn < 100000; turn++) {
    int64_t tw = imc_worker_next_timeout_ms(w);
    int64_t ts = db ? imc_sqlite_next_timeout_ms(db) : -1;
    int64_t tb = bus ? imc_membus_next_timeout_ms(bus) : -1;
    ck_assert_int_le(ts, 0); /* deferred work is due now or not at all */
    ck_assert_int_le(tb, 0);
    if (tw != 0 && ts != 0 && tb != 0)
      return turn; /* the loop would sleep */
    if (ts == 0)
      ck_assert_int_ge(imc_sqlite_dispatch(db), 0);
    if (tb == 0)
      ck_assert_int_ge(imc_membus_dispatch(bus), 0);
    if (tw == 0)
      ck_assert_int_eq(imc_worker_on_timeout(w), 0);
  }
  ck_abort_msg("the loop never settles: a wakeup says 0 with nothing to do");
  return -1;
}

static void noop_done(void *ud, int status) {
  (void)ud;
  ck_assert_int_eq(status, 0);
}

#define BACKLOG_JOBS 600
#define BACKLOG_BATCH 2 /* 300 batches: far more than a loop turn's rounds */

static void publish_backlog(const imc_bus_vtbl *vt, void *ud) {
  char id[16];
  for (int i = 0; i < BACKLOG_JOBS; i++) {
    snprintf(id, sizeof(id), "m%04d", i);
    size_t len;
    uint8_t *buf = pack_job(id, 1, BOB, 1, &len);
    ck_assert_int_eq(vt->publish(ud, "offline_msg", (const uint8_t *)"bob", 3,
                                 buf, len, noop_done, NULL),
                     0);
    free(buf);
  }
}

static void assert_backlog_persisted(imc_worker *w) {
  ck_assert_int_eq(hk.calls, BACKLOG_JOBS);
  ck_assert_uint_eq(st.n_hist, BACKLOG_JOBS);
  ck_assert_uint_eq(st.n_inbox, BACKLOG_JOBS);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_JOBS), BACKLOG_JOBS);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_BATCHES),
                    BACKLOG_JOBS / BACKLOG_BATCH);
  ck_assert_int_eq(imc_worker_healthy(w), 1);
  char id[16];
  for (int i = 0; i < BACKLOG_JOBS; i += 97) {
    snprintf(id, sizeof(id), "m%04d", i);
    ck_assert(msg_stored(id) && entry_stored("bob", id));
  }
}

/* The stall of an idle imchatd: the SQLite queue's polls completed only
 * from a hook that ran after some other event. */
START_TEST(test_backlog_sqlite_wakes_loop) {
  char path[128];
  snprintf(path, sizeof(path), "/tmp/imc-test-worker-%ld.sqlite",
           (long)getpid());
  unlink(path);
  imc_sqlite *db = NULL;
  ck_assert_int_eq(imc_sqlite_new(&db, path, &tc.clock, &tm.mem), 0);
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), -1);
  publish_backlog(imc_sqlite_bus_vtbl(), db);
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), -1); /* nobody polls */
  imc_worker *w = mk_worker(&(wcfg){.batch_max = BACKLOG_BATCH,
                                    .queue = imc_sqlite_bus_vtbl(),
                                    .queue_ud = db});
  ck_assert_int_eq(imc_worker_start(w), 0);
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), 0);
  ck_assert_int_ge(timers_only_loop(w, db, NULL), BACKLOG_JOBS / BACKLOG_BATCH);
  assert_backlog_persisted(w);
  /* Idle now: the worker's poll waits, and nothing asks to be woken. */
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), -1);
  ck_assert_int_gt(imc_worker_next_timeout_ms(w), 0);
  ck_assert_int_eq(imc_worker_stop(w), 0);
  imc_sqlite_del(db);
  imc_worker_del(w);

  /* Everything was committed: a restart delivers nothing again. */
  ck_assert_int_eq(imc_sqlite_new(&db, path, &tc.clock, &tm.mem), 0);
  int calls = hk.calls;
  w = mk_worker(&(wcfg){.batch_max = BACKLOG_BATCH,
                        .queue = imc_sqlite_bus_vtbl(),
                        .queue_ud = db});
  ck_assert_int_eq(imc_worker_start(w), 0);
  timers_only_loop(w, db, NULL);
  ck_assert_int_eq(hk.calls, calls);
  ck_assert_uint_eq(imc_worker_stat_get(w, IMC_WK_STAT_BATCHES), 0);
  ck_assert_int_eq(imc_sqlite_next_timeout_ms(db), -1);
  imc_worker_stop(w);
  imc_sqlite_del(db);
  del_worker(w);
  unlink(path);
  char side[160];
  snprintf(side, sizeof(side), "%s-wal", path);
  unlink(side);
  snprintf(side, sizeof(side), "%s-shm", path);
  unlink(side);
}
END_TEST

/* The same through the in-process bus, whose polls are deferred too. */
START_TEST(test_backlog_membus_wakes_loop) {
  imc_membus *bus = NULL;
  ck_assert_int_eq(imc_membus_new(&bus, &tm.mem), 0);
  imc_worker *w = mk_worker(&(wcfg){
      .batch_max = BACKLOG_BATCH, .queue = imc_membus_vtbl(), .queue_ud = bus});
  ck_assert_int_eq(imc_worker_start(w), 0); /* the group joins first */
  ck_assert_int_eq(imc_membus_next_timeout_ms(bus), -1);
  publish_backlog(imc_membus_vtbl(), bus);
  ck_assert_int_eq(imc_membus_next_timeout_ms(bus), 0);
  ck_assert_int_ge(timers_only_loop(w, NULL, bus),
                   BACKLOG_JOBS / BACKLOG_BATCH);
  assert_backlog_persisted(w);
  ck_assert_uint_eq(imc_membus_size(bus), 0); /* all committed */
  ck_assert_int_eq(imc_membus_next_timeout_ms(bus), -1);
  imc_worker_stop(w);
  imc_membus_del(bus);
  del_worker(w);
}
END_TEST

/* Every allocation fails in turn. Each failure surfaces as IMC_ERR_NOMEM
 * from a constructor or as a retried step; a batch that could not even be
 * copied stops consumption, and a new worker over the same queue finishes
 * the work. In the end every job is stored once and nothing leaks. */
START_TEST(test_nomem) {
  const uint8_t junk[] = {0xff, 0xff};
  for (long fail = 0;; fail++) {
    mocks_free();
    mocks_reset();
    test_mem_init(&tm);
    seed_history("m2");
    add_job("m1", 1, BOB_CAROL, 2);
    add_job("m2", 1, BOB, 1);
    q_add(0, junk, sizeof(junk), NULL);
    add_job("m3", 0, BOB, 1);
    add_job("m1", 1, BOB_CAROL, 2);
    tm.fail_at = fail;

    imc_worker *w = NULL;
    int rv = try_worker(&w, NULL);
    if (rv != 0) {
      ck_assert_int_eq(rv, IMC_ERR_NOMEM);
      ck_assert_int_eq(tm.live, 0);
      continue;
    }
    ck_assert_int_eq(imc_worker_start(w), 0);
    int restarts = 0;
    for (int i = 0; i < 50 && q.committed[0] < 5; i++) {
      run();
      if (imc_worker_pending(w) == 0 && !q.polling) {
        /* Consumption stopped: recreate the worker, as a host would. */
        ck_assert_int_eq(imc_worker_healthy(w), 0);
        mq_crash();
        imc_worker_del(w);
        tm.fail_at = -1;
        w = mk_worker(NULL);
        ck_assert_int_eq(imc_worker_start(w), 0);
        restarts++;
        continue;
      }
      tick(w, 10000);
    }
    ck_assert_uint_eq(q.committed[0], 5);
    ck_assert_int_eq(q.violations, 0);
    ck_assert_int_eq(st.reappends, 0);
    ck_assert_int_eq(st.bad_entries, 0);
    ck_assert_uint_eq(st.n_hist, 2); /* m1, and m2's from before */
    ck_assert_uint_eq(st.n_inbox, 4);
    ck_assert_int_eq(hook_count("m1"), 2);
    ck_assert_int_eq(hook_count("m2"), 1);
    ck_assert_int_eq(hook_count("m3"), 1);
    ck_assert_int_le(restarts, 1);
    long count = tm.count;
    imc_worker_del(w);
    ck_assert_int_eq(tm.live, 0);
    if (count <= fail)
      break; /* the failure was never reached: all covered */
  }
}
END_TEST

static Suite *worker_suite(void) {
  Suite *s = suite_create("worker");
  TCase *tc_core = tcase_create("core");
  tcase_set_timeout(tc_core, 60);
  tcase_add_checked_fixture(tc_core, setup, teardown);
  tcase_add_test(tc_core, test_options);
  tcase_add_test(tc_core, test_batch);
  tcase_add_test(tc_core, test_one_append_per_batch);
  tcase_add_test(tc_core, test_step_order);
  tcase_add_test(tc_core, test_duplicates);
  tcase_add_test(tc_core, test_bad_records);
  tcase_add_test(tc_core, test_bad_string_records);
  tcase_add_test(tc_core, test_partitions);
  tcase_add_test(tc_core, test_topic_group);
  tcase_add_test(tc_core, test_sync_queue);
  tcase_add_test(tc_core, test_last_batch_ms);
  suite_add_tcase(s, tc_core);

  TCase *tc_fail = tcase_create("failures");
  tcase_add_checked_fixture(tc_fail, setup, teardown);
  tcase_add_test(tc_fail, test_store_fails_sync);
  tcase_add_test(tc_fail, test_store_fails_async);
  tcase_add_test(tc_fail, test_backoff_cap);
  tcase_add_test(tc_fail, test_dedup_get_fails);
  tcase_add_test(tc_fail, test_dedup_set_fails);
  tcase_add_test(tc_fail, test_commit_fails);
  tcase_add_test(tc_fail, test_commit_revoked);
  tcase_add_test(tc_fail, test_commit_revoked_sync);
  tcase_add_test(tc_fail, test_poll_fails);
  tcase_add_test(tc_fail, test_crash_before_commit);
  tcase_add_test(tc_fail, test_crash_before_marks);
  suite_add_tcase(s, tc_fail);

  TCase *tc_timers = tcase_create("timers");
  tcase_add_checked_fixture(tc_timers, setup, teardown);
  tcase_add_test(tc_timers, test_purge);
  tcase_add_test(tc_timers, test_stop_idle);
  tcase_add_test(tc_timers, test_stop_in_batch);
  tcase_add_test(tc_timers, test_stop_late_records);
  suite_add_tcase(s, tc_timers);

  TCase *tc_wake = tcase_create("wakeups");
  tcase_add_checked_fixture(tc_wake, setup, teardown);
  tcase_add_test(tc_wake, test_backlog_sqlite_wakes_loop);
  tcase_add_test(tc_wake, test_backlog_membus_wakes_loop);
  tcase_set_timeout(tc_wake, 60);
  suite_add_tcase(s, tc_wake);

  TCase *tc_mem = tcase_create("nomem");
  tcase_add_checked_fixture(tc_mem, setup, teardown);
  tcase_add_test(tc_mem, test_nomem);
  tcase_set_timeout(tc_mem, 60);
  suite_add_tcase(s, tc_mem);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(worker_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
