/*
 * imchat - a gRPC server over HTTP/2 (nghttp2), I/O-agnostic.
 *
 * The host accepts sockets and hands each one to imc_grpc_conn_new(); it
 * passes what it reads to imc_grpc_conn_recv(), and the server writes
 * through the transport vtable when the host calls
 * imc_grpc_server_flush() (once per event-loop iteration, after whatever
 * may have answered calls). Deadlines are the host's timers too: it sleeps
 * at most imc_grpc_server_next_timeout_ms() and then calls
 * imc_grpc_server_on_timeout().
 *
 * Calls are unary. A method's handler gets the request message and the
 * call; it answers once, then or later, with imc_grpc_call_reply() or
 * imc_grpc_call_fail(). Every call handed to a handler must be answered,
 * even one whose client went away (the answer is then dropped): the call
 * is the handler's until it answers.
 *
 * Defences (each a setter below): SETTINGS_MAX_CONCURRENT_STREAMS, a
 * header list bound, a message size bound, a bound on calls a connection
 * may leave with the handlers, a rate bound on RST_STREAM (HTTP/2 Rapid
 * Reset: GOAWAY ENHANCE_YOUR_CALM past it), and nghttp2's bounds on
 * CONTINUATION frames (8 per header block), SETTINGS entries (32 per
 * frame) and queued SETTINGS/PING acknowledgements (1000).
 *
 * One server belongs to one thread. Rules for hosts:
 *  - The transport's close may be called from any server call (recv,
 *    writable, flush, a timeout) for any connection: the connection's
 *    handle is invalid once close returns.
 *  - Handlers may answer inside the call that runs them and may call any
 *    function of this header from there except imc_grpc_server_del() and
 *    imc_grpc_conn_closed().
 */
#ifndef IMCHAT_GRPC_SERVER_H
#define IMCHAT_GRPC_SERVER_H

#include <imchat/backend.h>
#include <imchat/grpc.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct imc_grpc_server imc_grpc_server;
typedef struct imc_grpc_server_options imc_grpc_server_options;
typedef struct imc_grpc_conn imc_grpc_conn;
typedef struct imc_grpc_call imc_grpc_call;

/*
 * A method's handler. req (len bytes, the request message without its
 * length prefix) is borrowed for the duration of the call; call is the
 * handler's until it answers it.
 */
typedef void (*imc_grpc_handler)(void *ud, imc_grpc_call *call,
                                 const uint8_t *req, size_t len);

/* Returns 0, IMC_ERR_INVALID_ARGUMENT (NULL out) or IMC_ERR_NOMEM. */
IMC_EXTERN int imc_grpc_server_options_new(imc_grpc_server_options **out,
                                           const imc_mem *mem);
IMC_EXTERN void imc_grpc_server_options_del(imc_grpc_server_options *opt);

/*
 * Serves method ("/package.Service/Method", copied) with handler and its
 * ud (borrowed; must outlive the server). Calls of other methods end with
 * UNIMPLEMENTED. Returns 0, IMC_ERR_INVALID_ARGUMENT (NULL argument, a
 * name that does not start with '/' or holds no second '/'),
 * IMC_ERR_EXISTS (method is served already) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_grpc_server_options_add_method(imc_grpc_server_options *opt,
                                                  const char *method,
                                                  imc_grpc_handler handler,
                                                  void *ud);

/* The connections' transport (required; copied, ud borrowed). Returns 0
 * or IMC_ERR_INVALID_ARGUMENT. */
IMC_EXTERN int
imc_grpc_server_options_set_transport(imc_grpc_server_options *opt,
                                      const imc_transport_vtbl *vt, void *ud);

/* NULL: the system clocks. Returns 0 or IMC_ERR_INVALID_ARGUMENT. */
IMC_EXTERN int imc_grpc_server_options_set_clock(imc_grpc_server_options *opt,
                                                 const imc_clock *clock);

/* Returns 0 or IMC_ERR_INVALID_ARGUMENT. */
IMC_EXTERN int imc_grpc_server_options_set_log(imc_grpc_server_options *opt,
                                               imc_log_cb cb, void *ud,
                                               imc_log_level max_level);

/*
 * Largest request message (default 4 MiB, as stock gRPC): a larger one
 * ends its call with RESOURCE_EXHAUSTED. Answers are not bounded. Returns
 * 0 or IMC_ERR_INVALID_ARGUMENT (0, or more than 1 GiB).
 */
IMC_EXTERN int
imc_grpc_server_options_set_max_message(imc_grpc_server_options *opt,
                                        size_t bytes);

/*
 * SETTINGS_MAX_CONCURRENT_STREAMS of each connection (default 1000).
 * Calls still with a handler after their stream is gone count too: a
 * connection holding 2 * n of them gets RESOURCE_EXHAUSTED for new calls
 * until handlers answer. Returns 0 or IMC_ERR_INVALID_ARGUMENT (0).
 */
IMC_EXTERN int
imc_grpc_server_options_set_max_streams(imc_grpc_server_options *opt,
                                        uint32_t n);

/*
 * SETTINGS_MAX_HEADER_LIST_SIZE (default 16384; RFC 7541 sizes: name +
 * value + 32 per field), enforced: a larger request head ends its call
 * with RESOURCE_EXHAUSTED. Returns 0 or IMC_ERR_INVALID_ARGUMENT (less
 * than 1024).
 */
