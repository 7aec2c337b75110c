/* Sealing of stored bodies with AES-256-GCM, see seal.h. */
#include "backends/seal.h"
#include "util/hex.h"
#include "util/lines.h"

#include "util/alloc.h"

#include <limits.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define NONCE_LEN 12
#define TAG_LEN 16

typedef struct seal_key {
  uint8_t key[IMC_SEAL_KEY_LEN];
  uint8_t id_len;
  char id[IMC_SEAL_KEY_ID_MAX + 1];
} seal_key;

struct imc_keyring {
  imc_mem mem;
  EVP_CIPHER *cipher; /* fetched once: implicit fetches cost a lookup */
  seal_key *keys;     /* keys[0] seals */
  size_t n, cap;
};

static int id_char(uint8_t c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
}

static int id_valid(const uint8_t *id, size_t len) {
  if (len == 0 || len > IMC_SEAL_KEY_ID_MAX)
    return 0;
  for (size_t i = 0; i < len; i++)
    if (!id_char(id[i]))
      return 0;
  return 1;
}

int imc_keyring_new(imc_keyring **out, const imc_mem *mem) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_keyring *kr = imc_calloc(mem, 1, sizeof(*kr));
  if (kr == NULL)
    return IMC_ERR_NOMEM;
  kr->mem = *mem;
  kr->cipher = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
  if (kr->cipher == NULL) {
    imc_free(mem, kr);
    return IMC_ERR_UNAVAILABLE;
  }
  *out = kr;
  return 0;
}

void imc_keyring_del(imc_keyring *kr) {
  if (kr == NULL)
    return;
  if (kr->keys != NULL)
    OPENSSL_cleanse(kr->keys, kr->cap * sizeof(*kr->keys));
  imc_free(&kr->mem, kr->keys);
  EVP_CIPHER_free(kr->cipher);
  imc_free(&kr->mem, kr);
}

size_t imc_keyring_size(const imc_keyring *kr) {
  return kr == NULL ? 0 : kr->n;
}

static const seal_key *find_key(const imc_keyring *kr, const uint8_t *id,
                                size_t len) {
  for (size_t i = 0; i < kr->n; i++)
    if (kr->keys[i].id_len == len && memcmp(kr->keys[i].id, id, len) == 0)
      return &kr->keys[i];
  return NULL;
}

