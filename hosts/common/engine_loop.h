/*
 * The engines' view of the hosts' epoll loop: an imc_loop (see
 * <imchat/engines/common.h>) on an hloop. fd watches map to hloop
 * watches; timers live in a list ordered by deadline, run from one loop
 * hook whose next_timeout_ms is the earliest deadline.
 *
 * Single-threaded, like the loop. Delete it after the engines using it
 * and before the loop.
 */
#ifndef IMC_HOST_ENGINE_LOOP_H
#define IMC_HOST_ENGINE_LOOP_H

#include "loop.h"

#include <imchat/engines/common.h>

typedef struct hengine_loop hengine_loop;

/* Returns 0 or a negative errno value. */
int hengine_loop_new(hloop *l, hengine_loop **out);

/* Stops every watch and timer still registered. */
void hengine_loop_del(hengine_loop *el);

/* The imc_loop to give an engine; valid until hengine_loop_del. */
const imc_loop *hengine_loop_get(hengine_loop *el);

#endif
