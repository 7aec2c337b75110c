/*
 * The JWKS key source (jwks.h): one libcurl easy handle at a time on a
 * multi handle driven by the loop. libcurl says which sockets to watch
 * (CURLMOPT_SOCKETFUNCTION: an hloop watch each) and when to call it
 * back (CURLMOPT_TIMERFUNCTION: a deadline the hook watches); the hook
 * also starts the scheduled fetches.
 */
#include "jwks.h"

#include "clock.h"
#include "log.h"

#include <imchat/jwks.h>
#include <imchat/version.h>

#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>

#define MAX_WAITERS 4096 /* lookups waiting on one fetch */

typedef struct waiter {
  struct waiter *next;
  char alg[8];
  char kid[IMC_JWKS_KID_MAX + 1];
  imc_key_cb done;
  void *done_ud;
} waiter;

/* A socket libcurl asked us to watch (its socketp). */
typedef struct sock {
  struct sock *next, *prev;
  hloop_watch *w;
} sock;

struct hjwks {
  hloop *loop;
  char *url, *shown_url; /* shown_url: without user and password */
  char *ca_file;
  int64_t refresh_ms, min_refetch_ms, timeout_ms, retry_ms;

  CURLM *multi;
  CURL *easy; /* the fetch in flight, or NULL */
  struct curl_slist *headers;
  sock *socks;
  int64_t curl_due;  /* libcurl's timer, -1: none */
  int64_t fetch_due; /* the next scheduled fetch, -1: none (one runs) */
  int64_t last_kid_fetch;
  int kid_fetched; /* last_kid_fetch is set */
  int64_t backoff_ms;
  int watch_err; /* a socket could not be watched: fail the fetch */
  char errbuf[CURL_ERROR_SIZE];

  char *body;
  size_t body_len, body_cap;
  int too_large;

  imc_jwks *set; /* NULL until a fetch succeeded */
  waiter *waiters, **waiters_tail;
  size_t n_waiters;

  uint64_t fetches_ok, fetches_failed, kid_refetches;
};

/* ------------------------------------------------------------------ */
/* libcurl's sockets and timer on the loop                              */
/* ------------------------------------------------------------------ */

static void process(hjwks *j);

static void on_watch(void *ud, int fd, uint32_t revents) {
  hjwks *j = ud;
  int flags = ((revents & EPOLLIN) ? CURL_CSELECT_IN : 0) |
              ((revents & EPOLLOUT) ? CURL_CSELECT_OUT : 0) |
              ((revents & (EPOLLERR | EPOLLHUP)) ? CURL_CSELECT_ERR : 0);
  int running;
  curl_multi_socket_action(j->multi, fd, flags, &running);
  process(j);
}

static void sock_free(hjwks *j, sock *s) {
  hloop_watch_del(j->loop, s->w);
  if (s->prev)
    s->prev->next = s->next;
  else
    j->socks = s->next;
  if (s->next)
    s->next->prev = s->prev;
  free(s);
}

/* Returning -1 here would fail every transfer; a socket that cannot be
 * watched fails the fetch from process() instead. */
static int on_socket(CURL *h, curl_socket_t fd, int what, void *userp,
                     void *socketp) {
  hjwks *j = userp;
  sock *s = socketp;
  (void)h;
  if (what == CURL_POLL_REMOVE) {
    if (s != NULL)
      sock_free(j, s);
    return 0;
  }
  uint32_t ev = ((what & CURL_POLL_IN) ? EPOLLIN : 0u) |
                ((what & CURL_POLL_OUT) ? EPOLLOUT : 0u);
  if (s != NULL) {
    if (hloop_watch_set(j->loop, s->w, ev) < 0)
      j->watch_err = 1;
    return 0;
  }
  s = calloc(1, sizeof(*s));
  if (s == NULL || hloop_watch_add(j->loop, fd, ev, on_watch, j, &s->w) < 0) {
    free(s);
    j->watch_err = 1;
    return 0;
  }
  s->next = j->socks;
  if (s->next)
    s->next->prev = s;
  j->socks = s;
  curl_multi_assign(j->multi, fd, s);
  return 0;
}

