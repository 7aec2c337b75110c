/*
 * The gateway's settings (imchatd and im-gateway): token keys, limits,
 * admission and the JWK Set source, from the configuration onto
 * imc_gateway_options.
 */
#include "gateway_config.h"

#include "log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Fails with the flag's name: a setter refuses only bad values. */
int hconfig_check(int rv, const char *flag) {
  if (rv == 0)
    return 0;
  hlog_error("%s: %s", flag, imc_strerror(rv));
  return rv == IMC_ERR_INVALID_ARGUMENT ? IMCHATD_EXIT_USAGE
                                        : IMCHATD_EXIT_FAIL;
}

/* JWT keys and limits from cfg onto opt. */
static int configure(const imchatd_config *cfg, imc_gateway_options *opt) {
  uint8_t *secret;
  size_t secret_len;
  char *secret_path;
  int created, rv;
  rv = imchatd_config_secret(cfg, &secret, &secret_len, &secret_path, &created);
  if (rv)
    return rv;
  if (secret) {
    if (secret_path)
      hlog_info("HS256 secret: %s%s", secret_path, created ? " (created)" : "");
    else
      hlog_info("HS256 secret: from --jwt-secret");
    rv = hconfig_check(
        imc_gateway_options_set_jwt_secret(opt, secret, secret_len),
        "--jwt-secret");
    memset(secret, 0, secret_len);
    free(secret);
    free(secret_path);
    if (rv)
      return rv;
  }
  if (cfg->jwt_public_key) {
    char *pem;
    size_t pem_len;
    rv = imchatd_read_file(cfg->jwt_public_key, &pem, &pem_len);
    if (rv < 0) {
      hlog_error("--jwt-public-key: cannot read '%s': %s", cfg->jwt_public_key,
                 strerror(-rv));
      return IMCHATD_EXIT_USAGE;
    }
    rv = imc_gateway_options_set_jwt_public_key(opt, pem, pem_len);
    free(pem);
    if (rv == IMC_ERR_INVALID_ARGUMENT) {
      hlog_error("--jwt-public-key: '%s' is not a PEM RSA or P-256 public key",
                 cfg->jwt_public_key);
      return IMCHATD_EXIT_USAGE;
    }
    if ((rv = hconfig_check(rv, "--jwt-public-key")) != 0)
      return rv;
    hlog_info("RS256/ES256 public key: %s", cfg->jwt_public_key);
  }
  if (cfg->jwt_issuer && (rv = hconfig_check(imc_gateway_options_set_jwt_issuer(
                                                 opt, cfg->jwt_issuer),
                                             "--jwt-issuer")) != 0)
    return rv;
  if (cfg->jwt_audience &&
      (rv = hconfig_check(
           imc_gateway_options_set_jwt_audience(opt, cfg->jwt_audience),
           "--jwt-audience")) != 0)
    return rv;
  if ((rv = hconfig_check(imc_gateway_options_set_max_body(opt, cfg->max_body),
                          "--max-body")) != 0)
    return rv;
  return hconfig_check(imc_gateway_options_set_node_id(opt, cfg->node_id),
                       "--node-id");
}

/* --allowed-origin and the connection limits onto opt. */
static int configure_admission(const imchatd_config *cfg,
                               imc_gateway_options *opt) {
  for (size_t i = 0; i < cfg->n_allowed_origins; i++) {
    const char *o = cfg->allowed_origins[i];
    int rv = imc_gateway_options_add_allowed_origin(opt, o);
    if (rv == IMC_ERR_INVALID_ARGUMENT) {
      hlog_error("--allowed-origin: '%s' is not an origin (scheme://host"
                 "[:port] without a path, e.g. https://chat.example.com)",
                 o);
      return IMCHATD_EXIT_USAGE;
    }
    if ((rv = hconfig_check(rv, "--allowed-origin")) != 0)
      return rv;
  }
  if (cfg->n_allowed_origins > 0)
    hlog_info("WebSocket origins allowed: %zu listed, and the server's own",
              cfg->n_allowed_origins);
  if (cfg->max_connections || cfg->max_connections_per_ip)
    hlog_info("WebSocket connections at most: %u, %u per address (0: no "
              "limit)",
              cfg->max_connections, cfg->max_connections_per_ip);
  int rv;
  if ((rv = hconfig_check(
           imc_gateway_options_set_max_connections(opt, cfg->max_connections),
           "--max-connections")) != 0)
    return rv;
  return hconfig_check(imc_gateway_options_set_max_connections_per_ip(
                           opt, cfg->max_connections_per_ip),
                       "--max-connections-per-ip");
}

/* --jwks-url: the gateway's key source for RS256/ES256 tokens. */
static int make_jwks(const imchatd_config *cfg, hloop *loop,
                     imc_gateway_options *opt, hjwks **jwks) {
  if (cfg->jwks_url == NULL)
    return 0;
  hjwks_options o = {.url = cfg->jwks_url, .ca_file = cfg->jwks_ca_file};
  int rv = hjwks_new(jwks, loop, &o);
  if (rv < 0) {
    if (rv != -EINVAL)
      hlog_error("--jwks-url: %s", strerror(-rv));
    return rv == -EINVAL ? IMCHATD_EXIT_USAGE : IMCHATD_EXIT_FAIL;
  }
  return hconfig_check(
      imc_gateway_options_set_keysrc(opt, hjwks_keysrc_vtbl(), *jwks),
      "--jwks-url");
}

