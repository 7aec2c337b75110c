/* The INI file: the section of the program's role ([imchatd],
 * [im-gateway] or [im-service]), read with libinih. */
#include "flags.h"

#include <errno.h>
#include <ini.h>
#include <stdio.h>
#include <string.h>

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
  if (strcmp(section, imchatd_role_name(ctx->cfg->role)) != 0)
    return 1; /* other programs' sections may share the file */
  if (ctx->err[0])
    return 0;
  int id = 0;
  for (const struct option *o = imchatd_long_opts; o->name; o++) {
    if (key_eq(name, o->name)) {
      id = o->val;
      break;
    }
  }
  /* --dev-login is a flag only: a config file must not turn it on. */
  if (id == O_DEV_LOGIN) {
    snprintf(ctx->err, sizeof(ctx->err),
             "dev-login is a command-line flag only (--dev-login)");
    return 0;
  }
  if (id < O_LISTEN || id > O_WEB_ROOT ||
      !imchatd_opt_in_role(id, ctx->cfg->role)) {
    snprintf(ctx->err, sizeof(ctx->err), "unknown key '%s'", name);
    return 0;
  }
  char why[384];
  if (imchatd_apply(ctx->cfg, id, value, why, sizeof(why)) < 0) {
    snprintf(ctx->err, sizeof(ctx->err), "%s: %s", name, why);
    return 0;
  }
  if (id == O_JWT_SECRET || id == O_JWT_SECRET_FILE)
    ctx->secret_keys |= id == O_JWT_SECRET ? 1 : 2;
  return 1;
}

int imchatd_load_ini(imchatd_config *cfg, const char *path, char *err,
                     size_t errcap) {
  ini_ctx ctx;
  memset(&ctx, 0, sizeof(ctx));
  ctx.cfg = cfg;
  int rv = ini_parse(path, on_ini_key, &ctx);
  if (rv < 0) {
    snprintf(err, errcap, "--config: cannot read '%s'%s%s", path,
             errno ? ": " : "", errno ? strerror(errno) : "");
    return -1;
  }
  if (rv > 0) {
    snprintf(err, errcap, "%s:%d: %s", path, rv,
             ctx.err[0] ? ctx.err : "syntax error");
    return -1;
  }
  if (ctx.secret_keys == 3) {
    snprintf(err, errcap, "%s: set jwt-secret or jwt-secret-file, not both",
             path);
    return -1;
  }
  return 0;
}
