#include "protocol/utf8.h"

size_t imc_utf8_next(const uint8_t *s, size_t n, size_t *bad) {
  uint8_t c = s[0];
  size_t need;
  /* Bounds of the second byte: they exclude overlongs (E0, F0),
   * surrogates (ED) and code points past U+10FFFF (F4). */
  uint8_t lo = 0x80, hi = 0xbf;
  if (c < 0x80)
    return 1;
  if (c >= 0xc2 && c <= 0xdf) {
    need = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    need = 3;
    if (c == 0xe0)
      lo = 0xa0;
    else if (c == 0xed)
      hi = 0x9f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    need = 4;
    if (c == 0xf0)
      lo = 0x90;
    else if (c == 0xf4)
      hi = 0x8f;
  } else {
    /* 80-BF, C0, C1, F5-FF never start a sequence. */
    if (bad)
      *bad = 1;
    return 0;
  }
  size_t i = 1;
  for (; i < need && i < n; i++) {
    uint8_t t = s[i];
    if (t < lo || t > hi)
      break;
    lo = 0x80;
    hi = 0xbf;
  }
  if (i == need)
    return need;
  if (bad)
    *bad = i;
  return 0;
}

int imc_utf8_valid(const char *s, size_t len) {
  const uint8_t *p = (const uint8_t *)s;
  if (p == NULL)
    return len == 0;
  size_t i = 0;
  while (i < len) {
    if (p[i] == 0)
      return 0;
    if (p[i] < 0x80) {
      i++;
      continue;
    }
    size_t k = imc_utf8_next(p + i, len - i, NULL);
    if (k == 0)
      return 0;
    i += k;
  }
  return 1;
}
