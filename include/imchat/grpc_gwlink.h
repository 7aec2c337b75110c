/*
 * imchat - the router's gateway link over gRPC: an imc_gwlink_vtbl whose
 * operations are calls of imchat.v1.Gateway
 * (proto/imchat/v1/gateway.proto) on one imc_grpc_client per gateway
 * node.
 *
 * The host owns the connections: it connects each gateway node (the
 * address the registry or its configuration gives), hands the client over
 * with imc_grpc_gwlink_set_client(), and replaces it after a loss.
 *
 * An operation for a node without a usable client:
 *  - without a connect callback, fails with IMC_ERR_UNAVAILABLE (the
 *    router then takes the slow path);
 *  - with one, waits (at most 1024 calls per node; more fail with
 *    IMC_ERR_UNAVAILABLE), and the callback tells the host the node is
 *    wanted when its first call starts waiting. The calls go out, in
 *    order, when the host hands a client over, or complete with the
 *    host's error when it gives the node up (imc_grpc_gwlink_fail). The
 *    host bounds the wait: it must do one or the other.
 * Nodes are kept in a list searched by node id: meant for tens to
 * hundreds of gateways.
 */
#ifndef IMCHAT_GRPC_GWLINK_H
#define IMCHAT_GRPC_GWLINK_H

#include <imchat/grpc_client.h>
#include <imchat/router.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct imc_grpc_gwlink imc_grpc_gwlink;

/* The host should connect node_id (valid during the call only). */
typedef void (*imc_grpc_connect_cb)(void *ud, const char *node_id);

/* Returns 0, IMC_ERR_INVALID_ARGUMENT (NULL out) or IMC_ERR_NOMEM. */
IMC_EXTERN int imc_grpc_gwlink_new(imc_grpc_gwlink **out, const imc_mem *mem);

/* Frees l. Calls already made stay with their clients, which complete
 * them; waiting calls complete with IMC_ERR_CLOSED. */
IMC_EXTERN void imc_grpc_gwlink_del(imc_grpc_gwlink *l);

/*
 * The connection to node_id's gateway (borrowed); the calls waiting for
 * it start on it. NULL: the node has none (its waiting calls go on
 * waiting). Returns 0, IMC_ERR_INVALID_ARGUMENT (NULL l, node_id not an
 * id) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_grpc_gwlink_set_client(imc_grpc_gwlink *l,
                                          const char *node_id,
                                          imc_grpc_client *client);

/*
 * The host cannot connect node_id (no address, not reachable): its
 * waiting calls complete with error (a negative IMC_ERR_*, e.g.
 * IMC_ERR_UNAVAILABLE). Returns 0 (also for a node with none) or
 * IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_grpc_gwlink_fail(imc_grpc_gwlink *l, const char *node_id,
                                    int error);

/* Called (cb NULL: not) when an operation finds no usable client for a
 * node. It must not call back into the link. Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT. */
IMC_EXTERN int imc_grpc_gwlink_set_connect_cb(imc_grpc_gwlink *l,
                                              imc_grpc_connect_cb cb, void *ud);

/* Deadline of every call (default 5000 ms). Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT (NULL l, ms <= 0). */
IMC_EXTERN int imc_grpc_gwlink_set_deadline_ms(imc_grpc_gwlink *l, int64_t ms);

/* The gateway link vtable; its ud is an imc_grpc_gwlink. */
IMC_EXTERN const imc_gwlink_vtbl *imc_grpc_gwlink_vtbl(void);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_GRPC_GWLINK_H */
