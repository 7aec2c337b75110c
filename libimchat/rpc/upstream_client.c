/*
 * imc_upstream_vtbl and imc_groups_vtbl on imc_grpc_clients: each
 * operation packs its imchat.v1.Router request for the next usable client
 * (round-robin) and completes from the call's completion.
 */
#include "rpc/rpc_int.h"

#include <imchat/grpc_upstream.h>

#include "protocol/pb.h"

#include <string.h>

#define ROUTER_SEND "/imchat.v1.Router/Send"
#define ROUTER_DELIVERED "/imchat.v1.Router/Delivered"
#define ROUTER_UNDELIVERED "/imchat.v1.Router/Undelivered"
#define ROUTER_GROUP_ADD "/imchat.v1.Router/GroupAdd"
#define ROUTER_GROUP_REMOVE "/imchat.v1.Router/GroupRemove"
#define ROUTER_GROUP_MEMBERS "/imchat.v1.Router/GroupMembers"

struct imc_grpc_upstream {
  imc_mem mem;
  imc_grpc_client **clients; /* borrowed */
  size_t n_clients, cap_clients;
  size_t next; /* where the search for the next usable client starts */
  int64_t deadline_ms;
};

/* What a call's completion needs; freed there. */
typedef struct op {
  imc_mem mem;
  imc_send_cb send_done;
  imc_done_cb done;
  imc_list_cb list_done;
  void *done_ud;
} op;

int imc_grpc_upstream_new(imc_grpc_upstream **out, const imc_mem *mem) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_grpc_upstream *u = imc_calloc(mem, 1, sizeof(*u));
  if (u == NULL)
    return IMC_ERR_NOMEM;
  u->mem = *mem;
  u->deadline_ms = 10000;
  *out = u;
  return 0;
}

void imc_grpc_upstream_del(imc_grpc_upstream *u) {
  if (u) {
    imc_mem m = u->mem;
    imc_free(&m, u->clients);
    imc_free(&m, u);
  }
}

/* The index of c among u's clients, or n_clients. */
static size_t find(const imc_grpc_upstream *u, const imc_grpc_client *c) {
  size_t i = 0;
  while (i < u->n_clients && u->clients[i] != c)
    i++;
  return i;
}

