/*
 * Backpressure on sends. Each connection has at most max_conn_sends sends
 * with the upstream (their answers included, while they wait for an
 * older one), the gateway at most max_sends. A connection that reaches
 * its limit is paused: the wslay glue stops between two frames, the rest
 * of the input is kept (at most what the host read in one go), and the
 * host is told to stop reading (the transport's set_read, or
 * imc_gateway_conn_want_read), so TCP flow control holds the client back.
 *
 * A send that finds the gateway's total reached waits in its connection's
 * one wait slot (the connection pauses) and joins gw->waitq; it gets
 * Error UNAVAILABLE "server busy" when admit_ms pass first. Connections
 * that may read again go on gw->resumeq. Both are worked off from
 * imc_gateway_on_timeout (the next timeout is 0 while there is work), never
 * from inside a completion: a completion may come while another
 * connection's input is being parsed.
 */
#include "gateway/gateway_int.h"

#include <string.h>

/* A paused connection resumes once its sends are down to this. */
static uint32_t resume_mark(const imc_gateway *gw) {
  return gw->o.max_conn_sends - (gw->o.max_conn_sends + 3) / 4;
}

static int gw_has_room(const imc_gateway *gw) {
  return gw->stats[IMC_GW_STAT_SENDS_IN_FLIGHT] < gw->o.max_sends;
}

int gw_flow_can_admit(const imc_conn *c) {
  return c->n_sends < c->gw->o.max_conn_sends && gw_has_room(c->gw) &&
         c->wait == NULL;
}

static void set_read(imc_conn *c, int enabled) {
  imc_gateway *gw = c->gw;
  if (gw->o.transport.set_read)
    gw->o.transport.set_read(gw->o.transport_ud, c->ud, enabled);
}

static void pause_conn(imc_conn *c) {
  if (c->flags & F_PAUSED)
    return;
  c->flags |= F_PAUSED;
  c->gw->stats[IMC_GW_STAT_PAUSED]++;
  set_read(c, 0);
}

/* Doubly linked lists of connections through a pair of link fields. */
#define LINK(head, tail, c, prev, next)                                        \
  do {                                                                         \
    (c)->next = NULL;                                                          \
    (c)->prev = (tail);                                                        \
    if (tail)                                                                  \
      (tail)->next = (c);                                                      \
    else                                                                       \
      (head) = (c);                                                            \
    (tail) = (c);                                                              \
  } while (0)
#define UNLINK(head, tail, c, prev, next)                                      \
  do {                                                                         \
    if ((c)->prev)                                                             \
      (c)->prev->next = (c)->next;                                             \
    else                                                                       \
      (head) = (c)->next;                                                      \
    if ((c)->next)                                                             \
      (c)->next->prev = (c)->prev;                                             \
    else                                                                       \
      (tail) = (c)->prev;                                                      \
    (c)->prev = (c)->next = NULL;                                              \
  } while (0)

static void waitq_remove(imc_conn *c) {
  imc_gateway *gw = c->gw;
  if (!(c->flags & F_WAITQ))
    return;
  flags_clear(c, F_WAITQ);
  UNLINK(gw->waitq_head, gw->waitq_tail, c, wq_prev, wq_next);
}

static void resumeq_remove(imc_conn *c) {
  imc_gateway *gw = c->gw;
  if (!(c->flags & F_RESUME))
    return;
  flags_clear(c, F_RESUME);
  UNLINK(gw->resumeq_head, gw->resumeq_tail, c, rs_prev, rs_next);
}

void gw_flow_admitted(imc_conn *c) {
  if (c->n_sends >= c->gw->o.max_conn_sends)
    pause_conn(c);
}

void gw_flow_conn_room(imc_conn *c) {
  imc_gateway *gw = c->gw;
  if (!(c->flags & F_PAUSED) || (c->flags & F_RESUME) || c->wait != NULL ||
      c->n_sends > resume_mark(gw))
    return;
  c->flags |= F_RESUME;
  LINK(gw->resumeq_head, gw->resumeq_tail, c, rs_prev, rs_next);
}

