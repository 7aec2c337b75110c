/* The client's internals, shared by the files of libimchat/client/. */
#ifndef IMC_CLIENT_INT_H
#define IMC_CLIENT_INT_H

#include <imchat/client.h>

#include "protocol/jsonw.h"
#include "protocol/pb.h"
#include "util/alloc.h"
#include "util/log.h"

#include <sqlite3.h>
#include <wslay/wslay.h>

/* Frame ids: outbox rows use their rowid; pings count from here. */
#define CL_PING_ID_BASE (UINT64_C(1) << 62)

struct imc_client_options {
  imc_mem mem;
  char *store_path;
  char *token;
  char *host;
  char *ws_path;
  imc_client_callbacks cb;
  void *cb_ud;
  imc_clock clock;
  imc_random_fn rnd;
  void *rnd_ud;
  uint32_t backoff_initial_ms, backoff_max_ms;
  uint32_t heartbeat_ms, pong_timeout_ms;
  uint32_t handshake_ms;
  uint32_t resend_ms;
  uint32_t page_limit;
  imc_logger log;
};

/* One unconfirmed send, mirrored from the outbox table. */
typedef struct cl_send {
  int64_t id; /* rowid, also the frame id of its SendRequests */
  char cmid[IMC_CLIENT_MSG_ID_LEN + 1];
  char msg_id[IMC_CLIENT_MSG_ID_LEN + 1]; /* "" until a SendAck */
  uint32_t attempts; /* SendRequests made, over every process */
  int64_t due;       /* resend at (monotonic ms); 0: not sent this connection */
} cl_send;

enum cl_stmt {
  CS_OB_INSERT,
  CS_OB_DELETE,
  CS_OB_BODY,
  CS_OB_ATTEMPT,
  CS_OB_ACKED,
  CS_OB_LIST,
  CS_SEEN_GET,
  CS_SEEN_PUT,
  CS_CONV_GET,
  CS_CONV_PUT,
  CS_KV_GET,
  CS_KV_PUT,
  CS_COUNT
};

struct imc_client {
  imc_mem mem;
  imc_client_options o; /* strings owned */
  void *user_data;
  ProtobufCAllocator pba;

  sqlite3 *db;
  sqlite3_stmt *st[CS_COUNT];

  imc_client_state state;
  int reason; /* of the last state change */

  /* The connection. */
  wslay_event_context_ptr ws;
  struct wslay_event_callbacks wscb;
  char ws_accept[29]; /* the Sec-WebSocket-Accept we expect */
  uint8_t *hs;        /* the answer to the upgrade, until its head ends */
  size_t hs_len, hs_cap;
  const uint8_t *in; /* bytes wslay reads during imc_client_recv */
  size_t in_len;
  int in_wslay;    /* inside wslay_event_recv */
  int drop_reason; /* a drop deferred until wslay returns; 0: none */

  /* Output for the host. */
  uint8_t *out;
  size_t out_len, out_cap, out_pos;

  /* Timers (monotonic ms; 0: off). */
  int64_t hs_deadline;
  int64_t reconnect_at;
  int64_t next_ping;
  int64_t ping_deadline;
  uint32_t hb_ms;
  uint32_t attempt; /* connection attempts since the last Welcome */
  uint64_t ping_id;

  /* The outbox. */
  cl_send *ob;
  size_t ob_n, ob_cap;

  /* Sync. */
  int want_sync;
  uint64_t cursor;
  int last_req; /* 1 offline, 2 history */
  char user_id[IMC_ID_MAX + 1];
  imc_wbuf req;
};

/* client.c */
int64_t cl_now(imc_client *c);
int cl_random(imc_client *c, uint8_t *buf, size_t len);
void cl_set_state(imc_client *c, imc_client_state st, int reason);
/* Ends the connection: WAITING (or FAILED for IMC_ERR_AUTH). */
void cl_drop(imc_client *c, int reason);
void cl_after_wslay(imc_client *c);
int cl_out_append(imc_client *c, const void *data, size_t len);
#define cl_log(c, level, ...) imc_logf(&(c)->o.log, level, __VA_ARGS__)

/* ws.c */
void cl_ws_callbacks_init(imc_client *c);
int cl_ws_begin(imc_client *c);
void cl_ws_recv(imc_client *c, const uint8_t *data, size_t len);
void cl_ws_end(imc_client *c);
/* Queues a ClientFrame. Returns 0 or IMC_ERR_NOMEM (connection dropped). */
int cl_send_frame(imc_client *c, const Imchat__V1__ClientFrame *f);
int cl_send_ping(imc_client *c);

/* outbox.c */
int cl_outbox_load(imc_client *c);
int cl_outbox_send(imc_client *c, cl_send *s);
void cl_outbox_flush(imc_client *c); /* sends every entry not sent yet */
void cl_outbox_on_ack(imc_client *c, const Imchat__V1__SendAck *a);
void cl_outbox_on_status(imc_client *c, const Imchat__V1__DeliveryStatus *s);
void cl_outbox_on_error(imc_client *c, uint64_t id, const Imchat__V1__Error *e);
int64_t cl_outbox_next_due(imc_client *c);
void cl_outbox_run(imc_client *c, int64_t now);

/* store.c */
int cl_store_open(imc_client *c);
void cl_store_close(imc_client *c);
sqlite3_stmt *cl_st(imc_client *c, enum cl_stmt which);
int cl_store_err(imc_client *c, int rc, const char *what);
int cl_kv_get_u64(imc_client *c, const char *key, uint64_t *out);
int cl_kv_put_u64(imc_client *c, const char *key, uint64_t v);
int cl_kv_get_str(imc_client *c, const char *key, char *out, size_t cap);
int cl_kv_put_str(imc_client *c, const char *key, const char *v);
int cl_exec(imc_client *c, const char *sql);
/*
 * Passes msg through the inbox: surfaced (message callback) unless seen;
 * recorded; the conversation's last seq raised. Returns 1 if surfaced, 0
 * if a duplicate, or a negative IMC_ERR_*.
 */
int cl_inbox_take(imc_client *c, const imc_msg *msg, uint32_t flags);
/* Records a msg_id as seen and raises last seq (for our own sends). */
int cl_inbox_mark(imc_client *c, const char *msg_id, const char *conv,
                  uint64_t seq);

/* json_page.c: a JSON page as an OfflinePage (free with free_unpacked).
 * Returns 0, IMC_ERR_PROTO or IMC_ERR_NOMEM. */
int cl_json_page(imc_client *c, const uint8_t *body, size_t len,
                 Imchat__V1__OfflinePage **out);

/* http.c */
/*
 * Parses an HTTP/1.x answer in data: *status, and the body span. Returns
 * 0, IMC_ERR_INCOMPLETE or IMC_ERR_PROTO. head_only: stop after the
 * head (*body_len is then the head length).
 */
int cl_http_response(const uint8_t *data, size_t len, int *status,
                     const uint8_t **body, size_t *body_len);
/* Finds a header value in a complete head; returns 1 and the span. */
int cl_http_header(const uint8_t *head, size_t len, const char *name,
                   const char **val, size_t *val_len);
/* Head length (CRLFCRLF or LFLF included), or 0 if incomplete. */
size_t cl_http_head_len(const uint8_t *data, size_t len);

#endif /* IMC_CLIENT_INT_H */
