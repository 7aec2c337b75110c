/*
 * Base64 decoding for data this side did not sign: both alphabets of
 * RFC 4648 (standard and URL-safe), padding optional. JWTs, which must be
 * strict base64url, have their own decoder in jwt.c.
 */
#ifndef IMC_BASE64_H
#define IMC_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* The most bytes n characters of base64 decode to. */
#define IMC_BASE64_DECODED_MAX(n) ((n) / 4 * 3 + 3)

/*
 * Decodes s[0..n) into out, which holds IMC_BASE64_DECODED_MAX(n) bytes,
 * and sets *out_len. Returns 0, or IMC_ERR_PROTO for a character outside
 * both alphabets (padding only at the end).
 */
int imc_base64_decode(const char *s, size_t n, uint8_t *out, size_t *out_len);

#endif /* IMC_BASE64_H */
