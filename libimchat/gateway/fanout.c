/*
 * Group fan-out on a gateway: records of the group bus are pushed to the
 * members of the group that are connected here. The sender's other
 * devices are members too; the sending device is skipped. Each message
 * is encoded once for all its members here and pushed by the gateway
 * over as many loop turns as its size needs (gw_deliver_group). A batch
 * is committed once all of it is handed to the gateway: the highest
 * offset of each of its partitions.
 */
#include <imchat/gateway.h>
#include <imchat/fanout.h>

#include "gateway/gateway_int.h"
#include "util/alloc.h"
#include "util/busname.h"
#include "router/members.h"
#include "protocol/pb.h"
#include "protocol/pbcheck.h"
#include "util/vtbl.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define DEFAULT_TOPIC "group_msg"
#define BATCH_MAX 128
/* Messages sent this long before the fan-out started are not pushed:
 * the connections they were for are gone. The slack covers clocks that
 * differ between hosts. */
#define STALE_SLACK_MS 60000

/* The highest offset of one partition in the batch. */
typedef struct cpoint {
  int32_t partition;
  uint64_t offset;
} cpoint;

struct imc_fanout {
  void *user_data;
  imc_mem mem;
  imc_gateway *gw;
  imc_bus_vtbl bus;
  void *bus_ud;
  imc_clock clock;
  imc_members *members;
  ProtobufCAllocator pba;
  char topic[IMC_BUS_NAME_CAP];
  char consumer[IMC_BUS_NAME_CAP];
  int group_set; /* consumer set by imc_fanout_set_group() */
  int running;
  int64_t started_wall_ms; /* when imc_fanout_start() first ran */
  size_t pending;
  /* The batch in hand: decoded messages, worked through in order, and
   * the highest offset of each of its partitions (cps and msgs are one
   * allocation). */
  Imchat__V1__Message **msgs;
  size_t n, next;
  cpoint *cps;
  size_t n_cps;
  size_t commits_left; /* of the batch's commits, plus one while issuing */
};

static void poll_next(imc_fanout *f);
static void work(imc_fanout *f);

static void batch_free(imc_fanout *f) {
  for (size_t i = 0; i < f->n; i++)
    if (f->msgs[i])
      imchat__v1__message__free_unpacked(f->msgs[i], &f->pba);
  imc_free(&f->mem, f->msgs);
  f->msgs = NULL;
  f->cps = NULL;
  f->n = f->next = f->n_cps = 0;
}

/* One commit of the batch is done; the last one frees the batch and
 * polls again. */
static void committed(void *ud, int status) {
  imc_fanout *f = ud;
  f->pending--;
  /* A lost commit only means a record is pushed again; IMC_ERR_REVOKED
   * (another consumer has the partition) likewise needs nothing. */
  (void)status;
  if (--f->commits_left > 0)
    return;
  batch_free(f);
  poll_next(f);
}

static void members_done(void *ud, int status, const char *const *items,
                         size_t n) {
  imc_fanout *f = ud;
  f->pending--;
  Imchat__V1__Message *pm = f->msgs[f->next++];
  if (status == 0) {
    imc_msg m;
    imc_msg_from_pb(&m, pm);
    /* One encoded Deliver for every member here, spread over turns. */
    if (gw_deliver_group(f->gw, items, n, &m) != 0) {
      for (size_t i = 0; i < n; i++) {
        int sender = strcmp(items[i], m.from_user) == 0;
        imc_gateway_deliver(f->gw, items[i], sender ? m.from_device : NULL, &m);
      }
    }
  }
  work(f);
}

/* Handles the batch record by record, then commits it. */
static void work(imc_fanout *f) {
  while (f->next < f->n && f->msgs[f->next] == NULL)
    f->next++;
  if (f->next < f->n) {
    f->pending++;
    int rv = imc_members_get(f->members, f->msgs[f->next]->group_id,
                             members_done, f);
    if (rv != 0)
      members_done(f, rv, NULL, 0);
    return;
  }
  /* Every partition of the batch, not only the last record's. The guard
   * count keeps a commit that completes at once from ending the batch
   * while the others are being issued. */
  f->commits_left = f->n_cps + 1;
  f->pending++;
  for (size_t i = 0; i < f->n_cps; i++) {
    f->pending++;
    int rv = f->bus.commit(f->bus_ud, f->topic, f->consumer,
                           f->cps[i].partition, f->cps[i].offset, committed, f);
    if (rv != 0)
      committed(f, rv);
  }
  committed(f, 0);
}

