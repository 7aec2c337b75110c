/*
 * imchat - the client side: one user's device talking to a gateway.
 *
 * imc_client is I/O-agnostic like the server roles. It never opens a
 * socket: the host opens one when the state callback says CONNECTING
 * (and calls imc_client_connected), feeds received bytes to
 * imc_client_recv, writes what imc_client_output hands it, and runs the
 * timers with imc_client_next_timeout_ms / imc_client_on_timeout. It
 * keeps an outbox, an inbox dedup set, per-conversation last seqs and the
 * offline cursor in a SQLite file named by the host, so unconfirmed sends
 * survive a restart and a message is surfaced once per store.
 *
 * One client belongs to one thread and starts no threads. Callbacks are
 * made from within the calls that feed it (recv, on_timeout, connected,
 * disconnected, sync_response, send); they may call imc_client_send,
 * imc_client_get_* and imc_client_stop, but must not delete the client.
 *
 * See doc/client.md for the outbox and dedup model.
 */
#ifndef IMCHAT_CLIENT_H
#define IMCHAT_CLIENT_H

#include <imchat/backend.h>
#include <imchat/gateway.h> /* imc_delivery_state */

#ifdef __cplusplus
extern "C" {
#endif

typedef struct imc_client imc_client;
typedef struct imc_client_options imc_client_options;

/* Length of a client_msg_id the SDK generates: 32 hex digits. */
#define IMC_CLIENT_MSG_ID_LEN 32

/* Where the connection stands. */
typedef enum imc_client_state {
  IMC_CLIENT_STOPPED = 0,    /* not started, or stopped */
  IMC_CLIENT_CONNECTING = 1, /* host: open a connection now */
  IMC_CLIENT_HANDSHAKE = 2,  /* upgrade sent; waiting for 101 and Welcome */
  IMC_CLIENT_ONLINE = 3,     /* Welcome received */
  IMC_CLIENT_WAITING = 4,    /* disconnected; reconnects when the timer ends */
  IMC_CLIENT_FAILED = 5      /* refused for good (401): no reconnect */
} imc_client_state;

/* Flags of a surfaced message. */
#define IMC_CLIENT_MSG_GAP 0x1     /* seq > last seq + 1: sync history */
#define IMC_CLIENT_MSG_OFFLINE 0x2 /* came from the offline sync */
#define IMC_CLIENT_MSG_HISTORY 0x4 /* came from a history page */

/*
 * The host's callbacks. Every member may be NULL. Strings and msg live
 * during the call only. struct_size first; new members only at the end.
 */
typedef struct imc_client_callbacks {
  uint32_t struct_size;
  /*
   * The state changed. reason is 0 or the IMC_ERR_* that ended a
   * connection (IMC_ERR_AUTH: 401, IMC_ERR_CLOSED: closed by the peer,
   * IMC_ERR_EXPIRED: a handshake or heartbeat timeout, IMC_ERR_PROTO: a bad
   * answer, IMC_ERR_IO: reported by the host). On WAITING, FAILED and
   * STOPPED the host closes its socket (after writing what
   * imc_client_output still holds, if it likes).
   */
  void (*state)(void *ud, imc_client_state state, int reason);
  /*
   * A message not surfaced before from this store. flags: IMC_CLIENT_MSG_*.
   * last_seq is the conversation's highest seq known before it.
   */
  void (*message)(void *ud, const imc_msg *msg, uint32_t flags,
                  uint64_t last_seq);
  /* The server accepted a send: it has a msg_id and a seq. */
  void (*send_ack)(void *ud, const char *client_msg_id, const char *msg_id,
                   const char *conversation_id, uint64_t seq);
  /*
   * DeliveryStatus for a send (state IMC_DELIVERED or IMC_STORED;
   * user_id the recipient, "" for a group). The send has left the outbox.
   */
  void (*status)(void *ud, const char *client_msg_id, const char *msg_id,
                 imc_delivery_state state, const char *user_id);
  /*
   * The server refused a send for good (error: IMC_ERR_INVALID_ARGUMENT,
   * IMC_ERR_FORBIDDEN, IMC_ERR_NOT_FOUND, IMC_ERR_TOO_LARGE,
   * IMC_ERR_BLOCKED, IMC_ERR_AUTH); it has left the outbox. Transient
   * errors (UNAVAILABLE, RATE_LIMITED, INTERNAL) are retried instead.
   */
  void (*send_error)(void *ud, const char *client_msg_id, int error,
                     const char *message);
} imc_client_callbacks;

/* A random source: fill buf with len random bytes. Returns 0 or -1. */
typedef int (*imc_random_fn)(void *ud, uint8_t *buf, size_t len);

/* ------------------------------------------------------------------ */
/* Options                                                              */
/* ------------------------------------------------------------------ */

/* Returns 0, IMC_ERR_INVALID_ARGUMENT (out NULL) or IMC_ERR_NOMEM. */
IMC_EXTERN int imc_client_options_new(imc_client_options **out,
                                      const imc_mem *mem);
/* NULL is a no-op. */
IMC_EXTERN void imc_client_options_del(imc_client_options *opt);

/*
 * Setters; strings are copied. Each returns 0, IMC_ERR_INVALID_ARGUMENT
 * (opt NULL or a value out of range) or IMC_ERR_NOMEM.
 */
/* The SQLite file of the store (required; ":memory:" keeps nothing). */
IMC_EXTERN int imc_client_options_set_store_path(imc_client_options *opt,
                                                 const char *path);
/* The bearer token (a JWT) sent on the upgrade and on HTTP requests. */
IMC_EXTERN int imc_client_options_set_token(imc_client_options *opt,
                                            const char *token);
/* Host header value, e.g. "127.0.0.1:8082" (default "localhost"). */
IMC_EXTERN int imc_client_options_set_host(imc_client_options *opt,
                                           const char *host);
/* Path of the WebSocket endpoint (default "/ws"). */
IMC_EXTERN int imc_client_options_set_ws_path(imc_client_options *opt,
                                              const char *path);
/* Callbacks (copied up to struct_size) and their user pointer. */
IMC_EXTERN int imc_client_options_set_callbacks(imc_client_options *opt,
                                                const imc_client_callbacks *cb,
                                                void *ud);
/* Clock (NULL: the system clocks); copied. */
IMC_EXTERN int imc_client_options_set_clock(imc_client_options *opt,
                                            const imc_clock *clock);
/* Random source for ids, masks and jitter (default: OpenSSL RAND_bytes). */
IMC_EXTERN int imc_client_options_set_random(imc_client_options *opt,
                                             imc_random_fn fn, void *ud);
/*
 * Reconnect backoff: the first wait (default 500 ms) doubles per failed
 * attempt up to max_ms (default 30000); each wait is drawn uniformly from
 * [wait/2, wait] (jitter). Refused if initial_ms is 0 or max_ms < it.
 */
IMC_EXTERN int imc_client_options_set_backoff(imc_client_options *opt,
                                              uint32_t initial_ms,
                                              uint32_t max_ms);
/*
 * Ping interval (default 0: the Welcome's heartbeat_s, or 30 s) and the
 * time allowed for any frame after a ping before the connection counts
 * as dead (default 10000).
 */
IMC_EXTERN int imc_client_options_set_heartbeat(imc_client_options *opt,
                                                uint32_t interval_ms,
                                                uint32_t pong_timeout_ms);
/* Time from CONNECTING to Welcome (default 10000). */
IMC_EXTERN int
imc_client_options_set_handshake_timeout_ms(imc_client_options *opt,
                                            uint32_t ms);
/*
 * Time a send waits for its SendAck and then its DeliveryStatus before it
 * is sent again with the same client_msg_id (default 15000).
 */
IMC_EXTERN int imc_client_options_set_resend_ms(imc_client_options *opt,
                                                uint32_t ms);
/* Messages per offline or history page requested (default 100, 1..1000). */
IMC_EXTERN int imc_client_options_set_page_limit(imc_client_options *opt,
                                                 uint32_t limit);
IMC_EXTERN int imc_client_options_set_log(imc_client_options *opt,
                                          imc_log_cb cb, void *ud,
                                          imc_log_level max_level);

/* ------------------------------------------------------------------ */
/* The client                                                           */
/* ------------------------------------------------------------------ */

/*
 * Opens the store and creates a client in state STOPPED. Returns 0;
 * IMC_ERR_INVALID_ARGUMENT (out or opt NULL, no store path, no token);
 * IMC_ERR_NOMEM; or IMC_ERR_IO (the store cannot be opened, created or
 * used; the reason goes to the log hook). *out is NULL on error.
 */
IMC_EXTERN int imc_client_new(imc_client **out, const imc_client_options *opt,
                              const imc_mem *mem);
/* Closes the store and frees everything. NULL is a no-op. */
IMC_EXTERN void imc_client_del(imc_client *c);

IMC_EXTERN void imc_client_set_user_data(imc_client *c, void *ud);
IMC_EXTERN void *imc_client_get_user_data(const imc_client *c);

/*
 * Starts connecting: the state becomes CONNECTING (the callback tells the
 * host to open a connection). From WAITING it skips the rest of the wait.
 * Returns 0, IMC_ERR_INVALID_ARGUMENT (c NULL) or IMC_ERR_CLOSED (FAILED,
 * or already connecting or connected).
 */
IMC_EXTERN int imc_client_start(imc_client *c);

/*
 * Stops: drops the connection (state STOPPED, no reconnect). The outbox
 * stays. Returns 0 or IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_client_stop(imc_client *c);

/*
 * The host's connection is open (TCP established): the upgrade request is
 * queued and the state becomes HANDSHAKE. Returns 0,
 * IMC_ERR_INVALID_ARGUMENT, IMC_ERR_CLOSED (not CONNECTING) or
 * IMC_ERR_NOMEM (the state becomes WAITING).
 */
IMC_EXTERN int imc_client_connected(imc_client *c);

/*
 * The host's connection failed or closed (connect refused, EOF, reset).
 * reason is a negative IMC_ERR_* for the state callback (0 means
 * IMC_ERR_CLOSED). The state becomes WAITING with the next backoff.
 * Returns 0, IMC_ERR_INVALID_ARGUMENT or IMC_ERR_CLOSED (no connection was
 * being made or held; nothing changes).
 */
IMC_EXTERN int imc_client_disconnected(imc_client *c, int reason);

/*
 * Bytes received on the connection. Returns 0 (including when the bytes
 * ended the connection: the state callback says so), or
 * IMC_ERR_INVALID_ARGUMENT, or IMC_ERR_CLOSED (no connection: the bytes
 * are dropped).
 */
IMC_EXTERN int imc_client_recv(imc_client *c, const uint8_t *data, size_t len);

/*
 * The bytes waiting to be written: *data points at the first len bytes
 * (the return value), valid until the next call on c. 0 when nothing
 * waits. Consume what was written with imc_client_output_consume.
 */
IMC_EXTERN size_t imc_client_output(imc_client *c, const uint8_t **data);

/* Drops the first n bytes of the output (n at most what is waiting). */
IMC_EXTERN void imc_client_output_consume(imc_client *c, size_t n);

/* 1 if output is waiting, else 0. */
IMC_EXTERN int imc_client_want_write(const imc_client *c);

/*
 * Milliseconds until the next deadline (0: due now), or -1 if there is
 * none.
 */
IMC_EXTERN int64_t imc_client_next_timeout_ms(imc_client *c);

/* Runs what is due. Returns 0 or IMC_ERR_INVALID_ARGUMENT. */
IMC_EXTERN int imc_client_on_timeout(imc_client *c);

/* The current state. */
IMC_EXTERN imc_client_state imc_client_get_state(const imc_client *c);

/* The user id from the Welcome (or the last one, from the store), or "". */
IMC_EXTERN const char *imc_client_get_user_id(const imc_client *c);

/* ------------------------------------------------------------------ */
/* Sending                                                              */
/* ------------------------------------------------------------------ */

/*
 * Queues a message to to_user or (to_user NULL) group_id: it is written
 * to the outbox with a new random client_msg_id (copied into
 * client_msg_id, which holds IMC_CLIENT_MSG_ID_LEN + 1 bytes; may be NULL)
 * and sent at once if ONLINE, else on the next Welcome. content_type NULL
 * means "text/plain". Returns 0; IMC_ERR_INVALID_ARGUMENT (both or neither
 * recipient, an invalid id, a content type that is not UTF-8 without
 * NUL); IMC_ERR_NOMEM; or IMC_ERR_IO (the store failed: nothing queued).
 */
IMC_EXTERN int imc_client_send(imc_client *c, const char *to_user,
                               const char *group_id, const uint8_t *body,
                               size_t len, const char *content_type,
                               char *client_msg_id);

/* Sends in the outbox (not yet confirmed by a DeliveryStatus). */
IMC_EXTERN size_t imc_client_outbox_size(const imc_client *c);

/* ------------------------------------------------------------------ */
/* HTTP: offline sync and history                                       */
/* ------------------------------------------------------------------ */

/*
 * 1 if an offline sync should run: after each Welcome, until a sync has
 * read the last page. 0 otherwise.
 */
IMC_EXTERN int imc_client_want_sync(const imc_client *c);

/*
 * The request for the next offline page:
 * GET /offline?cursor=<stored cursor>&limit=<page limit> with the bearer
 * and Accept: application/x-protobuf. *req is valid until the next call
 * on c. The host sends it on a new connection to the gateway port and
 * feeds the answer to imc_client_sync_response. Returns 0,
 * IMC_ERR_INVALID_ARGUMENT or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_client_sync_request(imc_client *c, const uint8_t **req,
                                       size_t *len);

/*
 * The answer (all bytes received so far) to the last sync request: a
 * protobuf OfflinePage, or its JSON form when the answer's Content-Type is
 * application/json. New messages are surfaced through the message
 * callback, in seq order per conversation, flag IMC_CLIENT_MSG_OFFLINE;
 * the cursor is stored.
 * Returns 1 (more pages: request the next), 0 (done: want_sync is 0
 * now), IMC_ERR_INVALID_ARGUMENT (c NULL, or data NULL with len > 0),
 * IMC_ERR_INCOMPLETE (feed more bytes), IMC_ERR_AUTH (401),
 * IMC_ERR_FORBIDDEN (403), IMC_ERR_PROTO (not an HTTP answer, another
 * 4xx, or a bad page; protobuf-c reports a failed allocation of the page
 * this way too), IMC_ERR_UNAVAILABLE (a 5xx or other status),
 * IMC_ERR_NOMEM, or IMC_ERR_IO / IMC_ERR_UNAVAILABLE (the store failed;
 * the cursor is unchanged and the page can be fed again).
 */
IMC_EXTERN int imc_client_sync_response(imc_client *c, const uint8_t *data,
                                        size_t len);

/*
 * One history message: msg lives during the call only.
 */
typedef void (*imc_client_history_cb)(void *ud, const imc_msg *msg);

/*
 * The request for a page of a conversation's history:
 * GET /v1/conversations/<conversation_id>/messages?after_seq=..&limit=..
 * (*req valid until the next call on c). Returns 0,
 * IMC_ERR_INVALID_ARGUMENT (c, req or len NULL, a conversation id that
 * is not p:<id>:<id> or g:<id>) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_client_history_request(imc_client *c,
                                          const char *conversation_id,
                                          uint64_t after_seq,
                                          const uint8_t **req, size_t *len);

/*
 * The answer to a history request. With cb, every message of the page is
 * passed to cb and nothing is recorded (a viewer). With cb NULL, messages
 * not surfaced before go through the inbox (dedup, last seq) to the
 * message callback with IMC_CLIENT_MSG_HISTORY: the way to repair a gap.
 * *next_after_seq (may be NULL) gets the after_seq of the next page.
 * Returns 1 (more), 0 (last page), or the errors of
 * imc_client_sync_response (IMC_ERR_FORBIDDEN for 403).
 */
IMC_EXTERN int imc_client_history_response(imc_client *c, const uint8_t *data,
                                           size_t len, imc_client_history_cb cb,
                                           void *ud, uint64_t *next_after_seq);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_CLIENT_H */
