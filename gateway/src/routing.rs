//! The choice among a model's ready owners for one request: consistent
//! hashing with bounded loads. The request's affinity key (its user or
//! session, else the start of its prompt) ranks the owners by rendezvous
//! hash; the first owner whose load leaves room under
//! `ceil((1+ε)·(total+1)/n)` takes it, so the same key keeps going to the
//! same node (and finds its prefix cached there) until that node is
//! busier than its fair share allows, and no node ever takes more than
//! (1+ε)× the mean. A pure function: two gateways with the same owners and
//! loads choose alike.

use crate::hash;

/// An owner as routing sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate<'a> {
    pub id: &'a str,
    /// Its id's hash (`hash::of(id)`), computed once per membership.
    pub id_hash: u64,
    /// Sequences running and waiting on it for this model, plus the
    /// requests this gateway sent since its last report.
    pub load: u64,
}

/// Why a request went where it went (sent as `x-realizar-route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The key's first-ranked owner.
    Affinity,
    /// A later-ranked owner: the ones before it were over the bound.
    Spill,
    /// No ranking applied (no owner under the bound: cannot happen with
    /// loads counted as here, kept for safety).
    LeastLoaded,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Affinity => "affinity",
            Reason::Spill => "spill",
            Reason::LeastLoaded => "least-loaded",
        }
    }
}

/// The affinity key of a request: its user or session when it has one,
/// else its prompt's first `prefix` bytes (as sent).
pub fn affinity_key(user: Option<&str>, prompt_head: &[u8], prefix: usize) -> u64 {
    match user {
        Some(u) if !u.is_empty() => hash::mix(hash::fnv1a(u.as_bytes()) ^ 0x5553_4552),
        _ => hash::of_bytes(&prompt_head[..prompt_head.len().min(prefix)]),
    }
}

/// Index of the chosen candidate and why. `None` when there is none.
pub fn choose(key: u64, owners: &[Candidate], epsilon: f64) -> Option<(usize, Reason)> {
    let n = owners.len();
    if n == 0 {
        return None;
    }
    let total: u64 = owners.iter().map(|c| c.load).sum();
    let bound = ((1.0 + epsilon) * (total + 1) as f64 / n as f64).ceil() as u64;
    // Owners are a model's replicas: few, so sorting them is cheap.
    let mut ranked: Vec<(u64, usize)> = owners
        .iter()
        .enumerate()
        .map(|(i, c)| (hash::pair(key, c.id_hash), i))
        .collect();
    ranked.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| owners[a.1].id.cmp(owners[b.1].id))
    });
    for (rank, &(_, i)) in ranked.iter().enumerate() {
        if owners[i].load < bound {
            let why = if rank == 0 {
                Reason::Affinity
            } else {
                Reason::Spill
            };
            return Some((i, why));
        }
    }
    let least = owners
        .iter()
        .enumerate()
        .min_by(|(_, a), (_, b)| a.load.cmp(&b.load).then_with(|| a.id.cmp(b.id)))
        .map(|(i, _)| i)?;
    Some((least, Reason::LeastLoaded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn owners(ids: &[&'static str], loads: &[u64]) -> Vec<Candidate<'static>> {
        ids.iter()
            .zip(loads)
            .map(|(id, &load)| Candidate {
                id,
                id_hash: hash::of(id),
                load,
            })
            .collect()
    }

    #[test]
    fn at_rest_a_key_always_goes_to_its_first_ranked_owner() {
        let o = owners(&["a", "b", "c"], &[0, 0, 0]);
        let mut counts = [0; 3];
        for k in 0..3000u64 {
            let key = hash::mix(k);
            let (i, why) = choose(key, &o, 0.25).unwrap();
            assert_eq!(why, Reason::Affinity);
            // The same key, the owners in another order: the same node.
            let mut rev = o.clone();
            rev.reverse();
            let (j, _) = choose(key, &rev, 0.25).unwrap();
            assert_eq!(o[i].id, rev[j].id);
            counts[i] += 1;
        }
        // Keys spread over the owners.
        assert!(counts.iter().all(|&c| c > 900), "{counts:?}");
    }

    #[test]
    fn a_busy_first_choice_spills_to_the_next_ranked() {
        let key = hash::mix(7);
        let idle = owners(&["a", "b", "c"], &[0, 0, 0]);
        let (first, _) = choose(key, &idle, 0.25).unwrap();
        let mut loads = [1, 1, 1];
        loads[first] = 10; // bound: ceil(1.25·13/3) = 6
        let busy = owners(&["a", "b", "c"], &loads);
        let (i, why) = choose(key, &busy, 0.25).unwrap();
        assert_ne!(i, first);
        assert_eq!(why, Reason::Spill);
    }

    #[test]
    fn affinity_keys_prefer_the_user_then_the_prompt() {
        let a = affinity_key(Some("alice"), b"same prompt", 256);
        let b = affinity_key(Some("bob"), b"same prompt", 256);
        assert_ne!(a, b);
        assert_eq!(a, affinity_key(Some("alice"), b"other prompt", 256));
        let p = affinity_key(None, b"system prompt ... question 1", 14);
        assert_eq!(
            p,
            affinity_key(Some(""), b"system prompt ... question 2", 14)
        );
    }

    proptest! {
        /// Whatever the loads, the chosen owner is under the bound, so no
        /// owner takes more than (1+ε)× the mean (plus one).
        #[test]
        fn the_choice_respects_the_bound(
            loads in prop::collection::vec(0u64..50, 1..8),
            key in any::<u64>(),
            eps in 0.05f64..1.0,
        ) {
            let ids: Vec<&'static str> = ["a", "b", "c", "d", "e", "f", "g", "h"][..loads.len()].to_vec();
            let o = owners(&ids, &loads);
            let (i, why) = choose(key, &o, eps).unwrap();
            let total: u64 = loads.iter().sum();
            let bound = ((1.0 + eps) * (total + 1) as f64 / loads.len() as f64).ceil() as u64;
            prop_assert!(loads[i] < bound);
            prop_assert_ne!(why, Reason::LeastLoaded);
        }

        /// Simulated arrivals with unit loads: the busiest owner stays
        /// within (1+ε)× the mean plus one.
        #[test]
        fn simulated_load_stays_bounded(keys in prop::collection::vec(0u64..20, 50..400), eps in 0.1f64..0.5) {
            let ids = ["a", "b", "c"];
            let mut loads = [0u64; 3];
            for k in keys {
                let o = owners(&ids, &loads);
                let (i, _) = choose(hash::mix(k), &o, eps).unwrap();
                loads[i] += 1;
                let total: u64 = loads.iter().sum();
                let max = *loads.iter().max().unwrap() as f64;
                prop_assert!(max <= (1.0 + eps) * total as f64 / 3.0 + 1.0, "{loads:?}");
            }
        }
    }
}
