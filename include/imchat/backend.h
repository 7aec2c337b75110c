/*
 * imchat - backend vtables.
 *
 * libimchat performs no I/O of its own. Everything it needs from the
 * outside world (sockets, the registry, the message bus, counters, the
 * dedup set, the store, keys) it asks for through one of these vtables.
 *
 * Rules shared by every vtable:
 *  - struct_size comes first and holds sizeof() of the vtable as the
 *    backend was compiled. Members are only ever appended; the library
 *    treats members that lie past struct_size as absent.
 *  - Every call gets the backend's own ud pointer first.
 *  - Pointers passed into a call are borrowed for the duration of the call
 *    only; a backend that completes later copies what it needs.
 *  - An operation that takes a completion returns 0 and calls the
 *    completion exactly once (before returning, or later from the host's
 *    event loop), or returns a negative IMC_ERR_* and never calls it.
 *    Completions must not run from another thread: libimchat objects are
 *    single-threaded.
 *  - Pointers a completion receives are valid only during the completion.
 *  - A backend reports a failure either as the return code or through the
 *    completion; callers handle both.
 *  - A backend must have called every completion before the host deletes
 *    the object that started the operations. Deleting a backend completes
 *    what it still holds (a waiting poll, say) with IMC_ERR_CLOSED, so a
 *    host shuts down by stopping its library objects, deleting the
 *    backends, then deleting the library objects.
 */
#ifndef IMCHAT_BACKEND_H
#define IMCHAT_BACKEND_H

#include <imchat/common.h>

#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ */
/* Messages                                                             */
/* ------------------------------------------------------------------ */

/*
 * 1 if the struct at p, whose first member is struct_size, holds member:
 * how a reader checks for a member added after the oldest version it
 * accepts.
 */
#define IMC_HAS_MEMBER(p, type, member)                                        \
  ((p)->struct_size >=                                                         \
   offsetof(type, member) + sizeof(((const type *)0)->member))

/*
 * A routed message, as stored and delivered. Strings are NUL-terminated;
 * absent strings are "" (NULL is read as ""). Mirrors imchat.v1.Message.
 *
 * The struct grows with the proto, only at the end. Whoever fills one
 * sets struct_size to sizeof(imc_msg) as compiled, preferably with a
 * designated initialiser:
 *   imc_msg m = {.struct_size = sizeof(m), .msg_id = id, ...};
 * libimchat reads members past a caller's struct_size as absent ("" / 0),
 * so a program built against an older header keeps working; one that
 * leaves struct_size 0 passes a message with nothing in it. Messages the
 * library hands out carry its own sizeof; a reader built against a newer
 * header checks IMC_HAS_MEMBER before reading a member the library may
 * not have.
 */
typedef struct imc_msg {
  uint32_t struct_size; /* sizeof(imc_msg) at the builder's compile time */
  const char *msg_id;
  const char *conversation_id;
  uint64_t seq;
  const char *from_user;
  const char *to_user;  /* "" for group messages */
  const char *group_id; /* "" for 1:1 messages */
  const uint8_t *body;
  size_t body_len;
  const char *content_type;
  int64_t sent_at_ms;
  const char *client_msg_id;
  const char *from_device;
  /*
   * Routing metadata, not part of the wire Message: the gateway node and
   * connection the sender sent from, so its DeliveryStatus needs no
   * registry lookup. "" / 0 when unknown.
   */
  const char *from_node;
  uint64_t from_conn_id;
} imc_msg;

/* ------------------------------------------------------------------ */
/* Transport: the host's side of a client connection                   */
/* ------------------------------------------------------------------ */

typedef struct imc_transport_vtbl {
  uint32_t struct_size;
  /*
   * Write the iovcnt buffers of iov, in order, to the connection whose
   * host pointer is conn_ud. Returns the number of bytes written (a
   * partial write is fine), IMC_ERR_WOULDBLOCK when nothing can be written
   * now (the host calls imc_gateway_conn_writable() once it can), or any
   * other negative code if the connection is broken.
   */
  ssize_t (*send)(void *ud, void *conn_ud, const struct iovec *iov, int iovcnt);
  /*
   * The library is done with the connection: the host closes the socket.
   * The library's connection handle is invalid once this returns.
   */
  void (*close)(void *ud, void *conn_ud);
  /*
   * Optional (may be NULL or absent): the library wants reads of the
   * connection paused (enabled 0) or resumed (enabled 1). While paused
   * the host should not read the socket, so that TCP flow control holds
   * the client back; imc_gateway_conn_want_read() tells the same at any
   * time. A host that keeps reading anyway stays correct: the library
   * keeps a bounded amount of input and refuses sends it cannot admit.
   */
  void (*set_read)(void *ud, void *conn_ud, int enabled);
} imc_transport_vtbl;

