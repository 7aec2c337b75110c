#!/usr/bin/env bash
# Builds imchatd and the web chat page (in build/) and runs it on its
# embedded defaults: everything in one process, state under its data
# directory, the page at http://127.0.0.1:8082/ with the development login
# on (IMC_DEV_LOGIN=0 turns it off). Extra arguments go to imchatd, e.g.
#   scripts/run.sh --listen 127.0.0.1:9000 --log-level debug
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/deps.sh
source scripts/deps.sh
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

imc_install_deps "${IMC_DEB_WEB_PACKAGES[@]}"
# The web page: its npm packages, then meson builds it (web/meson.build).
imc_web_deps
imc_setup_build build -Dweb=enabled
imc_enable_web build
imc_quiet ninja -C build --quiet

# The page's development login (POST /dev/login), loopback only; turn it
# off with IMC_DEV_LOGIN=0.
dev_login=()
[ "${IMC_DEV_LOGIN:-1}" = 1 ] && dev_login=(--dev-login)
listen=127.0.0.1:8082
prev=
for a in "$@"; do
  case $a in --listen=*) listen=${a#--listen=} ;; esac
  [ "$prev" = --listen ] && listen=$a
  prev=$a
done

# `imchatd token` takes the same configuration flags as the server.
token_cmd="build/hosts/imchatd token alice"
hint=1
for a in "$@"; do
  case $a in -h | --help | -V | --version) hint=0 ;; esac
  token_cmd+=" $(printf '%q' "$a")"
done
if [ "$hint" -eq 1 ]; then
  case $listen in *:0) page="http://${listen%:0}:PORT/ (PORT from the \"listening on\" line below)" ;;
    *) page="http://$listen/" ;; esac
  cat >&2 <<MSG
Web chat page: open $page
  and sign in with any user name${dev_login:+ (development login: --dev-login)}.
To connect, get a token:  $token_cmd
then open ws://HOST:PORT/ws (HOST:PORT from the "listening on" line below)
with "Authorization: Bearer <token>" or ws://HOST:PORT/ws?token=<token>.

To chat with the imchat CLI, in two more terminals (add
--server ws://HOST:PORT/ws if not on 127.0.0.1:8082):
  alice:  build/hosts/imchat --token "\$(${token_cmd})" chat bob
  bob:    build/hosts/imchat --token "\$(${token_cmd/ alice/ bob})" chat alice
MSG
fi

exec build/hosts/imchatd "${dev_login[@]}" "$@"
