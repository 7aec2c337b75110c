/*
 * Consumers: one per group, subscribed to every topic polled in it.
 * Fetched records wait in their topic's ring until a poll takes them;
 * a rebalance drops the records of partitions taken away.
 */
#include "kafka_int.h"

#include <stdlib.h>
#include <string.h>

kafka_cons *kafka_cons_find(imc_kafka *k, const char *group) {
  for (size_t i = 0; i < k->n_cons; i++)
    if (strcmp(k->cons[i]->group, group) == 0)
      return k->cons[i];
  return NULL;
}

kafka_sub *kafka_sub_find(kafka_cons *c, const char *topic) {
  for (size_t i = 0; i < c->n_subs; i++)
    if (strcmp(c->subs[i]->topic, topic) == 0)
      return c->subs[i];
  return NULL;
}

static kafka_sub *sub_by_full(kafka_cons *c, const char *full) {
  for (size_t i = 0; i < c->n_subs; i++)
    if (strcmp(c->subs[i]->full, full) == 0)
      return c->subs[i];
  return NULL;
}

kafka_part *kafka_part_get(kafka_sub *s, int32_t partition) {
  return partition >= 0 && partition < s->n_parts ? &s->parts[partition] : NULL;
}

/* The state of partition, made if needed; NULL without memory. */
static kafka_part *part_make(kafka_sub *s, int32_t partition) {
  if (partition < 0)
    return NULL;
  if (partition >= s->n_parts) {
    kafka_part *p = realloc(s->parts, ((size_t)partition + 1) * sizeof(*p));
    if (p == NULL)
      return NULL;
    memset(p + s->n_parts, 0,
           ((size_t)partition + 1 - (size_t)s->n_parts) * sizeof(*p));
    s->parts = p;
    s->n_parts = partition + 1;
  }
  return &s->parts[partition];
}

/* ------------------------------------------------------------------ */
/* The ring of held records                                             */
/* ------------------------------------------------------------------ */

static int ring_push(kafka_sub *s, rd_kafka_message_t *m) {
  if (s->count == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 64;
    rd_kafka_message_t **r = malloc(cap * sizeof(*r));
    if (r == NULL)
      return -1;
    for (size_t i = 0; i < s->count; i++)
      r[i] = s->ring[(s->head + i) % s->cap];
    free(s->ring);
    s->ring = r;
    s->cap = cap;
    s->head = 0;
  }
  s->ring[(s->head + s->count) % s->cap] = m;
  s->count++;
  return 0;
}

static rd_kafka_message_t *ring_pop(kafka_sub *s) {
  rd_kafka_message_t *m = s->ring[s->head];
  s->head = (s->head + 1) % s->cap;
  s->count--;
  return m;
}

/* Destroys the held records of partition, keeping the others in order. */
static void ring_drop_partition(kafka_sub *s, int32_t partition) {
  size_t kept = 0;
  for (size_t i = 0; i < s->count; i++) {
    rd_kafka_message_t *m = s->ring[(s->head + i) % s->cap];
    if (m->partition == partition)
      rd_kafka_message_destroy(m);
    else
      s->ring[(s->head + kept++) % s->cap] = m;
  }
  s->count = kept;
}

/* ------------------------------------------------------------------ */
/* Pausing                                                              */
/* ------------------------------------------------------------------ */

/* Pauses (or resumes) fetching every assigned partition of s. */
static void sub_pause(kafka_sub *s, int pause) {
  rd_kafka_topic_partition_list_t *l =
      rd_kafka_topic_partition_list_new(s->n_parts);
  if (l == NULL)
    return; /* tried again at the next record or delivery */
  for (int32_t p = 0; p < s->n_parts; p++)
    if (s->parts[p].assigned)
      rd_kafka_topic_partition_list_add(l, s->full, p);
  rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
  if (l->cnt > 0)
    err = pause ? rd_kafka_pause_partitions(s->c->rk, l)
                : rd_kafka_resume_partitions(s->c->rk, l);
  rd_kafka_topic_partition_list_destroy(l);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
    return;
  if (s->paused != pause)
    kafka_log(s->c->k, IMC_LOG_DEBUG, "kafka: group %s: %s %s (%zu held)",
              s->c->group, pause ? "paused" : "resumed", s->full, s->count);
  s->paused = (uint8_t)pause;
}

