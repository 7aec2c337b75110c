/*
 * The client object: creation, the connection state machine, the
 * reconnect backoff, timers and the output the host drains.
 */
#include "client/client_int.h"

#include <openssl/rand.h>
#include <string.h>

int64_t cl_now(imc_client *c) {
  return imc_clock_now(&c->o.clock);
}

int cl_random(imc_client *c, uint8_t *buf, size_t len) {
  if (c->o.rnd)
    return c->o.rnd(c->o.rnd_ud, buf, len) == 0 ? 0 : IMC_ERR_INTERNAL;
  return RAND_bytes(buf, (int)len) == 1 ? 0 : IMC_ERR_INTERNAL;
}

static const char *state_name(imc_client_state st) {
  static const char *const names[] = {"stopped", "connecting", "handshake",
                                      "online",  "waiting",    "failed"};
  return (unsigned)st < 6 ? names[st] : "?";
}

void cl_set_state(imc_client *c, imc_client_state st, int reason) {
  if (c->state == st)
    return;
  cl_log(c, IMC_LOG_INFO, "client: %s -> %s%s%s", state_name(c->state),
         state_name(st), reason ? ": " : "",
         reason ? imc_strerror(reason) : "");
  c->state = st;
  c->reason = reason;
  if (c->o.cb.state)
    c->o.cb.state(c->o.cb_ud, st, reason);
}

int cl_out_append(imc_client *c, const void *data, size_t len) {
  if (c->out_pos > 0 && c->out_pos == c->out_len)
    c->out_pos = c->out_len = 0;
  if (c->out_len + len > c->out_cap) {
    size_t cap = c->out_cap ? c->out_cap : 1024;
    while (cap < c->out_len + len)
      cap *= 2;
    uint8_t *p = imc_realloc(&c->mem, c->out, cap);
    if (p == NULL)
      return IMC_ERR_NOMEM;
    c->out = p;
    c->out_cap = cap;
  }
  memcpy(c->out + c->out_len, data, len);
  c->out_len += len;
  return 0;
}

/* The wait before the next attempt: doubling, capped, jittered. */
static int64_t backoff(imc_client *c) {
  uint64_t w = c->o.backoff_initial_ms;
  for (uint32_t i = 0; i < c->attempt && w < c->o.backoff_max_ms; i++)
    w *= 2;
  if (w > c->o.backoff_max_ms)
    w = c->o.backoff_max_ms;
  uint32_t r = 0;
  cl_random(c, (uint8_t *)&r, sizeof(r));
  uint64_t half = w / 2;
  c->attempt++;
  return (int64_t)(w - half + (half ? r % (half + 1) : 0));
}

static void conn_reset(imc_client *c) {
  cl_ws_end(c);
  imc_free(&c->mem, c->hs);
  c->hs = NULL;
  c->hs_len = c->hs_cap = 0;
  c->hs_deadline = c->next_ping = c->ping_deadline = 0;
  for (size_t i = 0; i < c->ob_n; i++)
    c->ob[i].due = 0;
}

void cl_drop(imc_client *c, int reason) {
  if (c->in_wslay) {
    if (c->drop_reason == 0)
      c->drop_reason = reason ? reason : IMC_ERR_CLOSED;
    return;
  }
  if (c->state != IMC_CLIENT_CONNECTING && c->state != IMC_CLIENT_HANDSHAKE &&
      c->state != IMC_CLIENT_ONLINE)
    return;
  conn_reset(c);
  if (reason == IMC_ERR_AUTH) {
    cl_set_state(c, IMC_CLIENT_FAILED, reason);
    return;
  }
  c->reconnect_at = cl_now(c) + backoff(c);
  cl_set_state(c, IMC_CLIENT_WAITING, reason);
}

