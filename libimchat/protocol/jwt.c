/* JWT (compact JWS) verification with HS256, RS256 and ES256, and HS256
 * minting. Tokens are decoded into stack buffers; only key setup
 * allocates, apart from OpenSSL's own work. */
#include "protocol/jwt.h"

#include "util/alloc.h"
#include "protocol/json.h"

#include <imchat/jwt.h>

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/objects.h>
#include <openssl/pem.h>

/* The decoded size of any part of a token of at most IMC_JWT_MAX_LEN. */
#define JWT_PART_MAX (IMC_JWT_MAX_LEN / 4 * 3)
#define HS256_LEN 32
#define ES256_LEN 64

typedef struct jws_parts {
  const char *hdr, *pay, *sig;
  size_t hdr_len, pay_len, sig_len;
  size_t signed_len; /* header '.' payload: the signing input */
} jws_parts;

static int b64url_val(unsigned char c) {
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '-')
    return 62;
  if (c == '_')
    return 63;
  return -1;
}

/* Unpadded base64url (RFC 7515 2). Non-zero trailing bits are refused so
 * that each byte string has exactly one encoding. */
static int b64url_decode(const char *in, size_t n, uint8_t *out, size_t cap,
                         size_t *outlen) {
  if (n % 4 == 1 || n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0) > cap)
    return -1;
  uint32_t acc = 0;
  int bits = 0;
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    int v = b64url_val((unsigned char)in[i]);
    if (v < 0)
      return -1;
    acc = (acc << 6 | (uint32_t)v) & 0xFFFFFF;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (uint8_t)(acc >> bits);
    }
  }
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0)
    return -1;
  *outlen = o;
  return 0;
}

/* Returns the encoded length, or -1 if out (no NUL written) is too small. */
static ssize_t b64url_encode(const uint8_t *in, size_t n, char *out,
                             size_t cap) {
  static const char alpha[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  size_t need = n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0);
  if (need > cap)
    return -1;
  size_t o = 0, i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
    out[o++] = alpha[v >> 18];
    out[o++] = alpha[v >> 12 & 63];
    out[o++] = alpha[v >> 6 & 63];
    out[o++] = alpha[v & 63];
  }
  if (n - i == 1) {
    uint32_t v = (uint32_t)in[i] << 16;
    out[o++] = alpha[v >> 18];
    out[o++] = alpha[v >> 12 & 63];
  } else if (n - i == 2) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
    out[o++] = alpha[v >> 18];
    out[o++] = alpha[v >> 12 & 63];
    out[o++] = alpha[v >> 6 & 63];
  }
  return (ssize_t)o;
}

static int split_token(const char *tok, size_t len, jws_parts *jp) {
  if (tok == NULL || len == 0 || len > IMC_JWT_MAX_LEN)
    return IMC_ERR_AUTH;
  const char *end = tok + len;
  const char *d1 = memchr(tok, '.', len);
  if (d1 == NULL)
    return IMC_ERR_AUTH;
  const char *d2 = memchr(d1 + 1, '.', (size_t)(end - d1 - 1));
  if (d2 == NULL || memchr(d2 + 1, '.', (size_t)(end - d2 - 1)) != NULL)
    return IMC_ERR_AUTH;
  jp->hdr = tok;
  jp->hdr_len = (size_t)(d1 - tok);
  jp->pay = d1 + 1;
  jp->pay_len = (size_t)(d2 - d1 - 1);
  jp->sig = d2 + 1;
  jp->sig_len = (size_t)(end - d2 - 1);
  jp->signed_len = (size_t)(d2 - tok);
  if (jp->hdr_len == 0 || jp->pay_len == 0)
    return IMC_ERR_AUTH;
  return 0;
}

/* buf must outlive obj, which points into it. */
static int decode_object(const char *part, size_t n, uint8_t *buf,
                         imc_json_value *obj) {
  size_t len;
  if (b64url_decode(part, n, buf, JWT_PART_MAX, &len) < 0)
    return IMC_ERR_AUTH;
  if (imc_json_parse((const char *)buf, len, obj) < 0 ||
      obj->type != IMC_JSON_OBJECT)
    return IMC_ERR_AUTH;
  return 0;
}

