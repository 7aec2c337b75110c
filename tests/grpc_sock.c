#include "grpc_sock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int gsock_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static struct sockaddr_in loopback(int port) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

int gsock_listen(int *port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = loopback(*port);
  socklen_t len = sizeof(a);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
      listen(fd, 64) < 0 || getsockname(fd, (struct sockaddr *)&a, &len) < 0 ||
      gsock_nonblock(fd) < 0) {
    if (fd >= 0)
      close(fd);
    return -1;
  }
  *port = ntohs(a.sin_port);
  return fd;
}

int gsock_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = loopback(port);
  int one = 1;
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
      gsock_nonblock(fd) < 0) {
    if (fd >= 0)
      close(fd);
    return -1;
  }
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

static ssize_t gs_send(void *ud, void *conn_ud, const struct iovec *iov,
                       int n) {
  gsock *g = conn_ud;
  (void)ud;
  if (g->fd < 0)
    return IMC_ERR_CLOSED;
  ssize_t w = writev(g->fd, iov, n);
  if (w >= 0) {
    g->blocked = 0;
    return w;
  }
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
    g->blocked = 1;
    return IMC_ERR_WOULDBLOCK;
  }
  return IMC_ERR_IO;
}

static void gs_close(void *ud, void *conn_ud) {
  gsock *g = conn_ud;
  (void)ud;
  if (g->fd >= 0)
    close(g->fd);
  g->fd = -1;
}

const imc_transport_vtbl gsock_transport = {sizeof(imc_transport_vtbl), gs_send,
                                            gs_close, NULL};
