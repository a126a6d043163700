//! The gateway over two real node processes on loopback: it places the
//! catalog's model on both (rendezvous placement, loaded through the
//! nodes' admin API), routes by affinity with the reason in a header,
//! keeps OpenAI-shaped errors, guards the API with keys, and absorbs the
//! loss of a node: requests in flight on it are retried on the other
//! owner, it is marked down within 3 s, and when it comes back it is given
//! its replica again.

mod common;

use std::time::Duration;

use common::fleet::{free_port, wait, Proc};
use common::{http, raw_http};
use serde_json::{json, Value};

fn node(port: u16, id: &str) -> Proc {
    common::fleet::node(port, id, &[])
}

fn spawn(args: &[&str]) -> Proc {
    common::fleet::spawn(args)
}

fn cluster(gw: std::net::SocketAddr) -> Value {
    http(gw, "GET", "/admin/cluster", None).json()
}

/// Wait until `f` holds, at most `limit`.
fn ready(gw: std::net::SocketAddr) -> Vec<String> {
    let c = common::try_http(gw, "GET", "/admin/cluster", None);
    let Ok(c) = c else { return Vec::new() };
    let Ok(v) = serde_json::from_str::<Value>(&c.body) else {
        return Vec::new();
    };
    v["models"][0]["ready"]
        .as_array()
        .map(|a| a.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn two_nodes_behind_one_gateway() {
    let (p1, p2, pg) = (free_port(), free_port(), free_port());
    let n1 = node(p1, "n1");
    let _n2 = node(p2, "n2");
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), "sk-test-key-0123456789\n").unwrap();
    let _gw = spawn(&[
        "gateway",
        "--port",
        &pg.to_string(),
        "--node",
        &format!("http://127.0.0.1:{p1}"),
        "--node",
        &format!("http://127.0.0.1:{p2}"),
        "--model",
        "chat=smollm2@2",
        "--api-keys-file",
        keys.path().to_str().unwrap(),
    ]);
    let gw: std::net::SocketAddr = format!("127.0.0.1:{pg}").parse().unwrap();
    let both = wait(Duration::from_secs(120), || ready(gw).len() == 2);
    assert!(
        both.is_some(),
        "not placed on both nodes: {:?}",
        cluster(gw)
    );
    let c = cluster(gw);
    assert_eq!(c["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(c["models"][0]["owners"].as_array().unwrap().len(), 2);

    let auth = [("Authorization", "Bearer sk-test-key-0123456789")];
    let post = |path: &str, body: &Value, auth: &[(&str, &str)]| {
        raw_http(gw, "POST", path, auth, body.to_string().as_bytes()).unwrap()
    };
    // Keys: none or a wrong one is a 401 in OpenAI's shape.
    let body = json!({"model": "chat", "prompt": "The capital of France is", "max_tokens": 2, "temperature": 0});
    for bad in [vec![], vec![("Authorization", "Bearer wrong")]] {
        let r = post("/v1/completions", &body, &bad);
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    }
    let r = post("/v1/completions", &body, &auth);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["text"], " Paris.");
    assert_eq!(r.header("x-realizar-route"), Some("affinity"));
    let first = r.header("x-realizar-node").unwrap().to_owned();
    // The same prompt again: the same node (its prefix is cached there).
    let r = post("/v1/completions", &body, &auth);
    assert_eq!(r.header("x-realizar-node"), Some(first.as_str()));
    // An unknown model is a 404 in OpenAI's shape.
    let r = post(
        "/v1/completions",
        &json!({"model": "nope", "prompt": "x"}),
        &auth,
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    // Streaming passes through.
    let r = post(
        "/v1/chat/completions",
        &json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": true}),
        &auth,
    );
    assert_eq!(r.status, 200);
    assert!(r.body.trim_end().ends_with("data: [DONE]"), "{}", r.body);

    // Kill one node while requests run: none fails.
    let results = std::sync::Mutex::new(Vec::new());
    let killed = std::sync::Mutex::new(Some(n1));
    let mut down_after = None;
    std::thread::scope(|s| {
        for w in 0..4 {
            let results = &results;
            s.spawn(move || {
                for i in 0..10 {
                    let b = json!({"model": "chat", "prompt": format!("worker {w} request {i}"), "max_tokens": 8});
                    let r = raw_http(gw, "POST", "/v1/completions", &auth, b.to_string().as_bytes());
                    results.lock().unwrap().push(r.map(|r| (r.status, r.header("x-realizar-route").map(str::to_owned))));
                }
            });
        }
        std::thread::sleep(Duration::from_millis(500));
        drop(killed.lock().unwrap().take()); // kill -9
        down_after = wait(Duration::from_secs(10), || {
            cluster(gw)["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["id"] == "n1" && n["state"] == "down")
        });
    });
    let results = results.into_inner().unwrap();
    assert_eq!(results.len(), 40);
    let failed: Vec<_> = results
        .iter()
        .filter(|r| !matches!(r, Ok((200, _))))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    // Marked down within 3 s of the kill (plus a poll of 0.5 s).
    let down_after = down_after.expect("n1 was never marked down");
    println!("n1 marked down {down_after:?} after the kill");
    assert!(down_after < Duration::from_millis(3600), "{down_after:?}");
    assert_eq!(ready(gw), ["n2"]);

    // It comes back under the same id and gets its replica again.
    let _n1 = node(p1, "n1");
    let back = wait(Duration::from_secs(120), || ready(gw).len() == 2);
    assert!(back.is_some(), "{:?}", cluster(gw));
    println!("n1 serving again {:?} after its restart", back.unwrap());
}

#[test]
fn a_node_that_joins_is_placed_and_routed_to() {
    let pg = free_port();
    let _gw = spawn(&[
        "gateway",
        "--port",
        &pg.to_string(),
        "--model",
        "chat=smollm2@1",
    ]);
    let gw: std::net::SocketAddr = format!("127.0.0.1:{pg}").parse().unwrap();
    // Known to nobody but the gateway it joins; port 0, so it advertises
    // the port it was given.
    let node = spawn(&[
        "node",
        "--port",
        "0",
        "--id",
        "joiner",
        "--threads",
        "1",
        "--join",
        &format!("http://127.0.0.1:{pg}"),
    ]);
    assert!(
        wait(Duration::from_secs(120), || ready(gw) == ["joiner"]).is_some(),
        "{:?}",
        common::try_http(gw, "GET", "/admin/cluster", None).map(|r| r.body)
    );
    let r = http(
        gw,
        "POST",
        "/v1/completions",
        Some(
            &json!({"model": "chat", "prompt": "The capital of France is", "max_tokens": 2, "temperature": 0}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-realizar-node"), Some("joiner"));
    // Silent (killed): down, and no longer routed to.
    drop(node);
    assert!(wait(Duration::from_secs(10), || ready(gw).is_empty()).is_some());
    let r = http(
        gw,
        "POST",
        "/v1/completions",
        Some(&json!({"model": "chat", "prompt": "x", "max_tokens": 1})),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "model_loading");
}
