/*
 * imchat: the command-line client. Flags → an imc_client on the user's
 * store ($XDG_DATA_HOME/imchat/<user>.db) → hclient_run.
 */
#include "client_run.h"
#include "log.h"

#include <imchat/client.h>

#include <curl/curl.h>

#include "protocol/base64.h"
#include "protocol/json.h"
#include "protocol/jsonw.h"
#include "protocol/utf8.h"
#include "util/alloc.h"

#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Exit codes (also in usage() and README.md). */
enum {
  EXIT_OK = 0,
  EXIT_ERROR = 1,   /* refused by the server, store failure, ... */
  EXIT_USAGE = 2,   /* bad arguments or URL */
  EXIT_CONNECT = 3, /* cannot connect (refused, unreachable, unknown host) */
  EXIT_AUTH = 4,    /* 401: the token was refused */
  EXIT_TIMEOUT = 5, /* --timeout elapsed first */
  EXIT_TLS = 6      /* TLS failed: certificate refused, bad handshake */
};

static void usage(FILE *f) {
  fputs(
      "usage: imchat [OPTIONS] send USER TEXT\n"
      "       imchat [OPTIONS] send --group GROUP TEXT\n"
      "       imchat [OPTIONS] listen [--count N] [--json]\n"
      "       imchat [OPTIONS] chat USER | chat --group GROUP\n"
      "       imchat [OPTIONS] history CONVERSATION [--json]\n"
      "       imchat [OPTIONS] flush\n"
      "\n"
      "send     queue TEXT in the outbox and wait until the server confirms\n"
      "         it (delivered, or stored for an offline recipient)\n"
      "listen   print incoming messages (offline ones first), one a line\n"
      "chat     interactive: each line typed is sent; replies and delivery\n"
      "         ticks are printed; end with Ctrl-D\n"
      "history  print a conversation's history (p:ALICE:BOB or g:GROUP)\n"
      "flush    send what the outbox still holds (from an earlier run)\n"
      "\n"
      "options:\n"
      "  --server URL       gateway, ws://HOST:PORT[/ws] or, over TLS,\n"
      "                     wss://HOST:PORT[/ws] (default "
      "ws://127.0.0.1:8082/ws;\n"
      "                     http://, https:// and HOST:PORT too); the\n"
      "                     offline sync and history use http(s):// on the\n"
      "                     same host and port\n"
      "  --ca-file F        TLS: trust only the CAs in PEM file F (default:\n"
      "                     the system's CAs)\n"
      "  --insecure         TLS without checking the server's certificate:\n"
      "                     for testing only, anyone on the path can read\n"
      "                     and change the traffic\n"
      "  --token T          the JWT (default: $IMCHAT_TOKEN)\n"
      "  --token-file F     read the JWT from file F\n"
      "  --timeout S        give up after S seconds (default: send, flush and\n"
      "                     history 30; listen and chat none)\n"
      "  --count N          listen: exit after N messages\n"
      "  --json             listen, history: one JSON object a line\n"
      "  --verbose          log the client's state changes on stderr\n"
      "  -h, --help         this text\n"
      "\n"
      "State (outbox, seen messages, offline cursor) lives in\n"
      "$XDG_DATA_HOME/imchat/USER.db (default ~/.local/share/imchat/).\n"
      "Get a token for a local imchatd with:  imchatd token USER\n"
      "\n"
      "exit codes:\n"
      "  0  success\n"
      "  1  error (the server refused the message, the store failed, ...)\n"
      "  2  usage: bad arguments or a bad --server URL\n"
      "  3  cannot connect (connection refused, unreachable, unknown host);\n"
      "     a message given to send stays in the outbox for the next run\n"
      "  4  unauthorized: the gateway refused the token (HTTP 401)\n"
      "  5  timeout: --timeout elapsed before the command finished\n"
      "  6  TLS failed: the server's certificate did not verify (unknown\n"
      "     CA, wrong host name, expired), the handshake failed (not a\n"
      "     TLS server?), or --ca-file could not be read\n",
      f);
}

