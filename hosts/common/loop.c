/*
 * The epoll adapter (see loop.h).
 *
 * Every fd the loop watches has a node; epoll's data.ptr points at it.
 * Nodes are never freed while an epoll batch may still name them: killing
 * a node closes its fd and moves it to a dead list that is freed at the
 * end of the iteration, and dispatch skips dead nodes.
 *
 * A client connection is OPEN while the gateway holds it. When the
 * gateway closes it, the loop does not close() at once: the kernel would
 * answer still-unread input (the rest of an oversized message, a request
 * body after a 401) with RST and the peer could lose our last bytes (a
 * close frame, the error response). Instead it sends FIN
 * (shutdown(SHUT_WR)) and LINGERs, discarding input until the peer closes
 * or LINGER_MS pass, as web servers do.
 *
 * On a TLS listener (hloop_listen_tls) a connection carries a TLS session
 * (tls.h): the gateway's connection exists from accept on, so its
 * handshake timeout covers the TLS handshake too; reads run the handshake
 * until it ends, then decrypt; sends encrypt. OpenSSL may need the
 * opposite direction (a handshake or read that must write, a write that
 * must read): tls_rd_out and tls_wr_wait hold what it waits for.
 */
#include "loop.h"
#include "clock.h"
#include "log.h"
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
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

#define MAX_EVENTS 256
#define READ_BUF (64 * 1024)
/*
 * Bytes read from one connection per iteration, so one fast sender cannot
 * starve the others, and its answers are flushed before it sends more;
 * the rest is read on the next iteration.
 */
#define READ_BUDGET (4 * READ_BUF)
#define LISTEN_BACKLOG 4096
#define ACCEPT_PAUSE_MS 100
#define ACCEPT_LOG_EVERY_MS 10000
#define LINGER_MS 2000
#define LINGER_MAX_BYTES (1 << 20)
#define CONN_EVENTS (EPOLLIN | EPOLLRDHUP | EPOLLET)

enum kind { K_LISTENER, K_CONN, K_FD, K_WATCH };
enum state { S_OPEN, S_LINGER, S_DEAD };

typedef struct node node;

typedef struct list {
  node *head, *tail;
} list;

struct node {
  enum kind kind;
  enum state state;
  int fd;
  int out_armed;      /* EPOLLOUT is registered */
  int read_pending;   /* on l->pending: stopped on the budget, not EAGAIN */
  int read_blocked;   /* stopped reading until the socket is writable */
  int read_paused;    /* the gateway paused reads (EPOLLIN removed) */
  int tls_handshake;  /* the TLS handshake has not ended */
  int tls_rd_out;     /* the handshake or a read waits for EPOLLOUT */
  int tls_wr_wait;    /* a send blocked on the handshake or on input */
  imc_conn *c;        /* K_CONN while OPEN */
  SSL *ssl;           /* K_CONN of a TLS listener while OPEN */
  hstls *tls;         /* K_LISTENER: TLS, or NULL */
  hloop_fd_fn cb;     /* K_FD */
  hloop_watch_fn wcb; /* K_WATCH */
  void *ud;
  int64_t linger_until;
  size_t linger_bytes;
  list *owner; /* the list holding the node while it lives */
  node *prev, *next;
  node *next_pending;
  node *next_dead;
};

typedef struct hook {
  hloop_timeout_fn next_timeout_ms;
  hloop_run_fn run; /* NULL: removed, compacted after the pass */
  void *ud;
} hook;

struct hloop {
  int epfd;
  imc_gateway *gw;
  list conns;     /* OPEN client connections */
  list lingering; /* in order of linger_until */
  list listeners;
  list others; /* fd watchers */
  node *pending;
  node *dead;
  hook *hooks;
  size_t nhooks, hooks_cap;
  int hooks_busy;
  int accept_paused;
  int64_t accept_resume_at;
  int64_t accept_logged_at;
  int64_t grace_ms;
  int stop_requested; /* a graceful stop was asked for */
  int stopping;       /* ... and has begun */
  int64_t stop_deadline;
  int done;
  unsigned char tls_out[SSL3_RT_MAX_PLAIN_LENGTH]; /* gathers a record */
};

static int64_t until(int64_t deadline, int64_t now) {
  return deadline > now ? deadline - now : 0;
}

static void list_push(list *ls, node *n) {
  n->owner = ls;
  n->next = NULL;
  n->prev = ls->tail;
  if (ls->tail)
    ls->tail->next = n;
  else
    ls->head = n;
  ls->tail = n;
}

