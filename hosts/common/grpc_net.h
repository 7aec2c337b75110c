/*
 * libimchat's I/O-agnostic gRPC server and client on the hosts' epoll
 * loop (loop.h): sockets, reads, writes, flushes and deadlines.
 *
 * hgrpc_server listens on one address and serves every connection it
 * accepts with one imc_grpc_server. hgrpc_peer keeps one connection to
 * another process, with an imc_grpc_client on it, and replaces it when
 * it is lost.
 *
 * Both flush their output once per loop turn from a loop hook, after the
 * turn's events: answers and calls made from other hooks later in the
 * same turn are noticed (the pending counts moved) and leave before the
 * loop sleeps. Writes use MSG_NOSIGNAL; a socket whose write came back
 * short is watched for EPOLLOUT until it drains.
 *
 * With an hstls of hstls_new_mutual (the _tls constructors) both speak
 * only TLS: the server requires a client certificate the CA signed and
 * closes a connection whose handshake fails (logged at warn with the
 * reason) or is not done within 10 s; the peer presents the certificate
 * and checks the server's against the CA and the host it dials. The
 * handshake runs on the loop, like everything else.
 *
 * Single-threaded, like the loop. Delete these objects before the loop.
 * Functions returning int return 0 or a negative errno value.
 */
#ifndef IMC_HOST_GRPC_NET_H
#define IMC_HOST_GRPC_NET_H

#include "loop.h"
#include "tls.h"

#include <imchat/grpc_client.h>
#include <imchat/grpc_server.h>

#include <stddef.h>

typedef struct hgrpc_server hgrpc_server;
typedef struct hgrpc_peer hgrpc_peer;

/*
 * A server for opt (its methods added already; the transport and the log,
 * hlog's, are set here, so opt is modified; it may be deleted afterwards)
 * listening on listen_addr: "host:port" or "[v6]:port" as hloop_split_addr()
 * reads it (host empty or "*": every IPv4 address; port 0: an ephemeral port).
 * The bound "ip:port" is written into bound (boundcap bytes; bound may
 * be NULL with boundcap 0). Accepted sockets are non-blocking with
 * TCP_NODELAY. Returns 0, -EINVAL (a NULL argument, a bad address: the
 * reason is logged), -EADDRNOTAVAIL (a host not resolved), -EADDRINUSE or
 * another error of bind/listen, or -ENOMEM.
 */
int hgrpc_server_new(hgrpc_server **out, hloop *l, imc_grpc_server_options *opt,
                     const char *listen_addr, char *bound, size_t boundcap);

/*
 * The same, serving mutual TLS with tls (hstls_new_mutual; NULL:
 * plaintext): each connection's handshake takes tls's contexts of the
 * moment, so after hstls_reload new connections get the new certificate
 * and open ones stay. tls is borrowed: delete it after the server.
 */
int hgrpc_server_new_tls(hgrpc_server **out, hloop *l,
                         imc_grpc_server_options *opt, const char *listen_addr,
                         hstls *tls, char *bound, size_t boundcap);

/* The library's server (for imc_grpc_server_pending() and the handlers'
 * user data); valid until hgrpc_server_del. */
imc_grpc_server *hgrpc_server_get(hgrpc_server *s);

/*
 * Closes the listening socket (a graceful stop begins): connections open
 * stay served, and the calls they hold are still answered.
 */
void hgrpc_server_stop_accepting(hgrpc_server *s);

/*
 * A graceful stop: stops accepting and sends GOAWAY on every connection
 * (imc_grpc_server_shutdown), so clients take new calls elsewhere; the
 * calls taken are still answered, then the connections close.
 */
void hgrpc_server_shutdown(hgrpc_server *s);

/* Calls handed to handlers and not yet answered. */
size_t hgrpc_server_pending(const hgrpc_server *s);

/*
 * Closes the listener and every connection (their output not yet written
 * is dropped) and frees the server. As for imc_grpc_server_del(), every
 * call handed to a handler must have been answered first
 * (hgrpc_server_pending() is 0). Not from a handler.
 */
void hgrpc_server_del(hgrpc_server *s);

/*
 * The owner's view of a peer's client: c is a connected client to make
 * calls on, or NULL when the one given before stopped taking calls (the
 * connection was lost, or the server sent GOAWAY). After NULL, the owner
 * must not start calls on the old client: the peer deletes it once its
 * calls in flight are done. Neither this callback nor a call's completion
 * may delete the peer.
 */
typedef void (*hgrpc_client_fn)(void *ud, imc_grpc_client *c);

/*
 * A peer keeping one connection to addr: "ip:port", "[v6]:port" or
 * "name:port". A name is looked up before each round of connects without
 * blocking the loop (resolve.h), and its addresses are tried in order
 * until one connects; a lookup that fails is a failed attempt. The first
 * connect starts
 * at the next loop turn; on_client(ud, c) runs once it is connected
 * (the client's :authority is addr). After a loss or a GOAWAY the peer
 * calls on_client(ud, NULL), lets the old client finish its calls in
 * flight where the connection still allows, and connects again after a
 * backoff of 100 ms, doubling up to 5 s, reset by a successful connect.
 * A connect that takes more than 5 s fails. Logs a line when it connects
 * and when it loses the connection, and one line per outage for failed
 * attempts. Returns 0, -EINVAL (a NULL argument, a bad address or port
 * 0) or -ENOMEM.
 */
int hgrpc_peer_new(hgrpc_peer **out, hloop *l, const char *addr,
                   hgrpc_client_fn on_client, void *ud);

/*
 * The same over mutual TLS with tls (hstls_new_mutual; NULL: plaintext):
 * the server's certificate must name addr's host (an IP SAN for an
 * address, a DNS SAN, also sent as SNI, for a name). on_client runs once
 * the server's first bytes have come through TLS: in TLS 1.3 a server
 * refuses a client's certificate only after the client's handshake has
 * ended. A
 * failed handshake is a failed connect (logged once per outage, with the
 * reason); the handshake and those first bytes must come within 10 s.
 * tls is borrowed: delete it after the peer.
 */
int hgrpc_peer_new_tls(hgrpc_peer **out, hloop *l, const char *addr, hstls *tls,
                       hgrpc_client_fn on_client, void *ud);

/* The address given to hgrpc_peer_new (owned by the peer). */
const char *hgrpc_peer_addr(const hgrpc_peer *p);

/* Connection attempts made so far (for metrics, and to see the backoff). */
unsigned long hgrpc_peer_attempts(const hgrpc_peer *p);

/*
 * Calls on_client(ud, NULL) if a client was given, completes every call
 * still in flight with CANCELLED (imc_grpc_client_del), closes the
 * sockets and frees the peer. Not from on_client or a completion.
 */
void hgrpc_peer_del(hgrpc_peer *p);

#endif
