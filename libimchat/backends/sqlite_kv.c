/*
 * SQLite embedded backends: sequence counters and the dedup set.
 *
 * Sequence counters live in memory. The file holds each counter's
 * high-water mark: a value is handed out only once a reservation that
 * covers it is committed, and a reservation raises the mark by a block
 * (seq_block values), so most values cost no write at all. After a crash
 * the rest of each block is skipped, never reused: a conversation's seq
 * then jumps (a gap, which clients sync on) but never repeats or goes
 * back. A clean imc_sqlite_del() gives the unused part back.
 */
#include "backends/sqlite_int.h"

#include <string.h>

/* ------------------------------------------------------------------ */
/* Sequence counters                                                    */
/* ------------------------------------------------------------------ */

static size_t hash_key(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return (size_t)h;
}

static imc_sq_seq **seq_slot(imc_sqlite *db, const char *key) {
  imc_sq_seq **p = &db->seq_buckets[hash_key(key) & (db->seq_nbuckets - 1)];
  while (*p && strcmp((*p)->key, key) != 0)
    p = &(*p)->hnext;
  return p;
}

static void lru_unlink(imc_sqlite *db, imc_sq_seq *e) {
  if (e->newer)
    e->newer->older = e->older;
  else
    db->seq_newest = e->older;
  if (e->older)
    e->older->newer = e->newer;
  else
    db->seq_oldest = e->newer;
  e->newer = e->older = NULL;
}

static void lru_push(imc_sqlite *db, imc_sq_seq *e) {
  e->older = db->seq_newest;
  e->newer = NULL;
  if (db->seq_newest)
    db->seq_newest->newer = e;
  else
    db->seq_oldest = e;
  db->seq_newest = e;
}

static int seq_grow(imc_sqlite *db) {
  size_t nb = db->seq_nbuckets ? db->seq_nbuckets * 2 : 256;
  imc_sq_seq **b = imc_calloc(&db->mem, nb, sizeof(*b));
  if (b == NULL)
    return IMC_ERR_NOMEM;
  for (size_t i = 0; i < db->seq_nbuckets; i++) {
    imc_sq_seq *e = db->seq_buckets[i];
    while (e) {
      imc_sq_seq *next = e->hnext;
      size_t h = hash_key(e->key) & (nb - 1);
      e->hnext = b[h];
      b[h] = e;
      e = next;
    }
  }
  imc_free(&db->mem, db->seq_buckets);
  db->seq_buckets = b;
  db->seq_nbuckets = nb;
  return 0;
}

/* Forgets the least recently used idle counter: the rest of its block
 * is skipped (a gap), never reused. */
static void seq_evict(imc_sqlite *db) {
  for (imc_sq_seq *e = db->seq_oldest; e; e = e->newer) {
    if (e->reserving || e->serving || e->waiters)
      continue;
    *seq_slot(db, e->key) = e->hnext;
    lru_unlink(db, e);
    imc_free(&db->mem, e);
    db->seq_count--;
    return;
  }
}

/* The counter of key, created if needed, now the most recently used. */
static imc_sq_seq *seq_get(imc_sqlite *db, const char *key) {
  if (db->seq_nbuckets == 0 && seq_grow(db) < 0)
    return NULL;
  imc_sq_seq **slot = seq_slot(db, key);
  imc_sq_seq *e = *slot;
  if (e) {
    lru_unlink(db, e);
    lru_push(db, e);
    return e;
  }
  if (db->seq_count >= IMC_SQLITE_SEQ_CACHE)
    seq_evict(db);
  if (db->seq_count >= db->seq_nbuckets) {
    if (seq_grow(db) < 0)
      return NULL;
  }
  size_t kl = strlen(key) + 1;
  e = imc_calloc(&db->mem, 1, sizeof(*e) + kl);
  if (e == NULL)
    return NULL;
  memcpy(e->key, key, kl);
  e->next = 1;
  e->limit = 0;
  slot = seq_slot(db, key);
  *slot = e;
  lru_push(db, e);
  db->seq_count++;
  return e;
}

typedef struct reserve_op {
  imc_sq_op base;
  uint64_t block;
  uint64_t high; /* the new high-water mark */
  char key[];
} reserve_op;

static int reserve_exec(imc_sqlite *db, imc_sq_op *o) {
  reserve_op *op = (reserve_op *)o;
  sqlite3_stmt *st = imc_sq_get(db, SQ_SEQ_RESERVE);
  imc_sq_text(db, st, 1, op->key);
  imc_sq_int(db, st, 2, (int64_t)op->block);
  int rc = imc_sq_step(db, st);
  int rv = 0;
  if (rc == SQLITE_ROW) {
    int64_t v = sqlite3_column_int64(st, 0);
    op->high = v > 0 ? (uint64_t)v : 0;
    rc = sqlite3_step(st);
  }
  if (rc != SQLITE_DONE)
    rv = imc_sq_fail(db, rc, "seq reserve");
  else if (op->high < op->block)
    rv = imc_sq_fail(db, SQLITE_CORRUPT, "seq reserve");
  sqlite3_reset(st);
  return rv;
}

