/*
 * The gRPC client's options object: the transport, the authority and the
 * limits.
 */
#include "rpc/rpc_int.h"

#include <string.h>

int imc_grpc_client_options_new(imc_grpc_client_options **out,
                                const imc_mem *mem) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_grpc_client_options *o = imc_calloc(mem, 1, sizeof(*o));
  if (o == NULL)
    return IMC_ERR_NOMEM;
  o->mem = *mem;
  o->clock = *imc_clock_default();
  o->log.level = IMC_LOG_INFO;
  o->max_message = RPC_MAX_MESSAGE;
  *out = o;
  return 0;
}

void imc_grpc_client_options_del(imc_grpc_client_options *o) {
  if (o == NULL)
    return;
  imc_mem m = o->mem;
  imc_free(&m, o->authority);
  imc_free(&m, o);
}

int imc_grpc_client_options_set_transport(imc_grpc_client_options *o,
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

int imc_grpc_client_options_set_authority(imc_grpc_client_options *o,
                                          const char *authority) {
  if (o == NULL || authority == NULL || authority[0] == '\0')
    return IMC_ERR_INVALID_ARGUMENT;
  char *a = imc_strdup(&o->mem, authority);
  if (a == NULL)
    return IMC_ERR_NOMEM;
  imc_free(&o->mem, o->authority);
  o->authority = a;
  return 0;
}

int imc_grpc_client_options_set_clock(imc_grpc_client_options *o,
                                      const imc_clock *clock) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  return imc_clock_assign(&o->clock, clock);
}

int imc_grpc_client_options_set_log(imc_grpc_client_options *o, imc_log_cb cb,
                                    void *ud, imc_log_level max_level) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  return imc_logger_assign(&o->log, cb, ud, max_level);
}

int imc_grpc_client_options_set_max_message(imc_grpc_client_options *o,
                                            size_t bytes) {
  if (o == NULL || bytes == 0 || bytes > RPC_MESSAGE_CEILING)
    return IMC_ERR_INVALID_ARGUMENT;
  o->max_message = bytes;
  return 0;
}
