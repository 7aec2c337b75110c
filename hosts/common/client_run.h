/*
 * A blocking, poll(2)-based runner for an imc_client, for programs
 * without an event loop of their own (the imchat CLI, small tools). It
 * does the TCP connects the client asks for, moves the WebSocket bytes,
 * runs the timers and the offline sync over HTTP (plain sockets, one
 * short blocking exchange per page), and returns when the caller's done
 * predicate says so, the timeout ends, or the connection cannot be made.
 *
 * Programs with a loop drive imc_client themselves instead; see
 * doc/client.md.
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
  HCLIENT_FAILED = 5   /* anything else (poll failed, client stopped) */
} hclient_result;

typedef struct hclient_opts {
  const char *host; /* what to connect to */
  const char *port;
  int64_t timeout_ms; /* the whole run; -1: none */
  /* Checked before each wait; nonzero ends the run with HCLIENT_DONE. */
  int (*done)(void *ud);
  /* An extra fd to watch (e.g. stdin), or -1; on_input runs when readable. */
  int in_fd;
  void (*on_input)(void *ud);
  void *ud;
  /* What a failed connect said (strerror), for the caller's message. */
  char error[128];
} hclient_opts;

/*
 * Runs c until done, the timeout, a 401, or (before the first Welcome) a
 * failed connect; a client that was online reconnects by itself. Starts
 * c if it is STOPPED. Returns an hclient_result.
 */
int hclient_run(imc_client *c, hclient_opts *o);

/*
 * One HTTP exchange on a new connection: writes req, reads until the
 * server closes (or the answer is whole, judged by feed), at most
 * timeout_ms. *ans (malloc'd, caller frees) gets the bytes. Returns 0,
 * or an hclient_result (HCLIENT_CONNECT, HCLIENT_RESOLVE,
 * HCLIENT_TIMEOUT) with the reason in why.
 */
int hclient_http(const char *host, const char *port, const uint8_t *req,
                 size_t len, int64_t timeout_ms, uint8_t **ans, size_t *ans_len,
                 char *why, size_t whycap);

#endif
