/*
 * Who may upgrade, checked before the token: the Origin allow-list
 * (cross-site WebSocket hijacking) and the connection limits, for the
 * gateway and per peer address. The peer addresses the host gives are
 * indexed here: one record per address, shared by its connections,
 * counting the upgraded ones.
 */
#include "gateway/gateway_int.h"

#include <stdio.h>
#include <string.h>

#define RETRY_AFTER "Retry-After: 5\r\n"

static size_t slot(const imc_gateway *gw, const char *addr) {
  return imc_hash_str(addr) & (gw->peers_cap - 1);
}

static gw_peer *peer_find(imc_gateway *gw, const char *addr) {
  for (gw_peer *p = gw->peers[slot(gw, addr)]; p; p = p->next)
    if (strcmp(p->addr, addr) == 0)
      return p;
  return NULL;
}

/* Quadruples the buckets when chains grow long; a failed allocation only
 * leaves them longer. */
static void grow(imc_gateway *gw) {
  size_t cap = gw->peers_cap * 4;
  gw_peer **b = imc_calloc(&gw->mem, cap, sizeof(*b));
  if (b == NULL)
    return;
  for (size_t i = 0; i < gw->peers_cap; i++) {
    gw_peer *p = gw->peers[i];
    while (p) {
      gw_peer *next = p->next;
      size_t j = imc_hash_str(p->addr) & (cap - 1);
      p->next = b[j];
      b[j] = p;
      p = next;
    }
  }
  imc_free(&gw->mem, gw->peers);
  gw->peers = b;
  gw->peers_cap = cap;
}

void gw_peer_release(imc_conn *c) {
  imc_gateway *gw = c->gw;
  gw_peer *p = c->peer;
  if (p == NULL)
    return;
  c->peer = NULL;
  if (c->state == ST_WS)
    p->n_ws--;
  if (--p->refs > 0)
    return;
  for (gw_peer **pp = &gw->peers[slot(gw, p->addr)]; *pp; pp = &(*pp)->next) {
    if (*pp == p) {
      *pp = p->next;
      gw->n_peers--;
      break;
    }
  }
  imc_free(&gw->mem, p);
}

void gw_peers_free(imc_gateway *gw) {
  imc_free(&gw->mem, gw->peers);
  gw->peers = NULL;
  gw->peers_cap = gw->n_peers = 0;
}

int imc_gateway_conn_set_peer(imc_gateway *gw, imc_conn *c, const char *addr) {
  if (gw == NULL || c == NULL || addr == NULL || addr[0] == '\0' ||
      strlen(addr) > PEER_MAX || c->state == ST_WS)
    return IMC_ERR_INVALID_ARGUMENT;
  if (gw->peers == NULL) {
    gw->peers = imc_calloc(&gw->mem, 64, sizeof(*gw->peers));
    if (gw->peers == NULL)
      return IMC_ERR_NOMEM;
    gw->peers_cap = 64;
  }
  gw_peer *p = peer_find(gw, addr);
  if (p == NULL) {
    size_t len = strlen(addr);
    p = imc_calloc(&gw->mem, 1, sizeof(*p) + len + 1);
    if (p == NULL)
      return IMC_ERR_NOMEM;
    memcpy(p->addr, addr, len + 1);
    if (gw->n_peers >= gw->peers_cap * 2)
      grow(gw);
    size_t i = slot(gw, p->addr);
    p->next = gw->peers[i];
    gw->peers[i] = p;
    gw->n_peers++;
  }
  p->refs++;
  gw_peer_release(c); /* a second call replaces the address */
  c->peer = p;
  return 0;
}

/*
 * RFC 6455 10.2: a browser names the page that opens a WebSocket in
 * Origin. With an allow-list configured, an upgrade with an Origin must
 * come from a listed origin or from the server's own (the origin of
 * the request's Host under the Origin's scheme: the pages this server
 * serves itself). Clients that are not browsers send no Origin and have
 * no ambient credentials to hijack.
 */
static int origin_allowed(imc_gateway *gw, const imc_http_req *req) {
  if (gw->o.n_origins == 0)
    return 1;
  size_t n = imc_http_count(req, "Origin");
  if (n == 0)
    return 1;
  if (n > 1)
    return 0;
  const imc_http_hdr *h = imc_http_find(req, "Origin");
  char o[ORIGIN_MAX], own[ORIGIN_MAX];
  if (imc_http_origin(h->value, NULL, o, sizeof(o)) < 0)
    return 0;
  for (size_t i = 0; i < gw->o.n_origins; i++)
    if (strcmp(o, gw->o.origins[i]) == 0)
      return 1;
  imc_span host;
  return imc_http_host(req, &host) == 0 && host.len > 0 &&
         imc_http_origin(h->value, &host, own, sizeof(own)) >= 0 &&
         strcmp(o, own) == 0;
}

/* Answers a refused upgrade, counted under stat. */
static int refuse(imc_conn *c, imc_gateway_stat stat, int status,
                  const char *code, const char *message, const char *extra) {
  gw_log(c->gw, IMC_LOG_INFO, "conn %llu (%s): upgrade refused: %s",
         (unsigned long long)c->id, c->peer ? c->peer->addr : "?", message);
  stat_inc(c->gw, stat);
  gw_http_error(c, status, code, message, extra);
  return -1;
}

int gw_admit(imc_conn *c, const imc_http_req *req) {
  imc_gateway *gw = c->gw;
  if (!origin_allowed(gw, req))
    return refuse(c, IMC_GW_STAT_REFUSED_ORIGIN, 403, "FORBIDDEN",
                  "origin not allowed", NULL);
  if (gw->o.max_conns != 0 &&
      gw->stats[IMC_GW_STAT_WEBSOCKETS] >= gw->o.max_conns)
    return refuse(c, IMC_GW_STAT_REFUSED_CONNS, 503, "UNAVAILABLE",
                  "too many connections; retry later", RETRY_AFTER);
  if (gw->o.max_conns_ip != 0 && c->peer != NULL &&
      c->peer->n_ws >= gw->o.max_conns_ip)
    return refuse(c, IMC_GW_STAT_REFUSED_PEER_CONNS, 503, "UNAVAILABLE",
                  "too many connections from this address; retry later",
                  RETRY_AFTER);
  return 0;
}