static int seq_reserve(imc_sqlite *db, imc_sq_seq *e);

/* Hands out values to the waiters, in order, while the block lasts. */
static int seq_serve(imc_sqlite *db, imc_sq_seq *e, int status) {
  int count = 0;
  e->serving = 1;
  while (e->waiters && (status < 0 || e->next <= e->limit)) {
    imc_sq_seq_waiter *w = e->waiters;
    e->waiters = w->next;
    if (e->waiters == NULL)
      e->waiters_tail = NULL;
    uint64_t v = status < 0 ? 0 : e->next++;
    imc_seq_cb done = w->done;
    void *ud = w->done_ud;
    imc_free(&db->mem, w);
    done(ud, status, v);
    count++;
  }
  e->serving = 0;
  if (e->waiters && !e->reserving) {
    int rv = seq_reserve(db, e);
    if (rv < 0)
      count += seq_serve(db, e, rv);
  }
  return count;
}

static int reserve_complete(imc_sqlite *db, imc_sq_op *o) {
  reserve_op *op = (reserve_op *)o;
  imc_sq_seq *e = *seq_slot(db, op->key); /* reserving: never evicted */
  if (e == NULL)
    return 0;
  e->reserving = 0;
  if (op->base.status == 0) {
    e->next = op->high - op->block + 1;
    e->limit = op->high;
  }
  return seq_serve(db, e, op->base.status);
}

static const imc_sq_op_type reserve_type = {
    .write = 1, .exec = reserve_exec, .complete = reserve_complete};

static int seq_reserve(imc_sqlite *db, imc_sq_seq *e) {
  size_t kl = strlen(e->key) + 1;
  reserve_op *op = imc_calloc(&db->mem, 1, sizeof(*op) + kl);
  if (op == NULL)
    return IMC_ERR_NOMEM;
  op->base.type = &reserve_type;
  op->block = db->seq_block;
  memcpy(op->key, e->key, kl);
  e->reserving = 1;
  int rv = imc_sq_submit_op(db, &op->base);
  if (rv < 0)
    e->reserving = 0;
  return rv;
}

