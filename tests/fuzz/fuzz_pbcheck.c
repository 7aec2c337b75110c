/* libFuzzer target: the protobuf string validator and the UTF-8 checks.
 * The first byte picks the message type; the rest is wire bytes. */
#include "protocol/pbcheck.h"
#include "protocol/utf8.h"

#include "im.pb-c.h"
#include "queue.pb-c.h"

#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const ProtobufCMessageDescriptor *const types[] = {
      &imchat__v1__client_frame__descriptor,
      &imchat__v1__server_frame__descriptor,
      &imchat__v1__message__descriptor,
      &imchat__v1__offline_job__descriptor,
  };
  if (size == 0)
    return 0;
  const ProtobufCMessageDescriptor *d =
      types[data[0] % (sizeof(types) / sizeof(types[0]))];
  data++;
  size--;
  imc_pb_check_strings(d, data, size);
  uint64_t id = 0;
  imc_pb_peek_varint(data, size, 1, &id);
  imc_utf8_valid((const char *)data, size);
  size_t i = 0;
  while (i < size) {
    size_t bad = 0;
    size_t k = imc_utf8_next(data + i, size - i, &bad);
    i += k ? k : bad;
  }
  return 0;
}
