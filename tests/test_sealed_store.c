/*
 * The sealed store (libimchat/backends/sealed_store.c): bodies sealed at
 * rest, plaintext for callers. It wraps the SQLite store, directly and
 * behind an asynchronous shim that defers every completion to a dispatch
 * call, and runs the store conformance suite over both; the SQLite file
 * is also read and altered behind the decorator's back.
 */
#include <imchat/sqlite.h>
#include <imchat/sealed_store.h>

#include "conformance.h"
#include "backends/seal.h"
#include "testutil.h"

#include <check.h>
#include <dirent.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HEX_A "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define HEX_B "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
#define HEX_C "5555555555555555555555555555555555555555555555555555555555555555"
#define KEYS_A "# test keys\nka " HEX_A "\n"
#define KEYS_B "kb " HEX_B "\n"
#define KEYS_BA "kb " HEX_B "\r\n\nka " HEX_A "\n"
#define KEYS_C "kc " HEX_C "\n"
#define CONV "p:alice:bob"
#define MAXN 16
/* A key text as the arguments of imc_sealed_store_new and _set_keys. */
#define TEXT(t) (const uint8_t *)(t), strlen(t)

static char tmpdir[256];
static int file_counter;

static void new_path(char *out, size_t size, const char *what) {
  snprintf(out, size, "%s/%s-%ld-%d", tmpdir, what, (long)getpid(),
           file_counter++);
}

static void remove_db(const char *path) {
  char p[512];
  unlink(path);
  snprintf(p, sizeof(p), "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof(p), "%s-shm", path);
  unlink(p);
}

/* ------------------------------------------------------------------ */
/* An asynchronous shim: completes nothing until shim_dispatch          */
/* ------------------------------------------------------------------ */

typedef enum { P_DONE, P_FETCH, P_LIST } pending_kind;

/* A completion made by the inner store, copied and held back. */
typedef struct pending {
  struct pending *next;
  pending_kind kind;
  struct shim *sh;
  imc_done_cb done;
  imc_fetch_cb fetch_done;
  imc_list_cb list_done;
  void *done_ud;
  int status;
  imc_msg **msgs;
  uint64_t *cursors;
  char **items;
  size_t n;
  int has_more;
} pending;

typedef struct shim {
  const imc_store_vtbl *inner;
  void *inner_ud;
  pending *head, **tail;
  /* What the last append handed to the inner store. */
  size_t distinct_bodies;
  int saw_plaintext;
  const char *plaintext; /* looked for in appended bodies */
} shim;

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  ck_assert_ptr_nonnull(p);
  return p;
}

static char *put(char **dst, const void *src, size_t n) {
  char *d = *dst;
  if (n)
    memcpy(d, src, n);
  d[n] = '\0';
  *dst += n + 1;
  return d;
}

/* One block holding a deep copy of m. */
static imc_msg *msg_dup(const imc_msg *m) {
  const char *s[] = {m->msg_id,        m->conversation_id, m->from_user,
                     m->to_user,       m->group_id,        m->content_type,
                     m->client_msg_id, m->from_device};
  size_t need = sizeof(imc_msg) + m->body_len + 1;
  for (size_t i = 0; i < sizeof(s) / sizeof(s[0]); i++)
    need += strlen(s[i]) + 1;
  imc_msg *c = xmalloc(need);
  char *p = (char *)(c + 1);
  *c = *m;
  c->msg_id = put(&p, m->msg_id, strlen(m->msg_id));
  c->conversation_id = put(&p, m->conversation_id, strlen(m->conversation_id));
  c->from_user = put(&p, m->from_user, strlen(m->from_user));
  c->to_user = put(&p, m->to_user, strlen(m->to_user));
  c->group_id = put(&p, m->group_id, strlen(m->group_id));
  c->content_type = put(&p, m->content_type, strlen(m->content_type));
  c->client_msg_id = put(&p, m->client_msg_id, strlen(m->client_msg_id));
  c->from_device = put(&p, m->from_device, strlen(m->from_device));
  c->body = (const uint8_t *)put(&p, m->body, m->body_len);
  return c;
}

static void enqueue(pending *p) {
  shim *sh = p->sh;
  *sh->tail = p;
  sh->tail = &p->next;
}

static pending *pending_new(shim *sh, pending_kind kind, void *done_ud) {
  pending *p = calloc(1, sizeof(*p));
  ck_assert_ptr_nonnull(p);
  p->sh = sh;
  p->kind = kind;
  p->done_ud = done_ud;
  return p;
}

static void pending_free(pending *p) {
  for (size_t i = 0; p->msgs && i < p->n; i++)
    free(p->msgs[i]);
  for (size_t i = 0; p->items && i < p->n; i++)
    free(p->items[i]);
  free(p->msgs);
  free(p->cursors);
  free(p->items);
  free(p);
}

static void shim_on_done(void *ud, int status) {
  pending *p = ud;
  p->status = status;
  enqueue(p);
}

static void shim_on_fetch(void *ud, int status, const imc_msg *const *msgs,
                          const uint64_t *cursors, size_t n, int has_more) {
  pending *p = ud;
  p->status = status;
  p->n = n;
  p->has_more = has_more;
  if (n > 0) {
    p->msgs = xmalloc(n * sizeof(*p->msgs));
    p->cursors = xmalloc(n * sizeof(*p->cursors));
    for (size_t i = 0; i < n; i++) {
      p->msgs[i] = msg_dup(msgs[i]);
      p->cursors[i] = cursors[i];
    }
  }
  enqueue(p);
}

