/* Static files of the web root on the gateway port (see static.h). */
#include "static.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

struct hstatic {
  char *root; /* realpath of the web root */
  size_t root_len;
  const imc_http_handler_vtbl *next;
  void *next_ud;
};

#define ASSETS "/assets/"
#define HEADERS_COMMON                                                         \
  "X-Content-Type-Options: nosniff\r\n"                                        \
  "Referrer-Policy: no-referrer\r\n"                                           \
  "Content-Security-Policy: " HSTATIC_CSP "\r\n"
#define CACHE_IMMUTABLE "Cache-Control: public, max-age=31536000, immutable\r\n"
#define CACHE_REVALIDATE "Cache-Control: no-cache\r\n"

int hstatic_new(hstatic **out, const char *root,
                const imc_http_handler_vtbl *next, void *next_ud) {
  *out = NULL;
  char *real = realpath(root, NULL);
  if (real == NULL)
    return -errno;
  struct stat st;
  if (stat(real, &st) < 0 || !S_ISDIR(st.st_mode)) {
    free(real);
    return -ENOTDIR;
  }
  hstatic *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    free(real);
    return -ENOMEM;
  }
  s->root = real;
  s->root_len = strlen(real);
  s->next = next;
  s->next_ud = next_ud;
  *out = s;
  return 0;
}

void hstatic_del(hstatic *s) {
  if (s == NULL)
    return;
  free(s->root);
  free(s);
}

const char *hstatic_root(const hstatic *s) {
  return s->root;
}

const char *hstatic_content_type(const char *name) {
  static const struct {
    const char *ext, *type;
  } types[] = {
      {".html", "text/html; charset=utf-8"},
      {".js", "text/javascript; charset=utf-8"},
      {".mjs", "text/javascript; charset=utf-8"},
      {".css", "text/css; charset=utf-8"},
      {".json", "application/json"},
      {".map", "application/json"},
      {".svg", "image/svg+xml"},
      {".png", "image/png"},
      {".ico", "image/x-icon"},
      {".webmanifest", "application/manifest+json"},
      {".woff2", "font/woff2"},
      {".txt", "text/plain; charset=utf-8"},
  };
  const char *dot = strrchr(name, '.');
  const char *slash = strrchr(name, '/');
  if (dot != NULL && (slash == NULL || dot > slash))
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
      if (strcasecmp(dot, types[i].ext) == 0)
        return types[i].type;
  return "application/octet-stream";
}

/* 1 if the file name carries an esbuild content hash: "-" and 8 of
 * [A-Z0-9] right before the extension. */
