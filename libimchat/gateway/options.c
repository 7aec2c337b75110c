/*
 * The gateway's options object and its typed setters.
 */
#include "gateway/gateway_int.h"

#include <stdio.h>
#include <string.h>

int imc_gateway_options_new(imc_gateway_options **out, const imc_mem *mem) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_gateway_options *o = imc_calloc(mem, 1, sizeof(*o));
  if (o == NULL)
    return IMC_ERR_NOMEM;
  o->mem = *mem;
  o->max_body = 64 * 1024;
  o->max_outbound = 1024 * 1024;
  o->heartbeat_ms = 30000;
  o->idle_ms = 90000;
  o->handshake_ms = 10000;
  o->lease_s = 90;
  o->ack_ms = 10000;
  o->rate = 100;
  o->burst = 200;
  o->max_devices = 16;
  o->send_ms = 15000;
  o->max_conn_sends = 64;
  o->max_sends = 8192;
  o->admit_ms = 1000;
  o->user_rate = 200;
  o->user_burst = 400;
  o->deflate = 1;
  o->deflate_min = 1024;
  o->clock = *imc_clock_default();
  o->log.level = IMC_LOG_INFO;
  *out = o;
  return 0;
}

static void options_clear(imc_gateway_options *o) {
  const imc_mem *m = &o->mem;
  imc_free(m, o->node_id);
  if (o->secret)
    memset(o->secret, 0, o->secret_len);
  imc_free(m, o->secret);
  imc_free(m, o->pem);
  imc_free(m, o->issuer);
  imc_free(m, o->audience);
  for (size_t i = 0; i < o->n_origins; i++)
    imc_free(m, o->origins[i]);
  imc_free(m, o->origins);
}

void imc_gateway_options_del(imc_gateway_options *o) {
  if (o == NULL)
    return;
  imc_mem m = o->mem;
  options_clear(o);
  imc_free(&m, o);
}

/* Replaces *dst with a copy of src[0..len); NULL src clears. */
static int set_bytes(const imc_mem *m, char **dst, size_t *dst_len,
                     const void *src, size_t len) {
  char *p = NULL;
  if (src != NULL) {
    p = imc_strndup(m, src, len);
    if (p == NULL)
      return IMC_ERR_NOMEM;
  }
  imc_free(m, *dst);
  *dst = p;
  if (dst_len)
    *dst_len = len;
  return 0;
}

int imc_gateway_options_set_node_id(imc_gateway_options *o,
                                    const char *node_id) {
  if (o == NULL || node_id == NULL || !imc_id_valid(node_id, strlen(node_id)))
    return IMC_ERR_INVALID_ARGUMENT;
  return set_bytes(&o->mem, &o->node_id, NULL, node_id, strlen(node_id));
}

int imc_gateway_options_set_jwt_secret(imc_gateway_options *o,
                                       const uint8_t *secret, size_t len) {
  if (o == NULL || secret == NULL || len == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  return set_bytes(&o->mem, (char **)&o->secret, &o->secret_len, secret, len);
}

int imc_gateway_options_set_jwt_public_key(imc_gateway_options *o,
                                           const char *pem, size_t len) {
  if (o == NULL || pem == NULL || len == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_jwt_key k;
  int rv = imc_jwt_key_init_pem(&k, pem, len);
  if (rv != 0)
    return rv;
  imc_jwt_key_clear(&k, &o->mem);
  return set_bytes(&o->mem, &o->pem, &o->pem_len, pem, len);
}

int imc_gateway_options_set_jwt_issuer(imc_gateway_options *o,
                                       const char *iss) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  return set_bytes(&o->mem, &o->issuer, NULL, iss, iss ? strlen(iss) : 0);
}

int imc_gateway_options_set_jwt_audience(imc_gateway_options *o,
                                         const char *aud) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  return set_bytes(&o->mem, &o->audience, NULL, aud, aud ? strlen(aud) : 0);
}

int imc_gateway_options_set_max_body(imc_gateway_options *o, size_t bytes) {
  if (o == NULL || bytes == 0 || bytes > 64 * 1024 * 1024)
    return IMC_ERR_INVALID_ARGUMENT;
  o->max_body = bytes;
  return 0;
}

int imc_gateway_options_set_max_outbound(imc_gateway_options *o, size_t bytes) {
  if (o == NULL || bytes < 1024)
    return IMC_ERR_INVALID_ARGUMENT;
  o->max_outbound = bytes;
  return 0;
}

