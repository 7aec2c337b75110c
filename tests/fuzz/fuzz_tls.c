/*
 * libFuzzer target: the hosts' TLS transport (hosts/common/tls.c) on a
 * socket, fed by a real TLS client (OpenSSL on memory BIOs) whose bytes
 * reach the socket in pieces whose sizes the input chooses, so records
 * and handshake messages are cut at every boundary. The first byte picks
 * the mode:
 *   - raw bytes from the input instead of a client (bit 0 and 1 clear);
 *   - a client limited to TLS 1.2 (bit 1) or allowed 1.3;
 *   - with bit 2, one byte of the client's stream flipped.
 * Unflipped, the handshake must complete and the plaintext must cross
 * both ways intact; flipped, whatever the server reads must be a prefix
 * of what the client sent (the records' integrity).
 */
#include "tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define PLAIN_MAX 6000

typedef struct input {
  const uint8_t *p;
  size_t n;
} input;

static uint8_t take(input *in) {
  if (in->n == 0)
    return 0;
  in->n--;
  return *in->p++;
}

/* The server side: hstls on one end of a socket pair. */
typedef struct server {
  SSL *s;
  int fd;
  int up;   /* handshake done */
  int dead; /* an error or the peer's end */
  uint8_t got[PLAIN_MAX];
  size_t n_got;
} server;

static hstls *tls;
static SSL_CTX *client_ctx;

/* A P-256 key and its self-signed certificate, written to memory files
 * for hstls_new, which reads PEM files like --tls-cert and --tls-key. */
static void setup(void) {
  EVP_PKEY *key = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  if (key == NULL || x == NULL)
    abort();
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_set_pubkey(x, key);
  X509_NAME *name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             (const unsigned char *)"localhost", -1, -1, 0);
  X509_set_issuer_name(x, name);
  if (X509_sign(x, key, EVP_sha256()) == 0)
    abort();

  char cert[] = "/dev/shm/imchat-fuzz-cert.XXXXXX";
  char pkey[] = "/dev/shm/imchat-fuzz-key.XXXXXX";
  int cfd = mkstemp(cert), kfd = mkstemp(pkey);
  FILE *cf = cfd >= 0 ? fdopen(cfd, "w") : NULL;
  FILE *kf = kfd >= 0 ? fdopen(kfd, "w") : NULL;
  if (cf == NULL || kf == NULL || PEM_write_X509(cf, x) != 1 ||
      PEM_write_PrivateKey(kf, key, NULL, NULL, 0, NULL, NULL) != 1)
    abort();
  fclose(cf);
  fclose(kf);
  char why[256];
  int rv = hstls_new(&tls, cert, pkey, TLS1_2_VERSION, why, sizeof(why));
  unlink(cert);
  unlink(pkey);
  X509_free(x);
  EVP_PKEY_free(key);
  if (rv != 0 || (client_ctx = SSL_CTX_new(TLS_client_method())) == NULL)
    abort();
  SSL_CTX_set_verify(client_ctx, SSL_VERIFY_NONE, NULL);
}

/* Runs the server until it waits for bytes: the handshake, then reads. */
static void server_step(server *v) {
  while (!v->dead) {
    if (!v->up) {
      char why[256];
      int r = hstls_handshake(v->s, why, sizeof(why));
      if (r == 1) {
        v->up = 1;
        continue;
      }
      if (r == HSTLS_ERROR)
        v->dead = 1;
      return;
    }
    if (v->n_got == sizeof(v->got))
      return;
    ssize_t r =
        hstls_read(v->s, v->got + v->n_got, sizeof(v->got) - v->n_got, NULL, 0);
    if (r > 0) {
      v->n_got += (size_t)r;
      continue;
    }
    if (r == HSTLS_EOF || r == HSTLS_ERROR)
      v->dead = 1;
    return;
  }
}

/* Writes n bytes to the server's socket in pieces the input sizes (the
 * rest at once when the input is used up), stepping the server after
 * each piece. */
static void deliver(server *v, int cfd, const uint8_t *p, size_t n, input *in) {
  size_t off = 0;
  while (off < n) {
    size_t piece = in->n ? 1 + take(in) % 64 : n - off;
    if (piece > n - off)
      piece = n - off;
    if (write(cfd, p + off, piece) != (ssize_t)piece)
      abort(); /* the socket buffer holds far more than one input */
    off += piece;
    server_step(v);
  }
}

