/* libFuzzer target: HTTP request heads, Host, Content-Length, Origin,
 * the WebSocket key, query strings, percent-decoding. */
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
    imc_ws_key_valid(h->value);
  }
  imc_span host;
  int has_host = imc_http_host(&req, &host) == 0;
  unsigned long long len;
  imc_http_content_length(&req, &len);
  h = imc_http_find(&req, "Origin");
  if (h) {
    char origin[128];
    imc_http_origin(h->value, NULL, origin, sizeof(origin));
    if (has_host && host.len > 0)
      imc_http_origin(h->value, &host, origin, sizeof(origin));
  }
  return 0;
}
