//! The routing snapshot: for each model, the nodes that report it ready,
//! with their load. Rebuilt from membership whenever a report arrives and
//! swapped in atomically (arc-swap), so a request reads it with no lock
//! and no actor hop.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use realizar_shared::control::{ModelInfo, ModelState};

use crate::breaker::Breaker;
use crate::catalog::Catalog;
use crate::hash;
use crate::membership::Membership;
use crate::placement::Placement;
use crate::routing::{Candidate, Keys};

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
    /// Start keys (`AFFINITY_HEADER`) it reports cached for the model.
    pub cached_keys: u64,
    /// Its place in the model's list of owners (`RoutingTable::models`).
    pub slot: usize,
}

/// Which of a model's owners have which keys cached: what their reports
/// list, and what this gateway sent them since. Indexed by key, owners by
/// their slot, so a request looks each of its keys up once and tests a bit
/// per owner, however many owners the model has.
#[derive(Debug, Default)]
pub struct Keyed {
    /// key → slots of the owners reporting it: start keys, conversation
    /// keys.
    start: HashMap<u64, Vec<u32>>,
    conversations: HashMap<u64, Vec<u32>>,
    sent: Mutex<Sent>,
}

/// Keys this gateway sent owners that their reports do not list yet (each
/// with when it was sent; carried from table to table until reported or
/// `PENDING_FOR` old): counted as cached there, so tenants that arrive
/// together between two reports spread out instead of all taking the same
/// share.
#[derive(Debug, Default, Clone)]
struct Sent {
    start: HashMap<u64, Vec<(u32, Instant)>>,
    conversations: HashMap<u64, Vec<(u32, Instant)>>,
    /// Per slot, its entries in `start`.
    per_owner: Vec<u64>,
}

/// Adds `slot` to `key`'s senders; false when it was there (its time is
/// refreshed).
fn add_sent(
    map: &mut HashMap<u64, Vec<(u32, Instant)>>,
    key: u64,
    slot: u32,
    now: Instant,
) -> bool {
    let v = map.entry(key).or_default();
    match v.iter_mut().find(|(o, _)| *o == slot) {
        Some(e) => {
            e.1 = now;
            false
        }
        None => {
            v.push((slot, now));
            true
        }
    }
}

