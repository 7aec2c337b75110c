/*
 * Protobuf glue of the imchat.v1 services: a packed message as a call,
 * and RoutedMessage <-> imc_msg views.
 */
#include "rpc/rpc_int.h"

#include "protocol/pb.h"
#include "util/msg.h"

int rpc_pb_call(imc_grpc_client *c, const imc_mem *mem, const char *method,
                const ProtobufCMessage *pm, int64_t deadline_ms,
                imc_grpc_done_cb done, void *done_ud) {
  if (c == NULL || !imc_grpc_client_usable(c))
    return IMC_ERR_UNAVAILABLE;
  size_t n = protobuf_c_message_get_packed_size(pm);
  uint8_t *buf = imc_malloc(mem, n ? n : 1);
  if (buf == NULL)
    return IMC_ERR_NOMEM;
  protobuf_c_message_pack(pm, buf);
  int rv = imc_grpc_client_call(c, method, buf, n, deadline_ms, done, done_ud);
  imc_free(mem, buf);
  return rv;
}

char *rpc_pb_str(const char *s) {
  return (char *)(s ? s : "");
}

void rpc_pb_routed(Imchat__V1__RoutedMessage *rm, Imchat__V1__Message *wm,
                   const imc_msg *m) {
  imc_msg view;
  const imc_msg *v = imc_msg_view(&view, m);
  imchat__v1__routed_message__init(rm);
  imc_pb_from_msg(wm, v);
  rm->message = wm;
  rm->from_node = rpc_pb_str(v->from_node);
  rm->from_conn_id = v->from_conn_id;
}

const imc_msg *rpc_pb_msg(imc_msg *m, const Imchat__V1__RoutedMessage *rm) {
  if (rm == NULL || rm->message == NULL)
    return NULL;
  imc_msg_from_pb(m, rm->message);
  m->from_node = rm->from_node;
  m->from_conn_id = rm->from_conn_id;
  return m;
}
