/*
 * Work waiting for a completion that concerns one connection: sends with
 * the upstream and key lookups with the key source. The records outlive
 * their connection (on the gateway's orphan list), so that a late
 * completion finds out it has nobody to answer instead of touching freed
 * memory, and imc_gateway_pending can count them.
 *
 * Answers leave in the order of the requests: a send completed while an
 * older send of its connection still waits keeps its encoded answer on
 * its record, which stays on the connection's list (and counts against
 * its limit of sends in flight) until everything before it is answered.
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
  if (kind == PEND_SEND) {
    c->n_sends++;
    c->gw->stats[IMC_GW_STAT_SENDS_IN_FLIGHT]++;
  }
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
  if (c && p->kind == PEND_SEND) {
    c->n_sends--;
    gw_flow_conn_room(c);
  }
}

void gw_pending_free(pending *p) {
  imc_gateway *gw = p->gw;
  pending_unlink(p);
  gw->n_pending--;
  if (p->kind == PEND_SEND)
    gw->stats[IMC_GW_STAT_SENDS_IN_FLIGHT]--;
  imc_free(&gw->mem, p->answer);
  imc_free(&gw->mem, p);
}

void gw_pending_orphan(pending *p) {
  if (p->c == NULL)
    return;
  imc_gateway *gw = p->gw;
  if (p->answered) {
    /* No completion is coming for it any more. */
    gw_pending_free(p);
    return;
  }
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

void gw_pending_drain(imc_conn *c) {
  while (c->pend_head && c->pend_head->answered) {
    pending *p = c->pend_head;
    uint8_t *a = p->answer;
    size_t len = p->answer_len;
    p->answer = NULL;
    gw_pending_free(p);
    if (a != NULL && c->state == ST_WS)
      gw_ws_queue(c, a, len);
    imc_free(&c->gw->mem, a);
  }
}
