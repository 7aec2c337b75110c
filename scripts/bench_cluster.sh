# shellcheck shell=bash
# Sourced by scripts/bench.sh --cluster (see its --help): the cluster on
# one machine. Starts Redis, MariaDB, etcd and the mock Kafka on loopback
# (scripts/servers.sh), one im-service and IMC_BENCH_CLUSTER_GATEWAYS
# im-gateway processes, then runs imchat-bench against all the gateways:
# idle connections held (connect rate, RSS per connection, etcd's load
# while they connect, while they are held and when they go), 1:1 pairs
# whose two ends are on different gateways, and a group whose members are
# spread over every gateway. Writes doc/bench/cluster.md and its section
# of doc/benchmarks.md (hosts/bench/cluster_report.py).
#
# Uses from bench.sh: quick, bench_pids, bench_tmp, stop_pid, free_port,
# wait_port, and lib.sh's helpers.
# shellcheck disable=SC2154  # quick, bench_tmp: set by bench.sh

if [ "$quick" -eq 1 ]; then
  cl_idle=${IMC_BENCH_CLUSTER_IDLE:-10000}
  cl_hold=${IMC_BENCH_CLUSTER_HOLD:-35}
  cl_dur=${IMC_BENCH_DURATION:-5}
else
  cl_idle=${IMC_BENCH_CLUSTER_IDLE:-100000}
  cl_hold=${IMC_BENCH_CLUSTER_HOLD:-120}
  cl_dur=${IMC_BENCH_DURATION:-10}
fi
cl_gateways=${IMC_BENCH_CLUSTER_GATEWAYS:-5}
# Connects in progress per client process (imchat-bench --concurrency):
# lower it to slow the connect burst down.
cl_concurrency=${IMC_BENCH_CLUSTER_CONCURRENCY:-256}
cl_heartbeat=30
cl_pairs=${IMC_BENCH_PAIRS_CONNS:-2000}
cl_pairs_rate=${IMC_BENCH_CLUSTER_PAIRS_RATE:-1000}
cl_members=${IMC_BENCH_CLUSTER_MEMBERS:-1000}
cl_group_rate=${IMC_BENCH_GROUP_RATE:-10}
out_doc=${IMC_BENCH_OUT:-doc}

# Every process may hold as many files as this machine allows (here the
# hard limit is 20,000: one gateway holds at most that many sockets).
ulimit -n "$(ulimit -Hn)"

# --------------------------------------------------------------------------
# Build (release, with the engines) and the backends
# --------------------------------------------------------------------------
echo "bench: building build-release/ (buildtype=release, engines)" >&2
imc_setup_build build-release --buildtype=release -Dtests=false \
  -Dengines=enabled
if ! meson configure build-release 2>/dev/null |
  grep -Eq '^[[:space:]]*engines[[:space:]]+enabled'; then
  imc_quiet meson configure build-release -Dengines=enabled
fi
imc_quiet ninja -C build-release
bench=build-release/hosts/bench/imchat-bench
gateway_bin=build-release/hosts/im-gateway
service_bin=build-release/hosts/im-service

results=build-release/bench-results/cluster
rm -rf "$results"
mkdir -p "$results"
meta=$results/meta.txt
commands_log=$results/commands.txt
: >"$meta"
: >"$commands_log"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# scripts/servers.sh starts each backend with imc_spawn, its data and log
# under $imc_tmp; the pids join bench.sh's, stopped when it ends.
imc_tmp=$bench_tmp
imc_spawn() {
  local name=$1
  shift
  "$@" >"$imc_tmp/$name.log" 2>&1 &
  bench_pids+=("$!")
}
# shellcheck source=scripts/servers.sh
source scripts/servers.sh
echo "bench: starting Redis, MariaDB, etcd and the mock Kafka" >&2
imc_start_redis
redis_pid=${bench_pids[-1]}
imc_start_mariadb
mariadb_pid=${bench_pids[-1]}
# IMC_BENCH_CLUSTER_ETCD_TMPFS=1: etcd keeps its data in /dev/shm, so
# that its WAL fsyncs cost nothing (what the registry does when the disk
# is not what bounds it).
if [ "${IMC_BENCH_CLUSTER_ETCD_TMPFS:-0}" = 1 ]; then
  etcd_dir=$(mktemp -d /dev/shm/imchat-bench-etcd.XXXXXX)
  ln -s "$etcd_dir" "$imc_tmp/etcd"
  trap 'bench_cleanup; rm -rf "$etcd_dir"' EXIT
