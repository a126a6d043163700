//! A simulated node: a fixed number of batch slots shared by its models,
//! a FIFO queue in front of them, a prefix cache of fixed size per model
//! (LRU over block hashes), and the affinity keys it would report, kept as
//! the real node keeps them (node/src/kv/affinity.rs). Service times come
//! from `Speed`, fitted to the real node's measured rates.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use realizar_shared::control::{LoadReport, ModelInfo, ModelState, START_TALLY};

/// How fast a node computes, fitted to measurements of the real node
/// (BENCHMARKS.md: SmolLM2-135M Q4_1 on two cores, 841 prompt tokens/s;
/// decode 216 tokens/s alone and 348 tokens/s summed over a batch of 8, so
/// a decode step costs `step_base + step_per_seq · batch`).
#[derive(Debug, Clone, Copy)]
pub struct Speed {
    pub prefill_tokens_per_s: f64,
    pub step_base_s: f64,
    pub step_per_seq_s: f64,
    /// Sequences decoded at once.
    pub slots: usize,
    /// Seconds to load a replica.
    pub load_s: f64,
}

impl Default for Speed {
    fn default() -> Self {
        // 1/216 = 4.63 ms at batch 1, 8/348 = 22.99 ms at batch 8.
        let per_seq = (8.0 / 348.0 - 1.0 / 216.0) / 7.0;
        Speed {
            prefill_tokens_per_s: 841.0,
            step_base_s: 1.0 / 216.0 - per_seq,
            step_per_seq_s: per_seq,
            slots: 8,
            load_s: 1.5,
        }
    }
}

impl Speed {
    /// Seconds one request takes once admitted with `batch` sequences
    /// running (itself included): its uncached prompt, then its answer.
    pub fn service(&self, uncached_tokens: u32, output_tokens: u32, batch: usize) -> f64 {
        f64::from(uncached_tokens) / self.prefill_tokens_per_s
            + f64::from(output_tokens) * (self.step_base_s + self.step_per_seq_s * batch as f64)
    }
}

/// A prefix cache of `capacity` blocks, least recently used out first.
#[derive(Debug, Default)]
pub struct Lru {
    capacity: usize,
    stamp: u64,
    blocks: HashMap<u64, u64>,
}

impl Lru {
    pub fn new(capacity: usize) -> Self {
        Lru {
            capacity,
            stamp: 0,
            blocks: HashMap::new(),
        }
    }

    /// Leading blocks of `prompt` that are cached.
    pub fn matched(&self, prompt: &[u64]) -> usize {
        prompt
            .iter()
            .take_while(|b| self.blocks.contains_key(b))
            .count()
    }

    pub fn contains(&self, block: u64) -> bool {
        self.blocks.contains_key(&block)
    }

    /// Cache (or refresh) these blocks.
    pub fn insert(&mut self, blocks: &[u64]) {
        for &b in blocks {
            self.stamp += 1;
            self.blocks.insert(b, self.stamp);
        }
        // Evict in batches (an eighth over capacity), so each insert stays
        // O(1) amortised.
        if self.blocks.len() > self.capacity + self.capacity / 8 {
            let mut stamps: Vec<u64> = self.blocks.values().copied().collect();
            let cut = self.blocks.len() - self.capacity;
            stamps.select_nth_unstable(cut - 1);
            let below = stamps[cut - 1];
            self.blocks.retain(|_, s| *s > below);
        }
    }
}

/// Keys a node remembers; the probe depth; how long a key counts as cached
/// once seen; how many it reports (as node/src/kv/affinity.rs and the
/// executor's PREFIX_SUMMARY).
const REMEMBERED: usize = 2048;
const PROBE_BLOCKS: usize = 3;
const RECENT_S: f64 = 10.0;
const REPORTED: usize = 256;

/// A model's replica on a node.
#[derive(Debug)]
pub struct Replica {
    pub ready_at: f64,
    pub cache: Lru,
    /// Start keys and conversation keys: key → (probe block, last seen).
    keys: Remembered,
    conversations: Remembered,
    /// Requests whose start the cache had held, latest last: true where
    /// they found it evicted (at most `START_TALLY`).
    returns: VecDeque<bool>,
    pub running: usize,
    pub waiting: usize,
}

impl Replica {
    pub fn ready(&self, now: f64) -> bool {
        now >= self.ready_at
    }

    /// A request arrived with these start keys (probed near the prompt's
    /// start) and this conversation key (probed at its end).
    pub fn record(&mut self, start: &[u64], conversation: Option<u64>, prompt: &[u64], now: f64) {
        if let Some(&probe) = prompt[..prompt.len().min(PROBE_BLOCKS)].last() {
            let held = self.cache.contains(probe);
            for &k in start {
                if self.keys.0.get(&k).is_some_and(|s| s.0 == probe && s.2) {
                    if self.returns.len() == START_TALLY {
                        self.returns.pop_front();
                    }
                    self.returns.push_back(!held);
                }
                self.keys.remember(k, probe, now, held);
            }
        }
        if let (Some(k), Some(&probe)) = (conversation, prompt.last()) {
            self.conversations.remember(k, probe, now, false);
        }
    }

    /// (start keys, conversation keys) to report; notes which probes the
    /// cache holds, as the node's refresh does.
    pub fn reported_keys(&mut self, now: f64) -> (Vec<u64>, Vec<u64>) {
        (
            self.keys.reported(&self.cache, now),
            self.conversations.reported(&self.cache, now),
        )
    }

