/*
 * The producer: publish, delivery reports, and its replacement after a
 * fatal error (an idempotent producer that can no longer guarantee order
 * and exactly one copy stops for good; a new one starts clean).
 */
#include "kafka_int.h"

#include <stdlib.h>
#include <string.h>

/* A record's delivery report: the broker's answer, or librdkafka giving
 * up on it after message.timeout.ms. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m,
                        void *opaque) {
  (void)rk;
  imc_kafka *k = opaque;
  kafka_op *op = m->_private;
  int status = kafka_err(m->err);
  if (status < 0)
    kafka_log(k, IMC_LOG_WARN, "kafka: publish to %s failed: %s",
              rd_kafka_topic_name(m->rkt), rd_kafka_err2str(m->err));
  kafka_ops_unlink(op);
  kafka_op_finish(op, status);
  free(op);
}

static void on_error(rd_kafka_t *rk, int err, const char *reason,
                     void *opaque) {
  imc_kafka *k = opaque;
  if (err == RD_KAFKA_RESP_ERR__FATAL) {
    char why[512];
    rd_kafka_fatal_error(rk, why, sizeof(why));
    k->prod_fatal = 1;
    kafka_log(k, IMC_LOG_ERROR,
              "kafka: producer failed for good, replacing it: %s", why);
    return;
  }
  /* librdkafka logs lost connections itself. */
  if (err != RD_KAFKA_RESP_ERR__TRANSPORT)
    kafka_log(k, IMC_LOG_WARN, "kafka: producer: %s", reason);
}

int kafka_producer_start(imc_kafka *k) {
  rd_kafka_conf_t *conf = kafka_conf_new(k, NULL);
  if (conf == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
  rd_kafka_conf_set_error_cb(conf, on_error);
  rd_kafka_conf_set_opaque(conf, k);
  char err[512];
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
  if (rk == NULL) {
    rd_kafka_conf_destroy(conf);
    kafka_log(k, IMC_LOG_ERROR, "kafka: cannot create the producer: %s", err);
    return IMC_ERR_INVALID_ARGUMENT;
  }
  rd_kafka_set_log_queue(rk, NULL); /* the main queue */
  k->prod = rk;
  k->prod_q = rd_kafka_queue_get_main(rk);
  k->prod_fatal = 0;
  kafka_wake_on(k, k->prod_q);
  return 0;
}

void kafka_producer_serve(imc_kafka *k) {
  if (k->prod)
    rd_kafka_poll(k->prod, 0);
}

void kafka_producer_stop(imc_kafka *k, int status) {
  if (k->prod) {
    /* Reports that already arrived are true answers: give them first. */
    rd_kafka_poll(k->prod, 0);
    kafka_ops_finish_all(&k->pubs, status);
    /* Destroying the handle serves no further report. */
    rd_kafka_queue_destroy(k->prod_q);
    rd_kafka_destroy(k->prod);
    k->prod = NULL;
    k->prod_q = NULL;
  }
  kafka_ops_free_all(&k->pubs);
}

void kafka_producer_check(imc_kafka *k) {
  if (k->closing)
    return;
  if (k->prod && k->prod_fatal)
    kafka_producer_stop(k, IMC_ERR_UNAVAILABLE);
  /* A failed start is tried again at the next tick. */
  if (k->prod == NULL && kafka_producer_start(k) == 0)
    kafka_log(k, IMC_LOG_INFO, "kafka: new producer started");
}

int kafka_publish(void *ud, const char *topic, const uint8_t *key,
                  size_t key_len, const uint8_t *value, size_t value_len,
                  imc_done_cb done, void *done_ud) {
  imc_kafka *k = ud;
  if (k == NULL || topic == NULL || done == NULL ||
      (key == NULL && key_len > 0) || (value == NULL && value_len > 0))
    return IMC_ERR_INVALID_ARGUMENT;
  if (k->closing)
    return IMC_ERR_CLOSED;
  if (!kafka_topic_valid(k, topic))
    return IMC_ERR_INVALID_ARGUMENT;
  if (k->prod == NULL || k->prod_fatal)
    return IMC_ERR_UNAVAILABLE;
  char *full = NULL;
  if (*k->o.prefix) {
    full = kafka_prefixed(k, topic);
    if (full == NULL)
      return IMC_ERR_NOMEM;
  }
  kafka_op *op = calloc(1, sizeof(*op));
  if (op == NULL) {
    free(full);
    return IMC_ERR_NOMEM;
  }
  op->done = done;
  op->done_ud = done_ud;
  /* librdkafka copies key and value (F_COPY); a NULL key is no key. The
   * array form (produceva) avoids the RD_KAFKA_V_* macros, which are GNU
   * statement expressions. */
  rd_kafka_vu_t vu[5];
  memset(vu, 0, sizeof(vu));
  vu[0].vtype = RD_KAFKA_VTYPE_TOPIC;
  vu[0].u.cstr = full ? full : topic;
  vu[1].vtype = RD_KAFKA_VTYPE_KEY;
  vu[1].u.mem.ptr = key_len ? (void *)(uintptr_t)key : NULL;
  vu[1].u.mem.size = key_len;
  vu[2].vtype = RD_KAFKA_VTYPE_VALUE;
  vu[2].u.mem.ptr = (void *)(uintptr_t)value;
  vu[2].u.mem.size = value_len;
  vu[3].vtype = RD_KAFKA_VTYPE_MSGFLAGS;
  vu[3].u.i = RD_KAFKA_MSG_F_COPY;
  vu[4].vtype = RD_KAFKA_VTYPE_OPAQUE;
  vu[4].u.ptr = op;
  rd_kafka_error_t *error = rd_kafka_produceva(k->prod, vu, 5);
  free(full);
  if (error) {
    rd_kafka_resp_err_t err = rd_kafka_error_code(error);
    rd_kafka_error_destroy(error);
    free(op);
    return kafka_err(err);
  }
  kafka_ops_link(&k->pubs, op);
  return 0;
}
