//! AVX2 + FMA + F16C dot products: one weight row against up to four
//! activation columns, each weight block loaded and unpacked once for all
//! of them. Integer block sums are exact (maddubs/madd in i16/i32 cannot
//! overflow for these value ranges); only the float accumulation order
//! differs from the scalar reference.
//!
//! The functions here are handed out only by [`kernel`], whose caller has
//! checked that the CPU has AVX2, FMA and F16C.

// Block formats are index arithmetic; explicit index loops read closest to the layouts.
#![allow(clippy::needless_range_loop)]
#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use super::act::{Q8Block, Q8KBlock};
use super::dequant::{k_scales_mins, IQ4NL_VALUES};
use super::matmul::Kernel;
use super::GgmlType;

/// Kernel for `dtype`, if it has an AVX2 path.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
pub(super) unsafe fn kernel(dtype: GgmlType) -> Option<Kernel> {
    use GgmlType::*;
    Some(match dtype {
        Q4_0 => Kernel::Q8(q4_0),
        Q4_1 => Kernel::Q8(q4_1),
        Q5_0 => Kernel::Q8(q5_0),
        Q5_1 => Kernel::Q8(q5_1),
        Q8_0 => Kernel::Q8(q8_0),
        IQ4_NL => Kernel::Q8(iq4_nl),
        Q4_K => Kernel::Q8K(q4_k),
        Q5_K => Kernel::Q8K(q5_k),
        Q6_K => Kernel::Q8K(q6_k),
        Q2_K => Kernel::Q8K(q2_k),
        Q3_K => Kernel::Q8K(q3_k),
        IQ4_XS => Kernel::Q8K(iq4_xs),
        Q8_K => Kernel::Q8K(q8_k),
        F32 => Kernel::F32(f32_dot),
        F16 => Kernel::F32(f16_dot),
        BF16 => Kernel::F32(bf16_dot),
        _ => return None,
    })
}

#[inline(always)]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// The f16 at `p` as f32. The zero-extended word passes an empty `asm!`
/// first, so it reaches `vcvtph2ps` as a whole register: otherwise LLVM sees
/// that only lane 0 matters and merges the word into whatever register is
/// free (`vpinsrw $0, mem, %xmm_acc`), which chained each block's scale to
/// the previous block's accumulator (Q4_1 B=1 ran at 17 cycles per block
/// pair).
#[inline(always)]
pub(super) unsafe fn h2f(p: *const u8) -> f32 {
    let h = (p as *const u16).read_unaligned();
    let mut v = _mm_cvtsi32_si128(h as i32);
    std::arch::asm!("/* {0} */", inout(xmm_reg) v, options(pure, nomem, nostack, preserves_flags));
    _mm_cvtss_f32(_mm_cvtph_ps(v))
}

/// 16 packed nibble bytes → 32 bytes: low nibbles (elements 0..15) in the
/// low lane, high nibbles (elements 16..31) in the high lane.
#[inline(always)]
pub(super) unsafe fn nibbles(p: *const u8) -> __m256i {
    let raw = _mm_loadu_si128(p as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(raw), raw);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// 32 bits → 32 bytes, 0x10 where the bit is set.
#[inline(always)]
pub(super) unsafe fn high_bits(qh: u32) -> __m256i {
    let shuf = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0,
    );
    let bits = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
    let v = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), shuf);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(v, bits), bits);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Σ u8 × i8 over 32 bytes, as 8 i32 lanes.
#[inline(always)]
unsafe fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// Σ i8 × i8 over 32 bytes, as 8 i32 lanes.
#[inline(always)]
unsafe fn dot_i8_i8(w: __m256i, s: __m256i) -> __m256i {
    dot_u8_i8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(s, w))
}

