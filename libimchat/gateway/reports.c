/*
 * Reports to the upstream about pushed messages: delivered (a device
 * ACKed it) and undelivered (it needs the slow path). Each report is the
 * push record itself, holding the gateway's reference to the message
 * until the upstream completed it.
 *
 * A failed delivered report falls back to undelivered: the recipient may
 * then get the message twice (clients dedup by msg_id), which beats
 * losing the DELIVERED status and the message with it. A failed
 * undelivered report is retried with exponential backoff from
 * RETRY_MIN_MS to RETRY_MAX_MS for as long as the gateway lives.
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

/* The report p (on no list) failed with rv. */
static void report_failed(imc_gateway *gw, push *p, int rv) {
  if (p->kind == REP_DELIVERED) {
    gw_log(gw, IMC_LOG_WARN,
           "upstream: delivered report of %s for %s/%s failed (%s); "
           "falling back to the slow path",
           p->sm->msg.msg_id, p->user, p->device, imc_strerror(rv));
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
    rv = gw->o.upstream.delivered(gw->o.upstream_ud, &p->sm->msg, p->user,
                                  p->device, report_done, p);
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
  int wanted = kind == REP_DELIVERED ? gw->o.upstream.delivered != NULL
                                     : gw->o.upstream.undelivered != NULL;
  if (!wanted) {
    gw_push_free(gw, p);
    return;
  }
  p->kind = (uint8_t)kind;
  p->attempts = 0;
  gw->n_reports++;
  reports_link(gw, p);
  report_start(gw, p);
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
