//! Which nodes own which models: weighted rendezvous hashing of the model
//! id over the live nodes, each node weighted by its memory budget, the
//! top `replicas` nodes that can still fit the model becoming its owners.
//!
//! A pure function of (nodes, models), so every gateway computes the same
//! placement from the same membership, and a membership change moves only
//! what it must:
//! - a join changes each model's owners by at most the joiner (the joiner
//!   outranks at most one of the old owners in that model's ranking), so
//!   about `R·w_new/W` of a model's `R` replicas move — 1/(N+1) of them
//!   for equal weights;
//! - a leave moves only the leaver's replicas, each to the next node in
//!   that model's ranking.
//!
//! Both hold exactly while capacity is not binding; when it is, a model
//! that no longer fits where it ranks goes to the next node that fits,
//! which can move models placed after it (models are placed in id order).

use std::collections::BTreeMap;

use crate::hash;

/// A live node as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSlot {
    pub id: String,
    /// Bytes of models it can hold (its memory budget).
    pub capacity: u64,
    /// Models it must not own: it evicted them lately to fit its budget,
    /// and loading them back would evict something else.
    pub refuses: Vec<String>,
}

/// A model the cluster serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSlot {
    pub id: String,
    pub replicas: usize,
    /// Bytes it takes on a node (file plus KV pool).
    pub bytes: u64,
    /// Nodes that own it whenever they are present and it fits them,
    /// ahead of the ranking (they count towards `replicas`; more pins than
    /// replicas all own it).
    pub pin: Vec<String>,
}

/// Owners per model, each list in ranking order (the first owner ranks
/// highest). A model that fits nowhere has no owners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub owners: BTreeMap<String, Vec<String>>,
}

impl Placement {
    pub fn owners_of(&self, model: &str) -> &[String] {
        self.owners.get(model).map_or(&[], Vec::as_slice)
    }

    /// (model, node) pairs in `self` and not in `other`.
    pub fn replicas_not_in(&self, other: &Placement) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (m, nodes) in &self.owners {
            let theirs = other.owners_of(m);
            for n in nodes {
                if !theirs.contains(n) {
                    out.push((m.clone(), n.clone()));
                }
            }
        }
        out
    }
}

/// The nodes ranked for one model, best first.
pub fn rank<'a>(model: &str, nodes: &'a [NodeSlot]) -> Vec<&'a NodeSlot> {
    let key = hash::of(model);
    let mut scored: Vec<(f64, &str, &NodeSlot)> = nodes
        .iter()
        .map(|n| {
            let w = (n.capacity.max(1)) as f64;
            (
                hash::weighted_score(hash::pair(key, hash::of(&n.id)), w),
                n.id.as_str(),
                n,
            )
        })
        .collect();
    // Ties (equal scores) fall back to the id, so the order is total.
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().map(|(_, _, n)| n).collect()
}

