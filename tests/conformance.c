/*
 * Vtable conformance suites (see conformance.h).
 *
 * Each test is added as a one-iteration loop test whose index selects
 * the factory in a small registry, so one binary may test several
 * backends. Completions copy what they receive: the pointers are valid
 * only during the call.
 */
#include "conformance.h"

#include "testutil.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_FACTORIES 16
#define WAIT_MS 10000
#define T0_WALL 1700000000000LL

static const conformance_factory *registry[MAX_FACTORIES];
static char suite_names[MAX_FACTORIES][5][96];
static int n_registered;

static int register_factory(const conformance_factory *f) {
  for (int i = 0; i < n_registered; i++)
    if (registry[i] == f)
      return i;
  if (n_registered == MAX_FACTORIES) {
    fprintf(stderr, "conformance: too many factories\n");
    abort();
  }
  registry[n_registered] = f;
  return n_registered++;
}

/* ------------------------------------------------------------------ */
/* The backend under test                                               */
/* ------------------------------------------------------------------ */

static const conformance_factory *cf;
static void *ud;
static test_clock tclock;

static void fx_open(int i) {
  cf = registry[i];
  test_clock_init(&tclock, T0_WALL);
  ud = cf->create(cf->ctx, &tclock.clock);
  ck_assert_msg(ud != NULL, "%s: create failed", cf->name);
}

static void fx_close(void) {
  cf->destroy(cf->ctx, ud);
  ud = NULL;
}

static void fx_reopen(void) {
  ud = cf->reopen(cf->ctx, ud);
  ck_assert_msg(ud != NULL, "%s: reopen failed", cf->name);
}

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Run the backend's loop until *calls is set. */
static void wait_for(const int *calls) {
  int64_t deadline = mono_ms() + WAIT_MS;
  while (*calls == 0) {
    ck_assert_msg(cf->dispatch != NULL,
                  "%s: an operation did not complete inline and the "
                  "factory has no dispatch",
                  cf->name);
    int rv = cf->dispatch(cf->ctx, ud);
    ck_assert_int_ge(rv, 0);
    ck_assert_msg(mono_ms() < deadline, "%s: completion timed out", cf->name);
  }
}

/* Run the loop a little, to show that something does not complete. */
static void settle(void) {
  for (int i = 0; cf->dispatch && i < 5; i++)
    ck_assert_int_ge(cf->dispatch(cf->ctx, ud), 0);
}

/*
 * The status of an operation: its return code if negative (and then no
 * completion may have run), else its completion's status, exactly once.
 */
static int finish(int rv, const int *calls, const int *status) {
  if (rv < 0) {
    ck_assert_int_eq(*calls, 0);
    return rv;
  }
  ck_assert_int_eq(rv, 0);
  wait_for(calls);
  ck_assert_int_eq(*calls, 1);
  return *status;
}

typedef struct done_res {
  int calls;
  int status;
} done_res;

static void on_done(void *p, int status) {
  done_res *r = p;
  r->calls++;
  r->status = status;
}

/* ------------------------------------------------------------------ */
/* Sequence numbers                                                     */
/* ------------------------------------------------------------------ */

typedef struct seq_res {
  int calls;
  int status;
  uint64_t seq;
} seq_res;

static void on_seq(void *p, int status, uint64_t seq) {
  seq_res *r = p;
  r->calls++;
  r->status = status;
  r->seq = seq;
}

static uint64_t next_seq(const char *key) {
  seq_res r = {0};
  int rv = finish(cf->seq->next(ud, key, on_seq, &r), &r.calls, &r.status);
  ck_assert_int_eq(rv, 0);
  return r.seq;
}

START_TEST(seq_vtable_complete) {
  fx_open(_i);
  ck_assert_uint_ge(cf->seq->struct_size, sizeof(imc_seq_vtbl));
  ck_assert(cf->seq->next != NULL);
  fx_close();
}
END_TEST

START_TEST(seq_starts_at_one) {
  fx_open(_i);
  ck_assert_uint_eq(next_seq("p:alice:bob"), 1);
  ck_assert_uint_eq(next_seq("p:alice:bob"), 2);
  ck_assert_uint_eq(next_seq("p:alice:bob"), 3);
  fx_close();
}
END_TEST

START_TEST(seq_strictly_increasing) {
  fx_open(_i);
  uint64_t prev = 0;
  for (int i = 0; i < 300; i++) {
    uint64_t s = next_seq("g:big");
    ck_assert_uint_gt(s, prev);
    prev = s;
  }
  fx_close();
}
END_TEST

START_TEST(seq_independent_keys) {
  fx_open(_i);
  ck_assert_uint_eq(next_seq("a"), 1);
  ck_assert_uint_eq(next_seq("b"), 1);
  ck_assert_uint_eq(next_seq("a"), 2);
  ck_assert_uint_eq(next_seq("g:a"), 1);
  ck_assert_uint_eq(next_seq("b"), 2);
  /* Keys that differ only in length or case are distinct. */
  ck_assert_uint_eq(next_seq("ab"), 1);
  ck_assert_uint_eq(next_seq("A"), 1);
  fx_close();
}
END_TEST

START_TEST(seq_survives_reopen) {
  fx_open(_i);
  uint64_t last = 0;
  for (int i = 0; i < 5; i++)
    last = next_seq("p:a:b");
  next_seq("other");
  fx_reopen();
  ck_assert_uint_gt(next_seq("p:a:b"), last);
  ck_assert_uint_gt(next_seq("other"), 1);
  ck_assert_uint_eq(next_seq("fresh"), 1);
  fx_close();
}
END_TEST

/* ------------------------------------------------------------------ */
/* Dedup set                                                            */
/* ------------------------------------------------------------------ */

typedef struct dedup_res {
  int calls;
  int status;
  int found;
  uint8_t value[512];
  size_t len;
} dedup_res;

static void on_dedup(void *p, int status, int found, const uint8_t *value,
                     size_t len) {
  dedup_res *r = p;
  r->calls++;
  r->status = status;
  r->found = found;
  r->len = 0;
  if (found) {
    ck_assert_uint_le(len, sizeof(r->value));
    ck_assert(value != NULL || len == 0);
    if (len)
      memcpy(r->value, value, len);
    r->len = len;
  }
}

/* found (0/1); on a hit the value is checked against want[0..want_len). */
static int tas(const char *key, const void *v, size_t n, uint32_t ttl,
               dedup_res *r) {
  memset(r, 0, sizeof(*r));
  int rv = cf->dedup->test_and_set(ud, key, v, n, ttl, on_dedup, r);
  ck_assert_int_eq(finish(rv, &r->calls, &r->status), 0);
  return r->found;
}

static void dset(const char *key, const void *v, size_t n, uint32_t ttl) {
  done_res r = {0};
  int rv = cf->dedup->set(ud, key, v, n, ttl, on_done, &r);
  ck_assert_int_eq(finish(rv, &r.calls, &r.status), 0);
}

static int dget(const char *key, dedup_res *r) {
  memset(r, 0, sizeof(*r));
  int rv = cf->dedup->get(ud, key, on_dedup, r);
  ck_assert_int_eq(finish(rv, &r->calls, &r->status), 0);
  return r->found;
}

static void assert_value(const dedup_res *r, const void *v, size_t n) {
  ck_assert_int_eq(r->found, 1);
  ck_assert_uint_eq(r->len, n);
  ck_assert(n == 0 || memcmp(r->value, v, n) == 0);
}

START_TEST(dedup_vtable_complete) {
  fx_open(_i);
  ck_assert_uint_ge(cf->dedup->struct_size, sizeof(imc_dedup_vtbl));
  ck_assert(cf->dedup->test_and_set && cf->dedup->set && cf->dedup->get);
  fx_close();
}
END_TEST

START_TEST(dedup_tas_first_second) {
  fx_open(_i);
  dedup_res r;
  ck_assert_int_eq(tas("alice/c1", "m1", 2, 60, &r), 0);
  ck_assert_int_eq(tas("alice/c1", "m2", 2, 60, &r), 1);
  assert_value(&r, "m1", 2); /* the first value stays */
  ck_assert_int_eq(dget("alice/c1", &r), 1);
  assert_value(&r, "m1", 2);
  ck_assert_int_eq(tas("alice/c2", "m3", 2, 60, &r), 0);
  fx_close();
}
END_TEST

START_TEST(dedup_value_bytes) {
  fx_open(_i);
  static const uint8_t bin[] = {'a', 0, 'b', 0, 0xff, 0x80, 0};
  dedup_res r;
  ck_assert_int_eq(tas("k-bin", bin, sizeof(bin), 60, &r), 0);
  ck_assert_int_eq(tas("k-bin", "x", 1, 60, &r), 1);
  assert_value(&r, bin, sizeof(bin));
  /* An empty value is a value: the key exists. */
  ck_assert_int_eq(tas("k-empty", NULL, 0, 60, &r), 0);
  ck_assert_int_eq(dget("k-empty", &r), 1);
  assert_value(&r, "", 0);
  ck_assert_int_eq(tas("k-empty", "y", 1, 60, &r), 1);
  assert_value(&r, "", 0);
  fx_close();
}
END_TEST

