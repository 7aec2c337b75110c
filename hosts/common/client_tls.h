/*
 * TLS for the client runner's WebSocket (wss://), on OpenSSL: a context
 * with the trust settings (the system CAs, a given CA file, or no checks
 * at all for tests) and non-blocking connections on an already connected
 * socket. The HTTP pages go through libcurl, which takes the same
 * settings (client_http.c).
 */
#ifndef IMC_HOST_CLIENT_TLS_H
#define IMC_HOST_CLIENT_TLS_H

#include <openssl/ssl.h>

#include <stddef.h>
#include <sys/types.h>

/* What a blocked TLS call waits for, as poll(2) events. */
#define HTLS_AGAIN (-1) /* try again when *events is ready */
#define HTLS_ERROR (-2) /* the connection is broken */

/*
 * A client context that verifies the server's certificate against
 * ca_file (PEM; NULL: the system's CAs), or not at all with insecure.
 * Returns the context (free with SSL_CTX_free) or NULL with the reason
 * in why.
 */
SSL_CTX *htls_ctx_new(const char *ca_file, int insecure, char *why,
                      size_t whycap);

/*
 * A TLS client on the connected non-blocking socket fd, for host (sent
 * as SNI unless it is an IP address, and checked against the
 * certificate's names or addresses). Returns the connection (free with
 * SSL_free; the fd stays the caller's) or NULL with the reason in why.
 */
SSL *htls_new(SSL_CTX *ctx, int fd, const char *host, char *why, size_t whycap);

/*
 * One step of the handshake. Returns 1 (done), 0 (in progress: wait for
 * *events) or -1 (failed: the reason in why, which begins with
 * "certificate verification failed" when the certificate was refused).
 */
int htls_handshake(SSL *s, short *events, char *why, size_t whycap);

/*
 * Reads up to cap bytes. Returns the count, 0 (the peer closed),
 * HTLS_AGAIN (wait for *events) or HTLS_ERROR.
 */
ssize_t htls_recv(SSL *s, void *buf, size_t cap, short *events);

/*
 * Writes up to len bytes (partial writes allowed; after HTLS_AGAIN call
 * again with at least the same bytes). Returns the count written,
 * HTLS_AGAIN (wait for *events) or HTLS_ERROR.
 */
ssize_t htls_send(SSL *s, const void *buf, size_t len, short *events);

#endif
