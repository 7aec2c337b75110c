/*
 * gRPC server and client sockets on hloop (see grpc_net.h).
 */
#include "grpc_net.h"

#include "clock.h"
#include "log.h"
#include "resolve.h"
#include "tls.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define READ_BUF 65536
/* Reads per readiness callback: the watches are level-triggered, so the
 * rest comes next turn and one busy connection cannot starve the others. */
#define READS_PER_EVENT 4
#define ACCEPT_PAUSE_MS 100
#define ACCEPT_LOG_EVERY_MS 10000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define CONNECT_TIMEOUT_MS 5000
#define HANDSHAKE_TIMEOUT_MS 10000
#define KEEPALIVE_IDLE_S 30
#define KEEPALIVE_INTERVAL_S 10
#define KEEPALIVE_COUNT 3
#define USER_TIMEOUT_MS 60000
#define RESOLVE_POLL_MS 10 /* how often a running name lookup is checked */

static int64_t until(int64_t deadline) {
  int64_t d = deadline - hclock_ms();
  return d > 0 ? d : 0;
}

/* ------------------------------------------------------------------ */
/* A connected socket with its watch                                    */
/* ------------------------------------------------------------------ */

/*
 * With TLS (ssl set) the handshake runs first, from the socket's events
 * (its end is the caller's to notice: sock_handshake); a TLS read may
 * need EPOLLOUT (tls_out) and a TLS write may need input (wr_wait).
 */
typedef struct sock {
  hloop *l;
  int fd; /* -1 once closed */
  hloop_watch *w;
  int out_armed;    /* a write came back short: EPOLLOUT until it drains */
  int pause_reads;  /* ... and no reads meanwhile (a server's connections) */
  SSL *ssl;         /* TLS, or NULL */
  int handshaking;  /* the TLS handshake has not ended */
  int tls_out;      /* the handshake or a read waits for EPOLLOUT */
  int wr_wait;      /* a TLS write waits for input */
  uint8_t *scratch; /* TLS_SCRATCH bytes gathering a record (the owner's) */
  char why[192];    /* the last TLS failure */
} sock;

#define TLS_SCRATCH SSL3_RT_MAX_PLAIN_LENGTH

static uint32_t sock_events(const sock *k) {
  uint32_t ev = EPOLLIN;
  if (k->out_armed)
    ev = k->pause_reads ? EPOLLOUT : EPOLLIN | EPOLLOUT;
  return k->tls_out ? ev | EPOLLOUT : ev;
}

/* EPOLLOUT wanted (a short write, or TLS): 0, or IMC_ERR_IO. */
static int sock_arm(sock *k, int *flag) {
  *flag = 1;
  return hloop_watch_set(k->l, k->w, sock_events(k)) < 0 ? IMC_ERR_IO : 0;
}

/* The TLS part of sock_send. */
static ssize_t sock_send_tls(sock *k, const struct iovec *iov, int iovcnt) {
  if (k->handshaking || k->wr_wait)
    return IMC_ERR_WOULDBLOCK;
  ssize_t w = hstls_write(k->ssl, iov, iovcnt, k->scratch, TLS_SCRATCH);
  if (w >= 0)
    return w;
  if (w == HSTLS_WANT_WRITE)
    return sock_arm(k, &k->out_armed) < 0 ? IMC_ERR_IO : IMC_ERR_WOULDBLOCK;
  if (w == HSTLS_WANT_READ) {
    k->wr_wait = 1;
    return IMC_ERR_WOULDBLOCK;
  }
  return IMC_ERR_IO;
}

/* The transport's send: bytes written, or IMC_ERR_WOULDBLOCK (no syscall
 * while EPOLLOUT is armed), or IMC_ERR_IO / IMC_ERR_CLOSED. */
