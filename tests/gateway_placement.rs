//! Placement and a node's own memory budget on real node processes: a
//! node that evicts a replica to fit something else reports the eviction,
//! and the gateway places that replica on another node instead of loading
//! it back into the same squeeze (where it would evict the other model in
//! turn); a node joining a `realizar cluster` under load takes the replicas placement gives
//! it, each ready there before its old owner lets it go.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::fleet::{
    assert_all_served, cluster, free_port, gateway, load, node, wait, Gateway, Proc,
};
use common::raw_http;
use realizar_gateway::placement::{place, ModelSlot, NodeSlot};
use serde_json::json;

#[test]
fn a_replica_its_node_evicted_is_placed_elsewhere_not_loaded_back() {
    // Budgets with 64 MiB KV pools that hold Gemma 3 but SmolLM2 beside
    // nothing as big (what each needs depends on whether this CPU repacks).
    let (s, g) = (
        common::model_need_mib("smollm2", 64),
        common::model_need_mib("gemma3", 64),
    );
    let budget = (g.max(s) + 16).to_string();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let _nodes: Vec<Proc> = ports
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            node(
                p,
                &format!("n{i}"),
                &["--memory-budget-mib", &budget, "--kv-memory-mib", "64"],
            )
        })
        .collect();
    let (_g, gw) = gateway(&ports, "s=smollm2@1", None);
    let limit = Duration::from_secs(180);
    assert!(
        wait(limit, || gw.ready("s").len() == 1).is_some(),
        "{}",
        gw.cluster()
    );
    let first = gw.ready("s")[0].clone();
    let i: usize = first[1..].parse().unwrap();
    let ask = |prompt: &str| {
        let b = json!({"model": "s", "prompt": prompt, "max_tokens": 4});
        raw_http(
            gw.addr,
            "POST",
            "/v1/completions",
            &[],
            b.to_string().as_bytes(),
        )
        .unwrap()
    };
    assert_eq!(ask("Hello").status, 200);

    // Someone loads Gemma 3 on that node directly: its budget evicts s.
    let node_addr = format!("127.0.0.1:{}", ports[i]).parse().unwrap();
    let r = raw_http(
        node_addr,
        "POST",
        "/admin/models",
        &[],
        json!({"id": "g", "path": "gemma3"}).to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let evicted = raw_http(node_addr, "GET", "/admin/report", &[], b"")
        .unwrap()
        .json();
    assert_eq!(evicted["evicted"][0]["id"], "s", "{evicted}");

    // s is placed on another node and served there; g stays where it was.
    let moved = wait(limit, || {
        let r = gw.ready("s");
        r.len() == 1 && r[0] != first
    });
    assert!(moved.is_some(), "{}", gw.cluster());
    let r = ask("Hello again");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_ne!(r.header("x-realizar-node"), Some(first.as_str()));
    // A few polls later nothing has changed: no load of s back on its old
    // node, g not evicted.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(gw.holders("g"), std::slice::from_ref(&first));
    let loads_there = gw
        .events()
        .iter()
        .filter(|e| e["kind"] == "load" && e["node"] == first.as_str() && e["model"] == "s")
        .count();
    assert_eq!(loads_there, 1, "{:?}", gw.events());
    println!(
        "s evicted on {first} by a direct load; served again from {:?} {:?} later",
        gw.ready("s"),
        moved.unwrap()
    );
}

/// Owners per model as the gateway shows them.
fn owners(gw: &Gateway) -> BTreeMap<String, Vec<String>> {
    gw.cluster()["models"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let o = m["owners"].as_array().unwrap().iter();
            let o = o.map(|x| x.as_str().unwrap().to_owned()).collect();
            (m["id"].as_str().unwrap().to_owned(), o)
        })
        .collect()
}

