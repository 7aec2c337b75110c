/*
 * Signals of the cluster hosts, read on the loop through a signalfd:
 * SIGINT and SIGTERM ask for a graceful stop (a second one: at once),
 * SIGHUP for a reload; SIGPIPE is ignored.
 */
#ifndef HCLUSTER_SIGNALS_H
#define HCLUSTER_SIGNALS_H

#include "loop.h"

typedef struct hsignals hsignals;

typedef struct hsignals_cbs {
  void (*stop)(void *ud, int now); /* now: the second stop request */
  void (*reload)(void *ud);        /* NULL: SIGHUP is logged, ignored */
} hsignals_cbs;

/* Blocks the signals in this thread and watches them on l. Call it
 * before starting any thread. Returns 0 or a negative errno value. */
int hsignals_new(hsignals **out, hloop *l, const hsignals_cbs *cbs, void *ud);

void hsignals_del(hsignals *s);

#endif