static int parse_header(const jws_parts *jp, imc_jwt_header *h) {
  uint8_t buf[JWT_PART_MAX];
  imc_json_value obj, v;
  char alg[8];
  int rv;

  memset(h, 0, sizeof(*h));
  if ((rv = decode_object(jp->hdr, jp->hdr_len, buf, &obj)) < 0)
    return rv;

  if (imc_json_member(&obj, "alg", &v) < 0 || v.type != IMC_JSON_STRING)
    return IMC_ERR_AUTH;
  ssize_t n = imc_json_string(&v, alg, sizeof(alg));
  if (n == IMC_ERR_TOO_LARGE)
    h->alg = IMC_JWT_NONE; /* longer than any alg we know */
  else if (n < 0)
    return IMC_ERR_AUTH;
  else if (strcmp(alg, "HS256") == 0)
    h->alg = IMC_JWT_HS256;
  else if (strcmp(alg, "RS256") == 0)
    h->alg = IMC_JWT_RS256;
  else if (strcmp(alg, "ES256") == 0)
    h->alg = IMC_JWT_ES256;
  else
    h->alg = IMC_JWT_NONE;

  rv = imc_json_member(&obj, "kid", &v);
  if (rv == 0) {
    if (imc_json_string(&v, h->kid, sizeof(h->kid)) < 0)
      return IMC_ERR_AUTH;
  } else if (rv != IMC_ERR_NOT_FOUND) {
    return IMC_ERR_AUTH;
  }

  /* We implement no JWS extension, so any critical one is unknown to us
   * and the token must be refused (RFC 7515 4.1.11). */
  if (imc_json_member(&obj, "crit", NULL) != IMC_ERR_NOT_FOUND)
    return IMC_ERR_AUTH;
  return 0;
}

int imc_jwt_parse_header(const char *tok, size_t len, imc_jwt_header *h) {
  jws_parts jp;
  imc_jwt_header tmp;
  int rv;
  if ((rv = split_token(tok, len, &jp)) < 0)
    return rv;
  if ((rv = parse_header(&jp, &tmp)) < 0)
    return rv;
  if (h != NULL)
    *h = tmp;
  return 0;
}

static int verify_hs256(const imc_jwt_key *key, const uint8_t *data, size_t n,
                        const uint8_t *sig, size_t siglen) {
  uint8_t mac[EVP_MAX_MD_SIZE];
  unsigned int maclen = 0;
  if (key->secret == NULL || key->secret_len == 0 ||
      key->secret_len > INT_MAX || siglen != HS256_LEN)
    return IMC_ERR_AUTH;
  if (HMAC(EVP_sha256(), key->secret, (int)key->secret_len, data, n, mac,
           &maclen) == NULL ||
      maclen != HS256_LEN)
    return IMC_ERR_AUTH;
  int ok = CRYPTO_memcmp(mac, sig, HS256_LEN) == 0;
  OPENSSL_cleanse(mac, sizeof(mac));
  return ok ? 0 : IMC_ERR_AUTH;
}

static int verify_digest(EVP_PKEY *pkey, const uint8_t *data, size_t n,
                         const uint8_t *sig, size_t siglen) {
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  if (ctx == NULL)
    return IMC_ERR_NOMEM;
  int ok = EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pkey) == 1 &&
           EVP_DigestVerify(ctx, sig, siglen, data, n) == 1;
  EVP_MD_CTX_free(ctx);
  return ok ? 0 : IMC_ERR_AUTH;
}

static int verify_rs256(const imc_jwt_key *key, const uint8_t *data, size_t n,
                        const uint8_t *sig, size_t siglen) {
  if (key->pkey == NULL || EVP_PKEY_get_base_id(key->pkey) != EVP_PKEY_RSA)
    return IMC_ERR_AUTH;
  if (siglen == 0 || siglen != (size_t)EVP_PKEY_get_size(key->pkey))
    return IMC_ERR_AUTH;
  return verify_digest(key->pkey, data, n, sig, siglen);
}

/* JWS carries ES256 signatures as raw r||s (RFC 7518 3.4); OpenSSL wants
 * DER. */
static int verify_es256(const imc_jwt_key *key, const uint8_t *data, size_t n,
                        const uint8_t *sig, size_t siglen) {
  uint8_t der[80]; /* a P-256 ECDSA-Sig-Value is at most 72 bytes */
  uint8_t *dp = der;
  if (key->pkey == NULL || EVP_PKEY_get_base_id(key->pkey) != EVP_PKEY_EC ||
      siglen != ES256_LEN)
    return IMC_ERR_AUTH;

  ECDSA_SIG *es = ECDSA_SIG_new();
  BIGNUM *r = BN_bin2bn(sig, ES256_LEN / 2, NULL);
  BIGNUM *s = BN_bin2bn(sig + ES256_LEN / 2, ES256_LEN / 2, NULL);
  if (es == NULL || r == NULL || s == NULL || ECDSA_SIG_set0(es, r, s) != 1) {
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(es);
    return IMC_ERR_NOMEM;
  }
  int dlen = i2d_ECDSA_SIG(es, NULL);
  if (dlen <= 0 || (size_t)dlen > sizeof(der) ||
      i2d_ECDSA_SIG(es, &dp) != dlen) {
    ECDSA_SIG_free(es);
    return IMC_ERR_AUTH;
  }
  ECDSA_SIG_free(es);
  return verify_digest(key->pkey, data, n, der, (size_t)dlen);
}

