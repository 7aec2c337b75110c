#include "protocol/base64.h"

#include <imchat/common.h>

static int digit(int ch) {
  if (ch >= 'A' && ch <= 'Z')
    return ch - 'A';
  if (ch >= 'a' && ch <= 'z')
    return ch - 'a' + 26;
  if (ch >= '0' && ch <= '9')
    return ch - '0' + 52;
  if (ch == '+' || ch == '-')
    return 62;
  if (ch == '/' || ch == '_')
    return 63;
  return -1;
}

int imc_base64_decode(const char *s, size_t n, uint8_t *out, size_t *out_len) {
  uint32_t acc = 0;
  int bits = 0;
  size_t o = 0;
  while (n > 0 && s[n - 1] == '=')
    n--;
  for (size_t i = 0; i < n; i++) {
    int v = digit((unsigned char)s[i]);
    if (v < 0)
      return IMC_ERR_PROTO;
    acc = acc << 6 | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (uint8_t)(acc >> bits);
    }
  }
  *out_len = o;
  return 0;
}
