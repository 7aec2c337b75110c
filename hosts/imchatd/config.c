/* imchatd configuration: flags, INI file, JWT secret file (see config.h). */
#include "config.h"

#include "log.h"
#include "loop.h"

#include <imchat/version.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_LISTEN "127.0.0.1:8082"
#define DEFAULT_DATA_DIR "./data"
#define DEFAULT_NODE_ID "local"
#define DEFAULT_MAX_BODY 65536
#define DEFAULT_TTL_S 86400
#define MAX_BODY_LIMIT (64u << 20)
#define MAX_TTL_S (10u * 366 * 86400)
#define MAX_SECONDS 86400u
#define MAX_DAYS 3650u
#define SECRET_FILE "jwt.secret"
#define SECRET_BYTES 32
#define MAX_FILE_BYTES (1 << 20)

static const char usage_text[] =
    "Usage: imchatd [OPTIONS]\n"
    "       imchatd token USER [--device D] [--ttl SECONDS] [OPTIONS]\n"
    "\n"
    "Runs the whole imchat server in one process: the WebSocket gateway on\n"
    "GET /ws, the HTTP API, routing and the offline store, on an in-memory\n"
    "registry and SQLite (DATA_DIR/imchat.db). 'imchatd token USER' prints\n"
    "an HS256 JWT for USER signed with the server's secret (same options,\n"
    "same secret file).\n"
    "\n"
    "Options:\n"
    "  --config FILE           read settings from the [imchatd] section of\n"
    "                          an INI file; keys are the long option names,\n"
    "                          e.g. 'listen = 127.0.0.1:8082'; flags win\n"
    "  --listen HOST:PORT      address to listen on (default " DEFAULT_LISTEN
    ");\n"
    "                          port 0 picks a free port, *:PORT means all\n"
    "                          IPv4 addresses, [::1]:PORT is IPv6\n"
    "  --data-dir DIR          data directory (default " DEFAULT_DATA_DIR ")\n"
    "  --jwt-secret S          accept HS256 tokens signed with the secret S\n"
    "  --jwt-secret-file F     accept HS256 tokens signed with the text of\n"
    "                          file F (trailing whitespace ignored)\n"
    "  --jwt-public-key PEM    accept RS256 (RSA) or ES256 (P-256) tokens\n"
    "                          verified with this PEM public key file\n"
    "                          Without any of these three, "
    "DATA_DIR/" SECRET_FILE "\n"
    "                          (random, hex, mode 0600) is created on first\n"
    "                          start and used as the HS256 secret; with only\n"
    "                          --jwt-public-key, HS256 tokens are refused.\n"
    "  --jwt-issuer ISS        require the claim iss = ISS (default: any)\n"
    "  --jwt-audience AUD      require AUD in the claim aud (default: any)\n"
    "  --admin-token T         bearer token for the admin HTTP API\n"
    "                          (default: none, admin API disabled)\n"
    "  --max-body BYTES        largest message body (default 65536)\n"
    "  --filter-file FILE      sensitive words, one per line ('#' comments),\n"
    "                          applied to text/* bodies; reloaded on SIGHUP\n"
    "  --filter-action ACTION  reject (Error BLOCKED, the default) or mask\n"
    "                          (each matched character becomes '*')\n"
    "  --key-file FILE         encrypt stored bodies (AES-256-GCM); lines of\n"
    "                          'KEY_ID HEX64', the first key seals, all open;\n"
    "                          reloaded on SIGHUP\n"
    "  --ack-timeout SECONDS   wait for a DeliverAck before the slow path\n"
    "                          (default 10)\n"
    "  --heartbeat SECONDS     server ping and lease renewal (default 30)\n"
    "  --idle-timeout SECONDS  close after this long without a frame\n"
    "                          (default 90)\n"
    "  --rate-limit N          sends per second per connection (default 100)\n"
    "  --rate-burst N          sends allowed in a burst (default 200)\n"
    "  --retention-days DAYS   keep stored messages this long (default 7)\n"
    "  --node-id ID            this node's name in the registry and in\n"
    "                          Welcome (default " DEFAULT_NODE_ID ")\n"
    "  --log-level LEVEL       error, warn, info or debug (default info)\n"
    "  -h, --help              print this help and exit\n"
    "  -V, --version           print the version and exit\n"
    "\n"
    "Token options:\n"
    "  --device D              put device id D in the token (claim did;\n"
    "                          default none: the client's ?device= or\n"
    "                          \"default\")\n"
    "  --ttl SECONDS           token lifetime (default 86400)\n"
    "\n"
    "Exit status: 0 ok, 1 runtime failure, 2 bad options or files.\n"
    "Signals: SIGINT/SIGTERM close connections gracefully (up to 5 s);\n"
    "SIGHUP reloads --filter-file and --key-file.\n";