static int verify_signature(const imc_jwt_key *key, const char *tok,
                            const jws_parts *jp) {
  uint8_t sig[JWT_PART_MAX];
  size_t siglen;
  int rv;
  if (b64url_decode(jp->sig, jp->sig_len, sig, sizeof(sig), &siglen) < 0)
    return IMC_ERR_AUTH;
  const uint8_t *data = (const uint8_t *)tok;

  /* Leave the host's OpenSSL error queue as we found it. */
  ERR_set_mark();
  switch (key->alg) {
  case IMC_JWT_HS256:
    rv = verify_hs256(key, data, jp->signed_len, sig, siglen);
    break;
  case IMC_JWT_RS256:
    rv = verify_rs256(key, data, jp->signed_len, sig, siglen);
    break;
  case IMC_JWT_ES256:
    rv = verify_es256(key, data, jp->signed_len, sig, siglen);
    break;
  default:
    rv = IMC_ERR_AUTH;
    break;
  }
  ERR_pop_to_mark();
  return rv;
}

static int64_t sat_add(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r))
    return b > 0 ? INT64_MAX : INT64_MIN;
  return r;
}

/* Reads an optional numeric claim: 1 if present, 0 if absent. */
static int numeric_claim(const imc_json_value *pl, const char *name,
                         int64_t *out) {
  imc_json_value v;
  int rv = imc_json_member(pl, name, &v);
  if (rv == IMC_ERR_NOT_FOUND)
    return 0;
  if (rv < 0 || v.type != IMC_JSON_NUMBER || imc_json_int64(&v, out) < 0)
    return IMC_ERR_AUTH;
  return 1;
}

/* Reads an id claim into out (IMC_ID_MAX + 1 bytes): 1 if present, 0 if
 * absent. */
static int id_claim(const imc_json_value *pl, const char *name, char *out) {
  imc_json_value v;
  int rv = imc_json_member(pl, name, &v);
  if (rv == IMC_ERR_NOT_FOUND)
    return 0;
  if (rv < 0 || v.type != IMC_JSON_STRING)
    return IMC_ERR_AUTH;
  ssize_t n = imc_json_string(&v, out, IMC_ID_MAX + 1);
  if (n < 0 || !imc_id_valid(out, (size_t)n))
    return IMC_ERR_AUTH;
  return 1;
}

static int string_is(const imc_json_value *v, const char *s) {
  char buf[JWT_PART_MAX];
  if (v->type != IMC_JSON_STRING)
    return 0;
  ssize_t n = imc_json_string(v, buf, sizeof(buf));
  return n >= 0 && (size_t)n == strlen(s) && memcmp(buf, s, (size_t)n) == 0;
}

/* aud is one string or an array of strings (RFC 7519 4.1.3). */
static int audience_ok(const imc_json_value *pl, const char *aud) {
  imc_json_value v, e;
  if (imc_json_member(pl, "aud", &v) < 0)
    return 0;
  if (v.type == IMC_JSON_STRING)
    return string_is(&v, aud);
  if (v.type != IMC_JSON_ARRAY)
    return 0;
  size_t pos = 0;
  int found = 0, rv;
  while ((rv = imc_json_array_next(&v, &pos, &e)) == 1) {
    if (e.type != IMC_JSON_STRING)
      return 0;
    if (string_is(&e, aud))
      found = 1;
  }
  return rv == 0 && found;
}

