/* TLS of the hosts' listeners and gRPC links: see tls.h. */
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* One TLS record's worth of plaintext: what one hstls_write sends. */
#define RECORD_MAX SSL3_RT_MAX_PLAIN_LENGTH

/* ALPN: HTTP/2, as gRPC requires (wire format: length, name). */
static const unsigned char ALPN_H2[] = {2, 'h', '2'};

struct hstls {
  SSL_CTX *ctx;    /* servers' */
  SSL_CTX *client; /* mutual only: outgoing connections' */
  BIO_METHOD *bio; /* the socket BIO, writing with MSG_NOSIGNAL */
  char *cert_file, *key_file, *ca_file; /* ca_file: mutual only */
  const char *cert_flag, *key_flag;     /* for the reasons */
  int min_version;
  char desc[512];
};

/* The reason of the first queued OpenSSL error (without its code), or
 * fallback; clears the queue. */
static const char *ssl_reason(const char *fallback) {
  unsigned long e = ERR_peek_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  ERR_clear_error();
  return r ? r : fallback;
}

/* Encrypted keys would make OpenSSL prompt on the terminal: refuse. */
static int no_password(char *buf, int size, int rwflag, void *ud) {
  (void)buf;
  (void)size;
  (void)rwflag;
  (void)ud;
  return -1;
}

/* Opens path to tell "cannot read" from "not PEM" in the reason. */
static int check_readable(const char *flag, const char *path, char *why,
                          size_t whycap) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(why, whycap, "%s: cannot read '%s': %s", flag, path,
             strerror(errno));
    return -1;
  }
  close(fd);
  return 0;
}

/* "subject CN=x, serial 0A, expires Jan  1 00:00:00 2030 GMT". */
static void describe(SSL_CTX *ctx, char *out, size_t cap) {
  X509 *cert = SSL_CTX_get0_certificate(ctx);
  BIO *b = BIO_new(BIO_s_mem());
  BIGNUM *bn =
      cert ? ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL) : NULL;
  char *serial = bn ? BN_bn2hex(bn) : NULL;
  snprintf(out, cap, "?");
  if (b && serial) {
    BIO_puts(b, "subject ");
    X509_NAME_print_ex(b, X509_get_subject_name(cert), 0,
                       XN_FLAG_ONELINE & ~ASN1_STRFLGS_ESC_MSB);
    BIO_printf(b, ", serial %s, expires ", serial);
    ASN1_TIME_print(b, X509_get0_notAfter(cert));
    char *p;
    long n = BIO_get_mem_data(b, &p);
    snprintf(out, cap, "%.*s", (int)n, p);
  }
  OPENSSL_free(serial);
  BN_free(bn);
  BIO_free(b);
  ERR_clear_error();
}

/*
 * OpenSSL's socket BIO writes with write(2): a peer gone would raise
 * SIGPIPE, which the hosts (and programs embedding libimchat-server) do
 * not have to ignore. The same BIO with send(MSG_NOSIGNAL) instead.
 */
static int nosig_write(BIO *b, const char *data, int len) {
  int fd = -1;
  BIO_get_fd(b, &fd);
  BIO_clear_retry_flags(b);
  ssize_t w = send(fd, data, (size_t)len, MSG_NOSIGNAL);
  if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
    BIO_set_retry_write(b);
  return (int)w;
}

static BIO_METHOD *nosig_method(void) {
  const BIO_METHOD *sock = BIO_s_socket();
  BIO_METHOD *m = BIO_meth_new(BIO_TYPE_SOCKET, "socket, MSG_NOSIGNAL");
  if (m == NULL || BIO_meth_set_write(m, nosig_write) != 1 ||
      BIO_meth_set_read(m, BIO_meth_get_read(sock)) != 1 ||
      BIO_meth_set_puts(m, BIO_meth_get_puts(sock)) != 1 ||
      BIO_meth_set_ctrl(m, BIO_meth_get_ctrl(sock)) != 1 ||
      BIO_meth_set_create(m, BIO_meth_get_create(sock)) != 1 ||
      BIO_meth_set_destroy(m, BIO_meth_get_destroy(sock)) != 1) {
    BIO_meth_free(m);
    return NULL;
  }
  return m;
}

