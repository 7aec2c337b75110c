/*
 * gRPC statuses: names, the mapping to and from IMC_ERR_*, the statuses
 * gRPC gives HTTP/2 resets and bare HTTP answers, and the encodings of
 * grpc-message, grpc-timeout and imc-error.
 */
#include "rpc/rpc_int.h"

#include <stdio.h>
#include <string.h>

static const char *const names[] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

const char *imc_grpc_status_name(int status) {
  if (status < 0 || status > IMC_GRPC_UNAUTHENTICATED)
    return "UNKNOWN";
  return names[status];
}

int imc_grpc_status_from_error(int error) {
  switch (error) {
  case 0:
    return IMC_GRPC_OK;
  case IMC_ERR_INVALID_ARGUMENT:
    return IMC_GRPC_INVALID_ARGUMENT;
  case IMC_ERR_NOT_FOUND:
    return IMC_GRPC_NOT_FOUND;
  case IMC_ERR_EXISTS:
    return IMC_GRPC_ALREADY_EXISTS;
  case IMC_ERR_FORBIDDEN:
    return IMC_GRPC_PERMISSION_DENIED;
  case IMC_ERR_AUTH:
  case IMC_ERR_EXPIRED:
    return IMC_GRPC_UNAUTHENTICATED;
  case IMC_ERR_BLOCKED:
    return IMC_GRPC_FAILED_PRECONDITION;
  case IMC_ERR_TOO_LARGE:
  case IMC_ERR_RATE_LIMITED:
  case IMC_ERR_QUEUE_FULL:
  case IMC_ERR_NOMEM:
    return IMC_GRPC_RESOURCE_EXHAUSTED;
  case IMC_ERR_UNAVAILABLE:
  case IMC_ERR_WOULDBLOCK:
  case IMC_ERR_IO:
    return IMC_GRPC_UNAVAILABLE;
  case IMC_ERR_CLOSED:
    return IMC_GRPC_CANCELLED;
  case IMC_ERR_REVOKED:
    return IMC_GRPC_ABORTED;
  default:
    return IMC_GRPC_INTERNAL;
  }
}

int imc_grpc_status_to_error(int status) {
  switch (status) {
  case IMC_GRPC_OK:
    return 0;
  case IMC_GRPC_CANCELLED:
    return IMC_ERR_CLOSED;
  case IMC_GRPC_INVALID_ARGUMENT:
  case IMC_GRPC_OUT_OF_RANGE:
    return IMC_ERR_INVALID_ARGUMENT;
  case IMC_GRPC_NOT_FOUND:
    return IMC_ERR_NOT_FOUND;
  case IMC_GRPC_ALREADY_EXISTS:
    return IMC_ERR_EXISTS;
  case IMC_GRPC_PERMISSION_DENIED:
    return IMC_ERR_FORBIDDEN;
  case IMC_GRPC_UNAUTHENTICATED:
    return IMC_ERR_AUTH;
  case IMC_GRPC_FAILED_PRECONDITION:
    return IMC_ERR_BLOCKED;
  case IMC_GRPC_RESOURCE_EXHAUSTED:
    return IMC_ERR_RATE_LIMITED;
  case IMC_GRPC_DEADLINE_EXCEEDED:
  case IMC_GRPC_UNAVAILABLE:
  case IMC_GRPC_ABORTED:
    return IMC_ERR_UNAVAILABLE;
  default:
    return IMC_ERR_INTERNAL;
  }
}

/* As gRPC's doc/http-grpc-status-mapping.md and PROTOCOL-HTTP2.md. */
int rpc_status_from_h2(uint32_t error_code) {
  switch (error_code) {
  case NGHTTP2_REFUSED_STREAM:
    return IMC_GRPC_UNAVAILABLE;
  case NGHTTP2_CANCEL:
    return IMC_GRPC_CANCELLED;
  case NGHTTP2_ENHANCE_YOUR_CALM:
    return IMC_GRPC_RESOURCE_EXHAUSTED;
  case NGHTTP2_INADEQUATE_SECURITY:
    return IMC_GRPC_PERMISSION_DENIED;
  default:
    return IMC_GRPC_INTERNAL;
  }
}

