/*
 * The client runner's HTTP exchanges (offline sync and history pages) on
 * libcurl's multi interface, without blocking: the runner adds curl's
 * sockets to its own poll(2) set (hhttp_pollfds), bounds its wait by
 * curl's timer (hhttp_timeout_ms) and hands the events back
 * (hhttp_after_poll), so the WebSocket keeps being served while a page
 * is fetched. http:// or https:// (with the runner's trust settings).
 *
 * The SDK writes each request as HTTP/1.1 bytes and reads the answer as
 * bytes (imc_client_sync_request / _response); this file turns the
 * request into a curl transfer and the transfer back into an answer
 * with a Content-Length body (chunked encoding already undone).
 *
 * The program calls curl_global_init once before the first hhttp_new.
 */
#ifndef IMC_HOST_CLIENT_HTTP_H
#define IMC_HOST_CLIENT_HTTP_H

#include <poll.h>
#include <stddef.h>
#include <stdint.h>

typedef struct hhttp hhttp;

/*
 * A multi handle for exchanges with base ("http://HOST:PORT" or
 * "https://HOST:PORT"); TLS verifies against ca_file (NULL: the system's
 * CAs) unless insecure. Returns 0 or -1 (out of memory).
 */
int hhttp_new(hhttp **out, const char *base, const char *ca_file, int insecure);

/* Ends an exchange still running. */
void hhttp_del(hhttp *h);

/*
 * Starts one exchange (at most one at a time): req is a GET request as
 * the SDK writes it; timeout_ms bounds the whole exchange. Returns 0, or
 * -1 (an exchange is running, req is not a GET request, out of memory).
 */
int hhttp_start(hhttp *h, const uint8_t *req, size_t len, int64_t timeout_ms);

/* 1 while an exchange runs (until hhttp_take has taken its end). */
int hhttp_busy(const hhttp *h);

/* Writes curl's sockets into p (at most cap entries); returns the count. */
size_t hhttp_pollfds(const hhttp *h, struct pollfd *p, size_t cap);

/* Milliseconds until curl's timer is due, 0 (now) or -1 (none). */
int64_t hhttp_timeout_ms(const hhttp *h);

/*
 * Runs curl on the events of the n entries hhttp_pollfds wrote (after
 * the poll) and on its timer when due.
 */
void hhttp_after_poll(hhttp *h, const struct pollfd *p, size_t n);

/*
 * Takes the end of the exchange. Returns -1 (still running), 0 (an
 * answer: *ans, *ans_len hold it until the next hhttp_start or
 * hhttp_del) or an hclient_result (HCLIENT_CONNECT, HCLIENT_RESOLVE,
 * HCLIENT_TIMEOUT, HCLIENT_TLS, HCLIENT_FAILED) with the reason in why.
 */
int hhttp_take(hhttp *h, const uint8_t **ans, size_t *ans_len, char *why,
               size_t whycap);

#endif