enum {
  O_CONFIG = 256,
  O_LISTEN,
  O_DATA_DIR,
  O_JWT_SECRET,
  O_JWT_SECRET_FILE,
  O_JWT_PUBLIC_KEY,
  O_JWT_ISSUER,
  O_JWT_AUDIENCE,
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
  O_RETENTION_DAYS,
  O_LOG_LEVEL,
  O_DEVICE,
  O_TTL,
};

static const struct option long_opts[] = {
    {"config", required_argument, NULL, O_CONFIG},
    {"listen", required_argument, NULL, O_LISTEN},
    {"data-dir", required_argument, NULL, O_DATA_DIR},
    {"jwt-secret", required_argument, NULL, O_JWT_SECRET},
    {"jwt-secret-file", required_argument, NULL, O_JWT_SECRET_FILE},
    {"jwt-public-key", required_argument, NULL, O_JWT_PUBLIC_KEY},
    {"jwt-issuer", required_argument, NULL, O_JWT_ISSUER},
    {"jwt-audience", required_argument, NULL, O_JWT_AUDIENCE},
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
    {"retention-days", required_argument, NULL, O_RETENTION_DAYS},
    {"log-level", required_argument, NULL, O_LOG_LEVEL},
    {"device", required_argument, NULL, O_DEVICE},
    {"ttl", required_argument, NULL, O_TTL},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

static const char *opt_name(int id) {
  for (const struct option *o = long_opts; o->name; o++)
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

/* Applies one setting, from a flag or the file. */
static int apply(imchatd_config *cfg, int id, const char *v, char *why,
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

/* ---- INI file ------------------------------------------------------- */

typedef struct ini_ctx {
  imchatd_config *cfg;
  char err[512];
  int secret_keys; /* jwt-secret and jwt-secret-file both set? */
} ini_ctx;

/* Keys match the long options ignoring '-' and '_': data-dir, data_dir
 * and datadir are one key. */
static int key_eq(const char *key, const char *opt) {
  for (;;) {
    while (*key == '-' || *key == '_')
      key++;
    while (*opt == '-')
      opt++;
    if (*key != *opt)
      return 0;
    if (*key == '\0')
      return 1;
    key++;
    opt++;
  }
}

static int on_ini_key(void *user, const char *section, const char *name,
                      const char *value) {
  ini_ctx *ctx = user;
  if (strcmp(section, "imchatd") != 0)
    return 1; /* other programs' sections may share the file */
  if (ctx->err[0])
    return 0;
  int id = 0;
  for (const struct option *o = long_opts; o->name; o++) {
    if (key_eq(name, o->name)) {
      id = o->val;
      break;
    }
  }
  if (id < O_LISTEN || id > O_LOG_LEVEL) {
    snprintf(ctx->err, sizeof(ctx->err), "unknown key '%s'", name);
    return 0;
  }
  char why[384];
  if (apply(ctx->cfg, id, value, why, sizeof(why)) < 0) {
    snprintf(ctx->err, sizeof(ctx->err), "%s: %s", name, why);
    return 0;
  }
  if (id == O_JWT_SECRET || id == O_JWT_SECRET_FILE)
    ctx->secret_keys |= id == O_JWT_SECRET ? 1 : 2;
  return 1;
}

static int load_ini(imchatd_config *cfg, const char *path) {
  ini_ctx ctx;
  memset(&ctx, 0, sizeof(ctx));
  ctx.cfg = cfg;
  int rv = ini_parse(path, on_ini_key, &ctx);
  if (rv < 0) {
    fprintf(stderr, "imchatd: --config: cannot read '%s'%s%s\n", path,
            errno ? ": " : "", errno ? strerror(errno) : "");
    return -1;
  }
  if (rv > 0) {
    fprintf(stderr, "imchatd: %s:%d: %s\n", path, rv,
            ctx.err[0] ? ctx.err : "syntax error");
    return -1;
  }
  if (ctx.secret_keys == 3) {
    fprintf(stderr,
            "imchatd: %s: set jwt-secret or jwt-secret-file, not "
            "both\n",
            path);
    return -1;
  }
  return 0;
}

/* ---- command line --------------------------------------------------- */

/* Reports the option getopt stopped at; one line. */
static void bad_option(int c, char **argv) {
  const char *arg = argv[optind - 1];
  if (c == ':' && optopt >= 256)
    fprintf(stderr, "imchatd: --%s needs a value (see imchatd --help)\n",
            opt_name(optopt));
  else if (c == ':')
    fprintf(stderr, "imchatd: %s needs a value (see imchatd --help)\n", arg);
  else if (optopt > 0 && optopt < 256 && strncmp(arg, "--", 2) != 0)
    fprintf(stderr, "imchatd: unknown option '-%c' (see imchatd --help)\n",
            optopt);
  else
    fprintf(stderr, "imchatd: unknown option '%s' (see imchatd --help)\n", arg);
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
  cfg->retention_days = 7;
}

int imchatd_config_load(imchatd_config *cfg, int argc, char **argv) {
  defaults(cfg);
  if (!cfg->listen || !cfg->data_dir || !cfg->node_id) {
    fprintf(stderr, "imchatd: out of memory\n");
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
  while ((c = getopt_long(argc, argv, shortopts, long_opts, NULL)) != -1) {
    if (c == '?' || c == ':') {
      bad_option(c, argv);
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
  if (help) {
    fputs(usage_text, stdout);
    return IMCHATD_EXIT_OK;
  }
  if (version) {
    printf("imchatd %s (libimchat %s)\n", IMC_VERSION, imc_version());
    return IMCHATD_EXIT_OK;
  }
  if (cfg->config_file && load_ini(cfg, cfg->config_file) < 0)
    return IMCHATD_EXIT_USAGE;

  int flag_secret = 0;
  optind = 0;
  while ((c = getopt_long(argc, argv, shortopts, long_opts, NULL)) != -1) {
    if (c == O_CONFIG)
      continue;
    if ((c == O_DEVICE || c == O_TTL) && cfg->mode != IMCHATD_TOKEN) {
      fprintf(stderr, "imchatd: --%s is only valid with 'imchatd token'\n",
              opt_name(c));
      return IMCHATD_EXIT_USAGE;
    }
    /* A secret flag replaces both secret settings of the file. */
    if (c == O_JWT_SECRET || c == O_JWT_SECRET_FILE) {
      flag_secret |= c == O_JWT_SECRET ? 1 : 2;
      if (flag_secret == 3) {
        fprintf(stderr, "imchatd: --jwt-secret and --jwt-secret-file "
                        "exclude each other\n");
        return IMCHATD_EXIT_USAGE;
      }
      free(cfg->jwt_secret);
      free(cfg->jwt_secret_file);
      cfg->jwt_secret = cfg->jwt_secret_file = NULL;
    }
    char why[384];
    if (apply(cfg, c, optarg, why, sizeof(why)) < 0) {
      fprintf(stderr, "imchatd: --%s: %s\n", opt_name(c), why);
      return IMCHATD_EXIT_USAGE;
    }
    if (c == O_DATA_DIR)
      cfg->data_dir_flag = 1;
  }

  int npos = argc - optind;
  if (cfg->mode == IMCHATD_TOKEN) {
    if (npos == 0) {
      fprintf(stderr, "imchatd: token: missing USER (imchatd token USER "
                      "[--device D] [--ttl SECONDS])\n");
      return IMCHATD_EXIT_USAGE;
    }
    if (npos > 1) {
      fprintf(stderr, "imchatd: token: unexpected argument '%s'\n",
              argv[optind + 1]);
      return IMCHATD_EXIT_USAGE;
    }
    const char *user = argv[optind];
    if (!imc_id_valid(user, strlen(user))) {
      fprintf(stderr,
              "imchatd: token: '%s' is not a user id (1-64 of "
              "[A-Za-z0-9_.@-])\n",
              user);
      return IMCHATD_EXIT_USAGE;
    }
    cfg->token_user = strdup(user);
  } else if (npos > 0) {
    fprintf(stderr, "imchatd: unexpected argument '%s' (see imchatd --help)\n",
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
      &cfg->filter_file, &cfg->key_file};
  for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
    free(*strs[i]);
    *strs[i] = NULL;
  }
}

/* ---- files ---------------------------------------------------------- */

int imchatd_read_file(const char *path, char **out, size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  int err = 0;
  while (buf) {
    if (n + 1 == cap) {
      if (cap >= MAX_FILE_BYTES) {
        err = EFBIG;
        break;
      }
      /* Not realloc: the old block is wiped, as it may hold a secret. */
      char *nb = malloc(cap * 2);
      if (nb == NULL) {
        err = ENOMEM;
        break;
      }
      memcpy(nb, buf, n);
      explicit_bzero(buf, cap);
      free(buf);
      buf = nb;
      cap *= 2;
    }
    ssize_t r = read(fd, buf + n, cap - 1 - n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      err = errno;
      break;
    }
    if (r == 0) {
      buf[n] = '\0';
      close(fd);
      *out = buf;
      *len = n;
      return 0;
    }
    n += (size_t)r;
  }
  close(fd);
  if (buf != NULL)
    explicit_bzero(buf, cap);
  free(buf);
  return -(err ? err : ENOMEM);
}

static void trim_right(char *s, size_t *len) {
  while (*len > 0 && strchr(" \t\r\n", s[*len - 1]))
    s[--(*len)] = '\0';
}

/* mkdir -p with mode 0700 for what it creates. */
static int make_dirs(const char *dir) {
  char *p = strdup(dir);
  if (p == NULL)
    return -ENOMEM;
  int rv = 0;
  for (char *s = p + 1;; s++) {
    if (*s != '/' && *s != '\0')
      continue;
    char saved = *s;
    *s = '\0';
    if (mkdir(p, 0700) < 0 && errno != EEXIST) {
      rv = -errno;
      break;
    }
    *s = saved;
    if (saved == '\0')
      break;
  }
  free(p);
  return rv;
}

static void warn_if_shared(const char *path) {
  struct stat st;
  if (stat(path, &st) == 0 && (st.st_mode & 077))
    hlog_warn("%s is readable by others (mode %03o); chmod 600 it", path,
              (unsigned)(st.st_mode & 0777));
}

/*
 * Creates path with a fresh random secret. The secret is written to a
 * temporary file and linked into place, so a concurrent start (or a
 * crash) never leaves a partial file, and an existing file is never
 * replaced: on EEXIST the caller reads the winner's.
 */
static int create_secret(const char *path) {
  uint8_t raw[SECRET_BYTES];
  size_t got = 0;
  while (got < sizeof(raw)) {
    ssize_t r = getrandom(raw + got, sizeof(raw) - got, 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return -errno;
    got += (size_t)r;
  }
  char hex[2 * SECRET_BYTES + 2];
  for (size_t i = 0; i < sizeof(raw); i++)
    snprintf(hex + 2 * i, 3, "%02x", raw[i]);
  hex[2 * SECRET_BYTES] = '\n';
  hex[2 * SECRET_BYTES + 1] = '\0';

  char tmp[4096];
  if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >=
      sizeof(tmp))
    return -ENAMETOOLONG;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    return -errno;
  int rv = 0;
  size_t len = 2 * SECRET_BYTES + 1;
  if (write(fd, hex, len) != (ssize_t)len || fsync(fd) < 0)
    rv = -(errno ? errno : EIO);
  if (close(fd) < 0 && rv == 0)
    rv = -errno;
  if (rv == 0 && link(tmp, path) < 0)
    rv = -errno;
  unlink(tmp);
  return rv;
}

int imchatd_config_secret(const imchatd_config *cfg, uint8_t **secret,
                          size_t *len, char **path, int *created) {
  *secret = NULL;
  *len = 0;
  *path = NULL;
  *created = 0;
  if (cfg->jwt_secret) {
    *secret = (uint8_t *)strdup(cfg->jwt_secret);
    *len = strlen(cfg->jwt_secret);
    return *secret ? 0 : IMCHATD_EXIT_FAIL;
  }
  const char *flag = "--jwt-secret-file";
  char *p = NULL;
  if (cfg->jwt_secret_file) {
    p = strdup(cfg->jwt_secret_file);
  } else if (cfg->jwt_public_key && cfg->mode == IMCHATD_SERVE) {
    return 0; /* RS256/ES256 only */
  } else {
    flag = "--data-dir";
    size_t n = strlen(cfg->data_dir) + sizeof(SECRET_FILE) + 1;
    p = malloc(n);
    if (p)
      snprintf(p, n, "%s/%s", cfg->data_dir, SECRET_FILE);
  }
  if (p == NULL)
    return IMCHATD_EXIT_FAIL;

  char *text = NULL;
  size_t n = 0;
  int rv = imchatd_read_file(p, &text, &n);
  if (rv == -ENOENT && !cfg->jwt_secret_file) {
    rv = make_dirs(cfg->data_dir);
    if (rv < 0) {
      hlog_error("--data-dir: cannot create '%s': %s", cfg->data_dir,
                 strerror(-rv));
      free(p);
      return IMCHATD_EXIT_FAIL;
    }
    rv = create_secret(p);
    if (rv == 0)
      *created = 1;
    else if (rv != -EEXIST) {
      hlog_error("cannot create the JWT secret %s: %s", p, strerror(-rv));
      free(p);
      return IMCHATD_EXIT_FAIL;
    }
    rv = imchatd_read_file(p, &text, &n);
  }
  if (rv < 0) {
    hlog_error("%s: cannot read '%s': %s", flag, p, strerror(-rv));
    free(p);
    return cfg->jwt_secret_file ? IMCHATD_EXIT_USAGE : IMCHATD_EXIT_FAIL;
  }
  trim_right(text, &n);
  if (n == 0) {
    hlog_error("%s: '%s' holds no secret", flag, p);
    free(text);
    free(p);
    return IMCHATD_EXIT_USAGE;
  }
  if (!*created)
    warn_if_shared(p);
  *secret = (uint8_t *)text;
  *len = n;
  *path = p;
  return 0;
}
