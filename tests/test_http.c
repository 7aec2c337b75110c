/* Unit tests of the HTTP request-head parser, query helpers and the
 * WebSocket accept key. */
#include "protocol/http.h"
#include "testutil.h"

#include <imchat/common.h>

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#define MAX_HDRS 16

/* A byte string that may hold NULs. */
typedef struct bytes {
  const char *s;
  size_t len;
} bytes;
#define B(lit)                                                                 \
  { lit, sizeof(lit) - 1 }

static imc_span sp(const char *s) {
  imc_span r = {s, strlen(s)};
  return r;
}

static int span_is(imc_span s, const char *want) {
  return s.len == strlen(want) && memcmp(s.p, want, s.len) == 0;
}

#define ck_span(s, want)                                                       \
  ck_assert_msg(span_is((s), (want)), "span \"%.*s\" != \"%s\"", (int)(s).len, \
                (s).p, (want))

/* Parses a heap copy of exactly len bytes so ASan flags any read past the
 * end. */
static int parse_exact(const char *s, size_t len, imc_http_req *req,
                       imc_http_hdr *hdrs, size_t max, char **copy) {
  *copy = malloc(len ? len : 1);
  ck_assert_ptr_nonnull(*copy);
  if (len)
    memcpy(*copy, s, len);
  return imc_http_parse_request(*copy, len, req, hdrs, max);
}

static const char upgrade_req[] =
    "GET /ws?token=abc.def&device=phone%2D1 HTTP/1.1\r\n"
    "Host: chat.example.com\r\n"
    "Upgrade: websocket\r\n"
    "Connection: keep-alive, Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "\r\n";

START_TEST(t_parse_upgrade) {
  imc_http_req req;
  imc_http_hdr hdrs[MAX_HDRS];
  int rv = imc_http_parse_request(upgrade_req, strlen(upgrade_req), &req, hdrs,
                                  MAX_HDRS);
  ck_assert_int_eq(rv, (int)strlen(upgrade_req));
  ck_span(req.method, "GET");
  ck_span(req.target, "/ws?token=abc.def&device=phone%2D1");
  ck_span(req.path, "/ws");
  ck_span(req.query, "token=abc.def&device=phone%2D1");
  ck_assert_int_eq(req.minor_version, 1);
  ck_assert_ptr_eq(req.hdrs, hdrs);
  ck_assert_uint_eq(req.n_hdrs, 5);
  ck_span(hdrs[0].name, "Host");
  ck_span(hdrs[0].value, "chat.example.com");
  ck_span(hdrs[4].name, "Sec-WebSocket-Version");
  ck_span(hdrs[4].value, "13");

  const imc_http_hdr *h = imc_http_find(&req, "upgrade");
  ck_assert_ptr_nonnull(h);
  ck_span(h->value, "websocket");
  h = imc_http_find(&req, "CONNECTION");
  ck_assert_ptr_nonnull(h);
  ck_assert_int_eq(imc_http_has_token(h->value, "upgrade"), 1);
  ck_assert_int_eq(imc_http_has_token(h->value, "Keep-Alive"), 1);
  ck_assert_int_eq(imc_http_has_token(h->value, "keep"), 0);
  ck_assert_ptr_null(imc_http_find(&req, "Sec-WebSocket-Protocol"));
  ck_assert_ptr_null(imc_http_find(&req, "Hos"));
}
END_TEST

START_TEST(t_parse_variants) {
  imc_http_req req;
  imc_http_hdr hdrs[MAX_HDRS];

  /* Lone LF line ends, HTTP/1.0, whitespace trimmed, an empty value,
   * obs-text in a value, and a body after the head. */
  static const char lf[] = "POST /a/b HTTP/1.0\n"
                           "X-Pad:   a b \t\n"
                           "Empty:\n"
                           "Tab:\tv\n"
                           "Name: caf\xc3\xa9\n"
                           "\n"
                           "BODY";
  int rv = imc_http_parse_request(lf, strlen(lf), &req, hdrs, MAX_HDRS);
  ck_assert_int_eq(rv, (int)strlen(lf) - 4);
  ck_span(req.method, "POST");
  ck_span(req.path, "/a/b");
  ck_assert_uint_eq(req.query.len, 0);
  ck_assert_ptr_nonnull(req.query.p);
  ck_assert_int_eq(req.minor_version, 0);
  ck_assert_uint_eq(req.n_hdrs, 4);
  ck_span(hdrs[0].value, "a b");
  ck_span(hdrs[1].name, "Empty");
  ck_span(hdrs[1].value, "");
  ck_span(hdrs[2].value, "v");
  ck_span(hdrs[3].value, "caf\xc3\xa9");

  /* Empty lines before the request line are ignored (RFC 9112 2.2). */
  static const char lead[] = "\r\n\nGET / HTTP/1.1\r\n\r\n";
  rv = imc_http_parse_request(lead, strlen(lead), &req, hdrs, MAX_HDRS);
  ck_assert_int_eq(rv, (int)strlen(lead));
  ck_span(req.target, "/");
  ck_assert_uint_eq(req.n_hdrs, 0);

  /* An empty query, an absolute-form target, mixed line ends. */
  static const char q[] = "OPTIONS http://h/x? HTTP/1.1\r\nA: 1\n\r\n";
  rv = imc_http_parse_request(q, strlen(q), &req, hdrs, MAX_HDRS);
  ck_assert_int_eq(rv, (int)strlen(q));
  ck_span(req.authority, "h");
  ck_span(req.path, "/x");
  ck_span(req.query, "");

  /* A request line alone with no header and no room for any. */
  static const char bare[] = "GET /healthz HTTP/1.1\r\n\r\n";
  rv = imc_http_parse_request(bare, strlen(bare), &req, NULL, 0);
  ck_assert_int_eq(rv, (int)strlen(bare));
  ck_assert_uint_eq(req.n_hdrs, 0);

  /* Only the first '?' splits. */
  static const char qq[] = "GET /p?a=?b HTTP/1.1\r\n\r\n";
  rv = imc_http_parse_request(qq, strlen(qq), &req, hdrs, MAX_HDRS);
  ck_assert_int_eq(rv, (int)strlen(qq));
  ck_span(req.path, "/p");
  ck_span(req.query, "a=?b");
}
END_TEST

