/*
 * chat_http_server - an existing HTTP server that gains chat by linking
 * libimchat.
 *
 * The server has its own epoll loop and its own small HTTP/1.1 handling
 * (GET / and GET /time). Chat takes a few hooks: a request for /ws (the
 * WebSocket), /offline or /v1/... (the chat's HTTP API) is handed, with
 * the bytes read so far, to an imc_gateway, which from then on owns that
 * connection's protocol while the loop keeps moving its bytes. A router
 * and an offline worker on the embedded backends (an in-memory registry
 * and group bus, one SQLite file) deliver messages between users, online
 * or offline, exactly as imchatd does in one process.
 *
 *   chat_http_server [PORT [DBFILE]]   PORT 0: any free port; chat.db
 *
 * Tokens are HS256 with $CHAT_SECRET (default "example-secret"); tokens for
 * alice and bob are printed. $CHAT_ADMIN_TOKEN enables the group admin API.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4, memmem */
#endif
#include <imchat/imchat.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 256 /* a fixed table keeps the example short */
#define HEAD_MAX 8192 /* our own requests: the head only */
#define DRAIN_MS 3000 /* how long shutdown waits for clients to go */

typedef struct conn {
  int fd;          /* -1: a free slot */
  imc_conn *chat;  /* handed to the gateway, else NULL */
  uint32_t events; /* what epoll watches now */
  int blocked;     /* chat: a write hit EAGAIN (wait for EPOLLOUT) */
  int paused;      /* chat: the gateway paused reads (backpressure) */
  size_t len;
  char head[HEAD_MAX];
} conn;

typedef struct server {
  int ep, listen_fd, signal_fd;
  imc_memreg *reg;
  imc_membus *bus;
  imc_sqlite *db;
  imc_gateway *gw;
  imc_router *router;
  imc_worker *worker;
  imc_fanout *fanout;
  imc_api *api;
  conn conns[MAX_CONNS];
} server;

/* ------------------------------------------------------------------ */
/* The connection table and epoll                                        */
/* ------------------------------------------------------------------ */

/* Watch c for what it needs: a chat connection that is blocked on writing
 * or paused is not read, so TCP holds its client back. */
static void watch(server *s, conn *c) {
  uint32_t ev = EPOLLIN;
  if (c->chat)
    ev = c->blocked ? EPOLLOUT : c->paused ? 0 : EPOLLIN;
  struct epoll_event e = {.events = ev, .data.ptr = c};
  if (ev != c->events && epoll_ctl(s->ep, EPOLL_CTL_MOD, c->fd, &e) == 0)
    c->events = ev;
}

static void conn_close(conn *c) {
  close(c->fd); /* also leaves the epoll set */
  memset(c, 0, offsetof(conn, head));
  c->fd = -1;
}

/* The gateway's transport: it writes through us and closes through us. */
static ssize_t tr_send(void *ud, void *conn_ud, const struct iovec *iov,
                       int iovcnt) {
  conn *c = conn_ud;
  ssize_t n = writev(c->fd, iov, iovcnt > IOV_MAX ? IOV_MAX : iovcnt);
  if (n >= 0)
    return n;
  if (errno != EAGAIN && errno != EINTR)
    return IMC_ERR_IO;
  c->blocked = 1; /* call imc_gateway_conn_writable on EPOLLOUT */
  watch(ud, c);
  return IMC_ERR_WOULDBLOCK;
}

static void tr_close(void *ud, void *conn_ud) {
  conn_close(conn_ud);
}

static void tr_set_read(void *ud, void *conn_ud, int enabled) {
  ((conn *)conn_ud)->paused = !enabled;
  watch(ud, conn_ud);
}

static const imc_transport_vtbl transport = {sizeof(imc_transport_vtbl),
                                             tr_send, tr_close, tr_set_read};

/* The gateway is made before the router and the API it calls (the router
 * needs the gateway), so its vtables reach them through the server. */
