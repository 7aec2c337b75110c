/*
 * imchat - the gateway's gRPC service: imchat.v1.Gateway
 * (proto/imchat/v1/gateway.proto) on an imc_grpc_server, answered by an
 * imc_gateway. The counterpart of imc_grpc_gwlink (grpc_gwlink.h) on the
 * router's side.
 *
 * Deliver answers the number of devices the push was queued on; a request
 * for another node ends with NOT_FOUND, one that does not parse (or has no
 * message) with INVALID_ARGUMENT. DeliveryStatus answers once the status
 * is queued (or the device is not here).
 */
#ifndef IMCHAT_GRPC_GATEWAY_SERVICE_H
#define IMCHAT_GRPC_GATEWAY_SERVICE_H

#include <imchat/gateway.h>
#include <imchat/grpc_server.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct imc_grpc_gateway_service imc_grpc_gateway_service;

/* A service answering with gw (borrowed; must outlive it). Returns 0,
 * IMC_ERR_INVALID_ARGUMENT or IMC_ERR_NOMEM. */
IMC_EXTERN int imc_grpc_gateway_service_new(imc_grpc_gateway_service **out,
                                            imc_gateway *gw,
                                            const imc_mem *mem);

IMC_EXTERN void imc_grpc_gateway_service_del(imc_grpc_gateway_service *svc);

/*
 * Adds the methods of imchat.v1.Gateway to opt, with svc as their ud.
 * Returns 0, IMC_ERR_INVALID_ARGUMENT, IMC_ERR_EXISTS or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_grpc_gateway_service_add(imc_grpc_gateway_service *svc,
                                            imc_grpc_server_options *opt);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_GRPC_GATEWAY_SERVICE_H */
