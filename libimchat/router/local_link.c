/* The router's gateway link when router and gateway share a process. */
#include <imchat/router.h>
#include <imchat/local_link.h>

#include <string.h>

static int same_node(imc_gateway *gw, const char *node_id) {
  const char *mine = imc_gateway_get_node_id(gw);
  return mine != NULL && strcmp(mine, node_id) == 0;
}

static int link_deliver(void *ud, const char *node_id, const char *user_id,
                        const char *skip_device, const imc_msg *msg,
                        imc_count_cb done, void *done_ud) {
  imc_gateway *gw = ud;
  int n = same_node(gw, node_id)
              ? imc_gateway_deliver(gw, user_id, skip_device, msg)
              : 0;
  if (n == IMC_ERR_INVALID_ARGUMENT)
    return n;
  done(done_ud, n < 0 ? n : 0, n < 0 ? 0 : n);
  return 0;
}

static int link_status(void *ud, const char *node_id, const char *user_id,
                       const char *device_id, const char *msg_id,
                       const char *client_msg_id, imc_delivery_state state,
                       const char *recipient, imc_done_cb done, void *done_ud) {
  imc_gateway *gw = ud;
  int n = same_node(gw, node_id)
              ? imc_gateway_push_status(gw, user_id, device_id, msg_id,
                                        client_msg_id, state, recipient)
              : 0;
  if (n == IMC_ERR_INVALID_ARGUMENT)
    return n;
  done(done_ud, n < 0 ? n : 0);
  return 0;
}

static const imc_gwlink_vtbl local_link = {sizeof(imc_gwlink_vtbl),
                                           link_deliver, link_status};

const imc_gwlink_vtbl *imc_gateway_local_link(void) {
  return &local_link;
}