static void list_remove(node *n) {
  list *ls = n->owner;
  if (ls == NULL)
    return;
  if (n->prev)
    n->prev->next = n->next;
  else
    ls->head = n->next;
  if (n->next)
    n->next->prev = n->prev;
  else
    ls->tail = n->prev;
  n->owner = NULL;
  n->prev = n->next = NULL;
}

static void pending_remove(hloop *l, node *n) {
  if (!n->read_pending)
    return;
  for (node **pp = &l->pending; *pp; pp = &(*pp)->next_pending) {
    if (*pp == n) {
      *pp = n->next_pending;
      break;
    }
  }
  n->read_pending = 0;
}

/* Closes the node's fd (an fd watcher's fd is only unwatched) and queues
 * the node for freeing at the end of the iteration. */
static void node_kill(hloop *l, node *n) {
  if (n->state == S_DEAD)
    return;
  list_remove(n);
  pending_remove(l, n);
  hstls_close(n->ssl);
  n->ssl = NULL;
  if (n->kind == K_FD || n->kind == K_WATCH)
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, n->fd, NULL);
  else
    close(n->fd);
  n->state = S_DEAD;
  n->c = NULL;
  n->next_dead = l->dead;
  l->dead = n;
}

static void reap(hloop *l) {
  while (l->dead) {
    node *n = l->dead;
    l->dead = n->next_dead;
    free(n);
  }
}

static node *node_new(enum kind kind, int fd) {
  node *n = calloc(1, sizeof(*n));
  if (n) {
    n->kind = kind;
    n->fd = fd;
    n->state = S_OPEN;
  }
  return n;
}

static int epoll_set(hloop *l, int op, node *n, uint32_t events) {
  struct epoll_event ev;
  memset(&ev, 0, sizeof(ev));
  ev.events = events;
  ev.data.ptr = n;
  return epoll_ctl(l->epfd, op, n->fd, &ev) == 0 ? 0 : -errno;
}

/* The events of an open connection: no EPOLLIN while the gateway paused
 * its reads (TCP flow control then holds the client back), EPOLLOUT
 * while a write (or TLS, for a read) waits. */
static uint32_t conn_events(const node *n) {
  uint32_t ev = n->read_paused ? EPOLLET : CONN_EVENTS;
  return n->out_armed || n->tls_rd_out ? ev | EPOLLOUT : ev;
}

static void pending_add(hloop *l, node *n) {
  if (n->read_pending)
    return;
  n->read_pending = 1;
  n->next_pending = l->pending;
  l->pending = n;
}

/* ------------------------------------------------------------------ */
/* Client connections                                                   */
/* ------------------------------------------------------------------ */

/* The peer is gone: tell the gateway, which releases the connection. */
static void conn_lost(hloop *l, node *n) {
  if (n->c && l->gw)
    imc_gateway_conn_closed(l->gw, n->c);
  n->c = NULL;
  node_kill(l, n);
}

/* A TLS read waits for EPOLLOUT. Returns 0, or -1 if epoll failed. */
static int tls_want_out(hloop *l, node *n) {
  if (n->tls_rd_out)
    return 0;
  n->tls_rd_out = 1;
  if (epoll_set(l, EPOLL_CTL_MOD, n, conn_events(n)) < 0) {
    n->tls_rd_out = 0;
    return -1;
  }
  return 0;
}

/*
 * One step of the TLS handshake. Returns 1 once it has ended, 0 while it
 * waits for the socket, -1 if it failed (the connection is gone).
 */
static int handshake_step(hloop *l, node *n) {
  char why[256];
  int rv = hstls_handshake(n->ssl, why, sizeof(why));
  if (rv == 1) {
    n->tls_handshake = 0;
    if (n->tls_wr_wait) { /* the gateway wrote during the handshake */
      n->tls_wr_wait = 0;
      imc_gateway_conn_writable(l->gw, n->c);
    }
    return n->state == S_OPEN ? 1 : -1;
  }
  if (rv == HSTLS_WANT_READ ||
      (rv == HSTLS_WANT_WRITE && tls_want_out(l, n) == 0))
    return 0;
  hlog_debug("fd %d: TLS handshake failed: %s", n->fd,
             rv == HSTLS_ERROR ? why : "epoll_ctl failed");
  conn_lost(l, n);
  return -1;
}

/* Reads the socket, or its TLS session: as read(2), with errno EAGAIN
 * when the session waits (for EPOLLOUT, armed here). */
