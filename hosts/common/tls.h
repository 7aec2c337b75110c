/*
 * TLS of the hosts' listeners (wss://, https://), on OpenSSL: the server
 * context (certificate chain, key, minimum version) and the non-blocking
 * TLS session of each connection the loop accepts on a TLS listener.
 *
 * The context is replaced as a whole on reload: a new connection takes
 * the current one, a connection already open keeps the one it began with
 * (OpenSSL counts the references), so a reload drops nobody.
 *
 * The I/O functions return what the epoll loop needs: bytes, or
 * HSTLS_WANT_READ / HSTLS_WANT_WRITE (wait until the socket is readable
 * / writable, then call again), HSTLS_EOF or HSTLS_ERROR.
 */
#ifndef IMC_HOST_TLS_H
#define IMC_HOST_TLS_H

#include <openssl/ssl.h>

#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

#define HSTLS_WANT_READ (-1)
#define HSTLS_WANT_WRITE (-2)
#define HSTLS_EOF (-3)   /* the peer closed */
#define HSTLS_ERROR (-4) /* broken: a protocol, socket or memory error */

typedef struct hstls hstls;

/*
 * Loads the certificate chain (PEM: the server's certificate first, then
 * its intermediates) and the private key (PEM, not encrypted) and makes
 * the context; min_version is TLS1_2_VERSION or TLS1_3_VERSION. Returns
 * 0, or -1 with a one-line reason in why (an unreadable file, no
 * certificate, a key that does not match); a reason about a file names
 * its flag (--tls-cert, --tls-key).
 */
int hstls_new(hstls **out, const char *cert_file, const char *key_file,
              int min_version, char *why, size_t whycap);

/*
 * Reads the same files again into a new context for the connections to
 * come. Returns 0, or -1 with the reason in why; the context in use then
 * stays.
 */
int hstls_reload(hstls *t, char *why, size_t whycap);

/* The certificate in use, for the log: "subject ..., serial ..., ...". */
const char *hstls_describe(const hstls *t);

/* Frees t. Close its sessions first: they use its socket BIO. */
void hstls_del(hstls *t);

/* A server session on the accepted socket fd (the fd stays the
 * caller's), or NULL out of memory. Free it with hstls_close. */
SSL *hstls_accept(hstls *t, int fd);

/*
 * One step of the handshake: 1 (done), HSTLS_WANT_READ,
 * HSTLS_WANT_WRITE, or HSTLS_ERROR with the reason in why.
 */
int hstls_handshake(SSL *s, char *why, size_t whycap);

/*
 * Reads plaintext, record after record, until cap bytes or the socket
 * runs dry. Returns the count (> 0), or, with nothing read,
 * HSTLS_WANT_READ, HSTLS_WANT_WRITE, HSTLS_EOF or HSTLS_ERROR (an end
 * after some bytes shows at the next call).
 */
ssize_t hstls_read(SSL *s, void *buf, size_t cap);

/*
 * Writes the iovcnt buffers of iov, as one record of at most 16 KiB
 * (small buffers are gathered into scratch, which holds scratch_cap
 * bytes). Returns the count written (> 0), HSTLS_WANT_WRITE,
 * HSTLS_WANT_READ or HSTLS_ERROR. After a WANT, call again with at least
 * the same bytes at the front of iov (OpenSSL's retry rule; the gateway's
 * output queue keeps them there).
 */
ssize_t hstls_write(SSL *s, const struct iovec *iov, int iovcnt,
                    unsigned char *scratch, size_t scratch_cap);

/*
 * Sends close_notify if the handshake is done (best effort: no waiting),
 * then frees s. NULL is a no-op.
 */
void hstls_close(SSL *s);

#endif
