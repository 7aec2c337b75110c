/* HTTP exchanges on curl's multi interface: see client_http.h. */
#include "client_http.h"
#include "clock.h"
#include "client_run.h"

#include <curl/curl.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HHTTP_SOCKS 8                /* one exchange: happy eyeballs uses 2 */
#define HHTTP_MAX_ANSWER (64u << 20) /* a page is far smaller */

typedef struct hbuf {
  char *p;
  size_t len, cap;
  int err;
} hbuf;

typedef enum { IDLE, RUNNING, ENDED } hstate;

struct hhttp {
  CURLM *multi;
  CURL *easy; /* the running or ended exchange */
  struct curl_slist *hdrs;
  char *base, *ca_file;
  int insecure;
  struct {
    curl_socket_t fd;
    short events;
  } socks[HHTTP_SOCKS];
  size_t nsocks;
  int64_t due; /* curl's timer, monotonic ms; -1: none */
  hstate state;
  CURLcode result;
  hbuf head, body, ans;
  char err[CURL_ERROR_SIZE];
};

static void buf_add(hbuf *b, const void *p, size_t n) {
  if (b->err || n == 0)
    return;
  if (b->len + n > HHTTP_MAX_ANSWER) {
    b->err = 1;
    return;
  }
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n)
      cap *= 2;
    char *q = realloc(b->p, cap);
    if (q == NULL) {
      b->err = 1;
      return;
    }
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
}

static void buf_reset(hbuf *b) {
  b->len = 0;
  b->err = 0;
}

/* Headers of the answer, but those that describe its framing: the
   answer handed to the SDK carries its own Content-Length. */
static size_t on_header(char *p, size_t size, size_t n, void *ud) {
  hhttp *h = ud;
  size_t len = size * n;
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    buf_reset(&h->head); /* a new answer (after a 100 Continue, say) */
    buf_reset(&h->body);
  } else if (!(len <= 2 || strncasecmp(p, "content-length:", 15) == 0 ||
               strncasecmp(p, "transfer-encoding:", 18) == 0 ||
               strncasecmp(p, "connection:", 11) == 0)) {
    buf_add(&h->head, p, len);
  }
  return h->head.err ? 0 : len;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  hhttp *h = ud;
  buf_add(&h->body, p, size * n);
  return h->body.err ? 0 : size * n;
}

static int on_socket(CURL *e, curl_socket_t fd, int what, void *ud,
                     void *sockp) {
  hhttp *h = ud;
  (void)e;
  (void)sockp;
  size_t i = 0;
  while (i < h->nsocks && h->socks[i].fd != fd)
    i++;
  if (what == CURL_POLL_REMOVE) {
    if (i < h->nsocks)
      h->socks[i] = h->socks[--h->nsocks];
    return 0;
  }
  if (i == h->nsocks) {
    if (h->nsocks == HHTTP_SOCKS)
      return -1; /* curl fails the exchange */
    h->socks[h->nsocks++].fd = fd;
  }
  h->socks[i].events = (short)(((what & CURL_POLL_IN) ? POLLIN : 0) |
                               ((what & CURL_POLL_OUT) ? POLLOUT : 0));
  return 0;
}

static int on_timer(CURLM *m, long ms, void *ud) {
  hhttp *h = ud;
  (void)m;
  h->due = ms < 0 ? -1 : hclock_ms() + ms;
  return 0;
}

int hhttp_new(hhttp **out, const char *base, const char *ca_file,
              int insecure) {
  hhttp *h = calloc(1, sizeof(*h));
  if (h == NULL)
    return -1;
  h->due = -1;
  h->insecure = insecure;
  h->base = strdup(base);
  h->ca_file = ca_file ? strdup(ca_file) : NULL;
  h->multi = curl_multi_init();
  if (h->base == NULL || (ca_file && h->ca_file == NULL) || h->multi == NULL) {
    hhttp_del(h);
    return -1;
  }
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_timer);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
  *out = h;
  return 0;
}

static void end_exchange(hhttp *h) {
  if (h->easy) {
    curl_multi_remove_handle(h->multi, h->easy);
    curl_easy_cleanup(h->easy);
    h->easy = NULL;
  }
  curl_slist_free_all(h->hdrs);
  h->hdrs = NULL;
  h->state = IDLE;
}

