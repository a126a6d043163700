//! The gateway's control of the fleet, on real node processes: a node
//! killed under load costs no request and its replica is placed again on a
//! survivor; the catalog changes at run time through the admin API (replica
//! counts up and down, pins, additions, removals); a drain moves a node's
//! replicas elsewhere warm-first without failing a request; a restarted
//! gateway rebuilds the cluster from the nodes and reloads nothing.
//! (A rolling restart: tests/cluster_restart.rs.)

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::fleet::{free_port, gateway, load, node, spawn, wait, Gateway, Proc};
use common::raw_http;
use serde_json::json;

fn completion(gw: SocketAddr, prompt: &str) -> std::io::Result<common::Response> {
    let b = json!({"model": "chat", "prompt": prompt, "max_tokens": 8, "temperature": 0});
    raw_http(gw, "POST", "/v1/completions", &[], b.to_string().as_bytes())
}

#[test]
fn a_node_killed_under_load_costs_no_request_and_its_replica_is_placed_again() {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes: Vec<Option<Proc>> = ports
        .iter()
        .enumerate()
        .map(|(i, &p)| Some(node(p, &format!("n{i}"), &[])))
        .collect();
    let (_g, gw) = gateway(&ports, "chat=smollm2@2", None);
    assert!(
        wait(Duration::from_secs(180), || gw.ready("chat").len() == 2).is_some(),
        "{}",
        gw.cluster()
    );
    let owners = gw.ready("chat");
    let victim = owners[0].clone();
    let spare = ["n0", "n1", "n2"]
        .into_iter()
        .find(|n| !owners.iter().any(|o| o == n))
        .unwrap()
        .to_owned();

    // 200 requests, 8 at a time; the victim is killed (SIGKILL) once a
    // fifth of them are done.
    let mut killed_at = None;
    let mut down_after = None;
    let request = |i: usize| {
        let r = completion(gw.addr, &format!("Request {i}: the weather today is"));
        r.map(|r| (r.status, r.header("x-realizar-route").map(str::to_owned)))
            .map_err(|e| e.to_string())
    };
    let done = load(200, 8, request, 40, Duration::from_secs(120), || {
        let i: usize = victim[1..].parse().unwrap();
        drop(nodes[i].take()); // kill -9
        killed_at = Some(Instant::now());
        down_after = wait(Duration::from_secs(10), || gw.node_state(&victim) == "down");
    });
    let killed_at = killed_at.unwrap();
    assert_eq!(done.len(), 200);
    let failed: Vec<_> = done.iter().filter(|r| !matches!(r, Ok((200, _)))).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let retried = done
        .iter()
        .filter(|r| matches!(r, Ok((_, Some(w)))if w == "retry"))
        .count();
    // Marked down within 3 s of going silent (plus one poll of 0.5 s).
    let down_after = down_after.expect("the killed node was never marked down");
    assert!(down_after < Duration::from_millis(3600), "{down_after:?}");
    // Its replica is placed on the spare node and ready there.
    let mut expected = vec![owners[1].clone(), spare.clone()];
    expected.sort();
    let replaced = wait(Duration::from_secs(120), || gw.ready("chat") == expected);
    assert!(replaced.is_some(), "{}", gw.cluster());
    let ready_after = killed_at.elapsed();
    println!(
        "200 requests at concurrency 8, {victim} killed after 40: 0 failed, {retried} retried on \
         another owner; {victim} marked down {down_after:?} after the kill; chat ready again on \
         {spare} {ready_after:?} after the kill"
    );
    // The event log tells the same story, in order.
    let ev = gw.events();
    let pos = |kind: &str, node: &str| {
        ev.iter()
            .position(|e| e["kind"] == kind && e["node"] == node)
            .unwrap_or_else(|| panic!("no {kind} event for {node}: {ev:?}"))
    };
    assert!(pos("node-down", &victim) < pos("loaded", &spare));
}

