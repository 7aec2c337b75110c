#include "testjwt.h"

#include <openssl/ec.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <stdlib.h>
#include <string.h>

EVP_PKEY *testjwt_rsa(void) {
  return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
}

EVP_PKEY *testjwt_p256(void) {
  return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
}

char *testjwt_pub_pem(EVP_PKEY *key) {
  BIO *b = BIO_new(BIO_s_mem());
  PEM_write_bio_PUBKEY(b, key);
  char *data;
  long n = BIO_get_mem_data(b, &data);
  char *pem = malloc((size_t)n + 1);
  memcpy(pem, data, (size_t)n);
  pem[n] = '\0';
  BIO_free(b);
  return pem;
}

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
    out[o++] = tbl[(v >> 18) & 63];
    out[o++] = tbl[(v >> 12) & 63];
    if (i + 1 < len)
      out[o++] = tbl[(v >> 6) & 63];
    if (i + 2 < len)
      out[o++] = tbl[v & 63];
  }
  return o;
}

size_t testjwt_make(char *out, size_t cap, const char *header,
                    const char *payload, testjwt_sig sig, EVP_PKEY *pkey,
                    const uint8_t *secret, size_t secret_len) {
  (void)cap;
  size_t n = b64url(out, (const uint8_t *)header, strlen(header));
  out[n++] = '.';
  n += b64url(out + n, (const uint8_t *)payload, strlen(payload));
  size_t signing_len = n;
  out[n++] = '.';
  uint8_t sigbuf[512];
  size_t sl = sizeof(sigbuf);
  if (sig == TJ_HS256) {
    unsigned int hl = 0;
    HMAC(EVP_sha256(), secret, (int)secret_len, (const uint8_t *)out,
         signing_len, sigbuf, &hl);
    sl = hl;
  } else if (sig == TJ_RS256 || sig == TJ_ES256) {
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pkey);
    EVP_DigestSign(md, sigbuf, &sl, (const uint8_t *)out, signing_len);
    EVP_MD_CTX_free(md);
    if (sig == TJ_ES256) {
      /* JWS wants the raw r||s, not DER. */
      const uint8_t *p = sigbuf;
      ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)sl);
      const BIGNUM *r, *s;
      ECDSA_SIG_get0(es, &r, &s);
      BN_bn2binpad(r, sigbuf, 32);
      BN_bn2binpad(s, sigbuf + 32, 32);
      ECDSA_SIG_free(es);
      sl = 64;
    }
  } else {
    sl = 0;
  }
  n += b64url(out + n, sigbuf, sl);
  out[n] = '\0';
  return n;
}
