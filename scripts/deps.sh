# shellcheck shell=bash
# Sourced by scripts/run.sh, scripts/test.sh and scripts/bench.sh: installs
# the Debian packages the build needs (test.sh those of the tests, bench.sh
# those of the benchmarks), only those missing.
#
# The package lists live here and nowhere else. Add a backend's packages
# (server, client library) when the code starts using it.

IMC_DEB_PACKAGES=(
  # build
  meson ninja-build pkg-config gcc g++
  # libraries
  libwslay-dev libprotobuf-c-dev protobuf-c-compiler libssl-dev
  libsqlite3-dev libinih-dev
  # gRPC between the roles (libimchat/rpc)
  libnghttp2-dev
  # WebSocket permessage-deflate (libimchat/gateway/deflate.c)
  zlib1g-dev
  # the imchat CLI's HTTP(S) pages, and etcd's JSON API in the engines
  libcurl4-openssl-dev
  # libimchat-engines (engines/): Redis, MariaDB, Kafka
  libhiredis-dev libmariadb-dev librdkafka-dev
)

# The web page (web/): node and npm build it. NodeSource's nodejs bundles
# npm; a nodejs or npm command already on PATH counts as installed.
IMC_DEB_WEB_PACKAGES=(
  nodejs npm
)

# What scripts/test.sh needs on top.
IMC_DEB_TEST_PACKAGES=(
  # the web page's browser test (tests/web, playwright-core from npm)
  chromium nodejs npm
  # unit tests
  check libsubunit-dev
  # end-to-end tests (run with /usr/bin/python3)
  python3 python3-websockets python3-protobuf protobuf-compiler openssl
  # style check and fuzzing
  clang-format clang libclang-rt-14-dev
  # the unit suites under memcheck (scripts/test.sh, build-valgrind/)
  valgrind
  # the benchmark's smoke test (tests/bench) runs against a real broker
  mosquitto
  # the engines' suites run against real servers (scripts/servers.sh)
  redis-server redis-tools mariadb-server mariadb-client etcd-server curl
  # the Python binding (bindings/python) and its tests
  python3-cffi
  # the Go binding's tests (bindings/go, examples/go_echo_bot)
  golang-go
  # gRPC interoperability with stock gRPC (tests/grpc_interop.py)
  python3-grpcio python3-grpc-tools
  # the deploy suite (tests/deploy): YAML manifests, systemd-analyze verify
  python3-yaml systemd
)

# What scripts/bench.sh needs on top: the broker imchatd is compared with
# and the plotter of doc/bench/*.png; and the profilers used to find what
# bounds a path (doc/bench/history.md).
IMC_DEB_BENCH_PACKAGES=(
  mosquitto gnuplot-nox
  linux-perf strace
  # the cluster part (--cluster): its backends on loopback (servers.sh)
  redis-server redis-tools mariadb-server mariadb-client etcd-server curl
)

# What scripts/cluster.sh needs on top: the backends it starts
# (scripts/servers.sh) and the mock Kafka's build (tests/engines).
IMC_DEB_CLUSTER_PACKAGES=(
  redis-server redis-tools mariadb-server mariadb-client etcd-server curl
  python3 check libsubunit-dev
)

# Prints the packages of "$@" that are not installed.
imc_missing_packages() {
  local p st
  for p in "$@"; do
    case $p in
      nodejs) command -v node >/dev/null 2>&1 && continue ;;
      npm) command -v npm >/dev/null 2>&1 && continue ;;
    esac
    st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$st" = installed ] || printf '%s\n' "$p"
  done
}

# Installs those of the packages "$@" that are missing; silent when all are
# there. Uses sudo when not run as root.
imc_install_deps() {
  local -a missing sudo=()
  mapfile -t missing < <(imc_missing_packages "$@")
  [ ${#missing[@]} -eq 0 ] && return 0

  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      echo "deps: missing packages: ${missing[*]}" >&2
      echo "deps: run as root or install sudo" >&2
      return 1
    fi
  fi

  echo "deps: installing ${missing[*]}" >&2
  local log
  log=$(mktemp)
  if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get update -qq >"$log" 2>&1 ||
     ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq "${missing[@]}" \
      >>"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "deps: apt-get failed" >&2
    return 1
  fi
  rm -f "$log"
}

imc_install_deps "${IMC_DEB_PACKAGES[@]}"
