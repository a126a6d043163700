#!/bin/sh
# Lay out the image's root filesystem in DIR from a built `realizar`
# binary: the binary (debug info stripped), the shared libraries it links
# (from ldd: libc, libm, libgcc_s, the loader), a passwd and group naming
# the unprivileged user it runs as, and the folders it writes to.
#
#   deploy/image/rootfs.sh BINARY DIR
set -eu
bin=$1
dir=$2
uid=10001
rm -rf "$dir"
mkdir -p "$dir/usr/local/bin" "$dir/etc" "$dir/models" "$dir/tmp" "$dir/home/realizar"
objcopy --strip-debug "$bin" "$dir/usr/local/bin/realizar"
# Each library at the path the binary's loader looks for it.
ldd "$bin" | awk '/=> \//{print $3} /^\t\//{print $1}' | while read -r lib; do
  mkdir -p "$dir$(dirname "$lib")"
  cp -L "$lib" "$dir$lib"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nrealizar:x:%s:%s:realizar:/home/realizar:/sbin/nologin\n' "$uid" "$uid" > "$dir/etc/passwd"
printf 'root:x:0:\nrealizar:x:%s:\n' "$uid" > "$dir/etc/group"
chmod 1777 "$dir/tmp"
# COPY makes everything root's: the folders the user writes to are open to all.
chmod 1777 "$dir/models" "$dir/home/realizar"
touch "$dir/.keep"
