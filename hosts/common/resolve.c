/* Host name lookups off the loop, on getaddrinfo_a(3). */
#include "resolve.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Who frees the lookup is decided by one exchange on state: the last of
 * the completion and hresolve_end. */
enum { RUNNING, DONE, ENDED };

struct hresolve {
  struct gaicb cb;
  struct addrinfo hints;
  atomic_int state;
  char port[8];
  char host[];
};

static void lookup_free(hresolve *r) {
  if (r->cb.ar_result)
    freeaddrinfo(r->cb.ar_result);
  free(r);
}

/* On glibc's thread, after the lookup ends. */
static void lookup_done(union sigval v) {
  hresolve *r = v.sival_ptr;
  if (atomic_exchange(&r->state, DONE) == ENDED)
    lookup_free(r);
}

int hresolve_start(hresolve **out, const char *host, const char *port) {
  size_t hl = strlen(host);
  hresolve *r = calloc(1, sizeof(*r) + hl + 1);
  if (r == NULL)
    return -ENOMEM;
  memcpy(r->host, host, hl + 1);
  snprintf(r->port, sizeof(r->port), "%s", port);
  r->hints.ai_family = AF_UNSPEC;
  r->hints.ai_socktype = SOCK_STREAM;
  r->hints.ai_flags = AI_ADDRCONFIG | AI_NUMERICSERV;
  r->cb.ar_name = r->host;
  r->cb.ar_service = r->port;
  r->cb.ar_request = &r->hints;
  atomic_init(&r->state, RUNNING);
  struct sigevent ev;
  memset(&ev, 0, sizeof(ev));
  ev.sigev_notify = SIGEV_THREAD;
  ev.sigev_notify_function = lookup_done;
  ev.sigev_value.sival_ptr = r;
  struct gaicb *list[1] = {&r->cb};
  int rv = getaddrinfo_a(GAI_NOWAIT, list, 1, &ev);
  if (rv != 0) {
    free(r);
    return rv == EAI_MEMORY ? -ENOMEM : -EAGAIN;
  }
  *out = r;
  return 0;
}

int hresolve_result(hresolve *r, const struct addrinfo **res) {
  if (atomic_load(&r->state) != DONE)
    return HRESOLVE_BUSY;
  int rv = gai_error(&r->cb);
  if (rv == 0 && r->cb.ar_result == NULL)
    rv = EAI_NONAME;
  *res = rv == 0 ? r->cb.ar_result : NULL;
  return rv;
}

void hresolve_end(hresolve *r) {
  if (r != NULL && atomic_exchange(&r->state, ENDED) == DONE)
    lookup_free(r);
}
