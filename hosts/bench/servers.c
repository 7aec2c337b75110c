/* The ports and processes of the servers of a run (see servers.h). */
#include "servers.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int bench_parse_ints(const char *s, long lo, long hi, int *out, int *n,
                     int cap) {
  int k = *n;
  if (s == NULL)
    return -1;
  for (const char *p = s;;) {
    char *end;
    if (!isdigit((unsigned char)*p))
      return -1; /* empty item, sign, space */
    errno = 0;
    long v = strtol(p, &end, 10);
    if (errno || v < lo || v > hi || (*end != ',' && *end != '\0') || k >= cap)
      return -1;
    out[k++] = (int)v;
    if (*end == '\0')
      break;
    p = end + 1;
  }
  *n = k;
  return 0;
}

int bench_conn_port(const int *ports, int n, int i) {
  return ports[(unsigned)i % (unsigned)n];
}

int bench_proc_sample(int pid, long *rss_kb, double *cpu_s) {
  char path[64], buf[4096];
  snprintf(path, sizeof(path), "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f)
    return -1;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')'); /* comm may hold spaces */
  if (!p)
    return -1;
  unsigned long ut = 0, st = 0;
  long rss = 0;
  /* Fields after comm: 3 state ... 14 utime 15 stime ... 24 rss. */
  if (sscanf(p + 2,
             "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d "
             "%*d %*d %*d %*d %*u %*u %ld",
             &ut, &st, &rss) != 3)
    return -1;
  long tck = sysconf(_SC_CLK_TCK), pg = sysconf(_SC_PAGESIZE);
  *cpu_s = (double)(ut + st) / (double)tck;
  *rss_kb = rss * (pg / 1024);
  return 0;
}
