/*
 * imchat-bench: a load generator for imchat (WebSocket + protobuf, the
 * pinned client protocol) and, for comparison, MQTT 3.1.1 brokers (over
 * TCP or WebSocket). See --help.
 *
 * The parent forks the workers (one process holds at most ~20K sockets
 * here), starts them together once all are connected, samples the
 * servers' RSS and CPU from /proc/PID while they run (one server, or the
 * gateways of a cluster the connections are spread over), merges their
 * histograms and counters and writes one JSON document (and CSV series).
 */
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_SAMPLES 20000

static const char usage[] =
    "usage: imchat-bench --port PORT[,PORT...] [OPTIONS]\n"
    "\n"
    "Opens many client connections to an imchat server (or an MQTT broker),\n"
    "drives one scenario for a bounded time and prints one JSON document.\n"
    "\n"
    "target\n"
    "  --target T             imchat (default), mqtt-tcp or mqtt-ws\n"
    "  --host IP              server address (default 127.0.0.1)\n"
    "  --port PORT[,PORT...]  server port (required); with several (a list\n"
    "                         or the flag repeated), connection i goes to\n"
    "                         the (i mod N)-th: the two ends of a pair and\n"
    "                         a group's members are spread over them; the\n"
    "                         admin and offline API use the first\n"
    "  --ws-path PATH         WebSocket path (default /ws for imchat, /mqtt)\n"
    "  --jwt-secret S         imchat: HS256 secret to sign user tokens with\n"
    "  --jwt-secret-file F    imchat: read the secret from F\n"
    "  --admin-token T        imchat group: bearer token of the admin API\n"
    "  --server-pid PID[,PID...]\n"
    "                         sample these processes' RSS and CPU\n"
    "                         (/proc/PID): summed under \"server\", each one\n"
    "                         under \"server_procs\" when several (a list or\n"
    "                         the flag repeated)\n"
    "\n"
    "scenario\n"
    "  --scenario S           idle, pairs (default), group or offline\n"
    "                           idle: hold N authenticated connections;\n"
    "                             reports server RSS per connection\n"
    "                           pairs: N connections in N/2 pairs, 1:1\n"
    "                             messages; send->deliver latency\n"
    "                           group: one group of M members (member 0\n"
    "                             sends at --rate); per-delivery latency,\n"
    "                             last member's latency, SendAck latency\n"
    "                           offline: N senders message N users that\n"
    "                             are offline, who then fetch GET /offline\n"
    "                             (imchat only); stored/s and fetched/s\n"
    "  --connections N        sockets (idle, pairs) or senders (offline);\n"
    "                         default 100\n"
    "  --members M            group size (default 100)\n"
    "  --group-id G           group id (default PREFIXg)\n"
    "  --mode M               open (a fixed total --rate; latency from the\n"
    "                         intended send time) or closed (--inflight\n"
    "                         messages in flight per pair or sender);\n"
    "                         default closed for pairs and offline, open\n"
    "                         for group (group is always open loop)\n"
    "  --rate R               open loop: messages per second in total\n"
    "                         (default 1000)\n"
    "  --inflight N           closed loop: messages in flight (default 1)\n"
    "  --body-size B          message body bytes, at least 16 (default 64)\n"
    "  --fetch-limit N        offline: page size of GET /offline (1000)\n"
    "\n"
    "bounds\n"
    "  --duration S           measured time in seconds (default 10)\n"
    "  --connect-timeout S    time allowed to connect everything (30)\n"
    "  --drain S              after the run, how long to wait for messages\n"
    "                         in flight (default 5)\n"
    "  --workers W            worker processes (default 2; at least one per\n"
    "                         15000 connections)\n"
    "  --concurrency N        connects in progress per worker (default 256)\n"
    "  --src-addrs N          bind client sockets to 127.0.0.1..127.0.0.N\n"
    "                         round robin (default 1: no bind)\n"
    "  --ping-interval S      Ping / PINGREQ after S quiet seconds (20)\n"
    "  --user-prefix P        user ids are P + role + index (default\n"
    "                         b<pid>, so runs do not collide)\n"
    "\n"
    "output\n"
    "  --json FILE            write the JSON there instead of stdout\n"
    "  --csv-dir DIR          write LABEL-latency.csv and LABEL-timeline.csv\n"
    "  --label L              name of the run (default TARGET-SCENARIO)\n"
    "  --help                 this text\n"
    "\n"
    "Latency percentiles come from a log-linear histogram accurate to 0.1 %%\n"
    "(3 significant digits). Exit status: 0 done (see \"errors\" in the\n"
    "JSON), 1 failure, 2 bad options.\n";

enum {
  O_TARGET = 256,
  O_HOST,
  O_PORT,
  O_WS_PATH,
  O_SECRET,
  O_SECRET_FILE,
  O_ADMIN,
  O_PID,
  O_SCENARIO,
  O_CONNS,
  O_MEMBERS,
  O_GROUP,
  O_MODE,
  O_RATE,
  O_INFLIGHT,
  O_BODY,
  O_FETCH,
  O_DURATION,
  O_CTIMEOUT,
  O_DRAIN,
  O_WORKERS,
  O_CONC,
  O_SRC,
  O_PING,
  O_PREFIX,
  O_JSON,
  O_CSV,
  O_LABEL,
  O_HELP
};

