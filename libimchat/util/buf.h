/*
 * A queue of outbound bytes: a chain of chunks allocated as bytes arrive
 * and freed as they are written, so an idle connection holds none.
 *
 * Bytes that many queues send alike (one Deliver frame to every member
 * of a group) are queued by reference instead: an imc_shared block is
 * reference-counted, each queue holding it takes a reference, and the
 * block is freed when the last queue has written it.
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

/* Reference-counted bytes; create with one reference. */
typedef struct imc_shared {
  uint32_t refs;
  size_t len;
  uint8_t data[];
} imc_shared;

/* A block of len bytes (to be filled) with one reference, or NULL. */
imc_shared *imc_shared_new(const imc_mem *m, size_t len);
/* Drops one reference; the last one frees the block. */
void imc_shared_unref(const imc_mem *m, imc_shared *s);

/* Copies len bytes to the end. Returns 0 or IMC_ERR_NOMEM (nothing
 * queued then). */
int imc_bufq_append(imc_bufq *q, const imc_mem *m, const void *data,
                    size_t len);

/* Queues the bytes of s by reference (s gains a reference). Returns 0 or
 * IMC_ERR_NOMEM (nothing queued then). */
int imc_bufq_append_shared(imc_bufq *q, const imc_mem *m, imc_shared *s);

/* Fills at most max iovecs with the queued bytes; returns how many. */
int imc_bufq_iov(const imc_bufq *q, struct iovec *iov, int max);

/* Drops the first n bytes (n <= q->len). */
void imc_bufq_consume(imc_bufq *q, const imc_mem *m, size_t n);

void imc_bufq_free(imc_bufq *q, const imc_mem *m);

#endif /* IMC_BUF_H */
