//! Allocation of the paged KV pool's blocks, with prefix caching.
//!
//! A block that is full of computed positions is registered under a hash of
//! its tokens chained with the hash of the block before it, so equal hashes
//! mean equal prefixes. When no sequence uses a registered block any more it
//! stays cached (and findable) on the free list, and is only reused, least
//! recently freed first, when an allocation needs it.

use std::collections::{BTreeMap, HashMap};

/// Hash of a block of tokens following the block whose hash is `parent`
/// (0 for the first block). FNV-1a over the bytes, then a SplitMix finaliser:
/// fixed, so the same prefix has the same hash in every process.
pub fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ parent.rotate_left(17);
    for t in tokens {
        for b in t.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Hashes of the full blocks of `tokens`, chained.
pub fn prefix_hashes(tokens: &[u32], block_size: usize) -> Vec<u64> {
    let mut parent = 0;
    tokens
        .chunks_exact(block_size)
        .map(|c| {
            parent = block_hash(parent, c);
            parent
        })
        .collect()
}

#[derive(Debug)]
pub struct BlockManager {
    ref_count: Vec<u32>,
    /// The hash a block is registered under, if any.
    hash: Vec<Option<u64>>,
    /// Registered blocks by hash.
    by_hash: HashMap<u64, u32>,
    /// Unused blocks, oldest first (key: when it was freed).
    free: BTreeMap<u64, u32>,
    /// Each free block's key in `free`.
    free_key: Vec<Option<u64>>,
    tick: u64,
    /// Blocks found in the cache, and blocks looked up.
    pub hits: u64,
    pub queries: u64,
}

impl BlockManager {
    pub fn new(n_blocks: usize) -> Self {
        let mut m = BlockManager {
            ref_count: vec![0; n_blocks],
            hash: vec![None; n_blocks],
            by_hash: HashMap::new(),
            free: BTreeMap::new(),
            free_key: vec![None; n_blocks],
            tick: 0,
            hits: 0,
            queries: 0,
        };
        for b in 0..n_blocks as u32 {
            m.push_free(b);
        }
        m
    }

    pub fn n_blocks(&self) -> usize {
        self.ref_count.len()
    }

    /// Blocks that can be allocated now (unused, cached or not).
    pub fn n_free(&self) -> usize {
        self.free.len()
    }

    /// Blocks in use by at least one sequence.
    pub fn n_used(&self) -> usize {
        self.n_blocks() - self.n_free()
    }

    fn push_free(&mut self, b: u32) {
        self.tick += 1;
        self.free.insert(self.tick, b);
        self.free_key[b as usize] = Some(self.tick);
    }

    fn take_free(&mut self, b: u32) {
        if let Some(k) = self.free_key[b as usize].take() {
            self.free.remove(&k);
        }
    }

    /// A block for new positions; the least recently freed one, whose cached
    /// prefix (if any) is forgotten.
    pub fn allocate(&mut self) -> Option<u32> {
        let (_, b) = self.free.pop_first()?;
        self.free_key[b as usize] = None;
        if let Some(h) = self.hash[b as usize].take() {
            if self.by_hash.get(&h) == Some(&b) {
                self.by_hash.remove(&h);
            }
        }
        self.ref_count[b as usize] = 1;
        Some(b)
    }

    /// The blocks of the longest cached prefix among `hashes`, each now
    /// referenced once more by the caller.
    pub fn lookup(&mut self, hashes: &[u64]) -> Vec<u32> {
        let mut out = Vec::new();
        self.queries += hashes.len() as u64;
        for h in hashes {
            let Some(&b) = self.by_hash.get(h) else { break };
            self.hits += 1;
            if self.ref_count[b as usize] == 0 {
                self.take_free(b);
            }
            self.ref_count[b as usize] += 1;
            out.push(b);
        }
        out
    }

    /// Register a full, computed block under `hash` so later sequences can
    /// reuse it. A block already registered, or a hash already held by
    /// another block, is left as it is.
    pub fn register(&mut self, b: u32, hash: u64) {
        if self.hash[b as usize].is_some() || self.by_hash.contains_key(&hash) {
            return;
        }
        self.hash[b as usize] = Some(hash);
        self.by_hash.insert(hash, b);
    }

    /// Whether a block is registered under `hash` (and so findable).
    pub fn is_cached(&self, hash: u64) -> bool {
        self.by_hash.contains_key(&hash)
    }

    /// Hashes of the cached blocks, for the node's load report: blocks in
    /// use first, then free ones most recently freed first (the last to be
    /// reused), at most `limit`.
    pub fn cached_hashes(&self, limit: usize) -> Vec<u64> {
        let in_use = (0..self.n_blocks())
            .filter(|&b| self.ref_count[b] > 0)
            .filter_map(|b| self.hash[b]);
        let free = self
            .free
            .values()
            .rev()
            .filter_map(|&b| self.hash[b as usize]);
        in_use.chain(free).take(limit).collect()
    }

    /// Drop one reference to each block of `table`.
    pub fn release(&mut self, table: &[u32]) {
        // Free the tail first so the head of a prefix is evicted last.
        for &b in table.iter().rev() {
            let rc = &mut self.ref_count[b as usize];
            debug_assert!(*rc > 0, "block {b} released twice");
            *rc = rc.saturating_sub(1);
            if *rc == 0 {
                self.push_free(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_released_prefix_is_found_again_until_its_blocks_are_reused() {
        let mut m = BlockManager::new(4);
        let toks: Vec<u32> = (0..8).collect();
        let hs = prefix_hashes(&toks, 4);
        let a = m.allocate().unwrap();
        let b = m.allocate().unwrap();
        m.register(a, hs[0]);
        m.register(b, hs[1]);
        m.release(&[a, b]);
        assert_eq!(m.n_free(), 4);
        assert_eq!(m.lookup(&hs), vec![a, b]);
        assert_eq!(m.n_used(), 2);
        m.release(&[a, b]);
        // Four allocations reuse every block, the cached ones last.
        let got: Vec<u32> = (0..4).map(|_| m.allocate().unwrap()).collect();
        assert_eq!(&got[2..], &[b, a]);
        assert!(m.allocate().is_none());
        m.release(&got);
        assert!(m.lookup(&hs).is_empty());
    }

    #[test]
    fn hashes_chain_so_equal_blocks_after_different_prefixes_differ() {
        let x = prefix_hashes(&[1, 2, 3, 4, 9, 9], 2);
        let y = prefix_hashes(&[1, 2, 3, 5, 9, 9], 2);
        assert_eq!(x[0], y[0]);
        assert_ne!(x[1], y[1]);
        assert_ne!(x[2], y[2]);
        assert_eq!(x.len(), 3);
    }

    proptest! {
        /// Under any sequence of allocations, lookups and releases, the
        /// reference counts and the free list stay consistent.
        #[test]
        fn counts_stay_consistent(ops in proptest::collection::vec((0u8..3, 0usize..8), 1..200)) {
            let mut m = BlockManager::new(6);
            let mut held: Vec<Vec<u32>> = Vec::new();
            for (op, k) in ops {
                match op {
                    0 => {
                        if let Some(b) = m.allocate() {
                            m.register(b, k as u64 * 7919);
                            held.push(vec![b]);
                        }
                    }
                    1 => {
                        let got = m.lookup(&[k as u64 * 7919]);
                        if !got.is_empty() { held.push(got); }
                    }
                    _ => {
                        if !held.is_empty() {
                            let t = held.swap_remove(k % held.len());
                            m.release(&t);
                        }
                    }
                }
                let in_use: std::collections::HashSet<u32> = held.iter().flatten().copied().collect();
                prop_assert_eq!(m.n_used(), in_use.len());
                for b in 0..6u32 {
                    let refs = held.iter().flatten().filter(|&&x| x == b).count() as u32;
                    prop_assert_eq!(m.ref_count[b as usize], refs);
                }
            }
        }
    }
}