static int on_timer(CURLM *m, long timeout_ms, void *userp) {
  hjwks *j = userp;
  (void)m;
  j->curl_due = timeout_ms < 0 ? -1 : hclock_ms() + timeout_ms;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Fetching                                                             */
/* ------------------------------------------------------------------ */

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  hjwks *j = ud;
  size_t len = size * n;
  if (j->body_len + len > IMC_JWKS_DOC_MAX) {
    j->too_large = 1;
    return 0;
  }
  if (j->body_len + len > j->body_cap) {
    size_t cap = j->body_cap ? j->body_cap : 4096;
    while (cap < j->body_len + len)
      cap *= 2;
    char *b = realloc(j->body, cap);
    if (b == NULL)
      return 0;
    j->body = b;
    j->body_cap = cap;
  }
  memcpy(j->body + j->body_len, p, len);
  j->body_len += len;
  return len;
}

/* Starts a fetch. Returns 0 or -1 (logged). */
static int fetch_start(hjwks *j) {
  CURL *h = curl_easy_init();
  if (h == NULL) {
    hlog_warn("--jwks-url: cannot start a fetch: out of memory");
    return -1;
  }
  j->body_len = 0;
  j->too_large = 0;
  j->watch_err = 0;
  j->errbuf[0] = '\0';
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, j->errbuf);
  curl_easy_setopt(h, CURLOPT_URL, j->url);
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)j->timeout_ms);
  curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)IMC_JWKS_DOC_MAX);
  curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, j->headers);
  curl_easy_setopt(h, CURLOPT_USERAGENT, "imchatd/" IMC_VERSION);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, j);
  if (j->ca_file)
    curl_easy_setopt(h, CURLOPT_CAINFO, j->ca_file);
  if (curl_multi_add_handle(j->multi, h) != CURLM_OK) {
    curl_easy_cleanup(h);
    hlog_warn("--jwks-url: cannot start a fetch");
    return -1;
  }
  j->easy = h;
  j->fetch_due = -1;
  return 0;
}

/* The max-age of the answer's Cache-Control headers, or -1. */
static long max_age(CURL *h) {
  struct curl_header *hd;
  long age = -1;
  for (size_t i = 0; curl_easy_header(h, "Cache-Control", i, CURLH_HEADER, -1,
                                      &hd) == CURLHE_OK;
       i++) {
    for (const char *p = hd->value; (p = strcasestr(p, "max-age")) != NULL;) {
      p += 7;
      while (*p == ' ')
        p++;
      if (*p != '=')
        continue;
      p++;
      while (*p == ' ' || *p == '"')
        p++;
      char *end;
      errno = 0;
      long v = strtol(p, &end, 10);
      if (end != p && v >= 0 && errno == 0)
        age = v;
    }
    if (i + 1 >= hd->amount)
      break;
  }
  return age;
}

/* 1 if a and b hold the same keys in the same order. */
static int same_keys(const imc_jwks *a, const imc_jwks *b) {
  size_t n = imc_jwks_count(a);
  if (a == NULL || n != imc_jwks_count(b))
    return 0;
  for (size_t i = 0; i < n; i++) {
    const char *ka, *kb, *pa, *pb;
    imc_jwks_key(a, i, NULL, &ka, &pa, NULL);
    imc_jwks_key(b, i, NULL, &kb, &pb, NULL);
    if (strcmp(ka, kb) != 0 || strcmp(pa, pb) != 0)
      return 0;
  }
  return 1;
}

static void log_keys(const imc_jwks *set, const char *url) {
  char list[512] = "";
  size_t n = 0;
  const char *alg, *kid;
  for (size_t i = 0;
       imc_jwks_key(set, i, &alg, &kid, NULL, NULL) == 0 && n < sizeof(list);
       i++)
    n += (size_t)snprintf(list + n, sizeof(list) - n, "%s%s %s", i ? ", " : "",
                          kid[0] ? kid : "(no kid)", alg);
  hlog_info("--jwks-url: %zu key(s) from %s: %s%s", imc_jwks_count(set), url,
            list, n >= sizeof(list) ? "..." : "");
  if (imc_jwks_ignored(set) > 0)
    hlog_info("--jwks-url: %zu entr%s ignored (not RS256/ES256 signing keys, "
              "or malformed)",
              imc_jwks_ignored(set), imc_jwks_ignored(set) == 1 ? "y" : "ies");
}

