/*
 * Pushes to connected users: Deliver frames that wait for their
 * DeliverAck (the message is shared by every connection it went to) and
 * DeliveryStatus frames.
 */
#include "gateway/gateway_int.h"

#include <stdio.h>
#include <string.h>

/* One allocation holding msg and everything it points to. */
static shmsg *shmsg_new(imc_gateway *gw, const imc_msg *m) {
  shmsg *sm = imc_malloc(&gw->mem, sizeof(shmsg) + imc_msg_data_size(m));
  if (sm == NULL)
    return NULL;
  sm->refs = 0;
  imc_msg_copy(&sm->msg, (char *)(sm + 1), m);
  return sm;
}

void gw_shmsg_unref(imc_gateway *gw, shmsg *sm) {
  if (--sm->refs == 0)
    imc_free(&gw->mem, sm);
}

static int can_push(const imc_conn *c) {
  return c->state == ST_WS && !(c->flags & (F_CLOSING | F_ABORT));
}

int imc_gateway_deliver(imc_gateway *gw, const char *user_id,
                        const char *skip_device, const imc_msg *msg) {
  if (gw == NULL || user_id == NULL || msg == NULL || msg->msg_id == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  shmsg *sm = NULL;
  uint8_t *frame = NULL;
  size_t frame_len = 0;
  int count = 0, rv = 0;
  int64_t deadline = now_ms(gw) + gw->o.ack_ms;
  gw_user *u = gw_user_find(gw, user_id);
  for (imc_conn *c = u ? u->conns : NULL; c; c = c->unext) {
    if (!can_push(c) || (skip_device && strcmp(c->device, skip_device) == 0))
      continue;
    if (sm == NULL) {
      Imchat__V1__Message pm;
      imc_pb_from_msg(&pm, msg);
      Imchat__V1__Deliver d = IMCHAT__V1__DELIVER__INIT;
      d.message = &pm;
      Imchat__V1__ServerFrame f = IMCHAT__V1__SERVER_FRAME__INIT;
      f.body_case = IMCHAT__V1__SERVER_FRAME__BODY_DELIVER;
      f.deliver = &d;
      stat_inc(gw, IMC_GW_STAT_DELIVER_ENCODES);
      sm = shmsg_new(gw, msg);
      if (sm == NULL ||
          imc_pb_pack_server_frame(&f, &gw->mem, &frame, &frame_len) != 0) {
        rv = IMC_ERR_NOMEM;
        break;
      }
    }
    /* The record carries user and device so that it can later become a
     * report without allocating (see reports.c). */
    size_t ul = strlen(c->user), dl = strlen(c->device);
    push *p = imc_malloc(&gw->mem, sizeof(*p) + ul + dl + 2);
    if (p == NULL) {
      rv = IMC_ERR_NOMEM;
      break;
    }
    int q = gw_ws_queue(c, frame, frame_len);
    if (q != 0 && q != IMC_ERR_QUEUE_FULL) {
      /* Nothing went out on c: no ACK to wait for. */
      imc_free(&gw->mem, p);
      continue;
    }
    /* A queue that overflowed closes c, and its pushes, this one
     * included, go back to the upstream then. */
    p->next = p->prev = NULL;
    p->gw = gw;
    p->sm = sm;
    p->deadline = deadline;
    p->kind = REP_UNDELIVERED;
    p->attempts = 0;
    memcpy(p->user, c->user, ul + 1);
    p->device = p->user + ul + 1;
    memcpy(p->device, c->device, dl + 1);
    sm->refs++;
    if (c->ifl_tail)
      c->ifl_tail->next = p;
    else
      c->ifl_head = p;
    c->ifl_tail = p;
    gw_conn_schedule(c);
    stat_inc(gw, IMC_GW_STAT_PUSHES);
    count++;
  }
  imc_free(&gw->mem, frame);
  if (sm && sm->refs == 0)
    imc_free(&gw->mem, sm);
  return count > 0 ? count : rv;
}

int imc_gateway_push_status(imc_gateway *gw, const char *user_id,
                            const char *device_id, const char *msg_id,
                            const char *client_msg_id, imc_delivery_state state,
                            const char *recipient) {
  if (gw == NULL || user_id == NULL || device_id == NULL || msg_id == NULL ||
      (state != IMC_DELIVERED && state != IMC_STORED))
    return IMC_ERR_INVALID_ARGUMENT;
  Imchat__V1__DeliveryStatus st = IMCHAT__V1__DELIVERY_STATUS__INIT;
  st.msg_id = (char *)msg_id;
  st.client_msg_id = (char *)(client_msg_id ? client_msg_id : "");
  st.state = state == IMC_DELIVERED
                 ? IMCHAT__V1__DELIVERY_STATUS__STATE__DELIVERED
                 : IMCHAT__V1__DELIVERY_STATUS__STATE__STORED;
  st.user_id = (char *)(recipient ? recipient : "");
  Imchat__V1__ServerFrame f = IMCHAT__V1__SERVER_FRAME__INIT;
  f.body_case = IMCHAT__V1__SERVER_FRAME__BODY_STATUS;
  f.status = &st;
  int count = 0;
  gw_user *u = gw_user_find(gw, user_id);
  for (imc_conn *c = u ? u->conns : NULL; c; c = c->unext) {
    if (!can_push(c) || strcmp(c->device, device_id) != 0)
      continue;
    int rv = gw_send_frame(c, &f);
    if (rv == IMC_ERR_NOMEM)
      return rv;
    if (rv == 0)
      count++;
  }
  return count;
}
