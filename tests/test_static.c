/*
 * The host's static file handler (hosts/common/static.c) and the dev
 * login (hosts/imchatd/dev_login.c), driven through a real gateway with
 * the test socket transport: content types, cache headers, 404, refused
 * path traversal (plain, percent-encoded, through a symlink), HEAD without
 * a body, and request bodies read whole before the handler runs.
 */
#include "dev_login.h"
#include "static.h"
#include "testutil.h"

#include <imchat/imchat.h>

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SECRET "static-test-secret"
#define INDEX "<!doctype html><title>t</title>"
#define SCRIPT "console.log('hi');\n"

static struct {
  char dir[256], root[300];
  imc_gateway *gw;
  hstatic *web;
  devlogin *dev;
  test_sock cl;
} H;

static struct {
  int status;
  char head[2048];
  char body[4096];
  size_t len, clen;
} R;

static void put(const char *rel, const char *text) {
  char p[600];
  snprintf(p, sizeof(p), "%s/%s", H.dir, rel);
  FILE *f = fopen(p, "w");
  ck_assert_ptr_nonnull(f);
  fputs(text, f);
  fclose(f);
}

static void setup(void) {
  memset(&H, 0, sizeof(H));
  snprintf(H.dir, sizeof(H.dir), "/tmp/imc-static-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(H.dir));
  snprintf(H.root, sizeof(H.root), "%s/www", H.dir);
  ck_assert_int_eq(mkdir(H.root, 0700), 0);
  char p[600];
  snprintf(p, sizeof(p), "%s/assets", H.root);
  ck_assert_int_eq(mkdir(p, 0700), 0);
  put("secret.txt", "outside the web root");
  put("www/index.html", INDEX);
  put("www/assets/app-ABCD2345.js", SCRIPT);
  put("www/assets/style.css", "body{}");
  put("www/assets/data.bin", "x");
  snprintf(p, sizeof(p), "%s/assets/link.txt", H.root);
  ck_assert_int_eq(symlink("../../secret.txt", p), 0);

  ck_assert_int_eq(devlogin_new(&H.dev, (const uint8_t *)SECRET, strlen(SECRET),
                                NULL, NULL, 600, NULL, NULL),
                   0);
  ck_assert_int_eq(hstatic_new(&H.web, H.root, devlogin_vtbl(), H.dev), 0);
  imc_gateway_options *o;
  ck_assert_int_eq(imc_gateway_options_new(&o, NULL), 0);
  imc_gateway_options_set_transport(o, &test_sock_transport, NULL);
  imc_gateway_options_set_jwt_secret(o, (const uint8_t *)SECRET,
                                     strlen(SECRET));
  imc_gateway_options_set_http_handler(o, hstatic_vtbl(), H.web);
  ck_assert_int_eq(imc_gateway_new(&H.gw, o, NULL), 0);
  imc_gateway_options_del(o);
}

static void teardown(void) {
  imc_gateway_del(H.gw);
  hstatic_del(H.web);
  devlogin_del(H.dev);
  free(H.cl.out);
  char cmd[400];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", H.dir);
  ck_assert_int_eq(system(cmd), 0);
}

/* Sends raw request bytes in parts (each a separate read) and parses the
 * answer. */
static int send_parts(const char *const *parts, size_t n) {
  imc_conn *c;
  free(H.cl.out);
  memset(&H.cl, 0, sizeof(H.cl));
  ck_assert_int_eq(imc_gateway_conn_new(H.gw, &c, &H.cl), 0);
  for (size_t i = 0; i < n; i++) {
    imc_gateway_conn_recv(H.gw, c, (const uint8_t *)parts[i], strlen(parts[i]));
    imc_gateway_flush(H.gw);
  }
  memset(&R, 0, sizeof(R));
  const char *p = (const char *)H.cl.out;
  const char *end = H.cl.len ? memmem(p, H.cl.len, "\r\n\r\n", 4) : NULL;
  ck_assert_msg(end != NULL, "no complete HTTP answer");
  size_t hl = (size_t)(end - p) + 4;
  ck_assert_uint_lt(hl, sizeof(R.head));
  memcpy(R.head, p, hl);
  sscanf(R.head, "HTTP/1.1 %d", &R.status);
  const char *cl = strstr(R.head, "Content-Length: ");
  ck_assert_ptr_nonnull(cl);
  sscanf(cl + 16, "%zu", &R.clen);
  R.len = H.cl.len - hl;
  ck_assert_uint_lt(R.len, sizeof(R.body));
  memcpy(R.body, p + hl, R.len);
  ck_assert_int_eq(H.cl.closed, 1);
  return R.status;
}

static int req(const char *method, const char *target) {
  char r[1024];
  snprintf(r, sizeof(r), "%s %s HTTP/1.1\r\nHost: t\r\n\r\n", method, target);
  const char *parts[] = {r};
  int st = send_parts(parts, 1);
  if (strcmp(method, "HEAD") != 0)
    ck_assert_uint_eq(R.len, R.clen);
  return st;
}

static int has(const char *header_line) {
  return strstr(R.head, header_line) != NULL;
}

START_TEST(index_page) {
  ck_assert_int_eq(req("GET", "/"), 200);
  ck_assert(has("Content-Type: text/html; charset=utf-8\r\n"));
  ck_assert(has("Cache-Control: no-cache\r\n"));
  ck_assert(!has("no-store"));
  ck_assert(has("Content-Security-Policy: default-src 'none'; script-src "
                "'self';"));
  ck_assert(has("X-Content-Type-Options: nosniff\r\n"));
  ck_assert_str_eq(R.body, INDEX);
}
END_TEST

START_TEST(content_types_and_caching) {
  ck_assert_int_eq(req("GET", "/assets/app-ABCD2345.js"), 200);
  ck_assert(has("Content-Type: text/javascript; charset=utf-8\r\n"));
  ck_assert(has("Cache-Control: public, max-age=31536000, immutable\r\n"));
  ck_assert_str_eq(R.body, SCRIPT);
  ck_assert_int_eq(req("GET", "/assets/style.css"), 200);
  ck_assert(has("Content-Type: text/css; charset=utf-8\r\n"));
  ck_assert(has("Cache-Control: no-cache\r\n")); /* no hash in the name */
  ck_assert_int_eq(req("GET", "/assets/data.bin"), 200);
  ck_assert(has("Content-Type: application/octet-stream\r\n"));
  ck_assert_str_eq(hstatic_content_type("a/b.SVG"), "image/svg+xml");
  ck_assert_str_eq(hstatic_content_type("x.json"), "application/json");
  ck_assert_str_eq(hstatic_content_type("dir.d/noext"),
                   "application/octet-stream");
}
END_TEST

START_TEST(head_has_no_body) {
  ck_assert_int_eq(req("HEAD", "/"), 200);
  ck_assert(has("Content-Type: text/html; charset=utf-8\r\n"));
  ck_assert_uint_eq(R.len, 0);
  ck_assert_uint_eq(R.clen, strlen(INDEX)); /* the GET's length */
  ck_assert_int_eq(req("HEAD", "/assets/app-ABCD2345.js"), 200);
  ck_assert_uint_eq(R.len, 0);
}
END_TEST

START_TEST(not_found_and_methods) {
  ck_assert_int_eq(req("GET", "/assets/missing.js"), 404);
  ck_assert(has("Content-Type: application/json\r\n"));
  ck_assert(strstr(R.body, "\"code\":\"NOT_FOUND\"") != NULL);
  ck_assert_int_eq(req("GET", "/assets/"), 400);
  ck_assert_int_eq(req("POST", "/"), 405);
  ck_assert(has("Allow: GET, HEAD\r\n"));
  ck_assert_int_eq(req("DELETE", "/assets/style.css"), 405);
  /* Not the page's: passed on (here to nobody, so the gateway's 404). */
  ck_assert_int_eq(req("GET", "/index.html"), 404);
  ck_assert_int_eq(req("GET", "/v1/other"), 404);
}
END_TEST

START_TEST(traversal_refused) {
  static const char *const bad[] = {
      "/assets/../secret.txt",
      "/assets/../../secret.txt",
      "/assets/%2e%2e/secret.txt",
      "/assets/%2E%2E%2Fsecret.txt",
      "/assets/%2e%2e%2f%2e%2e%2fsecret.txt",
      "/assets/.%2e/secret.txt",
      "/assets/./style.css",
      "/assets/.hidden",
      "/assets//style.css",
      "/assets/a%00b",
      "/assets/%zz",
      "/assets/a\\..\\b",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    ck_assert_msg(req("GET", bad[i]) == 400, "%s: %d", bad[i], R.status);
    ck_assert(strstr(R.body, "outside") == NULL);
  }
  /* A symlink out of the web root is not followed. */
  ck_assert_int_eq(req("GET", "/assets/link.txt"), 404);
  ck_assert(strstr(R.body, "outside") == NULL);
}
END_TEST

START_TEST(missing_root) {
  hstatic *s;
  ck_assert_int_lt(hstatic_new(&s, "/nonexistent/web/root", NULL, NULL), 0);
  ck_assert_ptr_null(s);
}
END_TEST

/* ---- dev login ------------------------------------------------------- */

static int login(const char *ctype, const char *body, int split) {
  char head[512];
  snprintf(head, sizeof(head),
           "POST /dev/login HTTP/1.1\r\nHost: t\r\nContent-Type: %s\r\n"
           "Content-Length: %zu\r\n\r\n",
           ctype, strlen(body));
  char whole[1024];
  snprintf(whole, sizeof(whole), "%s%s", head, body);
  if (split) {
    const char *parts[] = {head, body};
    return send_parts(parts, 2);
  }
  const char *parts[] = {whole};
  return send_parts(parts, 1);
}

START_TEST(dev_login_tokens) {
  for (int split = 0; split < 2; split++) {
    ck_assert_int_eq(login("application/json", "{\"user\": \"alice\"}", split),
                     200);
    ck_assert(strstr(R.body, "\"user\":\"alice\"") != NULL);
    ck_assert(strstr(R.body, "\"token\":\"ey") != NULL);
  }
  ck_assert_int_eq(login("application/json; charset=utf-8",
                         " {\"x\":\"y\", \"user\":\"b.o-b@x\"} ", 0),
                   200);
}
END_TEST

START_TEST(dev_login_refusals) {
  ck_assert_int_eq(login("text/plain", "{\"user\":\"alice\"}", 0), 415);
  ck_assert_int_eq(login("application/x-www-form-urlencoded", "user=alice", 0),
                   415);
  ck_assert_int_eq(login("application/json", "{\"user\":\"a b\"}", 0), 400);
  ck_assert_int_eq(login("application/json", "{\"user\":\"\"}", 0), 400);
  ck_assert_int_eq(login("application/json", "{\"name\":\"alice\"}", 0), 400);
  ck_assert_int_eq(login("application/json", "{\"user\":\"a\\u0041\"}", 0),
                   400);
  ck_assert_int_eq(login("application/json", "[\"alice\"]", 0), 400);
  ck_assert_int_eq(login("application/json", "", 0), 400);
  ck_assert_int_eq(req("GET", "/dev/login"), 405);
  ck_assert(has("Allow: POST\r\n"));
  ck_assert(strstr(R.body, "\"code\":\"METHOD_NOT_ALLOWED\"") != NULL);

  const char *big[] = {"POST /dev/login HTTP/1.1\r\nHost: t\r\nContent-Type: "
                       "application/json\r\nContent-Length: 99999999\r\n\r\n"};
  ck_assert_int_eq(send_parts(big, 1), 413);
  const char *chunked[] = {
      "POST /dev/login HTTP/1.1\r\nHost: t\r\nContent-Type: "
      "application/json\r\nTransfer-Encoding: "
      "chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"};
  ck_assert_int_eq(send_parts(chunked, 1), 411);
  const char *badlen[] = {
      "POST /dev/login HTTP/1.1\r\nHost: t\r\nContent-Type: "
      "application/json\r\nContent-Length: -1\r\n\r\n"};
  ck_assert_int_eq(send_parts(badlen, 1), 400);
}
END_TEST

START_TEST(dev_login_helpers) {
  ck_assert(devlogin_host_is_loopback("127.0.0.1"));
  ck_assert(devlogin_host_is_loopback("127.1.2.3"));
  ck_assert(devlogin_host_is_loopback("::1"));
  ck_assert(devlogin_host_is_loopback("localhost"));
  ck_assert(!devlogin_host_is_loopback(""));
  ck_assert(!devlogin_host_is_loopback("*"));
  ck_assert(!devlogin_host_is_loopback("0.0.0.0"));
  ck_assert(!devlogin_host_is_loopback("10.0.0.1"));
  ck_assert(!devlogin_host_is_loopback("::"));
  ck_assert(!devlogin_host_is_loopback("example.com"));
  char u[8];
  const char *ok = "{\"user\":\"bob\"}";
  ck_assert_int_eq(
      devlogin_parse_user((const uint8_t *)ok, strlen(ok), u, sizeof(u)), 0);
  ck_assert_str_eq(u, "bob");
  const char *dup = "{\"user\":\"a\",\"user\":\"b\"}";
  ck_assert_int_eq(
      devlogin_parse_user((const uint8_t *)dup, strlen(dup), u, sizeof(u)), -1);
  const char *trail = "{\"user\":\"a\"} x";
  ck_assert_int_eq(
      devlogin_parse_user((const uint8_t *)trail, strlen(trail), u, sizeof(u)),
      -1);
  const char *longer = "{\"user\":\"abcdefghij\"}";
  ck_assert_int_eq(devlogin_parse_user((const uint8_t *)longer, strlen(longer),
                                       u, sizeof(u)),
                   -1);
  ck_assert_int_eq(devlogin_parse_user(NULL, 0, u, sizeof(u)), -1);
}
END_TEST

int main(void) {
  Suite *s = suite_create("static");
  TCase *t = tcase_create("static");
  tcase_add_checked_fixture(t, setup, teardown);
  tcase_add_test(t, index_page);
  tcase_add_test(t, content_types_and_caching);
  tcase_add_test(t, head_has_no_body);
  tcase_add_test(t, not_found_and_methods);
  tcase_add_test(t, traversal_refused);
  tcase_add_test(t, missing_root);
  tcase_add_test(t, dev_login_tokens);
  tcase_add_test(t, dev_login_refusals);
  tcase_add_test(t, dev_login_helpers);
  suite_add_tcase(s, t);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
