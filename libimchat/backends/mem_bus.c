/*
 * In-process bus: imc_bus_vtbl over memory, for group_msg fan-out inside
 * one process. Each topic keeps its records in offset order (offsets are
 * contiguous from 1) and the consumer groups known to it; records are
 * freed from the front once every known group has committed them.
 *
 * Polls complete only from imc_membus_dispatch(), never from poll or
 * publish, so callers are not re-entered; imc_membus_next_timeout_ms()
 * tells the host when a dispatch is due.
 */
#include <imchat/membus.h>

#include <stdint.h>
#include <string.h>

#include "util/alloc.h"

#define MEMBUS_DEFAULT_MAX 65536

typedef struct mb_record {
  uint64_t offset;
  size_t key_len;
  size_t value_len;
  uint8_t data[]; /* key, then value */
} mb_record;

typedef struct mb_group {
  const char *name;
  uint64_t committed;
  uint64_t pos; /* highest offset delivered or committed */
  int pending;
  uint64_t gen; /* dispatch generation the poll was made in */
  size_t max;
  imc_bus_batch_cb done;
  void *done_ud;
} mb_group;

typedef struct mb_topic {
  const char *name;
  mb_record **recs; /* live records are recs[head..end) */
  size_t head, end, cap;
  uint64_t next_offset;
  mb_group **groups;
  size_t n_groups, cap_groups;
  int trim_pending; /* committed while its records were being delivered */
} mb_topic;

struct imc_membus {
  imc_mem mem;
  void *user_data;
  mb_topic **topics;
  size_t n_topics, cap_topics;
  size_t n_records;
  size_t max_records;
  uint64_t gen;
  mb_topic *delivering; /* topic whose records a completion is reading */
  int dispatching;
  int closing;
};

/*
 * The array arr (of elem-sized items, capacity *cap) with room for one
 * more than n: arr itself, a larger copy, or NULL if out of memory.
 */
static void *grow(const imc_mem *mem, void *arr, size_t *cap, size_t n,
                  size_t elem) {
  if (n < *cap)
    return arr;
  size_t ncap = *cap ? *cap * 2 : 8;
  void *p = imc_realloc(mem, arr, ncap * elem);
  if (p != NULL)
    *cap = ncap;
  return p;
}

/* A zeroed struct of size bytes with name copied right after it. */
static void *alloc_named(const imc_mem *mem, size_t size, const char *name) {
  size_t len = strlen(name) + 1;
  char *p = imc_calloc(mem, 1, size + len);
  if (p != NULL)
    memcpy(p + size, name, len);
  return p;
}

static mb_topic *topic_get(imc_membus *bus, const char *name) {
  for (size_t i = 0; i < bus->n_topics; i++)
    if (strcmp(bus->topics[i]->name, name) == 0)
      return bus->topics[i];
  mb_topic **topics = grow(&bus->mem, bus->topics, &bus->cap_topics,
                           bus->n_topics, sizeof(*topics));
  if (topics == NULL)
    return NULL;
  bus->topics = topics;
  mb_topic *t = alloc_named(&bus->mem, sizeof(*t), name);
  if (t == NULL)
    return NULL;
  t->name = (const char *)(t + 1);
  t->next_offset = 1;
  bus->topics[bus->n_topics++] = t;
  return t;
}

static mb_group *group_get(imc_membus *bus, mb_topic *t, const char *name) {
  for (size_t i = 0; i < t->n_groups; i++)
    if (strcmp(t->groups[i]->name, name) == 0)
      return t->groups[i];
  mb_group **groups =
      grow(&bus->mem, t->groups, &t->cap_groups, t->n_groups, sizeof(*groups));
  if (groups == NULL)
    return NULL;
  t->groups = groups;
  mb_group *g = alloc_named(&bus->mem, sizeof(*g), name);
  if (g == NULL)
    return NULL;
  g->name = (const char *)(g + 1);
  t->groups[t->n_groups++] = g;
  return g;
}

/* Free the records every known group has committed. */
static void trim(imc_membus *bus, mb_topic *t) {
  if (t->n_groups == 0)
    return;
  uint64_t low = UINT64_MAX;
  for (size_t i = 0; i < t->n_groups; i++)
    if (t->groups[i]->committed < low)
      low = t->groups[i]->committed;
  while (t->head < t->end && t->recs[t->head]->offset <= low) {
    imc_free(&bus->mem, t->recs[t->head++]);
    bus->n_records--;
  }
  if (t->head == t->end)
    t->head = t->end = 0;
}

