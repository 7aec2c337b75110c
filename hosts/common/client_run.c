/* The poll(2) runner of an imc_client: see client_run.h. */
#include "client_run.h"
#include "clock.h"
#include "client_http.h"
#include "client_tls.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SYNC_PAGE_MS 10000 /* one offline page, connect to last byte */
#define READS_PER_TURN 16  /* then the other fds and the timers get a turn */
#define MAX_CURL_FDS 8

/* "http://HOST:PORT" or "https://[V6]:PORT" for the pages. */
static void http_base(const hclient_opts *o, char *out, size_t cap) {
  int v6 = strchr(o->host, ':') != NULL;
  snprintf(out, cap, "%s://%s%s%s:%s", o->tls ? "https" : "http", v6 ? "[" : "",
           o->host, v6 ? "]" : "", o->port);
}

/*
 * Starts a non-blocking connect. Returns the fd (connect in progress or
 * done), or -1 with an hclient_result in *res and the reason in why.
 */
static int open_conn(const char *host, const char *port, int *res, char *why,
                     size_t whycap) {
  struct addrinfo hints, *ai = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int rc = getaddrinfo(host, port, &hints, &ai);
  if (rc != 0) {
    snprintf(why, whycap, "%s", gai_strerror(rc));
    *res = HCLIENT_RESOLVE;
    return -1;
  }
  int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                  ai->ai_protocol);
  if (fd < 0) {
    snprintf(why, whycap, "%s", strerror(errno));
    freeaddrinfo(ai);
    *res = HCLIENT_FAILED;
    return -1;
  }
  if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
    snprintf(why, whycap, "%s", strerror(errno));
    close(fd);
    freeaddrinfo(ai);
    *res = HCLIENT_CONNECT;
    return -1;
  }
  freeaddrinfo(ai);
  return fd;
}

/* 0 once the connect of fd succeeded, else the errno. */
static int conn_error(int fd) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
    return errno;
  return err;
}

/* ------------------------------------------------------------------ */
/* The WebSocket's connection: TCP, then TLS for wss://                 */
/* ------------------------------------------------------------------ */

typedef struct run {
  imc_client *c;
  hclient_opts *o;
  SSL_CTX *tls; /* wss://, else NULL */
  int fd;       /* the WebSocket's socket, or -1 */
  int tcp_up;   /* its connect completed */
  SSL *ssl;     /* its TLS, from then on */
  int ready;    /* imc_client_connected was called */
  /* What the next read and write wait for: POLLIN and POLLOUT, unless a
     TLS call asked for the other (a handshake, a key update). */
  short rd_need, wr_need;
  int ever_online;
} run;

static void ws_close(run *r) {
  if (r->ssl)
    SSL_free(r->ssl);
  if (r->fd >= 0)
    close(r->fd);
  r->ssl = NULL;
  r->fd = -1;
  r->tcp_up = r->ready = 0;
  r->rd_need = POLLIN;
  r->wr_need = POLLOUT;
}

/*
 * The connection broke or could not be made (the reason in o->error).
 * Before the first Welcome that ends the run with res; afterwards the
 * client waits and tries again. Returns 0 or res.
 */
static int ws_lost(run *r, int reason, int res) {
  ws_close(r);
  if (!r->ever_online)
    return res;
  imc_client_disconnected(r->c, reason);
  return 0;
}

/* The client may speak: the transport (TCP, and TLS if any) is up. */
static void ws_ready(run *r) {
  r->ready = 1;
  r->rd_need = POLLIN;
  r->wr_need = POLLOUT;
  imc_client_connected(r->c);
}

/* One step of the TLS handshake. Returns 0 or an hclient_result. */
static int ws_handshake(run *r) {
  int rv =
      htls_handshake(r->ssl, &r->rd_need, r->o->error, sizeof(r->o->error));
  if (rv == 1)
    ws_ready(r);
  return rv < 0 ? ws_lost(r, IMC_ERR_IO, HCLIENT_TLS) : 0;
}