#[inline(always)]
unsafe fn load(p: *const i8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

#[inline(always)]
unsafe fn lane0(v: i32) -> __m256i {
    _mm256_set_epi32(0, 0, 0, 0, 0, 0, 0, v)
}

/// Runs `$body` for every block `i` with accumulator slot `k` alternating
/// 0/1, so consecutive blocks' FMAs do not wait on each other.
macro_rules! pairs {
    ($nb:expr, |$i:ident, $k:ident| $body:block) => {{
        let mut base = 0;
        while base + 1 < $nb {
            {
                let $i = base;
                let $k = 0usize;
                $body
            }
            {
                let $i = base + 1;
                let $k = 1usize;
                $body
            }
            base += 2;
        }
        if base < $nb {
            let $i = base;
            let $k = 0usize;
            $body
        }
    }};
}

/// Checks lengths once per call (blocks of `bs` bytes), then runs `f::<N>`.
macro_rules! entry {
    ($name:ident, $imp:ident, $act:ty, $bs:expr) => {
        fn $name(w: &[u8], a: &[&[$act]], out: &mut [f32]) {
            assert!(w.len() % $bs == 0 && !a.is_empty() && a.len() <= 4 && out.len() >= a.len());
            let nb = w.len() / $bs;
            assert!(a.iter().all(|x| x.len() >= nb));
            // SAFETY: `kernel` only hands this out when AVX2/FMA/F16C are present;
            // lengths are checked above.
            unsafe {
                match a.len() {
                    1 => $imp::<1>(w, nb, a, out),
                    2 => $imp::<2>(w, nb, a, out),
                    3 => $imp::<3>(w, nb, a, out),
                    _ => $imp::<4>(w, nb, a, out),
                }
            }
        }
    };
}

entry!(q4_0, q4_0_n, Q8Block, 18);
entry!(q4_1, q4_1_n, Q8Block, 20);
entry!(q5_0, q5_0_n, Q8Block, 22);
entry!(q5_1, q5_1_n, Q8Block, 24);
entry!(q8_0, q8_0_n, Q8Block, 34);
entry!(iq4_nl, iq4_nl_n, Q8Block, 18);
entry!(q4_k, q4_k_n, Q8KBlock, 144);
entry!(q5_k, q5_k_n, Q8KBlock, 176);
entry!(q6_k, q6_k_n, Q8KBlock, 210);
entry!(q2_k, q2_k_n, Q8KBlock, 84);
entry!(q3_k, q3_k_n, Q8KBlock, 110);
entry!(iq4_xs, iq4_xs_n, Q8KBlock, 136);
entry!(q8_k, q8_k_n, Q8KBlock, 292);

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8Block]], out: &mut [f32]) {
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    pairs!(nb, |i, k| {
        let b = w.as_ptr().add(i * 18);
        let dw = h2f(b);
        let q = nibbles(b.add(2));
        for c in 0..N {
            let x = a[c].get_unchecked(i);
            let p = _mm256_sub_epi32(dot_u8_i8(q, load(x.qs.as_ptr())), lane0(8 * x.isum));
            acc[c][k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * x.d), _mm256_cvtepi32_ps(p), acc[c][k]);
        }
    });
    for c in 0..N {
        out[c] = hsum(_mm256_add_ps(acc[c][0], acc[c][1]));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8Block]], out: &mut [f32]) {
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    let mut mins = [0f32; N];
    pairs!(nb, |i, k| {
        let b = w.as_ptr().add(i * 20);
        let (dw, mw) = (h2f(b), h2f(b.add(2)));
        let q = nibbles(b.add(4));
        for c in 0..N {
            let x = a[c].get_unchecked(i);
            let p = dot_u8_i8(q, load(x.qs.as_ptr()));
            acc[c][k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * x.d), _mm256_cvtepi32_ps(p), acc[c][k]);
            mins[c] += mw * x.s;
        }
    });
    for c in 0..N {
        out[c] = hsum(_mm256_add_ps(acc[c][0], acc[c][1])) + mins[c];
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_0_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8Block]], out: &mut [f32]) {
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    pairs!(nb, |i, k| {
        let b = w.as_ptr().add(i * 22);
        let dw = h2f(b);
        let qh = (b.add(2) as *const u32).read_unaligned();
        let q = _mm256_or_si256(nibbles(b.add(6)), high_bits(qh));
        for c in 0..N {
            let x = a[c].get_unchecked(i);
            let p = _mm256_sub_epi32(dot_u8_i8(q, load(x.qs.as_ptr())), lane0(16 * x.isum));
            acc[c][k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * x.d), _mm256_cvtepi32_ps(p), acc[c][k]);
        }
    });
    for c in 0..N {
        out[c] = hsum(_mm256_add_ps(acc[c][0], acc[c][1]));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_1_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8Block]], out: &mut [f32]) {
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    let mut mins = [0f32; N];
    pairs!(nb, |i, k| {
        let b = w.as_ptr().add(i * 24);
        let (dw, mw) = (h2f(b), h2f(b.add(2)));
        let qh = (b.add(4) as *const u32).read_unaligned();
        let q = _mm256_or_si256(nibbles(b.add(8)), high_bits(qh));
        for c in 0..N {
            let x = a[c].get_unchecked(i);
            let p = dot_u8_i8(q, load(x.qs.as_ptr()));
            acc[c][k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * x.d), _mm256_cvtepi32_ps(p), acc[c][k]);
            mins[c] += mw * x.s;
        }
    });
    for c in 0..N {
        out[c] = hsum(_mm256_add_ps(acc[c][0], acc[c][1])) + mins[c];
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8Block]], out: &mut [f32]) {
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    pairs!(nb, |i, k| {
        let b = w.as_ptr().add(i * 34);
        let dw = h2f(b);
        let q = load(b.add(2) as *const i8);
        let aq = _mm256_sign_epi8(q, q);
        for c in 0..N {
            let x = a[c].get_unchecked(i);
            let p = dot_u8_i8(aq, _mm256_sign_epi8(load(x.qs.as_ptr()), q));
            acc[c][k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * x.d), _mm256_cvtepi32_ps(p), acc[c][k]);
        }
    });
    for c in 0..N {
        out[c] = hsum(_mm256_add_ps(acc[c][0], acc[c][1]));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq4_nl_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8Block]], out: &mut [f32]) {
    let table =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(IQ4NL_VALUES.as_ptr() as *const __m128i));
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    pairs!(nb, |i, k| {
        let b = w.as_ptr().add(i * 18);
        let dw = h2f(b);
        let q = _mm256_shuffle_epi8(table, nibbles(b.add(2)));
        for c in 0..N {
            let x = a[c].get_unchecked(i);
            let p = dot_i8_i8(q, load(x.qs.as_ptr()));
            acc[c][k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * x.d), _mm256_cvtepi32_ps(p), acc[c][k]);
        }
    });
    for c in 0..N {
        out[c] = hsum(_mm256_add_ps(acc[c][0], acc[c][1]));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8KBlock]], out: &mut [f32]) {
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut macc = [_mm256_setzero_ps(); N];
    for i in 0..nb {
        let b = w.as_ptr().add(i * 144);
        let (d, dmin) = (h2f(b), h2f(b.add(2)));
        let (sc, mn) = k_scales_mins(std::slice::from_raw_parts(b.add(4), 12));
        // Each min applies to two 16-element block sums.
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
        let mut q = [_mm256_setzero_si256(); 8];
        let mut s = [_mm256_setzero_si256(); 8];
        for j in 0..4 {
            let raw = _mm256_loadu_si256(b.add(16 + 32 * j) as *const __m256i);
            q[2 * j] = _mm256_and_si256(raw, m4);
            q[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m4);
            s[2 * j] = _mm256_set1_epi16(sc[2 * j] as i16);
            s[2 * j + 1] = _mm256_set1_epi16(sc[2 * j + 1] as i16);
        }
        for c in 0..N {
            let x = a[c].get_unchecked(i);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..8 {
                let p = _mm256_maddubs_epi16(q[j], load(x.qs.as_ptr().add(32 * j)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s[j]));
            }
            let bs = _mm256_loadu_si256(x.bsums.as_ptr() as *const __m256i);
            let msum = _mm256_madd_epi16(bs, mins16);
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(sumi), acc[c]);
            macc[c] = _mm256_fmadd_ps(
                _mm256_set1_ps(dmin * x.d),
                _mm256_cvtepi32_ps(msum),
                macc[c],
            );
        }
    }
    for c in 0..N {
        out[c] = hsum(acc[c]) - hsum(macc[c]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_k_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8KBlock]], out: &mut [f32]) {
    let m4 = _mm256_set1_epi8(0x0f);
    let one = _mm256_set1_epi8(1);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut macc = [_mm256_setzero_ps(); N];
    for i in 0..nb {
        let b = w.as_ptr().add(i * 176);
        let (d, dmin) = (h2f(b), h2f(b.add(2)));
        let (sc, mn) = k_scales_mins(std::slice::from_raw_parts(b.add(4), 12));
        // Each min applies to two 16-element block sums.
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
        let hb = _mm256_loadu_si256(b.add(16) as *const __m256i);
        let mut q = [_mm256_setzero_si256(); 8];
        let mut s = [_mm256_setzero_si256(); 8];
        for j in 0..4 {
            let raw = _mm256_loadu_si256(b.add(48 + 32 * j) as *const __m256i);
            let h_lo = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * j as i32)), one);
            let h_hi = _mm256_and_si256(
                _mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * j as i32 + 1)),
                one,
            );
            q[2 * j] = _mm256_or_si256(_mm256_and_si256(raw, m4), _mm256_slli_epi16::<4>(h_lo));
            q[2 * j + 1] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m4),
                _mm256_slli_epi16::<4>(h_hi),
            );
            s[2 * j] = _mm256_set1_epi16(sc[2 * j] as i16);
            s[2 * j + 1] = _mm256_set1_epi16(sc[2 * j + 1] as i16);
        }
        for c in 0..N {
            let x = a[c].get_unchecked(i);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..8 {
                let p = _mm256_maddubs_epi16(q[j], load(x.qs.as_ptr().add(32 * j)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s[j]));
            }
            let bs = _mm256_loadu_si256(x.bsums.as_ptr() as *const __m256i);
            let msum = _mm256_madd_epi16(bs, mins16);
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(sumi), acc[c]);
            macc[c] = _mm256_fmadd_ps(
                _mm256_set1_ps(dmin * x.d),
                _mm256_cvtepi32_ps(msum),
                macc[c],
            );
        }
    }
    for c in 0..N {
        out[c] = hsum(acc[c]) - hsum(macc[c]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8KBlock]], out: &mut [f32]) {
    let m4 = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(3);
    let mut acc = [_mm256_setzero_ps(); N];
    for i in 0..nb {
        let b = w.as_ptr().add(i * 210);
        let d = h2f(b.add(208));
        let sc = std::slice::from_raw_parts(b.add(192) as *const i8, 16);
        let mut q = [_mm256_setzero_si256(); 8];
        let mut s = [_mm256_setzero_si256(); 8];
        for h in 0..2 {
            let ql0 = _mm256_loadu_si256(b.add(64 * h) as *const __m256i);
            let ql1 = _mm256_loadu_si256(b.add(64 * h + 32) as *const __m256i);
            let qh = _mm256_loadu_si256(b.add(128 + 32 * h) as *const __m256i);
            let hi = |v: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(v, m2));
            q[4 * h] = _mm256_or_si256(_mm256_and_si256(ql0, m4), hi(qh));
            q[4 * h + 1] =
                _mm256_or_si256(_mm256_and_si256(ql1, m4), hi(_mm256_srli_epi16::<2>(qh)));
            q[4 * h + 2] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                hi(_mm256_srli_epi16::<4>(qh)),
            );
            q[4 * h + 3] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                hi(_mm256_srli_epi16::<6>(qh)),
            );
        }
        for (k, sk) in s.iter_mut().enumerate() {
            *sk = _mm256_set_m128i(
                _mm_set1_epi16(sc[2 * k + 1] as i16),
                _mm_set1_epi16(sc[2 * k] as i16),
            );
        }
        for c in 0..N {
            let x = a[c].get_unchecked(i);
            let mut sumi = _mm256_setzero_si256();
            for k in 0..8 {
                let p = _mm256_maddubs_epi16(q[k], load(x.qs.as_ptr().add(32 * k)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s[k]));
            }
            let mut corr = 0i32;
            for g in 0..16 {
                corr += sc[g] as i32 * x.bsums[g] as i32;
            }
            sumi = _mm256_sub_epi32(sumi, lane0(32 * corr));
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(sumi), acc[c]);
        }
    }
    for c in 0..N {
        out[c] = hsum(acc[c]);
    }
}

