/*
 * The Redis engine (see <imchat/engines/redis.h>).
 *
 * Every command is sent with hiredis' async API and recorded, in send
 * order, on r->cmds; Redis answers in that order, so the head is the
 * oldest and its deadline is the one the timeout timer watches. A
 * command whose answer is late drops the connection: hiredis then calls
 * every callback with a NULL reply, which fails its operation.
 *
 * A new connection first sends INFO (for the server's run id) and loads
 * the scripts; commands sent behind them are pipelined and answered
 * after them.
 *
 * Sequence numbers, per counter (struct key):
 *   1. EVALSHA incr: -1 if the counter is missing, else INCR;
 *   2. the value v is trusted unless the counter was missing, v does not
 *      exceed the last value this engine handed out, or the server's run
 *      id changed since the counter was last trusted (a restart or a
 *      failover); an untrusted counter takes the floor path: read its
 *      durable mark M, EVALSHA floor sets it to max(counter, M, last)
 *      and INCRs it;
 *   3. v is handed out once the durable mark covers it: when v exceeds
 *      what this engine knows is durable, the mark is raised to
 *      v + seq_block first (one raise in flight per counter; values
 *      wait for it).
 */
#include <imchat/engines/redis.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/sha.h>

#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KEY_TABLE_MIN 64
#define KEY_TABLE_MAX (1u << 16) /* idle counters beyond this are forgotten */

static const char script_incr[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end\n"
    "return redis.call('INCR', KEYS[1])\n";

static const char script_floor[] =
    "local c = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
    "if c < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end\n"
    "return redis.call('INCR', KEYS[1])\n";

static const char script_tas[] =
    "local v = redis.call('GET', KEYS[1])\n"
    "if v then return {1, v} end\n"
    "redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])\n"
    "return {0}\n";

/* GET returns false for a missing key, which equals no string. */
static const char script_cas[] =
    "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end\n"
    "redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])\n"
    "return 1\n";

enum script { S_INCR, S_FLOOR, S_TAS, S_CAS, N_SCRIPTS };
static const char *const scripts[N_SCRIPTS] = {script_incr, script_floor,
                                               script_tas, script_cas};

enum conn_state { C_DOWN, C_CONNECTING, C_READY };

typedef struct key key;
typedef struct cmd cmd;

/* One seq next() in progress. */
typedef struct seq_op {
  imc_redis *r;
  key *k;
  imc_seq_cb done;
  void *done_ud;
  uint64_t value;      /* the value waiting for its mark */
  struct seq_op *next; /* on k->waiting */
} seq_op;

/* What the engine knows of one counter. */
struct key {
  char *name; /* the counter's key, as the caller named it */
  uint64_t hash;
  uint64_t last;    /* highest value handed out by this engine */
  uint64_t durable; /* the mark is known to be at least this */
  uint64_t raising; /* target of the raise in flight, 0: none */
  uint64_t trusted; /* r->epoch when the counter was last trusted */
  unsigned refs;    /* operations holding the key */
  seq_op *waiting;  /* values above durable, waiting for a raise */
  key *next_in_bucket;
};

typedef enum cmd_kind {
  K_INFO,
  K_SCRIPT_LOAD,
  K_SEQ_INCR,
  K_SEQ_FLOOR,
  K_DEDUP_TAS,
  K_DEDUP_SET,
  K_DEDUP_GET,
  K_DEDUP_CAS
} cmd_kind;

/* One command sent and not yet answered. */
struct cmd {
  imc_redis *r;
  cmd_kind kind;
  int64_t deadline_ms;
  seq_op *seq;           /* K_SEQ_* */
  imc_dedup_cb dedup_cb; /* K_DEDUP_TAS, K_DEDUP_GET, K_DEDUP_CAS */
  imc_done_cb done_cb;   /* K_DEDUP_SET */
  void *done_ud;
  uint8_t *value; /* K_DEDUP_CAS: the value set, for its completion */
  size_t value_len;
  cmd *prev, *next;
};

struct imc_redis {
  imc_loop loop;
  char *host;
  uint16_t port;
  char *prefix;
  int64_t op_timeout_ms, backoff_min_ms, backoff_max_ms, backoff_ms;
  imc_marks_vtbl marks_store;
  const imc_marks_vtbl *marks; /* &marks_store, or NULL: none */
  void *marks_ud;
  uint64_t seq_block;
  char sha[N_SCRIPTS][41];

  redisAsyncContext *ac;
  enum conn_state state;
  void *fd_handle;
  unsigned fd_events;
  void *reconnect_timer;
  void *timeout_timer;
  char run_id[64];
  uint64_t epoch; /* bumped when the server's run id changes */
  char error[128];
  int hello_left; /* answers to INFO and SCRIPT LOAD still to come */

  cmd *cmds_head, *cmds_tail;

  key **buckets;
  size_t nbuckets, nkeys;

  unsigned raises_out; /* marks calls not completed yet */
  int dying;           /* imc_redis_del ran; free when raises_out is 0 */
};

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *xstrdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d)
    memcpy(d, s, n);
  return d;
}

