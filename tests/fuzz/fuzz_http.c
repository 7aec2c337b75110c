/* libFuzzer target: HTTP request heads, query strings, percent-decoding. */
#include "protocol/http.h"

#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  imc_http_hdr hdrs[16];
  imc_http_req req;
  if (imc_http_parse_request((const char *)data, size, &req, hdrs, 16) <= 0)
    return 0;
  char out[256];
  imc_query_get(req.query, "token", out, sizeof(out));
  size_t pos = 0;
  imc_span key, value;
  while (imc_query_next(req.query, &pos, &key, &value))
    imc_pct_decode(value, out, sizeof(out));
  const imc_http_hdr *h = imc_http_find(&req, "Connection");
  if (h)
    imc_http_has_token(h->value, "upgrade");
  h = imc_http_find(&req, "Sec-WebSocket-Key");
  if (h) {
    char accept[29];
    imc_ws_accept(h->value, accept);
  }
  return 0;
}
