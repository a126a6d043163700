#!/bin/sh
# The Prometheus image of the compose cluster's observability profile,
# built without pulling anything: the prometheus binary of Debian's
# package (the installed one, else `apt-get download`ed and unpacked here)
# with the libraries it links, FROM scratch.
#
#   deploy/prometheus/build.sh [TAG]   (default tag: realizar-prometheus:local)
set -eu
cd "$(dirname "$0")/../.."
tag=${1:-realizar-prometheus:local}
bin=/usr/bin/prometheus
if [ ! -x "$bin" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download prometheus >/dev/null && dpkg-deb -x prometheus_*.deb root)
  bin=$tmp/root/usr/bin/prometheus
fi
sh deploy/image/rootfs.sh "$bin" deploy/prometheus/rootfs prometheus /prometheus
DOCKER_BUILDKIT=0 docker build -f deploy/prometheus/Dockerfile -t "$tag" .
docker image inspect "$tag" --format "$tag: {{.Size}} bytes"