/* The connect completed (or failed). Returns 0 or an hclient_result. */
static int ws_connected(run *r) {
  int err = conn_error(r->fd);
  if (err) {
    snprintf(r->o->error, sizeof(r->o->error), "%s", strerror(err));
    return ws_lost(r, IMC_ERR_IO, HCLIENT_CONNECT);
  }
  r->tcp_up = 1;
  if (r->tls == NULL) {
    ws_ready(r);
    return 0;
  }
  r->ssl =
      htls_new(r->tls, r->fd, r->o->host, r->o->error, sizeof(r->o->error));
  if (r->ssl == NULL)
    return ws_lost(r, IMC_ERR_IO, HCLIENT_TLS);
  return ws_handshake(r);
}

/* What to poll the WebSocket's fd for. */
static short ws_events(const run *r) {
  if (!r->tcp_up)
    return POLLOUT;
  if (!r->ready)
    return r->rd_need; /* the handshake's */
  return (short)(r->rd_need | (imc_client_want_write(r->c) ? r->wr_need : 0));
}

/* Reads what is there (a bounded number of times) into the client. */
static void ws_read(run *r) {
  for (int i = 0; i < READS_PER_TURN && r->fd >= 0; i++) {
    imc_client_state st = imc_client_get_state(r->c);
    if (st != IMC_CLIENT_HANDSHAKE && st != IMC_CLIENT_ONLINE)
      return; /* it closed or stopped meanwhile */
    uint8_t buf[16384];
    ssize_t n;
    short ev = POLLIN;
    if (r->ssl) {
      n = htls_recv(r->ssl, buf, sizeof(buf), &ev);
    } else {
      n = recv(r->fd, buf, sizeof(buf), 0);
      if (n < 0)
        n = errno == EAGAIN || errno == EINTR ? HTLS_AGAIN : HTLS_ERROR;
    }
    if (n > 0) {
      r->rd_need = POLLIN;
      imc_client_recv(r->c, buf, (size_t)n);
      continue;
    }
    if (n == HTLS_AGAIN) {
      r->rd_need = ev;
      return;
    }
    ws_lost(r, n == 0 ? IMC_ERR_CLOSED : IMC_ERR_IO, 0);
    return;
  }
}

/* Writes what the client has queued, until the socket is full. */
static void ws_write(run *r) {
  while (r->fd >= 0 && r->ready && imc_client_want_write(r->c)) {
    const uint8_t *d;
    size_t len = imc_client_output(r->c, &d);
    ssize_t w;
    short ev = POLLOUT;
    if (r->ssl) {
      w = htls_send(r->ssl, d, len, &ev);
    } else {
      w = send(r->fd, d, len, MSG_NOSIGNAL);
      if (w < 0)
        w = errno == EAGAIN || errno == EINTR ? HTLS_AGAIN : HTLS_ERROR;
    }
    if (w > 0) {
      r->wr_need = POLLOUT;
      imc_client_output_consume(r->c, (size_t)w);
    } else if (w == HTLS_AGAIN) {
      r->wr_need = ev;
      return;
    } else {
      ws_lost(r, IMC_ERR_IO, 0);
    }
  }
}

/* Best effort at the end: what the client still has to say (a close
   frame), then TLS's close_notify. */