void hhttp_del(hhttp *h) {
  if (h == NULL)
    return;
  end_exchange(h);
  if (h->multi)
    curl_multi_cleanup(h->multi);
  free(h->head.p);
  free(h->body.p);
  free(h->ans.p);
  free(h->base);
  free(h->ca_file);
  free(h);
}

/*
 * The request's target and headers: "GET <target> HTTP/1.1" and
 * "Name: value" lines up to the empty one. Host and Connection are
 * curl's to write. Returns the URL (malloc'd) or NULL.
 */
static char *read_request(hhttp *h, const uint8_t *req, size_t len) {
  const char *p = (const char *)req, *end = p + len;
  const char *eol = memchr(p, '\n', len);
  if (eol == NULL || len < 5 || memcmp(p, "GET /", 5) != 0)
    return NULL;
  const char *target = p + 4, *sp = memchr(target, ' ', (size_t)(eol - target));
  if (sp == NULL)
    return NULL;
  size_t bl = strlen(h->base), tl = (size_t)(sp - target);
  char *url = malloc(bl + tl + 1);
  if (url == NULL)
    return NULL;
  memcpy(url, h->base, bl);
  memcpy(url + bl, target, tl);
  url[bl + tl] = '\0';
  for (const char *line = eol + 1; line < end; line = eol + 1) {
    eol = memchr(line, '\n', (size_t)(end - line));
    if (eol == NULL)
      break;
    size_t ll = (size_t)(eol - line);
    if (ll > 0 && line[ll - 1] == '\r')
      ll--;
    if (ll == 0)
      break;
    if (ll < 5 || strncasecmp(line, "host:", 5) == 0 ||
        (ll >= 11 && strncasecmp(line, "connection:", 11) == 0))
      continue;
    char hdr[8192];
    if (ll >= sizeof(hdr))
      goto fail;
    memcpy(hdr, line, ll);
    hdr[ll] = '\0';
    struct curl_slist *l = curl_slist_append(h->hdrs, hdr);
    if (l == NULL)
      goto fail;
    h->hdrs = l;
  }
  return url;
fail:
  free(url);
  return NULL;
}

int hhttp_start(hhttp *h, const uint8_t *req, size_t len, int64_t timeout_ms) {
  if (h->state != IDLE)
    return -1;
  buf_reset(&h->head);
  buf_reset(&h->body);
  h->err[0] = '\0';
  char *url = read_request(h, req, len);
  CURL *e = url ? curl_easy_init() : NULL;
  if (e == NULL) {
    free(url);
    end_exchange(h);
    return -1;
  }
  h->easy = e;
  CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                          \
  if (rc == CURLE_OK)                                                          \
  rc = curl_easy_setopt(e, opt, val)
  SET(CURLOPT_URL, url);
  SET(CURLOPT_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
  SET(CURLOPT_PROXY, ""); /* like the WebSocket: straight to the server */
  SET(CURLOPT_NOSIGNAL, 1L);
  SET(CURLOPT_TIMEOUT_MS, (long)timeout_ms);
  SET(CURLOPT_HTTPHEADER, h->hdrs);
  SET(CURLOPT_HEADERFUNCTION, on_header);
  SET(CURLOPT_HEADERDATA, h);
  SET(CURLOPT_WRITEFUNCTION, on_body);
  SET(CURLOPT_WRITEDATA, h);
  SET(CURLOPT_ERRORBUFFER, h->err);
  if (h->insecure) {
    SET(CURLOPT_SSL_VERIFYPEER, 0L);
    SET(CURLOPT_SSL_VERIFYHOST, 0L);
  } else if (h->ca_file) {
    /* Only this CA, as on the WebSocket. */
    SET(CURLOPT_CAINFO, h->ca_file);
    SET(CURLOPT_CAPATH, (char *)NULL);
  }
#undef SET
  free(url); /* curl keeps its own copy */
  if (rc != CURLE_OK || curl_multi_add_handle(h->multi, e) != CURLM_OK) {
    end_exchange(h);
    return -1;
  }
  h->state = RUNNING;
  return 0;
}

int hhttp_busy(const hhttp *h) {
  return h->state != IDLE;
}

size_t hhttp_pollfds(const hhttp *h, struct pollfd *p, size_t cap) {
  size_t n = 0;
  for (size_t i = 0; i < h->nsocks && n < cap; i++)
    p[n++] = (struct pollfd){h->socks[i].fd, h->socks[i].events, 0};
  return n;
}

int64_t hhttp_timeout_ms(const hhttp *h) {
  if (h->due < 0)
    return -1;
  int64_t left = h->due - hclock_ms();
  return left > 0 ? left : 0;
}

void hhttp_after_poll(hhttp *h, const struct pollfd *p, size_t n) {
  int running;
  for (size_t i = 0; i < n; i++) {
    if (p[i].revents == 0)
      continue;
    int ev = 0;
    if (p[i].revents & (POLLIN | POLLHUP))
      ev |= CURL_CSELECT_IN;
    if (p[i].revents & POLLOUT)
      ev |= CURL_CSELECT_OUT;
    if (p[i].revents & POLLERR)
      ev |= CURL_CSELECT_ERR;
    curl_multi_socket_action(h->multi, p[i].fd, ev, &running);
  }
  if (h->due >= 0 && hclock_ms() >= h->due) {
    h->due = -1;
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  }
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(h->multi, &left)) != NULL)
    if (m->msg == CURLMSG_DONE && m->easy_handle == h->easy) {
      h->result = m->data.result;
      h->state = ENDED;
    }
}