__attribute__((format(printf, 1, 2))) static int die_usage(const char *fmt,
                                                           ...) {
  va_list ap;
  fprintf(stderr, "imchat: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\nTry 'imchat --help'.\n");
  return EXIT_USAGE;
}

/* ------------------------------------------------------------------ */
/* URL and token                                                        */
/* ------------------------------------------------------------------ */

typedef struct url {
  int tls; /* wss:// or https:// */
  char host[256];
  char port[8];
  char path[256];
  char hostport[300]; /* for the Host header */
} url;

/*
 * ws[s]://HOST:PORT/PATH, http[s]://HOST:PORT, HOST:PORT. The port
 * defaults to 8082 (443 for TLS). Returns 0 or -1.
 */
static int parse_url(const char *s, url *u) {
  static const char *const schemes[] = {"ws://", "http://", "wss://",
                                        "https://"};
  const char *p = s;
  for (int i = 0; i < 4; i++) {
    size_t n = strlen(schemes[i]);
    if (strncmp(p, schemes[i], n) == 0) {
      u->tls = i >= 2;
      p += n;
      break;
    }
  }
  if (strstr(p, "://"))
    return -1;
  const char *slash = strchr(p, '/');
  size_t hp = slash ? (size_t)(slash - p) : strlen(p);
  snprintf(u->path, sizeof(u->path), "%s", slash ? slash : "/ws");
  if (strcmp(u->path, "/") == 0)
    snprintf(u->path, sizeof(u->path), "/ws");
  if (hp == 0 || hp >= sizeof(u->hostport))
    return -1;
  memcpy(u->hostport, p, hp);
  u->hostport[hp] = '\0';
  const char *h = u->hostport, *colon;
  size_t hl;
  if (h[0] == '[') {
    const char *end = strchr(h, ']');
    if (end == NULL)
      return -1;
    hl = (size_t)(end - h - 1);
    memcpy(u->host, h + 1, hl);
    colon = end[1] == ':' ? end + 1 : NULL;
    if (end[1] != '\0' && end[1] != ':')
      return -1;
  } else {
    colon = strrchr(h, ':');
    hl = colon ? (size_t)(colon - h) : strlen(h);
    if (hl >= sizeof(u->host))
      return -1;
    memcpy(u->host, h, hl);
  }
  u->host[hl] = '\0';
  if (hl == 0)
    return -1;
  const char *port = colon ? colon + 1 : u->tls ? "443" : "8082";
  size_t pl = strlen(port);
  if (pl == 0 || pl > 5 || strspn(port, "0123456789") != pl ||
      atoi(port) == 0 || atoi(port) > 65535)
    return -1;
  snprintf(u->port, sizeof(u->port), "%s", port);
  for (const char *q = u->path; *q; q++)
    if (*q <= ' ' || *q > '~')
      return -1;
  return 0;
}

/* The token's sub claim (unverified: only to name the store). */
static int token_subject(const char *tok, char *out, size_t cap) {
  const char *a = strchr(tok, '.');
  const char *b = a ? strchr(a + 1, '.') : NULL;
  if (b == NULL)
    return -1;
  size_t n = (size_t)(b - a - 1);
  char *json = malloc(IMC_BASE64_DECODED_MAX(n));
  size_t o = 0;
  if (json == NULL)
    return -1;
  if (imc_base64_decode(a + 1, n, (uint8_t *)json, &o) != 0)
    o = 0;
  imc_json_value doc, sub;
  int rv = -1;
  if (imc_json_parse(json, o, &doc) == 0 && doc.type == IMC_JSON_OBJECT &&
      imc_json_member(&doc, "sub", &sub) == 0 &&
      imc_json_string(&sub, out, cap) > 0 && imc_id_valid(out, strlen(out)))
    rv = 0;
  free(json);
  return rv;
}

