#!/bin/sh
# Build the realizar image without pulling anything: the binary is built
# here (cargo build --release), laid out with its libraries in
# deploy/image/rootfs/, and put in an image FROM scratch.
#
#   deploy/image/build.sh [TAG]        (default tag: realizar:local)
#
# REALIZAR_BINARY=PATH packages that binary instead of building one (the
# test suite packages the one it built).
set -eu
cd "$(dirname "$0")/../.."
tag=${1:-realizar:local}
bin=${REALIZAR_BINARY:-}
if [ -z "$bin" ]; then
  cargo build --release --locked -p realizar
  bin=target/release/realizar
fi
sh deploy/image/rootfs.sh "$bin" deploy/image/rootfs
DOCKER_BUILDKIT=0 docker build -f deploy/image/Dockerfile --target image -t "$tag" .
docker image inspect "$tag" --format "$tag: {{.Size}} bytes"
