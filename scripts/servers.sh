# shellcheck shell=bash
# Sourced by scripts/test.sh: starts the real servers the engines' suites
# talk to, each on a free loopback port with its data under $imc_tmp, and
# exports its address. Each start function uses imc_spawn (test.sh), so
# the cleanup stops the server by its pid, also on failure.

# imc_free_port: prints a free TCP port on 127.0.0.1.
imc_free_port() {
  /usr/bin/python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# imc_wait_for SECONDS CMD...: runs CMD until it succeeds; fails after SECONDS.
imc_wait_for() {
  local secs=$1 i
  shift
  for ((i = 0; i < secs * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "servers: gave up waiting for: $*" >&2
  return 1
}

# Redis: IMC_TEST_REDIS=127.0.0.1:PORT
imc_start_redis() {
  local port
  port=$(imc_free_port)
  mkdir -p "$imc_tmp/redis"
  imc_spawn redis redis-server --port "$port" --bind 127.0.0.1 --save '' \
    --appendonly no --dir "$imc_tmp/redis"
  imc_wait_for 20 redis-cli -p "$port" ping
  export IMC_TEST_REDIS="127.0.0.1:$port"
}

# MariaDB: IMC_TEST_MARIADB=127.0.0.1:PORT/DB with the user and password in
# IMCHAT_MYSQL_USER / IMCHAT_MYSQL_PASSWORD (the engine's own variables).
imc_start_mariadb() {
  local port d=$imc_tmp/mariadb
  port=$(imc_free_port)
  mkdir -p "$d"
  cat >"$imc_tmp/mariadb-init.sql" <<'SQL'
FLUSH PRIVILEGES;
CREATE DATABASE imchat_test;
CREATE USER 'imchat'@'127.0.0.1' IDENTIFIED BY 'imchat-test-pw';
GRANT ALL PRIVILEGES ON imchat_test.* TO 'imchat'@'127.0.0.1';
GRANT ALL PRIVILEGES ON `imchat\_%`.* TO 'imchat'@'127.0.0.1';
SQL
  imc_quiet mariadb-install-db --no-defaults --datadir="$d" --user=root \
    --auth-root-authentication-method=normal --skip-test-db \
    --extra-file="$imc_tmp/mariadb-init.sql"
  imc_spawn mariadb mariadbd --no-defaults --datadir="$d" --socket="$d.sock" \
    --pid-file="$d.pid" --port="$port" --bind-address=127.0.0.1 --user=root \
    --skip-name-resolve --skip-log-bin --innodb-buffer-pool-size=64M \
    --log-error="$d.err"
  imc_wait_for 60 mariadb-admin --no-defaults -h 127.0.0.1 -P "$port" \
    -u imchat -pimchat-test-pw ping
  export IMC_TEST_MARIADB="127.0.0.1:$port/imchat_test"
  export IMCHAT_MYSQL_USER=imchat IMCHAT_MYSQL_PASSWORD=imchat-test-pw
}

# etcd: IMC_TEST_ETCD=http://127.0.0.1:PORT
imc_start_etcd() {
  local c p
  c=$(imc_free_port)
  p=$(imc_free_port)
  imc_spawn etcd etcd --name n1 --data-dir "$imc_tmp/etcd" \
    --listen-client-urls "http://127.0.0.1:$c" \
    --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" \
    --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "n1=http://127.0.0.1:$p"
  imc_wait_for 30 curl -sf "http://127.0.0.1:$c/health"
  export IMC_TEST_ETCD="http://127.0.0.1:$c"
}

# Kafka (librdkafka's mock cluster, tests/engines/kafka_mock):
# IMC_TEST_KAFKA=the bootstrap servers it prints, and
# IMC_TEST_KAFKA_CONTROL=the address where it creates topics (it prints
# that line first, in the same write).
imc_start_kafka() {
  local bin=$1
  imc_spawn kafka "$bin"
  imc_wait_for 30 grep -q '^127\.0\.0\.1:' "$imc_tmp/kafka.log"
  IMC_TEST_KAFKA=$(grep -m 1 '^127\.0\.0\.1:' "$imc_tmp/kafka.log")
  IMC_TEST_KAFKA_CONTROL=$(sed -n 's/^control //p' "$imc_tmp/kafka.log")
  export IMC_TEST_KAFKA IMC_TEST_KAFKA_CONTROL
}