/* ------------------------------------------------------------------ */
/* Registry: where each connected device lives                          */
/* ------------------------------------------------------------------ */

/*
 * The model (etcd v3's): each gateway node holds ONE lease and attaches
 * the entries of its connections to it. Keeping the lease alive keeps
 * every attached entry; when the lease ends (expiry, revoke, a registry
 * that lost its state) all its entries go with it. Renewal therefore
 * costs one call per node per interval, not one per connection.
 *
 * Entries are keyed "<user_id>/<device_id>" (relative to the backend's
 * own namespace, e.g. an etcd key prefix); a device has at most one
 * entry, and registering it again replaces the old one.
 *
 * What the lease holder (the gateway) must do:
 *  - lease_grant once, register_conn every connection on the lease id;
 *  - lease_keepalive once per interval, well inside the TTL (a third of
 *    it: 30 s for 90 s);
 *  - when lease_keepalive completes with IMC_ERR_NOT_FOUND, the lease
 *    and every entry on it are gone (it expired while the node was cut
 *    off, or the registry restarted empty): grant a new lease and
 *    register every live connection on it again. register_conn's
 *    NOT_FOUND means the same; a holder may leave it to its next
 *    keepalive. Any other error leaves the lease's fate unknown: keep the
 *    lease and try again at the next interval. Only one grant or
 *    keepalive should be outstanding, so an answer cannot concern an
 *    older lease;
 *  - lease_revoke on an orderly shutdown, to drop every entry at once.
 */

/*
 * One connected device: user_id is on node_id as device_id. struct_size
 * comes first, as in the vtables: the entry crosses the boundary between
 * libimchat and a separately built backend in both directions, so a
 * member may be appended later (a reader ignores members past
 * struct_size, and treats absent ones as unset). Writers set it to
 * sizeof(imc_reg_entry); backends reject (IMC_ERR_INVALID_ARGUMENT)
 * entries whose struct_size does not reach past conn_id.
 */
typedef struct imc_reg_entry {
  uint32_t struct_size;
  const char *user_id;
  const char *device_id;
  const char *node_id;
  uint64_t conn_id; /* unique on node_id; lets a device reconnect safely */
} imc_reg_entry;

/* Completion of lease_grant: lease_id is nonzero when status is 0. */
typedef void (*imc_lease_cb)(void *done_ud, int status, uint64_t lease_id);

/*
 * Completion of lookup_many for n_users users. On status 0, the live
 * entries of user_ids[i] are entries[offsets[i]] .. entries[offsets[i+1]
 * - 1] (offsets has n_users + 1 elements, offsets[0] is 0); a user with
 * no online device has none. Entries are pointers, so their struct_size
 * may differ from the reader's. On failure entries and offsets are NULL.
 * Everything is valid only during the call.
 */
typedef void (*imc_lookup_many_cb)(void *done_ud, int status,
                                   const imc_reg_entry *const *entries,
                                   const size_t *offsets, size_t n_users);

typedef enum imc_watch_event_type {
  IMC_WATCH_PUT = 1,    /* key was added or replaced; value: node_id */
  IMC_WATCH_DELETE = 2, /* key was removed (unregister, lease end) */
  /*
   * Events were lost (etcd compacted past the watch's revision, the
   * stream broke, the registry restarted): drop every cache derived from
   * this prefix. key is NULL and value NULL; later events follow as
   * usual.
   */
  IMC_WATCH_RESYNC = 3
} imc_watch_event_type;

/*
 * A change under a watched key prefix. key is "<user_id>/<device_id>";
 * value (PUT only, not NUL-terminated) the node_id. Valid only during
 * the call. The callback may call into the registry, watch_cancel of its
 * own watch included.
 */
typedef void (*imc_watch_cb)(void *cb_ud, imc_watch_event_type type,
                             const char *key, const uint8_t *value,
                             size_t value_len);

