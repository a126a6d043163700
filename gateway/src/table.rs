//! The routing snapshot: for each model, the nodes that report it ready,
//! with their load. Rebuilt from membership whenever a report arrives and
//! swapped in atomically (arc-swap), so a request reads it with no lock
//! and no actor hop.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use realizar_shared::control::ModelState;

use crate::breaker::Breaker;
use crate::catalog::Catalog;
use crate::hash;
use crate::membership::Membership;
use crate::placement::Placement;
use crate::routing::Candidate;

/// A node that serves a model now.
#[derive(Debug, Clone)]
pub struct Owner {
    pub node_id: String,
    pub id_hash: u64,
    pub url: String,
    /// Running + waiting sequences for the model as last reported, less
    /// what this gateway had in flight on the node when it asked for the
    /// report: the load others
    /// (other gateways, direct clients) put there. Counting the gateway's
    /// own requests twice — in a report up to a poll old and in `inflight`
    /// — would make a node that just finished a request look busy.
    pub reported: u64,
    /// Requests this gateway has sent to the node and not finished
    /// (shared by every model's entry for the node, kept across rebuilds).
    pub inflight: Arc<AtomicU64>,
    /// The node's circuit breaker (kept across rebuilds, like `inflight`).
    pub breaker: Arc<Breaker>,
    /// Affinity keys the node reports cached for the model.
    pub keys: Arc<HashSet<u64>>,
    /// Keys this gateway sent it that its reports do not list yet (each
    /// with when it was sent; carried from table to table until reported or
    /// `PENDING_FOR` old): counted as cached there, so tenants that arrive
    /// together between two reports spread out instead of all taking the
    /// same share.
    pub pending: Arc<Mutex<HashMap<u64, Instant>>>,
}

impl Owner {
    /// As routing sees it, for a request with affinity `key`.
    pub fn candidate(&self, key: u64) -> Candidate<'_> {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        Candidate {
            id: &self.node_id,
            id_hash: self.id_hash,
            load: self.reported + self.inflight.load(Ordering::Relaxed),
            cached: self.keys.contains(&key) || pending.contains_key(&key),
            keys: (self.keys.len() + pending.len()) as u64,
        }
    }

    /// A request with `key` was sent here.
    pub fn sent(&self, key: u64) {
        if !self.keys.contains(&key) {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, Instant::now());
        }
    }
}

/// How long a key sent to a node counts there before its report lists it
/// (the node lists a key once its request is submitted; a long prefill
/// step can delay that by a few seconds).
pub const PENDING_FOR: Duration = Duration::from_secs(5);

/// What the gateway keeps per node across rebuilds of the table.
#[derive(Debug, Clone)]
pub struct PerNode {
    pub inflight: Arc<AtomicU64>,
    pub breaker: Arc<Breaker>,
}

impl Default for PerNode {
    fn default() -> Self {
        PerNode {
            inflight: Arc::default(),
            // Five failures in a row open it for 10 s.
            breaker: Arc::new(Breaker::new(5, std::time::Duration::from_secs(10))),
        }
    }
}

/// What a table is built from: who is up and reports what, who should
/// own what, what the cluster serves, and who is being drained.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub membership: &'a Membership,
    pub placement: &'a Placement,
    pub catalog: &'a Catalog,
    pub drains: &'a BTreeSet<String>,
}

#[derive(Debug, Default)]
pub struct RoutingTable {
    /// Bumped on every rebuild.
    pub version: u64,
    pub models: BTreeMap<String, Vec<Owner>>,
}

impl RoutingTable {
    /// From the live nodes' reports. `per_node` holds each node's in-flight
    /// counter and breaker, created on first sight and kept for its life.
    ///
    /// A catalog model is routed to its owners once every owner has it
    /// ready; until then (a replica moving, an owner restarting) to every
    /// node that has it ready, so a move never lowers capacity. Nodes being
    /// drained take a model only when no other node has it ready; nodes
    /// shutting down (their report says draining) take nothing.
    /// `at_poll`: this gateway's in-flight count on each node (by URL) when
    /// the reports were asked for, which the reports already include.
    /// `previous`: the table this one replaces (its pending keys carry on).
    pub fn build(
        v: &View,
        per_node: &mut BTreeMap<String, PerNode>,
        at_poll: &BTreeMap<String, u64>,
        previous: &RoutingTable,
        version: u64,
    ) -> Self {
        let View {
            membership: m,
            placement,
            catalog,
            drains,
        } = *v;
        // (model → (draining?, owner)) for every ready replica.
        let mut ready: BTreeMap<String, Vec<(bool, Owner)>> = BTreeMap::new();
        for (member, report) in m.live() {
            if report.draining {
                continue;
            }
            let node = per_node.entry(member.url.clone()).or_default().clone();
            let draining = drains.contains(&report.node_id);
            for model in report
                .models
                .iter()
                .filter(|x| x.state == ModelState::Ready)
            {
                ready.entry(model.id.clone()).or_default().push((
                    draining,
                    Owner {
                        node_id: report.node_id.clone(),
                        id_hash: hash::of(&report.node_id),
                        url: member.url.clone(),
                        reported: ((model.running + model.waiting) as u64)
                            .saturating_sub(at_poll.get(&member.url).copied().unwrap_or(0)),
                        inflight: node.inflight.clone(),
                        breaker: node.breaker.clone(),
                        pending: Arc::new(Mutex::new(previous.pending(
                            &model.id,
                            &report.node_id,
                            &model.affinity_keys,
                        ))),
                        keys: Arc::new(model.affinity_keys.iter().copied().collect()),
                    },
                ));
            }
        }
        let models = ready
            .into_iter()
            .map(|(model, all)| {
                let owners = placement.owners_of(&model);
                let warm = catalog.contains(&model)
                    && !owners.is_empty()
                    && owners
                        .iter()
                        .all(|o| all.iter().any(|(d, x)| !d && &x.node_id == o));
                let serving: Vec<Owner> = if warm {
                    all.into_iter()
                        .filter(|(d, x)| !d && owners.contains(&x.node_id))
                        .map(|(_, x)| x)
                        .collect()
                } else if all.iter().any(|(d, _)| !d) {
                    all.into_iter()
                        .filter(|(d, _)| !d)
                        .map(|(_, x)| x)
                        .collect()
                } else {
                    all.into_iter().map(|(_, x)| x).collect()
                };
                (model, serving)
            })
            .collect();
        RoutingTable { version, models }
    }

    /// The keys pending on a node for a model that its new report does not
    /// list and that are not too old.
    fn pending(&self, model: &str, node: &str, reported: &[u64]) -> HashMap<u64, Instant> {
        let Some(o) = self
            .models
            .get(model)
            .and_then(|os| os.iter().find(|o| o.node_id == node))
        else {
            return HashMap::new();
        };
        let now = Instant::now();
        let mut p = o.pending.lock().unwrap_or_else(|e| e.into_inner()).clone();
        p.retain(|k, at| now.duration_since(*at) < PENDING_FOR && !reported.contains(k));
        p
    }
}
