//! `realizar run` end to end: a model given by name, greedy decoding, the
//! speed report on stderr, and a clear error for an unknown model.

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
