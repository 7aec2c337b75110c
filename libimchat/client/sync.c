/*
 * HTTP on the gateway port: the offline sync (GET /offline, paged by a
 * cursor kept in the store) and conversation history pages. The SDK
 * writes the request bytes and reads the answer; the host moves them.
 * Pages are asked for as protobuf (OfflinePage).
 */
#include "client/client_int.h"
#include "protocol/pbcheck.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static int start_request(imc_client *c, const uint8_t **req, size_t *len) {
  imc_wbuf_printf(&c->req,
                  " HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                  "Accept: application/x-protobuf\r\nConnection: close\r\n\r\n",
                  c->o.host, c->o.token);
  if (c->req.err) {
    imc_wbuf_free(&c->req);
    imc_wbuf_init(&c->req, &c->mem);
    return IMC_ERR_NOMEM;
  }
  *req = (const uint8_t *)c->req.p;
  *len = c->req.len;
  return 0;
}

int imc_client_sync_request(imc_client *c, const uint8_t **req, size_t *len) {
  if (c == NULL || req == NULL || len == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_wbuf_free(&c->req);
  imc_wbuf_init(&c->req, &c->mem);
  imc_wbuf_printf(&c->req, "GET /offline?cursor=%" PRIu64 "&limit=%u",
                  c->cursor, c->o.page_limit);
  c->last_req = 1;
  return start_request(c, req, len);
}

static int conv_id_valid(const char *s) {
  size_t n = strlen(s);
  if (n > 2 && s[0] == 'g' && s[1] == ':')
    return imc_id_valid(s + 2, n - 2);
  if (n > 2 && s[0] == 'p' && s[1] == ':') {
    const char *colon = memchr(s + 2, ':', n - 2);
    return colon && imc_id_valid(s + 2, (size_t)(colon - s - 2)) &&
           imc_id_valid(colon + 1, strlen(colon + 1));
  }
  return 0;
}

int imc_client_history_request(imc_client *c, const char *conversation_id,
                               uint64_t after_seq, const uint8_t **req,
                               size_t *len) {
  if (c == NULL || req == NULL || len == NULL || conversation_id == NULL ||
      !conv_id_valid(conversation_id))
    return IMC_ERR_INVALID_ARGUMENT;
  imc_wbuf_free(&c->req);
  imc_wbuf_init(&c->req, &c->mem);
  /* Ids hold no characters that need escaping; ':' is legal in a path. */
  imc_wbuf_printf(&c->req,
                  "GET /v1/conversations/%s/messages?after_seq=%" PRIu64
                  "&limit=%u",
                  conversation_id, after_seq, c->o.page_limit);
  c->last_req = 2;
  return start_request(c, req, len);
}

/* Reads the answer into a page (free it with free_unpacked). */
static int read_page(imc_client *c, const uint8_t *data, size_t len,
                     Imchat__V1__OfflinePage **out) {
  int status;
  const uint8_t *body;
  size_t bl;
  if (c == NULL || (data == NULL && len > 0))
    return IMC_ERR_INVALID_ARGUMENT;
  int rv = cl_http_response(data, len, &status, &body, &bl);
  if (rv != 0)
    return rv;
  if (status == 401)
    return IMC_ERR_AUTH;
  if (status == 403)
    return IMC_ERR_FORBIDDEN;
  if (status != 200) {
    cl_log(c, IMC_LOG_WARN, "client: HTTP answer %d", status);
    return status >= 400 && status < 500 ? IMC_ERR_PROTO : IMC_ERR_UNAVAILABLE;
  }
  const char *ct;
  size_t ctl;
  if (cl_http_header(data, cl_http_head_len(data, len), "Content-Type", &ct,
                     &ctl) &&
      ctl >= 16 && memcmp(ct, "application/json", 16) == 0)
    return cl_json_page(c, body, bl, out);
  if (imc_pb_check_strings(&imchat__v1__offline_page__descriptor, body, bl) !=
      0)
    return IMC_ERR_PROTO;
  *out = imchat__v1__offline_page__unpack(&c->pba, bl, body);
  /* protobuf-c cannot tell a bad page from a failed allocation. */
  return *out ? 0 : IMC_ERR_PROTO;
}

/* Page order for surfacing: by conversation, then seq, then position. */
typedef struct slot {
  const Imchat__V1__Message *m;
  size_t pos;
} slot;

static int slot_cmp(const void *a, const void *b) {
  const slot *x = a, *y = b;
  int d = strcmp(x->m->conversation_id, y->m->conversation_id);
  if (d)
    return d;
  if (x->m->seq != y->m->seq)
    return x->m->seq < y->m->seq ? -1 : 1;
  return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* Surfaces the page's messages in seq order per conversation. */
static int surface(imc_client *c, Imchat__V1__OfflinePage *p, uint32_t flags) {
  slot *s =
      imc_malloc(&c->mem, (p->n_messages ? p->n_messages : 1) * sizeof(*s));
  if (s == NULL)
    return IMC_ERR_NOMEM;
  size_t n = 0;
  for (size_t i = 0; i < p->n_messages; i++)
    if (p->messages[i]->message)
      s[n] = (slot){p->messages[i]->message, i}, n++;
  qsort(s, n, sizeof(*s), slot_cmp);
  int rv = 0;
  for (size_t i = 0; i < n && rv >= 0; i++) {
    imc_msg m;
    memset(&m, 0, sizeof(m));
    imc_msg_from_pb(&m, s[i].m);
    rv = cl_inbox_take(c, &m, flags);
    if (rv == IMC_ERR_PROTO)
      rv = 0; /* a message without an id: skip it */
  }
  imc_free(&c->mem, s);
  return rv < 0 ? rv : 0;
}

int imc_client_sync_response(imc_client *c, const uint8_t *data, size_t len) {
  Imchat__V1__OfflinePage *p = NULL;
  int rv = read_page(c, data, len, &p);
  if (rv != 0)
    return rv;
  rv = cl_exec(c, "BEGIN");
  if (rv == 0)
    rv = surface(c, p, IMC_CLIENT_MSG_OFFLINE);
  uint64_t next = p->next_cursor > c->cursor ? p->next_cursor : c->cursor;
  if (rv == 0)
    rv = cl_kv_put_u64(c, "cursor", next);
  if (rv == 0)
    rv = cl_exec(c, "COMMIT");
  else
    cl_exec(c, "ROLLBACK");
  int more = p->has_more && p->n_messages > 0;
  imchat__v1__offline_page__free_unpacked(p, &c->pba);
  if (rv != 0)
    return rv;
  c->cursor = next;
  if (!more)
    c->want_sync = 0;
  return more;
}

int imc_client_history_response(imc_client *c, const uint8_t *data, size_t len,
                                imc_client_history_cb cb, void *ud,
                                uint64_t *next_after_seq) {
  Imchat__V1__OfflinePage *p = NULL;
  int rv = read_page(c, data, len, &p);
  if (rv != 0)
    return rv;
  if (cb) {
    for (size_t i = 0; i < p->n_messages; i++) {
      if (p->messages[i]->message == NULL)
        continue;
      imc_msg m;
      memset(&m, 0, sizeof(m));
      imc_msg_from_pb(&m, p->messages[i]->message);
      cb(ud, &m);
    }
  } else {
    rv = surface(c, p, IMC_CLIENT_MSG_HISTORY);
  }
  if (next_after_seq)
    *next_after_seq = p->next_cursor;
  int more = p->has_more && p->n_messages > 0;
  imchat__v1__offline_page__free_unpacked(p, &c->pba);
  return rv != 0 ? rv : more;
}
