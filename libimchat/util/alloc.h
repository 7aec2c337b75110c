/* Allocation through an instance's imc_mem. */
#ifndef IMC_ALLOC_H
#define IMC_ALLOC_H

#include <imchat/common.h>

/* The malloc/free allocator, used when a constructor gets NULL. */
const imc_mem *imc_mem_default(void);

static inline void *imc_malloc(const imc_mem *m, size_t n) {
  return m->malloc(n, m->ud);
}
static inline void *imc_calloc(const imc_mem *m, size_t nmemb, size_t n) {
  return m->calloc(nmemb, n, m->ud);
}
static inline void *imc_realloc(const imc_mem *m, void *p, size_t n) {
  return m->realloc(p, n, m->ud);
}
static inline void imc_free(const imc_mem *m, void *p) {
  m->free(p, m->ud);
}

/* A NUL-terminated copy of s[0..len), or NULL. */
char *imc_strndup(const imc_mem *m, const char *s, size_t len);
char *imc_strdup(const imc_mem *m, const char *s);

/* Clock helpers with the system clocks as fallback. */
int64_t imc_clock_now(const imc_clock *c);
int64_t imc_clock_wall(const imc_clock *c);
const imc_clock *imc_clock_default(void);
/* *dst = *src, or the system clocks when src is NULL. Returns 0. */
int imc_clock_assign(imc_clock *dst, const imc_clock *src);

#endif /* IMC_ALLOC_H */