static ssize_t conn_recv(hloop *l, node *n, uint8_t *buf, size_t cap) {
  if (n->ssl == NULL)
    return read(n->fd, buf, cap);
  ssize_t r = hstls_read(n->ssl, buf, cap, NULL, 0);
  if (r >= 0)
    return r;
  if (r == HSTLS_EOF)
    return 0;
  if (r == HSTLS_WANT_READ ||
      (r == HSTLS_WANT_WRITE && tls_want_out(l, n) == 0)) {
    errno = EAGAIN;
    return -1;
  }
  errno = EPROTO;
  return -1;
}

/*
 * Reads until EAGAIN or the budget. While the socket cannot take our
 * output (EPOLLOUT armed), reading stops: a peer that does not read
 * cannot make us queue answers without bound; TCP flow control holds it
 * back instead. force: an error or hangup is pending, read to learn it.
 * On TLS, the handshake runs first.
 */
static void conn_read(hloop *l, node *n, int force) {
  uint8_t buf[READ_BUF];
  size_t budget = READ_BUDGET;
  if (n->tls_handshake && handshake_step(l, n) <= 0)
    return;
  for (;;) {
    if (n->read_paused && !force)
      return; /* t_set_read puts it back on the pending list */
    if (n->out_armed && !force) {
      n->read_blocked = 1;
      return;
    }
    ssize_t r = conn_recv(l, n, buf, sizeof(buf));
    if (r > 0) {
      int rv = imc_gateway_conn_recv(l->gw, n->c, buf, (size_t)r);
      if (n->state != S_OPEN)
        return; /* the gateway closed it through the transport */
      if (rv < 0) {
        /* The handle is gone, yet close was not called: drop the socket
         * without touching the gateway again. */
        hlog_warn("fd %d: gateway dropped the connection (%s) without "
                  "closing it",
                  n->fd, imc_strerror(rv));
        n->c = NULL;
        node_kill(l, n);
        return;
      }
      if ((size_t)r >= budget) {
        pending_add(l, n); /* it may be there from a previous pass */
        return;
      }
      budget -= (size_t)r;
      continue;
    }
    if (r == 0) {
      hlog_debug("fd %d: peer closed", n->fd);
      conn_lost(l, n);
      return;
    }
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      return;
    hlog_debug("fd %d: read: %s", n->fd, strerror(errno));
    conn_lost(l, n);
    return;
  }
}

/* Discards input of a closing connection until EOF, error or the cap. */
static void linger_drain(hloop *l, node *n) {
  uint8_t buf[16 * 1024];
  for (;;) {
    ssize_t r = read(n->fd, buf, sizeof(buf));
    if (r > 0) {
      n->linger_bytes += (size_t)r;
      if (n->linger_bytes > LINGER_MAX_BYTES) {
        node_kill(l, n);
        return;
      }
      continue;
    }
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return;
    node_kill(l, n);
    return;
  }
}

/*
 * The peer's address in text, without the port, for the gateway's
 * per-address limit: an IPv4-mapped IPv6 address as IPv4, so that a
 * client counts once on a dual-stack listener. "" if unknown.
 */
static void peer_text(const struct sockaddr_storage *ss, char *out,
                      size_t cap) {
  const void *a = NULL;
  int af = ss->ss_family;
  if (af == AF_INET) {
    a = &((const struct sockaddr_in *)(const void *)ss)->sin_addr;
  } else if (af == AF_INET6) {
    const struct in6_addr *a6 =
        &((const struct sockaddr_in6 *)(const void *)ss)->sin6_addr;
    a = a6;
    if (IN6_IS_ADDR_V4MAPPED(a6)) {
      af = AF_INET;
      a = &a6->s6_addr[12];
    }
  }
  if (a == NULL || inet_ntop(af, a, out, (socklen_t)cap) == NULL)
    out[0] = '\0';
}

static void conn_open(hloop *l, int fd, const char *peer, hstls *tls) {
  int one = 1;
  /* Frames are small and latency matters; the gateway batches itself. */
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  node *n = node_new(K_CONN, fd);
  if (n && tls && (n->ssl = hstls_accept(tls, fd)) == NULL) {
    free(n);
    n = NULL;
  }
  if (n == NULL) {
    hlog_error("accept: out of memory");
    close(fd);
    return;
  }
  n->tls_handshake = n->ssl != NULL;
  /* Registered first: ADD reports input that arrived before it. */
  int rv = epoll_set(l, EPOLL_CTL_ADD, n, CONN_EVENTS);
  if (rv < 0) {
    hlog_error("epoll_ctl: %s", strerror(-rv));
    hstls_close(n->ssl);
    close(fd);
    free(n);
    return;
  }
  list_push(&l->conns, n);
  rv = imc_gateway_conn_new(l->gw, &n->c, n);
  if (rv == 0 && peer[0] != '\0' &&
      (rv = imc_gateway_conn_set_peer(l->gw, n->c, peer)) < 0)
    imc_gateway_conn_closed(l->gw, n->c);
  if (rv < 0) {
    hlog_debug("fd %d: refused: %s", fd, imc_strerror(rv));
    n->c = NULL;
    node_kill(l, n);
  }
}

