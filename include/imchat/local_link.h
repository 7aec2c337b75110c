/* imchat - the gateway link for a gateway in the router's process. */
#ifndef IMCHAT_LOCAL_LINK_H
#define IMCHAT_LOCAL_LINK_H

#include <imchat/router.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A gateway link to the one gateway of this process (imchatd): its ud is
 * the imc_gateway. Pushes for other nodes reach no device (count 0).
 */
IMC_EXTERN const imc_gwlink_vtbl *imc_gateway_local_link(void);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_LOCAL_LINK_H */