static const struct option longopts[] = {
    {"target", required_argument, NULL, O_TARGET},
    {"host", required_argument, NULL, O_HOST},
    {"port", required_argument, NULL, O_PORT},
    {"ws-path", required_argument, NULL, O_WS_PATH},
    {"jwt-secret", required_argument, NULL, O_SECRET},
    {"jwt-secret-file", required_argument, NULL, O_SECRET_FILE},
    {"admin-token", required_argument, NULL, O_ADMIN},
    {"server-pid", required_argument, NULL, O_PID},
    {"scenario", required_argument, NULL, O_SCENARIO},
    {"connections", required_argument, NULL, O_CONNS},
    {"members", required_argument, NULL, O_MEMBERS},
    {"group-id", required_argument, NULL, O_GROUP},
    {"mode", required_argument, NULL, O_MODE},
    {"rate", required_argument, NULL, O_RATE},
    {"inflight", required_argument, NULL, O_INFLIGHT},
    {"body-size", required_argument, NULL, O_BODY},
    {"fetch-limit", required_argument, NULL, O_FETCH},
    {"duration", required_argument, NULL, O_DURATION},
    {"connect-timeout", required_argument, NULL, O_CTIMEOUT},
    {"drain", required_argument, NULL, O_DRAIN},
    {"workers", required_argument, NULL, O_WORKERS},
    {"concurrency", required_argument, NULL, O_CONC},
    {"src-addrs", required_argument, NULL, O_SRC},
    {"ping-interval", required_argument, NULL, O_PING},
    {"user-prefix", required_argument, NULL, O_PREFIX},
    {"json", required_argument, NULL, O_JSON},
    {"csv-dir", required_argument, NULL, O_CSV},
    {"label", required_argument, NULL, O_LABEL},
    {"help", no_argument, NULL, O_HELP},
    {NULL, 0, NULL, 0}};

static const char *const target_names[] = {"imchat", "mqtt-tcp", "mqtt-ws"};
static const char *const scenario_names[] = {"idle", "pairs", "group",
                                             "offline"};
static const char *const hist_names[] = {"deliver", "send_ack", "status",
                                         "last_member", "connect"};

static int bad(const char *flag, const char *v) {
  fprintf(stderr, "imchat-bench: %s: bad value '%s' (see --help)\n", flag, v);
  return 2;
}

static int pick(const char *v, const char *const *names, int n) {
  for (int i = 0; i < n; i++)
    if (strcmp(v, names[i]) == 0)
      return i;
  return -1;
}

static int num(const char *v, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (errno || end == v || *end || !(x >= lo && x <= hi))
    return -1;
  *out = x;
  return 0;
}

static int read_secret(const char *path, bench_opts *o) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return -1;
  uint8_t buf[4096];
  size_t n = fread(buf, 1, sizeof(buf), f);
  fclose(f);
  while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
    n--;
  if (n == 0 || !(o->secret = malloc(n)))
    return -1;
  memcpy(o->secret, buf, n);
  o->secret_len = n;
  return 0;
}

