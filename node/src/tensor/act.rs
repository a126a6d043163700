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

/// Whether the CPU has AVX2 (then the quantizers are compiled for it, so
/// rounding is one vector instruction rather than a libm call per value).
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_q8_avx2(x: &[f32], out: &mut [Q8Block]) {
    quantize_q8_impl(x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_q8k_avx2(x: &[f32], out: &mut [Q8KBlock]) {
    quantize_q8k_impl(x, out)
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
