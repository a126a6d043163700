//! The control loop: poll every node for its load report, keep membership
//! (up; down after `down_after` of silence, 2 s by default), recompute placement, rebuild the
//! routing snapshot, and carry out the coordinator's plan (coordinator.rs:
//! loads, warm-first unloads, drains) through the nodes' admin API.
//! Requests are routed only to nodes that report a model ready, so a
//! replica being loaded takes no traffic until it is warm.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use realizar_shared::control::{LoadRequest, ModelState};
use realizar_shared::metrics as names;

use crate::catalog::Catalog;
use crate::client::NodeClient;
use crate::coordinator::{Coordinator, Drain};
use crate::membership::{Change, Health, Membership};
use crate::placement::{place, ModelSlot, NodeSlot, Placement};
use crate::scale::{Demand, Scaler};
use crate::table::{PerNode, RoutingTable, View};
use crate::Shared;

/// How often nodes are polled.
pub const POLL: Duration = Duration::from_millis(500);
/// Nodes that joined a gateway send it their report every second: a
/// gateway just (re)started hears from all of them within this long, and
/// changes nothing before, lest it place over part of the cluster and
/// move replicas it would move back a moment later.
pub const SETTLE: Duration = Duration::from_millis(1500);
/// A node that evicted a model to fit its memory budget does not own it
/// again for this long: loading it back would evict another, and the
/// node's LRU and the placement would take turns.
pub const EVICTED_FOR: Duration = Duration::from_secs(120);
/// A request waiting for a replica of a model asks for it this long.
pub const WANTED_FOR: Duration = Duration::from_secs(2);

/// One poll's answer: the node, what this gateway had in flight there when
/// it asked, and when the answer came.
struct Polled {
    url: String,
    inflight: u64,
    result: Result<realizar_shared::control::LoadReport, String>,
    at: Instant,
}

