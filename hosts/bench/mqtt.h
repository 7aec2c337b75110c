/*
 * A minimal MQTT 3.1.1 codec for the benchmark: the packets a QoS 0/1
 * client exchanges (CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE with one
 * topic filter, SUBACK with one return code, PINGREQ, PINGRESP,
 * DISCONNECT).
 *
 * Allocation-free: encoders write into a caller's buffer, the decoder
 * points into the caller's bytes. Every function is pure and can be tested
 * (and fuzzed) alone.
 */
#ifndef IMC_BENCH_MQTT_H
#define IMC_BENCH_MQTT_H

#include <stddef.h>
#include <stdint.h>

enum {
  MQTT_CONNECT = 1,
  MQTT_CONNACK = 2,
  MQTT_PUBLISH = 3,
  MQTT_PUBACK = 4,
  MQTT_SUBSCRIBE = 8,
  MQTT_SUBACK = 9,
  MQTT_PINGREQ = 12,
  MQTT_PINGRESP = 13,
  MQTT_DISCONNECT = 14,
};

/* Largest remaining length the 4-byte varint of MQTT can carry. */
#define MQTT_MAX_REMAINING 268435455u

/* Decoder results besides a positive packet length. */
#define MQTT_NEED_MORE 0 /* the packet is not complete yet */
#define MQTT_MALFORMED (-1)

/*
 * A decoded packet. Pointers borrow the decoded buffer. Which fields are
 * set depends on type:
 *  CONNECT    client_id, keepalive, clean_session
 *  CONNACK    session_present, return_code
 *  PUBLISH    topic, payload, qos, retain, dup, packet_id (qos > 0)
 *  PUBACK     packet_id
 *  SUBSCRIBE  packet_id, topic (the first filter), qos (its requested QoS)
 *  SUBACK     packet_id, return_code (the first)
 */
typedef struct mqtt_packet {
  uint8_t type;
  uint8_t qos;
  uint8_t retain;
  uint8_t dup;
  uint8_t session_present;
  uint8_t return_code;
  uint8_t clean_session;
  uint16_t packet_id;
  uint16_t keepalive;
  const uint8_t *topic;
  size_t topic_len;
  const uint8_t *payload;
  size_t payload_len;
  const uint8_t *client_id;
  size_t client_id_len;
} mqtt_packet;

/*
 * Decodes the packet at the start of buf. Returns its whole length (fixed
 * header included), MQTT_NEED_MORE when buf holds only part of it, or
 * MQTT_MALFORMED for bytes no conforming peer sends (unknown type, wrong
 * fixed-header flags, QoS 3, a varint over 4 bytes, lengths that do not
 * add up, a zero packet id where one is required, a CONNECT that is not
 * "MQTT" level 4). A packet over max_len bytes is MQTT_MALFORMED too.
 */
long mqtt_decode(const uint8_t *buf, size_t len, size_t max_len,
                 mqtt_packet *out);

/*
 * Encoders: write one packet into out (capacity cap) and return its
 * length, or 0 when cap is too small or an argument is out of range
 * (strings over 65535 bytes, qos > 1 for PUBLISH, packet id 0 where one
 * is needed).
 */
size_t mqtt_encode_connect(uint8_t *out, size_t cap, const char *client_id,
                           size_t client_id_len, uint16_t keepalive,
                           int clean_session);
size_t mqtt_encode_connack(uint8_t *out, size_t cap, int session_present,
                           uint8_t return_code);
size_t mqtt_encode_publish(uint8_t *out, size_t cap, const char *topic,
                           size_t topic_len, const uint8_t *payload,
                           size_t payload_len, uint8_t qos, uint16_t packet_id);
size_t mqtt_encode_puback(uint8_t *out, size_t cap, uint16_t packet_id);
size_t mqtt_encode_subscribe(uint8_t *out, size_t cap, uint16_t packet_id,
                             const char *topic, size_t topic_len, uint8_t qos);
size_t mqtt_encode_suback(uint8_t *out, size_t cap, uint16_t packet_id,
                          uint8_t return_code);
/* PINGREQ, PINGRESP or DISCONNECT: two bytes. */
size_t mqtt_encode_simple(uint8_t *out, size_t cap, uint8_t type);

#endif
