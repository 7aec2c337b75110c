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