/* The server's choice among the client's ALPN protocols: h2 only; a
 * client offering none still connects (grpcio always offers h2). */
static int select_h2(SSL *s, const unsigned char **out, unsigned char *outlen,
                     const unsigned char *in, unsigned int inlen, void *ud) {
  (void)s;
  (void)ud;
  unsigned char *o;
  if (SSL_select_next_proto(&o, outlen, ALPN_H2, sizeof(ALPN_H2), in, inlen) !=
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_NOACK;
  *out = o;
  return SSL_TLSEXT_ERR_OK;
}

/* Mutual TLS: the peer's certificate must chain to --grpc-tls-ca (a
 * server also refuses a client without one); ALPN h2. 0 or -1. */
static int ctx_mutual(SSL_CTX *ctx, const hstls *t, int server, char *why,
                      size_t whycap) {
  if (SSL_CTX_load_verify_locations(ctx, t->ca_file, NULL) != 1) {
    snprintf(why, whycap, "--grpc-tls-ca: cannot load '%s': %s", t->ca_file,
             ssl_reason("no certificate"));
    return -1;
  }
  SSL_CTX_set_verify(ctx,
                     server ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                            : SSL_VERIFY_PEER,
                     NULL);
  if (!server)
    return SSL_CTX_set_alpn_protos(ctx, ALPN_H2, sizeof(ALPN_H2)) == 0 ? 0 : -1;
  /* No tickets: every connection shows its certificate. */
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  SSL_CTX_set_alpn_select_cb(ctx, select_h2, NULL);
  return 0;
}

/* A server (or, mutual only, client) context from the files; NULL with the
 * reason in why. */
static SSL_CTX *ctx_load(const hstls *t, int server, char *why, size_t whycap) {
  if (check_readable(t->cert_flag, t->cert_file, why, whycap) < 0 ||
      check_readable(t->key_flag, t->key_file, why, whycap) < 0 ||
      (t->ca_file &&
       check_readable("--grpc-tls-ca", t->ca_file, why, whycap) < 0))
    return NULL;
  ERR_clear_error();
  SSL_CTX *ctx =
      SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (ctx == NULL) {
    snprintf(why, whycap, "TLS: %s", ssl_reason("out of memory"));
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, t->min_version);
  /* TLS 1.2 (opt-in): forward secrecy and AEAD only; TLS 1.3's suites
   * all are. */
  SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20");
  /* A client's TCP close without close_notify is just its end; no
   * renegotiation (TLS 1.2), which the loop's reads need not serve. */
  SSL_CTX_set_options(ctx,
                      SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION);
  /* Idle connections hold no record buffers; one record per write, from
   * the loop's scratch buffer or the gateway's queue, which may move
   * between a blocked write and its retry. */
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS |
                            SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  /* Resumption by tickets only: no per-session state on the server. */
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_default_passwd_cb(ctx, no_password);
  if (SSL_CTX_use_certificate_chain_file(ctx, t->cert_file) != 1) {
    snprintf(why, whycap, "%s: cannot load '%s': %s", t->cert_flag,
             t->cert_file, ssl_reason("no certificate"));
    SSL_CTX_free(ctx);
    return NULL;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, t->key_file, SSL_FILETYPE_PEM) != 1) {
    unsigned long e = ERR_peek_last_error();
    if (ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH ||
        ERR_GET_REASON(e) == X509_R_KEY_TYPE_MISMATCH) {
      ERR_clear_error();
      snprintf(why, whycap,
               "%s: '%s' does not match the certificate of %s '%s'",
               t->key_flag, t->key_file, t->cert_flag, t->cert_file);
    } else {
      snprintf(why, whycap,
               "%s: cannot load '%s': %s (a PEM private key, not encrypted)",
               t->key_flag, t->key_file, ssl_reason("no key"));
    }
    SSL_CTX_free(ctx);
    return NULL;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    ERR_clear_error();
    snprintf(why, whycap, "%s: '%s' does not match the certificate of %s '%s'",
             t->key_flag, t->key_file, t->cert_flag, t->cert_file);
    SSL_CTX_free(ctx);
    return NULL;
  }
  if (t->ca_file && ctx_mutual(ctx, t, server, why, whycap) < 0) {
    SSL_CTX_free(ctx);
    return NULL;
  }
  return ctx;
}