static void shim_on_list(void *ud, int status, const char *const *items,
                         size_t n) {
  pending *p = ud;
  p->status = status;
  p->n = n;
  if (n > 0) {
    p->items = xmalloc(n * sizeof(*p->items));
    for (size_t i = 0; i < n; i++)
      p->items[i] = strdup(items[i]);
  }
  enqueue(p);
}

/* Runs the completions queued so far; returns how many. */
static int shim_dispatch(shim *sh) {
  pending *p = sh->head;
  sh->head = NULL;
  sh->tail = &sh->head;
  int n = 0;
  while (p != NULL) {
    pending *next = p->next;
    if (p->kind == P_DONE)
      p->done(p->done_ud, p->status);
    else if (p->kind == P_FETCH)
      p->fetch_done(p->done_ud, p->status, (const imc_msg *const *)p->msgs,
                    p->cursors, p->n, p->has_more);
    else
      p->list_done(p->done_ud, p->status, (const char *const *)p->items, p->n);
    pending_free(p);
    p = next;
    n++;
  }
  return n;
}

/* Returns rv; frees p when the inner store refused the call. */
static int started(pending *p, int rv) {
  if (rv < 0)
    pending_free(p);
  return rv;
}

static void note_body(shim *sh, const imc_msg *m, const imc_msg **seen,
                      size_t *n_seen) {
  for (size_t i = 0; i < *n_seen; i++)
    if (seen[i]->body == m->body)
      return;
  seen[(*n_seen)++] = m;
  size_t len = sh->plaintext ? strlen(sh->plaintext) : 0;
  if (len && memmem(m->body, m->body_len, sh->plaintext, len) != NULL)
    sh->saw_plaintext = 1;
}

static int shim_append(void *ud, const imc_msg *const *msgs, size_t n_msgs,
                       const imc_inbox_entry *entries, size_t n_entries,
                       imc_done_cb done, void *done_ud) {
  shim *sh = ud;
  const imc_msg *seen[64];
  size_t n_seen = 0;
  ck_assert_uint_le(n_msgs + n_entries, 64);
  for (size_t i = 0; i < n_msgs; i++)
    note_body(sh, msgs[i], seen, &n_seen);
  for (size_t i = 0; i < n_entries; i++)
    note_body(sh, entries[i].msg, seen, &n_seen);
  sh->distinct_bodies = n_seen;
  pending *p = pending_new(sh, P_DONE, done_ud);
  p->done = done;
  return started(p, sh->inner->append(sh->inner_ud, msgs, n_msgs, entries,
                                      n_entries, shim_on_done, p));
}

static int shim_fetch_inbox(void *ud, const char *user_id, uint64_t after,
                            uint32_t limit, imc_fetch_cb done, void *done_ud) {
  shim *sh = ud;
  pending *p = pending_new(sh, P_FETCH, done_ud);
  p->fetch_done = done;
  return started(p, sh->inner->fetch_inbox(sh->inner_ud, user_id, after, limit,
                                           shim_on_fetch, p));
}

static int shim_fetch_history(void *ud, const char *conv, uint64_t after,
                              uint32_t limit, imc_fetch_cb done,
                              void *done_ud) {
  shim *sh = ud;
  pending *p = pending_new(sh, P_FETCH, done_ud);
  p->fetch_done = done;
  return started(p, sh->inner->fetch_history(sh->inner_ud, conv, after, limit,
                                             shim_on_fetch, p));
}

static int shim_purge(void *ud, int64_t before_ms, imc_done_cb done,
                      void *done_ud) {
  shim *sh = ud;
  pending *p = pending_new(sh, P_DONE, done_ud);
  p->done = done;
  return started(p, sh->inner->purge(sh->inner_ud, before_ms, shim_on_done, p));
}

static int shim_group_add(void *ud, const char *g, const char *u,
                          imc_done_cb done, void *done_ud) {
  shim *sh = ud;
  pending *p = pending_new(sh, P_DONE, done_ud);
  p->done = done;
  return started(p, sh->inner->group_add(sh->inner_ud, g, u, shim_on_done, p));
}

static int shim_group_remove(void *ud, const char *g, const char *u,
                             imc_done_cb done, void *done_ud) {
  shim *sh = ud;
  pending *p = pending_new(sh, P_DONE, done_ud);
  p->done = done;
  return started(p,
                 sh->inner->group_remove(sh->inner_ud, g, u, shim_on_done, p));
}

static int shim_group_members(void *ud, const char *g, imc_list_cb done,
                              void *done_ud) {
  shim *sh = ud;
  pending *p = pending_new(sh, P_LIST, done_ud);
  p->list_done = done;
  return started(p, sh->inner->group_members(sh->inner_ud, g, shim_on_list, p));
}

static const imc_store_vtbl shim_vtbl = {
    .struct_size = sizeof(imc_store_vtbl),
    .append = shim_append,
    .fetch_inbox = shim_fetch_inbox,
    .fetch_history = shim_fetch_history,
    .purge = shim_purge,
    .group_add = shim_group_add,
    .group_remove = shim_group_remove,
    .group_members = shim_group_members,
};

static shim *shim_new(const imc_store_vtbl *inner, void *inner_ud) {
  shim *sh = calloc(1, sizeof(*sh));
  ck_assert_ptr_nonnull(sh);
  sh->inner = inner;
  sh->inner_ud = inner_ud;
  sh->tail = &sh->head;
  return sh;
}

static void shim_del(shim *sh) {
  ck_assert_ptr_null(sh->head); /* every completion was delivered */
  free(sh);
}

/* ------------------------------------------------------------------ */
/* A sealed store over SQLite, optionally behind the shim               */
/* ------------------------------------------------------------------ */

