/* libFuzzer target: JWT header parsing and verification, JSON reading. */
#include "protocol/json.h"
#include "protocol/jwt.h"

#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static imc_jwt_key key;
  static int ready;
  if (!ready) {
    /* The secret the seed tokens are signed with, so that fuzzing
     * reaches the claims. */
    imc_jwt_key_init_secret(&key, (const uint8_t *)"fuzz", 4, NULL);
    ready = 1;
  }
  imc_json_value v;
  imc_json_parse((const char *)data, size, &v);
  imc_jwt_header h;
  imc_jwt_parse_header((const char *)data, size, &h);
  imc_jwt_policy pol = {"issuer", "audience", 60};
  imc_jwt_claims c;
  imc_jwt_verify((const char *)data, size, &key, &pol, 1700000000, &c);
  imc_jwt_verify((const char *)data, size, &key, NULL, 1700000000, &c);
  return 0;
}