/* The socket is full: wait for EPOLLOUT. */
static ssize_t arm_out(hloop *l, node *n) {
  if (!n->out_armed) {
    n->out_armed = 1;
    if (epoll_set(l, EPOLL_CTL_MOD, n, conn_events(n)) < 0) {
      n->out_armed = 0;
      return IMC_ERR_IO;
    }
    hlog_debug("fd %d: socket buffer full; waiting for EPOLLOUT", n->fd);
  }
  return IMC_ERR_WOULDBLOCK;
}

/* t_send on TLS: one record; a send that must wait for the handshake or
 * for input is retried by handshake_step or conn_event. */
static ssize_t tls_send(hloop *l, node *n, const struct iovec *iov,
                        int iovcnt) {
  if (iovcnt <= 0)
    return 0;
  if (n->tls_handshake) {
    n->tls_wr_wait = 1;
    return IMC_ERR_WOULDBLOCK;
  }
  ssize_t w = hstls_write(n->ssl, iov, iovcnt, l->tls_out, sizeof(l->tls_out));
  if (w >= 0)
    return w;
  if (w == HSTLS_WANT_WRITE)
    return arm_out(l, n);
  if (w == HSTLS_WANT_READ) {
    n->tls_wr_wait = 1;
    return IMC_ERR_WOULDBLOCK;
  }
  hlog_debug("fd %d: TLS write failed", n->fd);
  return IMC_ERR_IO;
}

static ssize_t t_send(void *ud, void *conn_ud, const struct iovec *iov,
                      int iovcnt) {
  hloop *l = ud;
  node *n = conn_ud;
  if (n->state != S_OPEN)
    return IMC_ERR_CLOSED;
  if (n->ssl)
    return tls_send(l, n, iov, iovcnt);
  if (iovcnt > IOV_MAX)
    iovcnt = IOV_MAX; /* a partial write is fine */
  for (;;) {
    /* MSG_NOSIGNAL: a peer gone raises no SIGPIPE in the embedder. */
    struct msghdr mh = {.msg_iov = (struct iovec *)iov,
                        .msg_iovlen = (size_t)iovcnt};
    ssize_t w = sendmsg(n->fd, &mh, MSG_NOSIGNAL);
    if (w >= 0)
      return w;
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      return arm_out(l, n);
    hlog_debug("fd %d: sendmsg: %s", n->fd, strerror(errno));
    return IMC_ERR_IO;
  }
}

static void t_close(void *ud, void *conn_ud) {
  hloop *l = ud;
  node *n = conn_ud;
  if (n->state != S_OPEN)
    return;
  n->c = NULL;
  list_remove(n);
  pending_remove(l, n);
  /* close_notify first: the lingering socket is only drained. */
  hstls_close(n->ssl);
  n->ssl = NULL;
  n->tls_handshake = n->tls_rd_out = n->tls_wr_wait = 0;
  /* Linger (see the top of the file). MOD also re-reports input that is
   * already waiting, which edge-triggering would otherwise not. */
  if (shutdown(n->fd, SHUT_WR) < 0 ||
      epoll_set(l, EPOLL_CTL_MOD, n, CONN_EVENTS) < 0) {
    node_kill(l, n);
    return;
  }
  n->state = S_LINGER;
  n->out_armed = 0;
  n->linger_until = hclock_ms() + LINGER_MS;
  list_push(&l->lingering, n);
}

/* The gateway pauses or resumes reading of a connection. */
static void t_set_read(void *ud, void *conn_ud, int enabled) {
  hloop *l = ud;
  node *n = conn_ud;
  if (n->state != S_OPEN || n->read_paused == !enabled)
    return;
  n->read_paused = !enabled;
  if (epoll_set(l, EPOLL_CTL_MOD, n, conn_events(n)) < 0)
    hlog_warn("fd %d: epoll_ctl: %s", n->fd, strerror(errno));
  /* Edge-triggered: input that waited meanwhile raises no new event. */
  if (enabled)
    pending_add(l, n);
}

