/* Non-blocking OpenSSL client connections: see client_tls.h. */
#include "client_tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

/* The first queued OpenSSL error, or what errno said. */
static void ssl_reason(char *why, size_t whycap, const char *what) {
  unsigned long e = ERR_get_error();
  char buf[256];
  if (e != 0)
    ERR_error_string_n(e, buf, sizeof(buf));
  else
    snprintf(buf, sizeof(buf), "%s",
             errno ? strerror(errno) : "connection closed");
  snprintf(why, whycap, "%s: %s", what, buf);
  ERR_clear_error();
}

SSL_CTX *htls_ctx_new(const char *ca_file, int insecure, char *why,
                      size_t whycap) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == NULL) {
    ssl_reason(why, whycap, "TLS");
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  /* The WebSocket's close frame ends a session; a TCP close without
     close_notify is just the end of the stream. */
  SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
  /* The runner writes from its output queue, which may move and grow
     between a blocked write and its retry. */
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (insecure) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    return ctx;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  int ok = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                   : SSL_CTX_set_default_verify_paths(ctx);
  if (ok != 1) {
    if (ca_file)
      ssl_reason(why, whycap, "cannot load the CA file");
    else
      ssl_reason(why, whycap, "cannot load the system's CAs");
    SSL_CTX_free(ctx);
    return NULL;
  }
  return ctx;
}

SSL *htls_new(SSL_CTX *ctx, int fd, const char *host, char *why,
              size_t whycap) {
  SSL *s = SSL_new(ctx);
  if (s == NULL) {
    ssl_reason(why, whycap, "TLS");
    return NULL;
  }
  unsigned char addr[16];
  int is_ip = inet_pton(AF_INET, host, addr) == 1 ||
              inet_pton(AF_INET6, host, addr) == 1;
  int ok = SSL_set_fd(s, fd);
  /* SNI carries names only (RFC 6066); an address is checked against the
     certificate's IP addresses instead of its DNS names. */
  if (ok == 1 && !is_ip)
    ok = SSL_set_tlsext_host_name(s, host);
  if (ok == 1)
    ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s), host)
               : SSL_set1_host(s, host);
  if (ok != 1) {
    ssl_reason(why, whycap, "TLS");
    SSL_free(s);
    return NULL;
  }
  SSL_set_connect_state(s);
  return s;
}

/*
 * Classifies a failed call: HTLS_AGAIN with the events to wait for, or
 * HTLS_ERROR.
 */
static int blocked(SSL *s, int rc, short *events) {
  switch (SSL_get_error(s, rc)) {
  case SSL_ERROR_WANT_READ:
    *events = POLLIN;
    return HTLS_AGAIN;
  case SSL_ERROR_WANT_WRITE:
    *events = POLLOUT;
    return HTLS_AGAIN;
  default:
    return HTLS_ERROR;
  }
}

int htls_handshake(SSL *s, short *events, char *why, size_t whycap) {
  ERR_clear_error();
  errno = 0;
  int rc = SSL_do_handshake(s);
  if (rc == 1)
    return 1;
  if (blocked(s, rc, events) == HTLS_AGAIN)
    return 0;
  long v = SSL_get_verify_result(s);
  if (v != X509_V_OK) {
    snprintf(why, whycap, "certificate verification failed: %s",
             X509_verify_cert_error_string(v));
    ERR_clear_error();
  } else {
    ssl_reason(why, whycap, "TLS handshake failed");
  }
  return -1;
}

ssize_t htls_recv(SSL *s, void *buf, size_t cap, short *events) {
  size_t n = 0;
  ERR_clear_error();
  if (SSL_read_ex(s, buf, cap, &n) == 1)
    return (ssize_t)n;
  if (SSL_get_error(s, 0) == SSL_ERROR_ZERO_RETURN)
    return 0;
  int rv = blocked(s, 0, events);
  ERR_clear_error();
  return rv;
}

ssize_t htls_send(SSL *s, const void *buf, size_t len, short *events) {
  size_t n = 0;
  ERR_clear_error();
  if (SSL_write_ex(s, buf, len, &n) == 1)
    return (ssize_t)n;
  int rv = blocked(s, 0, events);
  ERR_clear_error();
  return rv;
}
