//! The control loop: poll every node for its load report, keep membership
//! (up/down after 3 s of silence), rebuild the routing snapshot, and make
//! the placement true — each model loaded on the nodes rendezvous hashing
//! gives it, one load at a time per node. Requests are routed only to
//! nodes that report a model ready, so a replica being loaded takes no
//! traffic until it is warm.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use realizar_shared::control::{LoadReport, LoadRequest, ModelState};

use crate::client::NodeClient;
use crate::membership::{Change, Health, Membership};
use crate::placement::{place, ModelSlot, NodeSlot, Placement};
use crate::table::{PerNode, RoutingTable};
use crate::Shared;

/// A model the cluster serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    pub id: String,
    /// What the node loads: a catalog name or a file inside its model
    /// directories.
    pub path: String,
    pub replicas: usize,
}

impl CatalogEntry {
    /// `ID=PATH_OR_NAME[@REPLICAS]`, or `NAME[@REPLICAS]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (spec, replicas) = match s.rsplit_once('@') {
            Some((a, r)) => (
                a,
                r.parse::<usize>()
                    .ok()
                    .filter(|&r| r >= 1)
                    .ok_or_else(|| format!("--model {s}: replicas must be a whole number ≥ 1"))?,
            ),
            None => (s, 1),
        };
        let (id, path) = spec.split_once('=').unwrap_or((spec, spec));
        if id.is_empty() || path.is_empty() {
            return Err(format!("--model {s}: expected ID=PATH[@REPLICAS]"));
        }
        Ok(CatalogEntry {
            id: id.to_owned(),
            path: path.to_owned(),
            replicas,
        })
    }
}

/// How often nodes are polled.
pub const POLL: Duration = Duration::from_millis(500);

pub async fn run(shared: Arc<Shared>, client: NodeClient) {
    let mut per_node: BTreeMap<String, PerNode> = BTreeMap::new();
    let mut version = 0u64;
    // Loads this gateway asked for and the node has not yet reported.
    let mut pending: BTreeMap<String, (String, Instant)> = BTreeMap::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let urls: Vec<String> = shared
            .membership
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .members()
            .map(|m| m.url.clone())
            .collect();
        let polls = urls.iter().map(|u| {
            let c = client.clone();
            let u = u.clone();
            async move {
                let r = c.report(&u).await;
                (u, r)
            }
        });
        let results = futures_util::future::join_all(polls).await;
        let now = Instant::now();
        let mut changes = Vec::new();
        {
            let mut m = shared.membership.write().unwrap_or_else(|e| e.into_inner());
            for (u, r) in results {
                match r {
                    Ok(report) => changes.extend(m.on_report(&u, report, now)),
                    Err(e) => {
                        tracing::debug!(node = %u, error = %e, "poll failed");
                        changes.extend(m.on_failure(&u, now));
                    }
                }
            }
            changes.extend(m.tick(now));
            for c in &changes {
                match c {
                    Change::Up(u) => tracing::info!(node = %u, "node up"),
                    Change::Down(u) => tracing::warn!(node = %u, "node down"),
                    Change::Gone(u) => tracing::info!(node = %u, "node left"),
                }
            }
            version += 1;
            metrics::gauge!(realizar_shared::metrics::GATEWAY_NODES_UP)
                .set(m.live().count() as f64);
            metrics::gauge!(realizar_shared::metrics::GATEWAY_NODES_KNOWN)
                .set(m.members().count() as f64);
            let table = RoutingTable::build(&m, &mut per_node, version);
            for (url, n) in &per_node {
                let open = n.breaker.state(now) != crate::breaker::State::Closed;
                let id = m.get(url).map_or(url.as_str(), |x| x.id()).to_owned();
                metrics::gauge!(realizar_shared::metrics::GATEWAY_BREAKER_OPEN, realizar_shared::metrics::NODE => id)
                    .set(if open { 1.0 } else { 0.0 });
            }
            shared.table.store(Arc::new(table));
            let placement = placement(&m, &shared.catalog);
            // Until every known node has answered once (or been silent long
            // enough to count as down), placement would be computed over part
            // of the cluster and load replicas that a moment later belong
            // elsewhere: wait for membership to settle.
            let settled = m.members().all(|x| x.health != Health::Unknown);
            let loads = if settled {
                wanted_loads(&m, &placement, &shared.catalog, &mut pending, now)
            } else {
                Vec::new()
            };
            *shared.placement.write().unwrap_or_else(|e| e.into_inner()) = placement;
            for (url, req) in loads {
                let c = client.clone();
                tokio::spawn(async move {
                    let id = req.id.clone().unwrap_or_default();
                    match c.load(&url, &req).await {
                        Ok(()) => tracing::info!(node = %url, model = %id, "replica loaded"),
                        Err(e) => {
                            tracing::warn!(node = %url, model = %id, error = %e, "load failed")
                        }
                    }
                });
            }
        }
    }
}

