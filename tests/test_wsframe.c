/* Server frame headers and the inbound frame-boundary scanner. */
#include "protocol/wsframe.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

START_TEST(header_lengths) {
  uint8_t h[IMC_WS_HEADER_MAX];
  ck_assert_uint_eq(imc_ws_header(h, IMC_WS_BINARY, 0), 2);
  ck_assert_uint_eq(h[0], 0x82);
  ck_assert_uint_eq(h[1], 0);
  ck_assert_uint_eq(imc_ws_header(h, IMC_WS_PING, 125), 2);
  ck_assert_uint_eq(h[0], 0x89);
  ck_assert_uint_eq(h[1], 125);
  ck_assert_uint_eq(imc_ws_header(h, IMC_WS_BINARY, 126), 4);
  ck_assert_uint_eq(h[1], 126);
  ck_assert_uint_eq(h[2] << 8 | h[3], 126);
  ck_assert_uint_eq(imc_ws_header(h, IMC_WS_BINARY, 65535), 4);
  ck_assert_uint_eq(h[2] << 8 | h[3], 65535);
  ck_assert_uint_eq(imc_ws_header(h, IMC_WS_CLOSE, 65536), 10);
  ck_assert_uint_eq(h[0], 0x88);
  ck_assert_uint_eq(h[1], 127);
  ck_assert_uint_eq(h[7], 1);
  ck_assert_uint_eq(h[8], 0);
}
END_TEST

/* A masked client frame. */
static size_t client_frame(uint8_t *out, int fin, int opcode, size_t len) {
  size_t n = 0;
  out[n++] = (uint8_t)((fin ? 0x80 : 0) | opcode);
  if (len < 126) {
    out[n++] = (uint8_t)(0x80 | len);
  } else if (len < 65536) {
    out[n++] = 0x80 | 126;
    out[n++] = (uint8_t)(len >> 8);
    out[n++] = (uint8_t)len;
  } else {
    out[n++] = 0x80 | 127;
    for (int i = 7; i >= 0; i--)
      out[n++] = (uint8_t)((uint64_t)len >> (8 * i));
  }
  memset(out + n, 0x5a, 4 + len); /* mask key and payload */
  return n + 4 + len;
}

START_TEST(scan_whole_frames) {
  static uint8_t buf[200000];
  imc_ws_scan s;
  memset(&s, 0, sizeof(s));
  ck_assert(imc_ws_scan_idle(&s));
  size_t sizes[] = {0, 1, 125, 126, 65535, 65536, 70000};
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
    size_t n = client_frame(buf, 1, IMC_WS_BINARY, sizes[i]);
    imc_ws_scan_feed(&s, buf, n - 1);
    ck_assert(!imc_ws_scan_idle(&s));
    imc_ws_scan_feed(&s, buf + n - 1, 1);
    ck_assert(imc_ws_scan_idle(&s));
  }
}
END_TEST

START_TEST(scan_fragments_and_control) {
  uint8_t buf[4096];
  imc_ws_scan s;
  memset(&s, 0, sizeof(s));
  size_t n = client_frame(buf, 0, IMC_WS_BINARY, 10);
  imc_ws_scan_feed(&s, buf, n);
  ck_assert(!imc_ws_scan_idle(&s)); /* the message is not finished */
  n = client_frame(buf, 1, IMC_WS_PING, 3);
  imc_ws_scan_feed(&s, buf, n);
  ck_assert(!imc_ws_scan_idle(&s)); /* a ping does not finish it */
  n = client_frame(buf, 0, IMC_WS_CONT, 5);
  imc_ws_scan_feed(&s, buf, n);
  ck_assert(!imc_ws_scan_idle(&s));
  n = client_frame(buf, 1, IMC_WS_CONT, 5);
  imc_ws_scan_feed(&s, buf, n);
  ck_assert(imc_ws_scan_idle(&s));
}
END_TEST

START_TEST(scan_byte_by_byte) {
  static uint8_t buf[100000];
  size_t n = 0;
  n += client_frame(buf + n, 1, IMC_WS_BINARY, 300);
  n += client_frame(buf + n, 0, IMC_WS_TEXT, 1);
  n += client_frame(buf + n, 1, IMC_WS_CONT, 70000);
  imc_ws_scan s;
  memset(&s, 0, sizeof(s));
  int idles = 0;
  for (size_t i = 0; i < n; i++) {
    imc_ws_scan_feed(&s, buf + i, 1);
    idles += imc_ws_scan_idle(&s);
  }
  ck_assert_int_eq(idles, 2); /* after the first frame and at the end */
  ck_assert(imc_ws_scan_idle(&s));
}
END_TEST

int main(void) {
  Suite *su = suite_create("wsframe");
  TCase *t = tcase_create("wsframe");
  tcase_add_test(t, header_lengths);
  tcase_add_test(t, scan_whole_frames);
  tcase_add_test(t, scan_fragments_and_control);
  tcase_add_test(t, scan_byte_by_byte);
  suite_add_tcase(su, t);
  SRunner *sr = srunner_create(su);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
