/*
 * WebSocket frame headers (RFC 6455 section 5.2), allocation-free.
 *
 * wslay parses and validates what clients send; these two helpers let the
 * gateway do without a wslay context while a connection is idle: server
 * frames are written directly, and a scanner follows where the frames of
 * the inbound stream begin and end, so the context can be released at a
 * boundary and created again when the next frame starts.
 */
#ifndef IMC_WSFRAME_H
#define IMC_WSFRAME_H

#include <stddef.h>
#include <stdint.h>

#define IMC_WS_CONT 0x0
#define IMC_WS_TEXT 0x1
#define IMC_WS_BINARY 0x2
#define IMC_WS_CLOSE 0x8
#define IMC_WS_PING 0x9
#define IMC_WS_PONG 0xa

#define IMC_WS_HEADER_MAX 10 /* an unmasked header, as servers send */

/*
 * Writes the header of a final, unmasked frame with opcode and a payload
 * of len bytes into out. Returns the header length (2, 4 or 10).
 */
size_t imc_ws_header(uint8_t out[IMC_WS_HEADER_MAX], uint8_t opcode,
                     uint64_t len);

/* Where an inbound byte stream stands. Zero-initialise before use. */
typedef struct imc_ws_scan {
  uint64_t left;   /* payload bytes of the current frame still to come */
  uint8_t hdr[14]; /* the header read so far */
  uint8_t hlen;    /* bytes in hdr */
  uint8_t in_msg;  /* a fragmented data message is not finished */
} imc_ws_scan;

/* Advances s over len bytes of the stream. */
void imc_ws_scan_feed(imc_ws_scan *s, const uint8_t *data, size_t len);

/*
 * Advances s over data[0..len) up to the end of the current frame and
 * returns the bytes taken: len, or fewer when a frame ends inside them.
 */
size_t imc_ws_scan_frame(imc_ws_scan *s, const uint8_t *data, size_t len);

/* 1 if the stream stands between two frames. */
int imc_ws_scan_at_boundary(const imc_ws_scan *s);

/*
 * 1 if the stream stands between whole messages: no frame and no
 * fragmented message is partly received.
 */
int imc_ws_scan_idle(const imc_ws_scan *s);

#endif /* IMC_WSFRAME_H */