/// A set of slots.
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }
    fn has(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    /// Adds the owners holding `key` in `reported` or `sent`.
    fn holders(
        &mut self,
        key: Option<u64>,
        reported: &HashMap<u64, Vec<u32>>,
        sent: &HashMap<u64, Vec<(u32, Instant)>>,
    ) {
        let Some(k) = key else { return };
        for &s in reported.get(&k).into_iter().flatten() {
            self.set(s as usize);
        }
        for &(s, _) in sent.get(&k).into_iter().flatten() {
            self.set(s as usize);
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
    /// Per model, its owners' cached keys.
    pub keyed: BTreeMap<String, Keyed>,
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
        now: Instant,
    ) -> Self {
        let View {
            membership: m,
            placement,
            catalog,
            drains,
        } = *v;
        // (model → (draining?, owner, its report)) for every ready replica.
        let mut ready: BTreeMap<String, Vec<(bool, Owner, &ModelInfo)>> = BTreeMap::new();
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
                        cached_keys: model.affinity_keys.len() as u64,
                        slot: 0,
                    },
                    model,
                ));
            }
        }
        let mut models = BTreeMap::new();
        let mut keyed = BTreeMap::new();
        for (model, all) in ready {
            let owners = placement.owners_of(&model);
            let warm = catalog.contains(&model)
                && !owners.is_empty()
                && owners
                    .iter()
                    .all(|o| all.iter().any(|(d, x, _)| !d && &x.node_id == o));
            let any_live = all.iter().any(|(d, _, _)| !d);
            let serving: Vec<(Owner, &ModelInfo)> = all
                .into_iter()
                .filter(|(d, x, _)| {
                    if warm {
                        !d && owners.contains(&x.node_id)
                    } else {
                        !d || !any_live
                    }
                })
                .enumerate()
                .map(|(slot, (_, x, info))| (Owner { slot, ..x }, info))
                .collect();
            let before = previous
                .keyed
                .get(&model)
                .zip(previous.models.get(&model).map(Vec::as_slice));
            keyed.insert(model.clone(), Keyed::new(&serving, before, now));
            models.insert(model, serving.into_iter().map(|(x, _)| x).collect());
        }
        RoutingTable {
            version,
            models,
            keyed,
        }
    }

    /// `owners` (some of `model`'s) as routing sees them for a request with
    /// these keys.
    pub fn candidates<'a>(
        &self,
        model: &str,
        owners: &[&'a Owner],
        k: &Keys,
    ) -> Vec<Candidate<'a>> {
        let empty = Keyed::default();
        let keyed = self.keyed.get(model).unwrap_or(&empty);
        let n = self.models.get(model).map_or(0, Vec::len);
        let sent = keyed.sent.lock().unwrap_or_else(|e| e.into_inner());
        let (mut history, mut cached, mut prefix) = (Bits::new(n), Bits::new(n), Bits::new(n));
        history.holders(k.previous, &keyed.conversations, &sent.conversations);
        cached.holders(k.user, &keyed.start, &sent.start);
        cached.holders(k.own, &keyed.conversations, &sent.conversations);
        prefix.holders(Some(k.prompt), &keyed.start, &sent.start);
        owners
            .iter()
            .map(|o| Candidate {
                id: &o.node_id,
                id_hash: o.id_hash,
                load: o.reported + o.inflight.load(Ordering::Relaxed),
                history_cached: history.has(o.slot),
                cached: cached.has(o.slot),
                prefix_cached: prefix.has(o.slot),
                keys: o.cached_keys + sent.per_owner.get(o.slot).copied().unwrap_or(0),
            })
            .collect()
    }

    /// A request with these keys was sent to `owner` (of `model`).
    pub fn sent(&self, model: &str, owner: &Owner, k: &Keys, now: Instant) {
        let Some(keyed) = self.keyed.get(model) else {
            return;
        };
        let slot = owner.slot as u32;
        let reports =
            |m: &HashMap<u64, Vec<u32>>, x: u64| m.get(&x).is_some_and(|v| v.contains(&slot));
        let mut sent = keyed.sent.lock().unwrap_or_else(|e| e.into_inner());
        for x in k.user.into_iter().chain([k.prompt]) {
            if !reports(&keyed.start, x) && add_sent(&mut sent.start, x, slot, now) {
                if let Some(c) = sent.per_owner.get_mut(owner.slot) {
                    *c += 1;
                }
            }
        }
        if let Some(x) = k.own.filter(|x| !reports(&keyed.conversations, *x)) {
            add_sent(&mut sent.conversations, x, slot, now);
        }
    }
}

