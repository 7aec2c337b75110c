/*
 * imchat - a gRPC client over one HTTP/2 connection (nghttp2),
 * I/O-agnostic.
 *
 * The host connects a socket and creates a client for it; it passes what
 * it reads to imc_grpc_client_recv(), and the client writes through the
 * transport vtable (conn_ud: the client's user data) when the host calls
 * imc_grpc_client_flush() (once per event-loop iteration, after whatever
 * may have started calls). Deadlines are the host's timers: it sleeps at
 * most imc_grpc_client_next_timeout_ms() and then calls
 * imc_grpc_client_on_timeout().
 *
 * Many unary calls share the connection, multiplexed as HTTP/2 streams;
 * calls past the server's SETTINGS_MAX_CONCURRENT_STREAMS wait in the
 * client. Each call completes exactly once:
 *  - with the server's status and message (and the response on OK);
 *  - DEADLINE_EXCEEDED when its deadline passes (the stream is reset with
 *    CANCEL);
 *  - UNAVAILABLE when the connection is lost, or the server's GOAWAY says
 *    the call was not processed;
 *  - CANCELLED when the client is deleted.
 * A client that lost its connection, or got GOAWAY, takes no new calls
 * (imc_grpc_client_usable() is 0): the host connects a new one.
 *
 * One client belongs to one thread. Completions may start calls; they
 * must not delete the client.
 */
#ifndef IMCHAT_GRPC_CLIENT_H
#define IMCHAT_GRPC_CLIENT_H

#include <imchat/backend.h>
#include <imchat/grpc.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct imc_grpc_client imc_grpc_client;
typedef struct imc_grpc_client_options imc_grpc_client_options;

/*
 * Completion of a call. status is an IMC_GRPC_*; error is the IMC_ERR_*
 * the server sent in its imc-error trailer, or else
 * imc_grpc_status_to_error(status) (0 on OK). message is the decoded
 * grpc-message ("" when none); resp (len bytes) is the response message
 * on OK (NULL with len 0 otherwise). All are valid during the call only.
 */
typedef void (*imc_grpc_done_cb)(void *done_ud, int status, int error,
                                 const char *message, const uint8_t *resp,
                                 size_t len);

/* Returns 0, IMC_ERR_INVALID_ARGUMENT (NULL out) or IMC_ERR_NOMEM. */
IMC_EXTERN int imc_grpc_client_options_new(imc_grpc_client_options **out,
                                           const imc_mem *mem);
IMC_EXTERN void imc_grpc_client_options_del(imc_grpc_client_options *opt);

/* The connection's transport (required; copied, ud borrowed). The
 * transport's conn_ud is the client's user data. Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT. */
IMC_EXTERN int
imc_grpc_client_options_set_transport(imc_grpc_client_options *opt,
                                      const imc_transport_vtbl *vt, void *ud);

/* The :authority of requests ("host:port", copied; default "localhost").
 * Returns 0, IMC_ERR_INVALID_ARGUMENT (NULL or empty) or IMC_ERR_NOMEM. */
IMC_EXTERN int
imc_grpc_client_options_set_authority(imc_grpc_client_options *opt,
                                      const char *authority);

/* NULL: the system clocks. Returns 0 or IMC_ERR_INVALID_ARGUMENT. */
IMC_EXTERN int imc_grpc_client_options_set_clock(imc_grpc_client_options *opt,
                                                 const imc_clock *clock);

/* Returns 0 or IMC_ERR_INVALID_ARGUMENT. */
IMC_EXTERN int imc_grpc_client_options_set_log(imc_grpc_client_options *opt,
                                               imc_log_cb cb, void *ud,
                                               imc_log_level max_level);

/*
 * Largest response message (default 4 MiB): a larger one ends its call
 * with RESOURCE_EXHAUSTED. Returns 0 or IMC_ERR_INVALID_ARGUMENT (0, or
 * more than 1 GiB).
 */
IMC_EXTERN int
imc_grpc_client_options_set_max_message(imc_grpc_client_options *opt,
                                        size_t bytes);

/*
 * A client for one connected socket; its connection preface and SETTINGS
 * leave at the first flush. Returns 0, IMC_ERR_INVALID_ARGUMENT (NULL out
 * or opt, no transport) or IMC_ERR_NOMEM. The options may be deleted
 * afterwards.
 */
IMC_EXTERN int imc_grpc_client_new(imc_grpc_client **out,
                                   const imc_grpc_client_options *opt,
                                   const imc_mem *mem);

/* Completes every call in flight with CANCELLED and frees the client
 * without calling the transport. */
IMC_EXTERN void imc_grpc_client_del(imc_grpc_client *c);

IMC_EXTERN void imc_grpc_client_set_user_data(imc_grpc_client *c, void *ud);
IMC_EXTERN void *imc_grpc_client_get_user_data(const imc_grpc_client *c);

/*
 * Starts a unary call of method ("/package.Service/Method") with the
 * request message (len bytes at req, copied). deadline_ms > 0 bounds the
 * call (sent as grpc-timeout); 0 means none. done runs exactly once,
 * never before this returns 0. Returns 0, IMC_ERR_INVALID_ARGUMENT (NULL
 * c, method or done, a method not starting with '/', req NULL with len >
 * 0, deadline_ms < 0), IMC_ERR_TOO_LARGE (len over 1 GiB), IMC_ERR_CLOSED
 * (the client is not usable) or IMC_ERR_NOMEM; done is not called then.
 */
IMC_EXTERN int imc_grpc_client_call(imc_grpc_client *c, const char *method,
                                    const uint8_t *req, size_t len,
                                    int64_t deadline_ms, imc_grpc_done_cb done,
                                    void *done_ud);

/*
 * len bytes read from the socket. Returns 0, or a negative IMC_ERR_* when
 * the connection is gone (a protocol error, or no memory for it): every
 * call in flight has completed with UNAVAILABLE and the transport's close
 * has been called.
 */
IMC_EXTERN int imc_grpc_client_recv(imc_grpc_client *c, const uint8_t *data,
                                    size_t len);

/*
 * Writes what is queued (after a flush or writable met WOULDBLOCK: call it
 * when the socket is writable again). Returns 0, or a negative IMC_ERR_*
 * when the connection is gone (calls completed with UNAVAILABLE,
 * transport close called). Also closes (transport close, returning
 * IMC_ERR_CLOSED) a connection that has nothing left to do after a
 * GOAWAY.
 */
IMC_EXTERN int imc_grpc_client_flush(imc_grpc_client *c);

/* The host saw EOF or an error on the socket: every call in flight
 * completes with UNAVAILABLE. The transport is not called. */
IMC_EXTERN void imc_grpc_client_closed(imc_grpc_client *c);

/* 1 while the client takes new calls, 0 once its connection is lost or
 * the server sent GOAWAY. */
IMC_EXTERN int imc_grpc_client_usable(const imc_grpc_client *c);

/* Calls started and not yet completed. */
IMC_EXTERN size_t imc_grpc_client_pending(const imc_grpc_client *c);

/* Milliseconds until the next deadline (0: due now), or -1 for none. */
IMC_EXTERN int64_t imc_grpc_client_next_timeout_ms(imc_grpc_client *c);

/* Completes calls whose deadline passed with DEADLINE_EXCEEDED and resets
 * their streams. Returns 0. */
IMC_EXTERN int imc_grpc_client_on_timeout(imc_grpc_client *c);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_GRPC_CLIENT_H */