START_TEST(t_incomplete) {
  imc_http_req req;
  imc_http_hdr hdrs[MAX_HDRS];
  static const char *const partial[] = {
      "",
      "\r",
      "\r\n",
      "GET",
      "GET /",
      "GET / HTTP/1.",
      "GET / HTTP/1.1",
      "GET / HTTP/1.1\r",
      "GET / HTTP/1.1\r\n",
      "GET / HTTP/1.1\r\nHost",
      "GET / HTTP/1.1\r\nHost: a",
      "GET / HTTP/1.1\r\nHost: a\r\n",
      "GET / HTTP/1.1\r\nHost: a\r\n\r",
      "GET / HTTP/1.1\nHost: a\n",
  };
  for (size_t i = 0; i < sizeof(partial) / sizeof(partial[0]); i++) {
    char *copy;
    int rv = parse_exact(partial[i], strlen(partial[i]), &req, hdrs, MAX_HDRS,
                         &copy);
    ck_assert_msg(rv == IMC_ERR_INCOMPLETE, "\"%s\": %d", partial[i], rv);
    free(copy);
  }
  ck_assert_int_eq(imc_http_parse_request(NULL, 0, &req, hdrs, MAX_HDRS),
                   IMC_ERR_INCOMPLETE);
}
END_TEST

static const bytes malformed[] = {
    B("GET  / HTTP/1.1\r\n\r\n"),                /* two spaces */
    B("GET / HTTP/1.1 \r\n\r\n"),                /* trailing space */
    B("GET /  HTTP/1.1\r\n\r\n"),                /* empty version */
    B(" GET / HTTP/1.1\r\n\r\n"),                /* leading space */
    B("\tGET / HTTP/1.1\r\n\r\n"),               /* leading tab */
    B("GET\t/ HTTP/1.1\r\n\r\n"),                /* tab as separator */
    B("G(T / HTTP/1.1\r\n\r\n"),                 /* non-token method */
    B("G\x80T / HTTP/1.1\r\n\r\n"),              /* non-ASCII method */
    B("\0GET / HTTP/1.1\r\n\r\n"),               /* NUL */
    B("GET /a\x01 HTTP/1.1\r\n\r\n"),            /* control in the target */
    B("GET /a\x7f HTTP/1.1\r\n\r\n"),            /* DEL in the target */
    B("GET /\xff HTTP/1.1\r\n\r\n"),             /* raw non-ASCII target */
    B("GET /\0 HTTP/1.1\r\n\r\n"),               /* NUL in the target */
    B("GET /\r\n\r\n"),                          /* HTTP/0.9 */
    B("GET\r\n\r\n"),                            /* method alone */
    B("GET HTTP/1.1\r\n\r\n"),                   /* no target */
    B("GET / HTTP/2.0\r\n\r\n"),                 /* not 1.x */
    B("GET / HTTP/1.2\r\n\r\n"),                 /* unknown minor */
    B("GET / HTTP/0.9\r\n\r\n"),                 /* 0.9 */
    B("GET / http/1.1\r\n\r\n"),                 /* version is case-sensitive */
    B("GET / HTTP/1.10\r\n\r\n"),                /* junk after the version */
    B("GET / HTTP/1\r\n\r\n"),                   /* short version */
    B("GET / HTTP/1.1\rX: a\r\n\r\n"),           /* bare CR ends the line */
    B("GET / HTTP/1.1\r\n\r\r"),                 /* bare CR ends the head */
    B("GET / HTTP/1.1\r\nHost example\r\n\r\n"), /* no colon */
    B("GET / HTTP/1.1\r\nHost\r\n\r\n"),         /* name alone */
    B("GET / HTTP/1.1\r\nHost : a\r\n\r\n"),     /* space before colon */
    B("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n"),    /* tab before colon */
    B("GET / HTTP/1.1\r\n: a\r\n\r\n"),          /* empty name */
    B("GET / HTTP/1.1\r\nHo(st: a\r\n\r\n"),     /* non-token name */
    B("GET / HTTP/1.1\r\nHo/st: a\r\n\r\n"),     /* non-token name */
    B("GET / HTTP/1.1\r\nH\xc3\xa9: a\r\n\r\n"), /* non-ASCII name */
    B("GET / HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n"),  /* obs-fold */
    B("GET / HTTP/1.1\r\nA: 1\r\n\tfolded\r\n\r\n"), /* obs-fold, tab */
    B("GET / HTTP/1.1\r\n Host: a\r\n\r\n"),    /* space before 1st header */
    B("GET / HTTP/1.1\r\nA: x\x01y\r\n\r\n"),   /* control in a value */
    B("GET / HTTP/1.1\r\nA: x\x7fy\r\n\r\n"),   /* DEL in a value */
    B("GET / HTTP/1.1\r\nA: x\0y\r\n\r\n"),     /* NUL in a value */
    B("GET / HTTP/1.1\r\nA: x\x1b[0m\r\n\r\n"), /* escape sequence */
    B("GET / HTTP/1.1\r\nA: x\ry\r\n\r\n"),     /* bare CR in a value */
    B("GET / HTTP/1.1\r\nA: x\r\r\n\r\n"),      /* CR CR LF */
    B("\rGET / HTTP/1.1\r\n\r\n"),              /* bare CR before the line */
};