int rpc_status_from_http(int http_status) {
  switch (http_status) {
  case 400:
    return IMC_GRPC_INTERNAL;
  case 401:
    return IMC_GRPC_UNAUTHENTICATED;
  case 403:
    return IMC_GRPC_PERMISSION_DENIED;
  case 404:
    return IMC_GRPC_UNIMPLEMENTED;
  case 429:
  case 502:
  case 503:
  case 504:
    return IMC_GRPC_UNAVAILABLE;
  default:
    return IMC_GRPC_UNKNOWN;
  }
}

#define PCT_INPUT_MAX 1024

char *rpc_pct_encode(const imc_mem *m, const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  size_t n = s ? strnlen(s, PCT_INPUT_MAX) : 0;
  char *out = imc_malloc(m, n * 3 + 1);
  if (out == NULL)
    return NULL;
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch >= 0x20 && ch <= 0x7e && ch != '%') {
      out[k++] = (char)ch;
    } else {
      out[k++] = '%';
      out[k++] = hex[ch >> 4];
      out[k++] = hex[ch & 15];
    }
  }
  out[k] = '\0';
  return out;
}

static int hexval(uint8_t ch) {
  if (ch >= '0' && ch <= '9')
    return ch - '0';
  if (ch >= 'a' && ch <= 'f')
    return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F')
    return ch - 'A' + 10;
  return -1;
}

char *rpc_pct_decode(const imc_mem *m, const uint8_t *v, size_t len) {
  char *out = imc_malloc(m, len + 1);
  if (out == NULL)
    return NULL;
  size_t k = 0;
  for (size_t i = 0; i < len; i++) {
    int hi, lo;
    /* A '%' not followed by two hex digits stays as it is (gRPC). */
    if (v[i] == '%' && i + 2 < len && (hi = hexval(v[i + 1])) >= 0 &&
        (lo = hexval(v[i + 2])) >= 0) {
      out[k++] = (char)(hi << 4 | lo);
      i += 2;
    } else {
      out[k++] = (char)v[i];
    }
  }
  out[k] = '\0';
  return out;
}

int rpc_timeout_parse(const uint8_t *v, size_t len, int64_t *ms) {
  if (len < 2 || len > 9)
    return -1;
  int64_t n = 0;
  for (size_t i = 0; i + 1 < len; i++) {
    if (v[i] < '0' || v[i] > '9')
      return -1;
    n = n * 10 + (v[i] - '0');
  }
  switch (v[len - 1]) {
  case 'H':
    *ms = n * 3600000;
    break;
  case 'M':
    *ms = n * 60000;
    break;
  case 'S':
    *ms = n * 1000;
    break;
  case 'm':
    *ms = n;
    break;
  case 'u':
    *ms = (n + 999) / 1000;
    break;
  case 'n':
    *ms = (n + 999999) / 1000000;
    break;
  default:
    return -1;
  }
  return 0;
}

size_t rpc_timeout_format(int64_t ms, char buf[16]) {
  int n;
  if (ms <= 99999999)
    n = snprintf(buf, 16, "%lldm", (long long)ms);
  else if (ms / 1000 <= 99999999)
    n = snprintf(buf, 16, "%lldS", (long long)((ms + 999) / 1000));
  else
    n = snprintf(
        buf, 16, "%lldH",
        (long long)((ms / 3600000) > 99999999 ? 99999999 : ms / 3600000 + 1));
  return (size_t)n;
}

int rpc_error_parse(const uint8_t *v, size_t len, int *err) {
  if (len != 4 || v[0] != '-')
    return -1;
  int n = 0;
  for (size_t i = 1; i < len; i++) {
    if (v[i] < '0' || v[i] > '9')
      return -1;
    n = n * 10 + (v[i] - '0');
  }
  if (!((n >= 501 && n <= 518) || (n >= 901 && n <= 902)))
    return -1;
  *err = -n;
  return 0;
}

int rpc_status_parse(const uint8_t *v, size_t len) {
  if (len == 0 || len > 2)
    return IMC_GRPC_UNKNOWN;
  int n = 0;
  for (size_t i = 0; i < len; i++) {
    if (v[i] < '0' || v[i] > '9')
      return IMC_GRPC_UNKNOWN;
    n = n * 10 + (v[i] - '0');
  }
  return n <= IMC_GRPC_UNAUTHENTICATED ? n : IMC_GRPC_UNKNOWN;
}