typedef struct imc_registry_vtbl {
  uint32_t struct_size;
  /*
   * Grant a lease of ttl_s seconds (ttl_s > 0) for node_id (a valid id,
   * see imc_id_valid; a backend may record it, e.g. as a key on the
   * lease). The backend may round ttl_s up to its minimum. Returns 0, or
   * IMC_ERR_INVALID_ARGUMENT / IMC_ERR_NOMEM (done is not called).
   * Completes with (0, nonzero lease_id) or (IMC_ERR_UNAVAILABLE or
   * another negative code, 0).
   */
  int (*lease_grant)(void *ud, const char *node_id, uint32_t ttl_s,
                     imc_lease_cb done, void *done_ud);
  /*
   * Restart lease_id's TTL from now. Returns 0 or IMC_ERR_INVALID_ARGUMENT
   * (lease_id 0, done NULL) / IMC_ERR_NOMEM. Completes with 0; with
   * IMC_ERR_NOT_FOUND when the lease is gone (expired, revoked, never
   * granted here, the registry lost its state) and with it every entry
   * that was attached: the holder grants a new lease and registers again
   * (see above); with IMC_ERR_UNAVAILABLE (or another code) when the
   * outcome is unknown: the lease may still be alive.
   */
  int (*lease_keepalive)(void *ud, uint64_t lease_id, imc_done_cb done,
                         void *done_ud);
  /*
   * End lease_id now, removing every entry attached to it (each a DELETE
   * to watchers). Returns 0 or IMC_ERR_INVALID_ARGUMENT / IMC_ERR_NOMEM.
   * Completes with 0, IMC_ERR_NOT_FOUND if the lease was already gone,
   * or IMC_ERR_UNAVAILABLE (unknown; it expires by its TTL anyway).
   */
  int (*lease_revoke)(void *ud, uint64_t lease_id, imc_done_cb done,
                      void *done_ud);
  /*
   * Add the entry of (e->user_id, e->device_id), attached to lease_id,
   * replacing any entry of that device (whatever lease it was on). All
   * of e's strings are valid ids. Returns 0 or IMC_ERR_INVALID_ARGUMENT
   * (bad entry, lease_id 0, done NULL) / IMC_ERR_NOMEM. Completes with 0;
   * with IMC_ERR_NOT_FOUND when lease_id is gone (nothing was written:
   * re-grant as for lease_keepalive); or IMC_ERR_UNAVAILABLE (unknown).
   */
  int (*register_conn)(void *ud, uint64_t lease_id, const imc_reg_entry *e,
                       imc_done_cb done, void *done_ud);
  /*
   * Remove the entry of (e->user_id, e->device_id) if it still belongs to
   * e->conn_id on e->node_id (a device that reconnected keeps its new
   * entry). Returns 0 or IMC_ERR_INVALID_ARGUMENT / IMC_ERR_NOMEM.
   * Completes with 0 whether or not an entry was removed, or with
   * IMC_ERR_UNAVAILABLE (the entry then lives until its lease ends).
   */
  int (*unregister)(void *ud, const imc_reg_entry *e, imc_done_cb done,
                    void *done_ud);
  /*
   * The live entries of each of user_ids[0 .. n-1] in one round trip (see
   * imc_lookup_many_cb); n may be 0 and ids may repeat. Returns 0 or
   * IMC_ERR_INVALID_ARGUMENT (a NULL id, user_ids NULL with n > 0, done
   * NULL) / IMC_ERR_NOMEM. Completes with 0 or IMC_ERR_UNAVAILABLE /
   * IMC_ERR_NOMEM (whereabouts unknown).
   */
  int (*lookup_many)(void *ud, const char *const *user_ids, size_t n,
                     imc_lookup_many_cb done, void *done_ud);
  /*
   * Call cb for every later change of a key starting with prefix (NULL
   * or "" for all), until watch_cancel or the backend is deleted. Sets
   * *watch_id (nonzero, unique in this backend) and returns 0, or returns
   * IMC_ERR_INVALID_ARGUMENT (cb or watch_id NULL) / IMC_ERR_NOMEM. A
   * backend whose stream to the server breaks reconnects on its own and
   * reports IMC_WATCH_RESYNC. Used to invalidate caches.
   */
  int (*watch)(void *ud, const char *prefix, imc_watch_cb cb, void *cb_ud,
               uint64_t *watch_id);
  /*
   * Stop watch_id: cb is not called for it again once this returns (also
   * when called from that cb). Returns 0 or IMC_ERR_NOT_FOUND (unknown or
   * already cancelled id).
   */
  int (*watch_cancel)(void *ud, uint64_t watch_id);
} imc_registry_vtbl;

