/*
 * Checks of protobuf wire bytes that protobuf-c does not make: its
 * unpack takes any bytes for a `string` field and hands them on as a C
 * string, so invalid UTF-8 would reach standard decoders downstream (which
 * refuse the whole message) and an embedded NUL would silently cut the
 * string short. Allocation-free; fuzzable alone.
 */
#ifndef IMC_PBCHECK_H
#define IMC_PBCHECK_H

#include <protobuf-c/protobuf-c.h>

#include <stddef.h>
#include <stdint.h>

/* Nesting of MESSAGE fields beyond this is refused (bounds the stack). */
#define IMC_PBCHECK_MAX_DEPTH 32

/*
 * Walks data[0..len) as a message of type d: every field of type STRING
 * must be well-formed UTF-8 without NUL (imc_utf8_valid); MESSAGE fields
 * are checked recursively with their own descriptors; repeated fields are
 * checked element by element (packed scalars are skipped whole); fields d
 * does not know are skipped by wire type. Returns 0, or IMC_ERR_PROTO for
 * a bad string, malformed wire data (truncated varint or length, a length
 * past the end, field number 0, a group or reserved wire type, a known
 * string or message field with a wire type other than length-delimited)
 * or nesting deeper than IMC_PBCHECK_MAX_DEPTH. Passing says nothing of
 * the other fields: protobuf-c's unpack still checks those.
 */
int imc_pb_check_strings(const ProtobufCMessageDescriptor *d,
                         const uint8_t *data, size_t len);

/*
 * Reads the varint field number `field` at the top level of data[0..len)
 * (the last occurrence wins, as in protobuf) and stops at the first
 * malformed byte. Returns 1 and sets *out if one was read, else 0 and
 * leaves *out alone. Used to answer a refused frame with its id.
 */
int imc_pb_peek_varint(const uint8_t *data, size_t len, uint32_t field,
                       uint64_t *out);

#endif /* IMC_PBCHECK_H */
