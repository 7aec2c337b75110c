/*
 * imc_kafka_options, and the librdkafka configurations built from them.
 */
#include "kafka_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_TIMEOUT_MS 30000
#define DEFAULT_SESSION_MS 45000

/* Set by the engine: what keeps the bus safe, or has its own setter. */
static const char *const managed[] = {
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "enable.auto.commit",
    "auto.commit.enable",
    "enable.auto.offset.store",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "session.timeout.ms",
    "enable.gapless.guarantee",
    "transactional.id",
    "transaction.timeout.ms",
    "log.queue",
};

static char *dup_str(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d)
    memcpy(d, s, n);
  return d;
}

static int name_chars_valid(const char *s) {
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
          (*s >= '0' && *s <= '9') || *s == '.' || *s == '_' || *s == '-'))
      return 0;
  return 1;
}

int kafka_topic_valid(const imc_kafka *k, const char *name) {
  size_t n = strlen(name);
  if (*k->o.prefix == '\0' &&
      (strcmp(name, ".") == 0 || strcmp(name, "..") == 0))
    return 0; /* names Kafka refuses */
  return n > 0 && n + strlen(k->o.prefix) <= KAFKA_NAME_MAX &&
         name_chars_valid(name);
}

int kafka_group_valid(const imc_kafka *k, const char *name) {
  size_t n = strlen(name);
  return n > 0 && n + strlen(k->o.prefix) <= KAFKA_NAME_MAX;
}

char *kafka_prefixed(const imc_kafka *k, const char *name) {
  size_t a = strlen(k->o.prefix), b = strlen(name);
  char *s = malloc(a + b + 1);
  if (s) {
    memcpy(s, k->o.prefix, a);
    memcpy(s + a, name, b + 1);
  }
  return s;
}

int imc_kafka_options_new(imc_kafka_options **out) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  *out = NULL;
  imc_kafka_options *o = calloc(1, sizeof(*o));
  if (o == NULL)
    return IMC_ERR_NOMEM;
  o->prefix = dup_str("");
  if (o->prefix == NULL) {
    free(o);
    return IMC_ERR_NOMEM;
  }
  o->timeout_ms = DEFAULT_TIMEOUT_MS;
  o->session_ms = DEFAULT_SESSION_MS;
  *out = o;
  return 0;
}

void kafka_opts_clear(imc_kafka_options *o) {
  free(o->brokers);
  free(o->prefix);
  for (size_t i = 0; i < o->n_kv; i++) {
    free(o->kv[i].name);
    free(o->kv[i].value);
  }
  free(o->kv);
  memset(o, 0, sizeof(*o));
}

void imc_kafka_options_del(imc_kafka_options *o) {
  if (o == NULL)
    return;
  kafka_opts_clear(o);
  free(o);
}

static int replace_str(char **dst, const char *src) {
  char *s = dup_str(src);
  if (s == NULL)
    return IMC_ERR_NOMEM;
  free(*dst);
  *dst = s;
  return 0;
}

int imc_kafka_options_set_brokers(imc_kafka_options *o, const char *brokers) {
  if (o == NULL || brokers == NULL || *brokers == '\0')
    return IMC_ERR_INVALID_ARGUMENT;
  return replace_str(&o->brokers, brokers);
}

int imc_kafka_options_set_prefix(imc_kafka_options *o, const char *prefix) {
  if (o == NULL || prefix == NULL || strlen(prefix) > KAFKA_PREFIX_MAX ||
      !name_chars_valid(prefix))
    return IMC_ERR_INVALID_ARGUMENT;
  return replace_str(&o->prefix, prefix);
}

int imc_kafka_options_set_timeout_ms(imc_kafka_options *o, uint32_t ms) {
  if (o == NULL || ms < 100 || ms > 3600000)
    return IMC_ERR_INVALID_ARGUMENT;
  o->timeout_ms = ms;
  return 0;
}

int imc_kafka_options_set_session_timeout_ms(imc_kafka_options *o,
                                             uint32_t ms) {
  if (o == NULL || ms < 1000 || ms > 3600000)
    return IMC_ERR_INVALID_ARGUMENT;
  o->session_ms = ms;
  return 0;
}

