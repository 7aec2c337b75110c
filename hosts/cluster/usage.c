/* --help of im-gateway and im-service. */
#include "usage.h"

#include "flags.h"

#include <stdio.h>

/* Both hosts' mutual TLS flags. */
#define GRPC_TLS_TEXT                                                          \
  "  --grpc-tls-cert FILE, --grpc-tls-key FILE, --grpc-tls-ca FILE\n"          \
  "                          mutual TLS on every gRPC link (all three or\n"    \
  "                          none): this process's PEM certificate chain\n"    \
  "                          and key, presented both ways, and the PEM CA\n"   \
  "                          bundle that signs the cluster's certificates;\n"  \
  "                          --grpc-listen then takes only clients whose\n"    \
  "                          certificate the CA signed, and a server must\n"   \
  "                          be named (IP or DNS SAN) by the address\n"        \
  "                          dialled; --tls-min-version applies\n"

/* Both hosts' Kafka flags. */
#define KAFKA_TEXT                                                             \
  "  --kafka HOST:PORT[,..]  Kafka bootstrap brokers (default " DEFAULT_KAFKA  \
  ")\n"                                                                        \
  "  --kafka-session-timeout SECONDS\n"                                        \
  "                          how long the Kafka group waits for a consumer\n"  \
  "                          that stopped without leaving (default 45; the\n"  \
  "                          broker's group.min.session.timeout.ms bounds\n"   \
  "                          it)\n"

static const char gateway_text[] =
    "Usage: im-gateway [OPTIONS]\n"
    "\n"
    "The gateway of an imchat cluster: holds the clients' WebSocket\n"
    "connections and serves the HTTP API on --listen, registers the\n"
    "connections in etcd, calls im-service (imchat.v1.Router) for every\n"
    "send, serves imchat.v1.Gateway on --grpc-listen for deliveries, and\n"
    "fans group messages out from Kafka's group_msg to its members.\n"
    "\n"
    "Options (each also a key of the [im-gateway] section of --config):\n"
    "  --config FILE           INI file; keys are the long option names;\n"
    "                          flags win. One file may hold [imchatd],\n"
    "                          [im-gateway] and [im-service]\n"
    "  --listen HOST:PORT      WebSocket and HTTP (default " DEFAULT_LISTEN
    ")\n"
    "  --tls-cert FILE, --tls-key FILE, --tls-min-version 1.3|1.2\n"
    "                          TLS on --listen, as in imchatd; SIGHUP\n"
    "                          reads the two files again\n"
    "  --grpc-listen HOST:PORT gRPC for im-service "
    "(default " DEFAULT_GATEWAY_GRPC ")\n" GRPC_TLS_TEXT
    "  --grpc-advertise HOST:PORT\n"
    "                          where im-service reaches this gateway, kept\n"
    "                          in etcd (default: the bound --grpc-listen;\n"
    "                          required when that is a wildcard address)\n"
    "  --router HOST:PORT[,..] im-service processes, used in turn (default\n"
    "                          " DEFAULT_SERVICE_GRPC ")\n"
    "  --etcd URL[,URL..]      etcd members (default " DEFAULT_ETCD
    ")\n" KAFKA_TEXT
    "  --mysql HOST:PORT/DB    MariaDB/MySQL (default " DEFAULT_MYSQL ");\n"
    "                          user and password from IMCHAT_MYSQL_USER and\n"
    "                          IMCHAT_MYSQL_PASSWORD, else the file's keys\n"
    "                          mysql-user and mysql-password\n"
    "  --node-id ID            this gateway's name in the registry (default:\n"
    "                          the host name); unique in the cluster\n";

