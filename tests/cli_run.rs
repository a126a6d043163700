//! `realizar run` end to end: a model given by name, greedy decoding, the
//! speed report on stderr, prompt-lookup speculation that changes no
//! token, and a clear error for an unknown model.

mod common;

#[test]
fn run_by_model_name_streams_the_greedy_answer() {
    let out = common::realizar()
        .args([
            "run",
            "--model",
            "smollm2",
            "--prompt",
            "The capital of France is",
            "--max-tokens",
            "2",
            "--temperature",
            "0",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // llama.cpp's greedy tokens for this prompt (generation_smollm2.json, Q4_1): " Paris" "."
    assert_eq!(String::from_utf8(out.stdout).unwrap(), " Paris.\n");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("prefill: 5 tokens") && err.contains("decode: 2 tokens"),
        "{err}"
    );
}

#[test]
fn unknown_model_name_is_a_clear_error() {
    let out = common::realizar()
        .args(["run", "--model", "no-such-model", "--prompt", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("no-such-model") && err.contains("smollm2, gemma3"),
        "{err}"
    );
}

#[test]
fn invalid_sampling_parameter_is_named() {
    let out = common::realizar()
        .args(["run", "--model", "smollm2", "--prompt", "x", "--top-p", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("top_p"));
}

#[test]
fn greedy_run_speculates_on_a_quoted_passage_and_prints_the_same_text() {
    let passage = "The old lighthouse stood at the edge of the cliff, its white paint \
        peeling in long strips. Every evening the keeper climbed the spiral stairs, one \
        hundred and twelve of them, to light the lamp.";
    let prompt = format!("Repeat the following passage exactly, word for word.\n\n{passage}");
    let run = |draft_max: &str| {
        let out = common::realizar()
            .args([
                "run",
                "--model",
                "smollm2",
                "--chat",
                "--prompt",
                &prompt,
                "--max-tokens",
                "48",
                "--temperature",
                "0",
                "--draft-max",
                draft_max,
            ])
            .output()
            .unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(out.status.success(), "{err}");
        (String::from_utf8(out.stdout).unwrap(), err)
    };
    let (plain, plain_err) = run("0");
    let (fast, fast_err) = run("8");
    assert_eq!(fast, plain);
    assert!(plain.starts_with("The old lighthouse"), "{plain}");
    assert!(!plain_err.contains("speculative:"), "{plain_err}");
    // "speculative: A of D draft tokens accepted", most of them here.
    let line = fast_err
        .lines()
        .find_map(|l| l.strip_prefix("speculative: "))
        .unwrap_or_else(|| panic!("{fast_err}"));
    let n: Vec<usize> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(n.len() == 2 && n[0] > 24 && n[0] <= n[1], "{line}");
}
