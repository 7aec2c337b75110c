/* Server frame headers and the checking inbound header scanner. */
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

/* Runs the scanner over data[0..len) as the gateway does, header by
 * header; returns 0 or the first close code. */
static int scan_feed(imc_ws_scan *s, const uint8_t *data, size_t len,
                     uint64_t max) {
  while (len > 0) {
    if (!s->done || s->left == 0) {
      size_t used;
      const char *why;
      int rv = imc_ws_scan_header(s, data, len, max, &used, &why);
      ck_assert_ptr_nonnull(why);
      data += used;
      len -= used;
      if (rv > IMC_WS_SCAN_FRAME)
        return rv;
      ck_assert(rv == IMC_WS_SCAN_FRAME || len == 0);
      continue;
    }
    size_t n = imc_ws_scan_payload(s, len);
    data += n;
    len -= n;
  }
  return 0;
}

START_TEST(scan_whole_frames) {
  static uint8_t buf[200000];
  imc_ws_scan s;
  memset(&s, 0, sizeof(s));
  ck_assert(imc_ws_scan_idle(&s));
  size_t sizes[] = {0, 1, 125, 126, 65535, 65536, 70000};
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
    size_t n = client_frame(buf, 1, IMC_WS_BINARY, sizes[i]);
    ck_assert_int_eq(scan_feed(&s, buf, n - 1, 0), 0);
    ck_assert(!imc_ws_scan_idle(&s));
    ck_assert_int_eq(scan_feed(&s, buf + n - 1, 1, 0), 0);
    ck_assert(imc_ws_scan_idle(&s));
    ck_assert_uint_eq(imc_ws_scan_opcode(&s), IMC_WS_BINARY);
  }
}
END_TEST

START_TEST(scan_fragments_and_control) {
  uint8_t buf[4096];
  imc_ws_scan s;
  memset(&s, 0, sizeof(s));
  size_t n = client_frame(buf, 0, IMC_WS_BINARY, 10);
  ck_assert_int_eq(scan_feed(&s, buf, n, 0), 0);
  ck_assert(!imc_ws_scan_idle(&s)); /* the message is not finished */
  ck_assert(imc_ws_scan_at_boundary(&s));
  n = client_frame(buf, 1, IMC_WS_PING, 3);
  ck_assert_int_eq(scan_feed(&s, buf, n, 0), 0);
  ck_assert(!imc_ws_scan_idle(&s)); /* a ping does not finish it */
  n = client_frame(buf, 0, IMC_WS_CONT, 5);
  ck_assert_int_eq(scan_feed(&s, buf, n, 0), 0);
  ck_assert(!imc_ws_scan_idle(&s));
  n = client_frame(buf, 1, IMC_WS_CONT, 5);
  ck_assert_int_eq(scan_feed(&s, buf, n, 0), 0);
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
    ck_assert_int_eq(scan_feed(&s, buf + i, 1, 0), 0);
    idles += imc_ws_scan_idle(&s);
  }
  ck_assert_int_eq(idles, 2); /* after the first frame and at the end */
  ck_assert(imc_ws_scan_idle(&s));
}
END_TEST

/* The mask key is the header's last 4 bytes, whatever the length form. */
START_TEST(scan_mask_key) {
  uint8_t buf[300];
  size_t lens[] = {5, 200};
  for (int i = 0; i < 2; i++) {
    size_t n = client_frame(buf, 1, IMC_WS_BINARY, lens[i]);
    size_t hl = n - lens[i];
    buf[hl - 4] = 1;
    buf[hl - 1] = 4;
    imc_ws_scan s;
    memset(&s, 0, sizeof(s));
    size_t used;
    const char *why;
    ck_assert_int_eq(imc_ws_scan_header(&s, buf, n, 0, &used, &why),
                     IMC_WS_SCAN_FRAME);
    ck_assert_uint_eq(used, hl);
    ck_assert_uint_eq(imc_ws_scan_mask(&s)[0], 1);
    ck_assert_uint_eq(imc_ws_scan_mask(&s)[3], 4);
    ck_assert_uint_eq(s.left, lens[i]);
  }
}
END_TEST

/* A frame given as raw header bytes (payload not needed). */
typedef struct bad_case {
  const char *rule;
  uint8_t hdr[14];
  size_t len;
  int in_msg; /* a fragmented message is open */
  int code;
} bad_case;

