/* Unit tests of the UTF-8 checks and of the protobuf string validator. */
#include "protocol/pbcheck.h"
#include "protocol/utf8.h"

#include "im.pb-c.h"
#include "queue.pb-c.h"

#include <imchat/common.h>

#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A byte string that may hold NULs. */
typedef struct bytes {
  const char *s;
  size_t len;
} bytes;
#define B(lit)                                                                 \
  { lit, sizeof(lit) - 1 }

/* Runs f on a heap copy of exactly len bytes, so ASan flags any read past
 * the end. */
static int utf8_exact(const char *s, size_t len) {
  char *copy = malloc(len ? len : 1);
  ck_assert_ptr_nonnull(copy);
  if (len)
    memcpy(copy, s, len);
  int rv = imc_utf8_valid(copy, len);
  free(copy);
  return rv;
}

static int check_exact(const ProtobufCMessageDescriptor *d, const char *s,
                       size_t len) {
  uint8_t *copy = malloc(len ? len : 1);
  ck_assert_ptr_nonnull(copy);
  if (len)
    memcpy(copy, s, len);
  int rv = imc_pb_check_strings(d, copy, len);
  free(copy);
  return rv;
}

static const bytes utf8_good[] = {
    B(""),
    B("abc"),
    B("\xc2\x80"),          /* U+0080, smallest two-byte */
    B("\xc3\xa9t\xc3\xa9"), /* été */
    B("\xdf\xbf"),          /* U+07FF */
    B("\xe0\xa0\x80"),      /* U+0800, smallest three-byte */
    B("\xe2\x82\xac"),      /* € */
    B("\xed\x9f\xbf"),      /* U+D7FF, just below the surrogates */
    B("\xee\x80\x80"),      /* U+E000, just above them */
    B("\xef\xbf\xbf"),      /* U+FFFF */
    B("\xf0\x90\x80\x80"),  /* U+10000, smallest four-byte */
    B("\xf0\x9d\x84\x9e"),  /* 𝄞 */
    B("\xf4\x8f\xbf\xbf"),  /* U+10FFFF, the last code point */
    B("\x7f"),              /* DEL is a character like any other */
};

static const bytes utf8_bad[] = {
    B("\0"),
    B("a\0b"), /* embedded NUL */
    B("m\0first"),
    B("\x80"), /* lone continuation bytes */
    B("a\xbf"),
    B("\xc0\x80"),                 /* overlong NUL */
    B("\xc1\xbf"),                 /* overlong U+007F */
    B("\xe0\x80\x80"),             /* overlong three-byte */
    B("\xe0\x9f\xbf"),             /* overlong U+07FF */
    B("\xf0\x80\x80\x80"),         /* overlong four-byte */
    B("\xf0\x8f\xbf\xbf"),         /* overlong U+FFFF */
    B("\xed\xa0\x80"),             /* U+D800, a surrogate */
    B("\xed\xbf\xbf"),             /* U+DFFF */
    B("\xed\xa0\xbd\xed\xb2\xa9"), /* a CESU-8 surrogate pair */
    B("\xf4\x90\x80\x80"),         /* U+110000 */
    B("\xf5\x80\x80\x80"),         /* F5-FF never appear */
    B("\xfe"),
    B("\xff"),
    B("bad\xff\xfe"),
    B("\xc3"), /* truncated sequences */
    B("\xe2\x82"),
    B("\xf0\x9d\x84"),
    B("x\xf4\x8f\xbf"),
    B("\xc3\x41"), /* a continuation byte missing */
    B("\xe2\x28\xa1"),
    B("\xf0\x9d\x84\x41"),
};

START_TEST(t_utf8_good) {
  const bytes *b = &utf8_good[_i];
  ck_assert_msg(utf8_exact(b->s, b->len), "good[%d] refused", _i);
}
END_TEST

START_TEST(t_utf8_bad) {
  const bytes *b = &utf8_bad[_i];
  ck_assert_msg(!utf8_exact(b->s, b->len), "bad[%d] accepted", _i);
}
END_TEST

