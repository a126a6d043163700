//! Making placement true: which replicas to load, which to unload, and
//! how far each drain has come. A pure step over (membership, placement,
//! catalog, drains) so its rules are tested with a made-up clock; the
//! control loop (control.rs) runs it every poll and carries out its plan.
//!
//! The rules, warm-first:
//! - an owner that lacks its model is asked to load it, one load at a time
//!   per node and at most `max_loads` (default `MAX_LOADS`) across the
//!   cluster, so a join or a drain moves replicas a few at a time;
//! - a replica on a node that no longer owns it (the replica count went
//!   down, a join outranked it, the node is draining) keeps serving until
//!   every owner of the model reports it ready; from then on it takes no
//!   new requests (table.rs), and once it has been out of routing for
//!   `RETIRE_GRACE` with nothing in flight it is unloaded;
//! - a model taken out of the catalog, or scaled to zero replicas, is
//!   unloaded wherever it is, once idle;
//! - a draining node is drained when it holds none of the catalog's models
//!   and the gateway has nothing in flight on it; past its deadline, its
//!   replicas are unloaded whether or not they are idle or warm elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use realizar_shared::control::{LoadRequest, ModelState};

use crate::catalog::Catalog;
use crate::membership::Membership;
use crate::placement::Placement;

/// How long a replica that lost its ownership stays loaded, out of
/// routing, before it may be unloaded: two polls, so requests routed by an
/// older table have reached the node and show in its report.
pub const RETIRE_GRACE: Duration = Duration::from_millis(1200);
/// Replica loads under way at once across the cluster, by default.
pub const MAX_LOADS: usize = 4;
/// A load unanswered this long is given up (and may be asked again).
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// After a load the node refused, the same load waits this long before it
/// is asked again, doubling with each refusal in a row up to
/// [`RETRY_MAX`]: a transient failure (a fetch that lost a race, a node
/// short of memory for a moment) heals in seconds, a permanent one (a path
/// that does not exist) costs the node one refused request a minute.
pub const RETRY_FIRST: Duration = Duration::from_secs(2);
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// A node being drained (keyed by node id in `Shared::drains`).
#[derive(Debug, Clone)]
pub struct Drain {
    pub started: Instant,
    pub deadline: Instant,
    /// When it was drained.
    pub done: Option<Instant>,
    /// Asked for by the node itself (its report says `leaving`): it ends
    /// when a report says otherwise, that is once the node has restarted.
    pub by_node: bool,
}

/// What one step asks the control loop to do.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// (node URL, load).
    pub loads: Vec<(String, LoadRequest)>,
    /// (node URL, model id).
    pub unloads: Vec<(String, String)>,
    /// Node ids now drained.
    pub drained: Vec<String>,
}

#[derive(Debug)]
pub struct Coordinator {
    /// Loads under way at once, cluster-wide.
    max_loads: usize,
    /// Node URL → (model, asked at): loads asked and not yet reported.
    pending_loads: BTreeMap<String, (String, Instant)>,
    /// (node URL, model) → asked at.
    pending_unloads: BTreeMap<(String, String), Instant>,
    /// (node URL, model) → since when it has been out of routing.
    retiring: BTreeMap<(String, String), Instant>,
    /// (node URL, model) → (not before, the wait after the next refusal):
    /// loads the node refused.
    refused: BTreeMap<(String, String), (Instant, Duration)>,
}

impl Default for Coordinator {
    fn default() -> Self {
        Coordinator::new(MAX_LOADS)
    }
}

impl Coordinator {
    pub fn new(max_loads: usize) -> Self {
        Coordinator {
            max_loads: max_loads.max(1),
            pending_loads: BTreeMap::new(),
            pending_unloads: BTreeMap::new(),
            retiring: BTreeMap::new(),
            refused: BTreeMap::new(),
        }
    }

    /// The node at `url` refused (or could not be asked) to load `model`:
    /// the load is no longer under way, and is asked again after a backoff.
    pub fn load_failed(&mut self, url: &str, model: &str, now: Instant) {
        if self.pending_loads.get(url).is_some_and(|(m, _)| m == model) {
            self.pending_loads.remove(url);
        }
        let key = (url.to_owned(), model.to_owned());
        let wait = self.refused.get(&key).map_or(RETRY_FIRST, |(_, w)| *w);
        self.refused
            .insert(key, (now + wait, (wait * 2).min(RETRY_MAX)));
    }

