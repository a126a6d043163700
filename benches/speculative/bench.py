"""Prompt-lookup speculative decoding against plain decoding on one node:
the model asked to repeat a 100-token passage (greedy, 96 tokens, streamed),
speculation off and on in interleaved rounds; decode time is first token to
last. Usage: benches/speculative/run.sh (starts the node), or
python3 bench.py PORT against a node serving smollm2 and gemma3."""
import json, sys, time, http.client, statistics
PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 9315
P=("The old lighthouse stood at the edge of the cliff, its white paint peeling in long strips. Every evening the keeper climbed the spiral stairs, one hundred and twelve of them, to light the lamp. Ships passing in the night saw its beam sweep across the water and knew the rocks were near. In winter the wind howled through the cracks in the windows, and the keeper wrapped himself in wool blankets. He kept a logbook of every ship he saw, their names written in careful handwriting, page after page.")
def run(m, spec):
    c=http.client.HTTPConnection("127.0.0.1", PORT)
    b={"model":m,"messages":[{"role":"user","content":"Repeat the following passage exactly, word for word.\n\n"+P}],"max_tokens":96,"temperature":0,"speculative":spec,"stream":True}
    t0=time.time(); c.request("POST","/v1/chat/completions",json.dumps(b),{"content-type":"application/json"})
    r=c.getresponse(); first=None; n=0; text=""
    for line in r:
        line=line.decode().strip()
        if not line.startswith("data: ") or line=="data: [DONE]": continue
        d=json.loads(line[6:]); 
        if d["choices"] and d["choices"][0]["delta"].get("content"):
            if first is None: first=time.time()
            text+=d["choices"][0]["delta"]["content"]
    end=time.time()
    return first-t0, end-first, text
for m in ["smollm2","gemma3"]:
    res={False:[],True:[]}; texts={}
    for rnd in range(3):
        for spec in ([False,True] if rnd%2==0 else [True,False]):
            ttft, dec, text = run(m, spec); res[spec].append(dec); texts[spec]=text
    print(m, "decode s (95 tokens after the first): plain", [round(x,3) for x in res[False]], "spec", [round(x,3) for x in res[True]],
      "speedup %.2f" % (statistics.median(res[False])/statistics.median(res[True])), "same text", texts[False]==texts[True])
