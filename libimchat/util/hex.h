/* Hexadecimal digits. */
#ifndef IMC_HEX_H
#define IMC_HEX_H

/* The value of the hex digit c, or -1. */
static inline int imc_hexval(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

#endif /* IMC_HEX_H */
