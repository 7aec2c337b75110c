/*
 * The gateway's part of the configuration, shared by imchatd
 * (libimchat-server) and im-gateway; and the TLS settings the cluster
 * hosts share (im-service serves its HTTP the gateways' way).
 */
#ifndef IMCHATD_GATEWAY_CONFIG_H
#define IMCHATD_GATEWAY_CONFIG_H

#include "config.h"
#include "jwks.h"
#include "loop.h"
#include "tls.h"

#include <imchat/gateway.h>

/*
 * 0 when rv is; else logs the flag with the error and returns
 * IMCHATD_EXIT_USAGE for IMC_ERR_INVALID_ARGUMENT (a setter refuses only
 * bad values), IMCHATD_EXIT_FAIL for others.
 */
int hconfig_check(int rv, const char *flag);

/*
 * Applies cfg's token keys (the HS256 secret, --jwt-public-key), issuer
 * and audience, node id, body and rate limits, timers, admission
 * (--allowed-origin, connection limits) and the log onto opt; with
 * --jwks-url it creates *jwks on loop as the key source (the caller
 * deletes it after the gateway). Returns 0 or an exit code after logging
 * the reason.
 */
int hgateway_config(const imchatd_config *cfg, hloop *loop,
                    imc_gateway_options *opt, hjwks **jwks);

/*
 * TLS on --listen: with --tls-cert and --tls-key, loads them into *tls
 * (else leaves it NULL) and logs the certificate. Returns 0, or
 * IMCHATD_EXIT_USAGE after logging the reason (an unreadable file, a key
 * that does not match).
 */
int hgateway_tls(const imchatd_config *cfg, hstls **tls);

/* SIGHUP: reads tls's files again for the connections to come; a failure
 * is logged and the certificate in use stays. */
void hgateway_tls_reload(hstls *tls);

/*
 * Mutual TLS on the cluster's gRPC links: with --grpc-tls-cert,
 * --grpc-tls-key and --grpc-tls-ca, loads them into *tls (else leaves it
 * NULL) and logs the certificate. Returns 0, or IMCHATD_EXIT_USAGE after
 * logging the reason (a flag's file unreadable or not PEM, a key that
 * does not match).
 */
int hconfig_grpc_tls(const imchatd_config *cfg, hstls **tls);

/* SIGHUP: as hgateway_tls_reload, for the gRPC certificate, key and CA. */
void hconfig_grpc_tls_reload(hstls *tls);

#endif