static int check_claims(const jws_parts *jp, const imc_jwt_policy *pol,
                        int64_t now_s, imc_jwt_claims *c) {
  uint8_t buf[JWT_PART_MAX];
  imc_json_value pl, v;
  int64_t exp, nbf = 0, iat = 0;
  int rv, has_nbf, has_iat;

  if ((rv = decode_object(jp->pay, jp->pay_len, buf, &pl)) < 0)
    return rv;

  if (numeric_claim(&pl, "exp", &exp) != 1)
    return IMC_ERR_AUTH;
  if ((has_nbf = numeric_claim(&pl, "nbf", &nbf)) < 0)
    return has_nbf;
  if ((has_iat = numeric_claim(&pl, "iat", &iat)) < 0)
    return has_iat;
  if (id_claim(&pl, "sub", c->sub) != 1)
    return IMC_ERR_AUTH;
  if ((rv = id_claim(&pl, "did", c->did)) < 0)
    return rv;

  if (pol->issuer != NULL) {
    if (imc_json_member(&pl, "iss", &v) < 0 || !string_is(&v, pol->issuer))
      return IMC_ERR_AUTH;
  }
  if (pol->audience != NULL && !audience_ok(&pl, pol->audience))
    return IMC_ERR_AUTH;

  int64_t leeway = pol->leeway_s > 0 ? pol->leeway_s : 0;
  if (sat_add(exp, leeway) <= now_s)
    return IMC_ERR_EXPIRED;
  if (has_nbf && nbf > sat_add(now_s, leeway))
    return IMC_ERR_EXPIRED;
  if (has_iat && iat > sat_add(now_s, leeway))
    return IMC_ERR_EXPIRED;
  c->exp = exp;
  return 0;
}

int imc_jwt_verify(const char *tok, size_t len, const imc_jwt_key *key,
                   const imc_jwt_policy *pol, int64_t now_s,
                   imc_jwt_claims *claims) {
  static const imc_jwt_policy default_policy = {NULL, NULL, 60};
  jws_parts jp;
  imc_jwt_header h;
  imc_jwt_claims c;
  int rv;

  if (key == NULL || key->alg == IMC_JWT_NONE)
    return IMC_ERR_INVALID_ARGUMENT;
  if (pol == NULL)
    pol = &default_policy;

  if ((rv = split_token(tok, len, &jp)) < 0)
    return rv;
  if ((rv = parse_header(&jp, &h)) < 0)
    return rv;
  /* The key decides the algorithm, never the token: this refuses "none"
   * and HS256 tokens made with a public key as the HMAC secret. */
  if (h.alg != key->alg)
    return IMC_ERR_AUTH;
  if ((rv = verify_signature(key, tok, &jp)) < 0)
    return rv;

  memset(&c, 0, sizeof(c));
  if ((rv = check_claims(&jp, pol, now_s, &c)) < 0)
    return rv;
  if (claims != NULL)
    *claims = c;
  return 0;
}

