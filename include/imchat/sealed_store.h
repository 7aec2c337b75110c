/* imchat - encryption at rest for a store. */
#ifndef IMCHAT_SEALED_STORE_H
#define IMCHAT_SEALED_STORE_H

#include <imchat/backend.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Sealed store: encryption at rest for any store. A decorator of another
 * imc_store_vtbl that stores message bodies sealed with AES-256-GCM
 * (bound to their msg_id) while its callers see plaintext. Every other
 * field, and purge and the group operations, pass through unchanged.
 *
 * The keys are given as the text of a key file, which the host reads (the
 * library does no file I/O): one key per line, "KEY_ID HEX64" (an id of
 * 1..32 characters of [A-Za-z0-9_.-], then 64 hex digits, separated by
 * spaces or tabs); blank lines and lines starting with '#' are skipped,
 * CRLF is tolerated. The first key seals new bodies; every key opens the
 * bodies that name it. To rotate, put a new key first, keep the old ones,
 * and pass the new text to imc_sealed_store_set_keys.
 *
 * A completion of the inner store is forwarded once the page is opened,
 * when the inner store makes it (inline or later). A page with a body that
 * does not open (its key is not in the file, or it was altered or moved to
 * another row) completes with IMC_ERR_IO and no messages. Bodies that do
 * not frame as sealed envelopes, such as rows written before sealing was
 * enabled, are returned as they are stored.
 *
 * Besides the inner store's codes, operations may return
 * IMC_ERR_INVALID_ARGUMENT (a NULL array, message, msg_id or completion),
 * IMC_ERR_NOMEM, IMC_ERR_TOO_LARGE (a body too large to seal) and
 * IMC_ERR_UNAVAILABLE (the cipher or the random generator failed);
 * fetches may complete with IMC_ERR_IO, IMC_ERR_NOMEM or
 * IMC_ERR_UNAVAILABLE.
 */
typedef struct imc_sealed_store imc_sealed_store;

/*
 * Wrap the store inner (its vtable is copied; inner_ud is borrowed and
 * must outlive the object) with the keys of the key-file text
 * keys[0..len). The text is only read during the call: the caller keeps
 * it and should wipe it afterwards. mem may be NULL (malloc).
 * Returns 0; IMC_ERR_INVALID_ARGUMENT (out, inner or keys NULL, a member
 * of inner absent, a malformed line, a duplicate key id or a text without
 * keys); IMC_ERR_NOMEM; IMC_ERR_UNAVAILABLE (libcrypto has no
 * AES-256-GCM). On error *out is untouched.
 */
IMC_EXTERN int imc_sealed_store_new(imc_sealed_store **out,
                                    const imc_store_vtbl *inner, void *inner_ud,
                                    const uint8_t *keys, size_t len,
                                    const imc_mem *mem);
/*
 * Replaces the keys with those of the key-file text keys[0..len) (e.g.
 * after SIGHUP; read during the call only). Outstanding fetches open with
 * the new keys. Returns 0; IMC_ERR_INVALID_ARGUMENT (s or keys NULL, a
 * malformed line, a duplicate key id or a text without keys);
 * IMC_ERR_NOMEM; IMC_ERR_UNAVAILABLE. On error the keys in use stay.
 */
IMC_EXTERN int imc_sealed_store_set_keys(imc_sealed_store *s,
                                         const uint8_t *keys, size_t len);
/*
 * Free s and its keys. Every operation started through it must have
 * completed. The inner store is not deleted. NULL is a no-op.
 */
IMC_EXTERN void imc_sealed_store_del(imc_sealed_store *s);
/* Sets the user pointer of s (not NULL). */
IMC_EXTERN void imc_sealed_store_set_user_data(imc_sealed_store *s, void *ud);
/* The user pointer of s (not NULL); NULL until set. */
IMC_EXTERN void *imc_sealed_store_get_user_data(const imc_sealed_store *s);
/* The vtable; its ud is the imc_sealed_store. */
IMC_EXTERN const imc_store_vtbl *imc_sealed_store_vtbl(void);
/*
 * Bodies that failed to open since s was created (for metrics and
 * alerts: a nonzero value means a missing key or altered rows). 0 if s is
 * NULL.
 */
IMC_EXTERN uint64_t imc_sealed_store_failures(const imc_sealed_store *s);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_SEALED_STORE_H */