START_TEST(dedup_get_missing) {
  fx_open(_i);
  dedup_res r;
  ck_assert_int_eq(dget("nope", &r), 0);
  ck_assert_uint_eq(r.len, 0);
  /* get does not create the key. */
  ck_assert_int_eq(tas("nope", "v", 1, 60, &r), 0);
  fx_close();
}
END_TEST

START_TEST(dedup_ttl_expiry) {
  fx_open(_i);
  dedup_res r;
  if (cf->real_clock) {
    ck_assert_int_eq(tas("k", "v1", 2, 1, &r), 0);
    ck_assert_int_eq(dget("k", &r), 1);
    sleep_ms(2200);
  } else {
    ck_assert_int_eq(tas("k", "v1", 2, 10, &r), 0);
    test_clock_advance(&tclock, 9000);
    ck_assert_int_eq(tas("k", "v2", 2, 10, &r), 1);
    assert_value(&r, "v1", 2);
    test_clock_advance(&tclock, 1001);
  }
  /* Expired: absent for get, and replaced by test_and_set. */
  ck_assert_int_eq(dget("k", &r), 0);
  ck_assert_int_eq(tas("k", "v3", 2, 10, &r), 0);
  ck_assert_int_eq(dget("k", &r), 1);
  assert_value(&r, "v3", 2);
  fx_close();
}
END_TEST

START_TEST(dedup_set_overwrite) {
  fx_open(_i);
  dedup_res r;
  dset("k", "a", 1, 60);
  ck_assert_int_eq(dget("k", &r), 1);
  assert_value(&r, "a", 1);
  dset("k", "bb", 2, 60);
  ck_assert_int_eq(dget("k", &r), 1);
  assert_value(&r, "bb", 2);
  ck_assert_int_eq(tas("k", "c", 1, 60, &r), 1);
  assert_value(&r, "bb", 2);
  fx_close();
}
END_TEST

START_TEST(dedup_set_renews_ttl) {
  fx_open(_i);
  dedup_res r;
  if (cf->real_clock) {
    dset("k", "a", 1, 2);
    sleep_ms(1200);
    dset("k", "b", 1, 3);
    sleep_ms(1200); /* past the first TTL, within the second */
  } else {
    dset("k", "a", 1, 10);
    test_clock_advance(&tclock, 8000);
    dset("k", "b", 1, 10);
    test_clock_advance(&tclock, 8000);
  }
  ck_assert_int_eq(dget("k", &r), 1);
  assert_value(&r, "b", 1);
  fx_close();
}
END_TEST

/* compare_and_set of key from expect to v; found (0/1). */
static int cas(const char *key, const void *expect, size_t en, const void *v,
               size_t n, uint32_t ttl, dedup_res *r) {
  memset(r, 0, sizeof(*r));
  int rv =
      cf->dedup->compare_and_set(ud, key, expect, en, v, n, ttl, on_dedup, r);
  ck_assert_int_eq(finish(rv, &r->calls, &r->status), 0);
  return r->found;
}

/* A claim changes hands only from the exact value expected. */
START_TEST(dedup_cas) {
  fx_open(_i);
  ck_assert(cf->dedup->compare_and_set != NULL);
  dedup_res r;
  ck_assert_int_eq(cas("c", "pending a", 9, "pending c", 9, 60, &r), 0);
  ck_assert_int_eq(dget("c", &r), 0); /* an absent key stays absent */
  ck_assert_int_eq(tas("c", "pending a", 9, 60, &r), 0);
  ck_assert_int_eq(cas("c", "pending b", 9, "pending c", 9, 60, &r), 0);
  ck_assert_int_eq(cas("c", "pending", 7, "pending c", 9, 60, &r), 0);
  ck_assert_int_eq(cas("c", "pending a!", 10, "pending c", 9, 60, &r), 0);
  ck_assert_int_eq(dget("c", &r), 1);
  assert_value(&r, "pending a", 9);
  ck_assert_int_eq(cas("c", "pending a", 9, "pending c", 9, 60, &r), 1);
  assert_value(&r, "pending c", 9);
  ck_assert_int_eq(dget("c", &r), 1);
  assert_value(&r, "pending c", 9);
  /* Taken once: the same expectation finds it no more. */
  ck_assert_int_eq(cas("c", "pending a", 9, "pending d", 9, 60, &r), 0);
  ck_assert_int_eq(dget("c", &r), 1);
  assert_value(&r, "pending c", 9);
  /* Bytes, not strings; an empty value is a value. */
  static const uint8_t bin[] = {'p', 0, 0xff, 0};
  ck_assert_int_eq(tas("b", bin, sizeof(bin), 60, &r), 0);
  ck_assert_int_eq(cas("b", bin, 2, "x", 1, 60, &r), 0);
  ck_assert_int_eq(cas("b", bin, sizeof(bin), NULL, 0, 60, &r), 1);
  assert_value(&r, "", 0);
  ck_assert_int_eq(cas("b", NULL, 0, "y", 1, 60, &r), 1);
  ck_assert_int_eq(dget("b", &r), 1);
  assert_value(&r, "y", 1);
  fx_close();
}
END_TEST

/* Two takeovers of one claim in flight at once: one wins. */
START_TEST(dedup_cas_race) {
  fx_open(_i);
  dedup_res r, a, b;
  memset(&a, 0, sizeof(a));
  memset(&b, 0, sizeof(b));
  ck_assert_int_eq(tas("k", "pending 1", 9, 60, &r), 0);
  int ra = cf->dedup->compare_and_set(ud, "k", (const uint8_t *)"pending 1", 9,
                                      (const uint8_t *)"pending 2", 9, 60,
                                      on_dedup, &a);
  int rb = cf->dedup->compare_and_set(ud, "k", (const uint8_t *)"pending 1", 9,
                                      (const uint8_t *)"pending 3", 9, 60,
                                      on_dedup, &b);
  ck_assert_int_eq(finish(ra, &a.calls, &a.status), 0);
  ck_assert_int_eq(finish(rb, &b.calls, &b.status), 0);
  ck_assert_int_eq(a.found + b.found, 1);
  ck_assert_int_eq(dget("k", &r), 1);
  assert_value(&r, a.found ? "pending 2" : "pending 3", 9);
  fx_close();
}
END_TEST

/* The value set carries the new TTL; an expired key matches nothing. */
START_TEST(dedup_cas_ttl) {
  fx_open(_i);
  dedup_res r;
  ck_assert_int_eq(tas("k", "v1", 2, 1, &r), 0);
  ck_assert_int_eq(tas("e", "v1", 2, 1, &r), 0);
  ck_assert_int_eq(cas("k", "v1", 2, "v2", 2, 3, &r), 1);
  if (cf->real_clock)
    sleep_ms(1500);
  else
    test_clock_advance(&tclock, 1500);
  ck_assert_int_eq(dget("k", &r), 1); /* past the first TTL */
  assert_value(&r, "v2", 2);
  ck_assert_int_eq(cas("e", "v1", 2, "v3", 2, 60, &r), 0);
  ck_assert_int_eq(dget("e", &r), 0);
  if (cf->real_clock)
    sleep_ms(2000);
  else
    test_clock_advance(&tclock, 2000);
  ck_assert_int_eq(dget("k", &r), 0);
  fx_close();
}
END_TEST

START_TEST(dedup_survives_reopen) {
  fx_open(_i);
  dedup_res r;
  ck_assert_int_eq(tas("bob/c9", "m9", 2, 3600, &r), 0);
  dset("bob/c10", "m10", 3, 3600);
  fx_reopen();
  ck_assert_int_eq(tas("bob/c9", "zz", 2, 3600, &r), 1);
  assert_value(&r, "m9", 2);
  ck_assert_int_eq(dget("bob/c10", &r), 1);
  assert_value(&r, "m10", 3);
  fx_close();
}
END_TEST

/* ------------------------------------------------------------------ */
/* Store                                                                */
/* ------------------------------------------------------------------ */

/* A message whose strings are the test's literals. */
static imc_msg mk(const char *id, const char *conv, uint64_t seq, int64_t sent,
                  const char *body) {
  imc_msg m = {
      .struct_size = sizeof(m),
      .msg_id = id,
      .conversation_id = conv,
      .seq = seq,
      .from_user = "alice",
      .to_user = "bob",
      .group_id = "",
      .body = (const uint8_t *)body,
      .body_len = strlen(body),
      .content_type = "text/plain",
      .sent_at_ms = sent,
      .client_msg_id = "",
      .from_device = "phone",
  };
  return m;
}

/* An owned copy of a fetched message. */
typedef struct own_msg {
  char *msg_id, *conv, *from, *to, *group, *ctype, *cmid, *device;
  uint8_t *body;
  size_t body_len;
  uint64_t seq;
  int64_t sent;
} own_msg;

