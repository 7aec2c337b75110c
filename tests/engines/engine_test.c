/*
 * The engines' test harness (see engine_test.h).
 */
#include "engine_test.h"

#include <check.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int64_t eng_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void eng_loop_init(eng_loop *t) {
  memset(t, 0, sizeof(*t));
  ck_assert_int_eq(hloop_new(&t->l), 0);
  ck_assert_int_eq(hengine_loop_new(t->l, &t->el), 0);
  t->loop = hengine_loop_get(t->el);
}

void eng_loop_fini(eng_loop *t) {
  hengine_loop_del(t->el);
  hloop_del(t->l);
  memset(t, 0, sizeof(*t));
}

void eng_loop_turn(eng_loop *t, int64_t max_wait_ms) {
  ck_assert_int_eq(hloop_run_once(t->l, max_wait_ms), 0);
}

int eng_loop_until(eng_loop *t, const int *flag, int64_t timeout_ms) {
  int64_t end = eng_now_ms() + timeout_ms;
  while (!*flag && eng_now_ms() < end)
    eng_loop_turn(t, 50);
  return *flag;
}

const char *eng_env_or_skip(const char *name) {
  const char *v = getenv(name);
  if (v == NULL || *v == '\0') {
    fprintf(stderr,
            "%s is not set: this suite needs the server scripts/test.sh "
            "starts (skipped)\n",
            name);
    exit(77);
  }
  return v;
}

uint16_t eng_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(fd, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  socklen_t len = sizeof(a);
  ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  close(fd);
  return ntohs(a.sin_port);
}

pid_t eng_spawn(char *const argv[], const char *log_path) {
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    int fd = open(log_path ? log_path : "/dev/null",
                  O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execvp(argv[0], argv);
    _exit(127);
  }
  return pid;
}

int eng_wait(pid_t pid) {
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR)
      return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

void eng_kill(pid_t pid, int sig) {
  kill(pid, sig);
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
    ;
}

int eng_wait_port(uint16_t port, int64_t timeout_ms) {
  int64_t end = eng_now_ms() + timeout_ms;
  do {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    if (ok)
      return 1;
    struct timespec ts = {0, 20 * 1000000L};
    nanosleep(&ts, NULL);
  } while (eng_now_ms() < end);
  return 0;
}
