/*
 * echo_server - a complete server built on libimchat's gateway, in one file.
 *
 * libimchat does no I/O. A host accepts sockets, hands every byte it reads
 * to the gateway, writes what the gateway gives its transport, and tells it
 * when time has passed. The production hosts do this with an epoll adapter;
 * this example does it with plain poll(2), so the whole contract fits in one
 * loop. Instead of a router, a tiny upstream acknowledges every message and
 * sends it straight back to its sender.
 *
 *   echo_server [PORT [SECRET]]     PORT 0 picks a free port
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* IOV_MAX, signalfd */
#endif
#include <imchat/memreg.h>
#include <imchat/gateway.h>
#include <imchat/jwt.h>

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_CLIENTS 256 /* a fixed table keeps the example short */
#define DRAIN_MS 3000   /* how long shutdown waits for clients to go */
#define TOKEN_TTL_S 3600

/* One client socket; fd is -1 while the slot is free. */
typedef struct client {
  int fd;
  imc_conn *conn; /* the gateway's handle for it */
  int want_out;   /* a write hit EAGAIN: wait for POLLOUT */
} client;

typedef struct server {
  imc_gateway *gw;
  imc_memreg *reg;
  int listen_fd;
  int signal_fd;
  uint64_t echo_count;
  client clients[MAX_CLIENTS];
} server;

static int64_t clock_ms(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void release_slot(client *cl) {
  close(cl->fd);
  cl->fd = -1;
  cl->conn = NULL;
  cl->want_out = 0;
}

/* ------------------------------------------------------------------ */
/* Transport: how the gateway writes to and closes our sockets          */
/* ------------------------------------------------------------------ */

/*
 * Called from imc_gateway_flush() and imc_gateway_conn_writable() with
 * everything one connection has queued, so many frames cost one writev.
 */
static ssize_t transport_send(void *ud, void *conn_ud, const struct iovec *iov,
                              int iovcnt) {
  client *cl = conn_ud;
  if (iovcnt > IOV_MAX)
    iovcnt = IOV_MAX; /* a partial write is fine; the rest comes next time */
  for (;;) {
    ssize_t n = writev(cl->fd, iov, iovcnt);
    if (n >= 0)
      return n;
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      /* The gateway keeps the bytes and waits for conn_writable. */
      cl->want_out = 1;
      return IMC_ERR_WOULDBLOCK;
    }
    return IMC_ERR_IO; /* the gateway drops the connection */
  }
}

/*
 * The gateway is done with a connection: after a close handshake, an HTTP
 * answer, a timeout or a protocol error. It may call this from any gateway
 * call, so the loop re-checks a slot before using it. (The production hosts
 * linger after shutdown(SHUT_WR) so unread input cannot turn the close into
 * a reset; an example can simply close.)
 */
static void transport_close(void *ud, void *conn_ud) {
  release_slot(conn_ud);
}

static const imc_transport_vtbl transport = {
    .struct_size = sizeof(imc_transport_vtbl), /* versioned: size first */
    .send = transport_send,
    .close = transport_close,
};

/* ------------------------------------------------------------------ */
/* Upstream: what a router would do, reduced to an echo                 */
/* ------------------------------------------------------------------ */

/* A SendRequest of an authenticated client. */
static int echo_send(void *ud, const imc_send_req *req, imc_send_cb done,
                     void *done_ud) {
  server *srv = ud;
  uint64_t n = ++srv->echo_count; /* a router keeps one seq per conversation */
  char msg_id[32], conversation[sizeof("echo:") + IMC_ID_MAX];
  snprintf(msg_id, sizeof(msg_id), "echo-%" PRIu64, n);
  snprintf(conversation, sizeof(conversation), "echo:%s", req->from_user);
  int64_t now = clock_ms(CLOCK_REALTIME);

  /* Complete first, so the client sees its SendAck before the echo. A
   * backend may also complete later, from the loop; it must complete once. */
  imc_send_result res = {.client_msg_id = req->client_msg_id,
                         .msg_id = msg_id,
                         .conversation_id = conversation,
                         .seq = n,
                         .sent_at_ms = now};
  done(done_ud, 0, &res, NULL);

  /* Push it to every device of the sender (skip none). The gateway copies
   * the message and waits for each device's DeliverAck. */
  imc_msg m = {.struct_size = sizeof(m),
               .msg_id = msg_id,
               .conversation_id = conversation,
               .seq = n,
               .from_user = "echo",
               .to_user = req->from_user,
               .group_id = "",
               .body = req->body,
               .body_len = req->body_len,
               .content_type = req->content_type,
               .sent_at_ms = now,
               .client_msg_id = req->client_msg_id,
               .from_device = ""};
  int rv = imc_gateway_deliver(srv->gw, req->from_user, NULL, &m);
  if (rv < 0)
    fprintf(stderr, "echo %s: %s\n", msg_id, imc_strerror(rv));
  return 0;
}

