/* The in-memory registry: leases on a fake clock, replace, conn_id-guarded
 * unregister, watches, reentrant callbacks, and a failing-allocation loop. */
#include "conformance.h"
#include "testutil.h"

#include <imchat/memreg.h>

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- recording callbacks ---------------------------------------------- */

#define MAX_SEEN 16

typedef struct seen_entry {
  char user[IMC_ID_MAX + 1], device[IMC_ID_MAX + 1], node[64];
  uint64_t conn_id;
} seen_entry;

typedef struct lookup_res {
  int calls, status;
  size_t n;
  seen_entry e[MAX_SEEN];
} lookup_res;

static void on_lookup(void *ud, int status, const imc_reg_entry *ents,
                      size_t n) {
  lookup_res *r = ud;
  r->calls++;
  r->status = status;
  r->n = n;
  for (size_t i = 0; i < n && i < MAX_SEEN; i++) {
    snprintf(r->e[i].user, sizeof(r->e[i].user), "%s", ents[i].user_id);
    snprintf(r->e[i].device, sizeof(r->e[i].device), "%s", ents[i].device_id);
    snprintf(r->e[i].node, sizeof(r->e[i].node), "%s", ents[i].node_id);
    r->e[i].conn_id = ents[i].conn_id;
  }
}

typedef struct done_res {
  int calls, status;
} done_res;

static void on_done(void *ud, int status) {
  done_res *d = ud;
  d->calls++;
  d->status = status;
}

typedef struct event {
  imc_watch_event_type type;
  char key[2 * IMC_ID_MAX + 2];
  char value[64];
} event;

typedef struct events {
  int n;
  event ev[256];
} events;

static void on_watch(void *ud, imc_watch_event_type type, const char *key,
                     const uint8_t *value, size_t value_len) {
  events *e = ud;
  ck_assert_int_lt(e->n, 256);
  event *ev = &e->ev[e->n++];
  ev->type = type;
  snprintf(ev->key, sizeof(ev->key), "%s", key);
  snprintf(ev->value, sizeof(ev->value), "%.*s", (int)value_len,
           value ? (const char *)value : "");
}

/* ---- helpers ------------------------------------------------------------ */

static test_mem tm;
static test_clock tc;
static imc_memreg *reg;
static const imc_registry_vtbl *vt;

static void setup(void) {
  test_mem_init(&tm);
  test_clock_init(&tc, 1700000000000);
  vt = imc_memreg_vtbl();
  ck_assert_int_eq(imc_memreg_new(&reg, &tc.clock, &tm.mem), 0);
}

static void teardown(void) {
  imc_memreg_del(reg);
  reg = NULL;
  ck_assert_int_eq(tm.live, 0);
}

static imc_reg_entry entry(const char *user, const char *device,
                           const char *node, uint64_t conn_id) {
  imc_reg_entry e = {user, device, node, conn_id};
  return e;
}

static int do_register(const char *user, const char *device, const char *node,
                       uint64_t conn_id, uint32_t ttl_s) {
  imc_reg_entry e = entry(user, device, node, conn_id);
  done_res d = {0, 1};
  int rv = vt->register_conn(reg, &e, ttl_s, on_done, &d);
  if (rv == 0) {
    ck_assert_int_eq(d.calls, 1);
    return d.status;
  }
  ck_assert_int_eq(d.calls, 0);
  return rv;
}

static int do_renew(const char *user, const char *device, uint64_t conn_id,
                    uint32_t ttl_s) {
  imc_reg_entry e = entry(user, device, "n1", conn_id);
  done_res d = {0, 1};
  int rv = vt->renew(reg, &e, ttl_s, on_done, &d);
  if (rv == 0) {
    ck_assert_int_eq(d.calls, 1);
    return d.status;
  }
  ck_assert_int_eq(d.calls, 0);
  return rv;
}

static int do_unregister(const char *user, const char *device,
                         uint64_t conn_id) {
  imc_reg_entry e = entry(user, device, "n1", conn_id);
  done_res d = {0, 1};
  int rv = vt->unregister(reg, &e, on_done, &d);
  if (rv == 0) {
    ck_assert_int_eq(d.calls, 1);
    return d.status;
  }
  ck_assert_int_eq(d.calls, 0);
  return rv;
}

