"""Drives a running `realizar serve` with the official `openai` package.

Usage: openai_client.py BASE_URL MODEL EXPECTED_GREEDY_CHAT_FILE N_CTX
Every check asserts the content of the response; the first failure raises.
EXPECTED_GREEDY_CHAT_FILE holds what `realizar run --chat --temperature 0
--max-tokens 24` printed for the same question (an independent path through
the engine: one sequence, no server, no batching).
"""
import concurrent.futures
import os
import sys
import threading

import json
import urllib.request

import openai

base, model, expected_file, n_ctx = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
expected = open(expected_file, encoding="utf-8").read()
if expected.endswith("\n"):
    expected = expected[:-1]
# A server with API keys gets one from the environment (the cluster test's).
api_key = os.environ.get("REALIZAR_TEST_API_KEY", "unused")
client = openai.OpenAI(base_url=base + "/v1", api_key=api_key, max_retries=0, timeout=300)
# A request the model answers at length: the checks below need 24 tokens
# before any end of turn (a short factual question ends sooner under some
# numerics, and a near-tie decides whether it does).
QUESTION = "Write a short story about a dragon who learns to fly."
passed = []


def tokenize(text, add_special=True):
    req = urllib.request.Request(base + "/tokenize", method="POST",
                                 headers={"content-type": "application/json", "authorization": "Bearer " + api_key},
                                 data=json.dumps({"model": model, "content": text, "add_special": add_special}).encode())
    with urllib.request.urlopen(req) as r:
        return json.load(r)["tokens"]


def check(name):
    def wrap(f):
        f()
        passed.append(name)
        print("ok", name, flush=True)
    return wrap


@check("models list")
def _():
    ids = [m.id for m in client.models.list().data]
    assert model in ids, ids


@check("chat: greedy equals the CLI's single-sequence generation")
def _():
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=24, temperature=0)
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert c.message.content == expected, (c.message.content, expected)
    assert c.finish_reason == "length", c.finish_reason
    assert r.usage.completion_tokens == 24, r.usage
    assert r.usage.total_tokens == r.usage.prompt_tokens + 24
    assert r.object == "chat.completion" and r.model == model and r.id.startswith("chatcmpl-")


@check("streaming chat with usage: same text, usage last")
def _():
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=24, temperature=0,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == expected, (text, expected)
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == ["length"], finals
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None, last
    assert last.usage.completion_tokens == 24
    assert all(ch.usage is None for ch in chunks[:-1])
    # The prompt was computed by the previous request: its blocks are reused.
    assert last.usage.prompt_tokens_details.cached_tokens > 0, last.usage


@check("completions: greedy continuation")
def _():
    r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text.startswith(" Paris"), r.choices[0].text
    assert r.usage.completion_tokens == 4


@check("completions: stop string ends the text before it")
def _():
    r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=30,
                                  temperature=0, stop=["."])
    assert r.choices[0].finish_reason == "stop", r.choices[0]
    assert "." not in r.choices[0].text and r.choices[0].text.startswith(" Paris"), r.choices[0].text


@check("n=2: two choices, seeded, reproducible")
def _():
    kw = dict(model=model, messages=[{"role": "user", "content": "Write a word."}], max_tokens=12,
              temperature=1.0, seed=1234, n=2)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1]
    # Same seed and request, same tokens; the two choices use different streams.
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert a.choices[0].message.content != a.choices[1].message.content, a.choices
    assert 2 <= a.usage.completion_tokens <= 24, a.usage


@check("chat logprobs with top_logprobs")
def _():
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=8, temperature=0,
        logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 8
    for t in content:
        assert len(t.top_logprobs) == 3
        lps = [x.logprob for x in t.top_logprobs]
        assert lps == sorted(lps, reverse=True) and lps[0] <= 0.0
        # Greedy: the chosen token is the most likely one.
        assert t.token == t.top_logprobs[0].token and abs(t.logprob - lps[0]) < 1e-6
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token
    assert "".join(t.token for t in content) == r.choices[0].message.content


@check("completions logprobs")
def _():
    r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=3, temperature=0,
                                  logprobs=2)
    lp = r.choices[0].logprobs
    assert lp.tokens[0] == " Paris" and len(lp.token_logprobs) == 3 and len(lp.top_logprobs) == 3
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])
    assert max(lp.top_logprobs[0].values()) == lp.token_logprobs[0]


@check("error: unknown model is 404")
def _():
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("no error")
    except openai.NotFoundError as e:
        assert e.status_code == 404 and e.body["code"] == "model_not_found", e.body


@check("error: prompt longer than the context is 400 with both numbers")
def _():
    long = "hello " * (n_ctx + 10)
    try:
        client.completions.create(model=model, prompt=long, max_tokens=4)
        raise AssertionError("no error")
    except openai.BadRequestError as e:
        msg = e.body["message"]
        assert e.status_code == 400 and e.body["code"] == "context_length_exceeded", e.body
        n_prompt = len(tokenize(long))
        assert str(n_ctx) in msg and str(n_prompt) in msg, (msg, n_ctx, n_prompt)


@check("error: invalid parameter is 400 naming it")
def _():
    for kw, param in [(dict(temperature=5), "temperature"), (dict(top_p=1.5), "top_p"),
                      (dict(n=0), "n"), (dict(max_tokens=0), "max_tokens"),
                      (dict(logit_bias={"99999999": 1}), "logit_bias")]:
        try:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], **kw)
            raise AssertionError(f"no error for {kw}")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.body["param"] == param, (kw, e.body)


@check("error: queue full is 429 with Retry-After, and the others complete")
def _():
    # The server runs with max_queue = 4: eight concurrent requests overflow it.
    raw = client.with_raw_response
    def one(i):
        try:
            r = raw.completions.create(model=model, prompt=f"Count to fifty: {i}", max_tokens=48, temperature=0,
                                        extra_body={"ignore_eos": True})
            return ("ok", r.parse().usage.completion_tokens)
        except openai.RateLimitError as e:
            return ("429", e.response.headers.get("retry-after"))
    barrier = threading.Barrier(8)
    def go(i):
        barrier.wait()
        return one(i)
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        results = list(ex.map(go, range(8)))
    limited = [r for r in results if r[0] == "429"]
    done = [r for r in results if r[0] == "ok"]
    assert limited and all(r[1] is not None and int(r[1]) >= 1 for r in limited), results
    assert done and all(r[1] == 48 for r in done), results


print(f"{len(passed)} checks passed")
