//! Which gateway affinity keys have their prompt's start cached here.
//!
//! A gateway names each request's affinity key (its user, session or
//! prompt start, hashed) in `x-realizar-affinity`. The node remembers, per
//! key, the chained hash of a probe block near the prompt's start — the
//! block a later request with the same key would find first — and reports
//! the keys whose probe block is still in the prefix cache, and those seen
//! in the last `RECENT` (whose prompt is being computed, or will be: a
//! gateway that sent a key here should count it here at its next poll,
//! not only once the prefill is done). Gateways route
//! a key to a node that reports it, and count reported keys as each node's
//! share of the cache; the nodes are the state every gateway reads, so
//! gateways agree without talking to each other.
//!
//! It also counts, over the latest returning starts, how many found their
//! start evicted since the cache was seen to hold it: a cache that loses
//! starts still in use is too small for the tenants sent to it, and the
//! gateway then keeps their requests with their starts rather than copy a
//! start into another such cache (gateway/src/routing.rs).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use realizar_shared::control::START_TALLY;

use super::prefix_hashes;

/// Keys remembered (the oldest are forgotten past it).
pub const REMEMBERED: usize = 2048;
/// The probe is the last full block within this many blocks of the start:
/// deep enough to tell tenants whose prompts open alike apart, near enough
/// to the start to lie within what the key was made from (the gateway
/// hashes a prompt's first 256 bytes: about 50 tokens).
pub const PROBE_BLOCKS: usize = 3;
/// Tokens at a prompt's end a conversation key's probe block leaves out.
pub const END_SLACK: usize = 4;
/// A key seen this recently is reported whether or not its probe block is
/// cached yet.
pub const RECENT: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct AffinityKeys {
    keys: HashMap<u64, Seen>,
    /// Requests whose start this cache had held, latest last: true where
    /// they found it evicted (at most `START_TALLY`).
    returns: VecDeque<bool>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    probe: u64,
    at: Instant,
    /// The probe block was in the cache when last looked at.
    held: bool,
}

impl AffinityKeys {
    /// A request with `key` and this prompt arrived; `cached` says which
    /// blocks the prefix cache holds. Prompts shorter than a block leave
    /// nothing to find and are not remembered. A key whose start this
    /// cache had held comes back: counted, and whether it was lost.
    pub fn record(
        &mut self,
        key: u64,
        prompt: &[u32],
        block_size: usize,
        now: Instant,
        cached: impl Fn(u64) -> bool,
    ) {
        let span = prompt.len().min(PROBE_BLOCKS * block_size);
        let Some(&probe) = prefix_hashes(&prompt[..span], block_size).last() else {
            return;
        };
        let held = cached(probe);
        if self
            .keys
            .get(&key)
            .is_some_and(|s| s.probe == probe && s.held)
        {
            if self.returns.len() == START_TALLY {
                self.returns.pop_front();
            }
            self.returns.push_back(!held);
        }
        self.remember(key, probe, now, held);
    }

    /// A request with conversation key `key` and this prompt arrived: the
    /// probe is its last full block before the last `END_SLACK` tokens, so
    /// the key is reported while nearly all of the prompt is cached (a
    /// next turn, which resends it, would find it). The slack: a chat
    /// prompt ends with the template's cue for the answer, which can
    /// tokenize differently once the answer follows it.
    pub fn record_end(&mut self, key: u64, prompt: &[u32], block_size: usize, now: Instant) {
        let bs = block_size.max(1);
        let full = prompt.len().saturating_sub(END_SLACK) / bs * bs;
        if let Some(&probe) = prefix_hashes(&prompt[..full], block_size).last() {
            self.remember(key, probe, now, false);
        }
    }

    fn remember(&mut self, key: u64, probe: u64, now: Instant, held: bool) {
        self.keys.insert(
            key,
            Seen {
                probe,
                at: now,
                held,
            },
        );
        if self.keys.len() > REMEMBERED {
            // Forget the oldest quarter at once, so this stays O(1) amortised.
            let mut seen: Vec<Instant> = self.keys.values().map(|v| v.at).collect();
            seen.sort_unstable();
            let cut = seen[REMEMBERED / 4];
            self.keys.retain(|_, v| v.at > cut);
        }
    }

    /// Keys seen within `RECENT` or whose probe block `cached` says is in
    /// the cache, most recently seen first, at most `limit`. Notes which
    /// probes the cache holds, for `record`'s count of lost starts.
    pub fn cached(&mut self, cached: impl Fn(u64) -> bool, now: Instant, limit: usize) -> Vec<u64> {
        let mut v: Vec<(Instant, u64)> = Vec::new();
        for (k, s) in &mut self.keys {
            let c = cached(s.probe);
            s.held |= c;
            if c || now.duration_since(s.at) < RECENT {
                v.push((s.at, *k));
            }
        }
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.into_iter().take(limit).map(|(_, k)| k).collect()
    }