/* The rest (a string literal of over 4095 bytes is not portable C). */
static const char gateway_text2[] =
    "  --jwt-secret-file F, --jwt-secret S, --jwt-public-key PEM,\n"
    "  --jwks-url URL, --jwks-ca-file F, --jwt-issuer ISS, --jwt-audience AUD\n"
    "                          token verification as in imchatd; one of the\n"
    "                          first four is required, the same on every\n"
    "                          gateway\n"
    "  --admin-token T         bearer token of the admin HTTP API\n"
    "  --lease-ttl SECONDS     TTL of the node's etcd lease (default 90),\n"
    "                          renewed every --heartbeat; a gateway that\n"
    "                          dies leaves its users registered this long\n"
    "  --max-body, --ack-timeout, --heartbeat, --idle-timeout,\n"
    "  --handshake-timeout, --rate-limit, --rate-burst, --user-rate-limit,\n"
    "  --user-rate-burst, --max-devices,\n"
    "  --max-sends-per-conn, --max-sends, --allowed-origin,\n"
    "  --max-connections, --max-connections-per-ip, --deflate\n"
    "                          as in imchatd (see imchatd --help)\n"
    "  --log-level LEVEL       error, warn, info or debug (default info)\n"
    "  -h, --help, -V, --version\n"
    "\n"
    "GET /healthz answers while the process runs; GET /readyz is 200 only\n"
    "while etcd, Kafka and MariaDB answer and a router is connected;\n"
    "GET /metrics is Prometheus text.\n"
    "Exit status: 0 ok, 1 runtime failure, 2 bad options or files.\n"
    "Signals: SIGINT/SIGTERM drain (unacknowledged pushes go to the offline\n"
    "path, clients are closed with 1001), a second one stops at once;\n"
    "SIGHUP reloads --tls-cert, --tls-key and the --grpc-tls-* files.\n";

static const char service_text[] =
    "Usage: im-service [OPTIONS]\n"
    "\n"
    "The routing service of an imchat cluster: the router (imchat.v1.Router\n"
    "on --grpc-listen; sequence numbers and dedup in Redis, the registry\n"
    "in etcd, group messages and the offline queue in Kafka, history and\n"
    "inboxes in MariaDB) and the offline worker. Several may run at once.\n"
    "\n"
    "Options (each also a key of the [im-service] section of --config):\n"
    "  --config FILE           INI file (see im-gateway --help)\n"
    "  --grpc-listen HOST:PORT gRPC for the gateways "
    "(default " DEFAULT_SERVICE_GRPC ")\n"
    "  --http-listen HOST:PORT /healthz, /readyz and /metrics (default\n"
    "                          " DEFAULT_SERVICE_HTTP ")\n"
    "  --tls-cert FILE, --tls-key FILE, --tls-min-version 1.3|1.2\n"
    "                          TLS on --http-listen, as on im-gateway's\n"
    "                          --listen\n" GRPC_TLS_TEXT
    "  --etcd URL[,URL..]      etcd members (default " DEFAULT_ETCD
    ")\n" KAFKA_TEXT "  --redis HOST:PORT       Redis (default " DEFAULT_REDIS
    ")\n"
    "  --mysql HOST:PORT/DB    MariaDB/MySQL (default " DEFAULT_MYSQL ");\n"
    "                          credentials as for im-gateway\n"
    "  --migrate-only          apply the database's schema migrations and\n"
    "                          exit (else they are applied at start)\n"
    "  --node-id ID            this process's name in logs (default: the\n"
    "                          host name)\n"
    "  --max-body BYTES        largest message body (default 65536)\n"
    "  --filter-file FILE, --filter-action ACTION\n"
    "                          sensitive words, as in imchatd\n"
    "  --retention-days DAYS   keep stored messages this long (default 7)\n"
    "  --log-level LEVEL       error, warn, info or debug (default info)\n"
    "  -h, --help, -V, --version\n"
    "\n"
    "GET /readyz is 200 only while etcd, Kafka, MariaDB and Redis answer.\n"
    "Exit status: 0 ok, 1 runtime failure, 2 bad options or files.\n"
    "Signals: SIGINT/SIGTERM stop taking calls and let the worker finish\n"
    "its batch; a second one stops at once; SIGHUP reloads --tls-cert,\n"
    "--tls-key and the --grpc-tls-* files (open connections stay).\n";

void hcluster_usage(imchatd_role role) {
  if (role == IMCHATD_ROLE_GATEWAY) {
    fputs(gateway_text, stdout);
    fputs(gateway_text2, stdout);
  } else {
    fputs(service_text, stdout);
  }
}
