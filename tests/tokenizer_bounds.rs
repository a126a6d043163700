//! The tokenizers on hostile input, both real vocabularies (SmolLM2's
//! byte-level BPE, Gemma 3's SentencePiece): long unbroken runs round-trip,
//! a budget stops an encoding (deadline or cancellation), and the length
//! bound the node uses to refuse over-long prompts unencoded holds.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use realizar_node::format::GgufFile;
use realizar_node::tokenizer::{Budget, Interrupted, Tokenizer};

fn tokenizers() -> Vec<(&'static str, Tokenizer)> {
    let gemma = common::root().join("models/gemma-3-270m-q4_k_m.gguf");
    [("smollm2", common::q4_1_path()), ("gemma3", gemma)]
        .into_iter()
        .map(|(name, p)| {
            let f = GgufFile::open(&p).unwrap();
            (name, Tokenizer::from_gguf(f.metadata()).unwrap())
        })
        .collect()
}

fn hostile() -> Vec<String> {
    vec![
        "a".repeat(200_000),
        " ".repeat(200_000),
        "\n".repeat(50_000),
        "1".repeat(100_000),
        "!".repeat(100_000),
        "<|im_start|><start_of_turn>".repeat(5_000),
        "é".repeat(50_000),
        "ab".repeat(100_000) + &"xyz ".repeat(10_000),
    ]
}

#[test]
fn long_unbroken_runs_round_trip_and_respect_the_length_bound() {
    for (name, tok) in tokenizers() {
        assert!(
            tok.max_token_bytes() < 1024,
            "{name}: {}",
            tok.max_token_bytes()
        );
        for text in hostile() {
            let ids = tok
                .encode_within(&text, false, false, &Budget::unlimited())
                .unwrap();
            let head = &text[..text.char_indices().nth(12).map_or(text.len(), |c| c.0)];
            // SentencePiece adds a leading space; nothing else may change.
            let back = tok.decode(&ids, false);
            assert_eq!(
                back.trim_start_matches(' ').len(),
                text.trim_start_matches(' ').len(),
                "{name}: {head:?}"
            );
            assert!(back.ends_with(&text[text.len() - 64..]), "{name}: {head:?}");
            assert!(
                ids.len() >= text.len() / tok.max_token_bytes(),
                "{name}: {head:?}: {} tokens for {} bytes",
                ids.len(),
                text.len()
            );
        }
    }
}

#[test]
fn a_budget_stops_an_encoding() {
    let text = "a".repeat(400_000);
    for (name, tok) in tokenizers() {
        let cancelled = Budget::new(None, Some(Arc::new(AtomicBool::new(true))));
        assert_eq!(
            tok.encode_within(&text, true, true, &cancelled),
            Err(Interrupted::Cancelled),
            "{name}"
        );
        let past = Budget::new(Some(Instant::now() - Duration::from_millis(1)), None);
        assert_eq!(
            tok.encode_within(&text, true, true, &past),
            Err(Interrupted::Deadline),
            "{name}"
        );
        // A budget that is not reached changes nothing.
        let roomy = Budget::new(Some(Instant::now() + Duration::from_secs(600)), None);
        assert_eq!(
            tok.encode_within("Hello world", true, true, &roomy)
                .unwrap(),
            tok.encode("Hello world", true, true),
            "{name}"
        );
    }
}

/// The end-of-generation ids a request with `ignore_eos` masks at every
/// step are found once, and are every id that ends a sequence: EOS and the
/// chat templates' end-of-turn tokens, nothing else.
#[test]
fn end_of_generation_ids_are_every_id_that_ends_a_sequence() {
    for (name, tok) in tokenizers() {
        let ids = tok.end_of_generation_ids();
        let n = tok.vocab.tokens.len() as u32;
        let want: Vec<u32> = (0..n)
            .filter(|&id| tok.vocab.is_end_of_generation(id))
            .collect();
        assert_eq!(ids, &want[..], "{name}");
        assert!(ids.contains(&tok.vocab.eos.unwrap()), "{name}: EOS");
        let turn_end = if name == "smollm2" {
            "<|im_end|>"
        } else {
            "<end_of_turn>"
        };
        let turn_end = tok.vocab.by_text[turn_end];
        assert!(ids.contains(&turn_end), "{name}: end of turn");
        assert!(ids.len() <= 4, "{name}: {ids:?}");
    }
}
