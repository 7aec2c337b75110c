#!/bin/sh
# Every dynamic symbol of libimchat.so is declared IMC_EXTERN in a public
# header, and every IMC_EXTERN function is exported.
set -eu
lib=$1
incdir=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
nm -D --defined-only "$lib" | awk '$2 == "T" { sub(/@.*/, "", $3); print $3 }' |
  sort -u >"$tmp/exported"
grep -hv "^#" "$incdir"/*.h | tr '\n' ' ' | grep -o 'IMC_EXTERN[^;(]*(' |
  sed 's/($//; s/.*[ *]//' | sort -u >"$tmp/declared"
if ! diff -u "$tmp/declared" "$tmp/exported"; then
  echo "exported symbols differ from the IMC_EXTERN declarations" >&2
  exit 1
fi
echo "$(wc -l <"$tmp/exported") symbols, all declared"
