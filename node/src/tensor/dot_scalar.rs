//! Scalar reference dot products: one weight row (whole blocks, in its
//! storage format) against one or more quantized activation vectors.
//! Always built, always tested; the SIMD kernels must agree with these.

// Block formats are index arithmetic; explicit index loops read closest to the layouts.
#![allow(clippy::needless_range_loop)]

use super::act::{Q8Block, Q8KBlock};
use super::dequant::{f16_at, f32_at, k_scales_mins, q3k_scales, IQ4NL_VALUES};

/// Run `f` over each activation column.
#[inline(always)]
fn per_col<A>(acts: &[&[A]], out: &mut [f32], f: impl Fn(&[A]) -> f32) {
    for (o, a) in out.iter_mut().zip(acts) {
        *o = f(a);
    }
}

pub fn q4_0(w: &[u8], acts: &[&[Q8Block]], out: &mut [f32]) {
    per_col(acts, out, |a| {
        let mut sum = 0f32;
        for (b, x) in w.chunks_exact(18).zip(a) {
            let mut s = 0i32;
            for j in 0..16 {
                s += ((b[2 + j] & 0x0f) as i32 - 8) * x.qs[j] as i32;
                s += ((b[2 + j] >> 4) as i32 - 8) * x.qs[j + 16] as i32;
            }
            sum += s as f32 * (f16_at(b, 0) * x.d);
        }
        sum
    })
}

pub fn q4_1(w: &[u8], acts: &[&[Q8Block]], out: &mut [f32]) {
    per_col(acts, out, |a| {
        let mut sum = 0f32;
        for (b, x) in w.chunks_exact(20).zip(a) {
            let mut s = 0i32;
            for j in 0..16 {
                s += (b[4 + j] & 0x0f) as i32 * x.qs[j] as i32;
                s += (b[4 + j] >> 4) as i32 * x.qs[j + 16] as i32;
            }
            sum += s as f32 * (f16_at(b, 0) * x.d) + f16_at(b, 2) * x.s;
        }
        sum
    })
}

fn q5_value(qs: &[u8], qh: u32, j: usize) -> i32 {
    let low = if j < 16 {
        qs[j] & 0x0f
    } else {
        qs[j - 16] >> 4
    } as i32;
    low | ((((qh >> j) & 1) as i32) << 4)
}

pub fn q5_0(w: &[u8], acts: &[&[Q8Block]], out: &mut [f32]) {
    per_col(acts, out, |a| {
        let mut sum = 0f32;
        for (b, x) in w.chunks_exact(22).zip(a) {
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let s: i32 = (0..32)
                .map(|j| (q5_value(&b[6..22], qh, j) - 16) * x.qs[j] as i32)
                .sum();
            sum += s as f32 * (f16_at(b, 0) * x.d);
        }
        sum
    })
}

pub fn q5_1(w: &[u8], acts: &[&[Q8Block]], out: &mut [f32]) {
    per_col(acts, out, |a| {
        let mut sum = 0f32;
        for (b, x) in w.chunks_exact(24).zip(a) {
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            let s: i32 = (0..32)
                .map(|j| q5_value(&b[8..24], qh, j) * x.qs[j] as i32)
                .sum();
            sum += s as f32 * (f16_at(b, 0) * x.d) + f16_at(b, 2) * x.s;
        }
        sum
    })
}

pub fn q8_0(w: &[u8], acts: &[&[Q8Block]], out: &mut [f32]) {
    per_col(acts, out, |a| {
        let mut sum = 0f32;
        for (b, x) in w.chunks_exact(34).zip(a) {
            let s: i32 = (0..32)
                .map(|j| (b[2 + j] as i8) as i32 * x.qs[j] as i32)
                .sum();
            sum += s as f32 * (f16_at(b, 0) * x.d);
        }
        sum
    })
}

