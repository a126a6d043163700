//! AVX-512 (F, BW, VL) + VNNI dot products for the 4-bit formats of the real
//! models: Q4_0, Q4_1, Q5_0 (two 32-element blocks per 512-bit step) and Q4_K (two
//! 32-element sub-blocks per step), and Q8_0. Signed × signed (Q8_0) moves
//! the weights' signs onto the activations (|w| · ±x, as AVX2's `vpsignb`
//! trick does, with a byte mask and a masked negate). `vpdpbusd`
//! multiplies unsigned by signed bytes and sums groups of four into i32
//! lanes in one instruction, where AVX2 needs `vpmaddubsw` + `vpmaddwd`.
//! Integer parts are exact; only the float accumulation order differs from
//! the scalar reference. Every other format uses the AVX2 kernels.
//!
//! The functions here are handed out only by [`kernel`], whose caller has
//! checked that the CPU has AVX-512 F/BW/VL/VNNI as well as AVX2/FMA/F16C.

#![allow(clippy::needless_range_loop)]
#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use super::act::{Q8Group, Q8KBlock, Q8Pair, Q8Quad};
#[cfg(test)]
use super::dequant::k_scales_mins;
use super::dot_avx2::{h2f, hsum};
use super::matmul::{GroupTile, Kernel};
use super::GgmlType;

/// Kernel for `dtype`, if it has an AVX-512 path.
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VL and VNNI, and AVX2, FMA and F16C.
pub(super) unsafe fn kernel(dtype: GgmlType) -> Option<Kernel> {
    use GgmlType::*;
    Some(match dtype {
        Q4_0 => Kernel::Q8Quad(q4_0),
        Q4_1 => Kernel::Q8Quad(q4_1),
        Q5_0 => Kernel::Q8Quad(q5_0),
        Q8_0 => Kernel::Q8Group(q8_0_group),
        Q4_K => Kernel::Q8KGroup(q4_k_group),
        _ => return None,
    })
}

/// The row-at-a-time kernel of a format whose [`kernel`] is a group
/// kernel. The group kernels transpose each weight group in registers,
/// which pays for itself only when several columns share it, and a row that
/// ends in a partial group pays for a whole one; [`super::matmul`] takes
/// this kernel for single columns and for short rows with a partial group.
///
/// # Safety
/// As for [`kernel`].
pub(super) unsafe fn row_kernel(dtype: GgmlType) -> Option<Kernel> {
    match dtype {
        GgmlType::Q8_0 => Some(Kernel::Q8Pair(q8_0)),
        GgmlType::Q4_K => Some(Kernel::Q8K(q4_k)),
        _ => None,
    }
}

#[inline(always)]
unsafe fn load256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// Two 256-bit halves as one 512-bit register.
#[inline(always)]
unsafe fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// The f16 at `p0` in lanes 0..8 and the one at `p1` (0 when `None`) in
/// lanes 8..16: both words converted together and spread by one permute
/// (two scalar conversions, two broadcasts and an insert cost three times
/// the cross-lane work, on the pipes `vpdpbusd` needs).
#[inline(always)]
unsafe fn pair_h2f(p0: *const u8, p1: Option<*const u8>) -> __m512 {
    let h0 = (p0 as *const u16).read_unaligned() as u32;
    let h1 = p1.map_or(0, |p| (p as *const u16).read_unaligned() as u32);
    let mut v = _mm_cvtsi32_si128((h0 | h1 << 16) as i32);
    // A whole register for vcvtph2ps (see `h2f`).
    std::arch::asm!("/* {0} */", inout(xmm_reg) v, options(pure, nomem, nostack, preserves_flags));
    _mm512_permutexvar_ps(
        _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
        _mm512_castps128_ps512(_mm_cvtph_ps(v)),
    )
}

#[inline(always)]
unsafe fn dpbusd(u: __m512i, s: __m512i) -> __m512i {
    _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s)
}

/// The safe entry point of a kernel generic over its column count `N`
/// (1..=4; the group kernels have `dispatch_tile!`).
macro_rules! dispatch {
    ($name:ident, $inner:ident, $act:ty, $out:ty, $bytes:expr; $($n:literal)+) => {
        fn $name(w: &[u8], a: &[&[$act]], out: &mut [$out]) {
            let nb = w.len() / $bytes;
            // SAFETY: `kernel` hands these out only on CPUs with the features.
            unsafe {
                match a.len() {
                    $($n => $inner::<$n>(w, nb, a, out),)+
                    n => unreachable!("{n} columns per call"),
                }
            }
        }
    };
}

