#!/bin/sh
# Runs on this machine (sandbox "none") with IMGRAPH_ROOT set to the image's root folder.
set -eu
: "${IMGRAPH_ROOT:?IMGRAPH_ROOT is not set}"
cp "$IMGRAPH_ROOT/etc/app/motd" "$IMGRAPH_ROOT/etc/motd"
grep -v '^#' packages.txt | sed '/^$/d' > "$IMGRAPH_ROOT/etc/app/packages"
echo "image=$IMGRAPH_IMAGE version=$IMGRAPH_VERSION" > "$IMGRAPH_ROOT/etc/app/build-info"
