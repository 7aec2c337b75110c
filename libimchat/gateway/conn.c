/*
 * Connection lifecycle: the connection list, the dirty list of
 * connections with output, the output queue and its writes, teardown,
 * timers and heartbeats, and the per-connection public calls.
 */
#include "gateway/gateway_int.h"

#include <stdio.h>
#include <string.h>

static void list_remove(imc_conn **head, imc_conn *c, imc_conn **prev,
                        imc_conn **next) {
  if (*prev)
    (*prev)->next = *next;
  else
    *head = *next;
  if (*next)
    (*next)->prev = *prev;
}

void gw_dirty_add(imc_conn *c) {
  imc_gateway *gw = c->gw;
  if (c->flags & (F_DIRTY | F_BLOCKED))
    return;
  c->flags |= F_DIRTY;
  c->dprev = NULL;
  c->dnext = gw->dirty;
  if (gw->dirty)
    gw->dirty->dprev = c;
  gw->dirty = c;
}

void gw_dirty_remove(imc_conn *c) {
  if (!(c->flags & F_DIRTY))
    return;
  flags_clear(c, F_DIRTY);
  if (c->dprev)
    c->dprev->dnext = c->dnext;
  else
    c->gw->dirty = c->dnext;
  if (c->dnext)
    c->dnext->dprev = c->dprev;
  c->dprev = c->dnext = NULL;
}

imc_reg_entry gw_reg_entry(imc_conn *c) {
  imc_reg_entry e = {sizeof(e), c->user, c->device, c->gw->o.node_id, c->id};
  return e;
}

/* Releases every un-ACKed push of c; with notify, each goes to the
 * upstream's slow path first. */
static void inflight_drop(imc_conn *c, int notify) {
  imc_gateway *gw = c->gw;
  push *p = c->ifl_head;
  c->ifl_head = c->ifl_tail = NULL;
  while (p) {
    push *next = p->next;
    p->next = NULL;
    if (notify)
      gw_report(gw, p, REP_UNDELIVERED);
    else
      gw_push_free(gw, p);
    p = next;
  }
}

void gw_inflight_fail(imc_conn *c) {
  inflight_drop(c, 1);
}

/* Releases c. Un-ACKed pushes go back to the upstream first. */
void gw_conn_free(imc_conn *c, enum release_mode mode) {
  imc_gateway *gw = c->gw;
  gw_user_detach(gw, c);
  gw_peer_release(c);
  if (mode != REL_SILENT && (c->flags & F_REGISTERED))
    gw_lease_unregister(c);
  inflight_drop(c, mode != REL_SILENT);
  gw_pending_detach_all(c);
  gw_flow_conn_free(c);
  if (c->reply)
    c->reply->c = NULL;
  gw_dirty_remove(c);
  list_remove(&gw->conns, c, &c->prev, &c->next);
  imc_theap_remove(&gw->timers, &c->timer);
  if (c->ws)
    wslay_event_context_free(c->ws);
  if (c->state == ST_WS)
    gw->stats[IMC_GW_STAT_WEBSOCKETS]--;
  if (c->pmd_bits)
    gw_deflate_conn_release(gw);
  gw->stats[IMC_GW_STAT_CONNECTIONS]--;
  gw->stats[IMC_GW_STAT_OUTBOUND_BYTES] -= c->out.len;
  imc_bufq_free(&c->out, &gw->mem);
  imc_free(&gw->mem, c->head);
  imc_free(&gw->mem, c->user);
  imc_free(&gw->mem, c->ctl);
  void *ud = c->ud;
  imc_free(&gw->mem, c);
  if (mode == REL_CLOSE)
    gw->o.transport.close(gw->o.transport_ud, ud);
}

static int64_t conn_deadline(imc_conn *c) {
  imc_gateway *gw = c->gw;
  switch (c->state) {
  case ST_HTTP:
  case ST_AUTH:
    return c->opened_at + gw->o.handshake_ms;
  case ST_REPLY:
  case ST_DONE:
    return c->close_at;
  default:
    break;
  }
  if (c->flags & F_CLOSING)
    return c->close_at;
  int64_t at = c->next_beat;
  int64_t idle = c->last_rx + gw->o.idle_ms;
  if (idle < at)
    at = idle;
  if (c->ifl_head && c->ifl_head->deadline < at)
    at = c->ifl_head->deadline;
  /* Sends are appended in time order with one timeout: the first is due
   * first. */
  if (c->pend_head && c->pend_head->kind == PEND_SEND &&
      c->pend_head->deadline < at)
    at = c->pend_head->deadline;
  if (c->wait && c->wait_deadline < at)
    at = c->wait_deadline;
  return at;
}