dispatch!(q4_0, q4_0_n, Q8Quad, f32, 18; 1 2 3 4);
dispatch!(q4_1, q4_1_n, Q8Quad, f32, 20; 1 2 3 4);
dispatch!(q5_0, q5_0_n, Q8Quad, f32, 22; 1 2 3 4);
dispatch!(q8_0, q8_0_n, Q8Pair, f32, 34; 1 2 3 4);
dispatch!(q4_k, q4_k_n, Q8KBlock, f32, 144; 1 2 3 4);
/// The safe entry point of a group kernel: a tile of rows (see
/// [`super::matmul::GroupFn`]), generic over its column count.
macro_rules! dispatch_tile {
    ($name:ident, $inner:ident, $bytes:expr; $($n:literal)+) => {
        fn $name(tile: &GroupTile, a: &[&[Q8Group]], acc: &mut [[[f32; 16]; 8]]) {
            let n = tile.rows.len();
            assert!(n <= acc.len() && tile.prefetch.len() >= n && tile.prefetch_far.len() >= n);
            // SAFETY: `kernel` hands these out only on CPUs with the features.
            unsafe {
                match a.len() {
                    $($n => $inner::<$n>(tile, $bytes, a, acc),)+
                    n => unreachable!("{n} columns per call"),
                }
            }
        }
    };
}

dispatch_tile!(q8_0_group, q8_0_g, 34; 1 2 3 4 5 6 7 8);
dispatch_tile!(q4_k_group, q4_k_g, 144; 1 2 3 4 5 6 7 8);

/// A row's two ahead-spans (see [`GroupTile`]), prefetched a part at a
/// time while the row is computed, so the misses are spread over the row
/// rather than issued in one burst.
#[derive(Clone, Copy)]
struct Ahead<'a> {
    near: &'a [u8],
    far: &'a [u8],
}

impl Ahead<'_> {
    /// Prefetch part `i` of `n` (by cache lines) of both spans.
    #[inline(always)]
    unsafe fn part(self, i: usize, n: usize) {
        let lines = |s: &[u8]| {
            let l = s.len().div_ceil(64);
            l * i / n..l * (i + 1) / n
        };
        for l in lines(self.far) {
            _mm_prefetch::<_MM_HINT_T1>(self.far.as_ptr().add(64 * l) as *const i8);
        }
        for l in lines(self.near) {
            _mm_prefetch::<_MM_HINT_T0>(self.near.as_ptr().add(64 * l) as *const i8);
        }
    }
}

/// Runs `row` over each row of a tile with its accumulators in registers;
/// `row` prefetches the row's ahead-spans through the [`Ahead`] it gets.
#[inline(always)]
unsafe fn tile_rows<const N: usize>(
    tile: &GroupTile,
    bytes: usize,
    acc: &mut [[[f32; 16]; 8]],
    mut row: impl FnMut(&[u8], usize, Ahead, &mut [__m512; N]),
) {
    for (r, w) in tile.rows.iter().enumerate() {
        let ahead = Ahead {
            near: tile.prefetch[r],
            far: tile.prefetch_far[r],
        };
        let out = &mut acc[r];
        let mut a: [__m512; N] = std::array::from_fn(|c| _mm512_loadu_ps(out[c].as_ptr()));
        row(w, w.len() / bytes, ahead, &mut a);
        for c in 0..N {
            _mm512_storeu_ps(out[c].as_mut_ptr(), a[c]);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_0_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8Quad]], out: &mut [f32]) {
    quads::<N, Q4_0_QUAD>(w, nb, a, out)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_1_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8Quad]], out: &mut [f32]) {
    quads::<N, Q4_1_QUAD>(w, nb, a, out)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q5_0_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8Quad]], out: &mut [f32]) {
    quads::<N, Q5_0_QUAD>(w, nb, a, out)
}

/// 16-bit word indices for `vpermt2w` over a quad's first 64 bytes and the
/// rest: the four blocks' 16 quant bytes (8 words each, from word `at` of a
/// `bw`-word block), and the headers: the four f16 scales in words 0..4, the
/// blocks' second words in 4..8 (Q4_1's minimums, Q5_0's low `qh` halves) and
/// their third in 8..12 (Q5_0's high `qh` halves). Every field of the three
/// block layouts (Q4_0 9 words, Q4_1 10, Q5_0 11) is word-aligned.
const fn quad_words(bw: usize, at: usize) -> [[u16; 32]; 2] {
    let mut t = [[0u16; 32]; 2];
    let mut k = 0;
    while k < 32 {
        t[0][k] = (bw * (k / 8) + at + k % 8) as u16;
        k += 1;
    }
    let mut j = 0;
    while j < 4 {
        t[1][j] = (bw * j) as u16;
        t[1][4 + j] = (bw * j + 1) as u16;
        t[1][8 + j] = (bw * j + 2) as u16;
        j += 1;
    }
    t
}
static Q4_0_WORDS: [[u16; 32]; 2] = quad_words(9, 1);
static Q4_1_WORDS: [[u16; 32]; 2] = quad_words(10, 2);
static Q5_0_WORDS: [[u16; 32]; 2] = quad_words(11, 3);
const Q4_0_QUAD: u8 = 0;
const Q4_1_QUAD: u8 = 1;
const Q5_0_QUAD: u8 = 2;