fi
imc_start_etcd
etcd_pid=${bench_pids[-1]}
imc_start_kafka build-release/hosts/bench/kafka-mock
kafka_pid=${bench_pids[-1]}
etcd_url=$IMC_TEST_ETCD

# The run's own database; im-service applies the schema at start.
mysql_hostport=${IMC_TEST_MARIADB%/*}
imc_quiet mariadb --no-defaults -h 127.0.0.1 -P "${mysql_hostport#*:}" \
  -u "$IMCHAT_MYSQL_USER" -p"$IMCHAT_MYSQL_PASSWORD" \
  -e 'CREATE DATABASE imchat_bench'
mysql_addr=$mysql_hostport/imchat_bench

secret_file=$bench_tmp/jwt.secret
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secret_file"
admin_token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')

# The topics, made before the hosts start (as in production, doc/deploy.md).
kafka_topic() {
  local answer
  exec 3<>"/dev/tcp/${IMC_TEST_KAFKA_CONTROL%:*}/${IMC_TEST_KAFKA_CONTROL#*:}"
  echo "topic $1 $2" >&3
  read -r answer <&3
  exec 3>&-
  [ "$answer" = ok ] || {
    echo "bench: kafka topic $1: $answer" >&2
    return 1
  }
}
kafka_topic group_msg 4
kafka_topic offline_msg 4

# --------------------------------------------------------------------------
# im-service and the gateways
# --------------------------------------------------------------------------
# Waits until http://127.0.0.1:$1/readyz answers 200 (at most 60 s) while
# pid $2 lives.
wait_ready() {
  local port=$1 pid=$2 i
  for ((i = 0; i < 600; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

svc_grpc=$(free_port)
svc_http=$(free_port)
"$service_bin" --grpc-listen "127.0.0.1:$svc_grpc" \
  --http-listen "127.0.0.1:$svc_http" --etcd "$etcd_url" \
  --kafka "$IMC_TEST_KAFKA" --redis "$IMC_TEST_REDIS" --mysql "$mysql_addr" \
  --node-id bench-svc >"$bench_tmp/im-service.log" 2>&1 &
svc_pid=$!
bench_pids+=("$svc_pid")
if ! wait_ready "$svc_http" "$svc_pid"; then
  tail -20 "$bench_tmp/im-service.log" >&2
  echo "bench: im-service did not get ready" >&2
  exit 1
fi

gw_pids=()
gw_ports=()
for ((g = 1; g <= cl_gateways; g++)); do
  port=$(free_port)
  grpc=$(free_port)
  "$gateway_bin" --listen "127.0.0.1:$port" --grpc-listen "127.0.0.1:$grpc" \
    --router "127.0.0.1:$svc_grpc" --etcd "$etcd_url" \
    --kafka "$IMC_TEST_KAFKA" --mysql "$mysql_addr" --node-id "bench-gw$g" \
    --jwt-secret-file "$secret_file" --admin-token "$admin_token" \
    --heartbeat "$cl_heartbeat" --max-connections 0 \
    --max-connections-per-ip 0 --rate-limit 1000000 --rate-burst 1000000 \
    --user-rate-limit 1000000 --user-rate-burst 1000000 \
    >"$bench_tmp/im-gateway$g.log" 2>&1 &
  gw_pids+=("$!")
  bench_pids+=("$!")
  gw_ports+=("$port")
done
for ((g = 0; g < cl_gateways; g++)); do
  if ! wait_ready "${gw_ports[g]}" "${gw_pids[g]}"; then
    tail -20 "$bench_tmp/im-gateway$((g + 1)).log" >&2
    echo "bench: im-gateway $((g + 1)) did not get ready" >&2
    exit 1
  fi
done
ports_csv=$(
  IFS=,
  echo "${gw_ports[*]}"
)
pids_csv=$(
  IFS=,
  echo "${gw_pids[*]},$svc_pid"
)

# How many sockets each gateway can hold: its fd limit less what it has
# open once ready (listeners, epoll, backends' sockets, librdkafka's
# threads' pipes) and a margin for what it opens while running (HTTP
# requests, reconnects).
gw_fd_limit=$(awk '/^Max open files/ {print $4}' "/proc/${gw_pids[0]}/limits")
gw_fds=0
for p in "${gw_pids[@]}"; do
  n=$(find "/proc/$p/fd" -mindepth 1 | wc -l)
  [ "$n" -gt "$gw_fds" ] && gw_fds=$n
done
gw_fit=$((gw_fd_limit - gw_fds - 32))
idle_conns=$cl_idle
if [ $((cl_idle / cl_gateways)) -gt "$gw_fit" ]; then
  idle_conns=$((gw_fit * cl_gateways))
  echo "bench: $cl_idle connections do not fit in $cl_gateways gateways" \
    "(fd limit $gw_fd_limit, up to $gw_fds open when ready): running" \
    "$idle_conns" >&2
fi
# One client process per 10,000 connections, each on its own source
# address: at most 10,000 connections per (source address, gateway),
# under the 28K ephemeral ports of each.
idle_workers=$(((idle_conns + 9999) / 10000))
[ "$idle_workers" -ge 2 ] || idle_workers=2

{
  echo "gateways: $cl_gateways"
  echo "gateway_pids: ${gw_pids[*]}"
  echo "service_pid: $svc_pid"
  echo "heartbeat_s: $cl_heartbeat"
  echo "lease_ttl_s: 90"
  echo "idle_requested: $cl_idle"
  echo "idle_conns: $idle_conns"
  echo "idle_workers: $idle_workers"
  echo "hold_s: $cl_hold"
  echo "gw_fd_limit: $gw_fd_limit"
  echo "gw_fds_ready: $gw_fds"
  echo "gw_fit: $gw_fit"
  echo "ephemeral_ports: $(tr '\t' ' ' </proc/sys/net/ipv4/ip_local_port_range)"
  echo "mem_available_kb_start: $(awk '/MemAvailable/ {print $2}' /proc/meminfo)"
  echo "etcd_data: $(readlink -f "$imc_tmp/etcd")"
  echo "etcd_data_fs: $(stat -f -c %T "$(readlink -f "$imc_tmp/etcd")")"
} >>"$meta"

# --------------------------------------------------------------------------
# Measurements besides imchat-bench's
# --------------------------------------------------------------------------
# etcd_snap NAME: etcd's counters of interest (its own /metrics) and the
# time, in $results/etcd-NAME.prom.
etcd_snap() {
  {
    echo "# time $(date +%s.%N)"
    curl -sf "$etcd_url/metrics" | grep -E '^(etcd_mvcc_(put|delete|txn|range)_total|etcd_server_proposals_committed_total|etcd_debugging_lease_(granted|renewed|revoked)_total|etcd_debugging_mvcc_keys_total|etcd_mvcc_db_total_size_in_bytes|etcd_disk_wal_fsync_duration_seconds_(count|sum)|process_cpu_seconds_total|process_resident_memory_bytes|grpc_server_(msg_received|started)_total\{grpc_method="(LeaseKeepAlive|LeaseGrant|LeaseRevoke|Txn|Range|Watch)")'
  } >"$results/etcd-$1.prom"
}

# etcd's live keys now.
etcd_keys() {
  curl -sf "$etcd_url/metrics" |
    awk '/^etcd_debugging_mvcc_keys_total / {print int($2)}'
}

# The connections registered in etcd now: the keys under the gateways'
# prefix (/imchat/users/), counted by etcd (one range read).
etcd_entries() {
  curl -sf -X POST "$etcd_url/v3/kv/range" -d "{\"key\": \"$(printf \
    /imchat/users/ | base64)\", \"range_end\": \"$(printf /imchat/users0 |
    base64)\", \"count_only\": true}" |
    /usr/bin/python3 -c 'import json, sys
print(int(json.load(sys.stdin).get("count", 0)))'
}

# gw_snap NAME: each gateway's WebSockets, open fds and RSS, and every
# backend's CPU time so far, in $results/procs-NAME.txt.
gw_snap() {
  local g p ws
  {
    echo "# time $(date +%s.%N)"
    for ((g = 0; g < cl_gateways; g++)); do
      p=${gw_pids[g]}
      ws=$(curl -sf "http://127.0.0.1:${gw_ports[g]}/metrics" |
        awk '/^imchat_gateway_websockets / {print int($2)}')
      echo "gateway bench-gw$((g + 1)) pid $p websockets ${ws:-0}" \
        "fds $(find "/proc/$p/fd" -mindepth 1 | wc -l)" \
        "rss_kb $(awk '/^VmRSS/ {print $2}' "/proc/$p/status")" \
        "cpu_ticks $(cpu_ticks "$p")"
    done
    for p in "service:$svc_pid" "etcd:$etcd_pid" "redis:$redis_pid" \
      "mariadb:$mariadb_pid" "kafka:$kafka_pid"; do
      echo "backend ${p%%:*} pid ${p#*:} rss_kb" \
        "$(awk '/^VmRSS/ {print $2}' "/proc/${p#*:}/status")" \
        "cpu_ticks $(cpu_ticks "${p#*:}")"
    done
    echo "mem_available_kb $(awk '/MemAvailable/ {print $2}' /proc/meminfo)"
    echo "slab_kb $(awk '/^Slab:/ {print $2}' /proc/meminfo)"
    echo "tcp_inuse $(awk '/^TCP:/ {print $3}' /proc/net/sockstat)"
    echo "loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
  } >"$results/procs-$1.txt"
}

# User + system clock ticks of pid $1 so far.
cpu_ticks() {
  awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat"
}

# wait_keys ge|le N SECS NAME: waits until etcd holds at least (ge) or
# at most (le) N live keys, or until the count has not moved for 5 s
# (what the gateways had to write is written, or was given up), at most
# SECS; the counts seen go to $results/keys-NAME.txt.
wait_keys() {
  local op=$1 n=$2 log=$results/keys-$4.txt k last=-1 moved=$SECONDS
  local end=$((SECONDS + $3)) t0
  echo "# seconds keys (waiting for $op $n)" >"$log"
  t0=$(now_s)
  while [ "$SECONDS" -lt "$end" ]; do
    k=$(etcd_keys)
    k=${k:-0}
    awk -v a="$(now_s)" -v b="$t0" -v k="$k" \
      'BEGIN {printf "%.1f %d\n", a - b, k}' >>"$log"
    if { [ "$op" = ge ] && [ "$k" -ge "$n" ]; } ||
      { [ "$op" = le ] && [ "$k" -le "$n" ]; }; then
      return 0
    fi
    [ "$k" -ne "$last" ] && moved=$SECONDS
    [ $((SECONDS - moved)) -ge 5 ] && return 1
    last=$k
    sleep 0.2
  done
  return 1
}

# Seconds since the epoch, with fractions.
now_s() {
  date +%s.%N
}

# cl_bench LABEL ARGS...: one imchat-bench run against every gateway, in
# the background; sets bench_pid. Its stderr goes to $results/LABEL.err.
cl_bench() {
  local label=$1
  shift
  local -a args=(--target imchat --port "$ports_csv" --jwt-secret-file
    "$secret_file" --admin-token "$admin_token" --server-pid "$pids_csv"
    --label "$label" --json "$results/$label.json" --csv-dir
    "$results/csv" "$@")
  echo "bench: $label" >&2
  # shellcheck disable=SC2016  # $PORTS, $PIDS: placeholders in the doc
  printf '%s\n' "imchat-bench ${args[*]}" |
    sed -e "s/$admin_token/\$ADMIN_TOKEN/" -e "s|$bench_tmp|\$TMP|g" \
      -e 's/--port [0-9,]*/--port $PORTS/' \
      -e 's/--server-pid [0-9,]*/--server-pid $PIDS/' >>"$commands_log"
  # imchat-bench bounds itself; this bounds a hang of imchat-bench too.
  timeout -k 10 $((cl_hold + 400)) "$bench" "${args[@]}" \
    2>"$results/$label.err" &
  bench_pid=$!
}

