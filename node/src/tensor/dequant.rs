//! Scalar dequantization of every supported block format to f32.
//!
//! These are the reference paths: the order of floating-point operations
//! follows ggml's reference code (and the gguf Python package), so results
//! are bit-exact against both (tests/golden/dequant.json).

// Block formats are index arithmetic; explicit index loops read closest to the layouts.
#![allow(clippy::needless_range_loop)]

use super::GgmlType;

pub const QK: usize = 32;
pub const QK_K: usize = 256;

/// The 16 non-linear levels of IQ4_NL / IQ4_XS.
pub const IQ4NL_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Why a kernel call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    #[error("ggml type {0} has no kernel")]
    Unsupported(GgmlType),
    #[error("{what}: expected {expected}, got {got}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
}

#[inline(always)]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

#[inline(always)]
pub(crate) fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Unpack the 6-bit scales and mins of a Q4_K / Q5_K block (12 bytes → 8 + 8).
#[inline(always)]
pub(crate) fn k_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0x0f) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

/// Unpack the 16 signed 6-bit scales of a Q3_K block (12 bytes).
#[inline(always)]
pub(crate) fn q3k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let low = if i < 8 { s[i] & 0x0f } else { s[i - 8] >> 4 };
        let high = (s[8 + (i % 4)] >> (2 * (i / 4))) & 3;
        *o = ((low | (high << 4)) as i8).wrapping_sub(32);
    }
    out
}

fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = d * ((q & 0x0f) as i32 - 8) as f32;
        y[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..16 {
        let q = b[4 + j];
        y[j] = d * (q & 0x0f) as f32 + m;
        y[j + 16] = d * (q >> 4) as f32 + m;
    }
}

fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let q = b[6 + j];
        let lo = (q & 0x0f) as i32 | ((((qh >> j) & 1) << 4) as i32);
        let hi = (q >> 4) as i32 | ((((qh >> (j + 16)) & 1) << 4) as i32);
        y[j] = d * (lo - 16) as f32;
        y[j + 16] = d * (hi - 16) as f32;
    }
}

fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let q = b[8 + j];
        let lo = (q & 0x0f) as u32 | (((qh >> j) & 1) << 4);
        let hi = (q >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4);
        y[j] = d * lo as f32 + m;
        y[j + 16] = d * hi as f32 + m;
    }
}

fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

fn iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = d * IQ4NL_VALUES[(q & 0x0f) as usize] as f32;
        y[j + 16] = d * IQ4NL_VALUES[(q >> 4) as usize] as f32;
    }
}

// Q2_K: scales[16] | qs[64] | d | dmin
fn q2_k(b: &[u8], y: &mut [f32]) {
    let (sc, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for i in 0..QK_K {
        let (half, rest) = (i / 128, i % 128);
        let (shift, l) = (rest / 32, rest % 32);
        let q = (qs[half * 32 + l] >> (2 * shift)) & 3;
        let s = sc[i / 16];
        let dl = d * (s & 0x0f) as f32;
        let ml = dmin * (s >> 4) as f32;
        y[i] = dl * q as f32 - ml;
    }
}

// Q3_K: hmask[32] | qs[64] | scales[12] | d
fn q3_k(b: &[u8], y: &mut [f32]) {
    let (hm, qs) = (&b[0..32], &b[32..96]);
    let scales = q3k_scales(&b[96..108]);
    let d = f16_at(b, 108);
    for i in 0..QK_K {
        let (half, rest) = (i / 128, i % 128);
        let (shift, l) = (rest / 32, rest % 32);
        let low = ((qs[half * 32 + l] >> (2 * shift)) & 3) as i8;
        let high = (hm[i % 32] >> (i / 32)) & 1;
        let q = low - if high == 0 { 4 } else { 0 };
        let dl = d * scales[i / 16] as f32;
        y[i] = dl * q as f32;
    }
}

// Q4_K: d | dmin | scales[12] | qs[128]
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = k_scales_mins(&b[4..16]);
    let qs = &b[16..144];
    for i in 0..QK_K {
        let (j, rest) = (i / 64, i % 64);
        let (s, l) = (rest / 32, rest % 32);
        let q = (qs[j * 32 + l] >> (4 * s)) & 0x0f;
        let sub = i / 32;
        let dl = d * sc[sub] as f32;
        let ml = dmin * mn[sub] as f32;
        y[i] = dl * q as f32 - ml;
    }
}

// Q5_K: d | dmin | scales[12] | qh[32] | qs[128]
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = k_scales_mins(&b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for i in 0..QK_K {
        let (j, rest) = (i / 64, i % 64);
        let (s, l) = (rest / 32, rest % 32);
        let low = (qs[j * 32 + l] >> (4 * s)) & 0x0f;
        let high = (qh[i % 32] >> (i / 32)) & 1;
        let q = low | (high << 4);
        let sub = i / 32;
        let dl = d * sc[sub] as f32;
        let ml = dmin * mn[sub] as f32;
        y[i] = dl * q as f32 - ml;
    }
}

// Q6_K: ql[128] | qh[64] | scales[16] (i8) | d
fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for i in 0..QK_K {
        let (h, rest) = (i / 128, i % 128);
        let low = (ql[h * 64 + rest % 64] >> (4 * (rest / 64))) & 0x0f;
        let high = (qh[h * 32 + rest % 32] >> (2 * (rest / 32))) & 3;
        let q = (low | (high << 4)) as i32 - 32;
        let dl = d * (sc[i / 16] as i8) as f32;
        y[i] = dl * q as f32;
    }
}