/// Place every model: in id order, each on its pinned nodes, then on the
/// best-ranked nodes that still have room, up to its replica count.
pub fn place(nodes: &[NodeSlot], models: &[ModelSlot]) -> Placement {
    let mut free: BTreeMap<&str, u64> = nodes.iter().map(|n| (n.id.as_str(), n.capacity)).collect();
    let mut order: Vec<&ModelSlot> = models.iter().collect();
    order.sort_by(|a, b| a.id.cmp(&b.id));
    let mut owners = BTreeMap::new();
    for m in order {
        let mut chosen: Vec<String> = Vec::with_capacity(m.replicas);
        let ranked = rank(&m.id, nodes);
        let pinned = ranked.iter().filter(|n| m.pin.contains(&n.id));
        let rest = ranked.iter().filter(|n| !m.pin.contains(&n.id));
        for (is_pin, n) in pinned.map(|n| (true, n)).chain(rest.map(|n| (false, n))) {
            if !is_pin && chosen.len() >= m.replicas {
                break;
            }
            if n.refuses.contains(&m.id) {
                continue;
            }
            let left = free
                .get_mut(n.id.as_str())
                .expect("every node has an entry");
            if *left >= m.bytes {
                *left -= m.bytes;
                chosen.push(n.id.clone());
            }
        }
        owners.insert(m.id.clone(), chosen);
    }
    Placement { owners }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;

    fn nodes(n: usize, weights: &[u64]) -> Vec<NodeSlot> {
        (0..n)
            .map(|i| NodeSlot {
                id: format!("node-{i}"),
                capacity: weights[i % weights.len()] * GIB,
                refuses: Vec::new(),
            })
            .collect()
    }

    fn models(m: usize, replicas: usize) -> Vec<ModelSlot> {
        (0..m)
            .map(|i| ModelSlot {
                id: format!("model-{i}"),
                replicas,
                // Small enough that capacity never binds here.
                bytes: 1,
                pin: Vec::new(),
            })
            .collect()
    }

    fn moved(before: &Placement, after: &Placement) -> usize {
        after.replicas_not_in(before).len()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The same membership, in any order, gives the same placement.
        #[test]
        fn deterministic(n in 1usize..64, seed in any::<u64>(), replicas in 1usize..4) {
            let ns = nodes(n, &[8, 16, 24, 64]);
            let ms = models(1000, replicas);
            let a = place(&ns, &ms);
            let mut shuffled = ns.clone();
            let k = (seed as usize) % n.max(1);
            shuffled.rotate_left(k);
            shuffled.reverse();
            let mut ms2 = ms.clone();
            ms2.reverse();
            prop_assert_eq!(&a, &place(&shuffled, &ms2));
            for m in &ms {
                prop_assert_eq!(a.owners_of(&m.id).len(), replicas.min(n));
            }
        }

        /// A join: each model gains at most the joiner, and the replicas
        /// that move are bounded by the joiner's chance to rank in a
        /// model's top R. (The hashes are fixed, so each (n, R, weight) is
        /// one deterministic case; proptest samples them.)
        #[test]
        fn a_join_moves_only_to_the_joiner_and_about_its_share(
            n in 1usize..=64,
            replicas in 1usize..4,
            w_new in prop::sample::select(vec![8u64, 16, 64]),
        ) {
            let before_nodes = nodes(n, &[8, 16, 24, 64]);
            let ms = models(1000, replicas);
            let before = place(&before_nodes, &ms);
            let mut after_nodes = before_nodes.clone();
            after_nodes.push(NodeSlot { id: "joiner".into(), capacity: w_new * GIB, refuses: Vec::new() });
            let after = place(&after_nodes, &ms);
            for m in &ms {
                let (b, a) = (before.owners_of(&m.id), after.owners_of(&m.id));
                let new: Vec<_> = a.iter().filter(|x| !b.contains(x)).collect();
                prop_assert!(new.len() <= 1, "{}: {:?} -> {:?}", m.id, b, a);
                prop_assert!(new.iter().all(|x| x.as_str() == "joiner"));
            }
            // Ranking is an exponential race (rate = weight): the joiner
            // is among the first R with probability at most
            // R·w_new/(w_new + W_rest), W_rest the other weights without
            // the R−1 largest (a union bound over the R draws); 1.2× that
            // expectation plus 20 allows for sampling noise over 1,000 models.
            let mut others: Vec<u64> = before_nodes.iter().map(|n| n.capacity / GIB).collect();
            others.sort_unstable_by(|a, b| b.cmp(a));
            let rest: u64 = others.iter().skip(replicas - 1).sum();
            let m = ms.len() as f64;
            let p = (replicas as f64 * w_new as f64 / (w_new + rest) as f64).min(1.0);
            let bound = 1.2 * m * p + 20.0;
            prop_assert!((moved(&before, &after) as f64) <= bound,
                "moved {} > bound {bound:.0} (n={n}, R={replicas})", moved(&before, &after));
        }

        /// Equal weights: a join moves R/(N+1) of the replicas in
        /// expectation, i.e. about 1/(N+1) of them (asserted: 1.2× + 20).
        #[test]
        fn with_equal_weights_a_join_moves_one_in_n_plus_one(n in 1usize..64, replicas in 1usize..4) {
            let before_nodes = nodes(n, &[16]);
            let ms = models(1000, replicas);
            let before = place(&before_nodes, &ms);
            let mut after_nodes = before_nodes.clone();
            after_nodes.push(NodeSlot { id: "joiner".into(), capacity: 16 * GIB, refuses: Vec::new() });
            let after = place(&after_nodes, &ms);
            let m = ms.len() as f64;
            let expected = m * (replicas as f64 / (n + 1) as f64).min(1.0);
            prop_assert!((moved(&before, &after) as f64) <= 1.2 * expected + 20.0,
                "moved {} expected {expected:.0}", moved(&before, &after));
        }

        /// A leave moves only the leaver's replicas.
        #[test]
        fn a_leave_moves_only_the_leavers_replicas(n in 2usize..64, replicas in 1usize..4, gone in any::<usize>()) {
            let before_nodes = nodes(n, &[8, 16, 24, 64]);
            let ms = models(1000, replicas);
            let before = place(&before_nodes, &ms);
            let leaver = before_nodes[gone % n].id.clone();
            let after_nodes: Vec<_> = before_nodes.iter().filter(|x| x.id != leaver).cloned().collect();
            let after = place(&after_nodes, &ms);
            for m in &ms {
                let (b, a) = (before.owners_of(&m.id), after.owners_of(&m.id));
                // Every surviving owner keeps the model.
                for x in b.iter().filter(|x| **x != leaver) {
                    prop_assert!(a.contains(x), "{}: {:?} -> {:?}", m.id, b, a);
                }
                // Only models the leaver held gain an owner.
                if !b.contains(&leaver) {
                    prop_assert_eq!(a, b);
                }
            }
            let lost = before.owners.values().filter(|o| o.contains(&leaver)).count();
            prop_assert!(moved(&before, &after) <= lost);
        }

        /// No node is given more than it can hold.
        #[test]
        fn capacity_is_respected(n in 1usize..64, replicas in 1usize..4, seed in any::<u64>()) {
            let ns = nodes(n, &[8, 16, 24, 64]);
            let ms: Vec<ModelSlot> = (0..1000)
                .map(|i| ModelSlot {
                    id: format!("model-{i}"),
                    replicas,
                    bytes: (hash::mix(seed ^ i as u64) % (6 * GIB)) + 1,
                    pin: Vec::new(),
                })
                .collect();
            let p = place(&ns, &ms);
            let mut used: BTreeMap<&str, u64> = BTreeMap::new();
            for m in &ms {
                let owners = p.owners_of(&m.id);
                prop_assert!(owners.len() <= replicas);
                let mut distinct = owners.to_vec();
                distinct.sort();
                distinct.dedup();
                prop_assert_eq!(distinct.len(), owners.len());
                for o in owners {
                    *used.entry(o.as_str()).or_default() += m.bytes;
                }
            }
            for node in &ns {
                prop_assert!(used.get(node.id.as_str()).copied().unwrap_or(0) <= node.capacity);
            }
        }
    }

    #[test]
    fn pinned_nodes_own_first_and_count_towards_replicas() {
        let ns: Vec<NodeSlot> = (0..5)
            .map(|i| NodeSlot {
                id: format!("n{i}"),
                capacity: 16 * GIB,
                refuses: Vec::new(),
            })
            .collect();
        let mut m = ModelSlot {
            id: "m".into(),
            replicas: 2,
            bytes: GIB,
            pin: Vec::new(),
        };
        let free = place(&ns, std::slice::from_ref(&m));
        // Pin a node hashing did not choose: it owns, plus the best-ranked.
        let outsider = ns
            .iter()
            .find(|n| !free.owners_of("m").contains(&n.id))
            .unwrap()
            .id
            .clone();
        m.pin = vec![outsider.clone(), "absent".into()];
        let p = place(&ns, std::slice::from_ref(&m));
        assert_eq!(
            p.owners_of("m"),
            [outsider.clone(), free.owners_of("m")[0].clone()]
        );
        // More pins than replicas: every pinned node owns it.
        m.pin = ns.iter().take(3).map(|n| n.id.clone()).collect();
        assert_eq!(place(&ns, std::slice::from_ref(&m)).owners_of("m").len(), 3);
        // A pinned node it does not fit is skipped.
        m.bytes = 17 * GIB;
        assert!(place(&ns, std::slice::from_ref(&m))
            .owners_of("m")
            .is_empty());
    }

    #[test]
    fn a_node_that_evicted_a_model_is_passed_over_for_it() {
        let mut ns: Vec<NodeSlot> = (0..4)
            .map(|i| NodeSlot {
                id: format!("n{i}"),
                capacity: 16 * GIB,
                refuses: Vec::new(),
            })
            .collect();
        let ms = models(50, 2);
        let before = place(&ns, &ms);
        let first = before.owners_of("model-7")[0].clone();
        ns.iter_mut()
            .find(|n| n.id == first)
            .unwrap()
            .refuses
            .push("model-7".into());
        let after = place(&ns, &ms);
        // It moves to the next-ranked node; nothing else moves.
        assert!(!after.owners_of("model-7").contains(&first));
        assert_eq!(after.owners_of("model-7").len(), 2);
        assert_eq!(after.replicas_not_in(&before).len(), 1);
    }

    #[test]
    fn owners_follow_the_weights() {
        // One node with half the cluster's memory owns about half the models.
        let ns = vec![
            NodeSlot {
                id: "big".into(),
                capacity: 64 * GIB,
                refuses: Vec::new(),
            },
            NodeSlot {
                id: "a".into(),
                capacity: 16 * GIB,
                refuses: Vec::new(),
            },
            NodeSlot {
                id: "b".into(),
                capacity: 16 * GIB,
                refuses: Vec::new(),
            },
            NodeSlot {
                id: "c".into(),
                capacity: 32 * GIB,
                refuses: Vec::new(),
            },
        ];
        let p = place(&ns, &models(4000, 1));
        let big = p.owners.values().filter(|o| o[0] == "big").count();
        let share = big as f64 / 4000.0;
        assert!((share - 0.5).abs() < 0.03, "{share}");
    }
}
