#!/bin/sh
# Makes this example's origin: a Debian 12 (bookworm) root file system from Debian's
# `debootstrap --variant=minbase`, packed as a tar.zst and cached, so only the first run
# downloads anything. Needs root, debootstrap, tar and zstd:
#   apt-get install debootstrap zstd && sh make-origin.sh
#
# The cache is ${CARGO_TARGET_DIR:-<repository>/target}/debian-origin/bookworm-minbase.tar.zst
# (override with IMGRAPH_DEBIAN_ORIGIN); the example reads bases/bookworm-minbase.tar.zst,
# which this script links (or copies) from the cache. `sh make-origin.sh --cache-only`
# only fills the cache and prints its path.
#
# The mirror is the host's Debian mirror (deb.debian.org unless DEBIAN_MIRROR says
# otherwise). The root's sources list names bookworm, bookworm-updates and
# bookworm-security, so `apt list --upgradable` inside an instance sees security fixes.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
suite=bookworm
cache=${IMGRAPH_DEBIAN_ORIGIN:-${CARGO_TARGET_DIR:-$repo/target}/debian-origin/$suite-minbase.tar.zst}

if [ -s "$cache" ]; then
  echo "make-origin.sh: cached: $cache" >&2
else
  [ "$(id -u)" -eq 0 ] || { echo "make-origin.sh: debootstrap needs root" >&2; exit 1; }
  command -v debootstrap >/dev/null || { echo "make-origin.sh: debootstrap not found: apt-get install debootstrap" >&2; exit 1; }
  command -v zstd >/dev/null || { echo "make-origin.sh: zstd not found: apt-get install zstd" >&2; exit 1; }
  mkdir -p "$(dirname "$cache")"
  work=$(mktemp -d "$(dirname "$cache")/make-origin.XXXXXX")
  trap 'rm -rf --one-file-system "$work"' EXIT INT TERM
  start=$(date +%s)
  debootstrap --variant=minbase "$suite" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    echo "make-origin.sh: debootstrap failed (log above)" >&2
    exit 1
  }
  root=$work/root
  cat >"$root/etc/apt/sources.list" <<LIST
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
LIST
  # What a root file system image should not carry: downloaded indexes and packages,
  # device nodes (the sandbox provides /dev), logs of the bootstrap itself.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
         "$root"/var/cache/apt/archives/*.deb "$root"/dev/* "$root"/var/log/bootstrap.log \
         "$root"/debootstrap
  tar --numeric-owner --sort=name --one-file-system -C "$root" -cf - . \
    | zstd -q -T0 -19 -o "$work/origin.tar.zst"
  mv "$work/origin.tar.zst" "$cache"
  echo "make-origin.sh: made $cache in $(( $(date +%s) - start ))s ($(du -h "$cache" | cut -f1))" >&2
fi

if [ "${1:-}" = "--cache-only" ]; then
  echo "$cache"
  exit 0
fi
mkdir -p "$here/bases"
ln -f "$cache" "$here/bases/$suite-minbase.tar.zst" 2>/dev/null \
  || cp "$cache" "$here/bases/$suite-minbase.tar.zst"
echo "make-origin.sh: $here/bases/$suite-minbase.tar.zst ready" >&2