/// The 4-bit row kernels, four blocks a step on [`Q8Quad`] activations: Σ q·x
/// by two VNNI products (low nibbles against elements 0..16 of each block,
/// high against 16..32), leaving block `j` in i32 lanes `4 j..4 j + 4`.
/// Q4_0 (`w = d · (q − 8)`, 18-byte blocks) and Q5_0 (`w = d · (q − 16)`,
/// q's fifth bit from the block's 32-bit `qh`, 22-byte blocks) subtract the
/// offset times Σ x per block (exact in i32, the quad's `isum`); Q4_1 (`w =
/// d · q + m`, 20-byte blocks) adds `m · s` per block. A quad's bytes come
/// in by two loads and are sorted by two word permutes (quants; headers);
/// Q5_0's fifth bits are two 64-bit byte masks (block `j`'s low 16 bits of
/// `qh` at bits `16 j..` for the low nibbles, its high 16 for the high
/// nibbles), each added as 16 by one masked byte add.
#[inline(always)]
unsafe fn quads<const N: usize, const F: u8>(
    w: &[u8],
    nb: usize,
    a: &[&[Q8Quad]],
    out: &mut [f32],
) {
    let (bb, words) = match F {
        Q4_0_QUAD => (18, &Q4_0_WORDS),
        Q4_1_QUAD => (20, &Q4_1_WORDS),
        _ => (22, &Q5_0_WORDS),
    };
    let qs_idx = _mm512_loadu_si512(words[0].as_ptr() as *const _);
    let head_idx = _mm512_loadu_si512(words[1].as_ptr() as *const _);
    let m4 = _mm512_set1_epi8(0x0f);
    let sixteen = _mm512_set1_epi8(0x10);
    let d_lanes = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let mut acc = [_mm512_setzero_ps(); N];
    let mut macc = [_mm_setzero_ps(); N];
    for q in 0..nb.div_ceil(4) {
        // The last quad may hold fewer than four blocks: masked loads read
        // nothing past the row, and the missing blocks come out as zeros
        // (d = 0: they add nothing).
        let bytes = (nb - 4 * q).min(4) * bb;
        let b0 = w.as_ptr().add(4 * q * bb);
        let v0 = if bytes >= 64 {
            _mm512_loadu_si512(b0 as *const _)
        } else {
            _mm512_maskz_loadu_epi8((1u64 << bytes) - 1, b0 as *const _)
        };
        // A whole quad's tail (8, 16 or 24 bytes) by the narrowest load;
        // the permutes never read the lanes above it.
        let v1 = if bytes == 4 * bb {
            let t = b0.add(64);
            match F {
                Q4_0_QUAD => _mm512_castsi128_si512(_mm_loadl_epi64(t as *const _)),
                Q4_1_QUAD => _mm512_castsi128_si512(_mm_loadu_si128(t as *const _)),
                _ => _mm512_castsi256_si512(_mm256_maskz_loadu_epi8(0x00ff_ffff, t as *const _)),
            }
        } else if bytes > 64 {
            _mm512_maskz_loadu_epi8((1u64 << (bytes - 64)) - 1, b0.add(64) as *const _)
        } else {
            _mm512_setzero_si512()
        };
        let qs = _mm512_permutex2var_epi16(v0, qs_idx, v1);
        let head = _mm512_permutex2var_epi16(v0, head_idx, v1);
        let mut lo = _mm512_and_si512(qs, m4);
        let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(qs), m4);
        if F == Q5_0_QUAD {
            let h = _mm512_castsi512_si128(head);
            let ml = _mm_extract_epi64::<1>(h) as u64;
            let mh = _mm_cvtsi128_si64(_mm512_extracti32x4_epi32::<1>(head)) as u64;
            lo = _mm512_mask_add_epi8(lo, ml, lo, sixteen);
            hi = _mm512_mask_add_epi8(hi, mh, hi, sixteen);
        }
        // Scales in floats 0..4, Q4_1's minimums in 4..8.
        let dm = _mm256_cvtph_ps(_mm512_castsi512_si128(head));
        let dw = _mm512_permutexvar_ps(d_lanes, _mm512_castps256_ps512(dm));
        let mw = _mm256_extractf128_ps::<1>(dm);
        for c in 0..N {
            let x = a[c].get_unchecked(q);
            let xl = _mm512_loadu_si512(x.lo.as_ptr() as *const _);
            let xh = _mm512_loadu_si512(x.hi.as_ptr() as *const _);
            let p = _mm512_dpbusd_epi32(dpbusd(lo, xl), hi, xh);
            let p = match F {
                Q4_1_QUAD => {
                    macc[c] = _mm_fmadd_ps(mw, _mm_loadu_ps(x.s.as_ptr()), macc[c]);
                    p
                }
                _ => {
                    let isum = _mm512_loadu_si512(x.isum.as_ptr() as *const _);
                    let corr = if F == Q5_0_QUAD {
                        _mm512_slli_epi32::<4>(isum)
                    } else {
                        _mm512_slli_epi32::<3>(isum)
                    };
                    _mm512_sub_epi32(p, corr)
                }
            };
            let s = _mm512_mul_ps(dw, _mm512_loadu_ps(x.d.as_ptr()));
            acc[c] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(p), acc[c]);
        }
    }
    for c in 0..N {
        out[c] = _mm512_reduce_add_ps(acc[c]);
        if F == Q4_1_QUAD {
            let m = macc[c];
            let m2 = _mm_add_ps(m, _mm_movehl_ps(m, m));
            out[c] += _mm_cvtss_f32(_mm_add_ss(m2, _mm_movehdup_ps(m2)));
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q8_0_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8Pair]], out: &mut [f32]) {
    let mut acc = [_mm512_setzero_ps(); N];
    for p in 0..nb.div_ceil(2) {
        let b0 = w.as_ptr().add(2 * p * 34);
        let (wq, dw) = if 2 * p + 1 < nb {
            let b1 = b0.add(34);
            (
                join(load256(b0.add(2)), load256(b1.add(2))),
                pair_h2f(b0, Some(b1)),
            )
        } else {
            (
                join(load256(b0.add(2)), _mm256_setzero_si256()),
                pair_h2f(b0, None),
            )
        };
        // |w| (u8; −128 becomes 128, still exact) and where w < 0.
        let wabs = _mm512_abs_epi8(wq);
        let neg = _mm512_movepi8_mask(wq);
        for c in 0..N {
            let x = a[c].get_unchecked(p);
            let xq = _mm512_loadu_si512(x.qs.as_ptr() as *const _);
            // x with the sign of w (activations are within ±127, so negating is exact).
            let xs = _mm512_mask_sub_epi8(xq, neg, _mm512_setzero_si512(), xq);
            let s = _mm512_mul_ps(dw, _mm512_loadu_ps(x.d.as_ptr()));
            acc[c] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(dpbusd(wabs, xs)), acc[c]);
        }
    }
    for c in 0..N {
        out[c] = _mm512_reduce_add_ps(acc[c]);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_k_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8KBlock]], out: &mut [f32]) {
    // Per super-block: 8 sub-blocks of 32 with 6-bit scales and minimums.
    // Σ_j sc_j Σ q·x in i32 (VNNI, two sub-blocks per step), then one float
    // multiply by d · d_x; the minimums, Σ_j min_j · (Σ x over sub-block j),
    // go into a float vector that is reduced once at the end.
    let m4 = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    // Lanes 0..8 take scale 2k, lanes 8..16 scale 2k + 1.
    let spread: [__m512i; 4] = std::array::from_fn(|k| {
        let (lo, hi) = (2 * k as i32, 2 * k as i32 + 1);
        _mm512_setr_epi32(
            lo, lo, lo, lo, lo, lo, lo, lo, hi, hi, hi, hi, hi, hi, hi, hi,
        )
    });
    let mut acc = [_mm512_setzero_ps(); N];
    let mut macc = [_mm256_setzero_ps(); N];
    for i in 0..nb {
        let b = w.as_ptr().add(i * 144);
        let (d, dmin) = (h2f(b), h2f(b.add(2)));
        let (sc, mn) = k_scales_mins_u64(b.add(4));
        let sc32 = _mm512_castsi256_si512(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(sc as i64)));
        let mn32 = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(mn as i64));
        let qs = b.add(16);
        let mut wq = [_mm512_setzero_si512(); 4];
        let mut sv = [_mm512_setzero_si512(); 4];
        for k in 0..4 {
            let raw = load256(qs.add(32 * k));
            wq[k] = join(
                _mm256_and_si256(raw, m4),
                _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m4),
            );
            sv[k] = _mm512_permutexvar_epi32(spread[k], sc32);
        }
        for c in 0..N {
            let x = a[c].get_unchecked(i);
            let xp = x.qs.as_ptr() as *const u8;
            let mut isum = _mm512_setzero_si512();
            for k in 0..4 {
                let xq = _mm512_loadu_si512(xp.add(64 * k) as *const _);
                isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(dpbusd(wq[k], xq), sv[k]));
            }
            acc[c] = _mm512_fmadd_ps(_mm512_set1_ps(d * x.d), _mm512_cvtepi32_ps(isum), acc[c]);
            // Σ x per sub-block (pairs of 16-element sums) times its minimum.
            let bs = _mm256_loadu_si256(x.bsums.as_ptr() as *const __m256i);
            let m = _mm256_mullo_epi32(_mm256_madd_epi16(bs, ones), mn32);
            macc[c] = _mm256_fmadd_ps(_mm256_set1_ps(dmin * x.d), _mm256_cvtepi32_ps(m), macc[c]);
        }
    }
    for c in 0..N {
        out[c] = _mm512_reduce_add_ps(acc[c]) - hsum(macc[c]);
    }
}

