#include "util/buf.h"
#include "util/alloc.h"

#include <string.h>

/* Small frames are copied into shared chunks of this size; a larger
 * write gets a chunk of its own. */
#define CHUNK_SIZE 4096

struct imc_chunk {
  imc_chunk *next;
  imc_shared *sh; /* bytes held by reference, or NULL: data[] */
  size_t start;   /* first unwritten byte */
  size_t end;     /* end of the data */
  size_t cap;     /* 0 for a reference: nothing is appended to it */
  uint8_t data[];
};

static uint8_t *chunk_bytes(const imc_chunk *c) {
  return c->sh ? c->sh->data : (uint8_t *)c->data;
}

static void chunk_free(const imc_mem *m, imc_chunk *c) {
  if (c->sh)
    imc_shared_unref(m, c->sh);
  imc_free(m, c);
}

imc_shared *imc_shared_new(const imc_mem *m, size_t len) {
  imc_shared *s = imc_malloc(m, sizeof(*s) + (len ? len : 1));
  if (s == NULL)
    return NULL;
  s->refs = 1;
  s->len = len;
  return s;
}

void imc_shared_unref(const imc_mem *m, imc_shared *s) {
  if (s != NULL && --s->refs == 0)
    imc_free(m, s);
}

static void chunk_link(imc_bufq *q, imc_chunk *c) {
  if (q->tail != NULL)
    q->tail->next = c;
  else
    q->head = c;
  q->tail = c;
  q->len += c->end;
}

int imc_bufq_append_shared(imc_bufq *q, const imc_mem *m, imc_shared *s) {
  if (s->len == 0)
    return 0;
  imc_chunk *c = imc_malloc(m, sizeof(*c));
  if (c == NULL)
    return IMC_ERR_NOMEM;
  c->next = NULL;
  c->sh = s;
  s->refs++;
  c->start = 0;
  c->end = s->len;
  c->cap = 0;
  chunk_link(q, c);
  return 0;
}

int imc_bufq_append(imc_bufq *q, const imc_mem *m, const void *data,
                    size_t len) {
  if (len == 0)
    return 0;
  imc_chunk *t = q->tail;
  if (t != NULL && t->sh == NULL && t->cap - t->end >= len) {
    memcpy(t->data + t->end, data, len);
    t->end += len;
    q->len += len;
    return 0;
  }
  size_t cap = len > CHUNK_SIZE ? len : CHUNK_SIZE;
  imc_chunk *c = imc_malloc(m, sizeof(*c) + cap);
  if (c == NULL)
    return IMC_ERR_NOMEM;
  c->next = NULL;
  c->sh = NULL;
  c->start = 0;
  c->end = len;
  c->cap = cap;
  memcpy(c->data, data, len);
  chunk_link(q, c);
  return 0;
}

int imc_bufq_iov(const imc_bufq *q, struct iovec *iov, int max) {
  int n = 0;
  for (imc_chunk *c = q->head; c != NULL && n < max; c = c->next) {
    iov[n].iov_base = chunk_bytes(c) + c->start;
    iov[n].iov_len = c->end - c->start;
    n++;
  }
  return n;
}

void imc_bufq_consume(imc_bufq *q, const imc_mem *m, size_t n) {
  q->len -= n;
  while (n > 0) {
    imc_chunk *c = q->head;
    size_t avail = c->end - c->start;
    if (n < avail) {
      c->start += n;
      return;
    }
    n -= avail;
    q->head = c->next;
    if (q->head == NULL)
      q->tail = NULL;
    chunk_free(m, c);
  }
  /* Reuse an emptied last chunk from its start. */
  if (q->head != NULL && q->head->sh == NULL && q->head->start == q->head->end)
    q->head->start = q->head->end = 0;
}

void imc_bufq_free(imc_bufq *q, const imc_mem *m) {
  imc_chunk *c = q->head;
  while (c != NULL) {
    imc_chunk *next = c->next;
    chunk_free(m, c);
    c = next;
  }
  q->head = q->tail = NULL;
  q->len = 0;
}
