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
 * consumer drops it as a bad record. The key file is as for the sealed
 * store. Everything else passes through unchanged: commit results
 * (IMC_ERR_REVOKED included), and completion timing, since a poll
 * completes when the inner bus completes it, so the host keeps running
 * the inner backend's wakeup (e.g. imc_sqlite_next_timeout_ms() and
 * imc_sqlite_dispatch()); the sealed bus defers nothing of its own.
 *
 * imc_sealed_bus_new returns 0, IMC_ERR_INVALID_ARGUMENT (NULL argument,
 * an inner vtable without publish, poll or commit, a malformed key
 * file), IMC_ERR_IO (unreadable key file), IMC_ERR_UNAVAILABLE (no
 * AES-256-GCM in libcrypto) or IMC_ERR_NOMEM.
 */
typedef struct imc_sealed_bus imc_sealed_bus;

IMC_EXTERN int imc_sealed_bus_new(imc_sealed_bus **out,
                                  const imc_bus_vtbl *inner, void *inner_ud,
                                  const char *keyfile, const imc_mem *mem);
/* Read the key file again; on failure (codes of _new) the old keys stay. */
IMC_EXTERN int imc_sealed_bus_reload(imc_sealed_bus *b);
/* Free b; every operation started through it must have completed. */
IMC_EXTERN void imc_sealed_bus_del(imc_sealed_bus *b);
IMC_EXTERN void imc_sealed_bus_set_user_data(imc_sealed_bus *b, void *ud);
IMC_EXTERN void *imc_sealed_bus_get_user_data(const imc_sealed_bus *b);
/* The vtable; its ud is the imc_sealed_bus. */
IMC_EXTERN const imc_bus_vtbl *imc_sealed_bus_vtbl(void);
/* Envelopes that failed to open since b was created. */
IMC_EXTERN uint64_t imc_sealed_bus_failures(const imc_sealed_bus *b);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_SEALED_BUS_H */
