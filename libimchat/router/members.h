/*
 * A cache of group members in front of the store: entries live for a TTL
 * and are dropped on change; concurrent lookups of a group share one
 * store call.
 */
#ifndef IMC_MEMBERS_H
#define IMC_MEMBERS_H

#include <imchat/backend.h>

typedef struct imc_members imc_members;

/* Returns 0 or IMC_ERR_NOMEM. store, store_ud and clock are borrowed. */
int imc_members_new(imc_members **out, const imc_mem *mem,
                    const imc_store_vtbl *store, void *store_ud,
                    const imc_clock *clock, uint32_t ttl_ms);
void imc_members_del(imc_members *mc);

/*
 * The members of group (sorted, unique), from the cache or the store.
 * done may run before this returns. Returns 0 or IMC_ERR_NOMEM (done is
 * not called then).
 */
int imc_members_get(imc_members *mc, const char *group, imc_list_cb done,
                    void *done_ud);

/* Drops the cached members of group. */
void imc_members_invalidate(imc_members *mc, const char *group);

/* 1 if user is in the sorted list. */
int imc_members_contains(const char *const *items, size_t n, const char *user);

/* Store calls in flight. */
size_t imc_members_pending(const imc_members *mc);

#endif /* IMC_MEMBERS_H */
