/* Unit tests of body sealing (libimchat/seal.c). */
#include "backends/seal.h"
#include "testutil.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const uint8_t key_a[32] = {
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a,
    0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15,
    0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f};
static const char hex_a[] =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
static const uint8_t key_b[32] = {
    0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10, 0xfe, 0xdc, 0xba,
    0x98, 0x76, 0x54, 0x32, 0x10, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54,
    0x32, 0x10, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10};
static const char hex_b[] =
    "FEDCBA9876543210FEDCBA9876543210FEDCBA9876543210FEDCBA9876543210";

#define AAD(s) (const uint8_t *)(s), strlen(s)

/* A keyring holding the given (id, key) pairs in order. */
static imc_keyring *ring(const char *id1, const uint8_t *k1, const char *id2,
                         const uint8_t *k2) {
  imc_keyring *kr = NULL;
  ck_assert_int_eq(imc_keyring_new(&kr, NULL), 0);
  ck_assert_int_eq(imc_keyring_add(kr, id1, k1), 0);
  if (id2 != NULL)
    ck_assert_int_eq(imc_keyring_add(kr, id2, k2), 0);
  return kr;
}

/* Seals pt with aad into a malloc'd envelope. */
static uint8_t *seal(const imc_keyring *kr, const char *pt, size_t len,
                     const char *aad, size_t *envlen) {
  size_t cap = len + imc_seal_overhead(kr);
  uint8_t *env = malloc(cap);
  ck_assert_int_eq(
      imc_seal(kr, (const uint8_t *)pt, len, env, cap, envlen, AAD(aad)), 0);
  ck_assert_uint_eq(*envlen, cap);
  return env;
}

/* Opens env and checks that it yields pt. */
static void open_ok(const imc_keyring *kr, const uint8_t *env, size_t envlen,
                    const char *pt, size_t len, const char *aad) {
  uint8_t *out = malloc(len + 1);
  size_t outlen = 12345;
  ck_assert_int_eq(imc_open(kr, env, envlen, out, len, &outlen, AAD(aad)), 0);
  ck_assert_uint_eq(outlen, len);
  ck_assert_mem_eq(out, pt, len);
  free(out);
}

START_TEST(round_trip) {
  imc_keyring *kr = ring("k1", key_a, NULL, NULL);
  ck_assert_uint_eq(imc_keyring_size(kr), 1);
  /* version, id length, "k1", nonce, tag */
  ck_assert_uint_eq(imc_seal_overhead(kr), 1 + 1 + 2 + 12 + 16);
  static const size_t lens[] = {0, 1, 15, 16, 17, 1000, 100000};
  char *pt = malloc(100000);
  for (size_t i = 0; i < 100000; i++)
    pt[i] = (char)(i * 7 + 3);
  for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
    size_t envlen;
    uint8_t *env = seal(kr, pt, lens[i], "msg-1", &envlen);
    ck_assert_uint_eq(env[0], IMC_SEAL_VERSION);
    ck_assert_uint_eq(env[1], 2);
    ck_assert_mem_eq(env + 2, "k1", 2);
    if (lens[i] >= 16) /* the body is not stored in the clear */
      ck_assert(memcmp(env + 16, pt, 16) != 0);
    open_ok(kr, env, envlen, pt, lens[i], "msg-1");
    free(env);
  }

  /* no AAD at all */
  size_t envlen, outlen;
  uint8_t env[64], out[8];
  ck_assert_int_eq(imc_seal(kr, (const uint8_t *)"hi", 2, env, sizeof(env),
                            &envlen, NULL, 0),
                   0);
  ck_assert_int_eq(
      imc_open(kr, env, envlen, out, sizeof(out), &outlen, NULL, 0), 0);
  ck_assert_uint_eq(outlen, 2);
  ck_assert_mem_eq(out, "hi", 2);

  /* fresh nonces: equal inputs give different envelopes */
  size_t l1, l2;
  uint8_t *e1 = seal(kr, "same", 4, "m", &l1);
  uint8_t *e2 = seal(kr, "same", 4, "m", &l2);
  ck_assert(memcmp(e1, e2, l1) != 0);
  free(e1);
  free(e2);
  free(pt);
  imc_keyring_del(kr);
}
END_TEST

