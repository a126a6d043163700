//! What a simulated run cost: the figures `run` returns, from the
//! world's counters.

use std::collections::BTreeMap;

use super::World;

/// What a run cost.
#[derive(Debug, Clone)]
pub struct Report {
    pub policy: String,
    pub nodes: usize,
    pub requests: usize,
    pub unfinished: usize,
    /// Prompt blocks found cached / prompt blocks prefilled.
    pub hit_ratio: f64,
    /// Per model, the busiest owner's time-averaged load (sequences
    /// running and queued) over its owners' mean, among the owners that
    /// served it nearly throughout; weighted by requests.
    pub imbalance: f64,
    pub queue_p50_s: f64,
    pub queue_p99_s: f64,
    pub ttft_p50_s: f64,
    pub ttft_p99_s: f64,
    /// Replica loads the coordinator asked for after the start.
    pub moves: usize,
    /// Requests sent again: their node died, or no longer held the model.
    pub resent: usize,
    /// The routing decision's cost (`World::time_routing`)...
    pub route_ns_p50: f64,
    pub route_ns_p99: f64,
    /// ...and repeated at once, the table in the CPU's caches.
    pub route_warm_ns_p50: f64,
    pub wall_s: f64,
}

impl World<'_> {
    pub(super) fn report(&self, wall_s: f64) -> Report {
        let mut queue: Vec<f64> = Vec::new();
        let mut ttft: Vec<f64> = Vec::new();
        for (o, r) in self.out.iter().zip(self.trace) {
            if let (true, Some(s)) = (o.done, o.started) {
                queue.push((s - r.at).max(0.0));
                ttft.push(o.ttft.max(0.0));
            }
        }
        let pct = |v: &mut Vec<f64>, p: f64| {
            if v.is_empty() {
                return 0.0;
            }
            v.sort_by(f64::total_cmp);
            v[((v.len() - 1) as f64 * p).round() as usize]
        };
        // Imbalance per model over the owners that served it nearly
        // throughout (sampled at 90% of the polls its longest-serving owner
        // was): an owner that joined late or left early averages over
        // another stretch of the run, and would read as idle or busy for
        // that alone.
        let mut per_model: BTreeMap<u32, Vec<(f64, u64)>> = BTreeMap::new();
        for (&(_, m), &(sum, n)) in &self.load {
            per_model.entry(m).or_default().push((sum / n as f64, n));
        }
        let mut requests = vec![0u64; self.cfg.models];
        for r in self.trace {
            requests[r.model as usize] += 1;
        }
        let (mut weighted, mut weight) = (0.0, 0.0);
        for (m, v) in per_model {
            let most = v.iter().map(|x| x.1).max().unwrap_or(0);
            let loads: Vec<f64> = v
                .iter()
                .filter(|x| x.1 * 10 >= most * 9)
                .map(|x| x.0)
                .collect();
            let mean = loads.iter().sum::<f64>() / loads.len() as f64;
            if loads.len() < 2 || mean <= 0.0 {
                continue;
            }
            let busiest = loads.iter().copied().fold(0.0, f64::max);
            let w = requests[m as usize] as f64;
            weighted += w * busiest / mean;
            weight += w;
        }
        let mut ns: Vec<u32> = self.route_ns.clone();
        ns.sort_unstable();
        let mut warm: Vec<u32> = self.route_warm_ns.clone();
        warm.sort_unstable();
        Report {
            policy: self.policy.name(),
            nodes: self.cfg.nodes,
            requests: self.trace.len(),
            unfinished: self.out.iter().filter(|o| !o.done).count(),
            hit_ratio: self.hits as f64 / self.prefilled.max(1) as f64,
            imbalance: if weight > 0.0 { weighted / weight } else { 1.0 },
            queue_p50_s: pct(&mut queue.clone(), 0.5),
            queue_p99_s: pct(&mut queue, 0.99),
            ttft_p50_s: pct(&mut ttft.clone(), 0.5),
            ttft_p99_s: pct(&mut ttft, 0.99),
            moves: self.moves,
            resent: self.resent,
            route_ns_p50: f64::from(ns.get(ns.len() / 2).copied().unwrap_or(0)),
            route_ns_p99: f64::from(
                ns.get((ns.len().max(1) - 1) * 99 / 100)
                    .copied()
                    .unwrap_or(0),
            ),
            route_warm_ns_p50: f64::from(warm.get(warm.len() / 2).copied().unwrap_or(0)),
            wall_s,
        }
    }
}
