/*
 * Static files for the gateway port: the web chat page. An HTTP handler
 * (imc_http_handler_vtbl) that serves GET and HEAD of "/" (index.html)
 * and "/assets/NAME" from a web root directory, and hands every other
 * request to the next handler (the HTTP API). The library reads no files;
 * this is the host's part.
 *
 * Rules: the path is percent-decoded once and then must be "/" or
 * "/assets/" followed by a name of [A-Za-z0-9._-] segments separated by
 * "/", none of them "." or ".." or starting with "."; anything else under
 * /assets/ is refused with 400. The file's real path must lie inside the
 * web root's real path (no symlink leaves it) and be a regular file of at
 * most HSTATIC_FILE_MAX bytes. Answers carry a Content-Type from the
 * extension, X-Content-Type-Options: nosniff, a strict
 * Content-Security-Policy and Referrer-Policy: no-referrer. Caching: a
 * name with an esbuild content hash ("app-3XK2Q7ZB.js") is immutable for
 * a year; anything else (index.html) is "no-cache". HEAD answers carry no
 * body.
 */
#ifndef IMC_HOST_STATIC_H
#define IMC_HOST_STATIC_H

#include <imchat/gateway.h>

#include <stddef.h>

#define HSTATIC_FILE_MAX (8u << 20)

/* The Content-Security-Policy of every page and asset. */
#define HSTATIC_CSP                                                            \
  "default-src 'none'; script-src 'self'; style-src 'self'; "                  \
  "img-src 'self' data:; connect-src 'self'; manifest-src 'self'; "            \
  "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

typedef struct hstatic hstatic;

/*
 * Creates a static handler for the directory root (which must exist),
 * passing other requests to next/next_ud (next NULL: none, the gateway
 * answers 404). Returns 0, -ENOMEM, or the -errno of resolving root.
 */
int hstatic_new(hstatic **out, const char *root,
                const imc_http_handler_vtbl *next, void *next_ud);
void hstatic_del(hstatic *s);

/* The resolved web root. */
const char *hstatic_root(const hstatic *s);

/* The handler; its ud is the hstatic. */
const imc_http_handler_vtbl *hstatic_vtbl(void);

/* The Content-Type served for a file name (by its extension). */
const char *hstatic_content_type(const char *name);

#endif
