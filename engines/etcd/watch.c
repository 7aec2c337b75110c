/*
 * Watches: one streaming POST /v3/watch each, whose answer is a
 * sequence of newline-delimited JSON messages ({"result": ...}): first
 * "created", then batches of events (PUT events carry no "type", DELETE
 * ones "type":"DELETE"; a lease's end is DELETEs), possibly progress
 * notices (no events), or "canceled" (compacted past the watch, or the
 * member lost its leader: the stream is sent with gRPC metadata
 * "hasleader").
 *
 * States: CONNECTING (the stream is open, "created" not seen yet; a
 * timer bounds the wait), ACTIVE, WAITING (a backoff timer before the
 * next attempt), DEAD (cancelled while events were being delivered:
 * freed once etcd_process() returns).
 *
 * A new watch holds back the engine's requests made after it (e->holds)
 * until etcd has created it, so it sees every change those requests
 * make. A stream that breaks or is cancelled by etcd reconnects with
 * backoff (100 ms doubling to 5 s, and at once when the cluster answers
 * again) from the current revision, and the watch reports
 * IMC_WATCH_RESYNC once the new stream is created: events were lost in
 * between, and caches dropped then and refilled afterwards see every
 * later change.
 */
#include "etcd_int.h"

#include "util/alloc.h"

#include <string.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define KEEPALIVE_IDLE_S 10L
#define KEEPALIVE_INTVL_S 5L

enum { W_CONNECTING, W_ACTIVE, W_WAITING, W_DEAD };

struct etcd_watch {
  etcd_xfer x; /* x.h: the stream, while CONNECTING or ACTIVE */
  etcd_watch *prev, *next;
  imc_etcd *e;
  uint64_t id;
  imc_watch_cb cb;
  void *cb_ud;
  int state;
  int holding;    /* counted in e->holds: not created yet the first time */
  int resync;     /* owes IMC_WATCH_RESYNC once created */
  int werr;       /* the stream's write callback refused a message */
  unsigned tries; /* endpoints that refused the connection in a row */
  int64_t backoff_ms;
  void *timer; /* CONNECTING: creation deadline; WAITING: backoff */
  size_t ep;
  imc_wbuf body;     /* the create request, the same for every attempt */
  imc_wbuf buf;      /* received, not yet a complete message */
  imc_wbuf key, val; /* an event's key and value, decoded */
};

static void timer_stop(etcd_watch *w) {
  if (w->timer != NULL)
    w->e->loop.vtbl->timer_del(w->e->loop.ud, w->timer);
  w->timer = NULL;
}

static void stream_drop(etcd_watch *w) {
  if (w->x.h != NULL) {
    curl_multi_remove_handle(w->e->multi, w->x.h);
    curl_easy_cleanup(w->x.h);
    w->x.h = NULL;
  }
  w->buf.len = 0;
}

static void hold_end(etcd_watch *w) {
  if (w->holding) {
    w->holding = 0;
    if (--w->e->holds == 0)
      etcd_kick(w->e); /* releases the held requests */
  }
}

static void on_retry_timer(void *ud);
static void on_create_timeout(void *ud);

/* Ends the stream; the next attempt follows a backoff, and RESYNC. */
static void restart(etcd_watch *w, const char *why) {
  imc_etcd *e = w->e;
  stream_drop(w);
  timer_stop(w);
  hold_end(w);
  w->resync = 1;
  w->backoff_ms = w->backoff_ms == 0 ? BACKOFF_MIN_MS : 2 * w->backoff_ms;
  if (w->backoff_ms > BACKOFF_MAX_MS)
    w->backoff_ms = BACKOFF_MAX_MS;
  etcd_log(e, IMC_LOG_WARN, "etcd: watch %llu: %s; again in %lld ms",
           (unsigned long long)w->id, why, (long long)w->backoff_ms);
  w->state = W_WAITING;
  e->loop.vtbl->timer_add(e->loop.ud, w->backoff_ms, on_retry_timer, w,
                          &w->timer);
}

