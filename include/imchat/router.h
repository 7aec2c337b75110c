/*
 * imchat - the router role: sequence numbers, fast/slow path, groups.
 *
 * imc_router takes SendRequests (imc_router_send, or through the
 * imc_upstream_vtbl that imc_router_upstream_vtbl() returns), assigns a
 * msg_id and a per-conversation seq, answers, and then delivers: online
 * devices get the message pushed through the gateway link, offline users
 * get it through the durable offline queue, which the worker persists.
 * Every message is also queued for its conversation's history.
 *
 * One router belongs to one thread; it never blocks and never does I/O
 * itself.
 */
#ifndef IMCHAT_ROUTER_H
#define IMCHAT_ROUTER_H

#include <imchat/backend.h>
#include <imchat/gateway.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct imc_router imc_router;
typedef struct imc_router_options imc_router_options;

/* The number of devices a push reached (0: none there), or status < 0. */
typedef void (*imc_count_cb)(void *done_ud, int status, int count);

/*
 * The router's way to the gateways. A node is a gateway's node_id as it
 * appears in the registry.
 */
typedef struct imc_gwlink_vtbl {
  uint32_t struct_size;
  /*
   * Push msg to every device of user_id connected to node_id except
   * skip_device (NULL: none), waiting for their DeliverAcks.
   */
  int (*deliver)(void *ud, const char *node_id, const char *user_id,
                 const char *skip_device, const imc_msg *msg, imc_count_cb done,
                 void *done_ud);
  /* Push a DeliveryStatus to device_id of user_id on node_id. */
  int (*status)(void *ud, const char *node_id, const char *user_id,
                const char *device_id, const char *msg_id,
                const char *client_msg_id, imc_delivery_state state,
                const char *recipient, imc_done_cb done, void *done_ud);
} imc_gwlink_vtbl;

/* What the content filter does with a match. */
typedef enum imc_filter_action {
  IMC_FILTER_REJECT = 1, /* refuse the send with BLOCKED */
  IMC_FILTER_MASK = 2    /* replace each matched character with '*' */
} imc_filter_action;

/* Returns 0, IMC_ERR_INVALID_ARGUMENT or IMC_ERR_NOMEM. */
IMC_EXTERN int imc_router_options_new(imc_router_options **out,
                                      const imc_mem *mem);
IMC_EXTERN void imc_router_options_del(imc_router_options *opt);

/*
 * Vtables (copied; ud borrowed, must outlive the router). registry, seq,
 * dedup, store, queue (the durable offline queue) and gwlink are
 * required; group_bus (fan-out of group messages to every gateway) is
 * required for group sends.
 */
IMC_EXTERN int imc_router_options_set_registry(imc_router_options *opt,
                                               const imc_registry_vtbl *vt,
                                               void *ud);
IMC_EXTERN int imc_router_options_set_seq(imc_router_options *opt,
                                          const imc_seq_vtbl *vt, void *ud);
IMC_EXTERN int imc_router_options_set_dedup(imc_router_options *opt,
                                            const imc_dedup_vtbl *vt, void *ud);
IMC_EXTERN int imc_router_options_set_store(imc_router_options *opt,
                                            const imc_store_vtbl *vt, void *ud);
IMC_EXTERN int imc_router_options_set_queue(imc_router_options *opt,
                                            const imc_bus_vtbl *vt, void *ud);
IMC_EXTERN int imc_router_options_set_group_bus(imc_router_options *opt,
                                                const imc_bus_vtbl *vt,
                                                void *ud);
IMC_EXTERN int imc_router_options_set_gwlink(imc_router_options *opt,
                                             const imc_gwlink_vtbl *vt,
                                             void *ud);
/*
 * The topics the router publishes to: the durable offline queue (default
 * "offline_msg", which the worker consumes) and the group bus (default
 * "group_msg", which every gateway's fan-out consumes). Both are copied.
 * Returns 0 or IMC_ERR_INVALID_ARGUMENT (NULL opt, a NULL or empty name, a
 * name of 128 bytes or more; nothing changes then).
 */
IMC_EXTERN int imc_router_options_set_topics(imc_router_options *opt,
                                             const char *offline_topic,
                                             const char *group_topic);
IMC_EXTERN int imc_router_options_set_clock(imc_router_options *opt,
                                            const imc_clock *clock);
IMC_EXTERN int imc_router_options_set_log(imc_router_options *opt,
                                          imc_log_cb cb, void *ud,
                                          imc_log_level max_level);
/* Largest body (default 64 KiB). */
IMC_EXTERN int imc_router_options_set_max_body(imc_router_options *opt,
                                               size_t bytes);
/* How long a (from_user, client_msg_id) pair is remembered (7 days). */
IMC_EXTERN int imc_router_options_set_dedup_ttl_s(imc_router_options *opt,
                                                  uint32_t s);
