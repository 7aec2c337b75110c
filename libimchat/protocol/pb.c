#include "protocol/pb.h"
#include "util/alloc.h"

static void *pb_alloc(void *ud, size_t size) {
  return imc_malloc(ud, size);
}

static void pb_free(void *ud, void *p) {
  imc_free(ud, p);
}

void imc_pb_allocator(ProtobufCAllocator *a, const imc_mem *m) {
  a->alloc = pb_alloc;
  a->free = pb_free;
  a->allocator_data = (void *)m;
}

/* protobuf-c's generated defaults for strings point at a shared "". */
static char *pb_str(const char *s) {
  return s ? (char *)s : (char *)protobuf_c_empty_string;
}

void imc_pb_from_msg(Imchat__V1__Message *pm, const imc_msg *m) {
  imchat__v1__message__init(pm);
  pm->msg_id = pb_str(m->msg_id);
  pm->conversation_id = pb_str(m->conversation_id);
  pm->seq = m->seq;
  pm->from_user = pb_str(m->from_user);
  pm->to_user = pb_str(m->to_user);
  pm->group_id = pb_str(m->group_id);
  pm->body.data = (uint8_t *)m->body;
  pm->body.len = m->body_len;
  pm->content_type = pb_str(m->content_type);
  pm->sent_at_ms = m->sent_at_ms;
  pm->client_msg_id = pb_str(m->client_msg_id);
  pm->from_device = pb_str(m->from_device);
}

void imc_msg_from_pb(imc_msg *m, const Imchat__V1__Message *pm) {
  m->struct_size = sizeof(*m);
  m->msg_id = pm->msg_id;
  m->conversation_id = pm->conversation_id;
  m->seq = pm->seq;
  m->from_user = pm->from_user;
  m->to_user = pm->to_user;
  m->group_id = pm->group_id;
  m->body = pm->body.data;
  m->body_len = pm->body.len;
  m->content_type = pm->content_type;
  m->sent_at_ms = pm->sent_at_ms;
  m->client_msg_id = pm->client_msg_id;
  m->from_device = pm->from_device;
  m->from_node = ""; /* not on the wire */
  m->from_conn_id = 0;
}

int imc_pb_pack_server_frame(const Imchat__V1__ServerFrame *f,
                             const imc_mem *mem, uint8_t **out,
                             size_t *out_len) {
  size_t n = imchat__v1__server_frame__get_packed_size(f);
  uint8_t *buf = imc_malloc(mem, n ? n : 1);
  if (buf == NULL)
    return IMC_ERR_NOMEM;
  *out_len = imchat__v1__server_frame__pack(f, buf);
  *out = buf;
  return 0;
}
