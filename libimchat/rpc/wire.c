/*
 * What the server's connections and the client share: nghttp2 allocating
 * through the instance's imc_mem, frames moved from nghttp2 to the
 * transport, and the reassembly of one length-prefixed message.
 */
#include "rpc/rpc_int.h"

#include <string.h>

/* imc_mem and nghttp2_mem have the same callbacks in the same order. */
void rpc_h2_mem(nghttp2_mem *out, const imc_mem *m) {
  out->mem_user_data = m->ud;
  out->malloc = m->malloc;
  out->free = m->free;
  out->calloc = m->calloc;
  out->realloc = m->realloc;
}

int rpc_wire_flush(rpc_wire *w) {
  for (;;) {
    while (w->out.len < RPC_OUT_HIGH) {
      const uint8_t *p;
      ssize_t n = nghttp2_session_mem_send(w->h2, &p);
      if (n < 0)
        return n == NGHTTP2_ERR_NOMEM ? IMC_ERR_NOMEM : IMC_ERR_PROTO;
      if (n == 0)
        break;
      /* nghttp2 sent these already: losing them breaks the session. */
      if (imc_bufq_append(&w->out, w->mem, p, (size_t)n) < 0)
        return IMC_ERR_NOMEM;
    }
    if (w->out.len == 0)
      break;
    struct iovec iov[RPC_IOV];
    int k = imc_bufq_iov(&w->out, iov, RPC_IOV);
    ssize_t r = w->tv.send(w->tud, w->conn_ud, iov, k);
    if (r == IMC_ERR_WOULDBLOCK)
      return 0;
    if (r < 0)
      return IMC_ERR_IO;
    imc_bufq_consume(&w->out, w->mem, (size_t)r);
  }
  if (!nghttp2_session_want_read(w->h2) && !nghttp2_session_want_write(w->h2))
    return RPC_WIRE_DONE;
  return 0;
}

void rpc_wire_free(rpc_wire *w) {
  nghttp2_session_del(w->h2);
  w->h2 = NULL;
  imc_bufq_free(&w->out, w->mem);
}

void rpc_prefix(uint8_t out[5], size_t len) {
  out[0] = 0;
  out[1] = (uint8_t)(len >> 24);
  out[2] = (uint8_t)(len >> 16);
  out[3] = (uint8_t)(len >> 8);
  out[4] = (uint8_t)len;
}

static size_t announced(const uint8_t *p) {
  return (size_t)p[1] << 24 | (size_t)p[2] << 16 | (size_t)p[3] << 8 | p[4];
}

/* Grows in->buf to cap bytes, charged to *budget. */
static int grow(rpc_msgin *in, const imc_mem *m, size_t cap, size_t *budget) {
  if (cap <= in->cap)
    return 0;
  if (cap - in->cap > *budget)
    return RPC_MSG_NOMEM;
  uint8_t *b = imc_realloc(m, in->buf, cap);
  if (b == NULL)
    return RPC_MSG_NOMEM;
  *budget -= cap - in->cap;
  in->buf = b;
  in->cap = cap;
  return 0;
}

int rpc_msgin_add(rpc_msgin *in, const imc_mem *m, const uint8_t *data,
                  size_t len, size_t max, size_t *budget) {
  if (in->len < 5 && len > 0) {
    int rv = grow(in, m, 5, budget);
    if (rv < 0)
      return rv;
    size_t k = 5 - in->len < len ? 5 - in->len : len;
    memcpy(in->buf + in->len, data, k);
    in->len += k;
    data += k;
    len -= k;
    if (in->len < 5)
      return 0;
    if (in->buf[0] > 1)
      return RPC_MSG_BAD_FLAG;
    if (in->buf[0] == 1)
      return RPC_MSG_COMPRESSED;
    if (announced(in->buf) > max)
      return RPC_MSG_TOO_LARGE;
    /* The whole message at once: its size is known and bounded. */
    rv = grow(in, m, 5 + announced(in->buf), budget);
    if (rv < 0)
      return rv;
  }
  if (len == 0)
    return 0;
  if (len > in->cap - in->len)
    return RPC_MSG_MANY;
  memcpy(in->buf + in->len, data, len);
  in->len += len;
  return 0;
}

int rpc_msgin_finish(const rpc_msgin *in, const uint8_t **msg, size_t *len) {
  if (in->len == 0)
    return RPC_MSG_NONE;
  if (in->len < 5 || in->len != 5 + announced(in->buf))
    return RPC_MSG_MANY;
  *msg = in->buf + 5;
  *len = in->len - 5;
  return 0;
}

void rpc_msgin_free(rpc_msgin *in, const imc_mem *m, size_t *budget) {
  imc_free(m, in->buf);
  *budget += in->cap;
  in->buf = NULL;
  in->len = in->cap = 0;
}

int rpc_grpc_content_type(const uint8_t *v, size_t len) {
  size_t n = sizeof(RPC_CT) - 1;
  return len >= n && memcmp(v, RPC_CT, n) == 0 &&
         (len == n || v[n] == '+' || v[n] == ';');
}
