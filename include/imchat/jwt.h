/*
 * imchat - minting tokens for the gateway's HS256 authentication.
 */
#ifndef IMCHAT_JWT_H
#define IMCHAT_JWT_H

#include <imchat/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The longest token imc_jwt_sign_hs256 writes, NUL included. */
#define IMC_JWT_SIGN_MAX 2048

/*
 * Writes an HS256 JWT with claims sub = user_id, did = device_id, iss =
 * issuer, aud = audience (each of the last three omitted when NULL or
 * ""), iat = iat_s and exp = exp_s into out (capacity outcap,
 * NUL-terminated). Returns the token length, IMC_ERR_INVALID_ARGUMENT
 * (empty secret, invalid ids, issuer or audience over 256 bytes or with
 * control characters), IMC_ERR_NOMEM or IMC_ERR_TOO_LARGE if out is too
 * small; IMC_JWT_SIGN_MAX bytes always suffice.
 */
IMC_EXTERN int imc_jwt_sign_hs256(const uint8_t *secret, size_t secret_len,
                                  const char *user_id, const char *device_id,
                                  const char *issuer, const char *audience,
                                  int64_t iat_s, int64_t exp_s, char *out,
                                  size_t outcap);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_JWT_H */
