/* Unit tests of JWT verification and signing, and of the JSON scanner it
 * reads claims with. Keys are generated at start; tokens are signed here
 * with OpenSSL directly so the verifier is checked against an independent
 * signer. */
#include "protocol/json.h"
#include "protocol/jwt.h"
#include "testutil.h"

#include <imchat/jwt.h>

#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#define NOW INT64_C(1700000000)
#define TOK_MAX 8192

static const char secret[] = "correct horse battery staple";

static EVP_PKEY *rsa_priv, *rsa_priv2, *ec_priv, *ec_priv2;
static char *rsa_pem, *ec_pem, *ec384_pem, *ed_pem, *rsa_priv_pem;

/* ---- token construction, independent of the library ---- */

static size_t b64url(const void *in, size_t n, char *out) {
  /* EVP_EncodeBlock is standard base64 with padding; translate it. */
  int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);
  ck_assert_int_ge(len, 0);
  size_t o = 0;
  for (int i = 0; i < len; i++) {
    char c = out[i];
    if (c == '=')
      break;
    out[o++] = c == '+' ? '-' : c == '/' ? '_' : c;
  }
  out[o] = '\0';
  return o;
}

/* Writes b64url(hdr) "." b64url(pay) to out; returns its length. */
static size_t signing_input(char *out, const char *hdr, const char *pay) {
  size_t n = b64url(hdr, strlen(hdr), out);
  out[n++] = '.';
  n += b64url(pay, strlen(pay), out + n);
  return n;
}

static const char *tok_raw(char *out, const char *hdr, const char *pay,
                           const void *sig, size_t siglen) {
  size_t n = signing_input(out, hdr, pay);
  out[n++] = '.';
  b64url(sig, siglen, out + n);
  return out;
}

static const char *tok_hs(char *out, const char *hdr, const char *pay,
                          const void *key, size_t keylen) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int maclen = 0;
  size_t n = signing_input(out, hdr, pay);
  ck_assert_ptr_nonnull(HMAC(EVP_sha256(), key, (int)keylen,
                             (unsigned char *)out, n, mac, &maclen));
  out[n++] = '.';
  b64url(mac, maclen, out + n);
  return out;
}

static size_t pk_sign(EVP_PKEY *k, const char *data, size_t n,
                      unsigned char *sig, size_t cap) {
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  size_t siglen = cap;
  ck_assert_ptr_nonnull(ctx);
  ck_assert_int_eq(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, k), 1);
  ck_assert_int_eq(
      EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)data, n), 1);
  EVP_MD_CTX_free(ctx);
  return siglen;
}

/* DER ECDSA-Sig-Value to the JWS form, raw r||s of 32 bytes each. */
static void der_to_raw(const unsigned char *der, size_t len,
                       unsigned char raw[64]) {
  const unsigned char *p = der;
  ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)len);
  const BIGNUM *r, *s;
  ck_assert_ptr_nonnull(es);
  ECDSA_SIG_get0(es, &r, &s);
  ck_assert_int_eq(BN_bn2binpad(r, raw, 32), 32);
  ck_assert_int_eq(BN_bn2binpad(s, raw + 32, 32), 32);
  ECDSA_SIG_free(es);
}

static const char *tok_rs(char *out, const char *hdr, const char *pay,
                          EVP_PKEY *k) {
  unsigned char sig[1024];
  size_t n = signing_input(out, hdr, pay);
  size_t siglen = pk_sign(k, out, n, sig, sizeof(sig));
  out[n++] = '.';
  b64url(sig, siglen, out + n);
  return out;
}

static const char *tok_es(char *out, const char *hdr, const char *pay,
                          EVP_PKEY *k) {
  unsigned char der[128], raw[64];
  size_t n = signing_input(out, hdr, pay);
  size_t dlen = pk_sign(k, out, n, der, sizeof(der));
  der_to_raw(der, dlen, raw);
  out[n++] = '.';
  b64url(raw, sizeof(raw), out + n);
  return out;
}

static const char *payload(char *out, int64_t exp) {
  snprintf(out, 256,
           "{\"sub\":\"alice\",\"did\":\"phone-1\",\"exp\":%" PRId64 "}", exp);
  return out;
}

/* Called before the runner starts, so no ck_assert here. */
static char *pub_pem(EVP_PKEY *k) {
  BIO *b = BIO_new(BIO_s_mem());
  char *data, *copy = NULL;
  if (b != NULL && PEM_write_bio_PUBKEY(b, k) == 1) {
    long n = BIO_get_mem_data(b, &data);
    copy = strndup(data, (size_t)n);
  }
  BIO_free(b);
  if (copy == NULL) {
    fprintf(stderr, "PEM export failed\n");
    exit(EXIT_FAILURE);
  }
  return copy;
}

/* Called before the runner starts, so no ck_assert here. */
static char *priv_pem(EVP_PKEY *k) {
  BIO *b = BIO_new(BIO_s_mem());
  char *data, *copy = NULL;
  if (b != NULL &&
      PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL) == 1) {
    long n = BIO_get_mem_data(b, &data);
    copy = strndup(data, (size_t)n);
  }
  BIO_free(b);
  if (copy == NULL) {
    fprintf(stderr, "PEM export failed\n");
    exit(EXIT_FAILURE);
  }
  return copy;
}

static void key_hs(imc_jwt_key *k) {
  ck_assert_int_eq(
      imc_jwt_key_init_secret(k, (const uint8_t *)secret, strlen(secret), NULL),
      0);
}

static void key_pem(imc_jwt_key *k, const char *pem) {
  ck_assert_int_eq(imc_jwt_key_init_pem(k, pem, strlen(pem)), 0);
}

static int verify(const char *tok, const imc_jwt_key *k,
                  const imc_jwt_policy *pol, imc_jwt_claims *c) {
  return imc_jwt_verify(tok, strlen(tok), k, pol, NOW, c);
}

static const imc_jwt_policy pol60 = {NULL, NULL, 60};

static const char hs_hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
static const char rs_hdr[] = "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
static const char es_hdr[] = "{\"alg\":\"ES256\"}";

/* ---- JSON scanner ---- */

static int jparse(const char *s, imc_json_value *v) {
  return imc_json_parse(s, strlen(s), v);
}

START_TEST(t_json_valid) {
  static const char *const ok[] = {
      "{}",
      " { } ",
      "[]",
      "0",
      "-0",
      "1.5e+3",
      "1E-2",
      "\"\"",
      "true",
      "false",
      "null",
      "\"\\u00e9\\ud83d\\ude00\"",
      "{\"a\":[1,{\"b\":null}],\"c\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"}",
      "\t\r\n[ 1 , 2 ]\n",
  };
  imc_json_value v;
  for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
    ck_assert_msg(jparse(ok[i], &v) == 0, "%s", ok[i]);
  ck_assert_int_eq(jparse(" {\"a\":1} ", &v), 0);
  ck_assert_int_eq(v.type, IMC_JSON_OBJECT);
  ck_assert_uint_eq(v.len, 7);
}
END_TEST

START_TEST(t_json_invalid) {
  static const char *const bad[] = {
      "",
      " ",
      "{",
      "}",
      "[1,]",
      "[,1]",
      "{\"a\":1,}",
      "{\"a\" 1}",
      "{a:1}",
      "{'a':1}",
      "01",
      "1.",
      ".5",
      "-",
      "+1",
      "1e",
      "1e+",
      "tru",
      "nul",
      "True",
      "\"abc",
      "\"a\x01\"",
      "\"\\x\"",
      "\"\\u12\"",
      "\"\\u12g4\"",
      "\"\\ud800\"",
      "\"\\udc00\"",
      "\"\\ud800\\u0041\"",
      "\"\\ud800x\"",
      "{\"a\":1}x",
      "1 2",
      "[1 2]",
      "{\"a\":1 \"b\":2}",
      "{\"a\"}",
      "NaN",
      "\"\\",
  };
  imc_json_value v;
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    ck_assert_msg(jparse(bad[i], &v) == IMC_ERR_PROTO, "%s", bad[i]);
}
END_TEST

