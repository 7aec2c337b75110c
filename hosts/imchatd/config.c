/*
 * The options of imchatd, im-gateway and im-service: the option table,
 * which role knows which, the setter that checks and applies a value (for
 * flags and INI keys alike), and the command line (see config.h).
 */
#include "flags.h"

#include "log.h"
#include "loop.h"

#include <errno.h>
#include <getopt.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

const struct option imchatd_long_opts[] = {
    {"config", required_argument, NULL, O_CONFIG},
    {"listen", required_argument, NULL, O_LISTEN},
    {"data-dir", required_argument, NULL, O_DATA_DIR},
    {"jwt-secret", required_argument, NULL, O_JWT_SECRET},
    {"jwt-secret-file", required_argument, NULL, O_JWT_SECRET_FILE},
    {"jwt-public-key", required_argument, NULL, O_JWT_PUBLIC_KEY},
    {"jwt-issuer", required_argument, NULL, O_JWT_ISSUER},
    {"jwt-audience", required_argument, NULL, O_JWT_AUDIENCE},
    {"jwks-url", required_argument, NULL, O_JWKS_URL},
    {"jwks-ca-file", required_argument, NULL, O_JWKS_CA_FILE},
    {"admin-token", required_argument, NULL, O_ADMIN_TOKEN},
    {"max-body", required_argument, NULL, O_MAX_BODY},
    {"node-id", required_argument, NULL, O_NODE_ID},
    {"filter-file", required_argument, NULL, O_FILTER_FILE},
    {"filter-action", required_argument, NULL, O_FILTER_ACTION},
    {"key-file", required_argument, NULL, O_KEY_FILE},
    {"ack-timeout", required_argument, NULL, O_ACK_TIMEOUT},
    {"heartbeat", required_argument, NULL, O_HEARTBEAT},
    {"idle-timeout", required_argument, NULL, O_IDLE_TIMEOUT},
    {"handshake-timeout", required_argument, NULL, O_HANDSHAKE_TIMEOUT},
    {"rate-limit", required_argument, NULL, O_RATE_LIMIT},
    {"rate-burst", required_argument, NULL, O_RATE_BURST},
    {"user-rate-limit", required_argument, NULL, O_USER_RATE_LIMIT},
    {"user-rate-burst", required_argument, NULL, O_USER_RATE_BURST},
    {"max-sends-per-conn", required_argument, NULL, O_MAX_SENDS_PER_CONN},
    {"max-sends", required_argument, NULL, O_MAX_SENDS},
    {"max-devices", required_argument, NULL, O_MAX_DEVICES},
    {"retention-days", required_argument, NULL, O_RETENTION_DAYS},
    {"log-level", required_argument, NULL, O_LOG_LEVEL},
    {"allowed-origin", required_argument, NULL, O_ALLOWED_ORIGIN},
    {"max-connections", required_argument, NULL, O_MAX_CONNECTIONS},
    {"max-connections-per-ip", required_argument, NULL,
     O_MAX_CONNECTIONS_PER_IP},
    {"deflate", required_argument, NULL, O_DEFLATE},
    {"lease-ttl", required_argument, NULL, O_LEASE_TTL},
    {"grpc-listen", required_argument, NULL, O_GRPC_LISTEN},
    {"grpc-advertise", required_argument, NULL, O_GRPC_ADVERTISE},
    {"http-listen", required_argument, NULL, O_HTTP_LISTEN},
    {"router", required_argument, NULL, O_ROUTER},
    {"etcd", required_argument, NULL, O_ETCD},
    {"kafka", required_argument, NULL, O_KAFKA},
    {"kafka-session-timeout", required_argument, NULL, O_KAFKA_SESSION_TIMEOUT},
    {"redis", required_argument, NULL, O_REDIS},
    {"mysql", required_argument, NULL, O_MYSQL},
    {"mysql-user", required_argument, NULL, O_MYSQL_USER},
    {"mysql-password", required_argument, NULL, O_MYSQL_PASSWORD},
    {"tls-cert", required_argument, NULL, O_TLS_CERT},
    {"tls-key", required_argument, NULL, O_TLS_KEY},
    {"tls-min-version", required_argument, NULL, O_TLS_MIN_VERSION},
    {"grpc-tls-cert", required_argument, NULL, O_GRPC_TLS_CERT},
    {"grpc-tls-key", required_argument, NULL, O_GRPC_TLS_KEY},
    {"grpc-tls-ca", required_argument, NULL, O_GRPC_TLS_CA},
    {"web-root", required_argument, NULL, O_WEB_ROOT},
    {"dev-login", no_argument, NULL, O_DEV_LOGIN},
    {"migrate-only", no_argument, NULL, O_MIGRATE_ONLY},
    {"device", required_argument, NULL, O_DEVICE},
    {"ttl", required_argument, NULL, O_TTL},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

const char *imchatd_opt_name(int id) {
  for (const struct option *o = imchatd_long_opts; o->name; o++)
    if (o->val == id)
      return o->name;
  return "?";
}

const char *imchatd_role_name(imchatd_role role) {
  return role == IMCHATD_ROLE_GATEWAY   ? "im-gateway"
         : role == IMCHATD_ROLE_SERVICE ? "im-service"
                                        : "imchatd";
}

#define R_SERVER (1u << IMCHATD_ROLE_SERVER)
#define R_GATEWAY (1u << IMCHATD_ROLE_GATEWAY)
#define R_SERVICE (1u << IMCHATD_ROLE_SERVICE)

/* The roles whose program knows option id. */
static unsigned opt_roles(int id) {
  switch (id) {
  case O_CONFIG:
  case O_NODE_ID:
  case O_MAX_BODY:
  case O_LOG_LEVEL:
    return R_SERVER | R_GATEWAY | R_SERVICE;
  case O_DATA_DIR:
  case O_KEY_FILE:
  case O_WEB_ROOT:
  case O_DEV_LOGIN:
  case O_DEVICE:
  case O_TTL:
    return R_SERVER;
  case O_FILTER_FILE:
  case O_FILTER_ACTION:
  case O_RETENTION_DAYS:
    return R_SERVER | R_SERVICE;
  case O_TLS_CERT: /* TLS on --listen, im-service's --http-listen */
  case O_TLS_KEY:
  case O_TLS_MIN_VERSION: /* and on the gRPC links */
    return R_SERVER | R_GATEWAY | R_SERVICE;
  case O_GRPC_LISTEN:
  case O_GRPC_TLS_CERT:
  case O_GRPC_TLS_KEY:
  case O_GRPC_TLS_CA:
  case O_ETCD:
  case O_KAFKA:
  case O_KAFKA_SESSION_TIMEOUT:
  case O_MYSQL:
  case O_MYSQL_USER:
  case O_MYSQL_PASSWORD:
    return R_GATEWAY | R_SERVICE;
  case O_GRPC_ADVERTISE:
  case O_ROUTER:
    return R_GATEWAY;
  case O_DEFLATE:
    return R_SERVER | R_GATEWAY;
  case O_HTTP_LISTEN:
  case O_REDIS:
  case O_MIGRATE_ONLY:
    return R_SERVICE;
  default: /* the gateway's: listen, tokens, limits */
    return id >= O_LISTEN && id < O_WEB_ROOT ? R_SERVER | R_GATEWAY : 0;
  }
}

int imchatd_opt_in_role(int id, imchatd_role role) {
  return (opt_roles(id) & (1u << role)) != 0;
}

static int set_str(char **dst, const char *v, char *why, size_t cap) {
  if (v[0] == '\0') {
    snprintf(why, cap, "must not be empty");
    return -1;
  }
  char *s = strdup(v);
  if (s == NULL) {
    snprintf(why, cap, "out of memory");
    return -1;
  }
  free(*dst);
  *dst = s;
  return 0;
}

/* A comma-separated list of HOST:PORT addresses. */
static int set_list(char **dst, const char *v, char *why, size_t cap) {
  char item[300];
  for (const char *p = v;;) {
    size_t n = strcspn(p, ",");
    char host[256];
    uint16_t port;
    const char *reason = "too long";
    if (n >= sizeof(item)) {
      snprintf(why, cap, "'%.*s': %s", (int)n, p, reason);
      return -1;
    }
    memcpy(item, p, n);
    item[n] = '\0';
    if (hloop_split_addr(item, host, sizeof(host), &port, &reason) < 0) {
      snprintf(why, cap, "'%s': %s", item, reason);
      return -1;
    }
    if (p[n] == '\0')
      break;
    p += n + 1;
  }
  return set_str(dst, v, why, cap);
}

/* A decimal integer in [lo, hi]; no sign, no suffix, no spaces. */
static int parse_uint(const char *v, unsigned long long lo,
                      unsigned long long hi, unsigned long long *out) {
  if (v[0] < '0' || v[0] > '9')
    return -1;
  errno = 0;
  char *end;
  unsigned long long x = strtoull(v, &end, 10);
  if (errno || *end || x < lo || x > hi)
    return -1;
  *out = x;
  return 0;
}

int imchatd_apply(imchatd_config *cfg, int id, const char *v, char *why,
                  size_t cap) {
  unsigned long long x;
  switch (id) {
  case O_LISTEN:
  case O_GRPC_LISTEN:
  case O_GRPC_ADVERTISE:
  case O_HTTP_LISTEN:
  case O_REDIS: {
    char host[256];
    uint16_t port;
    const char *reason;
    if (hloop_split_addr(v, host, sizeof(host), &port, &reason) < 0) {
      snprintf(why, cap, "'%s': %s", v, reason);
      return -1;
    }
    return set_str(id == O_LISTEN           ? &cfg->listen
                   : id == O_GRPC_LISTEN    ? &cfg->grpc_listen
                   : id == O_GRPC_ADVERTISE ? &cfg->grpc_advertise
                   : id == O_HTTP_LISTEN    ? &cfg->http_listen
                                            : &cfg->redis,
                   v, why, cap);
  }
  case O_ROUTER:
    return set_list(&cfg->routers, v, why, cap);
  case O_KAFKA:
    return set_list(&cfg->kafka, v, why, cap);
  case O_ETCD:
    if (strncasecmp(v, "http://", 7) != 0 &&
        strncasecmp(v, "https://", 8) != 0) {
      snprintf(why, cap, "'%s' is not a list of http:// URLs", v);
      return -1;
    }
    return set_str(&cfg->etcd, v, why, cap);
  case O_MYSQL:
    if (strchr(v, '/') == NULL || strchr(v, '/')[1] == '\0') {
      snprintf(why, cap, "'%s' is not HOST:PORT/DATABASE", v);
      return -1;
    }
    return set_str(&cfg->mysql, v, why, cap);
  case O_MYSQL_USER:
    return set_str(&cfg->mysql_user, v, why, cap);
  case O_MYSQL_PASSWORD:
    return set_str(&cfg->mysql_password, v, why, cap);
  case O_MIGRATE_ONLY: /* a flag only */
    cfg->migrate_only = 1;
    return 0;
  case O_DATA_DIR:
    return set_str(&cfg->data_dir, v, why, cap);
  case O_JWT_SECRET:
    return set_str(&cfg->jwt_secret, v, why, cap);
  case O_JWT_SECRET_FILE:
    return set_str(&cfg->jwt_secret_file, v, why, cap);
  case O_JWT_PUBLIC_KEY:
    return set_str(&cfg->jwt_public_key, v, why, cap);
  case O_JWT_ISSUER:
    return set_str(&cfg->jwt_issuer, v, why, cap);
  case O_JWT_AUDIENCE:
    return set_str(&cfg->jwt_audience, v, why, cap);
  case O_JWKS_URL:
    if (strncasecmp(v, "https://", 8) != 0 &&
        strncasecmp(v, "http://", 7) != 0) {
      snprintf(why, cap, "'%s' is not an https:// (or http://) URL", v);
      return -1;
    }
    return set_str(&cfg->jwks_url, v, why, cap);
  case O_JWKS_CA_FILE:
    return set_str(&cfg->jwks_ca_file, v, why, cap);
  case O_ADMIN_TOKEN:
    return set_str(&cfg->admin_token, v, why, cap);
  case O_MAX_BODY:
    if (parse_uint(v, 1, MAX_BODY_LIMIT, &x) < 0) {
      snprintf(why, cap, "'%s' is not a number of bytes from 1 to %u", v,
               MAX_BODY_LIMIT);
      return -1;
    }
    cfg->max_body = (size_t)x;
    return 0;
  case O_NODE_ID:
    if (!imc_id_valid(v, strlen(v))) {
      snprintf(why, cap, "'%s' is not an id (1-64 of [A-Za-z0-9_.@-])", v);
      return -1;
    }
    return set_str(&cfg->node_id, v, why, cap);
  case O_FILTER_FILE:
    return set_str(&cfg->filter_file, v, why, cap);
  case O_FILTER_ACTION:
    if (strcmp(v, "reject") != 0 && strcmp(v, "mask") != 0) {
      snprintf(why, cap, "'%s' is not reject or mask", v);
      return -1;
    }
    cfg->filter_mask = strcmp(v, "mask") == 0;
    return 0;
  case O_KEY_FILE:
    return set_str(&cfg->key_file, v, why, cap);
  case O_ACK_TIMEOUT:
  case O_HEARTBEAT:
  case O_IDLE_TIMEOUT:
  case O_HANDSHAKE_TIMEOUT:
  case O_LEASE_TTL:
    if (parse_uint(v, 1, MAX_SECONDS, &x) < 0) {
      snprintf(why, cap, "'%s' is not a number of seconds from 1 to %u", v,
               MAX_SECONDS);
      return -1;
    }
    *(id == O_ACK_TIMEOUT         ? &cfg->ack_timeout_s
      : id == O_HEARTBEAT         ? &cfg->heartbeat_s
      : id == O_LEASE_TTL         ? &cfg->lease_ttl_s
      : id == O_HANDSHAKE_TIMEOUT ? &cfg->handshake_timeout_s
                                  : &cfg->idle_timeout_s) = (uint32_t)x;
    return 0;
  case O_KAFKA_SESSION_TIMEOUT: /* librdkafka's bounds */
    if (parse_uint(v, 1, 3600, &x) < 0) {
      snprintf(why, cap, "'%s' is not a number of seconds from 1 to 3600", v);
      return -1;
    }
    cfg->kafka_session_s = (uint32_t)x;
    return 0;
  case O_RATE_LIMIT:
  case O_RATE_BURST:
    if (parse_uint(v, 1, 1000000, &x) < 0) {
      snprintf(why, cap, "'%s' is not a number from 1 to 1000000", v);
      return -1;
    }
    *(id == O_RATE_LIMIT ? &cfg->rate_limit : &cfg->rate_burst) = (uint32_t)x;
    return 0;
  case O_MAX_SENDS_PER_CONN:
  case O_MAX_SENDS:
    if (parse_uint(v, 1, 1000000, &x) < 0) {
      snprintf(why, cap, "'%s' is not a number from 1 to 1000000", v);
      return -1;
    }
    *(id == O_MAX_SENDS ? &cfg->max_sends : &cfg->max_sends_per_conn) =
        (uint32_t)x;
    return 0;
  case O_USER_RATE_LIMIT:
  case O_USER_RATE_BURST:
  case O_MAX_DEVICES:
    if (parse_uint(v, 1, 1000000, &x) < 0) {
      snprintf(why, cap, "'%s' is not a number from 1 to 1000000", v);
      return -1;
    }
    *(id == O_USER_RATE_LIMIT   ? &cfg->user_rate_limit
      : id == O_USER_RATE_BURST ? &cfg->user_rate_burst
                                : &cfg->max_devices) = (uint32_t)x;
    return 0;
  case O_RETENTION_DAYS:
    if (parse_uint(v, 1, MAX_DAYS, &x) < 0) {
      snprintf(why, cap, "'%s' is not a number of days from 1 to %u", v,
               MAX_DAYS);
      return -1;
    }
    cfg->retention_days = (uint32_t)x;
    return 0;
  case O_LOG_LEVEL:
    if (hlog_parse_level(v, &cfg->log_level) < 0) {
      snprintf(why, cap, "'%s' is not one of error, warn, info, debug", v);
      return -1;
    }
    return 0;
  case O_ALLOWED_ORIGIN: {
    /* Checked as an origin where the gateway is configured. */
    if (v[0] == '\0') {
      snprintf(why, cap, "must not be empty");
      return -1;
    }
    char **list = realloc(cfg->allowed_origins,
                          (cfg->n_allowed_origins + 1) * sizeof(char *));
    if (list == NULL || (list[cfg->n_allowed_origins] = strdup(v)) == NULL) {
      if (list != NULL)
        cfg->allowed_origins = list;
      snprintf(why, cap, "out of memory");
      return -1;
    }
    cfg->allowed_origins = list;
    cfg->n_allowed_origins++;
    return 0;
  }
  case O_MAX_CONNECTIONS:
  case O_MAX_CONNECTIONS_PER_IP:
    if (parse_uint(v, 0, MAX_CONNECTIONS, &x) < 0) {
      snprintf(why, cap, "'%s' is not a number from 0 (no limit) to %u", v,
               MAX_CONNECTIONS);
      return -1;
    }
    *(id == O_MAX_CONNECTIONS ? &cfg->max_connections
                              : &cfg->max_connections_per_ip) = (uint32_t)x;
    return 0;
  case O_DEFLATE:
    if (strcmp(v, "on") != 0 && strcmp(v, "off") != 0) {
      snprintf(why, cap, "'%s' is not on or off", v);
      return -1;
    }
    cfg->deflate = strcmp(v, "on") == 0;
    return 0;
  case O_WEB_ROOT:
    return set_str(&cfg->web_root, v, why, cap);
  case O_TLS_CERT:
    return set_str(&cfg->tls_cert, v, why, cap);
  case O_TLS_KEY:
    return set_str(&cfg->tls_key, v, why, cap);
  case O_GRPC_TLS_CERT:
    return set_str(&cfg->grpc_tls_cert, v, why, cap);
  case O_GRPC_TLS_KEY:
    return set_str(&cfg->grpc_tls_key, v, why, cap);
  case O_GRPC_TLS_CA:
    return set_str(&cfg->grpc_tls_ca, v, why, cap);
  case O_TLS_MIN_VERSION:
    if (strcmp(v, "1.2") != 0 && strcmp(v, "1.3") != 0) {
      snprintf(why, cap, "'%s' is not 1.2 or 1.3", v);
      return -1;
    }
    cfg->tls_min_version =
        strcmp(v, "1.2") == 0 ? TLS1_2_VERSION : TLS1_3_VERSION;
    return 0;
  case O_DEV_LOGIN: /* a flag only: the INI file does not know it */
    cfg->dev_login = 1;
    return 0;
  case O_DEVICE:
    if (!imc_id_valid(v, strlen(v))) {
      snprintf(why, cap, "'%s' is not an id (1-64 of [A-Za-z0-9_.@-])", v);
      return -1;
    }
    return set_str(&cfg->token_device, v, why, cap);
  case O_TTL:
    if (parse_uint(v, 1, MAX_TTL_S, &x) < 0) {
      snprintf(why, cap, "'%s' is not a number of seconds from 1 to %u", v,
               MAX_TTL_S);
      return -1;
    }
    cfg->token_ttl_s = (uint32_t)x;
    return 0;
  default:
    snprintf(why, cap, "not a setting");
    return -1;
  }
}

/* ---- command line --------------------------------------------------- */

/* Describes the option getopt stopped at. */
static void bad_option(int c, char **argv, const char *prog, char *err,
                       size_t cap) {
  const char *arg = argv[optind - 1];
  if (c == ':' && optopt >= 256)
    snprintf(err, cap, "--%s needs a value (see %s --help)",
             imchatd_opt_name(optopt), prog);
  else if (c == ':')
    snprintf(err, cap, "%s needs a value (see %s --help)", arg, prog);
  else if (optopt > 0 && optopt < 256 && strncmp(arg, "--", 2) != 0)
    snprintf(err, cap, "unknown option '-%c' (see %s --help)", optopt, prog);
  else
    snprintf(err, cap, "unknown option '%s' (see %s --help)", arg, prog);
}

static void free_origins(imchatd_config *cfg) {
  for (size_t i = 0; i < cfg->n_allowed_origins; i++)
    free(cfg->allowed_origins[i]);
  free(cfg->allowed_origins);
  cfg->allowed_origins = NULL;
  cfg->n_allowed_origins = 0;
}

/* The cluster's node id by default: the host name, if it is an id. */
static char *default_node_id(imchatd_role role) {
  char host[256];
  if (role != IMCHATD_ROLE_SERVER && gethostname(host, sizeof(host)) == 0) {
    host[sizeof(host) - 1] = '\0';
    if (imc_id_valid(host, strlen(host)))
      return strdup(host);
  }
  return strdup(DEFAULT_NODE_ID);
}

/* Strings every role has a default for; 0, or -1 out of memory. */
static int default_strings(imchatd_config *cfg, imchatd_role role) {
  struct {
    char **dst;
    const char *v;
    unsigned roles;
  } d[] = {
      {&cfg->listen, DEFAULT_LISTEN, R_SERVER | R_GATEWAY},
      {&cfg->data_dir, DEFAULT_DATA_DIR, R_SERVER},
      {&cfg->grpc_listen,
       role == IMCHATD_ROLE_GATEWAY ? DEFAULT_GATEWAY_GRPC
                                    : DEFAULT_SERVICE_GRPC,
       R_GATEWAY | R_SERVICE},
      {&cfg->http_listen, DEFAULT_SERVICE_HTTP, R_SERVICE},
      {&cfg->routers, DEFAULT_SERVICE_GRPC, R_GATEWAY},
      {&cfg->etcd, DEFAULT_ETCD, R_GATEWAY | R_SERVICE},
      {&cfg->kafka, DEFAULT_KAFKA, R_GATEWAY | R_SERVICE},
      {&cfg->redis, DEFAULT_REDIS, R_SERVICE},
      {&cfg->mysql, DEFAULT_MYSQL, R_GATEWAY | R_SERVICE},
  };
  for (size_t i = 0; i < sizeof(d) / sizeof(d[0]); i++)
    if ((d[i].roles & (1u << role)) && (*d[i].dst = strdup(d[i].v)) == NULL)
      return -1;
  return (cfg->node_id = default_node_id(role)) == NULL ? -1 : 0;
}

static void defaults(imchatd_config *cfg, imchatd_role role) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->role = role;
  cfg->max_body = DEFAULT_MAX_BODY;
  cfg->log_level = IMC_LOG_INFO;
  cfg->token_ttl_s = DEFAULT_TTL_S;
  cfg->ack_timeout_s = 10;
  cfg->heartbeat_s = 30;
  cfg->idle_timeout_s = 90;
  cfg->handshake_timeout_s = 10;
  cfg->lease_ttl_s = 90;
  cfg->kafka_session_s = 45;
  cfg->rate_limit = 100;
  cfg->rate_burst = 200;
  cfg->user_rate_limit = 200;
  cfg->user_rate_burst = 400;
  cfg->max_devices = 16;
  cfg->max_sends_per_conn = 64;
  cfg->max_sends = 8192;
  cfg->retention_days = 7;
  cfg->deflate = 1;
}

