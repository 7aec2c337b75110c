/* String hashing for the library's hash tables (FNV-1a, 64 bits). */
#ifndef IMC_HASH_H
#define IMC_HASH_H

#include <stdint.h>

static inline uint64_t imc_hash_str(const char *s) {
  uint64_t h = UINT64_C(14695981039346656037);
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * UINT64_C(1099511628211);
  return h;
}

#endif /* IMC_HASH_H */