typedef struct fx {
  char db_path[384];
  char keys[512]; /* the key-file text the host would have read */
  int async;
  const imc_clock *clock;
  imc_sqlite *db;
  shim *sh; /* NULL unless async */
  imc_sealed_store *s;
  test_mem tm; /* the sealed store's allocator */
} fx;

static const imc_store_vtbl *sv;  /* imc_sealed_store_vtbl() */
static const imc_store_vtbl *raw; /* imc_sqlite_store_vtbl() */

static void fx_open_inner(fx *f) {
  int rv = imc_sqlite_new(&f->db, f->db_path, f->clock, NULL);
  ck_assert_msg(rv == 0, "imc_sqlite_new: %s", imc_strerror(rv));
  f->sh = f->async ? shim_new(raw, f->db) : NULL;
}

static const imc_store_vtbl *fx_inner_vtbl(fx *f) {
  return f->async ? &shim_vtbl : raw;
}

static void *fx_inner_ud(fx *f) {
  return f->async ? (void *)f->sh : (void *)f->db;
}

static void fx_open_sealed(fx *f) {
  test_mem_init(&f->tm);
  int rv = imc_sealed_store_new(&f->s, fx_inner_vtbl(f), fx_inner_ud(f),
                                TEXT(f->keys), &f->tm.mem);
  ck_assert_msg(rv == 0, "imc_sealed_store_new: %s", imc_strerror(rv));
}

static void fx_init(fx *f, const char *keys, int async,
                    const imc_clock *clock) {
  memset(f, 0, sizeof(*f));
  f->clock = clock;
  new_path(f->db_path, sizeof(f->db_path), "db");
  snprintf(f->keys, sizeof(f->keys), "%s", keys);
  f->async = async;
  fx_open_inner(f);
  fx_open_sealed(f);
}

static void fx_close_sealed(fx *f) {
  imc_sealed_store_del(f->s);
  f->s = NULL;
  ck_assert_int_eq(f->tm.live, 0);
}

static void fx_close_inner(fx *f) {
  if (f->sh)
    shim_del(f->sh);
  f->sh = NULL;
  imc_sqlite_del(f->db);
  f->db = NULL;
}

static void fx_fini(fx *f) {
  fx_close_sealed(f);
  fx_close_inner(f);
  remove_db(f->db_path);
}

/*
 * The status of an operation started with rv: rv if negative (and no
 * completion ran), else its one completion's status. Behind the shim the
 * completion must not run before dispatch.
 */
static int finish(fx *f, int rv, const int *calls, const int *status) {
  if (rv < 0) {
    ck_assert_int_eq(*calls, 0);
    return rv;
  }
  ck_assert_int_eq(rv, 0);
  if (f->async) {
    ck_assert_int_eq(*calls, 0);
    while (*calls == 0)
      ck_assert_int_gt(shim_dispatch(f->sh), 0);
  }
  ck_assert_int_eq(*calls, 1);
  return *status;
}

typedef struct done_res {
  int calls, status;
} done_res;

static void on_done(void *p, int status) {
  done_res *r = p;
  r->calls++;
  r->status = status;
}

/* A copy of a fetched page. */
typedef struct got {
  int calls, status;
  size_t n;
  int has_more;
  char ids[MAXN][32];
  uint8_t *bodies[MAXN];
  size_t lens[MAXN];
  uint64_t seqs[MAXN];
  char from[MAXN][32];
} got;

static void on_got(void *p, int status, const imc_msg *const *msgs,
                   const uint64_t *cursors, size_t n, int has_more) {
  got *g = p;
  (void)cursors;
  g->calls++;
  g->status = status;
  g->n = n;
  g->has_more = has_more;
  ck_assert_uint_le(n, MAXN);
  for (size_t i = 0; i < n; i++) {
    const imc_msg *m = msgs[i];
    snprintf(g->ids[i], sizeof(g->ids[i]), "%s", m->msg_id);
    snprintf(g->from[i], sizeof(g->from[i]), "%s", m->from_user);
    ck_assert(m->body != NULL || m->body_len == 0);
    g->bodies[i] = xmalloc(m->body_len);
    if (m->body_len)
      memcpy(g->bodies[i], m->body, m->body_len);
    g->lens[i] = m->body_len;
    g->seqs[i] = m->seq;
  }
}

static void got_free(got *g) {
  for (size_t i = 0; i < g->n; i++)
    free(g->bodies[i]);
  memset(g, 0, sizeof(*g));
}

static imc_msg mk(const char *id, uint64_t seq, const void *body, size_t len) {
  imc_msg m = {
      .struct_size = sizeof(m),
      .msg_id = id,
      .conversation_id = CONV,
      .seq = seq,
      .from_user = "alice",
      .to_user = "bob",
      .group_id = "",
      .body = body,
      .body_len = len,
      .content_type = "application/octet-stream",
      .sent_at_ms = 1700000000000LL,
      .client_msg_id = "c1",
      .from_device = "phone",
  };
  return m;
}

static int append_via(fx *f, const imc_store_vtbl *v, void *ud,
                      const imc_msg *const *msgs, size_t n,
                      const imc_inbox_entry *e, size_t ne) {
  done_res r = {0};
  int rv = v->append(ud, msgs, n, e, ne, on_done, &r);
  return finish(f, rv, &r.calls, &r.status);
}

/* Append through the sealed store. */
static int append(fx *f, const imc_msg *const *msgs, size_t n,
                  const imc_inbox_entry *e, size_t ne) {
  return append_via(f, sv, f->s, msgs, n, e, ne);
}

/* Append plaintext straight into SQLite, as before sealing was enabled. */
static void append_raw(fx *f, const imc_msg *m) {
  done_res r = {0};
  ck_assert_int_eq(raw->append(f->db, &m, 1, NULL, 0, on_done, &r), 0);
  ck_assert_int_eq(r.status, 0);
}

