//! `realizar serve` driven by the official `openai` Python package
//! (tests/openai_client.py), then its /metrics checked by `promtool`.
//! scripts/test.sh installs both (a virtualenv with openai, Debian's
//! prometheus package); REALIZAR_TEST_PYTHON names the interpreter.

mod common;

use std::process::Command;
use std::time::Duration;

use common::Server;

#[test]
fn openai_client_and_promtool_against_serve() {
    const CTX: usize = 1024;
    let (py, dir, expected) = common::openai_client_setup();

    let server = Server::start(&[
        "serve",
        "--max-queue",
        "4",
        "--max-batch",
        "4",
        "--ctx",
        &CTX.to_string(),
    ]);
    server.wait_ready(Duration::from_secs(120));
    let run = Command::new(&py)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/openai_client.py"
        ))
        .args([
            &server.url(),
            "smollm2",
            expected.to_str().unwrap(),
            &CTX.to_string(),
        ])
        .output()
        .expect("run the python client");
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    assert!(
        run.status.success(),
        "openai client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("12 checks passed"), "{stdout}");

    // The metrics after that traffic: well-formed for Prometheus, and counting it.
    let m = server.get("/metrics");
    assert_eq!(m.status, 200);
    common::promtool_check(&dir.path().join("metrics.txt"), &m.body);
    for needle in [
        "realizar_http_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}",
        "realizar_http_requests_total{endpoint=\"/v1/completions\",status=\"429\"}",
        // The unknown model's 404 comes from the gateway in front.
        "realizar_gateway_requests_total{model=\"\",route=\"rejected\",status=\"404\"}",
        "realizar_time_to_first_token_seconds_bucket",
        "realizar_inter_token_latency_seconds_bucket",
        "realizar_e2e_request_latency_seconds_bucket",
        "realizar_request_queue_seconds_bucket",
        "realizar_batch_size_bucket",
        "realizar_model_load_seconds_bucket",
        "realizar_prompt_tokens_total",
        "realizar_generation_tokens_total",
        "realizar_running_sequences",
        "realizar_waiting_sequences",
        "realizar_kv_blocks_used",
        "realizar_kv_blocks_capacity",
        "realizar_prefix_cache_hits_total",
        "realizar_prefix_cache_queries_total",
        "realizar_loaded_models 1",
    ] {
        assert!(
            m.body.contains(needle),
            "/metrics lacks {needle}:\n{}",
            m.body
        );
    }
    let hits: f64 = m
        .body
        .lines()
        .find(|l| l.starts_with("realizar_prefix_cache_hits_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(hits > 0.0, "no prefix cache hits counted");
}
