/*
 * imchat - the HTTP API on the gateway port (SPEC 3.2).
 *
 * imc_api serves the plain HTTP requests the gateway hands to its HTTP
 * handler: the offline inbox (GET /offline), conversation history
 * (GET /v1/conversations/{id}/messages), group membership for an admin
 * (PUT, DELETE /v1/groups/{group}/members/{user}, GET
 * /v1/groups/{group}/members), readiness (GET /readyz) and Prometheus
 * metrics (GET /metrics). Other paths are left to the gateway, which
 * answers 404.
 *
 * Wire it up with imc_gateway_options_set_http_handler(opt,
 * imc_api_handler_vtbl(), api). Store and router calls complete later
 * through the host's event loop; the api keeps no global state, never
 * blocks and belongs to the thread of its gateway.
 */
#ifndef IMCHAT_API_H
#define IMCHAT_API_H

#include <imchat/backend.h>
#include <imchat/fanout.h>
#include <imchat/gateway.h>
#include <imchat/router.h>
#include <imchat/worker.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct imc_api imc_api;
typedef struct imc_api_options imc_api_options;

/* Returns 0, IMC_ERR_INVALID_ARGUMENT (out is NULL) or IMC_ERR_NOMEM. */
IMC_EXTERN int imc_api_options_new(imc_api_options **out, const imc_mem *mem);
IMC_EXTERN void imc_api_options_del(imc_api_options *opt);

/*
 * The store that serves /offline (fetch_inbox) and history
 * (fetch_history); both members are required. The vtable is copied, ud
 * is borrowed and must outlive the api. Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_api_options_set_store(imc_api_options *opt,
                                         const imc_store_vtbl *vt, void *ud);

/*
 * The router that owns group membership (and its cache); without one the
 * group routes and the history of group conversations answer 503.
 * Borrowed; NULL clears. Returns 0 or IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_api_options_set_router(imc_api_options *opt,
                                          imc_router *router);

/*
 * The bearer credential of the admin routes: 1..4096 bytes of visible
 * ASCII, copied. NULL (the default) disables them: they answer 403.
 * Returns 0, IMC_ERR_INVALID_ARGUMENT or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_api_options_set_admin_token(imc_api_options *opt,
                                               const char *token);

/* Clock for request timings in the log (NULL: system). Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT. */
IMC_EXTERN int imc_api_options_set_clock(imc_api_options *opt,
                                         const imc_clock *clock);

/* Log hook (NULL: none). Returns 0 or IMC_ERR_INVALID_ARGUMENT. */
IMC_EXTERN int imc_api_options_set_log(imc_api_options *opt, imc_log_cb cb,
                                       void *ud, imc_log_level max_level);

/*
 * Creates an api from opt (which may be deleted afterwards). Returns 0,
 * IMC_ERR_INVALID_ARGUMENT (no store, or one without fetch_inbox or
 * fetch_history) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_api_new(imc_api **out, const imc_api_options *opt,
                           const imc_mem *mem);

/*
 * Releases the api. The host must first let imc_api_pending() reach 0,
 * and must not delete the gateway while requests are pending either:
 * their replies belong to it.
 */
IMC_EXTERN void imc_api_del(imc_api *api);

IMC_EXTERN void imc_api_set_user_data(imc_api *api, void *ud);
IMC_EXTERN void *imc_api_get_user_data(const imc_api *api);

/*
 * The gateway and worker whose state /readyz reports and whose counters
 * /metrics exports (the router's come from the options). Either may be
 * NULL: it is then left out. Both are borrowed and must outlive the api
 * or be detached by another call. Returns 0 or IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_api_attach(imc_api *api, imc_gateway *gw, imc_worker *w);

/* The HTTP handler for the gateway; its ud is the api. Never NULL. */
IMC_EXTERN const imc_http_handler_vtbl *imc_api_handler_vtbl(void);

/* Called with the group id after a member was added or removed. */
typedef void (*imc_api_group_cb)(void *ud, const char *group_id);

/*
 * Sets the hook that runs after each successful PUT or DELETE of a group
 * member, so that the host can drop other caches of that group (e.g.
 * imc_fanout_invalidate). cb NULL clears it.
 */
IMC_EXTERN void imc_api_set_group_changed(imc_api *api, imc_api_group_cb cb,
                                          void *ud);

/* Store and router operations not yet completed (0 when it is safe to
 * delete the api). */
IMC_EXTERN size_t imc_api_pending(const imc_api *api);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_API_H */