/* --jwks-url goes with an HS256 secret, not with --jwt-public-key, whose
 * key would answer for its algorithm in place of the set. */
static int check_jwks(const imchatd_config *cfg, char *err, size_t errcap) {
  if (cfg->jwks_url && cfg->jwt_public_key) {
    snprintf(err, errcap,
             "--jwks-url and --jwt-public-key exclude each "
             "other (publish the key in the JWK Set)");
    return -1;
  }
  if (cfg->jwks_ca_file && !cfg->jwks_url) {
    snprintf(err, errcap, "--jwks-ca-file needs --jwks-url");
    return -1;
  }
  return 0;
}

/* TLS on --listen takes the certificate and its key together. */
static int check_tls(const imchatd_config *cfg, char *err, size_t errcap) {
  if (cfg->tls_cert && !cfg->tls_key) {
    snprintf(err, errcap,
             "--tls-cert needs --tls-key (the certificate's private key)");
    return -1;
  }
  if (cfg->tls_key && !cfg->tls_cert) {
    snprintf(err, errcap, "--tls-key needs --tls-cert (the certificate chain)");
    return -1;
  }
  if (cfg->tls_min_version && !cfg->tls_cert && !cfg->grpc_tls_cert) {
    snprintf(err, errcap,
             cfg->role == IMCHATD_ROLE_SERVER
                 ? "--tls-min-version needs --tls-cert and --tls-key"
                 : "--tls-min-version needs --tls-cert and --tls-key, or "
                   "--grpc-tls-cert, --grpc-tls-key and --grpc-tls-ca");
    return -1;
  }
  /* The cluster's gRPC: mutual TLS needs all three files. */
  int n = !!cfg->grpc_tls_cert + !!cfg->grpc_tls_key + !!cfg->grpc_tls_ca;
  if (n != 0 && n != 3) {
    snprintf(err, errcap,
             "--grpc-tls-cert, --grpc-tls-key and --grpc-tls-ca go together "
             "(this process's certificate, its key, the cluster's CA); %s "
             "missing",
             !cfg->grpc_tls_cert  ? "--grpc-tls-cert is"
             : !cfg->grpc_tls_key ? "--grpc-tls-key is"
                                  : "--grpc-tls-ca is");
    return -1;
  }
  return 0;
}