static int up_send(void *ud, const imc_send_req *req, imc_send_cb done,
                   void *done_ud) {
  return imc_router_upstream_vtbl()->send(((server *)ud)->router, req, done,
                                          done_ud);
}

static int up_delivered(void *ud, const imc_msg *m, const char *user,
                        const char *device, imc_done_cb done, void *done_ud) {
  return imc_router_upstream_vtbl()->delivered(((server *)ud)->router, m, user,
                                               device, done, done_ud);
}

static int up_undelivered(void *ud, const imc_msg *m, const char *user,
                          imc_done_cb done, void *done_ud) {
  return imc_router_upstream_vtbl()->undelivered(((server *)ud)->router, m,
                                                 user, done, done_ud);
}

static const imc_upstream_vtbl upstream = {.struct_size =
                                               sizeof(imc_upstream_vtbl),
                                           .send = up_send,
                                           .delivered = up_delivered,
                                           .undelivered = up_undelivered};

static int api_handle(void *ud, const imc_http_request *req,
                      imc_http_reply *reply) {
  return imc_api_handler_vtbl()->handle(((server *)ud)->api, req, reply);
}

static const imc_http_handler_vtbl api_handler = {sizeof(imc_http_handler_vtbl),
                                                  api_handle};

static void group_changed(void *ud, const char *group_id) {
  imc_fanout_invalidate(((server *)ud)->fanout, group_id);
}

/* ------------------------------------------------------------------ */
/* The HTTP server as it was, plus the hand-over to the gateway          */
/* ------------------------------------------------------------------ */

static void reply(conn *c, const char *status, const char *type,
                  const char *body) {
  char out[2048];
  int n = snprintf(out, sizeof(out),
                   "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n\r\n%s",
                   status, type, strlen(body), body);
  (void)!send(c->fd, out, (size_t)n, MSG_NOSIGNAL); /* small: fits at once */
  conn_close(c);
}

/* The paths chat answers: the WebSocket and the HTTP API of imc_api. */
static int is_chat(const char *path, size_t n) {
  return (n >= 3 && memcmp(path, "/ws", 3) == 0 &&
          (n == 3 || path[3] == '?')) ||
         (n >= 8 && memcmp(path, "/offline", 8) == 0 &&
          (n == 8 || path[8] == '?')) ||
         (n >= 4 && memcmp(path, "/v1/", 4) == 0);
}

static void http_read(server *s, conn *c) {
  ssize_t n = read(c->fd, c->head + c->len, HEAD_MAX - c->len);
  if (n <= 0) {
    if (n == 0 || (errno != EAGAIN && errno != EINTR))
      conn_close(c);
    return;
  }
  c->len += (size_t)n;
  if (memmem(c->head, c->len, "\r\n\r\n", 4) == NULL) {
    if (c->len == HEAD_MAX)
      reply(c, "431 Request Header Fields Too Large", "text/plain", "");
    return;
  }
  /* "METHOD SP PATH SP HTTP/1.1" */
  char *sp = memchr(c->head, ' ', c->len), *path = sp ? sp + 1 : NULL;
  char *end =
      path ? memchr(path, ' ', c->len - (size_t)(path - c->head)) : NULL;
  if (end == NULL) {
    reply(c, "400 Bad Request", "text/plain", "bad request\n");
  } else if (is_chat(path, (size_t)(end - path))) {
    /* From now on the gateway speaks on this socket; what we read is the
     * start of its stream. A negative result: it closed the connection. */
    if (imc_gateway_conn_new(s->gw, &c->chat, c) != 0)
      conn_close(c);
    else
      imc_gateway_conn_recv(s->gw, c->chat, (uint8_t *)c->head, c->len);
  } else if (memcmp(c->head, "GET ", 4) != 0) {
    reply(c, "405 Method Not Allowed", "text/plain", "GET only\n");
  } else if (end - path == 1 && path[0] == '/') {
    reply(c, "200 OK", "text/html; charset=utf-8",
          "<!doctype html><title>hello</title><h1>Hello from a plain HTTP "
          "server</h1><p>It also chats: WebSocket at /ws, see "
          "examples/README.md.</p>\n");
  } else if (end - path == 5 && memcmp(path, "/time", 5) == 0) {
    char t[64];
    snprintf(t, sizeof(t), "%lld\n", (long long)time(NULL));
    reply(c, "200 OK", "text/plain", t);
  } else {
    reply(c, "404 Not Found", "text/plain", "not found\n");
  }
}