static size_t on_stream(char *p, size_t size, size_t n, void *ud) {
  etcd_watch *w = ud;
  size_t len = size * n;
  if (w->buf.len + len > ETCD_BODY_MAX) {
    w->werr = IMC_ERR_TOO_LARGE;
    return 0;
  }
  imc_wbuf_append(&w->buf, p, len);
  if (w->buf.err != 0) {
    w->werr = IMC_ERR_NOMEM;
    return 0;
  }
  return len;
}

/* Opens the stream on the current endpoint. */
static int stream_open(etcd_watch *w) {
  imc_etcd *e = w->e;
  CURL *h = curl_easy_init();
  if (h == NULL)
    return IMC_ERR_NOMEM;
  w->ep = e->cur_ep;
  w->werr = 0;
  w->x.err = 0;
  w->buf.len = 0;
  if (etcd_easy_setup(e, h, w->ep, "/v3/watch", e->timeout_ms) < 0 ||
      curl_easy_setopt(h, CURLOPT_PRIVATE, (void *)&w->x) != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_stream) != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_WRITEDATA, w) != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_HTTPHEADER, e->watch_headers) != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_POSTFIELDS, w->body.p) != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE,
                       (curl_off_t)w->body.len) != CURLE_OK ||
      /* A member that vanished without closing the connection. */
      curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L) != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, KEEPALIVE_IDLE_S) != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, KEEPALIVE_INTVL_S) !=
          CURLE_OK ||
      curl_multi_add_handle(e->multi, h) != CURLM_OK) {
    curl_easy_cleanup(h);
    return IMC_ERR_NOMEM;
  }
  w->x.h = h;
  w->state = W_CONNECTING;
  timer_stop(w);
  e->loop.vtbl->timer_add(e->loop.ud, e->timeout_ms, on_create_timeout, w,
                          &w->timer);
  return 0;
}

static void connect_or_restart(etcd_watch *w) {
  if (stream_open(w) < 0)
    restart(w, "out of memory");
}

static void on_retry_timer(void *ud) {
  etcd_watch *w = ud;
  w->timer = NULL;
  connect_or_restart(w);
}

static void on_create_timeout(void *ud) {
  etcd_watch *w = ud;
  w->timer = NULL;
  etcd_endpoint_failed(w->e, w->ep);
  etcd_answered(w->e, 0);
  restart(w, "not created in time");
}

void etcd_watches_retry(imc_etcd *e) {
  for (etcd_watch *w = e->watches; w != NULL; w = w->next)
    if (w->state == W_WAITING) {
      timer_stop(w);
      connect_or_restart(w);
    }
}

/* ------------------------------------------------------------------ */
/* Messages                                                             */
/* ------------------------------------------------------------------ */

static void created(etcd_watch *w) {
  w->state = W_ACTIVE;
  timer_stop(w);
  w->backoff_ms = 0;
  w->tries = 0;
  etcd_answered(w->e, 1);
  hold_end(w);
  if (w->resync) {
    w->resync = 0;
    w->cb(w->cb_ud, IMC_WATCH_RESYNC, NULL, NULL, 0);
  }
}

/* Hands one event to the callback. Returns 0 or IMC_ERR_PROTO/NOMEM. */
static int deliver(etcd_watch *w, const imc_json_value *ev) {
  imc_etcd *e = w->e;
  imc_json_value kv, k, v, type;
  const char *key, *val = NULL;
  size_t kl, vl = 0;
  if (ev->type != IMC_JSON_OBJECT || imc_json_member(ev, "kv", &kv) != 0 ||
      kv.type != IMC_JSON_OBJECT || imc_json_member(&kv, "key", &k) != 0)
    return IMC_ERR_PROTO;
  int del = imc_json_member(ev, "type", &type) == 0 && type.len == 8 &&
            memcmp(type.p, "\"DELETE\"", 8) == 0;
  int rv = ej_bytes(&k, &w->key, &key, &kl);
  if (rv < 0)
    return rv;
  /* Keys are prefix "users/" <user>/<device>; the watch asked for no
   * other. */
  size_t base = e->prefix_len + 6;
  if (kl < base || memcmp(key, e->prefix, e->prefix_len) != 0 ||
      memcmp(key + e->prefix_len, "users/", 6) != 0)
    return 0;
  if (!del && imc_json_member(&kv, "value", &v) == 0) {
    if ((rv = ej_bytes(&v, &w->val, &val, &vl)) < 0)
      return rv;
    /* The value is node "/" conn_id; watchers get the node. */
    const char *slash = memchr(val, '/', vl);
    if (slash != NULL)
      vl = (size_t)(slash - val);
  }
  w->cb(w->cb_ud, del ? IMC_WATCH_DELETE : IMC_WATCH_PUT, key + base,
        del ? NULL : (const uint8_t *)(val ? val : ""), del ? 0 : vl);
  return 0;
}

