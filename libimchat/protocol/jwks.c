/*
 * JWK Sets (imchat/jwks.h): the "keys" array read with the JSON scanner,
 * each usable RSA or P-256 key rebuilt with OpenSSL and kept as PEM.
 * Input is decoded into stack buffers sized for the largest key we take;
 * the set is one allocation plus one per PEM.
 */
#include "protocol/base64.h"
#include "protocol/json.h"
#include "util/alloc.h"

#include <imchat/jwks.h>

#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>

#define RSA_MIN_BYTES 256  /* 2048 bits: shorter moduli are refused */
#define RSA_MAX_BYTES 1024 /* 8192 bits: bounds the cost of a verify */
#define RSA_E_MAX_BYTES 8
#define P256_COORD 32
/* Members longer than this (in characters) belong to no key we take. */
#define B64_MAX (RSA_MAX_BYTES / 3 * 4 + 8)
#define SHORT_MAX 16 /* kty, crv, alg, use, key_ops items */

typedef struct jwk {
  char alg[8];
  char kid[IMC_JWKS_KID_MAX + 1];
  char *pem;
  size_t pem_len;
} jwk;

struct imc_jwks {
  imc_mem mem;
  size_t n, ignored;
  jwk keys[];
};

/* The string member name of obj into out (NUL-terminated): its length,
 * IMC_ERR_NOT_FOUND if absent, or another negative code if it is not a
 * string that fits. */
static ssize_t member_str(const imc_json_value *obj, const char *name,
                          char *out, size_t cap) {
  imc_json_value v;
  int rv = imc_json_member(obj, name, &v);
  if (rv < 0)
    return rv;
  return imc_json_string(&v, out, cap);
}

/* 1 if the string member name equals want; absent_ok if it may be
 * absent. */
static int member_is(const imc_json_value *obj, const char *name,
                     const char *want, int absent_ok) {
  char s[SHORT_MAX];
  ssize_t n = member_str(obj, name, s, sizeof(s));
  if (n == IMC_ERR_NOT_FOUND)
    return absent_ok;
  return n >= 0 && strcmp(s, want) == 0;
}

static int absent_or(const imc_json_value *obj, const char *name,
                     const char *want) {
  return member_is(obj, name, want, 1);
}

/* 1 if key_ops is absent or an array of strings holding "verify". */
static int may_verify(const imc_json_value *obj) {
  imc_json_value ops, e;
  int rv = imc_json_member(obj, "key_ops", &ops);
  if (rv == IMC_ERR_NOT_FOUND)
    return 1;
  if (rv < 0 || ops.type != IMC_JSON_ARRAY)
    return 0;
  size_t pos = 0;
  int found = 0;
  char s[SHORT_MAX];
  while ((rv = imc_json_array_next(&ops, &pos, &e)) == 1) {
    ssize_t n = imc_json_string(&e, s, sizeof(s));
    if (n == IMC_ERR_TOO_LARGE)
      continue; /* an operation we do not know */
    if (n < 0)
      return 0;
    if (strcmp(s, "verify") == 0)
      found = 1;
  }
  return rv == 0 && found;
}

/* Decodes the base64url member name into out (B64_MAX / 4 * 3 + 3
 * bytes); its decoded length, or -1. */
static ssize_t member_b64(const imc_json_value *obj, const char *name,
                          uint8_t *out) {
  char text[B64_MAX + 1];
  ssize_t n = member_str(obj, name, text, sizeof(text));
  size_t len;
  if (n <= 0 || imc_base64_decode(text, (size_t)n, out, &len) < 0)
    return -1;
  return (ssize_t)len;
}

/* Makes a public key of type name ("RSA", "EC") from params. */
static EVP_PKEY *from_params(const char *name, OSSL_PARAM *params) {
  EVP_PKEY *pkey = NULL;
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, name, NULL);
  if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
      EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
    pkey = NULL;
  EVP_PKEY_CTX_free(ctx);
  return pkey;
}