/* Takes the fetched document: 0, or -1 with the reason in why. */
static int take_body(hjwks *j, char *why, size_t cap) {
  imc_jwks *set;
  int rv = imc_jwks_new(&set, j->body ? j->body : "", j->body_len, NULL);
  if (rv != 0) {
    snprintf(why, cap, "not a JWK Set: %s", imc_strerror(rv));
    return -1;
  }
  if (imc_jwks_count(set) == 0) {
    snprintf(why, cap, "no usable key (%zu ignored)", imc_jwks_ignored(set));
    imc_jwks_del(set);
    return -1;
  }
  if (same_keys(j->set, set))
    hlog_debug("--jwks-url: %s unchanged", j->shown_url);
  else
    log_keys(set, j->shown_url);
  imc_jwks_del(j->set);
  j->set = set;
  return 0;
}

/* Answers a lookup from the set in use. */
static void answer(hjwks *j, const char *alg, const char *kid, imc_key_cb done,
                   void *done_ud) {
  const char *pem;
  size_t len;
  if (j->set == NULL)
    done(done_ud, IMC_ERR_UNAVAILABLE, NULL, NULL, 0);
  else if (imc_jwks_find(j->set, alg, kid, &pem, &len) == 0)
    done(done_ud, 0, alg, (const uint8_t *)pem, len);
  else
    done(done_ud, IMC_ERR_NOT_FOUND, NULL, NULL, 0);
}

/* Answers the lookups that waited; those they start wait for the next
 * fetch. */
static void answer_waiters(hjwks *j) {
  waiter *w = j->waiters;
  j->waiters = NULL;
  j->waiters_tail = &j->waiters;
  j->n_waiters = 0;
  while (w != NULL) {
    waiter *next = w->next;
    answer(j, w->alg, w->kid, w->done, w->done_ud);
    free(w);
    w = next;
  }
}

static void fetch_ended(hjwks *j, CURLcode cc) {
  CURL *h = j->easy;
  j->easy = NULL;
  curl_multi_remove_handle(j->multi, h);
  char why[CURL_ERROR_SIZE + 64] = "";
  long status = 0, age = -1;
  int64_t now = hclock_ms();
  if (j->watch_err) {
    snprintf(why, sizeof(why), "cannot watch a socket");
  } else if (cc != CURLE_OK) {
    if (j->too_large || cc == CURLE_FILESIZE_EXCEEDED)
      snprintf(why, sizeof(why), "document over %d bytes", IMC_JWKS_DOC_MAX);
    else
      snprintf(why, sizeof(why), "%s",
               j->errbuf[0] ? j->errbuf : curl_easy_strerror(cc));
  } else if (curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status) !=
                 CURLE_OK ||
             status != 200) {
    snprintf(why, sizeof(why), "HTTP status %ld", status);
  } else if (take_body(j, why, sizeof(why)) == 0) {
    age = max_age(h);
  }
  curl_easy_cleanup(h);
  if (why[0] == '\0') {
    j->fetches_ok++;
    j->backoff_ms = j->retry_ms;
    int64_t every = j->refresh_ms;
    if (age >= 0 && age < every / 1000)
      every = age * 1000 > j->min_refetch_ms ? age * 1000 : j->min_refetch_ms;
    j->fetch_due = now + every;
  } else {
    j->fetches_failed++;
    if (j->set)
      hlog_warn("--jwks-url: fetching %s failed: %s; the %zu key(s) in use "
                "stay; next try in %lld ms",
                j->shown_url, why, imc_jwks_count(j->set),
                (long long)j->backoff_ms);
    else
      hlog_warn("--jwks-url: fetching %s failed: %s; no key yet, tokens "
                "that need one are refused; next try in %lld ms",
                j->shown_url, why, (long long)j->backoff_ms);
    j->fetch_due = now + j->backoff_ms;
    j->backoff_ms = j->backoff_ms * 2 < j->min_refetch_ms ? j->backoff_ms * 2
                                                          : j->min_refetch_ms;
  }
  answer_waiters(j);
}

static void process(hjwks *j) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(j->multi, &left)) != NULL) {
    if (m->msg == CURLMSG_DONE && m->easy_handle == j->easy)
      fetch_ended(j, m->data.result);
  }
  if (j->easy != NULL && j->watch_err)
    fetch_ended(j, CURLE_OK);
}

static int64_t hook_due(void *ud) {
  hjwks *j = ud;
  int64_t due = j->curl_due;
  if (j->fetch_due >= 0 && (due < 0 || j->fetch_due < due))
    due = j->fetch_due;
  if (due < 0)
    return -1;
  int64_t left = due - hclock_ms();
  return left < 0 ? 0 : left;
}

