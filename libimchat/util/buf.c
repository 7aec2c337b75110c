#include "util/buf.h"
#include "util/alloc.h"

#include <string.h>

/* Small frames are copied into shared chunks of this size; a larger
 * write gets a chunk of its own. */
#define CHUNK_SIZE 4096

struct imc_chunk {
  imc_chunk *next;
  size_t start; /* first unwritten byte */
  size_t end;   /* end of the data */
  size_t cap;
  uint8_t data[];
};

int imc_bufq_append(imc_bufq *q, const imc_mem *m, const void *data,
                    size_t len) {
  if (len == 0)
    return 0;
  imc_chunk *t = q->tail;
  if (t != NULL && t->cap - t->end >= len) {
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
  c->start = 0;
  c->end = len;
  c->cap = cap;
  memcpy(c->data, data, len);
  if (t != NULL)
    t->next = c;
  else
    q->head = c;
  q->tail = c;
  q->len += len;
  return 0;
}

int imc_bufq_iov(const imc_bufq *q, struct iovec *iov, int max) {
  int n = 0;
  for (imc_chunk *c = q->head; c != NULL && n < max; c = c->next) {
    iov[n].iov_base = c->data + c->start;
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
    imc_free(m, c);
  }
  /* Reuse an emptied last chunk from its start. */
  if (q->head != NULL && q->head->start == q->head->end)
    q->head->start = q->head->end = 0;
}

void imc_bufq_free(imc_bufq *q, const imc_mem *m) {
  imc_chunk *c = q->head;
  while (c != NULL) {
    imc_chunk *next = c->next;
    imc_free(m, c);
    c = next;
  }
  q->head = q->tail = NULL;
  q->len = 0;
}
