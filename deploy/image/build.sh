#!/bin/sh
# Build the realizar image without pulling anything: the binary is built
# here (cargo build --release), laid out with its libraries in
# deploy/image/rootfs/, and put in an image FROM scratch.
#
#   deploy/image/build.sh [TAG]        (default tag: realizar:local)
set -eu
cd "$(dirname "$0")/../.."
tag=${1:-realizar:local}
cargo build --release --locked -p realizar
sh deploy/image/rootfs.sh target/release/realizar deploy/image/rootfs
DOCKER_BUILDKIT=0 docker build -f deploy/image/Dockerfile --target image -t "$tag" .
docker image inspect "$tag" --format "$tag: {{.Size}} bytes"