/* The timer is in the heap from conn_new on, so moving it never
 * allocates. */
void gw_conn_schedule(imc_conn *c) {
  imc_theap_set(&c->gw->timers, &c->gw->mem, &c->timer, conn_deadline(c));
}

/*
 * Closes c if it is finished: an abort, a close handshake that is done,
 * or an HTTP answer that has been written. Returns 0 if c lives on, else
 * IMC_ERR_CLOSED (c is freed).
 */
int gw_conn_check(imc_conn *c) {
  if (c->flags & F_ABORT) {
    int rv = (c->flags & F_NOMEM) ? IMC_ERR_NOMEM : IMC_ERR_CLOSED;
    gw_conn_free(c, REL_CLOSE);
    return rv;
  }
  if (c->out.len != 0)
    return 0;
  if (c->state == ST_DONE) {
    gw_conn_free(c, REL_CLOSE);
    return IMC_ERR_CLOSED;
  }
  if (c->state == ST_WS && (c->flags & F_CLOSING) &&
      (c->flags & (F_CLOSE_RECEIVED | F_READ_DONE))) {
    gw_conn_free(c, REL_CLOSE);
    return IMC_ERR_CLOSED;
  }
  return 0;
}

int gw_queue_bytes(imc_conn *c, const void *data, size_t len) {
  imc_gateway *gw = c->gw;
  if (imc_bufq_append(&c->out, &gw->mem, data, len) != 0)
    return IMC_ERR_NOMEM;
  gw->stats[IMC_GW_STAT_OUTBOUND_BYTES] += len;
  gw_dirty_add(c);
  return 0;
}

/* Writes what c has queued. Returns 0 or IMC_ERR_CLOSED (c freed). */
int gw_conn_write(imc_conn *c) {
  imc_gateway *gw = c->gw;
  gw_dirty_remove(c);
  flags_clear(c, F_BLOCKED);
  while (c->out.len > 0) {
    struct iovec iov[IOV_BATCH];
    int n = imc_bufq_iov(&c->out, iov, IOV_BATCH);
    ssize_t w = gw->o.transport.send(gw->o.transport_ud, c->ud, iov, n);
    if (w == IMC_ERR_WOULDBLOCK) {
      c->flags |= F_BLOCKED;
      break;
    }
    if (w < 0) {
      c->flags |= F_ABORT;
      break;
    }
    if ((size_t)w > c->out.len)
      w = (ssize_t)c->out.len;
    imc_bufq_consume(&c->out, &gw->mem, (size_t)w);
    gw->stats[IMC_GW_STAT_OUTBOUND_BYTES] -= (uint64_t)w;
  }
  return gw_conn_check(c);
}

