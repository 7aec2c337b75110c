/*
 * The slow path: jobs for the durable offline queue that no answer waits
 * on. A job the queue refuses joins the retry list, which is published
 * again in order, one at a time, with exponential backoff.
 */
#include "router/router_int.h"

#include "queue.pb-c.h"

#include <string.h>

/* Inbox users other than the sender. */
static size_t others(const imc_msg *m, const char *const *users, size_t n) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    k += strcmp(users[i], m->from_user) != 0;
  return k;
}

/*
 * Every job is packed here, so this is where the sender leaves its
 * inbox list: a message to oneself, or one whose push to the sender's
 * other device went unacknowledged, never lands in the sender's own
 * inbox; its devices catch up from the conversation history.
 */
int imc_rt_pack_job(imc_router *r, const imc_msg *m, int history,
                    const char *const *users, size_t n, uint8_t **out,
                    size_t *out_len) {
  size_t k = others(m, users, n);
  const char **kept = NULL;
  if (k < n) {
    kept = imc_malloc(&r->mem, (k ? k : 1) * sizeof(*kept));
    if (kept == NULL)
      return IMC_ERR_NOMEM;
    for (size_t i = 0, j = 0; i < n; i++)
      if (strcmp(users[i], m->from_user) != 0)
        kept[j++] = users[i];
  }
  Imchat__V1__Message pm;
  imc_pb_from_msg(&pm, m);
  Imchat__V1__OfflineJob job = IMCHAT__V1__OFFLINE_JOB__INIT;
  job.message = &pm;
  job.history = history != 0;
  job.n_inbox_users = k;
  job.inbox_users = (char **)(kept ? kept : users);
  job.from_node = (char *)(m->from_node ? m->from_node : "");
  job.from_conn_id = m->from_conn_id;
  size_t len = imchat__v1__offline_job__get_packed_size(&job);
  uint8_t *buf = imc_malloc(&r->mem, len ? len : 1);
  if (buf != NULL)
    *out_len = imchat__v1__offline_job__pack(&job, buf);
  imc_free(&r->mem, kept);
  if (buf == NULL)
    return IMC_ERR_NOMEM;
  *out = buf;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Slow path with retries                                               */
/* ------------------------------------------------------------------ */

static void retry_arm(imc_router *r) {
  if (r->retry_ms == 0)
    r->retry_ms = RETRY_MIN_MS;
  r->retry_at = imc_rt_now_ms(r) + r->retry_ms;
}

static void retry_done(void *ud, int status);

void imc_rt_retry_publish(imc_router *r) {
  qrec *t = r->retries;
  r->pending++;
  int rv = r->o.queue.publish(r->o.queue_ud, r->o.offline_topic, t->data,
                              t->key_len, t->data + t->key_len,
                              t->len - t->key_len, retry_done, r);
  if (rv != 0)
    retry_done(r, rv);
}

static void retry_done(void *ud, int status) {
  imc_router *r = ud;
  r->pending--;
  if (status != 0) {
    r->stats[IMC_RT_STAT_QUEUE_ERRORS]++;
    r->retry_ms =
        r->retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : r->retry_ms * 2;
    retry_arm(r);
    return;
  }
  qrec *t = r->retries;
  r->retries = t->next;
  if (r->retries == NULL)
    r->retries_tail = NULL;
  r->stats[IMC_RT_STAT_RETRY_QUEUE]--;
  imc_free(&r->mem, t);
  r->retry_ms = 0;
  r->retry_at = 0;
  if (r->retries)
    imc_rt_retry_publish(r);
}

static void retry_add(imc_router *r, qrec *q) {
  q->next = NULL;
  int was_empty = r->retries == NULL;
  r->stats[IMC_RT_STAT_RETRY_QUEUE]++;
  if (r->retries_tail)
    r->retries_tail->next = q;
  else
    r->retries = q;
  r->retries_tail = q;
  if (was_empty)
    retry_arm(r);
}

static void queue_done(void *ud, int status) {
  qrec *q = ud;
  imc_router *r = q->r;
  r->pending--;
  if (status == 0) {
    imc_free(&r->mem, q);
    return;
  }
  r->stats[IMC_RT_STAT_QUEUE_ERRORS]++;
  rt_log(r, IMC_LOG_WARN, "offline queue: %s; will retry",
         imc_strerror(status));
  retry_add(r, q);
}

void imc_rt_queue_retry(imc_router *r, const imc_msg *m, const uint8_t *job,
                        size_t job_len) {
  size_t key_len = strlen(m->conversation_id);
  qrec *q = imc_malloc(&r->mem, sizeof(*q) + key_len + job_len);
  if (q == NULL) {
    rt_log(r, IMC_LOG_ERROR, "out of memory queueing %s", m->msg_id);
    return;
  }
  q->r = r;
  q->key_len = key_len;
  q->len = key_len + job_len;
  memcpy(q->data, m->conversation_id, key_len);
  memcpy(q->data + key_len, job, job_len);
  rt_log(r, IMC_LOG_WARN, "offline queue: %s refused; will retry", m->msg_id);
  retry_add(r, q);
}

/*
 * Queues msg for the inboxes of users (and its history if history != 0)
 * without an answer waiting on it: failures are retried until the queue
 * takes it.
 */
void imc_rt_slow_path(imc_router *r, const imc_msg *m, int history,
                      const char *const *users, size_t n) {
  uint8_t *job;
  size_t job_len;
  size_t k = others(m, users, n);
  if (k == 0 && !history)
    return; /* only the sender's own inbox: nothing to queue */
  if (imc_rt_pack_job(r, m, history, users, n, &job, &job_len) != 0) {
    rt_log(r, IMC_LOG_ERROR, "out of memory queueing %s", m->msg_id);
    return;
  }
  size_t key_len = strlen(m->conversation_id);
  qrec *q = imc_malloc(&r->mem, sizeof(*q) + key_len + job_len);
  if (q == NULL) {
    imc_free(&r->mem, job);
    rt_log(r, IMC_LOG_ERROR, "out of memory queueing %s", m->msg_id);
    return;
  }
  q->next = NULL;
  q->r = r;
  q->key_len = key_len;
  q->len = key_len + job_len;
  memcpy(q->data, m->conversation_id, key_len);
  memcpy(q->data + key_len, job, job_len);
  imc_free(&r->mem, job);
  r->stats[IMC_RT_STAT_SLOW_PATH] += k;
  r->pending++;
  int rv =
      r->o.queue.publish(r->o.queue_ud, r->o.offline_topic, q->data, key_len,
                         q->data + key_len, job_len, queue_done, q);
  if (rv != 0)
    queue_done(q, rv);
}

void imc_rt_retries_free(imc_router *r) {
  while (r->retries) {
    qrec *t = r->retries;
    r->retries = t->next;
    imc_free(&r->mem, t);
  }
  r->retries_tail = NULL;
}