typedef struct page_res {
  int calls;
  int status;
  size_t n;
  int has_more;
  own_msg *msgs;
  uint64_t *cursors;
} page_res;

static char *xstrdup(const char *s) {
  ck_assert_ptr_nonnull(s);
  char *d = strdup(s);
  ck_assert_ptr_nonnull(d);
  return d;
}

static void on_page(void *p, int status, const imc_msg *const *msgs,
                    const uint64_t *cursors, size_t n, int has_more) {
  page_res *r = p;
  r->calls++;
  r->status = status;
  r->n = n;
  r->has_more = has_more;
  if (n == 0)
    return;
  r->msgs = calloc(n, sizeof(*r->msgs));
  r->cursors = calloc(n, sizeof(*r->cursors));
  ck_assert(r->msgs && r->cursors);
  for (size_t i = 0; i < n; i++) {
    const imc_msg *m = msgs[i];
    own_msg *o = &r->msgs[i];
    o->msg_id = xstrdup(m->msg_id);
    o->conv = xstrdup(m->conversation_id);
    o->from = xstrdup(m->from_user);
    o->to = xstrdup(m->to_user);
    o->group = xstrdup(m->group_id);
    o->ctype = xstrdup(m->content_type);
    o->cmid = xstrdup(m->client_msg_id);
    o->device = xstrdup(m->from_device);
    ck_assert(m->body != NULL || m->body_len == 0);
    o->body = malloc(m->body_len + 1);
    ck_assert_ptr_nonnull(o->body);
    if (m->body_len)
      memcpy(o->body, m->body, m->body_len);
    o->body_len = m->body_len;
    o->seq = m->seq;
    o->sent = m->sent_at_ms;
    r->cursors[i] = cursors[i];
  }
}

static void page_free(page_res *r) {
  for (size_t i = 0; i < r->n; i++) {
    own_msg *o = &r->msgs[i];
    free(o->msg_id);
    free(o->conv);
    free(o->from);
    free(o->to);
    free(o->group);
    free(o->ctype);
    free(o->cmid);
    free(o->device);
    free(o->body);
  }
  free(r->msgs);
  free(r->cursors);
  memset(r, 0, sizeof(*r));
}

static void append(const imc_msg *const *msgs, size_t n,
                   const imc_inbox_entry *e, size_t ne) {
  done_res r = {0};
  int rv = cf->store->append(ud, msgs, n, e, ne, on_done, &r);
  ck_assert_int_eq(finish(rv, &r.calls, &r.status), 0);
}

/* Append m and an inbox entry of m for user. */
static void deliver_to(const char *user, const imc_msg *m) {
  imc_inbox_entry e = {user, m};
  append(&m, 1, &e, 1);
}

static void inbox(const char *user, uint64_t after, uint32_t limit,
                  page_res *r) {
  memset(r, 0, sizeof(*r));
  int rv = cf->store->fetch_inbox(ud, user, after, limit, on_page, r);
  ck_assert_int_eq(finish(rv, &r->calls, &r->status), 0);
}

static void history(const char *conv, uint64_t after, uint32_t limit,
                    page_res *r) {
  memset(r, 0, sizeof(*r));
  int rv = cf->store->fetch_history(ud, conv, after, limit, on_page, r);
  ck_assert_int_eq(finish(rv, &r->calls, &r->status), 0);
}

static void purge(int64_t before_ms) {
  done_res r = {0};
  int rv = cf->store->purge(ud, before_ms, on_done, &r);
  ck_assert_int_eq(finish(rv, &r.calls, &r.status), 0);
}

static void group_add(const char *g, const char *u) {
  done_res r = {0};
  int rv = cf->store->group_add(ud, g, u, on_done, &r);
  ck_assert_int_eq(finish(rv, &r.calls, &r.status), 0);
}

static void group_remove(const char *g, const char *u) {
  done_res r = {0};
  int rv = cf->store->group_remove(ud, g, u, on_done, &r);
  ck_assert_int_eq(finish(rv, &r.calls, &r.status), 0);
}

typedef struct list_res {
  int calls;
  int status;
  size_t n;
  char *items[64];
} list_res;

