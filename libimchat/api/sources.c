/*
 * The metrics and readiness of the in-process gateway, router and worker
 * as imc_metrics_source_vtbl: the one place the api knows their stat
 * enums. A gateway whose router runs elsewhere leaves the router's out,
 * or gets its numbers through a source of its own.
 */
#include <imchat/api.h>
#include <imchat/router.h>
#include <imchat/worker.h>

#include <stddef.h>

/* One sample; the family's HELP and TYPE lines are written before its
 * first sample only (help != NULL). */
typedef struct metric {
  int stat;
  const char *name;
  imc_metric_type type;
  const char *help;
  const char *label; /* with label_value, e.g. path="fast"; or NULL */
  const char *label_value;
} metric;

#define COUNTER IMC_METRIC_COUNTER
#define GAUGE IMC_METRIC_GAUGE

static const metric gw_metrics[] = {
    {IMC_GW_STAT_CONNECTIONS, "imchat_gateway_connections", GAUGE,
     "Connections held.", NULL, NULL},
    {IMC_GW_STAT_WEBSOCKETS, "imchat_gateway_websockets", GAUGE,
     "Upgraded WebSocket connections.", NULL, NULL},
    {IMC_GW_STAT_ACCEPTED, "imchat_gateway_accepted_total", COUNTER,
     "Connections accepted.", NULL, NULL},
    {IMC_GW_STAT_UPGRADED, "imchat_gateway_upgraded_total", COUNTER,
     "WebSocket upgrades.", NULL, NULL},
    {IMC_GW_STAT_AUTH_FAILED, "imchat_gateway_auth_failures_total", COUNTER,
     "HTTP 401 answers.", NULL, NULL},
    {IMC_GW_STAT_HTTP_ERRORS, "imchat_gateway_http_errors_total", COUNTER,
     "HTTP error answers other than 401.", NULL, NULL},
    {IMC_GW_STAT_FRAMES_IN, "imchat_gateway_frames_in_total", COUNTER,
     "ClientFrames decoded.", NULL, NULL},
    {IMC_GW_STAT_FRAMES_OUT, "imchat_gateway_frames_out_total", COUNTER,
     "ServerFrames queued.", NULL, NULL},
    {IMC_GW_STAT_BAD_FRAMES, "imchat_gateway_bad_frames_total", COUNTER,
     "Undecodable ClientFrames.", NULL, NULL},
    {IMC_GW_STAT_SLOW_CLOSED, "imchat_gateway_slow_reader_closes_total",
     COUNTER, "Connections closed for a full outbound queue.", NULL, NULL},
    {IMC_GW_STAT_IDLE_CLOSED, "imchat_gateway_idle_closes_total", COUNTER,
     "Connections closed for silence.", NULL, NULL},
    {IMC_GW_STAT_HANDSHAKE_TIMEOUTS, "imchat_gateway_handshake_timeouts_total",
     COUNTER, "Connections closed without a request head in time.", NULL, NULL},
    {IMC_GW_STAT_PUSHES, "imchat_gateway_pushes_total", COUNTER,
     "Deliver frames pushed.", NULL, NULL},
    {IMC_GW_STAT_ACKS, "imchat_gateway_acks_total", COUNTER,
     "Pushes acknowledged.", NULL, NULL},
    {IMC_GW_STAT_ACK_TIMEOUTS, "imchat_gateway_ack_timeouts_total", COUNTER,
     "Pushes not acknowledged in time.", NULL, NULL},
    {IMC_GW_STAT_UNDELIVERED, "imchat_gateway_undelivered_total", COUNTER,
     "Pushes handed back for the slow path.", NULL, NULL},
    {IMC_GW_STAT_RATE_LIMITED, "imchat_gateway_rate_limited_total", COUNTER,
     "Sends refused by the rate limit.", NULL, NULL},
    {IMC_GW_STAT_OUTBOUND_BYTES, "imchat_gateway_outbound_queued_bytes", GAUGE,
     "Bytes queued for writing.", NULL, NULL},
    {IMC_GW_STAT_SENDS_IN_FLIGHT, "imchat_gateway_sends_in_flight", GAUGE,
     "Sends with the router, answers waiting for an older one included.", NULL,
     NULL},
    {IMC_GW_STAT_PAUSED, "imchat_gateway_paused_connections", GAUGE,
     "Connections not being read: too many sends in flight.", NULL, NULL},
    {IMC_GW_STAT_BUSY, "imchat_gateway_busy_refusals_total", COUNTER,
     "Sends refused with UNAVAILABLE: not admitted in time.", NULL, NULL},
    {IMC_GW_STAT_DELIVER_ENCODES, "imchat_gateway_deliver_encodes_total",
     COUNTER, "Deliver frames encoded (one per message and gateway call).",
     NULL, NULL},
    {IMC_GW_STAT_REFUSED_ORIGIN, "imchat_gateway_refused_total", COUNTER,
     "WebSocket upgrades refused, by reason.", "reason", "origin"},
    {IMC_GW_STAT_REFUSED_CONNS, "imchat_gateway_refused_total", COUNTER, NULL,
     "reason", "max_connections"},
    {IMC_GW_STAT_REFUSED_PEER_CONNS, "imchat_gateway_refused_total", COUNTER,
     NULL, "reason", "max_connections_per_ip"},
    {IMC_GW_STAT_REFUSED_DEVICES, "imchat_gateway_refused_total", COUNTER, NULL,
     "reason", "max_devices"},
};

