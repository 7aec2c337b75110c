#include "util/msg.h"

#include "util/alloc.h"
#include "util/vtbl.h"

#include <string.h>

#define N_STRINGS 9

static void strings_of(const imc_msg *m, const char *s[N_STRINGS]) {
  const char *v[N_STRINGS] = {
      m->msg_id,        m->conversation_id, m->from_user,
      m->to_user,       m->group_id,        m->content_type,
      m->client_msg_id, m->from_device,     m->from_node};
  for (int i = 0; i < N_STRINGS; i++)
    s[i] = v[i] ? v[i] : "";
}

const imc_msg *imc_msg_view(imc_msg *view, const imc_msg *m) {
  if (m == NULL)
    return NULL;
  imc_vtbl_copy(view, sizeof(*view), m, m->struct_size);
  view->struct_size = sizeof(*view);
  const char *s[N_STRINGS];
  strings_of(view, s);
  const char **d[N_STRINGS] = {
      &view->msg_id,        &view->conversation_id, &view->from_user,
      &view->to_user,       &view->group_id,        &view->content_type,
      &view->client_msg_id, &view->from_device,     &view->from_node};
  for (int i = 0; i < N_STRINGS; i++)
    *d[i] = s[i];
  if (view->body == NULL)
    view->body_len = 0;
  return view;
}

size_t imc_msg_data_size(const imc_msg *m) {
  imc_msg v;
  m = imc_msg_view(&v, m);
  const char *s[N_STRINGS];
  strings_of(m, s);
  size_t n = m->body_len;
  for (int i = 0; i < N_STRINGS; i++)
    n += strlen(s[i]) + 1;
  return n;
}

void imc_msg_copy(imc_msg *dst, char *buf, const imc_msg *m) {
  imc_msg v;
  m = imc_msg_view(&v, m);
  const char *s[N_STRINGS];
  strings_of(m, s);
  *dst = *m;
  const char **d[N_STRINGS] = {
      &dst->msg_id,        &dst->conversation_id, &dst->from_user,
      &dst->to_user,       &dst->group_id,        &dst->content_type,
      &dst->client_msg_id, &dst->from_device,     &dst->from_node};
  for (int i = 0; i < N_STRINGS; i++) {
    size_t l = strlen(s[i]) + 1;
    memcpy(buf, s[i], l);
    *d[i] = buf;
    buf += l;
  }
  if (m->body_len)
    memcpy(buf, m->body, m->body_len);
  dst->body = (const uint8_t *)buf;
}

imc_msg *imc_msg_dup(const imc_mem *mem, const imc_msg *m) {
  imc_msg *d = imc_malloc(mem, sizeof(*d) + imc_msg_data_size(m));
  if (d != NULL)
    imc_msg_copy(d, (char *)(d + 1), m);
  return d;
}