static void on_list(void *p, int status, const char *const *items, size_t n) {
  list_res *r = p;
  r->calls++;
  r->status = status;
  ck_assert_uint_le(n, 64);
  r->n = n;
  for (size_t i = 0; i < n; i++)
    r->items[i] = xstrdup(items[i]);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The members as one sorted, comma-separated string (order is free). */
static void members(const char *g, char *out, size_t size) {
  list_res r = {0};
  int rv = cf->store->group_members(ud, g, on_list, &r);
  ck_assert_int_eq(finish(rv, &r.calls, &r.status), 0);
  qsort(r.items, r.n, sizeof(r.items[0]), cmp_str);
  out[0] = '\0';
  for (size_t i = 0; i < r.n; i++) {
    if (i)
      strncat(out, ",", size - strlen(out) - 1);
    strncat(out, r.items[i], size - strlen(out) - 1);
    free(r.items[i]);
  }
}

static void assert_msg_eq(const own_msg *o, const imc_msg *m) {
  ck_assert_str_eq(o->msg_id, m->msg_id);
  ck_assert_str_eq(o->conv, m->conversation_id);
  ck_assert_uint_eq(o->seq, m->seq);
  ck_assert_str_eq(o->from, m->from_user);
  ck_assert_str_eq(o->to, m->to_user);
  ck_assert_str_eq(o->group, m->group_id);
  ck_assert_uint_eq(o->body_len, m->body_len);
  ck_assert(m->body_len == 0 || memcmp(o->body, m->body, m->body_len) == 0);
  ck_assert_str_eq(o->ctype, m->content_type);
  ck_assert_int_eq(o->sent, m->sent_at_ms);
  ck_assert_str_eq(o->cmid, m->client_msg_id);
  ck_assert_str_eq(o->device, m->from_device);
}

#define CONV "p:alice:bob"

START_TEST(store_vtable_complete) {
  fx_open(_i);
  const imc_store_vtbl *v = cf->store;
  ck_assert_uint_ge(v->struct_size, sizeof(imc_store_vtbl));
  ck_assert(v->append && v->fetch_inbox && v->fetch_history && v->purge &&
            v->group_add && v->group_remove && v->group_members);
  fx_close();
}
END_TEST

START_TEST(store_history_by_seq) {
  fx_open(_i);
  imc_msg m1 = mk("m1", CONV, 1, T0_WALL, "one");
  imc_msg m2 = mk("m2", CONV, 2, T0_WALL, "two");
  imc_msg m3 = mk("m3", CONV, 3, T0_WALL, "three");
  imc_msg m4 = mk("m4", CONV, 4, T0_WALL, "four");
  imc_msg m5 = mk("m5", CONV, 5, T0_WALL, "five");
  /* Appended out of order: history is in seq order all the same. */
  const imc_msg *b1[] = {&m3, &m1, &m2};
  const imc_msg *b2[] = {&m5, &m4};
  append(b1, 3, NULL, 0);
  append(b2, 2, NULL, 0);
  const imc_msg *want[] = {&m1, &m2, &m3, &m4, &m5};
  page_res r;
  history(CONV, 0, 10, &r);
  ck_assert_uint_eq(r.n, 5);
  ck_assert_int_eq(r.has_more, 0);
  for (size_t i = 0; i < 5; i++) {
    assert_msg_eq(&r.msgs[i], want[i]);
    ck_assert_uint_eq(r.cursors[i], i + 1); /* the cursor is the seq */
  }
  page_free(&r);

  history(CONV, 2, 2, &r);
  ck_assert_uint_eq(r.n, 2);
  ck_assert_int_eq(r.has_more, 1);
  ck_assert_uint_eq(r.msgs[0].seq, 3);
  ck_assert_uint_eq(r.msgs[1].seq, 4);
  page_free(&r);

  history(CONV, 3, 2, &r); /* exactly the rest: no more */
  ck_assert_uint_eq(r.n, 2);
  ck_assert_int_eq(r.has_more, 0);
  page_free(&r);

  history(CONV, 5, 10, &r);
  ck_assert_uint_eq(r.n, 0);
  ck_assert_int_eq(r.has_more, 0);
  page_free(&r);

  history("p:nobody:else", 0, 10, &r);
  ck_assert_uint_eq(r.n, 0);
  page_free(&r);
  fx_close();
}
END_TEST

START_TEST(store_history_isolated) {
  fx_open(_i);
  imc_msg a = mk("a1", "p:alice:bob", 1, T0_WALL, "x");
  imc_msg b = mk("b1", "p:alice:carol", 1, T0_WALL, "y");
  imc_msg g = mk("g1", "g:team", 1, T0_WALL, "z");
  const imc_msg *all[] = {&a, &b, &g};
  append(all, 3, NULL, 0);
  page_res r;
  history("p:alice:bob", 0, 10, &r);
  ck_assert_uint_eq(r.n, 1);
  ck_assert_str_eq(r.msgs[0].msg_id, "a1");
  page_free(&r);
  history("g:team", 0, 10, &r);
  ck_assert_uint_eq(r.n, 1);
  ck_assert_str_eq(r.msgs[0].msg_id, "g1");
  page_free(&r);
  fx_close();
}
END_TEST

START_TEST(store_fields_roundtrip) {
  fx_open(_i);
  static const uint8_t bin[] = {0, 1, 'x', 0, 0xff, 0xfe, 0, 0};
  imc_msg m = mk("bin-1", "g:team", 7, T0_WALL + 123, "");
  m.to_user = "";
  m.group_id = "team";
  m.body = bin;
  m.body_len = sizeof(bin);
  m.content_type = "application/octet-stream";
  m.client_msg_id = "c-42";
  m.from_device = "laptop";
  imc_msg e = mk("empty-1", "g:team", 8, -5, "");
  e.content_type = "";
  e.from_device = "";
  imc_inbox_entry ent[] = {{"bob", &m}, {"bob", &e}};
  const imc_msg *both[] = {&m, &e};
  append(both, 2, ent, 2);
  page_res r;
  history("g:team", 0, 10, &r);
  ck_assert_uint_eq(r.n, 2);
  assert_msg_eq(&r.msgs[0], &m);
  assert_msg_eq(&r.msgs[1], &e);
  page_free(&r);
  inbox("bob", 0, 10, &r);
  ck_assert_uint_eq(r.n, 2);
  assert_msg_eq(&r.msgs[0], &m);
  assert_msg_eq(&r.msgs[1], &e);
  page_free(&r);
  fx_close();
}
END_TEST

START_TEST(store_append_idempotent) {
  fx_open(_i);
  imc_msg m1 = mk("m1", CONV, 1, T0_WALL, "one");
  imc_msg m2 = mk("m2", CONV, 2, T0_WALL, "two");
  const imc_msg *msgs[] = {&m1, &m2};
  imc_inbox_entry ent[] = {{"bob", &m1}, {"bob", &m2}};
  append(msgs, 2, ent, 2);
  page_res first;
  inbox("bob", 0, 10, &first);
  ck_assert_uint_eq(first.n, 2);

  append(msgs, 2, ent, 2); /* a retry of the same batch */
  imc_msg m1_again = mk("m1", CONV, 1, T0_WALL, "changed");
  imc_msg m3 = mk("m3", CONV, 3, T0_WALL, "three");
  const imc_msg *mixed[] = {&m1_again, &m3};
  imc_inbox_entry ent2[] = {{"bob", &m1_again}, {"bob", &m3}};
  append(mixed, 2, ent2, 2);

  page_res r;
  history(CONV, 0, 10, &r);
  ck_assert_uint_eq(r.n, 3);
  assert_msg_eq(&r.msgs[0], &m1); /* the first copy stays */
  ck_assert_str_eq(r.msgs[2].msg_id, "m3");
  page_free(&r);
  inbox("bob", 0, 10, &r);
  ck_assert_uint_eq(r.n, 3);
  ck_assert_uint_eq(r.cursors[0], first.cursors[0]);
  ck_assert_uint_eq(r.cursors[1], first.cursors[1]);
  ck_assert_str_eq(r.msgs[2].msg_id, "m3");
  page_free(&r);
  page_free(&first);
  fx_close();
}
END_TEST

START_TEST(store_empty_append) {
  fx_open(_i);
  append(NULL, 0, NULL, 0);
  page_res r;
  inbox("bob", 0, 10, &r);
  ck_assert_uint_eq(r.n, 0);
  ck_assert_int_eq(r.has_more, 0);
  page_free(&r);
  fx_close();
}
END_TEST

START_TEST(store_inbox_cursor_order) {
  fx_open(_i);
  enum { N = 7 };
  imc_msg m[N];
  char ids[N][8];
  /* Cursor order is arrival order, whatever the conversations and seqs. */
  for (int i = 0; i < N; i++) {
    snprintf(ids[i], sizeof(ids[i]), "x%d", i);
    m[i] = mk(ids[i], i % 2 ? "p:a:bob" : "g:team", (uint64_t)(N - i), T0_WALL,
              "b");
    deliver_to("bob", &m[i]);
  }
  page_res all;
  inbox("bob", 0, 100, &all);
  ck_assert_uint_eq(all.n, N);
  ck_assert_int_eq(all.has_more, 0);
  for (int i = 0; i < N; i++) {
    ck_assert_str_eq(all.msgs[i].msg_id, ids[i]);
    if (i)
      ck_assert_uint_gt(all.cursors[i], all.cursors[i - 1]);
  }
  ck_assert_uint_gt(all.cursors[0], 0);

  /* Pages of 3 walk the same sequence. */
  uint64_t after = 0;
  size_t seen = 0;
  for (;;) {
    page_res r;
    inbox("bob", after, 3, &r);
    for (size_t i = 0; i < r.n; i++, seen++)
      ck_assert_uint_eq(r.cursors[i], all.cursors[seen]);
    int more = r.has_more;
    ck_assert_int_eq(more, seen < N);
    if (r.n)
      after = r.cursors[r.n - 1];
    page_free(&r);
    if (!more)
      break;
  }
  ck_assert_uint_eq(seen, N);

  page_res r;
  inbox("bob", all.cursors[N - 1], 10, &r);
  ck_assert_uint_eq(r.n, 0);
  page_free(&r);
  inbox("bob", all.cursors[2], 1, &r);
  ck_assert_uint_eq(r.n, 1);
  ck_assert_str_eq(r.msgs[0].msg_id, ids[3]);
  ck_assert_int_eq(r.has_more, 1);
  page_free(&r);
  page_free(&all);
  fx_close();
}
END_TEST

START_TEST(store_inbox_isolation) {
  fx_open(_i);
  imc_msg d = mk("d1", "p:alice:bob", 1, T0_WALL, "to bob");
  imc_msg g = mk("g1", "g:team", 1, T0_WALL, "to team");
  g.to_user = "";
  g.group_id = "team";
  imc_inbox_entry ent[] = {{"bob", &d}, {"bob", &g}, {"carol", &g}};
  const imc_msg *msgs[] = {&d, &g};
  append(msgs, 2, ent, 3);
  page_res r;
  inbox("bob", 0, 10, &r);
  ck_assert_uint_eq(r.n, 2);
  page_free(&r);
  inbox("carol", 0, 10, &r);
  ck_assert_uint_eq(r.n, 1);
  assert_msg_eq(&r.msgs[0], &g);
  page_free(&r);
  inbox("alice", 0, 10, &r);
  ck_assert_uint_eq(r.n, 0);
  page_free(&r);
  inbox("bo", 0, 10, &r); /* no prefix matching */
  ck_assert_uint_eq(r.n, 0);
  page_free(&r);
  fx_close();
}
END_TEST

START_TEST(store_inbox_entry_alone) {
  fx_open(_i);
  /* The entry's message is in neither msgs nor the store yet. */
  imc_msg m = mk("lone", CONV, 1, T0_WALL, "hello");
  imc_inbox_entry e = {"bob", &m};
  append(NULL, 0, &e, 1);
  page_res r;
  inbox("bob", 0, 10, &r);
  ck_assert_uint_eq(r.n, 1);
  assert_msg_eq(&r.msgs[0], &m);
  page_free(&r);
  history(CONV, 0, 10, &r);
  ck_assert_uint_eq(r.n, 1);
  assert_msg_eq(&r.msgs[0], &m);
  page_free(&r);
  fx_close();
}
END_TEST

START_TEST(store_group_membership) {
  fx_open(_i);
  char buf[256];
  members("team", buf, sizeof(buf));
  ck_assert_str_eq(buf, "");
  group_add("team", "u2");
  group_add("team", "u1");
  group_add("team", "u1");
  group_add("other", "u3");
  members("team", buf, sizeof(buf));
  ck_assert_str_eq(buf, "u1,u2");
  group_remove("team", "u1");
  group_remove("team", "u1");
  group_remove("team", "nobody");
  group_remove("ghost", "u1");
  members("team", buf, sizeof(buf));
  ck_assert_str_eq(buf, "u2");
  members("other", buf, sizeof(buf));
  ck_assert_str_eq(buf, "u3");
  group_add("team", "u1");
  members("team", buf, sizeof(buf));
  ck_assert_str_eq(buf, "u1,u2");
  fx_close();
}
END_TEST

START_TEST(store_purge) {
  fx_open(_i);
  imc_msg old1 = mk("old1", CONV, 1, T0_WALL - 3000, "a");
  imc_msg old2 = mk("old2", CONV, 2, T0_WALL - 2000, "b");
  imc_msg young = mk("young", CONV, 3, T0_WALL - 1000, "c");
  deliver_to("bob", &old1);
  deliver_to("bob", &old2);
  deliver_to("bob", &young);
  deliver_to("carol", &old1);
  page_res before;
  inbox("bob", 0, 10, &before);
  ck_assert_uint_eq(before.n, 3);

  purge(T0_WALL - 1500);
  page_res r;
  history(CONV, 0, 10, &r);
  ck_assert_uint_eq(r.n, 1);
  ck_assert_str_eq(r.msgs[0].msg_id, "young");
  page_free(&r);
  inbox("bob", 0, 10, &r);
  ck_assert_uint_eq(r.n, 1);
  ck_assert_str_eq(r.msgs[0].msg_id, "young");
  ck_assert_uint_eq(r.cursors[0], before.cursors[2]); /* cursors stay */
  page_free(&r);
  inbox("carol", 0, 10, &r);
  ck_assert_uint_eq(r.n, 0);
  page_free(&r);

  purge(T0_WALL - 1500); /* idempotent */
  purge(T0_WALL);
  history(CONV, 0, 10, &r);
  ck_assert_uint_eq(r.n, 0);
  page_free(&r);

  /* Cursors are never reused: a client's saved cursor stays valid. */
  imc_msg later = mk("later", CONV, 4, T0_WALL, "d");
  deliver_to("bob", &later);
  inbox("bob", before.cursors[2], 10, &r);
  ck_assert_uint_eq(r.n, 1);
  ck_assert_uint_gt(r.cursors[0], before.cursors[2]);
  page_free(&r);
  page_free(&before);
  fx_close();
}
END_TEST

START_TEST(store_survives_reopen) {
  fx_open(_i);
  imc_msg m = mk("m1", CONV, 1, T0_WALL, "persist me");
  deliver_to("bob", &m);
  group_add("team", "bob");
  fx_reopen();
  page_res r;
  inbox("bob", 0, 10, &r);
  ck_assert_uint_eq(r.n, 1);
  assert_msg_eq(&r.msgs[0], &m);
  page_free(&r);
  history(CONV, 0, 10, &r);
  ck_assert_uint_eq(r.n, 1);
  page_free(&r);
  char buf[64];
  members("team", buf, sizeof(buf));
  ck_assert_str_eq(buf, "bob");
  fx_close();
}
END_TEST

/* ------------------------------------------------------------------ */
/* Bus                                                                  */
/* ------------------------------------------------------------------ */

#define MAX_RECS 64

typedef struct rec_copy {
  uint64_t offset;
  int32_t partition;
  char key[64];
  size_t key_len;
  uint8_t value[256];
  size_t value_len;
} rec_copy;

typedef struct batch_res {
  int calls;
  int status;
  size_t n;
  rec_copy recs[MAX_RECS];
  /* Optional actions run inside the completion. */
  const char *commit_topic, *commit_group; /* commit the batch first */
  done_res commit_done;
  const char *repoll_topic, *repoll_group; /* then poll again into repoll */
  struct batch_res *repoll;
} batch_res;

static void on_batch(void *p, int status, const imc_bus_record *recs, size_t n);

/* Start a poll; its return code. */
static int poll_start(const char *topic, const char *group, size_t max,
                      batch_res *r) {
  return cf->bus->poll(ud, topic, group, max, on_batch, r);
}

static void on_batch(void *p, int status, const imc_bus_record *recs,
                     size_t n) {
  batch_res *r = p;
  r->calls++;
  r->status = status;
  ck_assert(status == 0 ? n >= 1 : n == 0);
  ck_assert_uint_le(n, MAX_RECS);
  if (n && r->commit_topic) {
    /* Records stay readable for the whole completion, even once
     * committed. */
    int rv = cf->bus->commit(ud, r->commit_topic, r->commit_group, 0,
                             recs[n - 1].offset, on_done, &r->commit_done);
    ck_assert_int_eq(rv, 0);
  }
  r->n = n;
  for (size_t i = 0; i < n; i++) {
    rec_copy *c = &r->recs[i];
    ck_assert_uint_le(recs[i].key_len, sizeof(c->key));
    ck_assert_uint_le(recs[i].value_len, sizeof(c->value));
    c->offset = recs[i].offset;
    c->partition = recs[i].partition;
    c->key_len = recs[i].key_len;
    c->value_len = recs[i].value_len;
    if (c->key_len)
      memcpy(c->key, recs[i].key, c->key_len);
    if (c->value_len)
      memcpy(c->value, recs[i].value, c->value_len);
  }
  if (r->repoll) {
    memset(r->repoll, 0, sizeof(*r->repoll));
    ck_assert_int_eq(
        poll_start(r->repoll_topic, r->repoll_group, MAX_RECS, r->repoll), 0);
  }
}

static void publish(const char *topic, const char *key, const void *value,
                    size_t len) {
  done_res r = {0};
  int rv = cf->bus->publish(ud, topic, (const uint8_t *)key,
                            key ? strlen(key) : 0, value, len, on_done, &r);
  ck_assert_int_eq(finish(rv, &r.calls, &r.status), 0);
}

static void publish_str(const char *topic, const char *value) {
  publish(topic, "k", value, strlen(value));
}

static void commit(const char *topic, const char *group, uint64_t offset) {
  done_res r = {0};
  int rv = cf->bus->commit(ud, topic, group, 0, offset, on_done, &r);
  ck_assert_int_eq(finish(rv, &r.calls, &r.status), 0);
}

/* Poll until want records arrived (a backend may split batches). */
static void collect(const char *topic, const char *group, size_t want,
                    rec_copy *out) {
  size_t got = 0;
  while (got < want) {
    batch_res *r = calloc(1, sizeof(*r));
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(poll_start(topic, group, want - got, r), 0);
    wait_for(&r->calls);
    ck_assert_int_eq(r->calls, 1);
    ck_assert_int_eq(r->status, 0);
    ck_assert_uint_le(r->n, want - got); /* max respected */
    memcpy(out + got, r->recs, r->n * sizeof(*out));
    got += r->n;
    free(r);
  }
}

static void assert_rec(const rec_copy *c, const char *value) {
  ck_assert_uint_eq(c->value_len, strlen(value));
  ck_assert(memcmp(c->value, value, c->value_len) == 0);
  ck_assert_int_eq(c->partition, 0);
}

START_TEST(bus_vtable_complete) {
  fx_open(_i);
  ck_assert_uint_ge(cf->bus->struct_size, sizeof(imc_bus_vtbl));
  ck_assert(cf->bus->publish && cf->bus->poll && cf->bus->commit);
  fx_close();
}
END_TEST

START_TEST(bus_publish_poll) {
  fx_open(_i);
  static const uint8_t bin[] = {'v', 0, 0xff, 0, '2'};
  publish("t", "key-1", "v1", 2);
  publish("t", "key-2", bin, sizeof(bin));
  rec_copy got[2];
  collect("t", "g", 2, got);
  assert_rec(&got[0], "v1");
  ck_assert_uint_eq(got[0].key_len, 5);
  ck_assert(memcmp(got[0].key, "key-1", 5) == 0);
  ck_assert_uint_eq(got[1].value_len, sizeof(bin));
  ck_assert(memcmp(got[1].value, bin, sizeof(bin)) == 0);
  ck_assert(memcmp(got[1].key, "key-2", 5) == 0);
  ck_assert_uint_gt(got[1].offset, got[0].offset);
  fx_close();
}
END_TEST

START_TEST(bus_empty_key_value) {
  fx_open(_i);
  publish("t", NULL, NULL, 0);
  rec_copy got[1];
  collect("t", "g", 1, got);
  ck_assert_uint_eq(got[0].key_len, 0);
  ck_assert_uint_eq(got[0].value_len, 0);
  fx_close();
}
END_TEST

START_TEST(bus_poll_waits_for_publish) {
  fx_open(_i);
  batch_res r = {0};
  ck_assert_int_eq(poll_start("t", "g", 10, &r), 0);
  settle();
  ck_assert_int_eq(r.calls, 0);
  /* publish must not complete the poll from inside the call. */
  done_res d = {0};
  ck_assert_int_eq(cf->bus->publish(ud, "t", (const uint8_t *)"k", 1,
                                    (const uint8_t *)"late", 4, on_done, &d),
                   0);
  ck_assert_int_eq(r.calls, 0);
  wait_for(&d.calls);
  ck_assert_int_eq(d.status, 0);
  wait_for(&r.calls);
  ck_assert_int_eq(r.calls, 1);
  ck_assert_int_eq(r.status, 0);
  ck_assert_uint_eq(r.n, 1);
  assert_rec(&r.recs[0], "late");
  fx_close();
}
END_TEST

START_TEST(bus_max_respected) {
  fx_open(_i);
  const char *v[] = {"r0", "r1", "r2", "r3", "r4"};
  for (int i = 0; i < 5; i++)
    publish_str("t", v[i]);
  rec_copy got[5];
  size_t n = 0;
  /* Polls with max 2 walk the records in order, each exactly once. */
  while (n < 5) {
    batch_res r = {0};
    ck_assert_int_eq(poll_start("t", "g", 2, &r), 0);
    wait_for(&r.calls);
    ck_assert_int_eq(r.status, 0);
    ck_assert_uint_le(r.n, 2);
    ck_assert_uint_le(n + r.n, 5);
    memcpy(got + n, r.recs, r.n * sizeof(got[0]));
    n += r.n;
  }
  for (int i = 0; i < 5; i++) {
    assert_rec(&got[i], v[i]);
    if (i)
      ck_assert_uint_gt(got[i].offset, got[i - 1].offset);
  }
  /* Delivered once: the next poll waits. */
  batch_res r = {0};
  ck_assert_int_eq(poll_start("t", "g", 2, &r), 0);
  settle();
  ck_assert_int_eq(r.calls, 0);
  publish_str("t", "r5");
  wait_for(&r.calls);
  ck_assert_uint_eq(r.n, 1);
  assert_rec(&r.recs[0], "r5");
  fx_close();
}
END_TEST

START_TEST(bus_topics_independent) {
  fx_open(_i);
  publish_str("t1", "one");
  publish_str("t2", "two");
  rec_copy got[1];
  collect("t2", "g", 1, got);
  assert_rec(&got[0], "two");
  collect("t1", "g", 1, got);
  assert_rec(&got[0], "one");
  batch_res r = {0};
  ck_assert_int_eq(poll_start("t1", "g", 10, &r), 0);
  publish_str("t2", "not for t1");
  settle();
  ck_assert_int_eq(r.calls, 0);
  publish_str("t1", "for t1");
  wait_for(&r.calls);
  assert_rec(&r.recs[0], "for t1");
  fx_close();
}
END_TEST

START_TEST(bus_two_groups) {
  fx_open(_i);
  /* Both groups are known to the topic before anything is published. */
  batch_res a = {0}, b = {0};
  ck_assert_int_eq(poll_start("t", "ga", 10, &a), 0);
  ck_assert_int_eq(poll_start("t", "gb", 10, &b), 0);
  publish_str("t", "x");
  wait_for(&a.calls);
  wait_for(&b.calls);
  ck_assert_uint_eq(a.n, 1);
  ck_assert_uint_eq(b.n, 1);
  assert_rec(&a.recs[0], "x");
  assert_rec(&b.recs[0], "x");
  ck_assert_uint_eq(a.recs[0].offset, b.recs[0].offset);
  commit("t", "ga", a.recs[0].offset);
  /* ga's commit changes nothing for gb. */
  publish_str("t", "y");
  rec_copy got[1];
  collect("t", "gb", 1, got);
  assert_rec(&got[0], "y");
  collect("t", "ga", 1, got);
  assert_rec(&got[0], "y");
  fx_close();
}
END_TEST

START_TEST(bus_repoll_in_completion) {
  fx_open(_i);
  batch_res first = {0}, second = {0};
  first.repoll = &second;
  first.repoll_topic = "t";
  first.repoll_group = "g";
  ck_assert_int_eq(poll_start("t", "g", 10, &first), 0);
  publish_str("t", "a");
  wait_for(&first.calls);
  ck_assert_uint_eq(first.n, 1);
  settle();
  ck_assert_int_eq(second.calls, 0); /* nothing new yet */
  publish_str("t", "b");
  wait_for(&second.calls);
  ck_assert_int_eq(second.status, 0);
  ck_assert_uint_eq(second.n, 1);
  assert_rec(&second.recs[0], "b");
  fx_close();
}
END_TEST

START_TEST(bus_commit_in_completion) {
  fx_open(_i);
  publish_str("t", "first record");
  publish_str("t", "second record");
  batch_res r = {0};
  r.commit_topic = "t";
  r.commit_group = "g";
  ck_assert_int_eq(poll_start("t", "g", 10, &r), 0);
  wait_for(&r.calls);
  ck_assert_int_eq(r.status, 0);
  ck_assert_uint_ge(r.n, 1);
  assert_rec(&r.recs[0], "first record");
  wait_for(&r.commit_done.calls);
  ck_assert_int_eq(r.commit_done.status, 0);
  fx_close();
}
END_TEST

START_TEST(bus_redelivery_after_reopen) {
  fx_open(_i);
  publish_str("t", "a");
  publish_str("t", "b");
  publish_str("t", "c");
  rec_copy got[3], again[3];
  collect("t", "g", 3, got);
  fx_reopen(); /* nothing committed: all of it comes again */
  collect("t", "g", 3, again);
  for (int i = 0; i < 3; i++) {
    ck_assert_uint_eq(again[i].offset, got[i].offset);
    ck_assert_uint_eq(again[i].value_len, got[i].value_len);
    ck_assert(memcmp(again[i].value, got[i].value, got[i].value_len) == 0);
  }
  fx_close();
}
END_TEST

START_TEST(bus_commit_stops_redelivery) {
  fx_open(_i);
  publish_str("t", "a");
  publish_str("t", "b");
  publish_str("t", "c");
  rec_copy got[3];
  collect("t", "g", 3, got);
  commit("t", "g", got[1].offset);
  fx_reopen();
  rec_copy again[1];
  collect("t", "g", 1, again);
  ck_assert_uint_eq(again[0].offset, got[2].offset);
  assert_rec(&again[0], "c");
  commit("t", "g", got[2].offset);
  fx_reopen();
  batch_res r = {0};
  ck_assert_int_eq(poll_start("t", "g", 10, &r), 0);
  settle();
  ck_assert_int_eq(r.calls, 0);
  publish_str("t", "d");
  wait_for(&r.calls);
  ck_assert_uint_eq(r.n, 1);
  assert_rec(&r.recs[0], "d");
  ck_assert_uint_gt(r.recs[0].offset, got[2].offset);
  fx_close();
}
END_TEST

START_TEST(bus_groups_after_reopen) {
  fx_open(_i);
  batch_res a = {0}, b = {0};
  ck_assert_int_eq(poll_start("t", "ga", 10, &a), 0);
  ck_assert_int_eq(poll_start("t", "gb", 10, &b), 0);
  publish_str("t", "x");
  wait_for(&a.calls);
  wait_for(&b.calls);
  commit("t", "ga", a.recs[0].offset);
  fx_reopen();
  /* gb never committed: it gets the record again; ga does not. */
  rec_copy got[1];
  collect("t", "gb", 1, got);
  assert_rec(&got[0], "x");
  batch_res r = {0};
  ck_assert_int_eq(poll_start("t", "ga", 10, &r), 0);
  settle();
  ck_assert_int_eq(r.calls, 0);
  publish_str("t", "y");
  wait_for(&r.calls);
  assert_rec(&r.recs[0], "y");
  fx_close();
}
END_TEST

/* ------------------------------------------------------------------ */
/* Registry                                                             */
/* ------------------------------------------------------------------ */

/*
 * Only what etcd v3 also does: leases may be rounded up to a minimum
 * TTL and expire a little late, so TTLs are a few seconds and checks
 * leave slack either side; ids are opaque; watch events may arrive later
 * than the call that caused them.
 */

#define MAX_REG 16
#define MAX_USERS 8
#define ENTRY_MIN_SIZE (offsetof(imc_reg_entry, conn_id) + sizeof(uint64_t))

typedef struct lookup_res {
  int calls;
  int status;
  size_t n_users, n; /* users answered, entries in all */
  size_t offsets[MAX_USERS + 1];
  char user[MAX_REG][80], device[MAX_REG][80], node[MAX_REG][80];
  uint64_t conn[MAX_REG];
} lookup_res;

static void on_lookup_many(void *p, int status, const imc_reg_entry *const *e,
                           const size_t *offsets, size_t n_users) {
  lookup_res *r = p;
  r->calls++;
  r->status = status;
  if (status != 0) {
    ck_assert_ptr_null(e);
    ck_assert_ptr_null(offsets);
    return;
  }
  ck_assert_ptr_nonnull(offsets);
  ck_assert_uint_le(n_users, MAX_USERS);
  ck_assert_uint_eq(offsets[0], 0);
  r->n_users = n_users;
  r->n = offsets[n_users];
  ck_assert_uint_le(r->n, MAX_REG);
  for (size_t i = 0; i <= n_users; i++) {
    r->offsets[i] = offsets[i];
    if (i > 0)
      ck_assert_uint_ge(offsets[i], offsets[i - 1]);
  }
  for (size_t i = 0; i < r->n; i++) {
    ck_assert_uint_ge(e[i]->struct_size, ENTRY_MIN_SIZE);
    snprintf(r->user[i], 80, "%s", e[i]->user_id);
    snprintf(r->device[i], 80, "%s", e[i]->device_id);
    snprintf(r->node[i], 80, "%s", e[i]->node_id);
    r->conn[i] = e[i]->conn_id;
  }
}

typedef struct lease_res {
  int calls;
  int status;
  uint64_t id;
} lease_res;

static void on_lease(void *p, int status, uint64_t id) {
  lease_res *r = p;
  r->calls++;
  r->status = status;
  r->id = id;
}

static uint64_t lease_new(const char *node, uint32_t ttl) {
  lease_res r = {0};
  int rv = finish(cf->registry->lease_grant(ud, node, ttl, on_lease, &r),
                  &r.calls, &r.status);
  ck_assert_int_eq(rv, 0);
  ck_assert_uint_ne(r.id, 0);
  return r.id;
}

static int lease_keep(uint64_t id) {
  done_res r = {0};
  return finish(cf->registry->lease_keepalive(ud, id, on_done, &r), &r.calls,
                &r.status);
}

static int lease_end(uint64_t id) {
  done_res r = {0};
  return finish(cf->registry->lease_revoke(ud, id, on_done, &r), &r.calls,
                &r.status);
}

static int reg_put(uint64_t lease, const char *user, const char *device,
                   const char *node, uint64_t conn) {
  imc_reg_entry e = {sizeof(e), user, device, node, conn};
  done_res r = {0};
  return finish(cf->registry->register_conn(ud, lease, &e, on_done, &r),
                &r.calls, &r.status);
}

static void reg_del(const char *user, const char *device, const char *node,
                    uint64_t conn) {
  imc_reg_entry e = {sizeof(e), user, device, node, conn};
  done_res r = {0};
  int rv = finish(cf->registry->unregister(ud, &e, on_done, &r), &r.calls,
                  &r.status);
  ck_assert_int_eq(rv, 0);
}

static void reg_lookup_many(const char *const *users, size_t n, lookup_res *r) {
  memset(r, 0, sizeof(*r));
  int rv = finish(cf->registry->lookup_many(ud, users, n, on_lookup_many, r),
                  &r->calls, &r->status);
  ck_assert_int_eq(rv, 0);
  ck_assert_uint_eq(r->n_users, n);
}

static void reg_lookup(const char *user, lookup_res *r) {
  reg_lookup_many(&user, 1, r);
}

/* Index of device among the entries of user i in r, or -1. */
static int reg_find(const lookup_res *r, size_t i, const char *device) {
  for (size_t k = r->offsets[i]; k < r->offsets[i + 1]; k++)
    if (strcmp(r->device[k], device) == 0)
      return (int)k;
  return -1;
}

/* Lets time pass: the fake clock, or real time for real servers. */
static void reg_sleep_ms(int ms) {
  if (cf->real_clock)
    sleep_ms(ms);
  else
    test_clock_advance(&tclock, ms);
}

START_TEST(registry_vtable_complete) {
  fx_open(_i);
  const imc_registry_vtbl *v = cf->registry;
  ck_assert_uint_ge(v->struct_size, sizeof(imc_registry_vtbl));
  ck_assert(v->lease_grant != NULL && v->lease_keepalive != NULL &&
            v->lease_revoke != NULL && v->register_conn != NULL &&
            v->unregister != NULL && v->lookup_many != NULL &&
            v->watch != NULL && v->watch_cancel != NULL);
  fx_close();
}
END_TEST

START_TEST(registry_register_lookup_many) {
  fx_open(_i);
  lookup_res r;
  reg_lookup("alice", &r);
  ck_assert_uint_eq(r.n, 0);
  uint64_t l1 = lease_new("gw-1", 60), l2 = lease_new("gw-2", 60);
  ck_assert_uint_ne(l1, l2);
  ck_assert_int_eq(reg_put(l1, "alice", "phone", "gw-1", 7), 0);
  ck_assert_int_eq(reg_put(l2, "alice", "laptop", "gw-2", 8), 0);
  ck_assert_int_eq(reg_put(l1, "bob", "phone", "gw-1", 9), 0);

  const char *users[] = {"alice", "carol", "bob", "alice", "al"};
  reg_lookup_many(users, 5, &r);
  ck_assert_uint_eq(r.offsets[1] - r.offsets[0], 2);
  ck_assert_uint_eq(r.offsets[2] - r.offsets[1], 0);
  ck_assert_uint_eq(r.offsets[3] - r.offsets[2], 1);
  ck_assert_uint_eq(r.offsets[4] - r.offsets[3], 2); /* ids may repeat */
  ck_assert_uint_eq(r.offsets[5] - r.offsets[4], 0); /* not a prefix match */
  int i = reg_find(&r, 0, "phone");
  ck_assert_int_ge(i, 0);
  ck_assert_str_eq(r.user[i], "alice");
  ck_assert_str_eq(r.node[i], "gw-1");
  ck_assert_uint_eq(r.conn[i], 7);
  i = reg_find(&r, 0, "laptop");
  ck_assert_int_ge(i, 0);
  ck_assert_str_eq(r.node[i], "gw-2");
  ck_assert_uint_eq(r.conn[i], 8);
  i = reg_find(&r, 2, "phone");
  ck_assert_int_ge(i, 0);
  ck_assert_str_eq(r.user[i], "bob");
  ck_assert_uint_eq(r.conn[i], 9);
  ck_assert_int_ge(reg_find(&r, 3, "laptop"), 0);

  reg_lookup_many(NULL, 0, &r); /* an empty batch completes too */
  ck_assert_uint_eq(r.n, 0);
  fx_close();
}
END_TEST

START_TEST(registry_reconnect_replaces) {
  fx_open(_i);
  lookup_res r;
  uint64_t l1 = lease_new("gw-1", 60), l2 = lease_new("gw-2", 60);
  ck_assert_int_eq(reg_put(l1, "alice", "phone", "gw-1", 1), 0);
  ck_assert_int_eq(reg_put(l2, "alice", "phone", "gw-2", 2), 0);
  reg_lookup("alice", &r);
  ck_assert_uint_eq(r.n, 1);
  ck_assert_str_eq(r.node[0], "gw-2");
  ck_assert_uint_eq(r.conn[0], 2);
  /* The old connection's cleanup must not remove the new entry, nor
   * must the end of the old node's lease. */
  reg_del("alice", "phone", "gw-1", 1);
  reg_del("alice", "phone", "gw-1", 2); /* same conn id, other node */
  ck_assert_int_eq(lease_end(l1), 0);
  reg_lookup("alice", &r);
  ck_assert_uint_eq(r.n, 1);
  reg_del("alice", "phone", "gw-2", 2);
  reg_lookup("alice", &r);
  ck_assert_uint_eq(r.n, 0);
  /* Unregistering what is not there is fine. */
  reg_del("alice", "phone", "gw-2", 2);
  fx_close();
}
END_TEST

START_TEST(registry_lease_expiry_and_keepalive) {
  fx_open(_i);
  lookup_res r;
  uint64_t l1 = lease_new("gw-1", 5), l2 = lease_new("gw-2", 5);
  ck_assert_int_eq(reg_put(l1, "alice", "phone", "gw-1", 1), 0);
  ck_assert_int_eq(reg_put(l1, "bob", "phone", "gw-1", 2), 0);
  ck_assert_int_eq(reg_put(l2, "alice", "laptop", "gw-2", 3), 0);
  reg_sleep_ms(3000);
  ck_assert_int_eq(lease_keep(l2), 0);
  reg_sleep_ms(3500); /* l1 ran out 1.5 s ago; l2 has 1.5 s left */
  const char *users[] = {"alice", "bob"};
  reg_lookup_many(users, 2, &r);
  ck_assert_uint_eq(r.n, 1);
  ck_assert_str_eq(r.device[0], "laptop");
  ck_assert_uint_eq(r.offsets[2] - r.offsets[1], 0);
  /* The holder of l1 learns that it is gone, and nothing can be put on
   * it any more. */
  ck_assert_int_eq(lease_keep(l1), IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(reg_put(l1, "bob", "phone", "gw-1", 4), IMC_ERR_NOT_FOUND);
  reg_lookup("bob", &r);
  ck_assert_uint_eq(r.n, 0);
  /* A new lease takes the entries again. */
  uint64_t l3 = lease_new("gw-1", 60);
  ck_assert_uint_ne(l3, l1);
  ck_assert_int_eq(reg_put(l3, "bob", "phone", "gw-1", 4), 0);
  reg_lookup("bob", &r);
  ck_assert_uint_eq(r.n, 1);
  fx_close();
}
END_TEST

START_TEST(registry_lease_revoke) {
  fx_open(_i);
  lookup_res r;
  uint64_t l1 = lease_new("gw-1", 60), l2 = lease_new("gw-2", 60);
  ck_assert_int_eq(reg_put(l1, "alice", "phone", "gw-1", 1), 0);
  ck_assert_int_eq(reg_put(l1, "bob", "phone", "gw-1", 2), 0);
  ck_assert_int_eq(reg_put(l2, "bob", "web", "gw-2", 3), 0);
  ck_assert_int_eq(lease_end(l1), 0);
  const char *users[] = {"alice", "bob"};
  reg_lookup_many(users, 2, &r);
  ck_assert_uint_eq(r.n, 1);
  ck_assert_str_eq(r.device[0], "web");
  ck_assert_int_eq(lease_end(l1), IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(lease_keep(l1), IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(lease_keep(l2), 0);
  fx_close();
}
END_TEST

typedef struct watch_res {
  int puts, deletes, resyncs;
  char last_key[160], last_value[80];
} watch_res;

static void on_watch(void *p, imc_watch_event_type type, const char *key,
                     const uint8_t *value, size_t len) {
  watch_res *w = p;
  if (type == IMC_WATCH_RESYNC) {
    w->resyncs++;
    return;
  }
  if (type == IMC_WATCH_PUT)
    w->puts++;
  else
    w->deletes++;
  snprintf(w->last_key, sizeof(w->last_key), "%s", key);
  snprintf(w->last_value, sizeof(w->last_value), "%.*s", (int)len,
           value ? (const char *)value : "");
}

/* Runs the loop until *counter reaches want (or the wait times out). */
static void wait_count(const int *counter, int want) {
  int64_t deadline = mono_ms() + WAIT_MS;
  while (*counter < want && mono_ms() < deadline && cf->dispatch)
    ck_assert_int_ge(cf->dispatch(cf->ctx, ud), 0);
}

START_TEST(registry_watch) {
  fx_open(_i);
  watch_res w = {0};
  uint64_t wid = 0;
  ck_assert_int_eq(cf->registry->watch(ud, "alice/", on_watch, &w, &wid), 0);
  ck_assert_uint_ne(wid, 0);
  uint64_t l1 = lease_new("gw-1", 60);
  ck_assert_int_eq(reg_put(l1, "bob", "phone", "gw-1", 1), 0);
  ck_assert_int_eq(reg_put(l1, "alice", "phone", "gw-1", 2), 0);
  wait_count(&w.puts, 1);
  ck_assert_int_eq(w.puts, 1);
  ck_assert_str_eq(w.last_key, "alice/phone");
  ck_assert_str_eq(w.last_value, "gw-1");
  reg_del("alice", "phone", "gw-1", 2);
  wait_count(&w.deletes, 1);
  ck_assert_int_eq(w.deletes, 1);
  ck_assert_str_eq(w.last_key, "alice/phone");
  /* The end of a lease deletes its entries. */
  ck_assert_int_eq(reg_put(l1, "alice", "web", "gw-1", 3), 0);
  ck_assert_int_eq(lease_end(l1), 0);
  wait_count(&w.deletes, 2);
  ck_assert_int_eq(w.deletes, 2);
  ck_assert_str_eq(w.last_key, "alice/web");
  ck_assert_int_eq(w.puts, 2); /* bob's entry is outside the prefix */
  fx_close();
}
END_TEST

START_TEST(registry_watch_cancel) {
  fx_open(_i);
  watch_res a = {0}, b = {0};
  uint64_t ida = 0, idb = 0;
  ck_assert_int_eq(cf->registry->watch(ud, "", on_watch, &a, &ida), 0);
  ck_assert_int_eq(cf->registry->watch(ud, NULL, on_watch, &b, &idb), 0);
  ck_assert_uint_ne(ida, idb);
  uint64_t l1 = lease_new("gw-1", 60);
  ck_assert_int_eq(reg_put(l1, "alice", "phone", "gw-1", 1), 0);
  wait_count(&a.puts, 1);
  wait_count(&b.puts, 1);
  ck_assert_int_eq(cf->registry->watch_cancel(ud, ida), 0);
  ck_assert_int_eq(reg_put(l1, "bob", "phone", "gw-1", 2), 0);
  wait_count(&b.puts, 2);
  ck_assert_int_eq(b.puts, 2);
  settle();
  ck_assert_int_eq(a.puts, 1);
  ck_assert_int_eq(cf->registry->watch_cancel(ud, ida), IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(cf->registry->watch_cancel(ud, idb), 0);
  fx_close();
}
END_TEST

/* The registry forgets everything: leases are NOT_FOUND, watches resync. */
START_TEST(registry_lost_state) {
  fx_open(_i);
  watch_res w = {0};
  uint64_t wid = 0;
  ck_assert_int_eq(cf->registry->watch(ud, "", on_watch, &w, &wid), 0);
  uint64_t l1 = lease_new("gw-1", 60);
  ck_assert_int_eq(reg_put(l1, "alice", "phone", "gw-1", 1), 0);
  cf->lose_state(cf->ctx, ud);
  wait_count(&w.resyncs, 1);
  ck_assert_int_ge(w.resyncs, 1);
  ck_assert_int_eq(lease_keep(l1), IMC_ERR_NOT_FOUND);
  lookup_res r;
  reg_lookup("alice", &r);
  ck_assert_uint_eq(r.n, 0);
  /* What a gateway does next: a new lease, every connection again. */
  uint64_t l2 = lease_new("gw-1", 60);
  ck_assert_int_eq(reg_put(l2, "alice", "phone", "gw-1", 1), 0);
  reg_lookup("alice", &r);
  ck_assert_uint_eq(r.n, 1);
  ck_assert_int_eq(cf->registry->watch_cancel(ud, wid), 0);
  fx_close();
}
END_TEST

/* ------------------------------------------------------------------ */
/* Suites                                                               */
/* ------------------------------------------------------------------ */

#define ADD(tc, t, i) tcase_add_loop_test(tc, t, i, (i) + 1)

static Suite *new_suite(const conformance_factory *f, int idx, int kind,
                        const char *what, TCase **tc) {
  char *name = suite_names[idx][kind];
  snprintf(name, sizeof(suite_names[idx][kind]), "%s/%s", f->name, what);
  Suite *s = suite_create(name);
  *tc = tcase_create(what);
  /* Real backends and the real-clock TTL tests need more than the
   * default 4 s. */
  tcase_set_timeout(*tc, 60);
  suite_add_tcase(s, *tc);
  return s;
}

Suite *conformance_registry_suite(const conformance_factory *f) {
  int i = register_factory(f);
  TCase *tc;
  Suite *s = new_suite(f, i, 4, "registry", &tc);
  ADD(tc, registry_vtable_complete, i);
  ADD(tc, registry_register_lookup_many, i);
  ADD(tc, registry_reconnect_replaces, i);
  ADD(tc, registry_lease_expiry_and_keepalive, i);
  ADD(tc, registry_lease_revoke, i);
  ADD(tc, registry_watch, i);
  ADD(tc, registry_watch_cancel, i);
  if (f->lose_state)
    ADD(tc, registry_lost_state, i);
  return s;
}

Suite *conformance_seq_suite(const conformance_factory *f) {
  int i = register_factory(f);
  TCase *tc;
  Suite *s = new_suite(f, i, 0, "seq", &tc);
  ADD(tc, seq_vtable_complete, i);
  ADD(tc, seq_starts_at_one, i);
  ADD(tc, seq_strictly_increasing, i);
  ADD(tc, seq_independent_keys, i);
  if (f->reopen)
    ADD(tc, seq_survives_reopen, i);
  return s;
}

Suite *conformance_dedup_suite(const conformance_factory *f) {
  int i = register_factory(f);
  TCase *tc;
  Suite *s = new_suite(f, i, 1, "dedup", &tc);
  ADD(tc, dedup_vtable_complete, i);
  ADD(tc, dedup_tas_first_second, i);
  ADD(tc, dedup_value_bytes, i);
  ADD(tc, dedup_get_missing, i);
  ADD(tc, dedup_ttl_expiry, i);
  ADD(tc, dedup_set_overwrite, i);
  ADD(tc, dedup_set_renews_ttl, i);
  ADD(tc, dedup_cas, i);
  ADD(tc, dedup_cas_race, i);
  ADD(tc, dedup_cas_ttl, i);
  if (f->reopen)
    ADD(tc, dedup_survives_reopen, i);
  return s;
}

Suite *conformance_store_suite(const conformance_factory *f) {
  int i = register_factory(f);
  TCase *tc;
  Suite *s = new_suite(f, i, 2, "store", &tc);
  ADD(tc, store_vtable_complete, i);
  ADD(tc, store_history_by_seq, i);
  ADD(tc, store_history_isolated, i);
  ADD(tc, store_fields_roundtrip, i);
  ADD(tc, store_append_idempotent, i);
  ADD(tc, store_empty_append, i);
  ADD(tc, store_inbox_cursor_order, i);
  ADD(tc, store_inbox_isolation, i);
  ADD(tc, store_inbox_entry_alone, i);
  ADD(tc, store_group_membership, i);
  ADD(tc, store_purge, i);
  if (f->reopen)
    ADD(tc, store_survives_reopen, i);
  return s;
}

Suite *conformance_bus_suite(const conformance_factory *f) {
  int i = register_factory(f);
  TCase *tc;
  Suite *s = new_suite(f, i, 3, "bus", &tc);
  ADD(tc, bus_vtable_complete, i);
  ADD(tc, bus_publish_poll, i);
  ADD(tc, bus_empty_key_value, i);
  ADD(tc, bus_poll_waits_for_publish, i);
  ADD(tc, bus_max_respected, i);
  ADD(tc, bus_topics_independent, i);
  ADD(tc, bus_two_groups, i);
  ADD(tc, bus_repoll_in_completion, i);
  ADD(tc, bus_commit_in_completion, i);
  if (f->reopen) {
    ADD(tc, bus_redelivery_after_reopen, i);
    ADD(tc, bus_commit_stops_redelivery, i);
    ADD(tc, bus_groups_after_reopen, i);
  }
  return s;
}
