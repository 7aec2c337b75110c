/*
 * imchat.v1.Router on an imc_grpc_server: each method unpacks its request,
 * calls the router, and answers the call from the router's completion.
 */
#include "rpc/rpc_int.h"

#include <imchat/grpc_router_service.h>

#include "protocol/pb.h"

struct imc_grpc_router_service {
  imc_mem mem;
  ProtobufCAllocator a; /* on mem */
  imc_router *r;
};

/* A call waiting for the router; its request lives as long. */
typedef struct pending {
  imc_grpc_router_service *svc;
  imc_grpc_call *call;
  ProtobufCMessage *req;
} pending;

int imc_grpc_router_service_new(imc_grpc_router_service **out, imc_router *r,
                                const imc_mem *mem) {
  if (out == NULL || r == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_grpc_router_service *svc = imc_calloc(mem, 1, sizeof(*svc));
  if (svc == NULL)
    return IMC_ERR_NOMEM;
  svc->mem = *mem;
  imc_pb_allocator(&svc->a, &svc->mem);
  svc->r = r;
  *out = svc;
  return 0;
}

void imc_grpc_router_service_del(imc_grpc_router_service *svc) {
  if (svc) {
    imc_mem m = svc->mem;
    imc_free(&m, svc);
  }
}

/* The request as desc, or NULL after answering INVALID_ARGUMENT. */
static ProtobufCMessage *unpack(imc_grpc_router_service *svc,
                                imc_grpc_call *call,
                                const ProtobufCMessageDescriptor *desc,
                                const uint8_t *req, size_t len) {
  ProtobufCMessage *m = protobuf_c_message_unpack(desc, &svc->a, len, req);
  if (m == NULL)
    imc_grpc_call_fail(call, IMC_ERR_INVALID_ARGUMENT, "malformed request");
  return m;
}

/* Packs pm and answers OK with it. */
static void reply(imc_grpc_router_service *svc, imc_grpc_call *call,
                  const ProtobufCMessage *pm) {
  size_t n = protobuf_c_message_get_packed_size(pm);
  uint8_t *buf = imc_malloc(&svc->mem, n ? n : 1);
  if (buf == NULL) {
    imc_grpc_call_fail(call, IMC_ERR_NOMEM, "out of memory");
    return;
  }
  protobuf_c_message_pack(pm, buf);
  imc_grpc_call_reply(call, IMC_GRPC_OK, NULL, buf, n);
  imc_free(&svc->mem, buf);
}

static pending *pending_new(imc_grpc_router_service *svc, imc_grpc_call *call,
                            ProtobufCMessage *req) {
  pending *p = imc_malloc(&svc->mem, sizeof(*p));
  if (p == NULL) {
    protobuf_c_message_free_unpacked(req, &svc->a);
    imc_grpc_call_fail(call, IMC_ERR_NOMEM, "out of memory");
    return NULL;
  }
  *p = (pending){svc, call, req};
  return p;
}

static void pending_free(pending *p) {
  imc_grpc_router_service *svc = p->svc;
  protobuf_c_message_free_unpacked(p->req, &svc->a);
  imc_free(&svc->mem, p);
}

/* A router call that failed at once: answer it, free p. */
static void refused(pending *p, int rv) {
  imc_grpc_call_fail(p->call, rv, imc_strerror(rv));
  pending_free(p);
}

static void send_done(void *ud, int status, const imc_send_result *res,
                      const char *message) {
  pending *p = ud;
  if (status < 0) {
    imc_grpc_call_fail(p->call, status, message);
  } else {
    Imchat__V1__SendAck ack = IMCHAT__V1__SEND_ACK__INIT;
    ack.client_msg_id = (char *)res->client_msg_id;
    ack.msg_id = (char *)res->msg_id;
    ack.conversation_id = (char *)res->conversation_id;
    ack.seq = res->seq;
    ack.sent_at_ms = res->sent_at_ms;
    reply(p->svc, p->call, &ack.base);
  }
  pending_free(p);
}

static void h_send(void *ud, imc_grpc_call *call, const uint8_t *req,
                   size_t len) {
  imc_grpc_router_service *svc = ud;
  Imchat__V1__RouteRequest *rq = (Imchat__V1__RouteRequest *)unpack(
      svc, call, &imchat__v1__route_request__descriptor, req, len);
  pending *p = rq ? pending_new(svc, call, &rq->base) : NULL;
  if (p == NULL)
    return;
  imc_send_req q = {.struct_size = sizeof(q),
                    .from_user = rq->from_user,
                    .from_device = rq->from_device,
                    .node_id = rq->node_id,
                    .conn_id = rq->conn_id,
                    .client_msg_id = rq->client_msg_id,
                    .to_user = rq->to_user,
                    .group_id = rq->group_id,
                    .body = rq->body.data,
                    .body_len = rq->body.len,
                    .content_type = rq->content_type};
  int rv = imc_router_send(svc->r, &q, send_done, p);
  if (rv < 0)
    refused(p, rv);
}

static const Imchat__V1__Empty empty = IMCHAT__V1__EMPTY__INIT;

static void h_delivered(void *ud, imc_grpc_call *call, const uint8_t *req,
                        size_t len) {
  imc_grpc_router_service *svc = ud;
  Imchat__V1__DeliveredRequest *rq = (Imchat__V1__DeliveredRequest *)unpack(
      svc, call, &imchat__v1__delivered_request__descriptor, req, len);
  if (rq == NULL)
    return;
  size_t n = rq->n_acks;
  imc_msg *msgs = imc_malloc(&svc->mem, n ? n * sizeof(*msgs) : 1);
  imc_delivery_ack *acks = imc_malloc(&svc->mem, n ? n * sizeof(*acks) : 1);
  if (msgs == NULL || acks == NULL) {
    imc_grpc_call_fail(call, IMC_ERR_NOMEM, "out of memory");
  } else {
    for (size_t i = 0; i < n; i++)
      acks[i] =
          (imc_delivery_ack){rpc_pb_msg(&msgs[i], rq->acks[i]->message),
                             rq->acks[i]->user_id, rq->acks[i]->device_id};
    /* The router takes what it needs from the acks at once. */
    imc_router_delivered_many(svc->r, acks, n);
    reply(svc, call, &empty.base);
  }
  imc_free(&svc->mem, msgs);
  imc_free(&svc->mem, acks);
  imchat__v1__delivered_request__free_unpacked(rq, &svc->a);
}

static void h_undelivered(void *ud, imc_grpc_call *call, const uint8_t *req,
                          size_t len) {
  imc_grpc_router_service *svc = ud;
  Imchat__V1__UndeliveredRequest *rq = (Imchat__V1__UndeliveredRequest *)unpack(
      svc, call, &imchat__v1__undelivered_request__descriptor, req, len);
  if (rq == NULL)
    return;
  imc_msg m;
  if (rpc_pb_msg(&m, rq->message) == NULL || rq->user_id[0] == '\0') {
    imc_grpc_call_fail(call, IMC_ERR_INVALID_ARGUMENT,
                       "a message and a user are required");
  } else {
    imc_router_undelivered(svc->r, &m, rq->user_id);
    reply(svc, call, &empty.base);
  }
  imchat__v1__undelivered_request__free_unpacked(rq, &svc->a);
}

static void group_done(void *ud, int status) {
  pending *p = ud;
  if (status < 0)
    imc_grpc_call_fail(p->call, status, imc_strerror(status));
  else
    reply(p->svc, p->call, &empty.base);
  pending_free(p);
}

static void group_change(imc_grpc_router_service *svc, imc_grpc_call *call,
                         const uint8_t *req, size_t len, int add) {
  Imchat__V1__GroupMemberRequest *rq = (Imchat__V1__GroupMemberRequest *)unpack(
      svc, call, &imchat__v1__group_member_request__descriptor, req, len);
  pending *p = rq ? pending_new(svc, call, &rq->base) : NULL;
  if (p == NULL)
    return;
  int rv = add ? imc_router_group_add(svc->r, rq->group_id, rq->user_id,
                                      group_done, p)
               : imc_router_group_remove(svc->r, rq->group_id, rq->user_id,
                                         group_done, p);
  if (rv < 0)
    refused(p, rv);
}

static void h_group_add(void *ud, imc_grpc_call *call, const uint8_t *req,
                        size_t len) {
  group_change(ud, call, req, len, 1);
}

static void h_group_remove(void *ud, imc_grpc_call *call, const uint8_t *req,
                           size_t len) {
  group_change(ud, call, req, len, 0);
}

static void members_done(void *ud, int status, const char *const *items,
                         size_t n) {
  pending *p = ud;
  if (status < 0) {
    imc_grpc_call_fail(p->call, status, imc_strerror(status));
  } else {
    Imchat__V1__GroupMembersReply rep = IMCHAT__V1__GROUP_MEMBERS_REPLY__INIT;
    rep.n_user_ids = n;
    rep.user_ids = (char **)items;
    reply(p->svc, p->call, &rep.base);
  }
  pending_free(p);
}

static void h_group_members(void *ud, imc_grpc_call *call, const uint8_t *req,
                            size_t len) {
  imc_grpc_router_service *svc = ud;
  Imchat__V1__GroupRequest *rq = (Imchat__V1__GroupRequest *)unpack(
      svc, call, &imchat__v1__group_request__descriptor, req, len);
  pending *p = rq ? pending_new(svc, call, &rq->base) : NULL;
  if (p == NULL)
    return;
  int rv = imc_router_group_members(svc->r, rq->group_id, members_done, p);
  if (rv < 0)
    refused(p, rv);
}

int imc_grpc_router_service_add(imc_grpc_router_service *svc,
                                imc_grpc_server_options *opt) {
  static const struct {
    const char *name;
    imc_grpc_handler handler;
  } methods[] = {
      {"/imchat.v1.Router/Send", h_send},
      {"/imchat.v1.Router/Delivered", h_delivered},
      {"/imchat.v1.Router/Undelivered", h_undelivered},
      {"/imchat.v1.Router/GroupAdd", h_group_add},
      {"/imchat.v1.Router/GroupRemove", h_group_remove},
      {"/imchat.v1.Router/GroupMembers", h_group_members},
  };
  if (svc == NULL || opt == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
    int rv = imc_grpc_server_options_add_method(opt, methods[i].name,
                                                methods[i].handler, svc);
    if (rv < 0)
      return rv;
  }
  return 0;
}
