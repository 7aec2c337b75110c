/*
 * lookup_many: one range request per user ("<prefix>users/<user>/" up to
 * the next prefix), in read transactions of at most max_txn_ops ranges.
 * Lookups queue up; at the kick, and whenever a transaction is answered,
 * the users waiting are packed into transactions (several lookups may
 * share one, a large lookup spans several), at most
 * ETCD_READS_IN_FLIGHT in flight. A lookup completes once every one of
 * its users is answered, or with the first error.
 *
 * Ids that are not valid ids cannot have entries: they get none, without
 * a range. Entries whose key or value do not parse are skipped.
 */
#include "etcd_int.h"

#include "util/alloc.h"

#include <string.h>

typedef struct lk_ent {
  size_t user;              /* index in the lookup */
  size_t dev_off, node_off; /* in strs */
  uint64_t conn;
} lk_ent;

struct etcd_lookup {
  etcd_lookup *next;
  imc_lookup_many_cb done;
  void *done_ud;
  int64_t deadline;
  size_t n_users;
  size_t next_user; /* the next user to put in a transaction */
  size_t pending;   /* users with a range, not yet answered */
  int status;
  size_t *user_off; /* each user id in strs; SIZE_MAX: no range */
  imc_wbuf strs;
  imc_wbuf tmp; /* decoded keys and values */
  lk_ent *ents;
  size_t n_ents, cap_ents;
};

/* A read transaction: which user of which lookup each range serves. */
typedef struct rtxn_item {
  etcd_lookup *lk;
  size_t user;
} rtxn_item;

typedef struct rtxn {
  size_t n;
  rtxn_item items[];
} rtxn;

static void lookup_free(imc_etcd *e, etcd_lookup *lk) {
  imc_wbuf_free(&lk->strs);
  imc_wbuf_free(&lk->tmp);
  imc_free(&e->mem, lk->ents);
  imc_free(&e->mem, lk->user_off);
  imc_free(&e->mem, lk);
}

/* Hands lk's result to its caller and frees it. */
static void finish(imc_etcd *e, etcd_lookup *lk) {
  int status = lk->status;
  size_t n = lk->n_users, m = lk->n_ents;
  void *block = NULL;
  if (status == 0) {
    /* ptrs | entries | offsets, the entries grouped by user */
    size_t need = m * (sizeof(imc_reg_entry *) + sizeof(imc_reg_entry)) +
                  (n + 1) * sizeof(size_t);
    block = imc_malloc(&e->mem, need);
    if (block == NULL)
      status = IMC_ERR_NOMEM;
  }
  if (status < 0) {
    lk->done(lk->done_ud, status, NULL, NULL, n);
    lookup_free(e, lk);
    return;
  }
  const imc_reg_entry **ptrs = block;
  imc_reg_entry *ents = (imc_reg_entry *)(void *)(ptrs + m);
  size_t *offsets = (size_t *)(void *)(ents + m);
  memset(offsets, 0, (n + 1) * sizeof(size_t));
  for (size_t i = 0; i < m; i++)
    offsets[lk->ents[i].user + 1]++;
  for (size_t u = 0; u < n; u++)
    offsets[u + 1] += offsets[u];
  const char *s = lk->strs.p;
  for (size_t i = 0; i < m; i++) {
    const lk_ent *x = &lk->ents[i];
    /* offsets[user] is the next free slot while filling */
    size_t k = offsets[x->user]++;
    ents[k] = (imc_reg_entry){.struct_size = sizeof(imc_reg_entry),
                              .user_id = s + lk->user_off[x->user],
                              .device_id = s + x->dev_off,
                              .node_id = s + x->node_off,
                              .conn_id = x->conn};
    ptrs[k] = &ents[k];
  }
  /* Shift back: offsets[u] now holds the end of user u. */
  memmove(offsets + 1, offsets, n * sizeof(size_t));
  offsets[0] = 0;
  lk->done(lk->done_ud, 0, ptrs, offsets, n);
  imc_free(&e->mem, block);
  lookup_free(e, lk);
}

