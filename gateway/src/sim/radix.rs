//! The baseline the issue names: SGLang's cache-aware policy over an
//! approximate radix tree, as its router documents it. The gateway keeps a
//! tree of the prompts it sent each worker (never told what the worker's
//! cache actually evicted); a request goes to the worker whose tree
//! matches the longest prefix when that match covers more than
//! `cache_threshold` of the prompt, else to the least loaded worker; and
//! whenever loads are imbalanced (busiest − idlest > `balance_abs` and
//! busiest > idlest × `balance_rel`) straight to the least loaded.
//!
//! Prompts here are chained block hashes, so a tree is a map from block to
//! the workers that were sent it: a prompt's first k blocks are in a
//! worker's tree exactly when its k-th block is.

use std::collections::HashMap;

/// SGLang's thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub cache_threshold: f64,
    pub balance_abs: u64,
    pub balance_rel: f64,
}

impl Thresholds {
    /// SGLang router's documented defaults (cache threshold 0.3, balance
    /// thresholds 64 and 1.5).
    pub const SGLANG: Thresholds = Thresholds {
        cache_threshold: 0.3,
        balance_abs: 64,
        balance_rel: 1.5,
    };
}

/// One model's tree: block → (worker, last sent) for each worker sent it.
#[derive(Debug, Default)]
pub struct Tree {
    blocks: HashMap<u64, Vec<(usize, f64)>>,
}

impl Tree {
    /// The deepest prefix of `prompt` some worker in `workers` was sent,
    /// and that worker (the one sent it last): (blocks matched, index into
    /// `workers`).
    pub fn longest_match(&self, prompt: &[u64], workers: &[usize]) -> Option<(usize, usize)> {
        let slot: HashMap<usize, usize> =
            workers.iter().enumerate().map(|(i, &w)| (w, i)).collect();
        let mut best = None;
        for (depth, b) in prompt.iter().enumerate() {
            let Some(holders) = self.blocks.get(b) else {
                break;
            };
            let live = holders
                .iter()
                .filter_map(|&(w, t)| slot.get(&w).map(|&i| (i, t)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            match live {
                Some((i, _)) => best = Some((depth + 1, i)),
                // Only workers since gone hold it: deeper blocks can only
                // be theirs too.
                None => break,
            }
        }
        best
    }

    pub fn insert(&mut self, prompt: &[u64], worker: usize, now: f64) {
        for b in prompt {
            let holders = self.blocks.entry(*b).or_default();
            match holders.iter_mut().find(|(w, _)| *w == worker) {
                Some(h) => h.1 = now,
                None => holders.push((worker, now)),
            }
        }
    }
}

/// The choice among `workers` (node indices) with these `loads`: an index
/// into `workers`.
pub fn choose(
    tree: &mut Tree,
    t: Thresholds,
    prompt: &[u64],
    workers: &[usize],
    loads: &[u64],
    now: f64,
) -> Option<usize> {
    if workers.is_empty() {
        return None;
    }
    let least = (0..workers.len()).min_by_key(|&i| loads[i])?;
    let (min, max) = (loads[least], loads.iter().copied().max().unwrap_or(0));
    let imbalanced = max - min > t.balance_abs && max as f64 > min as f64 * t.balance_rel;
    let chosen = if imbalanced {
        least
    } else {
        match tree.longest_match(prompt, workers) {
            Some((depth, i)) if depth as f64 / prompt.len() as f64 > t.cache_threshold => i,
            _ => least,
        }
    };
    tree.insert(prompt, workers[chosen], now);
    Some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_match_wins_until_loads_are_imbalanced() {
        let mut tree = Tree::default();
        let p: Vec<u64> = (0..10).collect();
        let workers = [7, 8, 9];
        // Nothing matched: the least loaded (8), which now holds p.
        assert_eq!(
            choose(&mut tree, Thresholds::SGLANG, &p, &workers, &[3, 1, 2], 0.0),
            Some(1)
        );
        // The same prompt extended: to 8 although it is now the busiest.
        let q: Vec<u64> = (0..12).collect();
        assert_eq!(
            choose(&mut tree, Thresholds::SGLANG, &q, &workers, &[3, 9, 2], 1.0),
            Some(1)
        );
        // A match under the threshold: the least loaded.
        let r: Vec<u64> = [0, 1].into_iter().chain(100..110).collect();
        assert_eq!(
            choose(&mut tree, Thresholds::SGLANG, &r, &workers, &[3, 9, 2], 2.0),
            Some(2)
        );
        // Imbalanced (70 − 2 > 64 and 70 > 1.5 × 2): the least loaded.
        assert_eq!(
            choose(
                &mut tree,
                Thresholds::SGLANG,
                &q,
                &workers,
                &[3, 70, 2],
                3.0
            ),
            Some(2)
        );
        // Worker 8 gone: 9 now holds q's first 12 blocks too.
        assert_eq!(tree.longest_match(&q, &[7, 9]), Some((12, 1)));
    }
}
