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
use crate::routing::{self, Candidate, Keys};

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
    /// It reports its cache for the model losing starts still in use
    /// (`routing::losing_starts`).
    pub losing_starts: bool,
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
    /// (point, slot), sorted: `POINTS` per owner, when there are more than
    /// `SAMPLE` owners.
    ring: Vec<(u64, u32)>,
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

/// What a decision knows of one owner it looks at.
#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    sampled: bool,
    history: bool,
    cached: bool,
    prefix: bool,
}

impl Flags {
    fn set(&mut self, which: usize) {
        match which {
            0 => self.history = true,
            1 => self.cached = true,
            _ => self.prefix = true,
        }
    }
}

/// How many of a model's owners one decision samples (`candidates`): the
/// load bound and the least-loaded fallback are taken over them, so past
/// this many owners a decision's cost stops growing (and the fallback is a
/// power-of-`SAMPLE`-choices pick).
pub const SAMPLE: usize = 16;

/// Points per owner on a model's ring (built past `SAMPLE` owners): enough
/// that each owner begins about as many samples as the next.
const POINTS: u64 = 32;

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
                        losing_starts: routing::losing_starts(
                            model.starts_returned,
                            model.starts_lost,
                        ),
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

    /// The owners of `model` a decision for a request with these keys looks
    /// at, as routing sees them (in the same order), less those `skip`
    /// refuses.
    ///
    /// With `sample` and more than `SAMPLE` owners: the key's next `SAMPLE`
    /// owners on the model's ring (`sampled`, consistent: a join or a leave
    /// changes only the samples it lands in), plus the owners holding one
    /// of the request's keys when at most `SAMPLE` do (else just the
    /// sampled holders are flagged). A decision then costs the same at 10
    /// owners as at 1,000. Otherwise every owner, all `sampled`.
    pub fn candidates<'a>(
        &'a self,
        model: &str,
        k: &Keys,
        sample: bool,
        skip: &dyn Fn(&Owner) -> bool,
    ) -> (Vec<&'a Owner>, Vec<Candidate<'a>>) {
        let (Some(owners), Some(keyed)) = (self.models.get(model), self.keyed.get(model)) else {
            return (Vec::new(), Vec::new());
        };
        let everyone = !sample || owners.len() <= SAMPLE;
        // (slot, flags) of the owners looked at; in slot order when
        // `everyone`.
        let mut at: Vec<(u32, Flags)> = Vec::with_capacity(SAMPLE + 4);
        let sampled = Flags {
            sampled: true,
            ..Flags::default()
        };
        if everyone {
            at.extend(
                owners
                    .iter()
                    .filter(|o| !skip(o))
                    .map(|o| (o.slot as u32, sampled)),
            );
        } else {
            let ring = &keyed.ring;
            let from = ring.partition_point(|p| p.0 < hash::mix(k.rank));
            for j in 0..ring.len() {
                if at.len() == SAMPLE {
                    break;
                }
                let s = ring[(from + j) % ring.len()].1;
                if !at.iter().any(|x| x.0 == s) && !skip(&owners[s as usize]) {
                    at.push((s, sampled));
                }
            }
        }
        let sent = keyed.sent.lock().unwrap_or_else(|e| e.into_inner());
        let conversation = (&keyed.conversations, &sent.conversations);
        let start = (&keyed.start, &sent.start);
        // Which flag each key sets (`Flags::set`): the previous turn or
        // this very prompt, history; the user, cached; the start, prefix.
        let lookups = [
            (k.previous.map(|x| (x, conversation)), 0),
            (k.own.map(|x| (x, conversation)), 0),
            (k.user.map(|x| (x, start)), 1),
            (Some((k.prompt, start)), 2),
        ];
        for (lookup, which) in lookups {
            let Some((key, (reported, pending))) = lookup else {
                continue;
            };
            let listed = reported.get(&key).map_or(&[][..], Vec::as_slice);
            let sent_to = pending.get(&key).map_or(&[][..], Vec::as_slice);
            if everyone || listed.len() + sent_to.len() <= SAMPLE {
                for s in listed.iter().copied().chain(sent_to.iter().map(|x| x.0)) {
                    let found = if everyone {
                        at.binary_search_by_key(&s, |x| x.0).ok()
                    } else {
                        at.iter().position(|x| x.0 == s)
                    };
                    let i = match found {
                        Some(i) => i,
                        None if everyone || skip(&owners[s as usize]) => continue,
                        None => {
                            at.push((s, Flags::default()));
                            at.len() - 1
                        }
                    };
                    at[i].1.set(which);
                }
            } else {
                // Many hold it: flag those sampled (reported lists are in
                // slot order).
                for (s, f) in &mut at {
                    if listed.binary_search(s).is_ok() || sent_to.iter().any(|x| x.0 == *s) {
                        f.set(which);
                    }
                }
            }
        }
        at.iter()
            .map(|&(s, f)| {
                let o = &owners[s as usize];
                let c = Candidate {
                    id: &o.node_id,
                    id_hash: o.id_hash,
                    load: o.reported + o.inflight.load(Ordering::Relaxed),
                    sampled: f.sampled,
                    history_cached: f.history,
                    cached: f.cached,
                    prefix_cached: f.prefix,
                    keys: o.cached_keys + sent.per_owner.get(o.slot).copied().unwrap_or(0),
                    losing_starts: o.losing_starts,
                };
                (o, c)
            })
            .unzip()
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
        let mut ring = Vec::new();
        if serving.len() > SAMPLE {
            ring.reserve(serving.len() * POINTS as usize);
            for (slot, (o, _)) in serving.iter().enumerate() {
                ring.extend((0..POINTS).map(|p| (hash::pair(p, o.id_hash), slot as u32)));
            }
            ring.sort_unstable();
        }
        Keyed {
            start,
            conversations,
            sent: Mutex::new(sent),
            ring,
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
        t.candidates("m", k, true, &|_| false)
            .1
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
        assert_eq!(f[2], ("c".to_owned(), true, false, true, 1));
        // The table is rebuilt without b (c's slot changes): c keeps them...
        let t1 = t0 + Duration::from_secs(1);
        let t2 = table(&[("a", info(&[], &[8])), ("c", info(&[], &[]))], &t, t1);
        assert_eq!(flags(&t2, &k)[1], ("c".to_owned(), true, false, true, 1));
        // ...until its report lists them (counted once, as reported)...
        let t3 = table(
            &[("a", info(&[], &[8])), ("c", info(&[k.prompt], &[9]))],
            &t2,
            t1,
        );
        assert_eq!(flags(&t3, &k)[1], ("c".to_owned(), true, false, true, 1));
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

    fn ids(c: &[Candidate]) -> BTreeSet<String> {
        c.iter().map(|x| x.id.to_owned()).collect()
    }

    #[test]
    fn a_decision_samples_a_bounded_set_that_a_leave_barely_changes() {
        let t0 = Instant::now();
        let names: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
        let all: Vec<(&str, ModelInfo)> =
            names.iter().map(|n| (n.as_str(), info(&[], &[]))).collect();
        let t = table(&all, &RoutingTable::default(), t0);
        let without: Vec<(&str, ModelInfo)> =
            all.iter().filter(|(n, _)| *n != "n7").cloned().collect();
        let t7 = table(&without, &t, t0);
        let mut had_n7 = 0;
        for i in 0..1000u64 {
            let k = Keys::new(Some(&format!("user {i}")), b"hello", 256, None);
            let (owners, c) = t.candidates("m", &k, true, &|_| false);
            assert_eq!(c.len(), SAMPLE);
            assert!(c.iter().all(|x| x.sampled && !x.cached && !x.prefix_cached));
            assert!(owners.iter().zip(&c).all(|(o, x)| o.node_id == x.id));
            // The same key, the same sample.
            assert_eq!(ids(&c), ids(&t.candidates("m", &k, true, &|_| false).1));
            // Without n7: the same sample, n7 replaced by one other.
            let before = ids(&c);
            let after = ids(&t7.candidates("m", &k, true, &|_| false).1);
            if before.contains("n7") {
                had_n7 += 1;
                assert_eq!(before.difference(&after).collect::<Vec<_>>(), ["n7"]);
                assert_eq!(after.difference(&before).count(), 1);
            } else {
                assert_eq!(before, after);
            }
            // Skipped owners are left out and others sampled instead.
            let skip: Vec<String> = before.iter().take(3).cloned().collect();
            let (_, c) = t.candidates("m", &k, true, &|o| skip.contains(&o.node_id));
            assert_eq!(c.len(), SAMPLE);
            assert!(c.iter().all(|x| !skip.iter().any(|s| s == x.id)));
            // Unsampled: every owner.
            assert_eq!(t.candidates("m", &k, false, &|_| false).1.len(), 100);
        }
        // Each owner is in about SAMPLE/100 of the samples.
        assert!((80..=260).contains(&had_n7), "{had_n7}");
    }

    #[test]
    fn holders_outside_the_sample_join_it_unless_many_hold_the_key() {
        let t0 = Instant::now();
        let k = Keys::new(None, b"a tenant's system prompt", 256, None);
        let names: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
        let plain: Vec<(&str, ModelInfo)> =
            names.iter().map(|n| (n.as_str(), info(&[], &[]))).collect();
        let t = table(&plain, &RoutingTable::default(), t0);
        let sample = ids(&t.candidates("m", &k, true, &|_| false).1);
        let outside: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| !sample.contains(*n))
            .collect();
        // One owner outside the sample has the prompt's start cached.
        let one: Vec<(&str, ModelInfo)> = names
            .iter()
            .map(|n| {
                let keys = if n == outside[0] {
                    vec![k.prompt]
                } else {
                    vec![]
                };
                (n.as_str(), info(&keys, &[]))
            })
            .collect();
        let t1 = table(&one, &t, t0);
        let c = t1.candidates("m", &k, true, &|_| false).1;
        assert_eq!(c.len(), SAMPLE + 1);
        let holder = c.iter().find(|x| x.id == outside[0]).expect("the holder");
        assert!(holder.prefix_cached && !holder.sampled);
        // It takes the request (the prefix pass), never a ranked one.
        let (i, why) = crate::routing::choose(k.rank, true, &c, Default::default()).unwrap();
        assert_eq!(
            (c[i].id, why),
            (outside[0], crate::routing::Reason::Affinity)
        );
        let (i, _) = crate::routing::choose(k.rank, false, &c, Default::default()).unwrap();
        assert!(c[i].sampled);
        // Forty hold it: no one joins the sample; the sampled holders are
        // flagged.
        let many: Vec<(&str, ModelInfo)> = names
            .iter()
            .enumerate()
            .map(|(j, n)| {
                let keys = if j % 5 < 2 { vec![k.prompt] } else { vec![] };
                (n.as_str(), info(&keys, &[]))
            })
            .collect();
        let t2 = table(&many, &t1, t0);
        let c = t2.candidates("m", &k, true, &|_| false).1;
        assert_eq!(ids(&c), sample);
        for x in &c {
            let j: usize = x.id[1..].parse().unwrap();
            assert_eq!(x.prefix_cached, j % 5 < 2, "{}", x.id);
        }
    }
}
