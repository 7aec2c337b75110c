"""The C declarations cffi reads, one block per header they come from.

Every block repeats declarations of its header token for token (IMC_EXTERN
left out: it expands to nothing outside the library's own build), and every
#define names a macro of that header with the same value. tests/test_cdef.py
checks that against the headers as the C preprocessor sees them, so a
declaration changed, or a member or error code added, in include/imchat/
fails the test instead of drifting. Only what the binding uses is declared.

HEADERS are libimchat's; SERVER_HEADERS those of libimchat-server, a
separate library that only imchat.Server loads.
"""

HEADERS = [
    ("sys/uio.h", """
struct iovec
{
  void *iov_base;
  size_t iov_len;
};
"""),
    ("imchat/common.h", """
typedef enum imc_error {
  IMC_OK = 0,
  IMC_ERR_INVALID_ARGUMENT = -501,
  IMC_ERR_NOMEM = -502,
  IMC_ERR_WOULDBLOCK = -503,
  IMC_ERR_PROTO = -504,
  IMC_ERR_INCOMPLETE = -505,
  IMC_ERR_TOO_LARGE = -506,
  IMC_ERR_NOT_FOUND = -507,
  IMC_ERR_AUTH = -508,
  IMC_ERR_EXPIRED = -509,
  IMC_ERR_FORBIDDEN = -510,
  IMC_ERR_UNAVAILABLE = -511,
  IMC_ERR_CLOSED = -512,
  IMC_ERR_QUEUE_FULL = -513,
  IMC_ERR_RATE_LIMITED = -514,
  IMC_ERR_BLOCKED = -515,
  IMC_ERR_IO = -516,
  IMC_ERR_EXISTS = -517,
  IMC_ERR_REVOKED = -518,
  IMC_ERR_FATAL = -900,
  IMC_ERR_CALLBACK_FAILURE = -901,
  IMC_ERR_INTERNAL = -902
} imc_error;

const char *imc_strerror(int rv);
int imc_err_is_fatal(int rv);
const char *imc_version(void);

typedef struct imc_mem {
  void *ud;
  void *(*malloc)(size_t size, void *ud);
  void (*free)(void *ptr, void *ud);
  void *(*calloc)(size_t nmemb, size_t size, void *ud);
  void *(*realloc)(void *ptr, size_t size, void *ud);
} imc_mem;

typedef enum imc_log_level {
  IMC_LOG_ERROR = 0,
  IMC_LOG_WARN = 1,
  IMC_LOG_INFO = 2,
  IMC_LOG_DEBUG = 3
} imc_log_level;

typedef void (*imc_log_cb)(void *ud, imc_log_level level, const char *line);
"""),
    ("imchat/backend.h", """
typedef struct imc_msg {
  uint32_t struct_size;
  const char *msg_id;
  const char *conversation_id;
  uint64_t seq;
  const char *from_user;
  const char *to_user;
  const char *group_id;
  const uint8_t *body;
  size_t body_len;
  const char *content_type;
  int64_t sent_at_ms;
  const char *client_msg_id;
  const char *from_device;
  const char *from_node;
  uint64_t from_conn_id;
} imc_msg;

typedef struct imc_transport_vtbl {
  uint32_t struct_size;
  ssize_t (*send)(void *ud, void *conn_ud, const struct iovec *iov,
                  int iovcnt);
  void (*close)(void *ud, void *conn_ud);
  void (*set_read)(void *ud, void *conn_ud, int enabled);
} imc_transport_vtbl;

typedef void (*imc_key_cb)(void *done_ud, int status, const char *alg,
                           const uint8_t *key, size_t key_len);

typedef struct imc_keysrc_vtbl {
  uint32_t struct_size;
  int (*lookup)(void *ud, const char *alg, const char *kid, imc_key_cb done,
                void *done_ud);
} imc_keysrc_vtbl;
"""),
    ("imchat/gateway.h", """
typedef struct imc_gateway imc_gateway;
typedef struct imc_gateway_options imc_gateway_options;
typedef struct imc_conn imc_conn;

int imc_gateway_options_new(imc_gateway_options **out,
                            const imc_mem *mem);
void imc_gateway_options_del(imc_gateway_options *opt);
int imc_gateway_options_set_transport(imc_gateway_options *opt,
                                      const imc_transport_vtbl *vt,
                                      void *ud);
int imc_gateway_options_set_keysrc(imc_gateway_options *opt,
                                   const imc_keysrc_vtbl *vt,
                                   void *ud);
int imc_gateway_new(imc_gateway **out,
                    const imc_gateway_options *opt,
                    const imc_mem *mem);
void imc_gateway_del(imc_gateway *gw);
int imc_gateway_conn_new(imc_gateway *gw, imc_conn **out,
                         void *conn_ud);
int imc_gateway_conn_recv(imc_gateway *gw, imc_conn *c,
                          const uint8_t *data, size_t len);
void imc_gateway_conn_closed(imc_gateway *gw, imc_conn *c);
int imc_gateway_flush(imc_gateway *gw);
size_t imc_gateway_pending(const imc_gateway *gw);

typedef enum imc_delivery_state {
  IMC_DELIVERED = 1,
  IMC_STORED = 2
} imc_delivery_state;
"""),
    ("imchat/jwt.h", """
#define IMC_JWT_SIGN_MAX 2048

int imc_jwt_sign_hs256(const uint8_t *secret, size_t secret_len,
                       const char *user_id, const char *device_id,
                       const char *issuer, const char *audience,
                       int64_t iat_s, int64_t exp_s, char *out,
                       size_t outcap);
"""),
    ("imchat/client.h", """
typedef struct imc_client imc_client;
typedef struct imc_client_options imc_client_options;

#define IMC_CLIENT_MSG_ID_LEN 32

typedef enum imc_client_state {
  IMC_CLIENT_STOPPED = 0,
  IMC_CLIENT_CONNECTING = 1,
  IMC_CLIENT_HANDSHAKE = 2,
  IMC_CLIENT_ONLINE = 3,
  IMC_CLIENT_WAITING = 4,
  IMC_CLIENT_FAILED = 5
} imc_client_state;

#define IMC_CLIENT_MSG_GAP 0x1
#define IMC_CLIENT_MSG_OFFLINE 0x2
#define IMC_CLIENT_MSG_HISTORY 0x4

typedef struct imc_client_callbacks {
  uint32_t struct_size;
  void (*state)(void *ud, imc_client_state state, int reason);
  void (*message)(void *ud, const imc_msg *msg, uint32_t flags,
                  uint64_t last_seq);
  void (*send_ack)(void *ud, const char *client_msg_id, const char *msg_id,
                   const char *conversation_id, uint64_t seq);
  void (*status)(void *ud, const char *client_msg_id, const char *msg_id,
                 imc_delivery_state state, const char *user_id);
  void (*send_error)(void *ud, const char *client_msg_id, int error,
                     const char *message);
} imc_client_callbacks;

int imc_client_options_new(imc_client_options **out,
                           const imc_mem *mem);
void imc_client_options_del(imc_client_options *opt);
int imc_client_options_set_store_path(imc_client_options *opt,
                                      const char *path);
int imc_client_options_set_token(imc_client_options *opt,
                                 const char *token);
int imc_client_options_set_host(imc_client_options *opt,
                                const char *host);
int imc_client_options_set_ws_path(imc_client_options *opt,
                                   const char *path);
int imc_client_options_set_callbacks(imc_client_options *opt,
                                     const imc_client_callbacks *cb,
                                     void *ud);
int imc_client_options_set_backoff(imc_client_options *opt,
                                   uint32_t initial_ms,
                                   uint32_t max_ms);
int imc_client_options_set_resend_ms(imc_client_options *opt,
                                     uint32_t ms);
int imc_client_options_set_page_limit(imc_client_options *opt,
                                      uint32_t limit);
int imc_client_options_set_log(imc_client_options *opt,
                               imc_log_cb cb, void *ud,
                               imc_log_level max_level);

int imc_client_new(imc_client **out, const imc_client_options *opt,
                   const imc_mem *mem);
void imc_client_del(imc_client *c);
int imc_client_start(imc_client *c);
int imc_client_stop(imc_client *c);
int imc_client_connected(imc_client *c);
int imc_client_disconnected(imc_client *c, int reason);
int imc_client_recv(imc_client *c, const uint8_t *data, size_t len);
size_t imc_client_output(imc_client *c, const uint8_t **data);
void imc_client_output_consume(imc_client *c, size_t n);
int imc_client_want_write(const imc_client *c);
int64_t imc_client_next_timeout_ms(imc_client *c);
int imc_client_on_timeout(imc_client *c);
imc_client_state imc_client_get_state(const imc_client *c);
const char *imc_client_get_user_id(const imc_client *c);

int imc_client_send(imc_client *c, const char *to_user,
                    const char *group_id, const uint8_t *body,
                    size_t len, const char *content_type,
                    char *client_msg_id);
size_t imc_client_outbox_size(const imc_client *c);

int imc_client_want_sync(const imc_client *c);
int imc_client_sync_request(imc_client *c, const uint8_t **req,
                            size_t *len);
int imc_client_sync_response(imc_client *c, const uint8_t *data,
                             size_t len);

typedef void (*imc_client_history_cb)(void *ud, const imc_msg *msg);

int imc_client_history_request(imc_client *c,
                               const char *conversation_id,
                               uint64_t after_seq,
                               const uint8_t **req, size_t *len);
int imc_client_history_response(imc_client *c, const uint8_t *data,
                                size_t len, imc_client_history_cb cb,
                                void *ud, uint64_t *next_after_seq);
"""),
]

# Declared in libimchat-server.so (loaded on first use: _lib.server_lib).
SERVER_HEADERS = [
    ("imchat/server.h", """
typedef struct imc_server imc_server;

int imc_server_new(imc_server **out, int argc,
                   const char *const *argv, char *err,
                   size_t errcap);
const char *imc_server_address(const imc_server *s);
void imc_server_set_log(imc_server *s, imc_log_cb cb, void *ud);
int imc_server_run(imc_server *s);
void imc_server_stop(imc_server *s);
void imc_server_reload(imc_server *s);
void imc_server_del(imc_server *s);
"""),
]


def source():
    """All blocks, in order, as one cdef string."""
    return "\n".join(text for _, text in HEADERS + SERVER_HEADERS)