IMC_EXTERN int
imc_grpc_server_options_set_max_header_list(imc_grpc_server_options *opt,
                                            uint32_t bytes);

/*
 * HTTP/2 Rapid Reset: a connection that sends more than max RST_STREAM
 * frames within interval_ms gets GOAWAY ENHANCE_YOUR_CALM and is closed
 * (default 1000 per 1000 ms). Returns 0 or IMC_ERR_INVALID_ARGUMENT (0).
 */
IMC_EXTERN int
imc_grpc_server_options_set_reset_limit(imc_grpc_server_options *opt,
                                        uint32_t max, uint32_t interval_ms);

/* Returns 0, IMC_ERR_INVALID_ARGUMENT (NULL out or opt, no transport) or
 * IMC_ERR_NOMEM. The options may be deleted afterwards. */
IMC_EXTERN int imc_grpc_server_new(imc_grpc_server **out,
                                   const imc_grpc_server_options *opt,
                                   const imc_mem *mem);

/*
 * Frees the server and its connections without calling the transport
 * (the host closes its sockets itself). Every call must have been
 * answered first (imc_grpc_server_pending() is 0).
 */
IMC_EXTERN void imc_grpc_server_del(imc_grpc_server *s);

IMC_EXTERN void imc_grpc_server_set_user_data(imc_grpc_server *s, void *ud);
IMC_EXTERN void *imc_grpc_server_get_user_data(const imc_grpc_server *s);

/*
 * A new connection whose transport pointer is conn_ud. Its SETTINGS leave
 * at the next flush. Returns 0, IMC_ERR_INVALID_ARGUMENT or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_grpc_conn_new(imc_grpc_server *s, imc_grpc_conn **out,
                                 void *conn_ud);

/*
 * len bytes read from the connection. Returns 0, or a negative IMC_ERR_*
 * when the connection is gone (a protocol error, or no memory for it):
 * the transport's close has then been called. Answers and frames it
 * produces leave at the next flush.
 */
IMC_EXTERN int imc_grpc_conn_recv(imc_grpc_conn *c, const uint8_t *data,
                                  size_t len);

/*
 * The socket became writable after the transport's send returned
 * IMC_ERR_WOULDBLOCK: writes what is queued. Returns 0, or a negative
 * IMC_ERR_* when the connection is gone (transport close called).
 */
IMC_EXTERN int imc_grpc_conn_writable(imc_grpc_conn *c);

/*
 * The host saw EOF or an error: frees the connection without calling the
 * transport. Its calls with handlers are cancelled (their answers are
 * dropped).
 */
IMC_EXTERN void imc_grpc_conn_closed(imc_grpc_conn *c);

/* The conn_ud given to imc_grpc_conn_new. */
IMC_EXTERN void *imc_grpc_conn_get_user_data(const imc_grpc_conn *c);

/*
 * Writes every connection's queued frames through the transport, and
 * closes (transport close) the connections that are finished: after a
 * GOAWAY, or a transport error. Returns the number of connections closed.
 */
IMC_EXTERN int imc_grpc_server_flush(imc_grpc_server *s);

/*
 * Graceful shutdown: every connection gets GOAWAY (NO_ERROR, naming the
 * last call it took), so its client makes new calls elsewhere; the calls
 * taken go on and are answered, and each connection is closed at the
 * flush after its last one. Connections made later are not affected:
 * stop accepting first. Returns 0 or IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_grpc_server_shutdown(imc_grpc_server *s);

/* Milliseconds until the next deadline (0: due now), or -1 for none. */
IMC_EXTERN int64_t imc_grpc_server_next_timeout_ms(imc_grpc_server *s);

/*
 * Ends calls whose grpc-timeout has passed with DEADLINE_EXCEEDED (a
 * handler still holding one answers it as usual; the answer is dropped).
 * Returns 0.
 */
IMC_EXTERN int imc_grpc_server_on_timeout(imc_grpc_server *s);

/* Calls with handlers, not yet answered. */
IMC_EXTERN size_t imc_grpc_server_pending(const imc_grpc_server *s);

/*
 * Answers call: status IMC_GRPC_OK with the response message (len bytes
 * at resp, copied; len may be 0), or another status with message (a
 * human-readable text, copied, may be NULL; resp is ignored). The call is
 * invalid once this returns, whatever it returns. Returns 0 (also when the
 * answer is dropped because the call ended already),
 * IMC_ERR_INVALID_ARGUMENT (NULL call, a status outside 0..16) or
 * IMC_ERR_NOMEM (the stream is reset instead).
 */
IMC_EXTERN int imc_grpc_call_reply(imc_grpc_call *call, int status,
                                   const char *message, const uint8_t *resp,
                                   size_t len);

/*
 * Answers call with the failure error (a negative IMC_ERR_*): the status
 * imc_grpc_status_from_error(error), message, and the trailer imc-error.
 * Returns as imc_grpc_call_reply (IMC_ERR_INVALID_ARGUMENT for an error
 * that is not negative).
 */
IMC_EXTERN int imc_grpc_call_fail(imc_grpc_call *call, int error,
                                  const char *message);

/* 1 if the call ended already (deadline, the client cancelled it, the
 * connection went away): an answer would be dropped. */
IMC_EXTERN int imc_grpc_call_cancelled(const imc_grpc_call *call);

/* The conn_ud of the call's connection, or NULL once it is gone. */
IMC_EXTERN void *imc_grpc_call_conn_user_data(const imc_grpc_call *call);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_GRPC_SERVER_H */
