/*
 * JSON Web Tokens: verification for the gateway, HS256 signing for hosts
 * that mint tokens. Parsing never allocates: the token is decoded into
 * fixed-size fields of the caller's structures.
 */
#ifndef IMC_JWT_H
#define IMC_JWT_H

#include <imchat/common.h>

#include <openssl/evp.h>

#define IMC_JWT_MAX_LEN 4096 /* longest token accepted */

typedef enum imc_jwt_alg {
  IMC_JWT_NONE = 0, /* never accepted: only names an unknown alg */
  IMC_JWT_HS256,
  IMC_JWT_RS256,
  IMC_JWT_ES256
} imc_jwt_alg;

/* A verification key, pinned to one algorithm. */
typedef struct imc_jwt_key {
  imc_jwt_alg alg;
  EVP_PKEY *pkey;  /* RS256 / ES256; owned */
  uint8_t *secret; /* HS256; owned */
  size_t secret_len;
} imc_jwt_key;

/* Claims policy: iss/aud are checked when non-NULL. */
typedef struct imc_jwt_policy {
  const char *issuer;
  const char *audience;
  int64_t leeway_s; /* for exp, nbf and iat (60 by default) */
} imc_jwt_policy;

typedef struct imc_jwt_header {
  imc_jwt_alg alg; /* IMC_JWT_NONE for anything unsupported */
  char kid[128];   /* "" if absent */
} imc_jwt_header;

typedef struct imc_jwt_claims {
  char sub[IMC_ID_MAX + 1];
  char did[IMC_ID_MAX + 1]; /* "" if absent */
  int64_t exp;
} imc_jwt_claims;

/*
 * Decodes the header of a compact JWS. Returns 0, or IMC_ERR_AUTH if the
 * token is not three base64url parts with a JSON header.
 */
int imc_jwt_parse_header(const char *tok, size_t len, imc_jwt_header *h);

/*
 * Verifies tok with key at Unix time now_s and fills claims. Returns 0;
 * IMC_ERR_AUTH for a malformed token, an alg other than key->alg
 * (including "none" in any spelling), a bad signature, a missing or
 * invalid sub, a did that is not a valid id, a failed iss/aud check, or
 * a missing exp; IMC_ERR_EXPIRED if exp + leeway <= now, or nbf / iat lie
 * more than leeway in the future. Signatures are compared in constant
 * time.
 */
int imc_jwt_verify(const char *tok, size_t len, const imc_jwt_key *key,
                   const imc_jwt_policy *pol, int64_t now_s,
                   imc_jwt_claims *claims);

/*
 * Initialises key for HS256 with a copy of secret, or from a PEM public
 * key (RS256 for RSA, ES256 for EC P-256). Return 0,
 * IMC_ERR_INVALID_ARGUMENT (empty secret, unparseable PEM, other key
 * types) or IMC_ERR_NOMEM.
 */
int imc_jwt_key_init_secret(imc_jwt_key *key, const uint8_t *secret, size_t len,
                            const imc_mem *mem);
int imc_jwt_key_init_pem(imc_jwt_key *key, const char *pem, size_t len);
void imc_jwt_key_clear(imc_jwt_key *key, const imc_mem *mem);

#endif /* IMC_JWT_H */
