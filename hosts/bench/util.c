/*
 * Small helpers of imchat-bench: whole reads and writes on pipes, user
 * ids, and a blocking HTTP/1.1 client for the admin and offline APIs.
 */
#include "bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int bench_read_full(int fd, void *p, size_t n, int timeout_ms) {
  uint8_t *b = p;
  while (n) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int r = poll(&pfd, 1, timeout_ms);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return -1;
    ssize_t k = read(fd, b, n);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      return -1;
    b += k;
    n -= (size_t)k;
  }
  return 0;
}

int bench_write_full(int fd, const void *p, size_t n) {
  const uint8_t *b = p;
  while (n) {
    ssize_t k = write(fd, b, n);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      return -1;
    b += k;
    n -= (size_t)k;
  }
  return 0;
}

void bench_user(const bench_opts *o, char r, int i, char *out, size_t cap) {
  snprintf(out, cap, "%s%c%d", o->prefix, r, i);
}

int bench_http(const bench_opts *o, const char *method, const char *path,
               const char *headers, int *status, uint8_t **body,
               size_t *body_len, int timeout_ms) {
  *body = NULL;
  *body_len = 0;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port = htons((uint16_t)o->port)};
  char *req = NULL, *resp = NULL;
  size_t len = 0, cap = 0;
  int rv = -1;
  if (inet_pton(AF_INET, o->host, &sa.sin_addr) != 1 ||
      connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
    goto out;
  int n = asprintf(&req,
                   "%s %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n"
                   "Content-Length: 0\r\n%s\r\n",
                   method, path, o->host, o->port, headers ? headers : "");
  if (n < 0) {
    req = NULL;
    goto out;
  }
  if (bench_write_full(fd, req, (size_t)n) < 0)
    goto out;
  for (;;) {
    if (len + 65536 > cap) {
      cap = cap ? cap * 2 : 131072;
      char *p = realloc(resp, cap + 1);
      if (!p)
        goto out;
      resp = p;
    }
    ssize_t k = read(fd, resp + len, cap - len);
    if (k < 0 && errno == EINTR)
      continue;
    if (k < 0)
      goto out;
    if (k == 0)
      break;
    len += (size_t)k;
    /* Stop at Content-Length: the server may keep the socket open. */
    resp[len] = 0;
    char *end = strstr(resp, "\r\n\r\n");
    if (end) {
      char *cl = strcasestr(resp, "\r\ncontent-length:");
      if (cl && cl < end &&
          len >= (size_t)(end + 4 - resp) + strtoull(cl + 17, NULL, 10))
        break;
    }
  }
  if (!resp || len < 12 || strncmp(resp, "HTTP/1.", 7) != 0)
    goto out;
  resp[len] = 0;
  *status = atoi(resp + 9);
  char *end = strstr(resp, "\r\n\r\n");
  if (!end)
    goto out;
  size_t off = (size_t)(end + 4 - resp);
  if (len > off) {
    *body = malloc(len - off);
    if (!*body)
      goto out;
    memcpy(*body, resp + off, len - off);
    *body_len = len - off;
  }
  rv = 0;
out:
  free(req);
  free(resp);
  close(fd);
  return rv;
}