/* Runs a drop or stop asked for while wslay was reading. */
void cl_after_wslay(imc_client *c) {
  int reason = c->drop_reason;
  if (reason == 0)
    return;
  c->drop_reason = 0;
  if (c->reconnect_at == -1) {
    conn_reset(c);
    c->reconnect_at = 0;
    cl_set_state(c, IMC_CLIENT_STOPPED, 0);
    return;
  }
  cl_drop(c, reason);
}

int imc_client_new(imc_client **out, const imc_client_options *opt,
                   const imc_mem *mem) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  *out = NULL;
  if (opt == NULL || opt->store_path == NULL || opt->token == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_client *c = imc_calloc(mem, 1, sizeof(*c));
  if (c == NULL)
    return IMC_ERR_NOMEM;
  c->mem = *mem;
  c->o = *opt;
  c->o.mem = c->mem;
  c->o.store_path = imc_strdup(mem, opt->store_path);
  c->o.token = imc_strdup(mem, opt->token);
  c->o.host = imc_strdup(mem, opt->host);
  c->o.ws_path = imc_strdup(mem, opt->ws_path);
  imc_pb_allocator(&c->pba, &c->mem);
  imc_wbuf_init(&c->req, &c->mem);
  c->ping_id = CL_PING_ID_BASE;
  cl_ws_callbacks_init(c);
  int rv = IMC_ERR_NOMEM;
  if (c->o.store_path && c->o.token && c->o.host && c->o.ws_path) {
    rv = cl_store_open(c);
    if (rv == 0)
      rv = cl_kv_get_u64(c, "cursor", &c->cursor);
    if (rv == 0)
      rv = cl_kv_get_str(c, "user_id", c->user_id, sizeof(c->user_id));
    if (rv == 0)
      rv = cl_outbox_load(c);
  }
  if (rv != 0) {
    imc_client_del(c);
    return rv == IMC_ERR_NOMEM ? rv : IMC_ERR_IO;
  }
  *out = c;
  return 0;
}

void imc_client_del(imc_client *c) {
  if (c == NULL)
    return;
  cl_ws_end(c);
  if (c->db)
    cl_store_close(c);
  imc_mem m = c->mem;
  imc_free(&m, c->hs);
  imc_free(&m, c->out);
  imc_free(&m, c->ob);
  imc_wbuf_free(&c->req);
  imc_free(&m, c->o.store_path);
  imc_free(&m, c->o.token);
  imc_free(&m, c->o.host);
  imc_free(&m, c->o.ws_path);
  imc_free(&m, c);
}

void imc_client_set_user_data(imc_client *c, void *ud) {
  if (c)
    c->user_data = ud;
}

void *imc_client_get_user_data(const imc_client *c) {
  return c ? c->user_data : NULL;
}

static void begin_connecting(imc_client *c) {
  c->hs_deadline = cl_now(c) + c->o.handshake_ms;
  c->reconnect_at = 0;
  cl_set_state(c, IMC_CLIENT_CONNECTING, 0);
}