static char *read_token_file(const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return NULL;
  char buf[8192];
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' ||
                   buf[n - 1] == ' ' || buf[n - 1] == '\t'))
    buf[--n] = '\0';
  return strdup(buf);
}

/* mkdir -p of the directory part of path. */
static int make_dirs(char *path) {
  for (char *p = path + 1; *p; p++) {
    if (*p != '/')
      continue;
    *p = '\0';
    int rc = mkdir(path, 0700);
    *p = '/';
    if (rc != 0 && errno != EEXIST)
      return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------ */
/* Output                                                               */
/* ------------------------------------------------------------------ */

typedef struct app {
  imc_client *c;
  int json;
  int verbose;
  long count;        /* listen: stop after this many (0: never) */
  long seen;         /* messages printed */
  const char *to;    /* chat/send: the peer user or NULL */
  const char *group; /* chat/send: the group or NULL */
  char conv[160];    /* chat: the conversation shown */
  char cmid[IMC_CLIENT_MSG_ID_LEN + 1]; /* send: our message */
  int send_done; /* send: confirmed (1) or refused (-1) */
  int input_eof; /* chat: stdin ended */
} app;

static void print_msg(app *a, const imc_msg *m, uint32_t flags) {
  if (a->json) {
    imc_wbuf b;
    imc_jsonw w;
    imc_wbuf_init(&b, imc_mem_default());
    imc_jsonw_init(&w, &b);
    imc_jsonw_object_begin(&w);
    imc_jsonw_kv_string(&w, "msg_id", m->msg_id);
    imc_jsonw_kv_string(&w, "conversation_id", m->conversation_id);
    imc_jsonw_kv_uint64(&w, "seq", m->seq);
    imc_jsonw_kv_string(&w, "from_user", m->from_user);
    imc_jsonw_kv_string(&w, "from_device", m->from_device);
    imc_jsonw_kv_string(&w, "to_user", m->to_user);
    imc_jsonw_kv_string(&w, "group_id", m->group_id);
    imc_jsonw_kv_string(&w, "content_type", m->content_type);
    imc_jsonw_kv_int64(&w, "sent_at_ms", m->sent_at_ms);
    if (imc_utf8_valid((const char *)m->body, m->body_len)) {
      imc_jsonw_key(&w, "text");
      imc_jsonw_string_n(&w, (const char *)m->body, m->body_len);
    }
    imc_jsonw_key(&w, "body");
    imc_jsonw_base64(&w, m->body, m->body_len);
    imc_jsonw_kv_bool(&w, "offline", (flags & IMC_CLIENT_MSG_OFFLINE) != 0);
    imc_jsonw_kv_bool(&w, "gap", (flags & IMC_CLIENT_MSG_GAP) != 0);
    imc_jsonw_object_end(&w);
    if (b.err == 0)
      printf("%.*s\n", (int)b.len, b.p);
    imc_wbuf_free(&b);
  } else {
    int text = imc_utf8_valid((const char *)m->body, m->body_len);
    if (m->group_id && m->group_id[0])
      printf("[%s] ", m->group_id);
    if (text)
      printf("%s: %.*s\n", m->from_user, (int)m->body_len,
             (const char *)m->body);
    else
      printf("%s: (%zu bytes of %s)\n", m->from_user, m->body_len,
             m->content_type);
  }
  fflush(stdout);
}

static void on_state(void *ud, imc_client_state st, int reason) {
  app *a = ud;
  static const char *const names[] = {"stopped", "connecting", "handshake",
                                      "online",  "waiting",    "failed"};
  if (a->verbose)
    fprintf(stderr, "imchat: %s%s%s\n", names[st], reason ? ": " : "",
            reason ? imc_strerror(reason) : "");
}

static void on_message(void *ud, const imc_msg *m, uint32_t flags,
                       uint64_t last_seq) {
  app *a = ud;
  (void)last_seq;
  if (a->conv[0] && strcmp(a->conv, m->conversation_id) != 0 && !a->json) {
    printf("(%s) ", m->conversation_id);
  }
  print_msg(a, m, flags);
  a->seen++;
}

static void on_send_ack(void *ud, const char *cmid, const char *msg_id,
                        const char *conv, uint64_t seq) {
  app *a = ud;
  (void)msg_id;
  if (a->verbose)
    fprintf(stderr, "imchat: %s accepted: %s seq %" PRIu64 "\n", cmid, conv,
            seq);
}

static void on_status(void *ud, const char *cmid, const char *msg_id,
                      imc_delivery_state st, const char *user) {
  app *a = ud;
  (void)msg_id;
  const char *what = st == IMC_DELIVERED ? "delivered" : "stored";
  if (a->to || a->group) {
    if (user && user[0])
      printf("  (%s %s %s)\n", what, st == IMC_DELIVERED ? "to" : "for", user);
    else
      printf("  (%s)\n", what);
    fflush(stdout);
  }
  if (strcmp(cmid, a->cmid) == 0)
    a->send_done = 1;
}

static void on_send_error(void *ud, const char *cmid, int err,
                          const char *message) {
  app *a = ud;
  fprintf(stderr, "imchat: message refused: %s (%s)\n", message,
          imc_strerror(err));
  if (strcmp(cmid, a->cmid) == 0)
    a->send_done = -1;
}

/* ------------------------------------------------------------------ */
/* Commands                                                             */
/* ------------------------------------------------------------------ */

static int send_finished(void *ud) {
  app *a = ud;
  return a->send_done < 0 || imc_client_outbox_size(a->c) == 0;
}

static int listen_finished(void *ud) {
  app *a = ud;
  return a->count > 0 && a->seen >= a->count;
}

static int chat_finished(void *ud) {
  app *a = ud;
  return a->input_eof && imc_client_outbox_size(a->c) == 0;
}

static void chat_input(void *ud) {
  app *a = ud;
  char line[4096];
  if (fgets(line, sizeof(line), stdin) == NULL) {
    a->input_eof = 1;
    return;
  }
  size_t n = strlen(line);
  while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
    line[--n] = '\0';
  if (n == 0)
    return;
  int rv = imc_client_send(a->c, a->to, a->group, (const uint8_t *)line, n,
                           NULL, a->cmid);
  if (rv != 0)
    fprintf(stderr, "imchat: cannot send: %s\n", imc_strerror(rv));
}

static int run_result(int res, const hclient_opts *o, const url *u,
                      const char *pending) {
  switch (res) {
  case HCLIENT_TLS:
    fprintf(stderr, "imchat: TLS with %s:%s failed: %s%s%s\n", u->host, u->port,
            o->error,
            strstr(o->error, "verification failed")
                ? "; trust the server's CA with --ca-file FILE"
                : "",
            pending ? pending : "");
    return EXIT_TLS;
  case HCLIENT_DONE:
    return EXIT_OK;
  case HCLIENT_TIMEOUT:
    fprintf(stderr, "imchat: timed out%s\n", pending ? pending : "");
    return EXIT_TIMEOUT;
  case HCLIENT_CONNECT:
    fprintf(stderr, "imchat: cannot connect to %s:%s: %s%s\n", u->host, u->port,
            o->error, pending ? pending : "");
    return EXIT_CONNECT;
  case HCLIENT_RESOLVE:
    fprintf(stderr, "imchat: unknown host %s: %s%s\n", u->host, o->error,
            pending ? pending : "");
    return EXIT_CONNECT;
  case HCLIENT_AUTH:
    fprintf(stderr, "imchat: unauthorized: the gateway refused the token "
                    "(HTTP 401); get a new one (imchatd token USER)\n");
    return EXIT_AUTH;
  default:
    fprintf(stderr, "imchat: failed%s%s\n", o->error[0] ? ": " : "", o->error);
    return EXIT_ERROR;
  }
}

static void print_history(void *ud, const imc_msg *m) {
  app *a = ud;
  if (!a->json)
    printf("%" PRIu64 " ", m->seq);
  print_msg(a, m, 0);
}

static int cmd_history(app *a, const url *u, hclient_opts *o, const char *conv,
                       int64_t timeout_ms) {
  uint64_t after = 0;
  for (;;) {
    const uint8_t *req;
    size_t len;
    int rv = imc_client_history_request(a->c, conv, after, &req, &len);
    if (rv != 0)
      return die_usage("'%s' is not a conversation id (p:A:B or g:GROUP)",
                       conv);
    uint8_t *ans;
    size_t alen;
    rv = hclient_http(o, req, len, timeout_ms, &ans, &alen);
    if (rv != 0)
      return run_result(rv, o, u, NULL);
    rv = imc_client_history_response(a->c, ans, alen, print_history, a, &after);
    free(ans);
    if (rv == IMC_ERR_AUTH)
      return run_result(HCLIENT_AUTH, o, u, NULL);
    if (rv == IMC_ERR_FORBIDDEN) {
      fprintf(stderr, "imchat: not a member of %s\n", conv);
      return EXIT_ERROR;
    }
    if (rv < 0) {
      fprintf(stderr, "imchat: history: %s\n", imc_strerror(rv));
      return EXIT_ERROR;
    }
    if (rv == 0)
      return EXIT_OK;
  }
}

/* Runs the command pos[0] (with its npos - 1 arguments); returns the exit
   code. */
static int run_command(app *a, const url *u, hclient_opts *o, const char *user,
                       const char *group, const char *const *pos, int npos,
                       int64_t tmo) {
  const char *cmd = pos[0];
  int rv, code;
  if (strcmp(cmd, "send") == 0 || strcmp(cmd, "flush") == 0) {
    int is_send = strcmp(cmd, "send") == 0;
    const char *text = NULL;
    if (is_send) {
      if (group ? npos != 2 : npos != 3)
        return die_usage("%s", "send needs USER TEXT or --group GROUP TEXT");
      a->to = group ? NULL : pos[1];
      a->group = group;
      text = pos[npos - 1];
      rv = imc_client_send(a->c, a->to, a->group, (const uint8_t *)text,
                           strlen(text), NULL, a->cmid);
      if (rv != 0) {
        if (rv == IMC_ERR_INVALID_ARGUMENT)
          return die_usage("'%s' is not a valid user or group id",
                           group ? group : pos[1]);
        fprintf(stderr, "imchat: cannot queue the message: %s\n",
                imc_strerror(rv));
        return EXIT_ERROR;
      }
    } else if (npos != 1) {
      return die_usage("%s", "flush takes no arguments");
    }
    if (!is_send && imc_client_outbox_size(a->c) == 0)
      return EXIT_OK;
    o->done = send_finished;
    o->timeout_ms = tmo >= 0 ? tmo : 30000;
    int res = hclient_run(a->c, o);
    code = run_result(res, o, u,
                      "; the message stays in the outbox and goes out with "
                      "the next imchat run");
    if (code == EXIT_OK && a->send_done < 0)
      code = EXIT_ERROR;
  } else if (strcmp(cmd, "listen") == 0) {
    if (npos != 1)
      return die_usage("%s", "listen takes no arguments");
    o->done = listen_finished;
    o->timeout_ms = tmo;
    int res = hclient_run(a->c, o);
    /* Listening for a while without a --count is a success. */
    if (res == HCLIENT_TIMEOUT && a->count == 0)
      res = HCLIENT_DONE;
    code = run_result(res, o, u, NULL);
  } else if (strcmp(cmd, "chat") == 0) {
    if (group ? npos != 1 : npos != 2)
      return die_usage("%s", "chat needs USER or --group GROUP");
    a->to = group ? NULL : pos[1];
    a->group = group;
    if (group)
      snprintf(a->conv, sizeof(a->conv), "g:%s", group);
    else if (strcmp(user, pos[1]) < 0)
      snprintf(a->conv, sizeof(a->conv), "p:%s:%s", user, pos[1]);
    else
      snprintf(a->conv, sizeof(a->conv), "p:%s:%s", pos[1], user);
    if (!imc_id_valid(pos[npos - 1], strlen(pos[npos - 1])))
      return die_usage("'%s' is not a valid user or group id", pos[npos - 1]);
    fprintf(stderr,
            "imchat: chatting as %s in %s; type a line to send, "
            "Ctrl-D to quit\n",
            user, a->conv);
    o->in_fd = 0;
    o->on_input = chat_input;
    o->done = chat_finished;
    o->timeout_ms = tmo;
    code = run_result(hclient_run(a->c, o), o, u, NULL);
  } else if (strcmp(cmd, "history") == 0) {
    if (npos != 2)
      return die_usage("%s", "history needs a CONVERSATION");
    code = cmd_history(a, u, o, pos[1], tmo >= 0 ? tmo : 30000);
  } else {
    return die_usage("unknown command '%s'", cmd);
  }
  return code;
}

int main(int argc, char **argv) {
  const char *server = "ws://127.0.0.1:8082/ws", *token_arg = NULL,
             *token_file = NULL, *group = NULL, *ca_file = NULL;
  int insecure = 0;
  double timeout_s = -1;
  const char *pos[4];
  int npos = 0;
  app a;
  memset(&a, 0, sizeof(a));
  for (int i = 1; i < argc; i++) {
    const char *s = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(s, "-h") == 0 || strcmp(s, "--help") == 0) {
      usage(stdout);
      return EXIT_OK;
    } else if (strcmp(s, "--json") == 0) {
      a.json = 1;
    } else if (strcmp(s, "--verbose") == 0) {
      a.verbose = 1;
    } else if (strcmp(s, "--insecure") == 0) {
      insecure = 1;
    } else if (strcmp(s, "--server") == 0 || strcmp(s, "--token") == 0 ||
               strcmp(s, "--ca-file") == 0 || strcmp(s, "--token-file") == 0 ||
               strcmp(s, "--group") == 0 || strcmp(s, "--timeout") == 0 ||
               strcmp(s, "--count") == 0) {
      if (v == NULL)
        return die_usage("%s needs a value", s);
      i++;
      if (strcmp(s, "--server") == 0)
        server = v;
      else if (strcmp(s, "--token") == 0)
        token_arg = v;
      else if (strcmp(s, "--token-file") == 0)
        token_file = v;
      else if (strcmp(s, "--group") == 0)
        group = v;
      else if (strcmp(s, "--ca-file") == 0)
        ca_file = v;
      else {
        char *end;
        double d = strtod(v, &end);
        if (*end || d < 0 || d > 1e7)
          return die_usage("%s: not a number of the right range", s);
        if (strcmp(s, "--timeout") == 0)
          timeout_s = d;
        else
          a.count = (long)d;
      }
    } else if (s[0] == '-' && s[1] != '\0') {
      return die_usage("unknown option '%s'", s);
    } else if (npos < 4) {
      pos[npos++] = s;
    } else {
      return die_usage("too many arguments ('%s')", s);
    }
  }
  if (npos == 0)
    return die_usage("%s", "no command given");
  url u;
  memset(&u, 0, sizeof(u));
  int rv = parse_url(server, &u);
  if (rv != 0)
    return die_usage("bad --server URL '%s' (expected ws://HOST:PORT[/ws] or "
                     "wss://HOST:PORT[/ws])",
                     server);
  if ((ca_file || insecure) && !u.tls)
    return die_usage("%s is for TLS servers (wss://, https://)",
                     ca_file ? "--ca-file" : "--insecure");
  if (ca_file && access(ca_file, R_OK) != 0) {
    fprintf(stderr, "imchat: cannot read --ca-file %s: %s\n", ca_file,
            strerror(errno));
    return EXIT_USAGE;
  }
  if (insecure)
    fprintf(stderr, "imchat: --insecure: the server's certificate is not "
                    "checked; use this for testing only\n");

  char *token = NULL;
  if (token_arg)
    token = strdup(token_arg);
  else if (token_file) {
    token = read_token_file(token_file);
    if (token == NULL) {
      fprintf(stderr, "imchat: cannot read --token-file %s: %s\n", token_file,
              strerror(errno));
      return EXIT_USAGE;
    }
  } else if (getenv("IMCHAT_TOKEN"))
    token = strdup(getenv("IMCHAT_TOKEN"));
  if (token == NULL || token[0] == '\0') {
    free(token);
    return die_usage("%s", "no token: give --token, --token-file or "
                           "$IMCHAT_TOKEN (imchatd token USER makes one)");
  }
  char user[IMC_ID_MAX + 1];
  if (token_subject(token, user, sizeof(user)) != 0) {
    free(token);
    return die_usage("%s", "the token is not a JWT with a valid sub claim");
  }

  char path[4096];
  const char *xdg = getenv("XDG_DATA_HOME");
  const char *home = getenv("HOME");
  if (xdg && xdg[0] == '/')
    snprintf(path, sizeof(path), "%s/imchat/%s.db", xdg, user);
  else
    snprintf(path, sizeof(path), "%s/.local/share/imchat/%s.db",
             home ? home : ".", user);
  if (make_dirs(path) != 0) {
    fprintf(stderr, "imchat: cannot create the directory of %s: %s\n", path,
            strerror(errno));
    free(token);
    return EXIT_ERROR;
  }

  imc_client_callbacks cb = {sizeof(cb),  on_state,  on_message,
                             on_send_ack, on_status, on_send_error};
  imc_client_options *opt;
  if (imc_client_options_new(&opt, NULL) != 0) {
    free(token);
    return EXIT_ERROR;
  }
  rv = imc_client_options_set_store_path(opt, path);
  if (rv == 0)
    rv = imc_client_options_set_token(opt, token);
  if (rv == 0)
    rv = imc_client_options_set_host(opt, u.hostport);
  if (rv == 0)
    rv = imc_client_options_set_ws_path(opt, u.path);
  if (rv == 0)
    rv = imc_client_options_set_callbacks(opt, &cb, &a);
  if (rv == 0 && a.verbose)
    rv = imc_client_options_set_log(opt, hlog_imc_cb, NULL, IMC_LOG_INFO);
  free(token);
  if (rv != 0) {
    imc_client_options_del(opt);
    return die_usage("%s", "the token or URL holds characters that cannot "
                           "go in an HTTP header");
  }
  rv = imc_client_new(&a.c, opt, NULL);
  imc_client_options_del(opt);
  if (rv != 0) {
    fprintf(stderr, "imchat: cannot open the store %s: %s\n", path,
            imc_strerror(rv));
    return EXIT_ERROR;
  }

  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    imc_client_del(a.c);
    fprintf(stderr, "imchat: cannot initialise libcurl\n");
    return EXIT_ERROR;
  }
  hclient_opts o;
  memset(&o, 0, sizeof(o));
  o.host = u.host;
  o.port = u.port;
  o.tls = u.tls;
  o.ca_file = ca_file;
  o.insecure = insecure;
  o.in_fd = -1;
  o.ud = &a;
  int64_t tmo = timeout_s >= 0 ? (int64_t)(timeout_s * 1000) : -1;
  int code = run_command(&a, &u, &o, user, group, pos, npos, tmo);
  imc_client_del(a.c);
  curl_global_cleanup();
  return code;
}
