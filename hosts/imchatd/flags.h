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
  O_WEB_ROOT, /* the last key the INI file knows */
  O_DEV_LOGIN,
  O_DEVICE,
  O_TTL,
};

/* The long options, ending with a NULL name; ids are the O_* values. */
extern const struct option imchatd_long_opts[];

/* The long name of option id, or "?". */
const char *imchatd_opt_name(int id);

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
