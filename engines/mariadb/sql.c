/*
 * SQL text for the MariaDB engine. Values go into the text escaped for
 * the connection that will run it (mysql_real_escape_string knows its
 * character set and whether backslashes escape), or as hex literals for
 * bytes. An allocation failure is sticky: the caller checks s->oom once
 * the text is built.
 */
#include "mariadb/mariadb_int.h"

#include <stdio.h>
#include <string.h>

void mdb_sql_init(mdb_sql *s, imc_mariadb *db) {
  memset(s, 0, sizeof(*s));
  s->db = db;
}

void mdb_sql_reset(mdb_sql *s) {
  s->len = 0;
  s->oom = 0;
  if (s->p)
    s->p[0] = '\0';
}

void mdb_sql_free(mdb_sql *s) {
  mdb_free(s->db, s->p);
  s->p = NULL;
  s->len = s->cap = 0;
}

/* Room for n more bytes and a NUL; 0 or -1 (oom set). */
static int reserve(mdb_sql *s, size_t n) {
  if (s->oom)
    return -1;
  if (s->len + n + 1 <= s->cap)
    return 0;
  size_t cap = s->cap ? s->cap : 1024;
  while (cap < s->len + n + 1)
    cap *= 2;
  char *p = mdb_realloc(s->db, s->p, cap);
  if (p == NULL) {
    s->oom = 1;
    return -1;
  }
  s->p = p;
  s->cap = cap;
  return 0;
}

void mdb_sql_add(mdb_sql *s, const char *text) {
  size_t n = strlen(text);
  if (reserve(s, n) < 0)
    return;
  memcpy(s->p + s->len, text, n + 1);
  s->len += n;
}

void mdb_sql_addf(mdb_sql *s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0 || reserve(s, (size_t)n) < 0)
    return;
  va_start(ap, fmt);
  vsnprintf(s->p + s->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  s->len += (size_t)n;
}

size_t mdb_sql_str_est(const char *str) {
  return 2 * (str ? strlen(str) : 0) + 3;
}

void mdb_sql_str(mdb_sql *s, MYSQL *my, const char *str) {
  if (str == NULL)
    str = "";
  size_t n = strlen(str);
  if (reserve(s, 2 * n + 3) < 0)
    return;
  s->p[s->len++] = '\'';
  unsigned long w = mysql_real_escape_string(my, s->p + s->len, str, n);
  if (w == (unsigned long)-1) {
    s->oom = 1; /* cannot happen for utf8mb4; never send a broken text */
    return;
  }
  s->len += w;
  s->p[s->len++] = '\'';
  s->p[s->len] = '\0';
}

void mdb_sql_bin(mdb_sql *s, const uint8_t *b, size_t n) {
  static const char hex[] = "0123456789abcdef";
  if (reserve(s, 2 * n + 3) < 0)
    return;
  char *p = s->p + s->len;
  *p++ = 'X';
  *p++ = '\'';
  for (size_t i = 0; i < n; i++) {
    *p++ = hex[b[i] >> 4];
    *p++ = hex[b[i] & 15];
  }
  *p++ = '\'';
  *p = '\0';
  s->len = (size_t)(p - s->p);
}
