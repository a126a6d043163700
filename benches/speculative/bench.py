"""Prompt-lookup speculative decoding against plain decoding: the model
asked to repeat a ~300-token passage (greedy, up to 320 tokens, streamed),
speculation off and on in interleaved rounds on a realizar node, and, with
--llama-port, llama-server's plain decode of the same request beside it.
Decode speed is (completion tokens − 1) / (first token → last).
Usage: benches/speculative/run.sh (starts the servers), or
python3 bench.py PORT [--llama-port P --llama-model M] against a node serving
smollm2 and gemma3."""
import json, sys, time, http.client, statistics, argparse
ap = argparse.ArgumentParser()
ap.add_argument("port", type=int)
ap.add_argument("--models", default="smollm2,gemma3")
ap.add_argument("--llama-port", type=int)
ap.add_argument("--rounds", type=int, default=3)
a = ap.parse_args()
P = ("The old lighthouse stood at the edge of the cliff, its white paint peeling in long strips. "
     "Every evening the keeper climbed the spiral stairs, one hundred and twelve of them, to light the lamp. "
     "Ships passing in the night saw its beam sweep across the water and knew the rocks were near. "
     "In winter the wind howled through the cracks in the windows, and the keeper wrapped himself in wool blankets. "
     "He kept a logbook of every ship he saw, their names written in careful handwriting, page after page. "
     "On Sundays his daughter rowed out from the village with bread, apples and a jar of honey from her garden. "
     "She told him about the harbour, the new school, and the fishermen who argued about the weather every morning. "
     "He listened, nodding, and asked about the boats by name, because he knew them all by the shape of their lights. "
     "One spring a storm broke the great lens, and for three nights the coast was dark while he waited for the glass. "
     "The villagers lit fires along the headland instead, and no ship was lost, and the keeper never forgot it. "
     "When the new lens arrived on a cart pulled by two grey horses, he polished it for a whole day before he lit it. "
     "Years later, when the light was automated and he moved to a cottage in the village, he still woke at dusk.")
ASK = "Repeat the following passage exactly, word for word.\n\n" + P


def run(port, model, spec):
    c = http.client.HTTPConnection("127.0.0.1", port)
    b = {"model": model, "messages": [{"role": "user", "content": ASK}], "max_tokens": 320,
         "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    if spec is not None:
        b["speculative"] = spec
    t0 = time.time()
    c.request("POST", "/v1/chat/completions", json.dumps(b), {"content-type": "application/json"})
    r = c.getresponse()
    first = None; text = ""; n = None
    for line in r:
        line = line.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        d = json.loads(line[6:])
        if d.get("usage"):
            n = d["usage"]["completion_tokens"]
        if d.get("choices") and d["choices"][0]["delta"].get("content"):
            if first is None:
                first = time.time()
            text += d["choices"][0]["delta"]["content"]
    end = time.time()
    return (n - 1) / (end - first), n, text


for m in a.models.split(","):
    res = {False: [], True: [], "llama": []}
    texts = {}
    for rnd in range(a.rounds):
        order = [False, True] if rnd % 2 == 0 else [True, False]
        if a.llama_port:
            order = ["llama"] + order if rnd % 2 == 0 else order + ["llama"]
        for which in order:
            if which == "llama":
                tps, n, text = run(a.llama_port, m, None)
            else:
                tps, n, text = run(a.port, m, which)
            res[which].append(tps)
            texts[which] = (n, text)
    med = {k: statistics.median(v) for k, v in res.items() if v}
    line = "%s tokens/s: plain %s, speculative %s (%d tokens), x%.2f; same text %s" % (
        m, [round(x, 1) for x in res[False]], [round(x, 1) for x in res[True]], texts[True][0],
        med[True] / med[False], texts[False] == texts[True])
    if a.llama_port:
        line += "; llama-server plain %s (%d tokens): ours plain x%.2f, speculative x%.2f" % (
            [round(x, 1) for x in res["llama"]], texts["llama"][0],
            med[False] / med["llama"], med[True] / med["llama"])
    print(line, flush=True)
