/* Unit tests of imchat-bench's MQTT 3.1.1 codec: every packet it encodes
 * decodes back to the same fields, partial input asks for more, and bytes
 * a conforming peer would not send are refused. */
#include "mqtt.h"

#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint8_t buf[70000];
static mqtt_packet m;

/* Decodes buf[0..n) and checks that every shorter prefix needs more. */
static void decode_whole(size_t n) {
  for (size_t i = 0; i < n; i++)
    ck_assert_int_eq(mqtt_decode(buf, i, sizeof(buf), &m), MQTT_NEED_MORE);
  ck_assert_int_eq(mqtt_decode(buf, n, sizeof(buf), &m), (long)n);
}

START_TEST(connect_round_trip) {
  size_t n = mqtt_encode_connect(buf, sizeof(buf), "bench-1", 7, 60, 1);
  ck_assert_uint_eq(n, 2 + 10 + 2 + 7);
  decode_whole(n);
  ck_assert_int_eq(m.type, MQTT_CONNECT);
  ck_assert_int_eq(m.keepalive, 60);
  ck_assert_int_eq(m.clean_session, 1);
  ck_assert_uint_eq(m.client_id_len, 7);
  ck_assert(memcmp(m.client_id, "bench-1", 7) == 0);
}
END_TEST

START_TEST(connack_suback_puback_round_trip) {
  size_t n = mqtt_encode_connack(buf, sizeof(buf), 1, 0);
  ck_assert_uint_eq(n, 4);
  decode_whole(n);
  ck_assert_int_eq(m.type, MQTT_CONNACK);
  ck_assert_int_eq(m.session_present, 1);
  ck_assert_int_eq(m.return_code, 0);

  n = mqtt_encode_suback(buf, sizeof(buf), 7, 1);
  decode_whole(n);
  ck_assert_int_eq(m.type, MQTT_SUBACK);
  ck_assert_int_eq(m.packet_id, 7);
  ck_assert_int_eq(m.return_code, 1);

  n = mqtt_encode_puback(buf, sizeof(buf), 65535);
  ck_assert_uint_eq(n, 4);
  decode_whole(n);
  ck_assert_int_eq(m.type, MQTT_PUBACK);
  ck_assert_int_eq(m.packet_id, 65535);

  static const uint8_t types[] = {MQTT_PINGREQ, MQTT_PINGRESP, MQTT_DISCONNECT};
  for (int i = 0; i < 3; i++) {
    n = mqtt_encode_simple(buf, sizeof(buf), types[i]);
    ck_assert_uint_eq(n, 2);
    decode_whole(n);
    ck_assert_int_eq(m.type, types[i]);
  }
  ck_assert_uint_eq(mqtt_encode_simple(buf, sizeof(buf), MQTT_PUBLISH), 0);
}
END_TEST

START_TEST(subscribe_round_trip) {
  size_t n = mqtt_encode_subscribe(buf, sizeof(buf), 1, "u/alice", 7, 1);
  decode_whole(n);
  ck_assert_int_eq(m.type, MQTT_SUBSCRIBE);
  ck_assert_int_eq(m.packet_id, 1);
  ck_assert_int_eq(m.qos, 1);
  ck_assert_uint_eq(m.topic_len, 7);
  ck_assert(memcmp(m.topic, "u/alice", 7) == 0);
}
END_TEST

START_TEST(publish_round_trip_all_lengths) {
  /* Payload sizes across each remaining-length varint boundary. */
  static uint8_t payload[66000];
  for (size_t i = 0; i < sizeof(payload); i++)
    payload[i] = (uint8_t)(i * 7);
  static const size_t sizes[] = {0,   1,     100,   117,   118,  127,
                                 128, 16000, 16378, 16379, 65536};
  for (size_t j = 0; j < sizeof(sizes) / sizeof(sizes[0]); j++) {
    for (uint8_t qos = 0; qos <= 1; qos++) {
      size_t n = mqtt_encode_publish(buf, sizeof(buf), "g/x", 3, payload,
                                     sizes[j], qos, qos ? 42 : 0);
      ck_assert_uint_gt(n, 0);
      ck_assert_int_eq(mqtt_decode(buf, n, sizeof(buf), &m), (long)n);
      ck_assert_int_eq(mqtt_decode(buf, n - 1, sizeof(buf), &m),
                       MQTT_NEED_MORE);
      ck_assert_int_eq(m.type, MQTT_PUBLISH);
      ck_assert_int_eq(m.qos, qos);
      ck_assert_int_eq(m.packet_id, qos ? 42 : 0);
      ck_assert_uint_eq(m.topic_len, 3);
      ck_assert_uint_eq(m.payload_len, sizes[j]);
      ck_assert(sizes[j] == 0 || memcmp(m.payload, payload, sizes[j]) == 0);
    }
  }
}
END_TEST

START_TEST(two_packets_in_one_buffer) {
  size_t a = mqtt_encode_puback(buf, sizeof(buf), 3);
  size_t b = mqtt_encode_simple(buf + a, sizeof(buf) - a, MQTT_PINGRESP);
  ck_assert_int_eq(mqtt_decode(buf, a + b, sizeof(buf), &m), (long)a);
  ck_assert_int_eq(m.packet_id, 3);
  ck_assert_int_eq(mqtt_decode(buf + a, b, sizeof(buf), &m), (long)b);
  ck_assert_int_eq(m.type, MQTT_PINGRESP);
}
END_TEST