static int parse(int argc, char **argv, bench_opts *o) {
  int opt, mode_set = 0;
  double x;
  o->host = "127.0.0.1";
  o->scenario = S_PAIRS;
  o->connections = 100;
  o->members = 100;
  o->rate = 1000;
  o->inflight = 1;
  o->body_size = 64;
  o->duration_s = 10;
  o->connect_timeout_s = 30;
  o->drain_s = 5;
  o->workers = 2;
  o->src_addrs = 1;
  o->concurrency = 256;
  o->ping_interval_s = 20;
  o->fetch_limit = 1000;
  snprintf(o->prefix, sizeof(o->prefix), "b%d", (int)getpid());
  while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    const char *v = optarg;
    switch (opt) {
    case O_TARGET:
      if ((o->target = pick(v, target_names, 3)) < 0)
        return bad("--target", v);
      break;
    case O_HOST:
      o->host = v;
      break;
    case O_PORT:
      if (bench_parse_ints(v, 1, 65535, o->ports, &o->n_ports,
                           BENCH_MAX_PORTS) < 0)
        return bad("--port", v);
      o->port = o->ports[0];
      break;
    case O_WS_PATH:
      o->ws_path = v;
      break;
    case O_SECRET:
      free(o->secret);
      o->secret_len = strlen(v);
      if (!o->secret_len || !(o->secret = malloc(o->secret_len)))
        return bad("--jwt-secret", v);
      memcpy(o->secret, v, o->secret_len);
      break;
    case O_SECRET_FILE:
      free(o->secret);
      o->secret = NULL;
      if (read_secret(v, o) < 0)
        return bad("--jwt-secret-file", v);
      break;
    case O_ADMIN:
      o->admin_token = v;
      break;
    case O_PID:
      if (bench_parse_ints(v, 1, 1 << 30, o->server_pids, &o->n_server_pids,
                           BENCH_MAX_PIDS) < 0)
        return bad("--server-pid", v);
      break;
    case O_SCENARIO:
      if ((o->scenario = pick(v, scenario_names, 4)) < 0)
        return bad("--scenario", v);
      break;
    case O_CONNS:
      if (num(v, 1, 1000000, &x) < 0)
        return bad("--connections", v);
      o->connections = (int)x;
      break;
    case O_MEMBERS:
      if (num(v, 2, 1000000, &x) < 0)
        return bad("--members", v);
      o->members = (int)x;
      break;
    case O_GROUP:
      if (strlen(v) == 0 || strlen(v) >= sizeof(o->group_id))
        return bad("--group-id", v);
      snprintf(o->group_id, sizeof(o->group_id), "%s", v);
      break;
    case O_MODE:
      if (strcmp(v, "open") == 0)
        o->mode = M_OPEN;
      else if (strcmp(v, "closed") == 0)
        o->mode = M_CLOSED;
      else
        return bad("--mode", v);
      mode_set = 1;
      break;
    case O_RATE:
      if (num(v, 0.001, 1e7, &o->rate) < 0)
        return bad("--rate", v);
      break;
    case O_INFLIGHT:
      if (num(v, 1, 1000, &x) < 0)
        return bad("--inflight", v);
      o->inflight = (int)x;
      break;
    case O_BODY:
      if (num(v, 16, 1 << 20, &x) < 0)
        return bad("--body-size", v);
      o->body_size = (int)x;
      break;
    case O_FETCH:
      if (num(v, 1, 1000, &x) < 0)
        return bad("--fetch-limit", v);
      o->fetch_limit = (int)x;
      break;
    case O_DURATION:
      if (num(v, 0.1, BENCH_MAX_SECONDS, &o->duration_s) < 0)
        return bad("--duration", v);
      break;
    case O_CTIMEOUT:
      if (num(v, 0.1, 3600, &o->connect_timeout_s) < 0)
        return bad("--connect-timeout", v);
      break;
    case O_DRAIN:
      if (num(v, 0, 600, &o->drain_s) < 0)
        return bad("--drain", v);
      break;
    case O_WORKERS:
      if (num(v, 1, BENCH_MAX_WORKERS, &x) < 0)
        return bad("--workers", v);
      o->workers = (int)x;
      break;
    case O_CONC:
      if (num(v, 1, 100000, &x) < 0)
        return bad("--concurrency", v);
      o->concurrency = (int)x;
      break;
    case O_SRC:
      if (num(v, 1, 254, &x) < 0)
        return bad("--src-addrs", v);
      o->src_addrs = (int)x;
      break;
    case O_PING:
      if (num(v, 1, 3600, &o->ping_interval_s) < 0)
        return bad("--ping-interval", v);
      break;
    case O_PREFIX:
      if (strlen(v) == 0 || strlen(v) >= 20)
        return bad("--user-prefix", v);
      snprintf(o->prefix, sizeof(o->prefix), "%s", v);
      break;
    case O_JSON:
      o->json_path = v;
      break;
    case O_CSV:
      o->csv_dir = v;
      break;
    case O_LABEL:
      o->label = v;
      break;
    case O_HELP:
      fputs(usage, stdout);
      exit(0);
    default:
      return 2;
    }
  }
  if (optind < argc)
    return bad("argument", argv[optind]);
  if (!o->port) {
    fprintf(stderr, "imchat-bench: --port is required (see --help)\n");
    return 2;
  }
  if (!mode_set)
    o->mode = o->scenario == S_GROUP ? M_OPEN : M_CLOSED;
  if (o->scenario == S_GROUP)
    o->mode = M_OPEN;
  if (o->scenario == S_PAIRS && o->connections % 2)
    o->connections++;
  if (!o->group_id[0])
    snprintf(o->group_id, sizeof(o->group_id), "%sg", o->prefix);
  if (!o->ws_path)
    o->ws_path = o->target == T_IMCHAT ? "/ws" : "/mqtt";
  if (o->target == T_IMCHAT && !o->secret) {
    fprintf(stderr, "imchat-bench: imchat needs --jwt-secret or "
                    "--jwt-secret-file\n");
    return 2;
  }
  if (o->target != T_IMCHAT && o->scenario == S_OFFLINE) {
    fprintf(stderr, "imchat-bench: the offline scenario is imchat only\n");
    return 2;
  }
  if (o->target == T_IMCHAT && o->scenario == S_GROUP && !o->admin_token) {
    fprintf(stderr, "imchat-bench: group needs --admin-token\n");
    return 2;
  }
  int socks = o->scenario == S_GROUP ? o->members : o->connections;
  int minw = (socks + 14999) / 15000;
  if (o->workers < minw)
    o->workers = minw;
  if (o->workers > socks)
    o->workers = socks;
  if (o->scenario == S_PAIRS && o->workers > socks / 2)
    o->workers = socks / 2;
  return 0;
}

/* ------------------------------------------------------------------ */
/* /proc/PID sampling */

typedef struct sample {
  double t; /* s since GO */
  long rss_kb;
  double cpu_s; /* utime + stime so far */
} sample;

/* CPU seconds every CPU of the machine spent busy so far (/proc/stat:
 * user, nice, system, irq, softirq; idle, iowait and steal are not). */
static int machine_busy(double *busy_s) {
  FILE *f = fopen("/proc/stat", "r");
  if (!f)
    return -1;
  unsigned long long us, ni, sy, id, io, irq, sirq;
  int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu", &us, &ni, &sy,
                 &id, &io, &irq, &sirq);
  fclose(f);
  if (n != 7)
    return -1;
  *busy_s = (double)(us + ni + sy + irq + sirq) / (double)sysconf(_SC_CLK_TCK);
  return 0;
}

/* CPU seconds of this process and its workers so far. */
static double generator_cpu(const pid_t *pids, int n) {
  long rss;
  double t = 0, c;
  if (bench_proc_sample((int)getpid(), &rss, &c) == 0)
    t += c;
  for (int i = 0; i < n; i++)
    if (pids[i] > 0 && bench_proc_sample((int)pids[i], &rss, &c) == 0)
      t += c;
  return t;
}

