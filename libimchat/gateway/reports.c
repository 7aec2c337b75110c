/*
 * Reports to the upstream about pushed messages: delivered (a device
 * ACKed it) and undelivered (it needs the slow path). Each report is the
 * push record itself, holding the gateway's reference to the message
 * until the upstream completed it.
 *
 * With an upstream that has delivered_many, acks are not reported one by
 * one: they wait on gw->acked until the end of the loop turn
 * (gw_reports_flush, from imc_gateway_flush), and a batch hands them over
 * in one call, their records on gw->reports until it completed.
 *
 * A failed delivered report (alone or in a batch) falls back to
 * undelivered: the recipient may then get the message twice (clients
 * dedup by msg_id), which beats losing the DELIVERED status and the
 * message with it. A failed undelivered report is retried with
 * exponential backoff from RETRY_MIN_MS to RETRY_MAX_MS for as long as
 * the gateway lives.
 */
#include "gateway/gateway_int.h"

#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 10000

void gw_push_free(imc_gateway *gw, push *p) {
  gw_shmsg_unref(gw, p->sm);
  imc_free(&gw->mem, p);
}

/* gw->reports is doubly linked; the retry list too, kept by time. */
static void reports_link(imc_gateway *gw, push *p) {
  p->prev = NULL;
  p->next = gw->reports;
  if (gw->reports)
    gw->reports->prev = p;
  gw->reports = p;
}

static void reports_unlink(imc_gateway *gw, push *p) {
  if (p->prev)
    p->prev->next = p->next;
  else
    gw->reports = p->next;
  if (p->next)
    p->next->prev = p->prev;
  p->prev = p->next = NULL;
}

/* Inserts p by p->deadline, scanning from the end: later retries are the
 * common case. */
static void retry_link(imc_gateway *gw, push *p) {
  push *after = gw->retry_tail;
  while (after && after->deadline > p->deadline)
    after = after->prev;
  p->prev = after;
  p->next = after ? after->next : gw->retry_head;
  if (p->next)
    p->next->prev = p;
  else
    gw->retry_tail = p;
  if (after)
    after->next = p;
  else
    gw->retry_head = p;
}

static void retry_unlink(imc_gateway *gw, push *p) {
  if (p->prev)
    p->prev->next = p->next;
  else
    gw->retry_head = p->next;
  if (p->next)
    p->next->prev = p->prev;
  else
    gw->retry_tail = p->prev;
  p->prev = p->next = NULL;
}

static void report_start(imc_gateway *gw, push *p);

static void report_finish(imc_gateway *gw, push *p) {
  reports_unlink(gw, p);
  gw->n_reports--;
  gw_push_free(gw, p);
}

/* The delivered report p (on no list) failed: p needs the slow path. */
static void delivered_to_slow_path(imc_gateway *gw, push *p) {
  p->kind = REP_UNDELIVERED;
  p->attempts = 0;
  stat_inc(gw, IMC_GW_STAT_UNDELIVERED);
  if (gw->o.upstream.undelivered == NULL) {
    gw->n_reports--;
    gw_push_free(gw, p);
    return;
  }
  reports_link(gw, p);
  report_start(gw, p);
}

/* The report p (on no list) failed with rv. */
static void report_failed(imc_gateway *gw, push *p, int rv) {
  if (p->kind == REP_DELIVERED) {
    gw_log(gw, IMC_LOG_WARN,
           "upstream: delivered report of %s for %s/%s failed (%s); "
           "falling back to the slow path",
           p->sm->msg.msg_id, p->user, p->device, imc_strerror(rv));
    delivered_to_slow_path(gw, p);
    return;
  }
  uint32_t shift = p->attempts > 8 ? 8 : p->attempts - 1;
  int64_t delay = (int64_t)RETRY_MIN_MS << shift;
  if (delay > RETRY_MAX_MS)
    delay = RETRY_MAX_MS;
  gw_log(gw, IMC_LOG_WARN,
         "upstream: undelivered report of %s for %s failed (%s); "
         "retry %u in %lld ms",
         p->sm->msg.msg_id, p->user, imc_strerror(rv), p->attempts,
         (long long)delay);
  p->deadline = now_ms(gw) + delay;
  retry_link(gw, p);
}

static void report_done(void *ud, int status) {
  push *p = ud;
  imc_gateway *gw = p->gw;
  if (status == 0) {
    report_finish(gw, p);
    return;
  }
  reports_unlink(gw, p);
  report_failed(gw, p, status);
}

/* Hands p (on gw->reports) to the upstream. The completion may come
 * before the call returns and free p. */
static void report_start(imc_gateway *gw, push *p) {
  p->attempts++;
  int rv;
  if (p->kind == REP_DELIVERED)
    rv = gw->o.upstream.delivered
             ? gw->o.upstream.delivered(gw->o.upstream_ud, &p->sm->msg, p->user,
                                        p->device, report_done, p)
             : IMC_ERR_NOMEM; /* only delivered_many, and no batch */
  else
    rv = gw->o.upstream.undelivered(gw->o.upstream_ud, &p->sm->msg, p->user,
                                    report_done, p);
  if (rv != 0) {
    /* No completion will come: p is still ours. */
    reports_unlink(gw, p);
    report_failed(gw, p, rv);
  }
}