static int history(fx *f, got *g) {
  memset(g, 0, sizeof(*g));
  int rv = sv->fetch_history(f->s, CONV, 0, MAXN, on_got, g);
  return finish(f, rv, &g->calls, &g->status);
}

static int inbox(fx *f, const char *user, got *g) {
  memset(g, 0, sizeof(*g));
  int rv = sv->fetch_inbox(f->s, user, 0, MAXN, on_got, g);
  return finish(f, rv, &g->calls, &g->status);
}

/* The history as SQLite holds it, bypassing the decorator. */
static void history_raw(fx *f, got *g) {
  memset(g, 0, sizeof(*g));
  ck_assert_int_eq(raw->fetch_history(f->db, CONV, 0, MAXN, on_got, g), 0);
  ck_assert_int_eq(g->calls, 1);
  ck_assert_int_eq(g->status, 0);
}

/* The key id of the stored body of row i, or "" if it is no envelope. */
static const char *stored_key_id(fx *f, size_t i, char *out) {
  got g;
  history_raw(f, &g);
  ck_assert_uint_lt(i, g.n);
  if (imc_sealed_key_id(g.bodies[i], g.lens[i], out) != 0)
    out[0] = '\0';
  got_free(&g);
  return out;
}

static void assert_body(const got *g, size_t i, const void *body, size_t len) {
  ck_assert_uint_lt(i, g->n);
  ck_assert_uint_eq(g->lens[i], len);
  if (len)
    ck_assert_mem_eq(g->bodies[i], body, len);
}

/* Runs sql on the database file behind the decorator's back. */
static void sql_exec(fx *f, const char *sql) {
  sqlite3 *h;
  ck_assert_int_eq(sqlite3_open(f->db_path, &h), SQLITE_OK);
  sqlite3_busy_timeout(h, 5000);
  char *err = NULL;
  int rc = sqlite3_exec(h, sql, NULL, NULL, &err);
  ck_assert_msg(rc == SQLITE_OK, "%s: %s", sql, err ? err : "");
  sqlite3_close(h);
}

/* ------------------------------------------------------------------ */
/* Tests                                                                */
/* ------------------------------------------------------------------ */

static const char secret[] = "attack at dawn";
static uint8_t binary[3000];

static void fill_binary(void) {
  for (size_t i = 0; i < sizeof(binary); i++)
    binary[i] = (uint8_t)(i * 131 + 7);
  /* Starts like an envelope (version 1, id length 2, "ka"), with NULs. */
  memcpy(binary, "\x01\x02ka\x00\x00", 6);
}

START_TEST(round_trip) {
  fx f;
  fx_init(&f, KEYS_A, _i, NULL);
  imc_msg m1 = mk("m1", 1, secret, strlen(secret));
  imc_msg m2 = mk("m2", 2, "", 0);
  imc_msg m3 = mk("m3", 3, binary, sizeof(binary));
  imc_msg m4 = mk("m4", 4, NULL, 0);
  const imc_msg *msgs[] = {&m1, &m2, &m3, &m4};
  imc_inbox_entry e[] = {{"bob", &m1}, {"bob", &m3}};
  ck_assert_int_eq(append(&f, msgs, 4, e, 2), 0);

  got g;
  ck_assert_int_eq(history(&f, &g), 0);
  ck_assert_uint_eq(g.n, 4);
  assert_body(&g, 0, secret, strlen(secret));
  assert_body(&g, 1, "", 0);
  assert_body(&g, 2, binary, sizeof(binary));
  assert_body(&g, 3, "", 0);
  /* The other fields pass through untouched. */
  ck_assert_str_eq(g.ids[2], "m3");
  ck_assert_uint_eq(g.seqs[2], 3);
  ck_assert_str_eq(g.from[2], "alice");
  got_free(&g);

  ck_assert_int_eq(inbox(&f, "bob", &g), 0);
  ck_assert_uint_eq(g.n, 2);
  assert_body(&g, 0, secret, strlen(secret));
  assert_body(&g, 1, binary, sizeof(binary));
  got_free(&g);
  ck_assert_uint_eq(imc_sealed_store_failures(f.s), 0);
  fx_fini(&f);
}
END_TEST

START_TEST(large_body) {
  fx f;
  fx_init(&f, KEYS_A, _i, NULL);
  size_t len = 1 << 20;
  uint8_t *big = xmalloc(len);
  for (size_t i = 0; i < len; i++)
    big[i] = (uint8_t)(i ^ (i >> 8));
  imc_msg m = mk("big", 1, big, len);
  const imc_msg *msgs[] = {&m};
  ck_assert_int_eq(append(&f, msgs, 1, NULL, 0), 0);
  got g;
  ck_assert_int_eq(history(&f, &g), 0);
  assert_body(&g, 0, big, len);
  got_free(&g);
  free(big);
  fx_fini(&f);
}
END_TEST

