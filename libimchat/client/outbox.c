/*
 * The outbox: every send is written to SQLite before it goes on the wire,
 * and stays there until the server confirms it; it goes out again, with
 * the same client_msg_id, on every new connection and when a resend
 * timer ends without a confirmation. The server deduplicates on
 * (from_user, client_msg_id) and answers a repeat with the same msg_id.
 *
 * Confirmation: a DeliveryStatus (DELIVERED or STORED); or the SendAck of
 * a repeat (attempt 2 or later): a repeat may hit the server's dedup,
 * which sends the first attempt's status again only while the router
 * still remembers it, and a SendAck already means the message is in the
 * server's durable queue (see doc/client.md).
 */
#include "client/client_int.h"
#include "protocol/utf8.h"

#include <stdio.h>
#include <string.h>

static int ob_push(imc_client *c, const cl_send *s) {
  if (c->ob_n == c->ob_cap) {
    size_t cap = c->ob_cap ? c->ob_cap * 2 : 8;
    cl_send *p = imc_realloc(&c->mem, c->ob, cap * sizeof(*p));
    if (p == NULL)
      return IMC_ERR_NOMEM;
    c->ob = p;
    c->ob_cap = cap;
  }
  c->ob[c->ob_n++] = *s;
  return 0;
}

static void ob_remove(imc_client *c, cl_send *s) {
  sqlite3_stmt *st = cl_st(c, CS_OB_DELETE);
  sqlite3_bind_int64(st, 1, s->id);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE)
    cl_store_err(c, rc, "outbox delete");
  size_t i = (size_t)(s - c->ob);
  memmove(c->ob + i, c->ob + i + 1, (c->ob_n - i - 1) * sizeof(*c->ob));
  c->ob_n--;
}

int cl_outbox_load(imc_client *c) {
  sqlite3_stmt *st = cl_st(c, CS_OB_LIST);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    cl_send s;
    memset(&s, 0, sizeof(s));
    s.id = sqlite3_column_int64(st, 0);
    snprintf(s.cmid, sizeof(s.cmid), "%s",
             (const char *)sqlite3_column_text(st, 1));
    s.attempts = (uint32_t)sqlite3_column_int64(st, 2);
    const unsigned char *mid = sqlite3_column_text(st, 3);
    snprintf(s.msg_id, sizeof(s.msg_id), "%s", mid ? (const char *)mid : "");
    if (ob_push(c, &s) != 0) {
      sqlite3_reset(st);
      return IMC_ERR_NOMEM;
    }
  }
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : cl_store_err(c, rc, "outbox list");
}

int cl_outbox_send(imc_client *c, cl_send *s) {
  sqlite3_stmt *st = cl_st(c, CS_OB_BODY);
  sqlite3_bind_int64(st, 1, s->id);
  int rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    sqlite3_reset(st);
    return cl_store_err(c, rc, "outbox read");
  }
  Imchat__V1__SendRequest q = IMCHAT__V1__SEND_REQUEST__INIT;
  q.client_msg_id = s->cmid;
  const char *to = (const char *)sqlite3_column_text(st, 1);
  const char *grp = (const char *)sqlite3_column_text(st, 2);
  if (grp && grp[0]) {
    q.to_case = IMCHAT__V1__SEND_REQUEST__TO_GROUP_ID;
    q.group_id = (char *)grp;
  } else {
    q.to_case = IMCHAT__V1__SEND_REQUEST__TO_USER_ID;
    q.user_id = (char *)(to ? to : "");
  }
  q.body.data = (uint8_t *)sqlite3_column_blob(st, 3);
  q.body.len = (size_t)sqlite3_column_bytes(st, 3);
  q.content_type = (char *)sqlite3_column_text(st, 4);
  Imchat__V1__ClientFrame f = IMCHAT__V1__CLIENT_FRAME__INIT;
  f.id = (uint64_t)s->id;
  f.body_case = IMCHAT__V1__CLIENT_FRAME__BODY_SEND;
  f.send = &q;
  int rv = cl_send_frame(c, &f);
  sqlite3_reset(st);
  if (rv != 0)
    return rv;
  s->attempts++;
  s->due = cl_now(c) + c->o.resend_ms;
  st = cl_st(c, CS_OB_ATTEMPT);
  sqlite3_bind_int64(st, 1, s->id);
  rc = sqlite3_step(st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : cl_store_err(c, rc, "outbox attempt");
}

