/*
 * A gRPC server host for the interoperability test (grpc_interop.py): an
 * imc_grpc_server on a poll() loop over 127.0.0.1, serving
 * imchat.test.Echo (grpc_echo.proto) and imchat.v1.Router/Send with a
 * fake router. Prints "PORT <n>" once listening; exits when stdin closes.
 */
#include <imchat/grpc_server.h>

#include "grpc_sock.h"
#include "im.pb-c.h"
#include "router.pb-c.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CONNS 64
#define MAX_HELD 1024

typedef struct slot {
  gsock g;
  imc_grpc_conn *c; /* NULL: free */
} slot;

static slot slots[MAX_CONNS];
static imc_grpc_call *held[MAX_HELD];
static int n_held;

static void h_echo(void *ud, imc_grpc_call *call, const uint8_t *req,
                   size_t len) {
  (void)ud;
  imc_grpc_call_reply(call, IMC_GRPC_OK, NULL, req, len);
}

static void h_fail(void *ud, imc_grpc_call *call, const uint8_t *req,
                   size_t len) {
  (void)ud;
  (void)req;
  (void)len;
  imc_grpc_call_fail(call, IMC_ERR_FORBIDDEN, "not allowed: \xc3\xbc 100%");
}

/* Kept until its caller gives up (the loop answers cancelled calls). */
static void h_hold(void *ud, imc_grpc_call *call, const uint8_t *req,
                   size_t len) {
  (void)ud;
  (void)req;
  (void)len;
  if (n_held == MAX_HELD)
    imc_grpc_call_fail(call, IMC_ERR_UNAVAILABLE, "too many held calls");
  else
    held[n_held++] = call;
}

/* A fake router: every send gets seq 42. */
static void h_send(void *ud, imc_grpc_call *call, const uint8_t *req,
                   size_t len) {
  (void)ud;
  Imchat__V1__RouteRequest *rq =
      imchat__v1__route_request__unpack(NULL, len, req);
  if (rq == NULL) {
    imc_grpc_call_fail(call, IMC_ERR_INVALID_ARGUMENT, "bad RouteRequest");
    return;
  }
  if (rq->to_user[0] == '\0' && rq->group_id[0] == '\0') {
    imc_grpc_call_fail(call, IMC_ERR_INVALID_ARGUMENT, "no recipient");
  } else {
    char msg_id[160], conv[160];
    snprintf(msg_id, sizeof(msg_id), "m-%s", rq->client_msg_id);
    snprintf(conv, sizeof(conv), "p:%s:%s", rq->from_user, rq->to_user);
    Imchat__V1__SendAck ack = IMCHAT__V1__SEND_ACK__INIT;
    ack.client_msg_id = rq->client_msg_id;
    ack.msg_id = msg_id;
    ack.conversation_id = conv;
    ack.seq = 42;
    ack.sent_at_ms = 1700000000000LL;
    uint8_t buf[1024];
    size_t n = imchat__v1__send_ack__pack(&ack, buf);
    imc_grpc_call_reply(call, IMC_GRPC_OK, NULL, buf, n);
  }
  imchat__v1__route_request__free_unpacked(rq, NULL);
}

static void answer_cancelled(void) {
  for (int i = 0; i < n_held;) {
    if (imc_grpc_call_cancelled(held[i])) {
      imc_grpc_call_reply(held[i], IMC_GRPC_CANCELLED, NULL, NULL, 0);
      held[i] = held[--n_held];
    } else {
      i++;
    }
  }
}

static imc_grpc_server *make_server(void) {
  imc_grpc_server_options *o = NULL;
  imc_grpc_server *s = NULL;
  if (imc_grpc_server_options_new(&o, NULL) < 0)
    return NULL;
  imc_grpc_server_options_add_method(o, "/imchat.test.Echo/Echo", h_echo, NULL);
  imc_grpc_server_options_add_method(o, "/imchat.test.Echo/Fail", h_fail, NULL);
  imc_grpc_server_options_add_method(o, "/imchat.test.Echo/Hold", h_hold, NULL);
  imc_grpc_server_options_add_method(o, "/imchat.v1.Router/Send", h_send, NULL);
  imc_grpc_server_options_set_transport(o, &gsock_transport, NULL);
  if (imc_grpc_server_new(&s, o, NULL) < 0)
    s = NULL;
  imc_grpc_server_options_del(o);
  return s;
}

