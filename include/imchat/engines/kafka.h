/*
 * imchat - the bus (imc_bus_vtbl) on Apache Kafka, through librdkafka.
 *
 * One imc_kafka holds one idempotent producer and one consumer per
 * consumer group (the group argument of poll), each a librdkafka handle.
 * librdkafka runs its own threads; they reach the host's loop only
 * through an eventfd the engine watches, and every completion runs on
 * the loop thread from that watch or from the engine's timers. No call
 * blocks the loop, except imc_kafka_del() (see there).
 *
 * Publish. Records go to the topic the caller names (prefixed, see
 * imc_kafka_options_set_prefix()), partitioned by key, with acks=all and
 * enable.idempotence=true: a publish completes with 0 once every in-sync
 * replica has the record, and a retry inside librdkafka never writes it
 * twice. It completes with a negative code when the record could not be
 * written within the timeout (imc_kafka_options_set_timeout_ms()): the
 * caller never takes a failed publish for a stored one. Records are
 * batched by librdkafka (many publishes share one request).
 *
 * Poll and commit. The first poll of a group creates its consumer, which
 * subscribes to every topic polled in that group (a new topic extends the
 * subscription) with the cooperative-sticky assignor on librdkafka 2.3.0
 * and later, so a rebalance moves only the partitions that change owner
 * (older versions use the eager range,roundrobin assignors). Nothing is
 * committed on its own (enable.auto.commit=false,
 * enable.auto.offset.store=false): a commit(partition, offset) commits offset +
 * 1 for that partition only, when the caller asks; a group that never committed
 * starts at the earliest record (auto.offset.reset=earliest). A poll completes
 * with up to max records as soon as one is there, from the next loop turn at
 * the earliest. Records the consumer fetched but nobody polled yet wait in the
 * engine, at most a few thousand per topic: past that the topic's partitions
 * are paused until polls drain them.
 *
 * Rebalances (backend.h). When a partition is taken from this consumer,
 * the records of it the engine still holds are dropped (they go to the
 * new owner) and a commit of it returns or completes with
 * IMC_ERR_REVOKED. A commit of a partition the consumer does not hold at
 * all (never assigned, or of a group or topic never polled here) returns
 * IMC_ERR_REVOKED too. A partition that comes back later may be committed
 * up to what this engine delivered of it: at worst that moves the group
 * back, so records come again; none is skipped.
 *
 * Errors. publish, poll and commit return 0 or: IMC_ERR_INVALID_ARGUMENT
 * (done NULL; a topic that with the prefix is not 1..249 bytes of
 * [A-Za-z0-9._-]; a group that is empty or with the prefix over 249
 * bytes; max 0; a commit offset this consumer never delivered, which
 * would skip records; the first poll of a group when librdkafka refuses
 * the consumer's configuration, the reason logged), IMC_ERR_NOMEM,
 * IMC_ERR_EXISTS (a poll of that topic and group is outstanding),
 * IMC_ERR_QUEUE_FULL (librdkafka's producer queue is full),
 * IMC_ERR_TOO_LARGE (a record over message.max.bytes),
 * IMC_ERR_UNAVAILABLE (the producer met a fatal error and is being
 * replaced), IMC_ERR_REVOKED (commit, above) or IMC_ERR_CLOSED
 * (imc_kafka_del() is running). Completions report 0,
 * IMC_ERR_UNAVAILABLE (the cluster did not take the record or the commit
 * within the timeout, or refused it), IMC_ERR_TOO_LARGE,
 * IMC_ERR_FORBIDDEN (not authorised), IMC_ERR_NOMEM (a poll: its records
 * stay for the next one), IMC_ERR_REVOKED (commit) or IMC_ERR_CLOSED. A
 * completion may call the engine again, but must not delete it. While
 * the cluster is down a waiting poll keeps waiting (having no records is
 * no failure); imc_kafka_health() tells.
 *
 * librdkafka reconnects by itself, with a backoff capped at 1 s unless
 * configured otherwise; a producer that met a fatal error is replaced by
 * a new one (its pending publishes complete with IMC_ERR_UNAVAILABLE).
 */
#ifndef IMCHAT_ENGINES_KAFKA_H
#define IMCHAT_ENGINES_KAFKA_H

#include <imchat/engines/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ */
/* Options                                                              */
/* ------------------------------------------------------------------ */

typedef struct imc_kafka_options imc_kafka_options;

/* New options with the defaults. Returns 0, IMC_ERR_INVALID_ARGUMENT
 * (out NULL) or IMC_ERR_NOMEM. */