int imc_kafka_options_set_property(imc_kafka_options *o, const char *name,
                                   const char *value) {
  if (o == NULL || name == NULL || value == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  for (size_t i = 0; i < sizeof(managed) / sizeof(managed[0]); i++)
    if (strcmp(name, managed[i]) == 0)
      return IMC_ERR_INVALID_ARGUMENT;
  /* librdkafka checks the name and the value now, not at first use. */
  rd_kafka_conf_t *probe = rd_kafka_conf_new();
  if (probe == NULL)
    return IMC_ERR_NOMEM;
  char err[256];
  rd_kafka_conf_res_t res =
      rd_kafka_conf_set(probe, name, value, err, sizeof(err));
  rd_kafka_conf_destroy(probe);
  if (res != RD_KAFKA_CONF_OK)
    return IMC_ERR_INVALID_ARGUMENT;
  for (size_t i = 0; i < o->n_kv; i++)
    if (strcmp(o->kv[i].name, name) == 0)
      return replace_str(&o->kv[i].value, value);
  kafka_kv *kv = realloc(o->kv, (o->n_kv + 1) * sizeof(*kv));
  if (kv == NULL)
    return IMC_ERR_NOMEM;
  o->kv = kv;
  kv[o->n_kv].name = dup_str(name);
  kv[o->n_kv].value = dup_str(value);
  if (kv[o->n_kv].name == NULL || kv[o->n_kv].value == NULL) {
    free(kv[o->n_kv].name);
    free(kv[o->n_kv].value);
    return IMC_ERR_NOMEM;
  }
  o->n_kv++;
  return 0;
}

int imc_kafka_options_set_log(imc_kafka_options *o, imc_log_cb cb, void *ud) {
  if (o == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  o->log = cb;
  o->log_ud = ud;
  return 0;
}

int kafka_opts_copy(imc_kafka_options *dst, const imc_kafka_options *src) {
  memset(dst, 0, sizeof(*dst));
  dst->timeout_ms = src->timeout_ms;
  dst->session_ms = src->session_ms;
  dst->log = src->log;
  dst->log_ud = src->log_ud;
  dst->brokers = dup_str(src->brokers);
  dst->prefix = dup_str(src->prefix);
  if (src->n_kv) {
    dst->kv = calloc(src->n_kv, sizeof(*dst->kv));
    if (dst->kv == NULL)
      goto nomem;
    dst->n_kv = src->n_kv;
    for (size_t i = 0; i < src->n_kv; i++) {
      dst->kv[i].name = dup_str(src->kv[i].name);
      dst->kv[i].value = dup_str(src->kv[i].value);
      if (dst->kv[i].name == NULL || dst->kv[i].value == NULL)
        goto nomem;
    }
  }
  if (dst->brokers == NULL || dst->prefix == NULL)
    goto nomem;
  return 0;
nomem:
  kafka_opts_clear(dst);
  return IMC_ERR_NOMEM;
}

/* ------------------------------------------------------------------ */
/* librdkafka configurations                                            */
/* ------------------------------------------------------------------ */

static int conf_set(imc_kafka *k, rd_kafka_conf_t *conf, const char *name,
                    const char *value) {
  char err[256];
  if (rd_kafka_conf_set(conf, name, value, err, sizeof(err)) ==
      RD_KAFKA_CONF_OK)
    return 0;
  kafka_log(k, IMC_LOG_ERROR, "kafka: configuration %s=%s: %s", name, value,
            err);
  return -1;
}

rd_kafka_conf_t *kafka_conf_new(imc_kafka *k, const char *group) {
  const imc_kafka_options *o = &k->o;
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  if (conf == NULL)
    return NULL;
  char timeout[16], session[16], heartbeat[16];
  snprintf(timeout, sizeof(timeout), "%u", (unsigned)o->timeout_ms);
  snprintf(session, sizeof(session), "%u", (unsigned)o->session_ms);
  uint32_t hb = o->session_ms / 3 < 3000 ? o->session_ms / 3 : 3000;
  snprintf(heartbeat, sizeof(heartbeat), "%u", (unsigned)hb);
  char *group_id = NULL;
  int bad = 0;
  /* Defaults the caller may change through imc_kafka_options_set_property(). A
   * short reconnect backoff: librdkafka only expires records and notices a
   * cluster that is back on its next attempt. */
  bad |= conf_set(k, conf, "reconnect.backoff.max.ms", "1000");
  if (group) {
    bad |= conf_set(k, conf, "auto.offset.reset", "earliest");
    /* Before 2.3.0 the cooperative-sticky assignor aborts the process when
     * a consumer is closed before its first assignment (librdkafka #4312);
     * there the eager assignors serve, which the rebalance callback also
     * handles. */
    bad |= conf_set(k, conf, "partition.assignment.strategy",
                    rd_kafka_version() >= 0x020300ff ? "cooperative-sticky"
                                                     : "range,roundrobin");
    bad |= conf_set(k, conf, "allow.auto.create.topics", "true");
    bad |= conf_set(k, conf, "heartbeat.interval.ms", heartbeat);
  }
  for (size_t i = 0; i < o->n_kv; i++)
    bad |= conf_set(k, conf, o->kv[i].name, o->kv[i].value);
  /* What the bus's guarantees rest on. */
  bad |= conf_set(k, conf, "bootstrap.servers", o->brokers);
  bad |= conf_set(k, conf, "log.queue", "true");
  if (group) {
    group_id = kafka_prefixed(k, group);
    bad |= group_id ? conf_set(k, conf, "group.id", group_id) : -1;
    bad |= conf_set(k, conf, "enable.auto.commit", "false");
    bad |= conf_set(k, conf, "enable.auto.offset.store", "false");
    bad |= conf_set(k, conf, "session.timeout.ms", session);
  } else {
    bad |= conf_set(k, conf, "enable.idempotence", "true");
    bad |= conf_set(k, conf, "acks", "all");
    bad |= conf_set(k, conf, "message.timeout.ms", timeout);
  }
  free(group_id);
  if (bad) {
    rd_kafka_conf_destroy(conf);
    return NULL;
  }
  rd_kafka_conf_set_log_cb(conf, kafka_on_log);
  return conf;
}