/// The 6-bit scales and minimums of a Q4_K / Q5_K super-block (12 bytes at
/// `p`) as 8 bytes each, by word operations (the same values as
/// [`k_scales_mins`]).
#[inline(always)]
pub(crate) unsafe fn k_scales_mins_u64(p: *const u8) -> (u64, u64) {
    const M6: u32 = 0x3f3f_3f3f;
    const M4: u32 = 0x0f0f_0f0f;
    const M2: u32 = 0x0303_0303;
    let w0 = (p as *const u32).read_unaligned();
    let w1 = (p.add(4) as *const u32).read_unaligned();
    let w2 = (p.add(8) as *const u32).read_unaligned();
    let sc_lo = w0 & M6;
    let sc_hi = (w2 & M4) | (((w0 >> 6) & M2) << 4);
    let mn_lo = w1 & M6;
    let mn_hi = ((w2 >> 4) & M4) | (((w1 >> 6) & M2) << 4);
    (
        sc_lo as u64 | (sc_hi as u64) << 32,
        mn_lo as u64 | (mn_hi as u64) << 32,
    )
}

/// `vpermt2d` index tables of a three-round transpose of eight vectors whose
/// 128 dwords are labelled `lane_of_block · 8 + dword`: round `k` pairs the
/// vectors that differ in bit `k` of their index and sends the dwords whose
/// number has bit `k` clear to the lower one, set to the upper one. After
/// three rounds vector `d` holds dword `d` of blocks 0..16 in lanes 0..16.
/// Built (and checked) at compile time from the starting labels; within a
/// round every lower output uses one index vector and every upper output
/// another (checked too), so a kernel keeps the six in registers.
const fn transpose_tables(init: [[u8; 16]; 8]) -> [[[i32; 16]; 2]; 3] {
    let mut cur = init;
    let mut tab = [[[0i32; 16]; 8]; 3];
    let mut k = 0;
    while k < 3 {
        let mut next = [[0u8; 16]; 8];
        let mut v = 0;
        while v < 8 {
            let a = v & !(1 << k);
            let b = a | (1 << k);
            let want = (v >> k) & 1;
            let mut n = 0;
            let mut label = 0;
            while label < 128 {
                if ((label % 8) >> k) & 1 == want {
                    let mut lane = 0;
                    while lane < 32 {
                        let src = if lane < 16 {
                            cur[a][lane]
                        } else {
                            cur[b][lane - 16]
                        };
                        if src as usize == label {
                            assert!(n < 16, "transpose: too many dwords for one vector");
                            next[v][n] = label as u8;
                            tab[k][v][n] = lane as i32;
                            n += 1;
                        }
                        lane += 1;
                    }
                }
                label += 1;
            }
            assert!(n == 16, "transpose: a vector is not filled");
            v += 1;
        }
        cur = next;
        k += 1;
    }
    let mut v = 0;
    while v < 8 {
        let mut l = 0;
        while l < 16 {
            assert!(cur[v][l] as usize == l * 8 + v, "transpose: wrong result");
            l += 1;
        }
        v += 1;
    }
    let mut out = [[[0i32; 16]; 2]; 3];
    let mut k = 0;
    while k < 3 {
        let mut v = 0;
        while v < 8 {
            let side = (v >> k) & 1;
            let mut l = 0;
            while l < 16 {
                if v == side << k {
                    out[k][side][l] = tab[k][v][l];
                }
                assert!(
                    tab[k][v][l] == tab[k][side << k][l],
                    "transpose: index vectors differ within a round"
                );
                l += 1;
            }
            v += 1;
        }
        k += 1;
    }
    out
}

