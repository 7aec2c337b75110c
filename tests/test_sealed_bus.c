/*
 * The sealed bus: the bus conformance suite through it (over the
 * in-process bus), plus what is stored underneath and what happens to
 * records that were not sealed or do not open.
 */
#include <imchat/membus.h>
#include <imchat/sealed_bus.h>

#include "conformance.h"
#include "testutil.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The key-file text the host would have read; set with write_keys. */
static char keyfile[256];
#define KEYS (const uint8_t *)keyfile, strlen(keyfile)

static void write_keys(const char *text) {
  snprintf(keyfile, sizeof(keyfile), "%s", text);
}

static const char *KEY_A =
    "ka 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";
static const char *KEY_B =
    "kb 1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100\n";

/* A sealed bus over its own in-process bus. */
typedef struct pair {
  imc_membus *inner;
  imc_sealed_bus *sealed;
  test_mem tm;
} pair;

static void *fx_create(void *ctx, const imc_clock *clock) {
  (void)ctx;
  (void)clock;
  pair *p = calloc(1, sizeof(*p));
  test_mem_init(&p->tm);
  ck_assert_int_eq(imc_membus_new(&p->inner, &p->tm.mem), 0);
  ck_assert_int_eq(imc_sealed_bus_new(&p->sealed, imc_membus_vtbl(), p->inner,
                                      KEYS, &p->tm.mem),
                   0);
  return p;
}

static void fx_destroy(void *ctx, void *ud) {
  (void)ctx;
  pair *p = ud;
  imc_membus_del(p->inner);
  imc_sealed_bus_del(p->sealed);
  ck_assert_int_eq(p->tm.live, 0);
  free(p);
}

static int fx_dispatch(void *ctx, void *ud) {
  (void)ctx;
  return imc_membus_dispatch(((pair *)ud)->inner);
}

/* The conformance suite calls the vtable with the pair as ud: forward. */
static int f_publish(void *ud, const char *t, const uint8_t *k, size_t kl,
                     const uint8_t *v, size_t vl, imc_done_cb d, void *dud) {
  return imc_sealed_bus_vtbl()->publish(((pair *)ud)->sealed, t, k, kl, v, vl,
                                        d, dud);
}

static int f_poll(void *ud, const char *t, const char *g, size_t max,
                  imc_bus_batch_cb d, void *dud) {
  return imc_sealed_bus_vtbl()->poll(((pair *)ud)->sealed, t, g, max, d, dud);
}

static int f_commit(void *ud, const char *t, const char *g, int32_t part,
                    uint64_t off, imc_done_cb d, void *dud) {
  return imc_sealed_bus_vtbl()->commit(((pair *)ud)->sealed, t, g, part, off, d,
                                       dud);
}

static const imc_bus_vtbl forward = {sizeof(imc_bus_vtbl), f_publish, f_poll,
                                     f_commit};

static conformance_factory factory = {
    .name = "sealed_bus",
    .create = fx_create,
    .destroy = fx_destroy,
    .dispatch = fx_dispatch,
    .bus = &forward,
};

/* ------------------------------------------------------------------ */

typedef struct got {
  int calls, status;
  size_t n;
  uint8_t value[4][256];
  size_t len[4];
} got;

static void on_batch(void *ud, int status, const imc_bus_record *recs,
                     size_t n) {
  got *g = ud;
  g->calls++;
  g->status = status;
  g->n = n;
  for (size_t i = 0; i < n && i < 4; i++) {
    ck_assert_uint_le(recs[i].value_len, sizeof(g->value[i]));
    memcpy(g->value[i], recs[i].value, recs[i].value_len);
    g->len[i] = recs[i].value_len;
  }
}

static void ignore(void *ud, int status) {
  (void)ud;
  ck_assert_int_eq(status, 0);
}

static void poll_all(const imc_bus_vtbl *v, void *ud, imc_membus *inner,
                     const char *group, got *g) {
  memset(g, 0, sizeof(*g));
  ck_assert_int_eq(v->poll(ud, "t", group, 4, on_batch, g), 0);
  for (int i = 0; i < 10 && g->calls == 0; i++)
    imc_membus_dispatch(inner);
  ck_assert_int_eq(g->calls, 1);
  ck_assert_int_eq(g->status, 0);
}

START_TEST(ciphertext_underneath) {
  pair *p = fx_create(NULL, NULL);
  const imc_bus_vtbl *sv = imc_sealed_bus_vtbl();
  const char *secret = "the body nobody may read";
  ck_assert_int_eq(sv->publish(p->sealed, "t", (const uint8_t *)"k", 1,
                               (const uint8_t *)secret, strlen(secret), ignore,
                               NULL),
                   0);
  /* The inner bus holds an envelope, not the plaintext. */
  got raw;
  poll_all(imc_membus_vtbl(), p->inner, p->inner, "raw", &raw);
  ck_assert_uint_eq(raw.n, 1);
  ck_assert_uint_gt(raw.len[0], strlen(secret));
  ck_assert_ptr_null(memmem(raw.value[0], raw.len[0], secret, strlen(secret)));
  /* Through the sealed bus it reads back. */
  got g;
  poll_all(sv, p->sealed, p->inner, "app", &g);
  ck_assert_uint_eq(g.n, 1);
  ck_assert_uint_eq(g.len[0], strlen(secret));
  ck_assert_int_eq(memcmp(g.value[0], secret, g.len[0]), 0);
  fx_destroy(NULL, p);
}
END_TEST

