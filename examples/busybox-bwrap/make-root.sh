#!/bin/sh
# Assembles a minimal root file system from Debian's busybox-static package into
# bases/busybox-root (the origin of this example). Run it once before `imgraph apply`:
#   apt-get install busybox-static bubblewrap && sh make-root.sh
set -eu
cd "$(dirname "$0")"
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "make-root.sh: $busybox not found: apt-get install busybox-static" >&2; exit 1; }
root=bases/busybox-root
rm -rf "$root"
mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" "$root/etc" "$root/tmp" \
         "$root/root" "$root/home" "$root/var" "$root/proc" "$root/dev"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\n' > "$root/etc/group"
printf 'ID=busybox\nNAME="busybox root"\n' > "$root/etc/os-release"
chmod 1777 "$root/tmp"
echo "make-root.sh: $root ready ($(ls "$root/bin" | wc -l) commands)"
