# shellcheck shell=bash
# Helpers shared by scripts/run.sh and scripts/test.sh (sourced).

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
