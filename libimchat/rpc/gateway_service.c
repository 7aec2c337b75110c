/*
 * imchat.v1.Gateway on an imc_grpc_server: pushes and statuses the router
 * sends this node, handed to its imc_gateway at once (as the in-process
 * link does).
 */
#include "rpc/rpc_int.h"

#include <imchat/grpc_gateway_service.h>

#include "gateway.pb-c.h"
#include "protocol/pb.h"

#include <string.h>

struct imc_grpc_gateway_service {
  imc_mem mem;
  ProtobufCAllocator a; /* on mem */
  imc_gateway *gw;
};

int imc_grpc_gateway_service_new(imc_grpc_gateway_service **out,
                                 imc_gateway *gw, const imc_mem *mem) {
  if (out == NULL || gw == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_grpc_gateway_service *svc = imc_calloc(mem, 1, sizeof(*svc));
  if (svc == NULL)
    return IMC_ERR_NOMEM;
  svc->mem = *mem;
  imc_pb_allocator(&svc->a, &svc->mem);
  svc->gw = gw;
  *out = svc;
  return 0;
}

void imc_grpc_gateway_service_del(imc_grpc_gateway_service *svc) {
  if (svc) {
    imc_mem m = svc->mem;
    imc_free(&m, svc);
  }
}

/* 1 if node_id ("" for any) names this gateway; else answers NOT_FOUND. */
static int here(imc_grpc_gateway_service *svc, imc_grpc_call *call,
                const char *node_id) {
  const char *mine = imc_gateway_get_node_id(svc->gw);
  if (node_id[0] == '\0' || (mine != NULL && strcmp(mine, node_id) == 0))
    return 1;
  imc_grpc_call_fail(call, IMC_ERR_NOT_FOUND, "not this gateway node");
  return 0;
}

/* Answers rv (a count or 1/0 on success, else an IMC_ERR_*) with reply
 * pm. */
static void answer(imc_grpc_gateway_service *svc, imc_grpc_call *call, int rv,
                   const ProtobufCMessage *pm) {
  if (rv < 0) {
    imc_grpc_call_fail(call, rv, imc_strerror(rv));
    return;
  }
  uint8_t buf[16]; /* PushReply or Empty */
  size_t n = protobuf_c_message_pack(pm, buf);
  imc_grpc_call_reply(call, IMC_GRPC_OK, NULL, buf, n);
}

static void h_deliver(void *ud, imc_grpc_call *call, const uint8_t *req,
                      size_t len) {
  imc_grpc_gateway_service *svc = ud;
  Imchat__V1__PushRequest *rq =
      imchat__v1__push_request__unpack(&svc->a, len, req);
  imc_msg m;
  if (rq == NULL || rpc_pb_msg(&m, rq->message) == NULL ||
      rq->user_id[0] == '\0') {
    imc_grpc_call_fail(call, IMC_ERR_INVALID_ARGUMENT, "malformed request");
  } else if (here(svc, call, rq->node_id)) {
    int n = imc_gateway_deliver(
        svc->gw, rq->user_id, rq->skip_device[0] ? rq->skip_device : NULL, &m);
    Imchat__V1__PushReply rep = IMCHAT__V1__PUSH_REPLY__INIT;
    rep.count = n > 0 ? (uint32_t)n : 0;
    answer(svc, call, n, &rep.base);
  }
  if (rq)
    imchat__v1__push_request__free_unpacked(rq, &svc->a);
}

static void h_status(void *ud, imc_grpc_call *call, const uint8_t *req,
                     size_t len) {
  imc_grpc_gateway_service *svc = ud;
  Imchat__V1__StatusRequest *rq =
      imchat__v1__status_request__unpack(&svc->a, len, req);
  if (rq == NULL || rq->user_id[0] == '\0' ||
      ((int)rq->state != IMC_DELIVERED && (int)rq->state != IMC_STORED)) {
    imc_grpc_call_fail(call, IMC_ERR_INVALID_ARGUMENT, "malformed request");
  } else if (here(svc, call, rq->node_id)) {
    int rv = imc_gateway_push_status(
        svc->gw, rq->user_id, rq->device_id, rq->msg_id, rq->client_msg_id,
        (imc_delivery_state)rq->state, rq->recipient);
    Imchat__V1__Empty empty = IMCHAT__V1__EMPTY__INIT;
    answer(svc, call, rv, &empty.base);
  }
  if (rq)
    imchat__v1__status_request__free_unpacked(rq, &svc->a);
}

int imc_grpc_gateway_service_add(imc_grpc_gateway_service *svc,
                                 imc_grpc_server_options *opt) {
  if (svc == NULL || opt == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  int rv = imc_grpc_server_options_add_method(opt, "/imchat.v1.Gateway/Deliver",
                                              h_deliver, svc);
  if (rv == 0)
    rv = imc_grpc_server_options_add_method(
        opt, "/imchat.v1.Gateway/DeliveryStatus", h_status, svc);
  return rv;
}
