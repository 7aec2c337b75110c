# shellcheck shell=bash
# Helpers shared by scripts/run.sh, test.sh and bench.sh (sourced).

# Runs "$@" with its output kept in a log that is shown only on failure.
imc_quiet() {
  local log rc=0
  log=$(mktemp)
  "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    cat "$log" >&2
    echo "failed ($rc): $*" >&2
  fi
  rm -f "$log"
  return "$rc"
}

# imc_setup_build DIR [meson options...]: configures DIR unless it already
# is a configured build directory. What a failed configure left in DIR is
# removed first.
imc_setup_build() {
  local dir=$1
  shift
  [ -f "$dir/build.ninja" ] && return 0
  if [ -d "$dir/meson-private" ]; then
    rm -rf -- "$dir"
  fi
  imc_quiet meson setup "$dir" "$@"
}

# imc_stop_pids PID...: asks each process to stop (SIGTERM), gives them
# 10 s together, then kills what is left and reaps them all. Only pids the
# calling script started are ever passed here.
imc_stop_pids() {
  local pid i
  for pid in "$@"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "$@"; do
    for ((i = 0; i < 100; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}

# imc_web_deps: installs web/node_modules from web/package-lock.json
# ("npm ci") unless it is already up to date. Fails when npm is missing.
imc_web_deps() {
  if ! command -v npm >/dev/null 2>&1; then
    echo "web: npm is missing (install nodejs and npm: scripts/deps.sh)" >&2
    return 1
  fi
  local stamp=web/node_modules/.package-lock.json
  if [ -f "$stamp" ] && [ "$stamp" -nt web/package-lock.json ]; then
    return 0
  fi
  echo "web: npm ci (web/node_modules)" >&2
  imc_quiet npm ci --prefix web --no-audit --no-fund
}

# imc_enable_web DIR: makes sure the build directory DIR builds the web
# page (-Dweb=enabled), whatever it was configured with before.
imc_enable_web() {
  local dir=$1
  if ! meson configure "$dir" 2>/dev/null | grep -Eq '^[[:space:]]*web[[:space:]]+enabled'; then
    imc_quiet meson configure "$dir" -Dweb=enabled
  fi
}
