//! Quantized activations: what the weight formats are multiplied against.
//!
//! 32-element weight formats (Q4_0 … Q8_0, IQ4_NL) take [`Q8Block`]s: int8
//! values with an f32 scale that is rounded to f16 precision (as ggml's
//! Q8_0/Q8_1 store it, so our sums match ggml's), the integer sum of the
//! block and the scaled sum (ggml's Q8_1 `s`) for the formats with a minimum.
//! K-quants take [`Q8KBlock`]s (ggml's Q8_K: f32 scale and 16-element sums).

use super::dequant::{QK, QK_K};

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Q8Block {
    pub d: f32,
    /// `d * Σ qs`, rounded to f16 precision (ggml's Q8_1 `s`).
    pub s: f32,
    pub isum: i32,
    pub _pad: i32,
    pub qs: [i8; QK],
}

impl Default for Q8Block {
    fn default() -> Self {
        Q8Block {
            d: 0.0,
            s: 0.0,
            isum: 0,
            _pad: 0,
            qs: [0; QK],
        }
    }
}

/// Two [`Q8Block`]s laid out for 512-bit kernels: the 64 quants back to
/// back, and each block's scale repeated over its 8 i32 lanes, so a kernel
/// loads both with one instruction each. A row with an odd number of blocks
/// ends in a pair whose second half is zero.
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Q8Pair {
    pub qs: [i8; 2 * QK],
    pub d: [f32; 16],
    pub s: [f32; 2],
    pub isum: [i32; 2],
}

impl Default for Q8Pair {
    fn default() -> Self {
        Q8Pair {
            qs: [0; 2 * QK],
            d: [0.0; 16],
            s: [0.0; 2],
            isum: [0; 2],
        }
    }
}

/// Regroup a row's blocks into pairs (`out.len() == blocks.len().div_ceil(2)`).
pub fn pair_q8(blocks: &[Q8Block], out: &mut [Q8Pair]) {
    debug_assert_eq!(out.len(), blocks.len().div_ceil(2));
    for (pair, o) in blocks.chunks(2).zip(out.iter_mut()) {
        *o = Q8Pair::default();
        for (h, b) in pair.iter().enumerate() {
            o.qs[h * QK..(h + 1) * QK].copy_from_slice(&b.qs);
            o.d[h * 8..(h + 1) * 8].fill(b.d);
            o.s[h] = b.s;
            o.isum[h] = b.isum;
        }
    }
}

/// Four [`Q8Block`]s laid out for the 512-bit row kernels that take a
/// quad of weight blocks per step: `lo` holds elements 0..16 of block `j`
/// at `16 j`, `hi` elements 16..32, so one `vpdpbusd` against the quad's low
/// nibbles and one against its high nibbles leave block `j`'s dot product in
/// i32 lanes `4 j .. 4 j + 4`; `d` repeats block `j`'s scale over those
/// lanes, `isum` holds its Σ qs in lane `4 j` (zero in the other three) and
/// `s` is its ggml Q8_1 `s`. A row whose block count is not a multiple of
/// four ends in a quad padded with zero blocks.
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Q8Quad {
    pub lo: [i8; 64],
    pub hi: [i8; 64],
    pub d: [f32; 16],
    pub isum: [i32; 16],
    pub s: [f32; 4],
}

impl Default for Q8Quad {
    fn default() -> Self {
        Q8Quad {
            lo: [0; 64],
            hi: [0; 64],
            d: [0.0; 16],
            isum: [0; 16],
            s: [0.0; 4],
        }
    }
}

/// Regroup a row's blocks by four (`out.len() == blocks.len().div_ceil(4)`).
pub fn quad_q8(blocks: &[Q8Block], out: &mut [Q8Quad]) {
    debug_assert_eq!(out.len(), blocks.len().div_ceil(4));
    for (quad, o) in blocks.chunks(4).zip(out.iter_mut()) {
        *o = Q8Quad::default();
        for (j, b) in quad.iter().enumerate() {
            o.lo[16 * j..16 * j + 16].copy_from_slice(&b.qs[..16]);
            o.hi[16 * j..16 * j + 16].copy_from_slice(&b.qs[16..]);
            o.d[4 * j..4 * j + 4].fill(b.d);
            o.isum[4 * j] = b.isum;
            o.s[j] = b.s;
        }
    }
}

/// 512 consecutive activations (16 blocks of 32) transposed for the AVX-512
/// group kernels: `qs[d][4 * j + b]` is element `4 * d + b` of block `j`, so
/// eight `vpdpbusd` against weights transposed the same way leave block
/// `j`'s whole integer dot product in i32 lane `j`, and the float work is
/// one convert and two multiplies per 512 weights per column. Built from
/// [`Q8Block`]s (`d` is each block's scale) or from [`Q8KBlock`]s (two
/// super-blocks; `d` is a super-block's scale on its 8 lanes). A row whose
/// length is not a multiple of 512 ends in a group padded with zeros.
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Q8Group {
    pub qs: [[i8; 64]; 8],
    pub d: [f32; 16],
    /// Σ qs of each block.
    pub isum: [i32; 16],
    /// `d · isum` per block.
    pub sx: [f32; 16],
}

