/*
 * imchat-bench: what the parent and its worker processes share.
 *
 * The parent parses the flags, prepares the server (group membership),
 * forks the workers, each with its own slice of the connections and its
 * own epoll loop, starts them together, samples the servers' /proc
 * entries while they run, and merges what they report into one JSON
 * document.
 */
#ifndef IMC_BENCH_BENCH_H
#define IMC_BENCH_BENCH_H

#include "histogram.h"
#include "servers.h"

#include <stddef.h>
#include <stdint.h>

enum bench_target { T_IMCHAT, T_MQTT_TCP, T_MQTT_WS };
enum bench_scenario { S_IDLE, S_PAIRS, S_GROUP, S_OFFLINE };
enum bench_mode { M_OPEN, M_CLOSED };

/* The histograms every worker keeps (all in nanoseconds). */
enum {
  H_DELIVER, /* intended send → Deliver / PUBLISH at the receiver */
  H_ACK,     /* intended send → SendAck / PUBACK at the sender */
  H_STATUS,  /* intended send → DeliveryStatus at the sender (imchat) */
  H_LAST,    /* group: intended send → the last member's delivery */
  H_CONNECT, /* connect() → authenticated (Welcome / CONNACK, SUBACK) */
  H_COUNT
};

#define BENCH_MAX_SECONDS 3600
#define BENCH_MAX_WORKERS 64

typedef struct bench_opts {
  int target, scenario, mode;
  const char *host;
  int port;                   /* ports[0]: the admin and offline HTTP API */
  int ports[BENCH_MAX_PORTS]; /* connection i goes to ports[i % n_ports] */
  int n_ports;
  const char *ws_path;
  int connections; /* idle, pairs: sockets; offline: senders */
  int members;     /* group */
  double rate;     /* open loop: messages per second, all senders */
  int inflight;    /* closed loop: per pair / sender */
  int body_size;
  double duration_s, connect_timeout_s, drain_s;
  int workers;
  int src_addrs;
  int concurrency; /* connects in progress per worker */
  double ping_interval_s;
  uint8_t *secret;
  size_t secret_len;
  const char *admin_token;
  int server_pids[BENCH_MAX_PIDS]; /* sampled; RSS and CPU summed */
  int n_server_pids;
  const char *json_path, *csv_dir, *label;
  char prefix[32];   /* user ids: PREFIX + role letter + index */
  char group_id[64]; /* group */
  int fetch_limit;   /* offline: page size */
} bench_opts;

/* What one worker reports, fixed size (sent over a pipe as bytes). */
typedef struct bench_result {
  uint64_t conns_ok, conns_failed, closed, error_frames, rate_limited,
      decode_errors, protocol_errors;
  uint64_t sent, delivered, delivered_in_run, send_acks, statuses, stored,
      self_delivered;
  uint64_t fetched, fetch_pages, fetch_errors;
  uint64_t fetch_ns, store_ns, connect_ns;
  double cpu_s;
  uint64_t group_msgs; /* group: length of the per-message arrays below */
  uint64_t tl_sent[BENCH_MAX_SECONDS], tl_delivered[BENCH_MAX_SECONDS];
  bhist h[H_COUNT];
} bench_result;

/* Parent ↔ worker control messages. */
enum { CTL_READY = 1, CTL_GO, CTL_SENT, CTL_TOTAL, CTL_RESULT };
typedef struct bench_ctl {
  uint32_t type;
  uint32_t pad;
  uint64_t a, b, c; /* READY: ok, failed; GO: t0, t_end; SENT/TOTAL: n */
} bench_ctl;

/* One worker's share: connections [first, first + count) of the run. */
typedef struct bench_slice {
  int index;
  int first, count;
} bench_slice;

/* Monotonic clock in nanoseconds. */
uint64_t bench_now_ns(void);

/*
 * Runs worker w: connects its slice, talks to the parent over ctl_in /
 * ctl_out and writes its bench_result (then, for the group scenario,
 * group_msgs each of intended[], last[] and count[]) to ctl_out. Returns
 * the exit status.
 */
int bench_worker_run(const bench_opts *o, const bench_slice *s, int ctl_in,
                     int ctl_out);

/* Reads or writes exactly n bytes; -1 on error or EOF. */
int bench_read_full(int fd, void *p, size_t n, int timeout_ms);
int bench_write_full(int fd, const void *p, size_t n);

/* User id of role r ('u' socket user, 'm' member, 's' sender, 'o'
 * offline recipient) with index i. */
void bench_user(const bench_opts *o, char r, int i, char *out, size_t cap);

/*
 * A blocking HTTP/1.1 request to the server (Connection: close). headers
 * is extra header lines ("Name: v\r\n"...), may be NULL. On success sets
 * *status and the body (malloc'd, caller frees; NULL when empty) and
 * returns 0; -1 on a network error or timeout.
 */
int bench_http(const bench_opts *o, const char *method, const char *path,
               const char *headers, int *status, uint8_t **body,
               size_t *body_len, int timeout_ms);

#endif