/// Q8_0: vector `i` holds blocks `2i` (lanes 0..8) and `2i + 1` (lanes 8..16).
const Q8_0_T: [[[i32; 16]; 2]; 3] = {
    let mut init = [[0u8; 16]; 8];
    let mut v = 0;
    while v < 8 {
        let mut m = 0;
        while m < 16 {
            init[v][m] = ((2 * v + m / 8) * 8 + m % 8) as u8;
            m += 1;
        }
        v += 1;
    }
    transpose_tables(init)
};

/// Transpose of the Q4_K kernel's eight nibble vectors (vector `v`: super-
/// block `v / 4`, quant bytes `64 · ((v / 2) % 2)..` as low (`v` even) or
/// high nibbles, so its 256-bit half `h` holds sub-block
/// `4 · ((v / 2) % 2) + 2h + v % 2`) by in-lane unpacks and one 128-bit
/// shuffle round: output `d` holds dword `d` of the sixteen sub-blocks,
/// sub-block `8 s + j` in lane `8 s + K_LANE[j]` ([`super::act::K_LANE`]) (bits 1 and 2 of `j`
/// swapped), which is how [`super::act::group_q8k`] lays out activations.
/// Cheaper than the general `vpermt2d` transposition.
#[inline(always)]
unsafe fn transpose_q4_k(v: [__m512i; 8]) -> [__m512i; 8] {
    let mut lo = [_mm512_setzero_si512(); 4];
    let mut hi = [_mm512_setzero_si512(); 4];
    for p in 0..4 {
        lo[p] = _mm512_unpacklo_epi32(v[2 * p], v[2 * p + 1]);
        hi[p] = _mm512_unpackhi_epi32(v[2 * p], v[2 * p + 1]);
    }
    // r[q][t], lane L: dword 4L + t of vectors 4q..4q + 4.
    let mut r = [[_mm512_setzero_si512(); 4]; 2];
    for q in 0..2 {
        r[q][0] = _mm512_unpacklo_epi64(lo[2 * q], lo[2 * q + 1]);
        r[q][1] = _mm512_unpackhi_epi64(lo[2 * q], lo[2 * q + 1]);
        r[q][2] = _mm512_unpacklo_epi64(hi[2 * q], hi[2 * q + 1]);
        r[q][3] = _mm512_unpackhi_epi64(hi[2 * q], hi[2 * q + 1]);
    }
    let mut out = [_mm512_setzero_si512(); 8];
    for t in 0..4 {
        out[t] = _mm512_shuffle_i32x4::<0x88>(r[0][t], r[1][t]);
        out[t + 4] = _mm512_shuffle_i32x4::<0xdd>(r[0][t], r[1][t]);
    }
    out
}