int gw_flow_wait(imc_conn *c, Imchat__V1__ClientFrame *f) {
  imc_gateway *gw = c->gw;
  if (c->wait != NULL)
    return 0;
  c->wait = f;
  c->wait_deadline = now_ms(gw) + gw->o.admit_ms;
  resumeq_remove(c);
  pause_conn(c);
  c->flags |= F_WAITQ;
  LINK(gw->waitq_head, gw->waitq_tail, c, wq_prev, wq_next);
  gw_conn_schedule(c);
  return 1;
}

static void wait_clear(imc_conn *c) {
  waitq_remove(c);
  imchat__v1__client_frame__free_unpacked(c->wait, &c->gw->pba);
  c->wait = NULL;
}

void gw_flow_wait_expired(imc_conn *c) {
  imc_gateway *gw = c->gw;
  uint64_t id = c->wait->id;
  wait_clear(c);
  stat_inc(gw, IMC_GW_STAT_BUSY);
  gw_send_error_ordered(c, id, IMC_ERR_UNAVAILABLE, BUSY_MESSAGE);
  gw_flow_conn_room(c);
}

int gw_flow_due(const imc_gateway *gw) {
  return gw->resumeq_head != NULL ||
         (gw->waitq_head != NULL && gw_has_room(gw));
}

/* Admits the waiting sends that fit, oldest first. */
static void admit_waiting(imc_gateway *gw) {
  imc_conn *c = gw->waitq_head;
  while (c && gw_has_room(gw)) {
    imc_conn *next = c->wq_next;
    if (c->n_sends < gw->o.max_conn_sends) {
      Imchat__V1__ClientFrame *f = c->wait;
      waitq_remove(c);
      c->wait = NULL;
      gw_start_send(c, f->id, f->send);
      imchat__v1__client_frame__free_unpacked(f, &gw->pba);
      gw_flow_conn_room(c);
    }
    c = next;
  }
}

void gw_flow_run(imc_gateway *gw) {
  admit_waiting(gw);
  /* Only those queued now: a connection fed below may come back, and
   * then waits for the next turn. */
  imc_conn *last = gw->resumeq_tail;
  while (gw->resumeq_head) {
    imc_conn *c = gw->resumeq_head;
    int final = c == last;
    resumeq_remove(c);
    if ((c->flags & F_PAUSED) && c->wait == NULL &&
        c->n_sends <= resume_mark(gw)) {
      flags_clear(c, F_PAUSED);
      gw->stats[IMC_GW_STAT_PAUSED]--;
      if (c->held) {
        uint8_t *buf = c->held;
        size_t n = c->held_len;
        c->held = NULL;
        c->held_len = 0;
        int rv = gw_ws_feed_now(c, buf, n);
        imc_free(&gw->mem, buf);
        if (rv == 0 && !(c->flags & F_PAUSED))
          set_read(c, 1);
      } else {
        set_read(c, 1);
      }
    }
    if (final)
      break;
  }
}

int gw_flow_hold(imc_conn *c, const uint8_t *data, size_t len) {
  imc_gateway *gw = c->gw;
  if (len == 0)
    return 0;
  uint8_t *nb = imc_realloc(&gw->mem, c->held, c->held_len + len);
  if (nb == NULL)
    return IMC_ERR_NOMEM;
  memcpy(nb + c->held_len, data, len);
  c->held = nb;
  c->held_len += len;
  return 0;
}

void gw_flow_conn_free(imc_conn *c) {
  imc_gateway *gw = c->gw;
  if (c->wait)
    wait_clear(c);
  resumeq_remove(c);
  if (c->flags & F_PAUSED) {
    flags_clear(c, F_PAUSED);
    gw->stats[IMC_GW_STAT_PAUSED]--;
  }
  imc_free(&gw->mem, c->held);
  c->held = NULL;
  c->held_len = 0;
}

int imc_gateway_conn_want_read(const imc_gateway *gw, const imc_conn *c) {
  if (gw == NULL || c == NULL)
    return 0;
  return !(c->flags & F_PAUSED) || (c->flags & F_CLOSING);
}