/* ------------------------------------------------------------------ */
/* Bus: durable or in-process topics                                    */
/* ------------------------------------------------------------------ */

/* One record received from a topic. */
typedef struct imc_bus_record {
  const uint8_t *key;
  size_t key_len;
  const uint8_t *value;
  size_t value_len;
  int32_t partition;
  uint64_t offset;
} imc_bus_record;

/* A batch of records (n >= 1) for a poll, or status < 0 and n == 0. */
typedef void (*imc_bus_batch_cb)(void *done_ud, int status,
                                 const imc_bus_record *recs, size_t n);

typedef struct imc_bus_vtbl {
  uint32_t struct_size;
  /*
   * Append value to topic, partitioned by key. done runs once the record
   * is as durable as the bus makes it.
   */
  int (*publish)(void *ud, const char *topic, const uint8_t *key,
                 size_t key_len, const uint8_t *value, size_t value_len,
                 imc_done_cb done, void *done_ud);
  /*
   * Deliver up to max records of topic that consumer group has not been
   * given yet, as soon as at least one is available. Within one backend
   * instance each record reaches a group once; records the group did not
   * commit are delivered again after a restart. One poll per
   * (topic, group) may be outstanding at a time.
   */
  int (*poll)(void *ud, const char *topic, const char *group, size_t max,
              imc_bus_batch_cb done, void *done_ud);
  /*
   * Mark every record of the partition up to and including offset as
   * processed by group; uncommitted records are delivered again after a
   * restart (at-least-once). A batch may hold records of several
   * partitions: the consumer commits the highest offset of each of them.
   *
   * Rebalancing. A bus that spreads a group's partitions over several
   * consumers (Kafka) may take a partition from this consumer while it
   * holds records of it. A commit of such a partition returns or
   * completes with IMC_ERR_REVOKED: the commit was not made, and the
   * records after the group's last commit go to the partition's new
   * owner. The consumer must not retry that commit (it would fail again,
   * or worse, move the new owner's offset) and drops what it still holds
   * of the partition; work it already did for those records is done
   * again by the new owner, so it must be idempotent (the worker's dedup
   * set makes it so). Commits of the batch's other partitions are not
   * affected. IMC_ERR_REVOKED is no failure of the bus: a consumer keeps
   * polling and stays healthy. Buses with one consumer per group (the
   * embedded ones) never revoke.
   */
  int (*commit)(void *ud, const char *topic, const char *group,
                int32_t partition, uint64_t offset, imc_done_cb done,
                void *done_ud);
} imc_bus_vtbl;

/* ------------------------------------------------------------------ */
/* Sequence numbers                                                     */
/* ------------------------------------------------------------------ */

typedef void (*imc_seq_cb)(void *done_ud, int status, uint64_t seq);

typedef struct imc_seq_vtbl {
  uint32_t struct_size;
  /*
   * The next value of the counter named key: 1 for a new key, then
   * strictly increasing, never reused, also across restarts.
   */
  int (*next)(void *ud, const char *key, imc_seq_cb done, void *done_ud);
} imc_seq_vtbl;

/* ------------------------------------------------------------------ */
/* Dedup set: keys with a value and a time to live                      */
/* ------------------------------------------------------------------ */

/*
 * found is 1 if the key existed (value/value_len then hold its value),
 * 0 if not.
 */
typedef void (*imc_dedup_cb)(void *done_ud, int status, int found,
                             const uint8_t *value, size_t value_len);