/// What `realizar_gateway::placement::place` gives over the nodes' reports.
fn predicted(gw: &Gateway, ids: &[&str]) -> BTreeMap<String, Vec<String>> {
    let c = gw.cluster();
    let mut nodes = Vec::new();
    let mut bytes = 0;
    for n in c["nodes"].as_array().unwrap() {
        let r = &n["last_report"];
        nodes.push(NodeSlot {
            id: n["id"].as_str().unwrap().to_owned(),
            capacity: r["memory_budget_bytes"].as_u64().unwrap(),
            refuses: Vec::new(),
        });
        for m in r["models"].as_array().unwrap() {
            bytes = bytes.max(m["bytes"].as_u64().unwrap());
        }
    }
    let models: Vec<ModelSlot> = ids
        .iter()
        .map(|id| ModelSlot {
            id: id.to_string(),
            replicas: 2,
            bytes,
            pin: Vec::new(),
        })
        .collect();
    place(&nodes, &models).owners
}

#[test]
fn a_node_joining_under_load_takes_replicas_warm_first_as_placement_predicts() {
    // Six models (one file, six ids) at two replicas on three nodes; a
    // fourth node joins while 300 requests run, streamed and not.
    let ids = ["a", "b", "c", "d", "e", "f"];
    let models: Vec<String> = ids.iter().map(|id| format!("{id}=smollm2@2")).collect();
    let models: Vec<&str> = models.iter().map(String::as_str).collect();
    let (_cluster, gw) = cluster(3, &models, &["--kv-memory-mib", "64"]);
    let limit = Duration::from_secs(180);
    let placed = || {
        ids.iter()
            .all(|id| gw.ready(id).len() == 2 && gw.holders(id).len() == 2)
    };
    assert!(wait(limit, placed).is_some(), "{}", gw.cluster());
    let before = owners(&gw);
    assert_eq!(
        before,
        predicted(&gw, &ids),
        "placement differs from place()"
    );

    let mut joiner = None;
    let request = |i: usize| {
        let stream = i % 2 == 1;
        let b = json!({"model": ids[i % ids.len()], "prompt": format!("Request {i}: once upon a time"),
                       "max_tokens": 8, "stream": stream});
        let r = raw_http(
            gw.addr,
            "POST",
            "/v1/completions",
            &[],
            b.to_string().as_bytes(),
        );
        r.map_err(|e| e.to_string()).map(|r| {
            (
                r.status,
                !stream || r.body.trim_end().ends_with("data: [DONE]"),
            )
        })
    };
    let results = load(300, 8, request, 50, limit, || {
        joiner = Some(node(
            free_port(),
            "n3",
            &[
                "--kv-memory-mib",
                "64",
                "--join",
                &format!("http://{}", gw.addr),
            ],
        ));
    });
    assert_all_served(&results);
    // Settled: every replica on its owner, the ones that moved unloaded.
    let settled = wait(limit, || {
        gw.node_state("n3") == "up"
            && placed()
            && ids.iter().all(|id| {
                gw.holders(id) == {
                    let mut o = owners(&gw)[*id].clone();
                    o.sort();
                    o
                }
            })
    });
    assert!(settled.is_some(), "{}", gw.cluster());
    let after = owners(&gw);
    assert_eq!(
        after,
        predicted(&gw, &ids),
        "placement differs from place()"
    );
    let mut moves = Vec::new();
    for id in ids {
        for n in &after[id] {
            if !before[id].contains(n) {
                let old = before[id].iter().find(|o| !after[id].contains(o)).unwrap();
                moves.push((id, n.clone(), old.clone()));
            }
        }
    }
    // A join moves replicas only onto the joiner, and about 1/4 of them.
    assert!(moves.iter().all(|(_, new, _)| new == "n3"), "{moves:?}");
    assert!(!moves.is_empty() && moves.len() <= 6, "{moves:?}");
    // Warm first: each moved replica loaded on n3 before its old owner
    // unloaded it.
    let ev = gw.events();
    let at = |kind: &str, node: &str, model: &str| {
        ev.iter()
            .position(|e| e["kind"] == kind && e["node"] == node && e["model"] == model)
            .unwrap_or_else(|| panic!("no {kind} of {model} on {node}: {ev:?}"))
    };
    for (id, new, old) in &moves {
        assert!(
            at("loaded", new, id) < at("unload", old, id),
            "{id}: {ev:?}"
        );
    }
    drop(joiner);
    println!(
        "n3 joined under load: {} requests, 0 failed; {} replicas moved to it, as placement \
         predicts ({moves:?}); each ready there before its old owner unloaded it",
        results.len(),
        moves.len()
    );
}
