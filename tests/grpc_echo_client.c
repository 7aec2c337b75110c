/*
 * A gRPC client host for the interoperability test (grpc_interop.py): an
 * imc_grpc_client on a poll() loop calls a stock Python gRPC server on
 * 127.0.0.1:<port> (argv[1]) serving imchat.test.Echo and
 * imchat.v1.Router/Send. Prints a line per check; exits 0 if all pass.
 */
#include <imchat/grpc_client.h>

#include "grpc_sock.h"
#include "im.pb-c.h"
#include "router.pb-c.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ECHO "/imchat.test.Echo/Echo"

typedef struct result {
  int n;
  int status;
  char msg[256];
  uint8_t *resp;
  size_t len;
} result;

static imc_grpc_client *cli;
static gsock sock;
static int failures, passes;

static void on_done(void *ud, int status, int error, const char *message,
                    const uint8_t *resp, size_t len) {
  result *r = ud;
  (void)error;
  r->n++;
  r->status = status;
  snprintf(r->msg, sizeof(r->msg), "%s", message);
  r->resp = malloc(len ? len : 1);
  memcpy(r->resp, resp ? resp : (const uint8_t *)"", len);
  r->len = len;
}

static void check(int ok, const char *what) {
  printf("%s %s\n", ok ? "ok" : "FAIL", what);
  if (ok)
    passes++;
  else
    failures++;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Runs the loop until no call is pending (or 20 s pass). */
static void run(void) {
  int64_t end = now_ms() + 20000;
  while (imc_grpc_client_pending(cli) > 0 && now_ms() < end) {
    if (imc_grpc_client_flush(cli) < 0)
      return;
    struct pollfd p = {.fd = sock.fd,
                       .events =
                           (short)(POLLIN | (sock.blocked ? POLLOUT : 0))};
    int64_t t = imc_grpc_client_next_timeout_ms(cli);
    if (t < 0 || t > 100)
      t = 100;
    if (poll(&p, 1, (int)t) < 0 && errno != EINTR)
      return;
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      uint8_t buf[65536];
      ssize_t n = read(sock.fd, buf, sizeof(buf));
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        imc_grpc_client_closed(cli);
        return;
      }
      if (n > 0 && imc_grpc_client_recv(cli, buf, (size_t)n) < 0)
        return;
    }
    imc_grpc_client_on_timeout(cli);
  }
}

