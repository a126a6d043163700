//! The routing snapshot: for each model, the nodes that report it ready,
//! with their load. Rebuilt from membership whenever a report arrives and
//! swapped in atomically (arc-swap), so a request reads it with no lock
//! and no actor hop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use realizar_shared::control::ModelState;

use crate::breaker::Breaker;
use crate::hash;
use crate::membership::Membership;
use crate::routing::Candidate;

/// A node that serves a model now.
#[derive(Debug, Clone)]
pub struct Owner {
    pub node_id: String,
    pub id_hash: u64,
    pub url: String,
    /// Running + waiting sequences for the model, as last reported.
    pub reported: u64,
    /// Requests this gateway has sent to the node and not finished
    /// (shared by every model's entry for the node, kept across rebuilds).
    pub inflight: Arc<AtomicU64>,
    /// The node's circuit breaker (kept across rebuilds, like `inflight`).
    pub breaker: Arc<Breaker>,
}

impl Owner {
    pub fn candidate(&self) -> Candidate<'_> {
        Candidate {
            id: &self.node_id,
            id_hash: self.id_hash,
            load: self.reported + self.inflight.load(Ordering::Relaxed),
        }
    }
}

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

#[derive(Debug, Default)]
pub struct RoutingTable {
    /// Bumped on every rebuild.
    pub version: u64,
    pub models: BTreeMap<String, Vec<Owner>>,
}

impl RoutingTable {
    /// From the live nodes' reports. `per_node` holds each node's in-flight
    /// counter and breaker, created on first sight and kept for its life.
    pub fn build(m: &Membership, per_node: &mut BTreeMap<String, PerNode>, version: u64) -> Self {
        let mut models: BTreeMap<String, Vec<Owner>> = BTreeMap::new();
        for (member, report) in m.live() {
            if report.draining {
                continue;
            }
            let node = per_node.entry(member.url.clone()).or_default().clone();
            for model in report
                .models
                .iter()
                .filter(|x| x.state == ModelState::Ready)
            {
                models.entry(model.id.clone()).or_default().push(Owner {
                    node_id: report.node_id.clone(),
                    id_hash: hash::of(&report.node_id),
                    url: member.url.clone(),
                    reported: (model.running + model.waiting) as u64,
                    inflight: node.inflight.clone(),
                    breaker: node.breaker.clone(),
                });
            }
        }
        RoutingTable { version, models }
    }
}
