/*
 * Internals of the gRPC layer (grpc_server.h, grpc_client.h), shared by
 * its files:
 *
 *   status.c          status names, IMC_ERR_* <-> gRPC status, HTTP/2
 *                     error codes and HTTP statuses to gRPC statuses,
 *                     grpc-message percent-encoding, grpc-timeout
 *   wire.c            what both sides share: nghttp2's allocator from an
 *                     imc_mem, moving frames from nghttp2 to the
 *                     transport, reassembling length-prefixed messages
 *   server_options.c  the server's options object and its setters
 *   server.c          the server object: connections, flush, deadlines
 *   server_stream.c   nghttp2 callbacks of a server connection: request
 *                     heads, messages, resets, the Rapid Reset bound
 *   call.c            answers to calls: trailers-only errors, responses
 *                     with trailers, imc_grpc_call_*
 *   client_options.c  the client's options object and its setters
 *   client.c          the client object: calls, deadlines, connection loss
 *   client_stream.c   nghttp2 callbacks of the client: response heads,
 *                     messages, trailers, completion of calls
 *   pbglue.c          protobuf glue of the imchat.v1 services: a packed
 *                     message as a call, RoutedMessage <-> imc_msg
 *   upstream_client.c imc_upstream_vtbl and imc_groups_vtbl as
 *                     imchat.v1.Router calls, round-robin over clients
 *                     (the gateway's side of the link)
 *   router_service.c  imchat.v1.Router on a server, answered by an
 *                     imc_router (the router's side)
 *   gwlink_client.c   imc_gwlink_vtbl as imchat.v1.Gateway calls on a
 *                     client per gateway node (the router's side)
 *   gateway_service.c imchat.v1.Gateway on a server, answered by an
 *                     imc_gateway (the gateway's side)
 *
 * Functions shared between files carry the rpc_ prefix; they are hidden
 * from the library's exported symbols like everything not IMC_EXTERN.
 */
#ifndef IMCHAT_RPC_INT_H
#define IMCHAT_RPC_INT_H

#include <imchat/grpc_client.h>
#include <imchat/grpc_server.h>

#include "util/alloc.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/timer.h"
#include "util/vtbl.h"

#include "router.pb-c.h"

#include <nghttp2/nghttp2.h>

#define RPC_MAX_MESSAGE (4u * 1024 * 1024) /* default message bound */
#define RPC_MESSAGE_CEILING (1u << 30)     /* largest bound accepted */
#define RPC_OUT_HIGH (64 * 1024)  /* unwritten output kept per connection */
#define RPC_IOV 32                /* iovecs per transport send */
#define RPC_WINDOW (1 << 20)      /* stream receive window */
#define RPC_CONN_WINDOW (8 << 20) /* connection receive window */
#define RPC_BUDGET_MIN                                                         \
  (16u << 20) /* partial messages one connection may                           \
                 hold, at least */
#define RPC_CT "application/grpc"
#define RPC_IMC_ERROR "imc-error" /* trailer: the IMC_ERR_* of a failure */

