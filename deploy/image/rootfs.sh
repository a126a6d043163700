#!/bin/sh
# Lay out an image's root filesystem in DIR from a built binary: the
# binary (debug info stripped) as /usr/local/bin/NAME, the shared
# libraries it links (from ldd: libc, libm, libgcc_s, the loader), a
# passwd and group naming the unprivileged user it runs as, and the
# folders it writes to (DIR/models, DIR/home/realizar, DIR/tmp, and any
# WRITABLE folder given).
#
#   deploy/image/rootfs.sh BINARY DIR [NAME [WRITABLE...]]   (NAME: realizar)
set -eu
bin=$1
dir=$2
name=${3:-realizar}
shift 2
[ $# -gt 0 ] && shift
uid=10001
rm -rf "$dir"
mkdir -p "$dir/usr/local/bin" "$dir/etc" "$dir/models" "$dir/tmp" "$dir/home/realizar"
objcopy --strip-debug "$bin" "$dir/usr/local/bin/$name"
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
for w in "$@"; do
  mkdir -p "$dir$w"
  chmod 1777 "$dir$w"
done
touch "$dir/.keep"