static const metric rt_metrics[] = {
    {IMC_RT_STAT_SENDS, "imchat_router_sends_total", COUNTER, "Sends accepted.",
     NULL, NULL},
    {IMC_RT_STAT_DUPLICATES, "imchat_router_duplicates_total", COUNTER,
     "Resends answered from the dedup set.", NULL, NULL},
    {IMC_RT_STAT_REJECTED, "imchat_router_rejected_total", COUNTER,
     "Sends refused with an error.", NULL, NULL},
    {IMC_RT_STAT_FAST_PATH, "imchat_router_routed_total", COUNTER,
     "Messages routed, by path.", "path", "fast"},
    {IMC_RT_STAT_SLOW_PATH, "imchat_router_routed_total", COUNTER, NULL, "path",
     "slow"},
    {IMC_RT_STAT_GROUP_SENDS, "imchat_router_group_sends_total", COUNTER,
     "Group messages published.", NULL, NULL},
    {IMC_RT_STAT_DELIVERED, "imchat_router_statuses_total", COUNTER,
     "Delivery statuses sent, by state.", "state", "delivered"},
    {IMC_RT_STAT_STORED, "imchat_router_statuses_total", COUNTER, NULL, "state",
     "stored"},
    {IMC_RT_STAT_BLOCKED, "imchat_router_blocked_total", COUNTER,
     "Sends refused by the content filter.", NULL, NULL},
    {IMC_RT_STAT_MASKED, "imchat_router_masked_total", COUNTER,
     "Bodies masked by the content filter.", NULL, NULL},
    {IMC_RT_STAT_BACKEND_ERRORS, "imchat_router_backend_errors_total", COUNTER,
     "Failed backend operations.", NULL, NULL},
    {IMC_RT_STAT_QUEUE_ERRORS, "imchat_router_queue_errors_total", COUNTER,
     "Failed offline-queue publishes.", NULL, NULL},
    {IMC_RT_STAT_RETRY_QUEUE, "imchat_router_retry_queue_jobs", GAUGE,
     "Slow-path jobs waiting to be queued again.", NULL, NULL},
    {IMC_RT_STAT_REDRIVES, "imchat_router_redrives_total", COUNTER,
     "Resends of messages of unknown delivery driven again.", NULL, NULL},
    {IMC_RT_STAT_TAKEOVERS, "imchat_router_takeovers_total", COUNTER,
     "Send claims of dead router instances taken over.", NULL, NULL},
    {IMC_RT_STAT_DEDUP_OWED, "imchat_router_dedup_owed_records", GAUGE,
     "Dedup records of queued messages waiting to be written again.", NULL,
     NULL},
};

static const metric wk_metrics[] = {
    {IMC_WK_STAT_BATCHES, "imchat_worker_batches_total", COUNTER,
     "Batches committed.", NULL, NULL},
    {IMC_WK_STAT_JOBS, "imchat_worker_jobs_total", COUNTER, "Jobs persisted.",
     NULL, NULL},
    {IMC_WK_STAT_DUPLICATES, "imchat_worker_duplicates_total", COUNTER,
     "Jobs skipped by the dedup set.", NULL, NULL},
    {IMC_WK_STAT_BAD_RECORDS, "imchat_worker_bad_records_total", COUNTER,
     "Undecodable records dropped.", NULL, NULL},
    {IMC_WK_STAT_FAILURES, "imchat_worker_failures_total", COUNTER,
     "Failed steps (each retried).", NULL, NULL},
    {IMC_WK_STAT_LAST_BATCH, "imchat_worker_last_batch_size", GAUGE,
     "Jobs in the last batch.", NULL, NULL},
    {IMC_WK_STAT_LAST_BATCH_MS, "imchat_worker_last_batch_latency_ms", GAUGE,
     "Poll-to-commit time of the last batch in milliseconds.", NULL, NULL},
    {IMC_WK_STAT_PURGES, "imchat_worker_purges_total", COUNTER,
     "Retention runs.", NULL, NULL},
};