static void set_error(imc_redis *r, const char *what, const char *why) {
  snprintf(r->error, sizeof(r->error), "%s: %s", what, why ? why : "");
}

static void connect_now(imc_redis *r);
static void conn_drop(imc_redis *r);
static void arm_timeout(imc_redis *r);

/* ------------------------------------------------------------------ */
/* Counters                                                             */
/* ------------------------------------------------------------------ */

static uint64_t hash_str(const char *s) {
  uint64_t h = UINT64_C(14695981039346656037);
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * UINT64_C(1099511628211);
  return h;
}

static int keys_grow(imc_redis *r) {
  size_t n = r->nbuckets ? r->nbuckets * 2 : KEY_TABLE_MIN;
  key **b = calloc(n, sizeof(*b));
  if (b == NULL)
    return IMC_ERR_NOMEM;
  for (size_t i = 0; i < r->nbuckets; i++) {
    while (r->buckets[i]) {
      key *k = r->buckets[i];
      r->buckets[i] = k->next_in_bucket;
      k->next_in_bucket = b[k->hash & (n - 1)];
      b[k->hash & (n - 1)] = k;
    }
  }
  free(r->buckets);
  r->buckets = b;
  r->nbuckets = n;
  return 0;
}

static void key_free(key *k) {
  free(k->name);
  free(k);
}

/* Forgets the counters no operation holds: their next use starts over
 * (trusting an existing counter, raising the mark once). */
static void keys_forget_idle(imc_redis *r) {
  for (size_t i = 0; i < r->nbuckets; i++) {
    key **pp = &r->buckets[i];
    while (*pp) {
      key *k = *pp;
      if (k->refs == 0) {
        *pp = k->next_in_bucket;
        key_free(k);
        r->nkeys--;
      } else {
        pp = &k->next_in_bucket;
      }
    }
  }
}

static key *key_get(imc_redis *r, const char *name) {
  uint64_t h = hash_str(name);
  if (r->nbuckets) {
    for (key *k = r->buckets[h & (r->nbuckets - 1)]; k; k = k->next_in_bucket)
      if (k->hash == h && strcmp(k->name, name) == 0)
        return k;
  }
  if (r->nkeys >= KEY_TABLE_MAX)
    keys_forget_idle(r);
  if (r->nkeys >= r->nbuckets && r->nbuckets < KEY_TABLE_MAX &&
      keys_grow(r) < 0)
    return NULL;
  key *k = calloc(1, sizeof(*k));
  if (k == NULL || (k->name = xstrdup(name)) == NULL) {
    free(k);
    return NULL;
  }
  k->hash = h;
  /* A counter first seen is trusted if it exists: only a missing one,
   * or one seen to go back, needs its mark. */
  k->trusted = r->epoch;
  size_t b = h & (r->nbuckets - 1);
  k->next_in_bucket = r->buckets[b];
  r->buckets[b] = k;
  r->nkeys++;
  return k;
}

static void seq_finish(seq_op *op, int status, uint64_t value) {
  op->k->refs--;
  imc_seq_cb done = op->done;
  void *ud = op->done_ud;
  free(op);
  done(ud, status, status == 0 ? value : 0);
}

static void mark_raise(imc_redis *r, key *k);

/* ------------------------------------------------------------------ */
/* Commands                                                             */
/* ------------------------------------------------------------------ */

