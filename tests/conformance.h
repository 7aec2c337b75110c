/*
 * Vtable conformance suites: the behaviour every implementation of a
 * backend vtable must show, written against the vtables alone so the
 * embedded backends and the real ones (Redis, MySQL, Kafka, etcd) run the
 * same tests.
 *
 * A test file describes its backend with a conformance_factory and adds
 * the suites it implements to its runner:
 *
 *   static const conformance_factory fx = {.name = "sqlite", ...};
 *   srunner_add_suite(sr, conformance_bus_suite(&fx));
 *
 * The factory must outlive the runner. Each test creates a fresh, empty
 * backend and destroys it at the end.
 */
#ifndef IMC_CONFORMANCE_H
#define IMC_CONFORMANCE_H

#include <check.h>

#include <imchat/backend.h>

typedef struct conformance_factory {
  const char *name; /* suites are named "<name>/seq", "<name>/bus", ... */
  void *ctx;        /* the factory's own state, given to every hook */
  /*
   * A new backend with no data, whose expiry follows clock if it can (see
   * real_clock). Returns the ud for the vtables, or NULL on failure.
   */
  void *(*create)(void *ctx, const imc_clock *clock);
  /* Release ud. Outstanding polls may complete from inside. */
  void (*destroy)(void *ctx, void *ud);
  /*
   * Optional: close ud and open the same durable state again, as after a
   * restart; returns the new ud. NULL skips the durability tests.
   */
  void *(*reopen)(void *ctx, void *ud);
  /*
   * Optional: run one iteration of the backend's event loop, making the
   * completions that are due (it may wait briefly for I/O); returns the
   * number made or a negative code. NULL if the backend completes every
   * operation inside the call.
   */
  int (*dispatch)(void *ctx, void *ud);
  /* The vtables under test; a suite needs only its own. */
  const imc_seq_vtbl *seq;
  const imc_dedup_vtbl *dedup;
  const imc_store_vtbl *store;
  const imc_bus_vtbl *bus;
  const imc_registry_vtbl *registry;
  /*
   * Optional (registry): make the backend lose every lease and entry, as
   * a server restarted empty, and break its watch streams, so that
   * keepalives find NOT_FOUND and every watch gets IMC_WATCH_RESYNC.
   * NULL skips that test.
   */
  void (*lose_state)(void *ctx, void *ud);
  /* Nonzero if keys expire by the backend's own clock: TTL tests sleep. */
  int real_clock;
} conformance_factory;

Suite *conformance_seq_suite(const conformance_factory *f);
Suite *conformance_dedup_suite(const conformance_factory *f);
Suite *conformance_store_suite(const conformance_factory *f);
Suite *conformance_bus_suite(const conformance_factory *f);
Suite *conformance_registry_suite(const conformance_factory *f);

#endif /* IMC_CONFORMANCE_H */