static const bad_case bad_cases[] = {
    {"5.2 RSV1 without an extension", {0xc2, 0x80, 1, 2, 3, 4}, 6, 0, 1002},
    {"5.2 RSV3 without an extension", {0x92, 0x80, 1, 2, 3, 4}, 6, 0, 1002},
    {"5.2 reserved opcode 3", {0x83, 0x80, 1, 2, 3, 4}, 6, 0, 1002},
    {"5.2 reserved opcode 0xb", {0x8b, 0x80, 1, 2, 3, 4}, 6, 0, 1002},
    {"5.5 ping of 126 bytes", {0x89, 0xfe, 0, 126}, 4, 0, 1002},
    {"5.5 fragmented ping", {0x09, 0x80, 1, 2, 3, 4}, 6, 0, 1002},
    {"5.5.1 close of 1 byte", {0x88, 0x81, 1, 2, 3, 4}, 6, 0, 1002},
    {"5.1 unmasked client frame", {0x82, 0x02}, 2, 0, 1002},
    {"5.4 continuation outside a message", {0x80, 0x80}, 2, 0, 1002},
    {"5.4 new message inside a message", {0x82, 0x80}, 2, 1, 1002},
    {"5.2 16-bit length under 126", {0x82, 0xfe, 0, 125}, 4, 0, 1002},
    {"5.2 64-bit length under 65536",
     {0x82, 0xff, 0, 0, 0, 0, 0, 0, 0xff, 0xff},
     10,
     0,
     1002},
    {"5.2 64-bit length with the top bit set",
     {0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0},
     10,
     0,
     1002},
    {"7.4.1 length 2^63-1 over the message limit (1009 at the header)",
     {0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
     10,
     0,
     1009},
    {"7.4.1 frame over the message limit",
     {0x82, 0xfe, 0x10, 0x01},
     4,
     0,
     1009},
};

/* Each rule refuses the header as soon as its bytes are in, fed whole or
 * byte by byte, with nothing of the payload needed. */
START_TEST(scan_refuses_bad_headers) {
  const bad_case *b = &bad_cases[_i];
  for (int split = 0; split < 2; split++) {
    imc_ws_scan s;
    memset(&s, 0, sizeof(s));
    s.in_msg = (uint8_t)b->in_msg;
    int rv = IMC_WS_SCAN_MORE;
    size_t total = 0;
    const char *why = NULL;
    for (size_t off = 0; off < b->len && rv == IMC_WS_SCAN_MORE;) {
      size_t used;
      size_t n = split ? 1 : b->len - off;
      rv = imc_ws_scan_header(&s, b->hdr + off, n, 4096, &used, &why);
      off += used;
      total += used;
    }
    ck_assert_msg(rv == b->code, "%s: %d", b->rule, rv);
    ck_assert_msg(why != NULL && why[0] != '\0', "%s: no reason", b->rule);
    /* Decided at the last byte the rule needs: the 2-byte rules do not
     * wait for the mask key. */
    ck_assert_uint_le(total, b->len);
  }
}
END_TEST

/* What the rules allow: control frames of 125 bytes and between
 * fragments, empty close frames, lengths in their shortest form, a
 * message exactly at the limit across fragments. */
START_TEST(scan_accepts_edges) {
  static uint8_t buf[70000];
  imc_ws_scan s;
  memset(&s, 0, sizeof(s));
  size_t n = client_frame(buf, 1, IMC_WS_PING, 125);
  ck_assert_int_eq(scan_feed(&s, buf, n, 100), 0);
  n = client_frame(buf, 1, IMC_WS_CLOSE, 0);
  ck_assert_int_eq(scan_feed(&s, buf, n, 100), 0);
  n = client_frame(buf, 1, IMC_WS_BINARY, 126);
  ck_assert_int_eq(scan_feed(&s, buf, n, 0), 0);
  n = client_frame(buf, 1, IMC_WS_BINARY, 65536);
  ck_assert_int_eq(scan_feed(&s, buf, n, 0), 0);
  n = client_frame(buf, 0, IMC_WS_BINARY, 60);
  ck_assert_int_eq(scan_feed(&s, buf, n, 100), 0);
  n = client_frame(buf, 1, IMC_WS_PONG, 125); /* control frames don't count */
  ck_assert_int_eq(scan_feed(&s, buf, n, 100), 0);
  n = client_frame(buf, 1, IMC_WS_CONT, 40);
  ck_assert_int_eq(scan_feed(&s, buf, n, 100), 0);
  ck_assert(imc_ws_scan_idle(&s));
  /* One byte more over the fragments: 1009. */
  n = client_frame(buf, 0, IMC_WS_BINARY, 60);
  ck_assert_int_eq(scan_feed(&s, buf, n, 100), 0);
  n = client_frame(buf, 1, IMC_WS_CONT, 41);
  ck_assert_int_eq(scan_feed(&s, buf, n, 100), 1009);
}
END_TEST

/* With permessage-deflate (rsv1_ok): RSV1 on the first frame of a data
 * message only (RFC 7692 6.1); RSV2 and RSV3 are still refused. */
START_TEST(scan_rsv1_with_deflate) {
  static const struct {
    uint8_t hdr[6];
    int in_msg, code;
  } cases[] = {
      {{0xc2, 0x80, 1, 2, 3, 4}, 0, IMC_WS_SCAN_FRAME}, /* binary */
      {{0x42, 0x80, 1, 2, 3, 4}, 0, IMC_WS_SCAN_FRAME}, /* first fragment */
      {{0xc1, 0x80, 1, 2, 3, 4}, 0, IMC_WS_SCAN_FRAME}, /* text */
      {{0xc0, 0x80, 1, 2, 3, 4}, 1, 1002},              /* continuation */
      {{0xc9, 0x80, 1, 2, 3, 4}, 0, 1002},              /* ping */
      {{0xc8, 0x80, 1, 2, 3, 4}, 0, 1002},              /* close */
      {{0xe2, 0x80, 1, 2, 3, 4}, 0, 1002},              /* RSV1 and RSV2 */
      {{0x92, 0x80, 1, 2, 3, 4}, 0, 1002},              /* RSV3 */
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    imc_ws_scan s;
    memset(&s, 0, sizeof(s));
    s.rsv1_ok = 1;
    s.in_msg = (uint8_t)cases[i].in_msg;
    size_t used;
    const char *why;
    ck_assert_msg(imc_ws_scan_header(&s, cases[i].hdr, 6, 4096, &used, &why) ==
                      cases[i].code,
                  "case %zu", i);
  }
}
END_TEST

/* A message of the limit's frame budget (1 + max / IMC_WS_FRAGMENT_MIN
 * frames, empty ones too) passes; one more frame is a 1009 at its
 * header, whatever its size; the count starts again with each message,
 * and no limit means no budget. */
START_TEST(scan_fragment_budget) {
  enum { MAX = 640, FRAMES = 1 + MAX / IMC_WS_FRAGMENT_MIN };
  uint8_t buf[64];
  imc_ws_scan s;
  for (int round = 0; round < 2; round++) {
    memset(&s, 0, sizeof(s));
    for (int msg = 0; msg < 2; msg++) {
      size_t n = client_frame(buf, 0, IMC_WS_BINARY, 1);
      ck_assert_int_eq(scan_feed(&s, buf, n, MAX), 0);
      for (int i = 2; i < FRAMES; i++) {
        n = client_frame(buf, 0, IMC_WS_CONT, i % 2);
        ck_assert_int_eq(scan_feed(&s, buf, n, MAX), 0);
        n = client_frame(buf, 1, IMC_WS_PING, 1); /* control: not counted */
        ck_assert_int_eq(scan_feed(&s, buf, n, MAX), 0);
      }
      n = client_frame(buf, msg == 0, IMC_WS_CONT, 1); /* frame FRAMES */
      ck_assert_int_eq(scan_feed(&s, buf, n, MAX), 0);
      ck_assert(imc_ws_scan_idle(&s) == (msg == 0));
    }
    /* The second message is at its budget: one more frame, even empty. */
    size_t n = client_frame(buf, round, IMC_WS_CONT, 0);
    ck_assert_int_eq(scan_feed(&s, buf, n, MAX), 1009);
  }
  memset(&s, 0, sizeof(s));
  size_t n = client_frame(buf, 0, IMC_WS_BINARY, 1);
  ck_assert_int_eq(scan_feed(&s, buf, n, 0), 0);
  for (int i = 0; i < 10 * FRAMES; i++) {
    n = client_frame(buf, 0, IMC_WS_CONT, 1);
    ck_assert_int_eq(scan_feed(&s, buf, n, 0), 0);
  }
}
END_TEST

int main(void) {
  Suite *su = suite_create("wsframe");
  TCase *t = tcase_create("wsframe");
  tcase_add_test(t, header_lengths);
  tcase_add_test(t, scan_whole_frames);
  tcase_add_test(t, scan_fragments_and_control);
  tcase_add_test(t, scan_byte_by_byte);
  tcase_add_test(t, scan_mask_key);
  tcase_add_loop_test(t, scan_refuses_bad_headers, 0,
                      (int)(sizeof(bad_cases) / sizeof(bad_cases[0])));
  tcase_add_test(t, scan_accepts_edges);
  tcase_add_test(t, scan_rsv1_with_deflate);
  tcase_add_test(t, scan_fragment_budget);
  suite_add_tcase(su, t);
  SRunner *sr = srunner_create(su);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
