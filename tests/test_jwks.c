/* Unit tests of JWK Set parsing (imchat/jwks.h). Keys are generated at
 * start; their JWKs are written here from OpenSSL's own parameters, and
 * the PEM the set gives back must verify tokens signed with the private
 * key. */
#include "protocol/jwt.h"
#include "testjwt.h"
#include "testutil.h"

#include <imchat/jwks.h>

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>

#define NOW INT64_C(1700000000)

static EVP_PKEY *rsa1, *rsa2, *rsa1024, *ec1, *ec384;
static char *rsa1_pem, *rsa2_pem, *ec1_pem;

/* ---- writing JWKs ---------------------------------------------------- */

static size_t b64url(char *out, const uint8_t *in, size_t len) {
  static const char tbl[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  size_t o = 0;
  for (size_t i = 0; i < len; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16;
    if (i + 1 < len)
      v |= (uint32_t)in[i + 1] << 8;
    if (i + 2 < len)
      v |= in[i + 2];
    out[o++] = tbl[v >> 18];
    out[o++] = tbl[v >> 12 & 63];
    if (i + 1 < len)
      out[o++] = tbl[v >> 6 & 63];
    if (i + 2 < len)
      out[o++] = tbl[v & 63];
  }
  out[o] = '\0';
  return o;
}

/* The base64url of the big-endian bytes of a key parameter, padded to
 * pad bytes (0: minimal). */
static void bn_param(EVP_PKEY *k, const char *name, size_t pad, char *out) {
  BIGNUM *bn = NULL;
  uint8_t bin[1100];
  ck_assert_int_eq(EVP_PKEY_get_bn_param(k, name, &bn), 1);
  int n = pad ? BN_bn2binpad(bn, bin, (int)pad) : BN_bn2bin(bn, bin);
  ck_assert_int_gt(n, 0);
  BN_free(bn);
  b64url(out, bin, (size_t)n);
}

/* An RSA JWK of k; kid NULL: none; extra: more members, ",..." */
static char *jwk_rsa(char *out, size_t cap, EVP_PKEY *k, const char *kid,
                     const char *extra) {
  char n[1500], e[16], kidm[300] = "";
  bn_param(k, OSSL_PKEY_PARAM_RSA_N, 0, n);
  bn_param(k, OSSL_PKEY_PARAM_RSA_E, 0, e);
  if (kid)
    snprintf(kidm, sizeof(kidm), ",\"kid\":\"%s\"", kid);
  snprintf(out, cap, "{\"kty\":\"RSA\"%s,\"n\":\"%s\",\"e\":\"%s\"%s}", kidm, n,
           e, extra ? extra : "");
  return out;
}

static char *jwk_ec(char *out, size_t cap, EVP_PKEY *k, const char *crv,
                    const char *kid, const char *extra) {
  char x[100], y[100], kidm[300] = "";
  size_t coord = strcmp(crv, "P-384") == 0 ? 48 : 32;
  bn_param(k, OSSL_PKEY_PARAM_EC_PUB_X, coord, x);
  bn_param(k, OSSL_PKEY_PARAM_EC_PUB_Y, coord, y);
  if (kid)
    snprintf(kidm, sizeof(kidm), ",\"kid\":\"%s\"", kid);
  snprintf(out, cap,
           "{\"kty\":\"EC\",\"crv\":\"%s\"%s,\"x\":\"%s\",\"y\":\"%s\"%s}", crv,
           kidm, x, y, extra ? extra : "");
  return out;
}

/* Replaces the first from in s (capacity cap) with to; returns s. */
static char *subst(char *s, size_t cap, const char *from, const char *to) {
  char *at = strstr(s, from);
  ck_assert_ptr_nonnull(at);
  size_t fl = strlen(from), tl = strlen(to), rest = strlen(at + fl);
  ck_assert_uint_lt(strlen(s) - fl + tl, cap);
  memmove(at + tl, at + fl, rest + 1);
  memcpy(at, to, tl);
  return s;
}

/* {"keys":[a,b,...]} from the NULL-terminated list of JWK texts. */
static char *doc_of(char *out, size_t cap, const char *const *jwks) {
  size_t n = (size_t)snprintf(out, cap, "{\"keys\":[");
  for (size_t i = 0; jwks[i]; i++)
    n += (size_t)snprintf(out + n, cap - n, "%s%s", i ? "," : "", jwks[i]);
  snprintf(out + n, cap - n, "]}");
  ck_assert_uint_lt(strlen(out), cap - 1);
  return out;
}

static imc_jwks *parse_ok(const char *doc) {
  imc_jwks *set = NULL;
  ck_assert_int_eq(imc_jwks_new(&set, doc, strlen(doc), NULL), 0);
  ck_assert_ptr_nonnull(set);
  return set;
}

/* The token signed with priv verifies with the PEM pem. */
static void verifies(const char *pem, size_t pem_len, EVP_PKEY *priv,
                     testjwt_sig sig, const char *kid) {
  char hdr[200], tok[4096];
  imc_jwt_key key;
  snprintf(hdr, sizeof(hdr), "{\"alg\":\"%s\",\"kid\":\"%s\"}",
           sig == TJ_RS256 ? "RS256" : "ES256", kid);
  size_t n =
      testjwt_make(tok, sizeof(tok), hdr,
                   "{\"sub\":\"ann\",\"exp\":1700000600}", sig, priv, NULL, 0);
  ck_assert_uint_eq(strlen(pem), pem_len);
  ck_assert_int_eq(imc_jwt_key_init_pem(&key, pem, pem_len), 0);
  ck_assert_int_eq(key.alg, sig == TJ_RS256 ? IMC_JWT_RS256 : IMC_JWT_ES256);
  imc_jwt_claims c;
  ck_assert_int_eq(imc_jwt_verify(tok, n, &key, NULL, NOW, &c), 0);
  ck_assert_str_eq(c.sub, "ann");
  imc_jwt_key_clear(&key, NULL);
}

/* ---- usable keys ----------------------------------------------------- */

START_TEST(t_rsa_and_ec) {
  char a[2000], b[500], doc[4000];
  const char *keys[] = {jwk_rsa(a, sizeof(a), rsa1, "r1", NULL),
                        jwk_ec(b, sizeof(b), ec1, "P-256", "e1", NULL), NULL};
  imc_jwks *set = parse_ok(doc_of(doc, sizeof(doc), keys));
  ck_assert_uint_eq(imc_jwks_count(set), 2);
  ck_assert_uint_eq(imc_jwks_ignored(set), 0);

  const char *alg, *kid, *pem;
  size_t len;
  ck_assert_int_eq(imc_jwks_key(set, 0, &alg, &kid, &pem, &len), 0);
  ck_assert_str_eq(alg, "RS256");
  ck_assert_str_eq(kid, "r1");
  ck_assert_str_eq(pem, rsa1_pem);
  ck_assert_int_eq(imc_jwks_key(set, 1, &alg, &kid, NULL, NULL), 0);
  ck_assert_str_eq(alg, "ES256");
  ck_assert_str_eq(kid, "e1");
  ck_assert_int_eq(imc_jwks_key(set, 2, &alg, NULL, NULL, NULL),
                   IMC_ERR_NOT_FOUND);

  ck_assert_int_eq(imc_jwks_find(set, "RS256", "r1", &pem, &len), 0);
  verifies(pem, len, rsa1, TJ_RS256, "r1");
  ck_assert_int_eq(imc_jwks_find(set, "ES256", "e1", &pem, &len), 0);
  ck_assert_str_eq(pem, ec1_pem);
  verifies(pem, len, ec1, TJ_ES256, "e1");
  imc_jwks_del(set);
}
END_TEST

START_TEST(t_members_that_allow) {
  /* alg, use and key_ops that agree with the key keep it. */
  char a[2000], b[500], doc[4000];
  const char *keys[] = {
      jwk_rsa(a, sizeof(a), rsa1, "r1",
              ",\"alg\":\"RS256\",\"use\":\"sig\",\"key_ops\":"
              "[\"sign\",\"verify\",\"a-very-long-operation-name\"]"),
      jwk_ec(b, sizeof(b), ec1, "P-256", "e\\u0031",
             ",\"alg\":\"ES256\",\"x5t\":\"abc\",\"ext\":true"),
      NULL};
  imc_jwks *set = parse_ok(doc_of(doc, sizeof(doc), keys));
  ck_assert_uint_eq(imc_jwks_count(set), 2);
  /* The kid is compared decoded. */
  ck_assert_int_eq(imc_jwks_find(set, "ES256", "e1", NULL, NULL), 0);
  imc_jwks_del(set);
}
END_TEST

START_TEST(t_kid_needed_among_several) {
  char a[2000], b[2000], c[500], doc[6000];
  const char *keys[] = {jwk_rsa(a, sizeof(a), rsa1, "r1", NULL),
                        jwk_rsa(b, sizeof(b), rsa2, "r2", NULL),
                        jwk_ec(c, sizeof(c), ec1, "P-256", "e1", NULL), NULL};
  imc_jwks *set = parse_ok(doc_of(doc, sizeof(doc), keys));
  const char *pem;
  size_t len;
  /* Two RSA keys: a token without kid matches none. */
  ck_assert_int_eq(imc_jwks_find(set, "RS256", "", &pem, &len),
                   IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(imc_jwks_find(set, "RS256", NULL, &pem, &len),
                   IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(imc_jwks_find(set, "RS256", "r2", &pem, &len), 0);
  ck_assert_str_eq(pem, rsa2_pem);
  verifies(pem, len, rsa2, TJ_RS256, "r2");
  /* One EC key: found without kid. */
  ck_assert_int_eq(imc_jwks_find(set, "ES256", "", &pem, &len), 0);
  ck_assert_str_eq(pem, ec1_pem);
  /* Unknown kids, a kid of the other alg, algs the set cannot have. */
  ck_assert_int_eq(imc_jwks_find(set, "RS256", "r3", &pem, &len),
                   IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(imc_jwks_find(set, "ES256", "r1", &pem, &len),
                   IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(imc_jwks_find(set, "HS256", "r1", &pem, &len),
                   IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(imc_jwks_find(set, "none", "", &pem, &len),
                   IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(imc_jwks_find(set, NULL, "r1", &pem, &len),
                   IMC_ERR_NOT_FOUND);
  imc_jwks_del(set);
}
END_TEST

START_TEST(t_missing_kid) {
  char a[2000], doc[3000];
  const char *keys[] = {jwk_rsa(a, sizeof(a), rsa1, NULL, NULL), NULL};
  imc_jwks *set = parse_ok(doc_of(doc, sizeof(doc), keys));
  const char *kid, *pem;
  size_t len;
  ck_assert_int_eq(imc_jwks_key(set, 0, NULL, &kid, NULL, NULL), 0);
  ck_assert_str_eq(kid, "");
  ck_assert_int_eq(imc_jwks_find(set, "RS256", "", &pem, &len), 0);
  verifies(pem, len, rsa1, TJ_RS256, "");
  /* A token that names a kid does not get a key without one. */
  ck_assert_int_eq(imc_jwks_find(set, "RS256", "r1", &pem, &len),
                   IMC_ERR_NOT_FOUND);
  imc_jwks_del(set);
}
END_TEST

START_TEST(t_same_kid_twice) {
  char a[2000], b[2000], doc[5000];
  const char *keys[] = {jwk_rsa(a, sizeof(a), rsa1, "k", NULL),
                        jwk_rsa(b, sizeof(b), rsa2, "k", NULL), NULL};
  imc_jwks *set = parse_ok(doc_of(doc, sizeof(doc), keys));
  ck_assert_uint_eq(imc_jwks_count(set), 2);
  ck_assert_int_eq(imc_jwks_find(set, "RS256", "k", NULL, NULL),
                   IMC_ERR_NOT_FOUND);
  imc_jwks_del(set);
}
END_TEST

START_TEST(t_empty_set) {
  imc_jwks *set = parse_ok(" {\"keys\" : [ ] , \"other\":1} ");
  ck_assert_uint_eq(imc_jwks_count(set), 0);
  ck_assert_int_eq(imc_jwks_find(set, "RS256", "", NULL, NULL),
                   IMC_ERR_NOT_FOUND);
  imc_jwks_del(set);
  imc_jwks_del(NULL);
  ck_assert_uint_eq(imc_jwks_count(NULL), 0);
}
END_TEST

/* ---- ignored entries ------------------------------------------------- */

/* Parses {"keys":[good, bad]} and expects bad ignored. */
static void ignored(const char *bad) {
  char a[2000], doc[8000];
  const char *keys[] = {jwk_rsa(a, sizeof(a), rsa1, "good", NULL), bad, NULL};
  imc_jwks *set = parse_ok(doc_of(doc, sizeof(doc), keys));
  ck_assert_msg(imc_jwks_count(set) == 1 && imc_jwks_ignored(set) == 1,
                "not ignored: %s", bad);
  ck_assert_int_eq(imc_jwks_find(set, "RS256", "good", NULL, NULL), 0);
  imc_jwks_del(set);
}

START_TEST(t_wrong_kty_and_crv) {
  char b[2000];
  ignored("{\"kty\":\"oct\",\"kid\":\"h\",\"k\":\"c2VjcmV0\"}");
  ignored("{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":"
          "\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}");
  ignored("{\"kid\":\"no-kty\",\"n\":\"AQAB\",\"e\":\"AQAB\"}");
  ignored(jwk_ec(b, sizeof(b), ec384, "P-384", "p384", NULL));
  /* P-256 coordinates under another curve's name, or under none. */
  char *k = jwk_ec(b, sizeof(b), ec1, "P-384", "named-384", NULL);
  ignored(k);
  k = jwk_ec(b, sizeof(b), ec1, "P-256", "no-crv", NULL);
  ignored(subst(k, sizeof(b), "\"crv\":\"P-256\",", ""));
  /* An RSA key for another algorithm, an EC key named RSA. */
  ignored(jwk_rsa(b, sizeof(b), rsa2, "rs512", ",\"alg\":\"RS512\""));
  ignored(jwk_rsa(b, sizeof(b), rsa2, "hs", ",\"alg\":\"HS256\""));
  ignored(jwk_ec(b, sizeof(b), ec1, "P-256", "es384", ",\"alg\":\"ES384\""));
  k = jwk_ec(b, sizeof(b), ec1, "P-256", "kty-rsa", NULL);
  ignored(subst(k, sizeof(b), "\"EC\"", "\"RSA\""));
  k = jwk_rsa(b, sizeof(b), rsa2, "kty-ec", NULL);
  ignored(subst(k, sizeof(b), "\"RSA\"", "\"EC\",\"crv\":\"P-256\""));
}
END_TEST

START_TEST(t_wrong_use) {
  char b[2000];
  ignored(jwk_rsa(b, sizeof(b), rsa2, "enc", ",\"use\":\"enc\""));
  ignored(jwk_rsa(b, sizeof(b), rsa2, "use-num", ",\"use\":1"));
  ignored(jwk_rsa(b, sizeof(b), rsa2, "ops", ",\"key_ops\":[\"encrypt\"]"));
  ignored(jwk_rsa(b, sizeof(b), rsa2, "ops-str", ",\"key_ops\":\"verify\""));
  ignored(jwk_rsa(b, sizeof(b), rsa2, "ops-num", ",\"key_ops\":[1]"));
  ignored(jwk_rsa(b, sizeof(b), rsa2, "dup", ",\"kid\":\"again\""));
  ignored("42");
  ignored("\"RSA\"");
  ignored("[{\"kty\":\"RSA\"}]");
}
END_TEST

START_TEST(t_bad_kid) {
  char b[2000], kid[IMC_JWKS_KID_MAX + 2];
  memset(kid, 'k', sizeof(kid) - 1);
  kid[sizeof(kid) - 1] = '\0';
  ignored(jwk_rsa(b, sizeof(b), rsa2, kid, NULL)); /* 128 bytes */
  kid[IMC_JWKS_KID_MAX] = '\0';
  char a[2000], doc[3000];
  const char *keys[] = {jwk_rsa(a, sizeof(a), rsa2, kid, NULL), NULL};
  imc_jwks *set = parse_ok(doc_of(doc, sizeof(doc), keys));
  ck_assert_int_eq(imc_jwks_find(set, "RS256", kid, NULL, NULL), 0);
  imc_jwks_del(set);
  ignored("{\"kty\":\"RSA\",\"kid\":7,\"n\":\"AQAB\",\"e\":\"AQAB\"}");
  char *k = jwk_rsa(b, sizeof(b), rsa2, "nul\\u0000", NULL);
  ignored(k);
}
END_TEST

START_TEST(t_weak_or_broken_keys) {
  char b[2000];
  /* 1024-bit RSA is too short. */
  ignored(jwk_rsa(b, sizeof(b), rsa1024, "short", NULL));
  /* An even exponent, e = 1, no n, no e. */
  char *k = jwk_rsa(b, sizeof(b), rsa2, "even-e", NULL);
  ignored(subst(k, sizeof(b), "\"e\":\"AQAB\"", "\"e\":\"AQAC\""));
  k = jwk_rsa(b, sizeof(b), rsa2, "e-one", NULL);
  ignored(subst(k, sizeof(b), "\"e\":\"AQAB\"", "\"e\":\"AAAB\""));
  k = jwk_rsa(b, sizeof(b), rsa2, "e-long", NULL);
  ignored(subst(k, sizeof(b), "\"e\":\"AQAB\"", "\"e\":\"AQAAAAAAAAAB\""));
  k = jwk_rsa(b, sizeof(b), rsa2, "even-n", NULL);
  char *nend = strstr(k, "\",\"e\"");
  nend[-1] = 'A'; /* the last two bits of n: 0 */
  ignored(k);
  ignored("{\"kty\":\"RSA\",\"kid\":\"no-n\",\"e\":\"AQAB\"}");
  k = jwk_rsa(b, sizeof(b), rsa2, "no-e", NULL);
  ignored(subst(k, sizeof(b), ",\"e\":\"AQAB\"", ""));
  /* An EC point off the curve: y changed. */
  k = jwk_ec(b, sizeof(b), ec1, "P-256", "off-curve", NULL);
  char *y = strstr(k, "\"y\":\"") + 5;
  y[10] = y[10] == 'A' ? 'B' : 'A';
  ignored(k);
  /* A coordinate one byte short. */
  k = jwk_ec(b, sizeof(b), ec1, "P-256", "short-x", NULL);
  char *x = strstr(k, "\"x\":\"") + 5;
  memmove(x, x + 1, strlen(x + 1) + 1); /* 43 characters -> 42: 31 bytes */
  ignored(k);
}
END_TEST

START_TEST(t_malformed_base64) {
  char b[2000];
  char *k = jwk_rsa(b, sizeof(b), rsa2, "bad-n", NULL);
  strstr(k, "\"n\":\"")[9] = '!';
  ignored(k);
  k = jwk_ec(b, sizeof(b), ec1, "P-256", "bad-x", NULL);
  strstr(k, "\"x\":\"")[7] = '*';
  ignored(k);
  k = jwk_ec(b, sizeof(b), ec1, "P-256", "bad-y", NULL);
  strstr(k, "\"y\":\"")[5] = '=';
  ignored(k);
  ignored("{\"kty\":\"RSA\",\"kid\":\"n-num\",\"n\":12,\"e\":\"AQAB\"}");
  ignored("{\"kty\":\"RSA\",\"kid\":\"n-empty\",\"n\":\"\",\"e\":\"AQAB\"}");
  /* n longer than any modulus we take. */
  static char huge[5000];
  size_t n = (size_t)snprintf(huge, sizeof(huge),
                              "{\"kty\":\"RSA\",\"kid\":\"huge\",\"n\":\"");
  memset(huge + n, 'A', 1500);
  snprintf(huge + n + 1500, sizeof(huge) - n - 1500, "\",\"e\":\"AQAB\"}");
  ignored(huge);
}
END_TEST

/* ---- refused documents ----------------------------------------------- */

static int parse(const char *doc, size_t len) {
  imc_jwks *set = (imc_jwks *)&set; /* must stay untouched on error */
  imc_jwks *before = set;
  int rv = imc_jwks_new(&set, doc, len, NULL);
  if (rv == 0)
    imc_jwks_del(set);
  else
    ck_assert_ptr_eq(set, before);
  return rv;
}

static int parse_str(const char *doc) {
  return parse(doc, strlen(doc));
}

START_TEST(t_refused_documents) {
  ck_assert_int_eq(parse_str(""), IMC_ERR_PROTO);
  ck_assert_int_eq(parse_str("{\"keys\":["), IMC_ERR_PROTO);
  ck_assert_int_eq(parse_str("not json"), IMC_ERR_PROTO);
  ck_assert_int_eq(parse_str("[]"), IMC_ERR_PROTO);
  ck_assert_int_eq(parse_str("{}"), IMC_ERR_PROTO);
  ck_assert_int_eq(parse_str("{\"keys\":{}}"), IMC_ERR_PROTO);
  ck_assert_int_eq(parse_str("{\"keys\":null}"), IMC_ERR_PROTO);
  ck_assert_int_eq(parse_str("{\"keys\":[],\"keys\":[]}"), IMC_ERR_PROTO);
  ck_assert_int_eq(parse_str("{\"keys\":[]} x"), IMC_ERR_PROTO);
  ck_assert_int_eq(imc_jwks_new(NULL, "{}", 2, NULL), IMC_ERR_INVALID_ARGUMENT);
  imc_jwks *set;
  ck_assert_int_eq(imc_jwks_new(&set, NULL, 0, NULL), IMC_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(t_oversized_document) {
  size_t cap = IMC_JWKS_DOC_MAX + 2;
  char *doc = malloc(cap);
  ck_assert_ptr_nonnull(doc);
  /* Exactly the limit parses (whitespace fills it)... */
  memset(doc, ' ', cap);
  memcpy(doc, "{\"keys\":[]}", 11);
  ck_assert_int_eq(parse(doc, IMC_JWKS_DOC_MAX), 0);
  /* ... one byte more does not. */
  ck_assert_int_eq(parse(doc, IMC_JWKS_DOC_MAX + 1), IMC_ERR_TOO_LARGE);
  free(doc);
}
END_TEST

START_TEST(t_too_many_entries) {
  char doc[2000];
  size_t n = (size_t)snprintf(doc, sizeof(doc), "{\"keys\":[");
  for (int i = 0; i < IMC_JWKS_KEYS_MAX; i++)
    n += (size_t)snprintf(doc + n, sizeof(doc) - n, "%s{}", i ? "," : "");
  snprintf(doc + n, sizeof(doc) - n, "]}");
  imc_jwks *set = parse_ok(doc);
  ck_assert_uint_eq(imc_jwks_ignored(set), IMC_JWKS_KEYS_MAX);
  imc_jwks_del(set);
  snprintf(doc + n, sizeof(doc) - n, ",{}]}");
  ck_assert_int_eq(parse_str(doc), IMC_ERR_TOO_LARGE);
}
END_TEST

/* ---- allocation failures --------------------------------------------- */

START_TEST(t_allocation_failures) {
  char a[2000], b[500], doc[4000];
  const char *keys[] = {jwk_rsa(a, sizeof(a), rsa1, "r1", NULL),
                        jwk_ec(b, sizeof(b), ec1, "P-256", "e1", NULL), NULL};
  doc_of(doc, sizeof(doc), keys);
  for (long i = 0;; i++) {
    test_mem tm;
    test_mem_init(&tm);
    tm.fail_at = i;
    imc_jwks *set = NULL;
    int rv = imc_jwks_new(&set, doc, strlen(doc), &tm.mem);
    if (rv == 0) {
      ck_assert_uint_eq(imc_jwks_count(set), 2);
      imc_jwks_del(set);
      ck_assert_int_eq(tm.live, 0);
      ck_assert_int_gt(i, 2); /* the set and two PEMs */
      break;
    }
    ck_assert_int_eq(rv, IMC_ERR_NOMEM);
    ck_assert_ptr_null(set);
    ck_assert_int_eq(tm.live, 0);
  }
}
END_TEST

int main(void) {
  rsa1 = testjwt_rsa();
  rsa2 = testjwt_rsa();
  rsa1024 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
  ec1 = testjwt_p256();
  ec384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
  if (!rsa1 || !rsa2 || !rsa1024 || !ec1 || !ec384) {
    fprintf(stderr, "test_jwks: key generation failed\n");
    return EXIT_FAILURE;
  }
  rsa1_pem = testjwt_pub_pem(rsa1);
  rsa2_pem = testjwt_pub_pem(rsa2);
  ec1_pem = testjwt_pub_pem(ec1);

  Suite *su = suite_create("jwks");
  TCase *t = tcase_create("keys");
  tcase_add_test(t, t_rsa_and_ec);
  tcase_add_test(t, t_members_that_allow);
  tcase_add_test(t, t_kid_needed_among_several);
  tcase_add_test(t, t_missing_kid);
  tcase_add_test(t, t_same_kid_twice);
  tcase_add_test(t, t_empty_set);
  suite_add_tcase(su, t);
  t = tcase_create("ignored");
  tcase_add_test(t, t_wrong_kty_and_crv);
  tcase_add_test(t, t_wrong_use);
  tcase_add_test(t, t_bad_kid);
  tcase_add_test(t, t_weak_or_broken_keys);
  tcase_add_test(t, t_malformed_base64);
  suite_add_tcase(su, t);
  t = tcase_create("documents");
  tcase_add_test(t, t_refused_documents);
  tcase_add_test(t, t_oversized_document);
  tcase_add_test(t, t_too_many_entries);
  tcase_add_test(t, t_allocation_failures);
  suite_add_tcase(su, t);
  SRunner *sr = srunner_create(su);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  EVP_PKEY_free(rsa1);
  EVP_PKEY_free(rsa2);
  EVP_PKEY_free(rsa1024);
  EVP_PKEY_free(ec1);
  EVP_PKEY_free(ec384);
  free(rsa1_pem);
  free(rsa2_pem);
  free(ec1_pem);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
