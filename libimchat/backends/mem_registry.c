/*
 * In-memory registry (imc_memreg): the embedded implementation of
 * imc_registry_vtbl, with etcd v3's model.
 *
 *  - Leases: a short list (one per gateway node), each with a TTL, a
 *    deadline on the monotonic clock and the entries attached to it.
 *    Every call first ends the leases whose deadline passed, removing
 *    their entries (a DELETE each), so nothing expired is ever reported
 *    and memory is reclaimed without a timer.
 *  - Entries: a chained hash table maps user_id to the user's devices;
 *    each device entry is also on its lease's list, so a lease ends in
 *    O(its entries).
 *  - register_conn replaces any entry of the same (user, device): PUT.
 *    unregister removes the entry only if it still belongs to
 *    (node_id, conn_id), so the cleanup of a device's old connection
 *    cannot remove the entry of its new one.
 *  - Watches: events are delivered in the order the changes happened. A
 *    change made from inside a callback is queued and delivered after the
 *    current event has reached every watch; if the queue cannot take it
 *    (no memory, or QUEUE_MAX events waiting) it is dropped and every
 *    watch gets IMC_WATCH_RESYNC once the queue is drained, as etcd does
 *    after a compaction. A watch sees only changes made after it was
 *    created.
 *
 * Every operation completes before it returns. Callbacks may call back
 * into the registry: entries are unlinked before events fire and freed
 * after, and lookups hand out a snapshot.
 */
#include "util/alloc.h"
#include "util/hash.h"

#include <imchat/memreg.h>

#include <stddef.h>
#include <string.h>

#define INITIAL_BUCKETS 64
#define LOOKUP_STACK 2048 /* bytes of lookup results on the stack */
#define QUEUE_MAX 65536   /* events waiting behind the one being delivered */
#define KEY_MAX (2 * IMC_ID_MAX + 2) /* user '/' device NUL */
#define ENTRY_MIN (offsetof(imc_reg_entry, conn_id) + sizeof(uint64_t))

typedef struct user user;
typedef struct lease lease;

/* One device entry; allocated in one block with its strings. */
typedef struct dev {
  struct dev *next;          /* the user's devices */
  struct dev *lprev, *lnext; /* the lease's entries */
  user *u;
  lease *l;
  const char *device_id; /* inside key, after "user/" */
  const char *node_id;   /* after key */
  uint64_t conn_id;
  size_t key_len, node_len;
  char key[]; /* "user/device\0node\0" */
} dev;

struct user {
  user *next;
  dev *devs;
  uint64_t hash;
  char user_id[];
};

struct lease {
  lease *next;
  uint64_t id;
  int64_t ttl_ms;
  int64_t expires_at; /* monotonic ms */
  dev *devs;
  char node_id[];
};

typedef struct watch {
  uint64_t id;
  char *prefix;
  size_t prefix_len;
  imc_watch_cb cb; /* NULL: cancelled while events were being delivered */
  void *cb_ud;
} watch;

/* An event waiting behind the one being delivered. */
typedef struct event {
  struct event *next;
  imc_watch_event_type type;
  size_t value_len;
  char key[]; /* key NUL value */
} event;

struct imc_memreg {
  void *user_data;
  imc_mem mem;
  imc_clock clock;
  user **buckets;
  size_t nbuckets; /* power of two */
  size_t nusers;
  lease *leases;
  uint64_t last_lease, last_watch;
  watch *watches;
  size_t nwatches, watches_cap;
  event *q_head, *q_tail;
  size_t q_len;
  int firing;    /* events are being delivered */
  int lost;      /* an event was dropped: RESYNC after the queue */
  int cancelled; /* a watch was cancelled while firing */
};

/* ------------------------------------------------------------------ */
/* Watch events                                                         */
/* ------------------------------------------------------------------ */

