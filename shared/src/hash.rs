//! The hashes placement and routing rank by. They must be the same in every
//! gateway process and every build (two gateways over the same nodes agree
//! only if they hash alike), so they are written out here: FNV-1a over the
//! bytes, then SplitMix64's finaliser to spread FNV's weak low bits.
//! `std`'s `DefaultHasher` is not promised to stay the same across Rust
//! releases.

/// FNV-1a's starting state.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, 64 bits.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(FNV_OFFSET, bytes)
}

/// FNV-1a continued from state `h` over more bytes.
pub fn fnv1a_from(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64's finaliser: a bijection that mixes every input bit into
/// every output bit.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// SplitMix64: a small generator whose draws are fixed for a given seed
/// (the sampler's, the cluster simulator's traces).
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The generator for one position of a sequence: draws depend on
    /// (seed, position) only, so a sequence resumed elsewhere from its
    /// tokens so far draws what the first run would have drawn.
    pub fn at(seed: u64, position: u64) -> Self {
        let mut r = SplitMix(seed ^ position.wrapping_mul(0xd1b5_4a32_d192_ed03));
        r.next_u64();
        r
    }
}

/// A string's hash.
pub fn of(s: &str) -> u64 {
    mix(fnv1a(s.as_bytes()))
}

/// A byte string's hash.
pub fn of_bytes(b: &[u8]) -> u64 {
    mix(fnv1a(b))
}

/// The hash of a (key, node) pair from their hashes: what rendezvous
/// hashing ranks nodes by for a key.
pub fn pair(key: u64, node: u64) -> u64 {
    mix(key ^ mix(node.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// Weighted rendezvous score: with `u` uniform in (0, 1), `-w / ln u`
/// makes a node win with probability proportional to its weight.
pub fn weighted_score(h: u64, weight: f64) -> f64 {
    // 53 bits of the hash as a float strictly inside (0, 1).
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -weight / u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_values_so_every_build_agrees() {
        // FNV-1a's published test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        // And this module's own composition, pinned.
        assert_eq!(of("smollm2"), mix(fnv1a(b"smollm2")));
        assert_ne!(pair(1, 2), pair(2, 1));
    }

    #[test]
    fn weighted_scores_win_in_proportion_to_weight() {
        // Node b has three times a's weight: over many keys it wins ~3/4.
        let (a, b) = (of("a"), of("b"));
        let wins_b = (0..20_000u64)
            .filter(|&k| {
                let k = mix(k);
                weighted_score(pair(k, b), 3.0) > weighted_score(pair(k, a), 1.0)
            })
            .count();
        let share = wins_b as f64 / 20_000.0;
        assert!((share - 0.75).abs() < 0.015, "{share}");
    }
}
