/*
 * A poll(2)-based runner for an imc_client, for programs without an
 * event loop of their own (the imchat CLI, small tools). It does the
 * TCP connects the client asks for (and TLS on them for wss://, see
 * client_tls.h), moves the WebSocket bytes, runs the timers, fetches the
 * offline sync's pages over HTTP(S) on libcurl's multi interface in the
 * same poll (client_http.h: the WebSocket keeps being served while a
 * page is fetched), and returns when the caller's done predicate says
 * so, the timeout ends, or the first connection cannot be made.
 *
 * Programs with a loop drive imc_client themselves instead; see
 * doc/client.md. The program calls curl_global_init once first.
 */
#ifndef IMC_HOST_CLIENT_RUN_H
#define IMC_HOST_CLIENT_RUN_H

#include <imchat/client.h>

#include <stddef.h>
#include <stdint.h>

/* How hclient_run ended. */
typedef enum hclient_result {
  HCLIENT_DONE = 0,    /* the done predicate said so */
  HCLIENT_TIMEOUT = 1, /* timeout_ms elapsed */
  HCLIENT_CONNECT = 2, /* the first connection failed (refused, ...) */
  HCLIENT_AUTH = 3,    /* the gateway answered 401 */
  HCLIENT_RESOLVE = 4, /* the host name does not resolve */
  HCLIENT_FAILED = 5,  /* anything else (poll failed, client stopped) */
  HCLIENT_TLS = 6      /* TLS failed: certificate refused, bad handshake,
                          unreadable CA file */
} hclient_result;

typedef struct hclient_opts {
  const char *host; /* what to connect to */
  const char *port;
  int tls;             /* wss:// (and https:// for the pages) */
  const char *ca_file; /* TLS: trust only the CAs in this PEM file; NULL:
                          the system's CAs */
  int insecure;        /* TLS: no certificate checks at all (tests only) */
  int64_t timeout_ms;  /* the whole run; -1: none */
  /* Checked before each wait; nonzero ends the run with HCLIENT_DONE. */
  int (*done)(void *ud);
  /* An extra fd to watch (e.g. stdin), or -1; on_input runs when readable. */
  int in_fd;
  void (*on_input)(void *ud);
  void *ud;
  /* Why the run (or the last failed page) failed, for the caller's
     message. */
  char error[256];
} hclient_opts;

/*
 * Runs c until done, the timeout, a 401, or (before the first Welcome) a
 * failed connect or TLS handshake; a client that was online reconnects
 * by itself. Starts c if it is STOPPED. Returns an hclient_result.
 */
int hclient_run(imc_client *c, hclient_opts *o);

/*
 * One HTTP(S) exchange to o's server (a history page): sends the
 * request bytes req (as imc_client_history_request writes them) and
 * waits at most timeout_ms for the answer. *ans (malloc'd, caller frees)
 * gets the answer as bytes for imc_client_history_response. Returns 0,
 * or an hclient_result (HCLIENT_CONNECT, HCLIENT_RESOLVE,
 * HCLIENT_TIMEOUT, HCLIENT_TLS, HCLIENT_FAILED) with the reason in
 * o->error.
 */
int hclient_http(hclient_opts *o, const uint8_t *req, size_t len,
                 int64_t timeout_ms, uint8_t **ans, size_t *ans_len);

#endif
