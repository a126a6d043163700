#!/usr/bin/env bash
# The whole test suite: fetch the real models (idempotent), then every test
# of every crate (unit, malformed-input, mutation fuzz + fuzz corpus replay,
# golden and real-model tests). .ci/run calls this.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/fetch-models.sh
cargo test --workspace --locked "$@"
