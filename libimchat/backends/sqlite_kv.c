/*
 * SQLite embedded backends: sequence counters and the dedup set. Both
 * complete before returning.
 */
#include "backends/sqlite_int.h"

#include <string.h>

/* ------------------------------------------------------------------ */
/* Sequence counters                                                    */
/* ------------------------------------------------------------------ */

static int seq_next(void *ud, const char *key, imc_seq_cb done, void *done_ud) {
  imc_sqlite *db = ud;
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if (key == NULL || *key == '\0' || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  sqlite3_stmt *st = imc_sq_get(db, SQ_SEQ_NEXT);
  imc_sq_text(db, st, 1, key);
  int rc = imc_sq_step(db, st);
  uint64_t value = 0;
  if (rc == SQLITE_ROW) {
    value = (uint64_t)sqlite3_column_int64(st, 0);
    /* The implicit transaction commits when the statement finishes;
     * step to the end so a failed commit is seen. */
    rc = sqlite3_step(st);
  }
  if (rc != SQLITE_DONE)
    rv = imc_sq_fail(db, rc, "seq next");
  sqlite3_reset(st);
  if (rv < 0)
    return rv;
  done(done_ud, 0, value);
  return 0;
}

static const imc_seq_vtbl seq_vtbl = {
    .struct_size = sizeof(imc_seq_vtbl),
    .next = seq_next,
};

const imc_seq_vtbl *imc_sqlite_seq_vtbl(void) {
  return &seq_vtbl;
}

/* ------------------------------------------------------------------ */
/* Dedup set                                                            */
/* ------------------------------------------------------------------ */

/*
 * Expiry is wall-clock time: it must survive a restart, and the
 * monotonic clock starts again at boot.
 */
static int64_t expiry(imc_sqlite *db, uint32_t ttl_s) {
  return imc_clock_wall(&db->clock) + (int64_t)ttl_s * 1000;
}

static int dedup_check(imc_sqlite *db, const char *key, const void *value,
                       size_t value_len, uint32_t ttl_s, int has_done) {
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  /* A zero TTL has no meaning every backend could share (Redis refuses
   * it); refuse it here too. */
  if (key == NULL || *key == '\0' || (value == NULL && value_len) ||
      ttl_s == 0 || !has_done)
    return IMC_ERR_INVALID_ARGUMENT;
  return 0;
}

/*
 * Look key up. On a hit *found is 1 and the value is copied to *copy
 * (allocated from db->mem, NULL when empty): the column's bytes die with
 * the statement's reset, and the completion may use the statement again.
 */
static int dedup_lookup(imc_sqlite *db, const char *key, int *found,
                        uint8_t **copy, size_t *len) {
  sqlite3_stmt *st = imc_sq_get(db, SQ_DEDUP_GET);
  imc_sq_text(db, st, 1, key);
  imc_sq_int(db, st, 2, imc_clock_wall(&db->clock));
  int rc = imc_sq_step(db, st);
  int rv = 0;
  *found = 0;
  *copy = NULL;
  *len = 0;
  if (rc == SQLITE_ROW) {
    *found = 1;
    *len = (size_t)sqlite3_column_bytes(st, 0);
    if (*len) {
      *copy = imc_malloc(&db->mem, *len);
      if (*copy == NULL)
        rv = IMC_ERR_NOMEM;
      else
        memcpy(*copy, sqlite3_column_blob(st, 0), *len);
    }
  } else if (rc != SQLITE_DONE) {
    rv = imc_sq_fail(db, rc, "dedup get");
  }
  sqlite3_reset(st);
  return rv;
}

static int dedup_put(imc_sqlite *db, const char *key, const uint8_t *value,
                     size_t value_len, uint32_t ttl_s) {
  sqlite3_stmt *st = imc_sq_get(db, SQ_DEDUP_PUT);
  imc_sq_text(db, st, 1, key);
  imc_sq_blob(db, st, 2, value, value_len);
  imc_sq_int(db, st, 3, expiry(db, ttl_s));
  return imc_sq_run(db, st, "dedup set");
}

/* A found empty value is a valid empty buffer, not NULL. */
static const uint8_t *found_value(int found, const uint8_t *copy) {
  if (!found)
    return NULL;
  return copy ? copy : (const uint8_t *)"";
}

/* Expired rows count as absent, so a plain REPLACE takes their place. */
static int dedup_test_and_set(void *ud, const char *key, const uint8_t *value,
                              size_t value_len, uint32_t ttl_s,
                              imc_dedup_cb done, void *done_ud) {
  imc_sqlite *db = ud;
  int rv = dedup_check(db, key, value, value_len, ttl_s, done != NULL);
  if (rv < 0)
    return rv;
  int found;
  uint8_t *copy;
  size_t len;
  /* BEGIN IMMEDIATE takes the write lock first: nothing can insert the
   * key between the lookup and the insert. */
  if ((rv = imc_sq_begin(db)) < 0)
    return rv;
  rv = dedup_lookup(db, key, &found, &copy, &len);
  if (rv == 0 && !found)
    rv = dedup_put(db, key, value, value_len, ttl_s);
  if (rv == 0)
    rv = imc_sq_commit(db);
  else
    imc_sq_rollback(db);
  if (rv < 0) {
    imc_free(&db->mem, copy);
    return rv;
  }
  done(done_ud, 0, found, found_value(found, copy), len);
  imc_free(&db->mem, copy);
  return 0;
}

static int dedup_set(void *ud, const char *key, const uint8_t *value,
                     size_t value_len, uint32_t ttl_s, imc_done_cb done,
                     void *done_ud) {
  imc_sqlite *db = ud;
  int rv = dedup_check(db, key, value, value_len, ttl_s, done != NULL);
  if (rv < 0 || (rv = dedup_put(db, key, value, value_len, ttl_s)) < 0)
    return rv;
  done(done_ud, 0);
  return 0;
}

static int dedup_get(void *ud, const char *key, imc_dedup_cb done,
                     void *done_ud) {
  imc_sqlite *db = ud;
  int rv = imc_sq_usable(db);
  if (rv < 0)
    return rv;
  if (key == NULL || *key == '\0' || done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  int found;
  uint8_t *copy;
  size_t len;
  if ((rv = dedup_lookup(db, key, &found, &copy, &len)) < 0)
    return rv;
  done(done_ud, 0, found, found_value(found, copy), len);
  imc_free(&db->mem, copy);
  return 0;
}

static const imc_dedup_vtbl dedup_vtbl = {
    .struct_size = sizeof(imc_dedup_vtbl),
    .test_and_set = dedup_test_and_set,
    .set = dedup_set,
    .get = dedup_get,
};

const imc_dedup_vtbl *imc_sqlite_dedup_vtbl(void) {
  return &dedup_vtbl;
}