void gw_report(imc_gateway *gw, push *p, enum report_kind kind) {
  if (kind == REP_UNDELIVERED)
    stat_inc(gw, IMC_GW_STAT_UNDELIVERED);
  int batched = kind == REP_DELIVERED && gw->o.upstream.delivered_many;
  int wanted = kind == REP_DELIVERED ? batched || gw->o.upstream.delivered
                                     : gw->o.upstream.undelivered != NULL;
  if (!wanted) {
    gw_push_free(gw, p);
    return;
  }
  p->kind = (uint8_t)kind;
  p->attempts = 0;
  gw->n_reports++;
  if (batched) {
    p->prev = NULL;
    p->next = NULL;
    if (gw->acked_tail)
      gw->acked_tail->next = p;
    else
      gw->acked_head = p;
    gw->acked_tail = p;
    return;
  }
  reports_link(gw, p);
  report_start(gw, p);
}

/*
 * A delivered_many call with the upstream: the acks handed over and the
 * push records behind them, which stay on gw->reports (holding the
 * messages the acks point to) until the call completed.
 */
struct gw_ackbatch {
  gw_ackbatch *prev, *next; /* gw->batches */
  imc_gateway *gw;
  size_t n;
  push **items;            /* in the same allocation, after acks */
  imc_delivery_ack acks[]; /* acks[i] points into items[i] */
};

static void batch_done(void *ud, int status) {
  gw_ackbatch *b = ud;
  imc_gateway *gw = b->gw;
  if (b->prev)
    b->prev->next = b->next;
  else
    gw->batches = b->next;
  if (b->next)
    b->next->prev = b->prev;
  if (status != 0)
    gw_log(gw, IMC_LOG_WARN,
           "upstream: delivered report of %zu acks failed (%s); "
           "falling back to the slow path",
           b->n, imc_strerror(status));
  for (size_t i = 0; i < b->n; i++) {
    push *p = b->items[i];
    reports_unlink(gw, p);
    if (status == 0) {
      gw->n_reports--;
      gw_push_free(gw, p);
    } else {
      delivered_to_slow_path(gw, p);
    }
  }
  imc_free(&gw->mem, b);
}

/* Takes up to ACK_BATCH_MAX acks off gw->acked and reports them. */
static void batch_start(imc_gateway *gw) {
  size_t n = 0;
  for (push *p = gw->acked_head; p && n < ACK_BATCH_MAX; p = p->next)
    n++;
  gw_ackbatch *b = imc_malloc(
      &gw->mem, sizeof(*b) + n * (sizeof(imc_delivery_ack) + sizeof(push *)));
  if (b != NULL) {
    b->gw = gw;
    b->n = n;
    b->items = (push **)(void *)(b->acks + n);
  }
  for (size_t i = 0; i < n; i++) {
    push *p = gw->acked_head;
    gw->acked_head = p->next;
    if (gw->acked_head == NULL)
      gw->acked_tail = NULL;
    reports_link(gw, p);
    if (b == NULL) {
      /* One at a time needs no memory. */
      report_start(gw, p);
      continue;
    }
    p->attempts++;
    b->acks[i] = (imc_delivery_ack){&p->sm->msg, p->user, p->device};
    b->items[i] = p;
  }
  if (b == NULL)
    return;
  b->prev = NULL;
  b->next = gw->batches;
  if (gw->batches)
    gw->batches->prev = b;
  gw->batches = b;
  int rv = gw->o.upstream.delivered_many(gw->o.upstream_ud, b->acks, n,
                                         batch_done, b);
  if (rv != 0)
    batch_done(b, rv); /* no completion will come */
}

void gw_reports_flush(imc_gateway *gw) {
  while (gw->acked_head)
    batch_start(gw);
}

int gw_reports_due(const imc_gateway *gw) {
  return gw->acked_head != NULL;
}

void gw_reports_retry(imc_gateway *gw, int64_t now) {
  /* Take the due ones first: a retry that fails again goes back on the
   * list and must wait for its next turn. */
  push *due = NULL, **tail = &due;
  while (gw->retry_head && (now < 0 || gw->retry_head->deadline <= now)) {
    push *p = gw->retry_head;
    retry_unlink(gw, p);
    *tail = p;
    tail = &p->next;
  }
  while (due) {
    push *p = due;
    due = p->next;
    p->next = NULL;
    if (now < 0)
      p->attempts = 0; /* shutdown: start over at the shortest delay */
    reports_link(gw, p);
    report_start(gw, p);
  }
}

int64_t gw_reports_next(const imc_gateway *gw) {
  return gw->retry_head ? gw->retry_head->deadline : -1;
}

void gw_reports_free(imc_gateway *gw) {
  while (gw->batches) {
    gw_ackbatch *b = gw->batches;
    gw->batches = b->next;
    imc_free(&gw->mem, b); /* its records are on gw->reports */
  }
  while (gw->acked_head) {
    push *p = gw->acked_head;
    gw->acked_head = p->next;
    gw_push_free(gw, p);
  }
  gw->acked_tail = NULL;
  while (gw->reports) {
    push *p = gw->reports;
    reports_unlink(gw, p);
    gw_push_free(gw, p);
  }
  while (gw->retry_head) {
    push *p = gw->retry_head;
    retry_unlink(gw, p);
    gw_push_free(gw, p);
  }
  gw->n_reports = 0;
}
