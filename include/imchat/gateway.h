/*
 * imchat - the gateway role: WebSocket connections of clients.
 *
 * imc_gateway is I/O-agnostic. The host accepts sockets and hands each one
 * to imc_gateway_conn_new(); it passes received bytes to
 * imc_gateway_conn_recv(), and the gateway writes through the transport
 * vtable when the host calls imc_gateway_flush() (once per event-loop
 * iteration, so several frames leave in one writev). Timers are the
 * host's too: it sleeps at most imc_gateway_next_timeout_ms() and then
 * calls imc_gateway_on_timeout().
 *
 * One gateway belongs to one thread. Run one gateway per event loop.
 *
 * Rules for hosts:
 *  - The transport's close may be called from any gateway call (a flush,
 *    a timeout, a completion), for any connection: the host looks its
 *    connection up again after each call instead of keeping pointers.
 *  - While a connection's send returned IMC_ERR_WOULDBLOCK, stop reading
 *    from it until it is writable again. Otherwise answers pile up and a
 *    client that merely paused is closed as a slow reader.
 *  - Vtable callbacks (upstream, registry, key source, HTTP handler) may
 *    complete inside the call that started them and may call
 *    imc_gateway_deliver, imc_gateway_push_status and
 *    imc_http_reply_send from there; they must not delete the gateway.
 */
#ifndef IMCHAT_GATEWAY_H
#define IMCHAT_GATEWAY_H

#include <imchat/backend.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct imc_gateway imc_gateway;
typedef struct imc_gateway_options imc_gateway_options;
typedef struct imc_conn imc_conn;

/* ------------------------------------------------------------------ */
/* Upstream: where the gateway sends what clients ask of routing        */
/* ------------------------------------------------------------------ */

/* A SendRequest of an authenticated client. */
typedef struct imc_send_req {
  /*
   * sizeof(imc_send_req) as the builder compiled it. The struct grows only
   * at the end; members past a caller's struct_size are read as absent
   * ("" / 0), so set it with a designated initialiser:
   *   imc_send_req q = {.struct_size = sizeof(q), .from_user = u, ...};
   * A request with struct_size 0 has no sender and is refused.
   */
  uint32_t struct_size;
  const char *from_user;
  const char *from_device;
  const char *node_id;
  uint64_t conn_id;
  const char *client_msg_id;
  const char *to_user;  /* "" when group_id is set */
  const char *group_id; /* "" when to_user is set */
  const uint8_t *body;
  size_t body_len;
  const char *content_type;
} imc_send_req;

/* What SendAck carries. */
typedef struct imc_send_result {
  const char *client_msg_id;
  const char *msg_id;
  const char *conversation_id;
  uint64_t seq;
  int64_t sent_at_ms;
} imc_send_result;

/*
 * Completion of a send: status 0 and res, or a negative IMC_ERR_* and a
 * short message for the client (may be NULL).
 */
typedef void (*imc_send_cb)(void *done_ud, int status,
                            const imc_send_result *res, const char *message);

/* One acknowledged push, an item of the upstream's delivered_many. */
typedef struct imc_delivery_ack {
  const imc_msg *msg;
  const char *user_id;   /* whose device acknowledged msg */
  const char *device_id; /* that device */
} imc_delivery_ack;

/*
 * The upstream (the router, in process or over gRPC). Every operation
 * follows the rule of the backend vtables: it returns 0 and calls its
 * completion exactly once, before returning or later; or it returns a
 * negative IMC_ERR_* and never calls the completion. msg and the strings
 * are the gateway's and stay valid until the completion is called.
 */
