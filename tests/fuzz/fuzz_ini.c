/* libFuzzer target: the hosts' --config file (INI, libinih) through
 * imchatd_config_load, as imchatd, im-gateway or im-service (the first
 * byte picks the role): every key's value parser and the checks made
 * after the file and the flags are read. */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The file the loader reads, made once and rewritten per input (in
 * memory: a disk file would make the target I/O-bound). */
static char path[] = "/dev/shm/imchat-fuzz-ini.XXXXXX";
static int fd = -1;

static void remove_file(void) {
  unlink(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0)
    return 0;
  if (fd < 0) {
    if ((fd = mkstemp(path)) < 0)
      abort();
    atexit(remove_file);
  }
  imchatd_role role = (imchatd_role)(data[0] % 3);
  if (ftruncate(fd, 0) != 0 ||
      pwrite(fd, data + 1, size - 1, 0) != (ssize_t)(size - 1))
    abort();

  char prog[] = "imchatd", flag[] = "--config";
  char *argv[] = {prog, flag, path, NULL};
  imchatd_config cfg;
  char err[512] = "";
  int rv = imchatd_config_load(&cfg, role, 3, argv, err, sizeof(err));
  /* Refused files always say why, in one line. */
  if (rv != -1 &&
      (rv != IMCHATD_EXIT_USAGE || err[0] == '\0' || strchr(err, '\n') != NULL))
    abort();
  imchatd_config_free(&cfg);
  return 0;
}
