/*
 * Sealing of stored message bodies: AES-256-GCM with a keyring that
 * supports rotation.
 *
 * The first key of a keyring seals; every key opens. An operator rotates
 * by putting a new key first and keeping the old ones until no stored row
 * still names them (imc_sealed_key_id tells which key a row needs).
 *
 * Envelope (all lengths in bytes):
 *   version (1, = 1) | id_len (1, 1..32) | key id (id_len) |
 *   nonce (12, random) | ciphertext (= plaintext length) | tag (16)
 * The version, id length and key id are authenticated together with the
 * caller's AAD (the msg_id, so a body cannot be moved to another row).
 *
 * Nonces are random, so one key should seal well under 2^32 bodies;
 * rotate before that.
 */
#ifndef IMC_SEAL_H
#define IMC_SEAL_H

#include <imchat/common.h>

#define IMC_SEAL_KEY_LEN 32
#define IMC_SEAL_KEY_ID_MAX 32
#define IMC_SEAL_VERSION 1
/* Overhead of an envelope whose key id is IMC_SEAL_KEY_ID_MAX long. */
#define IMC_SEAL_OVERHEAD_MAX (1 + 1 + IMC_SEAL_KEY_ID_MAX + 12 + 16)

typedef struct imc_keyring imc_keyring;

/*
 * Creates an empty keyring in *out; mem (NULL: malloc/free) is copied
 * and used for every allocation. Free it with imc_keyring_del. Returns 0,
 * IMC_ERR_INVALID_ARGUMENT (out is NULL), IMC_ERR_NOMEM, or
 * IMC_ERR_UNAVAILABLE if libcrypto offers no AES-256-GCM.
 */
int imc_keyring_new(imc_keyring **out, const imc_mem *mem);

/*
 * Appends a copy of key under key_id (NUL-terminated, 1..32 characters
 * of [A-Za-z0-9_.-]). The first key added is the sealing key. Returns 0;
 * IMC_ERR_INVALID_ARGUMENT for a bad id or NULL pointer; IMC_ERR_EXISTS
 * if key_id is already present; IMC_ERR_NOMEM (the keyring is unchanged).
 */
int imc_keyring_add(imc_keyring *kr, const char *key_id,
                    const uint8_t key[IMC_SEAL_KEY_LEN]);

/*
 * Creates a keyring in *out from the key-file text keys[0..len): one key
 * per line, "KEY_ID HEX64" (id and 64 hex digits separated by spaces or
 * tabs), blank lines and lines starting with '#' skipped, CRLF tolerated.
 * The first key seals. keys is only read (the caller wipes it); no copy
 * of a key outlives the call except in the keyring. Returns 0;
 * IMC_ERR_INVALID_ARGUMENT for a malformed line, a duplicate id, a text
 * without keys or a NULL pointer; IMC_ERR_NOMEM; IMC_ERR_UNAVAILABLE as
 * for imc_keyring_new. On error *out is untouched.
 */
int imc_keyring_parse(imc_keyring **out, const uint8_t *keys, size_t len,
                      const imc_mem *mem);

/* Wipes the key bytes and frees kr. NULL is a no-op. */
void imc_keyring_del(imc_keyring *kr);

/*
 * The state both sealing decorators (sealed_store.c, sealed_bus.c) share,
 * as the first member of their objects: the allocator, the keyring in
 * use and a count of what failed to open.
 */
typedef struct imc_sealer {
  void *user_data;
  imc_mem mem; /* copied from the constructor's mem */
  imc_keyring *kr;
  uint64_t failures;
} imc_sealer;

/*
 * Allocates a zeroed object of size bytes (>= sizeof(imc_sealer)) that
 * begins with an imc_sealer, with the keys parsed from keys[0..len) as by
 * imc_keyring_parse; mem NULL means malloc. Free it with imc_sealer_del.
 * Returns 0; IMC_ERR_INVALID_ARGUMENT (out or keys NULL, size too small,
 * or a bad key text); IMC_ERR_NOMEM; IMC_ERR_UNAVAILABLE (no AES-256-GCM
 * in libcrypto). On error *out is untouched.
 */
int imc_sealer_new(void **out, size_t size, const uint8_t *keys, size_t len,
                   const imc_mem *mem);

/*
 * Replaces the keys of s with those of keys[0..len). Returns 0 or, keeping
 * the keys in use, an error of imc_keyring_parse (IMC_ERR_INVALID_ARGUMENT
 * also for s NULL).
 */
int imc_sealer_set_keys(imc_sealer *s, const uint8_t *keys, size_t len);

/* Wipes the keys and frees the object s begins. NULL is a no-op. */
void imc_sealer_del(imc_sealer *s);

/* The number of keys in kr. */
size_t imc_keyring_size(const imc_keyring *kr);

/*
 * Bytes imc_seal adds to a plaintext with the current sealing key;
 * IMC_SEAL_OVERHEAD_MAX if kr has no key.
 */
size_t imc_seal_overhead(const imc_keyring *kr);

/*
 * Seals in[0..len) with the first key and a fresh random nonce, binding
 * aad[0..aad_len) (may be NULL if aad_len is 0), into out[0..*outlen).
 * in and out must not overlap. Returns 0; IMC_ERR_NOT_FOUND if kr has no
 * key; IMC_ERR_TOO_LARGE if outcap < len + imc_seal_overhead(kr) or len
 * or aad_len exceed INT_MAX; IMC_ERR_INVALID_ARGUMENT for NULL pointers;
 * IMC_ERR_NOMEM; IMC_ERR_UNAVAILABLE if the random generator or cipher
 * fails.
 */
int imc_seal(const imc_keyring *kr, const uint8_t *in, size_t len, uint8_t *out,
             size_t outcap, size_t *outlen, const uint8_t *aad, size_t aad_len);

/*
 * Opens the envelope in[0..len) sealed with aad[0..aad_len) into
 * out[0..*outlen). in and out must not overlap. Returns 0;
 * IMC_ERR_NOT_FOUND if the envelope's key id is not in kr; IMC_ERR_PROTO
 * if the envelope is malformed or fails authentication (tampered data,
 * wrong key or AAD; nothing is left in out); IMC_ERR_TOO_LARGE if outcap
 * is smaller than the plaintext or aad_len exceeds INT_MAX;
 * IMC_ERR_INVALID_ARGUMENT for NULL pointers; IMC_ERR_NOMEM;
 * IMC_ERR_UNAVAILABLE if the cipher fails.
 */
int imc_open(const imc_keyring *kr, const uint8_t *in, size_t len, uint8_t *out,
             size_t outcap, size_t *outlen, const uint8_t *aad, size_t aad_len);

/*
 * Copies the key id of the envelope in[0..len) to out as a
 * NUL-terminated string, without any key. Returns 0, IMC_ERR_PROTO if the
 * envelope is malformed, or IMC_ERR_INVALID_ARGUMENT for NULL pointers.
 */
int imc_sealed_key_id(const uint8_t *in, size_t len,
                      char out[IMC_SEAL_KEY_ID_MAX + 1]);

#endif /* IMC_SEAL_H */