impl Default for Q8Group {
    fn default() -> Self {
        Q8Group {
            qs: [[0; 64]; 8],
            d: [0.0; 16],
            isum: [0; 16],
            sx: [0.0; 16],
        }
    }
}

/// Regroup a row's [`Q8Block`]s by 16 (`out.len() == blocks.len().div_ceil(16)`).
pub fn group_q8(blocks: &[Q8Block], out: &mut [Q8Group]) {
    debug_assert_eq!(out.len(), blocks.len().div_ceil(16));
    for (grp, o) in blocks.chunks(16).zip(out.iter_mut()) {
        *o = Q8Group::default();
        for (j, b) in grp.iter().enumerate() {
            for d in 0..8 {
                o.qs[d][4 * j..4 * j + 4].copy_from_slice(&b.qs[4 * d..4 * d + 4]);
            }
            o.d[j] = b.d;
            o.isum[j] = b.isum;
            o.sx[j] = b.d * b.isum as f32;
        }
    }
}

/// The lane (within a super-block's eight) of each sub-block in a grouped
/// Q8_K activation: bits 1 and 2 of the sub-block number swapped.
pub const K_LANE: [usize; 8] = [0, 1, 4, 5, 2, 3, 6, 7];

/// Regroup a row's [`Q8KBlock`]s by 2 (`out.len() == blocks.len().div_ceil(2)`):
/// lane `8 · s + K_LANE[j]` holds sub-block `j` (elements `32 j ..`) of
/// super-block `s` (the order the Q4_K group kernel's transposition leaves
/// the weights in).
pub fn group_q8k(blocks: &[Q8KBlock], out: &mut [Q8Group]) {
    debug_assert_eq!(out.len(), blocks.len().div_ceil(2));
    for (pair, o) in blocks.chunks(2).zip(out.iter_mut()) {
        *o = Q8Group::default();
        for (s, b) in pair.iter().enumerate() {
            for (j, &lane) in K_LANE.iter().enumerate() {
                let l = 8 * s + lane;
                for d in 0..8 {
                    o.qs[d][4 * l..4 * l + 4]
                        .copy_from_slice(&b.qs[32 * j + 4 * d..32 * j + 4 * d + 4]);
                }
                let isum = b.bsums[2 * j] as i32 + b.bsums[2 * j + 1] as i32;
                o.d[l] = b.d;
                o.isum[l] = isum;
                o.sx[l] = b.d * isum as f32;
            }
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Q8KBlock {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; 16],
}

impl Default for Q8KBlock {
    fn default() -> Self {
        Q8KBlock {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; 16],
        }
    }
}

#[inline(always)]
fn f16_round(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// Whether the CPU has AVX2 (then the quantizers run 8 lanes at a time; for
/// finite inputs they give the scalar code's bytes exactly: the same
/// maximum, the same products and the same ties-to-even rounding).
fn use_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| {
            std::is_x86_feature_detected!("avx2")
                && std::env::var("REALIZAR_SIMD").as_deref() != Ok("scalar")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Largest `|v|` over `xs` (a multiple of 8 long); NaNs are skipped, as
/// in the scalar fold.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn amax_avx2(xs: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut m = _mm256_setzero_ps();
    for c in xs.chunks_exact(8) {
        // `max(v, m)` returns `m` when `v` is NaN.
        m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(c.as_ptr()), abs), m);
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)))
}

/// `min(127, round_half_even(v · scale))` of 32 values as bytes, and their sum.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn round_32_avx2(xs: &[f32], scale: f32, out: &mut [i8]) -> i32 {
    use std::arch::x86_64::*;
    debug_assert!(xs.len() == 32 && out.len() == 32);
    let s = _mm256_set1_ps(scale);
    let top = _mm256_set1_epi32(127);
    // Rounds with the default MXCSR mode: to nearest, ties to even.
    let q: [__m256i; 4] = std::array::from_fn(|k| {
        let v = _mm256_mul_ps(_mm256_loadu_ps(xs.as_ptr().add(8 * k)), s);
        _mm256_min_epi32(_mm256_cvtps_epi32(v), top)
    });
    let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    let s4 = _mm_add_epi32(
        _mm256_castsi256_si128(sum),
        _mm256_extracti128_si256::<1>(sum),
    );
    let s2 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b01_00_11_10>(s4));
    let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32::<0b10_11_00_01>(s2));
    // Packing works per 128-bit lane; the permute puts the dwords back in order.
    let p = _mm256_packs_epi16(
        _mm256_packs_epi32(q[0], q[1]),
        _mm256_packs_epi32(q[2], q[3]),
    );
    let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, p);
    _mm_cvtsi128_si32(s1)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_q8_avx2(x: &[f32], out: &mut [Q8Block]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    for (xs, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = amax_avx2(xs);
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let sum = round_32_avx2(xs, id, &mut b.qs);
        b.d = f16_round(d);
        b.isum = sum;
        b.s = f16_round(sum as f32 * d);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_q8k_avx2(x: &[f32], out: &mut [Q8KBlock]) {
    use std::arch::x86_64::*;
    debug_assert_eq!(x.len(), out.len() * QK_K);
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    for (xs, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let amax = amax_avx2(xs);
        if amax == 0.0 {
            *b = Q8KBlock::default();
            continue;
        }
        // The first element of largest magnitude (as the scalar scan keeps).
        let target = _mm256_set1_ps(amax);
        let mut max = amax;
        for (k, c) in xs.chunks_exact(8).enumerate() {
            let v = _mm256_and_ps(_mm256_loadu_ps(c.as_ptr()), abs);
            let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(v, target));
            if hit != 0 {
                max = xs[8 * k + hit.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        for (c, q) in xs.chunks_exact(32).zip(b.qs.chunks_exact_mut(32)) {
            round_32_avx2(c, iscale, q);
        }
        for (j, s) in b.bsums.iter_mut().enumerate() {
            *s = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
        }
        b.d = 1.0 / iscale;
    }
}

/// Quantize `x` (a multiple of 32 long) into `out` (x.len() / 32 blocks),
/// the way llama.cpp's x86 path does it (`127 / amax`, round half to even).
pub fn quantize_q8(x: &[f32], out: &mut [Q8Block]) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: AVX2 is present (checked at run time).
        return unsafe { quantize_q8_avx2(x, out) };
    }
    quantize_q8_impl(x, out)
}

/// Quantize `x` (a multiple of 256 long) into `out` (ggml's Q8_K rule).
pub fn quantize_q8k(x: &[f32], out: &mut [Q8KBlock]) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: AVX2 is present (checked at run time).
        return unsafe { quantize_q8k_avx2(x, out) };
    }
    quantize_q8k_impl(x, out)
}

