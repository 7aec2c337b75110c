/*
 * Host file helpers: what the library leaves to its hosts (it reads no
 * files). Errors are negative errno values.
 */
#ifndef IMC_HOST_FILES_H
#define IMC_HOST_FILES_H

#include <stddef.h>
#include <stdint.h>

/* The largest secret hfile_create_secret makes, in random bytes. */
#define HFILE_SECRET_MAX 64

/*
 * Reads a whole (small, up to 1 MiB) file into a NUL-terminated malloc'ed
 * buffer. It grows by copying and wiping, so a secret read with it leaves
 * no stray copies behind; the caller wipes the result. Returns 0 or a
 * negative errno.
 */
int imchatd_read_file(const char *path, char **out, size_t *len);

/* mkdir -p, with mode 0700 for what it creates. Returns 0 or -errno. */
int hfile_make_dirs(const char *dir);

/*
 * Creates path (mode 0600) holding nbytes (1..HFILE_SECRET_MAX) fresh
 * random bytes as hex and a newline. The text is written to a temporary
 * file and linked into place, so a concurrent start (or a crash) never
 * leaves a partial file, and an existing file is never replaced. Returns
 * 0, -EEXIST (someone else's file is there: read it) or another -errno.
 */
int hfile_create_secret(const char *path, size_t nbytes);

#endif
