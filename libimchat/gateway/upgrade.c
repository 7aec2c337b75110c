/*
 * GET /ws: validation of the WebSocket upgrade, JWT authentication
 * (with keys from the options or from the asynchronous key source) and
 * the switch to WebSocket with its Welcome and registration.
 */
#include "gateway/gateway_int.h"
#include "protocol/pmdeflate.h"

#include <stdio.h>
#include <string.h>

static int send_welcome(imc_conn *c) {
  imc_gateway *gw = c->gw;
  Imchat__V1__Welcome w = IMCHAT__V1__WELCOME__INIT;
  w.user_id = c->user;
  w.device_id = c->device;
  w.node_id = gw->o.node_id;
  w.server_time_ms = imc_clock_wall(&gw->o.clock);
  w.heartbeat_s = (gw->o.heartbeat_ms + 999) / 1000;
  Imchat__V1__ServerFrame f = IMCHAT__V1__SERVER_FRAME__INIT;
  f.body_case = IMCHAT__V1__SERVER_FRAME__BODY_WELCOME;
  f.welcome = &w;
  return gw_send_frame(c, &f);
}

/*
 * Switches c to WebSocket for user/device and answers 101, accepting
 * permessage-deflate with pmd unless it is NULL. rest holds bytes that
 * followed the request head. Returns 0 or IMC_ERR_CLOSED.
 */
static int upgrade(imc_conn *c, imc_span ws_key, const char *user,
                   const char *device, const imc_pmd_params *pmd,
                   const uint8_t *rest, size_t rest_len) {
  imc_gateway *gw = c->gw;
  size_t ul = strlen(user), dl = strlen(device);
  c->user = imc_malloc(&gw->mem, ul + dl + 2);
  if (c->user == NULL)
    goto nomem;
  memcpy(c->user, user, ul + 1);
  c->device = c->user + ul + 1;
  memcpy(c->device, device, dl + 1);
  if (gw_user_attach(gw, c) != 0)
    goto nomem;
  char accept[29];
  imc_ws_accept(ws_key, accept);
  char ext[IMC_PMD_RESPONSE_MAX] = "";
  if (pmd != NULL) {
    imc_pmd_response(pmd, ext);
    c->pmd_bits = pmd->server_bits;
    c->scan.rsv1_ok = 1;
    gw_deflate_conn_add(gw);
  }
  char resp[160 + IMC_PMD_RESPONSE_MAX];
  int n = snprintf(resp, sizeof(resp),
                   "HTTP/1.1 101 Switching Protocols\r\n"
                   "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Accept: %s\r\n%s\r\n",
                   accept, ext);
  if (gw_queue_bytes(c, resp, (size_t)n) != 0)
    goto nomem;
  c->state = ST_WS;
  gw->stats[IMC_GW_STAT_WEBSOCKETS]++;
  if (c->peer != NULL)
    c->peer->n_ws++;
  stat_inc(gw, IMC_GW_STAT_UPGRADED);
  int64_t now = now_ms(gw);
  c->last_rx = now;
  c->next_beat = now + gw->o.heartbeat_ms;
  c->bucket.tokens = (int64_t)gw->o.burst * 1000;
  c->bucket.at = now;
  if (send_welcome(c) != 0)
    goto nomem;
  gw_lease_attach(c);
  gw_log(gw, IMC_LOG_DEBUG, "conn %llu: %s/%s connected",
         (unsigned long long)c->id, user, device);
  gw_conn_schedule(c);
  /* rest may point into c->head: release the head only after it. */
  int rv = rest_len > 0 ? gw_ws_feed(c, rest, rest_len) : 0;
  if (rv == 0) {
    imc_free(&gw->mem, c->head);
    c->head = NULL;
    c->head_len = 0;
  }
  return rv;
nomem:
  c->flags |= F_ABORT | F_NOMEM;
  return gw_conn_check(c);
}

const imc_jwt_key *gw_pick_key(imc_gateway *gw, imc_jwt_alg alg) {
  if (alg != IMC_JWT_NONE && gw->hs.alg == alg)
    return &gw->hs;
  if (alg != IMC_JWT_NONE && gw->pub.alg == alg)
    return &gw->pub;
  return NULL;
}

static const char *alg_name(imc_jwt_alg alg) {
  switch (alg) {
  case IMC_JWT_HS256:
    return "HS256";
  case IMC_JWT_RS256:
    return "RS256";
  case IMC_JWT_ES256:
    return "ES256";
  default:
    return NULL;
  }
}

