/*
 * HTTP to etcd's JSON gateway: libcurl's multi interface on the host's
 * loop. libcurl tells which sockets to watch (CURLMOPT_SOCKETFUNCTION:
 * an fd watch each) and when to call it back (CURLMOPT_TIMERFUNCTION:
 * one loop timer); the loop's callbacks hand readiness to
 * curl_multi_socket_action(), then etcd_process() runs what finished.
 *
 * Requests are POSTs of a JSON body. One that
 * could not connect is sent again to the next endpoint while it has time
 * (nothing reached etcd, so any request may be repeated); any other
 * failure is reported. Each request carries the deadline of the
 * operations it serves as its libcurl timeout.
 */
#include "etcd_int.h"

#include "util/alloc.h"

#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* libcurl's sockets and timer on the loop                              */
/* ------------------------------------------------------------------ */

static void on_fd(void *ud, int fd, unsigned events) {
  etcd_sock *s = ud;
  imc_etcd *e = s->e; /* s may be freed by the call below */
  int flags = ((events & IMC_LOOP_READ) ? CURL_CSELECT_IN : 0) |
              ((events & IMC_LOOP_WRITE) ? CURL_CSELECT_OUT : 0) |
              ((events & IMC_LOOP_ERROR) ? CURL_CSELECT_ERR : 0);
  int running;
  curl_multi_socket_action(e->multi, fd, flags, &running);
  etcd_process(e);
}

static void sock_free(imc_etcd *e, etcd_sock *s) {
  e->loop.vtbl->fd_del(e->loop.ud, s->h);
  if (s->prev)
    s->prev->next = s->next;
  else
    e->socks = s->next;
  if (s->next)
    s->next->prev = s->prev;
  imc_free(&e->mem, s);
}

/*
 * A socket that cannot be watched fails its transfer with code, after
 * libcurl returns (etcd_process()). Returning -1 instead would fail
 * every transfer of the multi handle.
 */
static int doom(imc_etcd *e, CURL *h, int code) {
  etcd_xfer *x = NULL;
  curl_easy_getinfo(h, CURLINFO_PRIVATE, (char **)&x);
  if (x != NULL) {
    x->err = code;
    e->doomed = 1;
  }
  return 0;
}

static int on_socket(CURL *h, curl_socket_t fd, int what, void *userp,
                     void *socketp) {
  imc_etcd *e = userp;
  etcd_sock *s = socketp;
  if (what == CURL_POLL_REMOVE) {
    if (s != NULL)
      sock_free(e, s);
    return 0;
  }
  unsigned ev = ((what & CURL_POLL_IN) ? IMC_LOOP_READ : 0u) |
                ((what & CURL_POLL_OUT) ? IMC_LOOP_WRITE : 0u);
  if (s != NULL) {
    int rv = e->loop.vtbl->fd_set(e->loop.ud, s->h, ev);
    return rv < 0 ? doom(e, h, rv) : 0;
  }
  s = imc_calloc(&e->mem, 1, sizeof(*s));
  if (s == NULL)
    return doom(e, h, IMC_ERR_NOMEM);
  s->e = e;
  int rv = e->loop.vtbl->fd_add(e->loop.ud, fd, ev, on_fd, s, &s->h);
  if (rv < 0) {
    imc_free(&e->mem, s);
    return doom(e, h, rv);
  }
  s->next = e->socks;
  if (s->next)
    s->next->prev = s;
  e->socks = s;
  curl_multi_assign(e->multi, fd, s);
  return 0;
}