int imc_keyring_add(imc_keyring *kr, const char *key_id,
                    const uint8_t key[IMC_SEAL_KEY_LEN]) {
  if (kr == NULL || key_id == NULL || key == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  size_t id_len = strnlen(key_id, IMC_SEAL_KEY_ID_MAX + 1);
  if (!id_valid((const uint8_t *)key_id, id_len))
    return IMC_ERR_INVALID_ARGUMENT;
  if (find_key(kr, (const uint8_t *)key_id, id_len) != NULL)
    return IMC_ERR_EXISTS;
  if (kr->n == kr->cap) {
    /* Not realloc: the old block must be wiped before it is freed. */
    size_t ncap = kr->cap ? kr->cap * 2 : 4;
    seal_key *nk = imc_malloc(&kr->mem, ncap * sizeof(*nk));
    if (nk == NULL)
      return IMC_ERR_NOMEM;
    if (kr->n > 0) {
      memcpy(nk, kr->keys, kr->n * sizeof(*nk));
      OPENSSL_cleanse(kr->keys, kr->cap * sizeof(*kr->keys));
    }
    imc_free(&kr->mem, kr->keys);
    kr->keys = nk;
    kr->cap = ncap;
  }
  seal_key *k = &kr->keys[kr->n++];
  memcpy(k->key, key, IMC_SEAL_KEY_LEN);
  memcpy(k->id, key_id, id_len);
  k->id[id_len] = '\0';
  k->id_len = (uint8_t)id_len;
  return 0;
}

/* Parses one "KEY_ID HEX64" line, p[0..n) trimmed and non-empty. */
static int parse_key_line(imc_keyring *kr, const uint8_t *p, size_t n) {
  size_t i = 0;
  while (i < n && !imc_is_blank(p[i]))
    i++;
  size_t id_len = i;
  while (i < n && imc_is_blank(p[i]))
    i++;
  const uint8_t *hex = p + i;
  if (!id_valid(p, id_len) || n - i != 2 * IMC_SEAL_KEY_LEN)
    return IMC_ERR_INVALID_ARGUMENT;
  uint8_t key[IMC_SEAL_KEY_LEN];
  int rv = 0;
  for (size_t j = 0; j < IMC_SEAL_KEY_LEN && rv == 0; j++) {
    int hi = imc_hexval(hex[2 * j]), lo = imc_hexval(hex[2 * j + 1]);
    if (hi < 0 || lo < 0)
      rv = IMC_ERR_INVALID_ARGUMENT;
    else
      key[j] = (uint8_t)(hi << 4 | lo);
  }
  if (rv == 0) {
    char id[IMC_SEAL_KEY_ID_MAX + 1];
    memcpy(id, p, id_len);
    id[id_len] = '\0';
    rv = imc_keyring_add(kr, id, key);
    if (rv == IMC_ERR_EXISTS)
      rv = IMC_ERR_INVALID_ARGUMENT; /* a duplicate id is a bad file */
  }
  OPENSSL_cleanse(key, sizeof(key));
  return rv;
}

int imc_keyring_parse(imc_keyring **out, const uint8_t *buf, size_t len,
                      const imc_mem *mem) {
  if (out == NULL || (buf == NULL && len > 0))
    return IMC_ERR_INVALID_ARGUMENT;
  imc_keyring *kr;
  int rv = imc_keyring_new(&kr, mem);
  if (rv != 0)
    return rv;
  size_t pos = 0, n;
  const uint8_t *line;
  while (rv == 0 && imc_next_line(buf, len, &pos, &line, &n))
    rv = parse_key_line(kr, line, n);
  if (rv == 0 && kr->n == 0)
    rv = IMC_ERR_INVALID_ARGUMENT;
  if (rv != 0) {
    imc_keyring_del(kr);
    return rv;
  }
  *out = kr;
  return 0;
}

size_t imc_seal_overhead(const imc_keyring *kr) {
  if (kr == NULL || kr->n == 0)
    return IMC_SEAL_OVERHEAD_MAX;
  return 2 + (size_t)kr->keys[0].id_len + NONCE_LEN + TAG_LEN;
}

/* Checks the envelope's framing; on success *id, *id_len name its key. */
static int parse_header(const uint8_t *in, size_t len, const uint8_t **id,
                        size_t *id_len) {
  if (len < 2 || in[0] != IMC_SEAL_VERSION)
    return IMC_ERR_PROTO;
  size_t n = in[1];
  if (len < 2 + n + NONCE_LEN + TAG_LEN || !id_valid(in + 2, n))
    return IMC_ERR_PROTO;
  *id = in + 2;
  *id_len = n;
  return 0;
}

int imc_sealed_key_id(const uint8_t *in, size_t len,
                      char out[IMC_SEAL_KEY_ID_MAX + 1]) {
  if (in == NULL || out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  const uint8_t *id;
  size_t id_len;
  int rv = parse_header(in, len, &id, &id_len);
  if (rv != 0)
    return rv;
  memcpy(out, id, id_len);
  out[id_len] = '\0';
  return 0;
}

/*
 * One AES-256-GCM pass. enc selects sealing; tag is written when sealing
 * and checked when opening. The header is authenticated before the
 * caller's AAD; it carries its own length, so the two cannot be confused.
 */
static int gcm(const imc_keyring *kr, int enc, const seal_key *k,
               const uint8_t *nonce, const uint8_t *hdr, size_t hdr_len,
               const uint8_t *aad, size_t aad_len, const uint8_t *in,
               size_t len, uint8_t *out, uint8_t tag[TAG_LEN]) {
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  if (ctx == NULL)
    return IMC_ERR_NOMEM;
  /* Keep whatever we push onto OpenSSL's error queue away from the host. */
  ERR_set_mark();
  int outl, ok = EVP_CipherInit_ex(ctx, kr->cipher, NULL, k->key, nonce, enc);
  ok = ok && EVP_CipherUpdate(ctx, NULL, &outl, hdr, (int)hdr_len);
  if (aad_len > 0)
    ok = ok && EVP_CipherUpdate(ctx, NULL, &outl, aad, (int)aad_len);
  if (len > 0)
    ok = ok && EVP_CipherUpdate(ctx, out, &outl, in, (int)len);
  if (!enc)
    ok = ok && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag);
  int rv = ok ? 0 : IMC_ERR_UNAVAILABLE;
  uint8_t fin[TAG_LEN]; /* GCM's final step emits no bytes */
  if (ok && !EVP_CipherFinal_ex(ctx, fin, &outl))
    rv = enc ? IMC_ERR_UNAVAILABLE : IMC_ERR_PROTO;
  if (rv == 0 && enc &&
      !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag))
    rv = IMC_ERR_UNAVAILABLE;
  ERR_pop_to_mark();
  EVP_CIPHER_CTX_free(ctx);
  return rv;
}

