/* imchatd's HS256 secret: flag, file, or DATA_DIR/jwt.secret (config.h). */
#include "flags.h"

#include "files.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define SECRET_BYTES 32

static void trim_right(char *s, size_t *len) {
  while (*len > 0 && strchr(" \t\r\n", s[*len - 1]))
    s[--(*len)] = '\0';
}

static void warn_if_shared(const char *path) {
  struct stat st;
  if (stat(path, &st) == 0 && (st.st_mode & 077))
    hlog_warn("%s is readable by others (mode %03o); chmod 600 it", path,
              (unsigned)(st.st_mode & 0777));
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
  } else if ((cfg->jwt_public_key || cfg->jwks_url) &&
             cfg->mode == IMCHATD_SERVE) {
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
    rv = hfile_make_dirs(cfg->data_dir);
    if (rv < 0) {
      hlog_error("--data-dir: cannot create '%s': %s", cfg->data_dir,
                 strerror(-rv));
      free(p);
      return IMCHATD_EXIT_FAIL;
    }
    rv = hfile_create_secret(p, SECRET_BYTES);
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
