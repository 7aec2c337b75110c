/*
 * libimchat-server inside the tree: imchatd hands over the configuration
 * it already parsed (it needs the mode first: serve, token, help).
 *
 * hosts/server/server.c builds the objects and runs them (imchat/server.h);
 * the flags and the config file are imchatd's (hosts/imchatd/config.h),
 * the loop, storage thread, static files and log are hosts/common's.
 */
#ifndef IMC_HOST_SERVER_INT_H
#define IMC_HOST_SERVER_INT_H

#include "config.h"

#include <imchat/server.h>

/*
 * imc_server_new on a loaded configuration (mode IMCHATD_SERVE), which it
 * takes over: cfg is left empty whatever happens. Same returns.
 */
int hserver_new(imc_server **out, imchatd_config *cfg, char *err,
                size_t errcap);

#endif
