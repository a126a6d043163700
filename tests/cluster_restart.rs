//! A rolling restart of `realizar cluster --nodes 3` under load: each node
//! process in turn gets SIGTERM, as an upgrade would give it; it asks the
//! gateway to drain it, serves on while its replica is loaded elsewhere,
//! exits once it holds nothing, and the cluster starts it again under its
//! id, which takes its place back. No request fails, no stream is cut.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::fleet::{assert_all_served, cluster, node_pid, wait};
use common::raw_http;
use serde_json::json;

fn request(gw: SocketAddr, prompt: &str, stream: bool) -> Result<(u16, bool), String> {
    // Streams long enough to be under way when their node is told to stop.
    let b = json!({"model": "chat", "prompt": prompt, "max_tokens": if stream { 32 } else { 8 },
                   "temperature": 0, "stream": stream});
    let r = raw_http(gw, "POST", "/v1/completions", &[], b.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    // A stream that ends early ends with an error event, never [DONE].
    Ok((
        r.status,
        !stream || r.body.trim_end().ends_with("data: [DONE]"),
    ))
}

#[test]
fn a_rolling_restart_by_sigterm_fails_no_request() {
    let (cluster, gw) = cluster(3, &["chat=smollm2@2"], &[]);
    let limit = Duration::from_secs(180);
    assert!(
        wait(limit, || gw.ready("chat").len() == 2).is_some(),
        "{}",
        gw.cluster()
    );

    let stop = AtomicBool::new(false);
    let results = Mutex::new(Vec::new());
    let mut timings = Vec::new();
    std::thread::scope(|s| {
        // Four clients, streamed and not, until the restarts are over (at
        // most 3,000 requests).
        for w in 0..4 {
            let (stop, results) = (&stop, &results);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) && i < 750 {
                    let prompt = format!("client {w} request {i}: the weather today is");
                    // Asked before the lock is taken: the others go on meanwhile.
                    let r = request(gw.addr, &prompt, w % 2 == 1);
                    results.lock().unwrap().push(r);
                    i += 1;
                }
            });
        }
        for i in 0..3 {
            // Requests under way first.
            let before = results.lock().unwrap().len();
            assert!(wait(limit, || results.lock().unwrap().len() >= before + 16).is_some());
            let id = format!("node-{i}");
            let held = gw.holders("chat").contains(&id);
            let pid = node_pid(cluster.0.id(), &id).expect("the node's process");
            let t0 = Instant::now();
            let status = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            // It exits (and the cluster starts it again: a new process).
            let exited = wait(Duration::from_secs(90), || {
                node_pid(cluster.0.id(), &id) != Some(pid)
            });
            let exited = exited.unwrap_or_else(|| panic!("{id} never exited: {}", gw.cluster()));
            let back = wait(limit, || {
                node_pid(cluster.0.id(), &id).is_some()
                    && gw.node_state(&id) == "up"
                    && gw
                        .events()
                        .iter()
                        .any(|e| e["kind"] == "undrained" && e["node"] == id.as_str())
                    && gw.ready("chat").len() == 2
            });
            assert!(back.is_some(), "{id} never came back: {}", gw.cluster());
            timings.push((id, held, exited, t0.elapsed()));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let results = results.into_inner().unwrap();
    assert_all_served(&results);
    // Each node's story in the event log: it asked to be drained; before
    // it came back, what it held was unloaded there (once ready on the
    // others: the coordinator's rule, and no request failed); it came back
    // (a node exits as soon as it holds nothing, so the gateway may not get
    // to mark it drained first).
    let ev = gw.events();
    for (id, held, ..) in &timings {
        let at = |kind: &str, from: usize| {
            from + ev[from..]
                .iter()
                .position(|e| e["kind"] == kind && e["node"] == id.as_str())
                .unwrap_or_else(|| panic!("no {kind} for {id}: {ev:?}"))
        };
        let asked = at("drain", 0);
        let back = at("undrained", asked);
        if *held {
            let unloaded = ev[..back]
                .iter()
                .any(|e| e["kind"] == "unloaded" && e["node"] == id.as_str());
            assert!(unloaded, "{id}: {ev:?}");
        }
    }
    for (id, held, exited, back) in &timings {
        println!(
            "{id} (held chat: {held}): exited {exited:?} after SIGTERM, back in service {back:?} \
             after it"
        );
    }
    println!(
        "{} requests during the rolling restart, none failed",
        results.len()
    );
}
