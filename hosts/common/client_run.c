/* The poll(2) runner of an imc_client: see client_run.h. */
#include "client_run.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
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

int hclient_http(const char *host, const char *port, const uint8_t *req,
                 size_t len, int64_t timeout_ms, uint8_t **ans, size_t *ans_len,
                 char *why, size_t whycap) {
  int res;
  int64_t deadline = mono_ms() + timeout_ms;
  *ans = NULL;
  *ans_len = 0;
  int fd = open_conn(host, port, &res, why, whycap);
  if (fd < 0)
    return res;
  size_t off = 0, cap = 0;
  uint8_t *buf = NULL;
  int connected = 0;
  for (;;) {
    int64_t left = deadline - mono_ms();
    if (left <= 0) {
      snprintf(why, whycap, "no answer in time");
      res = HCLIENT_TIMEOUT;
      break;
    }
    struct pollfd p = {fd, (short)(off < len ? POLLOUT : POLLIN), 0};
    if (poll(&p, 1, (int)left) < 0) {
      if (errno == EINTR)
        continue;
      snprintf(why, whycap, "poll: %s", strerror(errno));
      res = HCLIENT_FAILED;
      break;
    }
    if (p.revents == 0)
      continue;
    if (!connected) {
      int err = conn_error(fd);
      if (err) {
        snprintf(why, whycap, "%s", strerror(err));
        res = HCLIENT_CONNECT;
        break;
      }
      connected = 1;
    }
    if (off < len) {
      ssize_t n = send(fd, req + off, len - off, MSG_NOSIGNAL);
      if (n < 0 && errno != EAGAIN && errno != EINTR) {
        snprintf(why, whycap, "%s", strerror(errno));
        res = HCLIENT_CONNECT;
        break;
      }
      if (n > 0)
        off += (size_t)n;
      continue;
    }
    if (*ans_len + 4096 > cap) {
      cap = cap ? cap * 2 : 16384;
      uint8_t *p2 = realloc(buf, cap);
      if (p2 == NULL) {
        snprintf(why, whycap, "out of memory");
        res = HCLIENT_FAILED;
        break;
      }
      buf = p2;
    }
    ssize_t n = recv(fd, buf + *ans_len, cap - *ans_len, 0);
    if (n > 0) {
      *ans_len += (size_t)n;
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
      continue;
    res = 0; /* EOF (or a reset after the answer) */
    break;
  }
  close(fd);
  if (res != 0) {
    free(buf);
    *ans_len = 0;
    return res;
  }
  *ans = buf;
  return 0;
}

/* One offline sync to its end. Returns 0 or an hclient_result. */
static int run_sync(imc_client *c, hclient_opts *o) {
  for (;;) {
    const uint8_t *req;
    size_t len;
    uint8_t *ans;
    size_t alen;
    if (imc_client_sync_request(c, &req, &len) != 0)
      return HCLIENT_FAILED;
    int rv = hclient_http(o->host, o->port, req, len, 10000, &ans, &alen,
                          o->error, sizeof(o->error));
    if (rv != 0)
      return rv;
    rv = imc_client_sync_response(c, ans, alen);
    free(ans);
    if (rv == 0)
      return 0;
    if (rv == IMC_ERR_AUTH)
      return HCLIENT_AUTH;
    if (rv < 0) {
      snprintf(o->error, sizeof(o->error), "offline sync: %s",
               imc_strerror(rv));
      return HCLIENT_FAILED;
    }
  }
}

int hclient_run(imc_client *c, hclient_opts *o) {
  int64_t deadline = o->timeout_ms >= 0 ? mono_ms() + o->timeout_ms : -1;
  int fd = -1, fd_connected = 0, ever_online = 0, sync_failed = 0;
  int res = HCLIENT_FAILED;
  o->error[0] = '\0';
  if (imc_client_get_state(c) == IMC_CLIENT_STOPPED && imc_client_start(c) != 0)
    return HCLIENT_FAILED;
  for (;;) {
    imc_client_state st = imc_client_get_state(c);
    if (st == IMC_CLIENT_ONLINE)
      ever_online = 1;
    else
      sync_failed = 0;
    if (st == IMC_CLIENT_ONLINE && imc_client_want_sync(c) && !sync_failed) {
      int rv = run_sync(c, o);
      if (rv == HCLIENT_AUTH) {
        res = rv;
        break;
      }
      sync_failed = rv != 0; /* try again after the next Welcome */
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
    if (fd >= 0 && (st == IMC_CLIENT_WAITING ||
                    (st == IMC_CLIENT_CONNECTING && fd_connected))) {
      close(fd);
      fd = -1;
      fd_connected = 0;
    }
    if (st == IMC_CLIENT_CONNECTING && fd < 0) {
      int why;
      fd = open_conn(o->host, o->port, &why, o->error, sizeof(o->error));
      if (fd < 0) {
        if (!ever_online) {
          res = why;
          break;
        }
        imc_client_disconnected(c, IMC_ERR_IO);
        continue;
      }
    }
    struct pollfd p[2];
    int n = 0, ws = -1, in = -1;
    if (fd >= 0) {
      short ev = POLLIN;
      if (!fd_connected || imc_client_want_write(c))
        ev = fd_connected ? (short)(POLLIN | POLLOUT) : POLLOUT;
      p[n] = (struct pollfd){fd, ev, 0};
      ws = n++;
    }
    if (o->in_fd >= 0) {
      p[n] = (struct pollfd){o->in_fd, POLLIN, 0};
      in = n++;
    }
    int64_t wait = imc_client_next_timeout_ms(c);
    if (deadline >= 0) {
      int64_t left = deadline - mono_ms();
      if (left <= 0) {
        res = HCLIENT_TIMEOUT;
        break;
      }
      if (wait < 0 || left < wait)
        wait = left;
    }
    if (wait > 60000 || wait < 0)
      wait = 60000;
    int rc = poll(p, (nfds_t)n, (int)wait);
    if (rc < 0 && errno != EINTR) {
      snprintf(o->error, sizeof(o->error), "poll: %s", strerror(errno));
      break;
    }
    if (rc > 0 && ws >= 0 && p[ws].revents) {
      if (!fd_connected) {
        int err = conn_error(fd);
        if (err) {
          snprintf(o->error, sizeof(o->error), "%s", strerror(err));
          close(fd);
          fd = -1;
          if (!ever_online) {
            res = HCLIENT_CONNECT;
            break;
          }
          imc_client_disconnected(c, IMC_ERR_IO);
          continue;
        }
        fd_connected = 1;
        imc_client_connected(c);
      } else {
        if (p[ws].revents & (POLLIN | POLLHUP | POLLERR)) {
          uint8_t buf[16384];
          ssize_t r = recv(fd, buf, sizeof(buf), 0);
          if (r > 0) {
            imc_client_recv(c, buf, (size_t)r);
          } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
            close(fd);
            fd = -1;
            fd_connected = 0;
            imc_client_disconnected(c, r == 0 ? IMC_ERR_CLOSED : IMC_ERR_IO);
            continue;
          }
        }
      }
    }
    /* Write what is waiting (the socket is usually writable). */
    while (fd >= 0 && fd_connected && imc_client_want_write(c)) {
      const uint8_t *d;
      size_t len = imc_client_output(c, &d);
      ssize_t w = send(fd, d, len, MSG_NOSIGNAL);
      if (w > 0) {
        imc_client_output_consume(c, (size_t)w);
        continue;
      }
      if (w < 0 && (errno == EAGAIN || errno == EINTR))
        break;
      close(fd);
      fd = -1;
      fd_connected = 0;
      imc_client_disconnected(c, IMC_ERR_IO);
    }
    if (rc > 0 && in >= 0 && p[in].revents && o->on_input)
      o->on_input(o->ud);
    if (imc_client_next_timeout_ms(c) == 0)
      imc_client_on_timeout(c);
  }
  if (fd >= 0) {
    /* Best effort: what the client still has to say (a close frame). */
    const uint8_t *d;
    size_t len = imc_client_output(c, &d);
    if (fd_connected && len)
      (void)!send(fd, d, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    close(fd);
  }
  return res;
}
