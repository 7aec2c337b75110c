/*
 * The storage thread (see storage.h).
 *
 * Handoff: kicked is set under mu by the loop after a submit, and
 * cleared by the thread before it drains, so a submit made while the
 * thread drains is never lost: the thread looks again. The thread
 * touches the imc_sqlite only through imc_sqlite_run_batch(), the one
 * function the library allows from another thread.
 */
#include "storage.h"
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct hstorage {
  hloop *loop;
  imc_sqlite *db;
  int efd; /* -1 without a thread */
  pthread_t thread;
  int running; /* the thread was started and not yet joined */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int kicked, stop; /* under mu */
};

static void *storage_main(void *ud) {
  hstorage *s = ud;
  pthread_mutex_lock(&s->mu);
  for (;;) {
    while (!s->kicked && !s->stop)
      pthread_cond_wait(&s->cv, &s->mu);
    if (!s->kicked)
      break; /* stopping, and everything submitted has run */
    s->kicked = 0;
    pthread_mutex_unlock(&s->mu);
    int n;
    while ((n = imc_sqlite_run_batch(s->db)) > 0) {
      uint64_t one = 1;
      /* Only EAGAIN (counter saturated) can fail: the loop is awake. */
      while (write(s->efd, &one, sizeof(one)) < 0 && errno == EINTR)
        ;
    }
    pthread_mutex_lock(&s->mu);
  }
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

/* The loop side of the eventfd: a batch ran; the dispatch hook sees the
 * library's deadline at 0 and completes it. */
static void on_wakeup(void *ud) {
  hstorage *s = ud;
  uint64_t n;
  while (read(s->efd, &n, sizeof(n)) < 0 && errno == EINTR)
    ;
}

void hstorage_flush(hstorage *s) {
  int n = imc_sqlite_submit(s->db);
  if (n < 0) {
    hlog_error("store: submit: %s", imc_strerror(n));
    return;
  }
  if (s->running) {
    if (n == 0)
      return;
    pthread_mutex_lock(&s->mu);
    s->kicked = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return;
  }
  while (imc_sqlite_run_batch(s->db) > 0)
    ;
}

/* End of every loop turn (NULL deadline: after each batch of events). */
static void flush_hook(void *ud) {
  hstorage_flush(ud);
}

/*
 * Operations made after the end-of-turn hook ran (by the gateway's
 * flush, say) are due within the batch wait: this hook's deadline wakes
 * the loop for them, where the end-of-turn hook alone would let the loop
 * sleep until the next event.
 */
static int64_t wait_due(void *ud) {
  return imc_sqlite_next_timeout_ms(((hstorage *)ud)->db);
}

static void wait_hook(void *ud) {
  hstorage_flush(ud);
}

int hstorage_new(hstorage **out, hloop *loop, imc_sqlite *db, uint32_t max_ops,
                 int threaded) {
  hstorage *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return -ENOMEM;
  s->loop = loop;
  s->db = db;
  s->efd = -1;
  int rv = imc_sqlite_set_group_commit(db, max_ops);
  if (rv < 0) {
    free(s);
    return rv == IMC_ERR_NOMEM ? -ENOMEM : -EINVAL;
  }
  if ((rv = hloop_add_hook(loop, NULL, flush_hook, s)) < 0 ||
      (rv = hloop_add_hook(loop, wait_due, wait_hook, s)) < 0) {
    hloop_del_hook(loop, flush_hook, s);
    free(s);
    return rv;
  }
  if (!threaded) {
    *out = s;
    return 0;
  }
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  s->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s->efd < 0) {
    rv = -errno;
  } else if ((rv = hloop_add_fd(loop, s->efd, on_wakeup, s)) == 0) {
    rv = -pthread_create(&s->thread, NULL, storage_main, s);
    if (rv == 0)
      s->running = 1;
    else
      hloop_del_fd(loop, s->efd);
  }
  if (rv < 0) {
    hstorage_del(s);
    return rv;
  }
  *out = s;
  return 0;
}

void hstorage_stop(hstorage *s) {
  if (s == NULL || !s->running)
    return;
  pthread_mutex_lock(&s->mu);
  s->stop = 1;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
  pthread_join(s->thread, NULL);
  s->running = 0;
}

void hstorage_del(hstorage *s) {
  if (s == NULL)
    return;
  hstorage_stop(s);
  hloop_del_hook(s->loop, flush_hook, s);
  hloop_del_hook(s->loop, wait_hook, s);
  if (s->efd >= 0) {
    /* The loop closes the fds it watches (see hloop_add_fd): it does
     * not own this one, so remove it, then close it. */
    hloop_del_fd(s->loop, s->efd);
    close(s->efd);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
  }
  free(s);
}