static void deliver(imc_memreg *reg, imc_watch_event_type type, const char *key,
                    const char *value, size_t value_len) {
  /* Watches added by a callback see only later events. */
  size_t n = reg->nwatches;
  for (size_t i = 0; i < n; i++) {
    watch w = reg->watches[i]; /* a callback may grow the array */
    if (w.cb == NULL)
      continue;
    if (type == IMC_WATCH_RESYNC || strncmp(key, w.prefix, w.prefix_len) == 0)
      w.cb(w.cb_ud, type, key, (const uint8_t *)value, value_len);
  }
}

static void enqueue(imc_memreg *reg, imc_watch_event_type type, const char *key,
                    const char *value, size_t value_len) {
  if (type == IMC_WATCH_RESYNC) {
    reg->lost = 1;
    return;
  }
  size_t kl = strlen(key);
  event *e = reg->q_len < QUEUE_MAX
                 ? imc_malloc(&reg->mem, sizeof(*e) + kl + 1 + value_len)
                 : NULL;
  if (e == NULL) {
    reg->lost = 1;
    return;
  }
  e->next = NULL;
  e->type = type;
  e->value_len = value_len;
  memcpy(e->key, key, kl + 1);
  if (value_len)
    memcpy(e->key + kl + 1, value, value_len);
  if (reg->q_tail)
    reg->q_tail->next = e;
  else
    reg->q_head = e;
  reg->q_tail = e;
  reg->q_len++;
}

/* Drops the watches cancelled during delivery. */
static void watches_compact(imc_memreg *reg) {
  size_t j = 0;
  for (size_t i = 0; i < reg->nwatches; i++) {
    if (reg->watches[i].cb == NULL)
      imc_free(&reg->mem, reg->watches[i].prefix);
    else
      reg->watches[j++] = reg->watches[i];
  }
  reg->nwatches = j;
  reg->cancelled = 0;
}

static void fire(imc_memreg *reg, imc_watch_event_type type, const char *key,
                 const char *value, size_t value_len) {
  if (reg->firing) {
    enqueue(reg, type, key, value, value_len);
    return;
  }
  reg->firing = 1;
  deliver(reg, type, key, value, value_len);
  for (;;) {
    event *e = reg->q_head;
    if (e != NULL) {
      reg->q_head = e->next;
      if (reg->q_head == NULL)
        reg->q_tail = NULL;
      reg->q_len--;
      deliver(reg, e->type, e->key, e->key + strlen(e->key) + 1, e->value_len);
      imc_free(&reg->mem, e);
    } else if (reg->lost) {
      reg->lost = 0;
      deliver(reg, IMC_WATCH_RESYNC, NULL, NULL, 0);
    } else {
      break;
    }
  }
  reg->firing = 0;
  if (reg->cancelled)
    watches_compact(reg);
}

/* ------------------------------------------------------------------ */
/* Users, devices and leases                                            */
/* ------------------------------------------------------------------ */

static user **bucket_of(imc_memreg *reg, uint64_t h) {
  return &reg->buckets[h & (reg->nbuckets - 1)];
}

static user *user_find(imc_memreg *reg, const char *user_id) {
  uint64_t h = imc_hash_str(user_id);
  for (user *u = *bucket_of(reg, h); u; u = u->next)
    if (u->hash == h && strcmp(u->user_id, user_id) == 0)
      return u;
  return NULL;
}

static void user_unlink_free(imc_memreg *reg, user *u) {
  for (user **pp = bucket_of(reg, u->hash); *pp; pp = &(*pp)->next) {
    if (*pp == u) {
      *pp = u->next;
      break;
    }
  }
  reg->nusers--;
  imc_free(&reg->mem, u);
}

/* Doubles the table; on allocation failure the old table just stays. */
static void maybe_grow(imc_memreg *reg) {
  if (reg->nusers < reg->nbuckets)
    return;
  size_t n = reg->nbuckets * 2;
  user **nb = imc_calloc(&reg->mem, n, sizeof(*nb));
  if (nb == NULL)
    return;
  for (size_t i = 0; i < reg->nbuckets; i++) {
    user *u = reg->buckets[i];
    while (u) {
      user *next = u->next;
      u->next = nb[u->hash & (n - 1)];
      nb[u->hash & (n - 1)] = u;
      u = next;
    }
  }
  imc_free(&reg->mem, reg->buckets);
  reg->buckets = nb;
  reg->nbuckets = n;
}