static void accept_all(imc_grpc_server *s, int lfd) {
  int fd;
  while ((fd = accept(lfd, NULL, NULL)) >= 0) {
    slot *sl = NULL;
    for (int i = 0; i < MAX_CONNS && sl == NULL; i++)
      if (slots[i].c == NULL)
        sl = &slots[i];
    if (sl == NULL || gsock_nonblock(fd) < 0) {
      close(fd);
      continue;
    }
    sl->g.fd = fd;
    sl->g.blocked = 0;
    if (imc_grpc_conn_new(s, &sl->c, &sl->g) < 0) {
      sl->c = NULL;
      close(fd);
    }
  }
}

/* Reads and writes the connection of sl as poll said. */
static void serve(slot *sl, short revents) {
  if (revents & POLLOUT)
    if (imc_grpc_conn_writable(sl->c) < 0)
      return; /* the transport closed it */
  if (!(revents & (POLLIN | POLLHUP | POLLERR)))
    return;
  uint8_t buf[65536];
  ssize_t n = read(sl->g.fd, buf, sizeof(buf));
  if (n < 0 && (errno == EAGAIN || errno == EINTR))
    return;
  if (n <= 0) {
    imc_grpc_conn_closed(sl->c);
    close(sl->g.fd);
    sl->g.fd = -1;
    return;
  }
  imc_grpc_conn_recv(sl->c, buf, (size_t)n);
}

/* Frees the slots whose socket is closed (by the transport or above). */
static void sweep(void) {
  for (int i = 0; i < MAX_CONNS; i++)
    if (slots[i].c != NULL && slots[i].g.fd < 0)
      slots[i].c = NULL;
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  int port = 0;
  int lfd = gsock_listen(&port);
  imc_grpc_server *s = make_server();
  if (lfd < 0 || s == NULL) {
    fprintf(stderr, "grpc_echo_server: cannot start\n");
    return 1;
  }
  printf("PORT %d\n", port);
  fflush(stdout);
  for (;;) {
    struct pollfd p[MAX_CONNS + 2];
    int idx[MAX_CONNS + 2];
    int n = 0;
    p[n++] = (struct pollfd){.fd = lfd, .events = POLLIN};
    p[n++] = (struct pollfd){.fd = 0, .events = POLLIN};
    for (int i = 0; i < MAX_CONNS; i++) {
      if (slots[i].c == NULL)
        continue;
      idx[n] = i;
      p[n++] = (struct pollfd){
          .fd = slots[i].g.fd,
          .events = (short)(POLLIN | (slots[i].g.blocked ? POLLOUT : 0))};
    }
    int64_t t = imc_grpc_server_next_timeout_ms(s);
    if (t < 0 || t > 50)
      t = 50; /* held calls are checked for cancellation this often */
    if (poll(p, (nfds_t)n, (int)t) < 0 && errno != EINTR)
      break;
    if (p[1].revents) {
      char c;
      if (read(0, &c, 1) <= 0)
        break;
    }
    if (p[0].revents & POLLIN)
      accept_all(s, lfd);
    for (int k = 2; k < n; k++)
      if (p[k].revents && slots[idx[k]].c != NULL && slots[idx[k]].g.fd >= 0)
        serve(&slots[idx[k]], p[k].revents);
    sweep();
    imc_grpc_server_on_timeout(s);
    answer_cancelled();
    imc_grpc_server_flush(s);
    sweep();
  }
  for (int i = 0; i < n_held; i++)
    imc_grpc_call_reply(held[i], IMC_GRPC_UNAVAILABLE, "shutting down", NULL,
                        0);
  for (int i = 0; i < MAX_CONNS; i++)
    if (slots[i].c != NULL) {
      imc_grpc_conn_closed(slots[i].c);
      close(slots[i].g.fd);
    }
  imc_grpc_server_del(s);
  close(lfd);
  return 0;
}