START_TEST(t_malformed) {
  imc_http_req req;
  imc_http_hdr hdrs[MAX_HDRS];
  const bytes *m = &malformed[_i];
  char *copy;
  int rv = parse_exact(m->s, m->len, &req, hdrs, MAX_HDRS, &copy);
  ck_assert_msg(rv == IMC_ERR_PROTO, "case %d: %d", _i, rv);
  free(copy);
}
END_TEST

START_TEST(t_too_many_headers) {
  imc_http_req req;
  imc_http_hdr hdrs[3];
  static const char two[] = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n";
  static const char three[] = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";

  ck_assert_int_eq(imc_http_parse_request(two, strlen(two), &req, hdrs, 2),
                   (int)strlen(two));
  ck_assert_uint_eq(req.n_hdrs, 2);
  ck_assert_int_eq(imc_http_parse_request(three, strlen(three), &req, hdrs, 2),
                   IMC_ERR_TOO_LARGE);
  ck_assert_int_eq(imc_http_parse_request(three, strlen(three), &req, hdrs, 3),
                   (int)strlen(three));
  ck_assert_int_eq(imc_http_parse_request(two, strlen(two), &req, NULL, 0),
                   IMC_ERR_TOO_LARGE);

  /* Many headers against a small array: bounded, no overrun. */
  char big[4096];
  size_t n = (size_t)snprintf(big, sizeof(big), "GET / HTTP/1.1\r\n");
  for (int i = 0; i < 100; i++)
    n += (size_t)snprintf(big + n, sizeof(big) - n, "X-%d: %d\r\n", i, i);
  n += (size_t)snprintf(big + n, sizeof(big) - n, "\r\n");
  ck_assert_int_eq(imc_http_parse_request(big, n, &req, hdrs, 3),
                   IMC_ERR_TOO_LARGE);
  imc_http_hdr many[100];
  ck_assert_int_eq(imc_http_parse_request(big, n, &req, many, 100), (int)n);
  ck_assert_uint_eq(req.n_hdrs, 100);
  ck_span(many[99].name, "X-99");
  ck_span(many[99].value, "99");
}
END_TEST

START_TEST(t_bad_arguments) {
  imc_http_req req;
  imc_http_hdr hdrs[2];
  ck_assert_int_eq(imc_http_parse_request("GET", 3, NULL, hdrs, 2),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_http_parse_request(NULL, 3, &req, hdrs, 2),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_http_parse_request("GET", 3, &req, NULL, 2),
                   IMC_ERR_INVALID_ARGUMENT);
}
END_TEST

static int same_span(imc_span a, imc_span b, const char *abase,
                     const char *bbase) {
  return a.len == b.len && a.p - abase == b.p - bbase;
}

/* Every prefix of an input gives IMC_ERR_INCOMPLETE or the whole input's
 * result; a complete head gives the same spans however it was cut. */
static void check_prefixes(const char *s, size_t len) {
  imc_http_req full, req;
  imc_http_hdr fh[MAX_HDRS], hdrs[MAX_HDRS];
  char *fcopy;
  int want = parse_exact(s, len, &full, fh, MAX_HDRS, &fcopy);

  for (size_t cut = 0; cut <= len; cut++) {
    char *copy;
    memset(&req, 0, sizeof(req));
    int rv = parse_exact(s, cut, &req, hdrs, MAX_HDRS, &copy);
    if (want >= 0 && cut < (size_t)want) {
      ck_assert_msg(rv == IMC_ERR_INCOMPLETE, "cut %zu of \"%.*s\": %d", cut,
                    (int)len, s, rv);
    } else {
      ck_assert_msg(rv == IMC_ERR_INCOMPLETE || rv == want,
                    "cut %zu of \"%.*s\": %d, want %d", cut, (int)len, s, rv,
                    want);
    }
    if (rv >= 0) {
      ck_assert_int_eq(rv, want);
      ck_assert(same_span(req.method, full.method, copy, fcopy));
      ck_assert(same_span(req.target, full.target, copy, fcopy));
      ck_assert(same_span(req.path, full.path, copy, fcopy));
      ck_assert(same_span(req.query, full.query, copy, fcopy));
      ck_assert_int_eq(req.minor_version, full.minor_version);
      ck_assert_uint_eq(req.n_hdrs, full.n_hdrs);
      for (size_t i = 0; i < req.n_hdrs; i++) {
        ck_assert(same_span(hdrs[i].name, fh[i].name, copy, fcopy));
        ck_assert(same_span(hdrs[i].value, fh[i].value, copy, fcopy));
      }
    }
    free(copy);
  }
  free(fcopy);
}