static void cmd_unlink(imc_redis *r, cmd *c) {
  if (c->prev)
    c->prev->next = c->next;
  else
    r->cmds_head = c->next;
  if (c->next)
    c->next->prev = c->prev;
  else
    r->cmds_tail = c->prev;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Sends argv; the reply (or NULL on a lost connection) goes to c. */
static int cmd_send(imc_redis *r, cmd *c, int argc, const char **argv,
                    const size_t *lens) {
  if (r->ac == NULL || r->state == C_DOWN)
    return IMC_ERR_UNAVAILABLE;
  c->r = r;
  c->deadline_ms = now_ms() + r->op_timeout_ms;
  if (redisAsyncCommandArgv(r->ac, on_reply, c, argc, argv, lens) != REDIS_OK)
    return IMC_ERR_UNAVAILABLE;
  c->prev = r->cmds_tail;
  c->next = NULL;
  if (r->cmds_tail)
    r->cmds_tail->next = c;
  else
    r->cmds_head = c;
  r->cmds_tail = c;
  arm_timeout(r);
  return 0;
}

/* prefix + tag + name, for the key of a counter or a dedup entry. */
static char *full_key(const imc_redis *r, char tag, const char *name,
                      size_t *len) {
  size_t pl = strlen(r->prefix), nl = strlen(name);
  char *s = malloc(pl + 2 + nl + 1);
  if (s == NULL)
    return NULL;
  memcpy(s, r->prefix, pl);
  s[pl] = tag;
  s[pl + 1] = ':';
  memcpy(s + pl + 2, name, nl + 1);
  *len = pl + 2 + nl;
  return s;
}

static int send_script(imc_redis *r, cmd *c, enum script which,
                       const char *kname, char tag, const char *const *args,
                       const size_t *arg_lens, int nargs) {
  size_t klen;
  char *k = full_key(r, tag, kname, &klen);
  if (k == NULL)
    return IMC_ERR_NOMEM;
  const char *argv[7] = {"EVALSHA", r->sha[which], "1", k};
  size_t lens[7] = {7, 40, 1, klen};
  for (int i = 0; i < nargs; i++) {
    argv[4 + i] = args[i];
    lens[4 + i] = arg_lens[i];
  }
  int rv = cmd_send(r, c, 4 + nargs, argv, lens);
  free(k);
  return rv;
}

/* EVALSHA floor: sets the counter to at least floor, then INCR. */
static int seq_send_floor(imc_redis *r, seq_op *op, uint64_t floor) {
  cmd *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return IMC_ERR_NOMEM;
  c->kind = K_SEQ_FLOOR;
  c->seq = op;
  char num[24];
  int n = snprintf(num, sizeof(num), "%" PRIu64, floor);
  const char *args[1] = {num};
  size_t lens[1] = {(size_t)n};
  int rv = send_script(r, c, S_FLOOR, op->k->name, 's', args, lens, 1);
  if (rv < 0)
    free(c);
  return rv;
}

/* The mark of an untrusted counter arrived: set the counter above it. */
static void on_floor_mark(void *p, int status, uint64_t mark) {
  seq_op *op = p;
  imc_redis *r = op->r;
  r->raises_out--;
  if (r->dying) {
    seq_finish(op, IMC_ERR_CLOSED, 0);
    if (r->raises_out == 0)
      imc_redis_del(r);
    return;
  }
  if (status < 0) {
    seq_finish(op, status, 0);
    return;
  }
  key *k = op->k;
  if (mark > k->durable)
    k->durable = mark;
  uint64_t floor = mark > k->last ? mark : k->last;
  int rv = seq_send_floor(r, op, floor);
  if (rv < 0)
    seq_finish(op, rv, 0);
}

static void seq_untrusted(imc_redis *r, seq_op *op) {
  r->raises_out++;
  int rv = r->marks->get(r->marks_ud, op->k->name, on_floor_mark, op);
  if (rv < 0) {
    r->raises_out--;
    seq_finish(op, rv, 0);
  }
}

/* v came from a counter we trust: hand it out once the mark covers it. */
static void seq_accept(imc_redis *r, seq_op *op, uint64_t v) {
  key *k = op->k;
  k->trusted = r->epoch;
  if (v > k->last)
    k->last = v;
  if (v <= k->durable) {
    seq_finish(op, 0, v);
    return;
  }
  op->value = v;
  op->next = k->waiting;
  k->waiting = op;
  if (k->raising == 0)
    mark_raise(r, k);
}

static void seq_reply(imc_redis *r, cmd *c, const redisReply *rep) {
  seq_op *op = c->seq;
  if (rep == NULL) {
    seq_finish(op, r->dying ? IMC_ERR_CLOSED : IMC_ERR_UNAVAILABLE, 0);
    return;
  }
  if (rep->type != REDIS_REPLY_INTEGER) {
    seq_finish(op, IMC_ERR_IO, 0);
    return;
  }
  key *k = op->k;
  if (c->kind == K_SEQ_FLOOR) {
    seq_accept(r, op, (uint64_t)rep->integer);
    return;
  }
  if (rep->integer <= 0 || (uint64_t)rep->integer <= k->last ||
      k->trusted != r->epoch) {
    seq_untrusted(r, op); /* missing, gone back, or another server */
    return;
  }
  seq_accept(r, op, (uint64_t)rep->integer);
}

/* ------------------------------------------------------------------ */
/* Marks                                                                */
/* ------------------------------------------------------------------ */

typedef struct raise_ctx {
  imc_redis *r;
  key *k;
  uint64_t target;
} raise_ctx;

static void on_mark_raised(void *p, int status) {
  raise_ctx *rc = p;
  imc_redis *r = rc->r;
  key *k = rc->k;
  uint64_t target = rc->target;
  free(rc);
  r->raises_out--;
  k->raising = 0;
  k->refs--;
  if (status == 0 && target > k->durable)
    k->durable = target;
  /* Hand out what the mark now covers; fail the rest if the raise
   * failed (their values are burned: a gap, never a repeat). */
  seq_op **pp = &k->waiting;
  int more = 0;
  while (*pp) {
    seq_op *op = *pp;
    if (r->dying || status < 0 || op->value <= k->durable) {
      *pp = op->next;
      if (r->dying)
        seq_finish(op, IMC_ERR_CLOSED, 0);
      else
        seq_finish(op, status < 0 ? status : 0, op->value);
    } else {
      pp = &op->next;
      more = 1;
    }
  }
  if (r->dying) {
    if (r->raises_out == 0)
      imc_redis_del(r);
    return;
  }
  if (more)
    mark_raise(r, k);
}

static void mark_raise(imc_redis *r, key *k) {
  uint64_t top = 0;
  for (seq_op *op = k->waiting; op; op = op->next)
    if (op->value > top)
      top = op->value;
  raise_ctx *rc = malloc(sizeof(*rc));
  int rv = IMC_ERR_NOMEM;
  if (rc) {
    rc->r = r;
    rc->k = k;
    rc->target = top + r->seq_block;
    k->raising = rc->target;
    k->refs++;
    r->raises_out++;
    rv = r->marks->raise(r->marks_ud, k->name, rc->target, on_mark_raised, rc);
    if (rv < 0) {
      r->raises_out--;
      k->refs--;
      k->raising = 0;
      free(rc);
    }
  }
  if (rv < 0) {
    while (k->waiting) {
      seq_op *op = k->waiting;
      k->waiting = op->next;
      seq_finish(op, rv, 0);
    }
  }
}

/* ------------------------------------------------------------------ */
/* Replies                                                              */
/* ------------------------------------------------------------------ */

/* The run id in an INFO server reply; a change means the counters may
 * have been lost (a restart) or may lag (a failover). */
static void info_reply(imc_redis *r, const redisReply *rep) {
  if (rep == NULL || rep->type != REDIS_REPLY_STRING)
    return;
  const char *p = strstr(rep->str, "run_id:");
  if (p == NULL)
    return;
  p += 7;
  size_t n = strcspn(p, "\r\n");
  if (n >= sizeof(r->run_id))
    n = sizeof(r->run_id) - 1;
  if (r->run_id[0] && (strlen(r->run_id) != n || memcmp(r->run_id, p, n)))
    r->epoch++;
  memcpy(r->run_id, p, n);
  r->run_id[n] = '\0';
}

static void dedup_reply(imc_redis *r, cmd *c, const redisReply *rep) {
  int fail = r->dying ? IMC_ERR_CLOSED : IMC_ERR_UNAVAILABLE;
  if (c->kind == K_DEDUP_SET) {
    int st = rep == NULL                       ? fail
             : rep->type == REDIS_REPLY_STATUS ? 0
                                               : IMC_ERR_IO;
    c->done_cb(c->done_ud, st);
    return;
  }
  if (rep == NULL) {
    c->dedup_cb(c->done_ud, fail, 0, NULL, 0);
    return;
  }
  if (c->kind == K_DEDUP_GET) {
    if (rep->type == REDIS_REPLY_NIL)
      c->dedup_cb(c->done_ud, 0, 0, NULL, 0);
    else if (rep->type == REDIS_REPLY_STRING)
      c->dedup_cb(c->done_ud, 0, 1, (const uint8_t *)rep->str,
                  (size_t)rep->len);
    else
      c->dedup_cb(c->done_ud, IMC_ERR_IO, 0, NULL, 0);
    return;
  }
  if (c->kind == K_DEDUP_CAS) { /* 1: swapped, 0: not */
    if (rep->type != REDIS_REPLY_INTEGER)
      c->dedup_cb(c->done_ud, IMC_ERR_IO, 0, NULL, 0);
    else if (rep->integer == 1)
      c->dedup_cb(c->done_ud, 0, 1, c->value ? c->value : (const uint8_t *)"",
                  c->value_len);
    else
      c->dedup_cb(c->done_ud, 0, 0, NULL, 0);
    return;
  }
  /* K_DEDUP_TAS: {0} stored, {1, value} found. */
  if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 ||
      rep->element[0]->type != REDIS_REPLY_INTEGER) {
    c->dedup_cb(c->done_ud, IMC_ERR_IO, 0, NULL, 0);
  } else if (rep->element[0]->integer == 0) {
    c->dedup_cb(c->done_ud, 0, 0, NULL, 0);
  } else if (rep->elements == 2 &&
             rep->element[1]->type == REDIS_REPLY_STRING) {
    c->dedup_cb(c->done_ud, 0, 1, (const uint8_t *)rep->element[1]->str,
                (size_t)rep->element[1]->len);
  } else {
    c->dedup_cb(c->done_ud, IMC_ERR_IO, 0, NULL, 0);
  }
}

