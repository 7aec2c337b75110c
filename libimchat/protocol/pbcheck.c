#include "protocol/pbcheck.h"
#include "protocol/utf8.h"

#include <imchat/common.h>

enum {
  WT_VARINT = 0,
  WT_FIXED64 = 1,
  WT_LEN = 2,
  WT_FIXED32 = 5,
};

/* Reads a varint of at most 10 bytes; returns its length, or 0 if it is
 * truncated or longer. */
static size_t get_varint(const uint8_t *p, size_t n, uint64_t *out) {
  uint64_t v = 0;
  for (size_t i = 0; i < n && i < 10; i++) {
    v |= (uint64_t)(p[i] & 0x7f) << (7 * i);
    if ((p[i] & 0x80) == 0) {
      *out = v;
      return i + 1;
    }
  }
  return 0;
}

/*
 * One field at p: its number, wire type and, for a length-delimited one,
 * the payload. Returns the bytes it spans, or 0 if malformed.
 */
static size_t next_field(const uint8_t *p, size_t n, uint32_t *num,
                         unsigned *wt, const uint8_t **payload, size_t *plen) {
  uint64_t key;
  size_t k = get_varint(p, n, &key);
  /* Field numbers are 1..2^29-1. */
  if (k == 0 || key >> 3 == 0 || key >> 3 > 0x1fffffff)
    return 0;
  *num = (uint32_t)(key >> 3);
  *wt = (unsigned)(key & 7);
  size_t rest = n - k;
  uint64_t v;
  switch (*wt) {
  case WT_VARINT: {
    size_t m = get_varint(p + k, rest, &v);
    return m ? k + m : 0;
  }
  case WT_FIXED64:
    return rest >= 8 ? k + 8 : 0;
  case WT_FIXED32:
    return rest >= 4 ? k + 4 : 0;
  case WT_LEN: {
    size_t m = get_varint(p + k, rest, &v);
    if (m == 0 || v > rest - m)
      return 0;
    *payload = p + k + m;
    *plen = (size_t)v;
    return k + m + (size_t)v;
  }
  default:
    /* Groups (3, 4) are not supported by protobuf-c; 6 and 7 are
     * reserved. */
    return 0;
  }
}

static int check(const ProtobufCMessageDescriptor *d, const uint8_t *p,
                 size_t n, unsigned depth) {
  if (depth > IMC_PBCHECK_MAX_DEPTH)
    return IMC_ERR_PROTO;
  while (n > 0) {
    uint32_t num;
    unsigned wt;
    const uint8_t *pl = NULL;
    size_t pn = 0;
    size_t used = next_field(p, n, &num, &wt, &pl, &pn);
    if (used == 0)
      return IMC_ERR_PROTO;
    p += used;
    n -= used;
    const ProtobufCFieldDescriptor *f =
        d ? protobuf_c_message_descriptor_get_field(d, num) : NULL;
    if (f == NULL)
      continue;
    if (f->type == PROTOBUF_C_TYPE_STRING) {
      if (wt != WT_LEN || !imc_utf8_valid((const char *)pl, pn))
        return IMC_ERR_PROTO;
    } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
      if (wt != WT_LEN || check(f->descriptor, pl, pn, depth + 1) != 0)
        return IMC_ERR_PROTO;
    }
  }
  return 0;
}

int imc_pb_check_strings(const ProtobufCMessageDescriptor *d,
                         const uint8_t *data, size_t len) {
  if (d == NULL || (data == NULL && len > 0))
    return IMC_ERR_PROTO;
  return check(d, data, len, 0);
}

int imc_pb_peek_varint(const uint8_t *data, size_t len, uint32_t field,
                       uint64_t *out) {
  int found = 0;
  if (data == NULL)
    return 0;
  while (len > 0) {
    uint32_t num;
    unsigned wt;
    const uint8_t *pl;
    size_t pn;
    size_t used = next_field(data, len, &num, &wt, &pl, &pn);
    if (used == 0)
      break;
    if (num == field && wt == WT_VARINT) {
      uint64_t key;
      size_t k = get_varint(data, used, &key);
      get_varint(data + k, used - k, out);
      found = 1;
    }
    data += used;
    len -= used;
  }
  return found;
}
