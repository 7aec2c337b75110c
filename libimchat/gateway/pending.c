/*
 * Operations waiting for a completion that concerns one connection.
 */
#include "gateway/gateway_int.h"

#include <stdio.h>
#include <string.h>

pend *gw_pend_new(imc_conn *c, uint64_t frame_id) {
  pend *p = imc_malloc(&c->gw->mem, sizeof(*p));
  if (p == NULL)
    return NULL;
  p->gw = c->gw;
  p->c = c;
  p->frame_id = frame_id;
  p->prev = NULL;
  p->next = c->pends;
  if (c->pends)
    c->pends->prev = p;
  c->pends = p;
  return p;
}

/* Unlinks p from its connection (if any) and frees it. */
void gw_pend_free(pend *p) {
  imc_conn *c = p->c;
  if (c != NULL) {
    if (p->prev)
      p->prev->next = p->next;
    else
      c->pends = p->next;
    if (p->next)
      p->next->prev = p->prev;
  }
  imc_free(&p->gw->mem, p);
}
