//! The AVX-512 VNNI kernels over packed weights (see [`super::pack`]): a
//! tile of up to 2 panels (32 rows) × 6 columns kept in registers — 12 float
//! sums, 12 integer sums of the current block — so each 64-byte weight vector
//! is loaded once for 6 columns and each broadcast activation word feeds
//! both panels; a single column (decode) takes 4 panels a tile, four
//! streams of weights in flight at once. Per block and tile: 8 × P × N
//! `vpdpbusd`, and per panel and column a convert, a multiply by the
//! column's scale and a multiply-add by the rows' scales (one more for the
//! offsets of asymmetric formats; Q6_K's 16-element scales take the block
//! as two halves). The 4- and 5-bit formats'
//! weights come as nibbles, split with two ANDs and a shift, and fifth bits
//! added under a mask; f16 scales are widened with one convert a vector,
//! 8-bit sub-scales with two and a multiply by their super-block's factor
//! (see [`super::pack::PackForm`]).

#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::dequant::QK;
use super::pack::{
    scale_vec, weight_bytes, GemmAct, GemmFn, PackForm, PackKind, FACTOR_VEC, FIFTH_BITS, PANEL,
    SUPER,
};

const SYM: u8 = 0;
const ASYM: u8 = 1;
const HALF: u8 = 2;

/// How far ahead of its reads each panel's stream asks for its weights
/// (into L2). A decode step's products are small (0.1–1 MB), each panel a
/// short run of a few kilobytes, and one core's hardware prefetchers keep
/// too few lines in flight over them: on a Zen 4 VM one thread read packed
/// weights from DRAM at 8–13 GiB/s against 25 for a plain sum, and 12–16
/// asking 2 KB ahead (BENCHMARKS.md, "Packed weights asked for ahead").
const PREFETCH_BYTES: usize = 2048;

/// The kernel for `p` panels (1 or 2; 4 for one column) × `n` columns
/// (1..=6).
pub(super) fn kernel(form: PackForm, p: usize, n: usize) -> GemmFn {
    macro_rules! by_n {
        (4, $a:expr, $bits:literal, $sub:literal) => {
            tile::<4, 1, $a, $bits, $sub>
        };
        ($p:literal, $a:expr, $bits:literal, $sub:literal) => {
            match n {
                1 => tile::<$p, 1, $a, $bits, $sub>,
                2 => tile::<$p, 2, $a, $bits, $sub>,
                3 => tile::<$p, 3, $a, $bits, $sub>,
                4 => tile::<$p, 4, $a, $bits, $sub>,
                5 => tile::<$p, 5, $a, $bits, $sub>,
                _ => tile::<$p, 6, $a, $bits, $sub>,
            }
        };
    }
    macro_rules! by_bits {
        ($p:literal, $a:expr, $sub:literal) => {
            match form.bits {
                4 => by_n!($p, $a, 4, $sub),
                5 => by_n!($p, $a, 5, $sub),
                _ => by_n!($p, $a, 8, $sub),
            }
        };
    }
    // The forms there are (PackForm::of): f16 scales for Q4_0, Q5_0, Q8_0
    // and IQ4_NL (symmetric) and Q4_1, Q5_1 (asymmetric); sub-scales for
    // IQ4_XS (symmetric, 8-bit), Q4_K, Q5_K (asymmetric) and Q6_K (halves).
    debug_assert!(p != 4 || n == 1);
    match (p, form.kind, form.sub) {
        (4, PackKind::Sym(_), false) => by_bits!(4, SYM, false),
        (4, PackKind::Sym(_), true) => by_n!(4, SYM, 8, true),
        (4, PackKind::Asym, false) => by_bits!(4, ASYM, false),
        (4, PackKind::Asym, true) => by_bits!(4, ASYM, true),
        (4, PackKind::Half(_), _) => by_n!(4, HALF, 8, true),
        (1, PackKind::Sym(_), false) => by_bits!(1, SYM, false),
        (1, PackKind::Sym(_), true) => by_n!(1, SYM, 8, true),
        (1, PackKind::Asym, false) => by_bits!(1, ASYM, false),
        (1, PackKind::Asym, true) => by_bits!(1, ASYM, true),
        (1, PackKind::Half(_), _) => by_n!(1, HALF, 8, true),
        (_, PackKind::Sym(_), false) => by_bits!(2, SYM, false),
        (_, PackKind::Sym(_), true) => by_n!(2, SYM, 8, true),
        (_, PackKind::Asym, false) => by_bits!(2, ASYM, false),
        (_, PackKind::Asym, true) => by_bits!(2, ASYM, true),
        (_, PackKind::Half(_), _) => by_n!(2, HALF, 8, true),
    }
}