START_TEST(encoders_refuse_bad_arguments) {
  uint8_t small[8];
  ck_assert_uint_eq(
      mqtt_encode_publish(buf, sizeof(buf), "t", 1, NULL, 0, 2, 1),
      0); /* QoS 2 */
  ck_assert_uint_eq(
      mqtt_encode_publish(buf, sizeof(buf), "t", 1, NULL, 0, 1, 0),
      0); /* id 0 with QoS 1 */
  ck_assert_uint_eq(mqtt_encode_publish(buf, sizeof(buf), "", 0, NULL, 0, 0, 0),
                    0); /* empty topic */
  ck_assert_uint_eq(mqtt_encode_puback(buf, sizeof(buf), 0), 0);
  ck_assert_uint_eq(mqtt_encode_connect(small, sizeof(small), "abc", 3, 1, 1),
                    0); /* no room */
  ck_assert_uint_eq(
      mqtt_encode_subscribe(small, sizeof(small), 1, "abcd", 4, 1), 0);
}
END_TEST

static long dec(const uint8_t *b, size_t n) {
  return mqtt_decode(b, n, sizeof(buf), &m);
}

START_TEST(malformed_refused) {
  /* Reserved type 0 and 15. */
  ck_assert_int_eq(dec((const uint8_t[]){0x00, 0x00}, 2), MQTT_MALFORMED);
  ck_assert_int_eq(dec((const uint8_t[]){0xf0, 0x00}, 2), MQTT_MALFORMED);
  /* PUBLISH with QoS 3; QoS 0 with DUP. */
  ck_assert_int_eq(dec((const uint8_t[]){0x36, 0x05, 0, 1, 't', 0, 1}, 7),
                   MQTT_MALFORMED);
  ck_assert_int_eq(dec((const uint8_t[]){0x38, 0x03, 0, 1, 't'}, 5),
                   MQTT_MALFORMED);
  /* PUBLISH QoS 1 with packet id 0; topic longer than the packet. */
  ck_assert_int_eq(dec((const uint8_t[]){0x32, 0x05, 0, 1, 't', 0, 0}, 7),
                   MQTT_MALFORMED);
  ck_assert_int_eq(dec((const uint8_t[]){0x30, 0x03, 0, 9, 't'}, 5),
                   MQTT_MALFORMED);
  /* PUBACK with wrong flags, wrong length, id 0. */
  ck_assert_int_eq(dec((const uint8_t[]){0x41, 0x02, 0, 1}, 4), MQTT_MALFORMED);
  ck_assert_int_eq(dec((const uint8_t[]){0x40, 0x03, 0, 1, 0}, 5),
                   MQTT_MALFORMED);
  ck_assert_int_eq(dec((const uint8_t[]){0x40, 0x02, 0, 0}, 4), MQTT_MALFORMED);
  /* SUBSCRIBE without the 0x2 flags. */
  ck_assert_int_eq(dec((const uint8_t[]){0x80, 0x06, 0, 1, 0, 1, 't', 1}, 8),
                   MQTT_MALFORMED);
  /* CONNACK with a reserved bit, an unknown return code. */
  ck_assert_int_eq(dec((const uint8_t[]){0x20, 0x02, 2, 0}, 4), MQTT_MALFORMED);
  ck_assert_int_eq(dec((const uint8_t[]){0x20, 0x02, 0, 6}, 4), MQTT_MALFORMED);
  /* PINGRESP with a body. */
  ck_assert_int_eq(dec((const uint8_t[]){0xd0, 0x01, 0}, 3), MQTT_MALFORMED);
  /* A five-byte varint, a non-minimal varint. */
  ck_assert_int_eq(
      dec((const uint8_t[]){0x30, 0xff, 0xff, 0xff, 0xff, 0x01}, 6),
      MQTT_MALFORMED);
  ck_assert_int_eq(dec((const uint8_t[]){0x40, 0x82, 0x00, 0, 1}, 5),
                   MQTT_MALFORMED);
  /* CONNECT with another protocol name or level. */
  size_t n = mqtt_encode_connect(buf, sizeof(buf), "c", 1, 10, 1);
  buf[4] = 'X';
  ck_assert_int_eq(dec(buf, n), MQTT_MALFORMED);
  n = mqtt_encode_connect(buf, sizeof(buf), "c", 1, 10, 1);
  buf[8] = 3;
  ck_assert_int_eq(dec(buf, n), MQTT_MALFORMED);
  /* Over the caller's limit. */
  n = mqtt_encode_publish(buf, sizeof(buf), "t", 1, buf + 1000, 500, 0, 0);
  ck_assert_int_eq(mqtt_decode(buf, n, 100, &m), MQTT_MALFORMED);
}
END_TEST

START_TEST(garbage_never_overreads) {
  /* Random bytes: every answer is sane and within the input. */
  uint64_t x = 0x2545f4914f6cdd1dull;
  static uint8_t g[64];
  for (int round = 0; round < 20000; round++) {
    size_t len = (size_t)(x % sizeof(g)) + 1;
    for (size_t i = 0; i < len; i++) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      g[i] = (uint8_t)x;
    }
    long r = mqtt_decode(g, len, sizeof(g), &m);
    ck_assert(r == MQTT_NEED_MORE || r == MQTT_MALFORMED ||
              (r > 0 && (size_t)r <= len));
  }
}
END_TEST

int main(void) {
  Suite *su = suite_create("bench_mqtt");
  TCase *t = tcase_create("mqtt");
  tcase_add_test(t, connect_round_trip);
  tcase_add_test(t, connack_suback_puback_round_trip);
  tcase_add_test(t, subscribe_round_trip);
  tcase_add_test(t, publish_round_trip_all_lengths);
  tcase_add_test(t, two_packets_in_one_buffer);
  tcase_add_test(t, encoders_refuse_bad_arguments);
  tcase_add_test(t, malformed_refused);
  tcase_add_test(t, garbage_never_overreads);
  suite_add_tcase(su, t);
  SRunner *sr = srunner_create(su);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