/// Placement over the live nodes, each weighted by its memory budget.
fn placement(m: &Membership, catalog: &[CatalogEntry]) -> Placement {
    let mut nodes: Vec<NodeSlot> = Vec::new();
    let mut sizes: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, r) in m.live().filter(|(_, r)| !r.draining) {
        nodes.push(NodeSlot {
            id: r.node_id.clone(),
            capacity: r.memory_budget_bytes,
        });
        for x in &r.models {
            if x.bytes > 0 {
                sizes.insert(&x.id, x.bytes);
            }
        }
    }
    let models: Vec<ModelSlot> = catalog
        .iter()
        .map(|e| ModelSlot {
            id: e.id.clone(),
            replicas: e.replicas,
            // Until some node has loaded it its size is unknown; then the
            // reported size (file + KV pool) counts.
            bytes: sizes.get(e.id.as_str()).copied().unwrap_or(0),
        })
        .collect();
    place(&nodes, &models)
}

/// The loads that make the placement true: for each owner that neither
/// has the model nor is loading one already (one load at a time per node;
/// a request unanswered for 2 minutes is given up).
fn wanted_loads(
    m: &Membership,
    p: &Placement,
    catalog: &[CatalogEntry],
    pending: &mut BTreeMap<String, (String, Instant)>,
    now: Instant,
) -> Vec<(String, LoadRequest)> {
    let by_id: BTreeMap<&str, (&str, &LoadReport)> = m
        .live()
        .map(|(mem, r)| (r.node_id.as_str(), (mem.url.as_str(), r)))
        .collect();
    let busy: BTreeSet<&str> = by_id
        .values()
        .filter(|(_, r)| r.models.iter().any(|x| x.state == ModelState::Loading))
        .map(|(u, _)| *u)
        .collect();
    pending.retain(|url, (model, since)| {
        let done = by_id
            .values()
            .find(|(u, _)| u == url)
            .is_some_and(|(_, r)| r.model(model).is_some_and(|x| x.state == ModelState::Ready));
        !done && now.duration_since(*since) < Duration::from_secs(120)
    });
    let mut out = Vec::new();
    for e in catalog {
        for owner in p.owners_of(&e.id) {
            let Some(&(url, report)) = by_id.get(owner.as_str()) else {
                continue;
            };
            if report.model(&e.id).is_some() || busy.contains(url) || pending.contains_key(url) {
                continue;
            }
            pending.insert(url.to_owned(), (e.id.clone(), now));
            out.push((
                url.to_owned(),
                LoadRequest {
                    path: e.path.clone(),
                    id: Some(e.id.clone()),
                    pinned: false,
                    options: None,
                },
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_entries_parse() {
        let e = CatalogEntry::parse("chat=smollm2@2").unwrap();
        assert_eq!(
            (e.id.as_str(), e.path.as_str(), e.replicas),
            ("chat", "smollm2", 2)
        );
        let e = CatalogEntry::parse("gemma3").unwrap();
        assert_eq!(
            (e.id.as_str(), e.path.as_str(), e.replicas),
            ("gemma3", "gemma3", 1)
        );
        assert!(CatalogEntry::parse("x@0").is_err());
        assert!(CatalogEntry::parse("=p").is_err());
    }
}
