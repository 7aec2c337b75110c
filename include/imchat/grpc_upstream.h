/*
 * imchat - the gateway's upstream over gRPC: an imc_upstream_vtbl whose
 * operations are calls of imchat.v1.Router (proto/imchat/v1/router.proto)
 * on an imc_grpc_client connected to im-service.
 *
 * The host owns the connection: it creates the client, hands it over with
 * imc_grpc_upstream_set_client(), and after losing it connects a new one
 * and hands that over. Operations made while no usable client is set fail
 * with IMC_ERR_UNAVAILABLE (the gateway answers the sender UNAVAILABLE, or
 * retries its reports). Completions come from the client: an operation's
 * failure is the IMC_ERR_* the router sent (imc-error), else the mapping
 * of grpc.h (a deadline or a lost connection is IMC_ERR_UNAVAILABLE).
 */
#ifndef IMCHAT_GRPC_UPSTREAM_H
#define IMCHAT_GRPC_UPSTREAM_H

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

/* The connection operations go to from now on (borrowed; NULL: none). */
IMC_EXTERN void imc_grpc_upstream_set_client(imc_grpc_upstream *u,
                                             imc_grpc_client *client);

/*
 * Deadline of every call (default 10000 ms; keep it under the gateway's
 * send timeout). Returns 0 or IMC_ERR_INVALID_ARGUMENT (NULL u, ms <= 0).
 */
IMC_EXTERN int imc_grpc_upstream_set_deadline_ms(imc_grpc_upstream *u,
                                                 int64_t ms);

/* The upstream vtable; its ud is an imc_grpc_upstream. */
IMC_EXTERN const imc_upstream_vtbl *imc_grpc_upstream_vtbl(void);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_GRPC_UPSTREAM_H */