static const imc_transport_vtbl transport = {
    sizeof(imc_transport_vtbl),
    t_send,
    t_close,
    t_set_read,
};

const imc_transport_vtbl *hloop_transport_vtbl(void) {
  return &transport;
}

static void conn_event(hloop *l, node *n, uint32_t ev) {
  if (n->state == S_LINGER) {
    linger_drain(l, n);
    return;
  }
  if (n->tls_rd_out && (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR))) {
    /* The TLS session can write what its handshake or read needed. */
    n->tls_rd_out = 0;
    if (epoll_set(l, EPOLL_CTL_MOD, n, conn_events(n)) != 0)
      n->tls_rd_out = 1;
    conn_read(l, n, 0);
    if (n->state != S_OPEN)
      return;
  }
  if (n->tls_wr_wait && !n->tls_handshake &&
      (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
    /* A TLS write waited for input. */
    n->tls_wr_wait = 0;
    imc_gateway_conn_writable(l->gw, n->c);
    if (n->state != S_OPEN)
      return;
  }
  if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
    conn_read(l, n, (ev & (EPOLLHUP | EPOLLERR)) != 0);
  if (n->state == S_OPEN && (ev & EPOLLOUT) && n->out_armed) {
    /* Disarm first: the gateway re-arms through send if it blocks again. */
    n->out_armed = 0;
    if (epoll_set(l, EPOLL_CTL_MOD, n, conn_events(n)) != 0)
      n->out_armed = 1;
    imc_gateway_conn_writable(l->gw, n->c);
    if (n->state == S_OPEN && !n->out_armed && n->read_blocked) {
      n->read_blocked = 0;
      conn_read(l, n, 0); /* edge-triggered: no new event for old input */
    }
  }
}

static void run_pending_reads(hloop *l) {
  node *n = l->pending;
  l->pending = NULL;
  while (n) {
    node *next = n->next_pending;
    n->read_pending = 0;
    if (n->state == S_OPEN)
      conn_read(l, n, 0);
    n = next;
  }
}

static void expire_lingering(hloop *l, int64_t now) {
  while (l->lingering.head && l->lingering.head->linger_until <= now)
    node_kill(l, l->lingering.head);
}

/* ------------------------------------------------------------------ */
/* Listening                                                            */
/* ------------------------------------------------------------------ */

int hloop_split_addr(const char *addr, char *host, size_t hostcap,
                     uint16_t *port, const char **why) {
  const char *h, *hend, *p;
  *why = "expected HOST:PORT";
  if (addr == NULL)
    return -EINVAL;
  if (addr[0] == '[') {
    h = addr + 1;
    hend = strchr(h, ']');
    if (hend == NULL || hend[1] != ':')
      return -EINVAL;
    p = hend + 2;
  } else {
    hend = strrchr(addr, ':');
    if (hend == NULL)
      return -EINVAL;
    if (memchr(addr, ':', (size_t)(hend - addr))) {
      *why = "IPv6 addresses need brackets, e.g. [::1]:8082";
      return -EINVAL;
    }
    h = addr;
    p = hend + 1;
  }
  size_t hl = (size_t)(hend - h), pl = strlen(p);
  if (hl >= hostcap) {
    *why = "host name too long";
    return -EINVAL;
  }
  unsigned long v = 0;
  for (size_t i = 0; i < pl; i++) {
    if (p[i] < '0' || p[i] > '9' || v > 65535) {
      v = 65536;
      break;
    }
    v = v * 10 + (unsigned long)(p[i] - '0');
  }
  if (pl == 0 || v > 65535) {
    *why = "port must be a number from 0 to 65535";
    return -EINVAL;
  }
  memcpy(host, h, hl);
  host[hl] = '\0';
  if (strcmp(host, "*") == 0)
    host[0] = '\0';
  *port = (uint16_t)v;
  return 0;
}