/* An error that says the server cannot serve now rather than that the
 * command is wrong: still loading its data after a restart, a replica
 * since a failover, scripts flushed, a script running too long. */
static int server_not_ready(const redisReply *rep) {
  static const char *const codes[] = {"LOADING",    "NOSCRIPT", "READONLY",
                                      "MASTERDOWN", "BUSY",     "TRYAGAIN"};
  for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
    size_t n = strlen(codes[i]);
    if (strncmp(rep->str, codes[i], n) == 0 &&
        (rep->str[n] == ' ' || rep->str[n] == '\0'))
      return 1;
  }
  return 0;
}

/* One more answer to the hello: the connection is ready after all. */
static void hello_answered(imc_redis *r) {
  if (r->hello_left > 0 && --r->hello_left == 0 && r->state == C_CONNECTING) {
    r->state = C_READY;
    r->backoff_ms = r->backoff_min_ms;
  }
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  cmd *c = privdata;
  imc_redis *r = c->r;
  const redisReply *rep = reply;
  cmd_unlink(r, c);
  if (rep && rep->type == REDIS_REPLY_ERROR) {
    set_error(r,
              c->kind == K_INFO          ? "INFO"
              : c->kind == K_SCRIPT_LOAD ? "SCRIPT LOAD"
                                         : "redis",
              rep->str);
    /* A refused hello, or a server that cannot serve now: the command
     * fails as unavailable and the connection is dropped; the next one
     * reads the run id and loads the scripts again. */
    if (c->kind == K_INFO || c->kind == K_SCRIPT_LOAD ||
        server_not_ready(rep)) {
      rep = NULL;
      if (r->ac == ac)
        conn_drop(r); /* hiredis frees ac once this callback returns */
    }
  }
  switch (c->kind) {
  case K_INFO:
    info_reply(r, rep);
    if (rep)
      hello_answered(r);
    break;
  case K_SCRIPT_LOAD:
    if (rep)
      hello_answered(r);
    break;
  case K_SEQ_INCR:
  case K_SEQ_FLOOR:
    seq_reply(r, c, rep);
    break;
  default:
    dedup_reply(r, c, rep);
    break;
  }
  free(c->value);
  free(c);
}