/* ------------------------------------------------------------------ */
/* Rebalances and errors                                                */
/* ------------------------------------------------------------------ */

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
  kafka_cons *c = opaque;
  imc_kafka *k = c->k;
  int coop = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
  rd_kafka_error_t *error = NULL;
  rd_kafka_resp_err_t aerr = RD_KAFKA_RESP_ERR_NO_ERROR;
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    for (int i = 0; i < parts->cnt; i++) {
      kafka_sub *s = sub_by_full(c, parts->elems[i].topic);
      kafka_part *p = s ? part_make(s, parts->elems[i].partition) : NULL;
      if (p) {
        p->assigned = 1;
      } else if (s) {
        /* Unrecorded, the partition's records are dropped and it is
         * never committed here: nothing is skipped, it only stalls. */
        c->fatal = 1;
        kafka_log(k, IMC_LOG_ERROR,
                  "kafka: group %s: no memory for %s [%d]: restart the "
                  "engine to consume it",
                  c->group, parts->elems[i].topic, parts->elems[i].partition);
      }
    }
    if (coop)
      error = rd_kafka_incremental_assign(rk, parts);
    else
      aerr = rd_kafka_assign(rk, parts);
    /* Partitions that join a paused topic are paused too. */
    for (size_t i = 0; i < c->n_subs; i++)
      if (c->subs[i]->paused)
        sub_pause(c->subs[i], 1);
  } else {
    if (err != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
      kafka_log(k, IMC_LOG_WARN, "kafka: group %s: rebalance failed: %s",
                c->group, rd_kafka_err2str(err));
    for (int i = 0; i < parts->cnt; i++) {
      kafka_sub *s = sub_by_full(c, parts->elems[i].topic);
      kafka_part *p = s ? kafka_part_get(s, parts->elems[i].partition) : NULL;
      if (p) {
        p->assigned = 0;
        ring_drop_partition(s, parts->elems[i].partition);
      }
    }
    if (coop)
      error = rd_kafka_incremental_unassign(rk, parts);
    else
      aerr = rd_kafka_assign(rk, NULL);
  }
  if (error) {
    kafka_log(k, IMC_LOG_ERROR, "kafka: group %s: assignment failed: %s",
              c->group, rd_kafka_error_string(error));
    rd_kafka_error_destroy(error);
  } else if (aerr) {
    kafka_log(k, IMC_LOG_ERROR, "kafka: group %s: assignment failed: %s",
              c->group, rd_kafka_err2str(aerr));
  }
  kafka_log(k, IMC_LOG_INFO, "kafka: group %s: %d partition(s) %s%s", c->group,
            parts->cnt,
            err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS ? "assigned"
                                                        : "revoked",
            rd_kafka_assignment_lost(rk) ? " (lost)" : "");
}

static void on_error(rd_kafka_t *rk, int err, const char *reason,
                     void *opaque) {
  kafka_cons *c = opaque;
  if (err == RD_KAFKA_RESP_ERR__FATAL) {
    char why[512];
    rd_kafka_fatal_error(rk, why, sizeof(why));
    c->fatal = 1;
    kafka_log(c->k, IMC_LOG_ERROR,
              "kafka: group %s: consumer failed for good: %s", c->group, why);
  } else if (err != RD_KAFKA_RESP_ERR__TRANSPORT) {
    kafka_log(c->k, IMC_LOG_WARN, "kafka: group %s: %s", c->group, reason);
  }
}

/* ------------------------------------------------------------------ */
/* Creation and subscription                                            */
/* ------------------------------------------------------------------ */

static void sub_free(kafka_sub *s) {
  while (s->count)
    rd_kafka_message_destroy(ring_pop(s));
  free(s->ring);
  free(s->parts);
  free(s->topic);
  free(s->full);
  free(s);
}

static int cons_create(imc_kafka *k, const char *group, kafka_cons **out) {
  kafka_cons **arr = realloc(k->cons, (k->n_cons + 1) * sizeof(*arr));
  if (arr == NULL)
    return IMC_ERR_NOMEM;
  k->cons = arr;
  kafka_cons *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return IMC_ERR_NOMEM;
  c->k = k;
  kafka_ops_init(&c->commits);
  size_t n = strlen(group) + 1;
  c->group = malloc(n);
  if (c->group == NULL) {
    free(c);
    return IMC_ERR_NOMEM;
  }
  memcpy(c->group, group, n);
  rd_kafka_conf_t *conf = kafka_conf_new(k, group);
  if (conf == NULL) {
    free(c->group);
    free(c);
    return IMC_ERR_INVALID_ARGUMENT;
  }
  rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
  rd_kafka_conf_set_error_cb(conf, on_error);
  rd_kafka_conf_set_opaque(conf, c);
  char err[512];
  c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
  if (c->rk == NULL) {
    rd_kafka_conf_destroy(conf);
    kafka_log(k, IMC_LOG_ERROR, "kafka: cannot create the consumer of %s: %s",
              group, err);
    free(c->group);
    free(c);
    return IMC_ERR_INVALID_ARGUMENT;
  }
  /* Logs go to the main queue, which goes to the consumer queue: one
   * queue, served by rd_kafka_consumer_poll(). */
  rd_kafka_set_log_queue(c->rk, NULL);
  rd_kafka_poll_set_consumer(c->rk);
  c->q = rd_kafka_queue_get_consumer(c->rk);
  kafka_wake_on(k, c->q);
  k->cons[k->n_cons++] = c;
  *out = c;
  return 0;
}

