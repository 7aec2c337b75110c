/*
 * WebSocket frame headers (RFC 6455 section 5.2), allocation-free.
 *
 * Server frames are written directly (imc_ws_header). Inbound, a scanner
 * reads every frame header before anything else sees it and checks it as
 * a server must: the gateway refuses a bad frame with the right close
 * code at its header, hands the frames it accepts to wslay, and can drop
 * its wslay context between frames, so that an idle connection holds no
 * frame buffers.
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

/* The first header byte's RSV1 bit: a compressed message (RFC 7692). */
#define IMC_WS_RSV1 0x40
/* A data message may span one frame per this many bytes of the message
 * limit (and one more): see imc_ws_scan_header. */
#define IMC_WS_FRAGMENT_MIN 64

#define IMC_WS_HEADER_MAX 10 /* an unmasked header, as servers send */
#define IMC_WS_CONTROL_MAX 125

/*
 * Writes the header of a final, unmasked frame with opcode and a payload
 * of len bytes into out. Returns the header length (2, 4 or 10).
 */
size_t imc_ws_header(uint8_t out[IMC_WS_HEADER_MAX], uint8_t opcode,
                     uint64_t len);

/* Where an inbound byte stream stands. Zero-initialise before use. */
typedef struct imc_ws_scan {
  uint64_t left;    /* payload bytes of the current frame still to come */
  uint64_t msg_len; /* payload of the unfinished data message so far */
  uint64_t nframes; /* its frames so far */
  uint8_t hdr[14];  /* the current frame's header, as received */
  uint8_t hlen;     /* bytes in hdr */
  uint8_t done;     /* hdr holds a complete header that was accepted */
  uint8_t in_msg;   /* a fragmented data message is not finished */
  uint8_t rsv1_ok;  /* set by the user: permessage-deflate is negotiated */
} imc_ws_scan;

/* imc_ws_scan_header: the header is not complete yet. */
#define IMC_WS_SCAN_MORE 0
/* imc_ws_scan_header: a complete header, accepted. */
#define IMC_WS_SCAN_FRAME 1

/*
 * Reads the header of the next frame from data[0..len) into s; call it
 * between frames, and again with more bytes while it returns
 * IMC_WS_SCAN_MORE. *used is set to the bytes it took (all of len unless
 * the header ended or broke the rules earlier). Each rule is checked as
 * soon as the bytes it needs have arrived, so a bad header is refused
 * before its payload is read:
 *  - 1002 (protocol error): RSV bits set, except RSV1 on the first frame
 *    of a data message when rsv1_ok is set (permessage-deflate), a
 *    reserved opcode, a control frame that is fragmented or longer than
 *    125 bytes, a close frame of 1 byte (a status code takes 2), an
 *    unmasked frame, a continuation frame outside a fragmented message
 *    or a new data frame inside one, a length not in its shortest
 *    encoding (16 bits for less than 126, 64 bits for less than 65536),
 *    a 64-bit length with the most significant bit set;
 *  - 1009 (message too big): a data frame that takes its message over
 *    max_msg bytes, or over 1 + max_msg / IMC_WS_FRAGMENT_MIN frames (0:
 *    no limit).
 * Returns IMC_WS_SCAN_MORE, IMC_WS_SCAN_FRAME, or the close code, with
 * *why set to a short reason for the peer.
 */
int imc_ws_scan_header(imc_ws_scan *s, const uint8_t *data, size_t len,
                       uint64_t max_msg, size_t *used, const char **why);

/* Fields of the accepted header (s->done). */
uint8_t imc_ws_scan_opcode(const imc_ws_scan *s);
/* The masking key: the last 4 bytes of the header. */
const uint8_t *imc_ws_scan_mask(const imc_ws_scan *s);

/* Takes up to len payload bytes of the current frame; returns how many. */
size_t imc_ws_scan_payload(imc_ws_scan *s, size_t len);

/* 1 if the stream stands between two frames. */
int imc_ws_scan_at_boundary(const imc_ws_scan *s);

/*
 * 1 if the stream stands between whole messages: no frame and no
 * fragmented message is partly received.
 */
int imc_ws_scan_idle(const imc_ws_scan *s);

#endif /* IMC_WSFRAME_H */
