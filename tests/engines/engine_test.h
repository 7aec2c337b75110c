/*
 * Shared harness of the engines' suites (tests/engines/test_<engine>.c):
 * the hosts' epoll loop with its engine adapter, the addresses of the
 * servers scripts/test.sh started, and child servers a fault test starts,
 * stops and restarts itself.
 *
 * A suite whose server address is not in the environment exits 77 (meson
 * reports it as skipped; scripts/test.sh always sets them and fails on
 * any skip).
 */
#ifndef IMC_ENGINE_TEST_H
#define IMC_ENGINE_TEST_H

#include <imchat/engines/common.h>

#include <stdint.h>
#include <sys/types.h>

#include "engine_loop.h"
#include "loop.h"

typedef struct eng_loop {
  hloop *l;
  hengine_loop *el;
  const imc_loop *loop; /* give this to the engine */
} eng_loop;

/* Aborts the test on failure. */
void eng_loop_init(eng_loop *t);
void eng_loop_fini(eng_loop *t);

/* One turn of the loop, waiting at most max_wait_ms. */
void eng_loop_turn(eng_loop *t, int64_t max_wait_ms);

/* Runs turns until *flag is nonzero or timeout_ms pass; returns *flag. */
int eng_loop_until(eng_loop *t, const int *flag, int64_t timeout_ms);

/*
 * The value of environment variable name (e.g. "IMC_TEST_REDIS"), or
 * exit(77) with a message naming it when it is unset.
 */
const char *eng_env_or_skip(const char *name);

/* A free TCP port on 127.0.0.1 (bound and released at once). */
uint16_t eng_free_port(void);

/* Starts argv (argv[0] looked up on PATH) with output to log_path, or
 * /dev/null if NULL. Returns the pid; aborts on failure. */
pid_t eng_spawn(char *const argv[], const char *log_path);

/* Waits for pid to exit; returns its exit status (-1 if killed). */
int eng_wait(pid_t pid);

/* Kills pid with sig (SIGTERM: graceful, SIGKILL: a crash) and reaps it. */
void eng_kill(pid_t pid, int sig);

/* 1 once 127.0.0.1:port accepts a TCP connection, 0 after timeout_ms. */
int eng_wait_port(uint16_t port, int64_t timeout_ms);

/* Monotonic milliseconds. */
int64_t eng_now_ms(void);

#endif
