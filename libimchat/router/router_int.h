/*
 * The router's insides, shared by its files:
 *   options.c    options and their setters
 *   send.c       the send pipeline up to the SendAck and the fast path
 *   slow_path.c  the offline queue, with a retry list for refused jobs
 *   status.c     DeliveryStatus to the sender, once per message (again
 *                for a resend), batched for delivered_many
 *   groups.c     group membership through the store
 *   stored_push.c  a message stored for a recipient who came online
 *                meanwhile is pushed to them
 *   owed.c       dedup records of queued messages, written again until
 *                the dedup set takes them
 *   router.c     life cycle, timers, stats, reports from gateways/worker
 */
#ifndef IMC_ROUTER_INT_H
#define IMC_ROUTER_INT_H

#include <imchat/router.h>

#include "router/filter.h"
#include "router/members.h"
#include "util/alloc.h"
#include "util/busname.h"
#include "util/log.h"
#include "protocol/pb.h"

#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 10000

struct imc_router_options {
  imc_mem mem;
  imc_registry_vtbl registry;
  void *registry_ud;
  imc_seq_vtbl seq;
  void *seq_ud;
  imc_dedup_vtbl dedup;
  void *dedup_ud;
  imc_store_vtbl store;
  void *store_ud;
  imc_bus_vtbl queue;
  void *queue_ud;
  imc_bus_vtbl group_bus;
  void *group_bus_ud;
  imc_gwlink_vtbl gwlink;
  void *gwlink_ud;
  imc_router_alive_fn alive; /* NULL: claims are honoured until expiry */
  void *alive_ud;
  int record_first; /* the "ok" before the job, not in one turn */
  imc_clock clock;
  imc_logger log;
  size_t max_body;
  uint32_t dedup_ttl_s, group_cache_ms;
  uint32_t status_memory_ms; /* statuses are sent once per message ... */
  size_t status_memory_max;  /* ... remembered this long, this many */
  char offline_topic[IMC_BUS_NAME_CAP]; /* the offline queue's topic */
  char group_topic[IMC_BUS_NAME_CAP];   /* the group bus's topic */
  uint8_t *filter_words; /* the word list's text; NULL: no filter */
  size_t filter_len;
  imc_filter_action filter_action;
};

/*
 * A job on its way to the offline queue without an answer waiting on it.
 * If the queue refuses it, it joins the retry list.
 */
typedef struct qrec {
  struct qrec *next;
  imc_router *r;
  size_t len, key_len;
  uint8_t data[]; /* key, then the packed job */
} qrec;

/* A message that already had its DeliveryStatus, or is delivered again
 * (status.c). */
typedef struct seen {
  struct seen *next;  /* bucket */
  struct seen *older; /* expiry order: newest first */
  struct seen *newer;
  int64_t expires;
  uint64_t hash; /* of msg_id */
  uint8_t state; /* the imc_delivery_state it said; 0: none yet */
  char msg_id[];
} seen;

/* Buckets of the seen cache at first; the table doubles whenever it holds
 * as many entries as buckets (one a second per message sent, kept for
 * the status memory: up to a million entries). */
#define SEEN_BUCKETS_MIN 1024

struct imc_router {
  imc_mem mem;
  imc_router_options o;
  imc_filter *filter;
  imc_members *members;
  void *user_data;
  uint64_t stats[IMC_RT_STAT_COUNT_];
  size_t pending;
  uint32_t instance;
  uint64_t counter;
  ProtobufCAllocator pba;
  qrec *retries, *retries_tail;
  int64_t retry_at;
  uint32_t retry_ms;
  struct imc_rt_owed *owed, *owed_tail; /* owed.c */
  int64_t owed_at;                      /* 0: not armed */
  uint32_t owed_ms;
  int owed_busy;       /* the head's write is in flight */
  seen **seen_buckets; /* seen_nbuckets, a power of two; NULL until used */
  size_t seen_nbuckets, seen_count;
  seen *seen_newest, *seen_oldest;
  int64_t error_logged_at;  /* of the last backend error logged; 0: none */
  uint64_t errors_unlogged; /* backend errors since that line */
};