    /// (returning starts, of them lost), as the node counts them.
    pub fn returns(&self) -> (u32, u32) {
        let lost = self.returns.iter().filter(|&&l| l).count();
        (self.returns.len() as u32, lost as u32)
    }
}

/// Keys a replica remembers: key → (probe block, last seen, probe seen
/// cached since).
#[derive(Debug, Default)]
struct Remembered(HashMap<u64, (u64, f64, bool)>);

impl Remembered {
    fn remember(&mut self, key: u64, probe: u64, now: f64, held: bool) {
        let m = &mut self.0;
        m.insert(key, (probe, now, held));
        if m.len() > REMEMBERED {
            let mut seen: Vec<f64> = m.values().map(|v| v.1).collect();
            seen.sort_by(f64::total_cmp);
            let cut = seen[REMEMBERED / 4];
            m.retain(|_, v| v.1 > cut);
        }
    }

    /// Keys seen lately or whose probe block is cached, latest first.
    fn reported(&mut self, cache: &Lru, now: f64) -> Vec<u64> {
        let mut v: Vec<(f64, u64)> = Vec::new();
        for (k, (probe, seen, held)) in &mut self.0 {
            let c = cache.contains(*probe);
            *held |= c;
            if c || now - *seen < RECENT_S {
                v.push((*seen, *k));
            }
        }
        v.sort_by(|a, b| b.0.total_cmp(&a.0));
        v.truncate(REPORTED);
        v.into_iter().map(|(_, k)| k).collect()
    }
}

/// A request queued or running on a node.
#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub req: usize,
    pub model: u32,
}

#[derive(Debug)]
pub struct Node {
    pub id: String,
    pub url: String,
    pub alive: bool,
    /// Bumped when it dies, so its pending completions are ignored.
    pub epoch: u64,
    pub replicas: HashMap<u32, Replica>,
    pub queue: VecDeque<Job>,
    pub running: Vec<Job>,
    /// Models it can hold.
    pub capacity_models: u64,
    /// The gateway's count of its requests here (the routing table's
    /// `Owner::inflight`).
    pub gateway_inflight: Arc<AtomicU64>,
}

/// Bytes a model takes in the simulation: placement only compares sums.
pub const MODEL_BYTES: u64 = 1 << 30;

impl Node {
    pub fn new(i: usize, capacity_models: u64) -> Self {
        Node {
            id: format!("n{i:04}"),
            url: format!("sim://n{i:04}"),
            alive: true,
            epoch: 0,
            replicas: HashMap::new(),
            queue: VecDeque::new(),
            running: Vec::new(),
            capacity_models,
            gateway_inflight: Arc::default(),
        }
    }

    /// The gateway's count follows what is queued and running here.
    pub fn sync(&self) {
        self.gateway_inflight
            .store(self.inflight() as u64, Ordering::Relaxed);
    }

    pub fn add_replica(&mut self, model: u32, ready_at: f64, cache_blocks: usize) {
        self.replicas.entry(model).or_insert(Replica {
            ready_at,
            cache: Lru::new(cache_blocks),
            keys: Remembered::default(),
            conversations: Remembered::default(),
            returns: VecDeque::new(),
            running: 0,
            waiting: 0,
        });
    }

    /// Requests in flight here (queued and running), every model.
    pub fn inflight(&self) -> usize {
        self.queue.len() + self.running.len()
    }

    pub fn report(&mut self, now: f64, name: impl Fn(u32) -> String) -> LoadReport {
        let mut models: Vec<ModelInfo> = self
            .replicas
            .iter_mut()
            .map(|(&m, r)| {
                let (affinity_keys, conversation_keys) = r.reported_keys(now);
                let (starts_returned, starts_lost) = r.returns();
                let state = if r.ready(now) {
                    ModelState::Ready
                } else {
                    ModelState::Loading
                };
                ModelInfo {
                    bytes: MODEL_BYTES,
                    n_ctx: 8192,
                    inflight: r.running + r.waiting,
                    running: r.running,
                    waiting: r.waiting,
                    kv_blocks_capacity: r.cache.capacity,
                    affinity_keys,
                    conversation_keys,
                    starts_returned,
                    starts_lost,
                    ..ModelInfo::idle(&name(m), state)
                }
            })
            .collect();
        models.sort_by(|a, b| a.id.cmp(&b.id));
        LoadReport {
            uptime_seconds: now,
            memory_budget_bytes: self.capacity_models * MODEL_BYTES,
            memory_used_bytes: self.replicas.len() as u64 * MODEL_BYTES,
            threads: 2,
            models,
            ..LoadReport::empty(&self.id, &self.url)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_the_most_recent_blocks_and_matches_prefixes_only() {
        let mut c = Lru::new(16);
        let a: Vec<u64> = (0..10).collect();
        c.insert(&a);
        assert_eq!(c.matched(&a), 10);
        assert_eq!(c.matched(&[0, 1, 99, 3]), 2);
        // Twenty newer blocks push the old ones out.
        let b: Vec<u64> = (100..120).collect();
        c.insert(&b);
        assert!(c.blocks.len() <= 18);
        assert_eq!(c.matched(&a), 0);
        assert!(c.matched(&b[b.len() - 8..]) == 8);
    }

    #[test]
    fn the_speed_matches_the_measured_rates() {
        let s = Speed::default();
        // 256 tokens alone: 216 tokens/s; batch of 8: 348/8 each.
        assert!((256.0 / s.service(0, 256, 1) - 216.0).abs() < 0.5);
        assert!((256.0 / s.service(0, 256, 8) - 348.0 / 8.0).abs() < 0.1);
        assert!((s.service(841, 0, 1) - 1.0).abs() < 1e-9);
    }
}