/* How long group members are cached (default 30000 ms). */
IMC_EXTERN int imc_router_options_set_group_cache_ms(imc_router_options *opt,
                                                     uint32_t ms);
/*
 * The statuses the router remembers, so that each message gets one
 * DeliveryStatus and a resend answered from the dedup set gets it again:
 * for ms (default 600000) and at most max_entries of them (default
 * 1048576, about 100 MB; the oldest are forgotten first). A message
 * whose status was forgotten may get it twice. Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT (ms or max_entries 0).
 */
IMC_EXTERN int imc_router_options_set_status_memory(imc_router_options *opt,
                                                    uint32_t ms,
                                                    size_t max_entries);
/*
 * The liveness of another router instance: complete done once with
 * status 0 and alive 1 or 0, or with a negative status when it cannot be
 * told (the instance then counts as alive).
 */
typedef void (*imc_alive_cb)(void *done_ud, int status, int alive);
/*
 * Asks whether the router instance `instance` (imc_router_instance of a
 * router sharing the dedup set) is alive. Returns 0 and completes done
 * once (at once or later, from the router's thread), or returns a
 * negative IMC_ERR_* and never calls done.
 */
typedef int (*imc_router_alive_fn)(void *ud, uint32_t instance,
                                   imc_alive_cb done, void *done_ud);

/*
 * Routers sharing one dedup set (a cluster): a send that finds the claim
 * of its (from_user, client_msg_id) still pending for another instance
 * asks alive (ud borrowed, must outlive the router) about that instance.
 * A dead instance's claim is taken over atomically with the dedup set's
 * compare_and_set (of several routers taking it over at once one wins;
 * the others see the winner's claim) and the send goes on; a live one's
 * gets IMC_ERR_UNAVAILABLE as before. Without this option another
 * instance's claim is honoured until it expires (60 s). alive NULL turns
 * it off. imc_router_new refuses the option (IMC_ERR_INVALID_ARGUMENT)
 * with a dedup vtable that has no compare_and_set. Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT (NULL opt).
 */
IMC_EXTERN int imc_router_options_set_liveness(imc_router_options *opt,
                                               imc_router_alive_fn alive,
                                               void *ud);

/*
 * For a dedup set and an offline queue that do not commit together (Redis
 * and Kafka; SQLite commits a turn's operations in one transaction and
 * needs none of this): on 1, a send records its "ok" in the dedup set
 * before it publishes its job, not in the same turn. A router dying
 * between the two then leaves an "ok" without a job, which a resend
 * re-drives under the same msg_id, and never a queued job behind a
 * pending claim, which the send taking the claim over would make a
 * second message of. Costs one dedup round trip per send. Default 0.
 * Returns 0 or IMC_ERR_INVALID_ARGUMENT (NULL opt).
 */
IMC_EXTERN int imc_router_options_set_record_first(imc_router_options *opt,
                                                   int on);

/*
 * Sensitive words: the len bytes at words (copied; the host reads them
 * from wherever it keeps them, the library does no file I/O) are the text
 * of a word list, one UTF-8 word per line; blank lines and lines starting
 * with '#' are skipped. Applies to bodies whose content_type starts with
 * "text/". Returns 0, IMC_ERR_INVALID_ARGUMENT (a line is not UTF-8, words
 * is NULL with len > 0, or a bad action), IMC_ERR_TOO_LARGE or
 * IMC_ERR_NOMEM; on error the options are unchanged.
 */
IMC_EXTERN int imc_router_options_set_filter(imc_router_options *opt,
                                             const uint8_t *words, size_t len,
                                             imc_filter_action action);

/*
 * Replaces the word list (e.g. on SIGHUP) with the len bytes at words
 * (borrowed), in the format of imc_router_options_set_filter, keeping
 * its action. On failure the previous word list stays in force. Returns
 * 0, IMC_ERR_NOT_FOUND (no filter was configured),
 * IMC_ERR_INVALID_ARGUMENT, IMC_ERR_TOO_LARGE or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_router_set_filter_words(imc_router *r, const uint8_t *words,
                                           size_t len);

/*
 * Creates a router. Returns 0, IMC_ERR_INVALID_ARGUMENT (a required
 * vtable is missing) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_router_new(imc_router **out, const imc_router_options *opt,
                              const imc_mem *mem);
/* The host must let pending backend operations complete first. */
IMC_EXTERN void imc_router_del(imc_router *r);

/*
 * The router's instance: 32 random bits chosen at imc_router_new, part of
 * its msg_ids and of its dedup claims. A host publishes it where
 * imc_router_options_set_liveness's callback of other routers looks.
 * Returns 0 for a NULL r.
 */
IMC_EXTERN uint32_t imc_router_instance(const imc_router *r);

IMC_EXTERN void imc_router_set_user_data(imc_router *r, void *ud);
IMC_EXTERN void *imc_router_get_user_data(const imc_router *r);

