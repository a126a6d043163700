//! Quantization from f32 into block formats.
//!
//! Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 follow ggml's reference quantizers
//! operation for operation, and so give the same bytes as the gguf Python
//! package. Q4_K, Q5_K and Q6_K use ggml's reference search for scales
//! (weighted least squares over a few candidate scales); Q8_K is the
//! activation format of the K-quant dot products.

// Block formats are index arithmetic; explicit index loops read closest to the layouts.
#![allow(clippy::needless_range_loop)]

use super::dequant::{k_scales_mins, KernelError, QK, QK_K};
use super::GgmlType;

#[inline(always)]
fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_bits().to_le_bytes()
}

#[inline(always)]
fn f16_round(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// ggml's `nearest_int`: round half to even.
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// The element with the largest magnitude (the first one on ties), with its sign.
#[inline(always)]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

fn q4_0(x: &[f32], out: &mut [u8]) {
    let (_, max) = signed_absmax(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[0..2].copy_from_slice(&f16_bytes(d));
    for j in 0..16 {
        let a = ((x[j] * id + 8.5) as u8).min(15);
        let b = ((x[j + 16] * id + 8.5) as u8).min(15);
        out[2 + j] = a | (b << 4);
    }
}

fn q4_1(x: &[f32], out: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[0..2].copy_from_slice(&f16_bytes(d));
    out[2..4].copy_from_slice(&f16_bytes(min));
    for j in 0..16 {
        let a = (((x[j] - min) * id + 0.5) as u8).min(15);
        let b = (((x[j + 16] - min) * id + 0.5) as u8).min(15);
        out[4 + j] = a | (b << 4);
    }
}

fn q5_0(x: &[f32], out: &mut [u8]) {
    let (_, max) = signed_absmax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[0..2].copy_from_slice(&f16_bytes(d));
    let mut qh = 0u32;
    for j in 0..16 {
        let a = ((x[j] * id + 16.5) as u8).min(31);
        let b = ((x[j + 16] * id + 16.5) as u8).min(31);
        out[6 + j] = (a & 0x0f) | ((b & 0x0f) << 4);
        qh |= ((a as u32 >> 4) & 1) << j;
        qh |= ((b as u32 >> 4) & 1) << (j + 16);
    }
    out[2..6].copy_from_slice(&qh.to_le_bytes());
}

fn q5_1(x: &[f32], out: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[0..2].copy_from_slice(&f16_bytes(d));
    out[2..4].copy_from_slice(&f16_bytes(min));
    let mut qh = 0u32;
    for j in 0..16 {
        let a = (((x[j] - min) * id + 0.5) as u8).min(31);
        let b = (((x[j + 16] - min) * id + 0.5) as u8).min(31);
        out[8 + j] = (a & 0x0f) | ((b & 0x0f) << 4);
        qh |= ((a as u32 >> 4) & 1) << j;
        qh |= ((b as u32 >> 4) & 1) << (j + 16);
    }
    out[4..8].copy_from_slice(&qh.to_le_bytes());
}

fn q8_0(x: &[f32], out: &mut [u8]) {
    let amax = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[0..2].copy_from_slice(&f16_bytes(d));
    for j in 0..32 {
        out[2 + j] = (x[j] * id).round() as i8 as u8;
    }
}

/// ggml's `make_qkx2_quants`: a scale and a (non-positive) minimum for one
/// sub-block, chosen by weighted least squares over `nstep + 1` candidate
/// scales. Returns (scale, -min) and writes the levels to `l`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    w: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.iter_mut().for_each(|v| *v = 0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += w[i] * diff * diff;
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let qf = q as f32;
            sum_l += w[i] * qf;
            sum_l2 += w[i] * qf * qf;
            sum_xl += w[i] * qf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += w[i] * diff * diff;
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Q4_K and Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins.
fn qk_scaled(x: &[f32], nmax: i32, rmin: f32, nstep: i32) -> (f32, f32, [u8; 12], [u8; QK_K]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    let mut w = [0f32; 32];
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xs.iter().map(|v| v * v).sum();
        let av_x = (sum_x2 / 32.0).sqrt();
        for (wi, &v) in w.iter_mut().zip(xs) {
            *wi = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(nmax, xs, &w, &mut l[32 * j..32 * j + 32], rmin, 0.1, nstep);
        scales[j] = s;
        mins[j] = m;
        max_scale = max_scale.max(s);
        max_min = max_min.max(m);
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16_round(max_scale / 63.0);
    let dmin = f16_round(max_min / 63.0);
    let (sc, mn) = k_scales_mins(&packed);
    for j in 0..8 {
        let dl = d * sc[j] as f32;
        if dl == 0.0 {
            continue;
        }
        let dm = dmin * mn[j] as f32;
        for i in 0..32 {
            l[32 * j + i] = nearest_int((x[32 * j + i] + dm) / dl).clamp(0, nmax) as u8;
        }
    }
    (max_scale / 63.0, max_min / 63.0, packed, l)
}

fn q4_k(x: &[f32], out: &mut [u8]) {
    let (d, dmin, packed, l) = qk_scaled(x, 15, -1.0, 20);
    out[0..2].copy_from_slice(&f16_bytes(d));
    out[2..4].copy_from_slice(&f16_bytes(dmin));
    out[4..16].copy_from_slice(&packed);
    let qs = &mut out[16..144];
    for (j, chunk) in (0..QK_K).step_by(64).enumerate() {
        for i in 0..32 {
            qs[j * 32 + i] = l[chunk + i] | (l[chunk + i + 32] << 4);
        }
    }
}

fn q5_k(x: &[f32], out: &mut [u8]) {
    let (d, dmin, packed, l) = qk_scaled(x, 31, -0.5, 15);
    out[0..2].copy_from_slice(&f16_bytes(d));
    out[2..4].copy_from_slice(&f16_bytes(dmin));
    out[4..16].copy_from_slice(&packed);
    let (qh, qs) = out[16..176].split_at_mut(32);
    qh.iter_mut().for_each(|v| *v = 0);
    let (mut m1, mut m2) = (1u8, 2u8);
    for (j, n) in (0..QK_K).step_by(64).enumerate() {
        for i in 0..32 {
            let mut l1 = l[n + i];
            if l1 > 15 {
                l1 -= 16;
                qh[i] |= m1;
            }
            let mut l2 = l[n + i + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[i] |= m2;
            }
            qs[j * 32 + i] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

/// ggml's `make_qx_quants` with rmse_type 1 (weights x²): a signed scale for
/// one sub-block, levels in `l` offset by `nmax`.
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [u8]) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < 1e-15 {
        l.iter_mut().for_each(|v| *v = 0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (i, &v) in x.iter().enumerate() {
        let q = level(iscale, v);
        l[i] = (q + nmax) as u8;
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * (q * q) as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (mut slx, mut sl2) = (0f32, 0f32);
        for &v in x {
            let q = level(iscale, v);
            let w = v * v;
            slx += w * v * q as f32;
            sl2 += w * (q * q) as f32;
        }
        if sl2 > 0.0 && slx * slx > best * sl2 {
            for (i, &v) in x.iter().enumerate() {
                l[i] = (nmax + level(iscale, v)) as u8;
            }
            scale = slx / sl2;
            best = scale * slx;
        }
    }
    scale
}

fn q6_k(x: &[f32], out: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs) = (0f32, 0f32);
    for ib in 0..16 {
        let s = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
        scales[ib] = s;
        if s.abs() > max_abs {
            max_abs = s.abs();
            max_scale = s;
        }
    }
    out.iter_mut().for_each(|v| *v = 0);
    if max_abs < 1e-15 {
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = f16_round(1.0 / iscale);
    out[208..210].copy_from_slice(&f16_bytes(1.0 / iscale));
    for ib in 0..16 {
        out[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let dl = d * (out[192 + j] as i8) as f32;
        if dl == 0.0 {
            continue;
        }
        for i in 0..16 {
            l[16 * j + i] = (nearest_int(x[16 * j + i] / dl).clamp(-32, 31) + 32) as u8;
        }
    }
    let (ql, rest) = out.split_at_mut(128);
    let qh = &mut rest[..64];
    for (h, j) in (0..QK_K).step_by(128).enumerate() {
        for i in 0..32 {
            let (q1, q2, q3, q4) = (l[j + i], l[j + i + 32], l[j + i + 64], l[j + i + 96]);
            ql[h * 64 + i] = (q1 & 0x0f) | ((q3 & 0x0f) << 4);
            ql[h * 64 + i + 32] = (q2 & 0x0f) | ((q4 & 0x0f) << 4);
            qh[h * 32 + i] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
}

fn q8_k(x: &[f32], out: &mut [u8]) {
    let (amax, max) = signed_absmax(x);
    out.iter_mut().for_each(|v| *v = 0);
    if amax == 0.0 {
        return;
    }
    let iscale = -127.0 / max;
    for j in 0..QK_K {
        out[4 + j] = nearest_int(iscale * x[j]).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let s: i32 = (0..16).map(|i| out[4 + 16 * j + i] as i8 as i32).sum();
        out[260 + 2 * j..262 + 2 * j].copy_from_slice(&(s as i16).to_le_bytes());
    }
    out[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}

/// Types [`quantize`] can produce.
pub const QUANTIZABLE: [GgmlType; 12] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
];

/// Quantize `src` (a whole number of blocks) into `dst` (exactly the bytes it encodes to).
pub fn quantize(dtype: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), KernelError> {
    let layout = dtype.layout().ok_or(KernelError::Unsupported(dtype))?;
    let (be, bb) = (layout.block_elems, layout.block_bytes);
    if !src.len().is_multiple_of(be) {
        return Err(KernelError::Length {
            what: "source elements (whole blocks)",
            expected: src.len() / be * be,
            got: src.len(),
        });
    }
    let need = src.len() / be * bb;
    if dst.len() != need {
        return Err(KernelError::Length {
            what: "destination bytes",
            expected: need,
            got: dst.len(),
        });
    }
    let f: fn(&[f32], &mut [u8]) = match dtype {
        GgmlType::F32 => {
            for (o, v) in dst.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&v.to_le_bytes());
            }
            return Ok(());
        }
        GgmlType::F16 => {
            for (o, v) in dst.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f16_bytes(*v));
            }
            return Ok(());
        }
        GgmlType::BF16 => {
            for (o, v) in dst.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f32_to_bf16(*v).to_le_bytes());
            }
            return Ok(());
        }
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4_K => q4_k,
        GgmlType::Q5_K => q5_k,
        GgmlType::Q6_K => q6_k,
        GgmlType::Q8_K => q8_k,
        _ => return Err(KernelError::Unsupported(dtype)),
    };
    debug_assert!(be == QK || be == QK_K);
    for (x, o) in src.chunks_exact(be).zip(dst.chunks_exact_mut(bb)) {
        f(x, o);
    }
    Ok(())
}

/// Quantize into a new vector.
pub fn quantize_to_vec(dtype: GgmlType, src: &[f32]) -> Result<Vec<u8>, KernelError> {
    let layout = dtype.layout().ok_or(KernelError::Unsupported(dtype))?;
    let mut v = vec![0u8; src.len() / layout.block_elems * layout.block_bytes];
    quantize(dtype, src, &mut v)?;
    Ok(v)
}

/// f32 → bf16 with round-to-nearest-even and quiet NaNs (ggml's rule).
pub fn f32_to_bf16(v: f32) -> u16 {
    let n = v.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        return ((n >> 16) | 64) as u16;
    }
    ((n as u64 + (0x7fff + ((n >> 16) & 1)) as u64) >> 16) as u16
}