typedef struct imc_dedup_vtbl {
  uint32_t struct_size;
  /*
   * Atomically: if key exists, report it (found = 1, its value);
   * otherwise store value under key for ttl_s seconds (found = 0).
   * ttl_s is at least 1 for every operation of the dedup set.
   */
  int (*test_and_set)(void *ud, const char *key, const uint8_t *value,
                      size_t value_len, uint32_t ttl_s, imc_dedup_cb done,
                      void *done_ud);
  /* Store or overwrite key for ttl_s seconds. */
  int (*set)(void *ud, const char *key, const uint8_t *value, size_t value_len,
             uint32_t ttl_s, imc_done_cb done, void *done_ud);
  /* Report key's value, if it exists and has not expired. */
  int (*get)(void *ud, const char *key, imc_dedup_cb done, void *done_ud);
  /*
   * Optional (a backend whose struct_size ends before it has none).
   * Atomically: if key exists and holds exactly the expect_len bytes at
   * expect, store value under it for ttl_s seconds and complete with
   * found = 1 (value/value_len: the new value); otherwise change nothing
   * and complete with found = 0 (the key is absent, expired or holds
   * something else). Of two racing calls with the same expect, one at
   * most finds it.
   */
  int (*compare_and_set)(void *ud, const char *key, const uint8_t *expect,
                         size_t expect_len, const uint8_t *value,
                         size_t value_len, uint32_t ttl_s, imc_dedup_cb done,
                         void *done_ud);
} imc_dedup_vtbl;

/* ------------------------------------------------------------------ */
/* Store: conversation history, offline inboxes, group membership       */
/* ------------------------------------------------------------------ */

/* An inbox entry: user_id may fetch the history message msg_id. */
typedef struct imc_inbox_entry {
  const char *user_id;
  const imc_msg *msg;
} imc_inbox_entry;

/*
 * A page of messages. cursors[i] is the cursor of msgs[i] (the inbox
 * cursor, or the seq for history); has_more tells whether a later page
 * exists.
 */
typedef void (*imc_fetch_cb)(void *done_ud, int status,
                             const imc_msg *const *msgs,
                             const uint64_t *cursors, size_t n, int has_more);

/* A list of strings, e.g. the members of a group. */
typedef void (*imc_list_cb)(void *done_ud, int status, const char *const *items,
                            size_t n);

typedef struct imc_store_vtbl {
  uint32_t struct_size;
  /*
   * Durably, in one transaction: append msgs to their conversations'
   * history (ignoring msg_ids already present) and add entries to the
   * users' inboxes (ignoring (user, msg_id) pairs already present).
   * Either array may be empty.
   */
  int (*append)(void *ud, const imc_msg *const *msgs, size_t n_msgs,
                const imc_inbox_entry *entries, size_t n_entries,
                imc_done_cb done, void *done_ud);
  /* user_id's inbox entries with cursor > after, oldest first. */
  int (*fetch_inbox)(void *ud, const char *user_id, uint64_t after,
                     uint32_t limit, imc_fetch_cb done, void *done_ud);
  /* conversation_id's history with seq > after_seq, in seq order. */
  int (*fetch_history)(void *ud, const char *conversation_id,
                       uint64_t after_seq, uint32_t limit, imc_fetch_cb done,
                       void *done_ud);
  /* Delete messages (and their inbox entries) sent before before_ms. */
  int (*purge)(void *ud, int64_t before_ms, imc_done_cb done, void *done_ud);
  /* Group membership. add and remove are idempotent. */
  int (*group_add)(void *ud, const char *group_id, const char *user_id,
                   imc_done_cb done, void *done_ud);
  int (*group_remove)(void *ud, const char *group_id, const char *user_id,
                      imc_done_cb done, void *done_ud);
  int (*group_members)(void *ud, const char *group_id, imc_list_cb done,
                       void *done_ud);
} imc_store_vtbl;

/* ------------------------------------------------------------------ */
/* JWT key source                                                       */
/* ------------------------------------------------------------------ */

/*
 * A verification key: for HS256 the shared secret, for RS256/ES256 a PEM
 * public key. alg is the only algorithm the key may verify.
 */
typedef void (*imc_key_cb)(void *done_ud, int status, const char *alg,
                           const uint8_t *key, size_t key_len);

typedef struct imc_keysrc_vtbl {
  uint32_t struct_size;
  /*
   * Find the key for a token whose header names alg and kid (kid may be
   * ""), e.g. from a JWKS document. Complete with IMC_ERR_NOT_FOUND if
   * there is none.
   */
  int (*lookup)(void *ud, const char *alg, const char *kid, imc_key_cb done,
                void *done_ud);
} imc_keysrc_vtbl;

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_BACKEND_H */