int imc_jwt_key_init_secret(imc_jwt_key *key, const uint8_t *secret, size_t len,
                            const imc_mem *mem) {
  if (key == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  memset(key, 0, sizeof(*key));
  if (secret == NULL || len == 0 || len > INT_MAX)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  uint8_t *copy = imc_malloc(mem, len);
  if (copy == NULL)
    return IMC_ERR_NOMEM;
  memcpy(copy, secret, len);
  key->alg = IMC_JWT_HS256;
  key->secret = copy;
  key->secret_len = len;
  return 0;
}

static int is_p256(const EVP_PKEY *pkey) {
  char name[64];
  size_t n = 0;
  if (EVP_PKEY_get_group_name(pkey, name, sizeof(name), &n) != 1)
    return 0;
  int nid = OBJ_sn2nid(name);
  if (nid == NID_undef)
    nid = EC_curve_nist2nid(name);
  return nid == NID_X9_62_prime256v1;
}

int imc_jwt_key_init_pem(imc_jwt_key *key, const char *pem, size_t len) {
  if (key == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  memset(key, 0, sizeof(*key));
  if (pem == NULL || len == 0 || len > INT_MAX)
    return IMC_ERR_INVALID_ARGUMENT;

  ERR_set_mark();
  int rv = IMC_ERR_INVALID_ARGUMENT;
  EVP_PKEY *pkey = NULL;
  BIO *bio = BIO_new_mem_buf(pem, (int)len);
  if (bio == NULL) {
    rv = IMC_ERR_NOMEM;
    goto out;
  }
  pkey = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
  if (pkey == NULL)
    goto out;
  switch (EVP_PKEY_get_base_id(pkey)) {
  case EVP_PKEY_RSA:
    key->alg = IMC_JWT_RS256;
    break;
  case EVP_PKEY_EC:
    if (is_p256(pkey))
      key->alg = IMC_JWT_ES256;
    break;
  default:
    break;
  }
  if (key->alg != IMC_JWT_NONE) {
    key->pkey = pkey;
    pkey = NULL;
    rv = 0;
  }
out:
  EVP_PKEY_free(pkey);
  BIO_free(bio);
  ERR_pop_to_mark();
  return rv;
}

void imc_jwt_key_clear(imc_jwt_key *key, const imc_mem *mem) {
  if (key == NULL)
    return;
  if (key->secret != NULL) {
    OPENSSL_cleanse(key->secret, key->secret_len);
    imc_free(mem != NULL ? mem : imc_mem_default(), key->secret);
  }
  EVP_PKEY_free(key->pkey);
  memset(key, 0, sizeof(*key));
}

/* Appends ,"name":"value" with JSON escaping; 0 or -1 if it cannot. */
static int put_claim(char *buf, size_t cap, size_t *len, const char *name,
                     const char *value) {
  if (value == NULL || *value == '\0')
    return 0;
  if (strnlen(value, 257) > 256)
    return -1;
  int n = snprintf(buf + *len, cap - *len, ",\"%s\":\"", name);
  if (n < 0 || (size_t)n >= cap - *len)
    return -1;
  *len += (size_t)n;
  for (const char *p = value; *p; p++) {
    unsigned char c = (unsigned char)*p;
    if (c < 0x20 || c == 0x7f)
      return -1;
    if (*len + 3 >= cap)
      return -1;
    if (c == '"' || c == '\\')
      buf[(*len)++] = '\\';
    buf[(*len)++] = (char)c;
  }
  buf[(*len)++] = '"';
  buf[*len] = '\0';
  return 0;
}

IMC_EXTERN int imc_jwt_sign_hs256(const uint8_t *secret, size_t secret_len,
                                  const char *user_id, const char *device_id,
                                  const char *issuer, const char *audience,
                                  int64_t iat_s, int64_t exp_s, char *out,
                                  size_t outcap) {
  /* base64url of {"alg":"HS256","typ":"JWT"} */
  static const char hdr[] = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";
  char payload[1024];
  uint8_t mac[EVP_MAX_MD_SIZE];
  unsigned int maclen = 0;

  if (secret == NULL || secret_len == 0 || secret_len > INT_MAX ||
      user_id == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (!imc_id_valid(user_id, strnlen(user_id, IMC_ID_MAX + 1)))
    return IMC_ERR_INVALID_ARGUMENT;
  if (device_id != NULL && *device_id != '\0' &&
      !imc_id_valid(device_id, strnlen(device_id, IMC_ID_MAX + 1)))
    return IMC_ERR_INVALID_ARGUMENT;
  if (out == NULL && outcap > 0)
    return IMC_ERR_INVALID_ARGUMENT;
  if (outcap > 0)
    out[0] = '\0';

  /* Valid ids need no JSON escaping. */
  size_t n =
      (size_t)snprintf(payload, sizeof(payload), "{\"sub\":\"%s\"", user_id);
  if (put_claim(payload, sizeof(payload), &n, "did", device_id) < 0 ||
      put_claim(payload, sizeof(payload), &n, "iss", issuer) < 0 ||
      put_claim(payload, sizeof(payload), &n, "aud", audience) < 0)
    return IMC_ERR_INVALID_ARGUMENT;
  int m = snprintf(payload + n, sizeof(payload) - n,
                   ",\"iat\":%" PRId64 ",\"exp\":%" PRId64 "}", iat_s, exp_s);
  if (m < 0 || (size_t)m >= sizeof(payload) - n)
    return IMC_ERR_INTERNAL;
  n += (size_t)m;

  size_t hlen = sizeof(hdr) - 1;
  if (outcap < hlen + 1)
    return IMC_ERR_TOO_LARGE;
  memcpy(out, hdr, hlen);
  out[hlen] = '.';
  size_t o = hlen + 1;
  ssize_t e = b64url_encode((const uint8_t *)payload, n, out + o, outcap - o);
  if (e < 0)
    goto too_large;
  o += (size_t)e;

  ERR_set_mark();
  const unsigned char *ok = HMAC(EVP_sha256(), secret, (int)secret_len,
                                 (const uint8_t *)out, o, mac, &maclen);
  ERR_pop_to_mark();
  if (ok == NULL || maclen != HS256_LEN) {
    out[0] = '\0';
    return IMC_ERR_NOMEM;
  }
  if (o + 1 > outcap)
    goto too_large;
  out[o++] = '.';
  e = b64url_encode(mac, HS256_LEN, out + o, outcap - o);
  OPENSSL_cleanse(mac, sizeof(mac));
  if (e < 0)
    goto too_large;
  o += (size_t)e;
  if (o + 1 > outcap || o > INT_MAX)
    goto too_large;
  out[o] = '\0';
  return (int)o;

too_large:
  OPENSSL_cleanse(mac, sizeof(mac));
  out[0] = '\0';
  return IMC_ERR_TOO_LARGE;
}
