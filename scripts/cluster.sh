#!/usr/bin/env bash
# Runs an imchat cluster on loopback: Redis, MariaDB, etcd and librdkafka's
# mock Kafka (scripts/servers.sh, on free ports, data in a temporary
# directory), one im-service and three im-gateways, built with
# -Dengines=enabled in build/. Prints where to connect; Ctrl-C, or the end
# of any of these processes, stops them all.
#   IMC_CLUSTER_PORT   WebSocket/HTTP port of the first gateway (default
#                      8082); the other two take the next two ports
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/deps.sh
source scripts/deps.sh
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
imc_install_deps "${IMC_DEB_CLUSTER_PACKAGES[@]}"

# --------------------------------------------------------------------------
# Build: build/ with the engines (and the mock Kafka of tests/engines)
# --------------------------------------------------------------------------
imc_setup_build build -Dengines=enabled
if ! meson configure build 2>/dev/null |
    grep -Eq '^[[:space:]]*engines[[:space:]]+enabled'; then
  imc_quiet meson configure build -Dengines=enabled
fi
imc_quiet ninja -C build --quiet hosts/im-gateway hosts/im-service \
  hosts/imchatd hosts/imchat tests/engines/kafka_mock

# --------------------------------------------------------------------------
# Processes: only the pids recorded here are stopped, never anything found
# by name
# --------------------------------------------------------------------------
imc_pids=()
imc_names=()
imc_tmp=$(mktemp -d -t imchat-cluster.XXXXXX)

# imc_spawn NAME CMD [ARGS...]: runs CMD in the background with its output
# in $imc_tmp/NAME.log and records its pid (used by scripts/servers.sh).
imc_spawn() {
  local name=$1
  shift
  "$@" >"$imc_tmp/$name.log" 2>&1 &
  imc_pids+=("$!")
  imc_names+=("$name")
}

# shellcheck disable=SC2317  # invoked by the trap
imc_cleanup() {
  echo "cluster: stopping" >&2
  # The hosts first (they drain into the backends), then the backends.
  local -a rev=()
  local i
  for ((i = ${#imc_pids[@]} - 1; i >= 0; i--)); do rev+=("${imc_pids[i]}"); done
  [ ${#rev[@]} -eq 0 ] || imc_stop_pids "${rev[@]}"
  rm -rf "$imc_tmp"
}
trap imc_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# shellcheck source=scripts/servers.sh
source scripts/servers.sh
imc_start_redis
imc_start_mariadb
imc_start_etcd
imc_start_kafka build/tests/engines/kafka_mock

# --------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------
secret=$(/usr/bin/python3 -c 'import secrets; print(secrets.token_hex(32))')
admin=$(/usr/bin/python3 -c 'import secrets; print(secrets.token_hex(16))')
backends=(--etcd "$IMC_TEST_ETCD" --kafka "$IMC_TEST_KAFKA"
  --mysql "$IMC_TEST_MARIADB")
svc_grpc=127.0.0.1:$(imc_free_port)
svc_http=127.0.0.1:$(imc_free_port)

# imc_wait_ready NAME URL: waits up to 60 s for URL (a /readyz) to answer
# 200; fails with the end of NAME's log.
imc_wait_ready() {
  if ! imc_wait_for 60 curl -sf "$2"; then
    tail -n 20 "$imc_tmp/$1.log" >&2
    return 1
  fi
}

imc_spawn im-service build/hosts/im-service --grpc-listen "$svc_grpc" \
  --http-listen "$svc_http" --redis "$IMC_TEST_REDIS" --node-id svc-1 \
  "${backends[@]}"
imc_wait_ready im-service "http://$svc_http/readyz"

port=${IMC_CLUSTER_PORT:-8082}
gw_urls=()
for n in a b c; do
  imc_spawn "gw-$n" build/hosts/im-gateway --listen "127.0.0.1:$port" \
    --grpc-listen "127.0.0.1:$(imc_free_port)" --router "$svc_grpc" \
    --node-id "gw-$n" --jwt-secret "$secret" --admin-token "$admin" \
    "${backends[@]}"
  gw_urls+=("127.0.0.1:$port")
  port=$((port + 1))
done
i=0
for n in a b c; do
  imc_wait_ready "gw-$n" "http://${gw_urls[i]}/readyz"
  i=$((i + 1))
done

cat >&2 <<MSG

imchat cluster running (Ctrl-C stops it):
  gateways:  ws://${gw_urls[0]}/ws  (gw-a)
             ws://${gw_urls[1]}/ws  (gw-b)
             ws://${gw_urls[2]}/ws  (gw-c)
  readiness: http://${gw_urls[0]}/readyz  http://${gw_urls[1]}/readyz
             http://${gw_urls[2]}/readyz  http://$svc_http/readyz (im-service)
  a token:   build/hosts/imchatd token alice --jwt-secret $secret
  chat:      build/hosts/imchat --server ws://${gw_urls[0]}/ws \\
               --token "\$(build/hosts/imchatd token alice --jwt-secret $secret)" chat bob
  groups:    curl -X PUT -H 'Authorization: Bearer $admin' \\
               http://${gw_urls[0]}/v1/groups/team/members/alice
  logs:      $imc_tmp/{im-service,gw-a,gw-b,gw-c,redis,mariadb,etcd,kafka}.log
MSG

# Until one of them ends (or Ctrl-C).
rc=0
wait -n "${imc_pids[@]}" || rc=$?
for i in "${!imc_pids[@]}"; do
  if ! kill -0 "${imc_pids[i]}" 2>/dev/null; then
    echo "cluster: ${imc_names[i]} exited (status $rc); its log ends:" >&2
    tail -n 20 "$imc_tmp/${imc_names[i]}.log" >&2
  fi
done
exit 1