/* ------------------------------------------------------------------ */
/* Group membership through the admin API */

/* Members [first, n) in steps of `step`; 0 when every PUT succeeded. */
static int put_members(const bench_opts *o, int first, int step) {
  char hdr[1024], path[256], user[48];
  snprintf(hdr, sizeof(hdr), "Authorization: Bearer %s\r\n", o->admin_token);
  for (int i = first; i < o->members; i += step) {
    bench_user(o, 'm', i, user, sizeof(user));
    snprintf(path, sizeof(path), "/v1/groups/%s/members/%s", o->group_id, user);
    int status = 0;
    uint8_t *body;
    size_t blen;
    int rv = bench_http(o, "PUT", path, hdr, &status, &body, &blen, 10000);
    free(body);
    if (rv < 0 || status / 100 != 2) {
      fprintf(stderr, "imchat-bench: PUT %s: %s %d\n", path,
              rv < 0 ? "network error" : "status", status);
      return -1;
    }
  }
  return 0;
}

/* The PUTs of a large group run from SETUP_PROCS processes at once, so
 * the server commits many per transaction instead of one per round trip. */
#define SETUP_PROCS 16

static int setup_group(bench_opts *o) {
  if (o->members < 4 * SETUP_PROCS)
    return put_members(o, 0, 1);
  uint64_t t = bench_now_ns();
  pid_t pids[SETUP_PROCS];
  int procs = 0, failed = 0;
  fflush(NULL);
  for (; procs < SETUP_PROCS; procs++) {
    pids[procs] = fork();
    if (pids[procs] < 0) {
      failed = 1;
      break;
    }
    if (pids[procs] == 0)
      _exit(put_members(o, procs, SETUP_PROCS) < 0 ? 1 : 0);
  }
  for (int j = 0; j < procs; j++) {
    int st;
    if (waitpid(pids[j], &st, 0) != pids[j] || !WIFEXITED(st) ||
        WEXITSTATUS(st) != 0)
      failed = 1;
  }
  fprintf(stderr, "imchat-bench: %d members added in %.2f s\n", o->members,
          (double)(bench_now_ns() - t) / 1e9);
  return failed ? -1 : 0;
}

/* ------------------------------------------------------------------ */
/* Output */

static void json_hist(FILE *f, const char *name, const bhist *h, int last) {
  fprintf(f,
          "    \"%s\": {\"count\": %llu, \"mean\": %.1f, \"p50\": %.1f, "
          "\"p90\": %.1f, \"p99\": %.1f, \"p999\": %.1f, \"max\": %.1f}%s\n",
          name, (unsigned long long)h->total, bhist_mean(h) / 1e3,
          bhist_percentile(h, 50) / 1e3, bhist_percentile(h, 90) / 1e3,
          bhist_percentile(h, 99) / 1e3, bhist_percentile(h, 99.9) / 1e3,
          h->total ? (double)h->max / 1e3 : 0.0, last ? "" : ",");
}

typedef struct run {
  bench_result *r; /* merged */
  sample *samples;
  int n_samples;
  long rss_base, rss_connected, rss_max; /* summed over --server-pid */
  /* Each --server-pid's own (the same figures). */
  long p_base[BENCH_MAX_PIDS], p_connected[BENCH_MAX_PIDS],
      p_max[BENCH_MAX_PIDS];
  double p_cpu_run[BENCH_MAX_PIDS];
  double cpu_run_s, wall_run_s, connect_s;
  double busy_run_s, gen_run_s; /* the machine's, the generator's */
  int have_busy;
  uint64_t group_sent, group_complete;
  int workers_failed;
} run;

static void write_csv(const bench_opts *o, const run *u, const char *label) {
  char path[4096];
  mkdir(o->csv_dir, 0755);
  snprintf(path, sizeof(path), "%s/%s-latency.csv", o->csv_dir, label);
  FILE *f = fopen(path, "w");
  if (f) {
    static const double ps[] = {0,  10,   25,   50,    75,     90, 95,
                                99, 99.5, 99.9, 99.99, 99.999, 100};
    fprintf(f, "percentile");
    for (int h = 0; h < H_COUNT; h++)
      fprintf(f, ",%s_us", hist_names[h]);
    fprintf(f, "\n");
    for (size_t i = 0; i < sizeof(ps) / sizeof(ps[0]); i++) {
      fprintf(f, "%g", ps[i]);
      for (int h = 0; h < H_COUNT; h++)
        fprintf(f, ",%.1f", bhist_percentile(&u->r->h[h], ps[i]) / 1e3);
      fprintf(f, "\n");
    }
    fclose(f);
  }
  snprintf(path, sizeof(path), "%s/%s-timeline.csv", o->csv_dir, label);
  f = fopen(path, "w");
  if (f) {
    fprintf(f, "second,sent,delivered\n");
    int secs = (int)(o->duration_s + o->drain_s + 1);
    if (secs > BENCH_MAX_SECONDS)
      secs = BENCH_MAX_SECONDS;
    for (int s = 0; s < secs; s++)
      fprintf(f, "%d,%llu,%llu\n", s, (unsigned long long)u->r->tl_sent[s],
              (unsigned long long)u->r->tl_delivered[s]);
    fclose(f);
  }
  snprintf(path, sizeof(path), "%s/%s-server.csv", o->csv_dir, label);
  f = fopen(path, "w");
  if (f) {
    fprintf(f, "t_s,rss_kb,cpu_pct\n");
    for (int i = 0; i < u->n_samples; i++) {
      double pct = 0;
      if (i > 0 && u->samples[i].t > u->samples[i - 1].t)
        pct = 100.0 * (u->samples[i].cpu_s - u->samples[i - 1].cpu_s) /
              (u->samples[i].t - u->samples[i - 1].t);
      fprintf(f, "%.2f,%ld,%.1f\n", u->samples[i].t, u->samples[i].rss_kb, pct);
    }
    fclose(f);
  }
}

