/*
 * Commits: offset + 1 of one partition, only when the caller asks, only
 * of a partition this consumer holds and only up to what it delivered.
 */
#include "kafka_int.h"

#include <stdlib.h>

static void on_commit(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                      rd_kafka_topic_partition_list_t *offsets, void *opaque) {
  (void)rk;
  kafka_op *op = opaque;
  kafka_sub *s = op->sub;
  if (!err && offsets && offsets->cnt > 0)
    err = offsets->elems[0].err;
  int status = 0;
  if (err) {
    /* Refused because the partition moved (a new generation, a fenced
     * member) is no failure of the bus; still held, it is worth another
     * try. */
    kafka_part *p = kafka_part_get(s, op->partition);
    status = p && p->assigned ? kafka_err(err) : IMC_ERR_REVOKED;
    if (status != IMC_ERR_REVOKED)
      kafka_log(s->c->k, IMC_LOG_WARN,
                "kafka: group %s: commit of %s [%d] failed: %s", s->c->group,
                s->full, (int)op->partition, rd_kafka_err2str(err));
  }
  kafka_ops_unlink(op);
  kafka_op_finish(op, status);
  free(op);
}

int kafka_commit(void *ud, const char *topic, const char *group,
                 int32_t partition, uint64_t offset, imc_done_cb done,
                 void *done_ud) {
  imc_kafka *k = ud;
  if (k == NULL || topic == NULL || group == NULL || done == NULL ||
      partition < 0 || offset >= (uint64_t)INT64_MAX)
    return IMC_ERR_INVALID_ARGUMENT;
  if (k->closing)
    return IMC_ERR_CLOSED;
  if (!kafka_topic_valid(k, topic))
    return IMC_ERR_INVALID_ARGUMENT;
  kafka_cons *c = kafka_cons_find(k, group);
  kafka_sub *s = c ? kafka_sub_find(c, topic) : NULL;
  kafka_part *p = s ? kafka_part_get(s, partition) : NULL;
  if (p == NULL || !p->assigned)
    return IMC_ERR_REVOKED;
  if ((int64_t)offset >= p->next)
    return IMC_ERR_INVALID_ARGUMENT; /* would skip records never delivered */
  kafka_op *op = calloc(1, sizeof(*op));
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
  if (op == NULL || l == NULL) {
    free(op);
    if (l)
      rd_kafka_topic_partition_list_destroy(l);
    return IMC_ERR_NOMEM;
  }
  op->done = done;
  op->done_ud = done_ud;
  op->sub = s;
  op->partition = partition;
  op->deadline_ms = kafka_now_ms() + k->o.timeout_ms;
  rd_kafka_topic_partition_list_add(l, s->full, partition)->offset =
      (int64_t)offset + 1;
  /* The answer comes to the consumer queue, served by the pump. */
  rd_kafka_resp_err_t err =
      rd_kafka_commit_queue(c->rk, l, c->q, on_commit, op);
  rd_kafka_topic_partition_list_destroy(l);
  if (err) {
    free(op);
    return kafka_err(err);
  }
  kafka_ops_link(&c->commits, op);
  return 0;
}

void kafka_commits_expire(kafka_cons *c, int64_t now_ms) {
  for (kafka_op *op = c->commits.head.next; op != &c->commits.head;
       op = op->next) {
    if (op->done == NULL || now_ms < op->deadline_ms)
      continue;
    /* librdkafka may still make it later: harmless, the caller commits
     * only what it persisted. */
    kafka_log(c->k, IMC_LOG_WARN,
              "kafka: group %s: commit of %s [%d] timed out", c->group,
              op->sub->full, (int)op->partition);
    kafka_op_finish(op, IMC_ERR_UNAVAILABLE);
  }
}
