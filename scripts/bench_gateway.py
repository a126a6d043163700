#!/usr/bin/env python3
"""What the gateway costs: one node, the same node behind a gateway, measured
in one run (BENCHMARKS.md, "Gateway overhead").

  python3 scripts/bench_gateway.py [--bin target/release/realizar] [--rounds 5] [--workers 1]
                                  [--serve] [--latency-only] [--cpu-only] [--floor]

1. TTFT p50 at concurrency 1 (one `realizar bench` run per round whose
   requests alternate between the node and the gateway, every prompt new
   to the node) and output tokens/s at concurrency 8 (a run per target,
   each first in turn), direct and through the gateway, round by round;
   with --serve, `realizar serve` too (the gateway over a node in one
   process); --latency-only stops there, --cpu-only skips it.
2. The gateway process's own CPU time (utime + stime from /proc/PID/stat)
   per proxied request over 10,000 `/tokenize` requests, 4 keep-alive
   clients.
3. The same for 10,000 streamed 64-token completions at concurrency 8. A
   real node would need most of an hour for them on two cores, and what the
   gateway does per request does not depend on who computes the tokens: a
   replay node (this script) answers the gateway's polls with the real
   node's load report and every completion with the real node's recorded
   64-token stream (with the token-id comments the gateway asks for, for
   failover), event by event. A few hundred streamed requests through the
   real node check that the per-request cost agrees (not with --cpu-only).
4. With --floor, 2. and 3. again through `relay_floor` (gateway/examples:
   a TCP relay on the same runtime with no HTTP at all,
   `cargo build --release --example relay_floor -p realizar-gateway`),
   alternating with the gateway: what moving the same bytes costs on this
   machine before the gateway does anything.

Needs the models (scripts/fetch-models.sh) and a release build.
"""