static EVP_PKEY *rsa_key(const imc_json_value *obj) {
  uint8_t n[B64_MAX], e[B64_MAX];
  ssize_t nl = member_b64(obj, "n", n), el = member_b64(obj, "e", e);
  if (nl < 0 || el <= 0 || el > RSA_E_MAX_BYTES)
    return NULL;
  const uint8_t *np = n;
  while (nl > 0 && *np == 0) { /* a leading zero is not part of the size */
    np++;
    nl--;
  }
  if (nl < RSA_MIN_BYTES || nl > RSA_MAX_BYTES || (np[nl - 1] & 1) == 0 ||
      (e[el - 1] & 1) == 0)
    return NULL;
  EVP_PKEY *pkey = NULL;
  OSSL_PARAM *params = NULL;
  OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
  BIGNUM *bn = BN_bin2bn(np, (int)nl, NULL);
  BIGNUM *be = BN_bin2bn(e, (int)el, NULL);
  if (bld != NULL && bn != NULL && be != NULL && !BN_is_one(be) &&
      OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) == 1 &&
      OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) == 1 &&
      (params = OSSL_PARAM_BLD_to_param(bld)) != NULL)
    pkey = from_params("RSA", params);
  OSSL_PARAM_free(params);
  OSSL_PARAM_BLD_free(bld);
  BN_free(bn);
  BN_free(be);
  return pkey;
}

static EVP_PKEY *ec_key(const imc_json_value *obj) {
  uint8_t x[B64_MAX], y[B64_MAX];
  uint8_t point[1 + 2 * P256_COORD];
  char group[] = "prime256v1";
  if (!member_is(obj, "crv", "P-256", 0) ||
      member_b64(obj, "x", x) != P256_COORD ||
      member_b64(obj, "y", y) != P256_COORD)
    return NULL;
  point[0] = 0x04; /* uncompressed */
  memcpy(point + 1, x, P256_COORD);
  memcpy(point + 1 + P256_COORD, y, P256_COORD);
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0),
      OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point,
                                        sizeof(point)),
      OSSL_PARAM_construct_end()};
  EVP_PKEY *pkey = from_params("EC", params);
  if (pkey == NULL)
    return NULL;
  /* The point must lie on the curve and not be the identity. */
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
  int ok = ctx != NULL && EVP_PKEY_public_check(ctx) == 1;
  EVP_PKEY_CTX_free(ctx);
  if (!ok) {
    EVP_PKEY_free(pkey);
    return NULL;
  }
  return pkey;
}

/* Writes pkey as PEM into k->pem. Returns 0 or IMC_ERR_NOMEM. */
static int to_pem(const imc_mem *mem, EVP_PKEY *pkey, jwk *k) {
  int rv = IMC_ERR_NOMEM;
  char *p;
  BIO *b = BIO_new(BIO_s_mem());
  if (b == NULL || PEM_write_bio_PUBKEY(b, pkey) != 1)
    goto out;
  long len = BIO_get_mem_data(b, &p);
  if (len <= 0 || (k->pem = imc_strndup(mem, p, (size_t)len)) == NULL)
    goto out;
  k->pem_len = (size_t)len;
  rv = 0;
out:
  BIO_free(b);
  return rv;
}

/*
 * Reads one entry of "keys" into k. Returns 1 for a usable key, 0 for an
 * entry to ignore, or IMC_ERR_NOMEM.
 */
static int read_key(const imc_mem *mem, const imc_json_value *obj, jwk *k) {
  char kty[SHORT_MAX];
  if (obj->type != IMC_JSON_OBJECT ||
      member_str(obj, "kty", kty, sizeof(kty)) < 0 ||
      !absent_or(obj, "use", "sig") || !may_verify(obj))
    return 0;
  ssize_t n = member_str(obj, "kid", k->kid, sizeof(k->kid));
  if (n == IMC_ERR_NOT_FOUND)
    k->kid[0] = '\0';
  else if (n < 0)
    return 0;

  EVP_PKEY *pkey = NULL;
  if (strcmp(kty, "RSA") == 0 && absent_or(obj, "alg", "RS256")) {
    strcpy(k->alg, "RS256");
    pkey = rsa_key(obj);
  } else if (strcmp(kty, "EC") == 0 && absent_or(obj, "alg", "ES256")) {
    strcpy(k->alg, "ES256");
    pkey = ec_key(obj);
  }
  if (pkey == NULL)
    return 0;
  int rv = to_pem(mem, pkey, k);
  EVP_PKEY_free(pkey);
  return rv < 0 ? rv : 1;
}

