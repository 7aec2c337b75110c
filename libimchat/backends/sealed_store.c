/*
 * Encryption at rest for any store: a decorator of imc_store_vtbl that
 * seals message bodies on append and opens them on fetch (seal.h), so
 * every backend stores ciphertext and no backend knows about keys.
 *
 * append seals each distinct imc_msg once, hands the inner store sealed
 * copies and passes the caller's completion through untouched: the
 * copies are borrowed for the duration of the inner call only (backend.h),
 * so nothing outlives it. fetch_inbox and fetch_history need a per-call
 * context, since the page is opened in a completion that may run after
 * the call has returned. purge and the group operations do not touch
 * bodies and are forwarded as they are.
 *
 * The keys come from the host as key-file text (new and set_keys); the
 * keyring in use when a completion runs opens the page, so new keys
 * between a fetch and its completion are harmless.
 */
#include "util/alloc.h"
#include "backends/seal.h"
#include "util/vtbl.h"

#include <imchat/sealed_store.h>

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

struct imc_sealed_store {
  imc_sealer base;      /* first: allocator, keyring, failures to open */
  imc_store_vtbl inner; /* copied: members past its struct_size are NULL */
  void *inner_ud;
};

/* ------------------------------------------------------------------ */
/* Lifecycle                                                            */
/* ------------------------------------------------------------------ */