/* Error names by imchat.v1.Error code. */
static const char *const error_codes[] = {
    NULL,        "BAD_REQUEST",  "UNAUTHENTICATED", "FORBIDDEN",   "NOT_FOUND",
    "TOO_LARGE", "RATE_LIMITED", "BLOCKED",         "UNAVAILABLE", "INTERNAL"};

/* Writes the samples tab[0..n) with their values from get(obj, stat). */
static int write_table(imc_metrics *m, const metric *tab, size_t n,
                       uint64_t (*get)(const void *obj, int stat),
                       const void *obj) {
  int rv = 0;
  for (size_t i = 0; i < n && rv == 0; i++) {
    const metric *e = &tab[i];
    if (e->help != NULL)
      rv = imc_metrics_family(m, e->name, e->type, e->help);
    if (rv == 0)
      rv = imc_metrics_sample(m, e->name, e->label, e->label_value,
                              get(obj, e->stat));
  }
  return rv;
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---- gateway -------------------------------------------------------- */

static uint64_t gw_get(const void *gw, int stat) {
  return imc_gateway_stat_get(gw, (imc_gateway_stat)stat);
}

static int gw_collect(void *ud, imc_metrics *m) {
  imc_gateway *gw = ud;
  int rv = write_table(m, gw_metrics, COUNT(gw_metrics), gw_get, gw);
  if (rv == 0)
    rv = imc_metrics_family(m, "imchat_gateway_errors_total", COUNTER,
                            "Error frames sent, by code.");
  for (int code = 1; rv == 0 && code < (int)COUNT(error_codes); code++)
    rv = imc_metrics_sample(m, "imchat_gateway_errors_total", "code",
                            error_codes[code],
                            imc_gateway_errors_sent(gw, code));
  const uint64_t *bounds, *counts;
  uint64_t sum;
  size_t n = imc_gateway_ack_latency(gw, &bounds, &counts, &sum);
  if (rv == 0) /* milliseconds, written as seconds */
    rv = imc_metrics_histogram(m, "imchat_gateway_ack_latency_seconds",
                               "Time from a push to its DeliverAck.", bounds, n,
                               counts, sum, 3);
  return rv;
}

static int gw_ready(void *ud, const char **component, const char **state) {
  if (imc_gateway_accepting(ud))
    return 1;
  *component = "gateway";
  *state = "shutting down";
  return 0;
}

static const imc_metrics_source_vtbl gw_source = {
    sizeof(imc_metrics_source_vtbl), gw_collect, gw_ready};

const imc_metrics_source_vtbl *imc_api_gateway_source(void) {
  return &gw_source;
}

/* ---- router --------------------------------------------------------- */

static uint64_t rt_get(const void *rt, int stat) {
  return imc_router_stat_get(rt, (imc_router_stat)stat);
}

static int rt_collect(void *ud, imc_metrics *m) {
  return write_table(m, rt_metrics, COUNT(rt_metrics), rt_get, ud);
}

static const imc_metrics_source_vtbl rt_source = {
    sizeof(imc_metrics_source_vtbl), rt_collect, NULL};

const imc_metrics_source_vtbl *imc_api_router_source(void) {
  return &rt_source;
}

/* ---- worker --------------------------------------------------------- */

static uint64_t wk_get(const void *w, int stat) {
  return imc_worker_stat_get(w, (imc_worker_stat)stat);
}

static int wk_collect(void *ud, imc_metrics *m) {
  imc_worker *w = ud;
  int rv = write_table(m, wk_metrics, COUNT(wk_metrics), wk_get, w);
  if (rv == 0)
    rv = imc_metrics_family(m, "imchat_worker_healthy", GAUGE,
                            "1 while the worker's last store or queue "
                            "operation succeeded.");
  if (rv == 0)
    rv = imc_metrics_sample(m, "imchat_worker_healthy", NULL, NULL,
                            imc_worker_healthy(w) ? 1 : 0);
  return rv;
}

static int wk_ready(void *ud, const char **component, const char **state) {
  if (imc_worker_healthy(ud))
    return 1;
  *component = "worker";
  *state = "failing";
  return 0;
}

static const imc_metrics_source_vtbl wk_source = {
    sizeof(imc_metrics_source_vtbl), wk_collect, wk_ready};

const imc_metrics_source_vtbl *imc_api_worker_source(void) {
  return &wk_source;
}