typedef struct imc_upstream_vtbl {
  uint32_t struct_size;
  /* Route a message; complete with its msg_id and seq, or an error. If
   * no completion comes within the send timeout, the client gets Error
   * UNAVAILABLE and a completion that comes later is ignored. */
  int (*send)(void *ud, const imc_send_req *req, imc_send_cb done,
              void *done_ud);
  /*
   * device_id of user_id acknowledged msg, which this gateway pushed.
   * If the report fails (a negative return or status), the gateway
   * reports msg undelivered instead: the recipient may then receive it
   * again from the slow path, and clients deduplicate by msg_id.
   */
  int (*delivered)(void *ud, const imc_msg *msg, const char *user_id,
                   const char *device_id, imc_done_cb done, void *done_ud);
  /*
   * msg, pushed to a device of user_id, was not acknowledged (ACK
   * timeout, connection closed, queue full): it needs the slow path. A
   * failed report is retried with exponential backoff (100 ms doubling
   * up to 10 s) for as long as the gateway lives; see
   * imc_gateway_pending.
   */
  int (*undelivered)(void *ud, const imc_msg *msg, const char *user_id,
                     imc_done_cb done, void *done_ud);
  /*
   * Optional: the acks of n pushes (n >= 1) in one call. The gateway
   * collects the DeliverAcks of a loop turn and reports them from
   * imc_gateway_flush (or imc_gateway_on_timeout), at most 1024 per call.
   * acks and everything they point to stay valid until done is called.
   * One status covers the batch: a failure (a negative return or status)
   * makes every item fall back to undelivered, as a failed delivered
   * does. When this member is NULL or past struct_size, the gateway calls
   * delivered once per ack, as it arrives.
   */
  int (*delivered_many)(void *ud, const imc_delivery_ack *acks, size_t n,
                        imc_done_cb done, void *done_ud);
} imc_upstream_vtbl;

/* ------------------------------------------------------------------ */
/* Plain HTTP requests on the gateway port                              */
/* ------------------------------------------------------------------ */

/* The pending answer to one HTTP request. */
typedef struct imc_http_reply imc_http_reply;

/* A request head; every string is NUL-terminated and lives during the
 * handle call only. */
typedef struct imc_http_request {
  const char *method; /* a HEAD comes as GET; the gateway drops the body */
  const char *path;   /* as sent, percent-encoded */
  const char *query;  /* after '?', "" if none */
  const char *accept; /* the Accept header, "" if none */
  /*
   * The credential of "Authorization: Bearer <credential>", or NULL.
   * When it is a JWT the gateway accepts, user_id is its subject;
   * otherwise user_id is NULL (the credential may be an admin token).
   */
  const char *bearer;
  const char *user_id;
  const char *device_id; /* the token's did claim, or "" */
  /*
   * The request body (Content-Length bytes, at most IMC_HTTP_BODY_MAX;
   * chunked bodies are refused with 411 before the handler sees them).
   * body is NULL when body_len is 0. Added at the end: a handler built
   * against an older header never reads them.
   */
  const uint8_t *body;
  size_t body_len;
  const char *content_type; /* the Content-Type header, "" if none */
} imc_http_request;

/* Largest request body the gateway reads for the HTTP handler; a larger
 * Content-Length is answered with 413. */
#define IMC_HTTP_BODY_MAX 16384

typedef struct imc_http_handler_vtbl {
  uint32_t struct_size;
  /*
   * Serve any request other than GET /ws and GET /healthz. Return 1 after
   * taking reply (answer it later or at once with imc_http_reply_send),
   * or 0 to let the gateway answer 404.
   */
  int (*handle)(void *ud, const imc_http_request *req, imc_http_reply *reply);
} imc_http_handler_vtbl;

/*
 * Answers a request taken by the handler and releases reply; call it
 * exactly once per reply. headers holds extra header lines, each ending
 * in CRLF, or is NULL; when they include a Cache-Control line it replaces
 * the default "Cache-Control: no-store". The connection closes after the
 * answer. Returns 0,
 * IMC_ERR_CLOSED (the client went away meanwhile; nothing is sent) or
 * IMC_ERR_NOMEM (the connection is closed).
 */
IMC_EXTERN int imc_http_reply_send(imc_http_reply *reply, int status,
                                   const char *content_type,
                                   const char *headers, const uint8_t *body,
                                   size_t len);

/* ------------------------------------------------------------------ */
/* Options                                                              */
/* ------------------------------------------------------------------ */

/*
 * Creates an options object with the defaults of the protocol contract.
 * Returns 0, IMC_ERR_INVALID_ARGUMENT or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_gateway_options_new(imc_gateway_options **out,
                                       const imc_mem *mem);
IMC_EXTERN void imc_gateway_options_del(imc_gateway_options *opt);

/*
 * Setters. Strings and keys are copied. Each returns 0,
 * IMC_ERR_INVALID_ARGUMENT (value out of range, or a key that does not
 * parse) or IMC_ERR_NOMEM.
 */