static int echo_delivered(void *ud, const imc_msg *msg, const char *user_id,
                          const char *device_id, imc_done_cb done,
                          void *done_ud) {
  printf("%s/%s acknowledged %s\n", user_id, device_id, msg->msg_id);
  done(done_ud, 0);
  return 0;
}

/* Not acknowledged in time, or the connection went: a router would keep it
 * in the user's offline inbox. An echo has nowhere to keep it. */
static int echo_undelivered(void *ud, const imc_msg *msg, const char *user_id,
                            imc_done_cb done, void *done_ud) {
  printf("%s did not acknowledge %s; dropped\n", user_id, msg->msg_id);
  done(done_ud, 0);
  return 0;
}

static const imc_upstream_vtbl echo_upstream = {
    .struct_size = sizeof(imc_upstream_vtbl),
    .send = echo_send,
    .delivered = echo_delivered,
    .undelivered = echo_undelivered,
};

/* The library never prints; it hands its log lines to the host. */
static void log_line(void *ud, imc_log_level level, const char *line) {
  static const char *const names[] = {"error", "warn", "info", "debug"};
  fprintf(stderr, "imchat %s: %s\n",
          (unsigned)level <= IMC_LOG_DEBUG ? names[level] : "?", line);
}

/* ------------------------------------------------------------------ */
/* Setup                                                                */
/* ------------------------------------------------------------------ */

static int make_gateway(server *srv, const char *secret) {
  imc_gateway_options *opt;
  int rv = imc_gateway_options_new(&opt, NULL); /* NULL: malloc/free */
  if (rv == 0)
    rv = imc_gateway_options_set_node_id(opt, "echo");
  if (rv == 0)
    rv = imc_gateway_options_set_jwt_secret(opt, (const uint8_t *)secret,
                                            strlen(secret));
  if (rv == 0) /* ud NULL: each connection's conn_ud is its client slot */
    rv = imc_gateway_options_set_transport(opt, &transport, NULL);
  if (rv == 0) /* the gateway registers every device it accepts */
    rv = imc_gateway_options_set_registry(opt, imc_memreg_vtbl(), srv->reg);
  if (rv == 0)
    rv = imc_gateway_options_set_upstream(opt, &echo_upstream, srv);
  if (rv == 0)
    rv = imc_gateway_options_set_log(opt, log_line, NULL, IMC_LOG_INFO);
  if (rv == 0)
    rv = imc_gateway_new(&srv->gw, opt, NULL);
  imc_gateway_options_del(opt); /* the gateway copied what it needs */
  if (rv != 0)
    fprintf(stderr, "gateway: %s\n", imc_strerror(rv));
  return rv;
}

static int listen_on(uint16_t port, uint16_t *bound) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    perror("socket");
    return -1;
  }
  int one = 1;
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port = htons(port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(sa);
  /* SO_REUSEADDR: restart at once while old sockets sit in TIME_WAIT. */
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
      bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
      listen(fd, SOMAXCONN) < 0 ||
      getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
    perror("listen on 127.0.0.1");
    close(fd);
    return -1;
  }
  *bound = ntohs(sa.sin_port);
  return fd;
}

/* ------------------------------------------------------------------ */
/* The loop                                                             */
/* ------------------------------------------------------------------ */

static client *free_slot(server *srv) {
  for (size_t i = 0; i < MAX_CLIENTS; i++)
    if (srv->clients[i].fd < 0)
      return &srv->clients[i];
  return NULL;
}

