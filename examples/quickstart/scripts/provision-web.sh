#!/bin/sh
set -eu
: "${IMGRAPH_ROOT:?IMGRAPH_ROOT is not set}"
test -f "$IMGRAPH_ROOT/etc/motd" || { echo "web must be built from base" >&2; exit 1; }
mkdir -p "$IMGRAPH_ROOT/etc/web"
printf 'listen = 8080\nroot = /srv/www\n' > "$IMGRAPH_ROOT/etc/web/server.conf"
