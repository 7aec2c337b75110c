/*
 * One pooled connection of the MariaDB engine, driven through
 * libmariadb's non-blocking API: each mysql_X_start / mysql_X_cont
 * returns the events it waits for (MYSQL_WAIT_READ/WRITE, TIMEOUT), which
 * become a watch of the connection's fd and a timer on the loop; when one
 * fires, the call continues.
 *
 * A query may hold several statements (CLIENT_MULTI_STATEMENTS). Each
 * statement's result is read in turn (a result set with
 * mysql_store_result, which reads all of it without blocking) and handed
 * to the job. The server stops at the first failing statement.
 *
 * Calls started while the connection is already being driven (a job
 * sending its next step from its handler) only record their status: the
 * drive loop below picks it up, so callbacks never nest.
 */
#include "mariadb/mariadb_int.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <errmsg.h>

#define BACKOFF_FIRST_MS 100
/* Read/write timeout of libmariadb itself: only a backstop, since the
 * operations' deadlines drop a connection that does not answer. */
#define IO_TIMEOUT_MIN_S 30

static void conn_drive(mdb_conn *c, int st);
static void on_fd(void *ud, int fd, unsigned events);

/* The first statements of every session. */
static const char init_sql[] =
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION',"
    " time_zone = '+00:00'";

static const imc_loop_vtbl *L(const mdb_conn *c) {
  return c->db->loop.vtbl;
}

static void *LU(const mdb_conn *c) {
  return c->db->loop.ud;
}

static int conn_cont(mdb_conn *c, int ready) {
  switch (c->call) {
  case MDB_CALL_CONNECT:
    return mysql_real_connect_cont(&c->ret_my, c->my, ready);
  case MDB_CALL_QUERY:
    return mysql_real_query_cont(&c->ret_int, c->my, ready);
  case MDB_CALL_STORE:
    return mysql_store_result_cont(&c->ret_res, c->my, ready);
  case MDB_CALL_NEXT:
    return mysql_next_result_cont(&c->ret_int, c->my, ready);
  case MDB_CALL_NONE:
    break;
  }
  return 0;
}

/*
 * The loop watches a duplicate of libmariadb's socket, owned by c: when
 * libmariadb closes its own fd inside a failing call, the watch stays
 * valid until c removes it (an epoll registration would otherwise outlive
 * a close whose socket another process still shares, and a reused fd
 * number would be taken for the old one).
 */
static void unwatch(mdb_conn *c) {
  if (c->fd_handle)
    L(c)->fd_del(LU(c), c->fd_handle);
  if (c->fd >= 0)
    close(c->fd);
  c->fd_handle = NULL;
  c->fd = -1;
  c->fd_events = 0;
}

static void stop_timer(mdb_conn *c, void **t) {
  if (*t)
    L(c)->timer_del(LU(c), *t);
  *t = NULL;
}

/* Tears the connection down: the call in progress is aborted (its socket
 * shut, and every wait it resumes from reported as a timeout, so it
 * returns at once), then the handle is closed. c becomes DOWN. */
static void teardown(mdb_conn *c) {
  unwatch(c);
  stop_timer(c, &c->wait_timer);
  stop_timer(c, &c->retry_timer);
  if (c->my) {
    if (c->call != MDB_CALL_NONE) {
      int fd = mysql_get_socket(c->my);
      if (fd >= 0)
        shutdown(fd, SHUT_RDWR);
      for (int i = 0; i < 64 && c->call != MDB_CALL_NONE; i++) {
        if (conn_cont(c, MYSQL_WAIT_TIMEOUT) == 0) {
          if (c->call == MDB_CALL_STORE && c->ret_res)
            mysql_free_result(c->ret_res);
          c->call = MDB_CALL_NONE;
        }
      }
    }
    /* Sends COM_QUIT: a few bytes, to a socket that is idle or shut. */
    mysql_close(c->my);
    c->my = NULL;
  }
  c->call = MDB_CALL_NONE;
  c->ret_res = NULL;
  c->state = MDB_CONN_DOWN;
}

static void on_retry(void *ud) {
  mdb_conn *c = ud;
  c->retry_timer = NULL;
  c->state = MDB_CONN_DOWN;
  mdb_kick(c->db);
}

/* After a failure: wait, then let the pump connect again. */
static void backoff(mdb_conn *c) {
  imc_mariadb *db = c->db;
  int64_t wait = c->backoff_ms;
  c->backoff_ms = wait ? wait * 2 : BACKOFF_FIRST_MS;
  if (c->backoff_ms > db->o.max_backoff_ms)
    c->backoff_ms = db->o.max_backoff_ms;
  c->state = MDB_CONN_BACKOFF;
  if (L(c)->timer_add(LU(c), wait, on_retry, c, &c->retry_timer) < 0) {
    c->retry_timer = NULL;
    c->state = MDB_CONN_DOWN; /* the next kick tries again */
  }
  mdb_kick(db);
}

