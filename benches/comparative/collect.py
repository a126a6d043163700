#!/usr/bin/env python3
"""Collects one comparative run (benches/comparative/run.sh) and writes the table.

  collect.py OUT MODEL SERVER ROUND FILE START_TO_FIRST_MS FIRST_MS RSS_KB   append one result
  collect.py --table OUT BENCHMARKS.md                                       write the table
"""
import json
import os
import statistics
import subprocess
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def append(out, model, server, rnd, file, start_to_first, first_ms, rss_kb):
    decode = load(f"{out}/decode.json")[0]
    prefill = load(f"{out}/prefill.json")[0]
    agg = {r["concurrency"]: r for r in load(f"{out}/agg.json")}
    errors = decode["errors"] + prefill["errors"] + sum(r["errors"] for r in agg.values())
    res = {
        "model": model, "server": server, "round": int(rnd), "file": file,
        "decode_tps": decode["decode_tokens_per_s_per_request"],
        "prefill_tps": prefill["mean_prompt_tokens"] / (prefill["ttft_ms"][0] / 1e3),
        "prefill_prompt_tokens": prefill["mean_prompt_tokens"],
        "c4_tps": agg[4]["output_tokens_per_s"],
        "c8_tps": agg[8]["output_tokens_per_s"],
        "c8_ttft_p50_ms": agg[8]["ttft_ms"][0],
        "c8_ttft_p99_ms": agg[8]["ttft_ms"][2],
        "peak_rss_mb": int(rss_kb) / 1024,
        "start_to_first_token_ms": float(start_to_first),
        "errors": errors,
    }
    results = load(f"{out}/results.json")
    results.append(res)
    with open(f"{out}/results.json", "w") as f:
        json.dump(results, f, indent=1)
    print(f"{model:16} {server:9} round {rnd}: decode {res['decode_tps']:.1f} tok/s, prefill "
          f"{res['prefill_tps']:.1f} tok/s, c4 {res['c4_tps']:.1f}, c8 {res['c8_tps']:.1f} tok/s, "
          f"TTFT c8 p50 {res['c8_ttft_p50_ms']:.0f} ms, RSS {res['peak_rss_mb']:.0f} MB, "
          f"start->first {res['start_to_first_token_ms']:.0f} ms, errors {errors}", flush=True)


def weight_bytes_per_token(file):
    """Bytes of weights a decode step reads: every matrix, except a token
    embedding that has a separate output projection (only one row is read)."""
    out = subprocess.run(["target/release/realizar", "inspect", "--json", "--tensors", file],
                         capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    tensors = info["tensors"]
    names = {t["name"] for t in tensors}
    total = 0
    for t in tensors:
        if t["name"] == "token_embd.weight" and "output.weight" in names:
            continue
        total += t["bytes"]
    return total


def membw_gbs():
    """Read bandwidth with 2 threads, measured by the kernels bench (same run)."""
    subprocess.run(["cargo", "bench", "--quiet", "--bench", "kernels", "--", "membw/read/2t"],
                   check=True, capture_output=True)
    est = load("target/criterion/membw/read/2t/new/estimates.json")
    ns = est["median"]["point_estimate"]
    return (512 << 20) / ns


def table(out, md):
    results = load(f"{out}/results.json")
    bw = membw_gbs()
    models = []
    for r in results:
        if r["model"] not in models:
            models.append(r["model"])
    metrics = [
        ("decode_tps", "single-stream decode, tokens/s", "{:.1f}", True),
        ("prefill_tps", "prefill of a 512-token prompt, tokens/s", "{:.0f}", True),
        ("c4_tps", "aggregate at concurrency 4, tokens/s", "{:.1f}", True),
        ("c8_tps", "aggregate at concurrency 8, tokens/s", "{:.1f}", True),
        ("c8_ttft_p50_ms", "TTFT p50 at concurrency 8, ms", "{:.0f}", False),
        ("c8_ttft_p99_ms", "TTFT p99 at concurrency 8, ms", "{:.0f}", False),
        ("peak_rss_mb", "peak RSS, MB", "{:.0f}", False),
        ("start_to_first_token_ms", "process start → first token, ms", "{:.0f}", False),
    ]
    lines = []
    lines.append(f"Read bandwidth measured in the same run (criterion `membw/read/2t`): **{bw:.1f} GB/s**. "
                 "Each cell: realizar / llama.cpp (ratio), median over rounds; for times and memory a ratio "
                 "below 1 favours realizar.\n")
    for m in models:
        rs = [r for r in results if r["model"] == m]
        file = rs[0]["file"]
        wb = weight_bytes_per_token(file)
        roof = bw * 1e9 / wb
        lines.append(f"\n**{m}** (`{file}`, {wb / 1e6:.1f} MB of weights read per decoded token, "
                     f"roofline {roof:.0f} tokens/s)\n")
        lines.append("| metric | realizar | llama.cpp | ratio |")
        lines.append("|---|---:|---:|---:|")
        for key, label, fmt, _ in metrics:
            a = statistics.median(r[key] for r in rs if r["server"] == "realizar")
            b = statistics.median(r[key] for r in rs if r["server"] == "llama.cpp")
            lines.append(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {a / b:.2f}× |")
        a = statistics.median(r["decode_tps"] for r in rs if r["server"] == "realizar")
        b = statistics.median(r["decode_tps"] for r in rs if r["server"] == "llama.cpp")
        lines.append(f"| decode as a fraction of the roofline | {a / roof:.0%} | {b / roof:.0%} | |")
        errs = sum(r["errors"] for r in rs)
        if errs:
            lines.append(f"\n{errs} request errors in this model's runs.")
    text = "\n".join(lines) + "\n"
    begin, end = "<!-- comparative:begin -->", "<!-- comparative:end -->"
    doc = open(md).read()
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin) + len(begin)] + "\n" + text + doc[doc.index(end):]
    else:
        doc += f"\n{begin}\n{text}{end}\n"
    with open(md, "w") as f:
        f.write(doc)
    print(text)


if __name__ == "__main__":
    if sys.argv[1] == "--table":
        table(sys.argv[2], sys.argv[3])
    else:
        append(*sys.argv[1:9])
