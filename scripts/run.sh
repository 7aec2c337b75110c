#!/usr/bin/env bash
# Builds imchatd (in build/) and runs it on its embedded defaults: everything
# in one process, state under its data directory. Extra arguments go to
# imchatd, e.g.  scripts/run.sh --listen 127.0.0.1:9000 --log-level debug
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/deps.sh
source scripts/deps.sh
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

imc_setup_build build
imc_quiet ninja -C build --quiet

# `imchatd token` takes the same configuration flags as the server.
token_cmd="build/hosts/imchatd token alice"
hint=1
for a in "$@"; do
  case $a in -h | --help | -V | --version) hint=0 ;; esac
  token_cmd+=" $(printf '%q' "$a")"
done
if [ "$hint" -eq 1 ]; then
  cat >&2 <<MSG
To connect, get a token:  $token_cmd
then open ws://HOST:PORT/ws (HOST:PORT from the "listening on" line below)
with "Authorization: Bearer <token>" or ws://HOST:PORT/ws?token=<token>.

To chat with the imchat CLI, in two more terminals (add
--server ws://HOST:PORT/ws if not on 127.0.0.1:8082):
  alice:  build/hosts/imchat --token "\$(${token_cmd})" chat bob
  bob:    build/hosts/imchat --token "\$(${token_cmd/ alice/ bob})" chat alice
MSG
fi

exec build/hosts/imchatd "$@"
