/* Deep copies of imc_msg: the message and everything it points to. */
#ifndef IMC_MSG_H
#define IMC_MSG_H

#include <imchat/backend.h>

/*
 * m as this build of the library sees it: members past m->struct_size
 * absent (0), NULL strings "", struct_size our own sizeof. The strings
 * still point into m. Returns view, or NULL when m is NULL.
 */
const imc_msg *imc_msg_view(imc_msg *view, const imc_msg *m);

/* Bytes the strings and body of m take in a copy (NULL strings count as
 * ""). */
size_t imc_msg_data_size(const imc_msg *m);

/* Copies m into dst, its strings and body into buf, which holds
 * imc_msg_data_size(m) bytes. */
void imc_msg_copy(imc_msg *dst, char *buf, const imc_msg *m);

/* A copy of m in one allocation (free it with imc_free), or NULL. */
imc_msg *imc_msg_dup(const imc_mem *mem, const imc_msg *m);

#endif /* IMC_MSG_H */
