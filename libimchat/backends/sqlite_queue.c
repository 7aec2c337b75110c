/*
 * SQLite embedded backends: the durable queue behind imc_bus_vtbl.
 *
 * Records live in one table with a global AUTOINCREMENT offset (so each
 * topic's offsets increase but are not contiguous), in a single
 * partition 0. Each consumer group's committed offset is a row of
 * queue_groups, created by the group's first poll or commit; a record
 * is deleted once every group known for its topic has committed it, and
 * a group that joins later starts from the oldest record still kept.
 *
 * Within one instance a group reads from an in-memory position, so a
 * record is delivered once; the position starts at the committed offset,
 * so after a restart every uncommitted record is delivered again
 * (at-least-once).
 *
 * In immediate mode publish, commit and the group registration of a
 * first poll complete before returning. With group commit they are ops
 * of a batch like the rest (sqlite_batch.c), and so is the read behind
 * a poll: imc_sqlite_submit() queues a read op for every outstanding
 * poll whose topic may have records, after the ops of the turn, so the
 * read sees what the same batch published. A poll never completes inside the
 * call, even when records are waiting: imc_sqlite_dispatch() completes it, so a
 * caller is never re-entered from poll or publish. imc_sqlite_next_timeout_ms()
 * tells the host when a dispatch is due, so deferred polls never wait
 * for unrelated events. The wake-up after a publish
 * is in-memory, so one instance must own the file: records another
 * process appends are seen only by polls made after them.
 */
#include "backends/sqlite_int.h"

#include <string.h>

static imc_sq_consumer *consumer_find(imc_sqlite *db, const char *topic,
                                      const char *group) {
  for (size_t i = 0; i < db->n_consumers; i++) {
    imc_sq_consumer *c = db->consumers[i];
    if (strcmp(c->topic, topic) == 0 && strcmp(c->group, group) == 0)
      return c;
  }
  return NULL;
}

/* A new consumer, not yet in db->consumers; one allocation. */
static imc_sq_consumer *consumer_new(imc_sqlite *db, const char *topic,
                                     const char *group) {
  size_t tl = strlen(topic) + 1, gl = strlen(group) + 1;
  imc_sq_consumer *c = imc_calloc(&db->mem, 1, sizeof(*c) + tl + gl);
  if (c == NULL)
    return NULL;
  c->topic = (char *)(c + 1);
  c->group = c->topic + tl;
  memcpy(c->topic, topic, tl);
  memcpy(c->group, group, gl);
  return c;
}

static int consumer_insert(imc_sqlite *db, imc_sq_consumer *c) {
  if (db->n_consumers == db->cap_consumers) {
    size_t cap = db->cap_consumers ? db->cap_consumers * 2 : 8;
    imc_sq_consumer **a =
        imc_realloc(&db->mem, db->consumers, cap * sizeof(*a));
    if (a == NULL)
      return IMC_ERR_NOMEM;
    db->consumers = a;
    db->cap_consumers = cap;
  }
  db->consumers[db->n_consumers++] = c;
  return 0;
}

/* Register group for topic (durably, idempotent); its committed offset. */
static int join(imc_sqlite *db, const char *topic, const char *group,
                uint64_t *committed) {
  sqlite3_stmt *st = imc_sq_get(db, SQ_Q_JOIN);
  imc_sq_text(db, st, 1, topic);
  imc_sq_text(db, st, 2, group);
  int rv = imc_sq_run(db, st, "join group");
  if (rv < 0)
    return rv;
  st = imc_sq_get(db, SQ_Q_COMMITTED);
  imc_sq_text(db, st, 1, topic);
  imc_sq_text(db, st, 2, group);
  int rc = imc_sq_step(db, st);
  *committed = 0;
  if (rc == SQLITE_ROW)
    *committed = (uint64_t)sqlite3_column_int64(st, 0);
  else
    rv = imc_sq_fail(db, rc == SQLITE_DONE ? SQLITE_INTERNAL : rc,
                     "read committed offset");
  sqlite3_reset(st);
  return rv;
}

