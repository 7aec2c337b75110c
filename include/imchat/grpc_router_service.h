/*
 * imchat - the router's gRPC service: imchat.v1.Router
 * (proto/imchat/v1/router.proto) on an imc_grpc_server, answered by an
 * imc_router. The counterpart of imc_grpc_upstream (grpc_upstream.h) on
 * the gateway's side.
 *
 * Send is answered when imc_router_send completes (its failure as the
 * call's status, with the IMC_ERR_* in imc-error); Delivered and
 * Undelivered at once, as the in-process upstream does; the group calls
 * when the store completes them. A request that does not parse ends with
 * INVALID_ARGUMENT.
 */
#ifndef IMCHAT_GRPC_ROUTER_SERVICE_H
#define IMCHAT_GRPC_ROUTER_SERVICE_H

#include <imchat/grpc_server.h>
#include <imchat/router.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct imc_grpc_router_service imc_grpc_router_service;

/* A service answering with r (borrowed; must outlive it). Returns 0,
 * IMC_ERR_INVALID_ARGUMENT or IMC_ERR_NOMEM. */
IMC_EXTERN int imc_grpc_router_service_new(imc_grpc_router_service **out,
                                           imc_router *r, const imc_mem *mem);

/* The server's calls must all be answered first (imc_router_pending()
 * and imc_grpc_server_pending() are 0). */
IMC_EXTERN void imc_grpc_router_service_del(imc_grpc_router_service *svc);

/*
 * Adds the six methods of imchat.v1.Router to opt, with svc as their ud.
 * Returns 0, IMC_ERR_INVALID_ARGUMENT, IMC_ERR_EXISTS (one is served
 * already) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_grpc_router_service_add(imc_grpc_router_service *svc,
                                           imc_grpc_server_options *opt);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_GRPC_ROUTER_SERVICE_H */
