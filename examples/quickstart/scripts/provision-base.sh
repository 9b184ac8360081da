#!/bin/sh
# Runs on the host (sandbox "none") with IMGRAPH_ROOT pointing at the image's root folder.
set -eu
: "${IMGRAPH_ROOT:?IMGRAPH_ROOT is not set}"
cp "$IMGRAPH_ROOT/etc/acme/motd" "$IMGRAPH_ROOT/etc/motd"
# A real image would install these packages; the example records the wanted list.
mkdir -p "$IMGRAPH_ROOT/var/lib/acme"
grep -v '^#' packages/base.txt | sed '/^$/d' > "$IMGRAPH_ROOT/var/lib/acme/packages"
echo "image=${IMGRAPH_IMAGE} version=${IMGRAPH_VERSION}" > "$IMGRAPH_ROOT/etc/acme/build-info"
