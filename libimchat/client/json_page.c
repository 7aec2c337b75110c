/*
 * The JSON form of an offline or history page (SPEC 3.2), read into the
 * same OfflinePage struct protobuf-c unpacks, so the rest of the sync does
 * not care which form came: {"messages":[{...Message fields..., "cursor":
 * N}], "next_cursor": N, "has_more": bool}, body in base64. Everything is
 * allocated through the client's protobuf allocator and released with
 * imchat__v1__offline_page__free_unpacked; empty strings stay at
 * protobuf-c's shared default, which free_unpacked leaves alone.
 */
#include "client/client_int.h"
#include "protocol/base64.h"
#include "protocol/json.h"
#include "protocol/utf8.h"

#include <string.h>

static void *pb_alloc(imc_client *c, size_t n) {
  return c->pba.alloc(c->pba.allocator_data, n ? n : 1);
}

/* A string member into *slot (left at the default when absent or ""). */
static int get_str(imc_client *c, const imc_json_value *obj, const char *name,
                   char **slot) {
  imc_json_value v;
  int rv = imc_json_member(obj, name, &v);
  if (rv == IMC_ERR_NOT_FOUND || (rv == 0 && v.type == IMC_JSON_NULL))
    return 0;
  if (rv != 0 || v.type != IMC_JSON_STRING)
    return IMC_ERR_PROTO;
  if (v.len <= 2)
    return 0;
  char *s = pb_alloc(c, v.len);
  if (s == NULL)
    return IMC_ERR_NOMEM;
  ssize_t n = imc_json_string(&v, s, v.len);
  if (n < 0 || !imc_utf8_valid(s, (size_t)n)) {
    c->pba.free(c->pba.allocator_data, s);
    return IMC_ERR_PROTO;
  }
  *slot = s;
  return 0;
}

static int get_int(const imc_json_value *obj, const char *name, int64_t *out) {
  imc_json_value v;
  int rv = imc_json_member(obj, name, &v);
  if (rv == IMC_ERR_NOT_FOUND)
    return 0;
  if (rv != 0 || imc_json_int64(&v, out) != 0)
    return IMC_ERR_PROTO;
  return 0;
}

static int get_message(imc_client *c, const imc_json_value *o,
                       Imchat__V1__Message *m) {
  int rv = 0;
  int64_t seq = 0, sent = 0;
  if ((rv = get_str(c, o, "msg_id", &m->msg_id)) != 0 ||
      (rv = get_str(c, o, "conversation_id", &m->conversation_id)) != 0 ||
      (rv = get_str(c, o, "from_user", &m->from_user)) != 0 ||
      (rv = get_str(c, o, "to_user", &m->to_user)) != 0 ||
      (rv = get_str(c, o, "group_id", &m->group_id)) != 0 ||
      (rv = get_str(c, o, "content_type", &m->content_type)) != 0 ||
      (rv = get_str(c, o, "client_msg_id", &m->client_msg_id)) != 0 ||
      (rv = get_str(c, o, "from_device", &m->from_device)) != 0 ||
      (rv = get_int(o, "seq", &seq)) != 0 ||
      (rv = get_int(o, "sent_at_ms", &sent)) != 0)
    return rv;
  if (seq < 0)
    return IMC_ERR_PROTO;
  m->seq = (uint64_t)seq;
  m->sent_at_ms = sent;
  imc_json_value b;
  rv = imc_json_member(o, "body", &b);
  if (rv == IMC_ERR_NOT_FOUND)
    return 0;
  if (rv != 0 || b.type != IMC_JSON_STRING)
    return IMC_ERR_PROTO;
  /* base64 has no escapes: the raw text between the quotes is it. */
  m->body.data = pb_alloc(c, b.len);
  if (m->body.data == NULL)
    return IMC_ERR_NOMEM;
  return imc_base64_decode(b.p + 1, b.len - 2, m->body.data, &m->body.len);
}

int cl_json_page(imc_client *c, const uint8_t *body, size_t len,
                 Imchat__V1__OfflinePage **out) {
  imc_json_value doc, arr, el, v;
  *out = NULL;
  if (imc_json_parse((const char *)body, len, &doc) != 0 ||
      doc.type != IMC_JSON_OBJECT)
    return IMC_ERR_PROTO;
  Imchat__V1__OfflinePage *p = pb_alloc(c, sizeof(*p));
  if (p == NULL)
    return IMC_ERR_NOMEM;
  imchat__v1__offline_page__init(p);
  int rv = imc_json_member(&doc, "messages", &arr);
  size_t n = 0, pos = 0;
  if (rv == 0 && arr.type == IMC_JSON_ARRAY) {
    while ((rv = imc_json_array_next(&arr, &pos, &el)) == 1)
      n++;
  }
  if (rv != 0) {
    rv = IMC_ERR_PROTO;
    goto fail;
  }
  p->messages = n ? pb_alloc(c, n * sizeof(*p->messages)) : NULL;
  if (n && p->messages == NULL) {
    rv = IMC_ERR_NOMEM;
    goto fail;
  }
  pos = 0;
  while (p->n_messages < n && imc_json_array_next(&arr, &pos, &el) == 1) {
    if (el.type != IMC_JSON_OBJECT) {
      rv = IMC_ERR_PROTO;
      goto fail;
    }
    Imchat__V1__OfflineMessage *om = pb_alloc(c, sizeof(*om));
    Imchat__V1__Message *m = om ? pb_alloc(c, sizeof(*m)) : NULL;
    if (m == NULL) {
      if (om)
        c->pba.free(c->pba.allocator_data, om);
      rv = IMC_ERR_NOMEM;
      goto fail;
    }
    imchat__v1__offline_message__init(om);
    imchat__v1__message__init(m);
    om->message = m;
    p->messages[p->n_messages++] = om;
    int64_t cursor = 0;
    if ((rv = get_message(c, &el, m)) != 0 ||
        (rv = get_int(&el, "cursor", &cursor)) != 0)
      goto fail;
    om->cursor = (uint64_t)cursor;
  }
  int64_t next = 0;
  if ((rv = get_int(&doc, "next_cursor", &next)) != 0 || next < 0)
    goto fail;
  p->next_cursor = (uint64_t)next;
  if (imc_json_member(&doc, "has_more", &v) == 0)
    p->has_more = v.type == IMC_JSON_TRUE;
  *out = p;
  return 0;
fail:
  imchat__v1__offline_page__free_unpacked(p, &c->pba);
  return rv ? rv : IMC_ERR_PROTO;
}
