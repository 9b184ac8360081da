#!/bin/sh
# Runs INSIDE a fresh instance of the final image.
set -eu
[ "$(readlink /bin/sh)" = busybox ] || { echo "not running inside the busybox image" >&2; exit 1; }
grep -q '^app:' /etc/passwd
grep -q 'busybox image' /etc/motd
grep -q "$IMGRAPH_IMAGE" /etc/app/build-info
echo "inside $(. /etc/os-release; echo "$ID"): all checks passed"