int hgateway_config(const imchatd_config *cfg, hloop *loop,
                    imc_gateway_options *opt, hjwks **jwks) {
  int rv, code = configure(cfg, opt);
  if (code == 0 &&
      ((rv = hconfig_check(imc_gateway_options_set_ack_timeout_ms(
                               opt, cfg->ack_timeout_s * 1000),
                           "--ack-timeout")) != 0 ||
       (rv = hconfig_check(
            imc_gateway_options_set_heartbeat_ms(opt, cfg->heartbeat_s * 1000),
            "--heartbeat")) != 0 ||
       (rv = hconfig_check(
            imc_gateway_options_set_lease_ttl_s(opt, cfg->lease_ttl_s),
            "--lease-ttl")) != 0 ||
       (rv = hconfig_check(imc_gateway_options_set_idle_timeout_ms(
                               opt, cfg->idle_timeout_s * 1000),
                           "--idle-timeout")) != 0 ||
       (rv = hconfig_check(imc_gateway_options_set_handshake_timeout_ms(
                               opt, cfg->handshake_timeout_s * 1000),
                           "--handshake-timeout")) != 0 ||
       (rv = hconfig_check(imc_gateway_options_set_rate_limit(
                               opt, cfg->rate_limit, cfg->rate_burst),
                           "--rate-limit")) != 0))
    code = rv;
  if (code == 0 &&
      ((rv = hconfig_check(imc_gateway_options_set_user_rate_limit(
                               opt, cfg->user_rate_limit, cfg->user_rate_burst),
                           "--user-rate-limit")) != 0 ||
       (rv = hconfig_check(
            imc_gateway_options_set_max_devices(opt, cfg->max_devices),
            "--max-devices")) != 0 ||
       (rv = hconfig_check(imc_gateway_options_set_max_sends_in_flight(
                               opt, cfg->max_sends_per_conn, cfg->max_sends),
                           "--max-sends")) != 0))
    code = rv;
  if (code == 0)
    code = configure_admission(cfg, opt);
  /* Pushes of 1 KiB or less go uncompressed (the library's default). */
  if (code == 0)
    code = hconfig_check(
        imc_gateway_options_set_deflate(opt, cfg->deflate, 1024), "--deflate");
  if (code == 0)
    code = make_jwks(cfg, loop, opt, jwks);
  if (code == 0)
    imc_gateway_options_set_log(opt, hlog_imc_cb, NULL, hlog_get_level());
  return code;
}

int hgateway_tls(const imchatd_config *cfg, hstls **tls) {
  *tls = NULL;
  if (cfg->tls_cert == NULL)
    return 0;
  int version = cfg->tls_min_version ? cfg->tls_min_version : TLS1_3_VERSION;
  char why[1024];
  if (hstls_new(tls, cfg->tls_cert, cfg->tls_key, version, why, sizeof(why)) <
      0) {
    hlog_error("%s", why);
    return IMCHATD_EXIT_USAGE;
  }
  hlog_info("TLS %s or later on --listen: %s (%s)",
            version == TLS1_2_VERSION ? "1.2" : "1.3", cfg->tls_cert,
            hstls_describe(*tls));
  return 0;
}

/* Reloads tls; what names it in the log ("TLS", "gRPC TLS"). */
static void tls_reload(hstls *tls, const char *what) {
  char why[1024];
  if (hstls_reload(tls, why, sizeof(why)) < 0)
    hlog_warn("%s: reload failed: %s; the certificate in use stays", what, why);
  else
    hlog_info("%s: reloaded: %s", what, hstls_describe(tls));
}

void hgateway_tls_reload(hstls *tls) {
  tls_reload(tls, "TLS");
}

int hconfig_grpc_tls(const imchatd_config *cfg, hstls **tls) {
  *tls = NULL;
  if (cfg->grpc_tls_cert == NULL)
    return 0;
  int version = cfg->tls_min_version ? cfg->tls_min_version : TLS1_3_VERSION;
  char why[1024];
  if (hstls_new_mutual(tls, cfg->grpc_tls_cert, cfg->grpc_tls_key,
                       cfg->grpc_tls_ca, version, why, sizeof(why)) < 0) {
    hlog_error("%s", why);
    return IMCHATD_EXIT_USAGE;
  }
  hlog_info("gRPC: mutual TLS %s or later, CA %s: %s (%s)",
            version == TLS1_2_VERSION ? "1.2" : "1.3", cfg->grpc_tls_ca,
            cfg->grpc_tls_cert, hstls_describe(*tls));
  return 0;
}

void hconfig_grpc_tls_reload(hstls *tls) {
  tls_reload(tls, "gRPC TLS");
}
