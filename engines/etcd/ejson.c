/*
 * etcd's JSON gateway speaks protobuf's JSON mapping: int64 values are
 * decimal strings, bytes are standard base64, members holding a zero
 * value are left out, and errors carry a gRPC code.
 */
#include "etcd_int.h"

#include "protocol/base64.h"

#include <stdio.h>
#include <string.h>

int ej_u64(const imc_json_value *v, uint64_t *out) {
  const char *p = v->p, *end = v->p + v->len;
  if (v->type == IMC_JSON_STRING) {
    p++;
    end--;
  } else if (v->type != IMC_JSON_NUMBER) {
    return IMC_ERR_PROTO;
  }
  if (p == end)
    return IMC_ERR_PROTO;
  uint64_t x = 0;
  for (; p < end; p++) {
    if (*p < '0' || *p > '9' || x > (UINT64_MAX - 9) / 10)
      return IMC_ERR_PROTO;
    x = x * 10 + (uint64_t)(*p - '0');
  }
  *out = x;
  return 0;
}

int ej_member_u64(const imc_json_value *obj, const char *name, uint64_t *out) {
  imc_json_value v;
  int rv = imc_json_member(obj, name, &v);
  if (rv == IMC_ERR_NOT_FOUND) {
    *out = 0;
    return 0;
  }
  if (rv < 0)
    return IMC_ERR_PROTO;
  return ej_u64(&v, out);
}

int ej_member_true(const imc_json_value *obj, const char *name) {
  imc_json_value v;
  return imc_json_member(obj, name, &v) == 0 && v.type == IMC_JSON_TRUE;
}

int ej_bytes(const imc_json_value *v, imc_wbuf *buf, const char **out,
             size_t *len) {
  /* Base64 needs no JSON escapes, and etcd writes none. */
  if (v->type != IMC_JSON_STRING || memchr(v->p, '\\', v->len) != NULL)
    return IMC_ERR_PROTO;
  size_t n = v->len - 2;
  buf->len = 0;
  char *p = imc_wbuf_reserve(buf, IMC_BASE64_DECODED_MAX(n) + 1);
  if (p == NULL)
    return IMC_ERR_NOMEM;
  size_t got;
  if (imc_base64_decode(v->p + 1, n, (uint8_t *)p, &got) < 0)
    return IMC_ERR_PROTO;
  p[got] = '\0';
  buf->len = got;
  *out = p;
  *len = got;
  return 0;
}

/* gRPC status codes (etcd's errors) as IMC_ERR_*. Anything that may
 * have happened or may work later is UNAVAILABLE: outcome unknown. */
static int grpc_status(int64_t code) {
  switch (code) {
  case 0:
    return 0;
  case 3:  /* INVALID_ARGUMENT: e.g. too many operations in a txn */
  case 11: /* OUT_OF_RANGE */
    return IMC_ERR_INVALID_ARGUMENT;
  case 5: /* NOT_FOUND: "requested lease not found" */
    return IMC_ERR_NOT_FOUND;
  case 6:
    return IMC_ERR_EXISTS;
  case 7:
    return IMC_ERR_FORBIDDEN;
  case 12: /* UNIMPLEMENTED */
    return IMC_ERR_IO;
  case 16:
    return IMC_ERR_AUTH;
  default: /* no leader, timeouts, cancelled, internal... */
    return IMC_ERR_UNAVAILABLE;
  }
}

static int http_status(long http) {
  if (http == 200)
    return 0;
  if (http == 400)
    return IMC_ERR_INVALID_ARGUMENT;
  if (http == 401)
    return IMC_ERR_AUTH;
  if (http == 403)
    return IMC_ERR_FORBIDDEN;
  if (http == 404)
    return IMC_ERR_NOT_FOUND;
  return IMC_ERR_UNAVAILABLE;
}

int ej_status(long http, const imc_json_value *root) {
  imc_json_value err, code;
  if (root != NULL && imc_json_member(root, "error", &err) == 0) {
    /* Unary calls: {"error": "...", "code": 5}; streams:
     * {"error": {"grpc_code": 5, ...}}. */
    int found = err.type == IMC_JSON_OBJECT
                    ? imc_json_member(&err, "grpc_code", &code)
                    : imc_json_member(root, "code", &code);
    int64_t c;
    if (found == 0 && imc_json_int64(&code, &c) == 0 && c != 0)
      return grpc_status(c);
    return http == 200 ? IMC_ERR_UNAVAILABLE : http_status(http);
  }
  if (http == 200)
    return root != NULL ? 0 : IMC_ERR_PROTO;
  return http_status(http);
}

void ej_kv_bytes(imc_jsonw *w, const char *name, const char *p, size_t n) {
  imc_jsonw_key(w, name);
  imc_jsonw_base64(w, (const uint8_t *)p, n);
}

void ej_kv_id(imc_jsonw *w, const char *name, uint64_t v) {
  char s[24];
  snprintf(s, sizeof(s), "%llu", (unsigned long long)v);
  imc_jsonw_kv_string(w, name, s);
}

size_t ej_user_key(const imc_etcd *e, char *out, const char *user,
                   const char *device) {
  int n = snprintf(out, ETCD_KEY_MAX, "%susers/%s/%s", e->prefix, user,
                   device ? device : "");
  return (size_t)n;
}

size_t ej_addr_key(const imc_etcd *e, char *out, const char *node) {
  return (size_t)snprintf(out, ETCD_KEY_MAX, "%saddrs/%s", e->prefix, node);
}

void ej_prefix_end(const char *p, size_t n, char *out, size_t *out_len) {
  memcpy(out, p, n);
  while (n > 0) {
    unsigned char c = (unsigned char)out[n - 1];
    if (c < 0xff) {
      out[n - 1] = (char)(c + 1);
      break;
    }
    n--;
  }
  *out_len = n;
}
