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

/*
 * A message on its way to connections of this gateway: its shared copy
 * (which pushes reference until their ACK) and its Deliver frame, WebSocket
 * header included, encoded once and queued by reference on every
 * connection. Both are made when the first connection takes the message.
 * For connections with permessage-deflate the frame is compressed once
 * per window size (no context takeover: the same bytes suit every
 * connection with that window).
 */
#define ZBITS_MIN 9 /* the smallest window zlib compresses with */
typedef struct delivery {
  const imc_msg *msg;
  shmsg *sm;         /* the delivery holds one reference */
  imc_shared *frame; /* the delivery holds one reference */
  int64_t deadline;  /* of the ACKs */
  size_t hl;         /* the header's length in frame */
  /* frame compressed with a window of ZBITS_MIN + i bits, or NULL */
  imc_shared *zframe[16 - ZBITS_MIN];
  unsigned ztried; /* bit i: zframe[i] was tried (NULL: did not pay) */
} delivery;

static int delivery_prepare(imc_gateway *gw, delivery *d) {
  if (d->frame != NULL)
    return 0;
  Imchat__V1__Message pm;
  imc_pb_from_msg(&pm, d->msg);
  Imchat__V1__Deliver dv = IMCHAT__V1__DELIVER__INIT;
  dv.message = &pm;
  Imchat__V1__ServerFrame f = IMCHAT__V1__SERVER_FRAME__INIT;
  f.body_case = IMCHAT__V1__SERVER_FRAME__BODY_DELIVER;
  f.deliver = &dv;
  if (d->sm == NULL) {
    d->sm = shmsg_new(gw, d->msg);
    if (d->sm == NULL)
      return IMC_ERR_NOMEM;
    d->sm->refs = 1;
  }
  uint8_t hdr[IMC_WS_HEADER_MAX];
  size_t plen = imchat__v1__server_frame__get_packed_size(&f);
  size_t hl = imc_ws_header(hdr, IMC_WS_BINARY, plen);
  d->frame = imc_shared_new(&gw->mem, hl + plen);
  if (d->frame == NULL)
    return IMC_ERR_NOMEM;
  memcpy(d->frame->data, hdr, hl);
  imchat__v1__server_frame__pack(&f, d->frame->data + hl);
  d->hl = hl;
  stat_inc(gw, IMC_GW_STAT_DELIVER_ENCODES);
  return 0;
}

/* The frame for c: compressed when c takes compressed messages of its
 * size. */
static imc_shared *delivery_frame(imc_gateway *gw, delivery *d,
                                  const imc_conn *c) {
  size_t plen = d->frame->len - d->hl;
  if (!gw_deflate_wanted(c, plen))
    return d->frame;
  unsigned i = c->pmd_bits - ZBITS_MIN;
  if (!(d->ztried & (1u << i))) {
    d->ztried |= 1u << i;
    d->zframe[i] = gw_deflate_frame(gw, c->pmd_bits, IMC_WS_BINARY,
                                    d->frame->data + d->hl, plen);
  }
  return d->zframe[i] ? d->zframe[i] : d->frame;
}

static void delivery_end(imc_gateway *gw, delivery *d) {
  imc_shared_unref(&gw->mem, d->frame);
  d->frame = NULL;
  for (size_t i = 0; i < sizeof(d->zframe) / sizeof(d->zframe[0]); i++) {
    imc_shared_unref(&gw->mem, d->zframe[i]);
    d->zframe[i] = NULL;
  }
  d->ztried = 0;
  if (d->sm)
    gw_shmsg_unref(gw, d->sm);
  d->sm = NULL;
}

/* Pushes d to every connection of user_id but skip_device's. Returns
 * the connections it was queued on, or IMC_ERR_NOMEM. */
static int deliver_user(imc_gateway *gw, delivery *d, const char *user_id,
                        const char *skip_device) {
  int count = 0;
  gw_user *u = gw_user_find(gw, user_id);
  for (imc_conn *c = u ? u->conns : NULL; c; c = c->unext) {
    if (!can_push(c) || (skip_device && strcmp(c->device, skip_device) == 0))
      continue;
    if (delivery_prepare(gw, d) != 0)
      return count > 0 ? count : IMC_ERR_NOMEM;
    /* The record carries user and device so that it can later become a
     * report without allocating (see reports.c). */
    size_t ul = strlen(c->user), dl = strlen(c->device);
    push *p = imc_malloc(&gw->mem, sizeof(*p) + ul + dl + 2);
    if (p == NULL)
      return count > 0 ? count : IMC_ERR_NOMEM;
    int q = gw_ws_queue_shared(c, delivery_frame(gw, d, c));
    if (q != 0 && q != IMC_ERR_QUEUE_FULL) {
      /* Nothing went out on c: no ACK to wait for. */
      imc_free(&gw->mem, p);
      continue;
    }
    /* A queue that overflowed closes c, and its pushes, this one
     * included, go back to the upstream then. */
    p->next = p->prev = NULL;
    p->gw = gw;
    p->sm = d->sm;
    p->deadline = d->deadline;
    p->kind = REP_UNDELIVERED;
    p->attempts = 0;
    memcpy(p->user, c->user, ul + 1);
    p->device = p->user + ul + 1;
    memcpy(p->device, c->device, dl + 1);
    d->sm->refs++;
    if (c->ifl_tail)
      c->ifl_tail->next = p;
    else
      c->ifl_head = p;
    c->ifl_tail = p;
    gw_conn_schedule(c);
    stat_inc(gw, IMC_GW_STAT_PUSHES);
    count++;
  }
  return count;
}