/* Name of this node in the registry and in Welcome (default "local"). */
IMC_EXTERN int imc_gateway_options_set_node_id(imc_gateway_options *opt,
                                               const char *node_id);
/* Accept HS256 tokens signed with this secret (at least 1 byte). */
IMC_EXTERN int imc_gateway_options_set_jwt_secret(imc_gateway_options *opt,
                                                  const uint8_t *secret,
                                                  size_t len);
/*
 * Accept tokens signed by the private half of this PEM public key: RS256
 * for an RSA key, ES256 for a P-256 EC key.
 */
IMC_EXTERN int imc_gateway_options_set_jwt_public_key(imc_gateway_options *opt,
                                                      const char *pem,
                                                      size_t len);
/* When set, tokens must carry this iss / have this value in aud. */
IMC_EXTERN int imc_gateway_options_set_jwt_issuer(imc_gateway_options *opt,
                                                  const char *iss);
IMC_EXTERN int imc_gateway_options_set_jwt_audience(imc_gateway_options *opt,
                                                    const char *aud);
/*
 * Largest SendRequest body (default 64 KiB). A WebSocket message may be
 * 1 KiB larger, for the fields around the body; a larger one closes the
 * connection with 1009.
 */
IMC_EXTERN int imc_gateway_options_set_max_body(imc_gateway_options *opt,
                                                size_t bytes);
/* Largest outbound queue of one connection (default 1 MiB). */
IMC_EXTERN int imc_gateway_options_set_max_outbound(imc_gateway_options *opt,
                                                    size_t bytes);
/* Server ping interval (default 30000) and idle drop (default 90000). */
IMC_EXTERN int imc_gateway_options_set_heartbeat_ms(imc_gateway_options *opt,
                                                    uint32_t ms);
IMC_EXTERN int imc_gateway_options_set_idle_timeout_ms(imc_gateway_options *opt,
                                                       uint32_t ms);
/* Time allowed from accept to a complete request head (default 10000). */
IMC_EXTERN int
imc_gateway_options_set_handshake_timeout_ms(imc_gateway_options *opt,
                                             uint32_t ms);
/*
 * TTL of the node's registry lease (default 90 s). The gateway holds one
 * lease for all its connections and keeps it alive once per heartbeat
 * interval; shutdown revokes it.
 */
IMC_EXTERN int imc_gateway_options_set_lease_ttl_s(imc_gateway_options *opt,
                                                   uint32_t s);
/* Time a pushed message waits for its DeliverAck (default 10000). */
IMC_EXTERN int imc_gateway_options_set_ack_timeout_ms(imc_gateway_options *opt,
                                                      uint32_t ms);
/* Sends per second per connection (default 100) and burst (200). */
IMC_EXTERN int imc_gateway_options_set_rate_limit(imc_gateway_options *opt,
                                                  uint32_t per_s,
                                                  uint32_t burst);

/*
 * Upgraded connections (devices) one user may hold on this gateway
 * (default 16). A further upgrade of that user is refused before the 101
 * with HTTP 429 and the error code TOO_MANY_DEVICES. Connections are
 * counted, not device ids: a device that reconnects while its old
 * connection is still held counts twice until the old one is gone (idle
 * drop or close), so a limit well above the devices a person uses keeps
 * such reconnects working.
 */
IMC_EXTERN int imc_gateway_options_set_max_devices(imc_gateway_options *opt,
                                                   uint32_t n);
/*
 * Sends per second per user (default 200) and burst (400), shared by all
 * connections of the user on this gateway and applied in addition to the
 * per-connection rate: more devices do not buy a higher rate. A refused
 * send gets Error RATE_LIMITED. The bucket starts full when the user's
 * first connection arrives and goes with the last one.
 */
IMC_EXTERN int imc_gateway_options_set_user_rate_limit(imc_gateway_options *opt,
                                                       uint32_t per_s,
                                                       uint32_t burst);