void gw_conn_timeout(imc_conn *c, int64_t now) {
  imc_gateway *gw = c->gw;
  if (c->state == ST_HTTP || c->state == ST_AUTH) {
    stat_inc(gw, IMC_GW_STAT_HANDSHAKE_TIMEOUTS);
    gw_log(gw, IMC_LOG_DEBUG, "conn %llu: handshake timeout",
           (unsigned long long)c->id);
    gw_conn_free(c, REL_CLOSE);
    return;
  }
  if (c->state == ST_DONE || c->state == ST_REPLY || (c->flags & F_CLOSING)) {
    if (now >= c->close_at) {
      gw_conn_free(c, REL_CLOSE);
      return;
    }
    gw_conn_schedule(c);
    return;
  }
  while (c->ifl_head && c->ifl_head->deadline <= now) {
    push *p = c->ifl_head;
    c->ifl_head = p->next;
    if (c->ifl_head == NULL)
      c->ifl_tail = NULL;
    p->next = NULL;
    stat_inc(gw, IMC_GW_STAT_ACK_TIMEOUTS);
    gw_report(gw, p, REP_UNDELIVERED);
  }
  /* A send the upstream did not complete in time: the client resends
   * (same client_msg_id, deduplicated by the router); the late completion
   * finds an orphan and only frees it. */
  while (c->pend_head && c->pend_head->kind == PEND_SEND &&
         c->pend_head->deadline <= now) {
    pending *p = c->pend_head;
    uint64_t id = p->frame_id;
    gw_pending_orphan(p);
    gw_log(gw, IMC_LOG_WARN, "conn %llu (%s/%s): send %llu timed out",
           (unsigned long long)c->id, c->user, c->device,
           (unsigned long long)id);
    gw_send_error(c, id, IMC_ERR_UNAVAILABLE, "routing timed out; resend");
    gw_pending_drain(c); /* later sends answered meanwhile */
  }
  if (c->wait && c->wait_deadline <= now)
    gw_flow_wait_expired(c);
  if (now - c->last_rx >= gw->o.idle_ms) {
    stat_inc(gw, IMC_GW_STAT_IDLE_CLOSED);
    gw_log(gw, IMC_LOG_INFO, "conn %llu (%s/%s): idle, closing",
           (unsigned long long)c->id, c->user, c->device);
    gw_inflight_fail(c);
    gw_ws_close(c, 1001, "idle timeout");
  } else if (now >= c->next_beat) {
    /* The registry entry lives with the node's lease (lease.c). */
    gw_ws_put(c, IMC_WS_PING, NULL, 0);
    while (c->next_beat <= now)
      c->next_beat += gw->o.heartbeat_ms;
  }
  if (gw_conn_check(c) == 0)
    gw_conn_schedule(c);
}

int imc_gateway_conn_new(imc_gateway *gw, imc_conn **out, void *conn_ud) {
  if (gw == NULL || out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (gw->shutting_down)
    return IMC_ERR_CLOSED;
  imc_conn *c = imc_calloc(&gw->mem, 1, sizeof(*c));
  if (c == NULL)
    return IMC_ERR_NOMEM;
  c->gw = gw;
  c->ud = conn_ud;
  c->id = ++gw->next_id;
  c->state = ST_HTTP;
  c->opened_at = now_ms(gw);
  imc_timer_init(&c->timer);
  if (imc_theap_set(&gw->timers, &gw->mem, &c->timer,
                    c->opened_at + gw->o.handshake_ms) != 0) {
    imc_free(&gw->mem, c);
    return IMC_ERR_NOMEM;
  }
  c->next = gw->conns;
  if (gw->conns)
    gw->conns->prev = c;
  gw->conns = c;
  gw->stats[IMC_GW_STAT_CONNECTIONS]++;
  stat_inc(gw, IMC_GW_STAT_ACCEPTED);
  *out = c;
  return 0;
}

int imc_gateway_conn_recv(imc_gateway *gw, imc_conn *c, const uint8_t *data,
                          size_t len) {
  if (gw == NULL || c == NULL || (data == NULL && len > 0))
    return IMC_ERR_INVALID_ARGUMENT;
  if (c->flags & F_ABORT)
    return gw_conn_check(c);
  switch (c->state) {
  case ST_HTTP:
    return gw_http_recv(c, data, len);
  case ST_WS:
    return gw_ws_feed(c, data, len);
  case ST_AUTH:
    /* Bytes sent ahead of the 101 answer are kept for the WebSocket. */
    if (c->head_len + len > 2 * HEAD_MAX) {
      c->flags |= F_ABORT;
    } else if (len > 0) {
      char *nb = imc_realloc(&gw->mem, c->head, c->head_len + len);
      if (nb == NULL) {
        c->flags |= F_ABORT | F_NOMEM;
      } else {
        memcpy(nb + c->head_len, data, len);
        c->head = nb;
        c->head_len += len;
      }
    }
    return gw_conn_check(c);
  default:
    return 0; /* an answer is on its way out; the rest is ignored */
  }
}

int imc_gateway_conn_writable(imc_gateway *gw, imc_conn *c) {
  if (gw == NULL || c == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (c->flags & F_ABORT)
    return gw_conn_check(c);
  return gw_conn_write(c);
}

void imc_gateway_conn_closed(imc_gateway *gw, imc_conn *c) {
  if (gw == NULL || c == NULL)
    return;
  gw_conn_free(c, REL_LOST);
}

void *imc_gateway_conn_get_user_data(const imc_conn *c) {
  return c ? c->ud : NULL;
}
