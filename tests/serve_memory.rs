//! Memory: loading past the budget evicts the least recently used unpinned
//! model; unloading gives the memory back (at least 90% of what loading took).

mod common;

use std::time::Duration;

use common::Server;
use serde_json::json;

fn load(server: &Server, id: &str, pinned: bool) -> serde_json::Value {
    let r = server.post(
        "/admin/models",
        &json!({"id": id, "path": id, "pinned": pinned, "options": {"kv_memory_mib": 64, "n_ctx": 512}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Models being served (the list also shows models loading, and models
/// unloading until their in-flight requests are done).
fn loaded(server: &Server) -> Vec<String> {
    listed(server, Some("ready"))
}

fn listed(server: &Server, state: Option<&str>) -> Vec<String> {
    let v = server.get("/admin/models").json();
    v["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| state.is_none_or(|s| m["state"] == s))
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

fn generate(server: &Server, id: &str) {
    let r = server.post(
        "/v1/completions",
        &json!({"model": id, "prompt": "The history of science", "max_tokens": 8}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn over_budget_evicts_lru_and_unload_returns_memory() {
    // A budget that holds SmolLM2 or Gemma3, not both (what each needs
    // depends on whether this CPU repacks the weights).
    let (s, g) = (
        common::model_need_mib("smollm2", 64),
        common::model_need_mib("gemma3", 64),
    );
    let budget = (s.max(g) + 16).to_string();
    assert!(s.max(g) + 16 < s + g);
    let server = Server::start(&["node", "--memory-budget-mib", &budget, "--threads", "1"]);
    // Up with no model and none loading: a cluster node waits so for the
    // gateway to place models on it.
    assert_eq!(server.get("/health").status, 200, "a node holding nothing");

    // Warm-up cycles so the allocator, the runtime's threads and the metrics
    // registry (which keeps each model's series) reach their steady state.
    for id in ["smollm2", "gemma3"] {
        load(&server, id, false);
        assert_eq!(server.get("/health").status, 200);
        generate(&server, id);
        assert_eq!(server.delete(&format!("/admin/models/{id}")).status, 200);
    }
    assert!(loaded(&server).is_empty());
    std::thread::sleep(Duration::from_millis(1200));

    let before = server.rss();
    let info = load(&server, "gemma3", false);
    assert!(info["bytes"].as_u64().unwrap() > 250 << 20);
    generate(&server, "gemma3");
    let during = server.rss();
    assert!(
        during > before + (100 << 20),
        "the model never became resident: {before} → {during}"
    );
    let r = server.delete("/admin/models/gemma3");
    assert_eq!(r.status, 200, "{}", r.body);
    // The executor thread and the actor wind down asynchronously.
    // What unloading must give back: at least 90% of what loading took.
    // (Not all of it: the allocator may keep pages that freed memory
    // shares with allocations that live on — metric series, buffers of
    // threads that stay — and malloc_trim cannot return those. Every
    // reference to the model and its tokenizer is gone by then.)
    let returned = |after: u64| after <= before + (during - before) / 10;
    let mut after = server.rss();
    let t_unload = std::time::Instant::now();
    for _ in 0..50 {
        if returned(after) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        after = server.rss();
    }
    println!("released after {:?}", t_unload.elapsed());
    println!(
        "RSS before loading {before}, loaded {during}, after unloading {after} bytes (now anon {} kB, file {} kB)",
        server.proc_status_kib("RssAnon"),
        server.proc_status_kib("RssFile")
    );
    // Its actor has finished: the model is gone from the list altogether.
    let mut left = listed(&server, None);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        left = listed(&server, None);
    }
    assert!(left.is_empty(), "still listed after unloading: {left:?}");
    assert!(
        returned(after),
        "RSS after unloading {after}: less than 90% of what loading took ({before} → {during}) came back"
    );

    // Budget: SmolLM2 then Gemma3 evicts SmolLM2 (least recently used, unpinned).
    load(&server, "smollm2", false);
    generate(&server, "smollm2");
    load(&server, "gemma3", false);
    assert_eq!(loaded(&server), vec!["gemma3".to_owned()]);
    let gone = server.post(
        "/v1/completions",
        &json!({"model": "smollm2", "prompt": "x"}),
    );
    assert_eq!(gone.status, 404, "{}", gone.body);
    assert!(server
        .get("/metrics")
        .body
        .contains("realizar_model_evictions_total 1"));
    // A pinned model is never evicted: with Gemma3 pinned, SmolLM2 does not fit.
    assert_eq!(server.delete("/admin/models/gemma3").status, 200);
    load(&server, "gemma3", true);
    let r = server.post(
        "/admin/models",
        &json!({"id": "smollm2", "path": "smollm2", "options": {"kv_memory_mib": 64, "n_ctx": 512}}),
    );
    assert_eq!(r.status, 507, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "over_budget");
    assert_eq!(loaded(&server), vec!["gemma3".to_owned()]);
}