static int q_poll(void *ud, const char *topic, const char *group, size_t max,
                  imc_bus_batch_cb done, void *done_ud) {
  imc_sqlite *db = ud;
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if (db->closing)
    return IMC_ERR_CLOSED;
  if (topic == NULL || *topic == '\0' || group == NULL || *group == '\0' ||
      max == 0 || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_sq_consumer *c = consumer_find(db, topic, group);
  if (c && c->pending)
    return IMC_ERR_EXISTS; /* one outstanding poll per (topic, group) */
  if (c == NULL) {
    uint64_t committed = 0;
    if ((c = consumer_new(db, topic, group)) == NULL)
      return IMC_ERR_NOMEM;
    /* With group commit the first read op joins the group. */
    if ((!db->group && (rv = join(db, topic, group, &committed)) < 0) ||
        (rv = consumer_insert(db, c)) < 0) {
      imc_free(&db->mem, c);
      return rv;
    }
    c->pos = committed;
    c->joined = !db->group;
  }
  c->pending = 1;
  c->dirty = 1;
  c->gen = db->gen;
  c->max = max;
  c->done = done;
  c->done_ud = done_ud;
  return 0;
}

typedef struct publish_op {
  imc_sq_op base;
  imc_done_cb done;
  void *done_ud;
  size_t key_len, value_len;
  char topic[]; /* then the key, then the value */
} publish_op;

static int publish_exec(imc_sqlite *db, imc_sq_op *o) {
  publish_op *op = (publish_op *)o;
  const uint8_t *key = (const uint8_t *)op->topic + strlen(op->topic) + 1;
  sqlite3_stmt *st = imc_sq_get(db, SQ_Q_PUBLISH);
  imc_sq_text(db, st, 1, op->topic);
  imc_sq_blob(db, st, 2, key, op->key_len);
  imc_sq_blob(db, st, 3, key + op->key_len, op->value_len);
  return imc_sq_run(db, st, "publish");
}

static int publish_complete(imc_sqlite *db, imc_sq_op *o) {
  publish_op *op = (publish_op *)o;
  op->done(op->done_ud, op->base.status);
  return 1;
}

static const imc_sq_op_type publish_type = {
    .write = 1, .exec = publish_exec, .complete = publish_complete};

static int q_publish(void *ud, const char *topic, const uint8_t *key,
                     size_t key_len, const uint8_t *value, size_t value_len,
                     imc_done_cb done, void *done_ud) {
  imc_sqlite *db = ud;
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if (topic == NULL || *topic == '\0' || (key == NULL && key_len) ||
      (value == NULL && value_len) || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  size_t tl = strlen(topic) + 1;
  publish_op *op =
      imc_calloc(&db->mem, 1, sizeof(*op) + tl + key_len + value_len);
  if (op == NULL)
    return IMC_ERR_NOMEM;
  op->base.type = &publish_type;
  op->done = done;
  op->done_ud = done_ud;
  op->key_len = key_len;
  op->value_len = value_len;
  memcpy(op->topic, topic, tl);
  if (key_len)
    memcpy(op->topic + tl, key, key_len);
  if (value_len)
    memcpy(op->topic + tl + key_len, value, value_len);
  /* Wake the topic's polls first: the completion may poll. A publish
   * that fails costs them one empty read. */
  for (size_t i = 0; i < db->n_consumers; i++)
    if (strcmp(db->consumers[i]->topic, topic) == 0) {
      db->consumers[i]->dirty = 1;
      db->consumers[i]->pubs++;
    }
  /* Durable once it completes: immediate mode before returning, group
   * commit after the batch's commit. */
  return imc_sq_submit_op(db, &op->base);
}

static int commit_and_trim(imc_sqlite *db, const char *topic, const char *group,
                           uint64_t offset) {
  sqlite3_stmt *st = imc_sq_get(db, SQ_Q_COMMIT);
  imc_sq_text(db, st, 1, topic);
  imc_sq_text(db, st, 2, group);
  imc_sq_int(db, st, 3, (int64_t)offset);
  int rv = imc_sq_run(db, st, "commit offset");
  if (rv == 0) {
    st = imc_sq_get(db, SQ_Q_TRIM);
    imc_sq_text(db, st, 1, topic);
    rv = imc_sq_run(db, st, "trim queue");
  }
  return rv;
}

typedef struct commit_op {
  imc_sq_op base;
  imc_done_cb done;
  void *done_ud;
  uint64_t offset;
  const char *group;
  char topic[]; /* then the group */
} commit_op;

static int commit_exec(imc_sqlite *db, imc_sq_op *o) {
  commit_op *op = (commit_op *)o;
  return commit_and_trim(db, op->topic, op->group, op->offset);
}

static int commit_complete(imc_sqlite *db, imc_sq_op *o) {
  commit_op *op = (commit_op *)o;
  if (op->base.status == 0) {
    imc_sq_consumer *c = consumer_find(db, op->topic, op->group);
    if (c && c->pos < op->offset)
      c->pos = op->offset;
  }
  op->done(op->done_ud, op->base.status);
  return 1;
}

static const imc_sq_op_type commit_type = {
    .write = 1, .exec = commit_exec, .complete = commit_complete};

static int q_commit(void *ud, const char *topic, const char *group,
                    int32_t partition, uint64_t offset, imc_done_cb done,
                    void *done_ud) {
  imc_sqlite *db = ud;
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if (topic == NULL || *topic == '\0' || group == NULL || *group == '\0' ||
      partition != 0 || offset > (uint64_t)INT64_MAX || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  size_t tl = strlen(topic) + 1, gl = strlen(group) + 1;
  commit_op *op = imc_calloc(&db->mem, 1, sizeof(*op) + tl + gl);
  if (op == NULL)
    return IMC_ERR_NOMEM;
  op->base.type = &commit_type;
  op->done = done;
  op->done_ud = done_ud;
  op->offset = offset;
  memcpy(op->topic, topic, tl);
  memcpy(op->topic + tl, group, gl);
  op->group = op->topic + tl;
  return imc_sq_submit_op(db, &op->base);
}

/* ------------------------------------------------------------------ */
/* Dispatch                                                             */
/* ------------------------------------------------------------------ */

typedef struct batch {
  imc_bus_record *recs;
  size_t n, cap;
} batch;

static void batch_free(imc_sqlite *db, batch *b) {
  for (size_t i = 0; i < b->n; i++)
    imc_free(&db->mem, (void *)b->recs[i].key);
  imc_free(&db->mem, b->recs);
}

/* Copy the current row; key and value share one allocation. */
static int batch_add(imc_sqlite *db, batch *b, sqlite3_stmt *st) {
  if (b->n == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 16;
    imc_bus_record *recs = imc_realloc(&db->mem, b->recs, cap * sizeof(*recs));
    if (recs == NULL)
      return IMC_ERR_NOMEM;
    b->recs = recs;
    b->cap = cap;
  }
  const void *k = sqlite3_column_blob(st, 1);
  size_t kl = k ? (size_t)sqlite3_column_bytes(st, 1) : 0;
  const void *v = sqlite3_column_blob(st, 2);
  size_t vl = v ? (size_t)sqlite3_column_bytes(st, 2) : 0;
  uint8_t *data = imc_malloc(&db->mem, kl + vl + 1);
  if (data == NULL)
    return IMC_ERR_NOMEM;
  if (kl)
    memcpy(data, k, kl);
  if (vl)
    memcpy(data + kl, v, vl);
  b->recs[b->n++] = (imc_bus_record){
      .key = data,
      .key_len = kl,
      .value = data + kl,
      .value_len = vl,
      .partition = 0,
      .offset = (uint64_t)sqlite3_column_int64(st, 0),
  };
  return 0;
}

static int batch_read(imc_sqlite *db, imc_sq_consumer *c, batch *b) {
  sqlite3_stmt *st = imc_sq_get(db, SQ_Q_FETCH);
  imc_sq_text(db, st, 1, c->topic);
  imc_sq_int(db, st, 2, (int64_t)c->pos);
  imc_sq_int(db, st, 3, c->max > INT64_MAX ? INT64_MAX : (int64_t)c->max);
  int rc = SQLITE_DONE, rv = 0;
  while (rv == 0 && (rc = imc_sq_step(db, st)) == SQLITE_ROW)
    rv = batch_add(db, b, st);
  if (rv == 0 && rc != SQLITE_DONE)
    rv = imc_sq_fail(db, rc, "poll");
  sqlite3_reset(st);
  return rv;
}

/*
 * Serve each poll that was outstanding when the call began and has
 * records. A poll made by a completion waits for the next call, so one
 * call always ends. A failed read completes the poll with the error.
 */
int imc_sqlite_dispatch(imc_sqlite *db) {
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if (db->group)
    return imc_sq_batch_dispatch(db);
  uint64_t gen = db->gen++;
  int count = 0;
  /* Completions may add consumers (realloc): index, never cache. */
  for (size_t i = 0; i < db->n_consumers; i++) {
    imc_sq_consumer *c = db->consumers[i];
    if (!c->pending || !c->dirty || c->gen > gen)
      continue;
    batch b = {0};
    rv = batch_read(db, c, &b);
    if (rv == 0 && b.n == 0) {
      c->dirty = 0; /* until the next publish to the topic */
      continue;
    }
    if (rv == 0)
      c->pos = b.recs[b.n - 1].offset;
    c->pending = 0;
    c->done(c->done_ud, rv, rv == 0 ? b.recs : NULL, rv == 0 ? b.n : 0);
    batch_free(db, &b);
    count++;
  }
  return count;
}

int64_t imc_sqlite_next_timeout_ms(const imc_sqlite *db) {
  if (db == NULL || db->db == NULL)
    return -1;
  if (db->group)
    return imc_sq_batch_timeout(db);
  /* dirty is set by a poll and by a publish to the topic, and cleared by
   * a dispatch that finds nothing: the host is woken exactly while a
   * dispatch may complete something. */
  for (size_t i = 0; i < db->n_consumers; i++)
    if (db->consumers[i]->pending && db->consumers[i]->dirty)
      return 0;
  return -1;
}

/* ------------------------------------------------------------------ */
/* Group commit: reads as ops of the batch                              */
/* ------------------------------------------------------------------ */

typedef struct read_op {
  imc_sq_op base;
  int join;       /* register the group and start from its commit */
  uint64_t pos;   /* read after this offset (unless join) */
  uint64_t start; /* the offset read after */
  uint64_t pubs;  /* the consumer's publish count when queued */
  size_t max;
  batch b;
  const char *group;
  char topic[]; /* then the group */
} read_op;

static int read_exec(imc_sqlite *db, imc_sq_op *o) {
  read_op *op = (read_op *)o;
  op->start = op->pos;
  int rv = 0;
  if (op->join && (rv = join(db, op->topic, op->group, &op->start)) < 0)
    return rv;
  imc_sq_consumer c = {.topic = op->topic, .pos = op->start, .max = op->max};
  return batch_read(db, &c, &op->b);
}

static int read_complete(imc_sqlite *db, imc_sq_op *o) {
  read_op *op = (read_op *)o;
  imc_sq_consumer *c = consumer_find(db, op->topic, op->group);
  if (c == NULL)
    return 0;
  c->reading = 0;
  if (!c->pending)
    return 0;
  int st = op->base.status;
  if (st == 0 && op->join) {
    c->joined = 1;
    if (c->pos < op->start)
      c->pos = op->start;
  }
  if (st == 0 && op->b.n == 0) {
    if (c->pubs == op->pubs)
      c->dirty = 0; /* until the next publish to the topic */
    return 0;
  }
  if (st == 0)
    c->pos = op->b.recs[op->b.n - 1].offset;
  c->pending = 0;
  c->done(c->done_ud, st, st == 0 ? op->b.recs : NULL, st == 0 ? op->b.n : 0);
  return 1;
}

static void read_release(imc_sqlite *db, imc_sq_op *o) {
  batch_free(db, &((read_op *)o)->b);
}

/* A write: the first read of a group registers it. */
static const imc_sq_op_type read_type = {.write = 1,
                                         .exec = read_exec,
                                         .complete = read_complete,
                                         .release = read_release};

int imc_sq_reads_due(const imc_sqlite *db) {
  for (size_t i = 0; i < db->n_consumers; i++) {
    const imc_sq_consumer *c = db->consumers[i];
    if (c->pending && c->dirty && !c->reading)
      return 1;
  }
  return 0;
}

int imc_sq_queue_reads(imc_sqlite *db) {
  for (size_t i = 0; i < db->n_consumers; i++) {
    imc_sq_consumer *c = db->consumers[i];
    if (!c->pending || !c->dirty || c->reading)
      continue;
    size_t tl = strlen(c->topic) + 1, gl = strlen(c->group) + 1;
    read_op *op = imc_calloc(&db->mem, 1, sizeof(*op) + tl + gl);
    if (op == NULL)
      return IMC_ERR_NOMEM;
    op->base.type = &read_type;
    op->join = !c->joined;
    op->pos = c->pos;
    op->pubs = c->pubs;
    op->max = c->max;
    memcpy(op->topic, c->topic, tl);
    memcpy(op->topic + tl, c->group, gl);
    op->group = op->topic + tl;
    int rv = imc_sq_submit_op(db, &op->base);
    if (rv < 0)
      return rv;
    c->reading = 1;
  }
  return 0;
}

void imc_sq_queue_close(imc_sqlite *db, int status) {
  db->closing = 1;
  for (size_t i = 0; i < db->n_consumers; i++) {
    imc_sq_consumer *c = db->consumers[i];
    if (c->pending) {
      c->pending = 0;
      c->done(c->done_ud, status, NULL, 0);
    }
  }
  for (size_t i = 0; i < db->n_consumers; i++)
    imc_free(&db->mem, db->consumers[i]);
  imc_free(&db->mem, db->consumers);
  db->consumers = NULL;
  db->n_consumers = db->cap_consumers = 0;
}

static const imc_bus_vtbl bus_vtbl = {
    .struct_size = sizeof(imc_bus_vtbl),
    .publish = q_publish,
    .poll = q_poll,
    .commit = q_commit,
};

const imc_bus_vtbl *imc_sqlite_bus_vtbl(void) {
  return &bus_vtbl;
}
