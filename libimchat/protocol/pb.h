/* Glue between protobuf-c and the library: allocator, message views. */
#ifndef IMC_PB_H
#define IMC_PB_H

#include <imchat/backend.h>

#include "im.pb-c.h"

/* A protobuf-c allocator that allocates through m. */
void imc_pb_allocator(ProtobufCAllocator *a, const imc_mem *m);

/*
 * Points the fields of pm at those of m (no copy): pm lives no longer
 * than m. Empty strings are left at protobuf-c's defaults.
 */
void imc_pb_from_msg(Imchat__V1__Message *pm, const imc_msg *m);

/* The reverse view: m borrows from pm. */
void imc_msg_from_pb(imc_msg *m, const Imchat__V1__Message *pm);

/*
 * Packs a ServerFrame into a buffer allocated from mem (freed by the
 * caller with imc_free). Returns 0 or IMC_ERR_NOMEM.
 */
int imc_pb_pack_server_frame(const Imchat__V1__ServerFrame *f,
                             const imc_mem *mem, uint8_t **out,
                             size_t *out_len);

#endif /* IMC_PB_H */