static void check_split(const char *s, size_t len) {
  imc_http_req req;
  imc_http_hdr hdrs[MAX_HDRS];
  ck_assert_int_ne(imc_http_parse_request(s, len, &req, hdrs, MAX_HDRS),
                   IMC_ERR_INCOMPLETE);
  check_prefixes(s, len);
}

START_TEST(t_split_valid) {
  check_split(upgrade_req, strlen(upgrade_req));
  static const char lf[] = "GET /x?y HTTP/1.0\nA: 1\nB:\n\nbody";
  check_split(lf, strlen(lf));
  static const char lead[] = "\r\n\nPUT /v1/groups/g/members/u HTTP/1.1\r\n"
                             "Authorization: Bearer abc\r\n\r\n";
  check_split(lead, strlen(lead));
}
END_TEST

START_TEST(t_split_malformed) {
  check_split(malformed[_i].s, malformed[_i].len);
}
END_TEST

START_TEST(t_split_too_many) {
  char buf[MAX_HDRS * 8 + 64];
  size_t n = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\n");
  for (int i = 0; i <= MAX_HDRS; i++)
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "H%02d: v\r\n", i);
  n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\r\n");
  check_split(buf, n);
}
END_TEST

START_TEST(t_span_ieq_and_tokens) {
  ck_assert_int_eq(imc_span_ieq(sp("WebSocket"), "websocket"), 1);
  ck_assert_int_eq(imc_span_ieq(sp("WebSocket"), "websockets"), 0);
  ck_assert_int_eq(imc_span_ieq(sp(""), ""), 1);
  ck_assert_int_eq(imc_span_ieq(sp("a"), NULL), 0);
  /* Case folding is ASCII only. */
  ck_assert_int_eq(imc_span_ieq(sp("\xc3\xa9"), "\xc3\x89"), 0);

  ck_assert_int_eq(imc_http_has_token(sp("Upgrade"), "upgrade"), 1);
  ck_assert_int_eq(imc_http_has_token(sp(" , ,\tUPGRADE\t ,"), "upgrade"), 1);
  ck_assert_int_eq(imc_http_has_token(sp("keep-alive,upgrade"), "upgrade"), 1);
  ck_assert_int_eq(imc_http_has_token(sp("upgrade-x, x-upgrade"), "upgrade"),
                   0);
  ck_assert_int_eq(imc_http_has_token(sp("up grade"), "upgrade"), 0);
  ck_assert_int_eq(imc_http_has_token(sp(""), "upgrade"), 0);
  ck_assert_int_eq(imc_http_has_token(sp(","), ""), 0);
  ck_assert_int_eq(imc_http_has_token(sp("a"), NULL), 0);
}
END_TEST

START_TEST(t_query_next) {
  imc_span q = sp("a=1&&b=&c&=d&e=%41=x&");
  static const char *const want[][2] = {
      {"a", "1"}, {"b", ""}, {"c", ""}, {"", "d"}, {"e", "%41=x"}};
  size_t pos = 0, i = 0;
  imc_span k, v;
  while (imc_query_next(q, &pos, &k, &v)) {
    ck_assert_uint_lt(i, 5);
    ck_span(k, want[i][0]);
    ck_span(v, want[i][1]);
    i++;
  }
  ck_assert_uint_eq(i, 5);
  /* The end is sticky. */
  ck_assert_int_eq(imc_query_next(q, &pos, &k, &v), 0);

  pos = 0;
  ck_assert_int_eq(imc_query_next(sp(""), &pos, &k, &v), 0);
  pos = 0;
  ck_assert_int_eq(imc_query_next(sp("&&&"), &pos, &k, &v), 0);
  pos = 0;
  ck_assert_int_eq(imc_query_next(sp("x"), &pos, &k, &v), 1);
  ck_span(k, "x");
  ck_span(v, "");
  ck_assert_int_eq(imc_query_next(sp("x"), &pos, &k, &v), 0);
}
END_TEST

