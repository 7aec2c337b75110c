/* imchat - the whole public API of libimchat. */
#ifndef IMCHAT_IMCHAT_H
#define IMCHAT_IMCHAT_H

#include <imchat/version.h>
#include <imchat/common.h>
#include <imchat/backend.h>
#include <imchat/gateway.h>
#include <imchat/router.h>
#include <imchat/worker.h>
#include <imchat/api.h>
#include <imchat/jwt.h>
#include <imchat/fanout.h>
#include <imchat/local_link.h>
#include <imchat/memreg.h>
#include <imchat/sqlite.h>
#include <imchat/membus.h>
#include <imchat/sealed_store.h>
#include <imchat/sealed_bus.h>
#include <imchat/client.h>
#include <imchat/jwks.h>
#include <imchat/grpc.h>
#include <imchat/grpc_server.h>
#include <imchat/grpc_client.h>
#include <imchat/grpc_upstream.h>
#include <imchat/grpc_router_service.h>
#include <imchat/grpc_gwlink.h>
#include <imchat/grpc_gateway_service.h>

#endif /* IMCHAT_IMCHAT_H */