void cl_outbox_flush(imc_client *c) {
  for (size_t i = 0; i < c->ob_n && c->state == IMC_CLIENT_ONLINE; i++)
    if (c->ob[i].due == 0 && cl_outbox_send(c, &c->ob[i]) == IMC_ERR_NOMEM)
      break;
}

int64_t cl_outbox_next_due(imc_client *c) {
  int64_t at = 0;
  for (size_t i = 0; i < c->ob_n; i++)
    if (c->ob[i].due > 0 && (at == 0 || c->ob[i].due < at))
      at = c->ob[i].due;
  return at;
}

void cl_outbox_run(imc_client *c, int64_t now) {
  for (size_t i = 0; i < c->ob_n && c->state == IMC_CLIENT_ONLINE; i++) {
    if (c->ob[i].due > 0 && now >= c->ob[i].due) {
      cl_log(c, IMC_LOG_INFO, "client: no confirmation of %s; sending again",
             c->ob[i].cmid);
      if (cl_outbox_send(c, &c->ob[i]) == IMC_ERR_NOMEM)
        break;
    }
  }
}

static cl_send *find_cmid(imc_client *c, const char *cmid) {
  for (size_t i = 0; cmid && cmid[0] && i < c->ob_n; i++)
    if (strcmp(c->ob[i].cmid, cmid) == 0)
      return &c->ob[i];
  return NULL;
}