START_TEST(plaintext_and_foreign_records) {
  pair *p = fx_create(NULL, NULL);
  const imc_bus_vtbl *sv = imc_sealed_bus_vtbl();
  /* Queued before encryption: delivered as it is. */
  imc_membus_vtbl()->publish(p->inner, "t", NULL, 0, (const uint8_t *)"old", 3,
                             ignore, NULL);
  /* Sealed with a key this node no longer has: delivered as it is and
   * counted, so the consumer drops it rather than stalling. */
  write_keys(KEY_B);
  imc_sealed_bus *other;
  ck_assert_int_eq(
      imc_sealed_bus_new(&other, imc_membus_vtbl(), p->inner, KEYS, NULL), 0);
  sv->publish(other, "t", NULL, 0, (const uint8_t *)"from b", 6, ignore, NULL);
  imc_sealed_bus_del(other);
  write_keys(KEY_A);
  got g;
  poll_all(sv, p->sealed, p->inner, "app", &g);
  ck_assert_uint_eq(g.n, 2);
  ck_assert_uint_eq(g.len[0], 3);
  ck_assert_int_eq(memcmp(g.value[0], "old", 3), 0);
  ck_assert_uint_gt(g.len[1], 6);
  ck_assert_uint_eq(imc_sealed_bus_failures(p->sealed), 1);
  /* With both keys (reload), it opens. */
  char both[256];
  snprintf(both, sizeof(both), "%s%s", KEY_A, KEY_B);
  write_keys(both);
  ck_assert_int_eq(imc_sealed_bus_set_keys(p->sealed, KEYS), 0);
  write_keys(KEY_B);
  ck_assert_int_eq(
      imc_sealed_bus_new(&other, imc_membus_vtbl(), p->inner, KEYS, NULL), 0);
  sv->publish(other, "t", NULL, 0, (const uint8_t *)"from b", 6, ignore, NULL);
  imc_sealed_bus_del(other);
  write_keys(KEY_A);
  poll_all(sv, p->sealed, p->inner, "app", &g);
  ck_assert_uint_eq(g.n, 1);
  ck_assert_int_eq(memcmp(g.value[0], "from b", 6), 0);
  fx_destroy(NULL, p);
}
END_TEST

START_TEST(bad_key_texts) {
  imc_membus *inner;
  ck_assert_int_eq(imc_membus_new(&inner, NULL), 0);
  imc_sealed_bus *b;
  ck_assert_int_eq(
      imc_sealed_bus_new(&b, imc_membus_vtbl(), inner, NULL, 0, NULL),
      IMC_ERR_INVALID_ARGUMENT);
  write_keys("not a key line\n");
  ck_assert_int_eq(imc_sealed_bus_new(&b, imc_membus_vtbl(), inner, KEYS, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  write_keys(KEY_A);
  ck_assert_int_eq(imc_sealed_bus_new(&b, imc_membus_vtbl(), inner, KEYS, NULL),
                   0);
  write_keys("garbage\n");
  ck_assert_int_ne(imc_sealed_bus_set_keys(b, KEYS), 0); /* old keys stay */
  write_keys(KEY_A);
  imc_sealed_bus_del(b);
  imc_membus_del(inner);
}
END_TEST

START_TEST(alloc_failures) {
  for (long i = 0;; i++) {
    test_mem tm;
    test_mem_init(&tm);
    tm.fail_at = i;
    imc_membus *inner = NULL;
    imc_sealed_bus *b = NULL;
    int rv = imc_membus_new(&inner, &tm.mem);
    if (rv == 0)
      rv = imc_sealed_bus_new(&b, imc_membus_vtbl(), inner, KEYS, &tm.mem);
    if (rv == 0) {
      got g;
      memset(&g, 0, sizeof(g));
      rv = imc_sealed_bus_vtbl()->publish(b, "t", NULL, 0, (const uint8_t *)"x",
                                          1, ignore, NULL);
      if (rv == 0)
        rv = imc_sealed_bus_vtbl()->poll(b, "t", "g", 4, on_batch, &g);
      for (int k = 0; rv == 0 && k < 5 && g.calls == 0; k++)
        imc_membus_dispatch(inner);
      if (rv == 0 && g.calls)
        rv = g.status;
    }
    ck_assert_msg(rv == 0 || rv == IMC_ERR_NOMEM, "failing %ld gave %d", i, rv);
    imc_membus_del(inner);
    imc_sealed_bus_del(b);
    ck_assert_msg(tm.live == 0, "leak with allocation %ld failing", i);
    if (tm.count <= i)
      break;
  }
}
END_TEST

int main(void) {
  write_keys(KEY_A);
  Suite *s = suite_create("sealed_bus");
  TCase *t = tcase_create("sealed_bus");
  tcase_add_test(t, ciphertext_underneath);
  tcase_add_test(t, plaintext_and_foreign_records);
  tcase_add_test(t, bad_key_texts);
  tcase_add_test(t, alloc_failures);
  suite_add_tcase(s, t);
  SRunner *sr = srunner_create(s);
  srunner_add_suite(sr, conformance_bus_suite(&factory));
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
