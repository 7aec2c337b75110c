/*
 * libFuzzer target: one client connection's byte stream into a gateway,
 * after a valid upgrade when the first byte is odd (so the WebSocket
 * framing and ClientFrame decoding are reached), one that negotiates
 * permessage-deflate when its top bit is set too (compressed messages),
 * cut into reads whose sizes come from the data. A push and the deletion
 * follow, so leaks of any state the stream created show up.
 */
#include <imchat/imchat.h>

#include <stdio.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static ssize_t t_send(void *ud, void *conn_ud, const struct iovec *iov, int n) {
  (void)ud;
  (void)conn_ud;
  size_t total = 0;
  for (int i = 0; i < n; i++)
    total += iov[i].iov_len;
  return (ssize_t)total;
}

static void t_close(void *ud, void *conn_ud) {
  (void)ud;
  *(int *)conn_ud = 1;
}

static const imc_transport_vtbl transport = {sizeof(imc_transport_vtbl), t_send,
                                             t_close, NULL};

static int u_send(void *ud, const imc_send_req *req, imc_send_cb done,
                  void *done_ud) {
  (void)ud;
  imc_send_result r = {req->client_msg_id, "m", "p:a:b", 1, 1};
  done(done_ud, 0, &r, NULL);
  return 0;
}

static const imc_upstream_vtbl upstream = {
    .struct_size = sizeof(imc_upstream_vtbl), .send = u_send};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static imc_gateway_options *opt;
  static char req[2][3072]; /* without and with permessage-deflate */
  static int req_len[2];
  if (opt == NULL) {
    imc_gateway_options_new(&opt, NULL);
    imc_gateway_options_set_transport(opt, &transport, NULL);
    imc_gateway_options_set_upstream(opt, &upstream, NULL);
    imc_gateway_options_set_jwt_secret(opt, (const uint8_t *)"fuzz", 4);
    imc_gateway_options_set_max_body(opt, 4096);
    char tok[IMC_JWT_SIGN_MAX];
    int64_t now = (int64_t)time(NULL);
    imc_jwt_sign_hs256((const uint8_t *)"fuzz", 4, "alice", NULL, NULL, NULL,
                       now, now + 86400, tok, sizeof(tok));
    for (int i = 0; i < 2; i++)
      req_len[i] = snprintf(
          req[i], sizeof(req[i]),
          "GET /ws HTTP/1.1\r\nHost: f\r\nUpgrade: websocket\r\n"
          "Connection: Upgrade\r\n"
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
          "Sec-WebSocket-Version: 13\r\n%s"
          "Authorization: Bearer %s\r\n\r\n",
          i ? "Sec-WebSocket-Extensions: permessage-deflate\r\n" : "", tok);
  }
  imc_gateway *gw;
  if (imc_gateway_new(&gw, opt, NULL) != 0)
    return 0;
  int closed = 0;
  imc_conn *c;
  int rv = imc_gateway_conn_new(gw, &c, &closed);
  int z = size > 0 && (data[0] & 0x80); /* with permessage-deflate */
  if (rv == 0 && size > 0 && (data[0] & 1)) {
    rv = imc_gateway_conn_recv(gw, c, (const uint8_t *)req[z],
                               (size_t)req_len[z]);
  }
  /* A flush may close the connection: the transport's close sets
   * closed, and c is gone then. */
  for (size_t off = 1; rv == 0 && !closed && off < size;) {
    size_t n = 1 + data[off - 1] % 64;
    if (n > size - off)
      n = size - off;
    rv = imc_gateway_conn_recv(gw, c, data + off, n);
    off += n;
    imc_gateway_flush(gw);
  }
  if (rv == 0 && !closed) {
    /* Over the threshold: compressed with the extension. */
    static const uint8_t big[2048];
    imc_msg m = {.struct_size = sizeof(imc_msg),
                 .msg_id = "m1",
                 .conversation_id = "p:alice:bob",
                 .seq = 1,
                 .from_user = "bob",
                 .to_user = "alice",
                 .group_id = "",
                 .body = z ? big : (const uint8_t *)"x",
                 .body_len = z ? sizeof(big) : 1,
                 .content_type = "",
                 .sent_at_ms = 1,
                 .client_msg_id = "c",
                 .from_device = "d"};
    imc_gateway_deliver(gw, "alice", NULL, &m);
    imc_gateway_flush(gw);
  }
  imc_gateway_del(gw);
  return 0;
}