static void accept_clients(server *srv) {
  client *cl;
  while ((cl = free_slot(srv)) != NULL) {
    int fd = accept4(srv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        perror("accept4");
      return;
    }
    /* conn_ud (cl) comes back in every transport call for this socket. */
    int rv = imc_gateway_conn_new(srv->gw, &cl->conn, cl);
    if (rv != 0) {
      fprintf(stderr, "connection refused: %s\n", imc_strerror(rv));
      close(fd);
      continue;
    }
    cl->fd = fd;
  }
}

static void client_event(server *srv, client *cl, short revents) {
  if (revents & (POLLIN | POLLHUP | POLLERR)) {
    uint8_t buf[16384];
    ssize_t n = read(cl->fd, buf, sizeof(buf));
    if (n > 0) {
      /* A negative result means the gateway has closed the connection
       * through transport_close, which freed the slot: nothing to do. */
      imc_gateway_conn_recv(srv->gw, cl->conn, buf, (size_t)n);
      return; /* poll is level-triggered: the rest is reported again */
    }
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
      return;
    /* EOF or an error: we lost the socket, so the gateway releases the
     * connection without calling transport_close. */
    imc_gateway_conn_closed(srv->gw, cl->conn);
    release_slot(cl);
    return;
  }
  if ((revents & POLLOUT) && cl->want_out) {
    cl->want_out = 0; /* transport_send sets it again if it blocks again */
    imc_gateway_conn_writable(srv->gw, cl->conn);
  }
}

static void begin_shutdown(server *srv) {
  /* Stop accepting (the gateway would refuse new connections anyway). */
  close(srv->listen_fd);
  srv->listen_fd = -1; /* poll ignores negative fds */
  /* Queue close 1001 on every WebSocket and hand un-ACKed pushes to the
   * upstream; the loop goes on flushing until the clients answer. */
  imc_gateway_shutdown(srv->gw);
}

static int run(server *srv) {
  struct pollfd pfd[2 + MAX_CLIENTS];
  client *polled[MAX_CLIENTS]; /* the client of pfd[2 + i] */
  int64_t drain_until = -1;    /* set once a signal asks us to stop */
  for (;;) {
    /* Write everything the last pass queued (answers, echoes, pings, close
     * frames) just before sleeping: one writev per connection. A flush may
     * close connections, so the poll set is built after it. */
    imc_gateway_flush(srv->gw);
    int64_t now = clock_ms(CLOCK_MONOTONIC);
    if (drain_until >= 0) {
      size_t left = imc_gateway_conn_count(srv->gw);
      if (left == 0)
        return 0;
      if (now >= drain_until) {
        printf("%zu connection(s) still open after %d ms\n", left, DRAIN_MS);
        return 0;
      }
    }

    nfds_t nfds = 2;
    pfd[0] = (struct pollfd){.fd = srv->signal_fd, .events = POLLIN};
    /* While the table is full the listener is left out; -1 skips it. */
    pfd[1] = (struct pollfd){.fd = free_slot(srv) ? srv->listen_fd : -1,
                             .events = POLLIN};
    for (size_t i = 0; i < MAX_CLIENTS; i++) {
      client *cl = &srv->clients[i];
      if (cl->fd < 0)
        continue;
      /* Waiting to write, stop reading: a client that does not read our
       * answers cannot make us queue more of them. */
      polled[nfds - 2] = cl;
      pfd[nfds++] = (struct pollfd){.fd = cl->fd,
                                    .events = cl->want_out ? POLLOUT : POLLIN};
    }

    /* Sleep no longer than the gateway's next deadline (heartbeats, ACK
     * and handshake timeouts); -1 means it has none. */
    int64_t timeout = imc_gateway_next_timeout_ms(srv->gw);
    if (drain_until >= 0 && (timeout < 0 || drain_until - now < timeout))
      timeout = drain_until - now;
    if (poll(pfd, nfds, timeout > INT_MAX ? INT_MAX : (int)timeout) < 0) {
      if (errno == EINTR)
        continue;
      perror("poll");
      return -1;
    }

    if (pfd[0].revents & POLLIN) {
      struct signalfd_siginfo si;
      if (read(srv->signal_fd, &si, sizeof(si)) == (ssize_t)sizeof(si) &&
          drain_until < 0) {
        printf("%s: shutting down\n", strsignal((int)si.ssi_signo));
        begin_shutdown(srv);
        drain_until = now + DRAIN_MS;
      }
    }
    for (nfds_t i = 2; i < nfds; i++) {
      client *cl = polled[i - 2];
      /* Skip slots the gateway closed earlier in this pass. */
      if (pfd[i].revents != 0 && cl->fd == pfd[i].fd)
        client_event(srv, cl, pfd[i].revents);
    }
    /* Accept last: a new socket may reuse a number still in pfd. */
    if ((pfd[1].revents & POLLIN) && srv->listen_fd >= 0)
      accept_clients(srv);
    /* Run the deadlines that are due; a no-op when none is. */
    imc_gateway_on_timeout(srv->gw);
  }
}

