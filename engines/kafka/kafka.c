/*
 * The Kafka engine: lifecycle, the bridge from librdkafka's threads to
 * the host's loop, the service pass, logs and health.
 */
#include "kafka_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

/* What librdkafka writes to the eventfd: adds 1 to its counter. */
static const uint64_t wake_value = 1;

int64_t kafka_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void kafka_log(imc_kafka *k, imc_log_level level, const char *fmt, ...) {
  if (k->o.log == NULL)
    return;
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  k->o.log(k->o.log_ud, level, line);
}

void kafka_on_log(const rd_kafka_t *rk, int level, const char *fac,
                  const char *buf) {
  /* The producer's opaque is the engine, a consumer's its kafka_cons. */
  void *opaque = rd_kafka_opaque(rk);
  imc_kafka *k = rd_kafka_type(rk) == RD_KAFKA_PRODUCER
                     ? (imc_kafka *)opaque
                     : ((kafka_cons *)opaque)->k;
  /* syslog levels */
  imc_log_level l = level <= 3   ? IMC_LOG_ERROR
                    : level == 4 ? IMC_LOG_WARN
                    : level <= 6 ? IMC_LOG_INFO
                                 : IMC_LOG_DEBUG;
  kafka_log(k, l, "kafka %s: %s: %s", rd_kafka_name(rk), fac, buf);
}

int kafka_err(rd_kafka_resp_err_t err) {
  switch (err) {
  case RD_KAFKA_RESP_ERR_NO_ERROR:
    return 0;
  case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    return IMC_ERR_TOO_LARGE;
  case RD_KAFKA_RESP_ERR__QUEUE_FULL:
    return IMC_ERR_QUEUE_FULL;
  case RD_KAFKA_RESP_ERR__INVALID_ARG:
  case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    return IMC_ERR_INVALID_ARGUMENT;
  case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
  case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
  case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
    return IMC_ERR_FORBIDDEN;
  case RD_KAFKA_RESP_ERR__DESTROY:
  case RD_KAFKA_RESP_ERR__PURGE_QUEUE:
  case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
    return IMC_ERR_CLOSED;
  default:
    /* Timeouts, lost connections, leaders moving, rebalances: the
     * cluster cannot serve it now. */
    return IMC_ERR_UNAVAILABLE;
  }
}

/* ------------------------------------------------------------------ */
/* Op lists                                                             */
/* ------------------------------------------------------------------ */

void kafka_ops_init(kafka_ops *l) {
  l->head.prev = l->head.next = &l->head;
}

void kafka_ops_link(kafka_ops *l, kafka_op *op) {
  op->prev = l->head.prev;
  op->next = &l->head;
  l->head.prev->next = op;
  l->head.prev = op;
}

void kafka_ops_unlink(kafka_op *op) {
  op->prev->next = op->next;
  op->next->prev = op->prev;
  op->prev = op->next = op;
}

void kafka_op_finish(kafka_op *op, int status) {
  imc_done_cb done = op->done;
  if (done == NULL)
    return;
  op->done = NULL;
  done(op->done_ud, status);
}

void kafka_ops_finish_all(kafka_ops *l, int status) {
  /* A completion may add ops (the engine refuses them while closing or
   * replacing the producer, so none is added here in practice); walking
   * forward from the head finishes those too. */
  for (kafka_op *op = l->head.next; op != &l->head; op = op->next)
    kafka_op_finish(op, status);
}

void kafka_ops_free_all(kafka_ops *l) {
  while (l->head.next != &l->head) {
    kafka_op *op = l->head.next;
    kafka_ops_unlink(op);
    free(op);
  }
}

/* ------------------------------------------------------------------ */
/* The loop                                                             */
/* ------------------------------------------------------------------ */

void kafka_wake_on(imc_kafka *k, rd_kafka_queue_t *q) {
  rd_kafka_queue_io_event_enable(q, k->efd, &wake_value, sizeof(wake_value));
}

/*
 * Serves every queue. The eventfd is read before the queues are served:
 * librdkafka writes to it when an op lands on an empty queue, so an op
 * that arrives after the read either is served here or writes again.
 */
static void service(imc_kafka *k) {
  uint64_t v;
  while (read(k->efd, &v, sizeof(v)) == (ssize_t)sizeof(v))
    ;
  kafka_producer_serve(k);
  for (size_t i = 0; i < k->n_cons; i++)
    kafka_cons_pump(k->cons[i]);
  for (size_t i = 0; i < k->n_cons; i++)
    kafka_cons_deliver(k->cons[i]);
}

static void on_wake(void *cb_ud, int fd, unsigned events) {
  (void)fd;
  (void)events;
  service(cb_ud);
}

static void on_kick(void *cb_ud) {
  imc_kafka *k = cb_ud;
  k->kick = NULL;
  service(k);
}