IMC_EXTERN int imc_kafka_options_new(imc_kafka_options **out);
/* NULL is a no-op. */
IMC_EXTERN void imc_kafka_options_del(imc_kafka_options *o);
/*
 * The bootstrap servers, "host:port[,host:port...]" (librdkafka's
 * bootstrap.servers). Required. Copied. Returns 0,
 * IMC_ERR_INVALID_ARGUMENT (o or brokers NULL or empty) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_kafka_options_set_brokers(imc_kafka_options *o,
                                             const char *brokers);
/*
 * A prefix put before every topic name and consumer group id (default
 * ""), so several deployments can share a cluster: with "prod." the
 * router's "group_msg" is the Kafka topic "prod.group_msg". Copied.
 * Returns 0, IMC_ERR_INVALID_ARGUMENT (o or prefix NULL, or a prefix
 * that is not at most 200 bytes of [A-Za-z0-9._-]) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_kafka_options_set_prefix(imc_kafka_options *o,
                                            const char *prefix);
/*
 * How long a publish or a commit may take before it completes with
 * IMC_ERR_UNAVAILABLE (default 30000 ms; librdkafka's message.timeout.ms
 * for publishes). librdkafka notices an expired record on its next
 * connection attempt, so a publish may report up to the reconnect
 * backoff later. Returns 0 or IMC_ERR_INVALID_ARGUMENT (o NULL, ms below
 * 100 or above 3600000).
 */
IMC_EXTERN int imc_kafka_options_set_timeout_ms(imc_kafka_options *o,
                                                uint32_t ms);
/*
 * The consumers' session.timeout.ms (default 45000): how long the group
 * waits for a consumer that stopped without leaving (a crash) before its
 * partitions go to others. Heartbeats go every third of it (at most
 * every 3 s). Returns 0 or IMC_ERR_INVALID_ARGUMENT (o NULL, ms below
 * 1000 or above 3600000).
 */
IMC_EXTERN int imc_kafka_options_set_session_timeout_ms(imc_kafka_options *o,
                                                        uint32_t ms);
/*
 * Any other librdkafka configuration property, for the producer and
 * every consumer (security.protocol, sasl.*, ssl.*, client.id,
 * linger.ms, auto.offset.reset, reconnect.backoff.max.ms, ...); later
 * calls for the same name replace earlier ones. The properties that
 * make the bus safe or that have their own setter are refused:
 * bootstrap.servers, group.id, enable.idempotence, acks,
 * request.required.acks, enable.auto.commit, enable.auto.offset.store,
 * message.timeout.ms, session.timeout.ms, enable.gapless.guarantee and
 * the transactional ones. Copied. Returns 0, IMC_ERR_INVALID_ARGUMENT (o,
 * name or value NULL, a refused property, or one librdkafka does not
 * accept: unknown name or bad value) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_kafka_options_set_property(imc_kafka_options *o,
                                              const char *name,
                                              const char *value);
/*
 * Where librdkafka's log lines and the engine's own go (default:
 * nowhere), always from the loop thread. Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT (o NULL).
 */
IMC_EXTERN int imc_kafka_options_set_log(imc_kafka_options *o, imc_log_cb cb,
                                         void *ud);

/* ------------------------------------------------------------------ */
/* The engine                                                           */
/* ------------------------------------------------------------------ */

typedef struct imc_kafka imc_kafka;

/*
 * Creates the engine on loop (borrowed; it must outlive the engine) with
 * opts (copied; NULL is not allowed since the brokers are required). The
 * producer starts connecting at once; consumers are created by the
 * first poll of their group. Returns 0, IMC_ERR_INVALID_ARGUMENT (out,
 * loop or opts NULL, no brokers set, or a configuration librdkafka
 * refuses: the reason goes to the log), IMC_ERR_NOMEM or IMC_ERR_IO (no
 * eventfd, or the loop refused the watch or timer). *out is NULL on
 * failure.
 */
IMC_EXTERN int imc_kafka_new(imc_kafka **out, const imc_loop *loop,
                             const imc_kafka_options *opts);
/*
 * Closes the consumers (each leaves its group, so its partitions go to
 * other consumers at once; waiting at most 5 s in all for the cluster),
 * then the producer, and completes whatever is still pending with
 * IMC_ERR_CLOSED: waiting polls, commits without an answer, publishes
 * not yet acknowledged (a publish reported CLOSED may still have been
 * written). Blocks for that close and for librdkafka's threads to end:
 * call it at shutdown, after the library objects stopped. A completion
 * that runs from here and calls the engine gets IMC_ERR_CLOSED. NULL is
 * a no-op.
 */
IMC_EXTERN void imc_kafka_del(imc_kafka *k);
IMC_EXTERN void imc_kafka_set_user_data(imc_kafka *k, void *ud);
IMC_EXTERN void *imc_kafka_get_user_data(const imc_kafka *k);
/* The bus; its ud is the imc_kafka. */
IMC_EXTERN const imc_bus_vtbl *imc_kafka_bus_vtbl(void);
/*
 * 0 while the producer has a connection up to a broker of the cluster
 * (librdkafka keeps at least one) and no fatal error; IMC_ERR_UNAVAILABLE
 * when no broker answers (not yet connected, or all down), when the
 * producer is being replaced after a fatal error or a consumer met one;
 * IMC_ERR_INVALID_ARGUMENT if k is NULL. Cheap and non-blocking: for a
 * host's /readyz.
 */
IMC_EXTERN int imc_kafka_health(const imc_kafka *k);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_ENGINES_KAFKA_H */