int imc_gateway_deliver(imc_gateway *gw, const char *user_id,
                        const char *skip_device, const imc_msg *msg) {
  if (gw == NULL || user_id == NULL || msg == NULL || msg->msg_id == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  delivery d = {.msg = msg, .deadline = now_ms(gw) + gw->o.ack_ms};
  int rv = deliver_user(gw, &d, user_id, skip_device);
  delivery_end(gw, &d);
  return rv;
}

/*
 * A group message for the members connected here, pushed FANOUT_TURN
 * members at a time: the first turn at once, the others from
 * imc_gateway_on_timeout, whose deadline is 0 while jobs remain, so that
 * a large group does not keep the loop from other connections.
 */
struct gw_fanjob {
  gw_fanjob *next;
  delivery d;
  size_t n, at;
  char **users; /* member ids, in the same allocation */
};

/* Pushes at most *budget members of j; returns 1 when j is done. */
static int fanjob_step(imc_gateway *gw, gw_fanjob *j, size_t *budget) {
  const imc_msg *m = &j->d.sm->msg;
  while (j->at<j->n && * budget> 0) {
    const char *u = j->users[j->at++];
    int sender = strcmp(u, m->from_user) == 0;
    deliver_user(gw, &j->d, u, sender ? m->from_device : NULL);
    (*budget)--;
  }
  return j->at == j->n;
}

static void fanjob_free(imc_gateway *gw, gw_fanjob *j) {
  delivery_end(gw, &j->d);
  imc_free(&gw->mem, j);
}

int gw_deliver_group(imc_gateway *gw, const char *const *users, size_t n,
                     const imc_msg *msg) {
  if (n == 0)
    return 0;
  size_t bytes = sizeof(gw_fanjob) + n * sizeof(char *);
  for (size_t i = 0; i < n; i++)
    bytes += strlen(users[i]) + 1;
  gw_fanjob *j = imc_malloc(&gw->mem, bytes);
  if (j == NULL)
    return IMC_ERR_NOMEM;
  memset(j, 0, sizeof(*j));
  j->users = (char **)(void *)(j + 1);
  char *p = (char *)(j->users + n);
  for (size_t i = 0; i < n; i++) {
    size_t l = strlen(users[i]) + 1;
    memcpy(p, users[i], l);
    j->users[i] = p;
    p += l;
  }
  j->n = n;
  /* The job keeps its own copy of the message: it outlives the call. */
  j->d.sm = shmsg_new(gw, msg);
  if (j->d.sm == NULL) {
    imc_free(&gw->mem, j);
    return IMC_ERR_NOMEM;
  }
  j->d.sm->refs = 1;
  j->d.msg = &j->d.sm->msg;
  j->d.deadline = now_ms(gw) + gw->o.ack_ms;
  if (gw->fanjobs == NULL) {
    size_t budget = FANOUT_TURN;
    if (fanjob_step(gw, j, &budget)) {
      fanjob_free(gw, j);
      return 0;
    }
  }
  if (gw->fanjobs_tail)
    gw->fanjobs_tail->next = j;
  else
    gw->fanjobs = j;
  gw->fanjobs_tail = j;
  return 0;
}

void gw_fanjobs_run(imc_gateway *gw) {
  size_t budget = FANOUT_TURN;
  while (gw->fanjobs && budget > 0) {
    gw_fanjob *j = gw->fanjobs;
    if (!fanjob_step(gw, j, &budget))
      break;
    gw->fanjobs = j->next;
    if (gw->fanjobs == NULL)
      gw->fanjobs_tail = NULL;
    fanjob_free(gw, j);
  }
}

void gw_fanjobs_free(imc_gateway *gw) {
  while (gw->fanjobs) {
    gw_fanjob *j = gw->fanjobs;
    gw->fanjobs = j->next;
    fanjob_free(gw, j);
  }
  gw->fanjobs_tail = NULL;
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
