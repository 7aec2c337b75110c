/*
 * imc_etcd_node_address: the address a node published with its lease
 * (lease.c puts it), read with one linearizable range of its key. Routers
 * look a node up when they first need to reach it, so each lookup is a
 * request of its own.
 */
#include "etcd_int.h"

#include "util/alloc.h"

#include <string.h>

typedef struct addr_op {
  void (*done)(void *ud, int status, const char *addr);
  void *ud;
} addr_op;

/* The address in a range answer, into buf: 0, IMC_ERR_NOT_FOUND (no
 * key), IMC_ERR_PROTO or IMC_ERR_NOMEM. */
static int parse(const imc_json_value *root, imc_wbuf *buf, const char **addr) {
  imc_json_value kvs, kv, v;
  int rv = imc_json_member(root, "kvs", &kvs);
  if (rv == IMC_ERR_NOT_FOUND)
    return IMC_ERR_NOT_FOUND; /* proto3 leaves an empty list out */
  size_t pos = 0, len;
  if (rv < 0 || kvs.type != IMC_JSON_ARRAY)
    return IMC_ERR_PROTO;
  rv = imc_json_array_next(&kvs, &pos, &kv);
  if (rv == 0)
    return IMC_ERR_NOT_FOUND;
  if (rv < 0 || kv.type != IMC_JSON_OBJECT ||
      imc_json_member(&kv, "value", &v) != 0)
    return IMC_ERR_PROTO;
  if ((rv = ej_bytes(&v, buf, addr, &len)) < 0)
    return rv;
  /* Only an engine's put writes the key; anything else is not ours. */
  return etcd_addr_ok(*addr, len) ? 0 : IMC_ERR_PROTO;
}

static void on_range(imc_etcd *e, etcd_req *r, int status,
                     const imc_json_value *root) {
  addr_op *op = r->owner;
  imc_wbuf buf;
  imc_wbuf_init(&buf, &e->mem);
  const char *addr = NULL;
  if (status == 0)
    status = parse(root, &buf, &addr);
  op->done(op->ud, status, status == 0 ? addr : NULL);
  imc_wbuf_free(&buf);
  imc_free(&e->mem, op);
}

int imc_etcd_node_address(imc_etcd *e, const char *node_id,
                          void (*done)(void *ud, int status, const char *addr),
                          void *ud) {
  if (e == NULL || node_id == NULL || done == NULL ||
      !imc_id_valid(node_id, strlen(node_id)))
    return IMC_ERR_INVALID_ARGUMENT;
  if (e->closing)
    return IMC_ERR_CLOSED;
  addr_op *op = imc_malloc(&e->mem, sizeof(*op));
  if (op == NULL)
    return IMC_ERR_NOMEM;
  op->done = done;
  op->ud = ud;
  etcd_req *r = etcd_req_new(e, "/v3/kv/range", on_range, op,
                             etcd_now_ms() + e->timeout_ms);
  int rv = IMC_ERR_NOMEM;
  if (r != NULL) {
    /* No "serializable": etcd answers a range linearizably by default. */
    char key[ETCD_KEY_MAX];
    size_t kl = ej_addr_key(e, key, node_id);
    imc_jsonw w;
    imc_jsonw_init(&w, &r->body);
    imc_jsonw_object_begin(&w);
    ej_kv_bytes(&w, "key", key, kl);
    imc_jsonw_object_end(&w);
    rv = etcd_req_start(e, r);
  }
  if (rv < 0) {
    if (r != NULL)
      etcd_req_free(e, r);
    imc_free(&e->mem, op);
  }
  return rv;
}
