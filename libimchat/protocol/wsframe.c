#include "protocol/wsframe.h"

#include <string.h>

size_t imc_ws_header(uint8_t out[IMC_WS_HEADER_MAX], uint8_t opcode,
                     uint64_t len) {
  out[0] = (uint8_t)(0x80 | (opcode & 0x0f));
  if (len < 126) {
    out[1] = (uint8_t)len;
    return 2;
  }
  if (len <= 0xffff) {
    out[1] = 126;
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
    return 4;
  }
  out[1] = 127;
  for (int i = 0; i < 8; i++)
    out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
  return 10;
}

/* The header length that the first two bytes announce. */
static size_t header_len(const uint8_t *h) {
  size_t n = 2;
  uint8_t l = h[1] & 0x7f;
  if (l == 126)
    n += 2;
  else if (l == 127)
    n += 8;
  if (h[1] & 0x80)
    n += 4;
  return n;
}

size_t imc_ws_scan_frame(imc_ws_scan *s, const uint8_t *data, size_t len) {
  size_t used = 0;
  while (used < len) {
    if (s->left > 0) {
      size_t n = s->left < len - used ? (size_t)s->left : len - used;
      s->left -= n;
      used += n;
      if (s->left == 0)
        break;
      continue;
    }
    s->hdr[s->hlen++] = data[used++];
    if (s->hlen < 2 || s->hlen < header_len(s->hdr))
      continue;
    uint64_t plen = s->hdr[1] & 0x7f;
    if (plen == 126) {
      plen = (uint64_t)s->hdr[2] << 8 | s->hdr[3];
    } else if (plen == 127) {
      plen = 0;
      for (int i = 0; i < 8; i++)
        plen = plen << 8 | s->hdr[2 + i];
    }
    uint8_t fin = s->hdr[0] & 0x80, opcode = s->hdr[0] & 0x0f;
    /* Control frames may come between the fragments of a message. */
    if (opcode == IMC_WS_CONT || opcode == IMC_WS_TEXT ||
        opcode == IMC_WS_BINARY)
      s->in_msg = !fin;
    s->left = plen;
    s->hlen = 0;
    if (plen == 0)
      break;
  }
  return used;
}

void imc_ws_scan_feed(imc_ws_scan *s, const uint8_t *data, size_t len) {
  while (len > 0) {
    size_t n = imc_ws_scan_frame(s, data, len);
    data += n;
    len -= n;
  }
}

int imc_ws_scan_at_boundary(const imc_ws_scan *s) {
  return s->left == 0 && s->hlen == 0;
}

int imc_ws_scan_idle(const imc_ws_scan *s) {
  return s->left == 0 && s->hlen == 0 && !s->in_msg;
}
