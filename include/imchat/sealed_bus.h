/* imchat - encryption at rest for a bus. */
#ifndef IMCHAT_SEALED_BUS_H
#define IMCHAT_SEALED_BUS_H

#include <imchat/backend.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Sealed bus: encryption at rest for a durable bus (the offline queue
 * keeps message bodies until the worker has stored them). Record values
 * are sealed on publish with the topic as authenticated data and opened
 * on poll; keys, partitions and offsets pass through. A value that is not
 * an envelope is delivered as it is (queued before encryption was on); an
 * envelope that does not open is delivered as it is and counted, so its
 * consumer drops it as a bad record. The keys are the text of a key file
 * as for the sealed store (sealed_store.h), read by the host. Everything
 * else passes through unchanged: commit results (IMC_ERR_REVOKED
 * included), and completion timing, since a poll completes when the inner
 * bus completes it, so the host keeps running the inner backend's wakeup
 * (e.g. imc_sqlite_next_timeout_ms() and imc_sqlite_dispatch()); the
 * sealed bus defers nothing of its own.
 */
typedef struct imc_sealed_bus imc_sealed_bus;

/*
 * Wrap the bus inner (its vtable is copied; inner_ud is borrowed and must
 * outlive the object) with the keys of the key-file text keys[0..len),
 * read during the call only (the caller wipes it). mem may be NULL
 * (malloc). Returns 0; IMC_ERR_INVALID_ARGUMENT (out, inner or keys NULL,
 * an inner vtable without publish, poll or commit, a malformed line, a
 * duplicate key id or a text without keys); IMC_ERR_NOMEM;
 * IMC_ERR_UNAVAILABLE (no AES-256-GCM in libcrypto). On error *out is
 * untouched.
 */
IMC_EXTERN int imc_sealed_bus_new(imc_sealed_bus **out,
                                  const imc_bus_vtbl *inner, void *inner_ud,
                                  const uint8_t *keys, size_t len,
                                  const imc_mem *mem);
/*
 * Replaces the keys with those of the key-file text keys[0..len) (read
 * during the call only). Returns 0 or, keeping the keys in use,
 * IMC_ERR_INVALID_ARGUMENT (b or keys NULL, a bad text), IMC_ERR_NOMEM or
 * IMC_ERR_UNAVAILABLE.
 */
IMC_EXTERN int imc_sealed_bus_set_keys(imc_sealed_bus *b, const uint8_t *keys,
                                       size_t len);
/* Free b; every operation started through it must have completed. NULL
 * is a no-op. */
IMC_EXTERN void imc_sealed_bus_del(imc_sealed_bus *b);
/* Sets the user pointer of b (not NULL). */
IMC_EXTERN void imc_sealed_bus_set_user_data(imc_sealed_bus *b, void *ud);
/* The user pointer of b (not NULL); NULL until set. */
IMC_EXTERN void *imc_sealed_bus_get_user_data(const imc_sealed_bus *b);
/* The vtable; its ud is the imc_sealed_bus. Never NULL. */
IMC_EXTERN const imc_bus_vtbl *imc_sealed_bus_vtbl(void);
/* Envelopes that failed to open since b was created; 0 if b is NULL. */
IMC_EXTERN uint64_t imc_sealed_bus_failures(const imc_sealed_bus *b);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_SEALED_BUS_H */