import argparse
import http.client
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_seconds(pid):
    """(user, system) CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime, stime: fields 14 and 15 of stat(5); here offset by the two
    # fields before the ")".
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def per_request(before, after, n):
    """'T us/request (user U + system S)' between two cpu_seconds readings."""
    u, s = (after[0] - before[0]) / n * 1e6, (after[1] - before[1]) / n * 1e6
    return f"{u + s:.0f} us/request (user {u:.0f} + system {s:.0f})"


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", path)
    r = c.getresponse()
    return r.status, r.read()


def wait_for(pred, limit=180):
    t0 = time.time()
    while time.time() - t0 < limit:
        try:
            if pred():
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("timed out waiting")


def bench(bin_, urls, concurrency, requests, max_tokens):
    """`realizar bench` at one concurrency: a report per URL (requests
    alternate between the URLs when there are several)."""
    out = f"/tmp/bench_gateway_{os.getpid()}.json"
    urls = [urls] if isinstance(urls, str) else urls
    subprocess.run(
        [bin_, "bench", "--model", "smollm2", "--concurrency", str(concurrency),
         "--requests", str(requests), "--max-tokens", str(max_tokens), "--prompt-tokens", "128",
         "--json", out, "--quiet"] + [x for u in urls for x in ("--url", u)],
        check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        reports = json.load(f)
    return reports[0] if len(urls) == 1 else {r["url"]: r for r in reports}


def load(port, path, bodies, clients, stream=False):
    """Send every body (keep-alive, `clients` at a time); read each answer to its end."""
    it = iter(enumerate(bodies))
    lock = threading.Lock()
    errors = []

    def worker():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                nxt = next(it, None)
            if nxt is None:
                return
            _, b = nxt
            c.request("POST", path, body=b, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read()
            if r.status != 200 or (stream and not data.rstrip().endswith(b"data: [DONE]")):
                errors.append((r.status, data[:200]))

    ts = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.time()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.time() - t0, errors


class Replay(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    report = b""
    events = []
    pace = 0.0

    def log_message(self, *a):
        pass

    def do_GET(self):
        body = self.report if self.path == "/admin/report" else b"ok"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for e in self.events:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(e), e))
            self.wfile.flush()
            if self.pace:
                time.sleep(self.pace)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/realizar"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ttft-requests", type=int, default=64,
                    help="requests per target and round for TTFT at c=1, the targets interleaved")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=1, help="the gateway's --workers")
    ap.add_argument("--serve", action="store_true", help="measure `realizar serve` in the same rounds")
    ap.add_argument("--latency-only", action="store_true", help="only the interleaved TTFT and tokens/s")
    ap.add_argument("--cpu-only", action="store_true", help="only the gateway's CPU per request (replay node)")
    ap.add_argument("--pace-ms", type=float, default=0.0,
                    help="the replay node's pause between events (0: back to back)")
    ap.add_argument("--floor", action="store_true", help="the same loads through a bare TCP relay, alternating")
    a = ap.parse_args()
    env = dict(os.environ, REALIZAR_MODELS=os.environ.get("REALIZAR_MODELS", os.path.join(ROOT, "models")))
    procs = []

    def start(args, exe=a.bin):
        p = subprocess.Popen([exe] + args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        return p

    try:
        node_port, gw_port = free_port(), free_port()
        start(["node", "--port", str(node_port), "--model", "smollm2", "--id", "bench-node"])
        gw = start(["gateway", "--port", str(gw_port), "--node", f"http://127.0.0.1:{node_port}",
                    "--model", "smollm2@1", "--workers", str(a.workers)])
        wait_for(lambda: json.loads(get(gw_port, "/admin/cluster")[1])["models"][0]["ready"] == ["bench-node"])
        targets = [("direct", node_port), ("gateway", gw_port)]
        if a.serve:
            serve_port = free_port()
            start(["serve", "--port", str(serve_port), "--model", "smollm2"])
            wait_for(lambda: get(serve_port, "/health")[0] == 200)
            targets.append(("serve", serve_port))
        print(f"machine: {os.cpu_count()} CPUs; {a.bin}")

        # 1. Direct and through the gateway, after a warm-up. TTFT at c=1:
        # one run whose requests alternate between the targets, so both see
        # the same machine at the same moments (every prompt is new to the
        # node: `realizar bench` tags each run's and request's first line).
        # Tokens/s at c=8: a run per target, each first in turn.
        for _, port in targets:
            bench(a.bin, f"http://127.0.0.1:{port}", 1, 4, 16)
        rows = {name: [] for name, _ in targets}
        for r in range(0 if a.cpu_only else a.rounds):
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            urls = {name: f"http://127.0.0.1:{port}" for name, port in order}
            c1s = bench(a.bin, list(urls.values()), 1, a.ttft_requests, 16)
            for name, url in urls.items():
                c1, c8 = c1s[url], bench(a.bin, url, 8, 32, 64)
                rows[name].append((c1["ttft_ms"][0], c8["output_tokens_per_s"], c1["errors"] + c8["errors"]))
                print(f"round {r} {name:8}: TTFT p50 {c1['ttft_ms'][0]:.2f} ms (c=1), "
                      f"{c8['output_tokens_per_s']:.1f} output tokens/s (c=8)")
        med = lambda xs: sorted(xs)[len(xs) // 2]
        if a.cpu_only:
            rows = {name: [(0.0, 1.0, 0)] for name, _ in targets}
        d_ttft, g_ttft = med([x[0] for x in rows["direct"]]), med([x[0] for x in rows["gateway"]])
        d_tps, g_tps = med([x[1] for x in rows["direct"]]), med([x[1] for x in rows["gateway"]])
        # The c=1 runs interleave the targets, so a round's two p50s were
        # taken side by side: the median of their differences is the figure.
        paired = med([g[0] - d[0] for d, g in zip(rows["direct"], rows["gateway"])])
        print(f"median over rounds: TTFT p50 direct {d_ttft:.2f} ms, gateway {g_ttft:.2f} ms "
              f"({paired:+.2f} ms, the median of the rounds' differences); "
              f"tokens/s direct {d_tps:.1f}, gateway {g_tps:.1f} "
              f"({(g_tps / d_tps - 1) * 100:+.1f}%); errors {sum(x[2] for v in rows.values() for x in v)}")
        if a.serve:
            s_ttft, s_tps = med([x[0] for x in rows["serve"]]), med([x[1] for x in rows["serve"]])
            print(f"median over rounds: serve TTFT p50 {s_ttft:.2f} ms ({s_ttft - d_ttft:+.2f} ms against "
                  f"the node alone), {s_tps:.1f} tokens/s ({(s_tps / d_tps - 1) * 100:+.1f}%)")
        if a.latency_only:
            return

        # 2. /tokenize through the gateway: its CPU per request.
        body = json.dumps({"model": "smollm2", "content": "The capital of France is Paris, and the capital of Italy is Rome."}).encode()
        floor = os.path.join(os.path.dirname(a.bin), "examples", "relay_floor")

        def through_floor(port, path, body, clients, stream=False):
            """The same load through relay_floor in front of `port`: its CPU per request."""
            fp = free_port()
            f = start([str(fp), f"127.0.0.1:{port}"], exe=floor)
            wait_for(lambda: socket.create_connection(("127.0.0.1", fp)).close() is None)
            c0 = cpu_seconds(f.pid)
            wall, errs = load(fp, path, [body] * a.requests, clients, stream=stream)
            print(f"{path} x{a.requests} through relay_floor: {a.requests / wall:.0f} requests/s, "
                  f"relay CPU {per_request(c0, cpu_seconds(f.pid), a.requests)}; errors {len(errs)}")
            f.terminate()

        for turn in range(2 if a.floor else 1):
            c0, n0 = cpu_seconds(gw.pid), cpu_seconds(procs[0].pid)
            wall, errs = load(gw_port, "/tokenize", [body] * a.requests, 4)
            c1, n1 = cpu_seconds(gw.pid), cpu_seconds(procs[0].pid)
            print(f"/tokenize x{a.requests} through the gateway: {a.requests / wall:.0f} requests/s, "
                  f"gateway CPU {per_request(c0, c1, a.requests)}; "
                  f"the node's {per_request(n0, n1, a.requests)}; errors {len(errs)}")
            if a.floor:
                through_floor(node_port, "/tokenize", body, 4)

        # 3. Streamed 64-token completions: record the real stream once...
        req = json.dumps({"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 64,
                          "ignore_eos": True, "stream": True}).encode()
        c = http.client.HTTPConnection("127.0.0.1", node_port, timeout=120)
        c.request("POST", "/v1/completions", body=req,
                  headers={"Content-Type": "application/json", "x-realizar-token-ids": "1"})
        raw = c.getresponse().read()
        events = [e + b"\n\n" for e in raw.split(b"\n\n") if e.strip()]
        tokens = sum(1 for e in events if b'"text"' in e)
        # ...then a few hundred through the real node...
        real_n = 0 if a.cpu_only else 256
        c0 = cpu_seconds(gw.pid)
        wall, errs = load(gw_port, "/v1/completions", [req] * real_n, 8, stream=True)
        if real_n:
            print(f"streamed {tokens}-token completions x{real_n} through the gateway to the real node: "
                  f"gateway CPU {per_request(c0, cpu_seconds(gw.pid), real_n)}, errors {len(errs)} ({wall:.0f} s)")
        # ...and 10,000 through a gateway to the replay node.
        _, report = get(node_port, "/admin/report")
        rep = json.loads(report)
        replay_port, gw2_port = free_port(), free_port()
        rep["node_id"], rep["url"] = "replay", f"http://127.0.0.1:{replay_port}"
        Replay.report = json.dumps(rep).encode()
        Replay.events = events
        Replay.pace = a.pace_ms / 1000
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", replay_port), Replay)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        gw2 = start(["gateway", "--port", str(gw2_port), "--node", f"http://127.0.0.1:{replay_port}",
                     "--model", "smollm2@1", "--workers", str(a.workers)])
        wait_for(lambda: json.loads(get(gw2_port, "/admin/cluster")[1])["models"][0]["ready"] == ["replay"])
        for turn in range(2 if a.floor else 1):
            c0 = cpu_seconds(gw2.pid)
            wall, errs = load(gw2_port, "/v1/completions", [req] * a.requests, 8, stream=True)
            print(f"streamed {tokens}-token completions x{a.requests} through the gateway to the replay node "
                  f"({len(events)} events each): {a.requests / wall:.0f} requests/s, gateway CPU "
                  f"{per_request(c0, cpu_seconds(gw2.pid), a.requests)}, errors {len(errs)}")
            if a.floor:
                through_floor(replay_port, "/v1/completions", req, 8, stream=True)
        srv.shutdown()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
