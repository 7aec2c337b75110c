/*
 * The epoll adapter of the hosts: attaches an imc_gateway to real sockets.
 *
 * The loop owns the listening sockets and one struct per client socket; it
 * feeds received bytes to imc_gateway_conn_recv(), writes through the
 * transport vtable it provides, runs the gateway's timers and flushes the
 * gateway once per iteration, so everything queued during a batch of
 * events leaves in one writev per connection.
 *
 * Other components share the loop through two small seams:
 *  - hooks: (next_timeout_ms, run) pairs, for timers and deferred work
 *    (e.g. a store's completions, a router's retry timers);
 *  - fd watchers: a callback when an fd is readable (e.g. the eventfd a
 *    worker thread signals).
 *
 * Stopping: hloop_stop() begins a graceful stop (imc_gateway_shutdown,
 * then drain up to the grace period); hloop_stop_now() ends it. The loop
 * handles no signals; libimchat-server turns requests into these calls.
 * Writes use MSG_NOSIGNAL (TLS ones too), so a closed peer raises no
 * SIGPIPE.
 *
 * Single-threaded, like the gateway it drives. Functions returning int
 * return 0 or a negative errno value.
 */
#ifndef IMC_HOST_LOOP_H
#define IMC_HOST_LOOP_H

#include <imchat/gateway.h>

#include <stddef.h>
#include <stdint.h>

typedef struct hloop hloop;

int hloop_new(hloop **out);

/*
 * Closes every socket and watcher the loop still holds. Delete the
 * gateway first or afterwards; the loop does not call it here.
 */
void hloop_del(hloop *l);

/*
 * The transport for imc_gateway_options_set_transport(); its ud is the
 * loop. Create the gateway with it, then hand it to hloop_set_gateway().
 */
const imc_transport_vtbl *hloop_transport_vtbl(void);
void hloop_set_gateway(hloop *l, imc_gateway *gw);

/*
 * Splits "host:port" or "[v6]:port" (host may be empty or "*": all IPv4
 * addresses). Returns 0, or -EINVAL with the reason in *why.
 */
int hloop_split_addr(const char *addr, char *host, size_t hostcap,
                     uint16_t *port, const char **why);

/*
 * A non-blocking listening socket (SO_REUSEADDR, backlog 1024) on addr as
 * hloop_split_addr reads it (port 0: an ephemeral port); the bound
 * "ip:port" goes into bound (boundcap bytes; NULL with 0 for none).
 * Returns the fd, or -EINVAL (a bad address), -EADDRNOTAVAIL (a host not
 * resolved) or another -errno of bind/listen, after logging the reason
 * as "<what> <addr>: ...". For the loop's listeners and the gRPC server.
 */
int hloop_listen_socket(const char *what, const char *addr, char *bound,
                        size_t boundcap);

/*
 * Listens on addr (port 0: an ephemeral port) and writes the bound
 * "ip:port" into bound. The gateway must be set before hloop_run().
 */
int hloop_listen(hloop *l, const char *addr, char *bound, size_t boundcap);

/*
 * The same, speaking only TLS (tls.h): every connection accepted there
 * runs the handshake with tls's context of the moment, within the
 * gateway's handshake timeout, before its first byte reaches the
 * gateway. The loop does not own tls: delete it after the loop.
 */
typedef struct hstls hstls;
int hloop_listen_tls(hloop *l, const char *addr, hstls *tls, char *bound,
                     size_t boundcap);

/*
 * A hook: after every batch of events the loop calls next_timeout_ms(ud):
 * 0 means due, so it calls run(ud); a positive value caps the next sleep;
 * -1 means nothing pending. Before it waits the loop asks again, and does
 * not sleep while any hook says 0: deferred completions (e.g.
 * imc_sqlite_next_timeout_ms, imc_membus_next_timeout_ms) belong here, so
 * they run without another event to wake the loop. A NULL
 * next_timeout_ms runs the hook after every batch but never wakes the
 * loop: use it only for work that events alone create. Hooks may add or
 * remove hooks from run.
 */
typedef int64_t (*hloop_timeout_fn)(void *ud);
typedef void (*hloop_run_fn)(void *ud);
int hloop_add_hook(hloop *l, hloop_timeout_fn next_timeout_ms, hloop_run_fn run,
                   void *ud);
/* Removes the hook added with this run and ud. */
void hloop_del_hook(hloop *l, hloop_run_fn run, void *ud);

/*
 * Calls on_readable(ud) while fd is readable (level-triggered). The loop
 * does not own fd. hloop_del_fd is safe from within the callback.
 */
typedef void (*hloop_fd_fn)(void *ud);
int hloop_add_fd(hloop *l, int fd, hloop_fd_fn on_readable, void *ud);
void hloop_del_fd(hloop *l, int fd);

/*
 * A general fd watch (the engines' loop adapter uses it): cb(ud, fd,
 * revents) runs while fd is ready for events (EPOLLIN / EPOLLOUT,
 * level-triggered). The loop does not own fd. hloop_watch_set changes the
 * events; hloop_watch_del (safe from any callback) ends the watch.
 */
typedef struct hloop_watch hloop_watch;
typedef void (*hloop_watch_fn)(void *ud, int fd, uint32_t revents);
int hloop_watch_add(hloop *l, int fd, uint32_t events, hloop_watch_fn cb,
                    void *ud, hloop_watch **out);
int hloop_watch_set(hloop *l, hloop_watch *w, uint32_t events);
void hloop_watch_del(hloop *l, hloop_watch *w);

/* How long a graceful stop waits for connections to go (default 5000). */
void hloop_set_grace_ms(hloop *l, int64_t ms);

/* Starts a graceful stop (loop thread). */
void hloop_stop(hloop *l);

/* Ends the run at the end of this iteration, connections still open. */
void hloop_stop_now(hloop *l);

/* Runs until stopped and drained (or the grace period ends). */
int hloop_run(hloop *l);

/*
 * One turn of the loop, waiting at most max_wait_ms for an event: for
 * programs that drive the loop themselves (tests of the engines).
 */
int hloop_run_once(hloop *l, int64_t max_wait_ms);

#endif