static int write_json(const bench_opts *o, const run *u, const char *label) {
  FILE *f = o->json_path ? fopen(o->json_path, "w") : stdout;
  if (!f) {
    fprintf(stderr, "imchat-bench: --json %s: %s\n", o->json_path,
            strerror(errno));
    return -1;
  }
  const bench_result *r = u->r;
  double d = o->duration_s;
  uint64_t errors = r->conns_failed + r->closed + r->error_frames +
                    r->decode_errors + r->protocol_errors + r->fetch_errors +
                    (uint64_t)u->workers_failed;
  uint64_t expected = 0;
  if (o->scenario == S_PAIRS)
    expected = r->sent;
  else if (o->scenario == S_GROUP)
    expected = u->group_sent * (uint64_t)(o->members - 1);
  else if (o->scenario == S_OFFLINE)
    expected = r->sent;
  int conns = o->scenario == S_GROUP ? o->members : o->connections;
  fprintf(f, "{\n");
  fprintf(f, "  \"tool\": \"imchat-bench\",\n");
  fprintf(f, "  \"label\": \"%s\",\n", label);
  fprintf(f, "  \"target\": \"%s\",\n", target_names[o->target]);
  fprintf(f, "  \"scenario\": \"%s\",\n", scenario_names[o->scenario]);
  fprintf(f, "  \"mode\": \"%s\",\n",
          o->scenario == S_IDLE ? "none"
          : o->mode == M_OPEN   ? "open"
                                : "closed");
  fprintf(f, "  \"connections\": %d,\n", conns);
  if (o->n_ports > 1) {
    fprintf(f, "  \"ports\": [");
    for (int i = 0; i < o->n_ports; i++)
      fprintf(f, "%s%d", i ? ", " : "", o->ports[i]);
    fprintf(f, "],\n");
  }
  fprintf(f, "  \"members\": %d,\n", o->scenario == S_GROUP ? o->members : 0);
  fprintf(f, "  \"workers\": %d,\n", o->workers);
  fprintf(f, "  \"duration_s\": %.3f,\n", d);
  fprintf(f, "  \"rate\": %.3f,\n", o->mode == M_OPEN ? o->rate : 0.0);
  fprintf(f, "  \"inflight\": %d,\n", o->mode == M_CLOSED ? o->inflight : 0);
  fprintf(f, "  \"body_size\": %d,\n", o->body_size);
  fprintf(f,
          "  \"connect\": {\"ok\": %llu, \"failed\": %llu, \"seconds\": "
          "%.3f},\n",
          (unsigned long long)r->conns_ok, (unsigned long long)r->conns_failed,
          u->connect_s);
  fprintf(f, "  \"sent\": %llu,\n", (unsigned long long)r->sent);
  fprintf(f, "  \"delivered\": %llu,\n", (unsigned long long)r->delivered);
  fprintf(f, "  \"expected\": %llu,\n", (unsigned long long)expected);
  fprintf(f, "  \"send_acks\": %llu,\n", (unsigned long long)r->send_acks);
  fprintf(f, "  \"statuses\": %llu,\n", (unsigned long long)r->statuses);
  fprintf(f, "  \"sent_per_s\": %.1f,\n", (double)r->sent / d);
  fprintf(f, "  \"delivered_per_s\": %.1f,\n", (double)r->delivered_in_run / d);
  if (o->scenario == S_GROUP)
    fprintf(f, "  \"group\": {\"messages\": %llu, \"complete\": %llu},\n",
            (unsigned long long)u->group_sent,
            (unsigned long long)u->group_complete);
  if (o->scenario == S_OFFLINE) {
    double fs = r->fetch_ns ? (double)r->fetch_ns / 1e9 : 0;
    fprintf(f,
            "  \"offline\": {\"stored\": %llu, \"stored_per_s\": %.1f, "
            "\"fetched\": %llu, \"pages\": %llu, \"fetch_s\": %.3f, "
            "\"fetched_per_s\": %.1f},\n",
            (unsigned long long)r->stored, (double)r->delivered_in_run / d,
            (unsigned long long)r->fetched, (unsigned long long)r->fetch_pages,
            fs, fs > 0 ? (double)r->fetched / fs : 0.0);
  }
  fprintf(f,
          "  \"errors\": %llu,\n  \"error_detail\": {\"connect_failed\": "
          "%llu, \"closed\": %llu, \"error_frames\": %llu, \"rate_limited\": "
          "%llu, \"decode\": %llu, \"protocol\": %llu, \"fetch\": %llu, "
          "\"workers\": %d},\n",
          (unsigned long long)errors, (unsigned long long)r->conns_failed,
          (unsigned long long)r->closed, (unsigned long long)r->error_frames,
          (unsigned long long)r->rate_limited,
          (unsigned long long)r->decode_errors,
          (unsigned long long)r->protocol_errors,
          (unsigned long long)r->fetch_errors, u->workers_failed);
  fprintf(f, "  \"latency_us\": {\n");
  for (int h = 0; h < H_COUNT; h++)
    json_hist(f, hist_names[h], &r->h[h], h == H_COUNT - 1);
  fprintf(f, "  },\n");
  int np = o->n_server_pids;
  fprintf(f, "  \"server\": {\"pid\": %d, ", np ? o->server_pids[0] : 0);
  if (np > 1) {
    fprintf(f, "\"pids\": [");
    for (int i = 0; i < np; i++)
      fprintf(f, "%s%d", i ? ", " : "", o->server_pids[i]);
    fprintf(f, "], ");
  }
  fprintf(f,
          "\"rss_kb_base\": %ld, \"rss_kb_connected\": %ld, "
          "\"rss_kb_max\": %ld, ",
          u->rss_base, u->rss_connected, u->rss_max);
  double per = r->conns_ok && u->rss_connected > u->rss_base
                   ? (double)(u->rss_connected - u->rss_base) * 1024.0 /
                         (double)r->conns_ok
                   : 0.0;
  fprintf(f,
          "\"rss_bytes_per_conn\": %.0f, \"cpu_s\": %.3f, "
          "\"cpu_pct\": %.1f},\n",
          per, u->cpu_run_s,
          u->wall_run_s > 0 ? 100.0 * u->cpu_run_s / u->wall_run_s : 0.0);
  if (np > 1) {
    fprintf(f, "  \"server_procs\": [\n");
    for (int i = 0; i < np; i++)
      fprintf(f,
              "    {\"pid\": %d, \"rss_kb_base\": %ld, "
              "\"rss_kb_connected\": %ld, \"rss_kb_max\": %ld, "
              "\"cpu_s\": %.3f, \"cpu_pct\": %.1f}%s\n",
              o->server_pids[i], u->p_base[i], u->p_connected[i], u->p_max[i],
              u->p_cpu_run[i],
              u->wall_run_s > 0 ? 100.0 * u->p_cpu_run[i] / u->wall_run_s : 0.0,
              i == np - 1 ? "" : ",");
    fprintf(f, "  ],\n");
  }
  fprintf(f, "  \"client\": {\"cpu_s\": %.3f},\n", r->cpu_s);
  /* What other processes took from the machine during the run: all of
   * its busy time but the server's and the generator's. */
  double others = u->busy_run_s - u->cpu_run_s - u->gen_run_s;
  if (others < 0)
    others = 0;
  if (u->have_busy)
    fprintf(f,
            "  \"machine\": {\"busy_cpu_s\": %.3f, \"generator_cpu_s\": "
            "%.3f, \"others_cpu_s\": %.3f, \"others_pct\": %.1f}\n",
            u->busy_run_s, u->gen_run_s, others,
            u->wall_run_s > 0 ? 100.0 * others / u->wall_run_s : 0.0);
  else
    fprintf(f, "  \"machine\": {}\n");
  fprintf(f, "}\n");
  if (f != stdout)
    fclose(f);
  else
    fflush(f);
  return 0;
}

