#!/usr/bin/env bash
# Build llama.cpp at the goldens' commit twice — once for AVX2 only, once
# natively for this machine — and run the golden prompts of
# ../shared/golden/generation_*.json (copied to tests/golden/) through both.
# Shows how far llama.cpp's own builds are from the goldens, the yardstick for
# realizar's numbers from `cargo run --release -p realizar-node --example
# diag_streams`. Not part of the test suite: two C++ builds take ~15 minutes
# on two cores. Needs cmake and ninja (pip install cmake ninja) and a C++
# compiler; fetches the llama-cpp-python 0.3.36 sdist from PyPI, whose
# vendor/llama.cpp is commit 0c1e570, the commit the goldens name.
#
#   bash scripts/llamacpp-crosscheck.sh            # both builds, all models
#   BUILDS=native bash scripts/llamacpp-crosscheck.sh
#
# Afterwards target/llamacpp/ggml_dump (from scripts/ggml_dump.cpp, linked to
# the AVX2 build) dumps every tensor llama.cpp computes; see the end of this file.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$root/target/llamacpp"
mkdir -p "$work"
cd "$work"

SDIST=llama_cpp_python-0.3.36.tar.gz
SDIST_URL=https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/$SDIST
SDIST_SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
COMMIT=0c1e57098bba43ac29e6e3b677cdceebdd22334f

if [ "$(sha256sum "$SDIST" 2>/dev/null | cut -d' ' -f1)" != "$SDIST_SHA" ]; then
    curl -fsSL -o "$SDIST.partial" "$SDIST_URL"
    [ "$(sha256sum "$SDIST.partial" | cut -d' ' -f1)" = "$SDIST_SHA" ] || {
        echo "sha256 mismatch for $SDIST" >&2
        exit 1
    }
    mv "$SDIST.partial" "$SDIST"
fi
src="$work/llama_cpp_python-0.3.36/vendor/llama.cpp"
[ -d "$src" ] || tar xzf "$SDIST"
head="$(git -C "$src" rev-parse HEAD)"
[ "$head" = "$COMMIT" ] || {
    echo "vendor/llama.cpp is $head, not $COMMIT" >&2
    exit 1
}

build() { # name, cmake flags...
    local name="$1"
    shift
    if [ ! -x "$work/b-$name/bin/llama-server" ]; then
        cmake -S "$src" -B "$work/b-$name" -G Ninja -DCMAKE_BUILD_TYPE=Release \
            -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DGGML_OPENMP=OFF "$@" >"$work/cfg-$name.log"
        cmake --build "$work/b-$name" --target llama-server -j"$(nproc)" >"$work/build-$name.log"
    fi
}

# The project's own F32 and Q8_0 files (tensor data identical to
# `llama-quantize --allow-requantize` of the Q4_1 file, which made the goldens').
models="$root/models"
for t in F32 Q8_0; do
    f="$models/derived/SmolLM2-135M-Instruct.$t.gguf"
    if [ ! -f "$f" ]; then
        mkdir -p "$models/derived"
        (cd "$root" && cargo run --release -q -- quantize "$models/SmolLM2-135M-Instruct.Q4_1.gguf" "$f" --type "$t")
    fi
done

port=18099
run() { # build, model, golden, variant
    "$work/b-$1/bin/llama-server" -m "$2" -t 2 -c 4096 -np 1 --port "$port" >"$work/server-$1.log" 2>&1 &
    local pid=$!
    for _ in $(seq 60); do
        curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
        sleep 1
    done
    python3 "$root/scripts/llamacpp_compare.py" "$port" "$3" "$4" | sed "s/^/$1 /"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

golden="$root/tests/golden"
for b in ${BUILDS:-avx2 native}; do
    case "$b" in
    avx2) build avx2 -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON ;;
    native) build native -DGGML_NATIVE=ON ;;
    *) echo "unknown build $b" >&2; exit 1 ;;
    esac
    run "$b" "$models/derived/SmolLM2-135M-Instruct.F32.gguf" "$golden/generation_smollm2.json" F32
    run "$b" "$models/derived/SmolLM2-135M-Instruct.Q8_0.gguf" "$golden/generation_smollm2.json" Q8_0
    run "$b" "$models/SmolLM2-135M-Instruct.Q4_1.gguf" "$golden/generation_smollm2.json" Q4_1
    run "$b" "$models/gemma-3-270m-q4_k_m.gguf" "$golden/generation_gemma3.json" gemma3
done

# A tensor dumper over the AVX2 build's libraries, for comparing realizar's
# ggml-avx2 numerics with llama.cpp tensor by tensor:
#   target/llamacpp/ggml_dump MODEL DIR 504,3575,282,4649,314 3
#   cargo run --release -p realizar-node --example ggml_compare -- MODEL DIR 504,3575,282,4649,314 3
if [ -d "$work/b-avx2/bin" ]; then
    g++ -O2 -std=c++17 -I"$src/include" -I"$src/ggml/include" "$root/scripts/ggml_dump.cpp" \
        -o "$work/ggml_dump" -L"$work/b-avx2/bin" -lllama -lggml -lggml-base \
        -Wl,-rpath,"$work/b-avx2/bin"
fi