/* One message of w's stream. Returns 1 if the stream was dropped or the
 * watch cancelled (stop reading its buffer), else 0. */
static int on_message(etcd_watch *w, const char *p, size_t len) {
  imc_json_value root, res, evs, ev;
  size_t i = 0;
  while (i < len && (p[i] == ' ' || p[i] == '\r' || p[i] == '\t'))
    i++;
  if (i == len)
    return 0;
  if (imc_json_parse(p, len, &root) < 0 || root.type != IMC_JSON_OBJECT) {
    restart(w, "unreadable message");
    return 1;
  }
  if (imc_json_member(&root, "result", &res) != 0 ||
      res.type != IMC_JSON_OBJECT) {
    int st = ej_status(200, &root);
    if (st == IMC_ERR_UNAVAILABLE) {
      etcd_endpoint_failed(w->e, w->ep);
      etcd_answered(w->e, 0);
    }
    restart(w, imc_strerror(st));
    return 1;
  }
  if (ej_member_true(&res, "canceled")) {
    uint64_t rev = 0;
    ej_member_u64(&res, "compact_revision", &rev);
    restart(w, rev != 0 ? "compacted past the watch" : "cancelled by etcd");
    return 1;
  }
  if (ej_member_true(&res, "created")) {
    created(w);
    if (w->state == W_DEAD)
      return 1;
  }
  int rv = imc_json_member(&res, "events", &evs);
  if (rv == IMC_ERR_NOT_FOUND)
    return 0; /* created, or a progress notice */
  if (rv < 0 || evs.type != IMC_JSON_ARRAY) {
    restart(w, "unreadable events");
    return 1;
  }
  size_t pos = 0;
  while ((rv = imc_json_array_next(&evs, &pos, &ev)) == 1) {
    if (deliver(w, &ev) < 0) {
      restart(w, "unreadable event");
      return 1;
    }
    if (w->state == W_DEAD)
      return 1;
  }
  if (rv < 0) {
    restart(w, "unreadable events");
    return 1;
  }
  return 0;
}

void etcd_watches_pump(imc_etcd *e) {
  for (etcd_watch *w = e->watches; w != NULL; w = w->next) {
    if (w->state != W_CONNECTING && w->state != W_ACTIVE)
      continue;
    size_t start = 0;
    int dropped = 0;
    while (!dropped && start < w->buf.len) {
      const char *p = w->buf.p + start;
      const char *nl = memchr(p, '\n', w->buf.len - start);
      if (nl == NULL)
        break;
      size_t len = (size_t)(nl - p);
      dropped = on_message(w, p, len);
      start += len + 1;
    }
    if (!dropped && start > 0) {
      memmove(w->buf.p, w->buf.p + start, w->buf.len - start);
      w->buf.len -= start;
    }
  }
}

void etcd_watch_ended(imc_etcd *e, etcd_watch *w, CURLcode cc) {
  if (cc != CURLE_OK && w->werr == 0) {
    etcd_endpoint_failed(e, w->ep);
    etcd_answered(e, 0);
  }
  /* No stream was opened, so none broke: try the next member at once. */
  if ((cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST) &&
      ++w->tries < e->n_ep) {
    stream_drop(w);
    connect_or_restart(w);
    return;
  }
  w->tries = 0;
  restart(w, w->werr != 0     ? imc_strerror(w->werr)
             : cc != CURLE_OK ? curl_easy_strerror(cc)
                              : "the stream ended");
}

void etcd_watches_doomed(imc_etcd *e) {
  for (etcd_watch *w = e->watches; w != NULL; w = w->next)
    if (w->x.h != NULL && w->x.err != 0)
      restart(w, imc_strerror(w->x.err));
}