int imc_seal(const imc_keyring *kr, const uint8_t *in, size_t len, uint8_t *out,
             size_t outcap, size_t *outlen, const uint8_t *aad,
             size_t aad_len) {
  if (kr == NULL || out == NULL || outlen == NULL || (in == NULL && len > 0) ||
      (aad == NULL && aad_len > 0))
    return IMC_ERR_INVALID_ARGUMENT;
  if (kr->n == 0)
    return IMC_ERR_NOT_FOUND;
  const seal_key *k = &kr->keys[0];
  size_t hdr_len = 2 + (size_t)k->id_len;
  size_t over = imc_seal_overhead(kr);
  if (len > INT_MAX || aad_len > INT_MAX || outcap < over ||
      outcap - over < len)
    return IMC_ERR_TOO_LARGE;
  out[0] = IMC_SEAL_VERSION;
  out[1] = k->id_len;
  memcpy(out + 2, k->id, k->id_len);
  uint8_t *nonce = out + hdr_len;
  ERR_set_mark();
  int ok = RAND_bytes(nonce, NONCE_LEN) == 1;
  ERR_pop_to_mark();
  if (!ok)
    return IMC_ERR_UNAVAILABLE;
  uint8_t *ct = nonce + NONCE_LEN;
  int rv =
      gcm(kr, 1, k, nonce, out, hdr_len, aad, aad_len, in, len, ct, ct + len);
  if (rv != 0)
    return rv;
  *outlen = over + len;
  return 0;
}

int imc_open(const imc_keyring *kr, const uint8_t *in, size_t len, uint8_t *out,
             size_t outcap, size_t *outlen, const uint8_t *aad,
             size_t aad_len) {
  if (kr == NULL || in == NULL || outlen == NULL ||
      (aad == NULL && aad_len > 0))
    return IMC_ERR_INVALID_ARGUMENT;
  const uint8_t *id;
  size_t id_len;
  int rv = parse_header(in, len, &id, &id_len);
  if (rv != 0)
    return rv;
  const seal_key *k = find_key(kr, id, id_len);
  if (k == NULL)
    return IMC_ERR_NOT_FOUND;
  size_t hdr_len = 2 + id_len;
  size_t pt_len = len - hdr_len - NONCE_LEN - TAG_LEN;
  if (pt_len > INT_MAX || aad_len > INT_MAX || outcap < pt_len)
    return IMC_ERR_TOO_LARGE;
  if (out == NULL && pt_len > 0)
    return IMC_ERR_INVALID_ARGUMENT;
  uint8_t tag[TAG_LEN];
  memcpy(tag, in + len - TAG_LEN, TAG_LEN);
  rv = gcm(kr, 0, k, in + hdr_len, in, hdr_len, aad, aad_len,
           in + hdr_len + NONCE_LEN, pt_len, out, tag);
  if (rv != 0) {
    /* GCM decrypts before it authenticates: drop unverified plaintext. */
    if (pt_len > 0)
      OPENSSL_cleanse(out, pt_len);
    return rv;
  }
  *outlen = pt_len;
  return 0;
}

int imc_sealer_new(void **out, size_t size, const uint8_t *keys, size_t len,
                   const imc_mem *mem) {
  if (out == NULL || keys == NULL || size < sizeof(imc_sealer))
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_sealer *s = imc_calloc(mem, 1, size);
  if (s == NULL)
    return IMC_ERR_NOMEM;
  s->mem = *mem;
  int rv = imc_keyring_parse(&s->kr, keys, len, mem);
  if (rv != 0) {
    imc_free(mem, s);
    return rv;
  }
  *out = s;
  return 0;
}

int imc_sealer_set_keys(imc_sealer *s, const uint8_t *keys, size_t len) {
  if (s == NULL || keys == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_keyring *kr;
  int rv = imc_keyring_parse(&kr, keys, len, &s->mem);
  if (rv != 0)
    return rv;
  imc_keyring_del(s->kr);
  s->kr = kr;
  return 0;
}

void imc_sealer_del(imc_sealer *s) {
  if (s == NULL)
    return;
  imc_keyring_del(s->kr);
  imc_mem m = s->mem;
  imc_free(&m, s);
}