pub fn iq4_nl(w: &[u8], acts: &[&[Q8Block]], out: &mut [f32]) {
    per_col(acts, out, |a| {
        let mut sum = 0f32;
        for (b, x) in w.chunks_exact(18).zip(a) {
            let mut s = 0i32;
            for j in 0..16 {
                s += IQ4NL_VALUES[(b[2 + j] & 0x0f) as usize] as i32 * x.qs[j] as i32;
                s += IQ4NL_VALUES[(b[2 + j] >> 4) as usize] as i32 * x.qs[j + 16] as i32;
            }
            sum += s as f32 * (f16_at(b, 0) * x.d);
        }
        sum
    })
}

pub fn q2_k(w: &[u8], acts: &[&[Q8KBlock]], out: &mut [f32]) {
    per_col(acts, out, |a| {
        let mut sum = 0f32;
        for (b, x) in w.chunks_exact(84).zip(a) {
            let (sc, qs) = (&b[0..16], &b[16..80]);
            let (mut isum, mut msum) = (0i32, 0i32);
            for g in 0..16 {
                msum += (sc[g] >> 4) as i32 * x.bsums[g] as i32;
                let mut s = 0i32;
                for i in 16 * g..16 * g + 16 {
                    let (half, rest) = (i / 128, i % 128);
                    let q = (qs[half * 32 + rest % 32] >> (2 * (rest / 32))) & 3;
                    s += q as i32 * x.qs[i] as i32;
                }
                isum += (sc[g] & 0x0f) as i32 * s;
            }
            sum += x.d * f16_at(b, 80) * isum as f32 - x.d * f16_at(b, 82) * msum as f32;
        }
        sum
    })
}

pub fn q3_k(w: &[u8], acts: &[&[Q8KBlock]], out: &mut [f32]) {
    per_col(acts, out, |a| {
        let mut sum = 0f32;
        for (b, x) in w.chunks_exact(110).zip(a) {
            let (hm, qs) = (&b[0..32], &b[32..96]);
            let scales = q3k_scales(&b[96..108]);
            let mut isum = 0i32;
            for g in 0..16 {
                let mut s = 0i32;
                for i in 16 * g..16 * g + 16 {
                    let (half, rest) = (i / 128, i % 128);
                    let low = ((qs[half * 32 + rest % 32] >> (2 * (rest / 32))) & 3) as i32;
                    let q = low
                        - if (hm[i % 32] >> (i / 32)) & 1 == 0 {
                            4
                        } else {
                            0
                        };
                    s += q * x.qs[i] as i32;
                }
                isum += scales[g] as i32 * s;
            }
            sum += f16_at(b, 108) * x.d * isum as f32;
        }
        sum
    })
}

pub fn q4_k(w: &[u8], acts: &[&[Q8KBlock]], out: &mut [f32]) {
    per_col(acts, out, |a| {
        let mut sum = 0f32;
        for (b, x) in w.chunks_exact(144).zip(a) {
            let (sc, mn) = k_scales_mins(&b[4..16]);
            let qs = &b[16..144];
            let (mut isum, mut msum) = (0i32, 0i32);
            for j in 0..8 {
                msum += mn[j] as i32 * (x.bsums[2 * j] as i32 + x.bsums[2 * j + 1] as i32);
                let (chunk, shift) = (j / 2, 4 * (j % 2));
                let s: i32 = (0..32)
                    .map(|l| {
                        ((qs[chunk * 32 + l] >> shift) & 0x0f) as i32 * x.qs[32 * j + l] as i32
                    })
                    .sum();
                isum += sc[j] as i32 * s;
            }
            sum += x.d * f16_at(b, 0) * isum as f32 - x.d * f16_at(b, 2) * msum as f32;
        }
        sum
    })
}

