/*
 * TLS of the hosts, on OpenSSL: the listeners' server context
 * (certificate chain, key, minimum version; wss://, https://), the mutual
 * TLS of the cluster's gRPC links (hstls_new_mutual: a server context that
 * requires a client certificate signed by the CA and a client context
 * that presents the same certificate and checks the server's, both with
 * ALPN "h2"), and the non-blocking TLS session of each connection.
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
 * Mutual TLS (the cluster's gRPC): cert_file and key_file as for
 * hstls_new, ca_file a PEM bundle of the CAs that sign the peers'
 * certificates. Sessions from hstls_accept require a client certificate
 * the CA signed; sessions from hstls_connect present cert_file and verify
 * the server's against the CA and the name dialled. Both offer ALPN "h2".
 * Returns 0, or -1 with the reason in why, which names the flag of a bad
 * file (--grpc-tls-cert, --grpc-tls-key, --grpc-tls-ca).
 */
int hstls_new_mutual(hstls **out, const char *cert_file, const char *key_file,
                     const char *ca_file, int min_version, char *why,
                     size_t whycap);

/*
 * Reads the same files again into new contexts for the connections to
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
 * A client session of a mutual t on the connected socket fd, for the
 * server host (the host part of the address dialled): an IP address must
 * be an IP SAN of the server's certificate, a name a DNS SAN (and goes as
 * SNI). NULL if t is not mutual, or out of memory. Free it with
 * hstls_close.
 */
SSL *hstls_connect(hstls *t, int fd, const char *host);

/*
 * One step of the handshake: 1 (done), HSTLS_WANT_READ,
 * HSTLS_WANT_WRITE, or HSTLS_ERROR with the reason in why (with the
 * certificate check's, e.g. "certificate verify failed: hostname
 * mismatch").
 */
int hstls_handshake(SSL *s, char *why, size_t whycap);

/*
 * Reads plaintext, record after record, until cap bytes or the socket
 * runs dry. Returns the count (> 0), or, with nothing read,
 * HSTLS_WANT_READ, HSTLS_WANT_WRITE, HSTLS_EOF or HSTLS_ERROR with the
 * reason in why (why may be NULL; an end after some bytes shows at the
 * next call). In TLS 1.3 a server that refuses the client's certificate
 * says so after the client's handshake has ended: the alert shows here.
 */
ssize_t hstls_read(SSL *s, void *buf, size_t cap, char *why, size_t whycap);

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
