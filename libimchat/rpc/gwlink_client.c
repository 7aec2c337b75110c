/*
 * imc_gwlink_vtbl on imc_grpc_clients, one per gateway node: each
 * operation packs its imchat.v1.Gateway request and completes from the
 * call's completion. With a connect callback, calls for a node without a
 * client wait, packed, until the host connects it or gives it up.
 */
#include "rpc/rpc_int.h"

#include <imchat/grpc_gwlink.h>

#include "gateway.pb-c.h"
#include "protocol/pb.h"

#include <string.h>

#define GATEWAY_DELIVER "/imchat.v1.Gateway/Deliver"
#define GATEWAY_STATUS "/imchat.v1.Gateway/DeliveryStatus"

/* Calls a node waits with for its connection. */
#define MAX_WAITING 1024

/* A packed call waiting for its node's client. */
typedef struct wcall {
  struct wcall *next;
  const char *method;
  imc_grpc_done_cb done;
  void *done_ud;
  size_t len;
  uint8_t req[];
} wcall;

typedef struct node {
  char *id;
  imc_grpc_client *client;
  wcall *head, *tail; /* waiting, oldest first */
  size_t n_waiting;
} node;

struct imc_grpc_gwlink {
  imc_mem mem;
  node *nodes;
  size_t n_nodes, cap_nodes;
  int64_t deadline_ms;
  imc_grpc_connect_cb connect;
  void *connect_ud;
};

/* What a call's completion needs; freed there. */
typedef struct op {
  imc_mem mem;
  imc_count_cb count_done;
  imc_done_cb done;
  void *done_ud;
} op;

int imc_grpc_gwlink_new(imc_grpc_gwlink **out, const imc_mem *mem) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_grpc_gwlink *l = imc_calloc(mem, 1, sizeof(*l));
  if (l == NULL)
    return IMC_ERR_NOMEM;
  l->mem = *mem;
  l->deadline_ms = 5000;
  *out = l;
  return 0;
}

/* Completes the calls n waits with: error, or UNAVAILABLE. */
static void fail_waiting(imc_grpc_gwlink *l, node *n, int error) {
  wcall *w = n->head;
  n->head = n->tail = NULL;
  n->n_waiting = 0;
  while (w) {
    wcall *next = w->next;
    w->done(w->done_ud, imc_grpc_status_from_error(error), error, "", NULL, 0);
    imc_free(&l->mem, w);
    w = next;
  }
}

void imc_grpc_gwlink_del(imc_grpc_gwlink *l) {
  if (l == NULL)
    return;
  imc_mem m = l->mem;
  for (size_t i = 0; i < l->n_nodes; i++) {
    fail_waiting(l, &l->nodes[i], IMC_ERR_CLOSED);
    imc_free(&m, l->nodes[i].id);
  }
  imc_free(&m, l->nodes);
  imc_free(&m, l);
}

static node *find(imc_grpc_gwlink *l, const char *id) {
  for (size_t i = 0; i < l->n_nodes; i++)
    if (strcmp(l->nodes[i].id, id) == 0)
      return &l->nodes[i];
  return NULL;
}

static node *add(imc_grpc_gwlink *l, const char *id) {
  if (l->n_nodes == l->cap_nodes) {
    size_t cap = l->cap_nodes ? l->cap_nodes * 2 : 8;
    node *t = imc_realloc(&l->mem, l->nodes, cap * sizeof(*t));
    if (t == NULL)
      return NULL;
    l->nodes = t;
    l->cap_nodes = cap;
  }
  char *dup = imc_strdup(&l->mem, id);
  if (dup == NULL)
    return NULL;
  node *n = &l->nodes[l->n_nodes++];
  memset(n, 0, sizeof(*n));
  n->id = dup;
  return n;
}

/* Hands n's waiting calls to its new client, in order. The list is
 * detached first: a completion may start calls of its own. */
