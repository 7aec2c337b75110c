/* Minting test tokens with any header, payload and key (RSA, P-256,
 * HMAC or none), so the verifiers can be fed every variant. */
#ifndef IMC_TESTJWT_H
#define IMC_TESTJWT_H

#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>

EVP_PKEY *testjwt_rsa(void);
EVP_PKEY *testjwt_p256(void);
/* The public half as PEM; free() it. */
char *testjwt_pub_pem(EVP_PKEY *key);

typedef enum { TJ_HS256, TJ_RS256, TJ_ES256, TJ_NONE } testjwt_sig;

/*
 * Writes base64url(header).base64url(payload).signature into out. The
 * signature is made as sig says, with pkey or secret; TJ_NONE leaves it
 * empty. Returns the length.
 */
size_t testjwt_make(char *out, size_t cap, const char *header,
                    const char *payload, testjwt_sig sig, EVP_PKEY *pkey,
                    const uint8_t *secret, size_t secret_len);

#endif
