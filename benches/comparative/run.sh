#!/usr/bin/env bash
# realizar vs llama.cpp's llama-server, same machine, same GGUF files, same
# threads and per-sequence context, measured by `realizar bench` against
# each server in alternation. Writes target/comparative/results.json and
# the table between the markers in BENCHMARKS.md.
#
#   benches/comparative/run.sh            # all four models, 2 rounds
#   MODELS="smollm2-q4_1" ROUNDS=1 benches/comparative/run.sh
#
# llama-server comes from PyPI: the llama-cpp-python sdist vendors llama.cpp,
# and we build its `llama-server` target (cmake and ninja from PyPI too).
# Nothing is downloaded from anywhere but the package registries.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
OUT=$ROOT/target/comparative
mkdir -p "$OUT"
THREADS=${THREADS:-2}
CTX=${CTX:-1024}          # per sequence, both servers
SLOTS=${SLOTS:-8}
ROUNDS=${ROUNDS:-2}
# The bench's requests are greedy, which realizar speculates on by default
# (prompt lookup); the table compares plain decoding unless DRAFT_MAX says
# otherwise (benches/speculative/ measures speculation on its own task).
DRAFT_MAX=${DRAFT_MAX:-0}
SETTLE_S=${SETTLE_S:-3}   # after the start measurement, before the rest
LLAMA_CPP_PYTHON=${LLAMA_CPP_PYTHON:-0.3.36}
MODELS=${MODELS:-"smollm2-q4_1 smollm2-q8_0 smollm2-q4_k_m gemma3-q4_k_m"}

cargo build --release --quiet
RZ=$ROOT/target/release/realizar
bash scripts/fetch-models.sh
mkdir -p models/derived
declare -A FILE=(
    [smollm2-q4_1]=models/SmolLM2-135M-Instruct.Q4_1.gguf
    [smollm2-q8_0]=models/derived/SmolLM2-135M-Instruct.Q8_0.gguf
    [smollm2-q4_k_m]=models/derived/SmolLM2-135M-Instruct.Q4_K_M.gguf
    [gemma3-q4_k_m]=models/gemma-3-270m-q4_k_m.gguf
)
[ -f models/derived/SmolLM2-135M-Instruct.Q8_0.gguf ] ||
    "$RZ" quantize models/SmolLM2-135M-Instruct.Q4_1.gguf models/derived/SmolLM2-135M-Instruct.Q8_0.gguf --type Q8_0
[ -f models/derived/SmolLM2-135M-Instruct.Q4_K_M.gguf ] ||
    "$RZ" quantize models/SmolLM2-135M-Instruct.Q4_1.gguf models/derived/SmolLM2-135M-Instruct.Q4_K_M.gguf --type Q4_K_M

# --- llama-server, built from the llama-cpp-python sdist ---------------------
LS=$OUT/llama-server
if [ ! -x "$LS" ]; then
    python3 -m venv "$OUT/venv"
    "$OUT/venv/bin/pip" install --quiet --disable-pip-version-check cmake ninja
    "$OUT/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
        --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$OUT/src"
    tar xzf "$OUT/src/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$OUT/src"
    SRC=$OUT/src/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp
    # Native, but without AMX: a VM can report AMX in cpuid without enabling
    # its register state, and ggml's AMX kernels then die with SIGILL on the
    # first quantized product (this Xeon VM, 2026-12-06). GCC's explicit
    # -mno-* wins over -march=native whatever the order.
    NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    PATH=$OUT/venv/bin:$PATH cmake -S "$SRC" -B "$OUT/llama-build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
        "-DCMAKE_C_FLAGS=$NO_AMX" "-DCMAKE_CXX_FLAGS=$NO_AMX" >/dev/null
    PATH=$OUT/venv/bin:$PATH cmake --build "$OUT/llama-build" --target llama-server llama-perplexity -j"$(nproc)"
    cp "$OUT/llama-build/bin/llama-server" "$LS"
    for lib in "$OUT"/llama-build/bin/*.so*; do [ -e "$lib" ] && cp -P "$lib" "$OUT/"; done
fi
export LD_LIBRARY_PATH=$OUT${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

PORT=18431
wait_health() { # pid
    for _ in $(seq 1 600); do
        if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then return 0; fi
        kill -0 "$1" 2>/dev/null || return 1
        sleep 0.02
    done
    return 1
}

start_server() { # which file -> sets PID, START_NS
    START_NS=$(date +%s%N)
    if [ "$1" = realizar ]; then
        "$RZ" node --model "m=$2" --threads "$THREADS" --ctx "$CTX" --max-batch "$SLOTS" \
            --kv-memory-mib 256 --draft-max "$DRAFT_MAX" --port "$PORT" >"$OUT/server.log" 2>&1 &
    else
        "$LS" -m "$2" -t "$THREADS" -tb "$THREADS" -c $((CTX * SLOTS)) --parallel "$SLOTS" -cb \
            --host 127.0.0.1 --port "$PORT" >"$OUT/server.log" 2>&1 &
    fi
    PID=$!
}

stop_server() {
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=
}
PID=
trap 'stop_server' EXIT
if curl -s "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
    echo "port $PORT is in use: stop what listens there first" >&2
    exit 1
fi

bench() { # name args...
    local name=$1; shift
    "$RZ" bench --url "http://127.0.0.1:$PORT" --model m --quiet --json "$OUT/$name.json" "$@" >/dev/null
}

echo '[]' >"$OUT/results.json"
for round in $(seq 1 "$ROUNDS"); do
    for model in $MODELS; do
        file=${FILE[$model]}
        # Alternate which server goes first from round to round.
        order="realizar llama.cpp"
        [ $((round % 2)) = 0 ] && order="llama.cpp realizar"
        for server in $order; do
            start_server "$server" "$file"
            if ! wait_health "$PID"; then
                echo "$server did not start on $file:" >&2
                tail -20 "$OUT/server.log" >&2
                exit 1
            fi
            # Process start -> first streamed token of a one-token request.
            bench start --concurrency 1 --requests 1 --prompt-tokens 16 --max-tokens 1
            first_ms=$(python3 -c "import json,sys; print(json.load(open('$OUT/start.json'))[0]['ttft_ms'][0])")
            ready_ns=$(date +%s%N)
            start_to_first=$(python3 -c "print(($ready_ns - $START_NS) / 1e6)")
            tag="$OUT/$model.$server.$round"
            # Both servers get the same pause before the steady-state
            # figures: in it our node moves its packed weights onto huge
            # pages (node/src/tensor/arena.rs), a second after warming and
            # only while a core idles. The line above measured the start.
            sleep "$SETTLE_S"
            bench "decode" --concurrency 1 --requests 4 --prompt-tokens 16 --max-tokens 128
            bench "prefill" --concurrency 1 --requests 4 --prompt-tokens 512 --max-tokens 1
            bench "agg" --concurrency 4,8 --requests 16 --prompt-tokens 128 --max-tokens 64
            rss_kb=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
            stop_server
            python3 benches/comparative/collect.py "$OUT" "$model" "$server" "$round" "$file" \
                "$start_to_first" "$first_ms" "$rss_kb"
        done
    done
done
python3 benches/comparative/collect.py --table "$OUT" BENCHMARKS.md
