//! Demand-driven replicas: how many replicas each model gets this step.
//! A pure step over the catalog and what the reports say of demand, so its
//! rules are tested with a made-up clock; placement then places that many.
//!
//! For a model with `max_replicas` (its `replicas` is then the minimum):
//! - its queue (waiting sequences across its nodes) above `scale_up_waiting`
//!   for `SCALE_UP_AFTER`, counted from when every replica it has is ready
//!   (so one burst adds one at a time), adds a replica, up to the maximum;
//! - a request for it while it has none (scaled to zero) asks for one;
//! - nothing queued, running or asked for during `keep_alive_secs` takes it
//!   back to the minimum.
//!
//! The count is not state only the gateway holds: a gateway that starts
//! takes each model's count from how many nodes hold it, so a restart
//! neither unloads warm replicas nor loads new ones.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::catalog::{Catalog, CatalogEntry};

/// How long the queue must stay long before a replica is added.
pub const SCALE_UP_AFTER: Duration = Duration::from_secs(1);
pub const DEFAULT_SCALE_UP_WAITING: usize = 4;
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(300);

/// What the reports (and the gateway's waiting requests) say of a model.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Demand {
    /// Sequences waiting on its nodes.
    pub waiting: usize,
    /// Sequences running, waiting or in flight on its nodes.
    pub active: usize,
    /// Nodes that hold it (loading or ready).
    pub holders: usize,
    /// Nodes that have it ready.
    pub ready: usize,
    /// Requests at the gateway waiting for a replica of it.
    pub asked: bool,
}

#[derive(Debug, Clone)]
struct State {
    now: usize,
    long_queue_since: Option<Instant>,
    last_busy: Instant,
}

