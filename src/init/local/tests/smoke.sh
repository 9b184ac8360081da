#!/bin/sh
# Runs against a fresh instance: IMGRAPH_INSTANCE_ROOT is a new unpack of the final image.
set -eu
root="${IMGRAPH_INSTANCE_ROOT:?IMGRAPH_INSTANCE_ROOT is not set}"
test -s "$root/etc/motd"
grep -q 'image=app version=' "$root/etc/app/build-info"
echo "smoke test passed on $IMGRAPH_INSTANCE_ID"
