/*
 * register_conn and unregister: one queue, applied in the order the
 * calls were made, so a device's register and unregister (or two
 * registers) can never overtake each other.
 *
 * One transaction is in flight at a time. When there is none (at the
 * kick after a call, or when the last one is answered) the operations at
 * the head of the queue go out as ONE transaction, as many as:
 *  - put on one lease, if they put (a put on a lease etcd does not know
 *    fails the whole transaction, which must then concern one lease);
 *  - touch distinct keys (etcd refuses a transaction that writes a key
 *    twice);
 *  - fit in max_txn_ops, less one when it holds an unregister (etcd
 *    checks a nested transaction against the limit less the outer
 *    transaction's own operations, so 128 unregisters in one
 *    transaction are refused with "too many operations").
 * So the batch grows with the load, with no timer: under a burst of
 * registrations after a node's restart, or connections coming and
 * going, each round trip carries up to max_txn_ops of them.
 *
 * An unregister is a nested transaction: delete the key if its value is
 * still this node and connection, so the cleanup of an old connection
 * leaves the entry of the device's newer one alone. When a transaction
 * fails because its lease is gone, its puts complete with
 * IMC_ERR_NOT_FOUND and its unregisters, which did not happen either,
 * go back to the head of the queue.
 *
 * Operations waiting in the queue past their deadline complete with
 * IMC_ERR_UNAVAILABLE; a transaction's libcurl timeout is its oldest
 * operation's deadline, so each operation completes in its time.
 */
#include "etcd_int.h"

#include "util/alloc.h"
#include "util/hash.h"

#include <stdio.h>
#include <string.h>

struct etcd_wop {
  etcd_wop *next;
  int del;        /* unregister */
  uint64_t lease; /* register_conn */
  imc_done_cb done;
  void *done_ud;
  int64_t deadline;
  size_t key_len, val_len;
  char data[]; /* key NUL value NUL */
};

static int entry_ok(const imc_reg_entry *en) {
  return en != NULL && en->struct_size >= ETCD_ENTRY_MIN &&
         en->user_id != NULL &&
         imc_id_valid(en->user_id, strlen(en->user_id)) &&
         en->device_id != NULL &&
         imc_id_valid(en->device_id, strlen(en->device_id)) &&
         en->node_id != NULL && imc_id_valid(en->node_id, strlen(en->node_id));
}

static int enqueue(imc_etcd *e, int del, uint64_t lease,
                   const imc_reg_entry *en, imc_done_cb done, void *done_ud) {
  if (e->closing)
    return IMC_ERR_CLOSED;
  char key[ETCD_KEY_MAX], val[ETCD_VALUE_MAX];
  size_t kl = ej_user_key(e, key, en->user_id, en->device_id);
  int vl = snprintf(val, sizeof(val), "%s/%llu", en->node_id,
                    (unsigned long long)en->conn_id);
  etcd_wop *op = imc_malloc(&e->mem, sizeof(*op) + kl + 1 + (size_t)vl + 1);
  if (op == NULL)
    return IMC_ERR_NOMEM;
  op->next = NULL;
  op->del = del;
  op->lease = lease;
  op->done = done;
  op->done_ud = done_ud;
  op->deadline = etcd_now_ms() + e->timeout_ms;
  op->key_len = kl;
  op->val_len = (size_t)vl;
  memcpy(op->data, key, kl + 1);
  memcpy(op->data + kl + 1, val, (size_t)vl + 1);
  if (e->wq_tail)
    e->wq_tail->next = op;
  else
    e->wq = op;
  e->wq_tail = op;
  e->wq_len++;
  etcd_kick(e);
  return 0;
}