static void format_addr(const struct sockaddr *sa, socklen_t len, char *out,
                        size_t cap) {
  char h[NI_MAXHOST], s[NI_MAXSERV];
  if (getnameinfo(sa, len, h, sizeof(h), s, sizeof(s),
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    snprintf(out, cap, "?");
    return;
  }
  snprintf(out, cap, sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", h, s);
}

int hloop_listen_socket(const char *what, const char *addr, char *bound,
                        size_t boundcap) {
  char host[256], portstr[8];
  uint16_t port;
  const char *why;
  if (hloop_split_addr(addr, host, sizeof(host), &port, &why) < 0) {
    hlog_error("%s %s: %s", what, addr, why);
    return -EINVAL;
  }
  snprintf(portstr, sizeof(portstr), "%u", (unsigned)port);

  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  int gai = getaddrinfo(host[0] ? host : "0.0.0.0", portstr, &hints, &res);
  if (gai != 0) {
    hlog_error("%s %s: %s", what, addr, gai_strerror(gai));
    return -EADDRNOTAVAIL;
  }
  int fd = -1, err = EADDRNOTAVAIL;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                ai->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    int one = 1;
    /* Restart while old connections sit in TIME_WAIT. */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
        listen(fd, LISTEN_BACKLOG) == 0)
      break;
    err = errno;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) {
    hlog_error("%s %s: %s", what, addr, strerror(err));
    return -err;
  }

  struct sockaddr_storage ss;
  socklen_t sl = sizeof(ss);
  if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
    format_addr((struct sockaddr *)&ss, sl, bound, boundcap);
  else if (boundcap)
    snprintf(bound, boundcap, "%s", addr);
  return fd;
}

int hloop_listen(hloop *l, const char *addr, char *bound, size_t boundcap) {
  return hloop_listen_tls(l, addr, NULL, bound, boundcap);
}

int hloop_listen_tls(hloop *l, const char *addr, hstls *tls, char *bound,
                     size_t boundcap) {
  int fd = hloop_listen_socket("listen", addr, bound, boundcap);
  if (fd < 0)
    return fd;
  node *n = node_new(K_LISTENER, fd);
  if (n == NULL) {
    close(fd);
    return -ENOMEM;
  }
  n->tls = tls;
  /* Level-triggered: a paused listener is simply re-added later. */
  int rv = epoll_set(l, EPOLL_CTL_ADD, n, EPOLLIN);
  if (rv < 0) {
    close(fd);
    free(n);
    return rv;
  }
  list_push(&l->listeners, n);
  return 0;
}

/*
 * Out of fds (or memory): the pending connection stays in the backlog and
 * a level-triggered listener would wake us at once, forever. Stop
 * watching the listeners for a moment instead.
 */
static void pause_accept(hloop *l, int err) {
  int64_t now = hclock_ms();
  if (now - l->accept_logged_at >= ACCEPT_LOG_EVERY_MS) {
    hlog_warn("accept: %s; pausing accepts for %d ms (%zu connections)",
              strerror(err), ACCEPT_PAUSE_MS,
              l->gw ? imc_gateway_conn_count(l->gw) : (size_t)0);
    l->accept_logged_at = now;
  }
  for (node *n = l->listeners.head; n; n = n->next)
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, n->fd, NULL);
  l->accept_paused = 1;
  l->accept_resume_at = now + ACCEPT_PAUSE_MS;
}

static void resume_accept(hloop *l, int64_t now) {
  if (!l->accept_paused || now < l->accept_resume_at)
    return;
  l->accept_paused = 0;
  for (node *n = l->listeners.head; n; n = n->next)
    epoll_set(l, EPOLL_CTL_ADD, n, EPOLLIN);
}

static void accept_all(hloop *l, node *ln) {
  while (!l->accept_paused) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int fd = accept4(ln->fd, (struct sockaddr *)&ss, &sl,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      if (hlog_get_level() >= IMC_LOG_DEBUG) {
        char peer[NI_MAXHOST + NI_MAXSERV + 4];
        format_addr((struct sockaddr *)&ss, sl, peer, sizeof(peer));
        hlog_debug("fd %d: accepted from %s", fd, peer);
      }
      char addr[INET6_ADDRSTRLEN];
      peer_text(&ss, addr, sizeof(addr));
      conn_open(l, fd, addr, ln->tls);
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
    case EPERM: /* refused by a firewall rule; the next one may pass */
      continue;
    default: /* EMFILE, ENFILE, ENOBUFS, ENOMEM, or worse */
      pause_accept(l, errno);
      return;
    }
  }
}

static void close_listeners(hloop *l) {
  while (l->listeners.head)
    node_kill(l, l->listeners.head);
  l->accept_paused = 0;
}

/* ------------------------------------------------------------------ */
/* Signals, stopping                                                    */
/* ------------------------------------------------------------------ */

void hloop_stop(hloop *l) {
  l->stop_requested = 1;
}

void hloop_stop_now(hloop *l) {
  l->stop_requested = 1;
  l->done = 1;
}