#[inline(always)]
fn quantize_q8_impl(x: &[f32], out: &mut [Q8Block]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    for (xs, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xs.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            let r = (v * id).round_ties_even() as i32;
            *q = r as i8;
            sum += r;
        }
        b.d = f16_round(d);
        b.isum = sum;
        b.s = f16_round(sum as f32 * d);
    }
}

#[inline(always)]
fn quantize_q8k_impl(x: &[f32], out: &mut [Q8KBlock]) {
    debug_assert_eq!(x.len(), out.len() * QK_K);
    for (xs, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xs {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *b = Q8KBlock::default();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
        }
        for (j, s) in b.bsums.iter_mut().enumerate() {
            *s = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
        }
        b.d = 1.0 / iscale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Finite activations with the cases that decide a quantizer's bytes:
    /// repeated largest magnitudes of both signs (the first one sets the
    /// Q8_K scale), exact ties `k + ½` after scaling, zeros and whole zero
    /// blocks, and magnitudes from 1e-30 to 1e30.
    fn activations(n: usize) -> impl Strategy<Value = Vec<f32>> {
        let value = prop_oneof![
            4 => -4.0f32..4.0,
            1 => Just(0.0f32),
            1 => (-127i32..=127).prop_map(|k| k as f32 + 0.5),
            1 => Just(3.0f32),
            1 => Just(-3.0f32),
            1 => (-30i32..30, -1.0f32..1.0).prop_map(|(e, m)| m * 10f32.powi(e)),
        ];
        let plant = proptest::collection::vec((0..n, 0..n, any::<bool>()), n / QK_K);
        (proptest::collection::vec(value, n), any::<bool>(), plant).prop_map(
            |(mut v, zero_block, plant)| {
                if zero_block {
                    v[..32].fill(0.0);
                }
                // Per 256-block, the largest magnitude again with both signs
                // at two places, so the first of equals decides the sign.
                for (blk, (i, j, neg)) in plant.into_iter().enumerate() {
                    let r = blk * QK_K..(blk + 1) * QK_K;
                    let m = v[r.clone()].iter().fold(0f32, |a, x| a.max(x.abs()));
                    let s = if neg { -m } else { m };
                    v[r.start + i % QK_K] = s;
                    v[r.start + j % QK_K] = -s;
                }
                v
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn simd_q8_equals_scalar(x in activations(4 * QK_K)) {
            let mut a = vec![Q8Block::default(); x.len() / QK];
            let mut b = a.clone();
            quantize_q8(&x, &mut a);
            quantize_q8_impl(&x, &mut b);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn simd_q8k_equals_scalar(x in activations(4 * QK_K)) {
            let mut a = vec![Q8KBlock::default(); x.len() / QK_K];
            let mut b = a.clone();
            quantize_q8k(&x, &mut a);
            quantize_q8k_impl(&x, &mut b);
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn q8k_scale_comes_from_the_first_largest_magnitude() {
        let mut x = vec![0.25f32; QK_K];
        x[40] = -2.0;
        x[41] = 2.0;
        x[200] = 2.0;
        let mut b = [Q8KBlock::default()];
        quantize_q8k(&x, &mut b);
        // iscale = −127 / −2 (x[40]); either later +2 would flip every sign.
        assert_eq!(b[0].qs[40], -127);
        assert_eq!(b[0].qs[41], 127);
        assert_eq!(b[0].d, 1.0 / (-127.0f32 / -2.0));
    }
}