void kafka_kick(imc_kafka *k) {
  if (k->kick != NULL || k->closing)
    return;
  /* Without the timer the tick does the work, at most a second later. */
  if (k->loop.vtbl->timer_add(k->loop.ud, 0, on_kick, k, &k->kick) < 0)
    k->kick = NULL;
}

static void on_tick(void *cb_ud) {
  imc_kafka *k = cb_ud;
  k->tick = NULL;
  kafka_producer_check(k);
  int64_t now = kafka_now_ms();
  for (size_t i = 0; i < k->n_cons; i++)
    kafka_commits_expire(k->cons[i], now);
  service(k);
  if (k->loop.vtbl->timer_add(k->loop.ud, KAFKA_TICK_MS, on_tick, k, &k->tick) <
      0) {
    k->tick = NULL;
    kafka_log(k, IMC_LOG_ERROR,
              "kafka: the loop refused the tick timer: commits no longer "
              "expire and idle consumers will leave their groups");
  }
}

/* ------------------------------------------------------------------ */
/* The object                                                           */
/* ------------------------------------------------------------------ */

static void destroy(imc_kafka *k) {
  const imc_loop_vtbl *v = k->loop.vtbl;
  if (k->kick)
    v->timer_del(k->loop.ud, k->kick);
  if (k->tick)
    v->timer_del(k->loop.ud, k->tick);
  if (k->watch)
    v->fd_del(k->loop.ud, k->watch);
  if (k->efd >= 0)
    close(k->efd);
  free(k->cons);
  free(k->recs);
  free(k->msgs);
  kafka_opts_clear(&k->o);
  free(k);
}

int imc_kafka_new(imc_kafka **out, const imc_loop *loop,
                  const imc_kafka_options *opts) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  *out = NULL;
  if (loop == NULL || loop->vtbl == NULL || opts == NULL ||
      opts->brokers == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_kafka *k = calloc(1, sizeof(*k));
  if (k == NULL)
    return IMC_ERR_NOMEM;
  k->loop = *loop;
  k->efd = -1;
  kafka_ops_init(&k->pubs);
  if (kafka_opts_copy(&k->o, opts) < 0) {
    free(k);
    return IMC_ERR_NOMEM;
  }
  int rv = IMC_ERR_IO;
  k->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (k->efd < 0)
    goto fail;
  rv = loop->vtbl->fd_add(loop->ud, k->efd, IMC_LOOP_READ, on_wake, k,
                          &k->watch);
  if (rv < 0) {
    k->watch = NULL;
    goto fail;
  }
  rv = loop->vtbl->timer_add(loop->ud, KAFKA_TICK_MS, on_tick, k, &k->tick);
  if (rv < 0) {
    k->tick = NULL;
    goto fail;
  }
  rv = kafka_producer_start(k);
  if (rv < 0)
    goto fail;
  *out = k;
  return 0;
fail:
  destroy(k);
  return rv;
}

void imc_kafka_del(imc_kafka *k) {
  if (k == NULL)
    return;
  k->closing = 1;
  kafka_cons_close_all(k);
  kafka_producer_stop(k, IMC_ERR_CLOSED);
  destroy(k);
}

void imc_kafka_set_user_data(imc_kafka *k, void *ud) {
  if (k)
    k->user_data = ud;
}

void *imc_kafka_get_user_data(const imc_kafka *k) {
  return k ? k->user_data : NULL;
}

int imc_kafka_health(const imc_kafka *k) {
  if (k == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (k->closing || k->prod == NULL || k->prod_fatal)
    return IMC_ERR_UNAVAILABLE;
  for (size_t i = 0; i < k->n_cons; i++)
    if (k->cons[i]->fatal)
      return IMC_ERR_UNAVAILABLE;
  /*
   * With a timeout of 0 rd_kafka_metadata() does not wait: it fails with
   * __TRANSPORT when no broker connection is up, and otherwise sends the
   * request (refreshing librdkafka's cache) and reports __TIMED_OUT.
   */
  const struct rd_kafka_metadata *md = NULL;
  rd_kafka_resp_err_t err = rd_kafka_metadata(k->prod, 0, NULL, &md, 0);
  if (md)
    rd_kafka_metadata_destroy(md);
  return err == RD_KAFKA_RESP_ERR_NO_ERROR ||
                 err == RD_KAFKA_RESP_ERR__TIMED_OUT
             ? 0
             : IMC_ERR_UNAVAILABLE;
}

static const imc_bus_vtbl bus_vtbl = {
    .struct_size = sizeof(imc_bus_vtbl),
    .publish = kafka_publish,
    .poll = kafka_poll,
    .commit = kafka_commit,
};

const imc_bus_vtbl *imc_kafka_bus_vtbl(void) {
  return &bus_vtbl;
}