/* ------------------------------------------------------------------ */
/* The connection                                                       */
/* ------------------------------------------------------------------ */

static void update_fd(imc_redis *r) {
  if (r->fd_handle)
    r->loop.vtbl->fd_set(r->loop.ud, r->fd_handle, r->fd_events);
}

static void on_fd(void *ud, int fd, unsigned events) {
  imc_redis *r = ud;
  redisAsyncContext *ac = r->ac;
  (void)fd;
  if (ac == NULL)
    return;
  if (events & (IMC_LOOP_READ | IMC_LOOP_ERROR))
    redisAsyncHandleRead(ac);
  if (r->ac == ac && (events & (IMC_LOOP_WRITE | IMC_LOOP_ERROR)))
    redisAsyncHandleWrite(ac);
}

static void ev_add_read(void *p) {
  imc_redis *r = p;
  r->fd_events |= IMC_LOOP_READ;
  update_fd(r);
}

static void ev_del_read(void *p) {
  imc_redis *r = p;
  r->fd_events &= ~IMC_LOOP_READ;
  update_fd(r);
}

static void ev_add_write(void *p) {
  imc_redis *r = p;
  r->fd_events |= IMC_LOOP_WRITE;
  update_fd(r);
}

static void ev_del_write(void *p) {
  imc_redis *r = p;
  r->fd_events &= ~IMC_LOOP_WRITE;
  update_fd(r);
}

static void ev_cleanup(void *p) {
  imc_redis *r = p;
  if (r->fd_handle)
    r->loop.vtbl->fd_del(r->loop.ud, r->fd_handle);
  r->fd_handle = NULL;
  r->fd_events = 0;
}

static void on_reconnect_timer(void *ud) {
  imc_redis *r = ud;
  r->reconnect_timer = NULL;
  connect_now(r);
}

/* The connection is gone: wait, then connect again. */
static void conn_lost(imc_redis *r) {
  r->ac = NULL;
  r->state = C_DOWN;
  if (r->dying || r->reconnect_timer)
    return;
  r->loop.vtbl->timer_add(r->loop.ud, r->backoff_ms, on_reconnect_timer, r,
                          &r->reconnect_timer);
  r->backoff_ms *= 2;
  if (r->backoff_ms > r->backoff_max_ms)
    r->backoff_ms = r->backoff_max_ms;
}

static void on_connect(const redisAsyncContext *ac, int status) {
  imc_redis *r = ac->data;
  if (status != REDIS_OK) {
    set_error(r, "connect", ac->errstr);
    conn_lost(r); /* hiredis frees ac after this */
  }
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  imc_redis *r = ac->data;
  if (r->ac != ac)
    return; /* dropped by us: already handled */
  if (status != REDIS_OK)
    set_error(r, "connection", ac->errstr);
  conn_lost(r);
}

/* Drops the connection (a late answer): every command still out fails. */
static void conn_drop(imc_redis *r) {
  redisAsyncContext *ac = r->ac;
  if (ac == NULL)
    return;
  r->ac = NULL;
  redisAsyncFree(ac);
  conn_lost(r);
}

static void on_timeout_timer(void *ud) {
  imc_redis *r = ud;
  r->timeout_timer = NULL;
  if (r->cmds_head && r->cmds_head->deadline_ms <= now_ms()) {
    set_error(r, "redis", "no answer within the operation timeout");
    conn_drop(r);
  }
  arm_timeout(r);
}

static void arm_timeout(imc_redis *r) {
  if (r->timeout_timer || r->cmds_head == NULL)
    return;
  int64_t d = r->cmds_head->deadline_ms - now_ms();
  r->loop.vtbl->timer_add(r->loop.ud, d < 0 ? 0 : d, on_timeout_timer, r,
                          &r->timeout_timer);
}

/* INFO first (the run id), then the scripts, on every new connection;
 * 0, or < 0 when a command could not be sent. */