/* ------------------------------------------------------------------ */
/* Watch and cancel                                                     */
/* ------------------------------------------------------------------ */

static void watch_free(imc_etcd *e, etcd_watch *w) {
  stream_drop(w);
  timer_stop(w);
  if (w->prev)
    w->prev->next = w->next;
  else
    e->watches = w->next;
  if (w->next)
    w->next->prev = w->prev;
  imc_wbuf_free(&w->body);
  imc_wbuf_free(&w->buf);
  imc_wbuf_free(&w->key);
  imc_wbuf_free(&w->val);
  imc_free(&e->mem, w);
}

/* The create request for keys starting with prefix "users/" sub. */
static void write_create(imc_etcd *e, etcd_watch *w, const char *sub) {
  imc_wbuf k;
  imc_wbuf_init(&k, &e->mem);
  imc_wbuf_append(&k, e->prefix, e->prefix_len);
  imc_wbuf_puts(&k, "users/");
  imc_wbuf_puts(&k, sub);
  char *end = imc_wbuf_reserve(&k, k.len + 1);
  if (end == NULL) {
    w->body.err = IMC_ERR_NOMEM;
    imc_wbuf_free(&k);
    return;
  }
  size_t el;
  ej_prefix_end(k.p, k.len, end, &el);
  if (el == 0) /* every key from k on */
    end[el++] = '\0';
  imc_jsonw jw;
  imc_jsonw_init(&jw, &w->body);
  imc_jsonw_object_begin(&jw);
  imc_jsonw_key(&jw, "create_request");
  imc_jsonw_object_begin(&jw);
  ej_kv_bytes(&jw, "key", k.p, k.len);
  ej_kv_bytes(&jw, "range_end", end, el);
  imc_jsonw_object_end(&jw);
  imc_jsonw_object_end(&jw);
  imc_wbuf_free(&k);
}

int etcd_watch_new(void *ud, const char *prefix, imc_watch_cb cb, void *cb_ud,
                   uint64_t *watch_id) {
  imc_etcd *e = ud;
  if (e == NULL || cb == NULL || watch_id == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (e->closing)
    return IMC_ERR_CLOSED;
  etcd_watch *w = imc_calloc(&e->mem, 1, sizeof(*w));
  if (w == NULL)
    return IMC_ERR_NOMEM;
  w->x.is_watch = 1;
  w->e = e;
  w->cb = cb;
  w->cb_ud = cb_ud;
  imc_wbuf_init(&w->body, &e->mem);
  imc_wbuf_init(&w->buf, &e->mem);
  imc_wbuf_init(&w->key, &e->mem);
  imc_wbuf_init(&w->val, &e->mem);
  /* Linked first, so that a failure below can use watch_free. */
  w->prev = NULL;
  w->next = e->watches;
  if (w->next)
    w->next->prev = w;
  e->watches = w;
  write_create(e, w, prefix ? prefix : "");
  if (w->body.err != 0 || stream_open(w) < 0) {
    watch_free(e, w);
    return IMC_ERR_NOMEM;
  }
  w->holding = 1;
  e->holds++;
  w->id = ++e->last_watch;
  *watch_id = w->id;
  return 0;
}

int etcd_watch_cancel(void *ud, uint64_t watch_id) {
  imc_etcd *e = ud;
  if (e == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  etcd_watch *w = e->watches;
  while (w != NULL && (w->id != watch_id || w->state == W_DEAD))
    w = w->next;
  if (w == NULL || watch_id == 0)
    return IMC_ERR_NOT_FOUND;
  hold_end(w);
  /* While events are delivered its buffer is being read: freed later. */
  if (e->processing > 0) {
    stream_drop(w);
    timer_stop(w);
    w->state = W_DEAD;
  } else {
    watch_free(e, w);
  }
  return 0;
}

void etcd_watches_sweep(imc_etcd *e) {
  etcd_watch *w = e->watches;
  while (w != NULL) {
    etcd_watch *next = w->next;
    if (w->state == W_DEAD)
      watch_free(e, w);
    w = next;
  }
}

void etcd_watches_fini(imc_etcd *e) {
  while (e->watches != NULL)
    watch_free(e, e->watches);
  e->holds = 0;
}
