/*
 * permessage-deflate (RFC 7692): the negotiation of the extension from a
 * client's Sec-WebSocket-Extensions offers, and the server's answer.
 * Parsers only: nothing is allocated.
 *
 * The server always answers with server_no_context_takeover and
 * client_no_context_takeover (RFC 7692 7.1.1.1 and 7.1.1.2 let a server
 * include both whether or not they were offered): every message is then
 * compressed on its own, and neither side keeps a window between
 * messages, so a connection holds no compression state.
 */
#ifndef IMC_PMDEFLATE_H
#define IMC_PMDEFLATE_H

#include "protocol/http.h"

#include <stdint.h>

/* What an accepted offer settles. */
typedef struct imc_pmd_params {
  /* The window the server may compress with: the offer's
   * server_max_window_bits (8-15), else 15. */
  uint8_t server_bits;
  /* 1 if the offer carried server_max_window_bits: the answer repeats
   * it. */
  uint8_t server_bits_offered;
} imc_pmd_params;

/*
 * Picks the first offer of permessage-deflate the server can accept in
 * the Sec-WebSocket-Extensions values vals[0..n) (one per header line,
 * each a comma-separated list of extensions with parameters, RFC 6455
 * 9.1). An offer is declined, and the next one considered, when it has
 * a parameter RFC 7692 does not define, a parameter twice, a value on a
 * parameter that takes none, or a window size that is not 8-15 in
 * decimal. A header line that does not parse ends the search in that
 * line. Returns 1 with *out set, or 0: no offer is accepted (the
 * upgrade goes on without the extension).
 */
int imc_pmd_negotiate(const imc_span *vals, size_t n, imc_pmd_params *out);

/* The answer's header line, CRLF included, at most this long. */
#define IMC_PMD_RESPONSE_MAX 160

/*
 * Writes the Sec-WebSocket-Extensions header line (with its CRLF) that
 * accepts p into out and NUL-terminates it. Returns its length.
 */
size_t imc_pmd_response(const imc_pmd_params *p,
                        char out[IMC_PMD_RESPONSE_MAX]);

#endif /* IMC_PMDEFLATE_H */
