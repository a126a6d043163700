#!/usr/bin/env bash
# Speculative decoding on the quote task: starts a node (2 threads) with
# both models on a free loopback port and runs bench.py against it; where
# benches/comparative/run.sh has built llama-server (target/comparative/),
# each model is also served by llama-server (2 threads) in turn and its
# plain decode of the same request measured beside ours.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash scripts/fetch-models.sh >/dev/null
cargo build --release --locked -q
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_health() { for _ in $(seq 600); do curl -sf "http://127.0.0.1:$1/health" >/dev/null && return 0; sleep 0.1; done; return 1; }
port=$(free_port)
./target/release/realizar node --models-dir models --model smollm2 --model gemma3 \
    --threads 2 --host 127.0.0.1 --port "$port" 2>/dev/null &
node=$!
llama=
trap 'kill $node ${llama:-} 2>/dev/null' EXIT
wait_health "$port"
LS=target/comparative/llama-server
if [ -x "$LS" ]; then
    export LD_LIBRARY_PATH=$PWD/target/comparative${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    declare -A FILE=([smollm2]=models/SmolLM2-135M-Instruct.Q4_1.gguf [gemma3]=models/gemma-3-270m-q4_k_m.gguf)
    for m in smollm2 gemma3; do
        lport=$(free_port)
        "$LS" -m "${FILE[$m]}" -t 2 -tb 2 -c 4096 --host 127.0.0.1 --port "$lport" >/dev/null 2>&1 &
        llama=$!
        wait_health "$lport"
        python3 benches/speculative/bench.py "$port" --models "$m" --llama-port "$lport"
        kill "$llama"; wait "$llama" 2>/dev/null || true; llama=
    done
else
    python3 benches/speculative/bench.py "$port"
fi
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^realizar_spec_(draft|accepted)_tokens_total'
