/*
 * A queue of outbound bytes: a chain of chunks allocated as bytes arrive
 * and freed as they are written, so an idle connection holds none.
 */
#ifndef IMC_BUF_H
#define IMC_BUF_H

#include <imchat/common.h>

#include <sys/uio.h>

typedef struct imc_chunk imc_chunk;

typedef struct imc_bufq {
  imc_chunk *head;
  imc_chunk *tail;
  size_t len; /* bytes queued */
} imc_bufq;

/* Copies len bytes to the end. Returns 0 or IMC_ERR_NOMEM (nothing
 * queued then). */
int imc_bufq_append(imc_bufq *q, const imc_mem *m, const void *data,
                    size_t len);

/* Fills at most max iovecs with the queued bytes; returns how many. */
int imc_bufq_iov(const imc_bufq *q, struct iovec *iov, int max);

/* Drops the first n bytes (n <= q->len). */
void imc_bufq_consume(imc_bufq *q, const imc_mem *m, size_t n);

void imc_bufq_free(imc_bufq *q, const imc_mem *m);

#endif /* IMC_BUF_H */