START_TEST(t_pct_decode) {
  char out[32];
  ck_assert_int_eq(imc_pct_decode(sp("a%20b+c"), out, sizeof(out)), 5);
  ck_assert_str_eq(out, "a b c");
  ck_assert_int_eq(imc_pct_decode(sp("%41%6a%6A%2b%25"), out, sizeof(out)), 5);
  ck_assert_str_eq(out, "Ajj+%");
  ck_assert_int_eq(imc_pct_decode(sp("%C3%A9"), out, sizeof(out)), 2);
  ck_assert_str_eq(out, "\xc3\xa9");
  ck_assert_int_eq(imc_pct_decode(sp(""), out, sizeof(out)), 0);
  ck_assert_str_eq(out, "");

  static const char *const bad[] = {"%",   "%4",   "%4g", "%g4",   "%%",
                                    "a%",  "%%41", "%00", "a%00b", "%0",
                                    "%-1", "% 41", "%+1"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    ck_assert_msg(imc_pct_decode(sp(bad[i]), out, sizeof(out)) == IMC_ERR_PROTO,
                  "%s", bad[i]);
  /* A raw NUL is refused like an encoded one. */
  imc_span nul = {"a\0b", 3};
  ck_assert_int_eq(imc_pct_decode(nul, out, sizeof(out)), IMC_ERR_PROTO);

  /* Room for the NUL is required. */
  ck_assert_int_eq(imc_pct_decode(sp("abcd"), out, 5), 4);
  ck_assert_int_eq(imc_pct_decode(sp("abcd"), out, 4), IMC_ERR_TOO_LARGE);
  ck_assert_int_eq(imc_pct_decode(sp("%41%41"), out, 3), 2);
  ck_assert_int_eq(imc_pct_decode(sp("%41%41"), out, 2), IMC_ERR_TOO_LARGE);
  ck_assert_int_eq(imc_pct_decode(sp(""), out, 1), 0);
  ck_assert_int_eq(imc_pct_decode(sp(""), out, 0), IMC_ERR_TOO_LARGE);
  ck_assert_int_eq(imc_pct_decode(sp("a"), NULL, 0), IMC_ERR_TOO_LARGE);
}
END_TEST

START_TEST(t_query_get) {
  imc_span q = sp("token=a.b%2Ec&device=my+phone&device=second&bad=%zz&"
                  "nul=%00&flag&eq=a=b");
  char out[16];
  ck_assert_int_eq(imc_query_get(q, "token", out, sizeof(out)), 5);
  ck_assert_str_eq(out, "a.b.c");
  ck_assert_int_eq(imc_query_get(q, "device", out, sizeof(out)), 8);
  ck_assert_str_eq(out, "my phone");
  ck_assert_int_eq(imc_query_get(q, "flag", out, sizeof(out)), 0);
  ck_assert_str_eq(out, "");
  ck_assert_int_eq(imc_query_get(q, "eq", out, sizeof(out)), 3);
  ck_assert_str_eq(out, "a=b");
  ck_assert_int_eq(imc_query_get(q, "bad", out, sizeof(out)), IMC_ERR_PROTO);
  ck_assert_int_eq(imc_query_get(q, "nul", out, sizeof(out)), IMC_ERR_PROTO);
  ck_assert_int_eq(imc_query_get(q, "tok", out, sizeof(out)),
                   IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(imc_query_get(q, "TOKEN", out, sizeof(out)),
                   IMC_ERR_NOT_FOUND);
  ck_assert_int_eq(imc_query_get(q, "token", out, 5), IMC_ERR_TOO_LARGE);
  ck_assert_int_eq(imc_query_get(sp(""), "token", out, sizeof(out)),
                   IMC_ERR_NOT_FOUND);
}
END_TEST

/* A query taken from a parsed request, decoded end to end. */
START_TEST(t_query_from_request) {
  imc_http_req req;
  imc_http_hdr hdrs[MAX_HDRS];
  ck_assert_int_gt(imc_http_parse_request(upgrade_req, strlen(upgrade_req),
                                          &req, hdrs, MAX_HDRS),
                   0);
  char out[64];
  ck_assert_int_eq(imc_query_get(req.query, "device", out, sizeof(out)), 7);
  ck_assert_str_eq(out, "phone-1");
  ck_assert_int_eq(imc_query_get(req.query, "token", out, sizeof(out)), 7);
  ck_assert_str_eq(out, "abc.def");
}
END_TEST

static void expected_accept(const char *key, size_t len, char out[29]) {
  static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  unsigned char md[SHA_DIGEST_LENGTH];
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  ck_assert_ptr_nonnull(ctx);
  ck_assert_int_eq(EVP_DigestInit_ex(ctx, EVP_sha1(), NULL), 1);
  ck_assert_int_eq(EVP_DigestUpdate(ctx, key, len), 1);
  ck_assert_int_eq(EVP_DigestUpdate(ctx, guid, strlen(guid)), 1);
  ck_assert_int_eq(EVP_DigestFinal_ex(ctx, md, NULL), 1);
  EVP_MD_CTX_free(ctx);
  ck_assert_int_eq(EVP_EncodeBlock((unsigned char *)out, md, sizeof(md)), 28);
}

START_TEST(t_ws_accept) {
  char out[29], want[29];
  memset(out, 'X', sizeof(out));
  /* RFC 6455 1.3 */
  imc_ws_accept(sp("dGhlIHNhbXBsZSBub25jZQ=="), out);
  ck_assert_str_eq(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");

  imc_ws_accept(sp(""), out);
  expected_accept("", 0, want);
  ck_assert_str_eq(out, want);

  /* Keys past the stack buffer take the streaming path. */
  char key[300];
  for (size_t len = 120; len <= sizeof(key); len += 30) {
    memset(key, 'k', len);
    imc_span s = {key, len};
    imc_ws_accept(s, out);
    expected_accept(key, len, want);
    ck_assert_str_eq(out, want);
    ck_assert_uint_eq(strlen(out), 28);
  }
}
END_TEST

/* Random heads over an alphabet rich in the parser's delimiters: no
 * crash, no read past the end (ASan), and the prefix property holds. */
START_TEST(t_random) {
  static const char alpha[] = "GET /?=&HTP1.0:\r\n\r\n  \tAx\x01\x7f\xc3";
  static const char *const seeds[] = {"GET / HTTP/1.1\r\n",
                                      "GET /a?b HTTP/1.0\r\nA: b\r\n", ""};
  uint32_t x = 0x9E3779B9u;
  char buf[128];
  for (int iter = 0; iter < 3000; iter++) {
    const char *seed = seeds[iter % 3];
    size_t n = strlen(seed);
    memcpy(buf, seed, n);
    x = x * 1103515245u + 12345u;
    size_t extra = (x >> 16) % 48;
    for (size_t i = 0; i < extra; i++) {
      x = x * 1103515245u + 12345u;
      buf[n++] = alpha[(x >> 16) % (sizeof(alpha) - 1)];
    }
    check_prefixes(buf, n);
  }
}
END_TEST

/* Parses a complete head that must parse. */
static void parse_ok(const char *head, imc_http_req *req, imc_http_hdr *hdrs) {
  ck_assert_int_eq(
      imc_http_parse_request(head, strlen(head), req, hdrs, MAX_HDRS),
      (int)strlen(head));
}

/* RFC 9112 3.2.2: a server must accept the absolute-form of a target;
 * RFC 9110 4.2.4: userinfo in an http URI is an error, and 4.2.1: an
 * http URI with an empty host is invalid. */
START_TEST(t_absolute_form) {
  imc_http_req req;
  imc_http_hdr hdrs[MAX_HDRS];
  parse_ok("GET http://chat.example.com:8082/ws?token=a.b HTTP/1.1\r\n\r\n",
           &req, hdrs);
  ck_span(req.authority, "chat.example.com:8082");
  ck_span(req.path, "/ws");
  ck_span(req.query, "token=a.b");
  parse_ok("GET HTTPS://h HTTP/1.1\r\n\r\n", &req, hdrs);
  ck_span(req.authority, "h");
  ck_span(req.path, "/");
  ck_span(req.query, "");
  parse_ok("GET http://[::1]:80?x=1 HTTP/1.1\r\n\r\n", &req, hdrs);
  ck_span(req.authority, "[::1]:80");
  ck_span(req.path, "/");
  ck_span(req.query, "x=1");
  /* Origin-form has no authority; other schemes are not absolute-form
   * for this server (their path is not one of its resources). */
  parse_ok("GET /ws HTTP/1.1\r\n\r\n", &req, hdrs);
  ck_assert_uint_eq(req.authority.len, 0);
  parse_ok("GET ftp://h/ws HTTP/1.1\r\n\r\n", &req, hdrs);
  ck_assert_uint_eq(req.authority.len, 0);
  ck_span(req.path, "ftp://h/ws");
  static const char *const bad[] = {"GET http://user@h/ws HTTP/1.1\r\n\r\n",
                                    "GET http:///ws HTTP/1.1\r\n\r\n",
                                    "GET http://h:x/ws HTTP/1.1\r\n\r\n",
                                    "GET http://h:123456/ HTTP/1.1\r\n\r\n",
                                    "GET http://[::1/ws HTTP/1.1\r\n\r\n"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    ck_assert_msg(imc_http_parse_request(bad[i], strlen(bad[i]), &req, hdrs,
                                         MAX_HDRS) == IMC_ERR_PROTO,
                  "%s", bad[i]);
}
END_TEST

/* RFC 3986 3.2.2-3.2.3 host [":" port]. */
START_TEST(t_host_valid) {
  static const char *const good[] = {
      "h",     "chat.example.com", "h:8082", "h:",      "1.2.3.4:1",
      "[::1]", "[::1]:443",        "a-b_c~", "%41.com", "h:65535"};
  static const char *const bad[] = {
      "",   ":80",   "a b", "a/b",     "u@h",    "h:x", "h:65536", "[::1",
      "[]", "h:1:2", "%4",  "%zz.com", "[::1]x", "h\"", "h:012345"};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
    ck_assert_msg(imc_http_host_valid(sp(good[i])), "%s", good[i]);
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    ck_assert_msg(!imc_http_host_valid(sp(bad[i])), "%s", bad[i]);
}
END_TEST

/* RFC 9112 3.2: "A server MUST respond with a 400 (Bad Request) status
 * code to any HTTP/1.1 request message that lacks a Host header field and
 * to any request message that contains more than one Host header field
 * line or a Host header field with an invalid field value." */
START_TEST(t_host_rules) {
  imc_http_req req;
  imc_http_hdr hdrs[MAX_HDRS];
  imc_span host;
  parse_ok("GET / HTTP/1.1\r\nHost: chat:8082\r\n\r\n", &req, hdrs);
  ck_assert_int_eq(imc_http_host(&req, &host), 0);
  ck_span(host, "chat:8082");
  parse_ok("GET / HTTP/1.1\r\n\r\n", &req, hdrs);
  ck_assert_int_eq(imc_http_host(&req, &host), IMC_ERR_PROTO);
  parse_ok("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", &req, hdrs);
  ck_assert_int_eq(imc_http_host(&req, &host), IMC_ERR_PROTO);
  parse_ok("GET / HTTP/1.1\r\nhost: a\r\nHOST: b\r\n\r\n", &req, hdrs);
  ck_assert_int_eq(imc_http_host(&req, &host), IMC_ERR_PROTO);
  parse_ok("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", &req, hdrs);
  ck_assert_int_eq(imc_http_host(&req, &host), IMC_ERR_PROTO);
  parse_ok("GET / HTTP/1.1\r\nHost:\r\n\r\n", &req, hdrs);
  ck_assert_int_eq(imc_http_host(&req, &host), IMC_ERR_PROTO);
  /* HTTP/1.0 may leave Host out, not repeat it. */
  parse_ok("GET / HTTP/1.0\r\n\r\n", &req, hdrs);
  ck_assert_int_eq(imc_http_host(&req, &host), 0);
  ck_assert_uint_eq(host.len, 0);
  parse_ok("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", &req, hdrs);
  ck_assert_int_eq(imc_http_host(&req, &host), IMC_ERR_PROTO);
  /* RFC 9112 3.2.2: with an absolute-form target the target's host
   * counts; Host must still be there (HTTP/1.1) and well-formed. */
  parse_ok("GET http://real:1/ws HTTP/1.1\r\nHost: other\r\n\r\n", &req, hdrs);
  ck_assert_int_eq(imc_http_host(&req, &host), 0);
  ck_span(host, "real:1");
  parse_ok("GET http://real/ws HTTP/1.1\r\nHost:\r\n\r\n", &req, hdrs);
  ck_assert_int_eq(imc_http_host(&req, &host), 0);
  parse_ok("GET http://real/ws HTTP/1.1\r\n\r\n", &req, hdrs);
  ck_assert_int_eq(imc_http_host(&req, &host), IMC_ERR_PROTO);
  parse_ok("GET http://real/ws HTTP/1.1\r\nHost: a/b\r\n\r\n", &req, hdrs);
  ck_assert_int_eq(imc_http_host(&req, &host), IMC_ERR_PROTO);
}
END_TEST

/* RFC 9112 6.3 and RFC 9110 8.6: Content-Length is one decimal number;
 * a list or a repeated header is refused (equal values too), as is
 * anything that does not fit. */
START_TEST(t_content_length) {
  imc_http_req req;
  imc_http_hdr hdrs[MAX_HDRS];
  unsigned long long len = 99;
  parse_ok("POST / HTTP/1.1\r\n\r\n", &req, hdrs);
  ck_assert_int_eq(imc_http_content_length(&req, &len), 0);
  ck_assert_uint_eq(len, 0);
  parse_ok("POST / HTTP/1.1\r\ncontent-length: 42\r\n\r\n", &req, hdrs);
  ck_assert_int_eq(imc_http_content_length(&req, &len), 1);
  ck_assert_uint_eq(len, 42);
  parse_ok("POST / HTTP/1.1\r\nContent-Length: 9999999999999999999\r\n\r\n",
           &req, hdrs);
  ck_assert_int_eq(imc_http_content_length(&req, &len), 1);
  ck_assert(len == 9999999999999999999ULL);
  static const char *const bad[] = {
      "Content-Length: 5\r\nContent-Length: 6\r\n",
      "Content-Length: 5\r\nContent-Length: 5\r\n",
      "Content-Length: 5, 6\r\n",
      "Content-Length: 5,5\r\n",
      "Content-Length: -1\r\n",
      "Content-Length: +1\r\n",
      "Content-Length: 1x\r\n",
      "Content-Length:\r\n",
      "Content-Length: 18446744073709551616\r\n",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    char head[256];
    snprintf(head, sizeof(head), "POST / HTTP/1.1\r\n%s\r\n", bad[i]);
    parse_ok(head, &req, hdrs);
    ck_assert_msg(imc_http_content_length(&req, &len) == IMC_ERR_PROTO, "%s",
                  bad[i]);
  }
}
END_TEST

static void origin_is(const char *value, const char *host, const char *want) {
  char out[128];
  imc_span h = host ? sp(host) : (imc_span){NULL, 0};
  ssize_t n = imc_http_origin(sp(value), host ? &h : NULL, out, sizeof(out));
  if (want == NULL) {
    ck_assert_msg(n == IMC_ERR_PROTO, "%s: %zd", value, n);
    return;
  }
  ck_assert_msg(n == (ssize_t)strlen(want), "%s: %zd", value, n);
  ck_assert_str_eq(out, want);
}

/* RFC 6454 6.2: the serialized origin: lower-case scheme and host, the
 * port only when it is not the scheme's default; no path, no userinfo;
 * the opaque "null" is not an origin one can allow. */
START_TEST(t_origin) {
  origin_is("https://Chat.Example.COM", NULL, "https://chat.example.com");
  origin_is("HTTP://h:80", NULL, "http://h");
  origin_is("https://h:443", NULL, "https://h");
  origin_is("https://h:8443", NULL, "https://h:8443");
  origin_is("http://h:443", NULL, "http://h:443");
  origin_is("http://[::1]:8082", NULL, "http://[::1]:8082");
  origin_is("app-x://h", NULL, "app-x://h");
  origin_is("http://h/", NULL, NULL);
  origin_is("http://h/path", NULL, NULL);
  origin_is("null", NULL, NULL);
  origin_is("http://u@h", NULL, NULL);
  origin_is("http://", NULL, NULL);
  origin_is("h:80", NULL, NULL);
  origin_is("http://h:99999", NULL, NULL);
  /* The server's own origin: the request's Host under the scheme. */
  origin_is("https://evil.example", "Chat.Example.com:443",
            "https://chat.example.com");
  origin_is("http://x", "localhost:8082", "http://localhost:8082");
  origin_is("http://x", "bad host", NULL);
  char small[8];
  ck_assert_int_eq(imc_http_origin(sp("https://chat.example.com"), NULL, small,
                                   sizeof(small)),
                   IMC_ERR_TOO_LARGE);
}
END_TEST

/* RFC 6455 4.1 and 4.2.1: Sec-WebSocket-Key is a base64-encoded 16-byte
 * value: 24 characters, the standard alphabet, "==" at the end and zero
 * padding bits. */
START_TEST(t_ws_key) {
  ck_assert(imc_ws_key_valid(sp("dGhlIHNhbXBsZSBub25jZQ==")));
  ck_assert(imc_ws_key_valid(sp("AAAAAAAAAAAAAAAAAAAAAA==")));
  ck_assert(imc_ws_key_valid(sp("/+/+/+/+/+/+/+/+/+/+/w==")));
  static const char *const bad[] = {
      "dGhlIHNhbXBsZSBub25jZR==",  /* padding bits set */
      "dGhlIHNhbXBsZSBub25jZQ=",   /* 23 characters */
      "dGhlIHNhbXBsZSBub25jZQ===", /* 25 */
      "AAAAAAAAAAAAAAAAAAAAAAAA",  /* 18 bytes, no padding */
      "AAAAAAAAAAAAAAAAAAAA",      /* 15 bytes */
      "dGhlIHNhbXBsZSBub25j-Q==",  /* URL-safe alphabet */
      "dGhlIHNhbXBsZSBub25jZ===",  /* '=' too early */
      "dGhlIHNhbXBsZSBub25jZQ ==", "",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    ck_assert_msg(!imc_ws_key_valid(sp(bad[i])), "%s", bad[i]);
}
END_TEST

START_TEST(t_count) {
  imc_http_req req;
  imc_http_hdr hdrs[MAX_HDRS];
  parse_ok("GET / HTTP/1.1\r\nA: 1\r\nb: 2\r\na: 3\r\n\r\n", &req, hdrs);
  ck_assert_uint_eq(imc_http_count(&req, "A"), 2);
  ck_assert_uint_eq(imc_http_count(&req, "B"), 1);
  ck_assert_uint_eq(imc_http_count(&req, "C"), 0);
  ck_assert_uint_eq(imc_http_count(NULL, "A"), 0);
}
END_TEST

static Suite *http_suite(void) {
  Suite *s = suite_create("http");
  TCase *tc = tcase_create("parse");
  int nmal = (int)(sizeof(malformed) / sizeof(malformed[0]));
  tcase_add_test(tc, t_parse_upgrade);
  tcase_add_test(tc, t_parse_variants);
  tcase_add_test(tc, t_incomplete);
  tcase_add_loop_test(tc, t_malformed, 0, nmal);
  tcase_add_test(tc, t_too_many_headers);
  tcase_add_test(tc, t_bad_arguments);
  suite_add_tcase(s, tc);

  tc = tcase_create("split");
  tcase_add_test(tc, t_split_valid);
  tcase_add_loop_test(tc, t_split_malformed, 0, nmal);
  tcase_add_test(tc, t_split_too_many);
  tcase_add_test(tc, t_random);
  suite_add_tcase(s, tc);

  tc = tcase_create("helpers");
  tcase_add_test(tc, t_span_ieq_and_tokens);
  tcase_add_test(tc, t_query_next);
  tcase_add_test(tc, t_pct_decode);
  tcase_add_test(tc, t_query_get);
  tcase_add_test(tc, t_query_from_request);
  tcase_add_test(tc, t_ws_accept);
  tcase_add_test(tc, t_absolute_form);
  tcase_add_test(tc, t_host_valid);
  tcase_add_test(tc, t_host_rules);
  tcase_add_test(tc, t_content_length);
  tcase_add_test(tc, t_origin);
  tcase_add_test(tc, t_ws_key);
  tcase_add_test(tc, t_count);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(http_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