int imc_gateway_options_set_heartbeat_ms(imc_gateway_options *o, uint32_t ms) {
  if (o == NULL || ms == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->heartbeat_ms = ms;
  return 0;
}

int imc_gateway_options_set_idle_timeout_ms(imc_gateway_options *o,
                                            uint32_t ms) {
  if (o == NULL || ms == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->idle_ms = ms;
  return 0;
}

int imc_gateway_options_set_handshake_timeout_ms(imc_gateway_options *o,
                                                 uint32_t ms) {
  if (o == NULL || ms == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->handshake_ms = ms;
  return 0;
}

int imc_gateway_options_set_lease_ttl_s(imc_gateway_options *o, uint32_t s) {
  if (o == NULL || s == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->lease_s = s;
  return 0;
}

int imc_gateway_options_set_ack_timeout_ms(imc_gateway_options *o,
                                           uint32_t ms) {
  if (o == NULL || ms == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->ack_ms = ms;
  return 0;
}

int imc_gateway_options_set_rate_limit(imc_gateway_options *o, uint32_t per_s,
                                       uint32_t burst) {
  if (o == NULL || per_s == 0 || burst == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->rate = per_s;
  o->burst = burst;
  return 0;
}

int imc_gateway_options_set_max_devices(imc_gateway_options *o, uint32_t n) {
  if (o == NULL || n == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->max_devices = n;
  return 0;
}

int imc_gateway_options_set_user_rate_limit(imc_gateway_options *o,
                                            uint32_t per_s, uint32_t burst) {
  if (o == NULL || per_s == 0 || burst == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->user_rate = per_s;
  o->user_burst = burst;
  return 0;
}

int imc_gateway_options_set_send_timeout_ms(imc_gateway_options *o,
                                            uint32_t ms) {
  if (o == NULL || ms == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->send_ms = ms;
  return 0;
}

int imc_gateway_options_set_max_sends_in_flight(imc_gateway_options *o,
                                                uint32_t per_conn,
                                                uint32_t total) {
  if (o == NULL || per_conn == 0 || total == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->max_conn_sends = per_conn;
  o->max_sends = total;
  return 0;
}

int imc_gateway_options_set_admit_timeout_ms(imc_gateway_options *o,
                                             uint32_t ms) {
  if (o == NULL || ms == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->admit_ms = ms;
  return 0;
}

int imc_gateway_options_add_allowed_origin(imc_gateway_options *o,
                                           const char *origin) {
  if (o == NULL || origin == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  char norm[ORIGIN_MAX];
  imc_span v = {origin, strlen(origin)};
  if (imc_http_origin(v, NULL, norm, sizeof(norm)) < 0)
    return IMC_ERR_INVALID_ARGUMENT;
  char **list =
      imc_realloc(&o->mem, o->origins, (o->n_origins + 1) * sizeof(char *));
  if (list == NULL)
    return IMC_ERR_NOMEM;
  o->origins = list;
  if ((list[o->n_origins] = imc_strdup(&o->mem, norm)) == NULL)
    return IMC_ERR_NOMEM;
  o->n_origins++;
  return 0;
}

int imc_gateway_options_set_max_connections(imc_gateway_options *o,
                                            uint32_t n) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  o->max_conns = n;
  return 0;
}

int imc_gateway_options_set_max_connections_per_ip(imc_gateway_options *o,
                                                   uint32_t n) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  o->max_conns_ip = n;
  return 0;
}

int imc_gateway_options_set_http_only(imc_gateway_options *o, int on) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  o->http_only = on != 0;
  return 0;
}

int imc_gateway_options_set_transport(imc_gateway_options *o,
                                      const imc_transport_vtbl *vt, void *ud) {
  if (o == NULL || vt == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_vtbl_copy(&o->transport, sizeof(o->transport), vt, vt->struct_size);
  o->transport_ud = ud;
  return 0;
}

int imc_gateway_options_set_registry(imc_gateway_options *o,
                                     const imc_registry_vtbl *vt, void *ud) {
  if (o == NULL || vt == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_vtbl_copy(&o->registry, sizeof(o->registry), vt, vt->struct_size);
  o->registry_ud = ud;
  return 0;
}

int imc_gateway_options_set_upstream(imc_gateway_options *o,
                                     const imc_upstream_vtbl *vt, void *ud) {
  if (o == NULL || vt == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_vtbl_copy(&o->upstream, sizeof(o->upstream), vt, vt->struct_size);
  o->upstream_ud = ud;
  return 0;
}

int imc_gateway_options_set_keysrc(imc_gateway_options *o,
                                   const imc_keysrc_vtbl *vt, void *ud) {
  if (o == NULL || vt == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_vtbl_copy(&o->keysrc, sizeof(o->keysrc), vt, vt->struct_size);
  o->keysrc_ud = ud;
  return 0;
}

int imc_gateway_options_set_http_handler(imc_gateway_options *o,
                                         const imc_http_handler_vtbl *vt,
                                         void *ud) {
  if (o == NULL || vt == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_vtbl_copy(&o->http, sizeof(o->http), vt, vt->struct_size);
  o->http_ud = ud;
  return 0;
}

int imc_gateway_options_set_clock(imc_gateway_options *o,
                                  const imc_clock *clock) {
  return o ? imc_clock_assign(&o->clock, clock) : IMC_ERR_INVALID_ARGUMENT;
}

int imc_gateway_options_set_log(imc_gateway_options *o, imc_log_cb cb, void *ud,
                                imc_log_level max_level) {
  return o ? imc_logger_assign(&o->log, cb, ud, max_level)
           : IMC_ERR_INVALID_ARGUMENT;
}

int imc_gateway_options_set_deflate(imc_gateway_options *o, int enabled,
                                    size_t min_size) {
  if (o == NULL || (enabled != 0 && enabled != 1))
    return IMC_ERR_INVALID_ARGUMENT;
  o->deflate = enabled;
  o->deflate_min = min_size;
  return 0;
}
