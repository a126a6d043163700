//! The routing snapshot: for each model, the nodes that report it ready,
//! with their load. Rebuilt from membership whenever a report arrives and
//! swapped in atomically (arc-swap), so a request reads it with no lock
//! and no actor hop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use realizar_shared::control::ModelState;

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

#[derive(Debug, Default)]
pub struct RoutingTable {
    /// Bumped on every rebuild.
    pub version: u64,
    pub models: BTreeMap<String, Vec<Owner>>,
}

impl RoutingTable {
    /// From the live nodes' reports. `inflight` holds each node's counter,
    /// created on first sight and kept for the node's life.
    pub fn build(
        m: &Membership,
        inflight: &mut BTreeMap<String, Arc<AtomicU64>>,
        version: u64,
    ) -> Self {
        let mut models: BTreeMap<String, Vec<Owner>> = BTreeMap::new();
        for (member, report) in m.live() {
            if report.draining {
                continue;
            }
            let counter = inflight.entry(member.url.clone()).or_default().clone();
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
                    inflight: counter.clone(),
                });
            }
        }
        RoutingTable { version, models }
    }
}