/// Sixteen rows' scales (or offsets) at `at`: f16 (32-byte aligned), or
/// 8-bit sub-scales (16-byte aligned) times their super-block's `factor`.
///
/// # Safety
/// AVX-512 F (inlined into [`tile`], which enables it); `at` is aligned as
/// said and holds the 32 or 16 bytes.
#[inline(always)]
unsafe fn load_scales<const SUB: bool>(at: *const u8, factor: __m512) -> __m512 {
    if SUB {
        let s = _mm512_cvtepi8_epi32(_mm_load_si128(at as *const __m128i));
        _mm512_mul_ps(_mm512_cvtepi32_ps(s), factor)
    } else {
        _mm512_cvtph_ps(_mm256_load_si256(at as *const __m256i))
    }
}

/// # Safety
/// AVX-512 F/BW/VL/VNNI; `w` holds `P` panels of `nb` blocks, `panel_bytes`
/// apart, 64-byte aligned, in the form `K`, `BITS`, `SUB` names; `a` has `N`
/// columns of at least `nb` blocks; `out` has `P × N` entries.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn tile<const P: usize, const N: usize, const K: u8, const BITS: u8, const SUB: bool>(
    w: &[u8],
    panel_bytes: usize,
    nb: usize,
    z: i32,
    a: &[&[GemmAct]],
    out: &mut [[f32; PANEL]],
    prefetch: bool,
) {
    debug_assert!(a.len() == N && out.len() == P * N && w.len() >= P * panel_bytes);
    // Nibbles (PackForm): four vectors of weights a block, not eight, then
    // for 5-bit formats eight masks of fifth bits.
    let wbytes = weight_bytes(BITS);
    let nib = BITS != 8;
    // Every block's scales follow every block's weights, and the
    // super-blocks' factors follow them (pack.rs).
    let sv = scale_vec(SUB);
    let vecs = if K == SYM { 1 } else { 2 };
    let sb = vecs * sv;
    let (scales, factors) = (nb * wbytes, nb * (wbytes + sb));
    let mut factor = [[_mm512_setzero_ps(); 2]; P];
    let low = _mm512_set1_epi8(0x0f);
    let sixteen = _mm512_set1_epi8(0x10);
    let mut acc = [[_mm512_setzero_ps(); N]; P];
    let cols: [*const GemmAct; N] = std::array::from_fn(|c| a[c].as_ptr());
    let wp = w.as_ptr();
    let ahead = PREFETCH_BYTES / wbytes;
    for b in 0..nb {
        let blk: [*const u8; P] = std::array::from_fn(|p| wp.add(p * panel_bytes + b * wbytes));
        let sc: [*const u8; P] = std::array::from_fn(|p| wp.add(p * panel_bytes + scales + b * sb));
        if prefetch {
            // Block b + ahead of each panel (past the end: of the panels
            // after this tile's, which the caller's next tile reads). Only
            // an address: a prefetch never faults, so it may point past `w`.
            let (bb, skip) = if b + ahead < nb {
                (b + ahead, 0)
            } else {
                (b + ahead - nb, P * panel_bytes)
            };
            for p in 0..P {
                let at = wp.wrapping_add(p * panel_bytes + skip);
                for line in (0..wbytes).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(bb * wbytes + line) as *const i8);
                }
                _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(scales + bb * sb) as *const i8);
            }
        }
        if SUB && b % SUPER == 0 {
            for p in 0..P {
                let at = wp.add(p * panel_bytes + factors + b / SUPER * vecs * FACTOR_VEC);
                for v in 0..vecs {
                    let h = _mm256_load_si256(at.add(v * FACTOR_VEC) as *const __m256i);
                    factor[p][v] = _mm512_cvtph_ps(h);
                }
            }
        }
        // A half-scaled block (Q6_K) runs as two halves of four steps, each
        // with its own starting sums and row scales; the others as one.
        let halves = if K == HALF { 2 } else { 1 };
        for half in 0..halves {
            let mut isum = [[_mm512_setzero_si512(); N]; P];
            if K != ASYM {
                for c in 0..N {
                    let x = &*cols[c].add(b);
                    let start = -z
                        * match (K, half) {
                            (HALF, 0) => x.ihalf,
                            (HALF, _) => x.isum - x.ihalf,
                            _ => x.isum,
                        };
                    let zi = _mm512_set1_epi32(start);
                    for p in 0..P {
                        isum[p][c] = zi;
                    }
                }
            }
            if nib {
                // Vector k's low nibbles are elements 4k..4k+4 of each row,
                // its high nibbles elements 4(k+4)..4(k+4)+4.
                for k in 0..QK / 8 {
                    let v: [__m512i; P] =
                        std::array::from_fn(|p| _mm512_load_si512(blk[p].add(64 * k) as *const _));
                    let mut lo: [__m512i; P] = std::array::from_fn(|p| _mm512_and_si512(v[p], low));
                    let mut hi: [__m512i; P] = std::array::from_fn(|p| {
                        _mm512_and_si512(_mm512_srli_epi16::<4>(v[p]), low)
                    });
                    if BITS == 5 {
                        for p in 0..P {
                            let plane = blk[p].add(FIFTH_BITS) as *const u64;
                            let (ml, mh) = (plane.add(k).read(), plane.add(k + 4).read());
                            lo[p] = _mm512_mask_add_epi8(lo[p], ml, lo[p], sixteen);
                            hi[p] = _mm512_mask_add_epi8(hi[p], mh, hi[p], sixteen);
                        }
                    }
                    for c in 0..N {
                        let xq = (*cols[c].add(b)).qs.as_ptr() as *const i32;
                        let xl = _mm512_set1_epi32(xq.add(k).read_unaligned());
                        let xh = _mm512_set1_epi32(xq.add(k + 4).read_unaligned());
                        for p in 0..P {
                            isum[p][c] = _mm512_dpbusd_epi32(isum[p][c], lo[p], xl);
                            isum[p][c] = _mm512_dpbusd_epi32(isum[p][c], hi[p], xh);
                        }
                    }
                }
            }
            let steps = if nib { 0 } else { QK / 4 / halves };
            for d in half * steps..(half + 1) * steps {
                let wv: [__m512i; P] =
                    std::array::from_fn(|p| _mm512_load_si512(blk[p].add(64 * d) as *const _));
                for c in 0..N {
                    let xq = (*cols[c].add(b)).qs.as_ptr().add(4 * d) as *const i32;
                    let xb = _mm512_set1_epi32(xq.read_unaligned());
                    for p in 0..P {
                        isum[p][c] = _mm512_dpbusd_epi32(isum[p][c], wv[p], xb);
                    }
                }
            }
            let dw: [__m512; P] =
                std::array::from_fn(|p| load_scales::<SUB>(sc[p].add(sv * half), factor[p][half]));
            for c in 0..N {
                let dx = _mm512_set1_ps((*cols[c].add(b)).d);
                for p in 0..P {
                    let t = _mm512_mul_ps(_mm512_cvtepi32_ps(isum[p][c]), dx);
                    acc[p][c] = _mm512_fmadd_ps(t, dw[p], acc[p][c]);
                }
            }
        }
        if K == ASYM {
            let mw: [__m512; P] =
                std::array::from_fn(|p| load_scales::<SUB>(sc[p].add(sv), factor[p][1]));
            for c in 0..N {
                let sx = _mm512_set1_ps((*cols[c].add(b)).sx);
                for p in 0..P {
                    acc[p][c] = _mm512_fmadd_ps(mw[p], sx, acc[p][c]);
                }
            }
        }
    }
    for p in 0..P {
        for c in 0..N {
            _mm512_storeu_ps(out[p * N + c].as_mut_ptr(), acc[p][c]);
        }
    }
}
