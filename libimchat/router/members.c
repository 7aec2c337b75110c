#include "router/members.h"
#include "util/alloc.h"

#include <stdlib.h>
#include <string.h>

typedef struct waiter {
  struct waiter *next;
  imc_list_cb done;
  void *done_ud;
} waiter;

typedef struct entry {
  struct entry *next; /* bucket chain */
  imc_members *mc;    /* entries are freed with the cache, which outlives
                         every store call it made */
  char **items;       /* one allocation: pointers, then the strings */
  size_t n;
  int64_t expires;
  int loading; /* a store call is in flight */
  int stale;   /* invalidated while loading: already unlinked, and the
                  result is not kept */
  waiter *waiters;
  char group[];
} entry;

#define BUCKETS 256

struct imc_members {
  imc_mem mem;
  const imc_store_vtbl *store;
  void *store_ud;
  const imc_clock *clock;
  uint32_t ttl_ms;
  size_t pending;
  entry *buckets[BUCKETS];
};

static uint32_t hash(const char *s) {
  uint32_t h = 2166136261u;
  for (; *s; s++)
    h = (h ^ (uint8_t)*s) * 16777619u;
  return h % BUCKETS;
}

int imc_members_new(imc_members **out, const imc_mem *mem,
                    const imc_store_vtbl *store, void *store_ud,
                    const imc_clock *clock, uint32_t ttl_ms) {
  imc_members *mc = imc_calloc(mem, 1, sizeof(*mc));
  if (mc == NULL)
    return IMC_ERR_NOMEM;
  mc->mem = *mem;
  mc->store = store;
  mc->store_ud = store_ud;
  mc->clock = clock;
  mc->ttl_ms = ttl_ms;
  *out = mc;
  return 0;
}

static void entry_free(imc_members *mc, entry *e) {
  imc_free(&mc->mem, e->items);
  imc_free(&mc->mem, e);
}

static void unlink_entry(imc_members *mc, entry *e) {
  entry **pp = &mc->buckets[hash(e->group)];
  while (*pp != e)
    pp = &(*pp)->next;
  *pp = e->next;
}

void imc_members_del(imc_members *mc) {
  if (mc == NULL)
    return;
  for (int i = 0; i < BUCKETS; i++) {
    entry *e = mc->buckets[i];
    while (e) {
      entry *next = e->next;
      for (waiter *w = e->waiters; w;) {
        waiter *wn = w->next;
        imc_free(&mc->mem, w);
        w = wn;
      }
      entry_free(mc, e);
      e = next;
    }
  }
  imc_free(&mc->mem, mc);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Copies items into one sorted, unique allocation. */
static char **copy_list(const imc_mem *m, const char *const *items, size_t n,
                        size_t *out_n) {
  size_t bytes = n * sizeof(char *) + 1;
  for (size_t i = 0; i < n; i++)
    bytes += strlen(items[i]) + 1;
  char **v = imc_malloc(m, bytes);
  if (v == NULL)
    return NULL;
  char *p = (char *)(v + n);
  for (size_t i = 0; i < n; i++) {
    size_t l = strlen(items[i]) + 1;
    memcpy(p, items[i], l);
    v[i] = p;
    p += l;
  }
  qsort(v, n, sizeof(*v), cmp_str);
  size_t u = 0;
  for (size_t i = 0; i < n; i++)
    if (u == 0 || strcmp(v[u - 1], v[i]) != 0)
      v[u++] = v[i];
  *out_n = u;
  return v;
}

static void loaded(void *ud, int status, const char *const *items, size_t n) {
  entry *e = ud;
  imc_members *mc = e->mc;
  e->loading = 0;
  waiter *w = e->waiters;
  e->waiters = NULL;
  char **list = NULL;
  size_t ln = 0;
  if (status == 0) {
    list = copy_list(&mc->mem, items, n, &ln);
    if (list == NULL)
      status = IMC_ERR_NOMEM;
  }
  mc->pending--;
  if (status == 0) {
    e->items = list;
    e->n = ln;
    e->expires = imc_clock_now(mc->clock) + mc->ttl_ms;
  }
  int keep = status == 0 && !e->stale;
  if (!keep && !e->stale)
    unlink_entry(mc, e);
  /* Waiters may call back into the cache; e stays valid until freed. */
  while (w) {
    waiter *next = w->next;
    w->done(w->done_ud, status, (const char *const *)e->items,
            status == 0 ? e->n : 0);
    imc_free(&mc->mem, w);
    w = next;
  }
  if (!keep)
    entry_free(mc, e);
}

static entry *find(imc_members *mc, const char *group) {
  for (entry *e = mc->buckets[hash(group)]; e; e = e->next)
    if (strcmp(e->group, group) == 0)
      return e;
  return NULL;
}

int imc_members_get(imc_members *mc, const char *group, imc_list_cb done,
                    void *done_ud) {
  entry *e = find(mc, group);
  if (e && !e->loading && !e->stale && imc_clock_now(mc->clock) < e->expires) {
    done(done_ud, 0, (const char *const *)e->items, e->n);
    return 0;
  }
  if (e && !e->loading) {
    unlink_entry(mc, e);
    entry_free(mc, e);
    e = NULL;
  }
  waiter *w = imc_malloc(&mc->mem, sizeof(*w));
  if (w == NULL)
    return IMC_ERR_NOMEM;
  w->done = done;
  w->done_ud = done_ud;
  if (e != NULL) {
    w->next = e->waiters;
    e->waiters = w;
    return 0;
  }
  size_t gl = strlen(group) + 1;
  e = imc_calloc(&mc->mem, 1, sizeof(*e) + gl);
  if (e == NULL) {
    imc_free(&mc->mem, w);
    return IMC_ERR_NOMEM;
  }
  memcpy(e->group, group, gl);
  e->mc = mc;
  e->loading = 1;
  w->next = NULL;
  e->waiters = w;
  uint32_t b = hash(group);
  e->next = mc->buckets[b];
  mc->buckets[b] = e;
  mc->pending++;
  int rv = mc->store->group_members(mc->store_ud, group, loaded, e);
  if (rv != 0) {
    mc->pending--;
    unlink_entry(mc, e);
    e->waiters = NULL;
    entry_free(mc, e);
    imc_free(&mc->mem, w);
    return rv;
  }
  return 0;
}

void imc_members_invalidate(imc_members *mc, const char *group) {
  entry *e = find(mc, group);
  if (e == NULL)
    return;
  if (e->loading) {
    /* The load in flight may have read the old list: later lookups must
     * not join it, so it leaves the table and serves only its waiters. */
    e->stale = 1;
    unlink_entry(mc, e);
    return;
  }
  unlink_entry(mc, e);
  entry_free(mc, e);
}

int imc_members_contains(const char *const *items, size_t n, const char *user) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    int c = strcmp(items[mid], user);
    if (c == 0)
      return 1;
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return 0;
}

size_t imc_members_pending(const imc_members *mc) {
  return mc->pending;
}
