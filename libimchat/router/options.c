/* The router's options: vtables, limits, clock, log and filter. */
#include "router/router_int.h"

#include "util/vtbl.h"

#include <string.h>

int imc_router_options_new(imc_router_options **out, const imc_mem *mem) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_router_options *o = imc_calloc(mem, 1, sizeof(*o));
  if (o == NULL)
    return IMC_ERR_NOMEM;
  o->mem = *mem;
  o->clock = *imc_clock_default();
  o->log.level = IMC_LOG_INFO;
  o->max_body = 64 * 1024;
  o->dedup_ttl_s = 7 * 24 * 3600;
  o->status_memory_ms = 600000;
  o->status_memory_max = (size_t)1 << 20;
  o->group_cache_ms = 30000;
  imc_bus_name_set(o->offline_topic, "offline_msg");
  imc_bus_name_set(o->group_topic, "group_msg");
  *out = o;
  return 0;
}

void imc_router_options_del(imc_router_options *o) {
  if (o == NULL)
    return;
  imc_mem m = o->mem;
  imc_free(&m, o->filter_words);
  imc_free(&m, o);
}

#define VT_SETTER(name, type, field)                                           \
  int imc_router_options_set_##name(imc_router_options *o, const type *vt,     \
                                    void *ud) {                                \
    if (o == NULL || vt == NULL)                                               \
      return IMC_ERR_INVALID_ARGUMENT;                                         \
    imc_vtbl_copy(&o->field, sizeof(o->field), vt, vt->struct_size);           \
    o->field##_ud = ud;                                                        \
    return 0;                                                                  \
  }

VT_SETTER(registry, imc_registry_vtbl, registry)
VT_SETTER(seq, imc_seq_vtbl, seq)
VT_SETTER(dedup, imc_dedup_vtbl, dedup)
VT_SETTER(store, imc_store_vtbl, store)
VT_SETTER(queue, imc_bus_vtbl, queue)
VT_SETTER(group_bus, imc_bus_vtbl, group_bus)
VT_SETTER(gwlink, imc_gwlink_vtbl, gwlink)

int imc_router_options_set_liveness(imc_router_options *o,
                                    imc_router_alive_fn alive, void *ud) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  o->alive = alive;
  o->alive_ud = alive ? ud : NULL;
  return 0;
}

int imc_router_options_set_topics(imc_router_options *o,
                                  const char *offline_topic,
                                  const char *group_topic) {
  char off[IMC_BUS_NAME_CAP], grp[IMC_BUS_NAME_CAP];
  if (o == NULL || imc_bus_name_set(off, offline_topic) != 0 ||
      imc_bus_name_set(grp, group_topic) != 0)
    return IMC_ERR_INVALID_ARGUMENT;
  memcpy(o->offline_topic, off, sizeof(off));
  memcpy(o->group_topic, grp, sizeof(grp));
  return 0;
}

int imc_router_options_set_clock(imc_router_options *o,
                                 const imc_clock *clock) {
  return o ? imc_clock_assign(&o->clock, clock) : IMC_ERR_INVALID_ARGUMENT;
}

int imc_router_options_set_log(imc_router_options *o, imc_log_cb cb, void *ud,
                               imc_log_level max_level) {
  return o ? imc_logger_assign(&o->log, cb, ud, max_level)
           : IMC_ERR_INVALID_ARGUMENT;
}

int imc_router_options_set_max_body(imc_router_options *o, size_t bytes) {
  if (o == NULL || bytes == 0 || bytes > 64 * 1024 * 1024)
    return IMC_ERR_INVALID_ARGUMENT;
  o->max_body = bytes;
  return 0;
}

int imc_router_options_set_dedup_ttl_s(imc_router_options *o, uint32_t s) {
  if (o == NULL || s == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->dedup_ttl_s = s;
  return 0;
}

int imc_router_options_set_record_first(imc_router_options *o, int on) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  o->record_first = on != 0;
  return 0;
}

int imc_router_options_set_status_memory(imc_router_options *o, uint32_t ms,
                                         size_t max_entries) {
  if (o == NULL || ms == 0 || max_entries == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  o->status_memory_ms = ms;
  o->status_memory_max = max_entries;
  return 0;
}

int imc_router_options_set_group_cache_ms(imc_router_options *o, uint32_t ms) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  o->group_cache_ms = ms;
  return 0;
}

int imc_router_options_set_filter(imc_router_options *o, const uint8_t *words,
                                  size_t len, imc_filter_action action) {
  if (o == NULL || (words == NULL && len > 0) ||
      (action != IMC_FILTER_REJECT && action != IMC_FILTER_MASK))
    return IMC_ERR_INVALID_ARGUMENT;
  /* Built once here so that a bad list is refused now, not at
   * imc_router_new. */
  imc_filter *f;
  int rv = imc_filter_from_words(&f, words, len, &o->mem);
  if (rv != 0)
    return rv;
  imc_filter_del(f);
  uint8_t *copy = imc_malloc(&o->mem, len ? len : 1);
  if (copy == NULL)
    return IMC_ERR_NOMEM;
  if (len)
    memcpy(copy, words, len);
  imc_free(&o->mem, o->filter_words);
  o->filter_words = copy;
  o->filter_len = len;
  o->filter_action = action;
  return 0;
}
