/*
 * The gateway's key source on a JWKS URL: the JWK Set is downloaded with
 * libcurl's multi interface on the hosts' epoll loop (an hloop watch per
 * socket, one hook for libcurl's timer and the refresh schedule), parsed
 * with imc_jwks (imchat/jwks.h) and kept.
 *
 *  - The first fetch starts at once; lookups wait for a fetch in flight.
 *    Until one succeeds there is no key set: lookups fail
 *    (IMC_ERR_UNAVAILABLE) and the metrics source is not ready.
 *  - The set is fetched again every refresh_ms, or sooner when the answer
 *    carries Cache-Control max-age (never sooner than min_refetch_ms).
 *  - A failed fetch (connection, TLS, HTTP status other than 200, a
 *    document that does not parse or holds no usable key) keeps the set
 *    in use, is logged, and is retried after retry_ms, doubling up to
 *    min_refetch_ms.
 *  - A lookup that misses (unknown kid; or no kid and not exactly one key
 *    of the alg) fetches the set again at once, at most once per
 *    min_refetch_ms; meanwhile misses fail with IMC_ERR_NOT_FOUND.
 *  - A lookup that waits on a fetch is answered when the fetch ends, so
 *    within timeout_ms.
 *
 * The program calls curl_global_init() before hjwks_new (libcurl's
 * global state is the program's). Single-threaded, like the loop.
 */
#ifndef IMC_HOST_JWKS_H
#define IMC_HOST_JWKS_H

#include "loop.h"

#include <imchat/api.h>
#include <imchat/backend.h>

typedef struct hjwks hjwks;

typedef struct hjwks_options {
  const char *url;        /* http:// or https:// */
  const char *ca_file;    /* PEM CAs for https; NULL: the system's */
  int64_t refresh_ms;     /* 0: 600000 (10 min) */
  int64_t min_refetch_ms; /* 0: 30000 */
  int64_t timeout_ms;     /* one fetch; 0: 10000 */
  int64_t retry_ms;       /* first retry after a failure; 0: 1000 */
} hjwks_options;

/*
 * Starts fetching o->url on l (strings are copied). Returns 0, -EINVAL
 * (a URL libcurl cannot parse, or not http/https; logged) or -ENOMEM.
 */
int hjwks_new(hjwks **out, hloop *l, const hjwks_options *o);

/* Ends the fetch in flight; waiting lookups complete with
 * IMC_ERR_CLOSED. Delete it before the gateway and the loop. */
void hjwks_del(hjwks *j);

/* The key source for imc_gateway_options_set_keysrc(); its ud is j. */
const imc_keysrc_vtbl *hjwks_keysrc_vtbl(void);

/*
 * A source of /metrics (imchat_jwks_keys, imchat_jwks_fetches_total by
 * result, imchat_jwks_kid_refetches_total) and /readyz ("jwks": "no key
 * set" until a fetch succeeded); its ud is j.
 */
const imc_metrics_source_vtbl *hjwks_metrics_vtbl(void);

#endif