/// A change of a model's replica count: (model, from, to, why).
pub type Change = (String, usize, usize, &'static str);

#[derive(Debug, Default)]
pub struct Scaler {
    states: BTreeMap<String, State>,
}

fn bounds(e: &CatalogEntry) -> (usize, usize) {
    (
        e.replicas,
        e.max_replicas.unwrap_or(e.replicas).max(e.replicas),
    )
}

impl Scaler {
    /// The replica count of every catalog model, and what changed.
    pub fn step(
        &mut self,
        catalog: &Catalog,
        demand: &BTreeMap<String, Demand>,
        now: Instant,
    ) -> (BTreeMap<String, usize>, Vec<Change>) {
        self.states.retain(|id, _| catalog.contains(id));
        let mut counts = BTreeMap::new();
        let mut changes = Vec::new();
        for e in catalog.entries() {
            let (min, max) = bounds(e);
            let d = demand.get(&e.id).copied().unwrap_or_default();
            let s = self.states.entry(e.id.clone()).or_insert_with(|| State {
                now: d.holders.clamp(min, max),
                long_queue_since: None,
                last_busy: now,
            });
            // A catalog change may have moved the bounds.
            s.now = s.now.clamp(min, max);
            let before = s.now;
            if d.active > 0 || d.asked {
                s.last_busy = now;
            }
            let threshold = e.scale_up_waiting.unwrap_or(DEFAULT_SCALE_UP_WAITING);
            // The queue is judged only once every replica is ready: a new
            // one gets the chance to drain it before another is added.
            if d.waiting > threshold && d.ready >= s.now {
                s.long_queue_since.get_or_insert(now);
            } else {
                s.long_queue_since = None;
            }
            let keep_alive = e
                .keep_alive_secs
                .map_or(DEFAULT_KEEP_ALIVE, Duration::from_secs_f64);
            let why = if d.asked && s.now == 0 {
                s.now = 1;
                "scale-from-zero"
            } else if s.now < max
                && s.long_queue_since
                    .is_some_and(|t| now.duration_since(t) >= SCALE_UP_AFTER)
            {
                s.now += 1;
                s.long_queue_since = None;
                "scale-up"
            } else if s.now > min && now.duration_since(s.last_busy) >= keep_alive {
                s.now = min;
                "scale-down"
            } else {
                ""
            };
            if s.now != before {
                changes.push((e.id.clone(), before, s.now, why));
            }
            counts.insert(e.id.clone(), s.now);
        }
        (counts, changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(spec: &str, keep_alive: f64) -> Catalog {
        let mut e = CatalogEntry::parse(spec).unwrap();
        e.keep_alive_secs = Some(keep_alive);
        Catalog::new(vec![e]).unwrap()
    }

    fn demand(
        waiting: usize,
        active: usize,
        holders: usize,
        asked: bool,
    ) -> BTreeMap<String, Demand> {
        BTreeMap::from([(
            "m".to_owned(),
            Demand {
                waiting,
                active,
                holders,
                ready: holders,
                asked,
            },
        )])
    }

    #[test]
    fn a_long_queue_adds_replicas_one_at_a_time_and_idleness_takes_them_away() {
        let c = catalog("m=x@1-3", 10.0);
        let mut s = Scaler::default();
        let t0 = Instant::now();
        let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
        assert_eq!(s.step(&c, &demand(0, 0, 1, false), at(0.0)).0["m"], 1);
        // Long queue, but not for long enough yet.
        assert_eq!(s.step(&c, &demand(9, 10, 1, false), at(1.0)).0["m"], 1);
        let (n, ch) = s.step(&c, &demand(9, 10, 1, false), at(2.0));
        assert_eq!(n["m"], 2);
        assert_eq!(ch, [("m".to_owned(), 1, 2, "scale-up")]);
        // The second replica is still loading: no third yet, however long
        // the queue.
        assert_eq!(s.step(&c, &demand(9, 10, 1, false), at(5.0)).0["m"], 2);
        assert_eq!(s.step(&c, &demand(9, 10, 2, false), at(6.0)).0["m"], 2);
        assert_eq!(s.step(&c, &demand(9, 10, 2, false), at(7.0)).0["m"], 3);
        // Never past the maximum.
        assert_eq!(s.step(&c, &demand(9, 10, 3, false), at(9.0)).0["m"], 3);
        // Idle: back to the minimum after the keep-alive, not before.
        assert_eq!(s.step(&c, &demand(0, 0, 3, false), at(18.0)).0["m"], 3);
        let (n, ch) = s.step(&c, &demand(0, 0, 3, false), at(19.5));
        assert_eq!(n["m"], 1);
        assert_eq!(ch, [("m".to_owned(), 3, 1, "scale-down")]);
    }

    #[test]
    fn scaled_to_zero_a_request_brings_one_back() {
        let c = catalog("m=x@0-2", 5.0);
        let mut s = Scaler::default();
        let t0 = Instant::now();
        assert_eq!(s.step(&c, &demand(0, 0, 0, false), t0).0["m"], 0);
        let (n, ch) = s.step(&c, &demand(0, 0, 0, true), t0 + Duration::from_secs(1));
        assert_eq!(n["m"], 1);
        assert_eq!(ch[0].3, "scale-from-zero");
        assert_eq!(
            s.step(&c, &demand(0, 1, 1, false), t0 + Duration::from_secs(3))
                .0["m"],
            1
        );
        // Idle for the keep-alive: back to zero.
        assert_eq!(
            s.step(&c, &demand(0, 0, 1, false), t0 + Duration::from_secs(9))
                .0["m"],
            0
        );
    }

    #[test]
    fn a_new_scaler_starts_from_what_the_nodes_hold() {
        // A restarted gateway: two nodes hold it, within 1-3, so two.
        let c = catalog("m=x@1-3", 60.0);
        let mut s = Scaler::default();
        assert_eq!(
            s.step(&c, &demand(0, 0, 2, false), Instant::now()).0["m"],
            2
        );
        // A fixed count stays fixed.
        let c = catalog("m=x@2", 60.0);
        let mut s = Scaler::default();
        assert_eq!(
            s.step(&c, &demand(50, 50, 5, false), Instant::now()).0["m"],
            2
        );
    }
}
