/*
 * WebSocket output: frames, close frames, ServerFrames and Error frames
 * queued on a connection.
 */
#include "gateway/gateway_int.h"

#include <stdio.h>
#include <string.h>

/* Queues one unfragmented frame. A failure leaves the stream broken, so
 * the connection is aborted. */
int gw_ws_put(imc_conn *c, uint8_t opcode, const uint8_t *data, size_t len) {
  uint8_t hdr[IMC_WS_HEADER_MAX];
  size_t hl = imc_ws_header(hdr, opcode, len);
  if (gw_queue_bytes(c, hdr, hl) != 0 || gw_queue_bytes(c, data, len) != 0) {
    c->flags |= F_ABORT | F_NOMEM;
    gw_dirty_add(c);
    return IMC_ERR_NOMEM;
  }
  return 0;
}

/* Queues a close frame and gives the peer CLOSE_WAIT_MS to answer. */
void gw_ws_close(imc_conn *c, uint16_t code, const char *reason) {
  if (c->flags & F_CLOSING)
    return;
  /* Nothing may follow our close frame, wslay's automatic answers
   * included. */
  c->flags |= F_CLOSING | F_DISCARD;
  uint8_t payload[125];
  size_t rl = reason ? strlen(reason) : 0;
  if (rl > sizeof(payload) - 2)
    rl = sizeof(payload) - 2;
  payload[0] = (uint8_t)(code >> 8);
  payload[1] = (uint8_t)code;
  memcpy(payload + 2, reason, rl);
  gw_ws_put(c, IMC_WS_CLOSE, payload, rl + 2);
  c->close_at = now_ms(c->gw) + CLOSE_WAIT_MS;
  gw_conn_schedule(c);
}

/* A frame was queued on c: closes c if its queue is over the limit. */
static int queued_frame(imc_conn *c) {
  imc_gateway *gw = c->gw;
  stat_inc(gw, IMC_GW_STAT_FRAMES_OUT);
  if (c->out.len > gw->o.max_outbound) {
    stat_inc(gw, IMC_GW_STAT_SLOW_CLOSED);
    gw_log(gw, IMC_LOG_WARN,
           "conn %llu (%s/%s): %zu bytes queued, closing slow reader",
           (unsigned long long)c->id, c->user, c->device, c->out.len);
    gw_ws_close(c, 1008, "outbound queue full");
    return IMC_ERR_QUEUE_FULL;
  }
  return 0;
}

/* Queues one binary message on c, compressed if c negotiated
 * permessage-deflate and it is over the size threshold. */
int gw_ws_queue(imc_conn *c, const uint8_t *data, size_t len) {
  if (c->state != ST_WS || (c->flags & (F_CLOSING | F_ABORT)))
    return IMC_ERR_CLOSED;
  if (gw_deflate_wanted(c, len)) {
    imc_shared *z =
        gw_deflate_frame(c->gw, c->pmd_bits, IMC_WS_BINARY, data, len);
    if (z != NULL) {
      int rv = gw_ws_queue_shared(c, z);
      imc_shared_unref(&c->gw->mem, z);
      return rv;
    }
  }
  int rv = gw_ws_put(c, IMC_WS_BINARY, data, len);
  if (rv != 0)
    return rv;
  return queued_frame(c);
}

int gw_ws_queue_shared(imc_conn *c, imc_shared *frame) {
  imc_gateway *gw = c->gw;
  if (c->state != ST_WS || (c->flags & (F_CLOSING | F_ABORT)))
    return IMC_ERR_CLOSED;
  if (imc_bufq_append_shared(&c->out, &gw->mem, frame) != 0) {
    c->flags |= F_ABORT | F_NOMEM;
    gw_dirty_add(c);
    return IMC_ERR_NOMEM;
  }
  gw->stats[IMC_GW_STAT_OUTBOUND_BYTES] += frame->len;
  gw_dirty_add(c);
  return queued_frame(c);
}

int gw_send_frame(imc_conn *c, const Imchat__V1__ServerFrame *f) {
  uint8_t *buf;
  size_t len;
  if (imc_pb_pack_server_frame(f, &c->gw->mem, &buf, &len) != 0)
    return IMC_ERR_NOMEM;
  int rv = gw_ws_queue(c, buf, len);
  imc_free(&c->gw->mem, buf);
  return rv;
}

static Imchat__V1__Error__Code err_code(int rv) {
  switch (rv) {
  case IMC_ERR_INVALID_ARGUMENT:
  case IMC_ERR_PROTO:
    return IMCHAT__V1__ERROR__CODE__BAD_REQUEST;
  case IMC_ERR_AUTH:
  case IMC_ERR_EXPIRED:
    return IMCHAT__V1__ERROR__CODE__UNAUTHENTICATED;
  case IMC_ERR_FORBIDDEN:
    return IMCHAT__V1__ERROR__CODE__FORBIDDEN;
  case IMC_ERR_NOT_FOUND:
    return IMCHAT__V1__ERROR__CODE__NOT_FOUND;
  case IMC_ERR_TOO_LARGE:
    return IMCHAT__V1__ERROR__CODE__TOO_LARGE;
  case IMC_ERR_RATE_LIMITED:
    return IMCHAT__V1__ERROR__CODE__RATE_LIMITED;
  case IMC_ERR_BLOCKED:
    return IMCHAT__V1__ERROR__CODE__BLOCKED;
  case IMC_ERR_UNAVAILABLE:
  case IMC_ERR_QUEUE_FULL:
  case IMC_ERR_IO:
  case IMC_ERR_CLOSED:
    return IMCHAT__V1__ERROR__CODE__UNAVAILABLE;
  default:
    return IMCHAT__V1__ERROR__CODE__INTERNAL;
  }
}

int gw_pack_error(imc_gateway *gw, uint64_t id, int rv, const char *message,
                  uint8_t **out, size_t *len) {
  Imchat__V1__Error e = IMCHAT__V1__ERROR__INIT;
  e.code = err_code(rv);
  gw->errors[e.code]++;
  e.message = (char *)(message ? message : imc_strerror(rv));
  Imchat__V1__ServerFrame f = IMCHAT__V1__SERVER_FRAME__INIT;
  f.id = id;
  f.body_case = IMCHAT__V1__SERVER_FRAME__BODY_ERROR;
  f.error = &e;
  if (imc_pb_pack_server_frame(&f, &gw->mem, out, len) != 0) {
    *out = NULL;
    return IMC_ERR_NOMEM;
  }
  return 0;
}

int gw_send_error(imc_conn *c, uint64_t id, int rv, const char *message) {
  uint8_t *buf;
  size_t len;
  if (gw_pack_error(c->gw, id, rv, message, &buf, &len) != 0)
    return IMC_ERR_NOMEM;
  int q = gw_ws_queue(c, buf, len);
  imc_free(&c->gw->mem, buf);
  return q;
}