/* Both contexts of t (the client's only when mutual), replacing the ones
 * in use only if both load. 0 or -1. */
static int load_all(hstls *t, char *why, size_t whycap) {
  SSL_CTX *ctx = ctx_load(t, 1, why, whycap);
  SSL_CTX *client = NULL;
  if (ctx && t->ca_file && (client = ctx_load(t, 0, why, whycap)) == NULL) {
    SSL_CTX_free(ctx);
    return -1;
  }
  if (ctx == NULL)
    return -1;
  /* Open sessions hold their own references. */
  SSL_CTX_free(t->ctx);
  SSL_CTX_free(t->client);
  t->ctx = ctx;
  t->client = client;
  describe(t->ctx, t->desc, sizeof(t->desc));
  return 0;
}

/* hstls_new and hstls_new_mutual (ca_file NULL: a listener's). */
static int make(hstls **out, const char *cert_file, const char *key_file,
                const char *ca_file, int min_version, char *why,
                size_t whycap) {
  hstls *t = calloc(1, sizeof(*t));
  if (t == NULL || (t->cert_file = strdup(cert_file)) == NULL ||
      (t->key_file = strdup(key_file)) == NULL ||
      (ca_file && (t->ca_file = strdup(ca_file)) == NULL) ||
      (t->bio = nosig_method()) == NULL) {
    snprintf(why, whycap, "TLS: out of memory");
    hstls_del(t);
    return -1;
  }
  t->cert_flag = ca_file ? "--grpc-tls-cert" : "--tls-cert";
  t->key_flag = ca_file ? "--grpc-tls-key" : "--tls-key";
  t->min_version = min_version;
  if (load_all(t, why, whycap) < 0) {
    hstls_del(t);
    return -1;
  }
  *out = t;
  return 0;
}

int hstls_new(hstls **out, const char *cert_file, const char *key_file,
              int min_version, char *why, size_t whycap) {
  return make(out, cert_file, key_file, NULL, min_version, why, whycap);
}

int hstls_new_mutual(hstls **out, const char *cert_file, const char *key_file,
                     const char *ca_file, int min_version, char *why,
                     size_t whycap) {
  return make(out, cert_file, key_file, ca_file, min_version, why, whycap);
}

int hstls_reload(hstls *t, char *why, size_t whycap) {
  return load_all(t, why, whycap);
}

const char *hstls_describe(const hstls *t) {
  return t->desc;
}

void hstls_del(hstls *t) {
  if (t == NULL)
    return;
  SSL_CTX_free(t->ctx);
  SSL_CTX_free(t->client);
  BIO_meth_free(t->bio);
  free(t->cert_file);
  free(t->key_file);
  free(t->ca_file);
  free(t);
}

/* A session of ctx on fd through the MSG_NOSIGNAL BIO, or NULL. */
static SSL *session(hstls *t, SSL_CTX *ctx, int fd) {
  SSL *s = SSL_new(ctx);
  BIO *b = s ? BIO_new(t->bio) : NULL;
  if (b == NULL) {
    ERR_clear_error();
    SSL_free(s);
    return NULL;
  }
  BIO_set_fd(b, fd, BIO_NOCLOSE);
  SSL_set_bio(s, b, b);
  return s;
}

SSL *hstls_accept(hstls *t, int fd) {
  SSL *s = session(t, t->ctx, fd);
  if (s)
    SSL_set_accept_state(s);
  return s;
}

