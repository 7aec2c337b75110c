/*
 * The gRPC server's options object: the method table, the transport and
 * the limits.
 */
#include "rpc/rpc_int.h"

#include <string.h>

int imc_grpc_server_options_new(imc_grpc_server_options **out,
                                const imc_mem *mem) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_grpc_server_options *o = imc_calloc(mem, 1, sizeof(*o));
  if (o == NULL)
    return IMC_ERR_NOMEM;
  o->mem = *mem;
  o->clock = *imc_clock_default();
  o->log.level = IMC_LOG_INFO;
  o->max_message = RPC_MAX_MESSAGE;
  o->max_streams = 1000;
  o->max_header_list = 16384;
  o->reset_max = 1000;
  o->reset_interval_ms = 1000;
  *out = o;
  return 0;
}

void imc_grpc_server_options_del(imc_grpc_server_options *o) {
  if (o == NULL)
    return;
  imc_mem m = o->mem;
  for (size_t i = 0; i < o->n_methods; i++)
    imc_free(&m, o->methods[i].name);
  imc_free(&m, o->methods);
  imc_free(&m, o);
}

/* "/a/b": a leading '/', a service, a second '/' and a method name. */
static int method_name_valid(const char *name) {
  if (name[0] != '/')
    return 0;
  const char *slash = strchr(name + 1, '/');
  return slash != NULL && slash > name + 1 && slash[1] != '\0' &&
         strchr(slash + 1, '/') == NULL;
}

int imc_grpc_server_options_add_method(imc_grpc_server_options *o,
                                       const char *method,
                                       imc_grpc_handler handler, void *ud) {
  if (o == NULL || method == NULL || handler == NULL ||
      !method_name_valid(method))
    return IMC_ERR_INVALID_ARGUMENT;
  for (size_t i = 0; i < o->n_methods; i++)
    if (strcmp(o->methods[i].name, method) == 0)
      return IMC_ERR_EXISTS;
  if (o->n_methods == o->cap_methods) {
    size_t cap = o->cap_methods ? o->cap_methods * 2 : 8;
    rpc_method *t = imc_realloc(&o->mem, o->methods, cap * sizeof(*t));
    if (t == NULL)
      return IMC_ERR_NOMEM;
    o->methods = t;
    o->cap_methods = cap;
  }
  char *name = imc_strdup(&o->mem, method);
  if (name == NULL)
    return IMC_ERR_NOMEM;
  o->methods[o->n_methods++] = (rpc_method){name, handler, ud};
  return 0;
}

int imc_grpc_server_options_set_transport(imc_grpc_server_options *o,
                                          const imc_transport_vtbl *vt,
                                          void *ud) {
  if (o == NULL || vt == NULL ||
      !IMC_HAS_MEMBER(vt, imc_transport_vtbl, close) || vt->send == NULL ||
      vt->close == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_vtbl_copy(&o->tv, sizeof(o->tv), vt, vt->struct_size);
  o->tud = ud;
  return 0;
}

int imc_grpc_server_options_set_clock(imc_grpc_server_options *o,
                                      const imc_clock *clock) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  return imc_clock_assign(&o->clock, clock);
}

int imc_grpc_server_options_set_log(imc_grpc_server_options *o, imc_log_cb cb,
                                    void *ud, imc_log_level max_level) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  return imc_logger_assign(&o->log, cb, ud, max_level);
}

int imc_grpc_server_options_set_max_message(imc_grpc_server_options *o,
                                            size_t bytes) {
  if (o == NULL || bytes == 0 || bytes > RPC_MESSAGE_CEILING)
    return IMC_ERR_INVALID_ARGUMENT;
  o->max_message = bytes;
  return 0;
}

int imc_grpc_server_options_set_max_streams(imc_grpc_server_options *o,
                                            uint32_t n) {
  if (o == NULL || n == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->max_streams = n;
  return 0;
}

int imc_grpc_server_options_set_max_header_list(imc_grpc_server_options *o,
                                                uint32_t bytes) {
  if (o == NULL || bytes < 1024)
    return IMC_ERR_INVALID_ARGUMENT;
  o->max_header_list = bytes;
  return 0;
}

int imc_grpc_server_options_set_reset_limit(imc_grpc_server_options *o,
                                            uint32_t max,
                                            uint32_t interval_ms) {
  if (o == NULL || max == 0 || interval_ms == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->reset_max = max;
  o->reset_interval_ms = interval_ms;
  return 0;
}