static size_t varint(uint8_t *out, size_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    out[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  out[n++] = (uint8_t)v;
  return n;
}

/* An EchoMessage with text and/or data (protobuf wire format). */
static size_t echo_message(uint8_t *out, const char *text, const uint8_t *data,
                           size_t dlen) {
  size_t n = 0;
  if (text && *text) {
    out[n++] = 0x0a;
    n += varint(out + n, strlen(text));
    memcpy(out + n, text, strlen(text));
    n += strlen(text);
  }
  if (dlen) {
    out[n++] = 0x12;
    n += varint(out + n, dlen);
    memcpy(out + n, data, dlen);
    n += dlen;
  }
  return n;
}

static void test_concurrent(void) {
  enum { N = 50 };
  static result r[N];
  static uint8_t req[N][64];
  size_t len[N];
  for (int i = 0; i < N; i++) {
    char text[32];
    snprintf(text, sizeof(text), "hello-%d", i);
    len[i] = echo_message(req[i], text, NULL, 0);
    imc_grpc_client_call(cli, ECHO, req[i], len[i], 5000, on_done, &r[i]);
  }
  run();
  int ok = 1;
  for (int i = 0; i < N; i++) {
    ok &= r[i].n == 1 && r[i].status == IMC_GRPC_OK && r[i].len == len[i] &&
          memcmp(r[i].resp, req[i], len[i]) == 0;
    free(r[i].resp);
  }
  check(ok, "50 concurrent echo calls");
}

static void test_large(void) {
  size_t dlen = 1 << 20;
  uint8_t *data = malloc(dlen);
  uint8_t *req = malloc(dlen + 16);
  for (size_t i = 0; i < dlen; i++)
    data[i] = (uint8_t)(i * 31 + 7);
  size_t len = echo_message(req, "big", data, dlen);
  result r = {0};
  imc_grpc_client_call(cli, ECHO, req, len, 10000, on_done, &r);
  run();
  check(r.n == 1 && r.status == IMC_GRPC_OK && r.len == len &&
            memcmp(r.resp, req, len) == 0,
        "1 MiB echo through flow control");
  free(r.resp);
  free(req);
  free(data);
}

static void test_status(void) {
  result a = {0}, b = {0}, c = {0};
  imc_grpc_client_call(cli, "/imchat.test.Echo/Fail", NULL, 0, 5000, on_done,
                       &a);
  imc_grpc_client_call(cli, "/imchat.test.Echo/Nope", NULL, 0, 5000, on_done,
                       &b);
  imc_grpc_client_call(cli, "/imchat.test.Echo/Hold", NULL, 0, 300, on_done,
                       &c);
  run();
  check(a.n == 1 && a.status == IMC_GRPC_PERMISSION_DENIED &&
            strcmp(a.msg, "denied: \xc3\xbc 100%") == 0,
        "status and message from the server");
  check(b.n == 1 && b.status == IMC_GRPC_UNIMPLEMENTED, "unknown method");
  check(c.n == 1 && c.status == IMC_GRPC_DEADLINE_EXCEEDED, "deadline");
  free(a.resp);
  free(b.resp);
  free(c.resp);
}

static void test_router_send(void) {
  Imchat__V1__RouteRequest rq = IMCHAT__V1__ROUTE_REQUEST__INIT;
  rq.from_user = "alice";
  rq.from_device = "phone";
  rq.node_id = "gw-1";
  rq.conn_id = 7;
  rq.client_msg_id = "c-1";
  rq.to_user = "bob";
  rq.body.data = (uint8_t *)"hi";
  rq.body.len = 2;
  rq.content_type = "text/plain";
  uint8_t buf[256];
  size_t n = imchat__v1__route_request__pack(&rq, buf);
  result r = {0};
  imc_grpc_client_call(cli, "/imchat.v1.Router/Send", buf, n, 5000, on_done,
                       &r);
  run();
  Imchat__V1__SendAck *ack =
      r.status == IMC_GRPC_OK
          ? imchat__v1__send_ack__unpack(NULL, r.len, r.resp)
          : NULL;
  check(ack != NULL && strcmp(ack->msg_id, "py-c-1") == 0 &&
            strcmp(ack->conversation_id, "p:alice:bob") == 0 && ack->seq == 7,
        "Router.Send with router.proto");
  if (ack)
    imchat__v1__send_ack__free_unpacked(ack, NULL);
  free(r.resp);
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc != 2) {
    fprintf(stderr, "usage: grpc_echo_client PORT\n");
    return 2;
  }
  sock.fd = gsock_connect(atoi(argv[1]));
  imc_grpc_client_options *o = NULL;
  if (sock.fd < 0 || imc_grpc_client_options_new(&o, NULL) < 0) {
    fprintf(stderr, "grpc_echo_client: cannot connect\n");
    return 2;
  }
  imc_grpc_client_options_set_transport(o, &gsock_transport, NULL);
  int rv = imc_grpc_client_new(&cli, o, NULL);
  imc_grpc_client_options_del(o);
  if (rv < 0)
    return 2;
  imc_grpc_client_set_user_data(cli, &sock);
  test_concurrent();
  test_large();
  test_status();
  test_router_send();
  check(imc_grpc_client_usable(cli) && imc_grpc_client_pending(cli) == 0,
        "connection still usable");
  imc_grpc_client_del(cli);
  if (sock.fd >= 0)
    close(sock.fd);
  printf("%d passed, %d failed\n", passes, failures);
  return failures ? 1 : 0;
}
