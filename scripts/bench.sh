#!/usr/bin/env bash
# Benchmarks imchatd against mosquitto on loopback and writes
# doc/benchmarks.md and doc/bench/*.png.
#
#   scripts/bench.sh            two rounds of every scenario, 10 s each, at
#                               the sizes of the speed targets (19K idle
#                               connections, a 10K-member group, an
#                               open-loop sweep up to 30K messages/s)
#   scripts/bench.sh --quick    one short round (3 s per scenario) at
#                               smaller sizes
#
# Builds a release tree in build-release/, then for every scenario runs
# imchatd and mosquitto alternately (A B A B), each on a fresh server
# started here (its own temporary directory, free loopback ports), with
# imchat-bench (hosts/bench). Every process started here is stopped by
# pid when the script ends, also on failure. The JSON and CSV of every run
# stay in build-release/bench-results/. Environment overrides:
# IMC_BENCH_ROUNDS, IMC_BENCH_DURATION, IMC_BENCH_IDLE_CONNS (19000;
# --quick 5000; at most what fits under imchatd's fd limit),
# IMC_BENCH_PAIRS_CONNS (2000), IMC_BENCH_GROUP_MEMBERS (10000; --quick
# 1000), IMC_BENCH_GROUP_RATE (10/s), IMC_BENCH_OFFLINE_SENDERS (200),
# IMC_BENCH_SWEEP_CONNS (200), IMC_BENCH_SWEEP_RATES ("500 ... 30000";
# --quick "1000 4000 16000 30000"), IMC_BENCH_OUT (where benchmarks.md
# goes; default doc).
#
#   scripts/bench.sh --cluster [--quick]
#
# The cluster on one machine instead (scripts/bench_cluster.sh): Redis,
# MariaDB, etcd and the mock Kafka on loopback, one im-service and 5
# im-gateway (--heartbeat 30, no connection limit), built in
# build-release/ with the engines. 100K idle connections spread over the
# gateways (--quick 10K) are held for 120 s (35 s), etcd's /metrics read
# before, once they are connected and registered, at the end of the hold
# and once they are gone; then 2000 connections in 1:1 pairs whose ends
# are on different gateways (open loop, 1000/s) and a 1000-member group
# spread over every gateway (10/s), 10 s each (5 s). Writes
# doc/bench/cluster.md and its section of doc/benchmarks.md; the JSON
# and etcd's counters stay in build-release/bench-results/cluster/.
# Overrides: IMC_BENCH_CLUSTER_GATEWAYS (5), IMC_BENCH_CLUSTER_IDLE,
# IMC_BENCH_CLUSTER_HOLD (s), IMC_BENCH_CLUSTER_CONCURRENCY (connects in
# progress per client process, 256), IMC_BENCH_CLUSTER_ETCD_TMPFS=1
# (etcd's data in /dev/shm), IMC_BENCH_PAIRS_CONNS,
# IMC_BENCH_CLUSTER_PAIRS_RATE, IMC_BENCH_CLUSTER_MEMBERS,
# IMC_BENCH_GROUP_RATE, IMC_BENCH_DURATION, IMC_BENCH_OUT.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

quick=0
cluster=0
for a in "$@"; do
  case $a in
  --quick) quick=1 ;;
  --cluster) cluster=1 ;;
  -h | --help)
    awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "bench.sh: unknown argument '$a' (try --help)" >&2
    exit 2
    ;;
  esac
done

if [ "$quick" -eq 1 ]; then
  rounds=${IMC_BENCH_ROUNDS:-1}
  dur=${IMC_BENCH_DURATION:-3}
  sweep_dur=2
  idle_conns=${IMC_BENCH_IDLE_CONNS:-5000}
  group_members=${IMC_BENCH_GROUP_MEMBERS:-1000}
  rates="1000 4000 16000 30000"
else
  rounds=${IMC_BENCH_ROUNDS:-2}
  dur=${IMC_BENCH_DURATION:-10}
  sweep_dur=4
  idle_conns=${IMC_BENCH_IDLE_CONNS:-19000}
  group_members=${IMC_BENCH_GROUP_MEMBERS:-10000}
  rates="500 1000 2000 4000 8000 16000 24000 30000"
fi
pairs_conns=${IMC_BENCH_PAIRS_CONNS:-2000}
group_rate=${IMC_BENCH_GROUP_RATE:-10}
offline_senders=${IMC_BENCH_OFFLINE_SENDERS:-200}
sweep_conns=${IMC_BENCH_SWEEP_CONNS:-200}
read -r -a sweep_rates <<<"${IMC_BENCH_SWEEP_RATES:-$rates}"
out_doc=${IMC_BENCH_OUT:-doc}