/* ------------------------------------------------------------------ */
/* main                                                                 */
/* ------------------------------------------------------------------ */

static int print_banner(uint16_t port, const char *secret) {
  char token[IMC_JWT_SIGN_MAX];
  int64_t now_s = clock_ms(CLOCK_REALTIME) / 1000;
  int n = imc_jwt_sign_hs256((const uint8_t *)secret, strlen(secret), "alice",
                             NULL, NULL, NULL, now_s, now_s + TOKEN_TTL_S,
                             token, sizeof(token));
  if (n < 0) {
    fprintf(stderr, "imc_jwt_sign_hs256: %s\n", imc_strerror(n));
    return n;
  }
  printf("echo_server: listening on 127.0.0.1:%u\n", (unsigned)port);
  printf("token for alice (valid 1 h): %s\n", token);
  printf("connect to ws://127.0.0.1:%u/ws?token=%s\n", (unsigned)port, token);
  printf("(or send the token as \"Authorization: Bearer TOKEN\")\n");
  return 0;
}

int main(int argc, char **argv) {
  const char *secret = argc > 2 ? argv[2] : "example-secret";
  long port = 9000;
  if (argc > 1) {
    char *end;
    errno = 0;
    port = strtol(argv[1], &end, 10);
    if (errno != 0 || *end != '\0' || end == argv[1] || port < 0 ||
        port > 65535) {
      fprintf(stderr, "usage: %s [PORT [SECRET]]\n", argv[0]);
      return 2;
    }
  }
  /* Our output goes to terminals and pipes alike: one flush per line. */
  setvbuf(stdout, NULL, _IOLBF, 0);
  /* A write to a reset socket fails with EPIPE instead of killing us. */
  signal(SIGPIPE, SIG_IGN);

  server srv = {.listen_fd = -1, .signal_fd = -1};
  for (size_t i = 0; i < MAX_CLIENTS; i++)
    srv.clients[i].fd = -1;
  int rc = 1, rv;
  uint16_t bound;
  /* SIGINT and SIGTERM arrive as a readable fd, an event like any other. */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  if (sigprocmask(SIG_BLOCK, &sigs, NULL) < 0 ||
      (srv.signal_fd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC)) < 0) {
    perror("signalfd");
    goto out;
  }
  if ((srv.listen_fd = listen_on((uint16_t)port, &bound)) < 0)
    goto out;
  rv = imc_memreg_new(&srv.reg, NULL, NULL); /* NULL: system clock */
  if (rv != 0) {
    fprintf(stderr, "registry: %s\n", imc_strerror(rv));
    goto out;
  }
  if (make_gateway(&srv, secret) != 0 || print_banner(bound, secret) != 0)
    goto out;
  if (run(&srv) == 0)
    rc = 0;

out:
  /* Sockets still open after the drain are ours to close: imc_gateway_del
   * releases their connections without calling the transport. */
  for (size_t i = 0; i < MAX_CLIENTS; i++)
    if (srv.clients[i].fd >= 0)
      close(srv.clients[i].fd);
  /* Backends first, then the library objects that used them. */
  imc_memreg_del(srv.reg);
  imc_gateway_del(srv.gw);
  if (srv.listen_fd >= 0)
    close(srv.listen_fd);
  if (srv.signal_fd >= 0)
    close(srv.signal_fd);
  return rc;
}
