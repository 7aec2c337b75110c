/*
 * The offline worker. Each batch of the offline queue goes through fixed
 * steps: decode, dedup gets, one store append, dedup sets, queue commits,
 * persisted hooks. One step runs at a time; a step that fails keeps the
 * batch in memory and is retried on the worker's timer with backoff, so
 * the queue is never committed past anything not yet stored and marked.
 *
 * Completions may arrive inside the call that started them (embedded
 * backends) or later; every completion funnels into drive(), which runs
 * the steps in a loop instead of recursing.
 */
#include <imchat/worker.h>

#include "util/alloc.h"
#include "util/busname.h"
#include "util/log.h"
#include "protocol/pb.h"
#include "protocol/pbcheck.h"
#include "queue.pb-c.h"
#include "util/vtbl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_TOPIC "offline_msg"
#define DEFAULT_GROUP "worker"
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 10000
#define BATCH_LIMIT 65536 /* upper bound of batch_max */
#define MSG_ID_MAX 256    /* longer msg_ids are refused as bad records */
#define KEY_PREFIX "persist:"
#define KEY_PREFIX_LEN (sizeof(KEY_PREFIX) - 1)

enum phase { PH_DECODE, PH_GET, PH_APPEND, PH_SET, PH_COMMIT };

enum job_state { J_RAW, J_OK, J_BAD };

/* A part is one dedup key: the history of a message or one inbox entry. */
enum part_state {
  P_ASK,     /* dedup get to do */
  P_ASKING,  /* get in flight */
  P_SEEN,    /* persisted before (or earlier in this batch): skip */
  P_NEW,     /* to append */
  P_MARK,    /* appended; dedup set to do */
  P_MARKING, /* set in flight */
  P_MARKED
};

enum commit_state { C_TODO, C_BUSY, C_DONE, C_REVOKED };

/* A record as the queue delivered it; value points into the batch. */
typedef struct rec {
  const uint8_t *value;
  size_t len;
  int32_t partition;
  uint64_t offset;
} rec;

/* The highest offset of one partition in the batch. */
typedef struct cpoint {
  imc_worker *w;
  int32_t partition;
  uint64_t offset;
  uint8_t state;
} cpoint;

typedef struct job {
  Imchat__V1__OfflineJob *pb;
  imc_msg msg; /* view of pb->message */
  uint8_t state;
} job;

typedef struct part {
  imc_worker *w;
  const char *key;
  const char *user; /* NULL: the history part */
  const job *job;
  uint8_t state;
} part;

typedef struct batch {
  uint8_t phase;
  uint8_t appended;
  size_t n_recs, n_cps, n_parts;
  rec *recs;
  cpoint *cps;
  job *jobs;         /* n_recs, allocated by the decode step */
  void *parts_block; /* parts, order, msgs, entries and keys */
  part *parts;
  const imc_msg **msgs;
  imc_inbox_entry *entries;
  size_t n_ok, n_fresh, n_dup;
  int64_t t0; /* poll completion */
} batch;

struct imc_worker_options {
  imc_mem mem;
  imc_bus_vtbl queue;
  void *queue_ud;
  imc_store_vtbl store;
  void *store_ud;
  imc_dedup_vtbl dedup;
  void *dedup_ud;
  imc_persisted_cb persisted;
  void *persisted_ud;
  imc_clock clock;
  imc_logger log;
  uint32_t batch_max, retention_s, purge_interval_s, dedup_ttl_s;
  char topic[IMC_BUS_NAME_CAP];
  char group[IMC_BUS_NAME_CAP];
};

struct imc_worker {
  imc_mem mem;
  imc_worker_options o;
  void *user_data;
  ProtobufCAllocator pba;
  batch *batch;
  size_t ops;      /* batch operations in flight */
  uint8_t polling; /* a poll is outstanding */
  uint8_t purging; /* a purge is outstanding */
  uint8_t running; /* started and not stopped */
  uint8_t failed;  /* the current step failed; retry once ops drain */
  uint8_t wedged;  /* a batch was lost in memory: no further polls */
  uint8_t healthy;
  uint8_t driving, kick;
  uint8_t pb_nomem; /* an allocation of the protobuf decoder failed */
  int poll_rv;      /* synchronous result of the last poll */
  uint32_t backoff_ms;
  int64_t retry_at; /* -1: no retry scheduled */
  int64_t purge_at; /* -1: no purge scheduled */
  uint64_t stats[IMC_WK_STAT_COUNT_];
};

