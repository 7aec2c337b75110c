/*
 * Line lists handed over by hosts as text (key files, word lists): one
 * entry per line, surrounding blanks ignored, empty lines and lines
 * starting with '#' skipped.
 */
#ifndef IMC_LINES_H
#define IMC_LINES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Space, tab or CR (a CRLF file's lines end in CR). */
static inline int imc_is_blank(uint8_t c) {
  return c == ' ' || c == '\t' || c == '\r';
}

/*
 * The next entry of buf[0..len) at or after *pos: sets *line and
 * *line_len to it, trimmed, moves *pos past its line and returns 1;
 * returns 0 at the end.
 */
static inline int imc_next_line(const uint8_t *buf, size_t len, size_t *pos,
                                const uint8_t **line, size_t *line_len) {
  while (*pos < len) {
    const uint8_t *nl = memchr(buf + *pos, '\n', len - *pos);
    size_t a = *pos, b = nl ? (size_t)(nl - buf) : len;
    *pos = nl ? b + 1 : len;
    while (a < b && imc_is_blank(buf[a]))
      a++;
    while (b > a && imc_is_blank(buf[b - 1]))
      b--;
    if (a == b || buf[a] == '#')
      continue;
    *line = buf + a;
    *line_len = b - a;
    return 1;
  }
  return 0;
}

#endif /* IMC_LINES_H */
