/*
 * libFuzzer target: what a gateway (or anything pretending to be one)
 * sends an imc_client. The first byte picks what the rest is: 0 the
 * answer to the upgrade, 1 server frames after a valid 101, 2 the answer
 * to an offline sync request, 3 a history page. The random source is
 * fixed, so the expected Sec-WebSocket-Accept is known.
 */
#include <imchat/client.h>

#include "protocol/http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int fixed_random(void *ud, uint8_t *buf, size_t len) {
  (void)ud;
  memset(buf, 0x42, len);
  return 0;
}

static void on_history(void *ud, const imc_msg *m) {
  (void)ud;
  (void)m;
}

static char head_101[256];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0)
    return 0;
  if (head_101[0] == '\0') {
    /* base64 of 16 bytes of 0x42 */
    static const char key[] = "QkJCQkJCQkJCQkJCQkJCQg==";
    char accept[29];
    imc_span ks = {key, sizeof(key) - 1};
    imc_ws_accept(ks, accept);
    snprintf(head_101, sizeof(head_101),
             "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
             "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
             accept);
  }
  imc_client_options *o;
  imc_client *c;
  if (imc_client_options_new(&o, NULL) != 0)
    return 0;
  imc_client_options_set_store_path(o, ":memory:");
  imc_client_options_set_token(o, "token");
  imc_client_options_set_random(o, fixed_random, NULL);
  int rv = imc_client_new(&c, o, NULL);
  imc_client_options_del(o);
  if (rv != 0)
    return 0;
  imc_client_send(c, "bob", NULL, (const uint8_t *)"x", 1, NULL, NULL);
  const uint8_t *req;
  size_t len;
  switch (data[0] & 3) {
  case 0:
  case 1:
    imc_client_start(c);
    imc_client_connected(c);
    if (data[0] & 1)
      imc_client_recv(c, (const uint8_t *)head_101, strlen(head_101));
    /* In two parts, to cross frame boundaries. */
    imc_client_recv(c, data + 1, (size - 1) / 2);
    imc_client_recv(c, data + 1 + (size - 1) / 2, size - 1 - (size - 1) / 2);
    while (imc_client_output(c, &req) > 0)
      imc_client_output_consume(c, 1 << 20);
    imc_client_on_timeout(c);
    imc_client_disconnected(c, 0);
    break;
  case 2:
    if (imc_client_sync_request(c, &req, &len) == 0)
      imc_client_sync_response(c, data + 1, size - 1);
    break;
  default:
    if (imc_client_history_request(c, "p:alice:bob", 0, &req, &len) == 0) {
      imc_client_history_response(c, data + 1, size - 1, on_history, NULL,
                                  NULL);
      imc_client_history_response(c, data + 1, size - 1, NULL, NULL, NULL);
    }
    break;
  }
  imc_client_del(c);
  return 0;
}
