#!/bin/sh
set -eu
root="${IMGRAPH_INSTANCE_ROOT:?}"
grep -q 'It works' "$root/srv/www/index.html"
grep -q 'listen = 8080' "$root/etc/web/server.conf"
test -s "$root/etc/motd"
echo "web check passed"