static ssize_t sock_send(sock *k, const struct iovec *iov, int iovcnt) {
  if (k->fd < 0)
    return IMC_ERR_CLOSED;
  if (k->out_armed)
    return IMC_ERR_WOULDBLOCK;
  if (k->ssl)
    return sock_send_tls(k, iov, iovcnt);
  struct msghdr mh;
  memset(&mh, 0, sizeof(mh));
  mh.msg_iov = (struct iovec *)iov;
  mh.msg_iovlen = (size_t)iovcnt;
  size_t want = 0;
  for (int i = 0; i < iovcnt; i++)
    want += iov[i].iov_len;
  ssize_t n;
  do
    n = sendmsg(k->fd, &mh, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
    return IMC_ERR_IO;
  if (n >= 0 && (size_t)n == want)
    return n;
  if (sock_arm(k, &k->out_armed) < 0)
    return IMC_ERR_IO;
  return n < 0 ? IMC_ERR_WOULDBLOCK : n;
}

/* EPOLLOUT came: back to reading only. */
static void sock_drained(sock *k) {
  k->out_armed = 0;
  hloop_watch_set(k->l, k->w, sock_events(k));
}

static void sock_close(sock *k) {
  hstls_close(k->ssl); /* close_notify, best effort */
  k->ssl = NULL;
  if (k->fd < 0)
    return;
  if (k->w)
    hloop_watch_del(k->l, k->w); /* before close: the fd may be reused */
  k->w = NULL;
  close(k->fd);
  k->fd = -1;
}

/*
 * One step of the TLS handshake: 1 once it has ended, 0 while it waits
 * for the socket, -1 if it failed (the reason in k->why).
 */
static int sock_handshake(sock *k) {
  int rv = hstls_handshake(k->ssl, k->why, sizeof(k->why));
  if (rv == 1) {
    k->handshaking = 0;
    return 1;
  }
  if (rv == HSTLS_WANT_READ)
    return 0;
  if (rv == HSTLS_WANT_WRITE) {
    if (sock_arm(k, &k->tls_out) == 0)
      return 0;
    snprintf(k->why, sizeof(k->why), "epoll_ctl: %s", strerror(errno));
  }
  return -1;
}

/* Plaintext the TLS session holds already: no epoll event will tell. */
static int sock_buffered(const sock *k) {
  return k->ssl && SSL_has_pending(k->ssl);
}

/* EPOLLOUT came for TLS: back to the events without it. */
static void sock_tls_out_done(sock *k) {
  k->tls_out = 0;
  hloop_watch_set(k->l, k->w, sock_events(k));
}

/* > 0 bytes read, 0 at EOF, -EAGAIN for nothing now, or -errno (-EPROTO:
 * TLS, the reason in k->why). */
static ssize_t sock_read(sock *k, uint8_t *buf, size_t cap) {
  if (k->ssl) {
    ssize_t r = hstls_read(k->ssl, buf, cap, k->why, sizeof(k->why));
    if (r >= 0)
      return r;
    if (r == HSTLS_EOF)
      return 0;
    if (r == HSTLS_WANT_READ)
      return -EAGAIN;
    if (r == HSTLS_WANT_WRITE && sock_arm(k, &k->tls_out) == 0)
      return -EAGAIN;
    return -EPROTO;
  }
  ssize_t n;
  do
    n = read(k->fd, buf, cap);
  while (n < 0 && errno == EINTR);
  if (n >= 0)
    return n;
  return errno == EWOULDBLOCK ? -EAGAIN : -errno;
}

/*
 * No Nagle delay for small frames. Keepalive and a user timeout: a peer
 * that vanished without a FIN or RST (a host down, a partition) is
 * noticed within about a minute, idle or not, instead of never.
 */
static void tune_socket(int fd) {
  static const struct {
    int level, name, value;
  } opts[] = {
      {IPPROTO_TCP, TCP_NODELAY, 1},
      {SOL_SOCKET, SO_KEEPALIVE, 1},
      {IPPROTO_TCP, TCP_KEEPIDLE, KEEPALIVE_IDLE_S},
      {IPPROTO_TCP, TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S},
      {IPPROTO_TCP, TCP_KEEPCNT, KEEPALIVE_COUNT},
      {IPPROTO_TCP, TCP_USER_TIMEOUT, USER_TIMEOUT_MS},
  };
  for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++)
    setsockopt(fd, opts[i].level, opts[i].name, &opts[i].value, sizeof(int));
}