#define rt_log(r, ...) imc_logf(&(r)->o.log, __VA_ARGS__)

static inline int64_t imc_rt_now_ms(imc_router *r) {
  return imc_clock_now(&r->o.clock);
}

static inline int imc_rt_is_group(const imc_msg *m) {
  return m->group_id != NULL && m->group_id[0] != '\0';
}

/* Counts and logs a failed backend operation. (router.c) */
void imc_rt_backend_error(imc_router *r, const char *what, int status);

/* Packs an OfflineJob into *out (imc_free it). Returns 0 or
 * IMC_ERR_NOMEM. (slow_path.c) */
int imc_rt_pack_job(imc_router *r, const imc_msg *m, int history,
                    const char *const *users, size_t n, uint8_t **out,
                    size_t *out_len);

/*
 * Queues m for the inboxes of users (and its history if history != 0)
 * without an answer waiting on it: failures are retried until the queue
 * takes it. (slow_path.c)
 */
void imc_rt_slow_path(imc_router *r, const imc_msg *m, int history,
                      const char *const *users, size_t n);

/* Puts the packed job of m on the retry list: a job the queue refused
 * whose send is answered all the same. (slow_path.c) */
void imc_rt_queue_retry(imc_router *r, const imc_msg *m, const uint8_t *job,
                        size_t job_len);

/* Publishes the job at the head of the retry list. (slow_path.c) */
void imc_rt_retry_publish(imc_router *r);

/* Frees the retry list. (slow_path.c) */
void imc_rt_retries_free(imc_router *r);

typedef struct imc_rt_owed imc_rt_owed;
/* Writes key = value (ttl_s) to the dedup set later, again until it
 * takes it. (owed.c) */
void imc_rt_owe_dedup(imc_router *r, const char *key, const char *value,
                      uint32_t ttl_s);
/* Writes the first owed record (when owed_at is due). (owed.c) */
void imc_rt_owed_write(imc_router *r);
/* Frees the owed records. (owed.c) */
void imc_rt_owed_free(imc_router *r);

/* Sends the sender's device its one DeliveryStatus for m. (status.c) */
void imc_rt_send_status(imc_router *r, const imc_msg *m,
                        imc_delivery_state state, const char *recipient);

/* The DELIVERED statuses of a batch of acks, with one registry lookup
 * for the senders of the messages that lost their node. (status.c) */
void imc_rt_delivered_many(imc_router *r, const imc_delivery_ack *acks,
                           size_t n);

/* The state of the status msg_id had (imc_delivery_state), or 0 if none
 * within the status memory. (status.c) */
int imc_rt_status_of(imc_router *r, const char *msg_id);

/* A resend of msg_id, a message of another router instance without a
 * status here, is to be delivered again: returns 0 and remembers that it
 * is, or 1 if it has a status or is being delivered again already.
 * (status.c) */
int imc_rt_redrive_begin(imc_router *r, const char *msg_id);

/* Sends m's sender, again, the status m already had: m is a resend
 * answered from the dedup set, carrying the first attempt's msg_id and
 * the resend's node. (status.c) */
void imc_rt_resend_status(imc_router *r, const imc_msg *m,
                          imc_delivery_state state);

/* Forgets statuses past the status memory. (status.c) */
void imc_rt_seen_expire(imc_router *r, int64_t now);

/* Pushes the 1:1 message msg, just stored in its recipient's inbox, to
 * the recipient's devices online now (stored_push.c). */
void imc_rt_push_stored(imc_router *r, const imc_msg *msg);

/* Frees the memory of sent statuses. (status.c) */
void imc_rt_seen_free(imc_router *r);

#endif /* IMC_ROUTER_INT_H */
