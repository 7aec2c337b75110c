/*
 * imchat - JSON Web Key Sets (RFC 7517): the verification keys an
 * identity provider publishes, turned into the PEM public keys the
 * gateway's key source hands over (imc_keysrc_vtbl in backend.h).
 *
 * The library fetches nothing: a host downloads the document (e.g. from
 * an OpenID provider's jwks_uri), parses it here and answers the
 * gateway's lookups from the set. Usable keys are RSA keys of 2048 to
 * 8192 bits (RS256) and P-256 EC keys (ES256) whose "use", if present,
 * is "sig", whose "key_ops", if present, hold "verify", whose "alg", if
 * present, is the one the key type implies, and whose "kid", if present,
 * is a string of at most IMC_JWKS_KID_MAX bytes. Other entries (other key
 * types, curves or algorithms, encryption keys, malformed members) are
 * ignored, as RFC 7517 section 5 asks, and counted.
 */
#ifndef IMCHAT_JWKS_H
#define IMCHAT_JWKS_H

#include <imchat/common.h>

#ifdef __cplusplus
extern "C" {
#endif

#define IMC_JWKS_DOC_MAX (256 * 1024) /* largest document parsed */
#define IMC_JWKS_KEYS_MAX 64          /* most entries in "keys" */
#define IMC_JWKS_KID_MAX 127          /* longest kid, in bytes */

/* A parsed key set; immutable once made. */
typedef struct imc_jwks imc_jwks;

/*
 * Parses the JWK Set doc[0..len) (read during the call only). mem may be
 * NULL (malloc). A set without a usable key is made (count 0): whether to
 * use it is the caller's choice. Returns 0 and sets *out;
 * IMC_ERR_INVALID_ARGUMENT (out NULL, doc NULL); IMC_ERR_TOO_LARGE (len
 * over IMC_JWKS_DOC_MAX, or more than IMC_JWKS_KEYS_MAX entries in
 * "keys"); IMC_ERR_PROTO (not JSON, not an object, or no "keys" array);
 * IMC_ERR_NOMEM. On error *out is untouched.
 */
IMC_EXTERN int imc_jwks_new(imc_jwks **out, const char *doc, size_t len,
                            const imc_mem *mem);

/* Frees set (NULL: nothing); the strings it lent are gone with it. */
IMC_EXTERN void imc_jwks_del(imc_jwks *set);

/* The usable keys in set. */
IMC_EXTERN size_t imc_jwks_count(const imc_jwks *set);

/* The entries of "keys" that were ignored. */
IMC_EXTERN size_t imc_jwks_ignored(const imc_jwks *set);

/*
 * The usable key number i (from 0, in document order): *alg ("RS256" or
 * "ES256"), *kid ("" when the entry has none), and the PEM public key
 * (SubjectPublicKeyInfo) in *pem[0..*pem_len), NUL-terminated. Any out
 * pointer may be NULL. The strings live as long as set. Returns 0, or
 * IMC_ERR_NOT_FOUND if i >= imc_jwks_count(set).
 */
IMC_EXTERN int imc_jwks_key(const imc_jwks *set, size_t i, const char **alg,
                            const char **kid, const char **pem,
                            size_t *pem_len);

/*
 * The key that verifies a token whose header names alg and kid: with a
 * kid (non-empty), the one key of that alg and kid; without (NULL or ""),
 * the one key of that alg when the set holds exactly one, whatever its
 * kid. Sets *pem and *pem_len as imc_jwks_key does. Returns 0, or
 * IMC_ERR_NOT_FOUND (no such key, or more than one: an ambiguous set
 * verifies nothing).
 */
IMC_EXTERN int imc_jwks_find(const imc_jwks *set, const char *alg,
                             const char *kid, const char **pem,
                             size_t *pem_len);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_JWKS_H */
