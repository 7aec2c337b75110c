#!/usr/bin/env bash
# Builds the tree with -Werror and ASan/UBSan in build-test/ and runs every
# test (unit, end-to-end, and the web page in Chromium after npm ci), the
# unit suites again under valgrind (build-valgrind/), the fuzz targets, plus
# a clang-format check of the C sources.
# Extra arguments go to `meson test`, e.g. scripts/test.sh --suite e2e
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/deps.sh
source scripts/deps.sh
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
imc_install_deps "${IMC_DEB_TEST_PACKAGES[@]}"
# The web page and its browser test need web/node_modules: npm ci (fails,
# rather than skipping the suite, when npm is missing).
imc_web_deps

# --------------------------------------------------------------------------
# Processes this script starts (test servers) and their cleanup: only the
# pids recorded here are killed, never anything found by name.
# --------------------------------------------------------------------------
imc_pids=()
imc_tmp=$(mktemp -d -t imchat-test.XXXXXX)

# imc_spawn NAME CMD [ARGS...]: runs CMD in the background with its output in
# $imc_tmp/NAME.log and records its pid for the cleanup.
# shellcheck disable=SC2317  # unused until the first backing server
imc_spawn() {
  local name=$1
  shift
  "$@" >"$imc_tmp/$name.log" 2>&1 &
  imc_pids+=("$!")
}

# shellcheck disable=SC2317  # invoked by the trap
imc_cleanup() {
  imc_stop_pids "${imc_pids[@]}"
  rm -rf "$imc_tmp"
}
trap imc_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Backing servers for the engines' suites (scripts/servers.sh) start after
# the build, on loopback, each with its data under "$imc_tmp".
# shellcheck source=scripts/servers.sh
source scripts/servers.sh

# --------------------------------------------------------------------------
# Style: clang-format (configuration in .clang-format)
# --------------------------------------------------------------------------
imc_c_sources() {
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard -- '*.c' '*.h' |
      while IFS= read -r -d "" f; do
        if [ -f "$f" ]; then printf '%s\n' "$f"; fi
      done
  else
    find . -path './build*' -prune -o -type f \( -name '*.c' -o -name '*.h' \) \
      -print | sed 's|^\./||'
  fi
}

unformatted=()
while IFS= read -r f; do
  clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || unformatted+=("$f")
done < <(imc_c_sources | sort)
if [ ${#unformatted[@]} -gt 0 ]; then
  echo "clang-format: these files need formatting (clang-format -i FILE):" >&2
  printf '  %s\n' "${unformatted[@]}" >&2
fi

# --------------------------------------------------------------------------
# Build and test
# --------------------------------------------------------------------------
imc_setup_build build-test -Dwerror=true -Db_sanitize=address,undefined \
  -Db_lundef=false -Dweb=enabled -Dengines=enabled
imc_enable_web build-test
imc_quiet ninja -C build-test --quiet

imc_start_redis
imc_start_mariadb
imc_start_etcd
imc_start_kafka build-test/tests/engines/kafka_mock

# --------------------------------------------------------------------------
# Valgrind: the unit suites under memcheck (the 'valgrind' setup of
# tests/meson.build) in build-valgrind/, a build without sanitizers:
# memcheck also sees reads of uninitialised memory, which ASan does not.
# Only the unit suites' programs are built.
# --------------------------------------------------------------------------
imc_build_valgrind() {
  imc_setup_build build-valgrind -Dwerror=true -Dweb=disabled \
    -Dengines=enabled
  # The unit tests' programs and what they depend on (test certificates).
  local vg_targets
  mapfile -t vg_targets < <(meson introspect build-valgrind --tests \
    --targets | /usr/bin/python3 -c '
import json, os, sys
info = json.load(sys.stdin)
files = {t["id"]: t["filename"] for t in info["targets"]}
for t in info["tests"]:
    if any(s.split(":")[-1] == "unit" for s in t["suite"]):
        print(os.path.relpath(t["cmd"][0], "build-valgrind"))
        for d in t["depends"]:
            for f in files.get(d, []):
                print(os.path.relpath(f, "build-valgrind"))')
  imc_quiet ninja -C build-valgrind --quiet "${vg_targets[@]}"
}

# --------------------------------------------------------------------------
# Side work while the tests run: the valgrind build, then every libFuzzer
# target for IMC_FUZZ_SECONDS (default 5) under ASan/UBSan
# (scripts/fuzz.sh; a crash or leak fails the run and leaves the input in
# build-fuzz/). At the lowest CPU priority, so it takes only what the
# tests leave idle (they mostly wait on timers and on each other).
# --------------------------------------------------------------------------
side_pid=
if [ $# -eq 0 ]; then
  (
    trap - EXIT INT TERM
    side_rc=0
    renice -n 19 -p "$BASHPID" >/dev/null
    imc_build_valgrind || side_rc=1
    scripts/fuzz.sh "${IMC_FUZZ_SECONDS:-5}" || side_rc=1
    exit "$side_rc"
  ) >"$imc_tmp/side.log" 2>&1 &
  side_pid=$!
fi

# imc_kill_tree PID: PID and every process below it.
# shellcheck disable=SC2317  # invoked by the trap
imc_kill_tree() {
  local child
  for child in $(pgrep -P "$1" || true); do
    imc_kill_tree "$child"
  done
  kill "$1" 2>/dev/null || true
}
# shellcheck disable=SC2317  # invoked by the trap
imc_cleanup_side() {
  if [ -n "$side_pid" ] && kill -0 "$side_pid" 2>/dev/null; then
    imc_kill_tree "$side_pid"
  fi
  imc_cleanup
}
trap imc_cleanup_side EXIT

rc=0
# Two test processes more than cores: the Kafka suite's two halves,
# started first, mostly wait (tests/engines/meson.build).
export MESON_TESTTHREADS=${MESON_TESTTHREADS:-$(($(nproc) + 2))}
meson test -C build-test --print-errorlogs "$@" || rc=$?
# A skipped suite is no pass: every server a suite needs was started.
if grep -q '"result": "SKIP"' build-test/meson-logs/testlog.json; then
  echo "tests: some suites were skipped (see build-test/meson-logs/testlog.txt)" >&2
  rc=1
fi

if [ -n "$side_pid" ]; then
  side_rc=0
  wait "$side_pid" || side_rc=$?
  side_pid=
  cat "$imc_tmp/side.log"
  [ "$side_rc" -eq 0 ] || rc=1
  if [ -f build-valgrind/build.ninja ]; then
    meson test -C build-valgrind --setup valgrind --suite unit --no-rebuild \
      --print-errorlogs || rc=1
  fi
fi

if [ ${#unformatted[@]} -gt 0 ]; then
  echo "clang-format: ${#unformatted[@]} file(s) need formatting (listed above)" >&2
  [ "$rc" -ne 0 ] || rc=1
fi
exit "$rc"
