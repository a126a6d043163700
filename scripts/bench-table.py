#!/usr/bin/env python3
"""Print criterion results of `cargo bench --bench kernels` as a markdown
table: time, GB/s of weight bytes, and the fraction of the read bandwidth
measured in the same run (membw/read/{1,2}t)."""
import glob, json, os, re, sys

root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
rows = {}
for bj in glob.glob(os.path.join(root, "**/new/benchmark.json"), recursive=True):
    b = json.load(open(bj))
    est = json.load(open(os.path.join(os.path.dirname(bj), "estimates.json")))
    ns = est["median"]["point_estimate"]
    nbytes = (b.get("throughput") or {}).get("Bytes")
    rows[b["full_id"]] = (ns, nbytes)

bw = {}
for t in ("1t", "2t"):
    k = f"membw/read/{t}"
    if k in rows:
        ns, nbytes = rows[k]
        bw[t] = nbytes / ns  # bytes per ns == GB/s
print("| benchmark | median time | weight GB/s | % of read BW (same threads) |")
print("|---|---:|---:|---:|")
for t, v in sorted(bw.items()):
    print(f"| membw/read/{t} | {rows['membw/read/' + t][0] / 1e6:.2f} ms | {v:.1f} | 100% |")
def key(k):
    m = re.match(r"matmul/(\w+)/(\d+)x(\d+)/(\d)t/B(\d+)", k)
    return (m.group(1), int(m.group(2)) * int(m.group(3)), int(m.group(4)), int(m.group(5))) if m else (k,)
for k in sorted((k for k in rows if k.startswith("matmul/")), key=key):
    ns, nbytes = rows[k]
    t = re.search(r"/(\d)t/", k).group(1) + "t"
    gbs = nbytes / ns
    frac = f"{100 * gbs / bw[t]:.0f}%" if t in bw else "-"
    time = f"{ns / 1e6:.3f} ms" if ns >= 1e5 else f"{ns / 1e3:.1f} µs"
    print(f"| {k} | {time} | {gbs:.1f} | {frac} |")