static void format_addr(const struct sockaddr *sa, socklen_t len, char *out,
                        size_t cap) {
  char h[NI_MAXHOST], s[NI_MAXSERV];
  if (cap == 0)
    return;
  if (getnameinfo(sa, len, h, sizeof(h), s, sizeof(s),
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    snprintf(out, cap, "?");
    return;
  }
  snprintf(out, cap, sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", h, s);
}

/* ------------------------------------------------------------------ */
/* The server                                                           */
/* ------------------------------------------------------------------ */

typedef struct sconn {
  sock k;
  hgrpc_server *s;
  imc_grpc_conn *c; /* NULL during the TLS handshake */
  int busy; /* inside its event callback: a close there defers the free */
  int dead; /* closed while busy */
  int64_t hs_deadline; /* the TLS handshake's end at the latest */
  char peer[64];       /* the client's address, for the log */
  struct sconn *prev, *next;
} sconn;

struct hgrpc_server {
  hloop *l;
  imc_grpc_server *srv;
  hstls *tls;        /* mutual TLS, or NULL */
  size_t handshakes; /* connections in their TLS handshake */
  int lfd;           /* -1 once closed */
  hloop_watch *lw;
  int accept_paused;
  int64_t accept_resume_at;
  int64_t accept_logged_at;
  sconn *conns;
  int dirty;              /* input or connections since the last flush */
  size_t flushed_pending; /* imc_grpc_server_pending() after that flush */
  uint8_t buf[READ_BUF];
  uint8_t scratch[TLS_SCRATCH];
};

/* Closes sc's socket and forgets it; freed now, or by its callback. */
static void sconn_drop(sconn *sc) {
  hgrpc_server *s = sc->s;
  if (sc->k.handshaking)
    s->handshakes--;
  sock_close(&sc->k);
  if (sc->prev)
    sc->prev->next = sc->next;
  else
    s->conns = sc->next;
  if (sc->next)
    sc->next->prev = sc->prev;
  if (sc->busy)
    sc->dead = 1;
  else
    free(sc);
}

static ssize_t srv_send(void *ud, void *conn_ud, const struct iovec *iov,
                        int iovcnt) {
  (void)ud;
  return sock_send(&((sconn *)conn_ud)->k, iov, iovcnt);
}

static void srv_close(void *ud, void *conn_ud) {
  (void)ud;
  sconn_drop(conn_ud);
}

static const imc_transport_vtbl srv_transport = {
    .struct_size = sizeof(imc_transport_vtbl),
    .send = srv_send,
    .close = srv_close,
};

static void sconn_read(sconn *sc) {
  hgrpc_server *s = sc->s;
  for (int i = 0; (i < READS_PER_EVENT || sock_buffered(&sc->k)) && !sc->dead;
       i++) {
    ssize_t n = sock_read(&sc->k, s->buf, sizeof(s->buf));
    if (n == -EAGAIN)
      return;
    if (n <= 0) {
      imc_grpc_conn_closed(sc->c);
      sconn_drop(sc);
      return;
    }
    if (imc_grpc_conn_recv(sc->c, s->buf, (size_t)n) < 0)
      return; /* the transport's close dropped it */
    if (sc->k.out_armed)
      return; /* the client is not reading: neither do we */
  }
}

/* The TLS handshake goes on; once it has ended, the gRPC connection
 * begins. Returns 1 when sc is open for reads. */
static int sconn_handshake(sconn *sc) {
  hgrpc_server *s = sc->s;
  int rv = sock_handshake(&sc->k);
  if (rv == 0)
    return 0;
  if (rv < 0) {
    hlog_warn("grpc: TLS handshake with %s failed: %s", sc->peer, sc->k.why);
    sconn_drop(sc);
    return 0;
  }
  s->handshakes--;
  if (imc_grpc_conn_new(s->srv, &sc->c, sc) < 0) {
    hlog_warn("grpc: %s: out of memory", sc->peer);
    sconn_drop(sc);
    return 0;
  }
  s->dirty = 1; /* the server's SETTINGS */
  return 1;
}

static void sconn_event(void *ud, int fd, uint32_t ev) {
  sconn *sc = ud;
  (void)fd;
  int readable = (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0;
  sc->s->dirty = 1;
  sc->busy = 1;
  if ((ev & EPOLLOUT) && sc->k.tls_out) {
    sock_tls_out_done(&sc->k);
    readable = 1; /* what the handshake or a read waited for */
  }
  if (sc->k.handshaking && !sconn_handshake(sc)) {
    sc->busy = 0;
    if (sc->dead)
      free(sc);
    return;
  }
  if (!sc->dead && (ev & EPOLLOUT) && sc->k.out_armed) {
    sock_drained(&sc->k);
    imc_grpc_conn_writable(sc->c);
    readable |= sock_buffered(&sc->k); /* reads paused meanwhile */
  }
  if (!sc->dead && readable && sc->k.wr_wait) {
    sc->k.wr_wait = 0; /* a TLS write waited for input */
    imc_grpc_conn_writable(sc->c);
  }
  if (!sc->dead && readable)
    sconn_read(sc);
  sc->busy = 0;
  if (sc->dead)
    free(sc);
}

static void sconn_open(hgrpc_server *s, int fd, const struct sockaddr *sa,
                       socklen_t salen) {
  sconn *sc = calloc(1, sizeof(*sc));
  if (sc == NULL) {
    close(fd);
    return;
  }
  sc->s = s;
  sc->k.l = s->l;
  sc->k.fd = fd;
  sc->k.pause_reads = 1;
  sc->k.scratch = s->scratch;
  format_addr(sa, salen, sc->peer, sizeof(sc->peer));
  tune_socket(fd);
  if (s->tls && (sc->k.ssl = hstls_accept(s->tls, fd)) == NULL) {
    close(fd);
    free(sc);
    return;
  }
  if (hloop_watch_add(s->l, fd, EPOLLIN, sconn_event, sc, &sc->k.w) < 0) {
    hstls_close(sc->k.ssl);
    close(fd);
    free(sc);
    return;
  }
  if (sc->k.ssl) {
    sc->k.handshaking = 1;
    sc->hs_deadline = hclock_ms() + HANDSHAKE_TIMEOUT_MS;
    s->handshakes++;
  } else if (imc_grpc_conn_new(s->srv, &sc->c, sc) < 0) {
    sock_close(&sc->k);
    free(sc);
    return;
  }
  sc->next = s->conns;
  if (sc->next)
    sc->next->prev = sc;
  s->conns = sc;
  s->dirty = 1; /* the server's SETTINGS */
}

/* The earliest end of a TLS handshake under way, or -1. */
static int64_t handshakes_due(const hgrpc_server *s) {
  int64_t t = -1;
  if (s->handshakes == 0)
    return -1;
  for (const sconn *sc = s->conns; sc; sc = sc->next)
    if (sc->k.handshaking)
      t = htimeout_min(t, until(sc->hs_deadline));
  return t;
}

/* Closes the connections whose TLS handshake took too long. */
static void handshakes_expire(hgrpc_server *s) {
  int64_t now = hclock_ms();
  sconn *next;
  for (sconn *sc = s->handshakes ? s->conns : NULL; sc; sc = next) {
    next = sc->next;
    if (sc->k.handshaking && now >= sc->hs_deadline) {
      hlog_warn("grpc: TLS handshake with %s: not done in %d s; closed",
                sc->peer, HANDSHAKE_TIMEOUT_MS / 1000);
      sconn_drop(sc);
    }
  }
}

/* Out of fds (or memory): a level-triggered listener would wake us at
 * once, forever. Stop watching it for a moment instead. */
static void pause_accept(hgrpc_server *s, int err) {
  int64_t now = hclock_ms();
  if (now - s->accept_logged_at >= ACCEPT_LOG_EVERY_MS) {
    hlog_warn("grpc accept: %s; pausing accepts for %d ms", strerror(err),
              ACCEPT_PAUSE_MS);
    s->accept_logged_at = now;
  }
  hloop_watch_set(s->l, s->lw, 0);
  s->accept_paused = 1;
  s->accept_resume_at = now + ACCEPT_PAUSE_MS;
}

static void on_accept(void *ud, int fd, uint32_t ev) {
  hgrpc_server *s = ud;
  (void)ev;
  while (s->lfd >= 0 && !s->accept_paused) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int cfd =
        accept4(fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd >= 0) {
      sconn_open(s, cfd, (struct sockaddr *)&ss, sl);
      continue;
    }
    switch (errno) {
    case EAGAIN:
#if EWOULDBLOCK != EAGAIN
    case EWOULDBLOCK:
#endif
      return;
    case EINTR:
    case ECONNABORTED:
    case EPROTO:
    case EPERM:
      continue;
    default: /* EMFILE, ENFILE, ENOBUFS, ENOMEM */
      pause_accept(s, errno);
      return;
    }
  }
}

/*
 * The hook. Output appears at three places: our own callbacks (dirty),
 * deadlines, and handlers answering from elsewhere (another hook, a
 * component's fd callback): those lower the pending count, so a count
 * below the one at the last flush means answers are waiting.
 */
static int64_t srv_next(void *ud) {
  hgrpc_server *s = ud;
  if (s->dirty || imc_grpc_server_pending(s->srv) != s->flushed_pending)
    return 0;
  int64_t t = imc_grpc_server_next_timeout_ms(s->srv);
  if (s->accept_paused)
    t = htimeout_min(t, until(s->accept_resume_at));
  return htimeout_min(t, handshakes_due(s));
}

static void srv_run(void *ud) {
  hgrpc_server *s = ud;
  if (imc_grpc_server_next_timeout_ms(s->srv) == 0)
    imc_grpc_server_on_timeout(s->srv);
  if (handshakes_due(s) == 0)
    handshakes_expire(s);
  if (s->accept_paused && hclock_ms() >= s->accept_resume_at) {
    s->accept_paused = 0;
    if (s->lw)
      hloop_watch_set(s->l, s->lw, EPOLLIN);
  }
  imc_grpc_server_flush(s->srv);
  s->dirty = 0;
  s->flushed_pending = imc_grpc_server_pending(s->srv);
}

int hgrpc_server_new(hgrpc_server **out, hloop *l, imc_grpc_server_options *opt,
                     const char *listen_addr, char *bound, size_t boundcap) {
  return hgrpc_server_new_tls(out, l, opt, listen_addr, NULL, bound, boundcap);
}

int hgrpc_server_new_tls(hgrpc_server **out, hloop *l,
                         imc_grpc_server_options *opt, const char *listen_addr,
                         hstls *tls, char *bound, size_t boundcap) {
  if (out == NULL || l == NULL || opt == NULL || listen_addr == NULL ||
      (bound == NULL && boundcap > 0))
    return -EINVAL;
  *out = NULL;
  hgrpc_server *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return -ENOMEM;
  s->l = l;
  s->tls = tls;
  s->lfd = -1;
  int rv = imc_grpc_server_options_set_transport(opt, &srv_transport, s);
  if (rv == 0)
    rv = imc_grpc_server_options_set_log(opt, hlog_imc_cb, NULL,
                                         hlog_get_level());
  if (rv == 0)
    rv = imc_grpc_server_new(&s->srv, opt, NULL);
  if (rv < 0) {
    free(s);
    return rv == IMC_ERR_NOMEM ? -ENOMEM : -EINVAL;
  }
  rv = hloop_listen_socket("grpc listen", listen_addr, bound, boundcap);
  if (rv >= 0) {
    s->lfd = rv;
    rv = hloop_watch_add(l, s->lfd, EPOLLIN, on_accept, s, &s->lw);
  }
  if (rv >= 0)
    rv = hloop_add_hook(l, srv_next, srv_run, s);
  if (rv < 0) {
    hgrpc_server_stop_accepting(s);
    imc_grpc_server_del(s->srv);
    free(s);
    return rv;
  }
  *out = s;
  return 0;
}

imc_grpc_server *hgrpc_server_get(hgrpc_server *s) {
  return s->srv;
}

void hgrpc_server_stop_accepting(hgrpc_server *s) {
  if (s->lfd < 0)
    return;
  if (s->lw)
    hloop_watch_del(s->l, s->lw);
  s->lw = NULL;
  close(s->lfd);
  s->lfd = -1;
  s->accept_paused = 0;
}

void hgrpc_server_shutdown(hgrpc_server *s) {
  hgrpc_server_stop_accepting(s);
  imc_grpc_server_shutdown(s->srv);
  s->dirty = 1; /* the GOAWAYs */
}

size_t hgrpc_server_pending(const hgrpc_server *s) {
  return imc_grpc_server_pending(s->srv);
}

void hgrpc_server_del(hgrpc_server *s) {
  if (s == NULL)
    return;
  hgrpc_server_stop_accepting(s);
  while (s->conns) {
    sconn *sc = s->conns;
    if (sc->c)
      imc_grpc_conn_closed(sc->c);
    sconn_drop(sc);
  }
  imc_grpc_server_del(s->srv);
  hloop_del_hook(s->l, srv_run, s);
  free(s);
}

/* ------------------------------------------------------------------ */
/* The peer                                                             */
/* ------------------------------------------------------------------ */

typedef struct pconn {
  sock k;
  hgrpc_peer *p;
  imc_grpc_client *c; /* NULL while connecting (and in the TLS handshake) */
  int64_t connect_deadline; /* until the owner has the client */
  struct pconn *next;       /* on p->draining */
} pconn;

struct hgrpc_peer {
  hloop *l;
  char *addr;
  char host[256]; /* addr's host: the name the server's certificate has */
  char port[8];
  hstls *tls; /* mutual TLS, or NULL */
  struct sockaddr_storage sa;
  socklen_t salen;
  /* A host name is looked up again before each round of connects: the
   * addresses behind it change (a restarted pod, a moved service). */
  int named;
  hresolve *lookup;               /* running, or done with next_ai */
  const struct addrinfo *next_ai; /* the address to try next, in lookup */
  imc_grpc_client_options *copt;
  hgrpc_client_fn on_client;
  void *ud;
  pconn *cur;       /* connecting or connected; NULL: waiting to retry */
  int given;        /* cur's client went to on_client */
  pconn *draining;  /* given up on, finishing their calls in flight */
  int64_t retry_at; /* while cur is NULL */
  int64_t backoff_ms;
  int outage_logged; /* the current outage has its log line */
  unsigned long attempts;
  int dirty;              /* input or a new client since the last flush */
  size_t flushed_pending; /* cur's pending calls after that flush */
  uint8_t buf[READ_BUF];
  uint8_t scratch[TLS_SCRATCH];
};

static ssize_t peer_send(void *ud, void *conn_ud, const struct iovec *iov,
                         int iovcnt) {
  (void)ud;
  return sock_send(&((pconn *)conn_ud)->k, iov, iovcnt);
}

/* Only the socket: the client is deleted once the library call that
 * closed it has returned (pconn_check). */
static void peer_close(void *ud, void *conn_ud) {
  (void)ud;
  sock_close(&((pconn *)conn_ud)->k);
}

static const imc_transport_vtbl peer_transport = {
    .struct_size = sizeof(imc_transport_vtbl),
    .send = peer_send,
    .close = peer_close,
};

static void pconn_free(pconn *pc) {
  sock_close(&pc->k);
  imc_grpc_client_del(pc->c);
  free(pc);
}

static void unlink_draining(hgrpc_peer *p, pconn *pc) {
  for (pconn **pp = &p->draining; *pp; pp = &(*pp)->next) {
    if (*pp == pc) {
      *pp = pc->next;
      return;
    }
  }
}

static void schedule_retry(hgrpc_peer *p) {
  p->retry_at = hclock_ms() + p->backoff_ms;
  p->backoff_ms =
      p->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : p->backoff_ms * 2;
}

/* cur stops taking calls: the owner lets go of its client, and a new
 * connection follows after the backoff. */
static void peer_release(hgrpc_peer *p, const char *why) {
  int given = p->given;
  p->cur = NULL;
  p->given = 0;
  schedule_retry(p);
  if (given) {
    hlog_warn("grpc peer %s: %s", p->addr, why);
    p->outage_logged = 1;
    p->on_client(p->ud, NULL);
  }
}

/* The round of connects to a name's addresses is over. */
static void peer_forget_addrs(hgrpc_peer *p) {
  hresolve_end(p->lookup);
  p->lookup = NULL;
  p->next_ai = NULL;
}

static void peer_connect_failed(hgrpc_peer *p, const char *why) {
  pconn *pc = p->cur;
  p->cur = NULL;
  if (pc)
    pconn_free(pc);
  if (p->next_ai != NULL) { /* the name's next address, at once */
    p->retry_at = hclock_ms();
    return;
  }
  if (!p->outage_logged) {
    hlog_warn("grpc peer %s: cannot connect: %s; retrying", p->addr, why);
    p->outage_logged = 1;
  }
  schedule_retry(p);
}

/* The connection is gone: its calls end UNAVAILABLE, the client goes.
 * Before the owner had the client, the connection failed. */
static void pconn_lost(pconn *pc, const char *why) {
  hgrpc_peer *p = pc->p;
  if (pc == p->cur && !p->given) {
    peer_connect_failed(p, why);
    return;
  }
  if (pc == p->cur)
    peer_release(p, why);
  else
    unlink_draining(p, pc);
  sock_close(&pc->k);
  imc_grpc_client_closed(pc->c);
  pconn_free(pc);
}

/*
 * After a library call on pc's client returned rv: a lost connection
 * goes, a client that stopped taking calls (GOAWAY) drains, a drained
 * one goes. Returns 1 when pc is freed.
 */
static int pconn_check(pconn *pc, int rv) {
  hgrpc_peer *p = pc->p;
  if (rv < 0 || pc->k.fd < 0) {
    pconn_lost(pc, "connection lost");
    return 1;
  }
  if (pc == p->cur) {
    if (imc_grpc_client_usable(pc->c))
      return 0;
    peer_release(p, "the server is going away (GOAWAY)");
    pc->next = p->draining;
    p->draining = pc;
  }
  if (imc_grpc_client_pending(pc->c) > 0)
    return 0;
  unlink_draining(p, pc);
  pconn_free(pc);
  return 1;
}

/* cur's client goes to the owner. */
static void peer_give(hgrpc_peer *p, pconn *pc) {
  p->backoff_ms = BACKOFF_MIN_MS;
  p->outage_logged = 0;
  p->given = 1;
  peer_forget_addrs(p);
  hlog_info("grpc peer %s: connected%s", p->addr, pc->k.ssl ? " (TLS)" : "");
  p->on_client(p->ud, pc->c);
}

/* The connection (and its TLS handshake) is up: the client, whose
 * preface leaves at the next flush. On plaintext the owner has it at
 * once; on TLS once the server's first bytes came, since in TLS 1.3 a
 * server refuses the client's certificate after the client's handshake
 * has ended. Returns 0, or -1 when it failed (pc is freed). */
static int peer_ready(hgrpc_peer *p, pconn *pc) {
  if (imc_grpc_client_new(&pc->c, p->copt, NULL) < 0) {
    peer_connect_failed(p, "out of memory");
    return -1;
  }
  imc_grpc_client_set_user_data(pc->c, pc);
  if (hloop_watch_set(p->l, pc->k.w, sock_events(&pc->k)) < 0) {
    peer_connect_failed(p, strerror(errno));
    return -1;
  }
  p->dirty = 1; /* the connection preface */
  if (pc->k.ssl == NULL)
    peer_give(p, pc);
  return 0;
}

/* One step of cur's TLS handshake. Returns 1 once it has ended and the
 * client is made, 0 while it goes on, -1 if it failed (pc is freed). */
static int peer_handshake(hgrpc_peer *p, pconn *pc) {
  char why[sizeof(pc->k.why) + 16];
  int rv = sock_handshake(&pc->k);
  if (rv > 0)
    return peer_ready(p, pc) == 0 ? 1 : -1;
  if (rv < 0) {
    snprintf(why, sizeof(why), "TLS: %s", pc->k.why);
    peer_connect_failed(p, why);
  }
  return rv;
}

/* cur's connect completed (EPOLLOUT): check it, then TLS or the client. */
static void peer_connected(hgrpc_peer *p, pconn *pc) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(pc->k.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
    err = errno;
  if (err != 0) {
    peer_connect_failed(p, strerror(err));
    return;
  }
  if (p->tls == NULL) {
    peer_ready(p, pc);
    return;
  }
  if ((pc->k.ssl = hstls_connect(p->tls, pc->k.fd, p->host)) == NULL) {
    peer_connect_failed(p, "TLS: out of memory");
    return;
  }
  pc->k.handshaking = 1;
  pc->connect_deadline = hclock_ms() + HANDSHAKE_TIMEOUT_MS;
  /* No more EPOLLOUT of the connect: the handshake asks for it. */
  if (hloop_watch_set(p->l, pc->k.w, sock_events(&pc->k)) < 0) {
    peer_connect_failed(p, strerror(errno));
    return;
  }
  peer_handshake(p, pc);
}

static void pconn_event(void *ud, int fd, uint32_t ev) {
  pconn *pc = ud;
  hgrpc_peer *p = pc->p;
  (void)fd;
  int readable = (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0;
  p->dirty = 1;
  if ((ev & EPOLLOUT) && pc->k.tls_out) {
    sock_tls_out_done(&pc->k);
    readable = 1; /* what the handshake or a read waited for */
  }
  if (pc->c == NULL && !pc->k.handshaking) {
    peer_connected(p, pc);
    return;
  }
  /* Ended, the handshake may leave the server's first bytes read. */
  if (pc->c == NULL && peer_handshake(p, pc) <= 0)
    return;
  if ((ev & EPOLLOUT) && pc->k.out_armed) {
    sock_drained(&pc->k);
    if (pconn_check(pc, imc_grpc_client_flush(pc->c)))
      return;
  }
  readable |= sock_buffered(&pc->k);
  if (readable && pc->k.wr_wait) {
    pc->k.wr_wait = 0; /* a TLS write waited for input */
    if (pconn_check(pc, imc_grpc_client_flush(pc->c)))
      return;
  }
  if (!readable)
    return;
  for (int i = 0; i < READS_PER_EVENT || sock_buffered(&pc->k); i++) {
    ssize_t n = sock_read(&pc->k, p->buf, sizeof(p->buf));
    if (n == -EAGAIN)
      return;
    if (n == -EPROTO) {
      char why[sizeof(pc->k.why) + 8];
      snprintf(why, sizeof(why), "TLS: %s", pc->k.why);
      pconn_lost(pc, why);
      return;
    }
    if (n <= 0) {
      pconn_lost(pc, n == 0 ? "connection closed by the server"
                            : strerror((int)-n));
      return;
    }
    if (pc == p->cur && !p->given)
      peer_give(p, pc); /* the server took our certificate */
    if (pconn_check(pc, imc_grpc_client_recv(pc->c, p->buf, (size_t)n)))
      return;
  }
}

static void peer_connect(hgrpc_peer *p) {
  p->attempts++;
  pconn *pc = calloc(1, sizeof(*pc));
  if (pc == NULL) {
    peer_connect_failed(p, "out of memory");
    return;
  }
  pc->p = p;
  pc->k.l = p->l;
  pc->k.scratch = p->scratch;
  pc->k.fd =
      socket(p->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  p->cur = pc;
  if (pc->k.fd < 0) {
    peer_connect_failed(p, strerror(errno));
    return;
  }
  tune_socket(pc->k.fd);
  /* Connected or not, the socket reports the outcome as EPOLLOUT. */
  if (connect(pc->k.fd, (struct sockaddr *)&p->sa, p->salen) < 0 &&
      errno != EINPROGRESS) {
    peer_connect_failed(p, strerror(errno));
    return;
  }
  int rv = hloop_watch_add(p->l, pc->k.fd, EPOLLOUT, pconn_event, pc, &pc->k.w);
  if (rv < 0) {
    peer_connect_failed(p, strerror(-rv));
    return;
  }
  pc->connect_deadline = hclock_ms() + CONNECT_TIMEOUT_MS;
}

/* A connect when one is due: to the numeric address, or to the next
 * address of the name, looked up first (polled every RESOLVE_POLL_MS). */
static void peer_attempt(hgrpc_peer *p) {
  if (p->named && p->next_ai == NULL) {
    if (p->lookup == NULL && hresolve_start(&p->lookup, p->host, p->port) < 0) {
      peer_connect_failed(p, "cannot start a name lookup");
      return;
    }
    const struct addrinfo *res;
    int rv = hresolve_result(p->lookup, &res);
    if (rv == HRESOLVE_BUSY) {
      p->retry_at = hclock_ms() + RESOLVE_POLL_MS; /* looked at again then */
      return;
    }
    if (rv != 0) {
      char why[300];
      snprintf(why, sizeof(why), "cannot resolve %s: %s", p->host,
               gai_strerror(rv));
      peer_forget_addrs(p);
      peer_connect_failed(p, why);
      return;
    }
    p->next_ai = res;
  }
  if (p->named) {
    const struct addrinfo *ai = p->next_ai;
    int fits = ai->ai_addrlen <= sizeof(p->sa);
    if (fits) {
      memcpy(&p->sa, ai->ai_addr, ai->ai_addrlen);
      p->salen = ai->ai_addrlen;
    }
    p->next_ai = ai->ai_next;
    if (p->next_ai == NULL) /* the last one: the next round looks up again */
      peer_forget_addrs(p);
    if (!fits) {
      peer_connect_failed(p, "an address too long");
      return;
    }
  }
  peer_connect(p);
}

/* The hook, as the server's: calls started from elsewhere raise cur's
 * pending count (only our own callbacks complete calls). */
static int64_t peer_next(void *ud) {
  hgrpc_peer *p = ud;
  pconn *pc = p->cur;
  if (p->dirty ||
      (pc && pc->c && imc_grpc_client_pending(pc->c) != p->flushed_pending))
    return 0;
  int64_t t;
  if (pc == NULL)
    t = until(p->retry_at);
  else if (pc->c == NULL)
    t = until(pc->connect_deadline);
  else if (!p->given)
    t = htimeout_min(until(pc->connect_deadline),
                     imc_grpc_client_next_timeout_ms(pc->c));
  else
    t = imc_grpc_client_next_timeout_ms(pc->c);
  for (pconn *d = p->draining; d; d = d->next)
    t = htimeout_min(t, imc_grpc_client_next_timeout_ms(d->c));
  return t;
}

/* Deadlines, then the flush (pc may be freed). */
static void pconn_service(pconn *pc) {
  if (imc_grpc_client_next_timeout_ms(pc->c) == 0)
    imc_grpc_client_on_timeout(pc->c);
  pconn_check(pc, imc_grpc_client_flush(pc->c));
}

static void peer_run(void *ud) {
  hgrpc_peer *p = ud;
  pconn *next;
  for (pconn *d = p->draining; d; d = next) {
    next = d->next;
    pconn_service(d);
  }
  pconn *pc = p->cur;
  if (pc == NULL) {
    if (hclock_ms() >= p->retry_at)
      peer_attempt(p);
  } else if (pc->c == NULL || !p->given) {
    if (hclock_ms() >= pc->connect_deadline)
      peer_connect_failed(p, pc->k.ssl ? "TLS: timed out" : "timed out");
    else if (pc->c)
      pconn_service(pc);
  } else {
    pconn_service(pc);
  }
  p->dirty = 0;
  pc = p->cur;
  p->flushed_pending = pc && pc->c ? imc_grpc_client_pending(pc->c) : 0;
}

/* addr's host and port; a numeric address goes into p->sa at once, a
 * name is looked up at each round of connects. Returns 0 or -EINVAL with
 * the reason logged. */
static int peer_resolve(hgrpc_peer *p, const char *addr) {
  uint16_t port;
  const char *why;
  if (hloop_split_addr(addr, p->host, sizeof(p->host), &port, &why) < 0) {
    hlog_error("grpc peer %s: %s", addr, why);
    return -EINVAL;
  }
  if (p->host[0] == '\0' || port == 0) {
    hlog_error("grpc peer %s: expected an address and a port", addr);
    return -EINVAL;
  }
  snprintf(p->port, sizeof(p->port), "%u", (unsigned)port);
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV; /* never blocks */
  if (getaddrinfo(p->host, p->port, &hints, &res) != 0 || res == NULL ||
      res->ai_addrlen > sizeof(p->sa)) {
    if (res)
      freeaddrinfo(res);
    p->named = 1;
    return 0;
  }
  memcpy(&p->sa, res->ai_addr, res->ai_addrlen);
  p->salen = res->ai_addrlen;
  freeaddrinfo(res);
  return 0;
}

int hgrpc_peer_new(hgrpc_peer **out, hloop *l, const char *addr,
                   hgrpc_client_fn on_client, void *ud) {
  return hgrpc_peer_new_tls(out, l, addr, NULL, on_client, ud);
}

int hgrpc_peer_new_tls(hgrpc_peer **out, hloop *l, const char *addr, hstls *tls,
                       hgrpc_client_fn on_client, void *ud) {
  if (out == NULL || l == NULL || addr == NULL || on_client == NULL)
    return -EINVAL;
  *out = NULL;
  hgrpc_peer *p = calloc(1, sizeof(*p));
  if (p == NULL)
    return -ENOMEM;
  p->l = l;
  p->tls = tls;
  p->on_client = on_client;
  p->ud = ud;
  p->backoff_ms = BACKOFF_MIN_MS;
  p->retry_at = hclock_ms(); /* the first connect: next turn */
  int rv = peer_resolve(p, addr);
  if (rv == 0) {
    p->addr = strdup(addr);
    rv = p->addr && imc_grpc_client_options_new(&p->copt, NULL) == 0 ? 0
                                                                     : -ENOMEM;
  }
  if (rv == 0 &&
      (imc_grpc_client_options_set_transport(p->copt, &peer_transport, p) < 0 ||
       imc_grpc_client_options_set_authority(p->copt, addr) < 0 ||
       imc_grpc_client_options_set_log(p->copt, hlog_imc_cb, NULL,
                                       hlog_get_level()) < 0))
    rv = -ENOMEM;
  if (rv == 0)
    rv = hloop_add_hook(l, peer_next, peer_run, p);
  if (rv < 0) {
    imc_grpc_client_options_del(p->copt);
    free(p->addr);
    free(p);
    return rv;
  }
  *out = p;
  return 0;
}

const char *hgrpc_peer_addr(const hgrpc_peer *p) {
  return p->addr;
}

unsigned long hgrpc_peer_attempts(const hgrpc_peer *p) {
  return p->attempts;
}

void hgrpc_peer_del(hgrpc_peer *p) {
  if (p == NULL)
    return;
  pconn *pc = p->cur;
  p->cur = NULL;
  if (p->given) {
    p->given = 0;
    p->on_client(p->ud, NULL);
  }
  if (pc)
    pconn_free(pc);
  while (p->draining) {
    pconn *d = p->draining;
    p->draining = d->next;
    pconn_free(d);
  }
  hloop_del_hook(p->l, peer_run, p);
  peer_forget_addrs(p);
  imc_grpc_client_options_del(p->copt);
  free(p->addr);
  free(p);
}
