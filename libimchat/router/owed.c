/*
 * Dedup records owed: the "ok" of a send whose job the queue took while
 * the dedup set refused the record. The message is durable, so the send
 * is answered; the record is written again, with backoff, until the dedup
 * set takes it, one write in flight at a time. Until then a resend finds
 * the send's claim, still "pending" (a live instance's: honoured), and is
 * told to try again, rather than a released claim that would give the
 * resend a second msg_id.
 */
#include "router/router_int.h"

#include <string.h>

struct imc_rt_owed {
  struct imc_rt_owed *next;
  uint32_t ttl_s;
  char *value;
  char key[];
};

static void owed_arm(imc_router *r) {
  r->owed_ms = r->owed_ms == 0                 ? RETRY_MIN_MS
               : r->owed_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS
                                               : r->owed_ms * 2;
  r->owed_at = imc_rt_now_ms(r) + r->owed_ms;
}

void imc_rt_owe_dedup(imc_router *r, const char *key, const char *value,
                      uint32_t ttl_s) {
  size_t kl = strlen(key), vl = strlen(value);
  imc_rt_owed *o = imc_malloc(&r->mem, sizeof(*o) + kl + 1 + vl + 1);
  if (o == NULL) {
    rt_log(r, IMC_LOG_ERROR, "out of memory owing the dedup record %s", key);
    return;
  }
  o->next = NULL;
  o->ttl_s = ttl_s;
  memcpy(o->key, key, kl + 1);
  o->value = o->key + kl + 1;
  memcpy(o->value, value, vl + 1);
  rt_log(r, IMC_LOG_WARN,
         "dedup: the record of a queued message failed; writing it again");
  r->stats[IMC_RT_STAT_DEDUP_OWED]++;
  if (r->owed_tail)
    r->owed_tail->next = o;
  else
    r->owed = o;
  r->owed_tail = o;
  if (r->owed_at == 0 && !r->owed_busy)
    owed_arm(r);
}

static void owed_done(void *ud, int status) {
  imc_router *r = ud;
  r->pending--;
  r->owed_busy = 0;
  if (status != 0) {
    imc_rt_backend_error(r, "dedup: set (owed)", status);
    owed_arm(r);
    return;
  }
  imc_rt_owed *o = r->owed;
  r->owed = o->next;
  if (r->owed == NULL)
    r->owed_tail = NULL;
  imc_free(&r->mem, o);
  r->stats[IMC_RT_STAT_DEDUP_OWED]--;
  r->owed_ms = 0;
  if (r->owed)
    r->owed_at = imc_rt_now_ms(r); /* the next at once */
}

void imc_rt_owed_write(imc_router *r) {
  imc_rt_owed *o = r->owed;
  r->owed_at = 0;
  r->owed_busy = 1;
  r->pending++;
  int rv = r->o.dedup.set(r->o.dedup_ud, o->key, (const uint8_t *)o->value,
                          strlen(o->value), o->ttl_s, owed_done, r);
  if (rv != 0)
    owed_done(r, rv);
}

void imc_rt_owed_free(imc_router *r) {
  while (r->owed) {
    imc_rt_owed *o = r->owed;
    r->owed = o->next;
    imc_free(&r->mem, o);
  }
  r->owed_tail = NULL;
}
