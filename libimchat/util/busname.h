/* Topic and consumer-group names of a bus, held in fixed buffers. */
#ifndef IMC_BUSNAME_H
#define IMC_BUSNAME_H

#include <imchat/common.h>

#include <string.h>

#define IMC_BUS_NAME_CAP 128 /* names are 1..127 bytes */

/* Copies name into dst (IMC_BUS_NAME_CAP bytes). Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT for a NULL, empty or too long name. */
static inline int imc_bus_name_set(char *dst, const char *name) {
  size_t n = name ? strlen(name) : 0;
  if (n == 0 || n >= IMC_BUS_NAME_CAP)
    return IMC_ERR_INVALID_ARGUMENT;
  memcpy(dst, name, n + 1);
  return 0;
}

#endif /* IMC_BUSNAME_H */
