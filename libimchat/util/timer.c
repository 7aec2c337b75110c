#include "util/timer.h"
#include "util/alloc.h"

static void place(imc_theap *h, uint32_t i, imc_timer *t) {
  h->slots[i] = t;
  t->idx = i;
}

static void sift_up(imc_theap *h, uint32_t i) {
  imc_timer *t = h->slots[i];
  while (i > 0) {
    uint32_t parent = (i - 1) / 2;
    if (h->slots[parent]->at <= t->at)
      break;
    place(h, i, h->slots[parent]);
    i = parent;
  }
  place(h, i, t);
}

static void sift_down(imc_theap *h, uint32_t i) {
  imc_timer *t = h->slots[i];
  for (;;) {
    uint32_t child = 2 * i + 1;
    if (child >= h->n)
      break;
    if (child + 1 < h->n && h->slots[child + 1]->at < h->slots[child]->at)
      child++;
    if (t->at <= h->slots[child]->at)
      break;
    place(h, i, h->slots[child]);
    i = child;
  }
  place(h, i, t);
}

int imc_theap_set(imc_theap *h, const imc_mem *m, imc_timer *t, int64_t at) {
  if (t->idx != IMC_TIMER_IDLE) {
    int64_t old = t->at;
    t->at = at;
    if (at < old)
      sift_up(h, t->idx);
    else
      sift_down(h, t->idx);
    return 0;
  }
  if (h->n == h->cap) {
    uint32_t cap = h->cap ? h->cap * 2 : 64;
    imc_timer **slots = imc_realloc(m, h->slots, cap * sizeof(*slots));
    if (slots == NULL)
      return IMC_ERR_NOMEM;
    h->slots = slots;
    h->cap = cap;
  }
  t->at = at;
  place(h, h->n++, t);
  sift_up(h, t->idx);
  return 0;
}

void imc_theap_remove(imc_theap *h, imc_timer *t) {
  uint32_t i = t->idx;
  if (i == IMC_TIMER_IDLE)
    return;
  t->idx = IMC_TIMER_IDLE;
  if (--h->n == i)
    return;
  imc_timer *last = h->slots[h->n];
  place(h, i, last);
  if (i > 0 && h->slots[(i - 1) / 2]->at > last->at)
    sift_up(h, i);
  else
    sift_down(h, i);
}

void imc_theap_free(imc_theap *h, const imc_mem *m) {
  imc_free(m, h->slots);
  h->slots = NULL;
  h->n = h->cap = 0;
}