START_TEST(t_utf8_next_subparts) {
  size_t bad = 0;
  ck_assert_uint_eq(imc_utf8_next((const uint8_t *)"\xe2\x82\xac", 3, &bad), 3);
  ck_assert_uint_eq(imc_utf8_next((const uint8_t *)"\0", 1, &bad), 1);
  /* The maximal ill-formed subpart: as far as a valid prefix goes. */
  ck_assert_uint_eq(imc_utf8_next((const uint8_t *)"\xe2\x82\x41", 3, &bad), 0);
  ck_assert_uint_eq(bad, 2);
  ck_assert_uint_eq(imc_utf8_next((const uint8_t *)"\xf4\x8f\xbf", 3, &bad), 0);
  ck_assert_uint_eq(bad, 3);
  ck_assert_uint_eq(imc_utf8_next((const uint8_t *)"\xf0\x80\x80", 3, &bad), 0);
  ck_assert_uint_eq(bad, 1);
  ck_assert_uint_eq(imc_utf8_next((const uint8_t *)"\xed\xa0\x80", 3, &bad), 0);
  ck_assert_uint_eq(bad, 1);
  ck_assert_uint_eq(imc_utf8_next((const uint8_t *)"\xff", 1, &bad), 0);
  ck_assert_uint_eq(bad, 1);
  ck_assert(imc_utf8_valid(NULL, 0));
  ck_assert(!imc_utf8_valid(NULL, 1));
}
END_TEST

/* Every two-byte string: imc_utf8_valid agrees with a decoder written
 * from the definition. */