/* Records after g's position: their count, and the first one's index. */
static size_t available(const mb_topic *t, const mb_group *g, size_t *first) {
  if (t->head == t->end)
    return 0;
  uint64_t oldest = t->recs[t->head]->offset;
  uint64_t skip = g->pos >= oldest ? g->pos - oldest + 1 : 0;
  if (skip >= t->end - t->head)
    return 0;
  *first = t->head + (size_t)skip;
  return t->end - *first;
}

static int names_valid(const char *topic, const char *group) {
  return topic && *topic && group && *group;
}

static int mb_publish(void *ud, const char *topic, const uint8_t *key,
                      size_t key_len, const uint8_t *value, size_t value_len,
                      imc_done_cb done, void *done_ud) {
  imc_membus *bus = ud;
  if (bus == NULL || topic == NULL || *topic == '\0' ||
      (key == NULL && key_len) || (value == NULL && value_len) ||
      done == NULL || key_len > SIZE_MAX / 2 || value_len > SIZE_MAX / 2 ||
      key_len + value_len > SIZE_MAX - sizeof(mb_record))
    return IMC_ERR_INVALID_ARGUMENT;
  if (bus->n_records >= bus->max_records)
    return IMC_ERR_QUEUE_FULL;
  mb_topic *t = topic_get(bus, topic);
  if (t == NULL)
    return IMC_ERR_NOMEM;
  if (t->end == t->cap && t->head > 0) {
    memmove(t->recs, t->recs + t->head, (t->end - t->head) * sizeof(*t->recs));
    t->end -= t->head;
    t->head = 0;
  }
  mb_record **recs = grow(&bus->mem, t->recs, &t->cap, t->end, sizeof(*recs));
  if (recs == NULL)
    return IMC_ERR_NOMEM;
  t->recs = recs;
  mb_record *r = imc_malloc(&bus->mem, sizeof(*r) + key_len + value_len);
  if (r == NULL)
    return IMC_ERR_NOMEM;
  r->offset = t->next_offset++;
  r->key_len = key_len;
  r->value_len = value_len;
  if (key_len)
    memcpy(r->data, key, key_len);
  if (value_len)
    memcpy(r->data + key_len, value, value_len);
  t->recs[t->end++] = r;
  bus->n_records++;
  done(done_ud, 0);
  return 0;
}