static int is_hashed(const char *name) {
  const char *base = strrchr(name, '/');
  base = base ? base + 1 : name;
  const char *dot = strchr(base, '.');
  if (dot == NULL || dot - base < 10 || dot[-9] != '-')
    return 0;
  for (const char *p = dot - 8; p < dot; p++)
    if (!((*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')))
      return 0;
  return 1;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Percent-decodes in into out (cap bytes). Returns 0, or -1 for a bad
 * escape, an encoded NUL or a result that does not fit. */
static int pct_decode(const char *in, char *out, size_t cap) {
  size_t n = 0;
  for (const char *p = in; *p; p++) {
    char c = *p;
    if (c == '%') {
      int hi = hexval(p[1]), lo = hi < 0 ? -1 : hexval(p[2]);
      if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
        return -1;
      c = (char)(hi * 16 + lo);
      p += 2;
    }
    if (n + 1 >= cap)
      return -1;
    out[n++] = c;
  }
  out[n] = '\0';
  return 0;
}

/* 1 if name (after "/assets/") is segments of [A-Za-z0-9._-] joined by
 * single slashes, none empty, none starting with '.'. */
static int safe_name(const char *name) {
  const char *seg = name;
  for (const char *p = name;; p++) {
    char c = *p;
    if (c == '/' || c == '\0') {
      if (p == seg || seg[0] == '.')
        return 0;
      if (c == '\0')
        return 1;
      seg = p + 1;
      continue;
    }
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
      return 0;
  }
}

static int reply_error(imc_http_reply *reply, int status, const char *code,
                       const char *message, const char *headers) {
  char body[256];
  int n = snprintf(body, sizeof(body),
                   "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}\n", code,
                   message);
  imc_http_reply_send(reply, status, "application/json", headers,
                      (const uint8_t *)body, (size_t)n);
  return 1;
}

/*
 * Reads the regular file rel (relative to the root) after checking that
 * its real path is inside the root. Returns 0 with *data (malloc'ed) and
 * *len, -ENOENT when there is no such file (or it is not a regular file
 * inside the root), or another -errno.
 */
static int read_file(const hstatic *s, const char *rel, uint8_t **data,
                     size_t *len) {
  char path[PATH_MAX];
  if (snprintf(path, sizeof(path), "%s/%s", s->root, rel) >= (int)sizeof(path))
    return -ENOENT;
  char *real = realpath(path, NULL);
  if (real == NULL)
    return errno == ENOMEM ? -ENOMEM : -ENOENT;
  int inside =
      strncmp(real, s->root, s->root_len) == 0 && real[s->root_len] == '/';
  int fd = inside ? open(real, O_RDONLY | O_CLOEXEC | O_NOFOLLOW) : -1;
  free(real);
  if (fd < 0)
    return -ENOENT;
  struct stat st;
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
      (uint64_t)st.st_size > HSTATIC_FILE_MAX) {
    close(fd);
    return -ENOENT;
  }
  size_t size = (size_t)st.st_size;
  uint8_t *buf = malloc(size ? size : 1);
  if (buf == NULL) {
    close(fd);
    return -ENOMEM;
  }
  size_t got = 0;
  while (got < size) {
    ssize_t r = read(fd, buf + got, size - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0) {
      int err = r < 0 ? errno : EIO;
      free(buf);
      close(fd);
      return -err;
    }
    got += (size_t)r;
  }
  close(fd);
  *data = buf;
  *len = size;
  return 0;
}

static int handle(void *ud, const imc_http_request *req,
                  imc_http_reply *reply) {
  hstatic *s = ud;
  int is_root = strcmp(req->path, "/") == 0;
  int is_asset = strncmp(req->path, ASSETS, sizeof(ASSETS) - 1) == 0;
  if (!is_root && !is_asset)
    return s->next ? s->next->handle(s->next_ud, req, reply) : 0;
  /* HEAD comes as GET: the gateway drops the body (RFC 9110 9.3.2). */
  if (strcmp(req->method, "GET") != 0)
    return reply_error(reply, 405, "METHOD_NOT_ALLOWED", "use GET or HEAD",
                       "Allow: GET, HEAD\r\n");

  char name[1024];
  const char *rel = "index.html";
  if (is_asset) {
    if (pct_decode(req->path, name, sizeof(name)) < 0 ||
        strncmp(name, ASSETS, sizeof(ASSETS) - 1) != 0 ||
        !safe_name(name + sizeof(ASSETS) - 1))
      return reply_error(reply, 400, "BAD_REQUEST", "not a file name", NULL);
    rel = name + 1; /* "assets/..." */
  }

  uint8_t *data = NULL;
  size_t len = 0;
  int rv = read_file(s, rel, &data, &len);
  if (rv == -ENOENT)
    return reply_error(reply, 404, "NOT_FOUND", "no such file", NULL);
  if (rv < 0)
    return reply_error(reply, 500, "INTERNAL", "cannot read the file", NULL);
  const char *headers = is_hashed(rel) ? HEADERS_COMMON CACHE_IMMUTABLE
                                       : HEADERS_COMMON CACHE_REVALIDATE;
  imc_http_reply_send(reply, 200, hstatic_content_type(rel), headers, data,
                      len);
  free(data);
  return 1;
}

static const imc_http_handler_vtbl vtbl = {sizeof(imc_http_handler_vtbl),
                                           handle};

const imc_http_handler_vtbl *hstatic_vtbl(void) {
  return &vtbl;
}