/*
 * Time the upstream has to complete a send (default 15000). Past it the
 * client gets Error UNAVAILABLE ("routing timed out; resend") for that
 * frame; it resends with the same client_msg_id, which the router
 * deduplicates.
 */
IMC_EXTERN int imc_gateway_options_set_send_timeout_ms(imc_gateway_options *opt,
                                                       uint32_t ms);

/*
 * Backpressure on sends. A connection has at most per_conn sends with the
 * upstream at once (default 64) and the gateway at most total (default
 * 8192). A connection at its limit stops being read (see
 * imc_gateway_conn_want_read and the transport's set_read) until a quarter of
 * its sends are answered: TCP flow control then holds the client
 * back instead of the gateway queueing its requests. A send that finds
 * the gateway's total reached waits, alone, for admission while its
 * connection is paused; pings and acks of other connections go on.
 * Returns 0 or IMC_ERR_INVALID_ARGUMENT (a zero value).
 */
IMC_EXTERN int
imc_gateway_options_set_max_sends_in_flight(imc_gateway_options *opt,
                                            uint32_t per_conn, uint32_t total);

/*
 * Time a send may wait for admission (default 1000). Past it the client
 * gets Error UNAVAILABLE "server busy; retry after 100 ms" for that frame
 * (as does a send that arrives while another one of its connection
 * waits). Returns 0 or IMC_ERR_INVALID_ARGUMENT (0 ms).
 */
IMC_EXTERN int
imc_gateway_options_set_admit_timeout_ms(imc_gateway_options *opt, uint32_t ms);

/*
 * Vtables. The vtable itself is copied (up to its struct_size); ud is
 * borrowed and must outlive the gateway. transport is required.
 */
IMC_EXTERN int imc_gateway_options_set_transport(imc_gateway_options *opt,
                                                 const imc_transport_vtbl *vt,
                                                 void *ud);
IMC_EXTERN int imc_gateway_options_set_registry(imc_gateway_options *opt,
                                                const imc_registry_vtbl *vt,
                                                void *ud);
IMC_EXTERN int imc_gateway_options_set_upstream(imc_gateway_options *opt,
                                                const imc_upstream_vtbl *vt,
                                                void *ud);
IMC_EXTERN int imc_gateway_options_set_keysrc(imc_gateway_options *opt,
                                              const imc_keysrc_vtbl *vt,
                                              void *ud);
IMC_EXTERN int
imc_gateway_options_set_http_handler(imc_gateway_options *opt,
                                     const imc_http_handler_vtbl *vt, void *ud);
IMC_EXTERN int imc_gateway_options_set_clock(imc_gateway_options *opt,
                                             const imc_clock *clock);
IMC_EXTERN int imc_gateway_options_set_log(imc_gateway_options *opt,
                                           imc_log_cb cb, void *ud,
                                           imc_log_level max_level);

/* ------------------------------------------------------------------ */
/* The gateway                                                          */
/* ------------------------------------------------------------------ */

/*
 * Creates a gateway from opt (which may be deleted afterwards). Returns
 * 0, IMC_ERR_INVALID_ARGUMENT (no transport, or no JWT key and no key
 * source) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_gateway_new(imc_gateway **out,
                               const imc_gateway_options *opt,
                               const imc_mem *mem);

/*
 * Releases the gateway and every connection still in it, without calling
 * the transport (the host closes its sockets itself) or the upstream:
 * un-ACKed pushes are dropped, so call imc_gateway_shutdown first to hand
 * them back, and wait until imc_gateway_pending() is 0. Operations still
 * pending are freed too: their completions must not be called afterwards
 * (delete the upstream, registry and key source first, or let them drop
 * theirs).
 */
IMC_EXTERN void imc_gateway_del(imc_gateway *gw);

IMC_EXTERN void imc_gateway_set_user_data(imc_gateway *gw, void *ud);
IMC_EXTERN void *imc_gateway_get_user_data(const imc_gateway *gw);

/*
 * A new client connection; conn_ud is the host's pointer for it, passed
 * back to the transport. Returns 0, IMC_ERR_CLOSED (the gateway is
 * shutting down) or IMC_ERR_NOMEM. On error the host closes the socket.
 */
