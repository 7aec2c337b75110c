/*
 * Work waiting for a completion that concerns one connection: sends with
 * the upstream and key lookups with the key source. The records outlive
 * their connection (on the gateway's orphan list), so that a late
 * completion finds out it has nobody to answer instead of touching freed
 * memory, and imc_gateway_pending can count them.
 */
#include "gateway/gateway_int.h"

pending *gw_pending_new(imc_conn *c, enum pending_kind kind) {
  pending *p = imc_calloc(&c->gw->mem, 1, sizeof(*p));
  if (p == NULL)
    return NULL;
  p->gw = c->gw;
  p->c = c;
  p->kind = (uint8_t)kind;
  p->prev = c->pend_tail;
  if (c->pend_tail)
    c->pend_tail->next = p;
  else
    c->pend_head = p;
  c->pend_tail = p;
  c->gw->n_pending++;
  return p;
}

static void pending_unlink(pending *p) {
  imc_conn *c = p->c;
  if (p->prev)
    p->prev->next = p->next;
  else if (c)
    c->pend_head = p->next;
  else
    p->gw->orphans = p->next;
  if (p->next)
    p->next->prev = p->prev;
  else if (c)
    c->pend_tail = p->prev;
  p->prev = p->next = NULL;
  p->c = NULL;
}

void gw_pending_free(pending *p) {
  pending_unlink(p);
  p->gw->n_pending--;
  imc_free(&p->gw->mem, p);
}

void gw_pending_orphan(pending *p) {
  if (p->c == NULL)
    return;
  imc_gateway *gw = p->gw;
  pending_unlink(p);
  p->next = gw->orphans;
  if (gw->orphans)
    gw->orphans->prev = p;
  gw->orphans = p;
}

void gw_pending_detach_all(imc_conn *c) {
  while (c->pend_head)
    gw_pending_orphan(c->pend_head);
}

void gw_pending_free_orphans(imc_gateway *gw) {
  while (gw->orphans)
    gw_pending_free(gw->orphans);
}