    /// (returning starts counted, of them lost): of the last
    /// `START_TALLY` requests whose start key's probe this cache had held.
    pub fn returns(&self) -> (u32, u32) {
        let lost = self.returns.iter().filter(|&&l| l).count();
        (self.returns.len() as u32, lost as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_reported_while_their_probe_block_is_cached() {
        let mut a = AffinityKeys::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let tenant1: Vec<u32> = (0..100).collect();
        let mut tenant2 = tenant1.clone();
        tenant2[40] = 9999; // differs in the third block
        a.record(1, &tenant1, 16, t0, |_| false);
        a.record(2, &tenant2, 16, t0 + ms(1), |_| false);
        a.record(3, &[1, 2, 3], 16, t0 + ms(2), |_| false); // under a block: nothing to probe
        let probe1 = *prefix_hashes(&tenant1[..48], 16).last().unwrap();
        let probe2 = *prefix_hashes(&tenant2[..48], 16).last().unwrap();
        assert_ne!(probe1, probe2);
        // Recently seen: reported before their prompts are computed.
        assert_eq!(a.cached(|_| false, t0 + ms(5), 10), [2, 1]);
        let later = t0 + RECENT + ms(5);
        assert!(a.cached(|_| false, later, 10).is_empty());
        assert_eq!(a.cached(|h| h == probe1 || h == probe2, later, 10), [2, 1]);
        assert_eq!(a.cached(|h| h == probe1, later, 10), [1]);
        assert_eq!(a.cached(|_| true, later, 1), [2]);
        // Seen again: most recent first.
        a.record(1, &tenant1, 16, later, |_| true);
        assert_eq!(a.cached(|_| true, later, 10), [1, 2]);
    }

    #[test]
    fn a_conversation_key_probes_the_last_full_block() {
        let mut a = AffinityKeys::default();
        let t0 = Instant::now();
        let later = t0 + RECENT + Duration::from_millis(1);
        let prompt: Vec<u32> = (0..70).collect();
        a.record_end(7, &prompt, 16, t0);
        // 70 tokens less 4: the fourth block (48..64) is the last full one.
        let end = *prefix_hashes(&prompt[..64], 16).last().unwrap();
        let start = *prefix_hashes(&prompt[..48], 16).last().unwrap();
        assert_eq!(a.cached(|h| h == end, later, 10), [7]);
        // The start alone cached is not the conversation cached.
        assert!(a.cached(|h| h == start, later, 10).is_empty());
        // 67 less 4 is 63: the third block (32..48) ends it.
        let mut b = AffinityKeys::default();
        b.record_end(9, &prompt[..67], 16, t0);
        let third = *prefix_hashes(&prompt[..48], 16).last().unwrap();
        assert_eq!(b.cached(|h| h == third, later, 10), [9]);
        a.record_end(8, &prompt[..19], 16, t0);
        assert_eq!(
            a.keys.len(),
            1,
            "under a block after the slack: nothing to probe"
        );
    }

    #[test]
    fn returning_starts_are_counted_and_their_losses() {
        let mut a = AffinityKeys::default();
        let t0 = Instant::now();
        let p: Vec<u32> = (0..64).collect();
        let probe = *prefix_hashes(&p[..48], 16).last().unwrap();
        // Never seen cached: a second request is no return.
        a.record(1, &p, 16, t0, |_| false);
        a.record(1, &p, 16, t0, |_| false);
        assert_eq!(a.returns(), (0, 0));
        // The refresh sees it cached; it comes back and finds it, then
        // comes back after an eviction.
        a.cached(|h| h == probe, t0, 10);
        a.record(1, &p, 16, t0, |h| h == probe);
        a.record(1, &p, 16, t0, |_| false);
        assert_eq!(a.returns(), (2, 1));
        // Lost, it is no longer held: the next miss is not counted again.
        a.record(1, &p, 16, t0, |_| false);
        assert_eq!(a.returns(), (2, 1));
        // The tally keeps the latest.
        for _ in 0..2 * START_TALLY {
            a.record(1, &p, 16, t0, |h| h == probe);
        }
        assert_eq!(a.returns(), (START_TALLY as u32, 0));
        // A key whose prompt changed start is a new start, not a return.
        let mut q = p.clone();
        q[0] = 7;
        a.record(1, &q, 16, t0, |_| false);
        assert_eq!(a.returns(), (START_TALLY as u32, 0));
    }

    #[test]
    fn memory_is_bounded() {
        let mut a = AffinityKeys::default();
        let p: Vec<u32> = (0..16).collect();
        let t0 = Instant::now();
        for k in 0..(3 * REMEMBERED as u64) {
            a.record(k, &p, 16, t0 + Duration::from_micros(k), |_| false);
            assert!(a.keys.len() <= REMEMBERED);
        }
        // The newest survive.
        assert_eq!(a.cached(|_| true, t0, 1), [3 * REMEMBERED as u64 - 1]);
    }
}