/* Nests depth levels, alternating arrays and objects. */
static void nest(char *s, int depth) {
  size_t n = 0;
  for (int i = 0; i < depth; i++) {
    if (i % 2) {
      memcpy(s + n, "{\"k\":", 5);
      n += 5;
    } else {
      s[n++] = '[';
    }
  }
  s[n++] = '1';
  for (int i = depth - 1; i >= 0; i--)
    s[n++] = (i % 2) ? '}' : ']';
  s[n] = '\0';
}

START_TEST(t_json_depth) {
  char s[8 * (IMC_JSON_MAX_DEPTH + 2)];
  imc_json_value v;
  for (int depth = 1; depth <= IMC_JSON_MAX_DEPTH + 1; depth++) {
    nest(s, depth);
    ck_assert_msg(jparse(s, &v) ==
                      (depth <= IMC_JSON_MAX_DEPTH ? 0 : IMC_ERR_PROTO),
                  "depth %d", depth);
  }
  memcpy(s, "{\"k\":", 5);
  nest(s + 5, IMC_JSON_MAX_DEPTH);
  strcat(s, "}");
  ck_assert_int_eq(jparse(s, &v), IMC_ERR_PROTO);
  memcpy(s, "{\"k\":", 5);
  nest(s + 5, IMC_JSON_MAX_DEPTH - 1);
  strcat(s, "}");
  ck_assert_int_eq(jparse(s, &v), 0);

  /* Deep hostile input is refused without exhausting the stack. */
  static char deep[100000];
  memset(deep, '[', sizeof(deep) - 1);
  ck_assert_int_eq(jparse(deep, &v), IMC_ERR_PROTO);
  memset(deep, '{', sizeof(deep) - 1);
  ck_assert_int_eq(jparse(deep, &v), IMC_ERR_PROTO);
}
END_TEST

