/*
 * The MQTT 3.1.1 codec of mqtt.h.
 */
#include "mqtt.h"

#include <string.h>

/* Writes the fixed header; returns its length or 0 if cap is too small. */
static size_t put_header(uint8_t *out, size_t cap, uint8_t first,
                         size_t remaining) {
  if (remaining > MQTT_MAX_REMAINING)
    return 0;
  uint8_t tmp[5];
  size_t n = 0;
  tmp[n++] = first;
  do {
    uint8_t b = (uint8_t)(remaining % 128);
    remaining /= 128;
    if (remaining)
      b |= 0x80;
    tmp[n++] = b;
  } while (remaining);
  if (n > cap)
    return 0;
  memcpy(out, tmp, n);
  return n;
}

static uint8_t *put_u16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
  return p + 2;
}

static uint8_t *put_str(uint8_t *p, const char *s, size_t n) {
  p = put_u16(p, (uint16_t)n);
  if (n)
    memcpy(p, s, n);
  return p + n;
}

/* Header, then body of body_len bytes; returns the body's start or NULL. */
static uint8_t *begin(uint8_t *out, size_t cap, uint8_t first, size_t body_len,
                      size_t *total) {
  size_t h = put_header(out, cap, first, body_len);
  if (h == 0 || cap - h < body_len)
    return NULL;
  *total = h + body_len;
  return out + h;
}

size_t mqtt_encode_connect(uint8_t *out, size_t cap, const char *client_id,
                           size_t client_id_len, uint16_t keepalive,
                           int clean_session) {
  if (client_id_len > 65535)
    return 0;
  size_t total, body = 10 + 2 + client_id_len;
  uint8_t *p = begin(out, cap, MQTT_CONNECT << 4, body, &total);
  if (!p)
    return 0;
  p = put_str(p, "MQTT", 4);
  *p++ = 4; /* protocol level 3.1.1 */
  *p++ = clean_session ? 0x02 : 0x00;
  p = put_u16(p, keepalive);
  put_str(p, client_id, client_id_len);
  return total;
}

size_t mqtt_encode_connack(uint8_t *out, size_t cap, int session_present,
                           uint8_t return_code) {
  size_t total;
  uint8_t *p = begin(out, cap, MQTT_CONNACK << 4, 2, &total);
  if (!p)
    return 0;
  p[0] = session_present ? 1 : 0;
  p[1] = return_code;
  return total;
}

size_t mqtt_encode_publish(uint8_t *out, size_t cap, const char *topic,
                           size_t topic_len, const uint8_t *payload,
                           size_t payload_len, uint8_t qos,
                           uint16_t packet_id) {
  if (topic_len == 0 || topic_len > 65535 || qos > 1 || (qos && packet_id == 0))
    return 0;
  size_t total, body = 2 + topic_len + (qos ? 2 : 0) + payload_len;
  uint8_t *p =
      begin(out, cap, (uint8_t)(MQTT_PUBLISH << 4 | qos << 1), body, &total);
  if (!p)
    return 0;
  p = put_str(p, topic, topic_len);
  if (qos)
    p = put_u16(p, packet_id);
  if (payload_len)
    memcpy(p, payload, payload_len);
  return total;
}

static size_t encode_id(uint8_t *out, size_t cap, uint8_t first,
                        uint16_t packet_id) {
  size_t total;
  if (packet_id == 0)
    return 0;
  uint8_t *p = begin(out, cap, first, 2, &total);
  if (!p)
    return 0;
  put_u16(p, packet_id);
  return total;
}

size_t mqtt_encode_puback(uint8_t *out, size_t cap, uint16_t packet_id) {
  return encode_id(out, cap, MQTT_PUBACK << 4, packet_id);
}

size_t mqtt_encode_subscribe(uint8_t *out, size_t cap, uint16_t packet_id,
                             const char *topic, size_t topic_len, uint8_t qos) {
  if (packet_id == 0 || topic_len == 0 || topic_len > 65535 || qos > 2)
    return 0;
  size_t total, body = 2 + 2 + topic_len + 1;
  uint8_t *p = begin(out, cap, MQTT_SUBSCRIBE << 4 | 0x02, body, &total);
  if (!p)
    return 0;
  p = put_u16(p, packet_id);
  p = put_str(p, topic, topic_len);
  *p = qos;
  return total;
}

size_t mqtt_encode_suback(uint8_t *out, size_t cap, uint16_t packet_id,
                          uint8_t return_code) {
  size_t total;
  if (packet_id == 0)
    return 0;
  uint8_t *p = begin(out, cap, MQTT_SUBACK << 4, 3, &total);
  if (!p)
    return 0;
  p = put_u16(p, packet_id);
  *p = return_code;
  return total;
}

size_t mqtt_encode_simple(uint8_t *out, size_t cap, uint8_t type) {
  if (type != MQTT_PINGREQ && type != MQTT_PINGRESP && type != MQTT_DISCONNECT)
    return 0;
  size_t total;
  if (!begin(out, cap, (uint8_t)(type << 4), 0, &total))
    return 0;
  return total;
}

