/* Copying versioned vtables: members past the caller's struct_size are
 * absent and read as NULL. */
#ifndef IMC_VTBL_H
#define IMC_VTBL_H

#include <stdint.h>
#include <string.h>

static inline void imc_vtbl_copy(void *dst, size_t dst_size, const void *src,
                                 uint32_t src_size) {
  memset(dst, 0, dst_size);
  memcpy(dst, src, src_size < dst_size ? src_size : dst_size);
}

#endif /* IMC_VTBL_H */