/*
 * Routes one message; req->struct_size must be set (see imc_send_req).
 * done runs once with the SendAck fields or an error:
 * IMC_ERR_INVALID_ARGUMENT (bad ids), IMC_ERR_TOO_LARGE, IMC_ERR_FORBIDDEN
 * (not a member of the group), IMC_ERR_BLOCKED (filter), IMC_ERR_UNAVAILABLE
 * (a backend failed; the client may resend). Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT (no sender: NULL strings, or a struct_size
 * that does not cover them) / IMC_ERR_NOMEM (done is not called then).
 */
IMC_EXTERN int imc_router_send(imc_router *r, const imc_send_req *req,
                               imc_send_cb done, void *done_ud);

/*
 * A device of user_id acknowledged msg. The sender's DELIVERED status
 * goes to msg->from_node, or, when that is "", to wherever the registry
 * has the sending device.
 */
IMC_EXTERN void imc_router_delivered(imc_router *r, const imc_msg *msg,
                                     const char *user_id,
                                     const char *device_id);

/*
 * imc_router_delivered for n acks at once (the upstream's
 * delivered_many): the messages that lost their node (from_node "") have
 * their senders looked up in one lookup_many. acks may be NULL when n is
 * 0; items with a NULL msg or user_id are skipped.
 */
IMC_EXTERN void imc_router_delivered_many(imc_router *r,
                                          const imc_delivery_ack *acks,
                                          size_t n);

/* A push of msg to user_id was not acknowledged: slow path. */
IMC_EXTERN void imc_router_undelivered(imc_router *r, const imc_msg *msg,
                                       const char *user_id);

/*
 * The worker persisted msg: in its history (history != 0) and/or in the
 * inboxes of users. Sends the sender the STORED status when it is due.
 * Matches imc_persisted_cb of worker.h.
 */
IMC_EXTERN void imc_router_persisted(void *router, const imc_msg *msg,
                                     int history, const char *const *users,
                                     size_t n_users);

/*
 * An upstream vtable whose ud is the router, for a gateway in the same
 * process.
 */
IMC_EXTERN const imc_upstream_vtbl *imc_router_upstream_vtbl(void);

/*
 * Group membership through the store, keeping the router's cache
 * coherent. Complete like the store's group operations.
 */
IMC_EXTERN int imc_router_group_add(imc_router *r, const char *group_id,
                                    const char *user_id, imc_done_cb done,
                                    void *done_ud);
IMC_EXTERN int imc_router_group_remove(imc_router *r, const char *group_id,
                                       const char *user_id, imc_done_cb done,
                                       void *done_ud);
IMC_EXTERN int imc_router_group_members(imc_router *r, const char *group_id,
                                        imc_list_cb done, void *done_ud);

/* Forget cached members of group_id (e.g. after a change elsewhere). */
IMC_EXTERN void imc_router_group_invalidate(imc_router *r,
                                            const char *group_id);

/* Timers: as imc_gateway_next_timeout_ms / imc_gateway_on_timeout. */
IMC_EXTERN int64_t imc_router_next_timeout_ms(imc_router *r);
IMC_EXTERN int imc_router_on_timeout(imc_router *r);

/* Backend operations not yet completed (0 when it is safe to delete). */
IMC_EXTERN size_t imc_router_pending(const imc_router *r);

typedef enum imc_router_stat {
  IMC_RT_STAT_SENDS = 0,      /* sends accepted (SendAck) */
  IMC_RT_STAT_DUPLICATES,     /* resends answered from the dedup set */
  IMC_RT_STAT_REJECTED,       /* sends refused with an error */
  IMC_RT_STAT_FAST_PATH,      /* pushes handed to gateways */
  IMC_RT_STAT_SLOW_PATH,      /* inbox entries queued */
  IMC_RT_STAT_GROUP_SENDS,    /* group messages published */
  IMC_RT_STAT_DELIVERED,      /* DELIVERED statuses sent */
  IMC_RT_STAT_STORED,         /* STORED statuses sent */
  IMC_RT_STAT_BLOCKED,        /* refused by the filter */
  IMC_RT_STAT_MASKED,         /* bodies masked by the filter */
  IMC_RT_STAT_BACKEND_ERRORS, /* failed backend operations */
  IMC_RT_STAT_QUEUE_ERRORS,   /* failed offline-queue publishes */
  IMC_RT_STAT_RETRY_QUEUE,    /* gauge: jobs waiting to be queued again */
  IMC_RT_STAT_STATUS_REPEATS, /* statuses sent again for a resend */
  IMC_RT_STAT_REDRIVES,       /* resends whose delivery was driven again */
  IMC_RT_STAT_TAKEOVERS,      /* claims of dead instances taken over */
  IMC_RT_STAT_DEDUP_OWED,     /* gauge: dedup records of queued messages
                                 waiting to be written again */
  IMC_RT_STAT_COUNT_
} imc_router_stat;

IMC_EXTERN uint64_t imc_router_stat_get(const imc_router *r,
                                        imc_router_stat stat);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_ROUTER_H */
