/*
 * The Kafka engine's internals (see <imchat/engines/kafka.h>).
 *
 * Files:
 *   options.c   imc_kafka_options: the setters, the checks of topic names
 *               and group ids, and the librdkafka configurations built
 *               from the options (kafka_conf_new)
 *   kafka.c     the object: new/del, the bridge to the host's loop (one
 *               eventfd every librdkafka queue writes to, a 1 s tick, a
 *               0 ms kick), the service pass, logs, health, the vtable
 *   producer.c  publish, delivery reports, the producer's replacement
 *               after a fatal error
 *   consumer.c  one consumer per group: creation, subscription,
 *               rebalances, the records it holds (pausing a topic that
 *               holds too many), polls
 *   commit.c    commits: the checks, librdkafka's answer, the deadline
 *
 * Threads: librdkafka's threads only enqueue onto queues whose io event
 * writes to the eventfd; every callback below runs from rd_kafka_poll()
 * or rd_kafka_consumer_poll(), called on the loop thread by the service
 * pass, so nothing here is shared with another thread.
 */
#ifndef IMC_ENGINES_KAFKA_INT_H
#define IMC_ENGINES_KAFKA_INT_H

#include <imchat/engines/kafka.h>

#include <librdkafka/rdkafka.h>

#include <stddef.h>
#include <stdint.h>

/* Kafka's limit on topic names and group ids. */
#define KAFKA_NAME_MAX 249
#define KAFKA_PREFIX_MAX 200
/* The tick: consumers are polled at least this often (librdkafka wants a
 * poll within max.poll.interval.ms, else the consumer leaves its group),
 * and commit deadlines and the producer's replacement are checked. */
#define KAFKA_TICK_MS 1000
/* A topic whose consumer holds this many unpolled records is paused
 * until polls take it below a quarter of that. */
#define KAFKA_HOLD_MAX 4096
/* Records one service pass takes from a consumer before it lets the
 * loop run (it goes on at the next turn). */
#define KAFKA_PUMP_MAX 4096
/* How long imc_kafka_del() waits for the consumers to leave their groups. */
#define KAFKA_CLOSE_WAIT_MS 5000

typedef struct kafka_kv {
  char *name;
  char *value;
} kafka_kv;

struct imc_kafka_options {
  char *brokers;
  char *prefix;
  uint32_t timeout_ms;
  uint32_t session_ms;
  kafka_kv *kv;
  size_t n_kv;
  imc_log_cb log;
  void *log_ud;
};

/*
 * A pending publish or commit. Completed (done called, done NULL) either
 * by librdkafka's answer or early, by a deadline or the close; an op
 * completed early stays linked until librdkafka's answer or the handle's
 * destruction frees it.
 */
typedef struct kafka_op {
  struct kafka_op *prev, *next;
  imc_done_cb done; /* NULL once completed */
  void *done_ud;
  int64_t deadline_ms;   /* commits */
  struct kafka_sub *sub; /* commits: the topic */
  int32_t partition;     /* commits */
} kafka_op;

/* A list of ops with a sentinel head. */
typedef struct kafka_ops {
  kafka_op head;
} kafka_ops;

/* One partition of a topic, as this consumer sees it. */
typedef struct kafka_part {
  uint8_t assigned;
  int64_t next; /* one past the highest offset delivered here, 0: none */
} kafka_part;

/* One topic of a consumer. */
typedef struct kafka_sub {
  struct kafka_cons *c;
  char *topic; /* as the caller names it */
  char *full;  /* with the prefix */
  kafka_part *parts;
  int32_t n_parts;
  /* Records fetched and not yet delivered, oldest first (a ring). */
  rd_kafka_message_t **ring;
  size_t cap, head, count;
  uint8_t paused;
  /* The outstanding poll, if poll_done is set. */
  imc_bus_batch_cb poll_done;
  void *poll_ud;
  size_t poll_max;
} kafka_sub;

typedef struct kafka_cons {
  imc_kafka *k;
  char *group; /* as the caller names it */
  rd_kafka_t *rk;
  rd_kafka_queue_t *q; /* the consumer queue (the main one is forwarded) */
  kafka_sub **subs;
  size_t n_subs;
  kafka_ops commits;
  uint8_t fatal; /* it cannot go on: health says so */
  uint8_t gone;  /* closing: it could not start leaving its group */
} kafka_cons;

