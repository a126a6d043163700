//! `realizar cluster --nodes 3` (real processes, real models: smollm2 on
//! two nodes, gemma3 on one) driven through its gateway by the official
//! `openai` package: every check of the node's SDK test
//! (tests/openai_client.py), with an API key; without one or with a wrong
//! one, 401s; then the fleet view.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[test]
fn openai_client_through_a_three_node_cluster() {
    const CTX: usize = 1024;
    const KEY: &str = "sk-cluster-test-0123456789";
    let (py, dir, expected) = common::openai_client_setup();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _cluster = common::fleet::Cluster(
        common::realizar()
            .args(["cluster", "--nodes", "3", "--port", &port.to_string()])
            .args(["--model", "smollm2@2", "--model", "gemma3@1"])
            // Two owners of smollm2 with room for two requests each: the
            // SDK test's eight concurrent requests overflow the cluster.
            .args([
                "--max-queue",
                "2",
                "--max-batch",
                "4",
                "--ctx",
                &CTX.to_string(),
            ])
            .env("REALIZAR_API_KEYS", KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let gw: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cluster = || -> Option<Value> {
        let r = common::try_http(gw, "GET", "/admin/cluster", None).ok()?;
        serde_json::from_str(&r.body).ok()
    };
    let ready = |c: &Value| -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = c["models"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        (
                            m["id"].as_str().unwrap().to_owned(),
                            m["ready"].as_array().unwrap().len(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let t0 = Instant::now();
    let mut c = Value::Null;
    while t0.elapsed() < Duration::from_secs(180) {
        if let Some(v) = cluster() {
            c = v;
            if ready(&c) == [("gemma3".to_owned(), 1), ("smollm2".to_owned(), 2)] {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        ready(&c),
        [("gemma3".to_owned(), 1), ("smollm2".to_owned(), 2)],
        "{c}"
    );
    println!("placed and ready after {:?}", t0.elapsed());
    let nodes = c["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n["state"] == "up"), "{c}");
    for m in c["models"].as_array().unwrap() {
        let sorted = |v: &Value| {
            let mut x: Vec<String> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect();
            x.sort();
            x
        };
        assert_eq!(sorted(&m["owners"]), sorted(&m["ready"]), "{c}");
    }

    let run = Command::new(&py)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/openai_client.py"
        ))
        .args([
            &format!("http://{gw}"),
            "smollm2",
            expected.to_str().unwrap(),
            &CTX.to_string(),
        ])
        .env("REALIZAR_TEST_API_KEY", KEY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "openai client through the gateway failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{stdout}");
    // A missing or wrong key: 401 in OpenAI's shape.
    let body = serde_json::json!({"model": "smollm2", "prompt": "Hi", "max_tokens": 1}).to_string();
    for auth in [vec![], vec![("Authorization", "Bearer sk-wrong")]] {
        for (method, path, b) in [
            ("GET", "/v1/models", ""),
            ("POST", "/v1/completions", body.as_str()),
        ] {
            let r = common::raw_http(gw, method, path, &auth, b.as_bytes()).unwrap();
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {}", r.body);
            assert_eq!(r.json()["error"]["code"], "invalid_api_key");
        }
    }
    // /v1/models lists both models.
    let bearer = format!("Bearer {KEY}");
    let r = common::raw_http(gw, "GET", "/v1/models", &[("Authorization", &bearer)], b"").unwrap();
    let v: Value = serde_json::from_str(&r.body).unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gemma3", "smollm2"]);

    // Every node serves a request (so each has a TTFT histogram): gemma3's
    // owner, and both of smollm2's, reached through different users (keys).
    let complete = |b: Value| {
        let auth = [("Authorization", bearer.as_str())];
        let r = common::raw_http(
            gw,
            "POST",
            "/v1/completions",
            &auth,
            b.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        r
    };
    complete(serde_json::json!({"model": "gemma3", "prompt": "Hello", "max_tokens": 2}));
    let mut served = std::collections::BTreeSet::new();
    for u in 0..32 {
        let r = complete(
            serde_json::json!({"model": "smollm2", "prompt": "Hello", "max_tokens": 1, "user": format!("user-{u}")}),
        );
        served.insert(r.header("x-realizar-node").unwrap().to_owned());
    }
    assert_eq!(served.len(), 2, "{served:?}");

    // The gateway's own metrics and the fleet's: well-formed for
    // Prometheus; the fleet view carries every node's series labelled by
    // node, every node's TTFT histogram included.
    let promtool = |name: &str, text: &str| common::promtool_check(&dir.path().join(name), text);
    let own = common::http(gw, "GET", "/metrics", None).body;
    promtool("gateway.txt", &own);
    for needle in [
        "realizar_gateway_requests_total{model=\"smollm2\",route=\"affinity\",status=\"200\"}",
        "realizar_gateway_upstream_head_seconds_bucket",
        "realizar_gateway_routing_decision_seconds_bucket",
        "realizar_gateway_nodes_up 3",
    ] {
        assert!(
            own.contains(needle),
            "gateway /metrics lacks {needle}:\n{own}"
        );
    }
    let fleet = common::http(gw, "GET", "/metrics/fleet", None).body;
    promtool("fleet.txt", &fleet);
    for n in ["node-0", "node-1", "node-2"] {
        assert!(
            fleet.contains(&format!("realizar_loaded_models{{node=\"{n}\"}} 1")),
            "/metrics/fleet lacks {n}:\n{fleet}"
        );
    }
    for n in ["node-0", "node-1", "node-2"] {
        assert!(
            fleet.contains(&format!(
                "realizar_time_to_first_token_seconds_bucket{{node=\"{n}\""
            )),
            "/metrics/fleet lacks {n}'s TTFT histogram:\n{fleet}"
        );
    }
    assert!(fleet.contains("realizar_gateway_nodes_up 3"));
}
