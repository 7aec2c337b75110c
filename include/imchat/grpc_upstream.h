/*
 * imchat - the gateway's upstream over gRPC: an imc_upstream_vtbl, and an
 * imc_groups_vtbl for the admin routes of imc_api, whose operations are
 * calls of imchat.v1.Router (proto/imchat/v1/router.proto) on
 * imc_grpc_clients connected to im-service processes.
 *
 * The host owns the connections: it creates a client per im-service
 * process, adds it with imc_grpc_upstream_add_client(), and after losing
 * one removes it and adds its replacement. Operations spread over the
 * clients: each goes to the next usable one (imc_grpc_client_usable()),
 * round-robin, so a closed or draining client is skipped; with none usable
 * an operation fails at once with IMC_ERR_UNAVAILABLE. An operation that
 * fails on its client is not tried again on another: the caller does what
 * it does with any failure (the gateway answers the sender UNAVAILABLE,
 * who resends with the same client_msg_id, which the routers' dedup makes
 * safe; reports are retried). Completions come from the client: an
 * operation's failure is the IMC_ERR_* the router sent (imc-error), else
 * the mapping of grpc.h (a deadline or a lost connection is
 * IMC_ERR_UNAVAILABLE).
 */
#ifndef IMCHAT_GRPC_UPSTREAM_H
#define IMCHAT_GRPC_UPSTREAM_H

#include <imchat/api.h>
#include <imchat/gateway.h>
#include <imchat/grpc_client.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct imc_grpc_upstream imc_grpc_upstream;

/* Returns 0, IMC_ERR_INVALID_ARGUMENT (NULL out) or IMC_ERR_NOMEM. */
IMC_EXTERN int imc_grpc_upstream_new(imc_grpc_upstream **out,
                                     const imc_mem *mem);

/* Frees u. Calls already made stay with their client, which completes
 * them. */
IMC_EXTERN void imc_grpc_upstream_del(imc_grpc_upstream *u);

/*
 * Adds c to the clients operations are spread over (borrowed: it must
 * stay alive until removed or u is deleted). Returns 0,
 * IMC_ERR_INVALID_ARGUMENT (u or c NULL), IMC_ERR_EXISTS (c is already
 * there) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_grpc_upstream_add_client(imc_grpc_upstream *u,
                                            imc_grpc_client *c);

/* Removes c; no new operation goes to it (calls already made stay with it,
 * which completes them). Does nothing if c is not there. */
IMC_EXTERN void imc_grpc_upstream_remove_client(imc_grpc_upstream *u,
                                                imc_grpc_client *c);

/*
 * Deadline of every call (default 10000 ms; keep it under the gateway's
 * send timeout). Returns 0 or IMC_ERR_INVALID_ARGUMENT (NULL u, ms <= 0).
 */
IMC_EXTERN int imc_grpc_upstream_set_deadline_ms(imc_grpc_upstream *u,
                                                 int64_t ms);

/* The upstream vtable; its ud is an imc_grpc_upstream. */
IMC_EXTERN const imc_upstream_vtbl *imc_grpc_upstream_vtbl(void);

/*
 * Group membership as Router.GroupAdd, GroupRemove and GroupMembers, for
 * imc_api_options_set_groups(); its ud is an imc_grpc_upstream (the same
 * clients, the same round-robin). Operations return IMC_ERR_INVALID_ARGUMENT
 * (an id or done NULL), IMC_ERR_UNAVAILABLE (no usable client) or
 * IMC_ERR_NOMEM at once; else they complete with the router's answer
 * (e.g. IMC_ERR_INVALID_ARGUMENT for an invalid id) or
 * IMC_ERR_UNAVAILABLE (a deadline, a lost connection).
 */
IMC_EXTERN const imc_groups_vtbl *imc_grpc_upstream_groups_vtbl(void);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_GRPC_UPSTREAM_H */