/* ---- decoding ---- */

typedef struct rd {
  const uint8_t *p, *end;
} rd;

static int get_u16(rd *r, uint16_t *v) {
  if (r->end - r->p < 2)
    return -1;
  *v = (uint16_t)(r->p[0] << 8 | r->p[1]);
  r->p += 2;
  return 0;
}

static int get_str(rd *r, const uint8_t **s, size_t *n) {
  uint16_t len;
  if (get_u16(r, &len) < 0 || (size_t)(r->end - r->p) < len)
    return -1;
  *s = r->p;
  *n = len;
  r->p += len;
  return 0;
}

static int decode_body(uint8_t type, uint8_t flags, rd *r, mqtt_packet *m) {
  uint8_t f;
  switch (type) {
  case MQTT_CONNECT: {
    const uint8_t *name;
    size_t nlen;
    if (flags != 0 || get_str(r, &name, &nlen) < 0 || nlen != 4 ||
        memcmp(name, "MQTT", 4) != 0 || r->end - r->p < 2)
      return -1;
    if (*r->p++ != 4)
      return -1;
    f = *r->p++;
    /* Reserved bit set, or will / user name / password: not supported. */
    if (f & 0xfd)
      return -1;
    m->clean_session = (f & 0x02) ? 1 : 0;
    if (get_u16(r, &m->keepalive) < 0 ||
        get_str(r, &m->client_id, &m->client_id_len) < 0)
      return -1;
    return r->p == r->end ? 0 : -1;
  }
  case MQTT_CONNACK:
    if (flags != 0 || r->end - r->p != 2 || (r->p[0] & 0xfe) || r->p[1] > 5)
      return -1;
    m->session_present = r->p[0];
    m->return_code = r->p[1];
    return 0;
  case MQTT_PUBLISH:
    m->qos = (flags >> 1) & 3;
    m->retain = flags & 1;
    m->dup = (flags >> 3) & 1;
    if (m->qos == 3 || (m->qos == 0 && m->dup))
      return -1;
    if (get_str(r, &m->topic, &m->topic_len) < 0 || m->topic_len == 0)
      return -1;
    if (m->qos) {
      if (get_u16(r, &m->packet_id) < 0 || m->packet_id == 0)
        return -1;
    }
    m->payload = r->p;
    m->payload_len = (size_t)(r->end - r->p);
    return 0;
  case MQTT_PUBACK:
    if (flags != 0 || r->end - r->p != 2 || get_u16(r, &m->packet_id) < 0 ||
        m->packet_id == 0)
      return -1;
    return 0;
  case MQTT_SUBSCRIBE:
    if (flags != 0x02 || get_u16(r, &m->packet_id) < 0 || m->packet_id == 0)
      return -1;
    if (get_str(r, &m->topic, &m->topic_len) < 0 || m->topic_len == 0 ||
        r->p == r->end)
      return -1;
    m->qos = *r->p++;
    if (m->qos > 2)
      return -1;
    /* Further filters are checked for shape only. */
    while (r->p < r->end) {
      const uint8_t *t;
      size_t tl;
      if (get_str(r, &t, &tl) < 0 || tl == 0 || r->p == r->end || *r->p++ > 2)
        return -1;
    }
    return 0;
  case MQTT_SUBACK:
    if (flags != 0 || get_u16(r, &m->packet_id) < 0 || m->packet_id == 0 ||
        r->p == r->end)
      return -1;
    m->return_code = *r->p++;
    if (m->return_code > 2 && m->return_code != 0x80)
      return -1;
    return 0;
  case MQTT_PINGREQ:
  case MQTT_PINGRESP:
  case MQTT_DISCONNECT:
    return flags == 0 && r->p == r->end ? 0 : -1;
  default:
    return -1;
  }
}

long mqtt_decode(const uint8_t *buf, size_t len, size_t max_len,
                 mqtt_packet *out) {
  if (len < 2)
    return MQTT_NEED_MORE;
  size_t remaining = 0, i = 1;
  unsigned mult = 1;
  for (;;) {
    if (i >= len)
      return MQTT_NEED_MORE;
    if (i > 4)
      return MQTT_MALFORMED;
    uint8_t b = buf[i++];
    remaining += (size_t)(b & 0x7f) * mult;
    if (!(b & 0x80))
      break;
    mult *= 128;
  }
  if (i > 2 && buf[i - 1] == 0)
    return MQTT_MALFORMED; /* a non-minimal varint */
  size_t total = i + remaining;
  if (total > max_len)
    return MQTT_MALFORMED;
  if (len < total)
    return MQTT_NEED_MORE;
  memset(out, 0, sizeof(*out));
  out->type = buf[0] >> 4;
  rd r = {buf + i, buf + total};
  if (decode_body(out->type, buf[0] & 0x0f, &r, out) < 0)
    return MQTT_MALFORMED;
  return (long)total;
}