START_TEST(t_utf8_all_pairs) {
  /* One assertion at the end: check logs every passing one. */
  unsigned wrong = 0, first = 0;
  for (unsigned a = 0; a < 256; a++)
    for (unsigned b = 0; b < 256; b++) {
      char s[2] = {(char)a, (char)b};
      int want;
      if (a == 0 || b == 0)
        want = 0;
      else if (a < 0x80)
        want = b < 0x80;
      else
        want = a >= 0xc2 && a <= 0xdf && b >= 0x80 && b <= 0xbf;
      if (imc_utf8_valid(s, 2) != want && wrong++ == 0)
        first = a << 8 | b;
    }
  ck_assert_msg(wrong == 0, "%u wrong, first %04x", wrong, first);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Wire bytes                                                           */
/* ------------------------------------------------------------------ */

#define CF (&imchat__v1__client_frame__descriptor)
#define SF (&imchat__v1__server_frame__descriptor)
#define JOB (&imchat__v1__offline_job__descriptor)

static int chk(const ProtobufCMessageDescriptor *d, bytes b) {
  return check_exact(d, b.s, b.len);
}

START_TEST(t_pb_packed_frames_pass) {
  Imchat__V1__SendRequest s = IMCHAT__V1__SEND_REQUEST__INIT;
  s.client_msg_id = "c-1";
  s.to_case = IMCHAT__V1__SEND_REQUEST__TO_USER_ID;
  s.user_id = "bob";
  s.content_type = "text/plain; charset=\xc3\xa9\xf0\x9d\x84\x9e";
  uint8_t body[3] = {0xff, 0x00, 0xfe}; /* bytes, not a string */
  s.body.data = body;
  s.body.len = sizeof(body);
  Imchat__V1__ClientFrame f = IMCHAT__V1__CLIENT_FRAME__INIT;
  f.id = 42;
  f.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_SEND;
  f.send = &s;
  uint8_t buf[256];
  size_t n = imchat__v1__client_frame__pack(&f, buf);
  ck_assert_int_eq(check_exact(CF, (const char *)buf, n), 0);
  uint64_t id = 0;
  ck_assert(imc_pb_peek_varint(buf, n, 1, &id));
  ck_assert_uint_eq(id, 42);

  /* Every prefix either passes or is refused; none is read past. */
  for (size_t k = 0; k < n; k++)
    (void)check_exact(CF, (const char *)buf, k);

  char *ids[2] = {"m1", "m\xc3\xa9"};
  Imchat__V1__DeliverAck a = IMCHAT__V1__DELIVER_ACK__INIT;
  a.n_msg_ids = 2;
  a.msg_ids = ids;
  f.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_DELIVER_ACK;
  f.deliver_ack = &a;
  n = imchat__v1__client_frame__pack(&f, buf);
  ck_assert_int_eq(check_exact(CF, (const char *)buf, n), 0);
  ck_assert_int_eq(imc_pb_check_strings(CF, NULL, 0), 0);
  ck_assert_int_eq(imc_pb_check_strings(NULL, buf, n), IMC_ERR_PROTO);
}
END_TEST

/* ClientFrame{id 7, send {...}}: 08 07 52 <len> <SendRequest>. */
static const bytes cf_bad[] = {
    /* client_msg_id "bad\xff\xfe" */
    B("\x08\x07\x52\x07\x0a\x05"
      "bad\xff\xfe"),
    /* client_msg_id "m\0first" */
    B("\x08\x07\x52\x09\x0a\x07"
      "m\0first"),
    /* user_id "bo\0b" */
    B("\x08\x07\x52\x06\x12\x04"
      "bo\0b"),
    /* group_id, a surrogate */
    B("\x08\x07\x52\x05\x1a\x03\xed\xa0\x80"),
    /* content_type, overlong '/' */
    B("\x08\x07\x52\x04\x2a\x02\xc0\xaf"),
    /* content_type truncated sequence */
    B("\x08\x07\x52\x03\x2a\x01\xe2"),
    /* deliver_ack: the second of two msg_ids */
    B("\x08\x07\x5a\x07\x0a\x02m1\x0a\x01\xff"),
    /* a known string field sent as a varint */
    B("\x08\x07\x52\x02\x08\x01"),
    /* a known message field sent as a fixed32 */
    B("\x08\x07\x55\x00\x00\x00\x00"),
    /* truncated varint, an 11-byte varint */
    B("\x08\xff"),
    B("\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"),
    /* truncated key */
    B("\x80"),
    /* length past the end, outside and inside */
    B("\x52\x05\x0a\x01"),
    B("\x52\x02\x0a\x05"),
    /* truncated length varint */
    B("\x52\x80"),
    /* fixed32 and fixed64 cut short */
    B("\x9d\x03\x00\x00"),
    B("\x99\x03\x00\x00\x00\x00\x00\x00\x00"),
    /* field number 0 */
    B("\x00\x00"),
    B("\x02\x00"),
    /* groups and reserved wire types */
    B("\x0b\x0c"),
    B("\x0c"),
    B("\x0e\x00"),
    B("\x0f\x00"),
};

START_TEST(t_pb_client_frame_bad) {
  ck_assert_msg(chk(CF, cf_bad[_i]) == IMC_ERR_PROTO, "cf_bad[%d] accepted",
                _i);
}
END_TEST

START_TEST(t_pb_unknown_fields_skipped) {
  /* Unknown field 99 (length-delimited) with invalid UTF-8: not a string
   * field of ours, so it is skipped; so are varint 50, fixed32 51 and
   * fixed64 51. */
  static const char in[] = "\x08\x07"
                           "\x9a\x06\x02\xff\xfe"
                           "\x90\x03\xff\x01"
                           "\x9d\x03\x01\x02\x03\x04"
                           "\x99\x03\x01\x02\x03\x04\x05\x06\x07\x08"
                           "\x52\x03\x0a\x01x";
  ck_assert_int_eq(check_exact(CF, in, sizeof(in) - 1), 0);
  /* Unknown fields inside a nested message too (SendRequest field 20). */
  static const char nested[] = "\x52\x08\xa2\x01\x02\x00\xff\x0a\x01x";
  ck_assert_int_eq(check_exact(CF, nested, sizeof(nested) - 1), 0);
  uint64_t id = 0;
  ck_assert(imc_pb_peek_varint((const uint8_t *)in, sizeof(in) - 1, 1, &id));
  ck_assert_uint_eq(id, 7);
}
END_TEST

START_TEST(t_pb_nested_message_strings) {
  /* ServerFrame{deliver (11) {message (1) {from_user (4) ...}}} */
  static const char ok[] = "\x5a\x06\x0a\x04\x22\x02"
                           "ab";
  static const char bad[] = "\x5a\x06\x0a\x04\x22\x02"
                            "\xff\x41";
  static const char nul[] = "\x5a\x06\x0a\x04\x22\x02"
                            "a\0";
  /* Message.body (7) is bytes: anything goes. */
  static const char body[] = "\x5a\x06\x0a\x04\x3a\x02"
                             "\xff\0";
  ck_assert_int_eq(check_exact(SF, ok, sizeof(ok) - 1), 0);
  ck_assert_int_eq(check_exact(SF, bad, sizeof(bad) - 1), IMC_ERR_PROTO);
  ck_assert_int_eq(check_exact(SF, nul, sizeof(nul) - 1), IMC_ERR_PROTO);
  ck_assert_int_eq(check_exact(SF, body, sizeof(body) - 1), 0);

  /* OfflineJob{message {msg_id}, inbox_users...} as the worker reads it. */
  static const char job_ok[] = "\x0a\x04\x0a\x02m1\x10\x01\x1a\x03"
                               "bob";
  static const char job_msg[] = "\x0a\x04\x0a\x02m\xc0\x1a\x03"
                                "bob";
  static const char job_user[] = "\x0a\x04\x0a\x02m1\x1a\x04"
                                 "bo\0b";
  ck_assert_int_eq(check_exact(JOB, job_ok, sizeof(job_ok) - 1), 0);
  ck_assert_int_eq(check_exact(JOB, job_msg, sizeof(job_msg) - 1),
                   IMC_ERR_PROTO);
  ck_assert_int_eq(check_exact(JOB, job_user, sizeof(job_user) - 1),
                   IMC_ERR_PROTO);
}
END_TEST

/* A message that contains itself, built by hand: deeper nesting than
 * IMC_PBCHECK_MAX_DEPTH is refused rather than recursed into. */
static const ProtobufCMessageDescriptor self_desc;
static const ProtobufCFieldDescriptor self_fields[] = {
    {"child", 1, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_MESSAGE, 0, 0,
     &self_desc, NULL, 0, 0, NULL, NULL},
    {"name", 2, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_STRING, 0, 0, NULL, NULL,
     0, 0, NULL, NULL},
};
static const unsigned self_by_name[] = {0, 1};
static const ProtobufCIntRange self_ranges[] = {{1, 0}, {0, 2}};
static const ProtobufCMessageDescriptor self_desc = {
    PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
    "t.Self",
    "Self",
    "T__Self",
    "t",
    0,
    2,
    self_fields,
    self_by_name,
    1,
    self_ranges,
    NULL,
    NULL,
    NULL,
    NULL};

/* depth levels of child, the innermost holding name = s (n bytes). */
static size_t nest(uint8_t *out, size_t cap, int depth, const char *s,
                   size_t n) {
  /* Built inside out, backwards from the end of out. */
  size_t pos = cap;
  pos -= n;
  memcpy(out + pos, s, n);
  out[--pos] = (uint8_t)n;
  out[--pos] = 0x12;
  for (int i = 0; i < depth; i++) {
    size_t len = cap - pos;
    ck_assert_uint_lt(len, 128);
    out[--pos] = (uint8_t)len;
    out[--pos] = 0x0a;
  }
  memmove(out, out + pos, cap - pos);
  return cap - pos;
}

START_TEST(t_pb_depth) {
  uint8_t buf[127];
  size_t n = nest(buf, sizeof(buf), 3, "ok", 2);
  ck_assert_int_eq(imc_pb_check_strings(&self_desc, buf, n), 0);
  n = nest(buf, sizeof(buf), 3, "\xff", 1);
  ck_assert_int_eq(imc_pb_check_strings(&self_desc, buf, n), IMC_ERR_PROTO);
  /* 60 levels of bare nesting: each level adds two bytes. */
  uint8_t deep[2 * 60];
  for (int i = 0; i < 60; i++) {
    deep[2 * i] = 0x0a;
    deep[2 * i + 1] = (uint8_t)(2 * (60 - i - 1));
  }
  ck_assert_int_eq(imc_pb_check_strings(&self_desc, deep, sizeof(deep)),
                   IMC_ERR_PROTO);
  ck_assert_int_eq(
      imc_pb_check_strings(&self_desc, deep + 2 * 40, sizeof(deep) - 2 * 40),
      0);
}
END_TEST

START_TEST(t_pb_peek) {
  uint64_t id = 5;
  ck_assert(!imc_pb_peek_varint((const uint8_t *)"", 0, 1, &id));
  ck_assert_uint_eq(id, 5);
  /* The last occurrence wins; reading stops at malformed bytes. */
  static const char two[] = "\x08\x01\x08\x96\x01\x52\x80";
  ck_assert(imc_pb_peek_varint((const uint8_t *)two, sizeof(two) - 1, 1, &id));
  ck_assert_uint_eq(id, 150);
  /* A length-delimited field 1 is not an id. */
  static const char ld[] = "\x0a\x01x";
  id = 9;
  ck_assert(!imc_pb_peek_varint((const uint8_t *)ld, sizeof(ld) - 1, 1, &id));
  ck_assert_uint_eq(id, 9);
}
END_TEST

int main(void) {
  Suite *su = suite_create("pbcheck");
  TCase *t = tcase_create("utf8");
  tcase_add_loop_test(t, t_utf8_good, 0,
                      (int)(sizeof(utf8_good) / sizeof(utf8_good[0])));
  tcase_add_loop_test(t, t_utf8_bad, 0,
                      (int)(sizeof(utf8_bad) / sizeof(utf8_bad[0])));
  tcase_add_test(t, t_utf8_next_subparts);
  tcase_add_test(t, t_utf8_all_pairs);
  suite_add_tcase(su, t);
  t = tcase_create("wire");
  tcase_add_test(t, t_pb_packed_frames_pass);
  tcase_add_loop_test(t, t_pb_client_frame_bad, 0,
                      (int)(sizeof(cf_bad) / sizeof(cf_bad[0])));
  tcase_add_test(t, t_pb_unknown_fields_skipped);
  tcase_add_test(t, t_pb_nested_message_strings);
  tcase_add_test(t, t_pb_depth);
  tcase_add_test(t, t_pb_peek);
  suite_add_tcase(su, t);
  SRunner *sr = srunner_create(su);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