int etcd_register_conn(void *ud, uint64_t lease_id, const imc_reg_entry *en,
                       imc_done_cb done, void *done_ud) {
  imc_etcd *e = ud;
  if (e == NULL || lease_id == 0 || lease_id > INT64_MAX || !entry_ok(en) ||
      done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  return enqueue(e, 0, lease_id, en, done, done_ud);
}

int etcd_unregister(void *ud, const imc_reg_entry *en, imc_done_cb done,
                    void *done_ud) {
  imc_etcd *e = ud;
  if (e == NULL || !entry_ok(en) || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  return enqueue(e, 1, 0, en, done, done_ud);
}

static etcd_wop *pop(imc_etcd *e) {
  etcd_wop *op = e->wq;
  e->wq = op->next;
  if (e->wq == NULL)
    e->wq_tail = NULL;
  e->wq_len--;
  op->next = NULL;
  return op;
}

/* Completes the operations of list with status and frees them. */
static void complete(imc_etcd *e, etcd_wop *list, int status) {
  while (list != NULL) {
    etcd_wop *op = list;
    list = op->next;
    /* An unregister that did not happen is left to the lease's end. */
    int st = op->del && status < 0 && status != IMC_ERR_CLOSED
                 ? IMC_ERR_UNAVAILABLE
                 : status;
    op->done(op->done_ud, st);
    imc_free(&e->mem, op);
  }
}

/* Puts the unregisters of list back at the head of the queue, in their
 * order; completes its puts with status. */
static void requeue_unregisters(imc_etcd *e, etcd_wop *list, int status) {
  etcd_wop *head = NULL, *last = NULL;
  size_t n = 0;
  while (list != NULL) {
    etcd_wop *op = list;
    list = op->next;
    op->next = NULL;
    if (!op->del) {
      complete(e, op, status);
      continue;
    }
    if (last != NULL)
      last->next = op;
    else
      head = op;
    last = op;
    n++;
  }
  if (head == NULL)
    return;
  last->next = e->wq;
  if (e->wq == NULL)
    e->wq_tail = last;
  e->wq = head;
  e->wq_len += n;
}

static void on_batch(imc_etcd *e, etcd_req *r, int status,
                     const imc_json_value *root) {
  (void)root;
  e->w_flight = NULL;
  if (status == IMC_ERR_NOT_FOUND)
    requeue_unregisters(e, r->owner, status);
  else
    complete(e, r->owner, status);
  etcd_writes_flush(e);
}

/* 1 if op's key is in the batch's table, else adds it; size is a power
 * of two above twice the batch. */
static int seen(imc_etcd *e, size_t size, etcd_wop *op) {
  size_t i = (size_t)imc_hash_str(op->data) & (size - 1);
  for (; e->wseen[i] != NULL; i = (i + 1) & (size - 1))
    if (e->wseen[i]->key_len == op->key_len &&
        memcmp(e->wseen[i]->data, op->data, op->key_len) == 0)
      return 1;
  e->wseen[i] = op;
  return 0;
}

static void write_op(imc_jsonw *w, const etcd_wop *op) {
  const char *key = op->data, *val = op->data + op->key_len + 1;
  imc_jsonw_object_begin(w);
  if (!op->del) {
    imc_jsonw_key(w, "request_put");
    imc_jsonw_object_begin(w);
    ej_kv_bytes(w, "key", key, op->key_len);
    ej_kv_bytes(w, "value", val, op->val_len);
    ej_kv_id(w, "lease", op->lease);
    imc_jsonw_object_end(w);
  } else {
    imc_jsonw_key(w, "request_txn");
    imc_jsonw_object_begin(w);
    imc_jsonw_key(w, "compare");
    imc_jsonw_array_begin(w);
    imc_jsonw_object_begin(w);
    ej_kv_bytes(w, "key", key, op->key_len);
    imc_jsonw_kv_string(w, "target", "VALUE");
    imc_jsonw_kv_string(w, "result", "EQUAL");
    ej_kv_bytes(w, "value", val, op->val_len);
    imc_jsonw_object_end(w);
    imc_jsonw_array_end(w);
    imc_jsonw_key(w, "success");
    imc_jsonw_array_begin(w);
    imc_jsonw_object_begin(w);
    imc_jsonw_key(w, "request_delete_range");
    imc_jsonw_object_begin(w);
    ej_kv_bytes(w, "key", key, op->key_len);
    imc_jsonw_object_end(w);
    imc_jsonw_object_end(w);
    imc_jsonw_array_end(w);
    imc_jsonw_object_end(w);
  }
  imc_jsonw_object_end(w);
}

/* Takes the next batch off the queue's head and sends it. */
static void send_batch(imc_etcd *e) {
  size_t max = e->wq_len < e->max_ops ? e->wq_len : e->max_ops;
  size_t size = 4;
  while (size < 2 * max)
    size *= 2;
  memset(e->wseen, 0, size * sizeof(e->wseen[0]));

  etcd_wop *head = pop(e), *tail = head;
  uint64_t lease = head->lease; /* 0 for an unregister */
  int nested = head->del;
  seen(e, size, head);
  size_t n = 1;
  while (n < max && e->wq != NULL) {
    etcd_wop *op = e->wq;
    if (!op->del && lease != 0 && op->lease != lease)
      break;
    if ((nested || op->del) && n + 1 >= e->max_ops)
      break; /* room for the nested transactions' own operation */
    if (seen(e, size, op))
      break;
    nested |= op->del;
    if (!op->del)
      lease = op->lease;
    tail->next = pop(e);
    tail = tail->next;
    n++;
  }

  etcd_req *r = etcd_req_new(e, "/v3/kv/txn", on_batch, head, head->deadline);
  int rv = IMC_ERR_NOMEM;
  if (r != NULL) {
    imc_jsonw w;
    imc_jsonw_init(&w, &r->body);
    imc_jsonw_object_begin(&w);
    imc_jsonw_key(&w, "success");
    imc_jsonw_array_begin(&w);
    for (etcd_wop *op = head; op != NULL; op = op->next)
      write_op(&w, op);
    imc_jsonw_array_end(&w);
    imc_jsonw_object_end(&w);
    rv = etcd_req_start(e, r);
  }
  if (rv < 0) {
    if (r != NULL)
      etcd_req_free(e, r);
    complete(e, head, rv);
    return;
  }
  e->w_flight = r;
}

void etcd_writes_flush(imc_etcd *e) {
  while (e->w_flight == NULL && e->wq != NULL) {
    if (e->closing) {
      complete(e, pop(e), IMC_ERR_CLOSED);
      continue;
    }
    if (etcd_now_ms() >= e->wq->deadline) {
      complete(e, pop(e), IMC_ERR_UNAVAILABLE);
      continue;
    }
    send_batch(e);
  }
}

void etcd_writes_fini(imc_etcd *e) {
  while (e->wq != NULL)
    complete(e, pop(e), IMC_ERR_CLOSED);
}