IMC_EXTERN int imc_gateway_conn_new(imc_gateway *gw, imc_conn **out,
                                    void *conn_ud);

/*
 * Bytes received on c. Returns 0; IMC_ERR_INVALID_ARGUMENT for NULL
 * arguments (nothing else happens); or another negative IMC_ERR_* after
 * which the connection is gone: the transport's close has been called and
 * c is invalid. IMC_ERR_CLOSED means an orderly close, IMC_ERR_NOMEM that
 * the connection was dropped for want of memory.
 */
IMC_EXTERN int imc_gateway_conn_recv(imc_gateway *gw, imc_conn *c,
                                     const uint8_t *data, size_t len);

/*
 * The socket of c became writable after a send returned
 * IMC_ERR_WOULDBLOCK. Same returns as imc_gateway_conn_recv.
 */
IMC_EXTERN int imc_gateway_conn_writable(imc_gateway *gw, imc_conn *c);

/*
 * The host lost c (EOF, reset, error). The gateway releases it without
 * calling the transport; c is invalid afterwards.
 */
IMC_EXTERN void imc_gateway_conn_closed(imc_gateway *gw, imc_conn *c);

/*
 * 1 if the host should read c, 0 while the gateway paused it
 * (backpressure: too many sends in flight, see
 * imc_gateway_options_set_max_sends_in_flight). Check it after each
 * imc_gateway_conn_recv; the transport's set_read announces changes. 0
 * for NULL arguments.
 */
IMC_EXTERN int imc_gateway_conn_want_read(const imc_gateway *gw,
                                          const imc_conn *c);

/* The host pointer given to imc_gateway_conn_new. */
IMC_EXTERN void *imc_gateway_conn_get_user_data(const imc_conn *c);

/*
 * Reports the acks collected since the last call to the upstream's
 * delivered_many, if it has one, then writes the queued output of every
 * connection that has some through the transport. Connections found
 * broken are closed. Returns 0, or
 * IMC_ERR_INVALID_ARGUMENT if gw is NULL.
 */
IMC_EXTERN int imc_gateway_flush(imc_gateway *gw);

/*
 * Milliseconds until the next deadline (0 if one is due), or -1 if there
 * is none.
 */
IMC_EXTERN int64_t imc_gateway_next_timeout_ms(imc_gateway *gw);

/* Runs every deadline that is due. Returns 0, or IMC_ERR_INVALID_ARGUMENT
 * if gw is NULL. */
IMC_EXTERN int imc_gateway_on_timeout(imc_gateway *gw);

/*
 * Graceful shutdown: refuse new connections, revoke the node's registry
 * lease (which removes every entry of the node at once), hand un-ACKed
 * pushes to the upstream's undelivered, try failed undelivered reports
 * again at once, and close every WebSocket with 1001 (plain HTTP
 * connections at once).
 * The host keeps flushing and running the timers until
 * imc_gateway_conn_count() and imc_gateway_pending() are 0 or its
 * patience ends. Returns 0, or IMC_ERR_INVALID_ARGUMENT if gw is NULL.
 */
IMC_EXTERN int imc_gateway_shutdown(imc_gateway *gw);

/* The node id from the options. */
IMC_EXTERN const char *imc_gateway_get_node_id(const imc_gateway *gw);

/*
 * Operations the gateway still waits for: sends and key lookups not yet
 * completed (their connection may be gone), delivered/undelivered
 * reports with the upstream, waiting for the next flush (acks for
 * delivered_many) or waiting for a retry, and calls on the
 * node's registry lease (grant, keepalive, the revoke of shutdown). 0 for
 * a NULL gw.
 */
IMC_EXTERN size_t imc_gateway_pending(const imc_gateway *gw);

/* Connections currently held (any state). */
IMC_EXTERN size_t imc_gateway_conn_count(const imc_gateway *gw);

/*
 * Deliver msg to every local connection of user_id (all devices) except
 * the device skip_device of the sender (NULL: none). Each push waits
 * for its DeliverAck. Returns the number of connections it was queued on
 * (0 if the user has none here), or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_gateway_deliver(imc_gateway *gw, const char *user_id,
                                   const char *skip_device, const imc_msg *msg);

/* The delivery state of a message, as DeliveryStatus reports it. */
typedef enum imc_delivery_state {
  IMC_DELIVERED = 1,
  IMC_STORED = 2
} imc_delivery_state;

