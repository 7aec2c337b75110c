/* imchat - group fan-out: the gateway side of the group bus. */
#ifndef IMCHAT_FANOUT_H
#define IMCHAT_FANOUT_H

#include <imchat/gateway.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * imc_fanout consumes the group bus (topic "group_msg", one consumer group
 * per gateway node so that every node sees every record) and pushes each
 * group message to the members connected to its gateway. Members come
 * from the store, cached for cache_ms. Each batch is committed when it is
 * pushed, at the highest offset of every partition it holds. Messages
 * sent more than 60 s before the fan-out was first started are skipped
 * (committed, not pushed): the connections they were for are not on this
 * gateway, so a node that starts a new consumer group (a new node id) does
 * not replay what the topic still holds.
 */
typedef struct imc_fanout imc_fanout;

/*
 * Creates a fan-out for gw; bus, store and clock (NULL: system) are
 * borrowed and must outlive it. Returns 0, IMC_ERR_INVALID_ARGUMENT or
 * IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_fanout_new(imc_fanout **out, imc_gateway *gw,
                              const imc_bus_vtbl *bus, void *bus_ud,
                              const imc_store_vtbl *store, void *store_ud,
                              const imc_clock *clock, uint32_t cache_ms,
                              const imc_mem *mem);
/* The host must let pending operations complete first. */
IMC_EXTERN void imc_fanout_del(imc_fanout *f);
IMC_EXTERN void imc_fanout_set_user_data(imc_fanout *f, void *ud);
IMC_EXTERN void *imc_fanout_get_user_data(const imc_fanout *f);
/*
 * The bus topic (default "group_msg", where the router publishes group
 * messages) and the consumer group (default "gw-<node id>"). The group
 * must differ between gateway nodes, so that each sees every record, and
 * stay the same across a node's restarts. Strings are copied. Call
 * before imc_fanout_start(), or after imc_fanout_stop() once
 * imc_fanout_pending() is 0. Each returns 0 or IMC_ERR_INVALID_ARGUMENT
 * (f NULL, a NULL or empty name, a name of 128 bytes or more, the
 * fan-out running or with operations pending).
 */
IMC_EXTERN int imc_fanout_set_topic(imc_fanout *f, const char *topic);
IMC_EXTERN int imc_fanout_set_group(imc_fanout *f, const char *group);
/* Starts polling. Returns 0 or the error of the bus's poll. */
IMC_EXTERN int imc_fanout_start(imc_fanout *f);
/* No new polls; the batch in hand is finished. */
IMC_EXTERN void imc_fanout_stop(imc_fanout *f);
/* Forget cached members of group_id after a change. */
IMC_EXTERN void imc_fanout_invalidate(imc_fanout *f, const char *group_id);
/* Backend operations not yet completed (a waiting poll included). */
IMC_EXTERN size_t imc_fanout_pending(const imc_fanout *f);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_FANOUT_H */