START_TEST(key_id) {
  imc_keyring *kr = ring("2024-06.main_key", key_a, NULL, NULL);
  size_t envlen;
  uint8_t *env = seal(kr, "body", 4, "m1", &envlen);
  char id[IMC_SEAL_KEY_ID_MAX + 1];
  ck_assert_int_eq(imc_sealed_key_id(env, envlen, id), 0);
  ck_assert_str_eq(id, "2024-06.main_key");
  ck_assert_int_eq(imc_sealed_key_id(env, 1, id), IMC_ERR_PROTO);
  ck_assert_int_eq(imc_sealed_key_id(env, 2 + 16 + 12 + 15, id), IMC_ERR_PROTO);
  env[0] = 2;
  ck_assert_int_eq(imc_sealed_key_id(env, envlen, id), IMC_ERR_PROTO);
  env[0] = IMC_SEAL_VERSION;
  env[1] = 0;
  ck_assert_int_eq(imc_sealed_key_id(env, envlen, id), IMC_ERR_PROTO);
  env[1] = 33;
  ck_assert_int_eq(imc_sealed_key_id(env, envlen, id), IMC_ERR_PROTO);
  env[1] = 16;
  env[3] = '/';
  ck_assert_int_eq(imc_sealed_key_id(env, envlen, id), IMC_ERR_PROTO);
  ck_assert_int_eq(imc_sealed_key_id(NULL, 0, id), IMC_ERR_INVALID_ARGUMENT);
  free(env);
  imc_keyring_del(kr);
}
END_TEST

/* After a failed open, out holds nothing but its old bytes or zeros. */
static void check_no_plaintext(const uint8_t *out, size_t n) {
  for (size_t i = 0; i < n; i++)
    ck_assert(out[i] == 0 || out[i] == 0xAA);
}

START_TEST(tampering) {
  imc_keyring *kr = ring("k1", key_a, "k2", key_b);
  static const char pt[] = "the quick brown fox";
  size_t len = sizeof(pt) - 1, envlen;
  uint8_t *env = seal(kr, pt, len, "msg-42", &envlen);
  size_t hdr = 2 + 2;
  uint8_t *bad = malloc(envlen + 1), out[64];
  size_t outlen;
  for (size_t i = 0; i < envlen; i++) {
    for (int bit = 0; bit < 8; bit++) {
      memcpy(bad, env, envlen);
      bad[i] ^= (uint8_t)(1u << bit);
      memset(out, 0xAA, sizeof(out));
      int rv =
          imc_open(kr, bad, envlen, out, sizeof(out), &outlen, AAD("msg-42"));
      if (i < hdr)
        /* a changed id names no key ("k3", "k0"...) or breaks framing */
        ck_assert(rv == IMC_ERR_PROTO || rv == IMC_ERR_NOT_FOUND);
      else
        ck_assert_int_eq(rv, IMC_ERR_PROTO);
      check_no_plaintext(out, sizeof(out));
    }
  }
  /* the id "k1" -> "k2" names a real key, but the wrong one */
  memcpy(bad, env, envlen);
  bad[3] = '2';
  ck_assert_int_eq(
      imc_open(kr, bad, envlen, out, sizeof(out), &outlen, AAD("msg-42")),
      IMC_ERR_PROTO);
  /* truncated and extended envelopes */
  for (size_t n = 0; n < envlen; n++)
    ck_assert_int_eq(
        imc_open(kr, env, n, out, sizeof(out), &outlen, AAD("msg-42")),
        IMC_ERR_PROTO);
  memcpy(bad, env, envlen);
  bad[envlen] = 0;
  ck_assert_int_eq(
      imc_open(kr, bad, envlen + 1, out, sizeof(out), &outlen, AAD("msg-42")),
      IMC_ERR_PROTO);
  /* the original still opens */
  open_ok(kr, env, envlen, pt, len, "msg-42");
  free(bad);
  free(env);
  imc_keyring_del(kr);
}
END_TEST