static dev **dev_find(user *u, const char *device_id) {
  dev **pp = &u->devs;
  for (; *pp; pp = &(*pp)->next)
    if (strcmp((*pp)->device_id, device_id) == 0)
      return pp;
  return pp;
}

static void lease_unlink_dev(dev *d) {
  if (d->lprev)
    d->lprev->lnext = d->lnext;
  else
    d->l->devs = d->lnext;
  if (d->lnext)
    d->lnext->lprev = d->lprev;
  d->lprev = d->lnext = NULL;
}

/* Unlinks d from its user (freed if it has no device left). */
static void user_unlink_dev(imc_memreg *reg, dev *d) {
  user *u = d->u;
  dev **pp = dev_find(u, d->device_id);
  *pp = d->next;
  d->next = NULL;
  if (u->devs == NULL)
    user_unlink_free(reg, u);
}

/* Removes d from the table onto *dead, for a DELETE and then free. */
static void dev_remove(imc_memreg *reg, dev *d, dev **dead) {
  lease_unlink_dev(d);
  user_unlink_dev(reg, d);
  d->next = *dead;
  *dead = d;
}

/* Ends l: its entries go onto *dead, l is freed. */
static void lease_end(imc_memreg *reg, lease *l, dev **dead) {
  while (l->devs)
    dev_remove(reg, l->devs, dead);
  for (lease **pp = &reg->leases; *pp; pp = &(*pp)->next) {
    if (*pp == l) {
      *pp = l->next;
      break;
    }
  }
  imc_free(&reg->mem, l);
}

/* Ends every lease whose deadline passed. */
static void expire(imc_memreg *reg, int64_t now, dev **dead) {
  lease *l = reg->leases;
  while (l) {
    lease *next = l->next;
    if (l->expires_at <= now)
      lease_end(reg, l, dead);
    l = next;
  }
}

static lease *lease_find(imc_memreg *reg, uint64_t id) {
  for (lease *l = reg->leases; l; l = l->next)
    if (l->id == id)
      return l;
  return NULL;
}

/* DELETE events for the unlinked entries on dead, then frees them. */
static void bury(imc_memreg *reg, dev *dead) {
  while (dead) {
    dev *next = dead->next;
    fire(reg, IMC_WATCH_DELETE, dead->key, NULL, 0);
    imc_free(&reg->mem, dead);
    dead = next;
  }
}

static int id_ok(const char *s) {
  return s != NULL && imc_id_valid(s, strlen(s));
}

static int entry_valid(const imc_reg_entry *e) {
  return e != NULL && e->struct_size >= ENTRY_MIN && id_ok(e->user_id) &&
         id_ok(e->device_id) && id_ok(e->node_id);
}

/* ------------------------------------------------------------------ */
/* The vtable                                                           */
/* ------------------------------------------------------------------ */

