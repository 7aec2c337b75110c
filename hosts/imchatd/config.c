/*
 * imchatd's options: the option table, the setter that checks and applies
 * a value (for flags and INI keys alike), and the command line (see
 * config.h).
 */
#include "flags.h"

#include "log.h"
#include "loop.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
    {"web-root", required_argument, NULL, O_WEB_ROOT},
    {"dev-login", no_argument, NULL, O_DEV_LOGIN},
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
  case O_LISTEN: {
    char host[256];
    uint16_t port;
    const char *reason;
    if (hloop_split_addr(v, host, sizeof(host), &port, &reason) < 0) {
      snprintf(why, cap, "'%s': %s", v, reason);
      return -1;
    }
    return set_str(&cfg->listen, v, why, cap);
  }
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
    if (parse_uint(v, 1, MAX_SECONDS, &x) < 0) {
      snprintf(why, cap, "'%s' is not a number of seconds from 1 to %u", v,
               MAX_SECONDS);
      return -1;
    }
    *(id == O_ACK_TIMEOUT ? &cfg->ack_timeout_s
      : id == O_HEARTBEAT ? &cfg->heartbeat_s
                          : &cfg->idle_timeout_s) = (uint32_t)x;
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
  case O_WEB_ROOT:
    return set_str(&cfg->web_root, v, why, cap);
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
static void bad_option(int c, char **argv, char *err, size_t cap) {
  const char *arg = argv[optind - 1];
  if (c == ':' && optopt >= 256)
    snprintf(err, cap, "--%s needs a value (see imchatd --help)",
             imchatd_opt_name(optopt));
  else if (c == ':')
    snprintf(err, cap, "%s needs a value (see imchatd --help)", arg);
  else if (optopt > 0 && optopt < 256 && strncmp(arg, "--", 2) != 0)
    snprintf(err, cap, "unknown option '-%c' (see imchatd --help)", optopt);
  else
    snprintf(err, cap, "unknown option '%s' (see imchatd --help)", arg);
}

static void free_origins(imchatd_config *cfg) {
  for (size_t i = 0; i < cfg->n_allowed_origins; i++)
    free(cfg->allowed_origins[i]);
  free(cfg->allowed_origins);
  cfg->allowed_origins = NULL;
  cfg->n_allowed_origins = 0;
}

static void defaults(imchatd_config *cfg) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->listen = strdup(DEFAULT_LISTEN);
  cfg->data_dir = strdup(DEFAULT_DATA_DIR);
  cfg->node_id = strdup(DEFAULT_NODE_ID);
  cfg->max_body = DEFAULT_MAX_BODY;
  cfg->log_level = IMC_LOG_INFO;
  cfg->token_ttl_s = DEFAULT_TTL_S;
  cfg->ack_timeout_s = 10;
  cfg->heartbeat_s = 30;
  cfg->idle_timeout_s = 90;
  cfg->rate_limit = 100;
  cfg->rate_burst = 200;
  cfg->user_rate_limit = 200;
  cfg->user_rate_burst = 400;
  cfg->max_devices = 16;
  cfg->max_sends_per_conn = 64;
  cfg->max_sends = 8192;
  cfg->retention_days = 7;
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

int imchatd_config_load(imchatd_config *cfg, int argc, char **argv, char *err,
                        size_t errcap) {
  defaults(cfg);
  if (!cfg->listen || !cfg->data_dir || !cfg->node_id) {
    snprintf(err, errcap, "out of memory");
    return IMCHATD_EXIT_FAIL;
  }
  /* "imchatd token ...": parse the rest as if "token" were argv[0]. */
  if (argc > 1 && strcmp(argv[1], "token") == 0) {
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
      bad_option(c, argv, err, errcap);
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

  if (check_jwks(cfg, err, errcap) < 0)
    return IMCHATD_EXIT_USAGE;

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
    snprintf(err, errcap, "unexpected argument '%s' (see imchatd --help)",
             argv[optind]);
    return IMCHATD_EXIT_USAGE;
  }
  return -1;
}

void imchatd_config_free(imchatd_config *cfg) {
  char **strs[] = {
      &cfg->config_file, &cfg->listen,          &cfg->data_dir,
      &cfg->jwt_secret,  &cfg->jwt_secret_file, &cfg->jwt_public_key,
      &cfg->jwt_issuer,  &cfg->jwt_audience,    &cfg->admin_token,
      &cfg->node_id,     &cfg->token_user,      &cfg->token_device,
      &cfg->filter_file, &cfg->key_file,        &cfg->web_root,
      &cfg->jwks_url,    &cfg->jwks_ca_file};
  for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
    free(*strs[i]);
    *strs[i] = NULL;
  }
  free_origins(cfg);
}