/* 401; its challenge says invalid_token when a token came (F_BEARER). */
static int auth_fail(imc_conn *c, int rv, const char *message) {
  gw_log(c->gw, IMC_LOG_INFO, "conn %llu: token refused: %s (%s)",
         (unsigned long long)c->id, message, imc_strerror(rv));
  gw_http_error(c, 401, "UNAUTHENTICATED", message, NULL);
  return gw_conn_check(c);
}

static void key_done(void *ud, int status, const char *alg, const uint8_t *key,
                     size_t key_len);

/*
 * The permessage-deflate offer of req the gateway accepts into *out:
 * returns 1, or 0 when there is none (or the option is off). An offer
 * that cannot be honoured is declined, never the upgrade.
 */
static int pick_deflate(const imc_gateway *gw, const imc_http_req *req,
                        imc_pmd_params *out) {
  if (!gw->o.deflate)
    return 0;
  imc_span vals[MAX_HDRS];
  size_t n = 0;
  for (size_t i = 0; i < req->n_hdrs; i++)
    if (imc_span_ieq(req->hdrs[i].name, "Sec-WebSocket-Extensions"))
      vals[n++] = req->hdrs[i].value;
  return imc_pmd_negotiate(vals, n, out);
}

/* Keeps buf[0..len) in c->head while the key source works. */
int gw_keep_head(imc_conn *c, const char *buf, size_t len) {
  if (buf == c->head)
    return 0;
  char *h = imc_malloc(&c->gw->mem, len ? len : 1);
  if (h == NULL)
    return IMC_ERR_NOMEM;
  memcpy(h, buf, len);
  imc_free(&c->gw->mem, c->head);
  c->head = h;
  c->head_len = len;
  return 0;
}

/*
 * GET /ws: validates the upgrade, authenticates and switches protocols.
 * buf[0..len) holds the request (head_len bytes of head, then the rest).
 * fetched is the key from the key source on the second pass.
 */
