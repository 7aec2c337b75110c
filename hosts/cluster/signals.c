/* SIGINT, SIGTERM and SIGHUP on the loop through a signalfd. */
#include "signals.h"

#include "log.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/signalfd.h>
#include <unistd.h>

struct hsignals {
  hloop *loop;
  int fd;
  hsignals_cbs cbs;
  void *ud;
  int stops;
};

static void on_readable(void *ud) {
  hsignals *s = ud;
  struct signalfd_siginfo si;
  while (read(s->fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
    if (si.ssi_signo == SIGHUP) {
      if (s->cbs.reload)
        s->cbs.reload(s->ud);
      else
        hlog_info("SIGHUP: nothing to reload");
      continue;
    }
    s->stops++;
    hlog_info("%s: %s", si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM",
              s->stops == 1 ? "stopping gracefully (again: at once)"
                            : "stopping now");
    s->cbs.stop(s->ud, s->stops > 1);
  }
}

int hsignals_new(hsignals **out, hloop *l, const hsignals_cbs *cbs, void *ud) {
  hsignals *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return -ENOMEM;
  s->loop = l;
  s->cbs = *cbs;
  s->ud = ud;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  int rv = 0;
  if (signal(SIGPIPE, SIG_IGN) == SIG_ERR ||
      sigprocmask(SIG_BLOCK, &set, NULL) < 0 ||
      (s->fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC)) < 0)
    rv = -errno;
  else if ((rv = hloop_add_fd(l, s->fd, on_readable, s)) < 0)
    close(s->fd);
  if (rv < 0) {
    free(s);
    return rv;
  }
  *out = s;
  return 0;
}

void hsignals_del(hsignals *s) {
  if (s == NULL)
    return;
  hloop_del_fd(s->loop, s->fd);
  close(s->fd);
  free(s);
}
