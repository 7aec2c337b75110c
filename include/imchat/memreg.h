/* imchat - the in-memory registry (embedded default). */
#ifndef IMCHAT_MEMREG_H
#define IMCHAT_MEMREG_H

#include <imchat/backend.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * In-memory registry. Completes every operation before returning (watch
 * events too, before the operation's completion). Leases expire by the
 * clock (NULL: the system clock): an expired lease and its entries are
 * never reported, and are removed, with a DELETE per entry, at the next
 * call into the registry. Watch keys are "<user_id>/<device_id>"; a
 * PUT's value is the node_id.
 */
typedef struct imc_memreg imc_memreg;

/* Returns 0 or IMC_ERR_NOMEM. */
IMC_EXTERN int imc_memreg_new(imc_memreg **out, const imc_clock *clock,
                              const imc_mem *mem);
IMC_EXTERN void imc_memreg_del(imc_memreg *reg);
IMC_EXTERN void imc_memreg_set_user_data(imc_memreg *reg, void *ud);
IMC_EXTERN void *imc_memreg_get_user_data(const imc_memreg *reg);
/* The vtable; its ud is the imc_memreg. */
IMC_EXTERN const imc_registry_vtbl *imc_memreg_vtbl(void);
/* Live entries held (for metrics and tests). */
IMC_EXTERN size_t imc_memreg_size(imc_memreg *reg);
/* Live leases held (for metrics and tests). */
IMC_EXTERN size_t imc_memreg_lease_count(imc_memreg *reg);
/*
 * Forget every lease and entry at once, as a registry that restarted
 * empty would, then send IMC_WATCH_RESYNC to every watch (no DELETE
 * events): holders find their leases NOT_FOUND at the next keepalive.
 * For tests and for operators who want to force a resync.
 */
IMC_EXTERN void imc_memreg_reset(imc_memreg *reg);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_MEMREG_H */