static void hook_run(void *ud) {
  hjwks *j = ud;
  int64_t now = hclock_ms();
  if (j->curl_due >= 0 && j->curl_due <= now) {
    j->curl_due = -1;
    int running;
    curl_multi_socket_action(j->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    process(j);
  }
  if (j->fetch_due >= 0 && j->fetch_due <= now && j->easy == NULL &&
      fetch_start(j) < 0)
    j->fetch_due = now + j->min_refetch_ms;
}

/* ------------------------------------------------------------------ */
/* The key source                                                       */
/* ------------------------------------------------------------------ */

static int lookup(void *ud, const char *alg, const char *kid, imc_key_cb done,
                  void *done_ud) {
  hjwks *j = ud;
  if (kid == NULL)
    kid = "";
  if ((strcmp(alg, "RS256") != 0 && strcmp(alg, "ES256") != 0) ||
      strlen(kid) > IMC_JWKS_KID_MAX)
    return IMC_ERR_NOT_FOUND;
  if (j->set != NULL && imc_jwks_find(j->set, alg, kid, NULL, NULL) == 0) {
    answer(j, alg, kid, done, done_ud);
    return 0;
  }
  /* A miss: wait for the fetch in flight, or start one if the last that
   * a miss started is old enough. */
  int64_t now = hclock_ms();
  if (j->easy == NULL) {
    if (j->kid_fetched && now - j->last_kid_fetch < j->min_refetch_ms)
      return j->set ? IMC_ERR_NOT_FOUND : IMC_ERR_UNAVAILABLE;
    hlog_info("--jwks-url: no key for %s kid '%s': fetching %s again", alg, kid,
              j->shown_url);
    if (fetch_start(j) < 0)
      return IMC_ERR_UNAVAILABLE;
    j->kid_fetched = 1;
    j->last_kid_fetch = now;
    j->kid_refetches++;
  }
  if (j->n_waiters >= MAX_WAITERS)
    return IMC_ERR_UNAVAILABLE;
  waiter *w = calloc(1, sizeof(*w));
  if (w == NULL)
    return IMC_ERR_NOMEM;
  snprintf(w->alg, sizeof(w->alg), "%s", alg);
  snprintf(w->kid, sizeof(w->kid), "%s", kid);
  w->done = done;
  w->done_ud = done_ud;
  *j->waiters_tail = w;
  j->waiters_tail = &w->next;
  j->n_waiters++;
  return 0;
}

static const imc_keysrc_vtbl keysrc = {sizeof(imc_keysrc_vtbl), lookup};

const imc_keysrc_vtbl *hjwks_keysrc_vtbl(void) {
  return &keysrc;
}

/* ------------------------------------------------------------------ */
/* Metrics and readiness                                                */
/* ------------------------------------------------------------------ */

static int collect(void *ud, imc_metrics *m) {
  hjwks *j = ud;
  int rv;
  if ((rv = imc_metrics_family(m, "imchat_jwks_keys", IMC_METRIC_GAUGE,
                               "Usable keys in the JWK Set in use")) != 0 ||
      (rv = imc_metrics_sample(m, "imchat_jwks_keys", NULL, NULL,
                               imc_jwks_count(j->set))) != 0 ||
      (rv = imc_metrics_family(m, "imchat_jwks_fetches_total",
                               IMC_METRIC_COUNTER,
                               "Fetches of the JWK Set, by result")) != 0 ||
      (rv = imc_metrics_sample(m, "imchat_jwks_fetches_total", "result", "ok",
                               j->fetches_ok)) != 0 ||
      (rv = imc_metrics_sample(m, "imchat_jwks_fetches_total", "result",
                               "failed", j->fetches_failed)) != 0 ||
      (rv = imc_metrics_family(
           m, "imchat_jwks_kid_refetches_total", IMC_METRIC_COUNTER,
           "Fetches started by a token whose key was not in the set")) != 0)
    return rv;
  return imc_metrics_sample(m, "imchat_jwks_kid_refetches_total", NULL, NULL,
                            j->kid_refetches);
}

static int ready(void *ud, const char **component, const char **state) {
  hjwks *j = ud;
  if (j->set != NULL)
    return 1;
  *component = "jwks";
  *state = "no key set";
  return 0;
}

static const imc_metrics_source_vtbl metrics = {sizeof(imc_metrics_source_vtbl),
                                                collect, ready};

const imc_metrics_source_vtbl *hjwks_metrics_vtbl(void) {
  return &metrics;
}

/* ------------------------------------------------------------------ */
/* Life                                                                 */
/* ------------------------------------------------------------------ */

/* The URL without user and password, for logs; NULL if it is not an
 * http or https URL libcurl can parse. */
static char *shown(const char *url) {
  CURLU *u = curl_url();
  char *scheme = NULL, *out = NULL;
  if (u != NULL && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
      (strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0) &&
      curl_url_set(u, CURLUPART_USER, NULL, 0) == CURLUE_OK &&
      curl_url_set(u, CURLUPART_PASSWORD, NULL, 0) == CURLUE_OK) {
    char *s = NULL;
    if (curl_url_get(u, CURLUPART_URL, &s, 0) == CURLUE_OK)
      out = strdup(s);
    curl_free(s);
  }
  curl_free(scheme);
  curl_url_cleanup(u);
  return out;
}

static int64_t or_default(int64_t v, int64_t def) {
  return v > 0 ? v : def;
}

int hjwks_new(hjwks **out, hloop *l, const hjwks_options *o) {
  if (o->url == NULL)
    return -EINVAL;
  hjwks *j = calloc(1, sizeof(*j));
  if (j == NULL)
    return -ENOMEM;
  j->loop = l;
  j->refresh_ms = or_default(o->refresh_ms, 600000);
  j->min_refetch_ms = or_default(o->min_refetch_ms, 30000);
  j->timeout_ms = or_default(o->timeout_ms, 10000);
  j->retry_ms = or_default(o->retry_ms, 1000);
  j->backoff_ms = j->retry_ms;
  j->curl_due = -1;
  j->waiters_tail = &j->waiters;
  int rv = -ENOMEM;
  if ((j->url = strdup(o->url)) == NULL ||
      (o->ca_file && (j->ca_file = strdup(o->ca_file)) == NULL))
    goto fail;
  if ((j->shown_url = shown(o->url)) == NULL) {
    hlog_error("--jwks-url: '%s' is not an http:// or https:// URL", o->url);
    rv = -EINVAL;
    goto fail;
  }
  struct curl_slist *hd = curl_slist_append(
      NULL, "Accept: application/jwk-set+json, application/json");
  if (hd == NULL)
    goto fail;
  j->headers = hd;
  if ((j->multi = curl_multi_init()) == NULL)
    goto fail;
  curl_multi_setopt(j->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(j->multi, CURLMOPT_SOCKETDATA, j);
  curl_multi_setopt(j->multi, CURLMOPT_TIMERFUNCTION, on_timer);
  curl_multi_setopt(j->multi, CURLMOPT_TIMERDATA, j);
  if (hloop_add_hook(l, hook_due, hook_run, j) < 0)
    goto fail;
  if (strncasecmp(j->shown_url, "http:", 5) == 0)
    hlog_warn("--jwks-url: %s is plain http: the keys can be altered on the "
              "way; use https",
              j->shown_url);
  hlog_info("--jwks-url: RS256/ES256 keys from %s%s%s", j->shown_url,
            j->ca_file ? ", CAs from " : "", j->ca_file ? j->ca_file : "");
  j->fetch_due = hclock_ms(); /* the first fetch, on the first turn */
  *out = j;
  return 0;
fail:
  hjwks_del(j);
  return rv;
}

void hjwks_del(hjwks *j) {
  if (j == NULL)
    return;
  if (j->loop)
    hloop_del_hook(j->loop, hook_run, j);
  if (j->easy != NULL) {
    curl_multi_remove_handle(j->multi, j->easy);
    curl_easy_cleanup(j->easy);
    j->easy = NULL;
  }
  if (j->multi != NULL)
    curl_multi_cleanup(j->multi);
  while (j->socks != NULL)
    sock_free(j, j->socks);
  /* Answered as closed, not from the set: the source is going away. */
  waiter *w = j->waiters;
  j->waiters = NULL;
  while (w != NULL) {
    waiter *next = w->next;
    w->done(w->done_ud, IMC_ERR_CLOSED, NULL, NULL, 0);
    free(w);
    w = next;
  }
  curl_slist_free_all(j->headers);
  imc_jwks_del(j->set);
  free(j->body);
  free(j->url);
  free(j->shown_url);
  free(j->ca_file);
  free(j);
}