static lookup_res do_lookup(const char *user) {
  lookup_res r;
  memset(&r, 0, sizeof(r));
  ck_assert_int_eq(vt->lookup(reg, user, on_lookup, &r), 0);
  ck_assert_int_eq(r.calls, 1);
  ck_assert_int_eq(r.status, 0);
  return r;
}

/* ---- tests -------------------------------------------------------------- */

START_TEST(test_vtbl) {
  ck_assert_ptr_nonnull(vt);
  ck_assert_uint_eq(vt->struct_size, sizeof(imc_registry_vtbl));
  ck_assert(vt->register_conn != NULL);
  ck_assert(vt->renew != NULL);
  ck_assert(vt->unregister != NULL);
  ck_assert(vt->lookup != NULL);
  ck_assert(vt->watch != NULL);
}
END_TEST

START_TEST(test_register_lookup) {
  ck_assert_int_eq(do_register("alice", "phone", "n1", 1, 90), 0);
  ck_assert_int_eq(do_register("alice", "laptop", "n2", 2, 90), 0);
  ck_assert_int_eq(do_register("bob", "default", "n1", 3, 90), 0);
  ck_assert_uint_eq(imc_memreg_size(reg), 3);

  lookup_res r = do_lookup("alice");
  ck_assert_uint_eq(r.n, 2);
  int phone = strcmp(r.e[0].device, "phone") == 0 ? 0 : 1;
  ck_assert_str_eq(r.e[phone].user, "alice");
  ck_assert_str_eq(r.e[phone].device, "phone");
  ck_assert_str_eq(r.e[phone].node, "n1");
  ck_assert_uint_eq(r.e[phone].conn_id, 1);
  ck_assert_str_eq(r.e[!phone].device, "laptop");
  ck_assert_str_eq(r.e[!phone].node, "n2");
  ck_assert_uint_eq(r.e[!phone].conn_id, 2);

  r = do_lookup("bob");
  ck_assert_uint_eq(r.n, 1);
  ck_assert_str_eq(r.e[0].user, "bob");

  r = do_lookup("carol");
  ck_assert_uint_eq(r.n, 0);
}
END_TEST

