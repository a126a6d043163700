//! Demand-driven replicas on `realizar cluster`: a burst on a model with
//! one replica adds a second, idleness past its keep-alive takes it away,
//! and a model scaled to zero answers its first request (waiting at the
//! gateway while a node loads it) while another model keeps serving.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::fleet::{cluster, wait, Gateway};
use common::raw_http;
use serde_json::{json, Value};

fn replicas_now(gw: &Gateway, id: &str) -> u64 {
    gw.model(id)["replicas_now"].as_u64().unwrap_or(0)
}

fn complete(gw: &Gateway, model: &str, prompt: &str, max_tokens: u32) -> common::Response {
    let b = json!({"model": model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": true});
    raw_http(
        gw.addr,
        "POST",
        "/v1/completions",
        &[],
        b.to_string().as_bytes(),
    )
    .unwrap()
}

fn scale_events(gw: &Gateway, id: &str) -> Vec<Value> {
    gw.events()
        .into_iter()
        .filter(|e| e["kind"] == "scale" && e["model"] == id)
        .collect()
}

#[test]
fn a_burst_adds_a_replica_and_idleness_takes_it_away() {
    let (_c, gw) = cluster(2, &["m=smollm2@1-2"], &["--max-batch", "2"]);
    let limit = Duration::from_secs(180);
    assert!(
        wait(limit, || gw.ready("m").len() == 1).is_some(),
        "{}",
        gw.cluster()
    );
    let r = gw.request(
        "PATCH",
        "/admin/models/m",
        Some(&json!({"scale_up_waiting": 2, "keep_alive_secs": 4})),
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // Eight clients on a node that runs two sequences at a time: six wait.
    let stop = AtomicBool::new(false);
    let results = Mutex::new(Vec::new());
    let t0 = Instant::now();
    let mut scaled = None;
    std::thread::scope(|s| {
        for w in 0..8 {
            let (stop, results, gw) = (&stop, &results, &gw);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) && i < 100 {
                    let r = complete(gw, "m", &format!("client {w} request {i}: a story"), 24);
                    results.lock().unwrap().push(r.status);
                    i += 1;
                }
            });
        }
        scaled = wait(Duration::from_secs(60), || gw.ready("m").len() == 2);
        // A little longer at two replicas, then the burst ends.
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
    });
    let scaled = scaled.unwrap_or_else(|| panic!("never scaled up: {}", gw.cluster()));
    let results = results.into_inner().unwrap();
    assert!(results.iter().all(|s| *s == 200), "{results:?}");
    assert_eq!(
        scale_events(&gw, "m")[0]["detail"],
        "1 → 2 replicas (scale-up)"
    );

    // Idle past the keep-alive: back to one replica, the other unloaded.
    let idle = Instant::now();
    let down = wait(Duration::from_secs(60), || {
        replicas_now(&gw, "m") == 1 && gw.holders("m").len() == 1
    });
    let down = down.unwrap_or_else(|| panic!("never scaled down: {}", gw.cluster()));
    assert_eq!(
        scale_events(&gw, "m")[1]["detail"],
        "2 → 1 replicas (scale-down)"
    );
    assert_eq!(complete(&gw, "m", "Hello", 4).status, 200);
    println!(
        "burst of 8 clients (max batch 2): second replica ready {scaled:?} after the burst began \
         ({} requests, none failed; {:?} in all); back to one replica {down:?} after the burst \
         ended (keep-alive 4 s)",
        results.len(),
        idle.duration_since(t0)
    );
}

#[test]
fn a_model_scaled_to_zero_answers_its_first_request_while_others_serve() {
    let (_c, gw) = cluster(2, &["s=smollm2@1", "z=gemma3@0-1"], &[]);
    let limit = Duration::from_secs(180);
    assert!(
        wait(limit, || gw.ready("s").len() == 1).is_some(),
        "{}",
        gw.cluster()
    );
    let r = gw.request(
        "PATCH",
        "/admin/models/z",
        Some(&json!({"keep_alive_secs": 4})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(gw.holders("z").is_empty());
    assert_eq!(replicas_now(&gw, "z"), 0);

    // s keeps serving while z comes up from zero.
    let stop = AtomicBool::new(false);
    let others = Mutex::new(Vec::new());
    let mut first = None;
    std::thread::scope(|s| {
        for w in 0..2 {
            let (stop, others, gw) = (&stop, &others, &gw);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) && i < 200 {
                    let r = complete(gw, "s", &format!("client {w} request {i}: hello"), 8);
                    others.lock().unwrap().push(r.status);
                    i += 1;
                }
            });
        }
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        let r = complete(&gw, "z", "The capital of France is", 4);
        first = Some((r.status, r.body, t.elapsed()));
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
    });
    let (status, body, took) = first.unwrap();
    assert_eq!(status, 200, "{body}");
    let others = others.into_inner().unwrap();
    assert!(
        !others.is_empty() && others.iter().all(|s| *s == 200),
        "{others:?}"
    );
    assert_eq!(
        scale_events(&gw, "z")[0]["detail"],
        "0 → 1 replicas (scale-from-zero)"
    );
    // Idle past its keep-alive: unloaded again.
    let gone = wait(Duration::from_secs(60), || gw.holders("z").is_empty());
    assert!(gone.is_some(), "{}", gw.cluster());
    println!(
        "scale from zero: z's first request answered in {took:?} (load included); {} requests \
         for s meanwhile, none failed; z unloaded again {:?} after its last request (keep-alive 4 s)",
        others.len(),
        gone.unwrap()
    );
}
