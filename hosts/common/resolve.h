/*
 * Host name lookups that do not block the loop: getaddrinfo_a(3), whose
 * completion glibc reports from a thread of its own; the loop polls
 * hresolve_result (each turn, or from a short timer) until it is known.
 *
 * A lookup may be ended at any time: a lookup still running is freed by
 * its completion, so an owner going away never waits for a slow
 * resolver.
 */
#ifndef IMC_HOST_RESOLVE_H
#define IMC_HOST_RESOLVE_H

#include <netdb.h>

/* hresolve_result: the lookup still runs. */
#define HRESOLVE_BUSY 1

typedef struct hresolve hresolve;

/* Starts looking up the TCP addresses of host (a name or a numeric
 * address) and port (digits). Returns 0, -ENOMEM or -EAGAIN (the system
 * cannot start a lookup now). */
int hresolve_start(hresolve **out, const char *host, const char *port);

/*
 * HRESOLVE_BUSY; or 0 with *res the addresses found, in the order to try
 * them (owned by r, valid until hresolve_end); or a getaddrinfo error
 * (EAI_*, negative; gai_strerror tells why).
 */
int hresolve_result(hresolve *r, const struct addrinfo **res);

/* Ends r: frees it now if its lookup is done, else once it is. */
void hresolve_end(hresolve *r);

#endif