/* ------------------------------------------------------------------ */

static void merge(bench_result *d, const bench_result *s) {
  uint64_t fetch_ns = d->fetch_ns > s->fetch_ns ? d->fetch_ns : s->fetch_ns;
  uint64_t connect_ns =
      d->connect_ns > s->connect_ns ? d->connect_ns : s->connect_ns;
  uint64_t *dp = &d->conns_ok;
  const uint64_t *sp = &s->conns_ok;
  /* Every counter from conns_ok to connect_ns is a uint64_t. */
  size_t n = (size_t)((&d->connect_ns + 1) - dp);
  for (size_t i = 0; i < n; i++)
    dp[i] += sp[i];
  d->fetch_ns = fetch_ns; /* the workers fetch at the same time */
  d->connect_ns = connect_ns;
  d->group_msgs = s->group_msgs;
  d->cpu_s += s->cpu_s;
  for (int i = 0; i < BENCH_MAX_SECONDS; i++) {
    d->tl_sent[i] += s->tl_sent[i];
    d->tl_delivered[i] += s->tl_delivered[i];
  }
  for (int h = 0; h < H_COUNT; h++)
    bhist_merge(&d->h[h], &s->h[h]);
}

typedef struct wproc {
  pid_t pid;
  int to, from; /* pipes: parent → worker, worker → parent */
  int ready, sent_seen, failed;
  uint64_t sent;
} wproc;

/*
 * Samples every --server-pid: each one's RSS and CPU time in rss[] and
 * cpu[], their sums in *rss_sum and *cpu_sum. -1 when one of them cannot
 * be read (it exited): then nothing is summed.
 */
static int servers_sample(const bench_opts *o, long *rss, double *cpu,
                          long *rss_sum, double *cpu_sum) {
  long rs = 0;
  double cs = 0;
  for (int i = 0; i < o->n_server_pids; i++) {
    if (bench_proc_sample(o->server_pids[i], &rss[i], &cpu[i]) < 0)
      return -1;
    rs += rss[i];
    cs += cpu[i];
  }
  *rss_sum = rs;
  *cpu_sum = cs;
  return 0;
}

static void sample_now(const bench_opts *o, run *u, uint64_t t0) {
  long rss[BENCH_MAX_PIDS], sum;
  double cpu[BENCH_MAX_PIDS], cpu_sum;
  if (!o->n_server_pids || u->n_samples >= MAX_SAMPLES ||
      servers_sample(o, rss, cpu, &sum, &cpu_sum) < 0)
    return;
  sample *s = &u->samples[u->n_samples++];
  uint64_t now = bench_now_ns();
  s->t = now > t0 ? (double)(now - t0) / 1e9 : 0;
  s->rss_kb = sum;
  s->cpu_s = cpu_sum;
  if (sum > u->rss_max)
    u->rss_max = sum;
  for (int i = 0; i < o->n_server_pids; i++)
    if (rss[i] > u->p_max[i])
      u->p_max[i] = rss[i];
}