# Waits for the imchat-bench of cl_bench; fails when it did.
cl_wait() {
  local rc=0
  wait "$bench_pid" || rc=$?
  cat "$results/$1.err" >&2
  if [ "$rc" -ne 0 ]; then
    echo "bench: $1 failed ($rc)" >&2
    return 1
  fi
}

# --------------------------------------------------------------------------
# Idle: connect, hold, disconnect
# --------------------------------------------------------------------------
keys_base=$(etcd_keys)
echo "etcd_keys_base: $keys_base" >>"$meta"
etcd_snap 0-start
gw_snap 0-start
cl_bench cluster-idle --scenario idle --connections "$idle_conns" \
  --workers "$idle_workers" --src-addrs "$idle_workers" \
  --concurrency "$cl_concurrency" --duration "$cl_hold" \
  --connect-timeout 240 --drain 0
t_start=$(now_s)
for ((i = 0; i < 2400; i++)); do
  grep -q 'connected in' "$results/cluster-idle.err" 2>/dev/null && break
  kill -0 "$bench_pid" 2>/dev/null || break
  sleep 0.1
done
t_connected=$(now_s)
echo "connected_after_s: $(awk -v a="$t_connected" -v b="$t_start" \
  'BEGIN {printf "%.2f", a - b}')" >>"$meta"