START_TEST(ciphertext_at_rest) {
  fx f;
  fx_init(&f, KEYS_A, 0, NULL);
  imc_msg m1 = mk("m1", 1, secret, strlen(secret));
  imc_msg m2 = mk("m2", 2, "", 0);
  const imc_msg *msgs[] = {&m1, &m2};
  ck_assert_int_eq(append(&f, msgs, 2, NULL, 0), 0);

  got g;
  history_raw(&f, &g);
  ck_assert_uint_eq(g.n, 2);
  size_t over = 1 + 1 + 2 + 12 + 16; /* version, id length, "ka", nonce, tag */
  ck_assert_uint_eq(g.lens[0], strlen(secret) + over);
  ck_assert_ptr_null(memmem(g.bodies[0], g.lens[0], secret, strlen(secret)));
  ck_assert_uint_eq(g.lens[1], over); /* an empty body is sealed too */
  char id[IMC_SEAL_KEY_ID_MAX + 1];
  for (size_t i = 0; i < 2; i++) {
    ck_assert_int_eq(imc_sealed_key_id(g.bodies[i], g.lens[i], id), 0);
    ck_assert_str_eq(id, "ka");
  }

  /* The envelope opens with the key alone, bound to its msg_id. */
  imc_keyring *kr;
  ck_assert_int_eq(imc_keyring_parse(&kr, TEXT(f.keys), NULL), 0);
  uint8_t out[64];
  size_t outlen;
  ck_assert_int_eq(imc_open(kr, g.bodies[0], g.lens[0], out, sizeof(out),
                            &outlen, (const uint8_t *)"m1", 2),
                   0);
  ck_assert_uint_eq(outlen, strlen(secret));
  ck_assert_mem_eq(out, secret, outlen);
  ck_assert_int_eq(imc_open(kr, g.bodies[0], g.lens[0], out, sizeof(out),
                            &outlen, (const uint8_t *)"m2", 2),
                   IMC_ERR_PROTO);
  imc_keyring_del(kr);
  got_free(&g);
  fx_fini(&f);
}
END_TEST

START_TEST(shared_message_sealed_once) {
  fx f;
  fx_init(&f, KEYS_A, 1, NULL);
  f.sh->plaintext = secret;
  imc_msg m = mk("g1", 1, secret, strlen(secret));
  imc_msg alone = mk("g2", 2, secret, strlen(secret));
  const imc_msg *msgs[] = {&m};
  /* m is both in msgs and behind every entry; alone only behind entries. */
  imc_inbox_entry e[] = {{"bob", &m},     {"carol", &alone}, {"carol", &m},
                         {"dave", &m},    {"bob", &alone},   {"dave", &alone},
                         {"erin", &alone}};
  ck_assert_int_eq(append(&f, msgs, 1, e, 7), 0);
  ck_assert_uint_eq(f.sh->distinct_bodies, 2);
  ck_assert_int_eq(f.sh->saw_plaintext, 0);

  got g;
  const char *users[] = {"bob", "carol", "dave"};
  for (size_t u = 0; u < 3; u++) {
    ck_assert_int_eq(inbox(&f, users[u], &g), 0);
    ck_assert_uint_eq(g.n, 2);
    assert_body(&g, 0, secret, strlen(secret));
    assert_body(&g, 1, secret, strlen(secret));
    got_free(&g);
  }
  ck_assert_int_eq(inbox(&f, "erin", &g), 0);
  ck_assert_uint_eq(g.n, 1);
  ck_assert_str_eq(g.ids[0], "g2");
  got_free(&g);
  fx_fini(&f);
}
END_TEST

