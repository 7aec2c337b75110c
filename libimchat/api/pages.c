/*
 * Pages of messages as /offline and history answer them (SPEC 3.2): JSON
 * {"messages":[...],"next_cursor":N,"has_more":B} with the proto's field
 * names and base64 bodies, or a protobuf OfflinePage.
 */
#include "api/internal.h"

#include "protocol/pb.h"
#include "util/alloc.h"

/* ------------------------------------------------------------------ */
/* Pages of messages                                                    */
/* ------------------------------------------------------------------ */

static void json_msg(imc_jsonw *w, const imc_msg *m, uint64_t cursor) {
  imc_jsonw_object_begin(w);
  imc_jsonw_kv_string(w, "msg_id", m->msg_id);
  imc_jsonw_kv_string(w, "conversation_id", m->conversation_id);
  imc_jsonw_kv_uint64(w, "seq", m->seq);
  imc_jsonw_kv_string(w, "from_user", m->from_user);
  imc_jsonw_kv_string(w, "to_user", m->to_user);
  imc_jsonw_kv_string(w, "group_id", m->group_id);
  imc_jsonw_key(w, "body");
  imc_jsonw_base64(w, m->body, m->body_len);
  imc_jsonw_kv_string(w, "content_type", m->content_type);
  imc_jsonw_kv_int64(w, "sent_at_ms", m->sent_at_ms);
  imc_jsonw_kv_string(w, "client_msg_id", m->client_msg_id);
  imc_jsonw_kv_string(w, "from_device", m->from_device);
  imc_jsonw_kv_uint64(w, "cursor", cursor);
  imc_jsonw_object_end(w);
}

/* Packs an OfflinePage into b. The message views borrow from msgs. */
static void pack_page(imc_wbuf *b, const imc_msg *const *msgs,
                      const uint64_t *cursors, size_t n, uint64_t next,
                      int has_more) {
  const size_t per = sizeof(Imchat__V1__OfflineMessage *) +
                     sizeof(Imchat__V1__OfflineMessage) +
                     sizeof(Imchat__V1__Message);
  if (n > SIZE_MAX / per) {
    b->err = IMC_ERR_NOMEM;
    return;
  }
  /* One block: the pointer array, then the entries, then the messages;
   * each part keeps pointer alignment. */
  void *blk = NULL;
  Imchat__V1__OfflineMessage **pp = NULL;
  if (n > 0) {
    blk = imc_malloc(b->mem, n * per);
    if (blk == NULL) {
      b->err = IMC_ERR_NOMEM;
      return;
    }
    pp = blk;
    Imchat__V1__OfflineMessage *om = (void *)(pp + n);
    Imchat__V1__Message *pm = (void *)(om + n);
    for (size_t i = 0; i < n; i++) {
      imc_pb_from_msg(&pm[i], msgs[i]);
      imchat__v1__offline_message__init(&om[i]);
      om[i].message = &pm[i];
      om[i].cursor = cursors[i];
      pp[i] = &om[i];
    }
  }
  Imchat__V1__OfflinePage page = IMCHAT__V1__OFFLINE_PAGE__INIT;
  page.n_messages = n;
  page.messages = pp;
  page.next_cursor = next;
  page.has_more = has_more != 0;
  size_t len = imchat__v1__offline_page__get_packed_size(&page);
  char *p = imc_wbuf_reserve(b, len);
  if (p != NULL)
    b->len += imchat__v1__offline_page__pack(&page, (uint8_t *)p);
  imc_free(b->mem, blk);
}

void imc_api_page_encode(imc_wbuf *b, int proto, const imc_msg *const *msgs,
                         const uint64_t *cursors, size_t n, uint64_t next,
                         int has_more) {
  if (proto) {
    pack_page(b, msgs, cursors, n, next, has_more);
    return;
  }
  imc_jsonw w;
  imc_jsonw_init(&w, b);
  imc_jsonw_object_begin(&w);
  imc_jsonw_key(&w, "messages");
  imc_jsonw_array_begin(&w);
  for (size_t i = 0; i < n; i++)
    json_msg(&w, msgs[i], cursors[i]);
  imc_jsonw_array_end(&w);
  imc_jsonw_kv_uint64(&w, "next_cursor", next);
  imc_jsonw_kv_bool(&w, "has_more", has_more);
  imc_jsonw_object_end(&w);
  imc_wbuf_append(b, "\n", 1);
}
