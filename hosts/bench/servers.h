/*
 * The servers one imchat-bench run talks to and measures: the ports its
 * connections spread over (--port, several for the gateways of a
 * cluster) and the processes whose RSS and CPU it samples (--server-pid).
 */
#ifndef IMC_BENCH_SERVERS_H
#define IMC_BENCH_SERVERS_H

#define BENCH_MAX_PORTS 32
#define BENCH_MAX_PIDS 32

/*
 * Appends the integers of the comma-separated list s ("8080" or
 * "8080,8081,...") to out, where *n are already, at most cap in all.
 * Returns 0, or -1 (*n unchanged) when an item is empty, not a decimal
 * integer, outside [lo, hi], or when they would exceed cap.
 */
int bench_parse_ints(const char *s, long lo, long hi, int *out, int *n,
                     int cap);

/*
 * The port connection i of the run (0-based, over all workers) goes to:
 * ports[i % n]. Consecutive connections go to different ports whenever
 * n > 1, so the two ends of a pair (2j, 2j + 1) are on different servers,
 * and every port gets n/total of a group's members, give or take one.
 */
int bench_conn_port(const int *ports, int n, int i);

/*
 * Reads /proc/PID/stat: the resident set (KiB) and the CPU time so far
 * (user + system, seconds). Returns 0, or -1 when the process is gone or
 * the file is unreadable.
 */
int bench_proc_sample(int pid, long *rss_kb, double *cpu_s);

#endif