static void start_waiting(imc_grpc_gwlink *l, const char *node_id) {
  node *n = find(l, node_id);
  wcall *w = n->head;
  imc_grpc_client *c = n->client;
  n->head = n->tail = NULL;
  n->n_waiting = 0;
  while (w) {
    wcall *next = w->next;
    int rv = imc_grpc_client_call(c, w->method, w->req, w->len, l->deadline_ms,
                                  w->done, w->done_ud);
    if (rv < 0)
      w->done(w->done_ud, imc_grpc_status_from_error(rv), rv, "", NULL, 0);
    imc_free(&l->mem, w);
    w = next;
  }
}

int imc_grpc_gwlink_set_client(imc_grpc_gwlink *l, const char *node_id,
                               imc_grpc_client *client) {
  if (l == NULL || node_id == NULL || !imc_id_valid(node_id, strlen(node_id)))
    return IMC_ERR_INVALID_ARGUMENT;
  node *n = find(l, node_id);
  if (n == NULL && client == NULL)
    return 0;
  if (n == NULL && (n = add(l, node_id)) == NULL)
    return IMC_ERR_NOMEM;
  n->client = client;
  if (client != NULL && n->head != NULL)
    start_waiting(l, node_id);
  else if (client == NULL && n->head == NULL) {
    imc_free(&l->mem, n->id);
    *n = l->nodes[--l->n_nodes];
  }
  return 0;
}

int imc_grpc_gwlink_fail(imc_grpc_gwlink *l, const char *node_id, int error) {
  if (l == NULL || node_id == NULL || error >= 0)
    return IMC_ERR_INVALID_ARGUMENT;
  node *n = find(l, node_id);
  if (n == NULL)
    return 0;
  fail_waiting(l, n, error);
  n = find(l, node_id); /* completions may have changed the list */
  if (n != NULL && n->client == NULL && n->head == NULL) {
    imc_free(&l->mem, n->id);
    *n = l->nodes[--l->n_nodes];
  }
  return 0;
}