/*
 * Push a DeliveryStatus to device_id of user_id, if connected here.
 * Returns 1 if queued, 0 if not connected here, or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_gateway_push_status(imc_gateway *gw, const char *user_id,
                                       const char *device_id,
                                       const char *msg_id,
                                       const char *client_msg_id,
                                       imc_delivery_state state,
                                       const char *recipient);

/* Counters and gauges, for metrics. Ids are append-only. */
typedef enum imc_gateway_stat {
  IMC_GW_STAT_CONNECTIONS = 0,    /* gauge: connections held */
  IMC_GW_STAT_WEBSOCKETS,         /* gauge: upgraded connections */
  IMC_GW_STAT_ACCEPTED,           /* connections accepted */
  IMC_GW_STAT_UPGRADED,           /* WebSocket upgrades */
  IMC_GW_STAT_AUTH_FAILED,        /* 401 answers */
  IMC_GW_STAT_HTTP_ERRORS,        /* other 4xx answers */
  IMC_GW_STAT_FRAMES_IN,          /* ClientFrames decoded */
  IMC_GW_STAT_FRAMES_OUT,         /* ServerFrames queued */
  IMC_GW_STAT_BAD_FRAMES,         /* undecodable ClientFrames */
  IMC_GW_STAT_SLOW_CLOSED,        /* closed: outbound queue over limit */
  IMC_GW_STAT_IDLE_CLOSED,        /* closed: no inbound frame in time */
  IMC_GW_STAT_HANDSHAKE_TIMEOUTS, /* closed: no request head in time */
  IMC_GW_STAT_PUSHES,             /* Deliver frames pushed */
  IMC_GW_STAT_ACKS,               /* pushes acknowledged */
  IMC_GW_STAT_ACK_TIMEOUTS,       /* pushes that timed out */
  IMC_GW_STAT_UNDELIVERED,        /* pushes handed back for the slow path */
  IMC_GW_STAT_RATE_LIMITED,       /* sends refused by the rate limit */
  IMC_GW_STAT_OUTBOUND_BYTES,     /* gauge: bytes queued for writing */
  IMC_GW_STAT_SENDS_IN_FLIGHT,    /* gauge: sends with the upstream */
  IMC_GW_STAT_PAUSED,             /* gauge: connections not being read */
  IMC_GW_STAT_BUSY,               /* sends refused: not admitted in time */
  IMC_GW_STAT_DELIVER_ENCODES,    /* Deliver frames encoded */
  IMC_GW_STAT_REFUSED_ORIGIN,     /* upgrades refused: Origin not allowed */
  IMC_GW_STAT_REFUSED_CONNS,      /* ... max_connections reached */
  IMC_GW_STAT_REFUSED_PEER_CONNS, /* ... max_connections_per_ip reached */
  IMC_GW_STAT_REFUSED_DEVICES,    /* ... max_devices of the user reached */
  IMC_GW_STAT_COUNT_
} imc_gateway_stat;

/* The value of stat, or 0 for an unknown id. */
IMC_EXTERN uint64_t imc_gateway_stat_get(const imc_gateway *gw,
                                         imc_gateway_stat stat);

/* Bounds of the ACK latency histogram (its buckets: one more). */
#define IMC_GW_ACK_BOUNDS 13

/*
 * The latency of the pushes ACKed so far: from the push (for a group
 * message, from the start of its fan-out here) to the DeliverAck that
 * matched it, in milliseconds of the gateway's clock. Sets *bounds_ms to
 * the IMC_GW_ACK_BOUNDS ascending upper bounds of the buckets (1 ms to
 * 10 s; static), *counts to the IMC_GW_ACK_BOUNDS + 1 counts by bucket,
 * not cumulative (the last: above 10 s; they live as long as gw and grow
 * with each ACK) and *sum_ms to the sum of the latencies. Returns
 * IMC_GW_ACK_BOUNDS, or 0 (nothing set) if an argument is NULL.
 */