START_TEST(t_json_member) {
  imc_json_value o, v;
  ck_assert_int_eq(
      jparse("{\"alg\":\"HS256\",\"n\":{\"alg\":1},\"a\\u006cx\":[1]}", &o), 0);
  ck_assert_int_eq(imc_json_member(&o, "alg", &v), 0);
  ck_assert_int_eq(v.type, IMC_JSON_STRING);
  ck_assert_uint_eq(v.len, 7);
  /* Names are compared unescaped. */
  ck_assert_int_eq(imc_json_member(&o, "alx", &v), 0);
  ck_assert_int_eq(v.type, IMC_JSON_ARRAY);
  ck_assert_int_eq(imc_json_member(&o, "n", &v), 0);
  ck_assert_int_eq(v.type, IMC_JSON_OBJECT);
  ck_assert_int_eq(imc_json_member(&v, "alg", &v), 0);
  ck_assert_int_eq(v.type, IMC_JSON_NUMBER);
  ck_assert_int_eq(imc_json_member(&o, "missing", &v), IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(imc_json_member(&o, "al", &v), IMC_ERR_NOT_FOUND);

  /* A second member of the same name, however spelt, is refused. */
  ck_assert_int_eq(jparse("{\"alg\":\"RS256\",\"\\u0061lg\":\"none\"}", &o), 0);
  ck_assert_int_eq(imc_json_member(&o, "alg", &v), IMC_ERR_PROTO);

  ck_assert_int_eq(jparse("{}", &o), 0);
  ck_assert_int_eq(imc_json_member(&o, "a", &v), IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(jparse("[]", &o), 0);
  ck_assert_int_eq(imc_json_member(&o, "a", &v), IMC_ERR_INVALID_ARGUMENT);

  char longname[IMC_JSON_NAME_MAX + 2];
  memset(longname, 'n', sizeof(longname) - 1);
  longname[sizeof(longname) - 1] = '\0';
  ck_assert_int_eq(jparse("{}", &o), 0);
  ck_assert_int_eq(imc_json_member(&o, longname, &v), IMC_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(t_json_string) {
  imc_json_value v;
  char out[32];
  ck_assert_int_eq(jparse("\"\\u00e9\\u20ac\\ud83d\\ude00 \\u0041\"", &v), 0);
  ck_assert_int_eq(imc_json_string(&v, out, sizeof(out)), 11);
  ck_assert_str_eq(out, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 A");
  ck_assert_int_eq(jparse("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", &v), 0);
  ck_assert_int_eq(imc_json_string(&v, out, sizeof(out)), 8);
  ck_assert_str_eq(out, "\"\\/\b\f\n\r\t");
  ck_assert_int_eq(jparse("\"\\uDBFF\\uDFFF\"", &v), 0);
  ck_assert_int_eq(imc_json_string(&v, out, sizeof(out)), 4);
  ck_assert_str_eq(out, "\xf4\x8f\xbf\xbf");

  ck_assert_int_eq(jparse("\"abcd\"", &v), 0);
  ck_assert_int_eq(imc_json_string(&v, out, 5), 4);
  ck_assert_int_eq(imc_json_string(&v, out, 4), IMC_ERR_TOO_LARGE);
  ck_assert_int_eq(imc_json_string(&v, NULL, 0), IMC_ERR_TOO_LARGE);

  ck_assert_int_eq(jparse("\"a\\u0000b\"", &v), 0);
  ck_assert_int_eq(imc_json_string(&v, out, sizeof(out)), IMC_ERR_PROTO);

  ck_assert_int_eq(jparse("12", &v), 0);
  ck_assert_int_eq(imc_json_string(&v, out, sizeof(out)),
                   IMC_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(t_json_int) {
  static const struct {
    const char *s;
    int64_t want;
  } ok[] = {
      {"0", 0},
      {"-0", 0},
      {"123", 123},
      {"-123", -123},
      {"1.9", 1},
      {"-1.9", -1},
      {"0.5", 0},
      {"1.5e3", 1500},
      {"1E2", 100},
      {"15e-1", 1},
      {"12.345e1", 123},
      {"1e-400", 0},
      {"0e999999999", 0},
      {"1700000000.75", 1700000000},
      {"1.7e9", 1700000000},
      {"9223372036854775807", INT64_MAX},
      {"-9223372036854775808", INT64_MIN},
      {"922337203685477580.79e1", INT64_MAX},
  };
  imc_json_value v;
  int64_t got;
  for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
    ck_assert_int_eq(jparse(ok[i].s, &v), 0);
    ck_assert_msg(imc_json_int64(&v, &got) == 0, "%s", ok[i].s);
    ck_assert_msg(got == ok[i].want, "%s: %" PRId64, ok[i].s, got);
  }
  static const char *const big[] = {"9223372036854775808",
                                    "-9223372036854775809", "1e19",
                                    "1e999999999", "-1e30"};
  for (size_t i = 0; i < sizeof(big) / sizeof(big[0]); i++) {
    ck_assert_int_eq(jparse(big[i], &v), 0);
    ck_assert_msg(imc_json_int64(&v, &got) == IMC_ERR_TOO_LARGE, "%s", big[i]);
  }
  ck_assert_int_eq(jparse("\"1\"", &v), 0);
  ck_assert_int_eq(imc_json_int64(&v, &got), IMC_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(t_json_array) {
  imc_json_value a, e;
  size_t pos = 0;
  ck_assert_int_eq(jparse(" [ 1 , \"x\" ,[2,3], {\"k\":[]} ] ", &a), 0);
  static const imc_json_type want[] = {IMC_JSON_NUMBER, IMC_JSON_STRING,
                                       IMC_JSON_ARRAY, IMC_JSON_OBJECT};
  for (size_t i = 0; i < 4; i++) {
    ck_assert_int_eq(imc_json_array_next(&a, &pos, &e), 1);
    ck_assert_int_eq(e.type, want[i]);
  }
  ck_assert_int_eq(imc_json_array_next(&a, &pos, &e), 0);
  ck_assert_int_eq(imc_json_array_next(&a, &pos, &e), 0);

  pos = 0;
  ck_assert_int_eq(jparse("[ ]", &a), 0);
  ck_assert_int_eq(imc_json_array_next(&a, &pos, &e), 0);
  ck_assert_int_eq(jparse("{}", &a), 0);
  ck_assert_int_eq(imc_json_array_next(&a, &pos, &e), IMC_ERR_INVALID_ARGUMENT);
}
END_TEST

/* ---- verification ---- */

START_TEST(t_hs256_valid) {
  imc_jwt_key k;
  imc_jwt_claims c;
  char tok[TOK_MAX], pay[256];
  key_hs(&k);
  ck_assert_int_eq(k.alg, IMC_JWT_HS256);
  tok_hs(tok, hs_hdr, payload(pay, NOW + 300), secret, strlen(secret));
  memset(&c, 0x55, sizeof(c));
  ck_assert_int_eq(verify(tok, &k, &pol60, &c), 0);
  ck_assert_str_eq(c.sub, "alice");
  ck_assert_str_eq(c.did, "phone-1");
  ck_assert_int_eq(c.exp, NOW + 300);
  /* The claims output is optional, and so is the policy. */
  ck_assert_int_eq(verify(tok, &k, &pol60, NULL), 0);
  ck_assert_int_eq(verify(tok, &k, NULL, &c), 0);

  /* Unknown claims and header members are ignored; escapes decode. */
  tok_hs(tok, "{\"typ\":\"JWT\",\"alg\":\"HS256\",\"x\":{\"y\":[1]}}",
         "{\"sub\":\"\\u0061lice\",\"exp\":1700000100,\"roles\":[\"a\"],"
         "\"iat\":1699999990,\"nbf\":1699999990,\"iss\":\"x\"}",
         secret, strlen(secret));
  ck_assert_int_eq(verify(tok, &k, &pol60, &c), 0);
  ck_assert_str_eq(c.sub, "alice");
  ck_assert_str_eq(c.did, "");
  imc_jwt_key_clear(&k, NULL);
}
END_TEST

START_TEST(t_rs256_valid) {
  imc_jwt_key k;
  imc_jwt_claims c;
  char tok[TOK_MAX], pay[256];
  key_pem(&k, rsa_pem);
  ck_assert_int_eq(k.alg, IMC_JWT_RS256);
  ck_assert_ptr_nonnull(k.pkey);
  tok_rs(tok, rs_hdr, payload(pay, NOW + 300), rsa_priv);
  ck_assert_int_eq(verify(tok, &k, &pol60, &c), 0);
  ck_assert_str_eq(c.sub, "alice");
  ck_assert_str_eq(c.did, "phone-1");
  ck_assert_int_eq(c.exp, NOW + 300);
  imc_jwt_key_clear(&k, NULL);
  ck_assert_ptr_null(k.pkey);
}
END_TEST

START_TEST(t_es256_valid) {
  imc_jwt_key k;
  imc_jwt_claims c;
  char tok[TOK_MAX], pay[256];
  key_pem(&k, ec_pem);
  ck_assert_int_eq(k.alg, IMC_JWT_ES256);
  /* Several signatures: r and s with leading zero bytes must survive the
   * raw/DER conversion. */
  for (int i = 0; i < 32; i++) {
    tok_es(tok, es_hdr, payload(pay, NOW + 300 + i), ec_priv);
    ck_assert_int_eq(verify(tok, &k, &pol60, &c), 0);
    ck_assert_int_eq(c.exp, NOW + 300 + i);
  }
  ck_assert_str_eq(c.sub, "alice");
  imc_jwt_key_clear(&k, NULL);
}
END_TEST

START_TEST(t_wrong_key) {
  imc_jwt_key hs, rs, es;
  char tok[TOK_MAX], pay[256];
  key_hs(&hs);
  key_pem(&rs, rsa_pem);
  key_pem(&es, ec_pem);
  payload(pay, NOW + 300);

  tok_hs(tok, hs_hdr, pay, "other", 5);
  ck_assert_int_eq(verify(tok, &hs, &pol60, NULL), IMC_ERR_AUTH);
  tok_rs(tok, rs_hdr, pay, rsa_priv2);
  ck_assert_int_eq(verify(tok, &rs, &pol60, NULL), IMC_ERR_AUTH);
  tok_es(tok, es_hdr, pay, ec_priv2);
  ck_assert_int_eq(verify(tok, &es, &pol60, NULL), IMC_ERR_AUTH);

  /* A valid signature moved onto another payload. */
  char other[TOK_MAX], pay2[256];
  tok_rs(tok, rs_hdr, pay, rsa_priv);
  tok_rs(other, rs_hdr, payload(pay2, NOW + 301), rsa_priv);
  char *sig = strrchr(tok, '.');
  char *osig = strrchr(other, '.');
  strcpy(osig, sig);
  ck_assert_int_eq(verify(tok, &rs, &pol60, NULL), 0);
  ck_assert_int_eq(verify(other, &rs, &pol60, NULL), IMC_ERR_AUTH);

  imc_jwt_key_clear(&hs, NULL);
  imc_jwt_key_clear(&rs, NULL);
  imc_jwt_key_clear(&es, NULL);
}
END_TEST

/* Every one-character change of a valid token is refused. */
static void check_tamper(const char *tok, const imc_jwt_key *k) {
  static const char alpha[] = "Aa0-_.=";
  char t[TOK_MAX];
  size_t n = strlen(tok);
  ck_assert_int_eq(verify(tok, k, &pol60, NULL), 0);
  for (size_t i = 0; i < n; i++) {
    for (const char *a = alpha; *a; a++) {
      if (tok[i] == *a)
        continue;
      memcpy(t, tok, n + 1);
      t[i] = *a;
      ck_assert_msg(verify(t, k, &pol60, NULL) != 0, "pos %zu -> %c", i, *a);
    }
  }
  /* Truncated at every length, and extended. */
  for (size_t i = 0; i < n; i++)
    ck_assert_int_ne(imc_jwt_verify(tok, i, k, &pol60, NOW, NULL), 0);
  memcpy(t, tok, n);
  memcpy(t + n, "AA", 3);
  ck_assert_int_ne(verify(t, k, &pol60, NULL), 0);
}

START_TEST(t_tamper) {
  imc_jwt_key hs, rs, es;
  char tok[TOK_MAX], pay[256];
  key_hs(&hs);
  key_pem(&rs, rsa_pem);
  key_pem(&es, ec_pem);
  payload(pay, NOW + 300);
  check_tamper(tok_hs(tok, hs_hdr, pay, secret, strlen(secret)), &hs);
  check_tamper(tok_rs(tok, rs_hdr, pay, rsa_priv), &rs);
  check_tamper(tok_es(tok, es_hdr, pay, ec_priv), &es);
  imc_jwt_key_clear(&hs, NULL);
  imc_jwt_key_clear(&rs, NULL);
  imc_jwt_key_clear(&es, NULL);
}
END_TEST

START_TEST(t_signature_lengths) {
  imc_jwt_key rs, es;
  char tok[TOK_MAX], pay[256];
  unsigned char der[128], raw[65];
  key_pem(&rs, rsa_pem);
  key_pem(&es, ec_pem);
  payload(pay, NOW + 300);

  /* ES256 with the DER signature OpenSSL produces, instead of r||s. */
  size_t n = signing_input(tok, es_hdr, pay);
  size_t dlen = pk_sign(ec_priv, tok, n, der, sizeof(der));
  tok_raw(tok, es_hdr, pay, der, dlen);
  ck_assert_int_eq(verify(tok, &es, &pol60, NULL), IMC_ERR_AUTH);

  /* r||s one byte short or long, and all zero. */
  der_to_raw(der, dlen, raw);
  tok_raw(tok, es_hdr, pay, raw, 64);
  ck_assert_int_eq(verify(tok, &es, &pol60, NULL), 0);
  tok_raw(tok, es_hdr, pay, raw, 63);
  ck_assert_int_eq(verify(tok, &es, &pol60, NULL), IMC_ERR_AUTH);
  raw[64] = 0;
  tok_raw(tok, es_hdr, pay, raw, 65);
  ck_assert_int_eq(verify(tok, &es, &pol60, NULL), IMC_ERR_AUTH);
  memset(raw, 0, sizeof(raw));
  tok_raw(tok, es_hdr, pay, raw, 64);
  ck_assert_int_eq(verify(tok, &es, &pol60, NULL), IMC_ERR_AUTH);
  memset(raw, 0xff, sizeof(raw));
  tok_raw(tok, es_hdr, pay, raw, 64);
  ck_assert_int_eq(verify(tok, &es, &pol60, NULL), IMC_ERR_AUTH);

  /* RS256 with a truncated signature and with none. */
  unsigned char sig[512];
  n = signing_input(tok, rs_hdr, pay);
  size_t slen = pk_sign(rsa_priv, tok, n, sig, sizeof(sig));
  ck_assert_uint_eq(slen, 256);
  tok_raw(tok, rs_hdr, pay, sig, slen - 1);
  ck_assert_int_eq(verify(tok, &rs, &pol60, NULL), IMC_ERR_AUTH);
  tok_raw(tok, rs_hdr, pay, sig, 0);
  ck_assert_int_eq(verify(tok, &rs, &pol60, NULL), IMC_ERR_AUTH);

  imc_jwt_key_clear(&rs, NULL);
  imc_jwt_key_clear(&es, NULL);
}
END_TEST

START_TEST(t_alg_none) {
  static const char *const spellings[] = {"none",   "None",  "NONE",  "nOnE",
                                          "",       "HS512", "hs256", "RS384",
                                          "ES256K", "PS256"};
  imc_jwt_key keys[3];
  char tok[TOK_MAX], hdr[128], pay[256];
  unsigned char mac[32];
  memset(mac, 0xab, sizeof(mac));
  key_hs(&keys[0]);
  key_pem(&keys[1], rsa_pem);
  key_pem(&keys[2], ec_pem);
  payload(pay, NOW + 300);

  for (size_t i = 0; i < sizeof(spellings) / sizeof(spellings[0]); i++) {
    snprintf(hdr, sizeof(hdr), "{\"alg\":\"%s\",\"typ\":\"JWT\"}",
             spellings[i]);
    imc_jwt_header h;
    tok_raw(tok, hdr, pay, "", 0);
    ck_assert_int_eq(imc_jwt_parse_header(tok, strlen(tok), &h), 0);
    ck_assert_int_eq(h.alg, IMC_JWT_NONE);
    for (int k = 0; k < 3; k++) {
      tok_raw(tok, hdr, pay, "", 0);
      ck_assert_int_eq(verify(tok, &keys[k], &pol60, NULL), IMC_ERR_AUTH);
      /* "none" with a trailing '.' dropped entirely */
      *strrchr(tok, '.') = '\0';
      ck_assert_int_eq(verify(tok, &keys[k], &pol60, NULL), IMC_ERR_AUTH);
      tok_raw(tok, hdr, pay, "sig", 3);
      ck_assert_int_eq(verify(tok, &keys[k], &pol60, NULL), IMC_ERR_AUTH);
      tok_raw(tok, hdr, pay, mac, sizeof(mac));
      ck_assert_int_eq(verify(tok, &keys[k], &pol60, NULL), IMC_ERR_AUTH);
      /* Even with a signature the key would accept under its own alg. */
      tok_hs(tok, hdr, pay, secret, strlen(secret));
      ck_assert_int_eq(verify(tok, &keys[k], &pol60, NULL), IMC_ERR_AUTH);
    }
  }
  /* alg missing or not a string. */
  static const char *const bad_hdrs[] = {"{\"typ\":\"JWT\"}", "{\"alg\":null}",
                                         "{\"alg\":0}", "{\"alg\":[\"HS256\"]}",
                                         "{\"alg\":{}}"};
  for (size_t i = 0; i < sizeof(bad_hdrs) / sizeof(bad_hdrs[0]); i++) {
    tok_hs(tok, bad_hdrs[i], pay, secret, strlen(secret));
    ck_assert_int_eq(verify(tok, &keys[0], &pol60, NULL), IMC_ERR_AUTH);
  }
  for (int k = 0; k < 3; k++)
    imc_jwt_key_clear(&keys[k], NULL);
}
END_TEST

START_TEST(t_key_confusion) {
  imc_jwt_key rs, hs_pem, es;
  char tok[TOK_MAX], pay[256];
  key_pem(&rs, rsa_pem);
  key_pem(&es, ec_pem);
  payload(pay, NOW + 300);

  /* The classic attack: the RSA public key bytes as the HMAC secret. */
  tok_hs(tok, hs_hdr, pay, rsa_pem, strlen(rsa_pem));
  ck_assert_int_eq(verify(tok, &rs, &pol60, NULL), IMC_ERR_AUTH);
  tok_hs(tok, hs_hdr, pay, ec_pem, strlen(ec_pem));
  ck_assert_int_eq(verify(tok, &es, &pol60, NULL), IMC_ERR_AUTH);

  /* The same token is otherwise well formed: an HS256 key made from
   * those bytes accepts it. */
  tok_hs(tok, hs_hdr, pay, rsa_pem, strlen(rsa_pem));
  ck_assert_int_eq(imc_jwt_key_init_secret(&hs_pem, (const uint8_t *)rsa_pem,
                                           strlen(rsa_pem), NULL),
                   0);
  ck_assert_int_eq(verify(tok, &hs_pem, &pol60, NULL), 0);

  /* Crossing the asymmetric algorithms fails too. */
  tok_rs(tok, rs_hdr, pay, rsa_priv);
  ck_assert_int_eq(verify(tok, &es, &pol60, NULL), IMC_ERR_AUTH);
  ck_assert_int_eq(verify(tok, &hs_pem, &pol60, NULL), IMC_ERR_AUTH);
  tok_es(tok, es_hdr, pay, ec_priv);
  ck_assert_int_eq(verify(tok, &rs, &pol60, NULL), IMC_ERR_AUTH);
  /* An RS256 header over an ES256 signature. */
  tok_es(tok, rs_hdr, pay, ec_priv);
  ck_assert_int_eq(verify(tok, &rs, &pol60, NULL), IMC_ERR_AUTH);

  imc_jwt_key_clear(&rs, NULL);
  imc_jwt_key_clear(&es, NULL);
  imc_jwt_key_clear(&hs_pem, NULL);
}
END_TEST

static int verify_claims(const imc_jwt_key *k, const imc_jwt_policy *pol,
                         const char *pay, imc_jwt_claims *c) {
  char tok[TOK_MAX];
  tok_hs(tok, hs_hdr, pay, secret, strlen(secret));
  return verify(tok, k, pol, c);
}

START_TEST(t_time) {
  imc_jwt_key k;
  imc_jwt_policy p0 = {NULL, NULL, 0}, neg = {NULL, NULL, -100};
  char pay[256];
  key_hs(&k);

  /* exp + leeway <= now is expired. */
  ck_assert_int_eq(verify_claims(&k, &pol60, payload(pay, NOW - 61), NULL),
                   IMC_ERR_EXPIRED);
  ck_assert_int_eq(verify_claims(&k, &pol60, payload(pay, NOW - 60), NULL),
                   IMC_ERR_EXPIRED);
  ck_assert_int_eq(verify_claims(&k, &pol60, payload(pay, NOW - 59), NULL), 0);
  ck_assert_int_eq(verify_claims(&k, &p0, payload(pay, NOW), NULL),
                   IMC_ERR_EXPIRED);
  ck_assert_int_eq(verify_claims(&k, &p0, payload(pay, NOW + 1), NULL), 0);
  ck_assert_int_eq(verify_claims(&k, &neg, payload(pay, NOW), NULL),
                   IMC_ERR_EXPIRED);
  ck_assert_int_eq(verify_claims(&k, NULL, payload(pay, NOW - 59), NULL), 0);
  ck_assert_int_eq(verify_claims(&k, NULL, payload(pay, NOW - 60), NULL),
                   IMC_ERR_EXPIRED);
  ck_assert_int_eq(verify_claims(&k, &pol60, payload(pay, INT64_MIN), NULL),
                   IMC_ERR_EXPIRED);
  ck_assert_int_eq(verify_claims(&k, &pol60, payload(pay, INT64_MAX), NULL), 0);

  /* nbf and iat more than leeway in the future; within it accepted. */
  static const char *const claims[] = {"nbf", "iat"};
  for (int i = 0; i < 2; i++) {
    snprintf(pay, sizeof(pay),
             "{\"sub\":\"a\",\"exp\":%" PRId64 ",\"%s\":%" PRId64 "}",
             NOW + 1000, claims[i], NOW + 61);
    ck_assert_int_eq(verify_claims(&k, &pol60, pay, NULL), IMC_ERR_EXPIRED);
    snprintf(pay, sizeof(pay),
             "{\"sub\":\"a\",\"exp\":%" PRId64 ",\"%s\":%" PRId64 "}",
             NOW + 1000, claims[i], NOW + 60);
    ck_assert_int_eq(verify_claims(&k, &pol60, pay, NULL), 0);
    snprintf(pay, sizeof(pay),
             "{\"sub\":\"a\",\"exp\":%" PRId64 ",\"%s\":%" PRId64 "}",
             NOW + 1000, claims[i], NOW + 1);
    ck_assert_int_eq(verify_claims(&k, &p0, pay, NULL), IMC_ERR_EXPIRED);
    snprintf(pay, sizeof(pay),
             "{\"sub\":\"a\",\"exp\":%" PRId64 ",\"%s\":%" PRId64 "}",
             NOW + 1000, claims[i], NOW - 100000);
    ck_assert_int_eq(verify_claims(&k, &p0, pay, NULL), 0);
    snprintf(pay, sizeof(pay),
             "{\"sub\":\"a\",\"exp\":%" PRId64 ",\"%s\":\"%" PRId64 "\"}",
             NOW + 1000, claims[i], NOW);
    ck_assert_int_eq(verify_claims(&k, &pol60, pay, NULL), IMC_ERR_AUTH);
  }
  imc_jwt_key_clear(&k, NULL);
}
END_TEST

START_TEST(t_claims) {
  static const char *const bad[] = {
      "{\"sub\":\"alice\"}",                        /* no exp */
      "{\"sub\":\"alice\",\"exp\":\"1700000100\"}", /* exp a string */
      "{\"sub\":\"alice\",\"exp\":null}",           /* exp null */
      "{\"sub\":\"alice\",\"exp\":true}",           /* exp a bool */
      "{\"sub\":\"alice\",\"exp\":1e30}",           /* out of range */
      "{\"sub\":\"alice\",\"exp\":1700000100,\"exp\":1700000200}",
      "{\"exp\":1700000100}", /* no sub */
      "{\"sub\":null,\"exp\":1700000100}",
      "{\"sub\":42,\"exp\":1700000100}",
      "{\"sub\":\"\",\"exp\":1700000100}",
      "{\"sub\":\"al ice\",\"exp\":1700000100}",
      "{\"sub\":\"a/b\",\"exp\":1700000100}",
      "{\"sub\":\"a:b\",\"exp\":1700000100}",
      "{\"sub\":\"caf\\u00e9\",\"exp\":1700000100}",
      "{\"sub\":\"alice\\u0000\",\"exp\":1700000100}",
      "{\"sub\":\"alice\\n\",\"exp\":1700000100}",
      "{\"sub\":\"alice\",\"sub\":\"bob\",\"exp\":1700000100}",
      "{\"sub\":\"alice\",\"did\":\"\",\"exp\":1700000100}",
      "{\"sub\":\"alice\",\"did\":\"my phone\",\"exp\":1700000100}",
      "{\"sub\":\"alice\",\"did\":7,\"exp\":1700000100}",
      "{\"sub\":\"alice\",\"did\":null,\"exp\":1700000100}",
      "{\"sub\":\"alice\",\"did\":\"p#1\",\"exp\":1700000100}",
      "[\"sub\",\"alice\",\"exp\",1700000100]", /* not an object */
      "\"alice\"",
      "{\"sub\":\"alice\",\"exp\":1700000100", /* truncated JSON */
      "{\"sub\":\"alice\",\"exp\":1700000100}x",
  };
  imc_jwt_key k;
  imc_jwt_claims c;
  key_hs(&k);
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    ck_assert_msg(verify_claims(&k, &pol60, bad[i], &c) == IMC_ERR_AUTH, "%s",
                  bad[i]);

  char sub[IMC_ID_MAX + 2], pay[256];
  memset(sub, 'u', sizeof(sub) - 1);
  sub[IMC_ID_MAX + 1] = '\0';
  snprintf(pay, sizeof(pay), "{\"sub\":\"%s\",\"exp\":1700000100}", sub);
  ck_assert_int_eq(verify_claims(&k, &pol60, pay, &c), IMC_ERR_AUTH);
  sub[IMC_ID_MAX] = '\0';
  snprintf(pay, sizeof(pay), "{\"sub\":\"%s\",\"exp\":1700000100}", sub);
  ck_assert_int_eq(verify_claims(&k, &pol60, pay, &c), 0);
  ck_assert_str_eq(c.sub, sub);
  snprintf(pay, sizeof(pay),
           "{\"sub\":\"a\",\"did\":\"%s\",\"exp\":1700000100}", sub);
  ck_assert_int_eq(verify_claims(&k, &pol60, pay, &c), 0);
  ck_assert_str_eq(c.did, sub);

  /* Every id character, and a fractional exp truncated. */
  ck_assert_int_eq(verify_claims(&k, &pol60,
                                 "{\"sub\":\"A-z_0.9@x\",\"did\":\"d\",\"exp\":"
                                 "1700000100.99}",
                                 &c),
                   0);
  ck_assert_str_eq(c.sub, "A-z_0.9@x");
  ck_assert_str_eq(c.did, "d");
  ck_assert_int_eq(c.exp, 1700000100);
  ck_assert_int_eq(
      verify_claims(&k, &pol60, "{\"sub\":\"a\",\"exp\":1.7000001e9}", &c), 0);
  ck_assert_int_eq(c.exp, 1700000100);
  imc_jwt_key_clear(&k, NULL);
}
END_TEST

START_TEST(t_iss_aud) {
  imc_jwt_key k;
  imc_jwt_policy p = {"https://auth.example.com", "imchat", 60};
  imc_jwt_policy iss_only = {"https://auth.example.com", NULL, 60};
  imc_jwt_policy aud_only = {NULL, "imchat", 60};
  key_hs(&k);
#define CL "\"sub\":\"alice\",\"exp\":1700000100"
  static const char *const ok[] = {
      "{" CL ",\"iss\":\"https://auth.example.com\",\"aud\":\"imchat\"}",
      "{" CL ",\"iss\":\"https:\\/\\/auth.example.com\",\"aud\":[\"imchat\"]}",
      "{" CL ",\"iss\":\"https://auth.example.com\",\"aud\":[\"x\",\"imchat\","
      "\"y\"]}",
  };
  static const char *const bad[] = {
      "{" CL ",\"aud\":\"imchat\"}",
      "{" CL ",\"iss\":\"https://auth.example.com\"}",
      "{" CL ",\"iss\":\"https://auth.example.com/\",\"aud\":\"imchat\"}",
      "{" CL ",\"iss\":\"HTTPS://auth.example.com\",\"aud\":\"imchat\"}",
      "{" CL ",\"iss\":\"https://auth.example.co\",\"aud\":\"imchat\"}",
      "{" CL ",\"iss\":[\"https://auth.example.com\"],\"aud\":\"imchat\"}",
      "{" CL ",\"iss\":null,\"aud\":\"imchat\"}",
      "{" CL ",\"iss\":\"https://auth.example.com\",\"aud\":\"imchat2\"}",
      "{" CL ",\"iss\":\"https://auth.example.com\",\"aud\":\"Imchat\"}",
      "{" CL ",\"iss\":\"https://auth.example.com\",\"aud\":[]}",
      "{" CL ",\"iss\":\"https://auth.example.com\",\"aud\":[\"x\"]}",
      "{" CL ",\"iss\":\"https://auth.example.com\",\"aud\":[\"imchat\",1]}",
      "{" CL ",\"iss\":\"https://auth.example.com\",\"aud\":[[\"imchat\"]]}",
      "{" CL ",\"iss\":\"https://auth.example.com\",\"aud\":{\"a\":"
      "\"imchat\"}}",
      "{" CL ",\"iss\":\"https://auth.example.com\",\"aud\":\"imchat\","
      "\"aud\":\"imchat\"}",
      "{" CL ",\"iss\":\"https://auth.example.com\\u0000\",\"aud\":"
      "\"imchat\"}",
  };
  for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
    ck_assert_msg(verify_claims(&k, &p, ok[i], NULL) == 0, "%s", ok[i]);
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    ck_assert_msg(verify_claims(&k, &p, bad[i], NULL) == IMC_ERR_AUTH, "%s",
                  bad[i]);

  /* Each check applies only when configured. */
  ck_assert_int_eq(verify_claims(&k, &iss_only,
                                 "{" CL ",\"iss\":\"https://auth.example.com\","
                                 "\"aud\":\"other\"}",
                                 NULL),
                   0);
  ck_assert_int_eq(verify_claims(&k, &iss_only, "{" CL "}", NULL),
                   IMC_ERR_AUTH);
  ck_assert_int_eq(
      verify_claims(&k, &aud_only, "{" CL ",\"aud\":\"imchat\"}", NULL), 0);
  ck_assert_int_eq(
      verify_claims(&k, &pol60, "{" CL ",\"iss\":1,\"aud\":2}", NULL), 0);
#undef CL
  imc_jwt_key_clear(&k, NULL);
}
END_TEST

START_TEST(t_garbage) {
  imc_jwt_key k;
  char tok[TOK_MAX], pay[256], good[TOK_MAX];
  key_hs(&k);
  tok_hs(good, hs_hdr, payload(pay, NOW + 300), secret, strlen(secret));

  static const char *const bad[] = {
      "",
      ".",
      "..",
      "abc",
      "a.b",
      "a.b.c.d",
      "...",
      "eyJhbGciOiJIUzI1NiJ9..sig",
      ".eyJzdWIiOiJhIn0.sig",
      "e30*.e30.AAAA",
      "e30.e30.AA==",
      "e30=.e30.",
      "eyJhbGciOiJIUzI1NiJ9 .e30.",
      "bm90anNvbg.e30.",                  /* header "notjson" */
      "W10.e30.",                         /* header [] */
      "InN0ciI.e30.",                     /* header "str" */
      "e30.e30.",                         /* header {} */
      "eyJhbGciOiJIUzI1NiJ9.bm90anNvbg.", /* payload not JSON */
      "eyJhbGciOiJIUzI1NiJ9.e30",         /* two parts */
      "eyJhbGciOiJIUzI1NiJ9.e30.A",       /* impossible base64 length */
      "eyJhbGciOiJIUzI1NiJ9.e31.",        /* non-zero trailing bits */
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    ck_assert_msg(verify(bad[i], &k, &pol60, NULL) == IMC_ERR_AUTH, "%s",
                  bad[i]);
    imc_jwt_header h;
    int rv = imc_jwt_parse_header(bad[i], strlen(bad[i]), &h);
    ck_assert_msg(rv == IMC_ERR_AUTH || rv == 0, "%s", bad[i]);
  }
  ck_assert_int_eq(imc_jwt_verify(NULL, 0, &k, &pol60, NOW, NULL),
                   IMC_ERR_AUTH);
  ck_assert_int_eq(imc_jwt_verify(NULL, 10, &k, &pol60, NOW, NULL),
                   IMC_ERR_AUTH);

  /* Truncations of a good token: each length shorter is refused. */
  size_t n = strlen(good);
  for (size_t i = 0; i < n; i++)
    ck_assert_int_eq(imc_jwt_verify(good, i, &k, &pol60, NOW, NULL),
                     IMC_ERR_AUTH);
  ck_assert_int_eq(imc_jwt_verify(good, n, &k, &pol60, NOW, NULL), 0);

  /* Whitespace or a NUL inside is not skipped. */
  memcpy(tok, good, n + 1);
  tok[n - 3] = ' ';
  ck_assert_int_eq(verify(tok, &k, &pol60, NULL), IMC_ERR_AUTH);
  memcpy(tok, good, n + 1);
  tok[n - 3] = '\0';
  ck_assert_int_eq(imc_jwt_verify(tok, n, &k, &pol60, NOW, NULL), IMC_ERR_AUTH);
  imc_jwt_key_clear(&k, NULL);
}
END_TEST

START_TEST(t_length_limit) {
  imc_jwt_key k;
  char tok[TOK_MAX], pay[IMC_JWT_MAX_LEN];
  key_hs(&k);

  /* Grow a padding claim until the token passes the limit: every token
   * up to IMC_JWT_MAX_LEN verifies, every longer one is refused. */
  int saw_max = 0, saw_over = 0;
  for (size_t pad = 2900; pad < 3100; pad++) {
    int o =
        snprintf(pay, sizeof(pay),
                 "{\"sub\":\"a\",\"exp\":%" PRId64 ",\"pad\":\"", NOW + 300);
    memset(pay + o, 'x', pad);
    strcpy(pay + o + pad, "\"}");
    tok_hs(tok, hs_hdr, pay, secret, strlen(secret));
    size_t n = strlen(tok);
    int rv = verify(tok, &k, &pol60, NULL);
    if (n <= IMC_JWT_MAX_LEN) {
      ck_assert_int_eq(rv, 0);
      saw_max |= n > IMC_JWT_MAX_LEN - 4;
    } else {
      ck_assert_int_eq(rv, IMC_ERR_AUTH);
      saw_over = 1;
    }
  }
  ck_assert(saw_max && saw_over);
  imc_jwt_key_clear(&k, NULL);
}
END_TEST

START_TEST(t_parse_header) {
  imc_jwt_header h;
  char tok[TOK_MAX], hdr[512];
  static const struct {
    const char *hdr;
    imc_jwt_alg alg;
  } algs[] = {{"{\"alg\":\"HS256\"}", IMC_JWT_HS256},
              {"{\"alg\":\"RS256\"}", IMC_JWT_RS256},
              {"{\"alg\":\"ES256\"}", IMC_JWT_ES256},
              {"{\"alg\":\"ES256 \"}", IMC_JWT_NONE},
              {"{\"alg\":\"a-very-long-algorithm-name\"}", IMC_JWT_NONE}};
  for (size_t i = 0; i < sizeof(algs) / sizeof(algs[0]); i++) {
    tok_raw(tok, algs[i].hdr, "{}", "", 0);
    ck_assert_int_eq(imc_jwt_parse_header(tok, strlen(tok), &h), 0);
    ck_assert_int_eq(h.alg, algs[i].alg);
    ck_assert_str_eq(h.kid, "");
  }

  tok_raw(tok, "{\"alg\":\"RS256\",\"kid\":\"key-2024\"}", "{}", "x", 1);
  ck_assert_int_eq(imc_jwt_parse_header(tok, strlen(tok), &h), 0);
  ck_assert_int_eq(h.alg, IMC_JWT_RS256);
  ck_assert_str_eq(h.kid, "key-2024");

  char kid[200];
  memset(kid, 'k', sizeof(kid));
  snprintf(hdr, sizeof(hdr), "{\"alg\":\"RS256\",\"kid\":\"%.127s\"}", kid);
  tok_raw(tok, hdr, "{}", "", 0);
  ck_assert_int_eq(imc_jwt_parse_header(tok, strlen(tok), &h), 0);
  ck_assert_uint_eq(strlen(h.kid), 127);
  snprintf(hdr, sizeof(hdr), "{\"alg\":\"RS256\",\"kid\":\"%.128s\"}", kid);
  tok_raw(tok, hdr, "{}", "", 0);
  ck_assert_int_eq(imc_jwt_parse_header(tok, strlen(tok), &h), IMC_ERR_AUTH);

  static const char *const bad[] = {
      "{\"alg\":\"RS256\",\"kid\":5}",
      "{\"alg\":\"RS256\",\"kid\":\"a\\u0000b\"}",
      "{\"alg\":\"RS256\",\"crit\":[\"exp\"]}",
      "{\"alg\":\"RS256\",\"crit\":[]}",
      "{\"alg\":\"RS256\",\"alg\":\"RS256\"}",
      "{\"alg\":\"RS256\"",
      "{\"alg\":\"RS256\"}}",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    tok_raw(tok, bad[i], "{}", "", 0);
    ck_assert_msg(imc_jwt_parse_header(tok, strlen(tok), &h) == IMC_ERR_AUTH,
                  "%s", bad[i]);
  }

  /* A critical extension is refused by verification too. */
  imc_jwt_key k;
  char pay[256];
  key_hs(&k);
  tok_hs(tok, "{\"alg\":\"HS256\",\"b64\":false,\"crit\":[\"b64\"]}",
         payload(pay, NOW + 300), secret, strlen(secret));
  ck_assert_int_eq(verify(tok, &k, &pol60, NULL), IMC_ERR_AUTH);
  imc_jwt_key_clear(&k, NULL);
}
END_TEST

START_TEST(t_bad_key_argument) {
  imc_jwt_key k;
  char tok[TOK_MAX], pay[256];
  tok_hs(tok, hs_hdr, payload(pay, NOW + 300), secret, strlen(secret));
  ck_assert_int_eq(verify(tok, NULL, &pol60, NULL), IMC_ERR_INVALID_ARGUMENT);
  memset(&k, 0, sizeof(k));
  ck_assert_int_eq(verify(tok, &k, &pol60, NULL), IMC_ERR_INVALID_ARGUMENT);
  /* Clearing a zeroed key, or NULL, is harmless. */
  imc_jwt_key_clear(&k, NULL);
  imc_jwt_key_clear(NULL, NULL);
}
END_TEST

/* ---- keys ---- */

START_TEST(t_key_init_pem) {
  imc_jwt_key k;
  key_pem(&k, rsa_pem);
  ck_assert_int_eq(k.alg, IMC_JWT_RS256);
  ck_assert_ptr_null(k.secret);
  imc_jwt_key_clear(&k, NULL);
  key_pem(&k, ec_pem);
  ck_assert_int_eq(k.alg, IMC_JWT_ES256);
  imc_jwt_key_clear(&k, NULL);

  /* A PEM need not be NUL-terminated: only len bytes are read. */
  size_t n = strlen(ec_pem);
  char *copy = malloc(n);
  ck_assert_ptr_nonnull(copy);
  memcpy(copy, ec_pem, n);
  ck_assert_int_eq(imc_jwt_key_init_pem(&k, copy, n), 0);
  imc_jwt_key_clear(&k, NULL);
  free(copy);

  static const char junk[] = "-----BEGIN PUBLIC KEY-----\nAAAA\n"
                             "-----END PUBLIC KEY-----\n";
  const char *const bad[] = {ec384_pem,    ed_pem,
                             rsa_priv_pem, junk,
                             "not a pem",  "-----BEGIN PUBLIC KEY-----\n"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    memset(&k, 0x5a, sizeof(k));
    ck_assert_int_eq(imc_jwt_key_init_pem(&k, bad[i], strlen(bad[i])),
                     IMC_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(k.alg, IMC_JWT_NONE);
    ck_assert_ptr_null(k.pkey);
    ck_assert_ptr_null(k.secret);
  }
  ck_assert_int_eq(imc_jwt_key_init_pem(&k, rsa_pem, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_jwt_key_init_pem(&k, NULL, 10),
                   IMC_ERR_INVALID_ARGUMENT);
  /* Truncated in the middle of the base64 body. */
  ck_assert_int_eq(imc_jwt_key_init_pem(&k, rsa_pem, strlen(rsa_pem) / 2),
                   IMC_ERR_INVALID_ARGUMENT);
  /* OpenSSL's error queue is left as it was. */
  ck_assert_uint_eq(ERR_peek_error(), 0);
}
END_TEST

START_TEST(t_key_init_secret) {
  test_mem tm;
  imc_jwt_key k;
  test_mem_init(&tm);

  ck_assert_int_eq(
      imc_jwt_key_init_secret(&k, (const uint8_t *)"s", 1, &tm.mem), 0);
  ck_assert_int_eq(k.alg, IMC_JWT_HS256);
  ck_assert_uint_eq(k.secret_len, 1);
  ck_assert_ptr_null(k.pkey);
  ck_assert_int_eq(tm.live, 1);
  imc_jwt_key_clear(&k, &tm.mem);
  ck_assert_int_eq(tm.live, 0);
  ck_assert_ptr_null(k.secret);

  /* The key keeps its own copy of the secret. */
  uint8_t s[8] = "abcdefg";
  char tok[TOK_MAX], pay[256];
  ck_assert_int_eq(imc_jwt_key_init_secret(&k, s, 7, &tm.mem), 0);
  tok_hs(tok, hs_hdr, payload(pay, NOW + 300), "abcdefg", 7);
  memset(s, 0, sizeof(s));
  ck_assert_int_eq(verify(tok, &k, &pol60, NULL), 0);
  imc_jwt_key_clear(&k, &tm.mem);
  ck_assert_int_eq(tm.live, 0);

  ck_assert_int_eq(imc_jwt_key_init_secret(&k, s, 0, &tm.mem),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_jwt_key_init_secret(&k, NULL, 3, &tm.mem),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_jwt_key_init_secret(NULL, s, 3, &tm.mem),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tm.live, 0);
}
END_TEST

/* Failing each allocation in turn: every failure is IMC_ERR_NOMEM with
 * nothing leaked and the key left empty. */
START_TEST(t_key_init_secret_nomem) {
  test_mem tm;
  imc_jwt_key k;
  long n;
  test_mem_init(&tm);
  ck_assert_int_eq(imc_jwt_key_init_secret(&k, (const uint8_t *)secret,
                                           strlen(secret), &tm.mem),
                   0);
  n = tm.count;
  ck_assert_int_ge(n, 1);
  imc_jwt_key_clear(&k, &tm.mem);

  for (long fail = 0; fail < n; fail++) {
    test_mem_init(&tm);
    tm.fail_at = fail;
    memset(&k, 0x5a, sizeof(k));
    ck_assert_int_eq(imc_jwt_key_init_secret(&k, (const uint8_t *)secret,
                                             strlen(secret), &tm.mem),
                     IMC_ERR_NOMEM);
    ck_assert_int_eq(tm.live, 0);
    ck_assert_ptr_null(k.secret);
    ck_assert_int_eq(k.alg, IMC_JWT_NONE);
    imc_jwt_key_clear(&k, &tm.mem);
    ck_assert_int_eq(tm.live, 0);
  }
}
END_TEST

/* ---- signing ---- */

START_TEST(t_sign_issuer_audience) {
  imc_jwt_key k;
  imc_jwt_claims c;
  char tok[TOK_MAX];
  key_hs(&k);
  int n = imc_jwt_sign_hs256((const uint8_t *)secret, strlen(secret), "alice",
                             NULL, "https://id.example/\"q\"", "imchat", NOW,
                             NOW + 300, tok, sizeof(tok));
  ck_assert_int_gt(n, 0);
  imc_jwt_policy pol = {"https://id.example/\"q\"", "imchat", 60};
  ck_assert_int_eq(verify(tok, &k, &pol, &c), 0);
  imc_jwt_policy other = {"https://other.example/", NULL, 60};
  ck_assert_int_eq(verify(tok, &k, &other, &c), IMC_ERR_AUTH);
  imc_jwt_policy aud = {NULL, "someone-else", 60};
  ck_assert_int_eq(verify(tok, &k, &aud, &c), IMC_ERR_AUTH);
  /* Control characters cannot be signed into a claim. */
  ck_assert_int_eq(imc_jwt_sign_hs256((const uint8_t *)secret, strlen(secret),
                                      "alice", NULL, "bad\nissuer", NULL, NOW,
                                      NOW + 1, tok, sizeof(tok)),
                   IMC_ERR_INVALID_ARGUMENT);
  imc_jwt_key_clear(&k, NULL);
}
END_TEST

START_TEST(t_sign_roundtrip) {
  imc_jwt_key k;
  imc_jwt_claims c;
  char tok[TOK_MAX];
  key_hs(&k);

  int n = imc_jwt_sign_hs256((const uint8_t *)secret, strlen(secret), "alice",
                             "phone-1", NULL, NULL, NOW - 10, NOW + 300, tok,
                             sizeof(tok));
  ck_assert_int_gt(n, 0);
  ck_assert_uint_eq(strlen(tok), (size_t)n);
  ck_assert_int_eq(verify(tok, &k, &pol60, &c), 0);
  ck_assert_str_eq(c.sub, "alice");
  ck_assert_str_eq(c.did, "phone-1");
  ck_assert_int_eq(c.exp, NOW + 300);

  imc_jwt_header h;
  ck_assert_int_eq(imc_jwt_parse_header(tok, (size_t)n, &h), 0);
  ck_assert_int_eq(h.alg, IMC_JWT_HS256);

  /* The signature matches an independent HMAC over the same input. */
  char want[TOK_MAX];
  size_t sl = (size_t)(strrchr(tok, '.') - tok);
  unsigned char mac[32];
  unsigned int maclen;
  HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)tok, sl, mac,
       &maclen);
  b64url(mac, maclen, want);
  ck_assert_str_eq(tok + sl + 1, want);

  /* No did when NULL or empty. */
  for (int i = 0; i < 2; i++) {
    n = imc_jwt_sign_hs256((const uint8_t *)secret, strlen(secret), "bob",
                           i ? "" : NULL, NULL, NULL, NOW, NOW + 5, tok,
                           sizeof(tok));
    ck_assert_int_gt(n, 0);
    ck_assert_int_eq(verify(tok, &k, &pol60, &c), 0);
    ck_assert_str_eq(c.sub, "bob");
    ck_assert_str_eq(c.did, "");
  }

  /* Signed already expired, or not yet valid by iat. */
  n = imc_jwt_sign_hs256((const uint8_t *)secret, strlen(secret), "bob", NULL,
                         NULL, NULL, NOW - 1000, NOW - 500, tok, sizeof(tok));
  ck_assert_int_eq(verify(tok, &k, &pol60, &c), IMC_ERR_EXPIRED);
  n = imc_jwt_sign_hs256((const uint8_t *)secret, strlen(secret), "bob", NULL,
                         NULL, NULL, NOW + 1000, NOW + 5000, tok, sizeof(tok));
  ck_assert_int_eq(verify(tok, &k, &pol60, &c), IMC_ERR_EXPIRED);

  /* Another secret does not verify. */
  n = imc_jwt_sign_hs256((const uint8_t *)"x", 1, "bob", NULL, NULL, NULL, NOW,
                         NOW + 5, tok, sizeof(tok));
  ck_assert_int_gt(n, 0);
  ck_assert_int_eq(verify(tok, &k, &pol60, &c), IMC_ERR_AUTH);

  /* Longest ids and extreme times fit. */
  char id[IMC_ID_MAX + 1];
  memset(id, 'i', IMC_ID_MAX);
  id[IMC_ID_MAX] = '\0';
  n = imc_jwt_sign_hs256((const uint8_t *)secret, strlen(secret), id, id, NULL,
                         NULL, INT64_MIN, INT64_MAX, tok, sizeof(tok));
  ck_assert_int_gt(n, 0);
  ck_assert_int_eq(verify(tok, &k, &pol60, &c), 0);
  ck_assert_str_eq(c.sub, id);
  ck_assert_str_eq(c.did, id);
  ck_assert_int_eq(c.exp, INT64_MAX);

  check_tamper(tok, &k);
  imc_jwt_key_clear(&k, NULL);
}
END_TEST

START_TEST(t_sign_errors) {
  char tok[TOK_MAX];
  const uint8_t *s = (const uint8_t *)secret;
  size_t sl = strlen(secret);
  char id65[IMC_ID_MAX + 2];
  memset(id65, 'a', IMC_ID_MAX + 1);
  id65[IMC_ID_MAX + 1] = '\0';

  ck_assert_int_eq(
      imc_jwt_sign_hs256(s, 0, "a", NULL, NULL, NULL, 0, 1, tok, 512),
      IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(
      imc_jwt_sign_hs256(NULL, 5, "a", NULL, NULL, NULL, 0, 1, tok, 512),
      IMC_ERR_INVALID_ARGUMENT);
  static const char *const bad_ids[] = {"",     "a b",         "a\"b",
                                        "a\\b", "caf\xc3\xa9", "a/b"};
  for (size_t i = 0; i < sizeof(bad_ids) / sizeof(bad_ids[0]); i++) {
    ck_assert_int_eq(
        imc_jwt_sign_hs256(s, sl, bad_ids[i], NULL, NULL, NULL, 0, 1, tok, 512),
        IMC_ERR_INVALID_ARGUMENT);
    if (*bad_ids[i])
      ck_assert_int_eq(imc_jwt_sign_hs256(s, sl, "a", bad_ids[i], NULL, NULL, 0,
                                          1, tok, 512),
                       IMC_ERR_INVALID_ARGUMENT);
  }
  ck_assert_int_eq(
      imc_jwt_sign_hs256(s, sl, NULL, NULL, NULL, NULL, 0, 1, tok, 512),
      IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(
      imc_jwt_sign_hs256(s, sl, id65, NULL, NULL, NULL, 0, 1, tok, 512),
      IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(
      imc_jwt_sign_hs256(s, sl, "a", id65, NULL, NULL, 0, 1, tok, 512),
      IMC_ERR_INVALID_ARGUMENT);

  /* Every capacity below the token's size plus its NUL is too small, and
   * nothing is written past it. */
  int n = imc_jwt_sign_hs256(s, sl, "alice", "d", NULL, NULL, NOW, NOW + 1, tok,
                             sizeof(tok));
  ck_assert_int_gt(n, 0);
  char want[TOK_MAX];
  memcpy(want, tok, (size_t)n + 1);
  for (size_t cap = 0; cap <= (size_t)n; cap++) {
    char *buf = malloc(cap ? cap : 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(imc_jwt_sign_hs256(s, sl, "alice", "d", NULL, NULL, NOW,
                                        NOW + 1, cap ? buf : NULL, cap),
                     IMC_ERR_TOO_LARGE);
    if (cap)
      ck_assert_int_eq(buf[0], '\0');
    free(buf);
  }
  char *buf = malloc((size_t)n + 1);
  ck_assert_ptr_nonnull(buf);
  ck_assert_int_eq(imc_jwt_sign_hs256(s, sl, "alice", "d", NULL, NULL, NOW,
                                      NOW + 1, buf, (size_t)n + 1),
                   n);
  ck_assert_str_eq(buf, want);
  free(buf);
}
END_TEST

static Suite *jwt_suite(void) {
  Suite *s = suite_create("jwt");
  TCase *tc = tcase_create("json");
  tcase_add_test(tc, t_json_valid);
  tcase_add_test(tc, t_json_invalid);
  tcase_add_test(tc, t_json_depth);
  tcase_add_test(tc, t_json_member);
  tcase_add_test(tc, t_json_string);
  tcase_add_test(tc, t_json_int);
  tcase_add_test(tc, t_json_array);
  suite_add_tcase(s, tc);

  tc = tcase_create("verify");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, t_hs256_valid);
  tcase_add_test(tc, t_rs256_valid);
  tcase_add_test(tc, t_es256_valid);
  tcase_add_test(tc, t_wrong_key);
  tcase_add_test(tc, t_tamper);
  tcase_add_test(tc, t_signature_lengths);
  tcase_add_test(tc, t_alg_none);
  tcase_add_test(tc, t_key_confusion);
  tcase_add_test(tc, t_time);
  tcase_add_test(tc, t_claims);
  tcase_add_test(tc, t_iss_aud);
  tcase_add_test(tc, t_garbage);
  tcase_add_test(tc, t_length_limit);
  tcase_add_test(tc, t_parse_header);
  tcase_add_test(tc, t_bad_key_argument);
  suite_add_tcase(s, tc);

  tc = tcase_create("keys");
  tcase_add_test(tc, t_key_init_pem);
  tcase_add_test(tc, t_key_init_secret);
  tcase_add_test(tc, t_key_init_secret_nomem);
  suite_add_tcase(s, tc);

  tc = tcase_create("sign");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, t_sign_roundtrip);
  tcase_add_test(tc, t_sign_issuer_audience);
  tcase_add_test(tc, t_sign_errors);
  suite_add_tcase(s, tc);
  return s;
}

/* Keys are made once, before the runner forks a child per test. */
static void make_keys(void) {
  rsa_priv = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
  rsa_priv2 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
  ec_priv = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  ec_priv2 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  EVP_PKEY *ec384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
  EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
  if (!rsa_priv || !rsa_priv2 || !ec_priv || !ec_priv2 || !ec384 || !ed) {
    fprintf(stderr, "key generation failed\n");
    exit(EXIT_FAILURE);
  }
  rsa_pem = pub_pem(rsa_priv);
  ec_pem = pub_pem(ec_priv);
  ec384_pem = pub_pem(ec384);
  ed_pem = pub_pem(ed);
  rsa_priv_pem = priv_pem(rsa_priv);
  EVP_PKEY_free(ec384);
  EVP_PKEY_free(ed);
}

static void free_keys(void) {
  EVP_PKEY_free(rsa_priv);
  EVP_PKEY_free(rsa_priv2);
  EVP_PKEY_free(ec_priv);
  EVP_PKEY_free(ec_priv2);
  free(rsa_pem);
  free(ec_pem);
  free(ec384_pem);
  free(ed_pem);
  free(rsa_priv_pem);
}

int main(void) {
  make_keys();
  SRunner *sr = srunner_create(jwt_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  free_keys();
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
