#!/bin/sh
# Runs on the build instance (as root, through Packer's shell provisioner).
set -eu
yum -y update
echo "built by imgraph" > /etc/motd
