#!/usr/bin/env bash
# Runs every libFuzzer target of tests/fuzz (one per folder of
# tests/fuzz/corpus) for SECONDS each (default 60), from its seeds, under
# ASan/UBSan, in build-fuzz/ (clang). Prints a line per target: executions,
# coverage (edges) and features reached. A crash, leak or timeout fails the
# run and leaves the input in build-fuzz/ (crash-*, leak-*, timeout-*).
#
#   scripts/fuzz.sh [SECONDS]
#
# scripts/test.sh runs it with 5 s per target (IMC_FUZZ_SECONDS).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

secs=${1:-60}
case $secs in
'' | *[!0-9]*)
  echo "usage: scripts/fuzz.sh [SECONDS]" >&2
  exit 2
  ;;
esac

# shellcheck source=scripts/deps.sh
source scripts/deps.sh
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
imc_install_deps "${IMC_DEB_PACKAGES[@]}" clang libclang-rt-14-dev

tmp=$(mktemp -d -t imchat-fuzz.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

CC=clang imc_setup_build build-fuzz -Dfuzz=true -Dtests=false \
  -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false
imc_quiet ninja -C build-fuzz --quiet

rc=0
for dir in tests/fuzz/corpus/*/; do
  t=$(basename "$dir")
  corpus="$tmp/corpus-$t"
  mkdir -p "$corpus"
  cp "$dir"* "$corpus"/
  # A fixed seed: the same inputs, in the same order, on every run.
  if (cd build-fuzz && "./tests/fuzz/$t" -seed=1 -max_total_time="$secs" \
      -max_len=4096 -print_final_stats=1 "$corpus" >"$tmp/$t.log" 2>&1); then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$tmp/$t.log")
    last=$(grep -E '^#[0-9]+' "$tmp/$t.log" | tail -n 1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    echo "fuzz: $t ok (${secs} s, ${execs:-?} executions, cov ${cov:-?}, ft ${ft:-?})"
  else
    tail -40 "$tmp/$t.log" >&2
    echo "fuzz: $t FAILED" >&2
    rc=1
  fi
done
exit "$rc"