IMC_EXTERN size_t imc_gateway_ack_latency(const imc_gateway *gw,
                                          const uint64_t **bounds_ms,
                                          const uint64_t **counts,
                                          uint64_t *sum_ms);

/*
 * Error frames sent with the imchat.v1.Error code (1..9), or 0 for
 * another code.
 */
IMC_EXTERN uint64_t imc_gateway_errors_sent(const imc_gateway *gw, int code);

/* 1 while the gateway accepts connections, 0 once shutting down. */
IMC_EXTERN int imc_gateway_accepting(const imc_gateway *gw);

/* ------------------------------------------------------------------ */
/* Admission: origins, connection limits, peer addresses                */
/* ------------------------------------------------------------------ */

/*
 * Adds origin ("scheme://host[:port]", e.g. "https://chat.example.com")
 * to the origins whose pages may open a WebSocket, against cross-site
 * WebSocket hijacking (RFC 6455 10.2). Compared as serialized origins:
 * case-insensitive, default ports (80, 443) implied. With no origin
 * added (the default) every upgrade is allowed. Once one is added, an
 * upgrade that carries an Origin header must name an added origin or the
 * server's own (the request's Host under the Origin's scheme: the pages
 * a server serves itself keep working), else it gets HTTP 403 before the
 * token is looked at. Upgrades without Origin (clients that are not
 * browsers) are never refused for it. Returns 0, IMC_ERR_INVALID_ARGUMENT
 * (not an origin: a path, userinfo, "null", a bad host or port) or
 * IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_gateway_options_add_allowed_origin(imc_gateway_options *opt,
                                                      const char *origin);

/*
 * Upgraded connections the gateway holds at most (default 0: no limit),
 * and the most of them from one peer address (see
 * imc_gateway_conn_set_peer; default 0: no limit). An upgrade beyond
 * either gets HTTP 503 with Retry-After before the 101 (and before the
 * token is checked), counted in IMC_GW_STAT_REFUSED_CONNS or
 * IMC_GW_STAT_REFUSED_PEER_CONNS. Plain HTTP requests are not limited:
 * they are answered and closed. Returns 0 or IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_gateway_options_set_max_connections(imc_gateway_options *opt,
                                                       uint32_t n);
IMC_EXTERN int
imc_gateway_options_set_max_connections_per_ip(imc_gateway_options *opt,
                                               uint32_t n);

/*
 * An HTTP-only gateway (on 1; default 0) serves /healthz and the HTTP
 * handler and answers /ws with 404, like any path it does not serve; it
 * needs no token keys. For a process whose port only carries health and
 * metrics (im-service). Returns 0 or IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_gateway_options_set_http_only(imc_gateway_options *opt,
                                                 int on);

/*
 * WebSocket compression, permessage-deflate (RFC 7692). With enabled 1
 * (the default) a client that offers the extension gets it, always
 * without context takeover either way (each message is compressed on its
 * own, so a connection keeps no compression state): the gateway then
 * reads compressed messages, and compresses its own messages (pushes,
 * answers) longer than min_size bytes (default 1024; SIZE_MAX: never),
 * when that makes them smaller. Smaller ones, where compression gains
 * little and costs CPU on every push, go uncompressed. A compressed
 * message is inflated only up to the message size limit (see
 * imc_gateway_options_set_max_body); beyond it the connection is closed
 * with 1009. With enabled 0 the extension is never negotiated. Returns 0
 * or IMC_ERR_INVALID_ARGUMENT (enabled not 0 or 1).
 */
IMC_EXTERN int imc_gateway_options_set_deflate(imc_gateway_options *opt,
                                               int enabled, size_t min_size);

/*
 * The peer address of c (an IP address in text, at most 64 bytes), for
 * the per-address limit and the logs. Call it right after
 * imc_gateway_conn_new, before the upgrade; a second call replaces the
 * address. The host decides what one address is (an IPv4-mapped IPv6
 * address is best given as IPv4). Returns 0, IMC_ERR_INVALID_ARGUMENT
 * (NULL, empty or too long, or c is upgraded already) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_gateway_conn_set_peer(imc_gateway *gw, imc_conn *c,
                                         const char *addr);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_GATEWAY_H */
