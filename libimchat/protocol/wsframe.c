/* WebSocket frame headers: server headers out, checked client headers
 * in (RFC 6455 section 5). */
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

/* The bytes of the length field: 2 + 0, 2 or 8. */
static size_t length_end(const uint8_t *h) {
  uint8_t l = h[1] & 0x7f;
  return l == 126 ? 4 : l == 127 ? 10 : 2;
}

static int is_data(uint8_t op) {
  return op == IMC_WS_CONT || op == IMC_WS_TEXT || op == IMC_WS_BINARY;
}

/* The rules the first two bytes decide (RFC 6455 5.2, 5.4, 5.5, 5.1). */
static const char *check_start(const imc_ws_scan *s) {
  uint8_t b0 = s->hdr[0], b1 = s->hdr[1];
  uint8_t op = b0 & 0x0f, len7 = b1 & 0x7f;
  uint8_t rsv = b0 & 0x70;
  if (rsv & ~(s->rsv1_ok ? IMC_WS_RSV1 : 0))
    return "reserved bits set";
  /* RFC 7692 6.1: RSV1 marks a compressed message on its first frame
   * only. */
  if (rsv && (op & 0x08))
    return "RSV1 on a control frame";
  if (rsv && op == IMC_WS_CONT)
    return "RSV1 on a continuation frame";
  if (!is_data(op) && op != IMC_WS_CLOSE && op != IMC_WS_PING &&
      op != IMC_WS_PONG)
    return "reserved opcode";
  if (op & 0x08) {
    if (!(b0 & 0x80))
      return "fragmented control frame";
    if (len7 > IMC_WS_CONTROL_MAX)
      return "control frame longer than 125 bytes";
    if (op == IMC_WS_CLOSE && len7 == 1)
      return "close frame of 1 byte";
  }
  if (!(b1 & 0x80))
    return "unmasked frame";
  if (op == IMC_WS_CONT && !s->in_msg)
    return "continuation frame outside a message";
  if ((op == IMC_WS_TEXT || op == IMC_WS_BINARY) && s->in_msg)
    return "data frame inside a fragmented message";
  return NULL;
}

static uint64_t payload_len(const uint8_t *h) {
  uint64_t v = h[1] & 0x7f;
  if (v == 126) {
    v = (uint64_t)h[2] << 8 | h[3];
  } else if (v == 127) {
    v = 0;
    for (int i = 0; i < 8; i++)
      v = v << 8 | h[2 + i];
  }
  return v;
}

/* The rules the length decides (RFC 6455 5.2: "the minimal number of
 * bytes MUST be used", "the most significant bit MUST be 0"). */
static int check_length(const imc_ws_scan *s, uint64_t max_msg,
                        const char **why) {
  uint8_t len7 = s->hdr[1] & 0x7f;
  uint64_t v = payload_len(s->hdr);
  if (len7 == 126 && v < 126) {
    *why = "16-bit length under 126";
    return 1002;
  }
  if (len7 == 127 && (v >> 63)) {
    *why = "64-bit length with the top bit set";
    return 1002;
  }
  if (len7 == 127 && v < 65536) {
    *why = "64-bit length under 65536";
    return 1002;
  }
  uint8_t op = s->hdr[0] & 0x0f;
  uint64_t before = op == IMC_WS_CONT ? s->msg_len : 0;
  if (is_data(op) && max_msg != 0 &&
      (before > max_msg || v > max_msg - before)) {
    *why = "message too big";
    return 1009;
  }
  /* Each frame of a message costs its receiver a buffer (wslay keeps one
   * per fragment, about 100 bytes with its bookkeeping): without a bound
   * on frames, 1-byte fragments would make the message limit hold some
   * hundred times its size. */
  if (op == IMC_WS_CONT && max_msg != 0 &&
      s->nframes > max_msg / IMC_WS_FRAGMENT_MIN) {
    *why = "message in too many frames";
    return 1009;
  }
  return 0;
}

int imc_ws_scan_header(imc_ws_scan *s, const uint8_t *data, size_t len,
                       uint64_t max_msg, size_t *used, const char **why) {
  *used = 0;
  *why = "";
  if (s->done && s->left > 0)
    return IMC_WS_SCAN_FRAME; /* the payload comes first */
  if (s->done) {
    s->done = 0;
    s->hlen = 0;
  }
  while (*used < len) {
    s->hdr[s->hlen++] = data[(*used)++];
    if (s->hlen < 2)
      continue;
    if (s->hlen == 2 && (*why = check_start(s)) != NULL)
      return 1002;
    if (s->hlen == length_end(s->hdr)) {
      int code = check_length(s, max_msg, why);
      if (code != 0)
        return code;
    }
    if (s->hlen < header_len(s->hdr))
      continue;
    uint8_t op = s->hdr[0] & 0x0f;
    uint64_t plen = payload_len(s->hdr);
    if (is_data(op)) {
      s->msg_len = (op == IMC_WS_CONT ? s->msg_len : 0) + plen;
      s->nframes = (op == IMC_WS_CONT ? s->nframes : 0) + 1;
      s->in_msg = !(s->hdr[0] & 0x80);
      if (!s->in_msg) {
        s->msg_len = 0;
        s->nframes = 0;
      }
    }
    s->left = plen;
    s->done = 1;
    *why = "";
    return IMC_WS_SCAN_FRAME;
  }
  *why = "";
  return IMC_WS_SCAN_MORE;
}

uint8_t imc_ws_scan_opcode(const imc_ws_scan *s) {
  return s->hdr[0] & 0x0f;
}

const uint8_t *imc_ws_scan_mask(const imc_ws_scan *s) {
  return s->hdr + s->hlen - 4;
}

size_t imc_ws_scan_payload(imc_ws_scan *s, size_t len) {
  size_t n = s->left < len ? (size_t)s->left : len;
  s->left -= n;
  return n;
}

int imc_ws_scan_at_boundary(const imc_ws_scan *s) {
  return s->left == 0 && (s->hlen == 0 || s->done);
}

int imc_ws_scan_idle(const imc_ws_scan *s) {
  return imc_ws_scan_at_boundary(s) && !s->in_msg;
}
