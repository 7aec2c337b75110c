/* permessage-deflate negotiation (RFC 7692 7, RFC 6455 9.1). */
#include "protocol/pmdeflate.h"

#include <stdio.h>
#include <string.h>

typedef struct cursor {
  const char *p, *end;
} cursor;

static void skip_ows(cursor *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t'))
    c->p++;
}

static int at(const cursor *c, char ch) {
  return c->p < c->end && *c->p == ch;
}

/* RFC 9110 5.6.2 tchar. */
static int is_tchar(char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
         (ch >= '0' && ch <= '9') ||
         (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* A token at the cursor; 0 if there is none. */
static int token(cursor *c, imc_span *t) {
  t->p = c->p;
  while (c->p < c->end && is_tchar(*c->p))
    c->p++;
  t->len = (size_t)(c->p - t->p);
  return t->len > 0;
}

/*
 * A parameter's value: a token, or a quoted-string whose content,
 * unescaped, must be a token (RFC 6455 9.1). Up to cap - 1 bytes of it go
 * to buf, NUL-terminated; *len is its whole length. Returns 0 if it does
 * not parse.
 */
static int value(cursor *c, char *buf, size_t cap, size_t *len) {
  *len = 0;
  if (!at(c, '"')) {
    imc_span t;
    if (!token(c, &t))
      return 0;
    *len = t.len;
    size_t n = t.len < cap - 1 ? t.len : cap - 1;
    memcpy(buf, t.p, n);
    buf[n] = '\0';
    return 1;
  }
  c->p++;
  size_t n = 0;
  for (;;) {
    if (c->p >= c->end)
      return 0;
    char ch = *c->p++;
    if (ch == '"')
      break;
    if (ch == '\\') {
      if (c->p >= c->end)
        return 0;
      ch = *c->p++;
    }
    if (!is_tchar(ch))
      return 0;
    if (n < cap - 1)
      buf[n++] = ch;
    (*len)++;
  }
  buf[n] = '\0';
  return *len > 0;
}

/* A window size: 8-15 in decimal without leading zeros. */
static int window_bits(const char *v, size_t len) {
  if (len == 1 && (v[0] == '8' || v[0] == '9'))
    return v[0] - '0';
  if (len == 2 && v[0] == '1' && v[1] >= '0' && v[1] <= '5')
    return 10 + v[1] - '0';
  return 0;
}

enum {
  P_SERVER_NCT = 1,
  P_CLIENT_NCT = 2,
  P_SERVER_BITS = 4,
  P_CLIENT_BITS = 8
};

/*
 * Applies parameter name (with a value when has_value) to an offer;
 * returns 0 if the offer must be declined.
 */
static int offer_param(imc_span name, int has_value, const char *v, size_t vlen,
                       unsigned *seen, imc_pmd_params *p) {
  unsigned bit = imc_span_ieq(name, "server_no_context_takeover") ? P_SERVER_NCT
                 : imc_span_ieq(name, "client_no_context_takeover")
                     ? P_CLIENT_NCT
                 : imc_span_ieq(name, "server_max_window_bits") ? P_SERVER_BITS
                 : imc_span_ieq(name, "client_max_window_bits") ? P_CLIENT_BITS
                                                                : 0;
  if (bit == 0 || (*seen & bit))
    return 0;
  *seen |= bit;
  if (bit == P_SERVER_NCT || bit == P_CLIENT_NCT)
    return !has_value;
  if (bit == P_CLIENT_BITS)
    return !has_value || window_bits(v, vlen) != 0;
  /* server_max_window_bits takes a value (RFC 7692 7.1.2.1). */
  int bits = has_value ? window_bits(v, vlen) : 0;
  if (bits == 0)
    return 0;
  p->server_bits = (uint8_t)bits;
  p->server_bits_offered = 1;
  return 1;
}

/*
 * Reads one extension with its parameters. Returns -1 if the line does
 * not parse, 1 for an acceptable permessage-deflate offer (*out set), 0
 * for anything else.
 */
static int extension(cursor *c, imc_pmd_params *out) {
  imc_span name;
  if (!token(c, &name))
    return -1;
  int pmd = imc_span_ieq(name, "permessage-deflate"), ok = pmd;
  imc_pmd_params p = {15, 0};
  unsigned seen = 0;
  skip_ows(c);
  while (at(c, ';')) {
    c->p++;
    skip_ows(c);
    imc_span pn;
    if (!token(c, &pn))
      return -1;
    skip_ows(c);
    char v[4];
    size_t vlen = 0;
    int has_value = at(c, '=');
    if (has_value) {
      c->p++;
      skip_ows(c);
      if (!value(c, v, sizeof(v), &vlen))
        return -1;
      skip_ows(c);
    }
    if (ok && !offer_param(pn, has_value, v, vlen, &seen, &p))
      ok = 0;
  }
  if (c->p < c->end && !at(c, ','))
    return -1;
  if (ok)
    *out = p;
  return ok;
}

int imc_pmd_negotiate(const imc_span *vals, size_t n, imc_pmd_params *out) {
  for (size_t i = 0; i < n; i++) {
    cursor c = {vals[i].p, vals[i].p + vals[i].len};
    for (;;) {
      /* Empty list elements are allowed (RFC 9110 5.6.1.2). */
      skip_ows(&c);
      if (at(&c, ',')) {
        c.p++;
        continue;
      }
      if (c.p >= c.end)
        break;
      int rv = extension(&c, out);
      if (rv == 1)
        return 1;
      if (rv < 0)
        break;
    }
  }
  return 0;
}

size_t imc_pmd_response(const imc_pmd_params *p,
                        char out[IMC_PMD_RESPONSE_MAX]) {
  char bits[40] = "";
  if (p->server_bits_offered)
    snprintf(bits, sizeof(bits), "; server_max_window_bits=%u",
             (unsigned)p->server_bits);
  int n = snprintf(out, IMC_PMD_RESPONSE_MAX,
                   "Sec-WebSocket-Extensions: permessage-deflate; "
                   "server_no_context_takeover; client_no_context_takeover"
                   "%s\r\n",
                   bits);
  return (size_t)n;
}