int main(int argc, char **argv) {
  bench_opts o = {0};
  int rc = parse(argc, argv, &o);
  if (rc) {
    free(o.secret);
    return rc;
  }
  signal(SIGPIPE, SIG_IGN);
  char label[128];
  snprintf(label, sizeof(label), "%s", o.label ? o.label : "");
  if (!o.label)
    snprintf(label, sizeof(label), "%s-%s", target_names[o.target],
             scenario_names[o.scenario]);

  run u = {0};
  u.r = calloc(1, sizeof(bench_result));
  u.samples = calloc(MAX_SAMPLES, sizeof(sample));
  wproc wp[BENCH_MAX_WORKERS] = {0};
  bench_slice sl[BENCH_MAX_WORKERS];
  bench_result *tmp = calloc(1, sizeof(bench_result));
  uint64_t *g_int = NULL, *g_last = NULL, *g_cnt = NULL, *gbuf = NULL;
  uint64_t gmax = 0;
  rc = 1;
  if (!u.r || !u.samples || !tmp)
    goto out;
  for (int h = 0; h < H_COUNT; h++)
    bhist_init(&u.r->h[h]);

  for (int i = 0; i < o.n_server_pids; i++) {
    double cpu0;
    if (bench_proc_sample(o.server_pids[i], &u.p_base[i], &cpu0) < 0) {
      fprintf(stderr, "imchat-bench: --server-pid %d: cannot read /proc\n",
              o.server_pids[i]);
      rc = 2;
      goto out;
    }
    u.rss_base += u.p_base[i];
  }
  if (o.target == T_IMCHAT && o.scenario == S_GROUP && setup_group(&o) < 0)
    goto out;

  /* Slices: pairs never straddle two workers. */
  int total = o.scenario == S_GROUP ? o.members : o.connections;
  int unit = o.scenario == S_PAIRS ? 2 : 1, units = total / unit, first = 0;
  for (int i = 0; i < o.workers; i++) {
    int k = units / o.workers + (i < units % o.workers);
    sl[i] = (bench_slice){i, first, k * unit};
    first += k * unit;
  }
  fflush(NULL);
  uint64_t t_connect = bench_now_ns();
  for (int i = 0; i < o.workers; i++) {
    int a[2], b[2];
    if (pipe2(a, O_CLOEXEC) < 0 || pipe2(b, O_CLOEXEC) < 0)
      goto out;
    pid_t pid = fork();
    if (pid < 0)
      goto out;
    if (pid == 0) {
      close(a[1]);
      close(b[0]);
      for (int j = 0; j < i; j++) {
        close(wp[j].to);
        close(wp[j].from);
      }
      int wrc = bench_worker_run(&o, &sl[i], a[0], b[1]);
      free(u.r);
      free(u.samples);
      free(tmp);
      free(o.secret);
      _exit(wrc);
    }
    close(a[0]);
    close(b[1]);
    wp[i] = (wproc){.pid = pid, .to = a[1], .from = b[0]};
  }

  /* Everyone connected (or given up). */
  int timeout_ms = (int)(o.connect_timeout_s * 1000) + 30000;
  for (int i = 0; i < o.workers; i++) {
    bench_ctl m;
    if (bench_read_full(wp[i].from, &m, sizeof(m), timeout_ms) < 0 ||
        m.type != CTL_READY) {
      wp[i].failed = 1;
      u.workers_failed++;
    }
  }
  u.connect_s = (double)(bench_now_ns() - t_connect) / 1e9;
  fprintf(stderr, "imchat-bench: %s: connected in %.2f s\n", label,
          u.connect_s);

  uint64_t t0 = bench_now_ns() + 50000000u; /* 50 ms to hand out GO */
  uint64_t t_end = t0 + (uint64_t)(o.duration_s * 1e9);
  for (int i = 0; i < o.workers; i++) {
    bench_ctl m = {.type = CTL_GO, .a = t0, .b = t_end};
    if (!wp[i].failed)
      bench_write_full(wp[i].to, &m, sizeof(m));
  }
  double cpu_start = 0, busy_start = 0, p_cpu_start[BENCH_MAX_PIDS] = {0};
  long rss;
  if (o.n_server_pids &&
      servers_sample(&o, u.p_connected, p_cpu_start, &rss, &cpu_start) == 0)
    u.rss_connected = rss;
  pid_t wpids[BENCH_MAX_WORKERS];
  for (int i = 0; i < o.workers; i++)
    wpids[i] = wp[i].pid;
  double gen_start = generator_cpu(wpids, o.workers);
  int have_busy = o.n_server_pids && machine_busy(&busy_start) == 0;
  sample_now(&o, &u, t0);

  /* Run: sample the server until every worker reports SENT. */
  int waiting = 0;
  for (int i = 0; i < o.workers; i++)
    waiting += !wp[i].failed;
  uint64_t deadline = t_end + 30000000000ull;
  while (waiting > 0 && bench_now_ns() < deadline) {
    struct pollfd pf[BENCH_MAX_WORKERS];
    for (int i = 0; i < o.workers; i++)
      pf[i] = (struct pollfd){
          .fd = (wp[i].failed || wp[i].sent_seen) ? -1 : wp[i].from,
          .events = POLLIN};
    int n = poll(pf, (nfds_t)o.workers, 250);
    if (bench_now_ns() < t_end + 100000000u)
      sample_now(&o, &u, t0);
    if (n <= 0)
      continue;
    for (int i = 0; i < o.workers; i++) {
      if (!(pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
        continue;
      bench_ctl m;
      if (bench_read_full(wp[i].from, &m, sizeof(m), 1000) < 0 ||
          m.type != CTL_SENT) {
        wp[i].failed = 1;
        u.workers_failed++;
      } else {
        wp[i].sent_seen = 1;
        wp[i].sent = m.a;
      }
      waiting--;
    }
  }
  double cpu_end = cpu_start, busy_end, p_cpu_end[BENCH_MAX_PIDS];
  long p_rss_end[BENCH_MAX_PIDS];
  if (have_busy && machine_busy(&busy_end) == 0) {
    u.have_busy = 1;
    u.busy_run_s = busy_end - busy_start;
    u.gen_run_s = generator_cpu(wpids, o.workers) - gen_start;
  }
  if (o.n_server_pids &&
      servers_sample(&o, p_rss_end, p_cpu_end, &rss, &cpu_end) == 0) {
    u.cpu_run_s = cpu_end - cpu_start;
    if (o.scenario == S_IDLE)
      u.rss_connected = 0;
    for (int i = 0; i < o.n_server_pids; i++) {
      u.p_cpu_run[i] = p_cpu_end[i] - p_cpu_start[i];
      /* Idle: each one's larger of the two, after the hold or before. */
      if (o.scenario == S_IDLE) {
        if (p_rss_end[i] > u.p_connected[i])
          u.p_connected[i] = p_rss_end[i];
        u.rss_connected += u.p_connected[i];
      }
    }
  }
  u.wall_run_s = o.duration_s;
  uint64_t total_sent = 0;
  for (int i = 0; i < o.workers; i++)
    total_sent += wp[i].sent;
  for (int i = 0; i < o.workers; i++) {
    bench_ctl m = {.type = CTL_TOTAL, .a = total_sent};
    if (!wp[i].failed)
      bench_write_full(wp[i].to, &m, sizeof(m));
  }

  /* Results. */
  int res_timeout = (int)(o.drain_s * 1000) + 600000;
  for (int i = 0; i < o.workers; i++) {
    bench_ctl m;
    if (wp[i].failed)
      continue;
    if (bench_read_full(wp[i].from, &m, sizeof(m), res_timeout) < 0 ||
        m.type != CTL_RESULT ||
        bench_read_full(wp[i].from, tmp, sizeof(*tmp), 10000) < 0) {
      wp[i].failed = 1;
      u.workers_failed++;
      continue;
    }
    merge(u.r, tmp);
    if (o.scenario == S_GROUP && tmp->group_msgs) {
      gmax = tmp->group_msgs;
      if (!g_int) {
        g_int = calloc(gmax, 8);
        g_last = calloc(gmax, 8);
        g_cnt = calloc(gmax, 8);
        gbuf = calloc(gmax, 8);
        if (!g_int || !g_last || !g_cnt || !gbuf)
          goto out;
      }
      if (bench_read_full(wp[i].from, gbuf, gmax * 8, 10000) < 0)
        goto wfail;
      for (uint64_t k = 0; k < gmax; k++)
        g_int[k] |= gbuf[k];
      if (bench_read_full(wp[i].from, gbuf, gmax * 8, 10000) < 0)
        goto wfail;
      for (uint64_t k = 0; k < gmax; k++)
        if (gbuf[k] > g_last[k])
          g_last[k] = gbuf[k];
      if (bench_read_full(wp[i].from, gbuf, gmax * 8, 10000) < 0)
        goto wfail;
      for (uint64_t k = 0; k < gmax; k++)
        g_cnt[k] += gbuf[k];
      continue;
    wfail:
      wp[i].failed = 1;
      u.workers_failed++;
    }
  }
  if (o.scenario == S_GROUP) {
    u.group_sent = total_sent;
    for (uint64_t k = 0; k < gmax && k < total_sent; k++) {
      if (g_int[k] && g_cnt[k] >= (uint64_t)(o.members - 1)) {
        u.group_complete++;
        bhist_record(&u.r->h[H_LAST],
                     g_last[k] > g_int[k] ? g_last[k] - g_int[k] : 0);
      }
    }
  }
  for (int i = 0; i < o.workers; i++) {
    int st;
    close(wp[i].to);
    close(wp[i].from);
    wp[i].to = wp[i].from = -1;
    if (waitpid(wp[i].pid, &st, 0) == wp[i].pid &&
        (!WIFEXITED(st) || WEXITSTATUS(st) != 0) && !wp[i].failed)
      u.workers_failed++;
    wp[i].pid = 0;
  }
  if (o.csv_dir)
    write_csv(&o, &u, label);
  rc = write_json(&o, &u, label) < 0 ? 1 : 0;
out:
  for (int i = 0; i < o.workers; i++) {
    if (wp[i].pid > 0) {
      kill(wp[i].pid, SIGTERM);
      waitpid(wp[i].pid, NULL, 0);
    }
  }
  free(g_int);
  free(g_last);
  free(g_cnt);
  free(gbuf);
  free(tmp);
  free(u.r);
  free(u.samples);
  free(o.secret);
  return rc;
}
