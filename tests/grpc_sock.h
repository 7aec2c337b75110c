/* Sockets for the gRPC interoperability hosts (grpc_echo_server.c,
 * grpc_echo_client.c): non-blocking loopback TCP and a transport vtable
 * that writes with writev. */
#ifndef IMC_GRPC_SOCK_H
#define IMC_GRPC_SOCK_H

#include <imchat/backend.h>

/* A listening socket on 127.0.0.1:port (0: any); *port gets the port.
 * Returns the fd or -1. */
int gsock_listen(int *port);
/* A connected socket to 127.0.0.1:port, or -1. */
int gsock_connect(int port);
/* Makes fd non-blocking. Returns 0 or -1. */
int gsock_nonblock(int fd);

/* A connection of the transport: conn_ud points at one. */
typedef struct gsock {
  int fd;      /* -1 once closed */
  int blocked; /* the last write met EAGAIN */
} gsock;

/* send: writev to the gsock's fd; close: closes it. */
extern const imc_transport_vtbl gsock_transport;

#endif