# shellcheck source=scripts/deps.sh
source scripts/deps.sh
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
imc_install_deps "${IMC_DEB_BENCH_PACKAGES[@]}"

# One process holds at most ~20K sockets on these machines (the hard
# limit); the servers started here inherit this limit.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# --------------------------------------------------------------------------
# Processes started here, stopped by pid.
# --------------------------------------------------------------------------
bench_pids=()
bench_tmp=$(mktemp -d -t imchat-bench.XXXXXX)

# shellcheck disable=SC2317  # invoked by the trap
bench_cleanup() {
  imc_stop_pids "${bench_pids[@]}"
  rm -rf "$bench_tmp"
}
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Stops the server of pid $1 (SIGTERM, then SIGKILL after 10 s).
stop_pid() {
  local pid=$1 p
  imc_stop_pids "$pid"
  local -a keep=()
  for p in "${bench_pids[@]}"; do
    [ "$p" = "$pid" ] || keep+=("$p")
  done
  bench_pids=("${keep[@]}")
}

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits until 127.0.0.1:$1 accepts (at most 15 s) while pid $2 lives.
wait_port() {
  local port=$1 pid=$2 i
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.05
  done
  return 1
}

if [ "$cluster" -eq 1 ]; then
  # shellcheck source=scripts/bench_cluster.sh
  source scripts/bench_cluster.sh
  exit 0
fi

# --------------------------------------------------------------------------
# Build (release)
# --------------------------------------------------------------------------
echo "bench: building build-release/ (buildtype=release)" >&2
imc_setup_build build-release --buildtype=release -Dtests=false
imc_quiet ninja -C build-release
imchatd=build-release/hosts/imchatd
bench=build-release/hosts/bench/imchat-bench
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)

secret_file=$bench_tmp/jwt.secret
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secret_file"
admin_token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')

# Kept after the run (JSON and CSV of every run), for a closer look.
results=build-release/bench-results
rm -rf "$results"
mkdir -p "$results"

# Starts a fresh imchatd; sets srv_pid and srv_port.
start_imchatd() {
  local d=$bench_tmp/imchatd.$RANDOM$RANDOM i
  mkdir -p "$d"
  "$imchatd" --listen 127.0.0.1:0 --data-dir "$d" \
    --jwt-secret-file "$secret_file" --admin-token "$admin_token" \
    --rate-limit 1000000 --rate-burst 1000000 \
    --user-rate-limit 1000000 --user-rate-burst 1000000 >"$d/log" 2>&1 &
  srv_pid=$!
  bench_pids+=("$srv_pid")
  srv_port=
  for ((i = 0; i < 300; i++)); do
    srv_port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' \
      "$d/log" | head -1)
    [ -n "$srv_port" ] && break
    kill -0 "$srv_pid" 2>/dev/null || break
    sleep 0.05
  done
  if [ -z "$srv_port" ] || ! wait_port "$srv_port" "$srv_pid"; then
    cat "$d/log" >&2
    echo "bench: imchatd did not start" >&2
    return 1
  fi
}

