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

use super::act::{Q8KBlock, Q8Pair};
use super::dequant::k_scales_mins;
use super::dot_avx2::{h2f, high_bits, hsum, nibbles};
use super::matmul::Kernel;
use super::GgmlType;

/// Kernel for `dtype`, if it has an AVX-512 path.
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VL and VNNI, and AVX2, FMA and F16C.
pub(super) unsafe fn kernel(dtype: GgmlType) -> Option<Kernel> {
    use GgmlType::*;
    Some(match dtype {
        Q4_0 => Kernel::Q8Pair(q4_0),
        Q4_1 => Kernel::Q8Pair(q4_1),
        Q5_0 => Kernel::Q8Pair(q5_0),
        Q8_0 => Kernel::Q8Pair(q8_0),
        Q4_K => Kernel::Q8K(q4_k),
        _ => return None,
    })
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

/// `a` in lanes 0..8, `b` in lanes 8..16.
#[inline(always)]
unsafe fn join_ps(a: f32, b: f32) -> __m512 {
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(
        _mm512_castps_pd(_mm512_set1_ps(a)),
        _mm256_castps_pd(_mm256_set1_ps(b)),
    ))
}

#[inline(always)]
unsafe fn dpbusd(u: __m512i, s: __m512i) -> __m512i {
    _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s)
}

macro_rules! dispatch {
    ($name:ident, $inner:ident, $act:ty, $bytes:expr) => {
        fn $name(w: &[u8], a: &[&[$act]], out: &mut [f32]) {
            let nb = w.len() / $bytes;
            // SAFETY: `kernel` hands these out only on CPUs with the features.
            unsafe {
                match a.len() {
                    1 => $inner::<1>(w, nb, a, out),
                    2 => $inner::<2>(w, nb, a, out),
                    3 => $inner::<3>(w, nb, a, out),
                    4 => $inner::<4>(w, nb, a, out),
                    n => unreachable!("{n} columns per call"),
                }
            }
        }
    };
}