pub async fn run(shared: Arc<Shared>, client: NodeClient) {
    let mut per_node: BTreeMap<String, PerNode> = BTreeMap::new();
    let mut version = 0u64;
    let mut coordinator = Coordinator::new(shared.max_loads);
    let mut scaler = Scaler::default();
    // Model id → bytes on a node, as last reported.
    let mut sizes: BTreeMap<String, u64> = BTreeMap::new();
    let started = Instant::now();
    // Polls run as tasks of their own: one that hangs (a node cut off
    // answers nothing until the 1 s poll timeout) holds up neither the
    // others nor the round, so membership is checked every POLL and a
    // silent node is down within `down_after` + POLL.
    let mut polls: tokio::task::JoinSet<Polled> = tokio::task::JoinSet::new();
    let mut asking: BTreeSet<String> = BTreeSet::new();
    // What this gateway had in flight on each node when it asked for the
    // report it holds now: the reports include it (table.rs subtracts it).
    let mut at_poll: BTreeMap<String, u64> = BTreeMap::new();
    // Loads the nodes refused, back from `act` to the coordinator.
    let (refused_tx, mut refused_rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let round = tokio::select! {
            r = tick.tick() => r,
            () = shared.wake.notified() => tokio::time::Instant::now(),
        };
        let urls: Vec<String> = shared
            .membership
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .members()
            .map(|m| m.url.clone())
            .collect();
        for u in urls {
            if asking.contains(&u) {
                continue;
            }
            let inflight = per_node
                .get(&u)
                .map_or(0, |n| n.inflight.load(std::sync::atomic::Ordering::Relaxed));
            let c = client.clone();
            asking.insert(u.clone());
            polls.spawn(async move {
                let result = c.report(&u).await;
                Polled {
                    url: u,
                    inflight,
                    result,
                    at: Instant::now(),
                }
            });
        }
        // Answers that come within most of the round count in it; the rest
        // in a later one.
        let mut results = Vec::new();
        let deadline = round + POLL * 4 / 5;
        while let Ok(Some(done)) = tokio::time::timeout_at(deadline, polls.join_next()).await {
            if let Ok(p) = done {
                asking.remove(&p.url);
                results.push(p);
            }
        }
        let now = Instant::now();
        version += 1;
        let plan = {
            let mut m = shared.membership.write().unwrap_or_else(|e| e.into_inner());
            let mut changes = Vec::new();
            for p in results {
                match p.result {
                    Ok(report) => {
                        at_poll.insert(p.url.clone(), p.inflight);
                        changes.extend(m.on_report(&p.url, report, p.at));
                    }
                    Err(e) => {
                        tracing::debug!(node = %p.url, error = %e, "poll failed");
                        changes.extend(m.on_failure(&p.url, p.at));
                    }
                }
            }
            changes.extend(m.tick(now));
            at_poll.retain(|u, _| m.get(u).is_some());
            let mut drains = shared.drains.write().unwrap_or_else(|e| e.into_inner());
            for c in &changes {
                let (kind, url) = match c {
                    Change::Up(u) => ("node-up", u),
                    Change::Down(u) => ("node-down", u),
                    Change::Gone(u) => ("node-left", u),
                };
                let id = m.get(url).map_or(url.as_str(), |x| x.id()).to_owned();
                tracing::info!(node = %id, url = %url, "{kind}");
                shared.event(kind, &id, "", url.as_str());
                // A drained node that comes back (restarted, say, after an
                // upgrade) is in service again.
                if matches!(c, Change::Up(_)) && drains.get(&id).is_some_and(|d| d.done.is_some()) {
                    drains.remove(&id);
                    shared.event("undrained", &id, "", "back after its drain");
                }
            }
            nodes_asking(&shared, &m, &mut drains, now);
            metrics::gauge!(names::GATEWAY_NODES_UP).set(m.live().count() as f64);
            metrics::gauge!(names::GATEWAY_NODES_KNOWN).set(m.members().count() as f64);
            for (url, n) in &per_node {
                let open = n.breaker.state(now) != crate::breaker::State::Closed;
                let id = m.get(url).map_or(url.as_str(), |x| x.id()).to_owned();
                metrics::gauge!(names::GATEWAY_BREAKER_OPEN, names::NODE => id).set(if open {
                    1.0
                } else {
                    0.0
                });
            }
            let catalog = shared.catalog.read().unwrap_or_else(|e| e.into_inner());
            // Demand-driven replica counts (scale.rs); placement, routing
            // and the coordinator see the catalog with those counts.
            let wanted: BTreeSet<String> = {
                let mut w = shared.wanted.lock().unwrap_or_else(|e| e.into_inner());
                w.retain(|_, at| now.duration_since(*at) < WANTED_FOR);
                w.keys().cloned().collect()
            };
            let (counts, changes) = scaler.step(&catalog, &demand(&m, &catalog, &wanted), now);
            for (id, from, to, why) in changes {
                tracing::info!(model = %id, from, to, "{why}");
                shared.event("scale", "", &id, format!("{from} → {to} replicas ({why})"));
            }
            let catalog = catalog.with_replicas(&counts);
            *shared.replicas.write().unwrap_or_else(|e| e.into_inner()) = counts;
            let draining: BTreeSet<String> = drains
                .iter()
                .filter(|(_, d)| d.done.is_none())
                .map(|(id, _)| id.clone())
                .collect();
            sizes.retain(|id, _| catalog.contains(id));
            let placement = placement(&m, &catalog, &drains, &mut sizes);
            {
                let mut old = shared.placement.write().unwrap_or_else(|e| e.into_inner());
                let moves = placement.replicas_not_in(&old).len();
                if moves > 0 {
                    metrics::counter!(names::GATEWAY_PLACEMENT_MOVES).increment(moves as u64);
                }
                *old = placement.clone();
            }
            let view = View {
                membership: &m,
                placement: &placement,
                catalog: &catalog,
                drains: &draining,
            };
            let table = RoutingTable::build(
                &view,
                &mut per_node,
                &at_poll,
                &shared.table.load(),
                version,
                Instant::now(),
            );
            shared.table.store(Arc::new(table));
            // Until every known node has answered once (or been silent long
            // enough to count as down), placement would be computed over part
            // of the cluster and load replicas that a moment later belong
            // elsewhere: wait for membership to settle.
            let settled = m.members().all(|x| x.health != Health::Unknown)
                && now.duration_since(started) >= SETTLE;
            if !settled {
                continue;
            }
            let idle = |url: &str| {
                per_node
                    .get(url)
                    .is_none_or(|n| n.inflight.load(std::sync::atomic::Ordering::Relaxed) == 0)
            };
            while let Ok((url, model)) = refused_rx.try_recv() {
                coordinator.load_failed(&url, &model, now);
            }
            let plan = coordinator.step(&m, &placement, &catalog, &drains, idle, now);
            for id in &plan.drained {
                if let Some(d) = drains.get_mut(id) {
                    d.done = Some(now);
                    shared.event(
                        "drained",
                        id,
                        "",
                        format!("{:.1} s", (now - d.started).as_secs_f64()),
                    );
                }
            }
            let id_of = |url: &str| m.get(url).map_or(url, |x| x.id()).to_owned();
            plan.loads
                .into_iter()
                .map(|(u, r)| (id_of(&u), u, Action::Load(r)))
                .chain(
                    plan.unloads
                        .into_iter()
                        .map(|(u, x)| (id_of(&u), u, Action::Unload(x))),
                )
                .collect::<Vec<_>>()
        };
        for (node, url, action) in plan {
            let (c, sh, tx) = (client.clone(), shared.clone(), refused_tx.clone());
            tokio::spawn(async move {
                if let Some(model) = act(&sh, &c, &node, &url, action).await {
                    let _ = tx.send((url, model));
                }
            });
        }
    }
}

enum Action {
    Load(LoadRequest),
    Unload(String),
}