void mdb_conn_drop(mdb_conn *c, const char *why) {
  imc_mariadb *db = c->db;
  int was_up = c->state == MDB_CONN_IDLE || c->state == MDB_CONN_BUSY;
  mdb_log(db, IMC_LOG_WARN, "mariadb: connection %u %s: %s", c->index,
          was_up ? "lost" : "failed", why);
  teardown(c);
  if (c->job != MDB_JOB_NONE)
    mdb_job_lost(c);
  backoff(c);
}

void mdb_conn_close(mdb_conn *c) {
  teardown(c);
}

/* Watch c's socket for events (0: none). Returns 0 or -1. */
static int watch(mdb_conn *c, unsigned events) {
  int fd = mysql_get_socket(c->my);
  if (fd < 0) {
    unwatch(c);
    return events ? -1 : 0;
  }
  struct stat st;
  if (c->fd_handle && c->state == MDB_CONN_CONNECTING &&
      (fstat(fd, &st) < 0 || st.st_ino != c->fd_ino))
    unwatch(c); /* a new socket: libmariadb tries the next address */
  if (c->fd_handle == NULL) {
    /* Not inherited by the programs a host starts. */
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0 || fstat(dup, &st) < 0) {
      if (dup >= 0)
        close(dup);
      return -1;
    }
    if (L(c)->fd_add(LU(c), dup, events, on_fd, c, &c->fd_handle) < 0) {
      close(dup);
      c->fd_handle = NULL;
      return -1;
    }
    c->fd = dup;
    c->fd_ino = st.st_ino;
    c->fd_events = events;
    return 0;
  }
  if (events != c->fd_events) {
    if (L(c)->fd_set(LU(c), c->fd_handle, events) < 0)
      return -1;
    c->fd_events = events;
  }
  return 0;
}

static void resume(mdb_conn *c, int ready) {
  if (!(ready & MYSQL_WAIT_TIMEOUT))
    stop_timer(c, &c->wait_timer);
  conn_drive(c, conn_cont(c, ready));
}

static void on_fd(void *ud, int fd, unsigned events) {
  mdb_conn *c = ud;
  (void)fd;
  if (c->call == MDB_CALL_NONE) {
    /* An idle connection has nothing to read: the server closed it
     * (shutdown, wait_timeout, KILL) or says why it is about to. */
    if (c->state == MDB_CONN_IDLE)
      mdb_conn_drop(c, "the server closed the connection");
    return;
  }
  int ready = 0;
  if (events & IMC_LOOP_READ)
    ready |= MYSQL_WAIT_READ;
  if (events & IMC_LOOP_WRITE)
    ready |= MYSQL_WAIT_WRITE;
  if (events & IMC_LOOP_ERROR)
    ready |= MYSQL_WAIT_READ | MYSQL_WAIT_WRITE | MYSQL_WAIT_EXCEPT;
  resume(c, ready);
}

static void on_wait_timer(void *ud) {
  mdb_conn *c = ud;
  c->wait_timer = NULL;
  resume(c, MYSQL_WAIT_TIMEOUT);
}

/* The call in progress waits for st's events. */
static void wait_for(mdb_conn *c, int st) {
  unsigned ev = 0;
  if (st & (MYSQL_WAIT_READ | MYSQL_WAIT_EXCEPT))
    ev |= IMC_LOOP_READ;
  if (st & MYSQL_WAIT_WRITE)
    ev |= IMC_LOOP_WRITE;
  stop_timer(c, &c->wait_timer);
  if (watch(c, ev) < 0) {
    mdb_conn_drop(c, "cannot watch the socket");
    return;
  }
  if ((st & MYSQL_WAIT_TIMEOUT) &&
      L(c)->timer_add(LU(c), (int64_t)mysql_get_timeout_value_ms(c->my),
                      on_wait_timer, c, &c->wait_timer) < 0) {
    c->wait_timer = NULL;
    mdb_conn_drop(c, "cannot arm a timer");
  }
}

/* c->call was started and returned st. */
static void started(mdb_conn *c, mdb_call call, int st) {
  c->call = call;
  conn_drive(c, st);
}

static void query_failed(mdb_conn *c) {
  unsigned err = mysql_errno(c->my);
  char msg[256];
  snprintf(msg, sizeof(msg), "%s (%u)", mysql_error(c->my), err);
  if (err == 0 || mdb_err_is_conn(err))
    mdb_conn_drop(c, msg);
  else
    mdb_job_step_done(c, err, msg);
}

/* One statement's result is in: on to the next one, or the step ends. */
static void next_statement(mdb_conn *c) {
  if (mysql_more_results(c->my))
    started(c, MDB_CALL_NEXT, mysql_next_result_start(&c->ret_int, c->my));
  else
    mdb_job_step_done(c, 0, NULL);
}

/* A statement succeeded: read its result set, if it has one. */
static void statement_ok(mdb_conn *c) {
  if (mysql_field_count(c->my) > 0) {
    started(c, MDB_CALL_STORE, mysql_store_result_start(&c->ret_res, c->my));
    return;
  }
  mdb_job_result(c, c->result++, NULL, (uint64_t)mysql_affected_rows(c->my));
  next_statement(c);
}