dispatch!(q4_0, q4_0_n, Q8Pair, 18);
dispatch!(q4_1, q4_1_n, Q8Pair, 20);
dispatch!(q5_0, q5_0_n, Q8Pair, 22);
dispatch!(q8_0, q8_0_n, Q8Pair, 34);
dispatch!(q4_k, q4_k_n, Q8KBlock, 144);

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_0_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8Pair]], out: &mut [f32]) {
    // w = d · (q − 8): Σ q·x by VNNI, minus 8 · Σx per block (exact in i32).
    let mut acc = [_mm512_setzero_ps(); N];
    for p in 0..nb.div_ceil(2) {
        let b0 = w.as_ptr().add(2 * p * 18);
        let second = 2 * p + 1 < nb;
        let (wq, dw) = if second {
            let b1 = b0.add(18);
            (
                join(nibbles(b0.add(2)), nibbles(b1.add(2))),
                join_ps(h2f(b0), h2f(b1)),
            )
        } else {
            (
                join(nibbles(b0.add(2)), _mm256_setzero_si256()),
                join_ps(h2f(b0), 0.0),
            )
        };
        for c in 0..N {
            let x = a[c].get_unchecked(p);
            let corr = _mm512_mask_set1_epi32(_mm512_setzero_si512(), 0x0001, 8 * x.isum[0]);
            let corr = _mm512_mask_set1_epi32(corr, 0x0100, 8 * x.isum[1]);
            let xq = _mm512_loadu_si512(x.qs.as_ptr() as *const _);
            let pr = _mm512_sub_epi32(dpbusd(wq, xq), corr);
            let s = _mm512_mul_ps(dw, _mm512_loadu_ps(x.d.as_ptr()));
            acc[c] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(pr), acc[c]);
        }
    }
    for c in 0..N {
        out[c] = _mm512_reduce_add_ps(acc[c]);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_1_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8Pair]], out: &mut [f32]) {
    // w = d · q + m: Σ q·x by VNNI; the minimum adds m · (d_x Σ x) = m · s.
    let mut acc = [_mm512_setzero_ps(); N];
    let mut mins = [[0f32; 2]; N];
    for p in 0..nb.div_ceil(2) {
        let b0 = w.as_ptr().add(2 * p * 20);
        let second = 2 * p + 1 < nb;
        let (wq, dw, m1) = if second {
            let b1 = b0.add(20);
            (
                join(nibbles(b0.add(4)), nibbles(b1.add(4))),
                join_ps(h2f(b0), h2f(b1)),
                h2f(b1.add(2)),
            )
        } else {
            (
                join(nibbles(b0.add(4)), _mm256_setzero_si256()),
                join_ps(h2f(b0), 0.0),
                0.0,
            )
        };
        let m0 = h2f(b0.add(2));
        for c in 0..N {
            let x = a[c].get_unchecked(p);
            let xq = _mm512_loadu_si512(x.qs.as_ptr() as *const _);
            let s = _mm512_mul_ps(dw, _mm512_loadu_ps(x.d.as_ptr()));
            acc[c] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(dpbusd(wq, xq)), acc[c]);
            mins[c][0] += m0 * x.s[0];
            mins[c][1] += m1 * x.s[1];
        }
    }
    for c in 0..N {
        out[c] = _mm512_reduce_add_ps(acc[c]) + mins[c][0] + mins[c][1];
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q5_0_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8Pair]], out: &mut [f32]) {
    // w = d · (q − 16), q = nibble | fifth bit << 4: Σ q·x by VNNI, minus
    // 16 · Σx per block (exact in i32).
    let q5 = |b: *const u8| {
        let qh = (b.add(2) as *const u32).read_unaligned();
        _mm256_or_si256(nibbles(b.add(6)), high_bits(qh))
    };
    let mut acc = [_mm512_setzero_ps(); N];
    for p in 0..nb.div_ceil(2) {
        let b0 = w.as_ptr().add(2 * p * 22);
        let (wq, dw) = if 2 * p + 1 < nb {
            let b1 = b0.add(22);
            (join(q5(b0), q5(b1)), join_ps(h2f(b0), h2f(b1)))
        } else {
            (join(q5(b0), _mm256_setzero_si256()), join_ps(h2f(b0), 0.0))
        };
        for c in 0..N {
            let x = a[c].get_unchecked(p);
            let corr = _mm512_mask_set1_epi32(_mm512_setzero_si512(), 0x0001, 16 * x.isum[0]);
            let corr = _mm512_mask_set1_epi32(corr, 0x0100, 16 * x.isum[1]);
            let xq = _mm512_loadu_si512(x.qs.as_ptr() as *const _);
            let pr = _mm512_sub_epi32(dpbusd(wq, xq), corr);
            let s = _mm512_mul_ps(dw, _mm512_loadu_ps(x.d.as_ptr()));
            acc[c] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(pr), acc[c]);
        }
    }
    for c in 0..N {
        out[c] = _mm512_reduce_add_ps(acc[c]);
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
                join_ps(h2f(b0), h2f(b1)),
            )
        } else {
            (
                join(load256(b0.add(2)), _mm256_setzero_si256()),
                join_ps(h2f(b0), 0.0),
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
    // multiply by d · d_x; the minimums use the activations' 16-element sums.
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm512_setzero_ps(); N];
    let mut macc = [0f32; N];
    for i in 0..nb {
        let b = w.as_ptr().add(i * 144);
        let (d, dmin) = (h2f(b), h2f(b.add(2)));
        let (sc, mn) = k_scales_mins(std::slice::from_raw_parts(b.add(4), 12));
        let qs = b.add(16);
        let mut wq = [_mm512_setzero_si512(); 4];
        let mut sv = [_mm512_setzero_si512(); 4];
        for k in 0..4 {
            let raw = load256(qs.add(32 * k));
            wq[k] = join(
                _mm256_and_si256(raw, m4),
                _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m4),
            );
            sv[k] = join(
                _mm256_set1_epi32(sc[2 * k] as i32),
                _mm256_set1_epi32(sc[2 * k + 1] as i32),
            );
        }
        let mins16 = _mm256_set_epi16(
            mn[7] as i16,
            mn[7] as i16,
            mn[6] as i16,
            mn[6] as i16,
            mn[5] as i16,
            mn[5] as i16,
            mn[4] as i16,
            mn[4] as i16,
            mn[3] as i16,
            mn[3] as i16,
            mn[2] as i16,
            mn[2] as i16,
            mn[1] as i16,
            mn[1] as i16,
            mn[0] as i16,
            mn[0] as i16,
        );
        for c in 0..N {
            let x = a[c].get_unchecked(i);
            let xp = x.qs.as_ptr() as *const u8;
            let mut isum = _mm512_setzero_si512();
            for k in 0..4 {
                let xq = _mm512_loadu_si512(xp.add(64 * k) as *const _);
                isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(dpbusd(wq[k], xq), sv[k]));
            }
            acc[c] = _mm512_fmadd_ps(_mm512_set1_ps(d * x.d), _mm512_cvtepi32_ps(isum), acc[c]);
            let bs = _mm256_loadu_si256(x.bsums.as_ptr() as *const __m256i);
            let m = _mm256_madd_epi16(bs, mins16);
            macc[c] += dmin * x.d * hsum(_mm256_cvtepi32_ps(m));
        }
    }
    for c in 0..N {
        out[c] = _mm512_reduce_add_ps(acc[c]) - macc[c];
    }
}
