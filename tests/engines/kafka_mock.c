/*
 * kafka_mock: runs librdkafka's mock Kafka cluster (3 brokers on
 * loopback) for the engines' tests, prints its control address and its
 * bootstrap servers on the first lines of stdout, and runs until SIGTERM
 * or SIGINT. Any Kafka client in any process can use it.
 *
 *   kafka_mock [BROKERS]
 *
 * stdout:
 *   control 127.0.0.1:PORT
 *   127.0.0.1:P1,127.0.0.1:P2,...
 *
 * The mock cluster speaks no CreateTopics, and topics it creates on its
 * own get 4 partitions; the control port creates topics with the count a
 * test needs, and takes brokers down and up (rd_kafka_mock_broker_set_down:
 * the broker drops its connections and refuses new ones; its partitions
 * keep it as their leader, so their records wait until it is up again).
 * One command per connection, one line each way:
 *   topic NAME PARTITIONS   ->  "ok" or "error REASON"
 *   broker ID down|up       ->  "ok" or "error REASON" (ID: 1..BROKERS)
 */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

/* Reads one line of a command and answers it. */
static void serve_control(int fd, rd_kafka_mock_cluster_t *mc, int brokers) {
  char line[512];
  size_t n = 0;
  while (n < sizeof(line) - 1) {
    ssize_t r = read(fd, line + n, 1);
    if (r <= 0 || line[n] == '\n')
      break;
    n++;
  }
  line[n] = '\0';
  char name[256];
  int partitions, id;
  const char *answer = "error bad command\n";
  char buf[300];
  rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
  int known = 1;
  if (sscanf(line, "topic %255s %d", name, &partitions) == 2 &&
      partitions > 0) {
    err = rd_kafka_mock_topic_create(mc, name, partitions,
                                     brokers < 3 ? brokers : 3);
  } else if (sscanf(line, "broker %d %255s", &id, name) == 2 && id >= 1 &&
             id <= brokers && strcmp(name, "down") == 0) {
    err = rd_kafka_mock_broker_set_down(mc, id);
  } else if (sscanf(line, "broker %d %255s", &id, name) == 2 && id >= 1 &&
             id <= brokers && strcmp(name, "up") == 0) {
    err = rd_kafka_mock_broker_set_up(mc, id);
  } else {
    known = 0;
  }
  if (known && err) {
    snprintf(buf, sizeof(buf), "error %s\n", rd_kafka_err2name(err));
    answer = buf;
  } else if (known) {
    answer = "ok\n";
  }
  size_t len = strlen(answer);
  if (write(fd, answer, len) != (ssize_t)len)
    fprintf(stderr, "kafka_mock: short write on the control connection\n");
}

int main(int argc, char **argv) {
  int brokers = argc > 1 ? atoi(argv[1]) : 3;
  if (brokers < 1 || brokers > 9) {
    fprintf(stderr, "usage: kafka_mock [BROKERS 1..9]\n");
    return 2;
  }
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof(a);
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
      listen(lfd, 16) < 0 ||
      getsockname(lfd, (struct sockaddr *)&a, &alen) < 0) {
    fprintf(stderr, "kafka_mock: control socket: %s\n", strerror(errno));
    return 1;
  }
  char err[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
  if (rk == NULL) {
    fprintf(stderr, "kafka_mock: %s\n", err);
    return 1;
  }
  rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers);
  if (mc == NULL) {
    fprintf(stderr, "kafka_mock: cannot create the mock cluster\n");
    rd_kafka_destroy(rk);
    return 1;
  }
  printf("control 127.0.0.1:%u\n%s\n", (unsigned)ntohs(a.sin_port),
         rd_kafka_mock_cluster_bootstraps(mc));
  fflush(stdout);

  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  while (!stop) {
    /* A bounded wait, so a signal between the check and the wait still
     * ends the loop. */
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    if (poll(&p, 1, 200) <= 0)
      continue;
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
      continue;
    serve_control(fd, mc, brokers);
    close(fd);
  }
  close(lfd);
  rd_kafka_mock_cluster_destroy(mc);
  rd_kafka_destroy(rk);
  return 0;
}
