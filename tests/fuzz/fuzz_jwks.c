/* libFuzzer target: JWK Set parsing, lookups, and the PEM keys it makes,
 * which must always load as verification keys. */
#include "protocol/jwt.h"

#include <imchat/jwks.h>

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  imc_jwks *set;
  if (imc_jwks_new(&set, (const char *)data, size, NULL) != 0)
    return 0;
  const char *alg, *kid, *pem;
  size_t len;
  for (size_t i = 0; imc_jwks_key(set, i, &alg, &kid, &pem, &len) == 0; i++) {
    imc_jwt_key key;
    /* A key the set hands out that the verifier cannot load is a bug. */
    if (imc_jwt_key_init_pem(&key, pem, len) != 0 ||
        key.alg != (alg[0] == 'R' ? IMC_JWT_RS256 : IMC_JWT_ES256))
      abort();
    imc_jwt_key_clear(&key, NULL);
    imc_jwks_find(set, alg, kid, &pem, &len);
  }
  imc_jwks_find(set, "RS256", "", &pem, &len);
  imc_jwks_find(set, "ES256", NULL, &pem, &len);
  imc_jwks_del(set);
  return 0;
}