struct imc_kafka {
  imc_loop loop;
  imc_kafka_options o;
  void *user_data;
  int efd;
  void *watch;
  void *tick;
  void *kick; /* armed 0 ms timer, or NULL */
  rd_kafka_t *prod;
  rd_kafka_queue_t *prod_q;
  kafka_ops pubs;
  uint8_t prod_fatal;
  uint8_t closing;
  kafka_cons **cons;
  size_t n_cons;
  /* Scratch for a delivery (never two at once). */
  imc_bus_record *recs;
  rd_kafka_message_t **msgs;
  size_t scratch_cap;
};

/* options.c */
/* 1 if name with the prefix is a valid topic name (group id). */
int kafka_topic_valid(const imc_kafka *k, const char *name);
int kafka_group_valid(const imc_kafka *k, const char *name);
/* prefix + name, malloc'd, or NULL. */
char *kafka_prefixed(const imc_kafka *k, const char *name);
int kafka_opts_copy(imc_kafka_options *dst, const imc_kafka_options *src);
void kafka_opts_clear(imc_kafka_options *o);
/* The configuration of a new producer (group NULL) or of the consumer of
 * group; NULL (and the reason logged) if librdkafka refuses it. */
rd_kafka_conf_t *kafka_conf_new(imc_kafka *k, const char *group);

/* kafka.c */
int64_t kafka_now_ms(void);
void kafka_log(imc_kafka *k, imc_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* librdkafka's log lines, from the loop thread (log.queue=true). */
void kafka_on_log(const rd_kafka_t *rk, int level, const char *fac,
                  const char *buf);
/* Lets librdkafka's queue q wake the loop: its io event writes to the
 * eventfd. */
void kafka_wake_on(imc_kafka *k, rd_kafka_queue_t *q);
/* Runs the service pass on the next loop turn. */
void kafka_kick(imc_kafka *k);
/* An IMC_ERR_* for a librdkafka error (0 for none). */
int kafka_err(rd_kafka_resp_err_t err);

/* Op lists. */
void kafka_ops_init(kafka_ops *l);
void kafka_ops_link(kafka_ops *l, kafka_op *op);
void kafka_ops_unlink(kafka_op *op);
/* Completes op with status unless it was completed already. */
void kafka_op_finish(kafka_op *op, int status);
/* Completes every op of l not completed yet with status. */
void kafka_ops_finish_all(kafka_ops *l, int status);
/* Unlinks and frees every op of l. */
void kafka_ops_free_all(kafka_ops *l);

/* producer.c */
int kafka_producer_start(imc_kafka *k);
/* Serves the producer's queue: delivery reports, errors, logs. */
void kafka_producer_serve(imc_kafka *k);
/* Replaces a producer that met a fatal error (from the tick). */
void kafka_producer_check(imc_kafka *k);
/* Completes every pending publish with status and destroys the
 * producer, after serving the reports that already arrived. */
void kafka_producer_stop(imc_kafka *k, int status);
int kafka_publish(void *ud, const char *topic, const uint8_t *key,
                  size_t key_len, const uint8_t *value, size_t value_len,
                  imc_done_cb done, void *done_ud);

/* consumer.c */
kafka_cons *kafka_cons_find(imc_kafka *k, const char *group);
kafka_sub *kafka_sub_find(kafka_cons *c, const char *topic);
/* The partition's state, or NULL if it was never assigned here. */
kafka_part *kafka_part_get(kafka_sub *s, int32_t partition);
/* Takes fetched records into the topics, serves rebalances and commit
 * answers. */
void kafka_cons_pump(kafka_cons *c);
/* Completes the polls that have records. */
void kafka_cons_deliver(kafka_cons *c);
/* Every consumer leaves its group (waiting at most KAFKA_CLOSE_WAIT_MS
 * in all), completes its polls and commits with IMC_ERR_CLOSED and is
 * freed. */
void kafka_cons_close_all(imc_kafka *k);
int kafka_poll(void *ud, const char *topic, const char *group, size_t max,
               imc_bus_batch_cb done, void *done_ud);

/* commit.c */
int kafka_commit(void *ud, const char *topic, const char *group,
                 int32_t partition, uint64_t offset, imc_done_cb done,
                 void *done_ud);
/* Completes the commits of c past their deadline (from the tick). */
void kafka_commits_expire(kafka_cons *c, int64_t now_ms);

#endif