static int cons_subscribe(kafka_cons *c) {
  rd_kafka_topic_partition_list_t *l =
      rd_kafka_topic_partition_list_new((int)c->n_subs);
  if (l == NULL)
    return IMC_ERR_NOMEM;
  for (size_t i = 0; i < c->n_subs; i++)
    rd_kafka_topic_partition_list_add(l, c->subs[i]->full,
                                      RD_KAFKA_PARTITION_UA);
  rd_kafka_resp_err_t err = rd_kafka_subscribe(c->rk, l);
  rd_kafka_topic_partition_list_destroy(l);
  if (err)
    kafka_log(c->k, IMC_LOG_ERROR, "kafka: group %s: subscribe failed: %s",
              c->group, rd_kafka_err2str(err));
  return kafka_err(err);
}

/* Adds topic to c's subscription. */
static int sub_add(kafka_cons *c, const char *topic, kafka_sub **out) {
  kafka_sub **arr = realloc(c->subs, (c->n_subs + 1) * sizeof(*arr));
  if (arr == NULL)
    return IMC_ERR_NOMEM;
  c->subs = arr;
  kafka_sub *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return IMC_ERR_NOMEM;
  s->c = c;
  size_t n = strlen(topic) + 1;
  s->topic = malloc(n);
  s->full = kafka_prefixed(c->k, topic);
  if (s->topic == NULL || s->full == NULL) {
    sub_free(s);
    return IMC_ERR_NOMEM;
  }
  memcpy(s->topic, topic, n);
  c->subs[c->n_subs++] = s;
  int rv = cons_subscribe(c);
  if (rv < 0) {
    c->n_subs--;
    sub_free(s);
    return rv;
  }
  *out = s;
  return 0;
}

