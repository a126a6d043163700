//! Prompt-lookup speculative decoding on a real node and real models: a
//! request that quotes a passage back verifies drafts taken from its prompt
//! (the node's /metrics count them), and its greedy output is token for
//! token what the same request gives with speculation off, alone or in a
//! batch beside other requests; a seeded sampled request that speculates
//! gives one output per seed.

mod common;

use common::Server;
use serde_json::{json, Value};

/// ~300 tokens: with the prompt and the quote, spans cross several of
/// attention's 64-position blocks, which decode splits across tasks and a
/// verification step does not.
const PASSAGE: &str = "The old lighthouse stood at the edge of the cliff, its white paint \
peeling in long strips. Every evening the keeper climbed the spiral stairs, one hundred and \
twelve of them, to light the lamp. Ships passing in the night saw its beam sweep across the \
water and knew the rocks were near. In winter the wind howled through the cracks in the \
windows, and the keeper wrapped himself in wool blankets. He kept a logbook of every ship he \
saw, their names written in careful handwriting, page after page. On Sundays his daughter \
rowed out from the village with bread, apples and a jar of honey from her garden. She told him \
about the harbour, the new school, and the fishermen who argued about the weather every \
morning. He listened, nodding, and asked about the boats by name, because he knew them all by \
the shape of their lights. One spring a storm broke the great lens, and for three nights the \
coast was dark while he waited for the glass. The villagers lit fires along the headland \
instead, and no ship was lost, and the keeper never forgot it. When the new lens arrived on a \
cart pulled by two grey horses, he polished it for a whole day before he lit it. Years later, \
when the light was automated and he moved to a cottage in the village, he still woke at dusk.";

/// The chat completion's text and its tokens (from `logprobs`), asked to
/// repeat the passage (or to answer `extra`'s own messages).
fn complete(s: &Server, model: &str, extra: Value) -> (String, Vec<String>) {
    let ask = format!("Repeat the following passage exactly, word for word.\n\n{PASSAGE}");
    let mut b = json!({
        "model": model,
        "messages": [{"role": "user", "content": ask}],
        "max_tokens": 320,
        "logprobs": true,
    });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    let r = s.post("/v1/chat/completions", &b);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let c = &v["choices"][0];
    let tokens = c["logprobs"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["token"].as_str().unwrap().to_owned())
        .collect();
    (c["message"]["content"].as_str().unwrap().to_owned(), tokens)
}

/// `realizar_spec_{draft,accepted}_tokens_total` for `model`.
fn counts(s: &Server, model: &str) -> (f64, f64) {
    let text = s.get("/metrics").body;
    let read = |name: &str| {
        let key = format!("{name}{{model=\"{model}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    };
    (
        read("realizar_spec_draft_tokens_total"),
        read("realizar_spec_accepted_tokens_total"),
    )
}

#[test]
fn quoting_a_passage_verifies_drafts_and_changes_no_token() {
    let s = Server::start(&["node", "--model", "smollm2", "--model", "gemma3"]);
    s.wait_ready(std::time::Duration::from_secs(120));
    for model in ["smollm2", "gemma3"] {
        // Greedy: on by default.
        let before = counts(&s, model);
        let plain = complete(&s, model, json!({"temperature": 0, "speculative": false}));
        assert_eq!(counts(&s, model), before, "{model}: no drafts when off");
        let fast = complete(&s, model, json!({"temperature": 0}));
        let (drafted, accepted) = counts(&s, model);
        let (drafted, accepted) = (drafted - before.0, accepted - before.1);
        println!(
            "{model}: greedy, {} tokens; {drafted} drafted, {accepted} accepted",
            plain.1.len()
        );
        assert!(plain.1.len() > 200, "{model}: {:?}", plain.0);
        assert_eq!(
            fast, plain,
            "{model}: speculation changed the greedy output"
        );
        assert!(
            accepted > 0.0 && accepted <= drafted,
            "{model}: {drafted} drafted, {accepted} accepted"
        );
        // A passage quoted back is mostly guessed right.
        assert!(
            accepted >= plain.1.len() as f64 / 2.0,
            "{model}: {accepted} of {} tokens from drafts",
            plain.1.len()
        );

        // Seeded sampling, speculation asked for: drafts are verified, and
        // a seed gives one output. (Token for token plain decoding's only
        // up to the last bits of the logits, which a draw can fall within:
        // executor.rs.)
        let sampled = json!({"temperature": 0.7, "seed": 11, "speculative": true});
        let before = counts(&s, model);
        let first = complete(&s, model, sampled.clone());
        assert!(
            counts(&s, model).0 > before.0,
            "{model}: no drafts verified"
        );
        assert_eq!(
            complete(&s, model, sampled),
            first,
            "{model}: one seed, one output"
        );
    }

    // In a batch: two quoting requests that speculate beside one that does
    // not, all at once; each as it was alone.
    let alone = complete(
        &s,
        "smollm2",
        json!({"temperature": 0, "speculative": false}),
    );
    let other = json!({
        "temperature": 0,
        "speculative": false,
        "messages": [{"role": "user", "content": "Tell me a story."}],
    });
    let alone_other = complete(&s, "smollm2", other.clone());
    std::thread::scope(|sc| {
        let a = sc.spawn(|| complete(&s, "smollm2", json!({"temperature": 0})));
        let b = sc.spawn(|| complete(&s, "smollm2", other.clone()));
        let c = sc.spawn(|| complete(&s, "smollm2", json!({"temperature": 0})));
        assert_eq!(a.join().unwrap(), alone);
        assert_eq!(b.join().unwrap(), alone_other);
        assert_eq!(c.join().unwrap(), alone);
    });

    // The flag is a boolean.
    let r = s.post(
        "/v1/chat/completions",
        &json!({"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "speculative": "yes"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "speculative");
}