START_TEST(test_expiry) {
  events ev = {0};
  ck_assert_int_eq(vt->watch(reg, "", on_watch, &ev), 0);
  ck_assert_int_eq(do_register("alice", "phone", "n1", 1, 90), 0);
  ck_assert_int_eq(do_register("alice", "laptop", "n1", 2, 30), 0);

  test_clock_advance(&tc, 29999);
  ck_assert_uint_eq(do_lookup("alice").n, 2);
  test_clock_advance(&tc, 1);
  ck_assert_uint_eq(imc_memreg_size(reg), 1);
  lookup_res r = do_lookup("alice");
  ck_assert_uint_eq(r.n, 1);
  ck_assert_str_eq(r.e[0].device, "phone");
  /* The pruned lease shows as a DELETE, as an etcd lease expiry does. */
  ck_assert_int_eq(ev.n, 3);
  ck_assert_int_eq(ev.ev[2].type, IMC_WATCH_DELETE);
  ck_assert_str_eq(ev.ev[2].key, "alice/laptop");

  test_clock_advance(&tc, 60000);
  ck_assert_uint_eq(imc_memreg_size(reg), 0);
  ck_assert_uint_eq(do_lookup("alice").n, 0);
  ck_assert_int_eq(ev.n, 4);
  ck_assert_str_eq(ev.ev[3].key, "alice/phone");
  /* An expired lease cannot be renewed or unregistered. */
  ck_assert_int_eq(do_renew("alice", "phone", 1, 90), IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(do_unregister("alice", "phone", 1), 0);
}
END_TEST

START_TEST(test_renew) {
  ck_assert_int_eq(do_register("alice", "phone", "n1", 7, 10), 0);
  test_clock_advance(&tc, 8000);
  ck_assert_int_eq(do_renew("alice", "phone", 7, 10), 0);
  test_clock_advance(&tc, 8000);
  ck_assert_uint_eq(do_lookup("alice").n, 1);
  /* Only the owning connection renews. */
  ck_assert_int_eq(do_renew("alice", "phone", 8, 10), IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(do_renew("alice", "tablet", 7, 10), IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(do_renew("bob", "phone", 7, 10), IMC_ERR_NOT_FOUND);
  test_clock_advance(&tc, 2000);
  ck_assert_uint_eq(do_lookup("alice").n, 0);
}
END_TEST

START_TEST(test_replace) {
  events ev = {0};
  ck_assert_int_eq(vt->watch(reg, "alice/", on_watch, &ev), 0);
  ck_assert_int_eq(do_register("alice", "phone", "n1", 1, 90), 0);
  ck_assert_int_eq(do_register("alice", "phone", "n2", 2, 90), 0);
  ck_assert_uint_eq(imc_memreg_size(reg), 1);
  lookup_res r = do_lookup("alice");
  ck_assert_uint_eq(r.n, 1);
  ck_assert_str_eq(r.e[0].node, "n2");
  ck_assert_uint_eq(r.e[0].conn_id, 2);
  ck_assert_int_eq(ev.n, 2);
  ck_assert_int_eq(ev.ev[1].type, IMC_WATCH_PUT);
  ck_assert_str_eq(ev.ev[1].value, "n2");

  /* A shorter lease on re-register replaces the longer one too. */
  ck_assert_int_eq(do_register("alice", "phone", "n3", 3, 5), 0);
  test_clock_advance(&tc, 5000);
  ck_assert_uint_eq(do_lookup("alice").n, 0);
}
END_TEST

START_TEST(test_unregister_guard) {
  events ev = {0};
  ck_assert_int_eq(vt->watch(reg, "", on_watch, &ev), 0);
  /* The phone reconnects (conn 2) before the cleanup of conn 1 runs. */
  ck_assert_int_eq(do_register("alice", "phone", "n1", 1, 90), 0);
  ck_assert_int_eq(do_register("alice", "phone", "n1", 2, 90), 0);
  ck_assert_int_eq(do_unregister("alice", "phone", 1), 0);
  lookup_res r = do_lookup("alice");
  ck_assert_uint_eq(r.n, 1);
  ck_assert_uint_eq(r.e[0].conn_id, 2);
  ck_assert_int_eq(ev.n, 2); /* two PUTs, no DELETE */

  ck_assert_int_eq(do_unregister("alice", "laptop", 2), 0);
  ck_assert_int_eq(do_unregister("nobody", "phone", 2), 0);
  ck_assert_int_eq(do_unregister("alice", "phone", 2), 0);
  ck_assert_uint_eq(do_lookup("alice").n, 0);
  ck_assert_uint_eq(imc_memreg_size(reg), 0);
  ck_assert_int_eq(ev.n, 3);
  ck_assert_int_eq(ev.ev[2].type, IMC_WATCH_DELETE);
  ck_assert_str_eq(ev.ev[2].key, "alice/phone");
  ck_assert_int_eq(do_unregister("alice", "phone", 2), 0);
}
END_TEST

START_TEST(test_watch_prefix) {
  events all = {0}, alice = {0}, bob = {0}, al = {0};
  ck_assert_int_eq(vt->watch(reg, "", on_watch, &all), 0);
  ck_assert_int_eq(vt->watch(reg, "alice/", on_watch, &alice), 0);
  ck_assert_int_eq(vt->watch(reg, "bob/", on_watch, &bob), 0);
  ck_assert_int_eq(vt->watch(reg, NULL, on_watch, &al), 0); /* NULL: all */

  ck_assert_int_eq(do_register("alice", "phone", "n1", 1, 90), 0);
  ck_assert_int_eq(do_register("alicia", "phone", "n1", 2, 90), 0);
  ck_assert_int_eq(do_register("bob", "web", "n2", 3, 90), 0);
  ck_assert_int_eq(do_renew("bob", "web", 3, 90), 0); /* no event */
  ck_assert_int_eq(do_unregister("alice", "phone", 1), 0);
  ck_assert_int_eq(do_unregister("bob", "web", 99), 0);

  ck_assert_int_eq(all.n, 4);
  ck_assert_int_eq(al.n, 4);
  ck_assert_int_eq(alice.n, 2);
  ck_assert_int_eq(alice.ev[0].type, IMC_WATCH_PUT);
  ck_assert_str_eq(alice.ev[0].key, "alice/phone");
  ck_assert_str_eq(alice.ev[0].value, "n1");
  ck_assert_int_eq(alice.ev[1].type, IMC_WATCH_DELETE);
  ck_assert_str_eq(alice.ev[1].key, "alice/phone");
  ck_assert_str_eq(alice.ev[1].value, "");
  ck_assert_int_eq(bob.n, 1);
  ck_assert_str_eq(bob.ev[0].key, "bob/web");
  ck_assert_str_eq(bob.ev[0].value, "n2");
}
END_TEST

START_TEST(test_invalid) {
  imc_reg_entry e = entry("alice", "phone", "n1", 1);
  done_res d = {0, 0};
  ck_assert_int_eq(vt->register_conn(reg, NULL, 90, on_done, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(vt->register_conn(reg, &e, 0, on_done, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(vt->register_conn(reg, &e, 90, NULL, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  e.device_id = "bad/device";
  ck_assert_int_eq(vt->register_conn(reg, &e, 90, on_done, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  e.device_id = "";
  ck_assert_int_eq(vt->renew(reg, &e, 90, on_done, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  e.device_id = "phone";
  e.node_id = NULL;
  ck_assert_int_eq(vt->register_conn(reg, &e, 90, on_done, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  e.user_id = NULL;
  ck_assert_int_eq(vt->unregister(reg, &e, on_done, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(vt->lookup(reg, NULL, on_lookup, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(vt->watch(reg, "", NULL, NULL), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(d.calls, 0);
  ck_assert_int_eq(imc_memreg_new(NULL, NULL, NULL), IMC_ERR_INVALID_ARGUMENT);
  imc_memreg_del(NULL);
  ck_assert_uint_eq(imc_memreg_size(NULL), 0);
}
END_TEST

START_TEST(test_many_users) {
  char user[32], dev[32];
  for (int i = 0; i < 2000; i++) {
    snprintf(user, sizeof(user), "user%d", i);
    snprintf(dev, sizeof(dev), "d%d", i % 3);
    ck_assert_int_eq(do_register(user, dev, "n1", (uint64_t)i, 90), 0);
  }
  ck_assert_uint_eq(imc_memreg_size(reg), 2000);
  for (int i = 0; i < 2000; i++) {
    snprintf(user, sizeof(user), "user%d", i);
    lookup_res r = do_lookup(user);
    ck_assert_uint_eq(r.n, 1);
    ck_assert_uint_eq(r.e[0].conn_id, (uint64_t)i);
  }
  /* Many devices of one user: the lookup result outgrows the stack. */
  for (int i = 0; i < 40; i++) {
    snprintf(dev, sizeof(dev), "device-%d", i);
    ck_assert_int_eq(do_register("busy", dev, "node-with-a-long-name", 1, 90),
                     0);
  }
  ck_assert_uint_eq(do_lookup("busy").n, 40);
}
END_TEST

/* Abandoned leases are reclaimed by the per-call sweep, with no lookup. */
START_TEST(test_sweep_reclaims) {
  long base = tm.live;
  char user[32];
  for (int i = 0; i < 500; i++) {
    snprintf(user, sizeof(user), "ghost%d", i);
    ck_assert_int_eq(do_register(user, "d", "n1", 1, 1), 0);
  }
  ck_assert_int_gt(tm.live, base + 500);
  test_clock_advance(&tc, 1000);
  ck_assert_uint_eq(imc_memreg_size(reg), 0);
  for (int i = 0; i < 4096 && tm.live > base; i++)
    ck_assert_int_eq(do_renew("alive", "d", 1, 90), IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(tm.live, base);
}
END_TEST

/* Callbacks that call back into the registry. */
static void watch_unregisters(void *ud, imc_watch_event_type type,
                              const char *key, const uint8_t *value,
                              size_t value_len) {
  int *n = ud;
  (*n)++;
  if (type == IMC_WATCH_PUT && strcmp(key, "alice/phone") == 0) {
    ck_assert_int_eq(do_unregister("alice", "phone", 1), 0);
    /* The key handed to us is still readable. */
    ck_assert_str_eq(key, "alice/phone");
    ck_assert_int_eq((int)value_len, 2);
    ck_assert_int_eq(memcmp(value, "n1", 2), 0);
  }
}

static void lookup_registers(void *ud, int status, const imc_reg_entry *ents,
                             size_t n) {
  ck_assert_int_eq(status, 0);
  for (size_t i = 0; i < n; i++) {
    ck_assert_int_eq(
        do_unregister(ents[i].user_id, ents[i].device_id, ents[i].conn_id), 0);
    ck_assert_int_eq(do_register("bob", ents[i].device_id, "n9", 5, 90), 0);
    ck_assert_str_eq(ents[i].user_id, "bob");
  }
  *(size_t *)ud = n;
}

START_TEST(test_reentrant) {
  int events_seen = 0;
  ck_assert_int_eq(vt->watch(reg, "", watch_unregisters, &events_seen), 0);
  ck_assert_int_eq(do_register("alice", "phone", "n1", 1, 90), 0);
  ck_assert_int_eq(events_seen, 2); /* PUT, then the nested DELETE */
  ck_assert_uint_eq(do_lookup("alice").n, 0);

  ck_assert_int_eq(do_register("bob", "a", "n1", 1, 90), 0);
  ck_assert_int_eq(do_register("bob", "b", "n1", 2, 90), 0);
  size_t n = 0;
  ck_assert_int_eq(vt->lookup(reg, "bob", lookup_registers, &n), 0);
  ck_assert_uint_eq(n, 2);
  lookup_res r = do_lookup("bob");
  ck_assert_uint_eq(r.n, 2);
  ck_assert_str_eq(r.e[0].node, "n9");
}
END_TEST

static void watch_adds_watch(void *ud, imc_watch_event_type type,
                             const char *key, const uint8_t *value,
                             size_t value_len) {
  int *n = ud;
  if ((*n)++ < 8)
    ck_assert_int_eq(vt->watch(reg, "", watch_adds_watch, ud), 0);
}

START_TEST(test_watch_added_in_callback) {
  int n = 0;
  ck_assert_int_eq(vt->watch(reg, "", watch_adds_watch, &n), 0);
  ck_assert_int_eq(do_register("alice", "phone", "n1", 1, 90), 0);
  ck_assert_int_ge(n, 2);
}
END_TEST

/*
 * Failing allocations: for every allocation index, run a scenario; each
 * call fails with IMC_ERR_NOMEM or succeeds, a failed call changes
 * nothing, and nothing leaks.
 */
START_TEST(test_nomem) {
  vt = imc_memreg_vtbl();
  int completed = 0;
  for (long fail = 0; fail < 400 && !completed; fail++) {
    test_mem mem;
    test_clock clk;
    test_mem_init(&mem);
    test_clock_init(&clk, 0);
    mem.fail_at = fail;
    imc_memreg *r = NULL;
    int rv = imc_memreg_new(&r, &clk.clock, &mem.mem);
    if (rv != 0) {
      ck_assert_int_eq(rv, IMC_ERR_NOMEM);
      ck_assert_ptr_null(r);
      ck_assert_int_eq(mem.live, 0);
      continue;
    }
    events ev = {0};
    rv = vt->watch(r, "", on_watch, &ev);
    ck_assert(rv == 0 || rv == IMC_ERR_NOMEM);
    int watching = rv == 0;

    int failures = 0;
    char user[32], dev[32];
    size_t expect = 0;
    for (int i = 0; i < 90; i++) {
      snprintf(user, sizeof(user), "u%d", i % 70);
      snprintf(dev, sizeof(dev), "device-number-%d", i / 70);
      imc_reg_entry e = entry(user, dev, "node", (uint64_t)i);
      done_res d = {0, 1};
      int before = ev.n;
      rv = vt->register_conn(r, &e, 90, on_done, &d);
      if (rv == IMC_ERR_NOMEM) {
        failures++;
        ck_assert_int_eq(d.calls, 0);
        ck_assert_int_eq(ev.n, before);
      } else {
        ck_assert_int_eq(rv, 0);
        ck_assert_int_eq(d.status, 0);
        ck_assert_int_eq(ev.n, before + watching);
        expect++;
      }
      ck_assert_uint_eq(imc_memreg_size(r), expect);
    }
    /* u0..u19 may have two devices: a lookup bigger than the stack. */
    for (int i = 0; i < 70; i++) {
      snprintf(user, sizeof(user), "u%d", i);
      lookup_res lr;
      memset(&lr, 0, sizeof(lr));
      rv = vt->lookup(r, user, on_lookup, &lr);
      ck_assert(rv == 0 || rv == IMC_ERR_NOMEM);
      ck_assert_int_eq(lr.calls, rv == 0);
    }
    for (int i = 0; i < 90; i++) {
      snprintf(user, sizeof(user), "u%d", i % 70);
      snprintf(dev, sizeof(dev), "device-number-%d", i / 70);
      imc_reg_entry e = entry(user, dev, "node", (uint64_t)i);
      done_res d = {0, 1};
      ck_assert_int_eq(vt->renew(r, &e, 90, on_done, &d), 0);
      ck_assert_int_eq(vt->unregister(r, &e, on_done, &d), 0);
    }
    ck_assert_uint_eq(imc_memreg_size(r), 0);
    imc_memreg_del(r);
    ck_assert_int_eq(mem.live, 0);
    if (failures == 0 && watching && mem.count <= fail)
      completed = 1;
  }
  ck_assert_msg(completed, "the scenario never ran without a failure");
}
END_TEST

/* A lookup result larger than the stack buffer, failing on its block. */
START_TEST(test_nomem_lookup) {
  char dev[32];
  for (int i = 0; i < 40; i++) {
    snprintf(dev, sizeof(dev), "device-%d", i);
    ck_assert_int_eq(do_register("busy", dev, "node", 1, 90), 0);
  }
  tm.fail_at = tm.count;
  lookup_res r;
  memset(&r, 0, sizeof(r));
  ck_assert_int_eq(vt->lookup(reg, "busy", on_lookup, &r), IMC_ERR_NOMEM);
  ck_assert_int_eq(r.calls, 0);
  ck_assert_uint_eq(do_lookup("busy").n, 40);
}
END_TEST

static Suite *memreg_suite(void) {
  Suite *s = suite_create("memreg");
  TCase *tc_core = tcase_create("core");
  tcase_add_checked_fixture(tc_core, setup, teardown);
  tcase_add_test(tc_core, test_vtbl);
  tcase_add_test(tc_core, test_register_lookup);
  tcase_add_test(tc_core, test_expiry);
  tcase_add_test(tc_core, test_renew);
  tcase_add_test(tc_core, test_replace);
  tcase_add_test(tc_core, test_unregister_guard);
  tcase_add_test(tc_core, test_watch_prefix);
  tcase_add_test(tc_core, test_invalid);
  tcase_add_test(tc_core, test_many_users);
  tcase_add_test(tc_core, test_sweep_reclaims);
  tcase_add_test(tc_core, test_reentrant);
  tcase_add_test(tc_core, test_watch_added_in_callback);
  tcase_add_test(tc_core, test_nomem_lookup);
  suite_add_tcase(s, tc_core);

  TCase *tc_mem = tcase_create("nomem");
  tcase_add_test(tc_mem, test_nomem);
  tcase_set_timeout(tc_mem, 60);
  suite_add_tcase(s, tc_mem);
  return s;
}

/* The registry conformance suite over imc_memreg. */
static void *cf_create(void *ctx, const imc_clock *clock) {
  (void)ctx;
  imc_memreg *r = NULL;
  return imc_memreg_new(&r, clock, NULL) == 0 ? r : NULL;
}

static void cf_destroy(void *ctx, void *ud) {
  (void)ctx;
  imc_memreg_del(ud);
}

static conformance_factory factory = {
    .name = "memreg", .create = cf_create, .destroy = cf_destroy};

int main(void) {
  factory.registry = imc_memreg_vtbl();
  SRunner *sr = srunner_create(memreg_suite());
  srunner_add_suite(sr, conformance_registry_suite(&factory));
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