void cl_outbox_on_ack(imc_client *c, const Imchat__V1__SendAck *a) {
  cl_send *s = find_cmid(c, a->client_msg_id);
  /* Our own message: never surfaced as incoming, and its seq counts. */
  if (a->msg_id[0] && a->conversation_id[0])
    cl_inbox_mark(c, a->msg_id, a->conversation_id, a->seq);
  if (s) {
    snprintf(s->msg_id, sizeof(s->msg_id), "%s", a->msg_id);
    sqlite3_stmt *st = cl_st(c, CS_OB_ACKED);
    sqlite3_bind_int64(st, 1, s->id);
    sqlite3_bind_text(st, 2, a->msg_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
      cl_store_err(c, rc, "outbox ack");
  }
  if (c->o.cb.send_ack)
    c->o.cb.send_ack(c->o.cb_ud, a->client_msg_id, a->msg_id,
                     a->conversation_id, a->seq);
  if (s == NULL)
    return;
  s = find_cmid(c, a->client_msg_id); /* the callback may have sent */
  if (s && s->attempts >= 2)
    ob_remove(c, s);
  else if (s)
    s->due = cl_now(c) + c->o.resend_ms; /* now wait for the status */
}

void cl_outbox_on_status(imc_client *c, const Imchat__V1__DeliveryStatus *d) {
  cl_send *s = find_cmid(c, d->client_msg_id);
  for (size_t i = 0; s == NULL && d->msg_id[0] && i < c->ob_n; i++)
    if (strcmp(c->ob[i].msg_id, d->msg_id) == 0)
      s = &c->ob[i];
  if (s)
    ob_remove(c, s);
  imc_delivery_state state =
      d->state == IMCHAT__V1__DELIVERY_STATUS__STATE__DELIVERED ? IMC_DELIVERED
                                                                : IMC_STORED;
  if (c->o.cb.status)
    c->o.cb.status(c->o.cb_ud, d->client_msg_id, d->msg_id, state, d->user_id);
}

static int error_of(int code, int *final) {
  *final = 1;
  switch (code) {
  case IMCHAT__V1__ERROR__CODE__BAD_REQUEST:
    return IMC_ERR_INVALID_ARGUMENT;
  case IMCHAT__V1__ERROR__CODE__UNAUTHENTICATED:
    return IMC_ERR_AUTH;
  case IMCHAT__V1__ERROR__CODE__FORBIDDEN:
    return IMC_ERR_FORBIDDEN;
  case IMCHAT__V1__ERROR__CODE__NOT_FOUND:
    return IMC_ERR_NOT_FOUND;
  case IMCHAT__V1__ERROR__CODE__TOO_LARGE:
    return IMC_ERR_TOO_LARGE;
  case IMCHAT__V1__ERROR__CODE__BLOCKED:
    return IMC_ERR_BLOCKED;
  case IMCHAT__V1__ERROR__CODE__RATE_LIMITED:
    *final = 0;
    return IMC_ERR_RATE_LIMITED;
  default:
    *final = 0;
    return IMC_ERR_UNAVAILABLE;
  }
}

void cl_outbox_on_error(imc_client *c, uint64_t id,
                        const Imchat__V1__Error *e) {
  int final;
  int err = error_of(e->code, &final);
  cl_send *s = NULL;
  for (size_t i = 0; i < c->ob_n; i++)
    if ((uint64_t)c->ob[i].id == id)
      s = &c->ob[i];
  if (s == NULL) {
    cl_log(c, IMC_LOG_WARN, "client: error for frame %llu: %s",
           (unsigned long long)id, e->message);
    return;
  }
  if (!final) {
    cl_log(c, IMC_LOG_INFO, "client: %s refused for now (%s); will resend",
           s->cmid, e->message);
    s->due = cl_now(c) + c->o.resend_ms;
    return;
  }
  char cmid[IMC_CLIENT_MSG_ID_LEN + 1];
  memcpy(cmid, s->cmid, sizeof(cmid));
  ob_remove(c, s);
  if (c->o.cb.send_error)
    c->o.cb.send_error(c->o.cb_ud, cmid, err, e->message);
}

int imc_client_send(imc_client *c, const char *to_user, const char *group_id,
                    const uint8_t *body, size_t len, const char *content_type,
                    char *client_msg_id) {
  if (c == NULL || (to_user == NULL) == (group_id == NULL) ||
      (body == NULL && len > 0))
    return IMC_ERR_INVALID_ARGUMENT;
  const char *id = to_user ? to_user : group_id;
  if (!imc_id_valid(id, strlen(id)))
    return IMC_ERR_INVALID_ARGUMENT;
  if (content_type == NULL)
    content_type = "text/plain";
  if (!imc_utf8_valid(content_type, strlen(content_type)))
    return IMC_ERR_INVALID_ARGUMENT;
  uint8_t rnd[IMC_CLIENT_MSG_ID_LEN / 2];
  int rv = cl_random(c, rnd, sizeof(rnd));
  if (rv != 0)
    return rv;
  cl_send s;
  memset(&s, 0, sizeof(s));
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < sizeof(rnd); i++) {
    s.cmid[2 * i] = hex[rnd[i] >> 4];
    s.cmid[2 * i + 1] = hex[rnd[i] & 15];
  }
  /* Room first, so a failed allocation leaves no row behind. */
  if (c->ob_n == c->ob_cap) {
    if (ob_push(c, &s) != 0)
      return IMC_ERR_NOMEM;
    c->ob_n--;
  }
  sqlite3_stmt *st = cl_st(c, CS_OB_INSERT);
  sqlite3_bind_text(st, 1, s.cmid, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, to_user ? to_user : "", -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, group_id ? group_id : "", -1, SQLITE_STATIC);
  sqlite3_bind_blob(st, 4, len ? (const void *)body : "", (int)len,
                    SQLITE_STATIC);
  sqlite3_bind_text(st, 5, content_type, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 6, imc_clock_wall(&c->o.clock));
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE)
    return cl_store_err(c, rc, "outbox insert") == IMC_ERR_NOMEM ? IMC_ERR_NOMEM
                                                                 : IMC_ERR_IO;
  s.id = sqlite3_last_insert_rowid(c->db);
  ob_push(c, &s); /* cannot fail: room was made */
  if (client_msg_id)
    memcpy(client_msg_id, s.cmid, sizeof(s.cmid));
  /* Inside a callback from imc_client_recv the frame is queued and goes
   * out when wslay returns. */
  if (c->state == IMC_CLIENT_ONLINE)
    cl_outbox_send(c, &c->ob[c->ob_n - 1]);
  return 0;
}
