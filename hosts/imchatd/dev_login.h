/*
 * POST /dev/login: tokens for anyone who asks, for local development of
 * the web page only. imchatd offers it with --dev-login, which it refuses
 * unless the listen address is loopback, and announces with a warning at
 * start and on every token it hands out (see doc/web.md).
 *
 * Request: Content-Type application/json, body {"user": "ID"} (an id of
 * 1-64 [A-Za-z0-9_.@-]). Answer: 200 {"token": "JWT", "user": "ID",
 * "expires_in": SECONDS}, an HS256 token signed with the server's secret.
 * Errors are the JSON error bodies of the API: 405 for another method, 415
 * without the JSON content type (so a cross-site form cannot post it),
 * 400 for a body that is not such an object.
 */
#ifndef IMCHATD_DEV_LOGIN_H
#define IMCHATD_DEV_LOGIN_H

#include <imchat/gateway.h>

#include <stddef.h>
#include <stdint.h>

typedef struct devlogin devlogin;

/*
 * Creates the handler with a copy of the HS256 secret (wiped by
 * devlogin_del), the issuer and audience to put in tokens (NULL: none),
 * their lifetime, and the handler for every other request (next NULL:
 * none). Returns 0 or -ENOMEM.
 */
int devlogin_new(devlogin **out, const uint8_t *secret, size_t secret_len,
                 const char *issuer, const char *audience, uint32_t ttl_s,
                 const imc_http_handler_vtbl *next, void *next_ud);
void devlogin_del(devlogin *d);

/* The handler; its ud is the devlogin. */
const imc_http_handler_vtbl *devlogin_vtbl(void);

/* 1 if host (as hloop_split_addr returns it) is a loopback address:
 * 127.0.0.0/8, ::1 or "localhost". */
int devlogin_host_is_loopback(const char *host);

/*
 * Finds the string value of "user" in the JSON object body[0..len) and
 * copies it into out (cap bytes). Returns 0, or -1 if body is not an
 * object of string members with a "user" that fits (escapes are refused:
 * no id needs one).
 */
int devlogin_parse_user(const uint8_t *body, size_t len, char *out, size_t cap);

#endif
