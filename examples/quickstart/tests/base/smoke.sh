#!/bin/sh
# Runs against a fresh instance: IMGRAPH_INSTANCE_ROOT is a new unpack of the final image.
set -eu
root="${IMGRAPH_INSTANCE_ROOT:?}"
grep -q '^ID=tiny' "$root/etc/os-release"
test -s "$root/etc/motd"
grep -q curl "$root/var/lib/acme/packages"
echo "base smoke test passed on $IMGRAPH_INSTANCE_ID"