/* The hclient_result of a failed exchange, with its reason. */
static int failure(hhttp *h, char *why, size_t whycap) {
  const char *detail = h->err[0] ? h->err : curl_easy_strerror(h->result);
  switch (h->result) {
  case CURLE_COULDNT_RESOLVE_HOST:
    snprintf(why, whycap, "%s", detail);
    return HCLIENT_RESOLVE;
  case CURLE_COULDNT_CONNECT:
    snprintf(why, whycap, "%s", detail);
    return HCLIENT_CONNECT;
  case CURLE_OPERATION_TIMEDOUT:
    snprintf(why, whycap, "no answer in time");
    return HCLIENT_TIMEOUT;
  case CURLE_PEER_FAILED_VERIFICATION:
    snprintf(why, whycap, "certificate verification failed: %s", detail);
    return HCLIENT_TLS;
  case CURLE_SSL_CONNECT_ERROR:
    snprintf(why, whycap, "TLS handshake failed: %s", detail);
    return HCLIENT_TLS;
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
    snprintf(why, whycap, "TLS: %s", detail);
    return HCLIENT_TLS;
  case CURLE_WRITE_ERROR:
    snprintf(why, whycap, "the answer is too large (or out of memory)");
    return HCLIENT_FAILED;
  default:
    snprintf(why, whycap, "%s", detail);
    return HCLIENT_FAILED;
  }
}

int hhttp_take(hhttp *h, const uint8_t **ans, size_t *ans_len, char *why,
               size_t whycap) {
  if (h->state != ENDED)
    return -1;
  int rv = 0;
  if (h->result != CURLE_OK) {
    rv = failure(h, why, whycap);
  } else {
    long status = 0;
    curl_easy_getinfo(h->easy, CURLINFO_RESPONSE_CODE, &status);
    char line[64];
    buf_reset(&h->ans);
    snprintf(line, sizeof(line), "HTTP/1.1 %03ld \r\n", status);
    buf_add(&h->ans, line, strlen(line));
    buf_add(&h->ans, h->head.p, h->head.len);
    snprintf(line, sizeof(line), "Content-Length: %zu\r\n\r\n", h->body.len);
    buf_add(&h->ans, line, strlen(line));
    buf_add(&h->ans, h->body.p, h->body.len);
    if (h->ans.err) {
      snprintf(why, whycap, "out of memory");
      rv = HCLIENT_FAILED;
    }
    *ans = (const uint8_t *)h->ans.p;
    *ans_len = h->ans.len;
  }
  end_exchange(h);
  return rv;
}