static int send_hello(imc_redis *r) {
  r->hello_left = 1 + N_SCRIPTS;
  for (int i = -1; i < N_SCRIPTS; i++) {
    cmd *c = calloc(1, sizeof(*c));
    if (c == NULL)
      return IMC_ERR_NOMEM;
    const char *argv[3] = {"INFO", "server"};
    size_t lens[3] = {4, 6};
    int argc = 2;
    c->kind = K_INFO;
    if (i >= 0) {
      c->kind = K_SCRIPT_LOAD;
      argv[0] = "SCRIPT";
      argv[1] = "LOAD";
      argv[2] = scripts[i];
      lens[0] = 6;
      lens[1] = 4;
      lens[2] = strlen(scripts[i]);
      argc = 3;
    }
    if (cmd_send(r, c, argc, argv, lens) < 0) {
      free(c);
      return IMC_ERR_NOMEM;
    }
  }
  return 0;
}

static void connect_now(imc_redis *r) {
  redisAsyncContext *ac = redisAsyncConnect(r->host, r->port);
  if (ac == NULL) {
    set_error(r, "connect", "out of memory");
    conn_lost(r);
    return;
  }
  if (ac->err) {
    set_error(r, "connect", ac->errstr);
    redisAsyncFree(ac);
    conn_lost(r);
    return;
  }
  ac->data = r;
  ac->ev.data = r;
  ac->ev.addRead = ev_add_read;
  ac->ev.delRead = ev_del_read;
  ac->ev.addWrite = ev_add_write;
  ac->ev.delWrite = ev_del_write;
  ac->ev.cleanup = ev_cleanup;
  r->fd_events = 0;
  if (r->loop.vtbl->fd_add(r->loop.ud, ac->c.fd, 0, on_fd, r, &r->fd_handle) <
      0) {
    set_error(r, "connect", "cannot watch the socket");
    r->fd_handle = NULL;
    redisAsyncFree(ac);
    conn_lost(r);
    return;
  }
  r->ac = ac;
  r->state = C_CONNECTING;
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  if (send_hello(r) < 0) {
    set_error(r, "connect", "cannot send INFO and the scripts");
    conn_drop(r);
  }
}

/* ------------------------------------------------------------------ */
/* The vtables                                                          */
/* ------------------------------------------------------------------ */

