/*
 * In-memory registry (imc_memreg): the embedded implementation of
 * imc_registry_vtbl. A chained hash table maps user_id to the user's
 * devices; each device entry holds node_id, conn_id and a lease deadline
 * on the monotonic clock.
 *
 * Semantics, matching what the etcd backend does with leases:
 *  - register_conn replaces any entry of the same (user, device): PUT.
 *  - renew extends an entry still owned by e->conn_id; otherwise the
 *    completion gets IMC_ERR_NOT_FOUND (the lease is gone: re-register).
 *  - unregister removes the entry only if it still belongs to e->conn_id,
 *    so the cleanup of a device's old connection cannot remove the entry of
 *    its new one; if nothing was removed the completion gets
 *    IMC_ERR_NOT_FOUND.
 *  - Expired entries are never reported. They are pruned lazily: the user
 *    being operated on, plus one bucket per mutating call, so memory of
 *    abandoned leases is reclaimed without a timer. Each pruned entry is a
 *    DELETE event, like a lease expiry in etcd.
 * Watch events carry key "<user_id>/<device_id>" and, for PUT, the
 * node_id as value.
 *
 * Every operation completes before it returns. Watch callbacks and
 * completions may call back into the registry: events are fired only after
 * the table is consistent, with keys copied to the stack and pruned entries
 * unlinked (and freed only after their events), so no callback can pull
 * memory from under another.
 */
#include "util/alloc.h"
#include "util/hash.h"

#include <imchat/memreg.h>

#include <string.h>

#define INITIAL_BUCKETS 64
#define KEY_MAX (2 * IMC_ID_MAX + 2) /* user '/' device NUL */
#define LOOKUP_STACK 1024            /* bytes of lookup results on stack */

/* One device entry; allocated in one block with its strings. */
typedef struct dev {
  struct dev *next;
  const char *device_id; /* inside key, after "user/" */
  const char *node_id;   /* after key */
  uint64_t conn_id;
  int64_t expires_at; /* monotonic ms */
  size_t node_len;
  char key[]; /* "user/device\0node\0" */
} dev;

typedef struct user {
  struct user *next;
  dev *devs;
  uint64_t hash;
  char user_id[];
} user;

typedef struct watch {
  char *prefix;
  size_t prefix_len;
  imc_watch_cb cb;
  void *cb_ud;
} watch;

struct imc_memreg {
  void *user_data;
  imc_mem mem;
  imc_clock clock;
  user **buckets;
  size_t nbuckets; /* power of two */
  size_t nusers;
  size_t sweep; /* next bucket for the incremental sweep */
  watch *watches;
  size_t nwatches, watches_cap;
};

static user **bucket_of(imc_memreg *reg, uint64_t h) {
  return &reg->buckets[h & (reg->nbuckets - 1)];
}