static int reg_lease_grant(void *ud, const char *node_id, uint32_t ttl_s,
                           imc_lease_cb done, void *done_ud) {
  imc_memreg *reg = ud;
  if (reg == NULL || !id_ok(node_id) || ttl_s == 0 || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  size_t nl = strlen(node_id);
  lease *l = imc_malloc(&reg->mem, sizeof(*l) + nl + 1);
  if (l == NULL)
    return IMC_ERR_NOMEM;
  int64_t now = imc_clock_now(&reg->clock);
  dev *dead = NULL;
  expire(reg, now, &dead);
  memcpy(l->node_id, node_id, nl + 1);
  l->id = ++reg->last_lease;
  l->ttl_ms = (int64_t)ttl_s * 1000;
  l->expires_at = now + l->ttl_ms;
  l->devs = NULL;
  l->next = reg->leases;
  reg->leases = l;
  uint64_t id = l->id;
  bury(reg, dead);
  done(done_ud, 0, id);
  return 0;
}

static int reg_lease_keepalive(void *ud, uint64_t lease_id, imc_done_cb done,
                               void *done_ud) {
  imc_memreg *reg = ud;
  if (reg == NULL || lease_id == 0 || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  int64_t now = imc_clock_now(&reg->clock);
  dev *dead = NULL;
  expire(reg, now, &dead);
  lease *l = lease_find(reg, lease_id);
  if (l)
    l->expires_at = now + l->ttl_ms;
  bury(reg, dead);
  done(done_ud, l ? 0 : IMC_ERR_NOT_FOUND);
  return 0;
}

static int reg_lease_revoke(void *ud, uint64_t lease_id, imc_done_cb done,
                            void *done_ud) {
  imc_memreg *reg = ud;
  if (reg == NULL || lease_id == 0 || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  dev *dead = NULL;
  expire(reg, imc_clock_now(&reg->clock), &dead);
  lease *l = lease_find(reg, lease_id);
  int status = l ? 0 : IMC_ERR_NOT_FOUND;
  if (l)
    lease_end(reg, l, &dead);
  bury(reg, dead);
  done(done_ud, status);
  return 0;
}

static int reg_register(void *ud, uint64_t lease_id, const imc_reg_entry *e,
                        imc_done_cb done, void *done_ud) {
  imc_memreg *reg = ud;
  if (reg == NULL || lease_id == 0 || !entry_valid(e) || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;

  dev *dead = NULL;
  expire(reg, imc_clock_now(&reg->clock), &dead);
  lease *l = lease_find(reg, lease_id);
  if (l == NULL) {
    bury(reg, dead);
    done(done_ud, IMC_ERR_NOT_FOUND);
    return 0;
  }

  size_t ul = strlen(e->user_id), dl = strlen(e->device_id);
  size_t kl = ul + 1 + dl, nl = strlen(e->node_id);
  dev *d = imc_malloc(&reg->mem, sizeof(*d) + kl + 1 + nl + 1);
  user *u = user_find(reg, e->user_id);
  user *nu = NULL;
  if (d != NULL && u == NULL)
    nu = u = imc_malloc(&reg->mem, sizeof(*u) + ul + 1);
  if (d == NULL || u == NULL) {
    imc_free(&reg->mem, d);
    bury(reg, dead);
    return IMC_ERR_NOMEM;
  }
  if (nu != NULL) {
    memcpy(nu->user_id, e->user_id, ul + 1);
    nu->hash = imc_hash_str(e->user_id);
    nu->devs = NULL;
    user **b = bucket_of(reg, nu->hash);
    nu->next = *b;
    *b = nu;
    reg->nusers++;
  }
  memcpy(d->key, e->user_id, ul);
  d->key[ul] = '/';
  memcpy(d->key + ul + 1, e->device_id, dl + 1);
  memcpy(d->key + kl + 1, e->node_id, nl + 1);
  d->device_id = d->key + ul + 1;
  d->node_id = d->key + kl + 1;
  d->key_len = kl;
  d->node_len = nl;
  d->conn_id = e->conn_id;
  d->u = u;
  d->l = l;

  /* Replace in place: a PUT, no DELETE. */
  dev **pp = dev_find(u, e->device_id);
  dev *old = *pp;
  d->next = old ? old->next : NULL;
  *pp = d;
  if (old) {
    lease_unlink_dev(old);
    imc_free(&reg->mem, old);
  }
  d->lprev = NULL;
  d->lnext = l->devs;
  if (l->devs)
    l->devs->lprev = d;
  l->devs = d;
  maybe_grow(reg);

  /* The event's strings from the stack: a callback may unregister d. */
  char ev[KEY_MAX + IMC_ID_MAX + 1];
  memcpy(ev, d->key, kl + 1 + nl + 1);
  bury(reg, dead);
  fire(reg, IMC_WATCH_PUT, ev, ev + kl + 1, nl);
  done(done_ud, 0);
  return 0;
}

static int reg_unregister(void *ud, const imc_reg_entry *e, imc_done_cb done,
                          void *done_ud) {
  imc_memreg *reg = ud;
  if (reg == NULL || !entry_valid(e) || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;

  dev *dead = NULL;
  expire(reg, imc_clock_now(&reg->clock), &dead);
  user *u = user_find(reg, e->user_id);
  dev *d = u ? *dev_find(u, e->device_id) : NULL;
  if (d && d->conn_id == e->conn_id && strcmp(d->node_id, e->node_id) == 0)
    dev_remove(reg, d, &dead);
  bury(reg, dead);
  done(done_ud, 0); /* idempotent: the entry is gone either way */
  return 0;
}

static int reg_lookup_many(void *ud, const char *const *user_ids, size_t n,
                           imc_lookup_many_cb done, void *done_ud) {
  imc_memreg *reg = ud;
  if (reg == NULL || (user_ids == NULL && n > 0) || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  for (size_t i = 0; i < n; i++)
    if (user_ids[i] == NULL)
      return IMC_ERR_INVALID_ARGUMENT;

  dev *dead = NULL;
  expire(reg, imc_clock_now(&reg->clock), &dead);

  /*
   * The completion gets a snapshot (pointers, entries, offsets and
   * strings in one block), so it may change the registry while it walks.
   */
  size_t total = 0, strs = 0;
  for (size_t i = 0; i < n; i++) {
    user *u = user_find(reg, user_ids[i]);
    for (dev *d = u ? u->devs : NULL; d; d = d->next) {
      total++;
      strs += d->key_len + 1 + d->node_len + 1;
    }
  }
  union {
    imc_reg_entry align;
    char bytes[LOOKUP_STACK];
  } stack;
  size_t need = total * (sizeof(imc_reg_entry *) + sizeof(imc_reg_entry)) +
                (n + 1) * sizeof(size_t) + strs;
  char *block = stack.bytes;
  if (need > sizeof(stack)) {
    block = imc_malloc(&reg->mem, need);
    if (block == NULL) {
      bury(reg, dead);
      return IMC_ERR_NOMEM;
    }
  }
  const imc_reg_entry **ptrs = (const imc_reg_entry **)(void *)block;
  imc_reg_entry *ents = (imc_reg_entry *)(void *)(ptrs + total);
  size_t *offsets = (size_t *)(void *)(ents + total);
  char *s = (char *)(offsets + n + 1);
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    offsets[i] = k;
    user *u = user_find(reg, user_ids[i]);
    for (dev *d = u ? u->devs : NULL; d; d = d->next, k++) {
      size_t ul = (size_t)(d->device_id - d->key) - 1;
      memcpy(s, d->key, d->key_len + 1 + d->node_len + 1);
      s[ul] = '\0'; /* split "user/device" */
      ents[k].struct_size = sizeof(imc_reg_entry);
      ents[k].user_id = s;
      ents[k].device_id = s + ul + 1;
      ents[k].node_id = s + d->key_len + 1;
      ents[k].conn_id = d->conn_id;
      ptrs[k] = &ents[k];
      s += d->key_len + 1 + d->node_len + 1;
    }
  }
  offsets[n] = k;

  bury(reg, dead);
  done(done_ud, 0, ptrs, offsets, n);
  if (block != stack.bytes)
    imc_free(&reg->mem, block);
  return 0;
}

static int reg_watch(void *ud, const char *prefix, imc_watch_cb cb, void *cb_ud,
                     uint64_t *watch_id) {
  imc_memreg *reg = ud;
  if (reg == NULL || cb == NULL || watch_id == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (prefix == NULL)
    prefix = "";
  if (reg->nwatches == reg->watches_cap) {
    size_t cap = reg->watches_cap ? reg->watches_cap * 2 : 4;
    watch *w = imc_realloc(&reg->mem, reg->watches, cap * sizeof(*w));
    if (w == NULL)
      return IMC_ERR_NOMEM;
    reg->watches = w;
    reg->watches_cap = cap;
  }
  char *p = imc_strdup(&reg->mem, prefix);
  if (p == NULL)
    return IMC_ERR_NOMEM;
  watch *w = &reg->watches[reg->nwatches++];
  w->id = ++reg->last_watch;
  w->prefix = p;
  w->prefix_len = strlen(p);
  w->cb = cb;
  w->cb_ud = cb_ud;
  *watch_id = w->id;
  return 0;
}

static int reg_watch_cancel(void *ud, uint64_t watch_id) {
  imc_memreg *reg = ud;
  if (reg == NULL)
    return IMC_ERR_NOT_FOUND;
  for (size_t i = 0; i < reg->nwatches; i++) {
    watch *w = &reg->watches[i];
    if (w->id != watch_id || w->cb == NULL)
      continue;
    w->cb = NULL;
    if (reg->firing)
      reg->cancelled = 1; /* deliver() holds indexes: compact later */
    else
      watches_compact(reg);
    return 0;
  }
  return IMC_ERR_NOT_FOUND;
}

static const imc_registry_vtbl memreg_vtbl = {
    sizeof(imc_registry_vtbl), reg_lease_grant, reg_lease_keepalive,
    reg_lease_revoke,          reg_register,    reg_unregister,
    reg_lookup_many,           reg_watch,       reg_watch_cancel,
};

const imc_registry_vtbl *imc_memreg_vtbl(void) {
  return &memreg_vtbl;
}

/* ------------------------------------------------------------------ */
/* Object                                                               */
/* ------------------------------------------------------------------ */

int imc_memreg_new(imc_memreg **out, const imc_clock *clock,
                   const imc_mem *mem) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  *out = NULL;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_memreg *reg = imc_calloc(mem, 1, sizeof(*reg));
  if (reg == NULL)
    return IMC_ERR_NOMEM;
  reg->mem = *mem;
  reg->clock = clock ? *clock : *imc_clock_default();
  reg->nbuckets = INITIAL_BUCKETS;
  reg->buckets = imc_calloc(mem, reg->nbuckets, sizeof(*reg->buckets));
  if (reg->buckets == NULL) {
    imc_free(mem, reg);
    return IMC_ERR_NOMEM;
  }
  *out = reg;
  return 0;
}

/* Frees every lease, entry and user, with no events. */
static void clear(imc_memreg *reg) {
  while (reg->leases) {
    lease *l = reg->leases;
    reg->leases = l->next;
    dev *d = l->devs;
    while (d) {
      dev *next = d->lnext;
      imc_free(&reg->mem, d);
      d = next;
    }
    imc_free(&reg->mem, l);
  }
  for (size_t i = 0; i < reg->nbuckets; i++) {
    user *u = reg->buckets[i];
    while (u) {
      user *next = u->next;
      imc_free(&reg->mem, u);
      u = next;
    }
    reg->buckets[i] = NULL;
  }
  reg->nusers = 0;
}

void imc_memreg_del(imc_memreg *reg) {
  if (reg == NULL)
    return;
  clear(reg);
  while (reg->q_head) {
    event *e = reg->q_head;
    reg->q_head = e->next;
    imc_free(&reg->mem, e);
  }
  for (size_t i = 0; i < reg->nwatches; i++)
    imc_free(&reg->mem, reg->watches[i].prefix);
  imc_free(&reg->mem, reg->watches);
  imc_free(&reg->mem, reg->buckets);
  imc_free(&reg->mem, reg);
}

void imc_memreg_reset(imc_memreg *reg) {
  if (reg == NULL)
    return;
  clear(reg);
  fire(reg, IMC_WATCH_RESYNC, NULL, NULL, 0);
}

size_t imc_memreg_size(imc_memreg *reg) {
  if (reg == NULL)
    return 0;
  int64_t now = imc_clock_now(&reg->clock);
  size_t n = 0;
  for (lease *l = reg->leases; l; l = l->next)
    for (dev *d = l->devs; d && l->expires_at > now; d = d->lnext)
      n++;
  return n;
}

size_t imc_memreg_lease_count(imc_memreg *reg) {
  if (reg == NULL)
    return 0;
  int64_t now = imc_clock_now(&reg->clock);
  size_t n = 0;
  for (lease *l = reg->leases; l; l = l->next)
    n += l->expires_at > now;
  return n;
}

void imc_memreg_set_user_data(imc_memreg *reg, void *ud) {
  reg->user_data = ud;
}

void *imc_memreg_get_user_data(const imc_memreg *reg) {
  return reg->user_data;
}