static int seq_next(void *ud, const char *name, imc_seq_cb done,
                    void *done_ud) {
  imc_redis *r = ud;
  if (name == NULL || done == NULL || r->marks == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (r->ac == NULL)
    return IMC_ERR_UNAVAILABLE;
  key *k = key_get(r, name);
  seq_op *op = k ? calloc(1, sizeof(*op)) : NULL;
  cmd *c = op ? calloc(1, sizeof(*c)) : NULL;
  if (c == NULL) {
    free(op);
    return IMC_ERR_NOMEM;
  }
  op->r = r;
  op->k = k;
  op->done = done;
  op->done_ud = done_ud;
  c->kind = K_SEQ_INCR;
  c->seq = op;
  k->refs++;
  int rv = send_script(r, c, S_INCR, name, 's', NULL, NULL, 0);
  if (rv < 0) {
    k->refs--;
    free(op);
    free(c);
  }
  return rv;
}

static int dedup_send(imc_redis *r, cmd *c, int argc, const char **argv,
                      size_t *lens) {
  int rv = cmd_send(r, c, argc, argv, lens);
  if (rv < 0)
    free(c);
  return rv;
}

static int d_tas(void *ud, const char *name, const uint8_t *value,
                 size_t value_len, uint32_t ttl_s, imc_dedup_cb done,
                 void *done_ud) {
  imc_redis *r = ud;
  if (name == NULL || done == NULL || ttl_s == 0 ||
      (value == NULL && value_len))
    return IMC_ERR_INVALID_ARGUMENT;
  cmd *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return IMC_ERR_NOMEM;
  c->kind = K_DEDUP_TAS;
  c->dedup_cb = done;
  c->done_ud = done_ud;
  char ttl[12];
  int n = snprintf(ttl, sizeof(ttl), "%" PRIu32, ttl_s);
  const char *args[2] = {value ? (const char *)value : "", ttl};
  size_t lens[2] = {value_len, (size_t)n};
  int rv = send_script(r, c, S_TAS, name, 'd', args, lens, 2);
  if (rv < 0)
    free(c);
  return rv;
}

static int d_cas(void *ud, const char *name, const uint8_t *expect,
                 size_t expect_len, const uint8_t *value, size_t value_len,
                 uint32_t ttl_s, imc_dedup_cb done, void *done_ud) {
  imc_redis *r = ud;
  if (name == NULL || done == NULL || ttl_s == 0 ||
      (value == NULL && value_len) || (expect == NULL && expect_len))
    return IMC_ERR_INVALID_ARGUMENT;
  cmd *c = calloc(1, sizeof(*c));
  if (c == NULL || (value_len && (c->value = malloc(value_len)) == NULL)) {
    free(c);
    return IMC_ERR_NOMEM;
  }
  c->kind = K_DEDUP_CAS;
  c->dedup_cb = done;
  c->done_ud = done_ud;
  if (value_len)
    memcpy(c->value, value, value_len);
  c->value_len = value_len;
  char ttl[12];
  int n = snprintf(ttl, sizeof(ttl), "%" PRIu32, ttl_s);
  const char *args[3] = {expect ? (const char *)expect : "",
                         value ? (const char *)value : "", ttl};
  size_t lens[3] = {expect_len, value_len, (size_t)n};
  int rv = send_script(r, c, S_CAS, name, 'd', args, lens, 3);
  if (rv < 0) {
    free(c->value);
    free(c);
  }
  return rv;
}

static int d_set(void *ud, const char *name, const uint8_t *value,
                 size_t value_len, uint32_t ttl_s, imc_done_cb done,
                 void *done_ud) {
  imc_redis *r = ud;
  if (name == NULL || done == NULL || ttl_s == 0 ||
      (value == NULL && value_len))
    return IMC_ERR_INVALID_ARGUMENT;
  size_t klen;
  char *k = full_key(r, 'd', name, &klen);
  cmd *c = k ? calloc(1, sizeof(*c)) : NULL;
  if (c == NULL) {
    free(k);
    return IMC_ERR_NOMEM;
  }
  c->kind = K_DEDUP_SET;
  c->done_cb = done;
  c->done_ud = done_ud;
  char ttl[12];
  int n = snprintf(ttl, sizeof(ttl), "%" PRIu32, ttl_s);
  const char *argv[5] = {"SET", k, value ? (const char *)value : "", "EX", ttl};
  size_t lens[5] = {3, klen, value_len, 2, (size_t)n};
  int rv = dedup_send(r, c, 5, argv, lens);
  free(k);
  return rv;
}

static int d_get(void *ud, const char *name, imc_dedup_cb done, void *done_ud) {
  imc_redis *r = ud;
  if (name == NULL || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  size_t klen;
  char *k = full_key(r, 'd', name, &klen);
  cmd *c = k ? calloc(1, sizeof(*c)) : NULL;
  if (c == NULL) {
    free(k);
    return IMC_ERR_NOMEM;
  }
  c->kind = K_DEDUP_GET;
  c->dedup_cb = done;
  c->done_ud = done_ud;
  const char *argv[2] = {"GET", k};
  size_t lens[2] = {3, klen};
  int rv = dedup_send(r, c, 2, argv, lens);
  free(k);
  return rv;
}

static const imc_seq_vtbl seq_vtbl = {
    .struct_size = sizeof(imc_seq_vtbl),
    .next = seq_next,
};

static const imc_dedup_vtbl dedup_vtbl = {
    .struct_size = sizeof(imc_dedup_vtbl),
    .test_and_set = d_tas,
    .set = d_set,
    .get = d_get,
    .compare_and_set = d_cas,
};

const imc_seq_vtbl *imc_redis_seq_vtbl(void) {
  return &seq_vtbl;
}

const imc_dedup_vtbl *imc_redis_dedup_vtbl(void) {
  return &dedup_vtbl;
}

/* ------------------------------------------------------------------ */
/* Life cycle                                                           */
/* ------------------------------------------------------------------ */

static void sha1_hex(const char *s, char out[41]) {
  unsigned char md[SHA_DIGEST_LENGTH];
  SHA1((const unsigned char *)s, strlen(s), md);
  for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
    snprintf(out + 2 * i, 3, "%02x", md[i]);
}

struct imc_redis_options {
  char *host;
  uint16_t port;
  char *prefix;
  int64_t timeout_ms, backoff_min_ms, backoff_max_ms;
  imc_marks_vtbl marks;
  void *marks_ud;
  int has_marks;
  uint32_t seq_block;
};

static int set_str(char **dst, const char *src) {
  char *d = xstrdup(src);
  if (d == NULL)
    return IMC_ERR_NOMEM;
  free(*dst);
  *dst = d;
  return 0;
}

int imc_redis_options_new(imc_redis_options **out) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_redis_options *o = calloc(1, sizeof(*o));
  if (o == NULL || set_str(&o->host, "127.0.0.1") < 0 ||
      set_str(&o->prefix, "imc:") < 0) {
    imc_redis_options_del(o);
    return IMC_ERR_NOMEM;
  }
  o->port = 6379;
  o->timeout_ms = 2000;
  o->backoff_min_ms = 100;
  o->backoff_max_ms = 5000;
  o->seq_block = 1000;
  *out = o;
  return 0;
}

void imc_redis_options_del(imc_redis_options *o) {
  if (o == NULL)
    return;
  free(o->host);
  free(o->prefix);
  free(o);
}

int imc_redis_options_set_address(imc_redis_options *o, const char *address) {
  if (o == NULL || address == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  const char *colon = strrchr(address, ':');
  if (colon == NULL || colon == address || colon[1] == '\0')
    return IMC_ERR_INVALID_ARGUMENT;
  char *end;
  unsigned long port = strtoul(colon + 1, &end, 10);
  if (*end != '\0' || port == 0 || port > 65535)
    return IMC_ERR_INVALID_ARGUMENT;
  const char *h = address;
  size_t n = (size_t)(colon - address);
  if (h[0] == '[') { /* [v6]:port */
    if (n < 3 || h[n - 1] != ']')
      return IMC_ERR_INVALID_ARGUMENT;
    h++;
    n -= 2;
  }
  char *host = malloc(n + 1);
  if (host == NULL)
    return IMC_ERR_NOMEM;
  memcpy(host, h, n);
  host[n] = '\0';
  free(o->host);
  o->host = host;
  o->port = (uint16_t)port;
  return 0;
}

int imc_redis_options_set_prefix(imc_redis_options *o, const char *prefix) {
  if (o == NULL || prefix == NULL || prefix[0] == '\0' || strlen(prefix) > 128)
    return IMC_ERR_INVALID_ARGUMENT;
  return set_str(&o->prefix, prefix);
}

int imc_redis_options_set_timeout_ms(imc_redis_options *o, int64_t ms) {
  if (o == NULL || ms < 10 || ms > 600000)
    return IMC_ERR_INVALID_ARGUMENT;
  o->timeout_ms = ms;
  return 0;
}

int imc_redis_options_set_reconnect(imc_redis_options *o, int64_t min_ms,
                                    int64_t max_ms) {
  if (o == NULL || min_ms < 1 || max_ms < min_ms || max_ms > 600000)
    return IMC_ERR_INVALID_ARGUMENT;
  o->backoff_min_ms = min_ms;
  o->backoff_max_ms = max_ms;
  return 0;
}

int imc_redis_options_set_marks(imc_redis_options *o,
                                const imc_marks_vtbl *vtbl, void *ud) {
  if (o == NULL || vtbl == NULL ||
      vtbl->struct_size <
          offsetof(imc_marks_vtbl, raise) + sizeof(vtbl->raise) ||
      vtbl->get == NULL || vtbl->raise == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  memset(&o->marks, 0, sizeof(o->marks));
  memcpy(&o->marks, vtbl,
         vtbl->struct_size < sizeof(o->marks) ? vtbl->struct_size
                                              : sizeof(o->marks));
  o->marks_ud = ud;
  o->has_marks = 1;
  return 0;
}

int imc_redis_options_set_seq_block(imc_redis_options *o, uint32_t block) {
  if (o == NULL || block == 0 || block > 10000000)
    return IMC_ERR_INVALID_ARGUMENT;
  o->seq_block = block;
  return 0;
}

int imc_redis_new(imc_redis **out, const imc_loop *loop,
                  const imc_redis_options *opt) {
  if (out == NULL || loop == NULL || loop->vtbl == NULL || opt == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_redis *r = calloc(1, sizeof(*r));
  if (r == NULL)
    return IMC_ERR_NOMEM;
  r->loop = *loop;
  r->host = xstrdup(opt->host);
  r->prefix = xstrdup(opt->prefix);
  if (r->host == NULL || r->prefix == NULL) {
    free(r->host);
    free(r->prefix);
    free(r);
    return IMC_ERR_NOMEM;
  }
  r->port = opt->port;
  r->op_timeout_ms = opt->timeout_ms;
  r->backoff_min_ms = opt->backoff_min_ms;
  r->backoff_max_ms = opt->backoff_max_ms;
  r->backoff_ms = r->backoff_min_ms;
  if (opt->has_marks) {
    r->marks_store = opt->marks;
    r->marks = &r->marks_store;
    r->marks_ud = opt->marks_ud;
  }
  r->seq_block = opt->seq_block;
  r->epoch = 1;
  for (int i = 0; i < N_SCRIPTS; i++)
    sha1_hex(scripts[i], r->sha[i]);
  connect_now(r);
  *out = r;
  return 0;
}

void imc_redis_del(imc_redis *r) {
  if (r == NULL)
    return;
  if (!r->dying) {
    r->dying = 1;
    if (r->reconnect_timer)
      r->loop.vtbl->timer_del(r->loop.ud, r->reconnect_timer);
    if (r->timeout_timer)
      r->loop.vtbl->timer_del(r->loop.ud, r->timeout_timer);
    r->reconnect_timer = r->timeout_timer = NULL;
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    if (ac)
      redisAsyncFree(ac); /* fails every command still out: CLOSED */
    /* Values waiting for a raise in flight are failed when it returns. */
  }
  if (r->raises_out)
    return;
  for (size_t i = 0; i < r->nbuckets; i++) {
    while (r->buckets[i]) {
      key *k = r->buckets[i];
      r->buckets[i] = k->next_in_bucket;
      key_free(k);
    }
  }
  free(r->buckets);
  free(r->host);
  free(r->prefix);
  free(r);
}

int imc_redis_health(const imc_redis *r) {
  return r->state == C_READY ? 0 : IMC_ERR_UNAVAILABLE;
}

const char *imc_redis_errmsg(const imc_redis *r) {
  return r->error;
}