START_TEST(wrong_aad) {
  imc_keyring *kr = ring("k1", key_a, NULL, NULL);
  size_t envlen, outlen;
  uint8_t *env = seal(kr, "secret", 6, "msg-1", &envlen);
  uint8_t out[16];
  memset(out, 0xAA, sizeof(out));
  ck_assert_int_eq(
      imc_open(kr, env, envlen, out, sizeof(out), &outlen, AAD("msg-2")),
      IMC_ERR_PROTO);
  ck_assert_int_eq(
      imc_open(kr, env, envlen, out, sizeof(out), &outlen, AAD("msg-10")),
      IMC_ERR_PROTO);
  ck_assert_int_eq(
      imc_open(kr, env, envlen, out, sizeof(out), &outlen, NULL, 0),
      IMC_ERR_PROTO);
  check_no_plaintext(out, sizeof(out));
  open_ok(kr, env, envlen, "secret", 6, "msg-1");
  free(env);

  /* a body sealed without AAD does not open with one */
  env = seal(kr, "secret", 6, "", &envlen);
  ck_assert_int_eq(
      imc_open(kr, env, envlen, out, sizeof(out), &outlen, AAD("msg-1")),
      IMC_ERR_PROTO);
  free(env);
  imc_keyring_del(kr);
}
END_TEST

START_TEST(rotation) {
  imc_keyring *old = ring("A", key_a, NULL, NULL);
  size_t len_a, len_b;
  uint8_t *env_a = seal(old, "before", 6, "m1", &len_a);

  /* the operator puts B first and keeps A */
  imc_keyring *kr = ring("B", key_b, "A", key_a);
  ck_assert_uint_eq(imc_keyring_size(kr), 2);
  open_ok(kr, env_a, len_a, "before", 6, "m1");
  uint8_t *env_b = seal(kr, "after", 5, "m2", &len_b);
  char id[IMC_SEAL_KEY_ID_MAX + 1];
  ck_assert_int_eq(imc_sealed_key_id(env_b, len_b, id), 0);
  ck_assert_str_eq(id, "B");
  open_ok(kr, env_b, len_b, "after", 5, "m2");

  /* a node that still has only A cannot open B's bodies */
  uint8_t out[16];
  size_t outlen;
  ck_assert_int_eq(
      imc_open(old, env_b, len_b, out, sizeof(out), &outlen, AAD("m2")),
      IMC_ERR_NOT_FOUND);

  /* and once A is retired its bodies are unknown */
  imc_keyring *only_b = ring("B", key_b, NULL, NULL);
  ck_assert_int_eq(
      imc_open(only_b, env_a, len_a, out, sizeof(out), &outlen, AAD("m1")),
      IMC_ERR_NOT_FOUND);

  /* the same id bound to other bytes fails authentication */
  imc_keyring *wrong = ring("A", key_b, NULL, NULL);
  ck_assert_int_eq(
      imc_open(wrong, env_a, len_a, out, sizeof(out), &outlen, AAD("m1")),
      IMC_ERR_PROTO);

  free(env_a);
  free(env_b);
  imc_keyring_del(old);
  imc_keyring_del(kr);
  imc_keyring_del(only_b);
  imc_keyring_del(wrong);
}
END_TEST