// Q8_K: d (f32) | qs[256] | bsums[16] (i16)
fn q8_k(b: &[u8], y: &mut [f32]) {
    let d = f32_at(b, 0);
    for i in 0..QK_K {
        y[i] = d * (b[4 + i] as i8) as f32;
    }
}

/// The signed 6-bit scale of sub-block `ib` (0..8) of an IQ4_XS block.
#[inline(always)]
pub(crate) fn iq4xs_scale(b: &[u8], ib: usize) -> i8 {
    let sh = u16::from_le_bytes([b[2], b[3]]);
    let low = (b[4 + ib / 2] >> (4 * (ib % 2))) & 0x0f;
    let high = ((sh >> (2 * ib)) & 3) as u8;
    ((low | (high << 4)) as i8).wrapping_sub(32)
}

// IQ4_XS: d | scales_h (u16) | scales_l[4] | qs[128]
fn iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[8..136];
    for ib in 0..8 {
        let dl = d * iq4xs_scale(b, ib) as f32;
        for l in 0..16 {
            let q = qs[ib * 16 + l];
            y[ib * 32 + l] = dl * IQ4NL_VALUES[(q & 0x0f) as usize] as f32;
            y[ib * 32 + l + 16] = dl * IQ4NL_VALUES[(q >> 4) as usize] as f32;
        }
    }
}

/// f16 → f32 eight at a time with F16C (exact, like the scalar conversion).
///
/// # Safety
/// AVX and F16C; `src` holds `2 · dst.len()` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
#[inline]
pub(crate) unsafe fn f16_to_f32_f16c(src: &[u8], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = dst.len();
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm_loadu_si128(src.as_ptr().add(2 * i) as *const __m128i);
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        i += 8;
    }
    for k in i..n {
        dst[k] = half::f16::from_bits(u16::from_le_bytes([src[2 * k], src[2 * k + 1]])).to_f32();
    }
}

/// f32 → f16 (round to nearest even, as `half::f16::from_f32`), as
/// little-endian bytes: eight at a time with F16C where the CPU has it —
/// the KV pool stores each token's keys and values this way every layer.
pub fn f32_to_f16_bytes(src: &[f32], dst: &mut [u8]) {
    assert_eq!(dst.len(), 2 * src.len(), "two bytes per value");
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("f16c") && is_x86_feature_detected!("avx") {
        // SAFETY: the features were just checked; `dst` holds 2 bytes per value.
        i = unsafe { f32_to_f16_f16c(src, dst) };
    }
    for (o, x) in dst[2 * i..].chunks_exact_mut(2).zip(&src[i..]) {
        o.copy_from_slice(&half::f16::from_f32(*x).to_bits().to_le_bytes());
    }
}

/// The whole groups of eight of [`f32_to_f16_bytes`]; returns how many
/// values it converted.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f32_to_f16_f16c(src: &[f32], dst: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    let mut i = 0;
    while i + 8 <= src.len() {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
        _mm_storeu_si128(dst.as_mut_ptr().add(2 * i) as *mut __m128i, h);
        i += 8;
    }
    i
}

type BlockFn = fn(&[u8], &mut [f32]);

fn block_fn(t: GgmlType) -> Option<BlockFn> {
    use GgmlType::*;
    Some(match t {
        Q4_0 => q4_0,
        Q4_1 => q4_1,
        Q5_0 => q5_0,
        Q5_1 => q5_1,
        Q8_0 => q8_0,
        Q2_K => q2_k,
        Q3_K => q3_k,
        Q4_K => q4_k,
        Q5_K => q5_k,
        Q6_K => q6_k,
        Q8_K => q8_k,
        IQ4_NL => iq4_nl,
        IQ4_XS => iq4_xs,
        _ => return None,
    })
}

/// Whether [`dequantize`] handles `t`.
pub fn can_dequantize(t: GgmlType) -> bool {
    matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) || block_fn(t).is_some()
}

/// Dequantize `src` (whole blocks of `dtype`) into `dst`, which must hold
/// exactly the number of elements `src` encodes.
pub fn dequantize(dtype: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
    let layout = dtype.layout().ok_or(KernelError::Unsupported(dtype))?;
    let (be, bb) = (layout.block_elems, layout.block_bytes);
    if !src.len().is_multiple_of(bb) {
        return Err(KernelError::Length {
            what: "source bytes (whole blocks)",
            expected: src.len() / bb * bb,
            got: src.len(),
        });
    }
    let n = src.len() / bb * be;
    if dst.len() != n {
        return Err(KernelError::Length {
            what: "destination elements",
            expected: n,
            got: dst.len(),
        });
    }
    match dtype {
        GgmlType::F32 => {
            for (y, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *y = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("f16c") && is_x86_feature_detected!("avx") {
                // SAFETY: the features were just checked; lengths match (checked above).
                unsafe { f16_to_f32_f16c(src, dst) };
                return Ok(());
            }
            for (y, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *y = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (y, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *y = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        _ => {
            let f = block_fn(dtype).ok_or(KernelError::Unsupported(dtype))?;
            for (y, b) in dst.chunks_exact_mut(be).zip(src.chunks_exact(bb)) {
                f(b, y);
            }
        }
    }
    Ok(())
}

/// Dequantize into a new vector.
pub fn dequantize_to_vec(dtype: GgmlType, src: &[u8]) -> Result<Vec<f32>, KernelError> {
    let layout = dtype.layout().ok_or(KernelError::Unsupported(dtype))?;
    let mut v = vec![0f32; src.len() / layout.block_bytes * layout.block_elems];
    dequantize(dtype, src, &mut v)?;
    Ok(v)
}