SSL *hstls_connect(hstls *t, int fd, const char *host) {
  if (t->client == NULL)
    return NULL;
  SSL *s = session(t, t->client, fd);
  if (s == NULL)
    return NULL;
  unsigned char ip[16];
  int ok;
  if (inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1) {
    ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s), host) == 1;
  } else {
    SSL_set_hostflags(s, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    ok = SSL_set1_host(s, host) == 1 && SSL_set_tlsext_host_name(s, host) == 1;
  }
  if (!ok) {
    ERR_clear_error();
    SSL_free(s);
    return NULL;
  }
  SSL_set_connect_state(s);
  return s;
}

/* After a fatal error OpenSSL forbids SSL_shutdown: hstls_close then
 * sends nothing. */
static int broken(SSL *s) {
  SSL_set_quiet_shutdown(s, 1);
  ERR_clear_error();
  return HSTLS_ERROR;
}

/* What a failed call (rc <= 0) means for the loop; the reason of an
 * error goes into why (NULL: not wanted). */
static int failed(SSL *s, int rc, char *why, size_t whycap) {
  switch (SSL_get_error(s, rc)) {
  case SSL_ERROR_WANT_READ:
    return HSTLS_WANT_READ;
  case SSL_ERROR_WANT_WRITE:
    return HSTLS_WANT_WRITE;
  case SSL_ERROR_ZERO_RETURN:
    return HSTLS_EOF;
  default:
    if (why)
      snprintf(why, whycap, "%s", ssl_reason("connection broken"));
    return broken(s);
  }
}

int hstls_handshake(SSL *s, char *why, size_t whycap) {
  ERR_clear_error();
  errno = 0;
  int rc = SSL_do_handshake(s);
  if (rc == 1)
    return 1;
  int err = SSL_get_error(s, rc);
  if (err == SSL_ERROR_WANT_READ)
    return HSTLS_WANT_READ;
  if (err == SSL_ERROR_WANT_WRITE)
    return HSTLS_WANT_WRITE;
  long verify = SSL_get_verify_result(s);
  if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
    snprintf(why, whycap, "%s",
             errno ? strerror(errno) : "closed during the handshake");
  else if (verify != X509_V_OK)
    snprintf(why, whycap, "%s: %s", ssl_reason("certificate verify failed"),
             X509_verify_cert_error_string(verify));
  else
    snprintf(why, whycap, "%s", ssl_reason("closed during the handshake"));
  return broken(s);
}

ssize_t hstls_read(SSL *s, void *buf, size_t cap, char *why, size_t whycap) {
  size_t got = 0;
  while (got < cap) {
    size_t n = 0;
    ERR_clear_error();
    if (SSL_read_ex(s, (char *)buf + got, cap - got, &n) != 1) {
      int rv = failed(s, 0, why, whycap);
      return got > 0 ? (ssize_t)got : rv;
    }
    got += n;
  }
  return (ssize_t)got;
}

ssize_t hstls_write(SSL *s, const struct iovec *iov, int iovcnt,
                    unsigned char *scratch, size_t scratch_cap) {
  const void *data = iov[0].iov_base;
  size_t len = iov[0].iov_len;
  /* A large first buffer goes as it is; small ones are gathered, so a
   * batch of frames leaves as one record and one write. */
  if (len < RECORD_MAX && iovcnt > 1) {
    size_t cap = scratch_cap < RECORD_MAX ? scratch_cap : RECORD_MAX;
    len = 0;
    for (int i = 0; i < iovcnt && len < cap; i++) {
      size_t take = iov[i].iov_len;
      if (take > cap - len)
        take = cap - len;
      memcpy(scratch + len, iov[i].iov_base, take);
      len += take;
    }
    data = scratch;
  }
  if (len > RECORD_MAX)
    len = RECORD_MAX;
  size_t n = 0;
  ERR_clear_error();
  if (SSL_write_ex(s, data, len, &n) == 1)
    return (ssize_t)n;
  int rv = failed(s, 0, NULL, 0);
  return rv == HSTLS_EOF ? HSTLS_ERROR : rv;
}

void hstls_close(SSL *s) {
  if (s == NULL)
    return;
  /* One close_notify, without waiting for the peer's; there is none to
   * send before the handshake ends. */
  if (SSL_is_init_finished(s))
    SSL_shutdown(s);
  ERR_clear_error();
  SSL_free(s);
}