    /// One step. `gateway_idle(url)`: nothing this gateway sent the node is
    /// still in flight.
    pub fn step(
        &mut self,
        m: &Membership,
        p: &Placement,
        catalog: &Catalog,
        drains: &BTreeMap<String, Drain>,
        gateway_idle: impl Fn(&str) -> bool,
        now: Instant,
    ) -> Plan {
        let mut plan = Plan::default();
        let live: Vec<_> = m.live().collect();
        // Who reports what.
        let ready_on = |model: &str, node: &str| {
            live.iter().any(|(_, r)| {
                r.node_id == node && r.model(model).is_some_and(|x| x.state == ModelState::Ready)
            })
        };
        self.pending_loads.retain(|url, (model, since)| {
            let done = live.iter().any(|(mem, r)| {
                mem.url == *url && r.model(model).is_some_and(|x| x.state == ModelState::Ready)
            });
            !done && now.duration_since(*since) < LOAD_TIMEOUT
        });
        self.pending_unloads.retain(|(url, model), since| {
            let gone = live
                .iter()
                .any(|(mem, r)| mem.url == *url && r.model(model).is_none());
            !gone && now.duration_since(*since) < LOAD_TIMEOUT
        });

        // Loads: owners that lack their model.
        for e in catalog.entries() {
            for owner in p.owners_of(&e.id) {
                let Some((mem, report)) = live.iter().find(|(_, r)| &r.node_id == owner) else {
                    continue;
                };
                let busy = report.models.iter().any(|x| x.state == ModelState::Loading);
                // Refusals are rare: no key is built while there are none.
                let key = || (mem.url.clone(), e.id.clone());
                if report.model(&e.id).is_some() {
                    // Loaded (or loading): its refusals are history.
                    if !self.refused.is_empty() {
                        self.refused.remove(&key());
                    }
                    continue;
                }
                let backing_off = !self.refused.is_empty()
                    && self
                        .refused
                        .get(&key())
                        .is_some_and(|(after, _)| now < *after);
                if busy || backing_off || self.pending_loads.contains_key(&mem.url) {
                    continue;
                }
                if self.pending_loads.len() >= self.max_loads {
                    break;
                }
                self.pending_loads
                    .insert(mem.url.clone(), (e.id.clone(), now));
                plan.loads.push((
                    mem.url.clone(),
                    LoadRequest {
                        path: e.path.clone(),
                        id: Some(e.id.clone()),
                        pinned: false,
                        options: e.options.clone(),
                    },
                ));
            }
        }

        // Unloads: replicas nobody should route to any more.
        let mut still_retiring = BTreeSet::new();
        for (mem, report) in &live {
            let drain = drains.get(&report.node_id);
            let overdue = drain.is_some_and(|d| d.done.is_none() && now >= d.deadline);
            for x in report
                .models
                .iter()
                .filter(|x| x.state == ModelState::Ready)
            {
                // Taken out of the catalog, or scaled to zero.
                let removed = (catalog.removed.contains(&x.id) && !catalog.contains(&x.id))
                    || catalog.get(&x.id).is_some_and(|e| e.replicas == 0);
                let retire = if removed {
                    true
                } else if catalog.contains(&x.id) {
                    let owners = p.owners_of(&x.id);
                    !owners.contains(&report.node_id)
                        && (overdue
                            || (!owners.is_empty() && owners.iter().all(|o| ready_on(&x.id, o))))
                } else {
                    false
                };
                if !retire {
                    continue;
                }
                let key = (mem.url.clone(), x.id.clone());
                still_retiring.insert(key.clone());
                let since = *self.retiring.entry(key.clone()).or_insert(now);
                let idle = x.inflight == 0 && x.running == 0 && x.waiting == 0;
                if (overdue || (idle && now.duration_since(since) >= RETIRE_GRACE))
                    && !self.pending_unloads.contains_key(&key)
                {
                    self.pending_unloads.insert(key, now);
                    plan.unloads.push((mem.url.clone(), x.id.clone()));
                }
            }
        }
        self.retiring.retain(|k, _| still_retiring.contains(k));
        self.refused
            .retain(|(url, _), _| live.iter().any(|(mem, _)| mem.url == *url));

        // Drains that are done: nothing of the catalog's left on the node
        // and nothing in flight there from this gateway.
        for id in drains
            .iter()
            .filter(|(_, d)| d.done.is_none())
            .map(|(id, _)| id)
        {
            let Some((mem, report)) = live.iter().find(|(_, r)| &r.node_id == id) else {
                // Down or gone: nothing left to wait for.
                plan.drained.push(id.clone());
                continue;
            };
            let holds = report
                .models
                .iter()
                .any(|x| catalog.contains(&x.id) || catalog.removed.contains(&x.id));
            if !holds && gateway_idle(&mem.url) {
                plan.drained.push(id.clone());
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogEntry;
    use crate::membership::Source;
    use realizar_shared::control::{LoadReport, ModelInfo};

    fn info(id: &str, state: ModelState, inflight: usize) -> ModelInfo {
        ModelInfo {
            inflight,
            ..ModelInfo::idle(id, state)
        }
    }

    fn report(id: &str, models: Vec<ModelInfo>) -> LoadReport {
        LoadReport {
            models,
            ..LoadReport::empty(id, &format!("http://{id}"))
        }
    }

    struct World {
        m: Membership,
        t0: Instant,
    }

    impl World {
        fn new(nodes: &[(&str, Vec<ModelInfo>)]) -> Self {
            let t0 = Instant::now();
            let mut m = Membership::new(Duration::from_secs(3));
            for (id, models) in nodes {
                let url = format!("http://{id}");
                m.add(&url, Source::Static, t0);
                m.on_report(&url, report(id, models.clone()), t0);
            }
            World { m, t0 }
        }
        fn set(&mut self, id: &str, models: Vec<ModelInfo>, at: Duration) {
            let url = format!("http://{id}");
            self.m.on_report(&url, report(id, models), self.t0 + at);
        }
    }

    fn placement(owners: &[(&str, &[&str])]) -> Placement {
        Placement {
            owners: owners
                .iter()
                .map(|(m, o)| (m.to_string(), o.iter().map(|s| s.to_string()).collect()))
                .collect(),
        }
    }

    fn catalog(specs: &[&str]) -> Catalog {
        Catalog::new(
            specs
                .iter()
                .map(|s| CatalogEntry::parse(s).unwrap())
                .collect(),
        )
        .unwrap()
    }

    use ModelState::*;

    /// `node` being drained since `t0`, with this long before its deadline.
    fn draining(node: &str, t0: Instant, limit: Duration) -> BTreeMap<String, Drain> {
        let d = Drain {
            started: t0,
            deadline: t0 + limit,
            done: None,
            by_node: false,
        };
        BTreeMap::from([(node.to_owned(), d)])
    }

    #[test]
    fn owners_load_once_and_one_at_a_time() {
        let w = World::new(&[("a", vec![]), ("b", vec![info("y", Loading, 0)])]);
        let p = placement(&[("x", &["a", "b"]), ("y", &["b"]), ("z", &["a"])]);
        let c = catalog(&["x@2", "y", "z"]);
        let mut co = Coordinator::default();
        let plan = co.step(&w.m, &p, &c, &BTreeMap::new(), |_| true, w.t0);
        // a: one of its two models; b: busy loading y.
        assert_eq!(plan.loads.len(), 1);
        assert_eq!(plan.loads[0].0, "http://a");
        assert_eq!(plan.loads[0].1.id.as_deref(), Some("x"));
        // Asked already: not again until it is reported or times out.
        let again = co.step(&w.m, &p, &c, &BTreeMap::new(), |_| true, w.t0);
        assert!(again.loads.is_empty());
        let late = co.step(
            &w.m,
            &p,
            &c,
            &BTreeMap::new(),
            |_| true,
            w.t0 + LOAD_TIMEOUT,
        );
        assert_eq!(late.loads.len(), 1);
    }

    #[test]
    fn a_refused_load_is_asked_again_after_a_backoff_that_doubles() {
        let mut w = World::new(&[("a", vec![])]);
        let p = placement(&[("x", &["a"])]);
        let c = catalog(&["x"]);
        let mut co = Coordinator::default();
        let none = BTreeMap::new();
        let t0 = w.t0;
        let at = move |ms: u64| t0 + Duration::from_millis(ms);
        let asks = |co: &mut Coordinator, w: &World, t: Instant| {
            co.step(&w.m, &p, &c, &none, |_| true, t).loads.len()
        };
        assert_eq!(asks(&mut co, &w, at(0)), 1);
        co.load_failed("http://a", "x", at(100));
        // Not at once, and not for RETRY_FIRST; then once.
        assert_eq!(asks(&mut co, &w, at(200)), 0);
        assert_eq!(asks(&mut co, &w, at(2000)), 0);
        assert_eq!(asks(&mut co, &w, at(2100)), 1);
        assert_eq!(asks(&mut co, &w, at(2200)), 0);
        // A second refusal in a row waits twice as long.
        co.load_failed("http://a", "x", at(2300));
        assert_eq!(asks(&mut co, &w, at(6200)), 0);
        assert_eq!(asks(&mut co, &w, at(6300)), 1);
        // Once the node holds the model, the refusals are forgotten: a later
        // refusal waits RETRY_FIRST again.
        w.set("a", vec![info("x", Ready, 0)], Duration::from_millis(6400));
        assert_eq!(asks(&mut co, &w, at(6400)), 0);
        w.set("a", vec![], Duration::from_millis(6500));
        assert_eq!(asks(&mut co, &w, at(6500)), 1);
        co.load_failed("http://a", "x", at(6600));
        assert_eq!(asks(&mut co, &w, at(8500)), 0);
        assert_eq!(asks(&mut co, &w, at(8600)), 1);
        // A failure of some other load does not clear this one's ask.
        co.load_failed("http://a", "y", at(8700));
        assert_eq!(asks(&mut co, &w, at(8800)), 0);
    }

    #[test]
    fn loads_are_capped_cluster_wide() {
        // Six empty nodes, each owning two of twelve models; at most three
        // loads at once, the next ones as those are reported ready.
        let ids: Vec<String> = (0..6).map(|i| format!("n{i}")).collect();
        let mut w = World::new(&ids.iter().map(|i| (i.as_str(), vec![])).collect::<Vec<_>>());
        let models: Vec<String> = (0..12).map(|i| format!("m{i:02}")).collect();
        let owners: Vec<[&str; 1]> = (0..12).map(|i| [ids[i % 6].as_str()]).collect();
        let p = placement(
            &models
                .iter()
                .zip(&owners)
                .map(|(m, o)| (m.as_str(), &o[..]))
                .collect::<Vec<_>>(),
        );
        let c = catalog(&models.iter().map(String::as_str).collect::<Vec<_>>());
        let mut co = Coordinator::new(3);
        let d = BTreeMap::new();
        let mut loaded: BTreeMap<String, Vec<ModelInfo>> = BTreeMap::new();
        let mut steps = 0;
        let mut total = 0;
        while total < 12 {
            steps += 1;
            assert!(steps <= 10, "{total} loads after {steps} steps");
            let t = Duration::from_secs(steps);
            let plan = co.step(&w.m, &p, &c, &d, |_| true, w.t0 + t);
            assert!(plan.loads.len() <= 3, "{:?}", plan.loads);
            total += plan.loads.len();
            // Each asked load is done by the next step.
            for (url, r) in plan.loads {
                let node = url.trim_start_matches("http://").to_owned();
                let id = r.id.unwrap();
                loaded
                    .entry(node.clone())
                    .or_default()
                    .push(info(&id, Ready, 0));
                w.set(&node, loaded[&node].clone(), t);
            }
        }
        assert_eq!(steps, 4);
    }

    #[test]
    fn a_replica_that_lost_ownership_goes_only_after_the_owners_are_warm_and_it_is_idle() {
        // x moves from a to b.
        let mut w = World::new(&[("a", vec![info("x", Ready, 1)]), ("b", vec![])]);
        let p = placement(&[("x", &["b"])]);
        let c = catalog(&["x"]);
        let mut co = Coordinator::default();
        let d = BTreeMap::new();
        let plan = co.step(&w.m, &p, &c, &d, |_| true, w.t0);
        assert_eq!(plan.loads.len(), 1);
        assert!(plan.unloads.is_empty());
        // b loading: a keeps it.
        w.set("b", vec![info("x", Loading, 0)], Duration::from_secs(1));
        let plan = co.step(&w.m, &p, &c, &d, |_| true, w.t0 + Duration::from_secs(1));
        assert!(plan.unloads.is_empty() && plan.loads.is_empty());
        // b ready; a still busy: not yet.
        w.set("b", vec![info("x", Ready, 0)], Duration::from_secs(2));
        w.set("a", vec![info("x", Ready, 1)], Duration::from_secs(2));
        let plan = co.step(&w.m, &p, &c, &d, |_| true, w.t0 + Duration::from_secs(2));
        assert!(plan.unloads.is_empty());
        // Idle, but within the grace: not yet.
        w.set("a", vec![info("x", Ready, 0)], Duration::from_secs(3));
        let plan = co.step(&w.m, &p, &c, &d, |_| true, w.t0 + Duration::from_secs(3));
        assert!(plan.unloads.is_empty());
        let plan = co.step(
            &w.m,
            &p,
            &c,
            &d,
            |_| true,
            w.t0 + Duration::from_millis(3300),
        );
        assert_eq!(plan.unloads, [("http://a".to_owned(), "x".to_owned())]);
        // Once.
        let plan = co.step(&w.m, &p, &c, &d, |_| true, w.t0 + Duration::from_secs(4));
        assert!(plan.unloads.is_empty());
    }

    #[test]
    fn removed_models_go_everywhere_and_other_models_stay() {
        let w = World::new(&[
            ("a", vec![info("x", Ready, 0), info("mine", Ready, 0)]),
            ("b", vec![info("x", Ready, 0)]),
        ]);
        let mut c = catalog(&["x@2"]);
        c.remove("x");
        let mut co = Coordinator::default();
        let d = BTreeMap::new();
        let p = Placement::default();
        assert!(co.step(&w.m, &p, &c, &d, |_| true, w.t0).unloads.is_empty());
        let plan = co.step(&w.m, &p, &c, &d, |_| true, w.t0 + RETIRE_GRACE);
        let mut u = plan.unloads;
        u.sort();
        // `mine` is not the catalog's (an operator loaded it): left alone.
        assert_eq!(
            u,
            [
                ("http://a".to_owned(), "x".to_owned()),
                ("http://b".to_owned(), "x".to_owned())
            ]
        );
    }

    #[test]
    fn a_drain_finishes_when_the_node_holds_nothing_and_nothing_is_in_flight() {
        let mut w = World::new(&[
            ("a", vec![info("x", Ready, 0)]),
            ("b", vec![info("x", Ready, 0)]),
        ]);
        // Placement without the draining node a.
        let p = placement(&[("x", &["b"])]);
        let c = catalog(&["x"]);
        let d = draining("a", w.t0, Duration::from_secs(60));
        let mut co = Coordinator::default();
        let plan = co.step(&w.m, &p, &c, &d, |_| true, w.t0);
        assert!(plan.drained.is_empty());
        let plan = co.step(&w.m, &p, &c, &d, |_| true, w.t0 + RETIRE_GRACE);
        assert_eq!(plan.unloads, [("http://a".to_owned(), "x".to_owned())]);
        w.set("a", vec![], Duration::from_secs(2));
        // The gateway still has a request there.
        let plan = co.step(&w.m, &p, &c, &d, |_| false, w.t0 + Duration::from_secs(2));
        assert!(plan.drained.is_empty());
        let plan = co.step(&w.m, &p, &c, &d, |_| true, w.t0 + Duration::from_secs(2));
        assert_eq!(plan.drained, ["a"]);
    }

    #[test]
    fn past_its_deadline_a_drain_unloads_even_busy_or_unreplaced_replicas() {
        // b cannot take x (not ready), a is busy.
        let w = World::new(&[
            ("a", vec![info("x", Ready, 3)]),
            ("b", vec![info("x", Loading, 0)]),
        ]);
        let p = placement(&[("x", &["b"])]);
        let c = catalog(&["x"]);
        let d = draining("a", w.t0, Duration::from_secs(5));
        let mut co = Coordinator::default();
        let plan = co.step(&w.m, &p, &c, &d, |_| true, w.t0 + Duration::from_secs(4));
        assert!(plan.unloads.is_empty());
        let plan = co.step(&w.m, &p, &c, &d, |_| true, w.t0 + Duration::from_secs(5));
        assert_eq!(plan.unloads, [("http://a".to_owned(), "x".to_owned())]);
    }
}