# Starts a fresh mosquitto with a TCP and a WebSocket listener; sets
# srv_pid, srv_port (TCP) and srv_ws_port.
start_mosquitto() {
  local d=$bench_tmp/mosquitto.$RANDOM$RANDOM
  mkdir -p "$d"
  srv_port=$(free_port)
  srv_ws_port=$(free_port)
  cat >"$d/mosquitto.conf" <<CONF
per_listener_settings false
allow_anonymous true
persistence false
max_queued_messages 100000
log_dest stderr
log_type error
log_type warning
listener $srv_port 127.0.0.1
protocol mqtt
listener $srv_ws_port 127.0.0.1
protocol websockets
CONF
  "$mosquitto" -c "$d/mosquitto.conf" >"$d/log" 2>&1 &
  srv_pid=$!
  bench_pids+=("$srv_pid")
  if ! wait_port "$srv_port" "$srv_pid" ||
    ! wait_port "$srv_ws_port" "$srv_pid"; then
    cat "$d/log" >&2
    echo "bench: mosquitto did not start" >&2
    return 1
  fi
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
commands_log=$results/commands.txt
: >"$commands_log"

# run_one TARGET LABEL BENCH-ARGS...: a fresh server, one imchat-bench run.
run_one() {
  local target=$1 label=$2
  shift 2
  local -a args
  if [ "$target" = imchat ]; then
    start_imchatd
    args=(--target imchat --port "$srv_port" --jwt-secret-file
      "$secret_file" --admin-token "$admin_token")
  else
    start_mosquitto
    if [ "$target" = mqtt-ws ]; then
      args=(--target mqtt-ws --port "$srv_ws_port")
    else
      args=(--target mqtt-tcp --port "$srv_port")
    fi
  fi
  args+=(--server-pid "$srv_pid" --label "$label" --json
    "$results/$label.json" --csv-dir "$results/csv" "$@")
  echo "bench: $label" >&2
  # shellcheck disable=SC2016  # $PORT, $PID: placeholders in the doc
  printf '%s\n' "imchat-bench ${args[*]}" |
    sed -e "s/$admin_token/\$ADMIN_TOKEN/" -e "s|$bench_tmp|\$TMP|g" \
      -e 's/--port [0-9]*/--port $PORT/' \
      -e 's/--server-pid [0-9]*/--server-pid $PID/' >>"$commands_log"
  # imchat-bench bounds itself; this bounds a hang of imchat-bench too.
  local rc=0
  timeout -k 10 "$run_limit" "$bench" "${args[@]}" || rc=$?
  stop_pid "$srv_pid"
  if [ "$rc" -ne 0 ]; then
    echo "bench: $label failed ($rc)" >&2
    return 1
  fi
}

common=(--duration "$dur" --connect-timeout 60 --drain 5)
run_limit=$((dur + 60 + 5 + 180))

# --------------------------------------------------------------------------
# Idle connections: imchatd holds them all in one process, so they must fit
# under its fd limit with the fds it opens anyway (listener, epoll, SQLite,
# log, eventfds) and a margin for what it opens while running (HTTP
# requests, SQLite's journal). The generator spreads them over one worker
# process per 5000 and as many loopback source addresses.
# --------------------------------------------------------------------------
idle_requested=$idle_conns
start_imchatd
imchatd_fd_limit=$(awk '/^Max open files/ {print $4}' "/proc/$srv_pid/limits")
imchatd_fds=$(find "/proc/$srv_pid/fd" -mindepth 1 | wc -l)
stop_pid "$srv_pid"
idle_fit=$((imchatd_fd_limit - imchatd_fds - 64))
if [ "$idle_conns" -gt "$idle_fit" ]; then
  echo "bench: $idle_conns idle connections do not fit under imchatd's fd" \
    "limit ($imchatd_fd_limit, $imchatd_fds open at start); running $idle_fit" >&2
  idle_conns=$idle_fit
fi
idle_workers=$(((idle_conns + 4999) / 5000))
[ "$idle_workers" -ge 2 ] || idle_workers=2

# --------------------------------------------------------------------------
# Scenarios, imchatd and mosquitto alternately
# --------------------------------------------------------------------------
targets=(imchat mqtt-ws mqtt-tcp)
for ((r = 1; r <= rounds; r++)); do
  for t in "${targets[@]}"; do
    run_one "$t" "idle-$t-r$r" "${common[@]}" --scenario idle \
      --connections "$idle_conns" --workers "$idle_workers" \
      --src-addrs "$idle_workers"
  done
  for t in "${targets[@]}"; do
    run_one "$t" "pairs-$t-r$r" "${common[@]}" --scenario pairs \
      --workers 2 --connections "$pairs_conns" --mode closed --inflight 1
  done
  for t in "${targets[@]}"; do
    run_one "$t" "group-$t-r$r" "${common[@]}" --scenario group \
      --workers 2 --members "$group_members" --rate "$group_rate"
  done
  run_one imchat "offline-imchat-r$r" "${common[@]}" --scenario offline \
    --workers 2 --connections "$offline_senders" --mode closed --inflight 4
done

# Open-loop sweep: throughput and latency against offered load.
for rate in "${sweep_rates[@]}"; do
  for t in "${targets[@]}"; do
    run_one "$t" "sweep-$t-$rate" --duration "$sweep_dur" \
      --connect-timeout 60 --drain 5 --workers 2 --scenario pairs \
      --connections "$sweep_conns" --mode open --rate "$rate"
  done
done

# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
mkdir -p "$out_doc/bench"
machine=$results/machine.txt
{
  echo "nproc: $(nproc)"
  echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
  echo "kernel: $(uname -sr)"
  echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "imchat: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "mosquitto: $("$mosquitto" -h 2>/dev/null | sed -n 's/^mosquitto version //p' | head -1)"
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "load: $load_start (start), $(cut -d' ' -f1-3 /proc/loadavg) (end)"
  echo "idle connections: $idle_conns (requested $idle_requested; imchatd's fd limit $imchatd_fd_limit, $imchatd_fds fds open at start)"
} >"$machine"
/usr/bin/python3 hosts/bench/report.py --results "$results" \
  --machine "$machine" --commands "$commands_log" --out "$out_doc" \
  --rounds "$rounds" --duration "$dur" --quick "$quick"
echo "bench: wrote $out_doc/benchmarks.md and $out_doc/bench/*.png" >&2
