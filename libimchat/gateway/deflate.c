/*
 * permessage-deflate (RFC 7692) with zlib. The negotiation always takes
 * no context takeover both ways (protocol/pmdeflate.h), so a message is
 * compressed and decompressed on its own: the gateway keeps one inflate
 * and one deflate stream for all its connections, reset after each
 * message, made at the first compressed message and freed when the last
 * connection with the extension goes. A connection holds no zlib state.
 */
#include "gateway/gateway_int.h"

#include <limits.h>
#include <string.h>
#include <zlib.h>

struct gw_zlib {
  z_stream in;  /* raw inflate, 15-bit window */
  z_stream out; /* raw deflate with out_bits */
  int in_ready, out_bits;
};

/* The empty stored block a sender strips from each message (7.2.1). */
static const uint8_t TAIL[4] = {0x00, 0x00, 0xff, 0xff};
#define INFLATE_FIRST 4096 /* the output buffer's first size */

static voidpf z_alloc(voidpf ud, uInt items, uInt size) {
  if (size != 0 && items > SIZE_MAX / size)
    return Z_NULL;
  return imc_malloc(ud, (size_t)items * size);
}

static void z_free(voidpf ud, voidpf p) {
  imc_free(ud, p);
}

static void z_init(imc_gateway *gw, z_stream *z) {
  memset(z, 0, sizeof(*z));
  z->zalloc = z_alloc;
  z->zfree = z_free;
  z->opaque = &gw->mem;
}

/* The streams' holder, made at first use; NULL without memory. */
static struct gw_zlib *zlib_get(imc_gateway *gw) {
  if (gw->zlib == NULL &&
      (gw->zlib = imc_calloc(&gw->mem, 1, sizeof(*gw->zlib))) == NULL)
    return NULL;
  return gw->zlib;
}

static void zlib_free(imc_gateway *gw) {
  struct gw_zlib *zl = gw->zlib;
  if (zl == NULL)
    return;
  if (zl->in_ready)
    inflateEnd(&zl->in);
  if (zl->out_bits)
    deflateEnd(&zl->out);
  imc_free(&gw->mem, zl);
  gw->zlib = NULL;
}

void gw_deflate_conn_add(imc_gateway *gw) {
  gw->n_deflate++;
}

void gw_deflate_conn_release(imc_gateway *gw) {
  if (--gw->n_deflate == 0)
    zlib_free(gw);
}

static z_stream *inflater(imc_gateway *gw) {
  struct gw_zlib *zl = zlib_get(gw);
  if (zl == NULL)
    return NULL;
  if (!zl->in_ready) {
    z_init(gw, &zl->in);
    /* Raw deflate; 15 bits decode any window the client may use. */
    if (inflateInit2(&zl->in, -15) != Z_OK)
      return NULL;
    zl->in_ready = 1;
  }
  return &zl->in;
}

/*
 * Runs z over its input and then TAIL into buf, growing buf (up to
 * limit + 1 bytes) as it fills. Returns 0, IMC_ERR_TOO_LARGE,
 * IMC_ERR_PROTO or IMC_ERR_NOMEM.
 */
static int inflate_all(imc_gateway *gw, z_stream *z, uint8_t **buf, size_t *cap,
                       size_t limit) {
  int tail = 0;
  for (;;) {
    if (z->avail_in == 0 && !tail) {
      z->next_in = (Bytef *)TAIL;
      z->avail_in = sizeof(TAIL);
      tail = 1;
    }
    if (z->avail_out == 0) {
      /* Work stops at limit + 1 bytes of output, whatever the ratio. */
      if (*cap > limit)
        return IMC_ERR_TOO_LARGE;
      size_t ncap = *cap * 2 < limit + 1 ? *cap * 2 : limit + 1;
      uint8_t *nb = imc_realloc(&gw->mem, *buf, ncap);
      if (nb == NULL)
        return IMC_ERR_NOMEM;
      z->next_out = nb + (z->next_out - *buf);
      z->avail_out = (uInt)(ncap - *cap);
      *buf = nb;
      *cap = ncap;
    }
    int rv = inflate(z, Z_SYNC_FLUSH);
    if (rv == Z_STREAM_END)
      /* A final block: nothing of the message may follow it. */
      return tail || z->avail_in == 0 ? 0 : IMC_ERR_PROTO;
    if (rv == Z_MEM_ERROR)
      return IMC_ERR_NOMEM;
    if (rv != Z_OK && rv != Z_BUF_ERROR)
      return IMC_ERR_PROTO;
    if (tail && z->avail_in == 0 && z->avail_out > 0)
      /* Everything is read: it must have ended between blocks. */
      return (z->data_type & 128) ? 0 : IMC_ERR_PROTO;
  }
}

