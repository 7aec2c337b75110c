/* Error strings, the default allocator and clock, id validation. */
#include "util/alloc.h"

#include <imchat/version.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *imc_strerror(int rv) {
  switch (rv) {
  case IMC_OK:
    return "success";
  case IMC_ERR_INVALID_ARGUMENT:
    return "invalid argument";
  case IMC_ERR_NOMEM:
    return "out of memory";
  case IMC_ERR_WOULDBLOCK:
    return "operation would block";
  case IMC_ERR_PROTO:
    return "protocol error";
  case IMC_ERR_INCOMPLETE:
    return "incomplete input";
  case IMC_ERR_TOO_LARGE:
    return "too large";
  case IMC_ERR_NOT_FOUND:
    return "not found";
  case IMC_ERR_AUTH:
    return "authentication failed";
  case IMC_ERR_EXPIRED:
    return "credentials expired or not yet valid";
  case IMC_ERR_FORBIDDEN:
    return "forbidden";
  case IMC_ERR_UNAVAILABLE:
    return "service unavailable";
  case IMC_ERR_CLOSED:
    return "closed";
  case IMC_ERR_QUEUE_FULL:
    return "queue full";
  case IMC_ERR_RATE_LIMITED:
    return "rate limited";
  case IMC_ERR_BLOCKED:
    return "blocked by content filter";
  case IMC_ERR_IO:
    return "I/O error";
  case IMC_ERR_EXISTS:
    return "already exists";
  case IMC_ERR_REVOKED:
    return "partition revoked";
  case IMC_ERR_CALLBACK_FAILURE:
    return "callback failure";
  case IMC_ERR_INTERNAL:
    return "internal error";
  default:
    return "unknown error";
  }
}

int imc_err_is_fatal(int rv) {
  return rv <= IMC_ERR_FATAL;
}

const char *imc_version(void) {
  return IMC_VERSION;
}

int imc_id_valid(const char *id, size_t len) {
  if (id == NULL || len == 0 || len > IMC_ID_MAX)
    return 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)id[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '@' ||
          c == '-'))
      return 0;
  }
  return 1;
}

static void *sys_malloc(size_t n, void *ud) {
  (void)ud;
  return malloc(n);
}
static void sys_free(void *p, void *ud) {
  (void)ud;
  free(p);
}
static void *sys_calloc(size_t nmemb, size_t n, void *ud) {
  (void)ud;
  return calloc(nmemb, n);
}
static void *sys_realloc(void *p, size_t n, void *ud) {
  (void)ud;
  return realloc(p, n);
}

static const imc_mem default_mem = {NULL, sys_malloc, sys_free, sys_calloc,
                                    sys_realloc};

const imc_mem *imc_mem_default(void) {
  return &default_mem;
}

char *imc_strndup(const imc_mem *m, const char *s, size_t len) {
  char *p = imc_malloc(m, len + 1);
  if (p == NULL)
    return NULL;
  memcpy(p, s, len);
  p[len] = '\0';
  return p;
}

char *imc_strdup(const imc_mem *m, const char *s) {
  return imc_strndup(m, s, strlen(s));
}

static int64_t clock_ms(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
static int64_t sys_now(void *ud) {
  (void)ud;
  return clock_ms(CLOCK_MONOTONIC);
}
static int64_t sys_wall(void *ud) {
  (void)ud;
  return clock_ms(CLOCK_REALTIME);
}

static const imc_clock default_clock = {NULL, sys_now, sys_wall};

const imc_clock *imc_clock_default(void) {
  return &default_clock;
}

int64_t imc_clock_now(const imc_clock *c) {
  return c->now_ms(c->ud);
}

int64_t imc_clock_wall(const imc_clock *c) {
  return c->wall_ms(c->ud);
}

int imc_clock_assign(imc_clock *dst, const imc_clock *src) {
  *dst = src ? *src : *imc_clock_default();
  return 0;
}
