/*
 * imchatd's settings, shared by the command line (config.c), the INI file
 * (ini.c) and the help text (usage.c): defaults, the option ids and
 * table, and the setter both sources go through.
 */
#ifndef IMCHATD_FLAGS_H
#define IMCHATD_FLAGS_H

#include "config.h"

#include <getopt.h>
#include <stddef.h>

#define DEFAULT_LISTEN "127.0.0.1:8082"
#define DEFAULT_DATA_DIR "./data"
#define DEFAULT_NODE_ID "local"
#define DEFAULT_MAX_BODY 65536
#define DEFAULT_TTL_S 86400
#define MAX_BODY_LIMIT (64u << 20)
#define MAX_TTL_S (10u * 366 * 86400)
#define MAX_SECONDS 86400u
#define MAX_DAYS 3650u
#define MAX_CONNECTIONS 100000000u
#define SECRET_FILE "jwt.secret"
#define DEFAULT_GATEWAY_GRPC "127.0.0.1:9093"
#define DEFAULT_SERVICE_GRPC "127.0.0.1:9094"
#define DEFAULT_SERVICE_HTTP "127.0.0.1:9095"
#define DEFAULT_ETCD "http://127.0.0.1:2379"
#define DEFAULT_KAFKA "127.0.0.1:9092"
#define DEFAULT_REDIS "127.0.0.1:6379"
#define DEFAULT_MYSQL "127.0.0.1:3306/imchat"

enum {
  O_CONFIG = 256,
  O_LISTEN,
  O_DATA_DIR,
  O_JWT_SECRET,
  O_JWT_SECRET_FILE,
  O_JWT_PUBLIC_KEY,
  O_JWT_ISSUER,
  O_JWT_AUDIENCE,
  O_JWKS_URL,
  O_JWKS_CA_FILE,
  O_ADMIN_TOKEN,
  O_MAX_BODY,
  O_NODE_ID,
  O_FILTER_FILE,
  O_FILTER_ACTION,
  O_KEY_FILE,
  O_ACK_TIMEOUT,
  O_HEARTBEAT,
  O_IDLE_TIMEOUT,
  O_HANDSHAKE_TIMEOUT,
  O_RATE_LIMIT,
  O_RATE_BURST,
  O_USER_RATE_LIMIT,
  O_USER_RATE_BURST,
  O_MAX_DEVICES,
  O_MAX_SENDS_PER_CONN,
  O_MAX_SENDS,
  O_RETENTION_DAYS,
  O_LOG_LEVEL,
  O_ALLOWED_ORIGIN,
  O_MAX_CONNECTIONS,
  O_MAX_CONNECTIONS_PER_IP,
  O_DEFLATE,
  O_LEASE_TTL,
  O_GRPC_LISTEN,
  O_GRPC_ADVERTISE,
  O_HTTP_LISTEN,
  O_ROUTER,
  O_ETCD,
  O_KAFKA,
  O_KAFKA_SESSION_TIMEOUT,
  O_REDIS,
  O_MYSQL,
  O_MYSQL_USER,
  O_MYSQL_PASSWORD,
  O_TLS_CERT,
  O_TLS_KEY,
  O_TLS_MIN_VERSION,
  O_GRPC_TLS_CERT,
  O_GRPC_TLS_KEY,
  O_GRPC_TLS_CA,
  O_WEB_ROOT, /* the last key the INI file knows */
  O_DEV_LOGIN,
  O_MIGRATE_ONLY,
  O_DEVICE,
  O_TTL,
};

/* The long options, ending with a NULL name; ids are the O_* values. */
extern const struct option imchatd_long_opts[];

/* The long name of option id, or "?". */
const char *imchatd_opt_name(int id);

/* The program role's name: "imchatd", "im-gateway" or "im-service"; also
 * its section of the INI file. */
const char *imchatd_role_name(imchatd_role role);

/* 1 if option id is a setting of role's program. */
int imchatd_opt_in_role(int id, imchatd_role role);

/*
 * Applies one setting, from a flag or the file. Returns 0, or -1 with the
 * reason (without the option's name) in why[0..cap).
 */
int imchatd_apply(imchatd_config *cfg, int id, const char *v, char *why,
                  size_t cap);

/*
 * Applies the [imchatd] section of the INI file at path (keys named like
 * the long options). Returns 0, or -1 with a one-line reason in err.
 */
int imchatd_load_ini(imchatd_config *cfg, const char *path, char *err,
                     size_t errcap);

/* Writes the --help text to stdout. */
void imchatd_usage(void);

#endif