int imc_sealed_store_new(imc_sealed_store **out, const imc_store_vtbl *inner,
                         void *inner_ud, const uint8_t *keys, size_t len,
                         const imc_mem *mem) {
  if (out == NULL || inner == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  imc_store_vtbl v;
  imc_vtbl_copy(&v, sizeof(v), inner, inner->struct_size);
  /* Every member is checked here so that no call has to report an absent
   * one later. */
  if (v.append == NULL || v.fetch_inbox == NULL || v.fetch_history == NULL ||
      v.purge == NULL || v.group_add == NULL || v.group_remove == NULL ||
      v.group_members == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  void *obj;
  int rv = imc_sealer_new(&obj, sizeof(imc_sealed_store), keys, len, mem);
  if (rv != 0)
    return rv;
  imc_sealed_store *s = obj;
  s->inner = v;
  s->inner_ud = inner_ud;
  *out = s;
  return 0;
}

int imc_sealed_store_set_keys(imc_sealed_store *s, const uint8_t *keys,
                              size_t len) {
  return imc_sealer_set_keys(s ? &s->base : NULL, keys, len);
}

void imc_sealed_store_del(imc_sealed_store *s) {
  if (s != NULL)
    imc_sealer_del(&s->base);
}

uint64_t imc_sealed_store_failures(const imc_sealed_store *s) {
  return s == NULL ? 0 : s->base.failures;
}

/* ------------------------------------------------------------------ */
/* Append: seal, then hand over                                         */
/* ------------------------------------------------------------------ */

/* A message referenced by the append, and its sealed copy. */
typedef struct slot {
  const imc_msg *orig;
  imc_msg sealed;
} slot;

static int msg_sealable(const imc_msg *m) {
  return m != NULL && m->msg_id != NULL && (m->body != NULL || !m->body_len);
}

static int slot_cmp(const void *a, const void *b) {
  uintptr_t x = (uintptr_t)((const slot *)a)->orig;
  uintptr_t y = (uintptr_t)((const slot *)b)->orig;
  return (x > y) - (x < y);
}

/* The sealed copy of m among the n sorted, distinct slots. */
static const imc_msg *sealed_of(const slot *slots, size_t n, const imc_msg *m) {
  slot key = {.orig = m};
  const slot *hit = bsearch(&key, slots, n, sizeof(*slots), slot_cmp);
  return &hit->sealed; /* every m was put into slots */
}

/*
 * Sorts the n slots by message, drops repeats and seals each remaining
 * body into *buf (allocated here; the caller frees it even on error).
 * Sets *n_distinct.
 */
static int seal_slots(imc_sealed_store *s, slot *slots, size_t n,
                      size_t *n_distinct, uint8_t **buf) {
  qsort(slots, n, sizeof(*slots), slot_cmp);
  size_t d = 0;
  for (size_t i = 0; i < n; i++)
    if (d == 0 || slots[d - 1].orig != slots[i].orig)
      slots[d++] = slots[i];
  *n_distinct = d;

  size_t over = imc_seal_overhead(s->base.kr), total = 0;
  for (size_t i = 0; i < d; i++) {
    size_t len = slots[i].orig->body_len;
    if (len > SIZE_MAX - over || len + over > SIZE_MAX - total)
      return IMC_ERR_TOO_LARGE;
    total += len + over;
  }
  *buf = imc_malloc(&s->base.mem, total);
  if (*buf == NULL)
    return IMC_ERR_NOMEM;
  size_t off = 0;
  for (size_t i = 0; i < d; i++) {
    const imc_msg *m = slots[i].orig;
    size_t cap = m->body_len + over, len;
    /* The msg_id as AAD ties the body to its row. */
    int rv = imc_seal(s->base.kr, m->body, m->body_len, *buf + off, cap, &len,
                      (const uint8_t *)m->msg_id, strlen(m->msg_id));
    if (rv < 0)
      return rv;
    slots[i].sealed = *m;
    slots[i].sealed.body = *buf + off;
    slots[i].sealed.body_len = len;
    off += cap;
  }
  return 0;
}

static int sealed_append(void *ud, const imc_msg *const *msgs, size_t n_msgs,
                         const imc_inbox_entry *entries, size_t n_entries,
                         imc_done_cb done, void *done_ud) {
  imc_sealed_store *s = ud;
  if ((n_msgs && msgs == NULL) || (n_entries && entries == NULL) ||
      done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  for (size_t i = 0; i < n_msgs; i++)
    if (!msg_sealable(msgs[i]))
      return IMC_ERR_INVALID_ARGUMENT;
  for (size_t i = 0; i < n_entries; i++)
    if (!msg_sealable(entries[i].msg))
      return IMC_ERR_INVALID_ARGUMENT;
  if (n_msgs == 0 && n_entries == 0)
    return s->inner.append(s->inner_ud, msgs, 0, entries, 0, done, done_ud);

  /* One block: a slot per reference, then the arrays handed inside. */
  const size_t per = sizeof(slot) + sizeof(imc_inbox_entry) + sizeof(void *);
  if (n_msgs > SIZE_MAX / per || n_entries > SIZE_MAX / per - n_msgs)
    return IMC_ERR_TOO_LARGE;
  size_t n_refs = n_msgs + n_entries;
  slot *slots = imc_malloc(&s->base.mem, n_refs * per);
  if (slots == NULL)
    return IMC_ERR_NOMEM;
  imc_inbox_entry *sealed_entries = (imc_inbox_entry *)(slots + n_refs);
  const imc_msg **sealed_msgs = (const imc_msg **)(sealed_entries + n_entries);
  for (size_t i = 0; i < n_msgs; i++)
    slots[i].orig = msgs[i];
  for (size_t i = 0; i < n_entries; i++)
    slots[n_msgs + i].orig = entries[i].msg;

  /* Sealing by pointer, once, keeps a message that is both in msgs and
   * behind entries (or behind many entries of a fan-out) one ciphertext. */
  size_t n_distinct;
  uint8_t *buf = NULL;
  int rv = seal_slots(s, slots, n_refs, &n_distinct, &buf);
  if (rv == 0) {
    for (size_t i = 0; i < n_msgs; i++)
      sealed_msgs[i] = sealed_of(slots, n_distinct, msgs[i]);
    for (size_t i = 0; i < n_entries; i++) {
      sealed_entries[i].user_id = entries[i].user_id;
      sealed_entries[i].msg = sealed_of(slots, n_distinct, entries[i].msg);
    }
    /* mem is copied: an inline completion may delete s. */
    imc_mem mem = s->base.mem;
    rv = s->inner.append(s->inner_ud, sealed_msgs, n_msgs, sealed_entries,
                         n_entries, done, done_ud);
    imc_free(&mem, buf);
    imc_free(&mem, slots);
    return rv;
  }
  imc_free(&s->base.mem, buf);
  imc_free(&s->base.mem, slots);
  return rv;
}

/* ------------------------------------------------------------------ */
/* Fetch: open in the completion                                        */
/* ------------------------------------------------------------------ */

typedef struct fetch_ctx {
  imc_sealed_store *s;
  imc_fetch_cb done;
  void *done_ud;
} fetch_ctx;

/*
 * Rows written before encryption was enabled hold plaintext. A body that
 * does not frame as an envelope (wrong version byte, bad key id, too
 * short) is taken to be such a row and passed through, so a store can be
 * switched to sealing without a migration. A body that frames as an
 * envelope but does not open is an error, never plaintext: otherwise
 * flipping a byte of the tag would turn a sealed row into garbage served
 * as a message. The price is that a legacy body that happens to frame as
 * an envelope (first byte 1, then a valid key id) cannot be read, and
 * that legacy rows have no integrity protection.
 */
static int is_envelope(const imc_msg *m) {
  char id[IMC_SEAL_KEY_ID_MAX + 1];
  return m->body != NULL && imc_sealed_key_id(m->body, m->body_len, id) == 0;
}

/* A page opened into one block: n imc_msg copies, pointers to them, then
 * the plaintexts (wiped before the block is freed). */
typedef struct opened {
  imc_msg *copies;
  const imc_msg **msgs;
  uint8_t *pt;
  size_t pt_len;
} opened;

/*
 * Opens the n messages into pg. Strings other than the body still point
 * into the inner page, which stays valid while the completion runs.
 */
static int open_page(imc_sealed_store *s, const imc_msg *const *msgs, size_t n,
                     opened *pg) {
  const size_t per = sizeof(imc_msg) + sizeof(void *);
  size_t cap = 0;
  for (size_t i = 0; i < n; i++)
    if (is_envelope(msgs[i])) /* a plaintext is shorter than its envelope */
      cap += msgs[i]->body_len;
  if (n > (SIZE_MAX - cap) / per)
    return IMC_ERR_NOMEM;
  pg->copies = imc_malloc(&s->base.mem, n * per + cap);
  if (pg->copies == NULL)
    return IMC_ERR_NOMEM;
  pg->msgs = (const imc_msg **)(pg->copies + n);
  pg->pt = (uint8_t *)(pg->msgs + n);
  pg->pt_len = 0;
  int rv = 0;
  for (size_t i = 0; i < n && rv == 0; i++) {
    const imc_msg *m = msgs[i];
    imc_msg *c = &pg->copies[i];
    *c = *m;
    pg->msgs[i] = c;
    if (!is_envelope(m))
      continue;
    uint8_t *out = pg->pt + pg->pt_len;
    size_t len;
    rv = imc_open(s->base.kr, m->body, m->body_len, out, cap - pg->pt_len, &len,
                  (const uint8_t *)m->msg_id, strlen(m->msg_id));
    if (rv == IMC_ERR_NOT_FOUND || rv == IMC_ERR_PROTO) {
      s->base.failures++; /* unknown key, tampered or moved row */
      rv = IMC_ERR_IO;
    } else if (rv < 0 && rv != IMC_ERR_NOMEM && rv != IMC_ERR_UNAVAILABLE) {
      rv = IMC_ERR_IO;
    } else if (rv == 0) {
      c->body = out;
      c->body_len = len;
      pg->pt_len += len;
    }
  }
  if (rv < 0) {
    OPENSSL_cleanse(pg->pt, pg->pt_len);
    imc_free(&s->base.mem, pg->copies);
  }
  return rv;
}

static void on_fetch(void *done_ud, int status, const imc_msg *const *msgs,
                     const uint64_t *cursors, size_t n, int has_more) {
  fetch_ctx c = *(fetch_ctx *)done_ud;
  imc_sealed_store *s = c.s;
  /* Copied: the caller's completion may delete s. */
  imc_mem mem = s->base.mem;
  imc_free(&mem, done_ud);
  if (status < 0 || n == 0) {
    c.done(c.done_ud, status, msgs, cursors, n, has_more);
    return;
  }
  opened pg;
  int rv = open_page(s, msgs, n, &pg);
  if (rv < 0) {
    c.done(c.done_ud, rv, NULL, NULL, 0, 0);
    return;
  }
  c.done(c.done_ud, 0, pg.msgs, cursors, n, has_more);
  /* Decrypted bodies do not linger in freed memory. */
  OPENSSL_cleanse(pg.pt, pg.pt_len);
  imc_free(&mem, pg.copies);
}

/* Allocates the context of one fetch, or NULL. */
static fetch_ctx *fetch_ctx_new(imc_sealed_store *s, imc_fetch_cb done,
                                void *done_ud) {
  fetch_ctx *c = imc_malloc(&s->base.mem, sizeof(*c));
  if (c != NULL) {
    c->s = s;
    c->done = done;
    c->done_ud = done_ud;
  }
  return c;
}

static int sealed_fetch_inbox(void *ud, const char *user_id, uint64_t after,
                              uint32_t limit, imc_fetch_cb done,
                              void *done_ud) {
  imc_sealed_store *s = ud;
  if (done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  fetch_ctx *c = fetch_ctx_new(s, done, done_ud);
  if (c == NULL)
    return IMC_ERR_NOMEM;
  imc_mem mem = s->base.mem;
  int rv =
      s->inner.fetch_inbox(s->inner_ud, user_id, after, limit, on_fetch, c);
  if (rv < 0)
    imc_free(&mem, c); /* the inner store never calls on_fetch then */
  return rv;
}

static int sealed_fetch_history(void *ud, const char *conversation_id,
                                uint64_t after_seq, uint32_t limit,
                                imc_fetch_cb done, void *done_ud) {
  imc_sealed_store *s = ud;
  if (done == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  fetch_ctx *c = fetch_ctx_new(s, done, done_ud);
  if (c == NULL)
    return IMC_ERR_NOMEM;
  imc_mem mem = s->base.mem;
  int rv = s->inner.fetch_history(s->inner_ud, conversation_id, after_seq,
                                  limit, on_fetch, c);
  if (rv < 0)
    imc_free(&mem, c);
  return rv;
}

/* ------------------------------------------------------------------ */
/* Forwarded as they are                                                */
/* ------------------------------------------------------------------ */

static int sealed_purge(void *ud, int64_t before_ms, imc_done_cb done,
                        void *done_ud) {
  imc_sealed_store *s = ud;
  return s->inner.purge(s->inner_ud, before_ms, done, done_ud);
}

static int sealed_group_add(void *ud, const char *group_id, const char *user_id,
                            imc_done_cb done, void *done_ud) {
  imc_sealed_store *s = ud;
  return s->inner.group_add(s->inner_ud, group_id, user_id, done, done_ud);
}

static int sealed_group_remove(void *ud, const char *group_id,
                               const char *user_id, imc_done_cb done,
                               void *done_ud) {
  imc_sealed_store *s = ud;
  return s->inner.group_remove(s->inner_ud, group_id, user_id, done, done_ud);
}

static int sealed_group_members(void *ud, const char *group_id,
                                imc_list_cb done, void *done_ud) {
  imc_sealed_store *s = ud;
  return s->inner.group_members(s->inner_ud, group_id, done, done_ud);
}

static const imc_store_vtbl sealed_vtbl = {
    .struct_size = sizeof(imc_store_vtbl),
    .append = sealed_append,
    .fetch_inbox = sealed_fetch_inbox,
    .fetch_history = sealed_fetch_history,
    .purge = sealed_purge,
    .group_add = sealed_group_add,
    .group_remove = sealed_group_remove,
    .group_members = sealed_group_members,
};

const imc_store_vtbl *imc_sealed_store_vtbl(void) {
  return &sealed_vtbl;
}

void imc_sealed_store_set_user_data(imc_sealed_store *s, void *ud) {
  s->base.user_data = ud;
}

void *imc_sealed_store_get_user_data(const imc_sealed_store *s) {
  return s->base.user_data;
}