START_TEST(rotation) {
  fx f;
  fx_init(&f, KEYS_A, _i, NULL);
  char id[IMC_SEAL_KEY_ID_MAX + 1];
  imc_msg m1 = mk("m1", 1, "old", 3);
  const imc_msg *b1[] = {&m1};
  ck_assert_int_eq(append(&f, b1, 1, NULL, 0), 0);
  ck_assert_str_eq(stored_key_id(&f, 0, id), "ka");

  /* B seals from now on; A still opens the old row. */
  ck_assert_int_eq(imc_sealed_store_set_keys(f.s, TEXT(KEYS_BA)), 0);
  imc_msg m2 = mk("m2", 2, "new", 3);
  const imc_msg *b2[] = {&m2};
  ck_assert_int_eq(append(&f, b2, 1, NULL, 0), 0);
  ck_assert_str_eq(stored_key_id(&f, 0, id), "ka");
  ck_assert_str_eq(stored_key_id(&f, 1, id), "kb");
  got g;
  ck_assert_int_eq(history(&f, &g), 0);
  ck_assert_uint_eq(g.n, 2);
  assert_body(&g, 0, "old", 3);
  assert_body(&g, 1, "new", 3);
  got_free(&g);

  /* A bad file is refused and the keys in use stay. */
  ck_assert_int_eq(imc_sealed_store_set_keys(f.s, TEXT("kb nothex\n")),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_sealed_store_set_keys(f.s, TEXT("# no keys\n")),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_sealed_store_set_keys(f.s, NULL, 0),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(history(&f, &g), 0);
  ck_assert_uint_eq(g.n, 2);
  got_free(&g);

  /* Dropping A too early: the old row is lost to readers, loudly. */
  ck_assert_int_eq(imc_sealed_store_set_keys(f.s, TEXT(KEYS_B)), 0);
  ck_assert_int_eq(history(&f, &g), IMC_ERR_IO);
  ck_assert_uint_eq(g.n, 0);
  ck_assert_uint_eq(imc_sealed_store_failures(f.s), 1);
  fx_fini(&f);
}
END_TEST

START_TEST(unknown_key) {
  fx f;
  fx_init(&f, KEYS_C, _i, NULL);
  imc_msg m1 = mk("m1", 1, secret, strlen(secret));
  imc_inbox_entry e[] = {{"bob", &m1}};
  ck_assert_int_eq(append(&f, NULL, 0, e, 1), 0);
  /* The same database, opened with a file that lacks kc. */
  fx_close_sealed(&f);
  snprintf(f.keys, sizeof(f.keys), "%s", KEYS_A);
  fx_open_sealed(&f);
  got g;
  ck_assert_int_eq(history(&f, &g), IMC_ERR_IO);
  ck_assert_uint_eq(g.n, 0);
  ck_assert_int_eq(inbox(&f, "bob", &g), IMC_ERR_IO);
  ck_assert_uint_eq(imc_sealed_store_failures(f.s), 2);
  fx_fini(&f);
}
END_TEST

START_TEST(tampered_row) {
  fx f;
  fx_init(&f, KEYS_A, _i, NULL);
  imc_msg m1 = mk("m1", 1, secret, strlen(secret));
  imc_msg m2 = mk("m2", 2, "other", 5);
  const imc_msg *msgs[] = {&m1, &m2};
  ck_assert_int_eq(append(&f, msgs, 2, NULL, 0), 0);
  got g;

  /* One flipped bit of the ciphertext. */
  sql_exec(&f, "UPDATE messages SET body = substr(body, 1, 20) ||"
               " (CASE WHEN substr(body, 21, 1) = x'00' THEN x'01'"
               " ELSE x'00' END) || substr(body, 22) WHERE msg_id = 'm1'");
  ck_assert_int_eq(history(&f, &g), IMC_ERR_IO);
  ck_assert_uint_eq(imc_sealed_store_failures(f.s), 1);

  /* A valid envelope moved to another row fails too (AAD = msg_id). */
  sql_exec(&f, "UPDATE messages SET body = (SELECT body FROM messages"
               " WHERE msg_id = 'm2') WHERE msg_id = 'm1'");
  ck_assert_int_eq(history(&f, &g), IMC_ERR_IO);

  /* So is an envelope cut short by a byte. */
  sql_exec(&f, "UPDATE messages SET body = substr(body, 1, length(body) - 1)"
               " WHERE msg_id = 'm2'");
  sql_exec(&f, "DELETE FROM messages WHERE msg_id = 'm1'");
  ck_assert_int_eq(history(&f, &g), IMC_ERR_IO);
  ck_assert_uint_eq(imc_sealed_store_failures(f.s), 3);
  fx_fini(&f);
}
END_TEST

START_TEST(legacy_plaintext_rows) {
  fx f;
  fx_init(&f, KEYS_A, _i, NULL);
  /* Rows written before sealing was enabled. */
  imc_msg m1 = mk("m1", 1, "plain old", 9);
  imc_msg m2 = mk("m2", 2, "", 0);
  append_raw(&f, &m1);
  append_raw(&f, &m2);
  imc_msg m3 = mk("m3", 3, secret, strlen(secret));
  const imc_msg *msgs[] = {&m3};
  ck_assert_int_eq(append(&f, msgs, 1, NULL, 0), 0);
  got g;
  ck_assert_int_eq(history(&f, &g), 0);
  ck_assert_uint_eq(g.n, 3);
  assert_body(&g, 0, "plain old", 9);
  assert_body(&g, 1, "", 0);
  assert_body(&g, 2, secret, strlen(secret));
  got_free(&g);

  /* A plaintext row that frames as an envelope is refused, not served. */
  imc_msg m4 = mk("m4", 4, binary, sizeof(binary));
  append_raw(&f, &m4);
  ck_assert_int_eq(history(&f, &g), IMC_ERR_IO);
  fx_fini(&f);
}
END_TEST

/* Completions run only from dispatch, after the calls have returned. */
START_TEST(async_completions) {
  fx f;
  fx_init(&f, KEYS_A, 1, NULL);
  imc_msg m1 = mk("m1", 1, secret, strlen(secret));
  imc_msg m2 = mk("m2", 2, "two", 3);
  const imc_msg *b1[] = {&m1}, *b2[] = {&m2};
  done_res a1 = {0}, a2 = {0};
  ck_assert_int_eq(sv->append(f.s, b1, 1, NULL, 0, on_done, &a1), 0);
  ck_assert_int_eq(sv->append(f.s, b2, 1, NULL, 0, on_done, &a2), 0);
  got h1, h2;
  memset(&h1, 0, sizeof(h1));
  memset(&h2, 0, sizeof(h2));
  ck_assert_int_eq(sv->fetch_history(f.s, CONV, 0, 1, on_got, &h1), 0);
  ck_assert_int_eq(sv->fetch_history(f.s, CONV, 1, 1, on_got, &h2), 0);
  ck_assert_int_eq(a1.calls + a2.calls + h1.calls + h2.calls, 0);
  long live = f.tm.live;
  ck_assert_int_ge(live, 3); /* the two fetch contexts, at least */
  /* A reload while fetches are in flight is fine. */
  ck_assert_int_eq(imc_sealed_store_set_keys(f.s, TEXT(KEYS_BA)), 0);
  ck_assert_int_eq(shim_dispatch(f.sh), 4);
  ck_assert_int_eq(a1.calls + a2.calls + h1.calls + h2.calls, 4);
  ck_assert_int_eq(a1.status | a2.status | h1.status | h2.status, 0);
  ck_assert_int_eq(h1.has_more, 1);
  assert_body(&h1, 0, secret, strlen(secret));
  ck_assert_int_eq(h2.has_more, 0);
  assert_body(&h2, 0, "two", 3);
  got_free(&h1);
  got_free(&h2);
  ck_assert_int_eq(f.tm.live, live - 2);
  fx_fini(&f);
}
END_TEST

/* The caller's completion deletes the decorator. */
typedef struct del_in_cb {
  imc_sealed_store *s;
  int calls, status;
} del_in_cb;

static void del_on_done(void *p, int status) {
  del_in_cb *d = p;
  d->calls++;
  d->status = status;
  imc_sealed_store_del(d->s);
}

static void del_on_page(void *p, int status, const imc_msg *const *msgs,
                        const uint64_t *cursors, size_t n, int has_more) {
  (void)cursors;
  (void)has_more;
  ck_assert_uint_eq(n, 1);
  ck_assert_mem_eq(msgs[0]->body, secret, strlen(secret));
  del_on_done(p, status);
}

START_TEST(delete_from_completion) {
  fx f;
  fx_init(&f, KEYS_A, _i, NULL);
  imc_msg m1 = mk("m1", 1, secret, strlen(secret));
  const imc_msg *msgs[] = {&m1};
  del_in_cb d = {f.s, 0, 0};
  int rv = sv->append(f.s, msgs, 1, NULL, 0, del_on_done, &d);
  ck_assert_int_eq(finish(&f, rv, &d.calls, &d.status), 0);
  ck_assert_int_eq(f.tm.live, 0);
  fx_open_sealed(&f);
  d = (del_in_cb){f.s, 0, 0};
  rv = sv->fetch_history(f.s, CONV, 0, 10, del_on_page, &d);
  ck_assert_int_eq(finish(&f, rv, &d.calls, &d.status), 0);
  ck_assert_int_eq(f.tm.live, 0);
  f.s = NULL;
  fx_fini(&f);
}
END_TEST

static void never_page(void *p, int status, const imc_msg *const *msgs,
                       const uint64_t *cursors, size_t n, int has_more) {
  (void)p, (void)status, (void)msgs, (void)cursors, (void)n, (void)has_more;
  ck_abort_msg("completion of a refused call");
}

static void never_done(void *p, int status) {
  (void)p, (void)status;
  ck_abort_msg("completion of a refused call");
}

START_TEST(bad_arguments) {
  fx f;
  fx_init(&f, KEYS_A, _i, NULL);
  imc_sealed_store *s = NULL;
  test_mem tm;
  test_mem_init(&tm);
  ck_assert_int_eq(imc_sealed_store_new(NULL, raw, f.db, TEXT(f.keys), &tm.mem),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_sealed_store_new(&s, NULL, f.db, TEXT(f.keys), &tm.mem),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_sealed_store_new(&s, raw, f.db, NULL, 0, &tm.mem),
                   IMC_ERR_INVALID_ARGUMENT);
  /* A vtable from an older build that ends before the fetches. */
  imc_store_vtbl short_v = *raw;
  short_v.struct_size = offsetof(imc_store_vtbl, fetch_inbox);
  ck_assert_int_eq(
      imc_sealed_store_new(&s, &short_v, f.db, TEXT(f.keys), &tm.mem),
      IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_sealed_store_new(&s, raw, f.db, TEXT(""), &tm.mem),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(imc_sealed_store_new(&s, raw, f.db,
                                        TEXT("ka " HEX_A "\nka " HEX_B "\n"),
                                        &tm.mem),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(
      imc_sealed_store_new(&s, raw, f.db, TEXT("ka " HEX_A "00\n"), &tm.mem),
      IMC_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_null(s);
  ck_assert_int_eq(tm.live, 0);
  ck_assert_int_eq(imc_sealed_store_set_keys(NULL, TEXT(KEYS_A)),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_uint_eq(imc_sealed_store_failures(NULL), 0);
  imc_sealed_store_del(NULL);

  imc_msg m1 = mk("m1", 1, secret, strlen(secret));
  imc_msg nobody = mk("m2", 2, NULL, 3);
  imc_msg noid = m1;
  noid.msg_id = NULL;
  const imc_msg *ok[] = {&m1}, *bad1[] = {&nobody}, *bad2[] = {&noid},
                *bad3[] = {NULL};
  imc_inbox_entry e[] = {{"bob", &nobody}};
  ck_assert_int_eq(sv->append(f.s, ok, 1, NULL, 0, NULL, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(sv->append(f.s, NULL, 1, NULL, 0, never_done, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(sv->append(f.s, ok, 1, NULL, 1, never_done, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(sv->append(f.s, bad1, 1, NULL, 0, never_done, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(sv->append(f.s, bad2, 1, NULL, 0, never_done, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(sv->append(f.s, bad3, 1, NULL, 0, never_done, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(sv->append(f.s, ok, 1, e, 1, never_done, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(sv->fetch_history(f.s, CONV, 0, 10, NULL, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(sv->fetch_inbox(f.s, "bob", 0, 10, NULL, NULL),
                   IMC_ERR_INVALID_ARGUMENT);

  /* The inner store's refusals come back, and nothing leaks. */
  long live = f.tm.live;
  imc_msg noconv = mk("m3", 3, secret, strlen(secret));
  noconv.conversation_id = "";
  const imc_msg *bad4[] = {&noconv};
  ck_assert_int_eq(sv->append(f.s, bad4, 1, NULL, 0, never_done, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(sv->fetch_history(f.s, CONV, 0, 0, never_page, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(sv->fetch_inbox(f.s, "", 0, 10, never_page, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(sv->group_add(f.s, "", "bob", never_done, NULL),
                   IMC_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(f.tm.live, live);
  fx_fini(&f);
}
END_TEST

/*
 * Fail each allocation of the decorator in turn: every call either
 * refuses with IMC_ERR_NOMEM, completes with it, or works; nothing
 * leaks.
 */
START_TEST(alloc_failures) {
  imc_msg m1 = mk("m1", 1, secret, strlen(secret));
  imc_msg m2 = mk("m2", 2, binary, sizeof(binary));
  imc_msg m3 = mk("m3", 3, "", 0);
  const imc_msg *msgs[] = {&m1, &m2};
  imc_inbox_entry e[] = {{"bob", &m1}, {"bob", &m3}, {"carol", &m3}};
  int completed_nomem = 0;
  for (long fail = 0;; fail++) {
    fx f;
    fx_init(&f, KEYS_BA, _i, NULL);
    fx_close_sealed(&f); /* reopened under the failing allocator */
    test_mem_init(&f.tm);
    f.tm.fail_at = fail;
    int rv = imc_sealed_store_new(&f.s, fx_inner_vtbl(&f), fx_inner_ud(&f),
                                  TEXT(f.keys), &f.tm.mem);
    if (rv < 0) {
      ck_assert_int_eq(rv, IMC_ERR_NOMEM);
      ck_assert_int_eq(f.tm.live, 0);
      fx_close_inner(&f);
      remove_db(f.db_path);
      continue;
    }
    rv = append(&f, msgs, 2, e, 3);
    ck_assert(rv == 0 || rv == IMC_ERR_NOMEM);
    int stored = rv == 0;
    got g;
    rv = history(&f, &g);
    ck_assert(rv == 0 || rv == IMC_ERR_NOMEM);
    if (g.calls && rv == IMC_ERR_NOMEM)
      completed_nomem = 1;
    if (rv == 0) {
      ck_assert_uint_eq(g.n, stored ? 3 : 0);
      if (stored) {
        assert_body(&g, 0, secret, strlen(secret));
        assert_body(&g, 1, binary, sizeof(binary));
        assert_body(&g, 2, "", 0);
      }
    }
    got_free(&g);
    rv = imc_sealed_store_set_keys(f.s, TEXT(f.keys));
    ck_assert(rv == 0 || rv == IMC_ERR_NOMEM);
    rv = inbox(&f, "carol", &g);
    ck_assert(rv == 0 || rv == IMC_ERR_NOMEM);
    if (rv == 0 && stored)
      assert_body(&g, 0, "", 0);
    got_free(&g);
    long count = f.tm.count;
    fx_fini(&f);
    if (count <= fail)
      break; /* this round failed nothing: every allocation was covered */
  }
  ck_assert_int_eq(completed_nomem, 1);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Conformance: the decorator is a store like any other                 */
/* ------------------------------------------------------------------ */

static fx conf_sync, conf_async;

static void *cf_create(void *ctx, const imc_clock *clock) {
  fx *f = ctx;
  fx_init(f, KEYS_A, f == &conf_async, clock);
  return f->s;
}

static void cf_destroy(void *ctx, void *ud) {
  fx *f = ctx;
  ck_assert_ptr_eq(ud, f->s);
  fx_fini(f);
}

static void *cf_reopen(void *ctx, void *ud) {
  fx *f = ctx;
  ck_assert_ptr_eq(ud, f->s);
  fx_close_sealed(f);
  fx_close_inner(f);
  fx_open_inner(f);
  fx_open_sealed(f);
  return f->s;
}

static int cf_dispatch(void *ctx, void *ud) {
  fx *f = ctx;
  (void)ud;
  return f->sh ? shim_dispatch(f->sh) : 0;
}

static conformance_factory factory_sync = {
    .name = "sealed-sqlite",
    .ctx = &conf_sync,
    .create = cf_create,
    .destroy = cf_destroy,
    .reopen = cf_reopen,
};

static conformance_factory factory_async = {
    .name = "sealed-async",
    .ctx = &conf_async,
    .create = cf_create,
    .destroy = cf_destroy,
    .reopen = cf_reopen,
    .dispatch = cf_dispatch,
};

/* ------------------------------------------------------------------ */

/* Tests looped over _i: 0 wraps SQLite directly, 1 behind the shim. */
static Suite *sealed_suite(void) {
  Suite *s = suite_create("sealed_store");
  TCase *tc = tcase_create("sealed_store");
  tcase_set_timeout(tc, 60);
  tcase_add_loop_test(tc, round_trip, 0, 2);
  tcase_add_loop_test(tc, large_body, 0, 2);
  tcase_add_test(tc, ciphertext_at_rest);
  tcase_add_test(tc, shared_message_sealed_once);
  tcase_add_loop_test(tc, rotation, 0, 2);
  tcase_add_loop_test(tc, unknown_key, 0, 2);
  tcase_add_loop_test(tc, tampered_row, 0, 2);
  tcase_add_loop_test(tc, legacy_plaintext_rows, 0, 2);
  tcase_add_test(tc, async_completions);
  tcase_add_loop_test(tc, delete_from_completion, 0, 2);
  tcase_add_loop_test(tc, bad_arguments, 0, 2);
  tcase_add_loop_test(tc, alloc_failures, 0, 2);
  suite_add_tcase(s, tc);
  return s;
}

static void rm_tmpdir(void) {
  DIR *d = opendir(tmpdir);
  if (d == NULL)
    return;
  struct dirent *de;
  char p[600];
  while ((de = readdir(d)) != NULL) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
      continue;
    snprintf(p, sizeof(p), "%s/%s", tmpdir, de->d_name);
    unlink(p);
  }
  closedir(d);
  rmdir(tmpdir);
}

int main(void) {
  const char *base = getenv("TMPDIR");
  snprintf(tmpdir, sizeof(tmpdir), "%s/imc-sealed-XXXXXX",
           base && *base ? base : "/tmp");
  if (mkdtemp(tmpdir) == NULL) {
    perror("mkdtemp");
    return 1;
  }
  fill_binary();
  sv = imc_sealed_store_vtbl();
  raw = imc_sqlite_store_vtbl();
  factory_sync.store = factory_async.store = sv;

  SRunner *sr = srunner_create(sealed_suite());
  srunner_add_suite(sr, conformance_store_suite(&factory_sync));
  srunner_add_suite(sr, conformance_store_suite(&factory_async));
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  rm_tmpdir();
  return failed == 0 ? 0 : 1;
}