static void drive(imc_worker *w);

/* ------------------------------------------------------------------ */
/* Options                                                              */
/* ------------------------------------------------------------------ */

int imc_worker_options_new(imc_worker_options **out, const imc_mem *mem) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_worker_options *o = imc_calloc(mem, 1, sizeof(*o));
  if (o == NULL)
    return IMC_ERR_NOMEM;
  o->mem = *mem;
  o->clock = *imc_clock_default();
  o->log.level = IMC_LOG_INFO;
  o->batch_max = 256;
  o->retention_s = 7 * 24 * 3600;
  o->purge_interval_s = 3600;
  o->dedup_ttl_s = 7 * 24 * 3600;
  memcpy(o->topic, DEFAULT_TOPIC, sizeof(DEFAULT_TOPIC));
  memcpy(o->group, DEFAULT_GROUP, sizeof(DEFAULT_GROUP));
  *out = o;
  return 0;
}

void imc_worker_options_del(imc_worker_options *opt) {
  if (opt == NULL)
    return;
  imc_mem m = opt->mem;
  imc_free(&m, opt);
}

int imc_worker_options_set_queue(imc_worker_options *opt,
                                 const imc_bus_vtbl *vt, void *ud) {
  if (opt == NULL || vt == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_vtbl_copy(&opt->queue, sizeof(opt->queue), vt, vt->struct_size);
  opt->queue_ud = ud;
  return 0;
}

int imc_worker_options_set_store(imc_worker_options *opt,
                                 const imc_store_vtbl *vt, void *ud) {
  if (opt == NULL || vt == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_vtbl_copy(&opt->store, sizeof(opt->store), vt, vt->struct_size);
  opt->store_ud = ud;
  return 0;
}

int imc_worker_options_set_dedup(imc_worker_options *opt,
                                 const imc_dedup_vtbl *vt, void *ud) {
  if (opt == NULL || vt == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_vtbl_copy(&opt->dedup, sizeof(opt->dedup), vt, vt->struct_size);
  opt->dedup_ud = ud;
  return 0;
}

int imc_worker_options_set_persisted(imc_worker_options *opt,
                                     imc_persisted_cb cb, void *ud) {
  if (opt == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  opt->persisted = cb;
  opt->persisted_ud = ud;
  return 0;
}

int imc_worker_options_set_clock(imc_worker_options *opt,
                                 const imc_clock *clock) {
  return opt ? imc_clock_assign(&opt->clock, clock) : IMC_ERR_INVALID_ARGUMENT;
}

int imc_worker_options_set_log(imc_worker_options *opt, imc_log_cb cb, void *ud,
                               imc_log_level max_level) {
  return opt ? imc_logger_assign(&opt->log, cb, ud, max_level)
             : IMC_ERR_INVALID_ARGUMENT;
}

int imc_worker_options_set_batch_max(imc_worker_options *opt, uint32_t n) {
  if (opt == NULL || n == 0 || n > BATCH_LIMIT)
    return IMC_ERR_INVALID_ARGUMENT;
  opt->batch_max = n;
  return 0;
}

int imc_worker_options_set_retention_s(imc_worker_options *opt, uint32_t s) {
  if (opt == NULL || s == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  opt->retention_s = s;
  return 0;
}

int imc_worker_options_set_purge_interval_s(imc_worker_options *opt,
                                            uint32_t s) {
  if (opt == NULL || s == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  opt->purge_interval_s = s;
  return 0;
}

int imc_worker_options_set_topic(imc_worker_options *opt, const char *topic) {
  return opt ? imc_bus_name_set(opt->topic, topic) : IMC_ERR_INVALID_ARGUMENT;
}

int imc_worker_options_set_group(imc_worker_options *opt, const char *group) {
  return opt ? imc_bus_name_set(opt->group, group) : IMC_ERR_INVALID_ARGUMENT;
}

int imc_worker_options_set_dedup_ttl_s(imc_worker_options *opt, uint32_t s) {
  if (opt == NULL || s == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  opt->dedup_ttl_s = s;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Helpers                                                              */
/* ------------------------------------------------------------------ */

#define wk_log(w, ...) imc_logf(&(w)->o.log, __VA_ARGS__)

static int64_t now_ms(imc_worker *w) {
  return imc_clock_now(&w->o.clock);
}

/* The decoder allocates through the worker so that an allocation failure
 * can be told apart from a malformed record (unpack returns NULL for
 * both). */
static void *pb_alloc(void *ud, size_t size) {
  imc_worker *w = ud;
  void *p = imc_malloc(&w->mem, size);
  if (p == NULL)
    w->pb_nomem = 1;
  return p;
}

static void pb_free(void *ud, void *p) {
  imc_worker *w = ud;
  imc_free(&w->mem, p);
}

/* A step failed: count and log it once; drive() schedules the retry
 * once the step's other operations have completed. */
static void step_fail(imc_worker *w, const char *what, int rv) {
  w->healthy = 0;
  w->kick = 1;
  if (w->failed)
    return;
  w->failed = 1;
  w->stats[IMC_WK_STAT_FAILURES]++;
  wk_log(w, IMC_LOG_WARN, "worker: %s failed: %s; retrying in %u ms", what,
         imc_strerror(rv), w->backoff_ms);
}

static void step_ok(imc_worker *w) {
  w->healthy = 1;
  w->backoff_ms = BACKOFF_MIN_MS;
}

static void schedule_retry(imc_worker *w) {
  w->failed = 0;
  w->retry_at = now_ms(w) + w->backoff_ms;
  w->backoff_ms =
      w->backoff_ms >= BACKOFF_MAX_MS / 2 ? BACKOFF_MAX_MS : w->backoff_ms * 2;
}

static void advance(imc_worker *w, batch *b, enum phase next) {
  b->phase = (uint8_t)next;
  step_ok(w);
  w->kick = 1;
}

static void batch_free(imc_worker *w, batch *b) {
  if (b == NULL)
    return;
  if (b->jobs) {
    for (size_t i = 0; i < b->n_recs; i++)
      if (b->jobs[i].pb)
        imchat__v1__offline_job__free_unpacked(b->jobs[i].pb, &w->pba);
    imc_free(&w->mem, b->jobs);
  }
  imc_free(&w->mem, b->parts_block);
  imc_free(&w->mem, b);
}

/* ------------------------------------------------------------------ */
/* Poll: take the batch                                                 */
/* ------------------------------------------------------------------ */

/*
 * Copies the records, which are borrowed for the completion only, into
 * one block: the batch, its records, its commit points and the values.
 * The struct sizes are multiples of their alignment, which batch's
 * int64_t member bounds, so the arrays that follow stay aligned.
 */
static batch *batch_take(imc_worker *w, const imc_bus_record *recs, size_t n) {
  size_t per = sizeof(rec) + sizeof(cpoint);
  if (n > (SIZE_MAX - sizeof(batch)) / per)
    return NULL;
  size_t size = sizeof(batch) + n * per;
  for (size_t i = 0; i < n; i++) {
    if (recs[i].value_len > SIZE_MAX - size)
      return NULL;
    size += recs[i].value_len;
  }
  batch *b = imc_malloc(&w->mem, size);
  if (b == NULL)
    return NULL;
  memset(b, 0, sizeof(*b));
  b->recs = (rec *)(void *)(b + 1);
  b->cps = (cpoint *)(void *)(b->recs + n);
  uint8_t *val = (uint8_t *)(b->cps + n);
  b->n_recs = n;
  for (size_t i = 0; i < n; i++) {
    rec *r = &b->recs[i];
    if (recs[i].value_len)
      memcpy(val, recs[i].value, recs[i].value_len);
    r->value = val;
    r->len = recs[i].value_len;
    r->partition = recs[i].partition;
    r->offset = recs[i].offset;
    val += r->len;
    size_t c = 0;
    while (c < b->n_cps && b->cps[c].partition != r->partition)
      c++;
    if (c == b->n_cps) {
      b->n_cps++;
      b->cps[c].w = w;
      b->cps[c].partition = r->partition;
      b->cps[c].offset = r->offset;
      b->cps[c].state = C_TODO;
    } else if (r->offset > b->cps[c].offset) {
      b->cps[c].offset = r->offset;
    }
  }
  b->phase = PH_DECODE;
  b->t0 = now_ms(w);
  return b;
}

static void poll_done(void *ud, int status, const imc_bus_record *recs,
                      size_t n) {
  imc_worker *w = ud;
  w->polling = 0;
  if (status < 0 || n == 0) {
    if (!w->running) {
      /* The host closed the queue after a stop: nothing to retry. */
      wk_log(w, IMC_LOG_DEBUG, "worker: poll ended: %s", imc_strerror(status));
      return;
    }
    step_fail(w, "queue poll", status < 0 ? status : IMC_ERR_INTERNAL);
    drive(w);
    return;
  }
  batch *b = batch_take(w, recs, n);
  if (b == NULL) {
    /*
     * The records are gone until the queue redelivers them, which it
     * does only after a restart; committing anything later would skip
     * them for good. Stop consuming: the host recreates the worker.
     */
    w->wedged = 1;
    w->healthy = 0;
    w->stats[IMC_WK_STAT_FAILURES]++;
    wk_log(w, IMC_LOG_ERROR,
           "worker: no memory for a batch of %zu records; consumption "
           "stopped until the worker is recreated",
           n);
    return;
  }
  w->batch = b;
  step_ok(w);
  drive(w);
}

static void issue_poll(imc_worker *w) {
  w->polling = 1;
  int rv = w->o.queue.poll(w->o.queue_ud, w->o.topic, w->o.group,
                           w->o.batch_max, poll_done, w);
  if (rv < 0) {
    w->polling = 0;
    w->poll_rv = rv;
    step_fail(w, "queue poll", rv);
  }
}

/* ------------------------------------------------------------------ */
/* Decode: jobs and their dedup keys                                    */
/* ------------------------------------------------------------------ */

static void bad_record(imc_worker *w, const rec *r, const char *why) {
  w->stats[IMC_WK_STAT_BAD_RECORDS]++;
  wk_log(w, IMC_LOG_WARN, "worker: record %llu of partition %d: %s; skipped",
         (unsigned long long)r->offset, (int)r->partition, why);
}

/* NULL if the job can be persisted, else why not. */
static const char *job_check(const Imchat__V1__OfflineJob *pb) {
  const Imchat__V1__Message *m = pb->message;
  if (m == NULL)
    return "no message";
  size_t id_len = strlen(m->msg_id);
  if (id_len == 0 || id_len > MSG_ID_MAX)
    return "bad msg_id";
  if (m->conversation_id[0] == '\0')
    return "no conversation_id";
  if (!pb->history && pb->n_inbox_users == 0)
    return "nothing to persist";
  for (size_t i = 0; i < pb->n_inbox_users; i++)
    if (!imc_id_valid(pb->inbox_users[i], strlen(pb->inbox_users[i])))
      return "bad inbox user";
  return NULL;
}

static char *put_key(char *p, const char *msg_id, const char *user) {
  size_t n = strlen(msg_id);
  memcpy(p, KEY_PREFIX, KEY_PREFIX_LEN);
  p += KEY_PREFIX_LEN;
  memcpy(p, msg_id, n);
  p += n;
  if (user == NULL) {
    memcpy(p, ":h", 3);
    return p + 3;
  }
  size_t u = strlen(user);
  memcpy(p, ":u:", 3);
  memcpy(p + 3, user, u + 1);
  return p + 3 + u + 1;
}

/* By key, then by position: the first of equal keys is the earliest. */
static int part_cmp(const void *a, const void *b) {
  const part *x = *(const part *const *)a;
  const part *y = *(const part *const *)b;
  int c = strcmp(x->key, y->key);
  if (c != 0)
    return c;
  return (x > y) - (x < y);
}

/*
 * One block for the parts, a sort order, and the arrays handed to the
 * store, so that nothing after this step allocates.
 */
static int parts_build(imc_worker *w, batch *b) {
  size_t np = 0, kb = 0;
  for (size_t i = 0; i < b->n_recs; i++) {
    const job *j = &b->jobs[i];
    if (j->state != J_OK)
      continue;
    size_t id = strlen(j->msg.msg_id);
    if (j->pb->history) {
      np++;
      kb += KEY_PREFIX_LEN + id + 3;
    }
    for (size_t u = 0; u < j->pb->n_inbox_users; u++) {
      np++;
      kb += KEY_PREFIX_LEN + id + 3 + strlen(j->pb->inbox_users[u]) + 1;
    }
  }
  b->n_parts = np;
  if (np == 0)
    return 0;
  size_t per = sizeof(part) + sizeof(part *) + sizeof(imc_msg *) +
               sizeof(imc_inbox_entry);
  uint8_t *blk = imc_malloc(&w->mem, np * per + kb);
  if (blk == NULL)
    return IMC_ERR_NOMEM;
  b->parts_block = blk;
  b->parts = (part *)(void *)blk;
  part **order = (part **)(void *)(b->parts + np);
  b->msgs = (const imc_msg **)(void *)(order + np);
  b->entries = (imc_inbox_entry *)(void *)(b->msgs + np);
  char *key = (char *)(b->entries + np);
  size_t k = 0;
  for (size_t i = 0; i < b->n_recs; i++) {
    const job *j = &b->jobs[i];
    if (j->state != J_OK)
      continue;
    size_t n_users = j->pb->n_inbox_users;
    for (size_t u = j->pb->history ? 0 : 1; u <= n_users; u++) {
      part *p = &b->parts[k];
      p->w = w;
      p->job = j;
      p->user = u == 0 ? NULL : j->pb->inbox_users[u - 1];
      p->key = key;
      p->state = P_ASK;
      key = put_key(key, j->msg.msg_id, p->user);
      order[k] = p;
      k++;
    }
  }
  /* The same key twice in one batch (a republished job, a user listed
   * twice) is persisted once. */
  qsort(order, np, sizeof(*order), part_cmp);
  for (size_t i = 1; i < np; i++)
    if (strcmp(order[i]->key, order[i - 1]->key) == 0)
      order[i]->state = P_SEEN;
  return 0;
}

static void do_decode(imc_worker *w, batch *b) {
  if (b->jobs == NULL) {
    b->jobs = imc_calloc(&w->mem, b->n_recs, sizeof(*b->jobs));
    if (b->jobs == NULL) {
      step_fail(w, "decode", IMC_ERR_NOMEM);
      return;
    }
  }
  for (size_t i = 0; i < b->n_recs; i++) {
    job *j = &b->jobs[i];
    if (j->state != J_RAW)
      continue;
    const rec *r = &b->recs[i];
    /* Strings go on as C strings and into JSON: refuse bad UTF-8, NUL. */
    if (imc_pb_check_strings(&imchat__v1__offline_job__descriptor, r->value,
                             r->len) != 0) {
      j->state = J_BAD;
      bad_record(w, r, "undecodable (bad UTF-8 or NUL in a string)");
      continue;
    }
    w->pb_nomem = 0;
    j->pb = imchat__v1__offline_job__unpack(&w->pba, r->len, r->value);
    if (j->pb == NULL) {
      if (w->pb_nomem) {
        step_fail(w, "decode", IMC_ERR_NOMEM);
        return;
      }
      j->state = J_BAD;
      bad_record(w, r, "undecodable");
      continue;
    }
    const char *why = job_check(j->pb);
    if (why != NULL) {
      imchat__v1__offline_job__free_unpacked(j->pb, &w->pba);
      j->pb = NULL;
      j->state = J_BAD;
      bad_record(w, r, why);
      continue;
    }
    imc_msg_from_pb(&j->msg, j->pb->message);
    j->msg.from_node = j->pb->from_node; /* routing metadata of the job */
    j->msg.from_conn_id = j->pb->from_conn_id;
    j->state = J_OK;
    b->n_ok++;
  }
  if (parts_build(w, b) != 0) {
    step_fail(w, "decode", IMC_ERR_NOMEM);
    return;
  }
  advance(w, b, PH_GET);
}

/* ------------------------------------------------------------------ */
/* Dedup gets                                                           */
/* ------------------------------------------------------------------ */

static void get_done(void *ud, int status, int found, const uint8_t *value,
                     size_t value_len) {
  part *p = ud;
  imc_worker *w = p->w;
  (void)value;
  (void)value_len;
  w->ops--;
  if (status == IMC_ERR_NOT_FOUND) {
    status = 0;
    found = 0;
  }
  if (status < 0) {
    p->state = P_ASK;
    step_fail(w, "dedup get", status);
  } else {
    p->state = found ? P_SEEN : P_NEW;
  }
  drive(w);
}

/* Counts the jobs with something new (persisted) and those without
 * (duplicates) once every part is known. */
static void count_fresh(batch *b) {
  size_t k = 0;
  for (size_t i = 0; i < b->n_recs; i++) {
    const job *j = &b->jobs[i];
    if (j->state != J_OK)
      continue;
    int fresh = 0;
    while (k < b->n_parts && b->parts[k].job == j)
      fresh |= b->parts[k++].state == P_NEW;
    if (fresh)
      b->n_fresh++;
    else
      b->n_dup++;
  }
}

static void do_get(imc_worker *w, batch *b) {
  for (size_t i = 0; i < b->n_parts && !w->failed; i++) {
    part *p = &b->parts[i];
    if (p->state != P_ASK)
      continue;
    p->state = P_ASKING;
    w->ops++;
    int rv = w->o.dedup.get(w->o.dedup_ud, p->key, get_done, p);
    if (rv < 0) {
      w->ops--;
      p->state = P_ASK;
      step_fail(w, "dedup get", rv);
    }
  }
  if (w->ops == 0 && !w->failed) {
    count_fresh(b);
    advance(w, b, PH_APPEND);
  }
}

/* ------------------------------------------------------------------ */
/* Store append                                                         */
/* ------------------------------------------------------------------ */

static void append_done(void *ud, int status) {
  imc_worker *w = ud;
  w->ops--;
  if (status < 0)
    step_fail(w, "store append", status);
  else
    w->batch->appended = 1;
  drive(w);
}

static void do_append(imc_worker *w, batch *b) {
  if (!b->appended) {
    size_t nm = 0, ne = 0;
    for (size_t i = 0; i < b->n_parts; i++) {
      const part *p = &b->parts[i];
      if (p->state != P_NEW)
        continue;
      if (p->user == NULL) {
        b->msgs[nm++] = &p->job->msg;
      } else {
        /* The full message rides along: the store inserts it if the
         * history part was not in this batch. */
        b->entries[ne].user_id = p->user;
        b->entries[ne].msg = &p->job->msg;
        ne++;
      }
    }
    if (nm + ne > 0) {
      w->ops++;
      int rv = w->o.store.append(w->o.store_ud, b->msgs, nm, b->entries, ne,
                                 append_done, w);
      if (rv < 0) {
        w->ops--;
        step_fail(w, "store append", rv);
      }
      return; /* append_done drives the next step */
    }
    b->appended = 1;
  }
  for (size_t i = 0; i < b->n_parts; i++)
    if (b->parts[i].state == P_NEW)
      b->parts[i].state = P_MARK;
  advance(w, b, PH_SET);
}

/* ------------------------------------------------------------------ */
/* Dedup sets                                                           */
/* ------------------------------------------------------------------ */

static void set_done(void *ud, int status) {
  part *p = ud;
  imc_worker *w = p->w;
  w->ops--;
  if (status < 0) {
    p->state = P_MARK;
    step_fail(w, "dedup set", status);
  } else {
    p->state = P_MARKED;
  }
  drive(w);
}

static void do_set(imc_worker *w, batch *b) {
  for (size_t i = 0; i < b->n_parts && !w->failed; i++) {
    part *p = &b->parts[i];
    if (p->state != P_MARK)
      continue;
    p->state = P_MARKING;
    w->ops++;
    int rv = w->o.dedup.set(w->o.dedup_ud, p->key, (const uint8_t *)"1", 1,
                            w->o.dedup_ttl_s, set_done, p);
    if (rv < 0) {
      w->ops--;
      p->state = P_MARK;
      step_fail(w, "dedup set", rv);
    }
  }
  if (w->ops == 0 && !w->failed)
    advance(w, b, PH_COMMIT);
}

/* ------------------------------------------------------------------ */
/* Commit and hooks                                                     */
/* ------------------------------------------------------------------ */

/* The partition went to another consumer of the group (a rebalance): its
 * records are redelivered there, so the commit is not retried. The work
 * done for them is idempotent (the dedup marks), and it is done: the jobs
 * are reported like the others. */
static void commit_revoked(imc_worker *w, cpoint *c) {
  c->state = C_REVOKED;
  w->stats[IMC_WK_STAT_REVOKED]++;
  wk_log(w, IMC_LOG_INFO,
         "worker: partition %d revoked before its commit of offset %llu; "
         "its records go to the new owner",
         (int)c->partition, (unsigned long long)c->offset);
}

static void commit_done(void *ud, int status) {
  cpoint *c = ud;
  imc_worker *w = c->w;
  w->ops--;
  if (status == IMC_ERR_REVOKED) {
    commit_revoked(w, c);
  } else if (status < 0) {
    c->state = C_TODO;
    step_fail(w, "queue commit", status);
  } else {
    c->state = C_DONE;
  }
  drive(w);
}

/* The batch is committed: account for it, tell the hook about every job
 * (duplicates too: an earlier run may have died before its hooks), and
 * make room for the next poll. */
static void batch_finish(imc_worker *w, batch *b) {
  w->stats[IMC_WK_STAT_BATCHES]++;
  w->stats[IMC_WK_STAT_JOBS] += b->n_fresh;
  w->stats[IMC_WK_STAT_DUPLICATES] += b->n_dup;
  w->stats[IMC_WK_STAT_LAST_BATCH] = b->n_ok;
  int64_t ms = now_ms(w) - b->t0;
  w->stats[IMC_WK_STAT_LAST_BATCH_MS] = ms > 0 ? (uint64_t)ms : 0;
  step_ok(w);
  wk_log(w, IMC_LOG_DEBUG,
         "worker: batch of %zu records: %zu persisted, %zu duplicates",
         b->n_recs, b->n_fresh, b->n_dup);
  if (w->o.persisted) {
    for (size_t i = 0; i < b->n_recs; i++) {
      const job *j = &b->jobs[i];
      if (j->state != J_OK)
        continue;
      w->o.persisted(w->o.persisted_ud, &j->msg, j->pb->history ? 1 : 0,
                     (const char *const *)j->pb->inbox_users,
                     j->pb->n_inbox_users);
    }
  }
  w->batch = NULL;
  batch_free(w, b);
  w->kick = 1;
}

static void do_commit(imc_worker *w, batch *b) {
  for (size_t i = 0; i < b->n_cps && !w->failed; i++) {
    cpoint *c = &b->cps[i];
    if (c->state != C_TODO)
      continue;
    c->state = C_BUSY;
    w->ops++;
    int rv = w->o.queue.commit(w->o.queue_ud, w->o.topic, w->o.group,
                               c->partition, c->offset, commit_done, c);
    if (rv == IMC_ERR_REVOKED) {
      w->ops--;
      commit_revoked(w, c);
    } else if (rv < 0) {
      w->ops--;
      c->state = C_TODO;
      step_fail(w, "queue commit", rv);
    }
  }
  if (w->ops == 0 && !w->failed)
    batch_finish(w, b);
}

/* ------------------------------------------------------------------ */
/* The driver                                                           */
/* ------------------------------------------------------------------ */

static void step(imc_worker *w) {
  if (w->wedged || w->retry_at >= 0 || w->ops > 0 || w->polling)
    return;
  if (w->failed) {
    schedule_retry(w);
    return;
  }
  batch *b = w->batch;
  if (b == NULL) {
    if (w->running)
      issue_poll(w);
    return;
  }
  switch ((enum phase)b->phase) {
  case PH_DECODE:
    do_decode(w, b);
    break;
  case PH_GET:
    do_get(w, b);
    break;
  case PH_APPEND:
    do_append(w, b);
    break;
  case PH_SET:
    do_set(w, b);
    break;
  case PH_COMMIT:
    do_commit(w, b);
    break;
  }
}

/* Runs steps until none can make progress. Completions that arrive
 * inside a step only set kick, so the stack stays flat however many
 * batches complete synchronously. */
static void drive(imc_worker *w) {
  if (w->driving) {
    w->kick = 1;
    return;
  }
  w->driving = 1;
  do {
    w->kick = 0;
    step(w);
  } while (w->kick);
  w->driving = 0;
}

/* ------------------------------------------------------------------ */
/* Purge                                                                */
/* ------------------------------------------------------------------ */

static void purge_failed(imc_worker *w, int rv) {
  w->healthy = 0;
  w->stats[IMC_WK_STAT_FAILURES]++;
  wk_log(w, IMC_LOG_WARN, "worker: purge failed: %s; next run in %u s",
         imc_strerror(rv), w->o.purge_interval_s);
}

static void purge_done(void *ud, int status) {
  imc_worker *w = ud;
  w->purging = 0;
  if (status < 0) {
    purge_failed(w, status);
    return;
  }
  w->stats[IMC_WK_STAT_PURGES]++;
  w->healthy = 1;
}

static void issue_purge(imc_worker *w) {
  if (w->o.store.purge == NULL || w->purging)
    return;
  int64_t before =
      imc_clock_wall(&w->o.clock) - (int64_t)w->o.retention_s * 1000;
  w->purging = 1;
  int rv = w->o.store.purge(w->o.store_ud, before, purge_done, w);
  if (rv < 0) {
    w->purging = 0;
    purge_failed(w, rv);
  }
}

/* ------------------------------------------------------------------ */
/* Public API                                                           */
/* ------------------------------------------------------------------ */

int imc_worker_new(imc_worker **out, const imc_worker_options *opt,
                   const imc_mem *mem) {
  if (out == NULL || opt == NULL || opt->queue.poll == NULL ||
      opt->queue.commit == NULL || opt->store.append == NULL ||
      opt->dedup.get == NULL || opt->dedup.set == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_worker *w = imc_calloc(mem, 1, sizeof(*w));
  if (w == NULL)
    return IMC_ERR_NOMEM;
  w->mem = *mem;
  w->o = *opt;
  w->o.mem = *mem;
  w->pba.alloc = pb_alloc;
  w->pba.free = pb_free;
  w->pba.allocator_data = w;
  w->healthy = 1;
  w->backoff_ms = BACKOFF_MIN_MS;
  w->retry_at = -1;
  w->purge_at = -1;
  *out = w;
  return 0;
}

void imc_worker_del(imc_worker *w) {
  if (w == NULL)
    return;
  batch_free(w, w->batch);
  imc_mem m = w->mem;
  imc_free(&m, w);
}

void imc_worker_set_user_data(imc_worker *w, void *ud) {
  if (w)
    w->user_data = ud;
}

void *imc_worker_get_user_data(const imc_worker *w) {
  return w ? w->user_data : NULL;
}

int imc_worker_start(imc_worker *w) {
  if (w == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (w->running)
    return 0;
  w->running = 1;
  w->purge_at = now_ms(w) + (int64_t)w->o.purge_interval_s * 1000;
  issue_purge(w);
  w->poll_rv = 0;
  drive(w);
  return w->poll_rv;
}

int imc_worker_stop(imc_worker *w) {
  if (w == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  w->running = 0;
  w->purge_at = -1;
  if (w->batch == NULL) {
    /* Only a poll can be waiting for a retry: drop it. */
    w->retry_at = -1;
    w->failed = 0;
  }
  return 0;
}

size_t imc_worker_pending(const imc_worker *w) {
  if (w == NULL)
    return 0;
  size_t n = w->ops + w->purging;
  if (w->polling && w->running)
    n++;
  if (w->batch && w->ops == 0)
    n++; /* waiting for a retry, or between steps */
  return n;
}

int64_t imc_worker_next_timeout_ms(imc_worker *w) {
  if (w == NULL)
    return -1;
  int64_t at = w->retry_at;
  if (w->purge_at >= 0 && (at < 0 || w->purge_at < at))
    at = w->purge_at;
  if (at < 0)
    return -1;
  int64_t d = at - now_ms(w);
  return d > 0 ? d : 0;
}

int imc_worker_on_timeout(imc_worker *w) {
  if (w == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  int64_t now = now_ms(w);
  if (w->retry_at >= 0 && w->retry_at <= now) {
    w->retry_at = -1;
    drive(w);
  }
  if (w->purge_at >= 0 && w->purge_at <= now) {
    w->purge_at = now + (int64_t)w->o.purge_interval_s * 1000;
    issue_purge(w);
  }
  return 0;
}

int imc_worker_healthy(const imc_worker *w) {
  return w ? w->healthy : 0;
}

uint64_t imc_worker_stat_get(const imc_worker *w, imc_worker_stat stat) {
  if (w == NULL || (unsigned)stat >= IMC_WK_STAT_COUNT_)
    return 0;
  return w->stats[stat];
}