int gw_inflate(imc_gateway *gw, const uint8_t *in, size_t len, size_t limit,
               uint8_t **out, size_t *out_len) {
  *out = NULL;
  *out_len = 0;
  if (len > UINT_MAX || limit >= UINT_MAX)
    return IMC_ERR_TOO_LARGE;
  z_stream *z = inflater(gw);
  if (z == NULL)
    return IMC_ERR_NOMEM;
  size_t cap = INFLATE_FIRST < limit + 1 ? INFLATE_FIRST : limit + 1;
  uint8_t *buf = imc_malloc(&gw->mem, cap);
  if (buf == NULL)
    return IMC_ERR_NOMEM;
  z->next_in = (Bytef *)in;
  z->avail_in = (uInt)len;
  z->next_out = buf;
  z->avail_out = (uInt)cap;
  int rv = inflate_all(gw, z, &buf, &cap, limit);
  size_t n = cap - z->avail_out;
  inflateReset(z);
  if (rv == 0 && n > limit)
    rv = IMC_ERR_TOO_LARGE;
  if (rv != 0) {
    imc_free(&gw->mem, buf);
    return rv;
  }
  *out = buf;
  *out_len = n;
  return 0;
}

static z_stream *deflater(imc_gateway *gw, int bits) {
  struct gw_zlib *zl = zlib_get(gw);
  if (zl == NULL)
    return NULL;
  if (zl->out_bits == bits)
    return &zl->out;
  if (zl->out_bits)
    deflateEnd(&zl->out);
  zl->out_bits = 0;
  z_init(gw, &zl->out);
  if (deflateInit2(&zl->out, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -bits, 8,
                   Z_DEFAULT_STRATEGY) != Z_OK)
    return NULL;
  zl->out_bits = bits;
  return &zl->out;
}

imc_shared *gw_deflate_frame(imc_gateway *gw, int bits, uint8_t opcode,
                             const uint8_t *data, size_t len) {
  if (len > UINT_MAX - IMC_WS_HEADER_MAX - sizeof(TAIL))
    return NULL;
  z_stream *z = deflater(gw, bits);
  if (z == NULL)
    return NULL;
  /* Room for as many bytes as the message has, and the tail: more would
   * not pay. The header goes in front once the length is known. */
  imc_shared *f = imc_shared_new(&gw->mem, IMC_WS_HEADER_MAX + len);
  if (f == NULL)
    return NULL;
  uint8_t *p = f->data + IMC_WS_HEADER_MAX;
  uint8_t spill[sizeof(TAIL)];
  z->next_in = (Bytef *)data;
  z->avail_in = (uInt)len;
  z->next_out = p;
  z->avail_out = (uInt)len;
  int rv = deflate(z, Z_SYNC_FLUSH);
  size_t n = len - z->avail_out;
  if (rv == Z_OK && z->avail_in == 0 && z->avail_out == 0) {
    /* The output ended at the buffer's end: the tail may follow. */
    z->next_out = spill;
    z->avail_out = sizeof(spill);
    rv = deflate(z, Z_SYNC_FLUSH);
    n += sizeof(spill) - z->avail_out;
  }
  int done = rv == Z_OK && z->avail_in == 0 && z->avail_out > 0;
  deflateReset(z);
  /* A sync flush ends with TAIL, which the message leaves out. */
  if (!done || n <= sizeof(TAIL) || n - sizeof(TAIL) >= len) {
    imc_shared_unref(&gw->mem, f);
    return NULL;
  }
  n -= sizeof(TAIL);
  uint8_t hdr[IMC_WS_HEADER_MAX];
  size_t hl = imc_ws_header(hdr, opcode, n);
  hdr[0] |= IMC_WS_RSV1;
  memmove(f->data + hl, p, n);
  memcpy(f->data, hdr, hl);
  f->len = hl + n;
  return f;
}