/// The byte shuffles and masks of [`k_pair_scales`], for one 16-byte block
/// head (`d`, `dmin`, 12 packed scale bytes `s`): output byte `p < 8` is the
/// scale of sub-block `J[p]`, byte `8 + p` its minimum, where `J` lists the
/// sub-blocks in [`super::act::K_LANE`] order. With `t = s + 4` (offsets in
/// the head), sub-block `j < 4` has scale `s[j] & 63` and minimum
/// `s[j + 4] & 63`; `j ≥ 4` has scale `s[j + 4] & 15 | (s[j − 4] >> 6) << 4`
/// and minimum `s[j + 4] >> 4 | (s[j] >> 6) << 4`. `lo` picks the byte whose
/// low bits are kept (`lo_mask`), `hi` the same byte where its high nibble is
/// wanted (`hi_mask` after a shift by 4), `top` the byte whose two top bits
/// become bits 4–5 (index −128 where there is none: `pshufb` writes 0).
struct KScaleShuffles {
    lo: [i8; 16],
    lo_mask: [i8; 16],
    hi_mask: [i8; 16],
    top: [i8; 16],
}

const K_SCALE_SHUFFLES: KScaleShuffles = {
    const J: [usize; 8] = [0, 1, 4, 5, 2, 3, 6, 7];
    let mut k = KScaleShuffles {
        lo: [0; 16],
        lo_mask: [0; 16],
        hi_mask: [0; 16],
        top: [-128; 16],
    };
    let mut p = 0;
    while p < 8 {
        let j = J[p];
        // Scale (byte p) and minimum (byte 8 + p).
        if j < 4 {
            k.lo[p] = (4 + j) as i8;
            k.lo_mask[p] = 63;
            k.lo[8 + p] = (8 + j) as i8;
            k.lo_mask[8 + p] = 63;
        } else {
            k.lo[p] = (8 + j) as i8;
            k.lo_mask[p] = 15;
            k.top[p] = j as i8;
            k.lo[8 + p] = (8 + j) as i8;
            k.hi_mask[8 + p] = 15;
            k.top[8 + p] = (4 + j) as i8;
        }
        p += 1;
    }
    k
};

