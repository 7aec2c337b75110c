/*
 * What the files of the HTTP API share: the api object, the context of
 * one request and the way answers go out (reply.c). The files:
 *   api.c      options and the object's life cycle
 *   routes.c   dispatch, request parsing, the caller and admin checks
 *   messages.c GET /offline and conversation history
 *   pages.c    pages of messages as JSON or protobuf
 *   groups.c   group membership routes, and the in-process router's groups
 *   metrics.c  GET /metrics (the Prometheus writer) and GET /readyz
 *   sources.c  the gateway's, router's and worker's metrics sources
 */
#ifndef IMC_API_INTERNAL_H
#define IMC_API_INTERNAL_H

#include <imchat/api.h>

#include "protocol/http.h"
#include "protocol/jsonw.h"
#include "util/log.h"

#define CONV_MAX (2 + IMC_ID_MAX + 1 + IMC_ID_MAX) /* "p:<a>:<b>" */

#define CT_JSON "application/json"
#define CT_PROTO "application/x-protobuf"
#define CT_METRICS "text/plain; version=0.0.4"

struct imc_api_options {
  imc_mem mem;
  imc_store_vtbl store;
  void *store_ud;
  imc_groups_vtbl groups; /* add == NULL: none */
  void *groups_ud;
  char *admin;
  size_t admin_len;
  imc_clock clock;
  imc_logger log;
};

/* A source of /metrics and /readyz; the vtable copied (members past its
 * struct_size NULL). */
typedef struct api_source {
  imc_metrics_source_vtbl vt;
  void *ud;
} api_source;

struct imc_api {
  imc_mem mem;
  imc_api_options o; /* admin owned by the api */
  api_source sources[IMC_API_SOURCES_MAX];
  size_t n_sources;
  imc_api_group_cb group_changed;
  void *group_changed_ud;
  void *user_data;
  size_t pending;
};

/* What a request is about; names for the log in reply.c. */
enum route {
  RT_OFFLINE,
  RT_HISTORY,
  RT_MEMBER_ADD,
  RT_MEMBER_REMOVE,
  RT_MEMBERS,
  RT_READYZ,
  RT_METRICS
};

typedef struct api_req {
  imc_api *api;
  imc_http_reply *reply;
  enum route route;
  int proto; /* answer pages as protobuf */
  uint64_t after;
  uint32_t limit;
  int64_t started;
  char user[IMC_ID_MAX + 1]; /* the caller, or the member for admin routes */
  char group[IMC_ID_MAX + 1];
  char conv[CONV_MAX + 1];
} api_req;

#define api_log(a, ...) imc_logf(&(a)->o.log, __VA_ARGS__)

/* ---- reply.c: every answer goes out through one of these, which free r */

/* The body answered when not even an error body can be built. */
extern const char imc_api_oom_body[];
extern const size_t imc_api_oom_body_len;

/* The route's name for the log. */
const char *imc_api_route_name(enum route route);
int64_t imc_api_now_ms(imc_api *a);
void imc_api_finish(api_req *r, int status, const char *ctype, const void *body,
                    size_t len);
/* {"error":{...}}; message is one of our constant texts (not escaped). */
void imc_api_finish_error(api_req *r, int status, const char *message);
void imc_api_finish_oom(api_req *r);
/* A failed store or group operation: NOMEM is ours (500), the rest the
 * backend's (503). */
void imc_api_finish_backend_error(api_req *r, int status);
/* Sends what b holds, or 500 if building it failed. Frees b. */
void imc_api_finish_wbuf(api_req *r, int status, const char *ctype,
                         imc_wbuf *b);
/* Counts a store or group operation in flight (imc_api_pending). */
void imc_api_op_begin(imc_api *a);
void imc_api_op_end(imc_api *a);

/* ---- routes.c */

/* Checks the admin token; answers 403/401 and returns 0 if it fails. */
int imc_api_need_admin(api_req *r, const imc_http_request *hr);
/* Copies the authenticated caller into r->user; answers 401 and returns
 * 0 if there is none. */
int imc_api_need_user(api_req *r, const imc_http_request *hr);
/* Percent-decodes seg into out (capacity cap) as a valid id. */
int imc_api_seg_id(imc_span seg, char *out, size_t cap);

/* ---- the routes */

void imc_api_serve_offline(api_req *r, const imc_http_request *hr);
void imc_api_serve_history(api_req *r, const imc_http_request *hr,
                           imc_span seg);
void imc_api_serve_member(api_req *r, const imc_http_request *hr, imc_span gseg,
                          imc_span useg);
void imc_api_serve_members(api_req *r, const imc_http_request *hr,
                           imc_span gseg);
/* Starts groups.members of r->group with done; answers 503 if there is
 * no group membership. For the history of a group conversation. */
void imc_api_group_members(api_req *r, imc_list_cb done);
void imc_api_serve_readyz(api_req *r);
void imc_api_serve_metrics(api_req *r);

/* ---- pages.c */

/* Writes a page of n messages into b: JSON, or protobuf OfflinePage if
 * proto. Errors are left in b->err. */
void imc_api_page_encode(imc_wbuf *b, int proto, const imc_msg *const *msgs,
                         const uint64_t *cursors, size_t n, uint64_t next,
                         int has_more);

#endif /* IMC_API_INTERNAL_H */
