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
 * imc_api_handler_vtbl(), api). What it serves comes through interfaces,
 * so a gateway process whose router runs elsewhere can serve it too: a
 * store (pages), group membership (imc_groups_vtbl; the in-process router
 * offers imc_api_router_groups, routers over gRPC
 * imc_grpc_upstream_groups_vtbl) and sources of metrics and readiness
 * (imc_metrics_source_vtbl; imc_api_gateway_source, _router_source and
 * _worker_source adapt the in-process objects). Their calls complete later
 * through the host's event loop; the api keeps no global state, never
 * blocks and belongs to the thread of its gateway.
 */
#ifndef IMCHAT_API_H
#define IMCHAT_API_H

#include <imchat/backend.h>
#include <imchat/gateway.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct imc_api imc_api;
typedef struct imc_api_options imc_api_options;

/*
 * Group membership as the api uses it (the admin routes and the
 * membership check of group history). Each operation returns 0 and
 * completes later (or inline) through done, or returns a negative
 * IMC_ERR_* and never calls done. members may complete with
 * IMC_ERR_NOT_FOUND for a group without members. Versioned: members are
 * only appended; those past struct_size are absent.
 */
typedef struct imc_groups_vtbl {
  uint32_t struct_size;
  int (*add)(void *ud, const char *group_id, const char *user_id,
             imc_done_cb done, void *done_ud);
  int (*remove)(void *ud, const char *group_id, const char *user_id,
                imc_done_cb done, void *done_ud);
  int (*members)(void *ud, const char *group_id, imc_list_cb done,
                 void *done_ud);
} imc_groups_vtbl;

/*
 * Group membership of an in-process router (imc_router_group_add, _remove
 * and _members); its ud is the imc_router. Never NULL.
 */
IMC_EXTERN const imc_groups_vtbl *imc_api_router_groups(void);

/* A Prometheus text exposition being written, handed to a source's
 * collect; valid during that call only. */
typedef struct imc_metrics imc_metrics;

typedef enum imc_metric_type {
  IMC_METRIC_COUNTER = 0,
  IMC_METRIC_GAUGE = 1,
} imc_metric_type;

/*
 * Starts the metric family name ([a-zA-Z_:][a-zA-Z0-9_:]*): its HELP line
 * (help escaped as the format requires; NULL: empty) and TYPE line.
 * Returns 0; IMC_ERR_INVALID_ARGUMENT (m or name NULL, a bad name or
 * type); IMC_ERR_NOMEM (the page is then answered with 500).
 */
IMC_EXTERN int imc_metrics_family(imc_metrics *m, const char *name,
                                  imc_metric_type type, const char *help);

/*
 * Writes one sample of the family name: "name value", or with label
 * (a label name, [a-zA-Z_][a-zA-Z0-9_]*) "name{label="label_value"}
 * value", label_value escaped. label NULL means no label. Returns 0;
 * IMC_ERR_INVALID_ARGUMENT (m, name or, with a label, label_value NULL; a
 * bad name or label); IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_metrics_sample(imc_metrics *m, const char *name,
                                  const char *label, const char *label_value,
                                  uint64_t value);

/*
 * Writes the whole histogram family name: its HELP and TYPE lines, then
 * name_bucket{le="b"} with the cumulative count for each bound b of
 * bounds[0..n) and for le="+Inf", name_sum and name_count. counts holds
 * n + 1 counts that are not cumulative: counts[i] the observations above
 * bounds[i - 1] up to bounds[i], counts[n] those above bounds[n - 1].
 * Bounds (strictly ascending) and sum are fixed-point numbers with
 * decimals (0..9) decimal places, written exactly whatever the locale:
 * with decimals 3 a bound of 25 is written 0.025, so milliseconds are
 * exported as the seconds Prometheus expects. Returns 0;
 * IMC_ERR_INVALID_ARGUMENT (m, name or counts NULL, bounds NULL with n > 0;
 * a bad name; bounds not ascending; decimals > 9); IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_metrics_histogram(imc_metrics *m, const char *name,
                                     const char *help, const uint64_t *bounds,
                                     size_t n, const uint64_t *counts,
                                     uint64_t sum, unsigned decimals);

/*
 * A source of /metrics and /readyz. Versioned: members are only
 * appended; those past struct_size are absent.
 */