int kafka_poll(void *ud, const char *topic, const char *group, size_t max,
               imc_bus_batch_cb done, void *done_ud) {
  imc_kafka *k = ud;
  if (k == NULL || topic == NULL || group == NULL || done == NULL || max == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  if (k->closing)
    return IMC_ERR_CLOSED;
  if (!kafka_topic_valid(k, topic) || !kafka_group_valid(k, group))
    return IMC_ERR_INVALID_ARGUMENT;
  kafka_cons *c = kafka_cons_find(k, group);
  int rv;
  if (c == NULL && (rv = cons_create(k, group, &c)) < 0)
    return rv;
  kafka_sub *s = kafka_sub_find(c, topic);
  if (s == NULL && (rv = sub_add(c, topic, &s)) < 0)
    return rv;
  if (s->poll_done)
    return IMC_ERR_EXISTS;
  s->poll_done = done;
  s->poll_ud = done_ud;
  s->poll_max = max;
  if (s->count)
    kafka_kick(k);
  return 0;
}

/* ------------------------------------------------------------------ */
/* Fetching and delivering                                              */
/* ------------------------------------------------------------------ */

void kafka_cons_pump(kafka_cons *c) {
  for (int n = 0; n < KAFKA_PUMP_MAX; n++) {
    /* Also runs the rebalance, error, log and commit callbacks. */
    rd_kafka_message_t *m = rd_kafka_consumer_poll(c->rk, 0);
    if (m == NULL)
      return;
    if (m->err) {
      if (m->err == RD_KAFKA_RESP_ERR__FATAL)
        c->fatal = 1;
      /* The end of a partition (enable.partition.eof) is no error. */
      if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
        kafka_log(c->k, IMC_LOG_WARN, "kafka: group %s: %s", c->group,
                  rd_kafka_message_errstr(m));
      rd_kafka_message_destroy(m);
      continue;
    }
    kafka_sub *s = sub_by_full(c, rd_kafka_topic_name(m->rkt));
    kafka_part *p = s ? kafka_part_get(s, m->partition) : NULL;
    if (p == NULL || !p->assigned) {
      /* Fetched before its partition was taken away. */
      rd_kafka_message_destroy(m);
      continue;
    }
    if (ring_push(s, m) < 0) {
      /* The record cannot be kept: stop taking the partition here (no
       * later record is delivered or committed, so none is skipped). */
      c->fatal = 1;
      p->assigned = 0;
      ring_drop_partition(s, m->partition);
      kafka_log(c->k, IMC_LOG_ERROR,
                "kafka: group %s: no memory for records of %s [%d]: "
                "restart the engine to consume it",
                c->group, s->full, (int)m->partition);
      rd_kafka_message_destroy(m);
      continue;
    }
    if (!s->paused && s->count >= KAFKA_HOLD_MAX)
      sub_pause(s, 1);
  }
  kafka_kick(c->k); /* more may be waiting: go on at the next turn */
}

/* Room for n records in the delivery scratch. */
static int scratch_reserve(imc_kafka *k, size_t n) {
  if (n <= k->scratch_cap)
    return 0;
  imc_bus_record *r = realloc(k->recs, n * sizeof(*r));
  if (r == NULL)
    return -1;
  k->recs = r;
  rd_kafka_message_t **m = realloc(k->msgs, n * sizeof(*m));
  if (m == NULL)
    return -1;
  k->msgs = m;
  k->scratch_cap = n;
  return 0;
}

void kafka_cons_deliver(kafka_cons *c) {
  imc_kafka *k = c->k;
  for (size_t i = 0; i < c->n_subs; i++) {
    kafka_sub *s = c->subs[i];
    if (s->poll_done == NULL || s->count == 0)
      continue;
    imc_bus_batch_cb done = s->poll_done;
    void *done_ud = s->poll_ud;
    size_t n = s->count < s->poll_max ? s->count : s->poll_max;
    s->poll_done = NULL;
    if (scratch_reserve(k, n) < 0) {
      done(done_ud, IMC_ERR_NOMEM, NULL, 0); /* the records stay */
      continue;
    }
    for (size_t j = 0; j < n; j++) {
      rd_kafka_message_t *m = ring_pop(s);
      kafka_part *p = kafka_part_get(s, m->partition);
      if (p && m->offset >= p->next)
        p->next = m->offset + 1;
      k->msgs[j] = m;
      k->recs[j] = (imc_bus_record){
          .key = m->key,
          .key_len = m->key_len,
          .value = m->payload,
          .value_len = m->len,
          .partition = m->partition,
          .offset = (uint64_t)m->offset,
      };
    }
    /* The completion may poll or commit again, but not delete k. */
    done(done_ud, 0, k->recs, n);
    for (size_t j = 0; j < n; j++)
      rd_kafka_message_destroy(k->msgs[j]);
    if (s->paused && s->count <= KAFKA_HOLD_MAX / 4)
      sub_pause(s, 0);
  }
}

/* ------------------------------------------------------------------ */
/* Close                                                                */
/* ------------------------------------------------------------------ */

/* Completes c's polls and commits with IMC_ERR_CLOSED and frees it. */
static void cons_free(kafka_cons *c) {
  for (size_t i = 0; i < c->n_subs; i++) {
    kafka_sub *s = c->subs[i];
    imc_bus_batch_cb done = s->poll_done;
    if (done) {
      s->poll_done = NULL;
      done(s->poll_ud, IMC_ERR_CLOSED, NULL, 0);
    }
  }
  kafka_ops_finish_all(&c->commits, IMC_ERR_CLOSED);
  /* Held records keep references into the handle: destroy them first. */
  for (size_t i = 0; i < c->n_subs; i++)
    sub_free(c->subs[i]);
  rd_kafka_queue_destroy(c->q);
  rd_kafka_destroy_flags(c->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
  kafka_ops_free_all(&c->commits);
  free(c->subs);
  free(c->group);
  free(c);
}

void kafka_cons_close_all(imc_kafka *k) {
  /* Every consumer starts leaving its group at once; leaving runs the
   * revoke through the rebalance callback, and answers to commits still
   * arrive. */
  for (size_t i = 0; i < k->n_cons; i++) {
    kafka_cons *c = k->cons[i];
    rd_kafka_error_t *error = rd_kafka_consumer_close_queue(c->rk, c->q);
    if (error) {
      c->gone = 1; /* nothing to wait for */
      kafka_log(k, IMC_LOG_WARN, "kafka: group %s: close: %s", c->group,
                rd_kafka_error_string(error));
      rd_kafka_error_destroy(error);
    }
  }
  int64_t end = kafka_now_ms() + KAFKA_CLOSE_WAIT_MS;
  int waiting = 1;
  while (waiting && kafka_now_ms() < end) {
    waiting = 0;
    for (size_t i = 0; i < k->n_cons; i++) {
      kafka_cons *c = k->cons[i];
      if (c->gone || rd_kafka_consumer_closed(c->rk))
        continue;
      waiting = 1;
      rd_kafka_message_t *m = rd_kafka_consumer_poll(c->rk, 10);
      if (m)
        rd_kafka_message_destroy(m);
    }
  }
  for (size_t i = 0; i < k->n_cons; i++)
    cons_free(k->cons[i]);
  k->n_cons = 0;
}
