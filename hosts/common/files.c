/* Whole-file reads and secret files for the hosts (see files.h). */
#include "files.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FILE_BYTES (1 << 20)

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

int hfile_make_dirs(const char *dir) {
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

int hfile_create_secret(const char *path, size_t nbytes) {
  uint8_t raw[HFILE_SECRET_MAX];
  if (nbytes == 0 || nbytes > sizeof(raw))
    return -EINVAL;
  size_t got = 0;
  while (got < nbytes) {
    ssize_t r = getrandom(raw + got, nbytes - got, 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return -errno;
    got += (size_t)r;
  }
  char hex[2 * HFILE_SECRET_MAX + 2];
  for (size_t i = 0; i < nbytes; i++)
    snprintf(hex + 2 * i, 3, "%02x", raw[i]);
  hex[2 * nbytes] = '\n';
  hex[2 * nbytes + 1] = '\0';

  char tmp[4096];
  if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >=
      sizeof(tmp))
    return -ENAMETOOLONG;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    return -errno;
  int rv = 0;
  size_t len = 2 * nbytes + 1;
  if (write(fd, hex, len) != (ssize_t)len || fsync(fd) < 0)
    rv = -(errno ? errno : EIO);
  if (close(fd) < 0 && rv == 0)
    rv = -errno;
  if (rv == 0 && link(tmp, path) < 0)
    rv = -errno;
  unlink(tmp);
  return rv;
}
