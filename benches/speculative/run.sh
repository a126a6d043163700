#!/usr/bin/env bash
# Speculative decoding on the quote task: starts a node (2 threads) with
# both models on a free loopback port, runs bench.py, stops the node.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash scripts/fetch-models.sh >/dev/null
cargo build --release --locked -q
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
./target/release/realizar node --models-dir models --model smollm2 --model gemma3 \
    --threads 2 --host 127.0.0.1 --port "$port" 2>/dev/null &
node=$!
trap 'kill $node' EXIT
for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 0.1
done
python3 benches/speculative/bench.py "$port"
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^realizar_spec_(draft|accepted)_tokens_total'