int gw_handle_upgrade(imc_conn *c, const imc_http_req *req, const char *buf,
                      size_t len, size_t head_len, const imc_jwt_key *fetched) {
  imc_gateway *gw = c->gw;
  if (!imc_span_ieq(req->method, "GET")) {
    gw_http_error(c, 405, "METHOD_NOT_ALLOWED", "use GET to upgrade",
                  "Allow: GET\r\n");
    return gw_conn_check(c);
  }
  const imc_http_hdr *upg = imc_http_find(req, "Upgrade");
  const imc_http_hdr *conn = imc_http_find(req, "Connection");
  const imc_http_hdr *key = imc_http_find(req, "Sec-WebSocket-Key");
  const imc_http_hdr *ver = imc_http_find(req, "Sec-WebSocket-Version");
  /* RFC 6455 4.2.1, 11.3.1, 11.3.5: the key is the base64 of 16 bytes,
   * key and version appear once. */
  if (req->minor_version != 1 || upg == NULL ||
      !imc_http_has_token(upg->value, "websocket") || conn == NULL ||
      !imc_http_has_token(conn->value, "upgrade") || key == NULL ||
      imc_http_count(req, "Sec-WebSocket-Key") != 1 ||
      !imc_ws_key_valid(key->value) || ver == NULL ||
      imc_http_count(req, "Sec-WebSocket-Version") != 1) {
    gw_http_error(c, 400, "BAD_REQUEST", "malformed WebSocket upgrade", NULL);
    return gw_conn_check(c);
  }
  if (!imc_span_ieq(ver->value, "13")) {
    gw_http_error(c, 426, "UPGRADE_REQUIRED", "WebSocket version 13 required",
                  "Sec-WebSocket-Version: 13\r\n");
    return gw_conn_check(c);
  }
  /* Origin and limits come before the token, which costs more to check
   * (a signature) than a refusal. */
  if (gw_admit(c, req) != 0)
    return gw_conn_check(c);
  char token[IMC_JWT_MAX_LEN + 1];
  size_t token_len = 0;
  const imc_http_hdr *auth = imc_http_find(req, "Authorization");
  if (auth != NULL || imc_query_get(req->query, "token", token,
                                    sizeof(token)) != IMC_ERR_NOT_FOUND)
    c->flags |= F_BEARER;
  if (auth != NULL) {
    if (auth->value.len <= 7 || strncasecmp(auth->value.p, "Bearer ", 7) != 0 ||
        auth->value.len - 7 > IMC_JWT_MAX_LEN)
      return auth_fail(c, IMC_ERR_AUTH, "malformed Authorization header");
    token_len = auth->value.len - 7;
    memcpy(token, auth->value.p + 7, token_len);
  } else {
    ssize_t n = imc_query_get(req->query, "token", token, sizeof(token));
    if (n == IMC_ERR_NOT_FOUND || n == 0)
      return auth_fail(c, IMC_ERR_AUTH, "missing token");
    if (n < 0)
      return auth_fail(c, IMC_ERR_AUTH, "malformed token");
    token_len = (size_t)n;
  }
  char device[IMC_ID_MAX + 1] = "default";
  ssize_t dl = imc_query_get(req->query, "device", device, sizeof(device));
  if (dl != IMC_ERR_NOT_FOUND &&
      (dl <= 0 || !imc_id_valid(device, (size_t)dl))) {
    gw_http_error(c, 400, "BAD_REQUEST", "invalid device id", NULL);
    return gw_conn_check(c);
  }
  imc_jwt_header jh;
  if (imc_jwt_parse_header(token, token_len, &jh) != 0)
    return auth_fail(c, IMC_ERR_AUTH, "malformed token");
  const imc_jwt_key *k = fetched ? fetched : gw_pick_key(gw, jh.alg);
  if (k == NULL) {
    const char *alg = alg_name(jh.alg);
    if (fetched != NULL || gw->o.keysrc.lookup == NULL || alg == NULL)
      return auth_fail(c, IMC_ERR_AUTH, "token algorithm not accepted");
    if (gw_keep_head(c, buf, len) != 0) {
      c->flags |= F_ABORT | F_NOMEM;
      return gw_conn_check(c);
    }
    pending *p = gw_pending_new(c, PEND_KEY);
    if (p == NULL) {
      c->flags |= F_ABORT | F_NOMEM;
      return gw_conn_check(c);
    }
    p->head_len = head_len;
    c->state = ST_AUTH;
    int rv = gw->o.keysrc.lookup(gw->o.keysrc_ud, alg, jh.kid, key_done, p);
    if (rv != 0) {
      gw_pending_free(p);
      c->state = ST_HTTP;
      return auth_fail(c, rv, "no key for token");
    }
    return 0;
  }
  imc_jwt_claims cl;
  int64_t now_s = imc_clock_wall(&gw->o.clock) / 1000;
  int rv = imc_jwt_verify(token, token_len, k, &gw->policy, now_s, &cl);
  if (rv != 0)
    return auth_fail(c, rv,
                     rv == IMC_ERR_EXPIRED ? "token expired or not yet valid"
                                           : "invalid token");
  /* Refused before the 101: every upgraded connection of the user here
   * counts, a reconnecting device's old one too until it is gone. */
  gw_user *u = gw_user_find(gw, cl.sub);
  if (u != NULL && u->n_conns >= gw->o.max_devices) {
    stat_inc(gw, IMC_GW_STAT_REFUSED_DEVICES);
    gw_log(gw, IMC_LOG_INFO, "conn %llu: %s has %zu devices connected, refused",
           (unsigned long long)c->id, cl.sub, u->n_conns);
    gw_http_error(c, 429, "TOO_MANY_DEVICES",
                  "too many devices of this user are connected", NULL);
    return gw_conn_check(c);
  }
  /* The key span must outlive c->head, which upgrade() releases. */
  char ws_key[25];
  memcpy(ws_key, key->value.p, 24);
  ws_key[24] = '\0';
  imc_span ks = {ws_key, 24};
  imc_pmd_params pmd;
  int deflate = pick_deflate(gw, req, &pmd);
  return upgrade(c, ks, cl.sub, cl.did[0] ? cl.did : device,
                 deflate ? &pmd : NULL, (const uint8_t *)buf + head_len,
                 len - head_len);
}

/* Completion of the key source: parse the kept head again and go on. */
static void key_done(void *ud, int status, const char *alg, const uint8_t *key,
                     size_t key_len) {
  pending *p = ud;
  imc_conn *c = p->c;
  imc_gateway *gw = p->gw;
  size_t head_len = p->head_len;
  gw_pending_free(p);
  if (c == NULL || c->state != ST_AUTH)
    return;
  c->state = ST_HTTP;
  imc_jwt_key k;
  memset(&k, 0, sizeof(k));
  int rv = status;
  if (rv == 0)
    rv = alg != NULL && strcmp(alg, "HS256") == 0
             ? imc_jwt_key_init_secret(&k, key, key_len, &gw->mem)
             : imc_jwt_key_init_pem(&k, (const char *)key, key_len);
  if (rv != 0) {
    auth_fail(c, rv, "no key for token");
    return;
  }
  imc_http_hdr hdrs[MAX_HDRS];
  imc_http_req req;
  imc_http_parse_request(c->head, head_len, &req, hdrs, MAX_HDRS);
  gw_handle_upgrade(c, &req, c->head, c->head_len, head_len, &k);
  imc_jwt_key_clear(&k, &gw->mem);
}