/* An HTTP/2 header from literals and lengths. */
#define RPC_NV(n, v, vlen)                                                     \
  {                                                                            \
    (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, (vlen),                     \
        NGHTTP2_NV_FLAG_NO_COPY_NAME                                           \
  }

/* ---- status.c ---- */

/* gRPC's mapping of an HTTP/2 RST_STREAM error code. */
int rpc_status_from_h2(uint32_t error_code);
/* gRPC's mapping of a non-200 HTTP status without grpc-status. */
int rpc_status_from_http(int http_status);
/*
 * grpc-message: s percent-encoded (bytes outside 0x20..0x7e and '%'),
 * truncated to 1024 bytes of input. Returns a new string or NULL.
 */
char *rpc_pct_encode(const imc_mem *m, const char *s);
/* The len bytes at v percent-decoded into a new string, or NULL. */
char *rpc_pct_decode(const imc_mem *m, const uint8_t *v, size_t len);
/* grpc-timeout ("1..8 digits" and one of HMSmun) in ms, rounded up.
 * Returns 0 or -1 for a malformed value. */
int rpc_timeout_parse(const uint8_t *v, size_t len, int64_t *ms);
/* Writes ms (> 0) as a grpc-timeout into buf; returns its length. */
size_t rpc_timeout_format(int64_t ms, char buf[16]);
/* The decimal value of an imc-error header in *err, if it is a known
 * negative IMC_ERR_*. Returns 0 or -1. */
int rpc_error_parse(const uint8_t *v, size_t len, int *err);
/* A status parsed from grpc-status, IMC_GRPC_UNKNOWN if malformed. */
int rpc_status_parse(const uint8_t *v, size_t len);

/* ---- wire.c ---- */

/* nghttp2's allocator on m (m must outlive the session). */
void rpc_h2_mem(nghttp2_mem *out, const imc_mem *m);

/* One HTTP/2 connection's session and its way to the socket. */
typedef struct rpc_wire {
  nghttp2_session *h2;
  const imc_mem *mem;
  imc_bufq out; /* frames taken from nghttp2, not yet written */
  imc_transport_vtbl tv;
  void *tud;
  void *conn_ud;
} rpc_wire;

#define RPC_WIRE_DONE 1

/*
 * Takes frames from nghttp2 (until RPC_OUT_HIGH bytes wait) and writes
 * them. Returns 0 (written, or the transport would block),
 * RPC_WIRE_DONE (the session has nothing left to read or write) or a
 * negative IMC_ERR_* (the session failed, or the transport did).
 */
int rpc_wire_flush(rpc_wire *w);
void rpc_wire_free(rpc_wire *w);

/* Reassembles the one message of a unary request or response. */
typedef struct rpc_msgin {
  uint8_t *buf;
  size_t len, cap;
} rpc_msgin;

enum rpc_msg_err {
  RPC_MSG_TOO_LARGE = -1,  /* the prefix announces more than max */
  RPC_MSG_COMPRESSED = -2, /* the compressed flag is set */
  RPC_MSG_MANY = -3,       /* bytes past the first message */
  RPC_MSG_NONE = -4,       /* no complete message */
  RPC_MSG_NOMEM = -5,      /* no memory, or the connection's budget is
                              spent */
  RPC_MSG_BAD_FLAG = -6    /* a flag byte other than 0 and 1 */
};

/*
 * Appends len bytes of DATA, taking them from *budget (the connection's
 * allowance for partial messages). Returns 0 or an rpc_msg_err.
 */
int rpc_msgin_add(rpc_msgin *in, const imc_mem *m, const uint8_t *data,
                  size_t len, size_t max, size_t *budget);
/* At the end of the stream: the message in *msg, *len. Returns 0,
 * RPC_MSG_NONE or RPC_MSG_MANY (truncated). */
int rpc_msgin_finish(const rpc_msgin *in, const uint8_t **msg, size_t *len);
/* Frees the bytes and gives them back to *budget. */
void rpc_msgin_free(rpc_msgin *in, const imc_mem *m, size_t *budget);

/* 1 for "application/grpc", alone or followed by "+subtype" or
 * parameters. */
int rpc_grpc_content_type(const uint8_t *v, size_t len);

/* The length prefix of a len-byte message, uncompressed. */
void rpc_prefix(uint8_t out[5], size_t len);

/* ---- server ---- */

typedef struct rpc_method {
  char *name;
  imc_grpc_handler handler;
  void *ud;
} rpc_method;

struct imc_grpc_server_options {
  imc_mem mem;
  rpc_method *methods;
  size_t n_methods, cap_methods;
  imc_transport_vtbl tv;
  void *tud;
  imc_clock clock;
  imc_logger log;
  size_t max_message;
  uint32_t max_streams;
  uint32_t max_header_list;
  uint32_t reset_max;
  uint32_t reset_interval_ms;
};

struct imc_grpc_server {
  imc_mem mem;
  rpc_method *methods; /* sorted by name */
  size_t n_methods;
  imc_transport_vtbl tv;
  void *tud;
  imc_clock clock;
  imc_logger log;
  size_t max_message;
  uint32_t max_streams;
  uint32_t max_header_list;
  uint32_t reset_max;
  uint32_t reset_interval_ms;
  nghttp2_session_callbacks *cbs;
  nghttp2_option *h2opt;
  nghttp2_mem h2mem;
  imc_grpc_conn *conns;
  imc_theap timers; /* call deadlines */
  size_t pending;   /* calls with handlers */
  void *user_data;
};

struct imc_grpc_conn {
  imc_grpc_server *s;
  imc_grpc_conn *prev, *next;
  rpc_wire w;
  imc_grpc_call *calls; /* streams open in nghttp2, and calls with handlers */
  uint32_t held;        /* calls with handlers */
  size_t budget;        /* bytes of partial requests it may still hold */
  int64_t reset_start;  /* start of the current Rapid Reset window */
  uint32_t resets;      /* RST_STREAMs received in that window */
  int broken;           /* close at the next flush */
};

enum call_flag {
  C_STREAM = 1 << 0,     /* nghttp2 has the stream; we are its user data */
  C_HANDLER = 1 << 1,    /* with its handler, not answered */
  C_ENDED = 1 << 2,      /* answered or cancelled: later answers are dropped */
  C_CT = 1 << 3,         /* content-type application/grpc seen */
  C_POST = 1 << 4,       /* :method POST seen */
  C_HEAD_BIG = 1 << 5,   /* the request head passed max_header_list */
  C_BAD_TIMEOUT = 1 << 6 /* a malformed grpc-timeout */
};

struct imc_grpc_call {
  imc_grpc_server *s;
  imc_grpc_conn *conn; /* NULL once the connection is gone */
  imc_grpc_call *prev, *next;
  int32_t stream_id;
  unsigned flags;
  const rpc_method *method; /* NULL: no such method */
  rpc_msgin in;
  imc_timer timer;  /* grpc-timeout */
  size_t hdr_bytes; /* RFC 7541 size of the request head so far */
  uint8_t *out;     /* the response message being written, prefixed */
  size_t out_len, out_pos;
};

/* server.c */
imc_grpc_call *rpc_call_of(imc_grpc_conn *c, int32_t stream_id);
/* Frees the call once neither nghttp2 nor a handler holds it. */
void rpc_call_release(imc_grpc_call *call);
/* Closes c through the transport and frees it. */
void rpc_conn_close(imc_grpc_conn *c);

/* server_stream.c */
void rpc_server_callbacks(nghttp2_session_callbacks *cbs);

/*
 * call.c: answers the call now (it must not be C_ENDED): a trailers-only
 * answer for status != OK (HTTP status http, usually 200), or the
 * response resp with trailers. Resets the stream if the request is still
 * arriving. Returns 0 or IMC_ERR_NOMEM (the stream is reset then).
 */
int rpc_call_answer(imc_grpc_call *call, int http, int status,
                    const char *message, int error, const uint8_t *resp,
                    size_t len);

/* ---- client ---- */

struct imc_grpc_client_options {
  imc_mem mem;
  imc_transport_vtbl tv;
  void *tud;
  char *authority;
  imc_clock clock;
  imc_logger log;
  size_t max_message;
};

enum client_state {
  CL_OPEN = 0, /* takes calls */
  CL_DRAIN,    /* GOAWAY received: calls in flight go on, no new ones */
  CL_CLOSED    /* the connection is gone */
};

typedef struct rpc_ccall rpc_ccall;

struct imc_grpc_client {
  imc_mem mem;
  rpc_wire w;
  nghttp2_mem h2mem;
  imc_clock clock;
  imc_logger log;
  char *authority;
  size_t max_message;
  size_t budget;
  int state;
  imc_theap timers;
  rpc_ccall *calls; /* every call nghttp2 knows of */
  size_t pending;   /* calls not yet completed */
  void *user_data;
};

struct rpc_ccall {
  imc_grpc_client *c;
  rpc_ccall *prev, *next;
  int32_t stream_id;
  int completed;
  imc_grpc_done_cb done;
  void *done_ud;
  imc_timer timer;
  uint8_t *req; /* length prefix and message */
  size_t req_len, req_pos;
  rpc_msgin in;
  int http_status;
  int ct_ok;
  int grpc_status; /* -1 until grpc-status arrives */
  int error;       /* imc-error, 0 if none */
  char *message;   /* decoded grpc-message */
};

/* client.c */
/* Completes call (once) with the given outcome; resets its stream with
 * CANCEL if it is still open and rst is set. */
void rpc_ccall_complete(rpc_ccall *call, int status, int error,
                        const char *message, const uint8_t *resp, size_t len,
                        int rst);
/* Frees call (nghttp2 no longer knows it). */
void rpc_ccall_free(rpc_ccall *call);
/* Ends the connection: every call completes with UNAVAILABLE. */
void rpc_client_lost(imc_grpc_client *c, const char *why);

/* client_stream.c */
void rpc_client_callbacks(nghttp2_session_callbacks *cbs);

/* ---- pbglue.c (the imchat.v1 services) ---- */

/* Packs pm and calls method on c (as imc_grpc_client_call; also
 * IMC_ERR_UNAVAILABLE when c is NULL or not usable). */
int rpc_pb_call(imc_grpc_client *c, const imc_mem *mem, const char *method,
                const ProtobufCMessage *pm, int64_t deadline_ms,
                imc_grpc_done_cb done, void *done_ud);
/* s for a protobuf-c string field: "" for NULL. */
char *rpc_pb_str(const char *s);
/* rm (with wm, its Message) viewing m: valid as long as m. */
void rpc_pb_routed(Imchat__V1__RoutedMessage *rm, Imchat__V1__Message *wm,
                   const imc_msg *m);
/* m viewing rm, or NULL when rm has no message. */
const imc_msg *rpc_pb_msg(imc_msg *m, const Imchat__V1__RoutedMessage *rm);

#endif /* IMCHAT_RPC_INT_H */