int etcd_lookup_many(void *ud, const char *const *user_ids, size_t n,
                     imc_lookup_many_cb done, void *done_ud) {
  imc_etcd *e = ud;
  if (e == NULL || (user_ids == NULL && n > 0) || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  for (size_t i = 0; i < n; i++)
    if (user_ids[i] == NULL)
      return IMC_ERR_INVALID_ARGUMENT;
  if (e->closing)
    return IMC_ERR_CLOSED;
  etcd_lookup *lk = imc_calloc(&e->mem, 1, sizeof(*lk));
  if (lk == NULL)
    return IMC_ERR_NOMEM;
  imc_wbuf_init(&lk->strs, &e->mem);
  imc_wbuf_init(&lk->tmp, &e->mem);
  lk->user_off = imc_malloc(&e->mem, (n ? n : 1) * sizeof(size_t));
  if (lk->user_off == NULL) {
    lookup_free(e, lk);
    return IMC_ERR_NOMEM;
  }
  lk->done = done;
  lk->done_ud = done_ud;
  lk->deadline = etcd_now_ms() + e->timeout_ms;
  lk->n_users = n;
  for (size_t i = 0; i < n; i++) {
    size_t len = strlen(user_ids[i]);
    if (!imc_id_valid(user_ids[i], len)) {
      lk->user_off[i] = SIZE_MAX;
      continue;
    }
    lk->user_off[i] = lk->strs.len;
    imc_wbuf_append(&lk->strs, user_ids[i], len + 1);
    lk->pending++;
  }
  if (lk->strs.err != 0) {
    lookup_free(e, lk);
    return IMC_ERR_NOMEM;
  }
  if (e->rq_tail)
    e->rq_tail->next = lk;
  else
    e->rq = lk;
  e->rq_tail = lk;
  etcd_kick(e);
  return 0;
}

/* ------------------------------------------------------------------ */
/* Answers                                                              */
/* ------------------------------------------------------------------ */

/* Adds the entry of kv (if it parses) to user u of lk. */
static int add_kv(const imc_mem *mem, etcd_lookup *lk, size_t u,
                  const imc_json_value *kv) {
  imc_json_value k, v;
  const char *key, *val;
  size_t kl, vl;
  if (kv->type != IMC_JSON_OBJECT || imc_json_member(kv, "key", &k) != 0 ||
      imc_json_member(kv, "value", &v) != 0)
    return IMC_ERR_PROTO;
  int rv = ej_bytes(&k, &lk->tmp, &key, &kl);
  if (rv < 0)
    return rv;
  /* key: prefix "users/" user "/" device; the range asked for no other. */
  const char *dev = strrchr(key, '/');
  if (dev == NULL || memchr(key, '\0', kl) != NULL ||
      !imc_id_valid(dev + 1, kl - (size_t)(dev + 1 - key)))
    return 0;
  size_t dev_off = lk->strs.len;
  imc_wbuf_append(&lk->strs, dev + 1, kl - (size_t)(dev + 1 - key) + 1);
  rv = ej_bytes(&v, &lk->tmp, &val, &vl);
  if (rv < 0)
    return rv;
  /* value: node "/" conn_id */
  const char *slash = memchr(val, '/', vl);
  if (slash == NULL || !imc_id_valid(val, (size_t)(slash - val)))
    return 0;
  uint64_t conn = 0;
  const char *c = slash + 1, *end = val + vl;
  if (c == end)
    return 0;
  for (; c < end; c++) {
    if (*c < '0' || *c > '9' || conn > (UINT64_MAX - 9) / 10)
      return 0;
    conn = conn * 10 + (uint64_t)(*c - '0');
  }
  size_t node_off = lk->strs.len;
  imc_wbuf_append(&lk->strs, val, (size_t)(slash - val));
  imc_wbuf_append(&lk->strs, "", 1);
  if (lk->strs.err != 0)
    return IMC_ERR_NOMEM;
  if (lk->n_ents == lk->cap_ents) {
    size_t cap = lk->cap_ents ? 2 * lk->cap_ents : 8;
    lk_ent *p = imc_realloc(mem, lk->ents, cap * sizeof(*p));
    if (p == NULL)
      return IMC_ERR_NOMEM;
    lk->ents = p;
    lk->cap_ents = cap;
  }
  lk->ents[lk->n_ents++] = (lk_ent){u, dev_off, node_off, conn};
  return 0;
}

/* The kvs of one range answer (item's user). */
static int add_range(const imc_mem *mem, const rtxn_item *it,
                     const imc_json_value *resp) {
  imc_json_value rr, kvs, kv;
  if (resp->type != IMC_JSON_OBJECT ||
      imc_json_member(resp, "response_range", &rr) != 0 ||
      rr.type != IMC_JSON_OBJECT)
    return IMC_ERR_PROTO;
  int rv = imc_json_member(&rr, "kvs", &kvs);
  if (rv == IMC_ERR_NOT_FOUND)
    return 0; /* no entries */
  if (rv < 0 || kvs.type != IMC_JSON_ARRAY)
    return IMC_ERR_PROTO;
  size_t pos = 0;
  while ((rv = imc_json_array_next(&kvs, &pos, &kv)) == 1)
    if ((rv = add_kv(mem, it->lk, it->user, &kv)) < 0)
      return rv;
  return rv < 0 ? IMC_ERR_PROTO : 0;
}

/* The answer to t (status, root as for an etcd_req_fn); frees t. */
static void answer(imc_etcd *e, rtxn *t, int status,
                   const imc_json_value *root) {
  imc_json_value resps, resp;
  size_t pos = 0;
  if (status == 0 && (imc_json_member(root, "responses", &resps) != 0 ||
                      resps.type != IMC_JSON_ARRAY))
    status = IMC_ERR_PROTO;
  for (size_t i = 0; i < t->n; i++) {
    const rtxn_item *it = &t->items[i];
    int st = status;
    if (st == 0 && it->lk->status == 0)
      st = imc_json_array_next(&resps, &pos, &resp) == 1
               ? add_range(&e->mem, it, &resp)
               : IMC_ERR_PROTO;
    if (st < 0 && it->lk->status == 0)
      it->lk->status = st;
    /* The last answer of a lookup no longer queued completes it; it is
     * not in the rest of this transaction. */
    if (--it->lk->pending == 0 && it->lk->next_user == it->lk->n_users)
      finish(e, it->lk);
  }
  imc_free(&e->mem, t);
}

static void on_txn(imc_etcd *e, etcd_req *r, int status,
                   const imc_json_value *root) {
  e->r_flight--;
  answer(e, r->owner, status, root);
  etcd_reads_flush(e);
}

/* ------------------------------------------------------------------ */
/* Sending                                                              */
/* ------------------------------------------------------------------ */

static void pop(imc_etcd *e) {
  e->rq = e->rq->next;
  if (e->rq == NULL)
    e->rq_tail = NULL;
}

/* Fills t with ranges from the queue's head (at most max). */
static void take(imc_etcd *e, rtxn *t, size_t max, int64_t now) {
  while (t->n < max && e->rq != NULL) {
    etcd_lookup *lk = e->rq;
    if (lk->status == 0 && (e->closing || now >= lk->deadline))
      lk->status = e->closing ? IMC_ERR_CLOSED : IMC_ERR_UNAVAILABLE;
    for (; lk->next_user < lk->n_users && t->n < max; lk->next_user++) {
      if (lk->user_off[lk->next_user] == SIZE_MAX)
        continue;
      if (lk->status != 0) {
        lk->pending--; /* it failed: no need to ask */
        continue;
      }
      t->items[t->n++] = (rtxn_item){lk, lk->next_user};
    }
    if (lk->next_user < lk->n_users)
      return;
    pop(e);
    if (lk->pending == 0)
      finish(e, lk);
  }
}

static void send_txn(imc_etcd *e, rtxn *t) {
  etcd_req *r =
      etcd_req_new(e, "/v3/kv/txn", on_txn, t, t->items[0].lk->deadline);
  int rv = IMC_ERR_NOMEM;
  if (r != NULL) {
    char key[ETCD_KEY_MAX], end[ETCD_KEY_MAX];
    imc_jsonw w;
    imc_jsonw_init(&w, &r->body);
    imc_jsonw_object_begin(&w);
    imc_jsonw_key(&w, "success");
    imc_jsonw_array_begin(&w);
    for (size_t i = 0; i < t->n; i++) {
      const etcd_lookup *lk = t->items[i].lk;
      size_t kl = ej_user_key(
          e, key, lk->strs.p + lk->user_off[t->items[i].user], NULL);
      size_t el;
      ej_prefix_end(key, kl, end, &el);
      imc_jsonw_object_begin(&w);
      imc_jsonw_key(&w, "request_range");
      imc_jsonw_object_begin(&w);
      ej_kv_bytes(&w, "key", key, kl);
      ej_kv_bytes(&w, "range_end", end, el);
      imc_jsonw_object_end(&w);
      imc_jsonw_object_end(&w);
    }
    imc_jsonw_array_end(&w);
    imc_jsonw_object_end(&w);
    rv = etcd_req_start(e, r);
  }
  if (rv < 0) {
    if (r != NULL)
      etcd_req_free(e, r);
    answer(e, t, rv, NULL);
    return;
  }
  e->r_flight++;
}

/* Fails every lookup of the queue with status (those with ranges in
 * flight complete with their answers). */
static void drain(imc_etcd *e, int status) {
  while (e->rq != NULL) {
    etcd_lookup *lk = e->rq;
    pop(e);
    if (lk->status == 0)
      lk->status = status;
    for (; lk->next_user < lk->n_users; lk->next_user++)
      if (lk->user_off[lk->next_user] != SIZE_MAX)
        lk->pending--;
    if (lk->pending == 0)
      finish(e, lk);
  }
}

void etcd_reads_flush(imc_etcd *e) {
  while (e->rq != NULL && e->r_flight < ETCD_READS_IN_FLIGHT) {
    rtxn *t = imc_malloc(&e->mem, sizeof(*t) + e->max_ops * sizeof(rtxn_item));
    if (t == NULL) {
      drain(e, IMC_ERR_NOMEM);
      return;
    }
    t->n = 0;
    take(e, t, e->max_ops, etcd_now_ms());
    if (t->n == 0) {
      imc_free(&e->mem, t);
      continue;
    }
    send_txn(e, t);
  }
}

void etcd_reads_fini(imc_etcd *e) {
  drain(e, IMC_ERR_CLOSED); /* no transaction is in flight any more */
}