static void ws_goodbye(run *r) {
  if (r->ready) {
    const uint8_t *d;
    size_t len = imc_client_output(r->c, &d);
    short ev;
    if (r->ssl) {
      if (len)
        (void)htls_send(r->ssl, d, len, &ev);
      (void)SSL_shutdown(r->ssl);
    } else if (len) {
      (void)!send(r->fd, d, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
  }
  ws_close(r);
}

/* ------------------------------------------------------------------ */
/* The offline sync's pages                                             */
/* ------------------------------------------------------------------ */

/*
 * Feeds a page that arrived to the client. Returns 0, or HCLIENT_AUTH
 * (the token was refused: the run ends). *failed is set when the sync
 * should wait for the next Welcome.
 */
static int take_page(run *r, hhttp *h, int *failed) {
  const uint8_t *ans;
  size_t len;
  int rv = hhttp_take(h, &ans, &len, r->o->error, sizeof(r->o->error));
  if (rv < 0)
    return 0; /* still running */
  if (rv > 0) {
    *failed = 1;
    return 0;
  }
  rv = imc_client_sync_response(r->c, ans, len);
  if (rv == IMC_ERR_AUTH)
    return HCLIENT_AUTH;
  if (rv < 0) {
    snprintf(r->o->error, sizeof(r->o->error), "offline sync: %s",
             imc_strerror(rv));
    *failed = 1;
  }
  return 0;
}

/* ------------------------------------------------------------------ */
/* The loop                                                             */
/* ------------------------------------------------------------------ */

int hclient_run(imc_client *c, hclient_opts *o) {
  int64_t deadline = o->timeout_ms >= 0 ? hclock_ms() + o->timeout_ms : -1;
  run r = {.c = c, .o = o, .fd = -1, .rd_need = POLLIN, .wr_need = POLLOUT};
  hhttp *http = NULL;
  int sync_failed = 0, res = HCLIENT_FAILED;
  char base[320];
  o->error[0] = '\0';
  if (o->tls) {
    r.tls = htls_ctx_new(o->ca_file, o->insecure, o->error, sizeof(o->error));
    if (r.tls == NULL)
      return HCLIENT_TLS;
  }
  http_base(o, base, sizeof(base));
  if (hhttp_new(&http, base, o->ca_file, o->insecure) != 0) {
    snprintf(o->error, sizeof(o->error), "out of memory");
    goto out;
  }
  if (imc_client_get_state(c) == IMC_CLIENT_STOPPED && imc_client_start(c) != 0)
    goto out;
  for (;;) {
    imc_client_state st = imc_client_get_state(c);
    if (st == IMC_CLIENT_ONLINE)
      r.ever_online = 1;
    else
      sync_failed = 0; /* the next Welcome tries again */
    if (st == IMC_CLIENT_ONLINE && imc_client_want_sync(c) && !sync_failed &&
        !hhttp_busy(http)) {
      const uint8_t *req;
      size_t len;
      if (imc_client_sync_request(c, &req, &len) != 0 ||
          hhttp_start(http, req, len, SYNC_PAGE_MS) != 0)
        sync_failed = 1;
    }
    if (o->done && o->done(o->ud)) {
      res = HCLIENT_DONE;
      break;
    }
    if (st == IMC_CLIENT_FAILED || st == IMC_CLIENT_STOPPED) {
      res = st == IMC_CLIENT_FAILED ? HCLIENT_AUTH : HCLIENT_FAILED;
      break;
    }
    /* The client ended the connection, or wants a new one. */
    if (r.fd >= 0 &&
        (st == IMC_CLIENT_WAITING || (st == IMC_CLIENT_CONNECTING && r.ready)))
      ws_close(&r);
    if (st == IMC_CLIENT_CONNECTING && r.fd < 0) {
      int why;
      r.fd = open_conn(o->host, o->port, &why, o->error, sizeof(o->error));
      if (r.fd < 0) {
        if (!r.ever_online) {
          res = why;
          break;
        }
        imc_client_disconnected(c, IMC_ERR_IO);
        continue;
      }
    }

    struct pollfd p[2 + MAX_CURL_FDS];
    nfds_t n = 0;
    int ws = -1, in = -1;
    if (r.fd >= 0) {
      p[n] = (struct pollfd){r.fd, ws_events(&r), 0};
      ws = (int)n++;
    }
    if (o->in_fd >= 0) {
      p[n] = (struct pollfd){o->in_fd, POLLIN, 0};
      in = (int)n++;
    }
    nfds_t curl0 = n;
    n += hhttp_pollfds(http, p + n, MAX_CURL_FDS);
    /* TLS may hold decrypted bytes that poll cannot see. */
    int pending = r.ssl && r.ready && SSL_pending(r.ssl) > 0;
    int64_t wait = imc_client_next_timeout_ms(c);
    int64_t hw = hhttp_timeout_ms(http);
    if (hw >= 0 && (wait < 0 || hw < wait))
      wait = hw;
    if (deadline >= 0) {
      int64_t left = deadline - hclock_ms();
      if (left <= 0) {
        res = HCLIENT_TIMEOUT;
        break;
      }
      if (wait < 0 || left < wait)
        wait = left;
    }
    if (wait > 60000 || wait < 0)
      wait = 60000;
    if (pending)
      wait = 0;
    int rc = poll(p, n, (int)wait);
    if (rc < 0 && errno != EINTR) {
      snprintf(o->error, sizeof(o->error), "poll: %s", strerror(errno));
      break;
    }
    if (rc < 0)
      continue;
    if (ws >= 0 && (p[ws].revents || pending)) {
      short ev = p[ws].revents;
      int end = 0;
      if (!r.tcp_up)
        end = ws_connected(&r);
      else if (!r.ready)
        end = ws_handshake(&r);
      else if (pending || (ev & (r.rd_need | POLLHUP | POLLERR)))
        ws_read(&r);
      if (end) {
        res = end;
        break;
      }
    }
    ws_write(&r);
    if (in >= 0 && p[in].revents && o->on_input)
      o->on_input(o->ud);
    hhttp_after_poll(http, p + curl0, n - curl0);
    int end = take_page(&r, http, &sync_failed);
    if (end) {
      res = end;
      break;
    }
    if (imc_client_next_timeout_ms(c) == 0)
      imc_client_on_timeout(c);
  }
out:
  ws_goodbye(&r);
  hhttp_del(http);
  if (r.tls)
    SSL_CTX_free(r.tls);
  return res;
}

int hclient_http(hclient_opts *o, const uint8_t *req, size_t len,
                 int64_t timeout_ms, uint8_t **ans, size_t *ans_len) {
  char base[320];
  hhttp *h;
  *ans = NULL;
  *ans_len = 0;
  o->error[0] = '\0';
  http_base(o, base, sizeof(base));
  if (hhttp_new(&h, base, o->ca_file, o->insecure) != 0) {
    snprintf(o->error, sizeof(o->error), "out of memory");
    return HCLIENT_FAILED;
  }
  if (hhttp_start(h, req, len, timeout_ms) != 0) {
    hhttp_del(h);
    snprintf(o->error, sizeof(o->error), "cannot start the request");
    return HCLIENT_FAILED;
  }
  const uint8_t *a;
  size_t al;
  int rv;
  while ((rv = hhttp_take(h, &a, &al, o->error, sizeof(o->error))) < 0) {
    struct pollfd p[MAX_CURL_FDS];
    size_t n = hhttp_pollfds(h, p, MAX_CURL_FDS);
    int64_t wait = hhttp_timeout_ms(h);
    if (wait < 0 || wait > 1000)
      wait = 1000; /* curl's own timeout ends the exchange */
    if (poll(p, (nfds_t)n, (int)wait) < 0 && errno != EINTR) {
      snprintf(o->error, sizeof(o->error), "poll: %s", strerror(errno));
      hhttp_del(h);
      return HCLIENT_FAILED;
    }
    hhttp_after_poll(h, p, n);
  }
  if (rv == 0) {
    *ans = malloc(al ? al : 1);
    if (*ans == NULL) {
      snprintf(o->error, sizeof(o->error), "out of memory");
      rv = HCLIENT_FAILED;
    } else {
      memcpy(*ans, a, al);
      *ans_len = al;
    }
  }
  hhttp_del(h);
  return rv;
}