static void chat_event(server *s, conn *c, uint32_t ev) {
  if ((ev & EPOLLOUT) && c->blocked) {
    c->blocked = 0;
    watch(s, c);
    if (imc_gateway_conn_writable(s->gw, c->chat) < 0)
      return; /* the gateway closed it */
  }
  /* EPOLLHUP and EPOLLERR come even when not asked for: read to the end. */
  if (c->fd >= 0 && (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
    uint8_t buf[16384];
    ssize_t n = read(c->fd, buf, sizeof(buf));
    if (n > 0) {
      imc_gateway_conn_recv(s->gw, c->chat, buf, (size_t)n);
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
      imc_gateway_conn_closed(s->gw, c->chat); /* we lost it: no close */
      conn_close(c);
    }
  }
}

static void accept_all(server *s) {
  int fd;
  while ((fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
    conn *c = NULL;
    for (size_t i = 0; i < MAX_CONNS && c == NULL; i++)
      c = s->conns[i].fd < 0 ? &s->conns[i] : NULL;
    struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
    if (c == NULL || epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &e) != 0) {
      close(fd); /* full */
      continue;
    }
    c->fd = fd;
    c->events = EPOLLIN;
  }
}

/* ------------------------------------------------------------------ */
/* The loop: events, then the library's deferred work, timers, flush    */
/* ------------------------------------------------------------------ */

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void min_timeout(int64_t *t, int64_t x) {
  if (x >= 0 && (*t < 0 || x < *t))
    *t = x;
}

/* Completions the embedded backends deferred, the timers that are due. */
static void run_library(server *s) {
  for (int i = 0; i < 4; i++) /* a chain (publish, persist) in one turn */
    if (imc_sqlite_dispatch(s->db) <= 0 && imc_membus_dispatch(s->bus) <= 0)
      break;
  imc_router_on_timeout(s->router);
  imc_worker_on_timeout(s->worker);
  imc_gateway_on_timeout(s->gw);
}

static void run(server *s) {
  int64_t drain_until = -1;
  for (;;) {
    run_library(s);
    imc_gateway_flush(s->gw); /* one writev per connection per turn */
    int64_t now = mono_ms(), t = -1;
    if (drain_until >= 0) {
      if ((imc_gateway_conn_count(s->gw) == 0 &&
           imc_gateway_pending(s->gw) == 0) ||
          now >= drain_until)
        return;
      t = drain_until - now;
    }
    min_timeout(&t, imc_sqlite_next_timeout_ms(s->db));
    min_timeout(&t, imc_membus_next_timeout_ms(s->bus));
    min_timeout(&t, imc_router_next_timeout_ms(s->router));
    min_timeout(&t, imc_worker_next_timeout_ms(s->worker));
    min_timeout(&t, imc_gateway_next_timeout_ms(s->gw));
    struct epoll_event evs[64];
    int n = epoll_wait(s->ep, evs, 64, t > INT_MAX ? INT_MAX : (int)t);
    for (int i = 0; i < n; i++) {
      conn *c = evs[i].data.ptr;
      if (c == NULL) { /* the listener */
        accept_all(s);
      } else if ((void *)c == &s->signal_fd) {
        struct signalfd_siginfo si;
        if (read(s->signal_fd, &si, sizeof(si)) > 0 && drain_until < 0) {
          printf("chat_http_server: shutting down\n");
          close(s->listen_fd);
          s->listen_fd = -1;
          imc_gateway_shutdown(s->gw); /* WebSockets get close 1001 */
          drain_until = now + DRAIN_MS;
        }
      } else if (c->fd >= 0) { /* not closed earlier in this batch */
        if (c->chat)
          chat_event(s, c, evs[i].events);
        else
          http_read(s, c);
      }
    }
  }
}

/* ------------------------------------------------------------------ */
/* Setup and teardown                                                    */
/* ------------------------------------------------------------------ */

static void log_line(void *ud, imc_log_level level, const char *line) {
  fprintf(stderr, "imchat: %s\n", line);
}

static int make_chat(server *s, const char *db_path, const char *secret) {
  imc_gateway_options *g = NULL;
  imc_router_options *r = NULL;
  imc_worker_options *w = NULL;
  imc_api_options *a = NULL;
  int rv = imc_sqlite_new(&s->db, db_path, NULL, NULL);
  if (rv == 0)
    rv = imc_memreg_new(&s->reg, NULL, NULL);
  if (rv == 0)
    rv = imc_membus_new(&s->bus, NULL);
  if (rv == 0 && (rv = imc_gateway_options_new(&g, NULL)) == 0) {
    imc_gateway_options_set_node_id(g, "chat");
    imc_gateway_options_set_jwt_secret(g, (const uint8_t *)secret,
                                       strlen(secret));
    imc_gateway_options_set_transport(g, &transport, s);
    imc_gateway_options_set_registry(g, imc_memreg_vtbl(), s->reg);
    imc_gateway_options_set_upstream(g, &upstream, s);
    imc_gateway_options_set_http_handler(g, &api_handler, s);
    imc_gateway_options_set_log(g, log_line, NULL, IMC_LOG_WARN);
    rv = imc_gateway_new(&s->gw, g, NULL);
  }
  if (rv == 0 && (rv = imc_router_options_new(&r, NULL)) == 0) {
    imc_router_options_set_registry(r, imc_memreg_vtbl(), s->reg);
    imc_router_options_set_seq(r, imc_sqlite_seq_vtbl(), s->db);
    imc_router_options_set_dedup(r, imc_sqlite_dedup_vtbl(), s->db);
    imc_router_options_set_store(r, imc_sqlite_store_vtbl(), s->db);
    imc_router_options_set_queue(r, imc_sqlite_bus_vtbl(), s->db);
    imc_router_options_set_group_bus(r, imc_membus_vtbl(), s->bus);
    imc_router_options_set_gwlink(r, imc_gateway_local_link(), s->gw);
    imc_router_options_set_log(r, log_line, NULL, IMC_LOG_WARN);
    rv = imc_router_new(&s->router, r, NULL);
  }
  if (rv == 0 && (rv = imc_worker_options_new(&w, NULL)) == 0) {
    imc_worker_options_set_queue(w, imc_sqlite_bus_vtbl(), s->db);
    imc_worker_options_set_store(w, imc_sqlite_store_vtbl(), s->db);
    imc_worker_options_set_dedup(w, imc_sqlite_dedup_vtbl(), s->db);
    imc_worker_options_set_persisted(w, imc_router_persisted, s->router);
    imc_worker_options_set_log(w, log_line, NULL, IMC_LOG_WARN);
    rv = imc_worker_new(&s->worker, w, NULL);
  }
  if (rv == 0 && (rv = imc_api_options_new(&a, NULL)) == 0) {
    imc_api_options_set_store(a, imc_sqlite_store_vtbl(), s->db);
    imc_api_options_set_groups(a, imc_api_router_groups(), s->router);
    if (getenv("CHAT_ADMIN_TOKEN"))
      rv = imc_api_options_set_admin_token(a, getenv("CHAT_ADMIN_TOKEN"));
    if (rv == 0)
      rv = imc_api_new(&s->api, a, NULL);
  }
  if (rv == 0) {
    imc_api_set_group_changed(s->api, group_changed, s);
    rv = imc_fanout_new(&s->fanout, s->gw, imc_membus_vtbl(), s->bus,
                        imc_sqlite_store_vtbl(), s->db, NULL, 30000, NULL);
  }
  if (rv == 0 && (rv = imc_worker_start(s->worker)) == 0)
    rv = imc_fanout_start(s->fanout);
  imc_gateway_options_del(g); /* each object copied what it needs */
  imc_router_options_del(r);
  imc_worker_options_del(w);
  imc_api_options_del(a);
  if (rv != 0)
    fprintf(stderr, "chat: %s%s%s\n", imc_strerror(rv), s->db ? ": " : "",
            s->db ? imc_sqlite_errmsg(s->db) : "");
  return rv;
}

static void free_chat(server *s) {
  /* Stop the consumers and let the worker persist what the router queued
   * (un-ACKed pushes included); then delete the backends (which completes
   * what they still hold), and then the library objects. */
  imc_worker_stop(s->worker);
  imc_fanout_stop(s->fanout);
  for (int i = 0;
       i < 100 && s->fanout &&
       (imc_worker_pending(s->worker) || imc_router_pending(s->router));
       i++)
    run_library(s);
  imc_membus_del(s->bus);
  imc_sqlite_del(s->db);
  imc_fanout_del(s->fanout);
  imc_worker_del(s->worker);
  imc_router_del(s->router);
  imc_api_del(s->api);
  imc_gateway_del(s->gw); /* releases its connections; we close the fds */
  imc_memreg_del(s->reg);
}

static int print_token(const char *secret, const char *user) {
  char tok[IMC_JWT_SIGN_MAX];
  int64_t now = (int64_t)time(NULL);
  int n =
      imc_jwt_sign_hs256((const uint8_t *)secret, strlen(secret), user, NULL,
                         NULL, NULL, now, now + 3600, tok, sizeof(tok));
  if (n > 0)
    printf("token for %s: %s\n", user, tok);
  return n > 0 ? 0 : -1;
}

int main(int argc, char **argv) {
  const char *secret =
      getenv("CHAT_SECRET") ? getenv("CHAT_SECRET") : "example-secret";
  int port = argc > 1 ? atoi(argv[1]) : 8080;
  server *s = calloc(1, sizeof(*s));
  if (s == NULL || argc > 3 || port < 0 || port > 65535) {
    fprintf(stderr, "usage: chat_http_server [PORT [DBFILE]]\n");
    free(s);
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGPIPE, SIG_IGN);
  for (size_t i = 0; i < MAX_CONNS; i++)
    s->conns[i].fd = -1;
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigprocmask(SIG_BLOCK, &sigs, NULL);
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port = htons((uint16_t)port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof(sa);
  int one = 1, rc = 1;
  s->ep = epoll_create1(0);
  s->signal_fd = signalfd(-1, &sigs, SFD_NONBLOCK);
  s->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  struct epoll_event el = {.events = EPOLLIN, .data.ptr = NULL};
  struct epoll_event es = {.events = EPOLLIN, .data.ptr = &s->signal_fd};
  if (s->ep < 0 || s->signal_fd < 0 || s->listen_fd < 0 ||
      setsockopt(s->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, 4) < 0 ||
      bind(s->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
      listen(s->listen_fd, SOMAXCONN) < 0 ||
      getsockname(s->listen_fd, (struct sockaddr *)&sa, &sl) < 0 ||
      epoll_ctl(s->ep, EPOLL_CTL_ADD, s->listen_fd, &el) < 0 ||
      epoll_ctl(s->ep, EPOLL_CTL_ADD, s->signal_fd, &es) < 0) {
    perror("chat_http_server: setup");
  } else if (make_chat(s, argc > 2 ? argv[2] : "chat.db", secret) == 0 &&
             print_token(secret, "alice") == 0 &&
             print_token(secret, "bob") == 0) {
    printf("chat_http_server: listening on 127.0.0.1:%u\n",
           (unsigned)ntohs(sa.sin_port));
    run(s);
    rc = 0;
  }
  free_chat(s);
  for (size_t i = 0; i < MAX_CONNS; i++)
    if (s->conns[i].fd >= 0)
      close(s->conns[i].fd);
  if (s->listen_fd >= 0)
    close(s->listen_fd);
  close(s->signal_fd);
  close(s->ep);
  free(s);
  return rc;
}
