/*
 * Encryption at rest for a durable bus: a decorator of imc_bus_vtbl that
 * seals record values on publish and opens them on poll (seal.h), so a
 * queue that keeps message bodies until they are processed (the offline
 * queue) holds only ciphertext. Keys stay in the clear: they are routing
 * ids, and a bus partitions by them.
 *
 * The topic is the authenticated data, so a sealed record cannot be
 * replayed into another topic. A value that is not an envelope (queued
 * before encryption was enabled) is delivered as it is; an envelope that
 * does not open (unknown key, tampering) is delivered as it is too and
 * counted, so the consumer refuses it as a bad record instead of the
 * whole queue stalling on it.
 */
#include "util/alloc.h"
#include "backends/seal.h"
#include "util/vtbl.h"

#include <imchat/sealed_bus.h>

#include <string.h>

#include <openssl/crypto.h>

struct imc_sealed_bus {
  imc_sealer base; /* first: allocator, keyring, failures to open */
  imc_bus_vtbl inner;
  void *inner_ud;
};

int imc_sealed_bus_new(imc_sealed_bus **out, const imc_bus_vtbl *inner,
                       void *inner_ud, const uint8_t *keys, size_t len,
                       const imc_mem *mem) {
  if (out == NULL || inner == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_bus_vtbl v;
  imc_vtbl_copy(&v, sizeof(v), inner, inner->struct_size);
  if (v.publish == NULL || v.poll == NULL || v.commit == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  void *obj;
  int rv = imc_sealer_new(&obj, sizeof(imc_sealed_bus), keys, len, mem);
  if (rv != 0)
    return rv;
  imc_sealed_bus *b = obj;
  b->inner = v;
  b->inner_ud = inner_ud;
  *out = b;
  return 0;
}

int imc_sealed_bus_set_keys(imc_sealed_bus *b, const uint8_t *keys,
                            size_t len) {
  return imc_sealer_set_keys(b ? &b->base : NULL, keys, len);
}

void imc_sealed_bus_del(imc_sealed_bus *b) {
  if (b != NULL)
    imc_sealer_del(&b->base);
}

uint64_t imc_sealed_bus_failures(const imc_sealed_bus *b) {
  return b ? b->base.failures : 0;
}

static int sealed_publish(void *ud, const char *topic, const uint8_t *key,
                          size_t key_len, const uint8_t *value,
                          size_t value_len, imc_done_cb done, void *done_ud) {
  imc_sealed_bus *b = ud;
  size_t cap = value_len + imc_seal_overhead(b->base.kr);
  uint8_t *sealed = imc_malloc(&b->base.mem, cap);
  if (sealed == NULL)
    return IMC_ERR_NOMEM;
  size_t len;
  int rv = imc_seal(b->base.kr, value, value_len, sealed, cap, &len,
                    (const uint8_t *)topic, strlen(topic));
  /* The inner bus copies what it keeps: the envelope is borrowed. */
  if (rv == 0)
    rv = b->inner.publish(b->inner_ud, topic, key, key_len, sealed, len, done,
                          done_ud);
  imc_free(&b->base.mem, sealed);
  return rv;
}

typedef struct poll_ctx {
  imc_sealed_bus *b;
  imc_bus_batch_cb done;
  void *done_ud;
  size_t topic_len;
  char topic[];
} poll_ctx;

static void on_poll(void *ud, int status, const imc_bus_record *recs,
                    size_t n) {
  poll_ctx *p = ud;
  imc_sealed_bus *b = p->b;
  imc_bus_record *out = NULL;
  uint8_t *plain = NULL;
  size_t total = 0;
  if (status == 0 && n > 0) {
    for (size_t i = 0; i < n; i++)
      total += recs[i].value_len;
    out = imc_calloc(&b->base.mem, n, sizeof(*out));
    plain = imc_malloc(&b->base.mem, total ? total : 1);
    if (out == NULL || plain == NULL)
      status = IMC_ERR_NOMEM;
    size_t off = 0;
    for (size_t i = 0; status == 0 && i < n; i++) {
      out[i] = recs[i];
      char kid[33];
      if (imc_sealed_key_id(recs[i].value, recs[i].value_len, kid) != 0)
        continue; /* not an envelope: queued before encryption */
      size_t len;
      int rv =
          imc_open(b->base.kr, recs[i].value, recs[i].value_len, plain + off,
                   total - off, &len, (const uint8_t *)p->topic, p->topic_len);
      if (rv == IMC_ERR_NOMEM) {
        status = rv;
      } else if (rv != 0) {
        b->base.failures++;
      } else {
        out[i].value = plain + off;
        out[i].value_len = len;
        off += len;
      }
    }
  }
  p->done(p->done_ud, status, status == 0 ? out : NULL, status == 0 ? n : 0);
  if (plain != NULL)
    OPENSSL_cleanse(plain, total);
  imc_free(&b->base.mem, out);
  imc_free(&b->base.mem, plain);
  imc_free(&b->base.mem, p);
}

static int sealed_poll(void *ud, const char *topic, const char *group,
                       size_t max, imc_bus_batch_cb done, void *done_ud) {
  imc_sealed_bus *b = ud;
  size_t tl = strlen(topic);
  poll_ctx *p = imc_malloc(&b->base.mem, sizeof(*p) + tl + 1);
  if (p == NULL)
    return IMC_ERR_NOMEM;
  p->b = b;
  p->done = done;
  p->done_ud = done_ud;
  p->topic_len = tl;
  memcpy(p->topic, topic, tl + 1);
  int rv = b->inner.poll(b->inner_ud, topic, group, max, on_poll, p);
  if (rv != 0)
    imc_free(&b->base.mem, p);
  return rv;
}

static int sealed_commit(void *ud, const char *topic, const char *group,
                         int32_t partition, uint64_t offset, imc_done_cb done,
                         void *done_ud) {
  imc_sealed_bus *b = ud;
  return b->inner.commit(b->inner_ud, topic, group, partition, offset, done,
                         done_ud);
}

static const imc_bus_vtbl sealed_vtbl = {sizeof(imc_bus_vtbl), sealed_publish,
                                         sealed_poll, sealed_commit};

const imc_bus_vtbl *imc_sealed_bus_vtbl(void) {
  return &sealed_vtbl;
}

void imc_sealed_bus_set_user_data(imc_sealed_bus *b, void *ud) {
  b->base.user_data = ud;
}

void *imc_sealed_bus_get_user_data(const imc_sealed_bus *b) {
  return b->base.user_data;
}
