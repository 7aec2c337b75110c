/*
 * The node's lease: grant (then the node key, and the node's address if
 * the engine has one, on it), keepalive, revoke.
 * These go out at once, one request each: a gateway has one lease and
 * at most one grant or keepalive outstanding.
 */
#include "etcd_int.h"

#include "util/alloc.h"

#include <stdio.h>
#include <string.h>

typedef struct lease_op {
  imc_lease_cb grant_done; /* lease_grant */
  imc_done_cb done;        /* keepalive, revoke */
  void *done_ud;
  uint64_t id;
  int64_t deadline;
  char node[IMC_ID_MAX + 1];
} lease_op;

static int id_ok(const char *s) {
  return s != NULL && imc_id_valid(s, strlen(s));
}

static lease_op *op_new(imc_etcd *e, void *done_ud) {
  lease_op *op = imc_calloc(&e->mem, 1, sizeof(*op));
  if (op != NULL) {
    op->done_ud = done_ud;
    op->deadline = etcd_now_ms() + e->timeout_ms;
  }
  return op;
}

/* Sends r for op; on failure frees both and returns the code. */
static int op_send(imc_etcd *e, lease_op *op, etcd_req *r) {
  int rv = r ? etcd_req_start(e, r) : IMC_ERR_NOMEM;
  if (rv < 0) {
    if (r != NULL)
      etcd_req_free(e, r);
    imc_free(&e->mem, op);
  }
  return rv;
}

/* ------------------------------------------------------------------ */
/* Grant                                                                */
/* ------------------------------------------------------------------ */

static void grant_finish(imc_etcd *e, lease_op *op, int status) {
  op->grant_done(op->done_ud, status, status == 0 ? op->id : 0);
  imc_free(&e->mem, op);
}

static void on_node_keys(imc_etcd *e, etcd_req *r, int status,
                         const imc_json_value *root) {
  (void)root;
  grant_finish(e, r->owner, status);
}

/* Writes {"request_put": {key, value, lease}}, an operation of a txn. */
static void txn_put(imc_jsonw *w, const char *key, size_t kl, const char *val,
                    size_t vl, uint64_t lease) {
  imc_jsonw_object_begin(w);
  imc_jsonw_key(w, "request_put");
  imc_jsonw_object_begin(w);
  ej_kv_bytes(w, "key", key, kl);
  ej_kv_bytes(w, "value", val, vl);
  ej_kv_id(w, "lease", lease);
  imc_jsonw_object_end(w);
  imc_jsonw_object_end(w);
}

static void on_grant(imc_etcd *e, etcd_req *r, int status,
                     const imc_json_value *root) {
  lease_op *op = r->owner;
  if (status == 0 && (ej_member_u64(root, "ID", &op->id) < 0 || op->id == 0))
    status = IMC_ERR_PROTO;
  if (status < 0) {
    grant_finish(e, op, status);
    return;
  }
  /* The node key (the cluster's list of live nodes) and its address on
   * the lease, in one transaction: the address never outlives the node.
   * A lease whose transaction fails is not reported; it runs out by its
   * TTL. */
  etcd_req *txn = etcd_req_new(e, "/v3/kv/txn", on_node_keys, op, op->deadline);
  if (txn == NULL) {
    grant_finish(e, op, IMC_ERR_NOMEM);
    return;
  }
  char key[ETCD_KEY_MAX], val[24];
  int kl = snprintf(key, sizeof(key), "%snodes/%s", e->prefix, op->node);
  int vl = snprintf(val, sizeof(val), "%llx", (unsigned long long)op->id);
  imc_jsonw w;
  imc_jsonw_init(&w, &txn->body);
  imc_jsonw_object_begin(&w);
  imc_jsonw_key(&w, "success");
  imc_jsonw_array_begin(&w);
  txn_put(&w, key, (size_t)kl, val, (size_t)vl, op->id);
  if (e->addr[0] != '\0') {
    size_t al = ej_addr_key(e, key, op->node);
    txn_put(&w, key, al, e->addr, strlen(e->addr), op->id);
  }
  imc_jsonw_array_end(&w);
  imc_jsonw_object_end(&w);
  int rv = etcd_req_start(e, txn);
  if (rv < 0) {
    etcd_req_free(e, txn);
    grant_finish(e, op, rv);
  }
}

int etcd_lease_grant(void *ud, const char *node_id, uint32_t ttl_s,
                     imc_lease_cb done, void *done_ud) {
  imc_etcd *e = ud;
  if (e == NULL || !id_ok(node_id) || ttl_s == 0 || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (e->closing)
    return IMC_ERR_CLOSED;
  lease_op *op = op_new(e, done_ud);
  if (op == NULL)
    return IMC_ERR_NOMEM;
  op->grant_done = done;
  memcpy(op->node, node_id, strlen(node_id) + 1);
  etcd_req *r = etcd_req_new(e, "/v3/lease/grant", on_grant, op, op->deadline);
  if (r != NULL) {
    imc_jsonw w;
    imc_jsonw_init(&w, &r->body);
    imc_jsonw_object_begin(&w);
    imc_jsonw_kv_uint64(&w, "TTL", ttl_s);
    imc_jsonw_object_end(&w);
  }
  return op_send(e, op, r);
}

/* ------------------------------------------------------------------ */
/* Keepalive and revoke                                                 */
/* ------------------------------------------------------------------ */

static void on_keepalive(imc_etcd *e, etcd_req *r, int status,
                         const imc_json_value *root) {
  lease_op *op = r->owner;
  imc_json_value res;
  uint64_t ttl = 0;
  /* A stream's answer: {"result": {"ID": ..., "TTL": ...}}; a lease etcd
   * does not know comes back without a TTL. */
  if (status == 0) {
    if (imc_json_member(root, "result", &res) != 0 ||
        res.type != IMC_JSON_OBJECT || ej_member_u64(&res, "TTL", &ttl) < 0)
      status = IMC_ERR_PROTO;
    else if (ttl == 0)
      status = IMC_ERR_NOT_FOUND;
  }
  op->done(op->done_ud, status);
  imc_free(&e->mem, op);
}

static void on_revoke(imc_etcd *e, etcd_req *r, int status,
                      const imc_json_value *root) {
  lease_op *op = r->owner;
  (void)root;
  op->done(op->done_ud, status);
  imc_free(&e->mem, op);
}

static int lease_call(imc_etcd *e, const char *path, etcd_req_fn fn,
                      uint64_t lease_id, imc_done_cb done, void *done_ud) {
  if (e == NULL || lease_id == 0 || lease_id > INT64_MAX || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (e->closing)
    return IMC_ERR_CLOSED;
  lease_op *op = op_new(e, done_ud);
  if (op == NULL)
    return IMC_ERR_NOMEM;
  op->done = done;
  op->id = lease_id;
  etcd_req *r = etcd_req_new(e, path, fn, op, op->deadline);
  if (r != NULL) {
    imc_jsonw w;
    imc_jsonw_init(&w, &r->body);
    imc_jsonw_object_begin(&w);
    ej_kv_id(&w, "ID", lease_id);
    imc_jsonw_object_end(&w);
  }
  return op_send(e, op, r);
}

int etcd_lease_keepalive(void *ud, uint64_t lease_id, imc_done_cb done,
                         void *done_ud) {
  return lease_call(ud, "/v3/lease/keepalive", on_keepalive, lease_id, done,
                    done_ud);
}

int etcd_lease_revoke(void *ud, uint64_t lease_id, imc_done_cb done,
                      void *done_ud) {
  return lease_call(ud, "/v3/lease/revoke", on_revoke, lease_id, done, done_ud);
}