etcd_snap 1-connected
gw_snap 1-connected
# Registrations still in flight when the last Welcome arrived finish
# first; the hold is measured from then on.
ok=$(awk '/^gateway / {s += $6} END {print s}' "$results/procs-1-connected.txt")
wait_keys ge $((keys_base + ok)) 60 registering || true
etcd_snap 2-registered
gw_snap 2-registered
keys_registered=$(etcd_keys)
entries_registered=$(etcd_entries)
echo "entries_registered: $entries_registered" >>"$meta"
# The end of the hold, 2 s before imchat-bench lets go of the connections.
hold_end=$(awk -v a="$t_connected" -v h="$cl_hold" \
  'BEGIN {printf "%.3f", a + h - 2}')
while awk -v e="$hold_end" -v n="$(now_s)" 'BEGIN {exit !(n < e)}'; do
  kill -0 "$bench_pid" 2>/dev/null || break
  sleep 0.2
done
etcd_snap 3-held
gw_snap 3-held
cl_wait cluster-idle
# The gateways unregister the closed connections (their node keys stay).
wait_keys le $((keys_registered - entries_registered)) 60 closing || true
echo "entries_after_close: $(etcd_entries)" >>"$meta"
etcd_snap 4-closed
gw_snap 4-closed

# --------------------------------------------------------------------------
# 1:1 pairs across gateways, then one group over all of them
# --------------------------------------------------------------------------
cl_bench cluster-pairs --scenario pairs --connections "$cl_pairs" \
  --workers 2 --src-addrs 2 --mode open --rate "$cl_pairs_rate" \
  --duration "$cl_dur" --connect-timeout 60 --drain 5