static int mb_poll(void *ud, const char *topic, const char *group, size_t max,
                   imc_bus_batch_cb done, void *done_ud) {
  imc_membus *bus = ud;
  if (bus == NULL || !names_valid(topic, group) || max == 0 || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (bus->closing)
    return IMC_ERR_CLOSED;
  mb_topic *t = topic_get(bus, topic);
  mb_group *g = t ? group_get(bus, t, group) : NULL;
  if (g == NULL)
    return IMC_ERR_NOMEM;
  if (g->pending)
    return IMC_ERR_EXISTS;
  g->pending = 1;
  g->gen = bus->gen;
  g->max = max;
  g->done = done;
  g->done_ud = done_ud;
  return 0;
}

static int mb_commit(void *ud, const char *topic, const char *group,
                     int32_t partition, uint64_t offset, imc_done_cb done,
                     void *done_ud) {
  imc_membus *bus = ud;
  if (bus == NULL || !names_valid(topic, group) || partition != 0 ||
      done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  mb_topic *t = topic_get(bus, topic);
  mb_group *g = t ? group_get(bus, t, group) : NULL;
  if (g == NULL)
    return IMC_ERR_NOMEM;
  if (g->committed < offset)
    g->committed = offset;
  if (g->pos < offset)
    g->pos = offset;
  /* The batch being delivered points into t's records: free them after
   * its completion returns. */
  if (t == bus->delivering)
    t->trim_pending = 1;
  else
    trim(bus, t);
  done(done_ud, 0);
  return 0;
}

/* Complete g's poll with the records after its position, if any. */
static int deliver(imc_membus *bus, mb_topic *t, mb_group *g) {
  size_t first, n = available(t, g, &first);
  if (n == 0)
    return 0;
  if (n > g->max)
    n = g->max;
  g->pending = 0;
  imc_bus_record *recs = imc_malloc(&bus->mem, n * sizeof(*recs));
  if (recs == NULL) {
    g->done(g->done_ud, IMC_ERR_NOMEM, NULL, 0);
    return 1;
  }
  for (size_t i = 0; i < n; i++) {
    const mb_record *r = t->recs[first + i];
    recs[i] = (imc_bus_record){
        .key = r->data,
        .key_len = r->key_len,
        .value = r->data + r->key_len,
        .value_len = r->value_len,
        .partition = 0,
        .offset = r->offset,
    };
  }
  g->pos = recs[n - 1].offset;
  bus->delivering = t;
  g->done(g->done_ud, 0, recs, n);
  bus->delivering = NULL;
  imc_free(&bus->mem, recs);
  if (t->trim_pending) {
    t->trim_pending = 0;
    trim(bus, t);
  }
  return 1;
}

int imc_membus_dispatch(imc_membus *bus) {
  if (bus == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  /* A completion calling dispatch again would deliver under the outer
   * batch; it has nothing to do that the outer call will not do. */
  if (bus->dispatching)
    return 0;
  bus->dispatching = 1;
  uint64_t gen = bus->gen++;
  int count = 0;
  /* Completions may add topics and groups (realloc): index each time. */
  for (size_t i = 0; i < bus->n_topics; i++) {
    mb_topic *t = bus->topics[i];
    for (size_t j = 0; j < t->n_groups; j++) {
      mb_group *g = t->groups[j];
      if (g->pending && g->gen <= gen)
        count += deliver(bus, t, g);
    }
  }
  bus->dispatching = 0;
  return count;
}

int64_t imc_membus_next_timeout_ms(const imc_membus *bus) {
  if (bus == NULL)
    return -1;
  for (size_t i = 0; i < bus->n_topics; i++) {
    const mb_topic *t = bus->topics[i];
    for (size_t j = 0; j < t->n_groups; j++) {
      size_t first;
      if (t->groups[j]->pending && available(t, t->groups[j], &first) > 0)
        return 0;
    }
  }
  return -1;
}

int imc_membus_new(imc_membus **out, const imc_mem *mem) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  *out = NULL;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_membus *bus = imc_calloc(mem, 1, sizeof(*bus));
  if (bus == NULL)
    return IMC_ERR_NOMEM;
  bus->mem = *mem;
  bus->max_records = MEMBUS_DEFAULT_MAX;
  *out = bus;
  return 0;
}

void imc_membus_del(imc_membus *bus) {
  if (bus == NULL)
    return;
  bus->closing = 1;
  for (size_t i = 0; i < bus->n_topics; i++) {
    mb_topic *t = bus->topics[i];
    for (size_t j = 0; j < t->n_groups; j++) {
      mb_group *g = t->groups[j];
      if (g->pending) {
        g->pending = 0;
        g->done(g->done_ud, IMC_ERR_CLOSED, NULL, 0);
      }
    }
  }
  for (size_t i = 0; i < bus->n_topics; i++) {
    mb_topic *t = bus->topics[i];
    for (size_t j = t->head; j < t->end; j++)
      imc_free(&bus->mem, t->recs[j]);
    for (size_t j = 0; j < t->n_groups; j++)
      imc_free(&bus->mem, t->groups[j]);
    imc_free(&bus->mem, t->recs);
    imc_free(&bus->mem, t->groups);
    imc_free(&bus->mem, t);
  }
  imc_free(&bus->mem, bus->topics);
  imc_mem m = bus->mem;
  imc_free(&m, bus);
}

int imc_membus_set_max_records(imc_membus *bus, size_t max) {
  if (bus == NULL || max == 0)
    return IMC_ERR_INVALID_ARGUMENT;
  bus->max_records = max;
  return 0;
}

size_t imc_membus_size(imc_membus *bus) {
  return bus ? bus->n_records : 0;
}

static const imc_bus_vtbl membus_vtbl = {
    .struct_size = sizeof(imc_bus_vtbl),
    .publish = mb_publish,
    .poll = mb_poll,
    .commit = mb_commit,
};

const imc_bus_vtbl *imc_membus_vtbl(void) {
  return &membus_vtbl;
}

void imc_membus_set_user_data(imc_membus *bus, void *ud) {
  bus->user_data = ud;
}

void *imc_membus_get_user_data(const imc_membus *bus) {
  return bus->user_data;
}
