/*
 * The index of upgraded connections by user id: one record per user with
 * connections here, found in O(1), holding the list of that user's
 * connections and the user's send bucket. Pushes to a user walk only its
 * own connections, and a connection joins or leaves in O(1) however many
 * devices the user has.
 */
#include "gateway/gateway_int.h"

#include <string.h>

static size_t slot(const imc_gateway *gw, const char *id) {
  return imc_hash_str(id) & (gw->users_cap - 1);
}

gw_user *gw_user_find(imc_gateway *gw, const char *id) {
  for (gw_user *u = gw->users[slot(gw, id)]; u; u = u->next)
    if (strcmp(u->id, id) == 0)
      return u;
  return NULL;
}

/* Quadruples the buckets when chains grow long; a failed allocation only
 * leaves them longer. */
static void grow(imc_gateway *gw) {
  size_t cap = gw->users_cap * 4;
  gw_user **b = imc_calloc(&gw->mem, cap, sizeof(*b));
  if (b == NULL)
    return;
  for (size_t i = 0; i < gw->users_cap; i++) {
    gw_user *u = gw->users[i];
    while (u) {
      gw_user *next = u->next;
      size_t j = imc_hash_str(u->id) & (cap - 1);
      u->next = b[j];
      b[j] = u;
      u = next;
    }
  }
  imc_free(&gw->mem, gw->users);
  gw->users = b;
  gw->users_cap = cap;
}

int gw_user_attach(imc_gateway *gw, imc_conn *c) {
  gw_user *u = gw_user_find(gw, c->user);
  if (u == NULL) {
    size_t len = strlen(c->user);
    u = imc_calloc(&gw->mem, 1, sizeof(*u) + len + 1);
    if (u == NULL)
      return IMC_ERR_NOMEM;
    memcpy(u->id, c->user, len + 1);
    /* A new user starts with a full bucket. */
    u->bucket.tokens = (int64_t)gw->o.user_burst * 1000;
    u->bucket.at = now_ms(gw);
    if (gw->n_users >= gw->users_cap * 2)
      grow(gw);
    size_t i = slot(gw, u->id);
    u->next = gw->users[i];
    gw->users[i] = u;
    gw->n_users++;
  }
  c->u = u;
  c->uprev = NULL;
  c->unext = u->conns;
  if (u->conns)
    u->conns->uprev = c;
  u->conns = c;
  u->n_conns++;
  return 0;
}

void gw_user_detach(imc_gateway *gw, imc_conn *c) {
  gw_user *u = c->u;
  if (u == NULL)
    return;
  if (c->uprev)
    c->uprev->unext = c->unext;
  else
    u->conns = c->unext;
  if (c->unext)
    c->unext->uprev = c->uprev;
  c->u = NULL;
  c->uprev = c->unext = NULL;
  if (--u->n_conns > 0)
    return;
  /* The last connection went: the record (and its bucket) goes too. The
   * chain holds users, not connections, so this walk stays short. */
  for (gw_user **pp = &gw->users[slot(gw, u->id)]; *pp; pp = &(*pp)->next) {
    if (*pp == u) {
      *pp = u->next;
      gw->n_users--;
      break;
    }
  }
  imc_free(&gw->mem, u);
}