static void on_curl_timeout(void *ud) {
  imc_etcd *e = ud;
  e->curl_timer = NULL; /* a timer that fired is gone */
  int running;
  curl_multi_socket_action(e->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  etcd_process(e);
}

static int on_timer(CURLM *m, long timeout_ms, void *userp) {
  imc_etcd *e = userp;
  (void)m;
  if (e->curl_timer != NULL) {
    e->loop.vtbl->timer_del(e->loop.ud, e->curl_timer);
    e->curl_timer = NULL;
  }
  if (timeout_ms < 0)
    return 0;
  return e->loop.vtbl->timer_add(e->loop.ud, timeout_ms, on_curl_timeout, e,
                                 &e->curl_timer) < 0
             ? -1
             : 0;
}

int etcd_http_init(imc_etcd *e) {
  e->multi = curl_multi_init();
  if (e->multi == NULL)
    return IMC_ERR_NOMEM;
  curl_multi_setopt(e->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(e->multi, CURLMOPT_SOCKETDATA, e);
  curl_multi_setopt(e->multi, CURLMOPT_TIMERFUNCTION, on_timer);
  curl_multi_setopt(e->multi, CURLMOPT_TIMERDATA, e);
  /* "Expect:" stops libcurl waiting for a 100-continue on larger bodies. */
  const char *hdrs[] = {"Content-Type: application/json", "Expect:"};
  for (size_t i = 0; i < 2; i++) {
    struct curl_slist *l = curl_slist_append(e->headers, hdrs[i]);
    if (l == NULL)
      return IMC_ERR_NOMEM;
    e->headers = l;
    l = curl_slist_append(e->watch_headers, hdrs[i]);
    if (l == NULL)
      return IMC_ERR_NOMEM;
    e->watch_headers = l;
  }
  /* gRPC metadata "hasleader": the member cancels the watch when it
   * loses its leader, instead of keeping a stream that stays silent. */
  struct curl_slist *l =
      curl_slist_append(e->watch_headers, "Grpc-Metadata-hasleader: true");
  if (l == NULL)
    return IMC_ERR_NOMEM;
  e->watch_headers = l;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Requests                                                             */
/* ------------------------------------------------------------------ */

static size_t on_write(char *p, size_t size, size_t n, void *ud) {
  etcd_req *r = ud;
  size_t len = size * n;
  if (r->resp.len + len > ETCD_BODY_MAX) {
    r->werr = IMC_ERR_TOO_LARGE;
    return 0;
  }
  imc_wbuf_append(&r->resp, p, len);
  if (r->resp.err != 0) {
    r->werr = IMC_ERR_NOMEM;
    return 0;
  }
  return len;
}

etcd_req *etcd_req_new(imc_etcd *e, const char *path, etcd_req_fn fn,
                       void *owner, int64_t deadline) {
  etcd_req *r = imc_calloc(&e->mem, 1, sizeof(*r));
  if (r == NULL)
    return NULL;
  r->path = path;
  r->holdable = 1;
  r->deadline = deadline;
  r->fn = fn;
  r->owner = owner;
  imc_wbuf_init(&r->body, &e->mem);
  imc_wbuf_init(&r->resp, &e->mem);
  return r;
}

static void list_unlink(etcd_req **head, etcd_req *r) {
  if (r->prev)
    r->prev->next = r->next;
  else
    *head = r->next;
  if (r->next)
    r->next->prev = r->prev;
  r->prev = r->next = NULL;
}

void etcd_req_free(imc_etcd *e, etcd_req *r) {
  if (r->x.h != NULL) {
    if (r->in_curl)
      curl_multi_remove_handle(e->multi, r->x.h);
    curl_easy_cleanup(r->x.h);
  }
  imc_wbuf_free(&r->body);
  imc_wbuf_free(&r->resp);
  imc_free(&e->mem, r);
}

int etcd_easy_setup(imc_etcd *e, CURL *h, size_t ep, const char *path,
                    int64_t timeout_ms) {
  char url[ETCD_URL_MAX + 32];
  snprintf(url, sizeof(url), "%s%s", e->endpoints[ep], path);
  if (timeout_ms < 1)
    timeout_ms = 1;
  long connect_ms =
      (long)(timeout_ms < e->timeout_ms ? timeout_ms : e->timeout_ms);
  if (curl_easy_setopt(h, CURLOPT_URL, url) != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1) !=
          CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, connect_ms) != CURLE_OK)
    return IMC_ERR_NOMEM;
  return 0;
}

static int req_send(imc_etcd *e, etcd_req *r) {
  if (r->x.h == NULL) {
    r->x.h = curl_easy_init();
    if (r->x.h == NULL)
      return IMC_ERR_NOMEM;
  }
  CURL *h = r->x.h;
  r->ep = e->cur_ep;
  r->sent++;
  r->x.err = 0;
  r->werr = 0;
  r->resp.len = 0;
  int64_t left = r->deadline - etcd_now_ms();
  if (etcd_easy_setup(e, h, r->ep, r->path, left) < 0)
    return IMC_ERR_NOMEM;
  curl_easy_setopt(h, CURLOPT_PRIVATE, (void *)&r->x);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)(left < 1 ? 1 : left));
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, e->headers);
  curl_easy_setopt(h, CURLOPT_POSTFIELDS, r->body.p);
  curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body.len);
  if (curl_multi_add_handle(e->multi, h) != CURLM_OK)
    return IMC_ERR_NOMEM;
  r->in_curl = 1;
  r->prev = NULL;
  r->next = e->reqs;
  if (r->next)
    r->next->prev = r;
  e->reqs = r;
  return 0;
}

