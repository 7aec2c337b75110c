/*
 * Group membership for an admin (PUT, DELETE
 * /v1/groups/{group}/members/{user}, GET /v1/groups/{group}/members),
 * through the imc_groups_vtbl the host configured, and that vtable for an
 * in-process router.
 */
#include "api/internal.h"

#include <imchat/router.h>

#include <string.h>

/* The group membership; answers 503 and returns NULL if there is none. */
static const imc_groups_vtbl *need_groups(api_req *r) {
  const imc_groups_vtbl *g = &r->api->o.groups;
  if (g->add == NULL) {
    imc_api_finish_error(r, 503, "group membership is not configured");
    return NULL;
  }
  return g;
}

void imc_api_group_members(api_req *r, imc_list_cb done) {
  imc_api *a = r->api;
  const imc_groups_vtbl *g = need_groups(r);
  if (g == NULL)
    return;
  imc_api_op_begin(a);
  int rv = g->members(a->o.groups_ud, r->group, done, r);
  if (rv != 0) {
    imc_api_op_end(a);
    imc_api_finish_backend_error(r, rv);
  }
}

static void member_changed(void *ud, int status) {
  api_req *r = ud;
  imc_api *a = r->api;
  imc_api_op_end(a);
  if (status != 0) {
    imc_api_finish_backend_error(r, status);
    return;
  }
  int added = r->route == RT_MEMBER_ADD;
  api_log(a, IMC_LOG_INFO, "group %s: %s %s", r->group,
          added ? "added" : "removed", r->user);
  if (a->group_changed)
    a->group_changed(a->group_changed_ud, r->group);
  imc_wbuf b;
  imc_wbuf_init(&b, &a->mem);
  imc_jsonw w;
  imc_jsonw_init(&w, &b);
  imc_jsonw_object_begin(&w);
  imc_jsonw_kv_string(&w, "group_id", r->group);
  imc_jsonw_kv_string(&w, "user_id", r->user);
  imc_jsonw_kv_bool(&w, "member", added);
  imc_jsonw_object_end(&w);
  imc_wbuf_append(&b, "\n", 1);
  imc_api_finish_wbuf(r, 200, CT_JSON, &b);
}

void imc_api_serve_member(api_req *r, const imc_http_request *hr, imc_span gseg,
                          imc_span useg) {
  imc_api *a = r->api;
  if (!imc_api_need_admin(r, hr))
    return;
  if (!imc_api_seg_id(gseg, r->group, sizeof(r->group))) {
    imc_api_finish_error(r, 400, "invalid group id");
    return;
  }
  if (!imc_api_seg_id(useg, r->user, sizeof(r->user))) {
    imc_api_finish_error(r, 400, "invalid user id");
    return;
  }
  const imc_groups_vtbl *g = need_groups(r);
  if (g == NULL)
    return;
  void *ud = a->o.groups_ud;
  imc_api_op_begin(a);
  int rv = r->route == RT_MEMBER_ADD
               ? g->add(ud, r->group, r->user, member_changed, r)
               : g->remove(ud, r->group, r->user, member_changed, r);
  if (rv != 0) {
    imc_api_op_end(a);
    imc_api_finish_backend_error(r, rv);
  }
}

static void members_listed(void *ud, int status, const char *const *items,
                           size_t n) {
  api_req *r = ud;
  imc_api *a = r->api;
  imc_api_op_end(a);
  if (status == IMC_ERR_NOT_FOUND) {
    status = 0;
    n = 0;
  }
  if (status != 0) {
    imc_api_finish_backend_error(r, status);
    return;
  }
  imc_wbuf b;
  imc_wbuf_init(&b, &a->mem);
  imc_jsonw w;
  imc_jsonw_init(&w, &b);
  imc_jsonw_object_begin(&w);
  imc_jsonw_key(&w, "members");
  imc_jsonw_array_begin(&w);
  for (size_t i = 0; i < n; i++)
    imc_jsonw_string(&w, items[i]);
  imc_jsonw_array_end(&w);
  imc_jsonw_object_end(&w);
  imc_wbuf_append(&b, "\n", 1);
  imc_api_finish_wbuf(r, 200, CT_JSON, &b);
}

void imc_api_serve_members(api_req *r, const imc_http_request *hr,
                           imc_span gseg) {
  if (!imc_api_need_admin(r, hr))
    return;
  if (!imc_api_seg_id(gseg, r->group, sizeof(r->group))) {
    imc_api_finish_error(r, 400, "invalid group id");
    return;
  }
  imc_api_group_members(r, members_listed);
}

/* ------------------------------------------------------------------ */
/* The in-process router's membership                                   */
/* ------------------------------------------------------------------ */

static int router_add(void *ud, const char *group_id, const char *user_id,
                      imc_done_cb done, void *done_ud) {
  return imc_router_group_add(ud, group_id, user_id, done, done_ud);
}

static int router_remove(void *ud, const char *group_id, const char *user_id,
                         imc_done_cb done, void *done_ud) {
  return imc_router_group_remove(ud, group_id, user_id, done, done_ud);
}

static int router_members(void *ud, const char *group_id, imc_list_cb done,
                          void *done_ud) {
  return imc_router_group_members(ud, group_id, done, done_ud);
}

static const imc_groups_vtbl router_groups = {
    sizeof(imc_groups_vtbl), router_add, router_remove, router_members};

const imc_groups_vtbl *imc_api_router_groups(void) {
  return &router_groups;
}