/// Two 16-element groups' scales in the low and high 128-bit lanes.
#[inline(always)]
unsafe fn lane_scales(lo: i16, hi: i16) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo))
}

/// Q2_K and Q3_K share the 2-bit layout: 32 bytes per 128 elements, four
/// shifts; vector `4h + s` holds elements `128h + 32s .. +32`.
#[inline(always)]
unsafe fn two_bit_planes(qs: *const u8) -> [__m256i; 8] {
    let m3 = _mm256_set1_epi8(3);
    let mut q = [_mm256_setzero_si256(); 8];
    for h in 0..2 {
        let raw = _mm256_loadu_si256(qs.add(32 * h) as *const __m256i);
        q[4 * h] = _mm256_and_si256(raw, m3);
        q[4 * h + 1] = _mm256_and_si256(_mm256_srli_epi16::<2>(raw), m3);
        q[4 * h + 2] = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m3);
        q[4 * h + 3] = _mm256_and_si256(_mm256_srli_epi16::<6>(raw), m3);
    }
    q
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q2_k_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8KBlock]], out: &mut [f32]) {
    let mut acc = [_mm256_setzero_ps(); N];
    let mut macc = [_mm256_setzero_ps(); N];
    for i in 0..nb {
        let b = w.as_ptr().add(i * 84);
        let (d, dmin) = (h2f(b.add(80)), h2f(b.add(82)));
        let sc = std::slice::from_raw_parts(b, 16);
        let q = two_bit_planes(b.add(16));
        let s: [__m256i; 8] = std::array::from_fn(|k| {
            lane_scales((sc[2 * k] & 0x0f) as i16, (sc[2 * k + 1] & 0x0f) as i16)
        });
        let mins16 = _mm256_cvtepu8_epi16(_mm_srli_epi16::<4>(_mm_and_si128(
            _mm_loadu_si128(sc.as_ptr() as *const __m128i),
            _mm_set1_epi8(0xf0u8 as i8),
        )));
        for c in 0..N {
            let x = a[c].get_unchecked(i);
            let mut sumi = _mm256_setzero_si256();
            for k in 0..8 {
                let p = _mm256_maddubs_epi16(q[k], load(x.qs.as_ptr().add(32 * k)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s[k]));
            }
            let msum = _mm256_madd_epi16(
                _mm256_loadu_si256(x.bsums.as_ptr() as *const __m256i),
                mins16,
            );
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(sumi), acc[c]);
            macc[c] = _mm256_fmadd_ps(
                _mm256_set1_ps(dmin * x.d),
                _mm256_cvtepi32_ps(msum),
                macc[c],
            );
        }
    }
    for c in 0..N {
        out[c] = hsum(acc[c]) - hsum(macc[c]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q3_k_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8KBlock]], out: &mut [f32]) {
    let mut acc = [_mm256_setzero_ps(); N];
    let one = _mm256_set1_epi8(1);
    for i in 0..nb {
        let b = w.as_ptr().add(i * 110);
        let d = h2f(b.add(108));
        let scales = super::dequant::q3k_scales(std::slice::from_raw_parts(b.add(96), 12));
        let hm = _mm256_loadu_si256(b as *const __m256i);
        let mut q = two_bit_planes(b.add(32));
        // The high bit (set: +0, clear: -4) is folded in as +4 here and
        // 4·Σy subtracted through the block sums below.
        for (j, qj) in q.iter_mut().enumerate() {
            let hbit = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(j as i32)), one);
            *qj = _mm256_or_si256(*qj, _mm256_slli_epi16::<2>(hbit));
        }
        let s: [__m256i; 8] =
            std::array::from_fn(|k| lane_scales(scales[2 * k] as i16, scales[2 * k + 1] as i16));
        let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(scales.as_ptr() as *const __m128i));
        for c in 0..N {
            let x = a[c].get_unchecked(i);
            let mut sumi = _mm256_setzero_si256();
            for k in 0..8 {
                let p = _mm256_maddubs_epi16(q[k], load(x.qs.as_ptr().add(32 * k)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s[k]));
            }
            let corr = _mm256_madd_epi16(
                _mm256_loadu_si256(x.bsums.as_ptr() as *const __m256i),
                scales16,
            );
            sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<2>(corr));
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(sumi), acc[c]);
        }
    }
    for c in 0..N {
        out[c] = hsum(acc[c]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq4_xs_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8KBlock]], out: &mut [f32]) {
    let table =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(IQ4NL_VALUES.as_ptr() as *const __m128i));
    let mut acc = [_mm256_setzero_ps(); N];
    for i in 0..nb {
        let b = w.as_ptr().add(i * 136);
        let d = h2f(b);
        let sh = (b.add(2) as *const u16).read_unaligned();
        let q: [__m256i; 8] =
            std::array::from_fn(|ib| _mm256_shuffle_epi8(table, nibbles(b.add(8 + 16 * ib))));
        let aq: [__m256i; 8] = std::array::from_fn(|ib| _mm256_sign_epi8(q[ib], q[ib]));
        let s: [__m256i; 8] = std::array::from_fn(|ib| {
            let low = (*b.add(4 + ib / 2) >> (4 * (ib % 2))) & 0x0f;
            let high = ((sh >> (2 * ib)) & 3) as u8;
            _mm256_set1_epi16(((low | (high << 4)) as i16) - 32)
        });
        for c in 0..N {
            let x = a[c].get_unchecked(i);
            let mut sumi = _mm256_setzero_si256();
            for ib in 0..8 {
                let y = _mm256_sign_epi8(load(x.qs.as_ptr().add(32 * ib)), q[ib]);
                sumi = _mm256_add_epi32(
                    sumi,
                    _mm256_madd_epi16(_mm256_maddubs_epi16(aq[ib], y), s[ib]),
                );
            }
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(sumi), acc[c]);
        }
    }
    for c in 0..N {
        out[c] = hsum(acc[c]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_k_n<const N: usize>(w: &[u8], nb: usize, a: &[&[Q8KBlock]], out: &mut [f32]) {
    let mut acc = [_mm256_setzero_ps(); N];
    for i in 0..nb {
        let b = w.as_ptr().add(i * 292);
        let d = (b as *const f32).read_unaligned();
        let q: [__m256i; 8] = std::array::from_fn(|k| load(b.add(4 + 32 * k) as *const i8));
        for c in 0..N {
            let x = a[c].get_unchecked(i);
            let mut sumi = _mm256_setzero_si256();
            for k in 0..8 {
                sumi = _mm256_add_epi32(sumi, dot_i8_i8(q[k], load(x.qs.as_ptr().add(32 * k))));
            }
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(sumi), acc[c]);
        }
    }
    for c in 0..N {
        out[c] = hsum(acc[c]);
    }
}

/// Float weights: 8 elements per step, weights converted once for all columns.
macro_rules! float_kernel {
    ($name:ident, $imp:ident, $width:expr, $load8:expr, $scalar:expr) => {
        fn $name(w: &[u8], a: &[&[f32]], out: &mut [f32]) {
            assert!(w.len() % $width == 0 && !a.is_empty() && a.len() <= 4 && out.len() >= a.len());
            let n = w.len() / $width;
            assert!(a.iter().all(|x| x.len() >= n));
            // SAFETY: see `kernel`; lengths checked above.
            unsafe {
                match a.len() {
                    1 => $imp::<1>(w, n, a, out),
                    2 => $imp::<2>(w, n, a, out),
                    3 => $imp::<3>(w, n, a, out),
                    _ => $imp::<4>(w, n, a, out),
                }
            }
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $imp<const N: usize>(w: &[u8], n: usize, a: &[&[f32]], out: &mut [f32]) {
            let mut acc = [[_mm256_setzero_ps(); 2]; N];
            let mut i = 0;
            while i + 16 <= n {
                let w0: __m256 = $load8(w.as_ptr().add(i * $width));
                let w1: __m256 = $load8(w.as_ptr().add((i + 8) * $width));
                for c in 0..N {
                    let x = a[c].as_ptr().add(i);
                    acc[c][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), acc[c][0]);
                    acc[c][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.add(8)), acc[c][1]);
                }
                i += 16;
            }
            for c in 0..N {
                let mut s = hsum(_mm256_add_ps(acc[c][0], acc[c][1]));
                for k in i..n {
                    s += $scalar(w.as_ptr().add(k * $width)) * a[c][k];
                }
                out[c] = s;
            }
        }
    };
}

float_kernel!(
    f32_dot,
    f32_n,
    4,
    |p: *const u8| _mm256_loadu_ps(p as *const f32),
    |p: *const u8| (p as *const f32).read_unaligned()
);
float_kernel!(
    f16_dot,
    f16_n,
    2,
    |p: *const u8| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
    |p: *const u8| h2f(p)
);
float_kernel!(
    bf16_dot,
    bf16_n,
    2,
    |p: *const u8| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
        _mm_loadu_si128(p as *const __m128i)
    ))),
    |p: *const u8| f32::from_bits(((p as *const u16).read_unaligned() as u32) << 16)
);