int etcd_req_start(imc_etcd *e, etcd_req *r) {
  if (r->body.err != 0)
    return r->body.err;
  if (r->holdable && e->holds > 0) {
    r->prev = e->held_tail;
    r->next = NULL;
    if (e->held_tail)
      e->held_tail->next = r;
    else
      e->held = r;
    e->held_tail = r;
    return 0;
  }
  return req_send(e, r);
}

void etcd_release_held(imc_etcd *e) {
  while (e->holds == 0 && e->held != NULL) {
    etcd_req *r = e->held;
    list_unlink(&e->held, r);
    if (e->held == NULL)
      e->held_tail = NULL;
    int rv =
        etcd_now_ms() >= r->deadline ? IMC_ERR_UNAVAILABLE : req_send(e, r);
    if (rv < 0) {
      r->fn(e, r, rv, NULL);
      etcd_req_free(e, r);
    }
  }
}

void etcd_endpoint_failed(imc_etcd *e, size_t ep) {
  if (e->n_ep > 1 && e->cur_ep == ep) {
    e->cur_ep = (ep + 1) % e->n_ep;
    etcd_log(e, IMC_LOG_WARN, "etcd: %s failed, trying %s", e->endpoints[ep],
             e->endpoints[e->cur_ep]);
  }
}

static void req_detach(imc_etcd *e, etcd_req *r) {
  curl_multi_remove_handle(e->multi, r->x.h);
  r->in_curl = 0;
  list_unlink(&e->reqs, r);
}

/* Ends the transfers whose socket could not be watched. */
static void doomed_end(imc_etcd *e) {
  e->doomed = 0;
  etcd_watches_doomed(e);
  etcd_req *r = e->reqs;
  while (r != NULL) {
    if (r->x.err == 0) {
      r = r->next;
      continue;
    }
    req_detach(e, r);
    r->fn(e, r, r->x.err, NULL);
    etcd_req_free(e, r);
    r = e->reqs; /* fn may have changed the list */
  }
}

/* A request libcurl finished with cc: retry, or answer its owner. */
static void req_ended(imc_etcd *e, etcd_req *r, CURLcode cc) {
  req_detach(e, r);

  int status;
  imc_json_value root;
  int have_root = 0;
  if (cc == CURLE_OK) {
    long http = 0;
    curl_easy_getinfo(r->x.h, CURLINFO_RESPONSE_CODE, &http);
    have_root = r->resp.len > 0 &&
                imc_json_parse(r->resp.p, r->resp.len, &root) == 0 &&
                root.type == IMC_JSON_OBJECT;
    status = ej_status(http, have_root ? &root : NULL);
  } else if (r->werr != 0) {
    status = r->werr;
  } else {
    status = IMC_ERR_UNAVAILABLE;
  }
  if (status == IMC_ERR_UNAVAILABLE) {
    etcd_endpoint_failed(e, r->ep);
    int unsent =
        cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST;
    if (unsent && r->sent < e->n_ep && etcd_now_ms() < r->deadline &&
        req_send(e, r) == 0)
      return;
  }
  etcd_answered(e, status != IMC_ERR_UNAVAILABLE);
  r->fn(e, r, status, status == 0 ? &root : NULL);
  etcd_req_free(e, r);
}

void etcd_process(imc_etcd *e) {
  e->processing++;
  etcd_watches_pump(e);
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(e->multi, &left)) != NULL) {
    if (m->msg != CURLMSG_DONE)
      continue;
    /* m does not survive the removal of its handle. */
    CURLcode cc = m->data.result;
    etcd_xfer *x = NULL;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
    if (x->is_watch)
      etcd_watch_ended(e, (etcd_watch *)x, cc);
    else
      req_ended(e, (etcd_req *)x, cc);
  }
  while (e->doomed)
    doomed_end(e);
  if (--e->processing == 0)
    etcd_watches_sweep(e);
}

void etcd_http_fini(imc_etcd *e) {
  while (e->reqs != NULL || e->held != NULL) {
    etcd_req *r = e->reqs ? e->reqs : e->held;
    list_unlink(r == e->reqs ? &e->reqs : &e->held, r);
    if (e->held == NULL)
      e->held_tail = NULL;
    r->fn(e, r, IMC_ERR_CLOSED, NULL);
    etcd_req_free(e, r);
  }
  if (e->multi != NULL)
    curl_multi_cleanup(e->multi);
  e->multi = NULL;
  while (e->socks != NULL)
    sock_free(e, e->socks);
  if (e->curl_timer != NULL)
    e->loop.vtbl->timer_del(e->loop.ud, e->curl_timer);
  e->curl_timer = NULL;
  curl_slist_free_all(e->headers);
  curl_slist_free_all(e->watch_headers);
  e->headers = e->watch_headers = NULL;
}