int imc_client_start(imc_client *c) {
  if (c == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (c->state != IMC_CLIENT_STOPPED && c->state != IMC_CLIENT_WAITING)
    return IMC_ERR_CLOSED;
  begin_connecting(c);
  return 0;
}

int imc_client_stop(imc_client *c) {
  if (c == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (c->in_wslay) {
    c->drop_reason = IMC_ERR_CLOSED;
    c->reconnect_at = -1; /* marks: stop, not wait */
    return 0;
  }
  conn_reset(c);
  c->reconnect_at = 0;
  cl_set_state(c, IMC_CLIENT_STOPPED, 0);
  return 0;
}

int imc_client_connected(imc_client *c) {
  if (c == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (c->state != IMC_CLIENT_CONNECTING)
    return IMC_ERR_CLOSED;
  c->out_len = c->out_pos = 0;
  int rv = cl_ws_begin(c);
  if (rv != 0) {
    cl_drop(c, rv);
    return rv;
  }
  cl_set_state(c, IMC_CLIENT_HANDSHAKE, 0);
  return 0;
}

int imc_client_disconnected(imc_client *c, int reason) {
  if (c == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (c->state != IMC_CLIENT_CONNECTING && c->state != IMC_CLIENT_HANDSHAKE &&
      c->state != IMC_CLIENT_ONLINE)
    return IMC_ERR_CLOSED;
  cl_drop(c, reason < 0 ? reason : IMC_ERR_CLOSED);
  return 0;
}

int imc_client_recv(imc_client *c, const uint8_t *data, size_t len) {
  if (c == NULL || (data == NULL && len > 0))
    return IMC_ERR_INVALID_ARGUMENT;
  if (c->state != IMC_CLIENT_HANDSHAKE && c->state != IMC_CLIENT_ONLINE)
    return IMC_ERR_CLOSED;
  cl_ws_recv(c, data, len);
  return 0;
}

size_t imc_client_output(imc_client *c, const uint8_t **data) {
  if (c == NULL || data == NULL)
    return 0;
  *data = c->out + c->out_pos;
  return c->out_len - c->out_pos;
}

void imc_client_output_consume(imc_client *c, size_t n) {
  if (c == NULL)
    return;
  if (n > c->out_len - c->out_pos)
    n = c->out_len - c->out_pos;
  c->out_pos += n;
  if (c->out_pos == c->out_len)
    c->out_pos = c->out_len = 0;
}

int imc_client_want_write(const imc_client *c) {
  return c != NULL && c->out_len > c->out_pos;
}

static int64_t earliest(int64_t a, int64_t b) {
  if (a <= 0)
    return b;
  if (b <= 0)
    return a;
  return a < b ? a : b;
}

int64_t imc_client_next_timeout_ms(imc_client *c) {
  if (c == NULL)
    return -1;
  int64_t at = 0;
  switch (c->state) {
  case IMC_CLIENT_CONNECTING:
  case IMC_CLIENT_HANDSHAKE:
    at = c->hs_deadline;
    break;
  case IMC_CLIENT_WAITING:
    at = c->reconnect_at;
    break;
  case IMC_CLIENT_ONLINE:
    at = earliest(earliest(c->next_ping, c->ping_deadline),
                  cl_outbox_next_due(c));
    break;
  default:
    break;
  }
  if (at <= 0)
    return -1;
  int64_t now = cl_now(c);
  return at > now ? at - now : 0;
}

int imc_client_on_timeout(imc_client *c) {
  if (c == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  int64_t now = cl_now(c);
  switch (c->state) {
  case IMC_CLIENT_CONNECTING:
  case IMC_CLIENT_HANDSHAKE:
    if (c->hs_deadline > 0 && now >= c->hs_deadline)
      cl_drop(c, IMC_ERR_EXPIRED);
    break;
  case IMC_CLIENT_WAITING:
    if (c->reconnect_at > 0 && now >= c->reconnect_at)
      begin_connecting(c);
    break;
  case IMC_CLIENT_ONLINE:
    if (c->ping_deadline > 0 && now >= c->ping_deadline) {
      cl_log(c, IMC_LOG_WARN, "client: no answer to a ping; reconnecting");
      cl_drop(c, IMC_ERR_EXPIRED);
      break;
    }
    if (c->next_ping > 0 && now >= c->next_ping) {
      c->next_ping = now + c->hb_ms;
      if (c->ping_deadline == 0)
        c->ping_deadline = now + c->o.pong_timeout_ms;
      if (cl_send_ping(c) != 0)
        break;
    }
    cl_outbox_run(c, now);
    break;
  default:
    break;
  }
  return 0;
}

imc_client_state imc_client_get_state(const imc_client *c) {
  return c ? c->state : IMC_CLIENT_STOPPED;
}

const char *imc_client_get_user_id(const imc_client *c) {
  return c ? c->user_id : "";
}

size_t imc_client_outbox_size(const imc_client *c) {
  return c ? c->ob_n : 0;
}

int imc_client_want_sync(const imc_client *c) {
  return c != NULL && c->want_sync;
}
