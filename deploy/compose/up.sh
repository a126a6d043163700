#!/bin/sh
# The local cluster in one command (after scripts/fetch-models.sh): build
# the image here (nothing pulled), bring deploy/compose up, and wait until
# the gateway's health check passes. Arguments go to `up` (for example
# --profile observability, which also builds the Prometheus image).
#
#   deploy/compose/up.sh [--profile observability]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
sh "$root/deploy/image/build.sh" >/dev/null
case " $* " in
  *" observability "*) sh "$root/deploy/prometheus/build.sh" >/dev/null ;;
esac
if docker compose version >/dev/null 2>&1; then
  compose="docker compose"
else
  compose="docker-compose"
fi
# Options such as --profile go before `up`.
$compose -f "$here/docker-compose.yml" "$@" up -d
gateway=$($compose -f "$here/docker-compose.yml" ps -q gateway)
i=0
until [ "$(docker inspect -f '{{.State.Health.Status}}' "$gateway")" = healthy ]; do
  i=$((i + 1))
  if [ "$i" -gt 120 ]; then
    echo "the gateway is not healthy after 120 s: $compose -f $here/docker-compose.yml logs" >&2
    exit 1
  fi
  sleep 1
done
echo "realizar: gateway healthy on http://127.0.0.1:${REALIZAR_PORT:-8080} after ${i} s"
