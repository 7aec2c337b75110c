/*
 * The imc_loop adapter on hloop (see engine_loop.h).
 */
#include "engine_loop.h"

#include "clock.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>

typedef struct watch {
  hengine_loop *el;
  hloop_watch *w;
  imc_loop_fd_cb cb;
  void *cb_ud;
  struct watch *prev, *next;
} watch;

typedef struct timer {
  int64_t due_ms;
  uint64_t gen; /* the loop's generation when added */
  imc_loop_timer_cb cb;
  void *cb_ud;
  struct timer *prev, *next;
} timer;

struct hengine_loop {
  hloop *l;
  imc_loop loop;
  watch *watches;
  timer *timers; /* by due_ms, earliest first */
  uint64_t gen;  /* bumped by every run of the timers */
};

static uint32_t to_epoll(unsigned events) {
  return ((events & IMC_LOOP_READ) ? EPOLLIN : 0u) |
         ((events & IMC_LOOP_WRITE) ? EPOLLOUT : 0u);
}

static void on_ready(void *ud, int fd, uint32_t revents) {
  watch *w = ud;
  unsigned ev = ((revents & EPOLLIN) ? IMC_LOOP_READ : 0u) |
                ((revents & EPOLLOUT) ? IMC_LOOP_WRITE : 0u) |
                ((revents & (EPOLLERR | EPOLLHUP)) ? IMC_LOOP_ERROR : 0u);
  w->cb(w->cb_ud, fd, ev);
}

static int l_fd_add(void *ud, int fd, unsigned events, imc_loop_fd_cb cb,
                    void *cb_ud, void **handle) {
  hengine_loop *el = ud;
  if (cb == NULL || handle == NULL || fd < 0)
    return IMC_ERR_INVALID_ARGUMENT;
  watch *w = calloc(1, sizeof(*w));
  if (w == NULL)
    return IMC_ERR_NOMEM;
  w->el = el;
  w->cb = cb;
  w->cb_ud = cb_ud;
  if (hloop_watch_add(el->l, fd, to_epoll(events), on_ready, w, &w->w) < 0) {
    free(w);
    return IMC_ERR_IO;
  }
  w->next = el->watches;
  if (w->next)
    w->next->prev = w;
  el->watches = w;
  *handle = w;
  return 0;
}

static int l_fd_set(void *ud, void *handle, unsigned events) {
  hengine_loop *el = ud;
  watch *w = handle;
  return hloop_watch_set(el->l, w->w, to_epoll(events)) < 0 ? IMC_ERR_IO : 0;
}

static void watch_free(hengine_loop *el, watch *w) {
  hloop_watch_del(el->l, w->w);
  if (w->prev)
    w->prev->next = w->next;
  else
    el->watches = w->next;
  if (w->next)
    w->next->prev = w->prev;
  free(w);
}

static void l_fd_del(void *ud, void *handle) {
  watch_free(ud, handle);
}

static void timer_unlink(hengine_loop *el, timer *t) {
  if (t->prev)
    t->prev->next = t->next;
  else
    el->timers = t->next;
  if (t->next)
    t->next->prev = t->prev;
}

static int l_timer_add(void *ud, int64_t ms, imc_loop_timer_cb cb, void *cb_ud,
                       void **handle) {
  hengine_loop *el = ud;
  if (cb == NULL || handle == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  timer *t = calloc(1, sizeof(*t));
  if (t == NULL)
    return IMC_ERR_NOMEM;
  t->due_ms = hclock_ms() + (ms < 0 ? 0 : ms);
  t->gen = el->gen;
  t->cb = cb;
  t->cb_ud = cb_ud;
  /* Insert after every timer due no later: equal deadlines fire in order. */
  timer *prev = NULL, *cur = el->timers;
  while (cur && cur->due_ms <= t->due_ms) {
    prev = cur;
    cur = cur->next;
  }
  t->prev = prev;
  t->next = cur;
  if (prev)
    prev->next = t;
  else
    el->timers = t;
  if (cur)
    cur->prev = t;
  *handle = t;
  return 0;
}

static void l_timer_del(void *ud, void *handle) {
  timer *t = handle;
  timer_unlink(ud, t);
  free(t);
}

static const imc_loop_vtbl vtbl = {
    .struct_size = sizeof(imc_loop_vtbl),
    .fd_add = l_fd_add,
    .fd_set = l_fd_set,
    .fd_del = l_fd_del,
    .timer_add = l_timer_add,
    .timer_del = l_timer_del,
};

static int64_t timers_next(void *ud) {
  hengine_loop *el = ud;
  if (el->timers == NULL)
    return -1;
  int64_t d = el->timers->due_ms - hclock_ms();
  return d < 0 ? 0 : d;
}

/* Fires the timers due now. Timers a callback adds carry the new
 * generation and wait for a later turn, even at 0 ms, so a timer that
 * re-arms itself cannot spin here. */
static void timers_run(void *ud) {
  hengine_loop *el = ud;
  uint64_t gen = ++el->gen;
  int64_t now = hclock_ms();
  for (;;) {
    timer *t = el->timers;
    while (t && t->due_ms <= now && t->gen == gen)
      t = t->next;
    if (t == NULL || t->due_ms > now)
      return;
    timer_unlink(el, t);
    imc_loop_timer_cb cb = t->cb;
    void *cb_ud = t->cb_ud;
    free(t);
    cb(cb_ud); /* may add or delete timers: rescan from the head */
  }
}

int hengine_loop_new(hloop *l, hengine_loop **out) {
  hengine_loop *el = calloc(1, sizeof(*el));
  if (el == NULL)
    return -ENOMEM;
  el->l = l;
  el->loop.vtbl = &vtbl;
  el->loop.ud = el;
  int rv = hloop_add_hook(l, timers_next, timers_run, el);
  if (rv < 0) {
    free(el);
    return rv;
  }
  *out = el;
  return 0;
}

void hengine_loop_del(hengine_loop *el) {
  if (el == NULL)
    return;
  while (el->watches)
    watch_free(el, el->watches);
  while (el->timers) {
    timer *t = el->timers;
    timer_unlink(el, t);
    free(t);
  }
  hloop_del_hook(el->l, timers_run, el);
  free(el);
}

const imc_loop *hengine_loop_get(hengine_loop *el) {
  return &el->loop;
}