static void connected(mdb_conn *c) {
  imc_mariadb *db = c->db;
  if (c->ret_my == NULL) {
    char msg[256];
    snprintf(msg, sizeof(msg), "%s (%u)", mysql_error(c->my),
             mysql_errno(c->my));
    mdb_conn_drop(c, msg);
    return;
  }
  stop_timer(c, &c->retry_timer); /* the connect deadline */
  if (watch(c, IMC_LOOP_READ) < 0) {
    mdb_conn_drop(c, "cannot watch the socket");
    return;
  }
  c->state = MDB_CONN_IDLE;
  c->backoff_ms = 0;
  mdb_log(db, IMC_LOG_INFO, "mariadb: connection %u up (%s:%u/%s)", c->index,
          db->o.host, db->o.port, db->o.dbname);
  mdb_kick(db);
}

/* The call `done` has finished: act on its outcome. */
static void finished(mdb_conn *c, mdb_call done) {
  switch (done) {
  case MDB_CALL_CONNECT:
    connected(c);
    return;
  case MDB_CALL_QUERY:
    if (c->ret_int != 0)
      query_failed(c);
    else
      statement_ok(c);
    return;
  case MDB_CALL_NEXT:
    if (c->ret_int > 0)
      query_failed(c);
    else if (c->ret_int < 0)
      mdb_job_step_done(c, 0, NULL);
    else
      statement_ok(c);
    return;
  case MDB_CALL_STORE: {
    MYSQL_RES *res = c->ret_res;
    c->ret_res = NULL;
    if (res == NULL) {
      query_failed(c);
      return;
    }
    mdb_job_result(c, c->result++, res, 0);
    next_statement(c);
    return;
  }
  case MDB_CALL_NONE:
    return;
  }
}

/*
 * Runs c's calls until one has to wait. st is the status of the call in
 * progress (0: it finished). Re-entered from a handler, it only records
 * the status of the call that handler started.
 */
static void conn_drive(mdb_conn *c, int st) {
  if (c->driving) {
    c->st = st;
    return;
  }
  c->driving = 1;
  while (c->call != MDB_CALL_NONE) {
    if (st != 0) {
      wait_for(c, st);
      break;
    }
    mdb_call done = c->call;
    c->call = MDB_CALL_NONE;
    c->st = 0;
    finished(c, done);
    st = c->st;
  }
  c->driving = 0;
}

static void on_connect_deadline(void *ud) {
  mdb_conn *c = ud;
  c->retry_timer = NULL;
  mdb_conn_drop(c, "connect timed out");
}

void mdb_conn_connect(mdb_conn *c) {
  imc_mariadb *db = c->db;
  c->state = MDB_CONN_CONNECTING;
  c->result = 0;
  c->my = mysql_init(NULL);
  unsigned io_s = (unsigned)((db->o.op_timeout_ms * 2 + 999) / 1000);
  if (io_s < IO_TIMEOUT_MIN_S)
    io_s = IO_TIMEOUT_MIN_S;
  unsigned connect_s = (unsigned)((db->o.connect_timeout_ms + 999) / 1000);
  if (c->my == NULL || mysql_options(c->my, MYSQL_OPT_NONBLOCK, 0) != 0 ||
      mysql_options(c->my, MYSQL_SET_CHARSET_NAME, "utf8mb4") != 0 ||
      mysql_options(c->my, MYSQL_OPT_CONNECT_TIMEOUT, &connect_s) != 0 ||
      mysql_options(c->my, MYSQL_OPT_READ_TIMEOUT, &io_s) != 0 ||
      mysql_options(c->my, MYSQL_OPT_WRITE_TIMEOUT, &io_s) != 0 ||
      mysql_options(c->my, MYSQL_INIT_COMMAND, init_sql) != 0) {
    mdb_conn_drop(c, "out of memory");
    return;
  }
  if (L(c)->timer_add(LU(c), db->o.connect_timeout_ms, on_connect_deadline, c,
                      &c->retry_timer) < 0) {
    c->retry_timer = NULL;
    mdb_conn_drop(c, "cannot arm a timer");
    return;
  }
  int st = mysql_real_connect_start(&c->ret_my, c->my, db->o.host, db->o.user,
                                    db->o.password, db->o.dbname, db->o.port,
                                    NULL, CLIENT_MULTI_STATEMENTS);
  started(c, MDB_CALL_CONNECT, st);
}

void mdb_conn_query(mdb_conn *c, const char *sql, size_t len) {
  c->state = MDB_CONN_BUSY;
  c->result = 0;
  started(c, MDB_CALL_QUERY,
          mysql_real_query_start(&c->ret_int, c->my, sql, (unsigned long)len));
}

void mdb_conn_release(mdb_conn *c) {
  c->state = MDB_CONN_IDLE;
  c->job = MDB_JOB_NONE;
  c->ops = NULL;
  if (watch(c, IMC_LOOP_READ) < 0)
    mdb_conn_drop(c, "cannot watch the socket");
}