static int read_keys(imc_jwks *set, const imc_json_value *keys) {
  imc_json_value e;
  size_t pos = 0;
  int rv;
  while ((rv = imc_json_array_next(keys, &pos, &e)) == 1) {
    jwk *k = &set->keys[set->n];
    if ((rv = read_key(&set->mem, &e, k)) < 0)
      return rv;
    if (rv == 1)
      set->n++;
    else
      set->ignored++;
  }
  return rv;
}

int imc_jwks_new(imc_jwks **out, const char *doc, size_t len,
                 const imc_mem *mem) {
  if (out == NULL || doc == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (len > IMC_JWKS_DOC_MAX)
    return IMC_ERR_TOO_LARGE;
  if (mem == NULL)
    mem = imc_mem_default();

  imc_json_value root, keys, e;
  if (imc_json_parse(doc, len, &root) < 0 || root.type != IMC_JSON_OBJECT ||
      imc_json_member(&root, "keys", &keys) < 0 || keys.type != IMC_JSON_ARRAY)
    return IMC_ERR_PROTO;
  size_t entries = 0, pos = 0;
  while (imc_json_array_next(&keys, &pos, &e) == 1)
    if (++entries > IMC_JWKS_KEYS_MAX)
      return IMC_ERR_TOO_LARGE;

  imc_jwks *set = imc_calloc(mem, 1, sizeof(*set) + entries * sizeof(jwk));
  if (set == NULL)
    return IMC_ERR_NOMEM;
  set->mem = *mem;
  /* Leave the host's OpenSSL error queue as we found it. */
  ERR_set_mark();
  int rv = read_keys(set, &keys);
  ERR_pop_to_mark();
  if (rv < 0) {
    imc_jwks_del(set);
    return rv;
  }
  *out = set;
  return 0;
}

void imc_jwks_del(imc_jwks *set) {
  if (set == NULL)
    return;
  for (size_t i = 0; i < set->n; i++)
    imc_free(&set->mem, set->keys[i].pem);
  imc_free(&set->mem, set);
}

size_t imc_jwks_count(const imc_jwks *set) {
  return set != NULL ? set->n : 0;
}

size_t imc_jwks_ignored(const imc_jwks *set) {
  return set != NULL ? set->ignored : 0;
}

static void lend(const jwk *k, const char **alg, const char **kid,
                 const char **pem, size_t *pem_len) {
  if (alg != NULL)
    *alg = k->alg;
  if (kid != NULL)
    *kid = k->kid;
  if (pem != NULL)
    *pem = k->pem;
  if (pem_len != NULL)
    *pem_len = k->pem_len;
}

int imc_jwks_key(const imc_jwks *set, size_t i, const char **alg,
                 const char **kid, const char **pem, size_t *pem_len) {
  if (set == NULL || i >= set->n)
    return IMC_ERR_NOT_FOUND;
  lend(&set->keys[i], alg, kid, pem, pem_len);
  return 0;
}

int imc_jwks_find(const imc_jwks *set, const char *alg, const char *kid,
                  const char **pem, size_t *pem_len) {
  if (set == NULL || alg == NULL)
    return IMC_ERR_NOT_FOUND;
  const jwk *found = NULL;
  for (size_t i = 0; i < set->n; i++) {
    const jwk *k = &set->keys[i];
    if (strcmp(k->alg, alg) != 0 ||
        (kid != NULL && kid[0] != '\0' && strcmp(k->kid, kid) != 0))
      continue;
    if (found != NULL)
      return IMC_ERR_NOT_FOUND; /* ambiguous */
    found = k;
  }
  if (found == NULL)
    return IMC_ERR_NOT_FOUND;
  lend(found, NULL, NULL, pem, pem_len);
  return 0;
}
