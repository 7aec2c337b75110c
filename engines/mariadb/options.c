/*
 * The MariaDB engine's options: the address, the credentials (also from
 * the environment) and the tuning knobs.
 */
#include "mariadb/mariadb_int.h"

#include <stdlib.h>
#include <string.h>

static char *dup_str(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (d) {
    memcpy(d, s, n);
    d[n] = '\0';
  }
  return d;
}

/* Overwrites a secret before it is freed. */
static void wipe(char *s) {
  for (volatile char *p = s; p && *p; p++)
    *p = '\0';
}

static void free_secret(char *s) {
  wipe(s);
  free(s);
}

int imc_mariadb_options_new(imc_mariadb_options **out) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_mariadb_options *o = calloc(1, sizeof(*o));
  if (o == NULL)
    return IMC_ERR_NOMEM;
  o->port = 3306;
  o->pool = 2;
  o->op_timeout_ms = 5000;
  o->connect_timeout_ms = 3000;
  o->max_backoff_ms = 2000;
  o->batch_ops = 512;
  o->batch_bytes = (size_t)4 * 1024 * 1024;
  o->purge_chunk = 1000;
  o->migrate = 1;
  *out = o;
  return 0;
}

void imc_mariadb_options_del(imc_mariadb_options *o) {
  if (o == NULL)
    return;
  free(o->host);
  free(o->dbname);
  free(o->user);
  free_secret(o->password);
  free(o);
}

void mdb_opts_clear(imc_mariadb_options *o, const imc_mem *mem) {
  wipe(o->password);
  char *s[4] = {o->host, o->dbname, o->user, o->password};
  for (int i = 0; i < 4; i++)
    if (s[i])
      mem->free(s[i], mem->ud);
  o->host = o->dbname = o->user = o->password = NULL;
}

int mdb_opts_copy(imc_mariadb_options *dst, const imc_mariadb_options *src,
                  const imc_mem *mem) {
  *dst = *src;
  dst->host = dst->dbname = dst->user = dst->password = NULL;
  const char *s[4] = {src->host, src->dbname, src->user, src->password};
  char **d[4] = {&dst->host, &dst->dbname, &dst->user, &dst->password};
  for (int i = 0; i < 4; i++) {
    if (s[i] == NULL)
      continue;
    size_t n = strlen(s[i]) + 1;
    if ((*d[i] = mem->malloc(n, mem->ud)) == NULL) {
      mdb_opts_clear(dst, mem);
      return IMC_ERR_NOMEM;
    }
    memcpy(*d[i], s[i], n);
  }
  return 0;
}

static int db_name_char(char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
         (ch >= '0' && ch <= '9') || ch == '_' || ch == '$';
}

