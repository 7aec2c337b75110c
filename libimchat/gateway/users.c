/*
 * The index of upgraded connections by user id, for pushes.
 */
#include "gateway/gateway_int.h"

#include <stdio.h>
#include <string.h>

void gw_users_insert(imc_gateway *gw, imc_conn *c) {
  if (gw->n_users >= gw->users_cap * 2) {
    /* Grow; a failed allocation only makes the chains longer. */
    size_t cap = gw->users_cap * 4;
    imc_conn **b = imc_calloc(&gw->mem, cap, sizeof(*b));
    if (b != NULL) {
      for (size_t i = 0; i < gw->users_cap; i++) {
        imc_conn *x = gw->users[i];
        while (x) {
          imc_conn *nx = x->unext;
          size_t j = imc_hash_str(x->user) & (cap - 1);
          x->unext = b[j];
          b[j] = x;
          x = nx;
        }
      }
      imc_free(&gw->mem, gw->users);
      gw->users = b;
      gw->users_cap = cap;
    }
  }
  size_t i = imc_hash_str(c->user) & (gw->users_cap - 1);
  c->unext = gw->users[i];
  gw->users[i] = c;
  gw->n_users++;
}

void gw_users_remove(imc_gateway *gw, imc_conn *c) {
  imc_conn **pp = &gw->users[imc_hash_str(c->user) & (gw->users_cap - 1)];
  for (; *pp; pp = &(*pp)->unext) {
    if (*pp == c) {
      *pp = c->unext;
      gw->n_users--;
      return;
    }
  }
}

imc_conn *gw_users_first(imc_gateway *gw, const char *user) {
  return gw->users[imc_hash_str(user) & (gw->users_cap - 1)];
}
