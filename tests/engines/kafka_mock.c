/*
 * kafka_mock: runs librdkafka's mock Kafka cluster (3 brokers on
 * loopback) for the engines' tests, prints its bootstrap servers on the
 * first line of stdout, and runs until SIGTERM or SIGINT. Any Kafka client in
 * any process can use it.
 *
 *   kafka_mock [BROKERS]
 */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

int main(int argc, char **argv) {
  int brokers = argc > 1 ? atoi(argv[1]) : 3;
  if (brokers < 1 || brokers > 9) {
    fprintf(stderr, "usage: kafka_mock [BROKERS 1..9]\n");
    return 2;
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
  printf("%s\n", rd_kafka_mock_cluster_bootstraps(mc));
  fflush(stdout);

  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  while (!stop)
    pause();
  rd_kafka_mock_cluster_destroy(mc);
  rd_kafka_destroy(rk);
  return 0;
}
