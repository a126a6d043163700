#!/usr/bin/env bash
# The whole test suite: fetch the real models (idempotent), then every test
# of every crate (unit, malformed-input, mutation fuzz + fuzz corpus replay,
# golden and real-model tests). .ci/run calls this. The last line totals
# every `test result:` line of the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/fetch-models.sh
# Catalog names (smollm2, gemma3) resolve in the models directory; the
# suite's is the checkout's models/, where the line above put them.
export REALIZAR_MODELS="$PWD/models"
# What some tests check against: the official openai package (server
# tests), Hugging Face tokenizers (the exported tokenizer.json), numpy
# (the qwen2 reference forward) and kubernetes-validate (the Kubernetes
# schemas, offline), in a virtualenv under target/, and
# promtool (Debian's prometheus package).
if [ ! -x target/pyenv/bin/python ] || ! target/pyenv/bin/python -c "import openai, tokenizers, numpy, kubernetes_validate" 2>/dev/null; then
    [ -x target/pyenv/bin/python ] || python3 -m venv target/pyenv
    target/pyenv/bin/pip install --quiet --disable-pip-version-check openai tokenizers numpy kubernetes-validate
fi
export REALIZAR_TEST_PYTHON="$PWD/target/pyenv/bin/python"
if ! command -v promtool >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >/dev/null
    else
        echo "promtool is missing: install Debian's prometheus package" >&2
    fi
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
passed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{s+=$1} END {print s+0}')
failed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {print s+0}')
echo
echo "$passed passed, $failed failed"
exit "$status"