/// `d · scale` and `−dmin · min` of each sub-block of two Q4_K/Q5_K
/// super-blocks, from their 16-byte heads (a zero head for a missing
/// second one gives zeros), lanes in [`super::act::K_LANE`] order: the
/// 6-bit fields are unpacked by byte shuffles rather than word arithmetic.
#[inline(always)]
unsafe fn k_pair_scales(head0: __m128i, head1: __m128i) -> (__m512, __m512) {
    let k = &K_SCALE_SHUFFLES;
    let both = |t: &[i8; 16]| _mm256_broadcastsi128_si256(_mm_loadu_si128(t.as_ptr() as *const _));
    let h = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(head0), head1);
    let lo = _mm256_shuffle_epi8(h, both(&k.lo));
    let top = _mm256_shuffle_epi8(h, both(&k.top));
    let packed = _mm256_or_si256(
        _mm256_or_si256(
            _mm256_and_si256(lo, both(&k.lo_mask)),
            _mm256_and_si256(_mm256_srli_epi16::<4>(lo), both(&k.hi_mask)),
        ),
        _mm256_and_si256(_mm256_srli_epi16::<2>(top), _mm256_set1_epi8(0x30)),
    );
    // [scales 0, mins 0 | scales 1, mins 1] → [scales 0, scales 1 | mins 0, mins 1].
    let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(packed);
    let scf = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(packed)));
    let mnf = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256::<1>(packed)));
    // d (bytes 0–1) and dmin (bytes 2–3) repeated over each half's 8 lanes.
    let d = _mm512_cvtph_ps(_mm256_shuffle_epi8(h, _mm256_set1_epi16(0x0100)));
    let dmin = _mm512_cvtph_ps(_mm256_shuffle_epi8(h, _mm256_set1_epi16(0x0302)));
    (
        _mm512_mul_ps(scf, d),
        _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(mnf, dmin)),
    )
}

/// A transpose table's six index vectors, loaded once per call.
#[inline(always)]
unsafe fn load_table(tab: &[[[i32; 16]; 2]; 3]) -> [[__m512i; 2]; 3] {
    std::array::from_fn(|k| {
        std::array::from_fn(|h| _mm512_loadu_si512(tab[k][h].as_ptr() as *const _))
    })
}

#[inline(always)]
unsafe fn transpose(mut x: [__m512i; 8], idx: &[[__m512i; 2]; 3]) -> [__m512i; 8] {
    for k in 0..3 {
        let mut y = [_mm512_setzero_si512(); 8];
        for v in 0..8 {
            let a = v & !(1 << k);
            let b = a | (1 << k);
            y[v] = _mm512_permutex2var_epi32(x[a], idx[k][(v >> k) & 1], x[b]);
        }
        x = y;
    }
    x
}

/// Q8_0 against up to 8 columns, 16 blocks at a time: the weights are
/// transposed once per group (so block `j`'s integer dot product collects in
/// lane `j`), offset to unsigned (`w + 128`, with `−128 Σx` as the starting
/// sum), and reused by every column.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q8_0_g<const N: usize>(
    tile: &GroupTile,
    bytes: usize,
    a: &[&[Q8Group]],
    acc: &mut [[[f32; 16]; 8]],
) {
    const BB: usize = 34;
    let offs = _mm512_setr_epi32(
        0, 34, 68, 102, 136, 170, 204, 238, 272, 306, 340, 374, 408, 442, 476, 510,
    );
    let flip = _mm512_set1_epi8(-128);
    let tq = load_table(&Q8_0_T);
    let mut tail = [0u8; 16 * BB];
    tile_rows::<N>(tile, bytes, acc, |w, nb, ahead, acc| {
        let ng = nb.div_ceil(16);
        for g in 0..ng {
            ahead.part(g, ng);
            let n = (nb - 16 * g).min(16);
            let src = if n == 16 {
                w.as_ptr().add(16 * g * BB)
            } else {
                tail[..n * BB].copy_from_slice(&w[16 * g * BB..(16 * g + n) * BB]);
                tail[n * BB..].fill(0);
                tail.as_ptr()
            };
            let mut v = [_mm512_setzero_si512(); 8];
            for (i, vi) in v.iter_mut().enumerate() {
                *vi = join(
                    load256(src.add(2 * i * BB + 2)),
                    load256(src.add((2 * i + 1) * BB + 2)),
                );
            }
            let v = transpose(v, &tq);
            let mut wu = [_mm512_setzero_si512(); 8];
            for d in 0..8 {
                wu[d] = _mm512_xor_si512(v[d], flip);
            }
            let dh = _mm512_i32gather_epi32::<1>(offs, src as *const _);
            let dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dh));
            for c in 0..N {
                let x = a[c].get_unchecked(g);
                let isum = _mm512_loadu_si512(x.isum.as_ptr() as *const _);
                // Two chains of four (vpdpbusd's latency, not its throughput, bounds one chain).
                let mut s0 = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<7>(isum));
                let mut s1 = _mm512_setzero_si512();
                for d in 0..4 {
                    let x0 = _mm512_loadu_si512(x.qs[d].as_ptr() as *const _);
                    let x1 = _mm512_loadu_si512(x.qs[d + 4].as_ptr() as *const _);
                    s0 = _mm512_dpbusd_epi32(s0, wu[d], x0);
                    s1 = _mm512_dpbusd_epi32(s1, wu[d + 4], x1);
                }
                let s = _mm512_add_epi32(s0, s1);
                let f = _mm512_mul_ps(dw, _mm512_loadu_ps(x.d.as_ptr()));
                acc[c] = _mm512_fmadd_ps(f, _mm512_cvtepi32_ps(s), acc[c]);
            }
        }
    });
}

