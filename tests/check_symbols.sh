#!/bin/sh
# Every dynamic symbol of a library (libimchat.so, libimchat-server.so) is
# declared IMC_EXTERN in its public headers, and every IMC_EXTERN function
# is exported. Usage: check_symbols.sh LIB (HEADER_DIR | HEADER...)
set -eu
lib=$1
shift
if [ $# -eq 1 ] && [ -d "$1" ]; then
  set -- "$1"/*.h
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
nm -D --defined-only "$lib" | awk '$2 == "T" { sub(/@.*/, "", $3); print $3 }' |
  sort -u >"$tmp/exported"
grep -hv "^#" "$@" | tr '\n' ' ' | grep -o 'IMC_EXTERN[^;(]*(' |
  sed 's/($//; s/.*[ *]//' | sort -u >"$tmp/declared"
if ! diff -u "$tmp/declared" "$tmp/exported"; then
  echo "exported symbols differ from the IMC_EXTERN declarations" >&2
  exit 1
fi
echo "$(wc -l <"$tmp/exported") symbols, all declared"