int imc_mariadb_options_set_address(imc_mariadb_options *o,
                                    const char *address) {
  if (o == NULL || address == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  const char *slash = strrchr(address, '/');
  if (slash == NULL || slash == address)
    return IMC_ERR_INVALID_ARGUMENT;
  const char *db = slash + 1;
  size_t dl = strlen(db);
  if (dl == 0 || dl > 64)
    return IMC_ERR_INVALID_ARGUMENT;
  for (size_t i = 0; i < dl; i++)
    if (!db_name_char(db[i]))
      return IMC_ERR_INVALID_ARGUMENT;
  /* host, [v6]:port, host:port */
  const char *h = address, *hend, *port = NULL;
  if (*h == '[') {
    const char *close = memchr(h, ']', (size_t)(slash - h));
    if (close == NULL)
      return IMC_ERR_INVALID_ARGUMENT;
    h++;
    hend = close;
    if (close + 1 < slash) {
      if (close[1] != ':')
        return IMC_ERR_INVALID_ARGUMENT;
      port = close + 2;
    }
  } else {
    const char *colon = memchr(h, ':', (size_t)(slash - h));
    hend = colon ? colon : slash;
    if (colon)
      port = colon + 1;
  }
  if (hend == h)
    return IMC_ERR_INVALID_ARGUMENT;
  unsigned long pn = 3306;
  if (port) {
    if (port == slash)
      return IMC_ERR_INVALID_ARGUMENT;
    pn = 0;
    for (const char *p = port; p < slash; p++) {
      if (*p < '0' || *p > '9')
        return IMC_ERR_INVALID_ARGUMENT;
      pn = pn * 10 + (unsigned long)(*p - '0');
      if (pn > 65535)
        return IMC_ERR_INVALID_ARGUMENT;
    }
    if (pn == 0)
      return IMC_ERR_INVALID_ARGUMENT;
  }
  char *host = dup_str(h, (size_t)(hend - h));
  char *name = dup_str(db, dl);
  if (host == NULL || name == NULL) {
    free(host);
    free(name);
    return IMC_ERR_NOMEM;
  }
  free(o->host);
  free(o->dbname);
  o->host = host;
  o->dbname = name;
  o->port = (unsigned)pn;
  return 0;
}

int imc_mariadb_options_set_credentials(imc_mariadb_options *o,
                                        const char *user,
                                        const char *password) {
  if (o == NULL || user == NULL || *user == '\0')
    return IMC_ERR_INVALID_ARGUMENT;
  char *u = dup_str(user, strlen(user));
  char *p = password ? dup_str(password, strlen(password)) : dup_str("", 0);
  if (u == NULL || p == NULL) {
    free(u);
    free_secret(p);
    return IMC_ERR_NOMEM;
  }
  free(o->user);
  free_secret(o->password);
  o->user = u;
  o->password = p;
  return 0;
}

int imc_mariadb_options_credentials_from_env(imc_mariadb_options *o) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  const char *user = getenv("IMCHAT_MYSQL_USER");
  if (user == NULL || *user == '\0')
    return IMC_ERR_NOT_FOUND;
  return imc_mariadb_options_set_credentials(o, user,
                                             getenv("IMCHAT_MYSQL_PASSWORD"));
}

int imc_mariadb_options_set_pool_size(imc_mariadb_options *o, unsigned n) {
  if (o == NULL || n < 1 || n > MDB_POOL_MAX)
    return IMC_ERR_INVALID_ARGUMENT;
  o->pool = n;
  return 0;
}

int imc_mariadb_options_set_op_timeout_ms(imc_mariadb_options *o, int64_t ms) {
  if (o == NULL || ms < 100 || ms > 3600000)
    return IMC_ERR_INVALID_ARGUMENT;
  o->op_timeout_ms = ms;
  return 0;
}

int imc_mariadb_options_set_connect(imc_mariadb_options *o, int64_t timeout_ms,
                                    int64_t max_backoff_ms) {
  if (o == NULL || timeout_ms < 100 || timeout_ms > 600000 ||
      max_backoff_ms < 100 || max_backoff_ms > 600000)
    return IMC_ERR_INVALID_ARGUMENT;
  o->connect_timeout_ms = timeout_ms;
  o->max_backoff_ms = max_backoff_ms;
  return 0;
}

int imc_mariadb_options_set_batch_limits(imc_mariadb_options *o, size_t max_ops,
                                         size_t max_bytes) {
  if (o == NULL || max_ops < 1 || max_ops > 100000 ||
      max_bytes < (size_t)64 * 1024 || max_bytes > (size_t)1024 * 1024 * 1024)
    return IMC_ERR_INVALID_ARGUMENT;
  o->batch_ops = max_ops;
  o->batch_bytes = max_bytes;
  return 0;
}

int imc_mariadb_options_set_purge_chunk(imc_mariadb_options *o, uint32_t rows) {
  if (o == NULL || rows < 1 || rows > 100000)
    return IMC_ERR_INVALID_ARGUMENT;
  o->purge_chunk = rows;
  return 0;
}

int imc_mariadb_options_set_migrate(imc_mariadb_options *o, int apply) {
  if (o == NULL || (apply != 0 && apply != 1))
    return IMC_ERR_INVALID_ARGUMENT;
  o->migrate = apply;
  return 0;
}

int imc_mariadb_options_set_log(imc_mariadb_options *o, imc_log_cb cb,
                                void *ud) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  o->log = cb;
  o->log_ud = ud;
  return 0;
}