START_TEST(buffer_sizes) {
  imc_keyring *kr = ring("key", key_a, NULL, NULL);
  size_t over = imc_seal_overhead(kr), envlen, outlen;
  uint8_t env[128], out[16];
  ck_assert_int_eq(imc_seal(kr, (const uint8_t *)"0123456789", 10, env,
                            10 + over - 1, &envlen, AAD("m")),
                   IMC_ERR_TOO_LARGE);
  ck_assert_int_eq(imc_seal(kr, (const uint8_t *)"0123456789", 10, env, 5,
                            &envlen, AAD("m")),
                   IMC_ERR_TOO_LARGE);
  ck_assert_int_eq(imc_seal(kr, (const uint8_t *)"0123456789", 10, env,
                            10 + over, &envlen, AAD("m")),
                   0);
  ck_assert_int_eq(imc_open(kr, env, envlen, out, 9, &outlen, AAD("m")),
                   IMC_ERR_TOO_LARGE);
  ck_assert_int_eq(imc_open(kr, env, envlen, out, 10, &outlen, AAD("m")), 0);
  ck_assert_mem_eq(out, "0123456789", 10);

  /* NULL pointers */
  ck_assert_int_eq(imc_seal(NULL, out, 1, env, sizeof(env), &envlen, NULL, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_seal(kr, NULL, 1, env, sizeof(env), &envlen, NULL, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_seal(kr, out, 1, NULL, sizeof(env), &envlen, NULL, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_seal(kr, out, 1, env, sizeof(env), NULL, NULL, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_seal(kr, out, 1, env, sizeof(env), &envlen, NULL, 1),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_open(kr, NULL, 0, out, 10, &outlen, NULL, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_open(kr, env, envlen, NULL, 10, &outlen, AAD("m")),
                   IMC_ERR_INVALID_ARGUMENT);
  imc_keyring_del(kr);

  /* an empty keyring seals nothing */
  ck_assert_int_eq(imc_keyring_new(&kr, NULL), 0);
  ck_assert_uint_eq(imc_seal_overhead(kr), IMC_SEAL_OVERHEAD_MAX);
  ck_assert_int_eq(imc_seal(kr, out, 1, env, sizeof(env), &envlen, NULL, 0),
                   IMC_ERR_NOT_FOUND);
  imc_keyring_del(kr);
  imc_keyring_del(NULL);
}
END_TEST

START_TEST(keyring_add) {
  imc_keyring *kr = NULL;
  ck_assert_int_eq(imc_keyring_new(NULL, NULL), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_keyring_new(&kr, NULL), 0);
  static const char *const bad[] = {
      "", "a b", "a/b", "é", "k\n", "123456789012345678901234567890123"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    ck_assert_int_eq(imc_keyring_add(kr, bad[i], key_a),
                     IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_keyring_add(kr, NULL, key_a), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_keyring_add(kr, "x", NULL), IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(
      imc_keyring_add(kr, "12345678901234567890123456789012", key_a), 0);
  ck_assert_uint_eq(imc_seal_overhead(kr), IMC_SEAL_OVERHEAD_MAX);
  ck_assert_int_eq(
      imc_keyring_add(kr, "12345678901234567890123456789012", key_b),
      IMC_ERR_EXISTS);
  /* more keys than the first allocation holds */
  for (int i = 0; i < 20; i++) {
    char id[16];
    snprintf(id, sizeof(id), "k-%d", i);
    ck_assert_int_eq(imc_keyring_add(kr, id, i % 2 ? key_a : key_b), 0);
  }
  ck_assert_uint_eq(imc_keyring_size(kr), 21);
  /* the first key still seals; a later one still opens */
  size_t envlen;
  uint8_t *env = seal(kr, "x", 1, "m", &envlen);
  char id[IMC_SEAL_KEY_ID_MAX + 1];
  ck_assert_int_eq(imc_sealed_key_id(env, envlen, id), 0);
  ck_assert_str_eq(id, "12345678901234567890123456789012");
  free(env);
  imc_keyring *k19 = ring("k-19", key_a, NULL, NULL);
  env = seal(k19, "y", 1, "m", &envlen);
  open_ok(kr, env, envlen, "y", 1, "m");
  free(env);
  imc_keyring_del(k19);
  imc_keyring_del(kr);
}
END_TEST

static int load(const char *data, imc_keyring **kr) {
  return imc_keyring_parse(kr, (const uint8_t *)data, strlen(data), NULL);
}

START_TEST(parse_text) {
  char file[512];
  snprintf(file, sizeof(file),
           "# keys, newest first\r\n"
           "\r\n"
           "  new.key-2\t %s  \r\n"
           "# retired soon\n"
           "old_1 %s",
           hex_b, hex_a);
  imc_keyring *kr = NULL;
  ck_assert_int_eq(load(file, &kr), 0);
  ck_assert_uint_eq(imc_keyring_size(kr), 2);

  /* old_1 is key A: what a ring with only A sealed opens */
  imc_keyring *a = ring("old_1", key_a, NULL, NULL);
  size_t envlen;
  uint8_t *env = seal(a, "from A", 6, "m", &envlen);
  open_ok(kr, env, envlen, "from A", 6, "m");
  free(env);
  /* new.key-2 (key B, upper-case hex) seals */
  env = seal(kr, "from B", 6, "m", &envlen);
  char id[IMC_SEAL_KEY_ID_MAX + 1];
  ck_assert_int_eq(imc_sealed_key_id(env, envlen, id), 0);
  ck_assert_str_eq(id, "new.key-2");
  imc_keyring *b = ring("new.key-2", key_b, NULL, NULL);
  open_ok(b, env, envlen, "from B", 6, "m");
  free(env);
  imc_keyring_del(a);
  imc_keyring_del(b);
  imc_keyring_del(kr);
}
END_TEST

START_TEST(parse_errors) {
  imc_keyring *kr = NULL;
  static const uint8_t text[] = "k1 0000";
  ck_assert_int_eq(imc_keyring_parse(NULL, text, sizeof(text) - 1, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_keyring_parse(&kr, NULL, 5, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_keyring_parse(&kr, NULL, 0, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_null(kr);

  char h63[64], h65[66], hg[65];
  memcpy(h63, hex_a, 63);
  h63[63] = '\0';
  snprintf(h65, sizeof(h65), "%s0", hex_a);
  memcpy(hg, hex_a, 65);
  hg[10] = 'g';
  char bad[16][256];
  int n = 0;
  snprintf(bad[n++], 256, "%s", "");
  snprintf(bad[n++], 256, "%s", "# only a comment\n\n");
  snprintf(bad[n++], 256, "k1 %s\n", h63);
  snprintf(bad[n++], 256, "k1 %s\n", h65);
  snprintf(bad[n++], 256, "k1 %s\n", hg);
  snprintf(bad[n++], 256, "k1\n");
  snprintf(bad[n++], 256, "%s\n", hex_a);
  snprintf(bad[n++], 256, "k1 %s extra\n", hex_a);
  snprintf(bad[n++], 256, "k/1 %s\n", hex_a);
  snprintf(bad[n++], 256, "123456789012345678901234567890123 %s\n", hex_a);
  snprintf(bad[n++], 256, "k1 %s\nk1 %s\n", hex_a, hex_b);
  snprintf(bad[n++], 256, "k1 %s\nk2 %s\n", hex_a, h63);
  snprintf(bad[n++], 256, "k1=%s\n", hex_a);
  for (int i = 0; i < n; i++) {
    kr = NULL;
    ck_assert_msg(load(bad[i], &kr) == IMC_ERR_INVALID_ARGUMENT,
                  "file %d accepted", i);
    ck_assert_ptr_null(kr);
  }
}
END_TEST

START_TEST(alloc_failures) {
  char file[1024] = "# six keys: the array grows once\n";
  for (int i = 0; i < 6; i++) {
    char line[100];
    snprintf(line, sizeof(line), "key%d %s\n", i, i % 2 ? hex_a : hex_b);
    strcat(file, line);
  }
  for (long k = 0;; k++) {
    test_mem tm;
    test_mem_init(&tm);
    tm.fail_at = k;
    imc_keyring *kr = NULL;
    int rv =
        imc_keyring_parse(&kr, (const uint8_t *)file, strlen(file), &tm.mem);
    if (tm.count > k) {
      ck_assert_int_eq(rv, IMC_ERR_NOMEM);
      ck_assert_ptr_null(kr);
    } else {
      ck_assert_int_eq(rv, 0);
      ck_assert_uint_eq(imc_keyring_size(kr), 6);
      size_t envlen;
      uint8_t *env = seal(kr, "z", 1, "m", &envlen);
      open_ok(kr, env, envlen, "z", 1, "m");
      free(env);
    }
    imc_keyring_del(kr);
    ck_assert_int_eq(tm.live, 0);
    if (rv == 0)
      break;
  }

  /* a failed add changes nothing and can be retried */
  for (long k = 0;; k++) {
    test_mem tm;
    test_mem_init(&tm);
    tm.fail_at = k;
    int failed = 0, rv;
    imc_keyring *kr = NULL;
    while ((rv = imc_keyring_new(&kr, &tm.mem)) != 0) {
      ck_assert_int_eq(rv, IMC_ERR_NOMEM);
      failed = 1;
      tm.fail_at = -1;
    }
    for (int i = 0; i < 10; i++) {
      char id[16];
      snprintf(id, sizeof(id), "k%d", i);
      while ((rv = imc_keyring_add(kr, id, key_a)) != 0) {
        ck_assert_int_eq(rv, IMC_ERR_NOMEM);
        ck_assert_uint_eq(imc_keyring_size(kr), (size_t)i);
        failed = 1;
        tm.fail_at = -1;
      }
    }
    ck_assert_uint_eq(imc_keyring_size(kr), 10);
    imc_keyring_del(kr);
    ck_assert_int_eq(tm.live, 0);
    ck_assert_int_eq(failed, tm.count > k);
    if (!failed)
      break;
  }
}
END_TEST

static Suite *seal_suite(void) {
  Suite *s = suite_create("seal");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, round_trip);
  tcase_add_test(tc, key_id);
  tcase_add_test(tc, tampering);
  tcase_add_test(tc, wrong_aad);
  tcase_add_test(tc, rotation);
  tcase_add_test(tc, buffer_sizes);
  tcase_add_test(tc, keyring_add);
  tcase_add_test(tc, parse_text);
  tcase_add_test(tc, parse_errors);
  tcase_add_test(tc, alloc_failures);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(seal_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