static int seq_next(void *ud, const char *key, imc_seq_cb done, void *done_ud) {
  imc_sqlite *db = ud;
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if (key == NULL || *key == '\0' || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (db->closing)
    return IMC_ERR_CLOSED;
  imc_sq_seq *e = seq_get(db, key);
  if (e == NULL)
    return IMC_ERR_NOMEM;
  /* Reserved and committed: no write. */
  if (!e->reserving && !e->serving && !e->waiters && e->next <= e->limit) {
    done(done_ud, 0, e->next++);
    return 0;
  }
  imc_sq_seq_waiter *w = imc_calloc(&db->mem, 1, sizeof(*w));
  if (w == NULL)
    return IMC_ERR_NOMEM;
  w->done = done;
  w->done_ud = done_ud;
  if (e->waiters_tail)
    e->waiters_tail->next = w;
  else
    e->waiters = w;
  e->waiters_tail = w;
  if (e->reserving || e->serving)
    return 0; /* served when the reservation completes */
  rv = seq_reserve(db, e);
  if (rv < 0 && e->waiters == w) {
    /* Not reserved, so nobody else waits: w is the only waiter. */
    e->waiters = e->waiters_tail = NULL;
    imc_free(&db->mem, w);
    return rv;
  }
  return 0;
}

void imc_sq_seq_close(imc_sqlite *db) {
  /* A clean close gives back the unused part of each block, so a
   * restart continues without a gap. Nothing is handed out after this,
   * and a failure only leaves the gap. */
  int begun = imc_sq_begin(db) == 0;
  for (imc_sq_seq *e = db->seq_newest; e && begun; e = e->older) {
    if (e->reserving || e->next > e->limit)
      continue;
    sqlite3_stmt *st = imc_sq_get(db, SQ_SEQ_LOWER);
    imc_sq_text(db, st, 1, e->key);
    imc_sq_int(db, st, 2, (int64_t)(e->next - 1));
    imc_sq_int(db, st, 3, (int64_t)e->limit);
    if (imc_sq_run(db, st, "seq give back") < 0) {
      imc_sq_rollback(db);
      begun = 0;
    }
  }
  if (begun)
    imc_sq_commit(db);
  for (imc_sq_seq *e = db->seq_newest; e;) {
    imc_sq_seq *older = e->older;
    while (e->waiters) {
      imc_sq_seq_waiter *w = e->waiters;
      e->waiters = w->next;
      w->done(w->done_ud, IMC_ERR_CLOSED, 0);
      imc_free(&db->mem, w);
    }
    imc_free(&db->mem, e);
    e = older;
  }
  imc_free(&db->mem, db->seq_buckets);
  db->seq_buckets = NULL;
  db->seq_newest = db->seq_oldest = NULL;
  db->seq_nbuckets = db->seq_count = 0;
}

int imc_sqlite_set_seq_block(imc_sqlite *db, uint32_t block) {
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if (block == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  db->seq_block = block;
  return 0;
}

static const imc_seq_vtbl seq_vtbl = {
    .struct_size = sizeof(imc_seq_vtbl),
    .next = seq_next,
};

const imc_seq_vtbl *imc_sqlite_seq_vtbl(void) {
  return &seq_vtbl;
}

/* ------------------------------------------------------------------ */
/* Dedup set                                                            */
/* ------------------------------------------------------------------ */

enum { D_TAS, D_SET, D_GET, D_CAS };

typedef struct dedup_op {
  imc_sq_op base;
  int kind;
  int64_t now;     /* wall clock when the op was made */
  int64_t expires; /* TAS, SET */
  imc_dedup_cb dcb;
  imc_done_cb done;
  void *done_ud;
  const uint8_t *value;
  size_t value_len;
  const uint8_t *expect; /* CAS */
  size_t expect_len;
  int found;
  uint8_t *copy; /* the value found, NULL when empty */
  size_t len;
  char key[]; /* then the value, then expect */
} dedup_op;

/*
 * Look key up. On a hit *found is 1 and the value is copied to *copy
 * (allocated from db->mem, NULL when empty): the column's bytes die with
 * the statement's reset, and the completion may use the statement again.
 */
static int dedup_lookup(imc_sqlite *db, const char *key, int64_t now,
                        int *found, uint8_t **copy, size_t *len) {
  sqlite3_stmt *st = imc_sq_get(db, SQ_DEDUP_GET);
  imc_sq_text(db, st, 1, key);
  imc_sq_int(db, st, 2, now);
  int rc = imc_sq_step(db, st);
  int rv = 0;
  *found = 0;
  *copy = NULL;
  *len = 0;
  if (rc == SQLITE_ROW) {
    *found = 1;
    *len = (size_t)sqlite3_column_bytes(st, 0);
    if (*len) {
      *copy = imc_malloc(&db->mem, *len);
      if (*copy == NULL)
        rv = IMC_ERR_NOMEM;
      else
        memcpy(*copy, sqlite3_column_blob(st, 0), *len);
    }
  } else if (rc != SQLITE_DONE) {
    rv = imc_sq_fail(db, rc, "dedup get");
  }
  sqlite3_reset(st);
  return rv;
}

static int dedup_put(imc_sqlite *db, dedup_op *op) {
  sqlite3_stmt *st = imc_sq_get(db, SQ_DEDUP_PUT);
  imc_sq_text(db, st, 1, op->key);
  imc_sq_blob(db, st, 2, op->value, op->value_len);
  imc_sq_int(db, st, 3, op->expires);
  return imc_sq_run(db, st, "dedup set");
}

/* Expired rows count as absent, so a plain REPLACE takes their place.
 * The op runs inside a transaction (its own, or its batch's), so
 * nothing can insert the key between the lookup and the insert. */
static int dedup_exec(imc_sqlite *db, imc_sq_op *o) {
  dedup_op *op = (dedup_op *)o;
  if (op->kind == D_SET)
    return dedup_put(db, op);
  int rv = dedup_lookup(db, op->key, op->now, &op->found, &op->copy, &op->len);
  if (rv == 0 && op->kind == D_TAS && !op->found)
    rv = dedup_put(db, op);
  if (rv == 0 && op->kind == D_CAS) {
    op->found = op->found && op->len == op->expect_len &&
                (op->len == 0 || memcmp(op->copy, op->expect, op->len) == 0);
    if (op->found)
      rv = dedup_put(db, op);
  }
  return rv;
}

static int dedup_complete(imc_sqlite *db, imc_sq_op *o) {
  dedup_op *op = (dedup_op *)o;
  int st = op->base.status;
  if (op->kind == D_SET) {
    op->done(op->done_ud, st);
    return 1;
  }
  /* A found empty value is a valid empty buffer, not NULL. */
  int found = st == 0 && op->found;
  const uint8_t *v = found ? (op->copy ? op->copy : (const uint8_t *)"") : NULL;
  size_t len = found ? op->len : 0;
  if (found && op->kind == D_CAS) { /* the value it holds now */
    v = op->value_len ? op->value : (const uint8_t *)"";
    len = op->value_len;
  }
  op->dcb(op->done_ud, st, found, v, len);
  return 1;
}

static void dedup_release(imc_sqlite *db, imc_sq_op *o) {
  imc_free(&db->mem, ((dedup_op *)o)->copy);
}

static const imc_sq_op_type dedup_write_type = {.write = 1,
                                                .exec = dedup_exec,
                                                .complete = dedup_complete,
                                                .release = dedup_release};
static const imc_sq_op_type dedup_read_type = {.write = 0,
                                               .exec = dedup_exec,
                                               .complete = dedup_complete,
                                               .release = dedup_release};

/* The bytes of a CAS's expected value (none for the other kinds). */
typedef struct dedup_expect {
  const uint8_t *p;
  size_t len;
} dedup_expect;

static int dedup_submit(imc_sqlite *db, int kind, const char *key,
                        const uint8_t *value, size_t value_len, uint32_t ttl_s,
                        imc_dedup_cb dcb, imc_done_cb done, void *done_ud,
                        dedup_expect ex) {
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  /* A zero TTL has no meaning every backend could share (Redis refuses
   * it); refuse it here too. */
  if (key == NULL || *key == '\0' || (dcb == NULL && done == NULL) ||
      (kind != D_GET && ((value == NULL && value_len) || ttl_s == 0)) ||
      (ex.p == NULL && ex.len))
    return IMC_ERR_INVALID_ARGUMENT;
  size_t kl = strlen(key) + 1;
  dedup_op *op = imc_calloc(&db->mem, 1, sizeof(*op) + kl + value_len + ex.len);
  if (op == NULL)
    return IMC_ERR_NOMEM;
  op->base.type = kind == D_GET ? &dedup_read_type : &dedup_write_type;
  op->kind = kind;
  /* Expiry is wall-clock time: it must survive a restart, and the
   * monotonic clock starts again at boot. */
  op->now = imc_clock_wall(&db->clock);
  op->expires = op->now + (int64_t)ttl_s * 1000;
  op->dcb = dcb;
  op->done = done;
  op->done_ud = done_ud;
  memcpy(op->key, key, kl);
  if (value_len)
    memcpy(op->key + kl, value, value_len);
  op->value = (const uint8_t *)op->key + kl;
  op->value_len = value_len;
  if (ex.len)
    memcpy(op->key + kl + value_len, ex.p, ex.len);
  op->expect = op->value + value_len;
  op->expect_len = ex.len;
  return imc_sq_submit_op(db, &op->base);
}

static int dedup_test_and_set(void *ud, const char *key, const uint8_t *value,
                              size_t value_len, uint32_t ttl_s,
                              imc_dedup_cb done, void *done_ud) {
  return dedup_submit(ud, D_TAS, key, value, value_len, ttl_s, done, NULL,
                      done_ud, (dedup_expect){NULL, 0});
}

static int dedup_set(void *ud, const char *key, const uint8_t *value,
                     size_t value_len, uint32_t ttl_s, imc_done_cb done,
                     void *done_ud) {
  return dedup_submit(ud, D_SET, key, value, value_len, ttl_s, NULL, done,
                      done_ud, (dedup_expect){NULL, 0});
}

static int dedup_get(void *ud, const char *key, imc_dedup_cb done,
                     void *done_ud) {
  return dedup_submit(ud, D_GET, key, NULL, 0, 1, done, NULL, done_ud,
                      (dedup_expect){NULL, 0});
}

static int dedup_compare_and_set(void *ud, const char *key,
                                 const uint8_t *expect, size_t expect_len,
                                 const uint8_t *value, size_t value_len,
                                 uint32_t ttl_s, imc_dedup_cb done,
                                 void *done_ud) {
  return dedup_submit(ud, D_CAS, key, value, value_len, ttl_s, done, NULL,
                      done_ud, (dedup_expect){expect, expect_len});
}

int imc_sqlite_dedup_drop(imc_sqlite *db, const uint8_t *prefix, size_t len) {
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if (prefix == NULL || len == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  sqlite3_stmt *st = imc_sq_get(db, SQ_DEDUP_DROP);
  imc_sq_blob(db, st, 1, prefix, len);
  if ((rv = imc_sq_run(db, st, "dedup drop")) < 0)
    return rv;
  int n = sqlite3_changes(db->db);
  return n < 0 ? 0 : n;
}

static const imc_dedup_vtbl dedup_vtbl = {
    .struct_size = sizeof(imc_dedup_vtbl),
    .test_and_set = dedup_test_and_set,
    .compare_and_set = dedup_compare_and_set,
    .set = dedup_set,
    .get = dedup_get,
};

const imc_dedup_vtbl *imc_sqlite_dedup_vtbl(void) {
  return &dedup_vtbl;
}
