#!/usr/bin/env python3
"""Write tests/golden/quantize_gguf.json: f32 inputs and the bytes the gguf
Python package's own quantizers (gguf.quants.quantize) produce for every
type it implements. Run: pip install gguf==0.19.0 numpy; python3 this."""
import json, sys
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

rng = np.random.default_rng(20261128)
cases = []
def add(name, x):
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    for qt in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.BF16):
        q = gguf.quants.quantize(x.reshape(1, -1), qt)
        cases.append({"type": qt.name, "input": name, "f32_bits": x.view(np.uint32).tolist(),
                      "bytes_hex": q.tobytes().hex()})
add("normal", rng.standard_normal(256) * 0.05)
add("uniform", rng.uniform(-3, 3, 256))
add("heavy_tail", rng.standard_t(2, 256))
add("zeros", np.zeros(64))
add("constant", np.full(64, 0.7))
add("ties", np.tile(np.array([1.0, -1.0, 0.5, -0.5] * 8), 2))
add("tiny", rng.standard_normal(64) * 1e-6)
add("positive", rng.uniform(0.1, 2.0, 64))
add("halves", (np.arange(64) - 32) / 4.0)
import importlib.metadata
json.dump({"generator": f"gguf python package {importlib.metadata.version('gguf')} (gguf.quants.quantize)",
           "cases": cases}, open(sys.argv[1] if len(sys.argv) > 1 else "tests/golden/quantize_gguf.json", "w"))
print(len(cases), "cases")
