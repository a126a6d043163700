#!/usr/bin/env python3
"""Run the golden prompts through a running llama-server and compare with the goldens.

    llamacpp_compare.py PORT GOLDEN.json VARIANT

VARIANT is F32, Q8_0 or Q4_1 for generation_smollm2.json (anything for
generation_gemma3.json). The request is the one the goldens record: the prompt's
token ids, temperature 0, top_k 1, n_predict 32, ignore_eos, cache_prompt false,
n_probs 5. Prints, per prompt: whether the first position's top-5 ids equal the
golden's, the largest |logprob difference| there, the largest over all steps up
to the first divergence, the step where the greedy stream first differs and the
golden's smallest top1-top2 margin up to that step (the issue allows a
divergence only after a margin below 0.01).
"""
import json
import sys
import urllib.request


def main():
    port, golden, variant = sys.argv[1], sys.argv[2], sys.argv[3]
    g = json.load(open(golden))
    prompts = g["models"][variant]["prompts"] if "models" in g else g["prompts"]
    for key, p in prompts.items():
        body = {
            "prompt": p["prompt_token_ids"],
            "n_predict": 32,
            "temperature": 0,
            "top_k": 1,
            "n_probs": 5,
            "ignore_eos": True,
            "cache_prompt": False,
        }
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/completion",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        steps = json.load(urllib.request.urlopen(req))["completion_probabilities"]
        got = [s["id"] for s in steps]
        want = p["generated_token_ids"]
        first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
        top, wtop = steps[0]["top_logprobs"], p["steps"][0]["top5"]
        same_ids = [t["id"] for t in top] == [t["id"] for t in wtop]
        by_id = {t["id"]: t["logprob"] for t in top}
        d0 = max(abs(by_id[t["id"]] - t["logprob"]) for t in wtop if t["id"] in by_id)
        dall = 0.0
        for i, (s, w) in enumerate(zip(steps, p["steps"])):
            if first is not None and i >= first:
                break
            ids = {t["id"]: t["logprob"] for t in s["top_logprobs"]}
            for t in w["top5"]:
                if t["id"] in ids:
                    dall = max(dall, abs(ids[t["id"]] - t["logprob"]))
        if first is None:
            stream = "32/32 identical"
        else:
            margin = min(s["margin"] for s in p["steps"][: first + 1])
            allowed = "allowed" if margin < 0.01 else "not allowed"
            stream = f"differs at step {first} (golden min margin {margin:.3f}: {allowed})"
        print(
            f"{variant:5} {key}: top-5 ids {'equal' if same_ids else 'DIFFER'}, "
            f"first-position max|dlogprob| {d0:.4f}, all steps {dall:.4f}; {stream}"
        )


if __name__ == "__main__":
    main()