static user *user_find(imc_memreg *reg, const char *user_id, uint64_t h) {
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

/* Moves u's expired devices onto *dead; frees u if it has none left. */
static void user_prune(imc_memreg *reg, user *u, int64_t now, dev **dead) {
  dev **pp = &u->devs;
  while (*pp) {
    dev *d = *pp;
    if (d->expires_at <= now) {
      *pp = d->next;
      d->next = *dead;
      *dead = d;
    } else {
      pp = &d->next;
    }
  }
  if (u->devs == NULL)
    user_unlink_free(reg, u);
}

/* Prunes one bucket, so abandoned leases do not accumulate. */
static void sweep_step(imc_memreg *reg, int64_t now, dev **dead) {
  size_t i = reg->sweep++ & (reg->nbuckets - 1);
  user *u = reg->buckets[i];
  while (u) {
    user *next = u->next;
    user_prune(reg, u, now, dead);
    u = next;
  }
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

static void fire(imc_memreg *reg, imc_watch_event_type type, const char *key,
                 const char *value, size_t value_len) {
  /* Index loop: a callback may add watches (and grow the array). */
  for (size_t i = 0; i < reg->nwatches; i++) {
    const watch *w = &reg->watches[i];
    if (strncmp(key, w->prefix, w->prefix_len) == 0)
      w->cb(w->cb_ud, type, key, (const uint8_t *)value, value_len);
  }
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

static int entry_valid(const imc_reg_entry *e) {
  return e && e->user_id && e->device_id &&
         imc_id_valid(e->user_id, strlen(e->user_id)) &&
         imc_id_valid(e->device_id, strlen(e->device_id));
}

static dev **dev_find(user *u, const char *device_id) {
  dev **pp = &u->devs;
  for (; *pp; pp = &(*pp)->next)
    if (strcmp((*pp)->device_id, device_id) == 0)
      return pp;
  return pp;
}

static void make_key(char *key, const char *user_id, const char *device_id) {
  size_t ul = strlen(user_id), dl = strlen(device_id);
  memcpy(key, user_id, ul);
  key[ul] = '/';
  memcpy(key + ul + 1, device_id, dl + 1);
}

static int64_t deadline(int64_t now, uint32_t ttl_s) {
  return now + (int64_t)ttl_s * 1000;
}

static int reg_register(void *ud, const imc_reg_entry *e, uint32_t ttl_s,
                        imc_done_cb done, void *done_ud) {
  imc_memreg *reg = ud;
  if (reg == NULL || !entry_valid(e) || e->node_id == NULL || ttl_s == 0 ||
      done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;

  int64_t now = imc_clock_now(&reg->clock);
  char key[KEY_MAX];
  make_key(key, e->user_id, e->device_id);
  size_t ul = strlen(e->user_id), kl = strlen(key);
  size_t nl = strlen(e->node_id);

  /* Allocate everything before changing anything: NOMEM leaves no trace. */
  dev *d = imc_malloc(&reg->mem, sizeof(*d) + kl + 1 + nl + 1);
  if (d == NULL)
    return IMC_ERR_NOMEM;
  memcpy(d->key, key, kl + 1);
  memcpy(d->key + kl + 1, e->node_id, nl + 1);
  d->device_id = d->key + ul + 1;
  d->node_id = d->key + kl + 1;
  d->node_len = nl;
  d->conn_id = e->conn_id;
  d->expires_at = deadline(now, ttl_s);

  dev *dead = NULL;
  sweep_step(reg, now, &dead);
  uint64_t h = imc_hash_str(e->user_id);
  user *u = user_find(reg, e->user_id, h);
  if (u) {
    user_prune(reg, u, now, &dead);
    u = user_find(reg, e->user_id, h); /* pruning may have freed it */
  }
  if (u == NULL) {
    u = imc_malloc(&reg->mem, sizeof(*u) + ul + 1);
    if (u == NULL) {
      imc_free(&reg->mem, d);
      bury(reg, dead);
      return IMC_ERR_NOMEM;
    }
    memcpy(u->user_id, e->user_id, ul + 1);
    u->hash = h;
    u->devs = NULL;
    user **b = bucket_of(reg, h);
    u->next = *b;
    *b = u;
    reg->nusers++;
  }

  dev **pp = dev_find(u, e->device_id);
  dev *old = *pp;
  d->next = old ? old->next : NULL;
  *pp = d;
  imc_free(&reg->mem, old);
  maybe_grow(reg);

  bury(reg, dead);
  fire(reg, IMC_WATCH_PUT, key, e->node_id, nl);
  done(done_ud, 0);
  return 0;
}

static int reg_renew(void *ud, const imc_reg_entry *e, uint32_t ttl_s,
                     imc_done_cb done, void *done_ud) {
  imc_memreg *reg = ud;
  if (reg == NULL || !entry_valid(e) || ttl_s == 0 || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;

  int64_t now = imc_clock_now(&reg->clock);
  dev *dead = NULL;
  int status = IMC_ERR_NOT_FOUND;
  sweep_step(reg, now, &dead);
  uint64_t h = imc_hash_str(e->user_id);
  user *u = user_find(reg, e->user_id, h);
  if (u) {
    user_prune(reg, u, now, &dead);
    u = user_find(reg, e->user_id, h);
  }
  if (u) {
    dev *d = *dev_find(u, e->device_id);
    if (d && d->conn_id == e->conn_id) {
      d->expires_at = deadline(now, ttl_s);
      status = 0;
    }
  }
  bury(reg, dead);
  done(done_ud, status);
  return 0;
}

static int reg_unregister(void *ud, const imc_reg_entry *e, imc_done_cb done,
                          void *done_ud) {
  imc_memreg *reg = ud;
  if (reg == NULL || !entry_valid(e) || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;

  int64_t now = imc_clock_now(&reg->clock);
  dev *dead = NULL, *gone = NULL;
  sweep_step(reg, now, &dead);
  uint64_t h = imc_hash_str(e->user_id);
  user *u = user_find(reg, e->user_id, h);
  if (u) {
    user_prune(reg, u, now, &dead);
    u = user_find(reg, e->user_id, h);
  }
  if (u) {
    dev **pp = dev_find(u, e->device_id);
    if (*pp && (*pp)->conn_id == e->conn_id) {
      gone = *pp;
      *pp = gone->next;
      gone->next = dead;
      dead = gone;
      if (u->devs == NULL)
        user_unlink_free(reg, u);
    }
  }
  bury(reg, dead);
  done(done_ud, 0); /* idempotent: the entry is gone either way */
  return 0;
}

static int reg_lookup(void *ud, const char *user_id, imc_lookup_cb done,
                      void *done_ud) {
  imc_memreg *reg = ud;
  if (reg == NULL || user_id == NULL || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;

  int64_t now = imc_clock_now(&reg->clock);
  dev *dead = NULL;
  uint64_t h = imc_hash_str(user_id);
  user *u = user_find(reg, user_id, h);
  if (u) {
    user_prune(reg, u, now, &dead);
    u = user_find(reg, user_id, h);
  }

  /*
   * The completion gets a snapshot (entries and strings in one block), so
   * it may register or unregister while it walks the entries.
   */
  size_t n = 0, strs = 0;
  for (dev *d = u ? u->devs : NULL; d; d = d->next) {
    n++;
    strs += strlen(d->key) + 1 + d->node_len + 1;
  }
  union {
    imc_reg_entry align;
    char bytes[LOOKUP_STACK];
  } stack;
  size_t need = n * sizeof(imc_reg_entry) + strs;
  char *block = stack.bytes;
  if (need > sizeof(stack)) {
    block = imc_malloc(&reg->mem, need);
    if (block == NULL) {
      bury(reg, dead);
      return IMC_ERR_NOMEM;
    }
  }
  imc_reg_entry *ents = (imc_reg_entry *)(void *)block;
  char *s = block + n * sizeof(imc_reg_entry);
  size_t i = 0;
  for (dev *d = u ? u->devs : NULL; d; d = d->next, i++) {
    size_t kl = strlen(d->key);
    memcpy(s, d->key, kl + 1 + d->node_len + 1);
    s[d->device_id - d->key - 1] = '\0'; /* split "user/device" */
    ents[i].user_id = s;
    ents[i].device_id = s + (d->device_id - d->key);
    ents[i].node_id = s + kl + 1;
    ents[i].conn_id = d->conn_id;
    s += kl + 1 + d->node_len + 1;
  }

  bury(reg, dead);
  done(done_ud, 0, n ? ents : NULL, n);
  if (block != stack.bytes)
    imc_free(&reg->mem, block);
  return 0;
}

static int reg_watch(void *ud, const char *prefix, imc_watch_cb cb,
                     void *cb_ud) {
  imc_memreg *reg = ud;
  if (reg == NULL || cb == NULL)
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
  w->prefix = p;
  w->prefix_len = strlen(p);
  w->cb = cb;
  w->cb_ud = cb_ud;
  return 0;
}

static const imc_registry_vtbl memreg_vtbl = {
    sizeof(imc_registry_vtbl),
    reg_register,
    reg_renew,
    reg_unregister,
    reg_lookup,
    reg_watch,
};

const imc_registry_vtbl *imc_memreg_vtbl(void) {
  return &memreg_vtbl;
}

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

void imc_memreg_del(imc_memreg *reg) {
  if (reg == NULL)
    return;
  for (size_t i = 0; i < reg->nbuckets; i++) {
    user *u = reg->buckets[i];
    while (u) {
      user *next = u->next;
      dev *d = u->devs;
      while (d) {
        dev *dn = d->next;
        imc_free(&reg->mem, d);
        d = dn;
      }
      imc_free(&reg->mem, u);
      u = next;
    }
  }
  for (size_t i = 0; i < reg->nwatches; i++)
    imc_free(&reg->mem, reg->watches[i].prefix);
  imc_free(&reg->mem, reg->watches);
  imc_free(&reg->mem, reg->buckets);
  imc_free(&reg->mem, reg);
}

size_t imc_memreg_size(imc_memreg *reg) {
  if (reg == NULL)
    return 0;
  int64_t now = imc_clock_now(&reg->clock);
  size_t n = 0;
  for (size_t i = 0; i < reg->nbuckets; i++)
    for (user *u = reg->buckets[i]; u; u = u->next)
      for (dev *d = u->devs; d; d = d->next)
        n += d->expires_at > now;
  return n;
}

void imc_memreg_set_user_data(imc_memreg *reg, void *ud) {
  reg->user_data = ud;
}

void *imc_memreg_get_user_data(const imc_memreg *reg) {
  return reg->user_data;
}