pub fn q5_k(w: &[u8], acts: &[&[Q8KBlock]], out: &mut [f32]) {
    per_col(acts, out, |a| {
        let mut sum = 0f32;
        for (b, x) in w.chunks_exact(176).zip(a) {
            let (sc, mn) = k_scales_mins(&b[4..16]);
            let (qh, qs) = (&b[16..48], &b[48..176]);
            let (mut isum, mut msum) = (0i32, 0i32);
            for j in 0..8 {
                msum += mn[j] as i32 * (x.bsums[2 * j] as i32 + x.bsums[2 * j + 1] as i32);
                let (chunk, shift) = (j / 2, 4 * (j % 2));
                let s: i32 = (0..32)
                    .map(|l| {
                        let q = ((qs[chunk * 32 + l] >> shift) & 0x0f) | (((qh[l] >> j) & 1) << 4);
                        q as i32 * x.qs[32 * j + l] as i32
                    })
                    .sum();
                isum += sc[j] as i32 * s;
            }
            sum += x.d * f16_at(b, 0) * isum as f32 - x.d * f16_at(b, 2) * msum as f32;
        }
        sum
    })
}

pub fn q6_k(w: &[u8], acts: &[&[Q8KBlock]], out: &mut [f32]) {
    per_col(acts, out, |a| {
        let mut sum = 0f32;
        for (b, x) in w.chunks_exact(210).zip(a) {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let mut isum = 0i32;
            for g in 0..16 {
                let mut s = 0i32;
                for i in 16 * g..16 * g + 16 {
                    let (h, rest) = (i / 128, i % 128);
                    let low = (ql[h * 64 + rest % 64] >> (4 * (rest / 64))) & 0x0f;
                    let high = (qh[h * 32 + rest % 32] >> (2 * (rest / 32))) & 3;
                    s += ((low | (high << 4)) as i32 - 32) * x.qs[i] as i32;
                }
                isum += (sc[g] as i8) as i32 * s;
            }
            sum += f16_at(b, 208) * x.d * isum as f32;
        }
        sum
    })
}

pub fn iq4_xs(w: &[u8], acts: &[&[Q8KBlock]], out: &mut [f32]) {
    per_col(acts, out, |a| {
        let mut sum = 0f32;
        for (b, x) in w.chunks_exact(136).zip(a) {
            let sh = u16::from_le_bytes([b[2], b[3]]);
            let (sl, qs) = (&b[4..8], &b[8..136]);
            let mut isum = 0i32;
            for ib in 0..8 {
                let ls = ((((sl[ib / 2] >> (4 * (ib % 2))) & 0x0f)
                    | ((((sh >> (2 * ib)) & 3) as u8) << 4)) as i32)
                    - 32;
                let mut s = 0i32;
                for l in 0..16 {
                    let q = qs[ib * 16 + l];
                    s += IQ4NL_VALUES[(q & 0x0f) as usize] as i32 * x.qs[ib * 32 + l] as i32;
                    s += IQ4NL_VALUES[(q >> 4) as usize] as i32 * x.qs[ib * 32 + l + 16] as i32;
                }
                isum += ls * s;
            }
            sum += f16_at(b, 0) * x.d * isum as f32;
        }
        sum
    })
}

pub fn q8_k(w: &[u8], acts: &[&[Q8KBlock]], out: &mut [f32]) {
    per_col(acts, out, |a| {
        let mut sum = 0f32;
        for (b, x) in w.chunks_exact(292).zip(a) {
            let s: i32 = (0..256)
                .map(|i| (b[4 + i] as i8) as i32 * x.qs[i] as i32)
                .sum();
            sum += f32_at(b, 0) * x.d * s as f32;
        }
        sum
    })
}

pub fn f32_dot(w: &[u8], acts: &[&[f32]], out: &mut [f32]) {
    per_col(acts, out, |a| {
        w.chunks_exact(4)
            .zip(a.iter())
            .map(|(c, &x)| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * x)
            .sum()
    })
}

pub fn f16_dot(w: &[u8], acts: &[&[f32]], out: &mut [f32]) {
    per_col(acts, out, |a| {
        w.chunks_exact(2)
            .zip(a.iter())
            .map(|(c, &x)| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32() * x)
            .sum()
    })
}

pub fn bf16_dot(w: &[u8], acts: &[&[f32]], out: &mut [f32]) {
    per_col(acts, out, |a| {
        w.chunks_exact(2)
            .zip(a.iter())
            .map(|(c, &x)| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) * x)
            .sum()
    })
}
