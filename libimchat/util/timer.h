/*
 * Deadlines of many objects in one binary min-heap. Each object embeds an
 * imc_timer; the heap stores pointers to them and keeps each timer's slot
 * index, so rescheduling and removal are O(log n).
 */
#ifndef IMC_TIMER_H
#define IMC_TIMER_H

#include <imchat/common.h>

#define IMC_TIMER_IDLE UINT32_MAX /* idx of a timer not in the heap */

typedef struct imc_timer {
  int64_t at;   /* deadline, monotonic ms */
  uint32_t idx; /* slot in the heap or IMC_TIMER_IDLE */
} imc_timer;

typedef struct imc_theap {
  imc_timer **slots;
  uint32_t n;
  uint32_t cap;
} imc_theap;

static inline void imc_timer_init(imc_timer *t) {
  t->at = 0;
  t->idx = IMC_TIMER_IDLE;
}

/* Inserts t at deadline at, or moves it there. Returns 0 or
 * IMC_ERR_NOMEM (t keeps its previous state then). */
int imc_theap_set(imc_theap *h, const imc_mem *m, imc_timer *t, int64_t at);

/* Removes t if it is in the heap. */
void imc_theap_remove(imc_theap *h, imc_timer *t);

/* The earliest timer, or NULL. */
static inline imc_timer *imc_theap_top(const imc_theap *h) {
  return h->n ? h->slots[0] : NULL;
}

void imc_theap_free(imc_theap *h, const imc_mem *m);

#endif /* IMC_TIMER_H */
