/*
 * libFuzzer target: HTTP/2 bytes from a peer of the gRPC layer. The first
 * byte picks the side: even, an imc_grpc_server connection gets the
 * client preface and then the rest; odd, an imc_grpc_client with three
 * calls in flight gets the rest as the server's bytes. The input arrives
 * in chunks whose sizes come from the first byte, with the clock moving
 * and deadlines firing between them. Handlers that hold calls answer them
 * at the end, as every handler must.
 */
#include <imchat/grpc_client.h>
#include <imchat/grpc_server.h>

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static ssize_t sink_send(void *ud, void *conn_ud, const struct iovec *iov,
                         int n) {
  (void)ud;
  (void)conn_ud;
  ssize_t total = 0;
  for (int i = 0; i < n; i++)
    total += (ssize_t)iov[i].iov_len;
  return total;
}

static int closed;

static void sink_close(void *ud, void *conn_ud) {
  (void)ud;
  (void)conn_ud;
  closed = 1;
}

static const imc_transport_vtbl sink = {sizeof(imc_transport_vtbl), sink_send,
                                        sink_close, NULL};

static int64_t now;

static int64_t fake_now(void *ud) {
  (void)ud;
  return now;
}

static const imc_clock fake_clock = {NULL, fake_now, fake_now};

#define MAX_HELD 64
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
  imc_grpc_call_fail(call, IMC_ERR_TOO_LARGE, "too large %");
}

static void h_hold(void *ud, imc_grpc_call *call, const uint8_t *req,
                   size_t len) {
  (void)ud;
  (void)req;
  (void)len;
  if (n_held == MAX_HELD)
    imc_grpc_call_reply(call, IMC_GRPC_UNAVAILABLE, NULL, NULL, 0);
  else
    held[n_held++] = call;
}

static void on_done(void *ud, int status, int error, const char *message,
                    const uint8_t *resp, size_t len) {
  (void)ud;
  (void)status;
  (void)error;
  (void)message;
  (void)resp;
  (void)len;
}

static void fuzz_server(const uint8_t *data, size_t size, size_t chunk) {
  static const uint8_t preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  imc_grpc_server_options *o;
  imc_grpc_server *s;
  imc_grpc_conn *c;
  if (imc_grpc_server_options_new(&o, NULL) != 0)
    return;
  imc_grpc_server_options_add_method(o, "/t.S/Echo", h_echo, NULL);
  imc_grpc_server_options_add_method(o, "/t.S/Fail", h_fail, NULL);
  imc_grpc_server_options_add_method(o, "/t.S/Hold", h_hold, NULL);
  imc_grpc_server_options_set_transport(o, &sink, NULL);
  imc_grpc_server_options_set_clock(o, &fake_clock);
  imc_grpc_server_options_set_max_message(o, 1024);
  imc_grpc_server_options_set_max_streams(o, 8);
  imc_grpc_server_options_set_reset_limit(o, 16, 1000);
  int rv = imc_grpc_server_new(&s, o, NULL);
  imc_grpc_server_options_del(o);
  if (rv != 0)
    return;
  int gone = imc_grpc_conn_new(s, &c, NULL) != 0 ||
             imc_grpc_conn_recv(c, preface, sizeof(preface) - 1) < 0;
  for (size_t off = 0; off < size && !gone; off += chunk) {
    size_t n = size - off < chunk ? size - off : chunk;
    gone = imc_grpc_conn_recv(c, data + off, n) < 0;
    now += 100;
    imc_grpc_server_on_timeout(s);
    if (!gone)
      gone = imc_grpc_server_flush(s) > 0;
  }
  for (int i = 0; i < n_held; i++)
    imc_grpc_call_reply(held[i], IMC_GRPC_OK, NULL, NULL, 0);
  n_held = 0;
  if (!gone)
    imc_grpc_conn_closed(c);
  imc_grpc_server_del(s);
}

static void fuzz_client(const uint8_t *data, size_t size, size_t chunk) {
  imc_grpc_client_options *o;
  imc_grpc_client *c;
  if (imc_grpc_client_options_new(&o, NULL) != 0)
    return;
  imc_grpc_client_options_set_transport(o, &sink, NULL);
  imc_grpc_client_options_set_clock(o, &fake_clock);
  imc_grpc_client_options_set_max_message(o, 1024);
  int rv = imc_grpc_client_new(&c, o, NULL);
  imc_grpc_client_options_del(o);
  if (rv != 0)
    return;
  imc_grpc_client_call(c, "/t.S/Echo", (const uint8_t *)"abc", 3, 0, on_done,
                       NULL);
  imc_grpc_client_call(c, "/t.S/Fail", NULL, 0, 250, on_done, NULL);
  imc_grpc_client_call(c, "/t.S/Hold", NULL, 0, 1000, on_done, NULL);
  imc_grpc_client_flush(c);
  for (size_t off = 0; off < size; off += chunk) {
    size_t n = size - off < chunk ? size - off : chunk;
    if (imc_grpc_client_recv(c, data + off, n) < 0)
      break;
    now += 100;
    imc_grpc_client_on_timeout(c);
    if (imc_grpc_client_flush(c) < 0)
      break;
  }
  imc_grpc_client_del(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  size_t chunk = (size_t)(data[0] >> 1) * 8 + 1;
  now = 1000;
  closed = 0;
  if (data[0] & 1)
    fuzz_client(data + 1, size - 1, chunk);
  else
    fuzz_server(data + 1, size - 1, chunk);
  return 0;
}
