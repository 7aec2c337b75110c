/*
 * imchatd configuration: command line (getopt_long, config.c) over an
 * optional INI file ([imchatd] section, keys named like the long flags,
 * ini.c), the --help text (usage.c), plus the JWT secret file kept in the
 * data directory (secret.c). Files are read with hosts/common/files.h.
 */
#ifndef IMCHATD_CONFIG_H
#define IMCHATD_CONFIG_H

#include "files.h"

#include <imchat/common.h>

#include <stddef.h>
#include <stdint.h>

/* Exit codes. */
#define IMCHATD_EXIT_OK 0
#define IMCHATD_EXIT_FAIL 1  /* runtime failure */
#define IMCHATD_EXIT_USAGE 2 /* bad flags, values or files */

/* The programs that share these settings. */
typedef enum imchatd_role {
  IMCHATD_ROLE_SERVER = 0, /* imchatd: everything in one process */
  IMCHATD_ROLE_GATEWAY,    /* im-gateway */
  IMCHATD_ROLE_SERVICE,    /* im-service: the router and the worker */
} imchatd_role;

typedef enum imchatd_mode {
  IMCHATD_SERVE = 0,
  IMCHATD_TOKEN,   /* imchatd token USER: print a JWT */
  IMCHATD_HELP,    /* --help */
  IMCHATD_VERSION, /* --version */
} imchatd_mode;

/* Every string is owned (malloc) and NULL when unset. */
typedef struct imchatd_config {
  imchatd_role role;
  imchatd_mode mode;
  char *config_file;
  char *listen;
  char *data_dir;
  char *jwt_secret;
  char *jwt_secret_file;
  char *jwt_public_key; /* path of a PEM file */
  char *jwt_issuer;
  char *jwt_audience;
  char *jwks_url;     /* RS256/ES256 keys from this JWK Set */
  char *jwks_ca_file; /* CAs for an https jwks_url */
  char *admin_token;
  size_t max_body;
  char *node_id;
  char *filter_file; /* sensitive words */
  int filter_mask;   /* 0: reject, 1: mask */
  char *key_file;    /* keyring for encryption at rest */
  uint32_t ack_timeout_s, heartbeat_s, idle_timeout_s, lease_ttl_s;
  uint32_t handshake_timeout_s;
  uint32_t rate_limit, rate_burst;
  uint32_t user_rate_limit, user_rate_burst, max_devices;
  uint32_t max_sends_per_conn, max_sends; /* sends in flight */
  uint32_t retention_days;
  char **allowed_origins; /* --allowed-origin, repeatable */
  size_t n_allowed_origins;
  uint32_t max_connections, max_connections_per_ip; /* 0: no limit */
  int deflate; /* --deflate on|off: permessage-deflate */
  imc_log_level log_level;
  int data_dir_flag; /* --data-dir was given, for the connect hint */
  char *web_root;    /* --web-root; NULL: the built or installed page */
  /* TLS on --listen: both files or neither */
  char *tls_cert, *tls_key; /* PEM: the chain, the private key */
  int tls_min_version;      /* TLS1_2_VERSION, TLS1_3_VERSION; 0: unset (1.3) */
  int dev_login;            /* --dev-login: POST /dev/login hands out tokens */
  /* Mutual TLS on the cluster's gRPC links: all three or none */
  char *grpc_tls_cert, *grpc_tls_key, *grpc_tls_ca;
  /* im-gateway and im-service */
  char *grpc_listen;
  char *grpc_advertise; /* NULL: the bound --grpc-listen address */
  char *http_listen;    /* im-service's /healthz, /readyz, /metrics */
  char *routers;        /* comma-separated HOST:PORT */
  char *etcd, *kafka, *redis, *mysql;
  uint32_t kafka_session_s; /* the consumers' session.timeout.ms, in s */
  char *mysql_user, *mysql_password; /* the environment's, or the file's */
  int migrate_only;
  /* imchatd token */
  char *token_user;
  char *token_device;
  uint32_t token_ttl_s;
} imchatd_config;

/*
 * Fills cfg for role's program from its defaults, its section of the
 * --config file and argv (flags win); a setting of another role is
 * refused. --help and --version only set the mode. Returns -1 to go on, or an
 * exit code (IMCHATD_EXIT_USAGE, IMCHATD_EXIT_FAIL) with a one-line
 * reason in err. argv may be permuted. Not reentrant (getopt_long).
 * Free cfg in either case.
 */
int imchatd_config_load(imchatd_config *cfg, imchatd_role role, int argc,
                        char **argv, char *err, size_t errcap);
void imchatd_config_free(imchatd_config *cfg);

/*
 * The HS256 secret: --jwt-secret, the text of --jwt-secret-file, or the
 * text of DATA_DIR/jwt.secret, which is created (32 random bytes, hex,
 * mode 0600; the directory 0700) if missing. With only --jwt-public-key
 * or --jwks-url configured there is none: *secret is NULL. On success *secret
 * is malloc'ed, *path names the file it came from (NULL for --jwt-secret;
 * malloc'ed) and *created tells whether it was just made. Returns 0 or an
 * exit code after logging the reason.
 */
int imchatd_config_secret(const imchatd_config *cfg, uint8_t **secret,
                          size_t *len, char **path, int *created);

#endif