/* Moves the client's output to the server and the server's back. */
static void pump(SSL *c, int cfd, server *v, input *in, int *flip) {
  uint8_t buf[1 << 15];
  int n;
  while ((n = BIO_read(SSL_get_wbio(c), buf, sizeof(buf))) > 0) {
    if (*flip && take(in) % 4 == 0) {
      buf[take(in) % n] ^= 1 + take(in) % 255;
      *flip = 2; /* done */
    }
    deliver(v, cfd, buf, (size_t)n, in);
  }
  server_step(v);
  ssize_t r;
  while ((r = read(cfd, buf, sizeof(buf))) > 0)
    BIO_write(SSL_get_rbio(c), buf, (int)r);
}

static void session(server *v, int cfd, input *in, uint8_t mode) {
  SSL *c = SSL_new(client_ctx);
  BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
  if (c == NULL || rb == NULL || wb == NULL)
    abort();
  SSL_set_bio(c, rb, wb);
  SSL_set_connect_state(c);
  if (mode & 2)
    SSL_set_max_proto_version(c, TLS1_2_VERSION);
  int flip = (mode & 4) != 0;

  for (int i = 0; i < 8 && !(v->up && SSL_is_init_finished(c)); i++) {
    SSL_do_handshake(c);
    pump(c, cfd, v, in, &flip);
  }
  int intact = flip != 2;
  if (intact && !(v->up && SSL_is_init_finished(c)))
    abort(); /* a handshake cut into pieces must still complete */

  /* The plaintext, in writes (so records) of sizes the input picks. */
  uint8_t plain[PLAIN_MAX];
  size_t len = (size_t)(take(in) | take(in) << 8) % (PLAIN_MAX + 1);
  for (size_t i = 0; i < len; i++)
    plain[i] = (uint8_t)(i * 31 + 7);
  for (size_t off = 0; SSL_is_init_finished(c) && off < len;) {
    size_t k = 1 + (size_t)(take(in) | take(in) << 8) % 2048;
    if (k > len - off)
      k = len - off;
    if (SSL_write(c, plain + off, (int)k) <= 0)
      break;
    off += k;
  }
  pump(c, cfd, v, in, &flip);
  intact = flip != 2;
  if (memcmp(v->got, plain, v->n_got) != 0 || v->n_got > len)
    abort(); /* plaintext the client never sent */
  if (intact && v->n_got != len)
    abort();

  /* Back: the server's gathered write, then the client reads it. */
  if (intact && len > 0) {
    size_t cut = take(in) % (len + 1);
    struct iovec iov[2] = {{plain, cut}, {plain + cut, len - cut}};
    unsigned char scratch[4096];
    size_t sent = 0;
    while (sent < len) {
      ssize_t w = hstls_write(v->s, iov, 2, scratch, sizeof(scratch));
      if (w <= 0)
        abort(); /* a socket pair with room: no WANT, no error */
      sent += (size_t)w;
      for (int i = 0; i < 2; i++) { /* drop what went */
        size_t d = (size_t)w < iov[i].iov_len ? (size_t)w : iov[i].iov_len;
        iov[i].iov_base = (uint8_t *)iov[i].iov_base + d;
        iov[i].iov_len -= d;
        w -= (ssize_t)d;
      }
    }
    pump(c, cfd, v, in, &flip);
    uint8_t back[PLAIN_MAX];
    size_t got = 0;
    int r;
    while (got < len &&
           (r = SSL_read(c, back + got, (int)(sizeof(back) - got))) > 0)
      got += (size_t)r;
    if (got != len || memcmp(back, plain, len) != 0)
      abort();
  }
  SSL_free(c);
  ERR_clear_error(); /* the client's, after a flipped byte */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (tls == NULL)
    setup();
  input in = {data, size};
  uint8_t mode = take(&in);
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) != 0)
    abort();
  server v = {.s = hstls_accept(tls, sv[0]), .fd = sv[0]};
  if (v.s == NULL)
    abort();
  if ((mode & 3) == 0)
    deliver(&v, sv[1], in.p, in.n, &(input){NULL, 0});
  else
    session(&v, sv[1], &in, mode);
  hstls_close(v.s);
  close(sv[0]);
  close(sv[1]);
  return 0;
}