/* The MySQL credentials from the environment, over the file's. */
static int mysql_env(imchatd_config *cfg, char *err, size_t errcap) {
  const char *user = getenv("IMCHAT_MYSQL_USER");
  const char *password = getenv("IMCHAT_MYSQL_PASSWORD");
  char why[64];
  if ((user && user[0] && set_str(&cfg->mysql_user, user, why, sizeof(why))) ||
      (password && password[0] &&
       set_str(&cfg->mysql_password, password, why, sizeof(why)))) {
    snprintf(err, errcap, "out of memory");
    return -1;
  }
  return 0;
}

int imchatd_config_load(imchatd_config *cfg, imchatd_role role, int argc,
                        char **argv, char *err, size_t errcap) {
  defaults(cfg, role);
  const char *prog = imchatd_role_name(role);
  if (default_strings(cfg, role) < 0) {
    snprintf(err, errcap, "out of memory");
    return IMCHATD_EXIT_FAIL;
  }
  /* "imchatd token ...": parse the rest as if "token" were argv[0]. */
  if (role == IMCHATD_ROLE_SERVER && argc > 1 &&
      strcmp(argv[1], "token") == 0) {
    cfg->mode = IMCHATD_TOKEN;
    argc--;
    argv++;
  }

  /* Pass 1: --help, --version and --config; the file goes under the
   * flags, which pass 2 applies. */
  static const char shortopts[] = ":hV";
  int c, help = 0, version = 0;
  opterr = 0;
  optind = 0;
  while ((c = getopt_long(argc, argv, shortopts, imchatd_long_opts, NULL)) !=
         -1) {
    if (c == '?' || c == ':') {
      bad_option(c, argv, prog, err, errcap);
      return IMCHATD_EXIT_USAGE;
    }
    if (c >= 256 && !imchatd_opt_in_role(c, role)) {
      snprintf(err, errcap, "--%s is not an option of %s (see %s --help)",
               imchatd_opt_name(c), prog, prog);
      return IMCHATD_EXIT_USAGE;
    }
    if (c == 'h')
      help = 1;
    else if (c == 'V')
      version = 1;
    else if (c == O_CONFIG) {
      free(cfg->config_file);
      cfg->config_file = strdup(optarg);
    }
  }
  if (help || version) {
    cfg->mode = help ? IMCHATD_HELP : IMCHATD_VERSION;
    return -1;
  }
  if (cfg->config_file &&
      imchatd_load_ini(cfg, cfg->config_file, err, errcap) < 0)
    return IMCHATD_EXIT_USAGE;

  int flag_secret = 0, flag_origin = 0;
  optind = 0;
  while ((c = getopt_long(argc, argv, shortopts, imchatd_long_opts, NULL)) !=
         -1) {
    if (c == O_CONFIG)
      continue;
    /* A password on the command line is visible to every local user. */
    if (c == O_MYSQL_PASSWORD) {
      snprintf(err, errcap,
               "--mysql-password: set IMCHAT_MYSQL_PASSWORD or the "
               "mysql-password key of the --config file instead");
      return IMCHATD_EXIT_USAGE;
    }
    if ((c == O_DEVICE || c == O_TTL) && cfg->mode != IMCHATD_TOKEN) {
      snprintf(err, errcap, "--%s is only valid with 'imchatd token'",
               imchatd_opt_name(c));
      return IMCHATD_EXIT_USAGE;
    }
    /* A secret flag replaces both secret settings of the file. */
    if (c == O_JWT_SECRET || c == O_JWT_SECRET_FILE) {
      flag_secret |= c == O_JWT_SECRET ? 1 : 2;
      if (flag_secret == 3) {
        snprintf(err, errcap,
                 "--jwt-secret and --jwt-secret-file "
                 "exclude each other");
        return IMCHATD_EXIT_USAGE;
      }
      free(cfg->jwt_secret);
      free(cfg->jwt_secret_file);
      cfg->jwt_secret = cfg->jwt_secret_file = NULL;
    }
    /* The flags' list of origins replaces the file's. */
    if (c == O_ALLOWED_ORIGIN && !flag_origin) {
      flag_origin = 1;
      free_origins(cfg);
    }
    char why[384];
    if (imchatd_apply(cfg, c, optarg, why, sizeof(why)) < 0) {
      snprintf(err, errcap, "--%s: %s", imchatd_opt_name(c), why);
      return IMCHATD_EXIT_USAGE;
    }
    if (c == O_DATA_DIR)
      cfg->data_dir_flag = 1;
  }

  if (check_jwks(cfg, err, errcap) < 0 || check_tls(cfg, err, errcap) < 0)
    return IMCHATD_EXIT_USAGE;
  if (role != IMCHATD_ROLE_SERVER && mysql_env(cfg, err, errcap) < 0)
    return IMCHATD_EXIT_FAIL;
  if (cfg->lease_ttl_s <= cfg->heartbeat_s) {
    snprintf(err, errcap,
             "--lease-ttl (%u s) must be longer than --heartbeat (%u s), "
             "which renews the lease",
             cfg->lease_ttl_s, cfg->heartbeat_s);
    return IMCHATD_EXIT_USAGE;
  }
  /* Every gateway of a cluster verifies the same tokens: no secret of its
   * own. */
  if (role == IMCHATD_ROLE_GATEWAY && cfg->mode == IMCHATD_SERVE &&
      !cfg->jwt_secret && !cfg->jwt_secret_file && !cfg->jwt_public_key &&
      !cfg->jwks_url) {
    snprintf(err, errcap,
             "set --jwt-secret-file, --jwt-secret, --jwt-public-key or "
             "--jwks-url (the same on every gateway)");
    return IMCHATD_EXIT_USAGE;
  }

  int npos = argc - optind;
  if (cfg->mode == IMCHATD_TOKEN) {
    if (npos == 0) {
      snprintf(err, errcap,
               "token: missing USER (imchatd token USER "
               "[--device D] [--ttl SECONDS])");
      return IMCHATD_EXIT_USAGE;
    }
    if (npos > 1) {
      snprintf(err, errcap, "token: unexpected argument '%s'",
               argv[optind + 1]);
      return IMCHATD_EXIT_USAGE;
    }
    const char *user = argv[optind];
    if (!imc_id_valid(user, strlen(user))) {
      snprintf(err, errcap,
               "token: '%s' is not a user id (1-64 of "
               "[A-Za-z0-9_.@-])",
               user);
      return IMCHATD_EXIT_USAGE;
    }
    cfg->token_user = strdup(user);
  } else if (npos > 0) {
    snprintf(err, errcap, "unexpected argument '%s' (see %s --help)",
             argv[optind], prog);
    return IMCHATD_EXIT_USAGE;
  }
  return -1;
}

void imchatd_config_free(imchatd_config *cfg) {
  char **strs[] = {
      &cfg->config_file,    &cfg->listen,          &cfg->data_dir,
      &cfg->jwt_secret,     &cfg->jwt_secret_file, &cfg->jwt_public_key,
      &cfg->jwt_issuer,     &cfg->jwt_audience,    &cfg->admin_token,
      &cfg->node_id,        &cfg->token_user,      &cfg->token_device,
      &cfg->filter_file,    &cfg->key_file,        &cfg->web_root,
      &cfg->jwks_url,       &cfg->jwks_ca_file,    &cfg->grpc_listen,
      &cfg->grpc_advertise, &cfg->http_listen,     &cfg->routers,
      &cfg->etcd,           &cfg->kafka,           &cfg->redis,
      &cfg->mysql,          &cfg->mysql_user,      &cfg->mysql_password,
      &cfg->tls_cert,       &cfg->tls_key,         &cfg->grpc_tls_cert,
      &cfg->grpc_tls_key,   &cfg->grpc_tls_ca};
  for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
    free(*strs[i]);
    *strs[i] = NULL;
  }
  free_origins(cfg);
}