typedef struct imc_metrics_source_vtbl {
  uint32_t struct_size;
  /* Appends the source's metric families to m with imc_metrics_family and
   * imc_metrics_sample. Returns 0 or a negative IMC_ERR_* (the page is
   * then answered with 500 or 503). Required. */
  int (*collect)(void *ud, imc_metrics *m);
  /* Optional (NULL: always ready). Returns 1 when ready; else 0 with
   * *component and *state set to texts that live as long as the source,
   * which /readyz reports as "component":"state". */
  int (*ready)(void *ud, const char **component, const char **state);
} imc_metrics_source_vtbl;

/* One source and its user pointer (borrowed). */
typedef struct imc_metrics_source {
  const imc_metrics_source_vtbl *vt;
  void *ud;
} imc_metrics_source;

/* At most this many sources are set at a time. */
#define IMC_API_SOURCES_MAX 16

/*
 * In-process sources; each ud is the object named. The gateway exports
 * its connection, frame and push counters, the Error frames sent by code
 * and the push-to-ACK latency (imchat_gateway_ack_latency_seconds, a
 * histogram), and is not ready while shutting down ("gateway":"shutting
 * down"); the router exports its send, routing and status counters; the
 * worker exports its batch counters and imchat_worker_healthy, and is not
 * ready while failing ("worker":"failing"). Never NULL.
 */
IMC_EXTERN const imc_metrics_source_vtbl *imc_api_gateway_source(void);
IMC_EXTERN const imc_metrics_source_vtbl *imc_api_router_source(void);
IMC_EXTERN const imc_metrics_source_vtbl *imc_api_worker_source(void);

/* Creates options with the defaults; mem NULL means malloc. Returns 0,
 * IMC_ERR_INVALID_ARGUMENT (out is NULL) or IMC_ERR_NOMEM. */
IMC_EXTERN int imc_api_options_new(imc_api_options **out, const imc_mem *mem);
/* Frees opt (NULL: no-op), wiping the admin token. */
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
 * Group membership (e.g. imc_api_router_groups() with the router, or a
 * client of a remote router); without it the group routes and the history
 * of group conversations answer 503. The vtable is copied, ud is borrowed
 * and must outlive the api; vt NULL clears. Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT (opt NULL, or add, remove or members absent).
 */
IMC_EXTERN int imc_api_options_set_groups(imc_api_options *opt,
                                          const imc_groups_vtbl *vt, void *ud);

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
 * IMC_ERR_INVALID_ARGUMENT (out or opt NULL, no store, or one without
 * fetch_inbox or fetch_history) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_api_new(imc_api **out, const imc_api_options *opt,
                           const imc_mem *mem);

/*
 * Releases the api (NULL: no-op). The host must first let imc_api_pending()
 * reach 0, and must not delete the gateway while requests are pending either:
 * their replies belong to it.
 */
IMC_EXTERN void imc_api_del(imc_api *api);

/* Sets the user pointer (api NULL: no-op). */
IMC_EXTERN void imc_api_set_user_data(imc_api *api, void *ud);
/* The user pointer; NULL if api is NULL or none was set. */
IMC_EXTERN void *imc_api_get_user_data(const imc_api *api);

/*
 * The sources /metrics exports, in this order, and whose readiness
 * /readyz reports, replacing those set before; n 0 clears. The array is
 * copied; each ud is borrowed and must outlive the api or be replaced by
 * another call. Returns 0; IMC_ERR_INVALID_ARGUMENT (api NULL, src NULL
 * with n > 0, a vt NULL or without collect); IMC_ERR_TOO_LARGE (n >
 * IMC_API_SOURCES_MAX). On error the sources in use stay.
 */
IMC_EXTERN int imc_api_set_sources(imc_api *api, const imc_metrics_source *src,
                                   size_t n);

/* The HTTP handler for the gateway; its ud is the api. Never NULL. Its
 * handle returns 1 for the paths above (answered now or later) and 0 for
 * others. */
IMC_EXTERN const imc_http_handler_vtbl *imc_api_handler_vtbl(void);

/* Called with the group id after a member was added or removed. */
typedef void (*imc_api_group_cb)(void *ud, const char *group_id);

/*
 * Sets the hook that runs after each successful PUT or DELETE of a group
 * member, so that the host can drop other caches of that group (e.g.
 * imc_fanout_invalidate). cb NULL clears it; api NULL is a no-op.
 */
IMC_EXTERN void imc_api_set_group_changed(imc_api *api, imc_api_group_cb cb,
                                          void *ud);

/* Store and group operations not yet completed (0 when it is safe to
 * delete the api; 0 for NULL). */
IMC_EXTERN size_t imc_api_pending(const imc_api *api);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_API_H */
