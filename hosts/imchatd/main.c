/*
 * imchatd: the whole of imchat in one process. Parses the flags, then
 * either prints a token (imchatd token USER) or runs libimchat-server
 * (hosts/server) on this thread, with SIGINT/SIGTERM asking it to stop
 * (a second one: at once) and SIGHUP to reload.
 */
#include "config.h"
#include "flags.h"
#include "log.h"
#include "server_int.h"

#include <imchat/jwt.h>
#include <imchat/version.h>

#include <curl/curl.h>
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TOKEN_MAX 4096

/* The running server, for the signal handlers; a stop asked for before
 * it exists is kept in stop_early. */
static imc_server *volatile server;
static volatile sig_atomic_t stop_early;

static void on_stop_signal(int signo) {
  (void)signo;
  if (server)
    imc_server_stop(server);
  else
    stop_early = 1;
}

static void on_reload_signal(int signo) {
  (void)signo;
  if (server)
    imc_server_reload(server);
}

static int install_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sa.sa_handler = on_stop_signal;
  if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0)
    return -1;
  sa.sa_handler = on_reload_signal;
  if (sigaction(SIGHUP, &sa, NULL) < 0)
    return -1;
  sa.sa_handler = SIG_IGN;
  return sigaction(SIGPIPE, &sa, NULL);
}

static int cmd_serve(imchatd_config *cfg) {
  if (install_signals() < 0) {
    hlog_error("signals: %s", strerror(errno));
    return IMCHATD_EXIT_FAIL;
  }
  /* libcurl's global state (--jwks-url) is the program's to set up. */
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    hlog_error("libcurl: global init failed");
    return IMCHATD_EXIT_FAIL;
  }
  imc_server *s;
  char err[512];
  int rv = hserver_new(&s, cfg, err, sizeof(err));
  if (rv != 0) {
    curl_global_cleanup();
    hlog_error("%s", err);
    return rv == IMC_ERR_INVALID_ARGUMENT ? IMCHATD_EXIT_USAGE
                                          : IMCHATD_EXIT_FAIL;
  }
  server = s;
  if (stop_early)
    imc_server_stop(s);
  rv = imc_server_run(s);
  server = NULL;
  imc_server_del(s);
  curl_global_cleanup();
  return rv == 0 ? IMCHATD_EXIT_OK : IMCHATD_EXIT_FAIL;
}

static int cmd_token(const imchatd_config *cfg) {
  if ((cfg->jwt_public_key || cfg->jwks_url) && !cfg->jwt_secret &&
      !cfg->jwt_secret_file) {
    hlog_error("token: this configuration accepts only RS256/ES256 tokens "
               "(--jwt-public-key or --jwks-url); sign them with the "
               "private key, or configure --jwt-secret or "
               "--jwt-secret-file");
    return IMCHATD_EXIT_USAGE;
  }
  uint8_t *secret;
  size_t len;
  char *path;
  int created;
  int rv = imchatd_config_secret(cfg, &secret, &len, &path, &created);
  if (rv)
    return rv;
  if (created)
    hlog_info("created the HS256 secret %s", path);

  char token[TOKEN_MAX];
  int64_t now = (int64_t)time(NULL);
  rv = imc_jwt_sign_hs256(secret, len, cfg->token_user, cfg->token_device,
                          cfg->jwt_issuer, cfg->jwt_audience, now,
                          now + cfg->token_ttl_s, token, sizeof(token));
  memset(secret, 0, len);
  free(secret);
  free(path);
  if (rv < 0) {
    hlog_error("token: %s", imc_strerror(rv));
    return rv == IMC_ERR_INVALID_ARGUMENT ? IMCHATD_EXIT_USAGE
                                          : IMCHATD_EXIT_FAIL;
  }
  if (printf("%s\n", token) < 0 || fflush(stdout) != 0)
    return IMCHATD_EXIT_FAIL;
  return IMCHATD_EXIT_OK;
}

int main(int argc, char **argv) {
  imchatd_config cfg;
  char err[512];
  int code = imchatd_config_load(&cfg, IMCHATD_ROLE_SERVER, argc, argv, err,
                                 sizeof(err));
  if (code >= 0) {
    fprintf(stderr, "imchatd: %s\n", err);
  } else if (cfg.mode == IMCHATD_HELP) {
    imchatd_usage();
    code = IMCHATD_EXIT_OK;
  } else if (cfg.mode == IMCHATD_VERSION) {
    printf("imchatd %s (libimchat %s)\n", IMC_VERSION, imc_version());
    code = IMCHATD_EXIT_OK;
  } else {
    hlog_set_level(cfg.log_level);
    /*
     * Every loop turn allocates output buffers and frees them once
     * written. By default glibc hands the top of the heap back (brk)
     * whenever 128 KiB are free there, so the heap shrank and grew every
     * turn, and with the storage thread each shrink is a TLB shootdown on
     * the other CPU: 9-13 % of imchatd's time in the 1:1 benchmark. Keep
     * up to 32 MiB instead. (A process-wide setting: the program makes
     * it, not libimchat-server.)
     */
    if (mallopt(M_TRIM_THRESHOLD, 32 << 20) != 1)
      fprintf(stderr, "imchatd: mallopt(M_TRIM_THRESHOLD) failed\n");
    code = cfg.mode == IMCHATD_TOKEN ? cmd_token(&cfg) : cmd_serve(&cfg);
  }
  imchatd_config_free(&cfg);
  return code;
}
