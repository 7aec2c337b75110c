/* Group membership through the store, keeping the members cache
 * coherent. */
#include "router/router_int.h"

#include <stdio.h>
#include <string.h>

typedef struct groupop {
  imc_router *r;
  imc_done_cb done;
  void *done_ud;
  char group[IMC_ID_MAX + 1];
} groupop;

static void group_changed(void *ud, int status) {
  groupop *g = ud;
  imc_router *r = g->r;
  r->pending--;
  imc_members_invalidate(r->members, g->group);
  g->done(g->done_ud, status);
  imc_free(&r->mem, g);
}

static int group_change(imc_router *r, const char *group_id,
                        const char *user_id, imc_done_cb done, void *done_ud,
                        int add) {
  if (r == NULL || done == NULL || group_id == NULL || user_id == NULL ||
      !imc_id_valid(group_id, strlen(group_id)) ||
      !imc_id_valid(user_id, strlen(user_id)))
    return IMC_ERR_INVALID_ARGUMENT;
  groupop *g = imc_malloc(&r->mem, sizeof(*g));
  if (g == NULL)
    return IMC_ERR_NOMEM;
  g->r = r;
  g->done = done;
  g->done_ud = done_ud;
  snprintf(g->group, sizeof(g->group), "%s", group_id);
  r->pending++;
  int rv = add ? r->o.store.group_add(r->o.store_ud, group_id, user_id,
                                      group_changed, g)
               : r->o.store.group_remove(r->o.store_ud, group_id, user_id,
                                         group_changed, g);
  if (rv != 0) {
    r->pending--;
    imc_free(&r->mem, g);
  }
  return rv;
}

int imc_router_group_add(imc_router *r, const char *group_id,
                         const char *user_id, imc_done_cb done, void *done_ud) {
  return group_change(r, group_id, user_id, done, done_ud, 1);
}

int imc_router_group_remove(imc_router *r, const char *group_id,
                            const char *user_id, imc_done_cb done,
                            void *done_ud) {
  return group_change(r, group_id, user_id, done, done_ud, 0);
}

int imc_router_group_members(imc_router *r, const char *group_id,
                             imc_list_cb done, void *done_ud) {
  if (r == NULL || done == NULL || group_id == NULL ||
      !imc_id_valid(group_id, strlen(group_id)))
    return IMC_ERR_INVALID_ARGUMENT;
  return imc_members_get(r->members, group_id, done, done_ud);
}

void imc_router_group_invalidate(imc_router *r, const char *group_id) {
  if (r != NULL && group_id != NULL)
    imc_members_invalidate(r->members, group_id);
}