int imc_grpc_upstream_add_client(imc_grpc_upstream *u, imc_grpc_client *c) {
  if (u == NULL || c == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (find(u, c) < u->n_clients)
    return IMC_ERR_EXISTS;
  if (u->n_clients == u->cap_clients) {
    size_t cap = u->cap_clients ? 2 * u->cap_clients : 4;
    imc_grpc_client **a =
        imc_realloc(&u->mem, u->clients, cap * sizeof(*u->clients));
    if (a == NULL)
      return IMC_ERR_NOMEM;
    u->clients = a;
    u->cap_clients = cap;
  }
  u->clients[u->n_clients++] = c;
  return 0;
}

void imc_grpc_upstream_remove_client(imc_grpc_upstream *u, imc_grpc_client *c) {
  if (u == NULL)
    return;
  size_t i = find(u, c);
  if (i == u->n_clients)
    return;
  /* Keep the order, and the turn of the client that was next. */
  memmove(&u->clients[i], &u->clients[i + 1],
          (u->n_clients - i - 1) * sizeof(*u->clients));
  u->n_clients--;
  if (i < u->next)
    u->next--;
  if (u->next >= u->n_clients)
    u->next = 0;
}

int imc_grpc_upstream_set_deadline_ms(imc_grpc_upstream *u, int64_t ms) {
  if (u == NULL || ms <= 0)
    return IMC_ERR_INVALID_ARGUMENT;
  u->deadline_ms = ms;
  return 0;
}

/* The next usable client after the last one used, or NULL. */
static imc_grpc_client *pick(imc_grpc_upstream *u) {
  for (size_t k = 0; k < u->n_clients; k++) {
    size_t i = (u->next + k) % u->n_clients;
    if (imc_grpc_client_usable(u->clients[i])) {
      u->next = (i + 1) % u->n_clients;
      return u->clients[i];
    }
  }
  return NULL;
}

/*
 * Calls method with pm on the next usable client; o goes with the call,
 * or is freed. A failed call is not tried again on another client: its
 * caller retries (a client resends with the same client_msg_id, which the
 * router's dedup answers).
 */
static int start(imc_grpc_upstream *u, const char *method,
                 const ProtobufCMessage *pm, op *o, imc_grpc_done_cb done) {
  int rv = rpc_pb_call(pick(u), &u->mem, method, pm, u->deadline_ms, done, o);
  if (rv < 0)
    imc_free(&u->mem, o);
  return rv;
}

static op *op_new(imc_grpc_upstream *u, void *done_ud) {
  op *o = imc_calloc(&u->mem, 1, sizeof(*o));
  if (o) {
    o->mem = u->mem;
    o->done_ud = done_ud;
  }
  return o;
}

static void op_free(op *o) {
  imc_mem m = o->mem;
  imc_free(&m, o);
}

static void send_done(void *ud, int status, int error, const char *message,
                      const uint8_t *resp, size_t len) {
  op *o = ud;
  if (status != IMC_GRPC_OK) {
    o->send_done(o->done_ud, error, NULL, message);
    op_free(o);
    return;
  }
  ProtobufCAllocator a;
  imc_pb_allocator(&a, &o->mem);
  Imchat__V1__SendAck *ack = imchat__v1__send_ack__unpack(&a, len, resp);
  if (ack == NULL) {
    o->send_done(o->done_ud, IMC_ERR_UNAVAILABLE, NULL,
                 "malformed answer from the router");
  } else {
    imc_send_result res = {ack->client_msg_id, ack->msg_id,
                           ack->conversation_id, ack->seq, ack->sent_at_ms};
    o->send_done(o->done_ud, 0, &res, NULL);
    imchat__v1__send_ack__free_unpacked(ack, &a);
  }
  op_free(o);
}

static int up_send(void *ud, const imc_send_req *req, imc_send_cb done,
                   void *done_ud) {
  imc_grpc_upstream *u = ud;
  if (req == NULL || done == NULL ||
      !IMC_HAS_MEMBER(req, imc_send_req, content_type))
    return IMC_ERR_INVALID_ARGUMENT;
  op *o = op_new(u, done_ud);
  if (o == NULL)
    return IMC_ERR_NOMEM;
  o->send_done = done;
  Imchat__V1__RouteRequest rq = IMCHAT__V1__ROUTE_REQUEST__INIT;
  rq.from_user = rpc_pb_str(req->from_user);
  rq.from_device = rpc_pb_str(req->from_device);
  rq.node_id = rpc_pb_str(req->node_id);
  rq.conn_id = req->conn_id;
  rq.client_msg_id = rpc_pb_str(req->client_msg_id);
  rq.to_user = rpc_pb_str(req->to_user);
  rq.group_id = rpc_pb_str(req->group_id);
  rq.body.data = (uint8_t *)req->body;
  rq.body.len = req->body ? req->body_len : 0;
  rq.content_type = rpc_pb_str(req->content_type);
  return start(u, ROUTER_SEND, &rq.base, o, send_done);
}

static void report_done(void *ud, int status, int error, const char *message,
                        const uint8_t *resp, size_t len) {
  op *o = ud;
  o->done(o->done_ud, status == IMC_GRPC_OK ? 0 : error);
  op_free(o);
}

/* The acks as one DeliveredRequest; items point into three arrays of n. */
static int up_delivered_many(void *ud, const imc_delivery_ack *acks, size_t n,
                             imc_done_cb done, void *done_ud) {
  imc_grpc_upstream *u = ud;
  if ((acks == NULL && n > 0) || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  op *o = op_new(u, done_ud);
  if (o == NULL)
    return IMC_ERR_NOMEM;
  o->done = done;
  size_t each = sizeof(Imchat__V1__PushAck) + sizeof(Imchat__V1__PushAck *) +
                sizeof(Imchat__V1__RoutedMessage) + sizeof(Imchat__V1__Message);
  uint8_t *mem = imc_malloc(&u->mem, n ? n * each : 1);
  if (mem == NULL) {
    op_free(o);
    return IMC_ERR_NOMEM;
  }
  Imchat__V1__PushAck *items = (Imchat__V1__PushAck *)(void *)mem;
  Imchat__V1__RoutedMessage *rms = (Imchat__V1__RoutedMessage *)(items + n);
  Imchat__V1__Message *wms = (Imchat__V1__Message *)(rms + n);
  Imchat__V1__PushAck **ptrs = (Imchat__V1__PushAck **)(void *)(wms + n);
  for (size_t i = 0; i < n; i++) {
    imchat__v1__push_ack__init(&items[i]);
    if (acks[i].msg != NULL) {
      rpc_pb_routed(&rms[i], &wms[i], acks[i].msg);
      items[i].message = &rms[i];
    }
    items[i].user_id = rpc_pb_str(acks[i].user_id);
    items[i].device_id = rpc_pb_str(acks[i].device_id);
    ptrs[i] = &items[i];
  }
  Imchat__V1__DeliveredRequest rq = IMCHAT__V1__DELIVERED_REQUEST__INIT;
  rq.n_acks = n;
  rq.acks = ptrs;
  int rv = start(u, ROUTER_DELIVERED, &rq.base, o, report_done);
  imc_free(&u->mem, mem);
  return rv;
}

static int up_delivered(void *ud, const imc_msg *msg, const char *user_id,
                        const char *device_id, imc_done_cb done,
                        void *done_ud) {
  if (msg == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_delivery_ack ack = {msg, user_id, device_id};
  return up_delivered_many(ud, &ack, 1, done, done_ud);
}

static int up_undelivered(void *ud, const imc_msg *msg, const char *user_id,
                          imc_done_cb done, void *done_ud) {
  imc_grpc_upstream *u = ud;
  if (msg == NULL || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  op *o = op_new(u, done_ud);
  if (o == NULL)
    return IMC_ERR_NOMEM;
  o->done = done;
  Imchat__V1__RoutedMessage rm;
  Imchat__V1__Message wm;
  rpc_pb_routed(&rm, &wm, msg);
  Imchat__V1__UndeliveredRequest rq = IMCHAT__V1__UNDELIVERED_REQUEST__INIT;
  rq.message = &rm;
  rq.user_id = rpc_pb_str(user_id);
  return start(u, ROUTER_UNDELIVERED, &rq.base, o, report_done);
}

static const imc_upstream_vtbl vtbl = {.struct_size = sizeof(imc_upstream_vtbl),
                                       .send = up_send,
                                       .delivered = up_delivered,
                                       .undelivered = up_undelivered,
                                       .delivered_many = up_delivered_many};

const imc_upstream_vtbl *imc_grpc_upstream_vtbl(void) {
  return &vtbl;
}

static int group_change(imc_grpc_upstream *u, const char *method,
                        const char *group_id, const char *user_id,
                        imc_done_cb done, void *done_ud) {
  if (group_id == NULL || user_id == NULL || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  op *o = op_new(u, done_ud);
  if (o == NULL)
    return IMC_ERR_NOMEM;
  o->done = done;
  Imchat__V1__GroupMemberRequest rq = IMCHAT__V1__GROUP_MEMBER_REQUEST__INIT;
  rq.group_id = (char *)group_id;
  rq.user_id = (char *)user_id;
  return start(u, method, &rq.base, o, report_done);
}

static int gr_add(void *ud, const char *group_id, const char *user_id,
                  imc_done_cb done, void *done_ud) {
  return group_change(ud, ROUTER_GROUP_ADD, group_id, user_id, done, done_ud);
}

static int gr_remove(void *ud, const char *group_id, const char *user_id,
                     imc_done_cb done, void *done_ud) {
  return group_change(ud, ROUTER_GROUP_REMOVE, group_id, user_id, done,
                      done_ud);
}

static void members_done(void *ud, int status, int error, const char *message,
                         const uint8_t *resp, size_t len) {
  op *o = ud;
  if (status != IMC_GRPC_OK) {
    o->list_done(o->done_ud, error, NULL, 0);
    op_free(o);
    return;
  }
  ProtobufCAllocator a;
  imc_pb_allocator(&a, &o->mem);
  Imchat__V1__GroupMembersReply *rep =
      imchat__v1__group_members_reply__unpack(&a, len, resp);
  if (rep == NULL) {
    o->list_done(o->done_ud, IMC_ERR_UNAVAILABLE, NULL, 0);
  } else {
    o->list_done(o->done_ud, 0, (const char *const *)rep->user_ids,
                 rep->n_user_ids);
    imchat__v1__group_members_reply__free_unpacked(rep, &a);
  }
  op_free(o);
}

static int gr_members(void *ud, const char *group_id, imc_list_cb done,
                      void *done_ud) {
  imc_grpc_upstream *u = ud;
  if (group_id == NULL || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  op *o = op_new(u, done_ud);
  if (o == NULL)
    return IMC_ERR_NOMEM;
  o->list_done = done;
  Imchat__V1__GroupRequest rq = IMCHAT__V1__GROUP_REQUEST__INIT;
  rq.group_id = (char *)group_id;
  return start(u, ROUTER_GROUP_MEMBERS, &rq.base, o, members_done);
}

static const imc_groups_vtbl groups_vtbl = {.struct_size =
                                                sizeof(imc_groups_vtbl),
                                            .add = gr_add,
                                            .remove = gr_remove,
                                            .members = gr_members};

const imc_groups_vtbl *imc_grpc_upstream_groups_vtbl(void) {
  return &groups_vtbl;
}
