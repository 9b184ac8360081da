#!/bin/sh
# Runs INSIDE the image (sandbox "bwrap"): / is the image; the current directory holds
# this build's inputs (read-only), and nothing else of the project.
set -eu
echo 'app:x:1000:1000:app:/home/app:/bin/sh' >> /etc/passwd
mkdir -p /home/app
mkdir -p /etc/app
echo "built by imgraph as $IMGRAPH_IMAGE $IMGRAPH_VERSION" > /etc/app/build-info