#[test]
fn the_catalog_changes_at_run_time_and_a_drain_moves_replicas_warm_first() {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let _nodes: Vec<Proc> = ports
        .iter()
        .enumerate()
        .map(|(i, &p)| node(p, &format!("n{i}"), &[]))
        .collect();
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), "admin-key-0123456789abcdef\n").unwrap();
    let (_g, gw) = gateway(&ports, "chat=smollm2@1", Some(key.path()));
    let limit = Duration::from_secs(180);
    assert!(wait(limit, || gw.ready("chat").len() == 1).is_some());

    // The admin routes need the admin key.
    let r = raw_http(gw.addr, "GET", "/admin/models", &[], b"").unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    let r = gw.request("GET", "/admin/models", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["models"][0]["id"], "chat");

    // Bad changes are OpenAI-shaped 400s and 404s naming what is wrong.
    let r = gw.request("PATCH", "/admin/models/chat", Some(&json!({"replicas": 0})));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "replicas");
    let r = gw.request("PATCH", "/admin/models/chat", Some(&json!({"replica": 2})));
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("replica"));
    let r = gw.request("PATCH", "/admin/models/nope", Some(&json!({"replicas": 2})));
    assert_eq!(r.status, 404);
    let r = gw.request("POST", "/admin/models", Some(&json!({"id": "x"})));
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("path"));
    let r = gw.request("POST", "/admin/nodes/nobody/drain", None);
    assert_eq!(r.status, 404);

    // Replicas up to three, then down to two: the one that is no longer
    // owned is unloaded.
    let r = gw.request("PATCH", "/admin/models/chat", Some(&json!({"replicas": 3})));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        wait(limit, || gw.ready("chat").len() == 3).is_some(),
        "{}",
        gw.cluster()
    );
    let r = gw.request("PATCH", "/admin/models/chat", Some(&json!({"replicas": 2})));
    assert_eq!(r.status, 200);
    assert!(
        wait(Duration::from_secs(30), || gw.holders("chat").len() == 2).is_some(),
        "{}",
        gw.cluster()
    );
    let mut owners: Vec<String> = gw.model("chat")["owners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect();
    owners.sort();
    assert_eq!(gw.holders("chat"), owners);
    assert_eq!(gw.ready("chat"), owners);

    // A new model, pinned to the node that does not serve chat.
    let other = ["n0", "n1", "n2"]
        .into_iter()
        .find(|n| !owners.iter().any(|o| o == n))
        .unwrap();
    let r = gw.request(
        "POST",
        "/admin/models",
        Some(&json!({"id": "g", "path": "gemma3", "replicas": 1, "pin": [other]})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(
        wait(limit, || gw.ready("g") == [other]).is_some(),
        "{}",
        gw.cluster()
    );
    let r = raw_http(
        gw.addr,
        "POST",
        "/v1/completions",
        &[],
        json!({"model": "g", "prompt": "Hello", "max_tokens": 2})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-realizar-node"), Some(other));

    // Drain an owner of chat while requests keep coming: chat is loaded
    // on the free node, ready there before the drained node unloads it,
    // and no request fails.
    let drained = owners[0].clone();
    let stop = AtomicBool::new(false);
    let results = Mutex::new(Vec::new());
    let mut drained_after = None;
    std::thread::scope(|s| {
        for w in 0..2 {
            let (stop, results) = (&stop, &results);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) && i < 400 {
                    let r = completion(gw.addr, &format!("worker {w} request {i}: hello"));
                    results
                        .lock()
                        .unwrap()
                        .push(r.map(|r| r.status).map_err(|e| e.to_string()));
                    i += 1;
                }
            });
        }
        let r = gw.request("POST", &format!("/admin/nodes/{drained}/drain"), None);
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(r.json()["state"], "draining");
        drained_after = wait(limit, || gw.node_state(&drained) == "drained");
        stop.store(true, Ordering::Relaxed);
    });
    assert!(drained_after.is_some(), "{}", gw.cluster());
    let results = results.into_inner().unwrap();
    let failed: Vec<_> = results.iter().filter(|r| !matches!(r, Ok(200))).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(gw.holders("chat").iter().all(|n| *n != drained));
    assert_eq!(gw.ready("chat").len(), 2, "{}", gw.cluster());
    let ev = gw.events();
    let at = |kind: &str, node: &str, model: &str| {
        ev.iter()
            .position(|e| e["kind"] == kind && e["node"] == node && e["model"] == model)
            .unwrap_or_else(|| panic!("no {kind} {model} on {node}: {ev:?}"))
    };
    assert!(at("loaded", other, "chat") < at("unload", &drained, "chat"));
    println!(
        "drain of {drained}: drained after {:?}, {} requests meanwhile, none failed",
        drained_after.unwrap(),
        results.len()
    );

    // Back in service, and a model taken out of the catalog is unloaded.
    let r = gw.request("POST", &format!("/admin/nodes/{drained}/undrain"), None);
    assert_eq!(r.status, 200);
    assert_eq!(gw.node_state(&drained), "up");
    let r = gw.request("DELETE", "/admin/models/g", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(wait(Duration::from_secs(30), || gw.holders("g").is_empty()).is_some());
    let r = raw_http(
        gw.addr,
        "POST",
        "/v1/completions",
        &[],
        json!({"model": "g", "prompt": "Hello"})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 404);
}

#[test]
fn a_restarted_gateway_rebuilds_from_the_nodes_and_reloads_nothing() {
    // Nodes that joined (no --node list): after a gateway's kill -9, its
    // successor on the same address learns the cluster from their
    // heartbeats, and finds the replicas where placement wants them.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _nodes: Vec<Proc> = (0..3)
        .map(|i| node(free_port(), &format!("n{i}"), &["--join", &url]))
        .collect();
    let args = [
        "gateway",
        "--port",
        &port.to_string(),
        "--model",
        "chat=smollm2@2",
    ];
    let first = spawn(&args);
    let gw = Gateway {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        admin: Vec::new(),
    };
    let limit = Duration::from_secs(180);
    assert!(
        wait(limit, || gw.ready("chat").len() == 2).is_some(),
        "{}",
        gw.cluster()
    );
    let owners = gw.ready("chat");
    assert_eq!(completion(gw.addr, "Hello").unwrap().status, 200);

    // Under load: four clients keep the nodes busy across the restart
    // (what was in flight on the killed gateway fails with it).
    let stop = AtomicBool::new(false);
    let after_restart = Mutex::new(Vec::new());
    let restarted = Mutex::new(None::<Instant>);
    let mut first_ok = None;
    let mut took = Duration::ZERO;
    let mut second = None;
    std::thread::scope(|s| {
        for w in 0..4 {
            let (stop, after_restart, restarted) = (&stop, &after_restart, &restarted);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) && i < 2000 {
                    let sent = Instant::now();
                    let r = completion(gw.addr, &format!("client {w} request {i}: hello"))
                        .map(|r| r.status)
                        .ok();
                    let since = *restarted.lock().unwrap();
                    if since.is_some_and(|t| sent > t) {
                        after_restart.lock().unwrap().push(r);
                    }
                    // Refused, or 503 while the new gateway knows no node yet.
                    if r != Some(200) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    i += 1;
                }
            });
        }
        std::thread::sleep(Duration::from_secs(2));
        drop(first); // kill -9
        second = Some(spawn(&args));
        let t0 = Instant::now();
        *restarted.lock().unwrap() = Some(t0);
        // New requests succeed again: the first 200 from the new process.
        first_ok = wait(Duration::from_secs(30), || {
            let sent = Instant::now();
            let ok = completion(gw.addr, "Hello again").is_ok_and(|r| r.status == 200);
            took = sent.elapsed();
            ok
        });
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
    });
    let first_ok = first_ok.unwrap_or_else(|| panic!("{}", gw.cluster()));
    // Once the new gateway answered, everything sent succeeded.
    let after = after_restart.into_inner().unwrap();
    let served = after.iter().filter(|s| **s == Some(200)).count();
    let late_failures = after
        .iter()
        .skip_while(|s| **s != Some(200))
        .filter(|s| **s != Some(200))
        .count();
    assert_eq!(late_failures, 0, "{after:?}");
    assert!(served > 0, "{after:?}");
    let ready = wait(Duration::from_secs(30), || gw.ready("chat") == owners);
    assert!(ready.is_some(), "{}", gw.cluster());
    // Three nodes up, and still nothing loaded or unloaded once it has
    // settled (its poll, two heartbeats).
    std::thread::sleep(Duration::from_secs(3));
    let c = gw.cluster();
    assert_eq!(c["nodes"].as_array().unwrap().len(), 3, "{c}");
    let ev = gw.events();
    let moved: Vec<_> = ev
        .iter()
        .filter(|e| e["kind"] == "load" || e["kind"] == "unload")
        .collect();
    assert!(moved.is_empty(), "{moved:?}");
    assert_eq!(gw.ready("chat"), owners);
    drop(second);
    println!(
        "gateway killed and restarted under load: new requests succeed {first_ok:?} after the new \
         process started (the request that succeeded took {took:?} of that, sent to \
         answered); {served} served after it, none failed once it answered; nothing reloaded"
    );
}