cl_wait cluster-pairs
etcd_snap 5-pairs
cl_bench cluster-group --scenario group --members "$cl_members" \
  --workers 2 --src-addrs 2 --rate "$cl_group_rate" --duration "$cl_dur" \
  --connect-timeout 60 --drain 5
cl_wait cluster-group
etcd_snap 6-group
gw_snap 6-group

# The gateways first (each revokes its lease), then im-service; bench.sh
# stops the backends when it ends.
for p in "${gw_pids[@]}"; do
  stop_pid "$p"
done
stop_pid "$svc_pid"
mkdir -p "$results/logs"
cp "$bench_tmp"/*.log "$results/logs/"
# What the gateways could not write to etcd (each failure is a warning).
echo "registry_failures: $(cat "$results"/logs/im-gateway*.log |
  grep -c 'libimchat: registry: ' || true)" >>"$meta"

# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
machine=$results/machine.txt
{
  echo "nproc: $(nproc)"
  echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
  echo "kernel: $(uname -sr)"
  echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "imchat: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "etcd: $(etcd --version 2>/dev/null | sed -n 's/^etcd Version: //p')"
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "load: $load_start (start), $(cut -d' ' -f1-3 /proc/loadavg) (end)"
  echo "open files per process: $(ulimit -n) (hard limit $(ulimit -Hn))"
} >"$machine"
mkdir -p "$out_doc/bench"
/usr/bin/python3 hosts/bench/cluster_report.py --results "$results" \
  --machine "$machine" --meta "$meta" --commands "$commands_log" \
  --out "$out_doc" --quick "$quick"
echo "bench: wrote $out_doc/bench/cluster.md and its section of" \
  "$out_doc/benchmarks.md" >&2