impl Keyed {
    /// From the serving owners' reports (in slot order); the keys sent
    /// under the previous table (its `Keyed` and owners) that are not
    /// reported yet and not too old carry on.
    fn new(
        serving: &[(Owner, &ModelInfo)],
        previous: Option<(&Keyed, &[Owner])>,
        now: Instant,
    ) -> Keyed {
        let mut start: HashMap<u64, Vec<u32>> = HashMap::new();
        let mut conversations: HashMap<u64, Vec<u32>> = HashMap::new();
        for (slot, (_, info)) in serving.iter().enumerate() {
            for &k in &info.affinity_keys {
                start.entry(k).or_default().push(slot as u32);
            }
            for &k in &info.conversation_keys {
                conversations.entry(k).or_default().push(slot as u32);
            }
        }
        let mut sent = Sent {
            per_owner: vec![0; serving.len()],
            ..Sent::default()
        };
        if let Some((p, old_owners)) = previous {
            let old = p.sent.lock().unwrap_or_else(|e| e.into_inner());
            // Old slot → new slot, for owners that still serve.
            let moved: Vec<Option<u32>> = old_owners
                .iter()
                .map(|o| {
                    serving
                        .iter()
                        .position(|(x, _)| x.id_hash == o.id_hash)
                        .map(|i| i as u32)
                })
                .collect();
            let keep = |from: &HashMap<u64, Vec<(u32, Instant)>>,
                        reported: &HashMap<u64, Vec<u32>>| {
                let mut out: HashMap<u64, Vec<(u32, Instant)>> = HashMap::new();
                for (k, v) in from {
                    let listed = reported.get(k);
                    let left: Vec<(u32, Instant)> = v
                        .iter()
                        .filter(|(_, at)| now.saturating_duration_since(*at) < PENDING_FOR)
                        .filter_map(|&(o, at)| Some((moved.get(o as usize).copied()??, at)))
                        .filter(|(o, _)| !listed.is_some_and(|l| l.contains(o)))
                        .collect();
                    if !left.is_empty() {
                        out.insert(*k, left);
                    }
                }
                out
            };
            sent.start = keep(&old.start, &start);
            sent.conversations = keep(&old.conversations, &conversations);
            for v in sent.start.values() {
                for &(o, _) in v {
                    sent.per_owner[o as usize] += 1;
                }
            }
        }
        Keyed {
            start,
            conversations,
            sent: Mutex::new(sent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogEntry;
    use crate::membership::Source;
    use realizar_shared::control::LoadReport;
    use realizar_shared::openai::Conversation;

    fn info(start: &[u64], conversations: &[u64]) -> ModelInfo {
        ModelInfo {
            affinity_keys: start.to_vec(),
            conversation_keys: conversations.to_vec(),
            ..ModelInfo::idle("m", ModelState::Ready)
        }
    }

    /// A table over nodes (id, report of model m), rebuilt from `previous`.
    fn table(nodes: &[(&str, ModelInfo)], previous: &RoutingTable, now: Instant) -> RoutingTable {
        let mut m = Membership::new(Duration::from_secs(3));
        for (id, model) in nodes {
            let url = format!("http://{id}");
            m.add(&url, Source::Static, now);
            let report = LoadReport {
                models: vec![model.clone()],
                ..LoadReport::empty(id, &url)
            };
            m.on_report(&url, report, now);
        }
        let owners: Vec<String> = nodes.iter().map(|(id, _)| id.to_string()).collect();
        let placement = Placement {
            owners: BTreeMap::from([("m".to_owned(), owners)]),
        };
        let catalog = Catalog::new(vec![CatalogEntry::parse("m@3").unwrap()]).unwrap();
        let view = View {
            membership: &m,
            placement: &placement,
            catalog: &catalog,
            drains: &BTreeSet::new(),
        };
        RoutingTable::build(
            &view,
            &mut BTreeMap::new(),
            &BTreeMap::new(),
            previous,
            previous.version + 1,
            now,
        )
    }

    fn flags(t: &RoutingTable, k: &Keys) -> Vec<(String, bool, bool, bool, u64)> {
        let owners: Vec<&Owner> = t.models["m"].iter().collect();
        t.candidates("m", &owners, k)
            .iter()
            .map(|c| {
                (
                    c.id.to_owned(),
                    c.history_cached,
                    c.cached,
                    c.prefix_cached,
                    c.keys,
                )
            })
            .collect()
    }

    #[test]
    fn owners_are_found_by_key_and_sent_keys_count_until_reported_or_old() {
        let t0 = Instant::now();
        let k = Keys::new(
            None,
            b"a system prompt",
            256,
            Some(Conversation {
                own: 9,
                previous: Some(8),
            }),
        );
        // a has the previous turn, b the start; c nothing.
        let t = table(
            &[
                ("a", info(&[], &[8])),
                ("b", info(&[k.prompt, 77], &[])),
                ("c", info(&[], &[])),
            ],
            &RoutingTable::default(),
            t0,
        );
        assert_eq!(
            flags(&t, &k),
            [
                ("a".to_owned(), true, false, false, 0),
                ("b".to_owned(), false, false, true, 2),
                ("c".to_owned(), false, false, false, 0)
            ]
        );
        // Sent to c: its start and its conversation count there at once.
        let c = &t.models["m"][2];
        t.sent("m", c, &k, t0);
        let f = flags(&t, &k);
        assert_eq!(f[2], ("c".to_owned(), false, true, true, 1));
        // The table is rebuilt without b (c's slot changes): c keeps them...
        let t1 = t0 + Duration::from_secs(1);
        let t2 = table(&[("a", info(&[], &[8])), ("c", info(&[], &[]))], &t, t1);
        assert_eq!(flags(&t2, &k)[1], ("c".to_owned(), false, true, true, 1));
        // ...until its report lists them (counted once, as reported)...
        let t3 = table(
            &[("a", info(&[], &[8])), ("c", info(&[k.prompt], &[9]))],
            &t2,
            t1,
        );
        assert_eq!(flags(&t3, &k)[1], ("c".to_owned(), false, true, true, 1));
        // ...or they are `PENDING_FOR` old.
        let late = table(
            &[("a", info(&[], &[8])), ("c", info(&[], &[]))],
            &t2,
            t0 + PENDING_FOR,
        );
        assert_eq!(
            flags(&late, &k)[1],
            ("c".to_owned(), false, false, false, 0)
        );
    }
}