/// Carry out one load or unload, logging it; the model of a load that
/// failed.
async fn act(
    shared: &Shared,
    client: &NodeClient,
    node: &str,
    url: &str,
    a: Action,
) -> Option<String> {
    match a {
        Action::Load(req) => {
            let model = req.id.clone().unwrap_or_default();
            shared.event("load", node, &model, req.path.as_str());
            let t0 = Instant::now();
            let r = client.load(url, &req).await;
            let outcome = if r.is_ok() { "ok" } else { "failed" };
            metrics::counter!(names::GATEWAY_REPLICA_LOADS, "outcome" => outcome).increment(1);
            match r {
                Ok(()) => {
                    tracing::info!(node, model = %model, "replica loaded");
                    shared.event(
                        "loaded",
                        node,
                        &model,
                        format!("{:.1} s", t0.elapsed().as_secs_f64()),
                    );
                }
                Err(e) => {
                    tracing::warn!(node, model = %model, error = %e, "load failed");
                    shared.event("load-failed", node, &model, e);
                    return Some(model);
                }
            }
        }
        Action::Unload(model) => {
            shared.event("unload", node, &model, "");
            let r = client.unload(url, &model).await;
            let outcome = if r.is_ok() { "ok" } else { "failed" };
            metrics::counter!(names::GATEWAY_REPLICA_UNLOADS, "outcome" => outcome).increment(1);
            match r {
                Ok(()) => shared.event("unloaded", node, &model, ""),
                Err(e) => {
                    tracing::warn!(node, model = %model, error = %e, "unload failed");
                    shared.event("unload-failed", node, &model, e);
                }
            }
        }
    }
    None
}

/// What the reports say of each catalog model's demand.
fn demand(
    m: &Membership,
    catalog: &Catalog,
    wanted: &BTreeSet<String>,
) -> BTreeMap<String, Demand> {
    let mut out: BTreeMap<String, Demand> = catalog
        .entries()
        .iter()
        .map(|e| {
            let d = Demand {
                asked: wanted.contains(&e.id),
                ..Demand::default()
            };
            (e.id.clone(), d)
        })
        .collect();
    for (_, r) in m.live() {
        for x in &r.models {
            if let Some(d) = out.get_mut(&x.id) {
                d.waiting += x.waiting;
                d.active += x.running + x.waiting + x.inflight;
                d.holders += 1;
                d.ready += usize::from(x.state == ModelState::Ready);
            }
        }
    }
    out
}

/// A node told to stop asks to be drained (its report says `leaving`);
/// that drain ends when its reports stop saying so, after its restart.
fn nodes_asking(
    shared: &Shared,
    m: &Membership,
    drains: &mut BTreeMap<String, Drain>,
    now: Instant,
) {
    for (_, r) in m.live() {
        match drains.get(&r.node_id) {
            None if r.leaving => {
                drains.insert(
                    r.node_id.clone(),
                    Drain {
                        started: now,
                        deadline: now + shared.drain_timeout,
                        done: None,
                        by_node: true,
                    },
                );
                shared.event("drain", &r.node_id, "", "asked by the node (stopping)");
            }
            Some(d) if d.by_node && !r.leaving => {
                drains.remove(&r.node_id);
                shared.event("undrained", &r.node_id, "", "back after its restart");
            }
            _ => {}
        }
    }
}

/// Placement over the live nodes that are not draining, each weighted by
/// its memory budget.
pub fn placement(
    m: &Membership,
    catalog: &Catalog,
    drains: &BTreeMap<String, Drain>,
    sizes: &mut BTreeMap<String, u64>,
) -> Placement {
    let mut nodes: Vec<NodeSlot> = Vec::new();
    for (_, r) in m.live() {
        // Sizes are remembered: a model evicted or unloaded everywhere
        // still has one, so placement keeps counting it.
        let held = r.models.iter().map(|x| (&x.id, x.bytes));
        let evicted = r.evicted.iter().map(|e| (&e.id, e.bytes));
        for (id, bytes) in held.chain(evicted) {
            if bytes > 0 {
                sizes.insert(id.clone(), bytes);
            }
        }
        if r.draining || drains.contains_key(&r.node_id) {
            continue;
        }
        // What the node holds outside the catalog (an operator's own
        // models) is not the cluster's to place into.
        let foreign: u64 = r
            .models
            .iter()
            .filter(|x| !catalog.contains(&x.id) && !catalog.removed.contains(&x.id))
            .map(|x| x.bytes)
            .sum();
        nodes.push(NodeSlot {
            id: r.node_id.clone(),
            capacity: r.memory_budget_bytes.saturating_sub(foreign),
            refuses: r
                .evicted
                .iter()
                .filter(|e| e.seconds_ago < EVICTED_FOR.as_secs_f64())
                .map(|e| e.id.clone())
                .collect(),
        });
    }
    let models: Vec<ModelSlot> = catalog
        .entries()
        .iter()
        .map(|e| ModelSlot {
            id: e.id.clone(),
            replicas: e.replicas,
            // Until some node has loaded it its size is unknown; then the
            // reported size (file + KV pool) counts.
            bytes: sizes.get(e.id.as_str()).copied().unwrap_or(0),
            pin: e.pin.clone(),
        })
        .collect();
    place(&nodes, &models)
}