int imc_grpc_gwlink_set_connect_cb(imc_grpc_gwlink *l, imc_grpc_connect_cb cb,
                                   void *ud) {
  if (l == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  l->connect = cb;
  l->connect_ud = ud;
  return 0;
}

int imc_grpc_gwlink_set_deadline_ms(imc_grpc_gwlink *l, int64_t ms) {
  if (l == NULL || ms <= 0)
    return IMC_ERR_INVALID_ARGUMENT;
  l->deadline_ms = ms;
  return 0;
}

/* pm packed, waiting in n for a client. */
static int wait_for_client(imc_grpc_gwlink *l, node *n, const char *method,
                           const ProtobufCMessage *pm, op *o,
                           imc_grpc_done_cb done) {
  if (n->n_waiting >= MAX_WAITING)
    return IMC_ERR_UNAVAILABLE;
  size_t len = protobuf_c_message_get_packed_size(pm);
  wcall *w = imc_malloc(&l->mem, sizeof(*w) + len);
  if (w == NULL)
    return IMC_ERR_NOMEM;
  protobuf_c_message_pack(pm, w->req);
  w->next = NULL;
  w->method = method;
  w->done = done;
  w->done_ud = o;
  w->len = len;
  if (n->tail)
    n->tail->next = w;
  else
    n->head = w;
  n->tail = w;
  n->n_waiting++;
  return 0;
}

/* Calls method on node_id's client with pm; o goes with the call, or is
 * freed. Without a usable client the call waits for one if the host
 * connects nodes (the connect callback is told), else fails. */
static int start(imc_grpc_gwlink *l, const char *node_id, const char *method,
                 const ProtobufCMessage *pm, op *o, imc_grpc_done_cb done) {
  node *n = find(l, node_id);
  imc_grpc_client *c = n ? n->client : NULL;
  int rv;
  if (c != NULL && imc_grpc_client_usable(c)) {
    rv = rpc_pb_call(c, &l->mem, method, pm, l->deadline_ms, done, o);
  } else if (l->connect == NULL) {
    rv = IMC_ERR_UNAVAILABLE;
  } else if (n == NULL && (n = add(l, node_id)) == NULL) {
    rv = IMC_ERR_NOMEM;
  } else {
    int first = n->head == NULL;
    rv = wait_for_client(l, n, method, pm, o, done);
    if (rv == 0 && first)
      l->connect(l->connect_ud, node_id);
    return rv;
  }
  if (rv < 0)
    imc_free(&l->mem, o);
  return rv;
}

static op *op_new(imc_grpc_gwlink *l, void *done_ud) {
  op *o = imc_calloc(&l->mem, 1, sizeof(*o));
  if (o) {
    o->mem = l->mem;
    o->done_ud = done_ud;
  }
  return o;
}

static void op_free(op *o) {
  imc_mem m = o->mem;
  imc_free(&m, o);
}

static void deliver_done(void *ud, int status, int error, const char *message,
                         const uint8_t *resp, size_t len) {
  op *o = ud;
  if (status != IMC_GRPC_OK) {
    o->count_done(o->done_ud, error, 0);
  } else {
    ProtobufCAllocator a;
    imc_pb_allocator(&a, &o->mem);
    Imchat__V1__PushReply *rep = imchat__v1__push_reply__unpack(&a, len, resp);
    if (rep == NULL) {
      o->count_done(o->done_ud, IMC_ERR_PROTO, 0);
    } else {
      o->count_done(o->done_ud, 0,
                    rep->count > INT32_MAX ? INT32_MAX : (int)rep->count);
      imchat__v1__push_reply__free_unpacked(rep, &a);
    }
  }
  op_free(o);
}

static int gl_deliver(void *ud, const char *node_id, const char *user_id,
                      const char *skip_device, const imc_msg *msg,
                      imc_count_cb done, void *done_ud) {
  imc_grpc_gwlink *l = ud;
  if (node_id == NULL || user_id == NULL || msg == NULL || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  op *o = op_new(l, done_ud);
  if (o == NULL)
    return IMC_ERR_NOMEM;
  o->count_done = done;
  Imchat__V1__RoutedMessage rm;
  Imchat__V1__Message wm;
  rpc_pb_routed(&rm, &wm, msg);
  Imchat__V1__PushRequest rq = IMCHAT__V1__PUSH_REQUEST__INIT;
  rq.node_id = (char *)node_id;
  rq.user_id = (char *)user_id;
  rq.skip_device = rpc_pb_str(skip_device);
  rq.message = &rm;
  return start(l, node_id, GATEWAY_DELIVER, &rq.base, o, deliver_done);
}

static void status_done(void *ud, int status, int error, const char *message,
                        const uint8_t *resp, size_t len) {
  op *o = ud;
  o->done(o->done_ud, status == IMC_GRPC_OK ? 0 : error);
  op_free(o);
}

static int gl_status(void *ud, const char *node_id, const char *user_id,
                     const char *device_id, const char *msg_id,
                     const char *client_msg_id, imc_delivery_state state,
                     const char *recipient, imc_done_cb done, void *done_ud) {
  imc_grpc_gwlink *l = ud;
  if (node_id == NULL || user_id == NULL || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  op *o = op_new(l, done_ud);
  if (o == NULL)
    return IMC_ERR_NOMEM;
  o->done = done;
  Imchat__V1__StatusRequest rq = IMCHAT__V1__STATUS_REQUEST__INIT;
  rq.node_id = (char *)node_id;
  rq.user_id = (char *)user_id;
  rq.device_id = rpc_pb_str(device_id);
  rq.msg_id = rpc_pb_str(msg_id);
  rq.client_msg_id = rpc_pb_str(client_msg_id);
  rq.state = (Imchat__V1__DeliveryStatus__State)state;
  rq.recipient = rpc_pb_str(recipient);
  return start(l, node_id, GATEWAY_STATUS, &rq.base, o, status_done);
}

static const imc_gwlink_vtbl vtbl = {sizeof(imc_gwlink_vtbl), gl_deliver,
                                     gl_status};

const imc_gwlink_vtbl *imc_grpc_gwlink_vtbl(void) {
  return &vtbl;
}