static void begin_stop(hloop *l) {
  l->stopping = 1;
  l->stop_deadline = hclock_ms() + l->grace_ms;
  close_listeners(l);
  if (l->gw) {
    imc_gateway_shutdown(l->gw);
    imc_gateway_flush(l->gw);
  }
}

static void check_stop(hloop *l, int64_t now) {
  if (l->stop_requested && !l->stopping)
    begin_stop(l);
  if (!l->stopping)
    return;
  size_t left = l->gw ? imc_gateway_conn_count(l->gw) : 0;
  /* Reports of un-ACKed pushes must reach the upstream before we go. */
  size_t reports = l->gw ? imc_gateway_pending(l->gw) : 0;
  if (left == 0 && reports == 0 && l->lingering.head == NULL) {
    l->done = 1;
  } else if (now >= l->stop_deadline) {
    size_t closing = 0;
    for (node *n = l->lingering.head; n; n = n->next)
      closing++;
    hlog_warn("after %lld ms, %zu connections, %zu closing sockets and %zu "
              "upstream operations are still open; closing them",
              (long long)l->grace_ms, left, closing, reports);
    l->done = 1;
  }
}

/* ------------------------------------------------------------------ */
/* Hooks and fd watchers                                                */
/* ------------------------------------------------------------------ */

int hloop_add_hook(hloop *l, hloop_timeout_fn next_timeout_ms, hloop_run_fn run,
                   void *ud) {
  if (run == NULL)
    return -EINVAL;
  if (l->nhooks == l->hooks_cap) {
    size_t cap = l->hooks_cap ? l->hooks_cap * 2 : 4;
    hook *h = realloc(l->hooks, cap * sizeof(*h));
    if (h == NULL)
      return -ENOMEM;
    l->hooks = h;
    l->hooks_cap = cap;
  }
  hook *h = &l->hooks[l->nhooks++];
  h->next_timeout_ms = next_timeout_ms;
  h->run = run;
  h->ud = ud;
  return 0;
}

static void compact_hooks(hloop *l) {
  size_t j = 0;
  for (size_t i = 0; i < l->nhooks; i++)
    if (l->hooks[i].run)
      l->hooks[j++] = l->hooks[i];
  l->nhooks = j;
}

void hloop_del_hook(hloop *l, hloop_run_fn run, void *ud) {
  for (size_t i = 0; i < l->nhooks; i++)
    if (l->hooks[i].run == run && l->hooks[i].ud == ud)
      l->hooks[i].run = NULL;
  if (!l->hooks_busy)
    compact_hooks(l);
}

static void run_hooks(hloop *l) {
  l->hooks_busy = 1;
  /* Index loop: run may add hooks (and move the array). */
  for (size_t i = 0; i < l->nhooks; i++) {
    hook h = l->hooks[i];
    if (h.run && (h.next_timeout_ms == NULL || h.next_timeout_ms(h.ud) == 0))
      h.run(h.ud);
  }
  l->hooks_busy = 0;
  compact_hooks(l);
}

int hloop_add_fd(hloop *l, int fd, hloop_fd_fn on_readable, void *ud) {
  if (fd < 0 || on_readable == NULL)
    return -EINVAL;
  node *n = node_new(K_FD, fd);
  if (n == NULL)
    return -ENOMEM;
  n->cb = on_readable;
  n->ud = ud;
  int rv = epoll_set(l, EPOLL_CTL_ADD, n, EPOLLIN);
  if (rv < 0) {
    free(n);
    return rv;
  }
  list_push(&l->others, n);
  return 0;
}

void hloop_del_fd(hloop *l, int fd) {
  for (node *n = l->others.head; n; n = n->next) {
    if (n->kind == K_FD && n->fd == fd) {
      node_kill(l, n);
      return;
    }
  }
}

int hloop_watch_add(hloop *l, int fd, uint32_t events, hloop_watch_fn cb,
                    void *ud, hloop_watch **out) {
  if (fd < 0 || cb == NULL)
    return -EINVAL;
  node *n = node_new(K_WATCH, fd);
  if (n == NULL)
    return -ENOMEM;
  n->wcb = cb;
  n->ud = ud;
  int rv = epoll_set(l, EPOLL_CTL_ADD, n, events);
  if (rv < 0) {
    free(n);
    return rv;
  }
  list_push(&l->others, n);
  *out = (hloop_watch *)n;
  return 0;
}