static void polled(void *ud, int status, const imc_bus_record *recs, size_t n) {
  imc_fanout *f = ud;
  f->pending--;
  if (status != 0) {
    /* The bus failed or closed: stop until the host starts us again. */
    f->running = 0;
    return;
  }
  if (n == 0) {
    poll_next(f);
    return;
  }
  if (n > SIZE_MAX / (sizeof(*f->msgs) + sizeof(*f->cps)))
    f->msgs = NULL;
  else
    f->msgs = imc_calloc(&f->mem, n, sizeof(*f->msgs) + sizeof(*f->cps));
  if (f->msgs == NULL) {
    /* Nothing committed: the records come again after a restart. */
    poll_next(f);
    return;
  }
  f->cps = (cpoint *)(void *)(f->msgs + n);
  f->n = n;
  f->next = 0;
  f->n_cps = 0;
  for (size_t i = 0; i < n; i++) {
    size_t c = 0;
    while (c < f->n_cps && f->cps[c].partition != recs[i].partition)
      c++;
    if (c == f->n_cps) {
      f->cps[f->n_cps].partition = recs[i].partition;
      f->cps[f->n_cps++].offset = recs[i].offset;
    } else if (recs[i].offset > f->cps[c].offset) {
      f->cps[c].offset = recs[i].offset;
    }
  }
  for (size_t i = 0; i < n; i++) {
    /* A record with bad strings is skipped like an undecodable one. */
    Imchat__V1__Message *pm =
        imc_pb_check_strings(&imchat__v1__message__descriptor, recs[i].value,
                             recs[i].value_len) != 0
            ? NULL
            : imchat__v1__message__unpack(&f->pba, recs[i].value_len,
                                          recs[i].value);
    if (pm && pm->group_id[0] &&
        imc_id_valid(pm->group_id, strlen(pm->group_id)) &&
        pm->sent_at_ms >= f->started_wall_ms - STALE_SLACK_MS)
      f->msgs[i] = pm;
    else if (pm)
      imchat__v1__message__free_unpacked(pm, &f->pba);
  }
  work(f);
}

static void poll_next(imc_fanout *f) {
  if (!f->running)
    return;
  f->pending++;
  int rv = f->bus.poll(f->bus_ud, f->topic, f->consumer, BATCH_MAX, polled, f);
  if (rv != 0) {
    /* The bus refused: polling resumes at the next start. */
    f->pending--;
    f->running = 0;
  }
}

int imc_fanout_new(imc_fanout **out, imc_gateway *gw, const imc_bus_vtbl *bus,
                   void *bus_ud, const imc_store_vtbl *store, void *store_ud,
                   const imc_clock *clock, uint32_t cache_ms,
                   const imc_mem *mem) {
  if (out == NULL || gw == NULL || bus == NULL || store == NULL ||
      store->struct_size <
          offsetof(imc_store_vtbl, group_members) + sizeof(void *) ||
      store->group_members == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_fanout *f = imc_calloc(mem, 1, sizeof(*f));
  if (f == NULL)
    return IMC_ERR_NOMEM;
  f->mem = *mem;
  f->gw = gw;
  imc_vtbl_copy(&f->bus, sizeof(f->bus), bus, bus->struct_size);
  f->bus_ud = bus_ud;
  f->clock = clock ? *clock : *imc_clock_default();
  if (f->bus.poll == NULL || f->bus.commit == NULL) {
    imc_free(mem, f);
    return IMC_ERR_INVALID_ARGUMENT;
  }
  int rv =
      imc_members_new(&f->members, mem, store, store_ud, &f->clock, cache_ms);
  if (rv != 0) {
    imc_free(mem, f);
    return rv;
  }
  imc_pb_allocator(&f->pba, &f->mem);
  memcpy(f->topic, DEFAULT_TOPIC, sizeof(DEFAULT_TOPIC));
  *out = f;
  return 0;
}

void imc_fanout_del(imc_fanout *f) {
  if (f == NULL)
    return;
  batch_free(f);
  imc_members_del(f->members);
  imc_mem m = f->mem;
  imc_free(&m, f);
}

/* The consumer group is the node id: every gateway sees every record. */
static void set_consumer(imc_fanout *f) {
  if (!f->group_set)
    snprintf(f->consumer, sizeof(f->consumer), "gw-%s",
             imc_gateway_get_node_id(f->gw));
}

/* Names change only while nothing runs: a poll and its commits use the
 * same names. */
static int set_name(imc_fanout *f, char *dst, const char *name) {
  if (f->running || f->pending > 0)
    return IMC_ERR_INVALID_ARGUMENT;
  return imc_bus_name_set(dst, name);
}

int imc_fanout_set_topic(imc_fanout *f, const char *topic) {
  return f ? set_name(f, f->topic, topic) : IMC_ERR_INVALID_ARGUMENT;
}

int imc_fanout_set_group(imc_fanout *f, const char *group) {
  if (f == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  int rv = set_name(f, f->consumer, group);
  if (rv == 0)
    f->group_set = 1;
  return rv;
}

int imc_fanout_start(imc_fanout *f) {
  if (f == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (f->running)
    return 0;
  if (f->started_wall_ms == 0)
    f->started_wall_ms = f->clock.wall_ms(f->clock.ud);
  set_consumer(f);
  f->running = 1;
  poll_next(f);
  return f->running ? 0 : IMC_ERR_UNAVAILABLE;
}

void imc_fanout_stop(imc_fanout *f) {
  if (f)
    f->running = 0;
}

void imc_fanout_invalidate(imc_fanout *f, const char *group_id) {
  if (f && group_id)
    imc_members_invalidate(f->members, group_id);
}

size_t imc_fanout_pending(const imc_fanout *f) {
  return f ? f->pending + imc_members_pending(f->members) : 0;
}

void imc_fanout_set_user_data(imc_fanout *f, void *ud) {
  f->user_data = ud;
}

void *imc_fanout_get_user_data(const imc_fanout *f) {
  return f->user_data;
}
