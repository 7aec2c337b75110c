/* Unit tests of the JSON writer's string escaping. */
#include "protocol/jsonw.h"
#include "protocol/utf8.h"
#include "util/alloc.h"

#include <imchat/common.h>

#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Writes s[0..n) as a JSON string value; the result is NUL-terminated
 * and freed by the caller. */
static char *write_str(const char *s, size_t n) {
  imc_wbuf b;
  imc_wbuf_init(&b, imc_mem_default());
  imc_jsonw w;
  imc_jsonw_init(&w, &b);
  imc_jsonw_string_n(&w, s, n);
  imc_wbuf_append(&b, "", 1);
  ck_assert_int_eq(b.err, 0);
  return b.p;
}

static void ck_json(const char *in, size_t n, const char *want) {
  char *got = write_str(in, n);
  ck_assert_str_eq(got, want);
  imc_free(imc_mem_default(), got);
}
#define CK_JSON(lit, want) ck_json(lit, sizeof(lit) - 1, want)

START_TEST(t_escapes) {
  CK_JSON("", "\"\"");
  CK_JSON("plain", "\"plain\"");
  CK_JSON("a\"b\\c", "\"a\\\"b\\\\c\"");
  CK_JSON("\x01\n\t\r\x1f", "\"\\u0001\\u000a\\u0009\\u000d\\u001f\"");
  CK_JSON("a\0b", "\"a\\u0000b\"");
  CK_JSON("/\x7f", "\"/\x7f\""); /* neither needs escaping in JSON */
}
END_TEST

START_TEST(t_utf8_passes) {
  CK_JSON("\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9d\x84\x9e \xf4\x8f\xbf\xbf",
          "\"\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9d\x84\x9e "
          "\xf4\x8f\xbf\xbf\"");
}
END_TEST

#define FFFD "\xef\xbf\xbd"

START_TEST(t_invalid_replaced) {
  CK_JSON("bad\xff\xfe", "\"bad" FFFD FFFD "\"");
  CK_JSON("a\x80z", "\"a" FFFD "z\"");
  /* A truncated sequence is one maximal subpart: one U+FFFD. */
  CK_JSON("x\xe2\x82", "\"x" FFFD "\"");
  CK_JSON("\xe2\x82"
          "A",
          "\"" FFFD "A\"");
  CK_JSON("\xf0\x9d\x84\"", "\"" FFFD "\\\"\"");
  /* Overlongs, surrogates and > U+10FFFF: one per byte (none is a valid
   * prefix past its lead byte). */
  CK_JSON("\xc0\xaf", "\"" FFFD FFFD "\"");
  CK_JSON("\xed\xa0\x80", "\"" FFFD FFFD FFFD "\"");
  CK_JSON("\xf4\x90\x80\x80", "\"" FFFD FFFD FFFD FFFD "\"");
  /* Valid text around the damage is kept. */
  CK_JSON("\xc3\xa9\xff\xc3\xa9", "\"\xc3\xa9" FFFD "\xc3\xa9\"");
}
END_TEST

START_TEST(t_keys_escaped) {
  imc_wbuf b;
  imc_wbuf_init(&b, imc_mem_default());
  imc_jsonw w;
  imc_jsonw_init(&w, &b);
  imc_jsonw_object_begin(&w);
  imc_jsonw_kv_string(&w, "k\"\xff", "v\n");
  imc_jsonw_object_end(&w);
  imc_wbuf_append(&b, "", 1);
  ck_assert_int_eq(b.err, 0);
  ck_assert_str_eq(b.p, "{\"k\\\"" FFFD "\":\"v\\u000a\"}");
  imc_wbuf_free(&b);
}
END_TEST

/* Whatever the input, the output is valid UTF-8 and holds no raw control
 * character: every 1- and 2-byte string, and 3-byte ones from a lead set.
 * One buffer for all, emptied between strings; returns 1 if clean (one
 * assertion at the end: check logs every passing one). */
static int clean(imc_wbuf *b, const char *s, size_t n) {
  b->len = 0;
  imc_jsonw w;
  imc_jsonw_init(&w, b);
  imc_jsonw_string_n(&w, s, n);
  if (b->err != 0)
    return 0;
  for (size_t i = 0; i < b->len; i++)
    if ((unsigned char)b->p[i] < 0x20)
      return 0;
  return imc_utf8_valid(b->p, b->len);
}

START_TEST(t_output_always_clean) {
  imc_wbuf out;
  unsigned dirty = 0;
  imc_wbuf_init(&out, imc_mem_default());
  for (unsigned a = 0; a < 256; a++) {
    char s1[1] = {(char)a};
    dirty += !clean(&out, s1, 1);
    for (unsigned b = 0; b < 256; b++) {
      char s2[2] = {(char)a, (char)b};
      dirty += !clean(&out, s2, 2);
    }
  }
  static const unsigned char leads[] = {0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xf5};
  for (size_t l = 0; l < sizeof(leads); l++)
    for (unsigned b = 0x70; b < 0xd0; b++)
      for (unsigned c = 0x70; c < 0xd0; c++) {
        char s3[3] = {(char)leads[l], (char)b, (char)c};
        dirty += !clean(&out, s3, 3);
      }
  imc_wbuf_free(&out);
  ck_assert_uint_eq(dirty, 0);
}
END_TEST

int main(void) {
  Suite *su = suite_create("jsonw");
  TCase *t = tcase_create("strings");
  tcase_add_test(t, t_escapes);
  tcase_add_test(t, t_utf8_passes);
  tcase_add_test(t, t_invalid_replaced);
  tcase_add_test(t, t_keys_escaped);
  tcase_add_test(t, t_output_always_clean);
  tcase_set_timeout(t, 60);
  suite_add_tcase(su, t);
  SRunner *sr = srunner_create(su);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
