/* The in-memory registry: node leases on a fake clock, entries that end
 * with their lease, replace, the (node, conn_id) guard of unregister,
 * batched lookups, watches with cancel, ordering and resync, reentrant
 * callbacks, and a failing-allocation loop. */
#include "conformance.h"
#include "testutil.h"

#include <imchat/memreg.h>

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- recording callbacks ---------------------------------------------- */

#define MAX_SEEN 64
#define MAX_USERS 8

typedef struct seen_entry {
  char user[IMC_ID_MAX + 1], device[IMC_ID_MAX + 1], node[64];
  uint64_t conn_id;
} seen_entry;

typedef struct lookup_res {
  int calls, status;
  size_t n, n_users;
  size_t offsets[MAX_USERS + 1];
  seen_entry e[MAX_SEEN];
} lookup_res;

static void on_lookup(void *ud, int status, const imc_reg_entry *const *ents,
                      const size_t *offsets, size_t n_users) {
  lookup_res *r = ud;
  r->calls++;
  r->status = status;
  if (status != 0)
    return;
  r->n_users = n_users;
  r->n = offsets[n_users];
  for (size_t i = 0; i <= n_users && i <= MAX_USERS; i++)
    r->offsets[i] = offsets[i];
  for (size_t i = 0; i < r->n && i < MAX_SEEN; i++) {
    ck_assert_uint_eq(ents[i]->struct_size, sizeof(imc_reg_entry));
    snprintf(r->e[i].user, sizeof(r->e[i].user), "%s", ents[i]->user_id);
    snprintf(r->e[i].device, sizeof(r->e[i].device), "%s", ents[i]->device_id);
    snprintf(r->e[i].node, sizeof(r->e[i].node), "%s", ents[i]->node_id);
    r->e[i].conn_id = ents[i]->conn_id;
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

typedef struct lease_res {
  int calls, status;
  uint64_t id;
} lease_res;

static void on_lease(void *ud, int status, uint64_t id) {
  lease_res *r = ud;
  r->calls++;
  r->status = status;
  r->id = id;
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
  if (type == IMC_WATCH_RESYNC) {
    ck_assert_ptr_null(key);
    ck_assert_ptr_null(value);
  }
  snprintf(ev->key, sizeof(ev->key), "%s", key ? key : "");
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
  imc_reg_entry e = {sizeof(e), user, device, node, conn_id};
  return e;
}

static uint64_t grant(const char *node, uint32_t ttl_s) {
  lease_res r = {0, 1, 0};
  ck_assert_int_eq(vt->lease_grant(reg, node, ttl_s, on_lease, &r), 0);
  ck_assert_int_eq(r.calls, 1);
  ck_assert_int_eq(r.status, 0);
  ck_assert_uint_ne(r.id, 0);
  return r.id;
}

/* The status of a call: its return code, else its completion's. */
static int status_of(int rv, const done_res *d) {
  if (rv != 0) {
    ck_assert_int_eq(d->calls, 0);
    return rv;
  }
  ck_assert_int_eq(d->calls, 1);
  return d->status;
}

static int keepalive(uint64_t lease) {
  done_res d = {0, 1};
  return status_of(vt->lease_keepalive(reg, lease, on_done, &d), &d);
}

static int revoke(uint64_t lease) {
  done_res d = {0, 1};
  return status_of(vt->lease_revoke(reg, lease, on_done, &d), &d);
}

static int do_register(uint64_t lease, const char *user, const char *device,
                       const char *node, uint64_t conn_id) {
  imc_reg_entry e = entry(user, device, node, conn_id);
  done_res d = {0, 1};
  return status_of(vt->register_conn(reg, lease, &e, on_done, &d), &d);
}

static int do_unregister(const char *user, const char *device, const char *node,
                         uint64_t conn_id) {
  imc_reg_entry e = entry(user, device, node, conn_id);
  done_res d = {0, 1};
  return status_of(vt->unregister(reg, &e, on_done, &d), &d);
}

static lookup_res do_lookup_many(const char *const *users, size_t n) {
  lookup_res r;
  memset(&r, 0, sizeof(r));
  ck_assert_int_eq(vt->lookup_many(reg, users, n, on_lookup, &r), 0);
  ck_assert_int_eq(r.calls, 1);
  ck_assert_int_eq(r.status, 0);
  ck_assert_uint_eq(r.n_users, n);
  return r;
}

static lookup_res do_lookup(const char *user) {
  return do_lookup_many(&user, 1);
}

static uint64_t watch_on(const char *prefix, imc_watch_cb cb, void *ud) {
  uint64_t id = 0;
  ck_assert_int_eq(vt->watch(reg, prefix, cb, ud, &id), 0);
  ck_assert_uint_ne(id, 0);
  return id;
}

/* ---- tests -------------------------------------------------------------- */

START_TEST(test_vtbl) {
  ck_assert_ptr_nonnull(vt);
  ck_assert_uint_eq(vt->struct_size, sizeof(imc_registry_vtbl));
  ck_assert(vt->lease_grant != NULL);
  ck_assert(vt->lease_keepalive != NULL);
  ck_assert(vt->lease_revoke != NULL);
  ck_assert(vt->register_conn != NULL);
  ck_assert(vt->unregister != NULL);
  ck_assert(vt->lookup_many != NULL);
  ck_assert(vt->watch != NULL);
  ck_assert(vt->watch_cancel != NULL);
}
END_TEST

START_TEST(test_register_lookup) {
  uint64_t l1 = grant("n1", 90), l2 = grant("n2", 90);
  ck_assert_uint_ne(l1, l2);
  ck_assert_uint_eq(imc_memreg_lease_count(reg), 2);
  ck_assert_int_eq(do_register(l1, "alice", "phone", "n1", 1), 0);
  ck_assert_int_eq(do_register(l2, "alice", "laptop", "n2", 2), 0);
  ck_assert_int_eq(do_register(l1, "bob", "default", "n1", 3), 0);
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

  const char *users[] = {"carol", "bob", "alice", "bob"};
  r = do_lookup_many(users, 4);
  ck_assert_uint_eq(r.n, 4);
  ck_assert_uint_eq(r.offsets[0], 0);
  ck_assert_uint_eq(r.offsets[1], 0); /* carol: none */
  ck_assert_uint_eq(r.offsets[2], 1);
  ck_assert_str_eq(r.e[0].user, "bob");
  ck_assert_uint_eq(r.offsets[3], 3);
  ck_assert_str_eq(r.e[1].user, "alice");
  ck_assert_str_eq(r.e[2].user, "alice");
  ck_assert_uint_eq(r.offsets[4], 4);
  ck_assert_str_eq(r.e[3].user, "bob");

  r = do_lookup_many(NULL, 0);
  ck_assert_uint_eq(r.n, 0);
  ck_assert_uint_eq(r.offsets[0], 0);
}
END_TEST

START_TEST(test_expiry) {
  events ev = {0};
  watch_on("", on_watch, &ev);
  uint64_t l1 = grant("n1", 90), l2 = grant("n1", 30);
  ck_assert_int_eq(do_register(l1, "alice", "phone", "n1", 1), 0);
  ck_assert_int_eq(do_register(l2, "alice", "laptop", "n1", 2), 0);
  ck_assert_int_eq(do_register(l2, "bob", "laptop", "n1", 3), 0);

  test_clock_advance(&tc, 29999);
  ck_assert_uint_eq(do_lookup("alice").n, 2);
  test_clock_advance(&tc, 1);
  ck_assert_uint_eq(imc_memreg_size(reg), 1);
  ck_assert_uint_eq(imc_memreg_lease_count(reg), 1);
  lookup_res r = do_lookup("alice");
  ck_assert_uint_eq(r.n, 1);
  ck_assert_str_eq(r.e[0].device, "phone");
  ck_assert_uint_eq(do_lookup("bob").n, 0);
  /* The lease's end shows as a DELETE per entry, as in etcd. */
  ck_assert_int_eq(ev.n, 5);
  ck_assert_int_eq(ev.ev[3].type, IMC_WATCH_DELETE);
  ck_assert_int_eq(ev.ev[4].type, IMC_WATCH_DELETE);
  ck_assert(strcmp(ev.ev[3].key, "alice/laptop") == 0 ||
            strcmp(ev.ev[4].key, "alice/laptop") == 0);
  ck_assert(strcmp(ev.ev[3].key, "bob/laptop") == 0 ||
            strcmp(ev.ev[4].key, "bob/laptop") == 0);
  /* The expired lease is gone for good. */
  ck_assert_int_eq(keepalive(l2), IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(do_register(l2, "bob", "laptop", "n1", 3),
                   IMC_ERR_NOT_FOUND);
  ck_assert_uint_eq(do_lookup("bob").n, 0);
  ck_assert_int_eq(ev.n, 5);

  test_clock_advance(&tc, 60000);
  ck_assert_uint_eq(imc_memreg_size(reg), 0);
  ck_assert_uint_eq(do_lookup("alice").n, 0);
  ck_assert_int_eq(ev.n, 6);
  ck_assert_str_eq(ev.ev[5].key, "alice/phone");
  ck_assert_int_eq(do_unregister("alice", "phone", "n1", 1), 0);
  ck_assert_uint_eq(imc_memreg_lease_count(reg), 0);
}
END_TEST

START_TEST(test_keepalive) {
  uint64_t l = grant("n1", 10);
  ck_assert_int_eq(do_register(l, "alice", "phone", "n1", 7), 0);
  test_clock_advance(&tc, 8000);
  ck_assert_int_eq(keepalive(l), 0);
  test_clock_advance(&tc, 8000);
  ck_assert_uint_eq(do_lookup("alice").n, 1);
  ck_assert_int_eq(keepalive(l + 100), IMC_ERR_NOT_FOUND);
  test_clock_advance(&tc, 2000);
  ck_assert_uint_eq(do_lookup("alice").n, 0);
  ck_assert_int_eq(keepalive(l), IMC_ERR_NOT_FOUND);
}
END_TEST

START_TEST(test_revoke) {
  events ev = {0};
  watch_on("", on_watch, &ev);
  uint64_t l1 = grant("n1", 90), l2 = grant("n2", 90);
  ck_assert_int_eq(do_register(l1, "alice", "phone", "n1", 1), 0);
  ck_assert_int_eq(do_register(l1, "bob", "phone", "n1", 2), 0);
  ck_assert_int_eq(do_register(l2, "bob", "web", "n2", 3), 0);
  ck_assert_int_eq(revoke(l1), 0);
  ck_assert_int_eq(ev.n, 5);
  ck_assert_int_eq(ev.ev[3].type, IMC_WATCH_DELETE);
  ck_assert_int_eq(ev.ev[4].type, IMC_WATCH_DELETE);
  ck_assert_uint_eq(imc_memreg_size(reg), 1);
  ck_assert_uint_eq(imc_memreg_lease_count(reg), 1);
  lookup_res r = do_lookup("bob");
  ck_assert_uint_eq(r.n, 1);
  ck_assert_str_eq(r.e[0].device, "web");
  ck_assert_int_eq(revoke(l1), IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(revoke(l2), 0);
  ck_assert_uint_eq(imc_memreg_size(reg), 0);
}
END_TEST

START_TEST(test_replace) {
  events ev = {0};
  watch_on("alice/", on_watch, &ev);
  uint64_t l1 = grant("n1", 90), l2 = grant("n2", 90), l3 = grant("n3", 5);
  ck_assert_int_eq(do_register(l1, "alice", "phone", "n1", 1), 0);
  ck_assert_int_eq(do_register(l2, "alice", "phone", "n2", 2), 0);
  ck_assert_uint_eq(imc_memreg_size(reg), 1);
  lookup_res r = do_lookup("alice");
  ck_assert_uint_eq(r.n, 1);
  ck_assert_str_eq(r.e[0].node, "n2");
  ck_assert_uint_eq(r.e[0].conn_id, 2);
  ck_assert_int_eq(ev.n, 2);
  ck_assert_int_eq(ev.ev[1].type, IMC_WATCH_PUT);
  ck_assert_str_eq(ev.ev[1].value, "n2");
  /* The entry moved to l2: the end of l1 leaves it alone. */
  ck_assert_int_eq(revoke(l1), 0);
  ck_assert_uint_eq(do_lookup("alice").n, 1);
  ck_assert_int_eq(ev.n, 2);

  /* Moving to a shorter lease: it ends with that lease. */
  ck_assert_int_eq(do_register(l3, "alice", "phone", "n3", 3), 0);
  test_clock_advance(&tc, 5000);
  ck_assert_uint_eq(do_lookup("alice").n, 0);
  ck_assert_int_eq(revoke(l2), 0);
  ck_assert_int_eq(ev.n, 4); /* PUT n3, DELETE at l3's end */
}
END_TEST

START_TEST(test_unregister_guard) {
  events ev = {0};
  watch_on("", on_watch, &ev);
  uint64_t l = grant("n1", 90), l2 = grant("n2", 90);
  /* The phone reconnects (conn 2) before the cleanup of conn 1 runs. */
  ck_assert_int_eq(do_register(l, "alice", "phone", "n1", 1), 0);
  ck_assert_int_eq(do_register(l, "alice", "phone", "n1", 2), 0);
  ck_assert_int_eq(do_unregister("alice", "phone", "n1", 1), 0);
  lookup_res r = do_lookup("alice");
  ck_assert_uint_eq(r.n, 1);
  ck_assert_uint_eq(r.e[0].conn_id, 2);
  ck_assert_int_eq(ev.n, 2); /* two PUTs, no DELETE */
  /* conn ids are unique per node only. */
  ck_assert_int_eq(do_register(l2, "alice", "phone", "n2", 1), 0);
  ck_assert_int_eq(do_unregister("alice", "phone", "n1", 1), 0);
  ck_assert_uint_eq(do_lookup("alice").n, 1);

  ck_assert_int_eq(do_unregister("alice", "laptop", "n2", 1), 0);
  ck_assert_int_eq(do_unregister("nobody", "phone", "n2", 1), 0);
  ck_assert_int_eq(do_unregister("alice", "phone", "n2", 1), 0);
  ck_assert_uint_eq(do_lookup("alice").n, 0);
  ck_assert_uint_eq(imc_memreg_size(reg), 0);
  ck_assert_int_eq(ev.n, 4);
  ck_assert_int_eq(ev.ev[3].type, IMC_WATCH_DELETE);
  ck_assert_str_eq(ev.ev[3].key, "alice/phone");
  ck_assert_int_eq(do_unregister("alice", "phone", "n2", 1), 0);
  ck_assert_int_eq(ev.n, 4);
}
END_TEST

START_TEST(test_watch_prefix) {
  events all = {0}, alice = {0}, bob = {0}, al = {0};
  watch_on("", on_watch, &all);
  watch_on("alice/", on_watch, &alice);
  watch_on("bob/", on_watch, &bob);
  watch_on(NULL, on_watch, &al); /* NULL: all */

  uint64_t l = grant("n1", 90);
  ck_assert_int_eq(do_register(l, "alice", "phone", "n1", 1), 0);
  ck_assert_int_eq(do_register(l, "alicia", "phone", "n1", 2), 0);
  ck_assert_int_eq(do_register(l, "bob", "web", "n2", 3), 0);
  ck_assert_int_eq(keepalive(l), 0); /* no event */
  ck_assert_int_eq(do_unregister("alice", "phone", "n1", 1), 0);
  ck_assert_int_eq(do_unregister("bob", "web", "n2", 99), 0);

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

START_TEST(test_watch_cancel) {
  events a = {0}, b = {0};
  uint64_t ida = watch_on("", on_watch, &a);
  uint64_t idb = watch_on("", on_watch, &b);
  ck_assert_uint_ne(ida, idb);
  uint64_t l = grant("n1", 90);
  ck_assert_int_eq(do_register(l, "alice", "phone", "n1", 1), 0);
  ck_assert_int_eq(vt->watch_cancel(reg, ida), 0);
  ck_assert_int_eq(vt->watch_cancel(reg, ida), IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(vt->watch_cancel(reg, 12345), IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(do_register(l, "bob", "phone", "n1", 2), 0);
  ck_assert_int_eq(a.n, 1);
  ck_assert_int_eq(b.n, 2);
  /* A new watch gets a new id, never a cancelled one. */
  uint64_t idc = watch_on("", on_watch, &a);
  ck_assert_uint_ne(idc, ida);
  ck_assert_uint_ne(idc, idb);
}
END_TEST

/* A watch that cancels itself, and another one, from its callback. */
typedef struct canceller {
  uint64_t self, other;
  int n;
} canceller;

static void watch_cancels(void *ud, imc_watch_event_type type, const char *key,
                          const uint8_t *value, size_t value_len) {
  canceller *c = ud;
  (void)type;
  (void)key;
  (void)value;
  (void)value_len;
  c->n++;
  ck_assert_int_eq(vt->watch_cancel(reg, c->self), 0);
  if (c->other)
    ck_assert_int_eq(vt->watch_cancel(reg, c->other), 0);
  ck_assert_int_eq(vt->watch_cancel(reg, c->self), IMC_ERR_NOT_FOUND);
}

START_TEST(test_watch_cancel_in_callback) {
  canceller c = {0, 0, 0};
  events later = {0}, kept = {0};
  c.self = watch_on("", watch_cancels, &c);
  c.other = watch_on("", on_watch, &later);
  watch_on("", on_watch, &kept);
  uint64_t l = grant("n1", 90);
  ck_assert_int_eq(do_register(l, "alice", "phone", "n1", 1), 0);
  ck_assert_int_eq(do_register(l, "bob", "phone", "n1", 2), 0);
  ck_assert_int_eq(c.n, 1);
  ck_assert_int_eq(later.n, 0); /* cancelled before its turn */
  ck_assert_int_eq(kept.n, 2);
}
END_TEST

/*
 * Watch A unregisters the key it is told about; watch B must still see
 * the PUT before the DELETE, or its cache would keep a dead entry.
 */
static void watch_unregisters(void *ud, imc_watch_event_type type,
                              const char *key, const uint8_t *value,
                              size_t value_len) {
  int *n = ud;
  (*n)++;
  if (type == IMC_WATCH_PUT && strcmp(key, "alice/phone") == 0) {
    ck_assert_int_eq(do_unregister("alice", "phone", "n1", 1), 0);
    /* The key handed to us is still readable. */
    ck_assert_str_eq(key, "alice/phone");
    ck_assert_int_eq((int)value_len, 2);
    ck_assert_int_eq(memcmp(value, "n1", 2), 0);
  }
}

START_TEST(test_watch_order) {
  int seen = 0;
  events b = {0};
  watch_on("", watch_unregisters, &seen);
  watch_on("", on_watch, &b);
  uint64_t l = grant("n1", 90);
  ck_assert_int_eq(do_register(l, "alice", "phone", "n1", 1), 0);
  ck_assert_int_eq(seen, 2); /* PUT, then the DELETE it caused */
  ck_assert_int_eq(b.n, 2);
  ck_assert_int_eq(b.ev[0].type, IMC_WATCH_PUT);
  ck_assert_int_eq(b.ev[1].type, IMC_WATCH_DELETE);
  ck_assert_uint_eq(do_lookup("alice").n, 0);
}
END_TEST

/* A change made from a callback whose event cannot be queued: RESYNC. */
static uint64_t nested_lease;

static void watch_registers_nomem(void *ud, imc_watch_event_type type,
                                  const char *key, const uint8_t *value,
                                  size_t value_len) {
  (void)value;
  (void)value_len;
  events *e = ud;
  on_watch(ud, type, key, value, value_len);
  if (type == IMC_WATCH_PUT && strcmp(key, "alice/phone") == 0) {
    /* "alice" exists: the entry is the one allocation, the queued
     * event the next. */
    tm.fail_at = tm.count + 1;
    ck_assert_int_eq(do_register(nested_lease, "alice", "web", "n1", 2), 0);
    tm.fail_at = -1;
    ck_assert_int_eq(do_register(nested_lease, "alice", "tv", "n1", 3), 0);
    ck_assert_int_eq(e->n, 1); /* nothing delivered from inside */
  }
}

START_TEST(test_resync_on_lost_event) {
  events a = {0}, b = {0};
  watch_on("", watch_registers_nomem, &a);
  watch_on("alice/", on_watch, &b);
  nested_lease = grant("n1", 90);
  ck_assert_int_eq(do_register(nested_lease, "alice", "phone", "n1", 1), 0);
  /* PUT phone, PUT tv (the web PUT was lost), then RESYNC. */
  ck_assert_int_eq(b.n, 3);
  ck_assert_int_eq(b.ev[0].type, IMC_WATCH_PUT);
  ck_assert_str_eq(b.ev[1].key, "alice/tv");
  ck_assert_int_eq(b.ev[2].type, IMC_WATCH_RESYNC);
  ck_assert_int_eq(a.n, 3);
  ck_assert_int_eq(a.ev[2].type, IMC_WATCH_RESYNC);
  ck_assert_uint_eq(do_lookup("alice").n, 3); /* the data itself is there */
}
END_TEST

START_TEST(test_reset) {
  events a = {0}, b = {0};
  watch_on("", on_watch, &a);
  watch_on("nobody/", on_watch, &b);
  long base = tm.live;
  uint64_t l = grant("n1", 90);
  ck_assert_int_eq(do_register(l, "alice", "phone", "n1", 1), 0);
  ck_assert_int_eq(do_register(l, "bob", "phone", "n1", 2), 0);
  imc_memreg_reset(reg);
  ck_assert_int_eq(tm.live, base);
  ck_assert_uint_eq(imc_memreg_size(reg), 0);
  ck_assert_uint_eq(imc_memreg_lease_count(reg), 0);
  /* One RESYNC per watch, whatever its prefix, and no DELETEs. */
  ck_assert_int_eq(a.n, 3);
  ck_assert_int_eq(a.ev[2].type, IMC_WATCH_RESYNC);
  ck_assert_int_eq(b.n, 1);
  ck_assert_int_eq(b.ev[0].type, IMC_WATCH_RESYNC);
  /* The holder finds out at its next keepalive, and starts over with a
   * lease id it never had. */
  ck_assert_int_eq(keepalive(l), IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(do_register(l, "alice", "phone", "n1", 1),
                   IMC_ERR_NOT_FOUND);
  uint64_t l2 = grant("n1", 90);
  ck_assert_uint_ne(l2, l);
  ck_assert_int_eq(do_register(l2, "alice", "phone", "n1", 1), 0);
  ck_assert_uint_eq(do_lookup("alice").n, 1);
  imc_memreg_reset(NULL);
}
END_TEST

START_TEST(test_invalid) {
  imc_reg_entry e = entry("alice", "phone", "n1", 1);
  done_res d = {0, 0};
  lease_res lr = {0, 0, 0};
  uint64_t id;
  uint64_t l = grant("n1", 90);
  ck_assert_int_eq(vt->lease_grant(reg, NULL, 90, on_lease, &lr),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(vt->lease_grant(reg, "bad/node", 90, on_lease, &lr),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(vt->lease_grant(reg, "n1", 0, on_lease, &lr),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(vt->lease_grant(reg, "n1", 90, NULL, &lr),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(vt->lease_keepalive(reg, 0, on_done, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(vt->lease_keepalive(reg, l, NULL, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(vt->lease_revoke(reg, 0, on_done, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(vt->register_conn(reg, l, NULL, on_done, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(vt->register_conn(reg, 0, &e, on_done, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(vt->register_conn(reg, l, &e, NULL, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  e.struct_size = 8; /* too old to hold the four members */
  ck_assert_int_eq(vt->register_conn(reg, l, &e, on_done, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  e.struct_size = sizeof(e);
  e.device_id = "bad/device";
  ck_assert_int_eq(vt->register_conn(reg, l, &e, on_done, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  e.device_id = "";
  ck_assert_int_eq(vt->unregister(reg, &e, on_done, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  e.device_id = "phone";
  e.node_id = NULL;
  ck_assert_int_eq(vt->register_conn(reg, l, &e, on_done, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  e.node_id = "n1";
  e.user_id = NULL;
  ck_assert_int_eq(vt->unregister(reg, &e, on_done, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  const char *users[] = {"alice", NULL};
  ck_assert_int_eq(vt->lookup_many(reg, users, 2, on_lookup, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(vt->lookup_many(reg, NULL, 1, on_lookup, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(vt->lookup_many(reg, users, 1, NULL, &d),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(vt->watch(reg, "", NULL, NULL, &id),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(vt->watch(reg, "", on_watch, NULL, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(d.calls, 0);
  ck_assert_int_eq(lr.calls, 0);
  ck_assert_int_eq(imc_memreg_new(NULL, NULL, NULL), IMC_ERR_INVALID_ARGUMENT);
  imc_memreg_del(NULL);
  ck_assert_uint_eq(imc_memreg_size(NULL), 0);
  ck_assert_uint_eq(imc_memreg_lease_count(NULL), 0);
  ck_assert_uint_eq(imc_memreg_size(reg), 0);
}
END_TEST

START_TEST(test_many_users) {
  char user[32], dev[32];
  uint64_t l[4];
  for (int i = 0; i < 4; i++)
    l[i] = grant("n1", 90);
  for (int i = 0; i < 2000; i++) {
    snprintf(user, sizeof(user), "user%d", i);
    snprintf(dev, sizeof(dev), "d%d", i % 3);
    ck_assert_int_eq(do_register(l[i % 4], user, dev, "n1", (uint64_t)i), 0);
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
    ck_assert_int_eq(do_register(l[0], "busy", dev, "node-with-a-long-name", 1),
                     0);
  }
  const char *users[] = {"busy", "user7", "busy"};
  lookup_res r = do_lookup_many(users, 3);
  ck_assert_uint_eq(r.n, 81);
  ck_assert_uint_eq(r.offsets[1], 40);
  ck_assert_uint_eq(r.offsets[2], 41);
  /* Ending a lease drops a quarter of them in one go. */
  ck_assert_int_eq(revoke(l[1]), 0);
  ck_assert_uint_eq(imc_memreg_size(reg), 1540);
  ck_assert_uint_eq(do_lookup("user1").n, 0);
  ck_assert_uint_eq(do_lookup("user2").n, 1);
}
END_TEST

/* Abandoned leases are reclaimed at the next call, with no lookup. */
START_TEST(test_expiry_reclaims) {
  long base = tm.live;
  char user[32];
  uint64_t l = grant("n1", 1);
  for (int i = 0; i < 500; i++) {
    snprintf(user, sizeof(user), "ghost%d", i);
    ck_assert_int_eq(do_register(l, user, "d", "n1", 1), 0);
  }
  ck_assert_int_gt(tm.live, base + 500);
  test_clock_advance(&tc, 1000);
  ck_assert_uint_eq(imc_memreg_size(reg), 0);
  ck_assert_int_eq(keepalive(l + 1), IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(tm.live, base);
}
END_TEST

/* A lookup completion that changes the registry it is reading. */
static uint64_t reentrant_lease;

static void lookup_registers(void *ud, int status,
                             const imc_reg_entry *const *ents,
                             const size_t *offsets, size_t n_users) {
  ck_assert_int_eq(status, 0);
  size_t n = offsets[n_users];
  for (size_t i = 0; i < n; i++) {
    ck_assert_int_eq(do_unregister(ents[i]->user_id, ents[i]->device_id,
                                   ents[i]->node_id, ents[i]->conn_id),
                     0);
    ck_assert_int_eq(
        do_register(reentrant_lease, "bob", ents[i]->device_id, "n9", 5), 0);
    ck_assert_int_eq(revoke(reentrant_lease + 1000), IMC_ERR_NOT_FOUND);
    ck_assert_str_eq(ents[i]->user_id, "bob");
  }
  *(size_t *)ud = n;
}

START_TEST(test_reentrant) {
  reentrant_lease = grant("n1", 90);
  ck_assert_int_eq(do_register(reentrant_lease, "bob", "a", "n1", 1), 0);
  ck_assert_int_eq(do_register(reentrant_lease, "bob", "b", "n1", 2), 0);
  size_t n = 0;
  const char *users[] = {"bob"};
  ck_assert_int_eq(vt->lookup_many(reg, users, 1, lookup_registers, &n), 0);
  ck_assert_uint_eq(n, 2);
  lookup_res r = do_lookup("bob");
  ck_assert_uint_eq(r.n, 2);
  ck_assert_str_eq(r.e[0].node, "n9");
}
END_TEST

static void watch_adds_watch(void *ud, imc_watch_event_type type,
                             const char *key, const uint8_t *value,
                             size_t value_len) {
  (void)type;
  (void)key;
  (void)value;
  (void)value_len;
  int *n = ud;
  (*n)++;
  uint64_t id;
  ck_assert_int_eq(vt->watch(reg, "", watch_adds_watch, ud, &id), 0);
}

START_TEST(test_watch_added_in_callback) {
  int n = 0;
  watch_on("", watch_adds_watch, &n);
  uint64_t l = grant("n1", 90);
  /* A watch sees only changes made after it was created. */
  ck_assert_int_eq(do_register(l, "alice", "phone", "n1", 1), 0);
  ck_assert_int_eq(n, 1);
  ck_assert_int_eq(do_register(l, "alice", "web", "n1", 2), 0);
  ck_assert_int_eq(n, 3);
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
    uint64_t wid;
    rv = vt->watch(r, "", on_watch, &ev, &wid);
    ck_assert(rv == 0 || rv == IMC_ERR_NOMEM);
    int watching = rv == 0;
    int failures = 0;
    lease_res lr = {0, 1, 0};
    while ((rv = vt->lease_grant(r, "node", 90, on_lease, &lr)) != 0) {
      ck_assert_int_eq(rv, IMC_ERR_NOMEM);
      ck_assert_int_eq(lr.calls, 0);
      failures++;
    }
    ck_assert_int_eq(lr.status, 0);

    char user[32], dev[32];
    size_t expect = 0;
    for (int i = 0; i < 90; i++) {
      snprintf(user, sizeof(user), "u%d", i % 70);
      snprintf(dev, sizeof(dev), "device-number-%d", i / 70);
      imc_reg_entry e = entry(user, dev, "node", (uint64_t)i);
      done_res d = {0, 1};
      int before = ev.n;
      rv = vt->register_conn(r, lr.id, &e, on_done, &d);
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
    /* u0..u19 may have two devices; all of them is bigger than the
     * stack. */
    const char *users[70];
    char names[70][8];
    for (int i = 0; i < 70; i++) {
      snprintf(names[i], sizeof(names[i]), "u%d", i);
      users[i] = names[i];
      lookup_res res;
      memset(&res, 0, sizeof(res));
      rv = vt->lookup_many(r, &users[i], 1, on_lookup, &res);
      ck_assert(rv == 0 || rv == IMC_ERR_NOMEM);
      ck_assert_int_eq(res.calls, rv == 0);
    }
    lookup_res res;
    memset(&res, 0, sizeof(res));
    rv = vt->lookup_many(r, users, 70, on_lookup, &res);
    ck_assert(rv == 0 || rv == IMC_ERR_NOMEM);
    ck_assert_int_eq(res.calls, rv == 0);
    if (rv == 0)
      ck_assert_uint_eq(res.n, expect);
    for (int i = 0; i < 45; i++) {
      snprintf(user, sizeof(user), "u%d", i % 70);
      snprintf(dev, sizeof(dev), "device-number-%d", i / 70);
      imc_reg_entry e = entry(user, dev, "node", (uint64_t)i);
      done_res d = {0, 1};
      ck_assert_int_eq(vt->unregister(r, &e, on_done, &d), 0);
      ck_assert_int_eq(d.status, 0);
    }
    done_res d = {0, 1};
    ck_assert_int_eq(vt->lease_keepalive(r, lr.id, on_done, &d), 0);
    ck_assert_int_eq(d.status, 0);
    ck_assert_int_eq(vt->lease_revoke(r, lr.id, on_done, &d), 0);
    ck_assert_int_eq(d.status, 0);
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
  uint64_t l = grant("n1", 90);
  for (int i = 0; i < 40; i++) {
    snprintf(dev, sizeof(dev), "device-%d", i);
    ck_assert_int_eq(do_register(l, "busy", dev, "node", 1), 0);
  }
  tm.fail_at = tm.count;
  lookup_res r;
  memset(&r, 0, sizeof(r));
  const char *users[] = {"busy"};
  ck_assert_int_eq(vt->lookup_many(reg, users, 1, on_lookup, &r),
                   IMC_ERR_NOMEM);
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
  tcase_add_test(tc_core, test_keepalive);
  tcase_add_test(tc_core, test_revoke);
  tcase_add_test(tc_core, test_replace);
  tcase_add_test(tc_core, test_unregister_guard);
  tcase_add_test(tc_core, test_watch_prefix);
  tcase_add_test(tc_core, test_watch_cancel);
  tcase_add_test(tc_core, test_watch_cancel_in_callback);
  tcase_add_test(tc_core, test_watch_order);
  tcase_add_test(tc_core, test_resync_on_lost_event);
  tcase_add_test(tc_core, test_reset);
  tcase_add_test(tc_core, test_invalid);
  tcase_add_test(tc_core, test_many_users);
  tcase_add_test(tc_core, test_expiry_reclaims);
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

static void cf_lose_state(void *ctx, void *ud) {
  (void)ctx;
  imc_memreg_reset(ud);
}

static conformance_factory factory = {.name = "memreg",
                                      .create = cf_create,
                                      .destroy = cf_destroy,
                                      .lose_state = cf_lose_state};

int main(void) {
  factory.registry = imc_memreg_vtbl();
  SRunner *sr = srunner_create(memreg_suite());
  srunner_add_suite(sr, conformance_registry_suite(&factory));
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