/// Q4_K against up to 8 columns, two super-blocks (16 sub-blocks) at a time:
/// nibbles split and transposed once per group so sub-block `l`'s integer
/// dot product collects in lane `l`; then per column one multiply by
/// `d · scale · d_x` and the minimums as `−dmin · min · d_x Σx`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_k_g<const N: usize>(
    tile: &GroupTile,
    bytes: usize,
    a: &[&[Q8Group]],
    acc: &mut [[[f32; 16]; 8]],
) {
    const BB: usize = 144;
    let m4 = _mm512_set1_epi8(0x0f);
    let nib = |z: __m512i| {
        (
            _mm512_and_si512(z, m4),
            _mm512_and_si512(_mm512_srli_epi16::<4>(z), m4),
        )
    };
    tile_rows::<N>(tile, bytes, acc, |w, nb, ahead, acc| {
        let ng = nb.div_ceil(2);
        for g in 0..ng {
            ahead.part(g, ng);
            let b0 = w.as_ptr().add(2 * g * BB);
            let two = 2 * g + 1 < nb;
            let (a0, a1) = nib(_mm512_loadu_si512(b0.add(16) as *const _));
            let (a2, a3) = nib(_mm512_loadu_si512(b0.add(80) as *const _));
            let (v, head1) = if two {
                let b1 = b0.add(BB);
                let (b0q, b1q) = nib(_mm512_loadu_si512(b1.add(16) as *const _));
                let (b2q, b3q) = nib(_mm512_loadu_si512(b1.add(80) as *const _));
                (
                    [a0, a1, a2, a3, b0q, b1q, b2q, b3q],
                    _mm_loadu_si128(b1 as *const _),
                )
            } else {
                let z = _mm512_setzero_si512();
                ([a0, a1, a2, a3, z, z, z, z], _mm_setzero_si128())
            };
            let v = transpose_q4_k(v);
            let (dsc, nmin) = k_pair_scales(_mm_loadu_si128(b0 as *const _), head1);
            for c in 0..N {
                let x = a[c].get_unchecked(g);
                let (mut s0, mut s1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                for d in 0..4 {
                    let x0 = _mm512_loadu_si512(x.qs[d].as_ptr() as *const _);
                    let x1 = _mm512_loadu_si512(x.qs[d + 4].as_ptr() as *const _);
                    s0 = _mm512_dpbusd_epi32(s0, v[d], x0);
                    s1 = _mm512_dpbusd_epi32(s1, v[d + 4], x1);
                }
                let s = _mm512_add_epi32(s0, s1);
                let f = _mm512_mul_ps(dsc, _mm512_loadu_ps(x.d.as_ptr()));
                acc[c] = _mm512_fmadd_ps(f, _mm512_cvtepi32_ps(s), acc[c]);
                acc[c] = _mm512_fmadd_ps(nmin, _mm512_loadu_ps(x.sx.as_ptr()), acc[c]);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_scale_unpacking_equals_the_bytewise_one() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            let mut s = [0u8; 12];
            for b in s.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let (sc, mn) = k_scales_mins(&s);
            // SAFETY: 12 readable bytes; no CPU feature is involved.
            let (sw, mw) = unsafe { k_scales_mins_u64(s.as_ptr()) };
            assert_eq!(sw.to_le_bytes(), sc, "{s:?}");
            assert_eq!(mw.to_le_bytes(), mn, "{s:?}");
        }
    }
}
