/*
 * imchat - libimchat-server: the whole single-node server (what imchatd
 * runs) inside the caller's process.
 *
 * Unlike libimchat this is a host library (pkg-config imchat-server, on
 * top of imchat): it owns sockets, an epoll loop and one thread, the
 * storage thread that runs SQLite's group commits off the loop (created
 * by imc_server_new with every signal blocked, joined by imc_server_run's
 * drain or imc_server_del). It installs no signal handlers and never
 * exits the process; writes to closed sockets raise no SIGPIPE.
 *
 * Threads: imc_server_run runs the loop on the calling thread until a
 * stop; imc_server_stop and imc_server_reload may be called from any
 * thread or a signal handler while the server exists. Everything else
 * (new, address, set_log, del) must not overlap run or each other on one
 * server. Several servers may live in one process (distinct --listen and
 * --data-dir).
 *
 * Logging: lines go to stderr (timestamped), filtered by --log-level,
 * until imc_server_set_log routes them to a callback. The lines of a
 * successful imc_server_new (the store, the address, how to connect)
 * wait for the first set_log, run or del, so a callback set right after
 * new gets them too. A failing imc_server_new prints nothing: the reason
 * is returned in err.
 */
#ifndef IMCHAT_SERVER_H
#define IMCHAT_SERVER_H

#include <imchat/common.h>

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct imc_server imc_server;

/*
 * Creates a server from imchatd's flags (see imchatd --help; a --config
 * file is read too; argv[0] is ignored), e.g. {"imchatd", "--listen",
 * "127.0.0.1:0", "--data-dir", dir, "--jwt-secret", "s"}: opens the
 * store in the data directory, starts the storage thread and binds the
 * listener, so imc_server_address is known at once. --help, --version
 * and the token subcommand are refused. Calls are serialized inside (the
 * flags are parsed with getopt_long, whose state is global).
 *
 * Returns 0 with *out set; on failure *out is NULL and a one-line reason
 * is written into err (capacity errcap; err may be NULL). Returns
 * IMC_ERR_INVALID_ARGUMENT (out NULL, argc < 1, bad flags, values or
 * files), IMC_ERR_NOMEM, or IMC_ERR_IO (the data directory, the store,
 * the listener, e.g. an address in use, or a thread could not be set
 * up).
 */
IMC_EXTERN int imc_server_new(imc_server **out, int argc,
                              const char *const *argv, char *err,
                              size_t errcap);

/* The bound "ip:port" of the WebSocket/HTTP listener (port 0 resolved),
 * valid until imc_server_del. */
IMC_EXTERN const char *imc_server_address(const imc_server *s);

/*
 * Routes the server's log lines (message only, no timestamp; at or below
 * --log-level) to cb(ud, level, line) from now on, on the thread that
 * logs (the one calling run, reload's effects included, or del); cb NULL
 * restores stderr. Call it before imc_server_run or after it returned.
 */
IMC_EXTERN void imc_server_set_log(imc_server *s, imc_log_cb cb, void *ud);

/*
 * Runs the server on the calling thread until imc_server_stop: then it
 * stops accepting, closes connections gracefully (up to 5 s), lets the
 * storage thread finish, persists what is queued and returns. Callable
 * once. Returns 0; IMC_ERR_CLOSED if it already ran; or IMC_ERR_IO (the
 * event loop failed; the server is stopped).
 */
IMC_EXTERN int imc_server_run(imc_server *s);

/*
 * Asks for a graceful stop; a second call during the stop ends the
 * grace period at once. Async-signal-safe and callable from any thread
 * (it writes an eventfd), also before imc_server_run (which then stops
 * at once) or after it returned (no effect).
 */
IMC_EXTERN void imc_server_stop(imc_server *s);

/*
 * What SIGHUP does to imchatd: the loop re-reads --filter-file,
 * --key-file and --tls-cert/--tls-key (on failure the previous ones stay,
 * with a warning; open TLS connections keep their certificate). Same
 * thread rules as imc_server_stop; runs when imc_server_run next turns.
 */
IMC_EXTERN void imc_server_reload(imc_server *s);

/* Frees everything (joins the storage thread). Not while run runs.
 * NULL is a no-op. */
IMC_EXTERN void imc_server_del(imc_server *s);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_SERVER_H */