int hloop_watch_set(hloop *l, hloop_watch *w, uint32_t events) {
  node *n = (node *)w;
  return n->state == S_DEAD ? -EINVAL : epoll_set(l, EPOLL_CTL_MOD, n, events);
}

void hloop_watch_del(hloop *l, hloop_watch *w) {
  node_kill(l, (node *)w);
}

/* ------------------------------------------------------------------ */
/* The loop                                                             */
/* ------------------------------------------------------------------ */

int hloop_new(hloop **out) {
  hloop *l = calloc(1, sizeof(*l));
  if (l == NULL)
    return -ENOMEM;
  l->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (l->epfd < 0) {
    int err = errno;
    free(l);
    return -err;
  }
  l->grace_ms = 5000;
  *out = l;
  return 0;
}

void hloop_set_gateway(hloop *l, imc_gateway *gw) {
  l->gw = gw;
}

void hloop_set_grace_ms(hloop *l, int64_t ms) {
  l->grace_ms = ms < 0 ? 0 : ms;
}

void hloop_del(hloop *l) {
  if (l == NULL)
    return;
  list *lists[] = {&l->conns, &l->lingering, &l->listeners, &l->others};
  for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++)
    while (lists[i]->head)
      node_kill(l, lists[i]->head);
  reap(l);
  close(l->epfd);
  free(l->hooks);
  free(l);
}

static int64_t next_timeout(hloop *l, int64_t now) {
  int64_t t = l->pending ? 0 : -1;
  if (l->gw)
    t = htimeout_min(t, imc_gateway_next_timeout_ms(l->gw));
  for (size_t i = 0; i < l->nhooks; i++)
    if (l->hooks[i].run && l->hooks[i].next_timeout_ms)
      t = htimeout_min(t, l->hooks[i].next_timeout_ms(l->hooks[i].ud));
  if (l->accept_paused)
    t = htimeout_min(t, until(l->accept_resume_at, now));
  if (l->lingering.head)
    t = htimeout_min(t, until(l->lingering.head->linger_until, now));
  if (l->stopping)
    t = htimeout_min(t, until(l->stop_deadline, now));
  return t > INT_MAX ? INT_MAX : t;
}

static void dispatch(hloop *l, node *n, uint32_t ev) {
  if (n->state == S_DEAD)
    return; /* killed earlier in this batch */
  switch (n->kind) {
  case K_LISTENER:
    accept_all(l, n);
    break;
  case K_CONN:
    conn_event(l, n, ev);
    break;
  case K_FD:
    n->cb(n->ud);
    break;
  case K_WATCH:
    n->wcb(n->ud, n->fd, ev);
    break;
  }
}

/* One turn: wait (at most cap_ms, -1: as long as the timers allow), then
 * dispatch the events, the gateway's timers, the hooks and one flush. */
static int turn(hloop *l, int64_t cap_ms) {
  struct epoll_event evs[MAX_EVENTS];
  int64_t now = hclock_ms();
  check_stop(l, now);
  if (l->done)
    return 0;
  int64_t wait = next_timeout(l, now);
  if (cap_ms >= 0 && (wait < 0 || wait > cap_ms))
    wait = cap_ms;
  int nev = epoll_wait(l->epfd, evs, MAX_EVENTS, (int)wait);
  if (nev < 0) {
    if (errno != EINTR) {
      int err = errno;
      hlog_error("epoll_wait: %s", strerror(err));
      return -err;
    }
    nev = 0;
  }
  for (int i = 0; i < nev; i++)
    dispatch(l, evs[i].data.ptr, evs[i].events);
  run_pending_reads(l);
  /* Gateway timers may hand work to the hooks' components (un-ACKed
   * pushes to a router), and hooks may queue output: timers, then
   * hooks, then one flush. */
  if (l->gw && imc_gateway_next_timeout_ms(l->gw) == 0)
    imc_gateway_on_timeout(l->gw);
  run_hooks(l);
  if (l->gw)
    imc_gateway_flush(l->gw);
  now = hclock_ms();
  expire_lingering(l, now);
  resume_accept(l, now);
  reap(l);
  return 0;
}

int hloop_run(hloop *l) {
  if (l->gw == NULL && l->listeners.head) {
    hlog_error("hloop_run: listening without a gateway");
    return -EINVAL;
  }
  while (!l->done) {
    int rv = turn(l, -1);
    if (rv < 0)
      return rv;
  }
  return 0;
}

int hloop_run_once(hloop *l, int64_t max_wait_ms) {
  return turn(l, max_wait_ms < 0 ? 0 : max_wait_ms);
}
