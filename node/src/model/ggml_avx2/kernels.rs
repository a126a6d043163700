//! The operations of ggml's x86 CPU backend (AVX2 build, llama.cpp 0c1e570)
//! with their roundings and summation orders. Each function names the ggml
//! routine it follows; integer sums are exact in any order, so only the
//! floating-point steps are spelled out in ggml's order.

use std::sync::OnceLock;

use half::f16;

use super::super::attention::AttentionShape;
use super::super::{KvPool, KvType, SeqStep, Weight, Workspace};
use crate::format::GgufFile;
use crate::tensor::{GgmlType, ThreadPool};

const QK: usize = 32;
const QK_K: usize = 256;

pub(super) fn h2f(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

pub(super) fn f2h(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

/// `a·b + c` with one rounding. Inside the `avx2,fma` wrappers below this is
/// one instruction; elsewhere libm's exact `fmaf`.
#[inline(always)]
fn fmadd(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

/// ggml's `hsum_float_8` (and llamafile's `hsum` of a 256-bit vector).
#[inline(always)]
fn hsum8(v: &[f32; 8]) -> f32 {
    let a = [v[4] + v[0], v[5] + v[1], v[6] + v[2], v[7] + v[3]];
    (a[0] + a[2]) + (a[1] + a[3])
}

/// The weight types this mode runs, and how each is run.
pub(super) fn supported(w: &Weight) -> Result<(), String> {
    match w.dtype {
        GgmlType::Q8_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q6_K => Ok(()),
        // ggml repacks Q4_K matrices whose row count is a multiple of 8
        // (q4_K_8x8); the other Q4_K kernels are not followed here.
        GgmlType::Q4_K if w.rows.is_multiple_of(8) => Ok(()),
        other => Err(format!(
            "{}: type {other:?} with {} rows (supported: Q8_0, Q4_1, Q5_0, Q6_K, and Q4_K with rows a multiple of 8)",
            w.name, w.rows
        )),
    }
}

/// Activations of a step quantized for the weights' `vec_dot_type`: Q8_0
/// (Q8_0/Q5_0 weights), Q8_1 (Q4_1) or Q8_K (K-quants).
#[derive(Default)]
pub(super) struct Act {
    /// Per 32-block scale (Q8_0/Q8_1, an f16 value) or per 256-block (Q8_K, f32).
    d: Vec<f32>,
    /// Q8_1: f16(d·Σq) per block.
    s: Vec<f32>,
    /// Q8_K: Σq per 16 elements.
    bsums: Vec<i32>,
    q: Vec<i8>,
    cols: usize,
    kind: ActKind,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum ActKind {
    #[default]
    Q8_0,
    Q8_1,
    Q8K,
}

impl Act {
    /// Quantize `rows` rows of `cols` for weights of type `weight`.
    pub(super) fn quantize(&mut self, x: &[f32], rows: usize, cols: usize, weight: GgmlType) {
        self.cols = cols;
        self.q.resize(rows * cols, 0);
        self.kind = match weight {
            GgmlType::Q4_1 => ActKind::Q8_1,
            GgmlType::Q4_K | GgmlType::Q6_K => ActKind::Q8K,
            _ => ActKind::Q8_0,
        };
        let x = &x[..rows * cols];
        if self.kind == ActKind::Q8K {
            self.quantize_k(x);
            return;
        }
        let nb = rows * cols / QK;
        self.d.resize(nb, 0.0);
        self.s.resize(nb, 0.0);
        // quantize_row_q8_0 / _q8_1 (x86): d = amax/127 stored as f16,
        // multiplier 127/amax, round half to even.
        for (b, xs) in x.chunks_exact(QK).enumerate() {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in self.q[b * QK..(b + 1) * QK].iter_mut().zip(xs) {
                let r = ((v * id).round_ties_even() as i32).clamp(-128, 127);
                sum += r;
                *q = r as i8;
            }
            self.d[b] = h2f(f2h(d));
            if self.kind == ActKind::Q8_1 {
                self.s[b] = h2f(f2h(d * sum as f32));
            }
        }
    }

    /// quantize_row_q8_K_ref: the element of largest magnitude (first one)
    /// sets `iscale = -127/max`; d = 1/iscale in f32; sums per 16. (The 4-row
    /// interleaved quantizer of the repacked kernels picks +max on a tie of
    /// magnitudes, which negates both q and d: the products are the same.)
    fn quantize_k(&mut self, x: &[f32]) {
        let nb = x.len() / QK_K;
        self.d.resize(nb, 0.0);
        self.bsums.resize(nb * 16, 0);
        for (b, xs) in x.chunks_exact(QK_K).enumerate() {
            let (mut amax, mut max) = (0f32, 0f32);
            for &v in xs {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            let q = &mut self.q[b * QK_K..(b + 1) * QK_K];
            if amax == 0.0 {
                self.d[b] = 0.0;
                q.fill(0);
                self.bsums[b * 16..(b + 1) * 16].fill(0);
                continue;
            }
            let iscale = -127.0f32 / max;
            for (o, &v) in q.iter_mut().zip(xs) {
                *o = ((iscale * v).round_ties_even() as i32).min(127) as i8;
            }
            for (j, s) in self.bsums[b * 16..(b + 1) * 16].iter_mut().enumerate() {
                *s = q[16 * j..16 * j + 16].iter().map(|&v| v as i32).sum();
            }
            self.d[b] = 1.0 / iscale;
        }
    }
}

/// How a K-quant product is summed: ggml picks the kernel by the number of
/// activation rows and the row's place in the batch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// vec_dot / gemv: one FMA per 256-block.
    Vec,
    /// Q4_K repacked gemm (rows in groups of four): one FMA per 64 elements.
    Gemm,
    /// Q6_K tiled kernel (eight or more rows): d·Σ then one FMA per block.
    Tiled,
}

/// One weight row against activation row `row`.
#[inline(always)]
fn dot_row(dtype: GgmlType, w: &[u8], act: &Act, row: usize, path: Path) -> f32 {
    match dtype {
        GgmlType::Q8_0 | GgmlType::Q5_0 | GgmlType::Q4_1 => dot_32(dtype, w, act, row),
        GgmlType::Q4_K => dot_q4_k(w, act, row, path == Path::Gemm),
        GgmlType::Q6_K => dot_q6_k(w, act, row, path == Path::Tiled),
        other => unreachable!("checked by supported(): {other:?}"),
    }
}

/// ggml_vec_dot_{q8_0_q8_0, q5_0_q8_0, q4_1_q8_1} and llamafile's
/// tinyBLAS_Q0_AVX: per block an 8-lane vector of four-element integer sums,
/// one FMA with the f32 product of the two f16 scales, `hsum_float_8` at the
/// end; Q4_1 adds its `m·s` terms (one FMA chain) after the sum.
#[inline(always)]
fn dot_32(dtype: GgmlType, w: &[u8], act: &Act, row: usize) -> f32 {
    let nb = act.cols / QK;
    let b0 = row * nb;
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    let bytes = match dtype {
        GgmlType::Q8_0 => 34,
        GgmlType::Q5_0 => 22,
        _ => 20,
    };
    let mut vals = [0i32; QK];
    for (b, blk) in w.chunks_exact(bytes).enumerate() {
        let dw = h2f(le16(blk));
        match dtype {
            GgmlType::Q8_0 => {
                for (v, &q) in vals.iter_mut().zip(&blk[2..34]) {
                    *v = q as i8 as i32;
                }
            }
            GgmlType::Q5_0 => {
                let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                let qs = &blk[6..22];
                for (k, v) in vals.iter_mut().enumerate() {
                    let nib = if k < 16 { qs[k] & 15 } else { qs[k - 16] >> 4 };
                    *v = (nib as i32 | (((qh >> k) & 1) as i32) << 4) - 16;
                }
            }
            _ => {
                summs = fmadd(h2f(le16(&blk[2..])), act.s[b0 + b], summs);
                let qs = &blk[4..20];
                for (k, v) in vals.iter_mut().enumerate() {
                    *v = (if k < 16 { qs[k] & 15 } else { qs[k - 16] >> 4 }) as i32;
                }
            }
        }
        let d = dw * act.d[b0 + b];
        let qa = &act.q[(b0 + b) * QK..(b0 + b + 1) * QK];
        for (l, a) in acc.iter_mut().enumerate() {
            let s: i32 = (4 * l..4 * l + 4).map(|k| vals[k] * qa[k] as i32).sum();
            *a = fmadd(d, s as f32, *a);
        }
    }
    hsum8(&acc) + summs
}

/// Q4_K scale and min of sub-block `j` (get_scale_min_k4).
fn q4_k_scale_min(sc: &[u8], j: usize) -> (i32, i32) {
    if j < 4 {
        ((sc[j] & 63) as i32, (sc[j + 4] & 63) as i32)
    } else {
        (
            ((sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4)) as i32,
            ((sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)) as i32,
        )
    }
}

/// ggml_gemv_q4_K_8x8_q8_K (one FMA per block for the scaled sums, one for
/// the mins, subtracted at the end) or, with `per_64`, the gemm of the same
/// repacked layout (the FMAs taken per pair of sub-blocks).
#[inline(always)]
fn dot_q4_k(w: &[u8], act: &Act, row: usize, per_64: bool) -> f32 {
    let nb = act.cols / QK_K;
    let (mut acc, mut accm) = (0f32, 0f32);
    for (b, blk) in w.chunks_exact(144).enumerate() {
        let ab = row * nb + b;
        let (dw, dmin) = (h2f(le16(blk)), h2f(le16(&blk[2..])));
        let (da, sc, qs) = (act.d[ab], &blk[4..16], &blk[16..144]);
        let qa = &act.q[ab * QK_K..(ab + 1) * QK_K];
        let bs = &act.bsums[ab * 16..(ab + 1) * 16];
        let (dd, dm) = (dw * da, dmin * da);
        let (mut ib, mut mb) = (0i32, 0i32);
        for c in 0..4 {
            let (mut i2, mut m2) = (0i32, 0i32);
            for half in 0..2 {
                let j = 2 * c + half;
                let (s, m) = q4_k_scale_min(sc, j);
                let mut sum = 0i32;
                for l in 0..32 {
                    let byte = qs[32 * c + l];
                    let q = if half == 0 { byte & 15 } else { byte >> 4 };
                    sum += q as i32 * qa[32 * j + l] as i32;
                }
                i2 += s * sum;
                m2 += m * (bs[2 * j] + bs[2 * j + 1]);
            }
            if per_64 {
                acc = fmadd(i2 as f32, dd, acc);
                accm = fmadd(m2 as f32, dm, accm);
            } else {
                ib += i2;
                mb += m2;
            }
        }
        if !per_64 {
            acc = fmadd(ib as f32, dd, acc);
            accm = fmadd(mb as f32, dm, accm);
        }
    }
    acc - accm
}

/// Q6_K's unsigned 6-bit code of element `e` (0..256) of a block.
#[inline(always)]
fn q6_code(ql: &[u8], qh: &[u8], e: usize) -> i32 {
    let (j, r) = (e / 128, e % 128);
    let (quarter, l) = (r / 32, r % 32);
    let low = match quarter {
        0 => ql[64 * j + l] & 15,
        1 => ql[64 * j + 32 + l] & 15,
        2 => ql[64 * j + l] >> 4,
        _ => ql[64 * j + 32 + l] >> 4,
    };
    let high = (qh[32 * j + l] >> (2 * quarter)) & 3;
    (low | high << 4) as i32
}

/// ggml_vec_dot_q6_K_q8_K (AVX2): eight lanes of scaled four-element sums,
/// the −32 offset taken out per lane through the 16-element sums, one FMA
/// per lane per block, `hsum_float_8`. With `tiled`, the tiled kernel for
/// eight or more rows: the exact block sum times the weight scale, then one
/// FMA with the activation scale.
#[inline(always)]
fn dot_q6_k(w: &[u8], act: &Act, row: usize, tiled: bool) -> f32 {
    let nb = act.cols / QK_K;
    let mut acc = [0f32; 8];
    let mut buf = 0f32;
    let mut codes = [0i32; QK_K];
    for (b, blk) in w.chunks_exact(210).enumerate() {
        let ab = row * nb + b;
        let (ql, qh) = (&blk[..128], &blk[128..192]);
        let sc: [i32; 16] = std::array::from_fn(|i| blk[192 + i] as i8 as i32);
        let dw = h2f(le16(&blk[208..]));
        let qa = &act.q[ab * QK_K..(ab + 1) * QK_K];
        for (e, c) in codes.iter_mut().enumerate() {
            *c = q6_code(ql, qh, e);
        }
        if tiled {
            let mut s1 = 0i32;
            for (sub, s) in sc.iter().enumerate() {
                let part: i32 = (16 * sub..16 * sub + 16)
                    .map(|e| (codes[e] - 32) * qa[e] as i32)
                    .sum();
                s1 += s * part;
            }
            buf = fmadd(dw * s1 as f32, act.d[ab], buf);
        } else {
            let d = act.d[ab] * dw;
            let bs = &act.bsums[ab * 16..(ab + 1) * 16];
            for (l, a) in acc.iter_mut().enumerate() {
                let mut s = 0i32;
                for c in 0..8 {
                    let e0 = 32 * c + 4 * l;
                    let part: i32 = (e0..e0 + 4).map(|e| codes[e] * qa[e] as i32).sum();
                    s += sc[e0 / 16] * part;
                }
                s -= 32 * (bs[2 * l] * sc[2 * l] + bs[2 * l + 1] * sc[2 * l + 1]);
                *a = fmadd(d, s as f32, *a);
            }
        }
    }
    if tiled {
        buf
    } else {
        hsum8(&acc)
    }
}

struct OutPtr(*mut f32);
// SAFETY: each task writes a disjoint set of output elements.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// y[i][r] = W[r] · x[i] for the `t` quantized rows of `act`, each row
/// summed the way ggml sums it in a batch of `t`.
pub(super) fn matmul(
    pool: &ThreadPool,
    f: &GgufFile,
    w: &Weight,
    act: &Act,
    t: usize,
    y: &mut [f32],
    fma: bool,
) {
    const CHUNK: usize = 16;
    let bytes = &f.bytes()[w.offset..w.offset + w.len];
    let row_bytes = w.len / w.rows;
    let (rows, dtype) = (w.rows, w.dtype);
    assert!(y.len() >= t * rows && act.cols == w.cols);
    let gemm_rows = if t > 3 { t - t % 4 } else { 0 };
    let path = |i: usize| match dtype {
        GgmlType::Q4_K if i < gemm_rows => Path::Gemm,
        GgmlType::Q6_K if t >= 8 => Path::Tiled,
        _ => Path::Vec,
    };
    let out = OutPtr(y.as_mut_ptr());
    let out = &out;
    pool.run(rows.div_ceil(CHUNK), &|task| {
        for r in task * CHUNK..((task + 1) * CHUNK).min(rows) {
            let wr = &bytes[r * row_bytes..(r + 1) * row_bytes];
            for i in 0..t {
                let v = dot(dtype, wr, act, i, path(i), fma);
                // SAFETY: (i, r) is written by this task only; in bounds by the assert.
                unsafe { *out.0.add(i * rows + r) = v };
            }
        }
    });
}

#[inline(always)]
fn dot(dtype: GgmlType, w: &[u8], act: &Act, row: usize, path: Path, fma: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if fma {
        // SAFETY: `fma` is true only when detect() saw AVX2 and FMA.
        return unsafe { dot_fma(dtype, w, act, row, path) };
    }
    let _ = fma;
    dot_row(dtype, w, act, row, path)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_fma(dtype: GgmlType, w: &[u8], act: &Act, row: usize, path: Path) -> f32 {
    dot_row(dtype, w, act, row, path)
}

/// ggml's rms_norm (with the weight multiply fused or not, the same values):
/// f32 squares summed in f64, `x·scale·w`, each `w.len()`-wide row.
pub(super) fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let n = w.len();
    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        let sum: f64 = xr.iter().map(|&v| (v * v) as f64).sum();
        let mean = (sum / n as f64) as f32;
        let scale = 1.0f32 / (mean + eps).sqrt();
        for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// [`rms_norm_rows`] in place.
pub(super) fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let src = x.to_vec();
    rms_norm_rows(&src, w, eps, x);
}

/// ggml_compute_forward_rope_flt: `theta *= theta_scale` pair by pair from
/// `theta = pos`, glibc's sin/cos, and the FMA contractions GCC made of the
/// rotation.
pub(super) struct Rope {
    theta_scale: f32,
    neox: bool,
}

impl Rope {
    pub(super) fn new(base: f32, n_dims: usize, neox: bool) -> Self {
        Rope {
            theta_scale: base.powf(-2.0f32 / n_dims as f32),
            neox,
        }
    }

    /// Rotate every `hd`-wide head of `x` for position `pos`.
    pub(super) fn apply(&self, x: &mut [f32], pos: usize, hd: usize) {
        let mut cs = [(0f32, 0f32); 256];
        let mut theta = pos as f32;
        for e in cs.iter_mut().take(hd / 2) {
            *e = (theta.cos(), theta.sin());
            theta *= self.theta_scale;
        }
        let half = hd / 2;
        for head in x.chunks_exact_mut(hd) {
            for (i, &(c, s)) in cs[..half].iter().enumerate() {
                let (a, b) = if self.neox {
                    (i, i + half)
                } else {
                    (2 * i, 2 * i + 1)
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = fmadd(x0, c, -(x1 * s));
                head[b] = fmadd(x0, s, x1 * c);
            }
        }
    }
}

/// Keys and values rounded to f16 (llama.cpp's default cache type); an f32
/// pool holds the same rounded values.
fn store_f16(kv: &mut KvPool, table: &[u32], layer: usize, pos: usize, k: &[f32], v: &[f32]) {
    if kv.kv_type() == KvType::F16 {
        kv.store(table, layer, pos, k, v);
    } else {
        let round = |x: &[f32]| -> Vec<f32> { x.iter().map(|&a| h2f(f2h(a))).collect() };
        kv.store(table, layer, pos, &round(k), &round(v));
    }
}

/// ggml_vec_dot_f16: four 8-lane FMA accumulators over steps of 32, then
/// GGML_F32x8_REDUCE (pairwise vectors, then two `hadd`s).
#[inline(always)]
fn vec_dot_f16(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len();
    let np = n & !31;
    let mut sum = [[0f32; 8]; 4];
    for i in (0..np).step_by(32) {
        for (j, acc) in sum.iter_mut().enumerate() {
            for (l, a) in acc.iter_mut().enumerate() {
                let e = i + 8 * j + l;
                *a = fmadd(x[e], y[e], *a);
            }
        }
    }
    let mut s0 = [0f32; 8];
    for (l, s) in s0.iter_mut().enumerate() {
        *s = (sum[0][l] + sum[2][l]) + (sum[1][l] + sum[3][l]);
    }
    let t = [s0[0] + s0[4], s0[1] + s0[5], s0[2] + s0[6], s0[3] + s0[7]];
    let mut r = ((t[0] + t[1]) + (t[2] + t[3])) as f64;
    for e in np..n {
        r += (x[e] * y[e]) as f64;
    }
    r as f32
}

/// Store the step's keys and values (`ws.k`, `ws.v`) as f16, then
/// `ws.att` ← attention of `ws.q` over the cache.
pub(super) fn store_and_attend(
    pool: &ThreadPool,
    kv: &mut KvPool,
    layer: usize,
    seqs: &[SeqStep],
    ws: &mut Workspace,
    shape: &AttentionShape,
    fma: bool,
) {
    let kv_dim = shape.n_head_kv * shape.head_dim;
    for (i, (&si, &pos)) in ws.tok_seq.iter().zip(&ws.tok_pos).enumerate() {
        store_f16(
            kv,
            seqs[si as usize].table,
            layer,
            pos as usize,
            &ws.k[i * kv_dim..(i + 1) * kv_dim],
            &ws.v[i * kv_dim..(i + 1) * kv_dim],
        );
    }
    flash_attn(
        pool,
        kv,
        layer,
        seqs,
        &ws.tok_seq,
        &ws.tok_pos,
        &ws.q,
        shape,
        &mut ws.att,
        fma,
    );
}

/// ggml_compute_forward_flash_attn_ext_f16_one_chunk for every (token, head).
#[allow(clippy::too_many_arguments)]
fn flash_attn(
    pool: &ThreadPool,
    kv: &KvPool,
    layer: usize,
    seqs: &[SeqStep],
    tok_seq: &[u32],
    tok_pos: &[u32],
    q: &[f32],
    sh: &AttentionShape,
    out: &mut [f32],
    fma: bool,
) {
    let (t, hd) = (tok_seq.len(), sh.head_dim);
    let q_dim = sh.n_head * hd;
    let o = OutPtr(out.as_mut_ptr());
    let o = &o;
    assert!(out.len() >= t * q_dim && hd <= 256);
    pool.run(t * sh.n_head, &|task| {
        let (i, h) = (task / sh.n_head, task % sh.n_head);
        let pos = tok_pos[i] as usize;
        let job = Head {
            kv,
            layer,
            table: seqs[tok_seq[i] as usize].table,
            first: sh.window.map_or(0, |w| (pos + 1).saturating_sub(w)),
            pos,
            g: h / (sh.n_head / sh.n_head_kv),
            hd,
            scale: sh.scale,
            q: &q[i * q_dim + h * hd..i * q_dim + (h + 1) * hd],
        };
        // SAFETY: task (i, h) owns this slice of `out`; in bounds by the assert.
        let dst = unsafe { std::slice::from_raw_parts_mut(o.0.add(i * q_dim + h * hd), hd) };
        #[cfg(target_arch = "x86_64")]
        if fma {
            // SAFETY: `fma` is true only when detect() saw AVX2 and FMA.
            unsafe { attend_fma(&job, dst) };
            return;
        }
        let _ = fma;
        attend(&job, dst);
    });
}

struct Head<'a> {
    kv: &'a KvPool,
    layer: usize,
    table: &'a [u32],
    first: usize,
    pos: usize,
    g: usize,
    hd: usize,
    scale: f32,
    q: &'a [f32],
}

impl Head<'_> {
    /// Position `pos` of this head's keys (`key`, one element a block's
    /// slots apart) or values (contiguous) as f32 values of f16 numbers.
    #[inline(always)]
    fn row(&self, key: bool, pos: usize, out: &mut [f32]) {
        let (kv, hd) = (self.kv, self.hd);
        let ty = kv.kv_type();
        let (data, at, stride) = if key {
            let at = kv.key_at(self.table, self.layer, pos, self.g * hd);
            (&kv.k[..], at, kv.key_stride())
        } else {
            let at = kv.value_at(self.table, self.layer, pos, self.g * hd);
            (&kv.v[..], at, ty.bytes_per_elem())
        };
        for (i, o) in out[..hd].iter_mut().enumerate() {
            let b = &data[at + i * stride..];
            *o = match ty {
                KvType::F16 => h2f(le16(b)),
                KvType::F32 => h2f(f2h(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_fma(job: &Head, dst: &mut [f32]) {
    attend(job, dst)
}

/// One query row: the query rounded to f16; positions in order (masked ones
/// skipped); online softmax with `expf`; the value sum kept in f16, rounded
/// after every scale and every multiply-add; `1/S` applied at the end.
#[inline(always)]
fn attend(job: &Head, dst: &mut [f32]) {
    let hd = job.hd;
    let mut qh = [0f32; 256];
    for (o, &v) in qh.iter_mut().zip(job.q) {
        *o = h2f(f2h(v));
    }
    let mut vkq = [0f32; 256];
    let mut row = [0f32; 256];
    let (mut s_sum, mut m) = (0f32, f32::NEG_INFINITY);
    for ic in job.first..=job.pos {
        job.row(true, ic, &mut row[..hd]);
        let mut s = vec_dot_f16(&row[..hd], &qh[..hd]);
        s *= job.scale;
        s += 0.0;
        let (mut ms, mut vs) = (1f32, 1f32);
        if s > m {
            let old = m;
            m = s;
            ms = (old - m).exp();
            for a in vkq[..hd].iter_mut() {
                *a = h2f(f2h(*a * ms));
            }
        } else {
            vs = (s - m).exp();
        }
        job.row(false, ic, &mut row[..hd]);
        for (a, &v) in vkq[..hd].iter_mut().zip(&row[..hd]) {
            *a = h2f(f2h(fmadd(v, vs, *a)));
        }
        s_sum = fmadd(s_sum, ms, vs);
    }
    let inv = if s_sum == 0.0 { 0.0 } else { 1.0 / s_sum };
    for (o, &a) in dst.iter_mut().zip(&vkq[..hd]) {
        *o = a * inv;
    }
}

/// ggml_v_expf (AVX2): exp through a 2^n split and a degree-5 polynomial.
#[inline(always)]
fn v_expf(x: f32) -> f32 {
    let c = f32::from_bits;
    let r = c(0x4b40_0000);
    let z = fmadd(x, c(0x3fb8_aa3b), r);
    let n = z - r;
    let b = fmadd(-n, c(0x35bf_be8e), fmadd(-n, c(0x3f31_7200), x));
    let e = z.to_bits().wrapping_shl(23);
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let u = b * b;
    let j = fmadd(
        fmadd(
            fmadd(c(0x3c07_2010), b, c(0x3d2b_9f17)),
            u,
            fmadd(c(0x3e2a_af33), b, c(0x3eff_fedb)),
        ),
        u,
        c(0x3f7f_fff6) * b,
    );
    if n.abs() <= 126.0 {
        return fmadd(j, k, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        fmadd(s2, j, s2) * s1
    }
}

/// ggml_vec_swiglu_f32 (AVX2): x / (1 + exp(-x)) · g per element.
pub(super) fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (x, &g) in gate.iter_mut().zip(up) {
        *x = *x / (1.0 + v_expf(0.0 - *x)) * g;
    }
}

/// ggml_gelu_f32 as compiled into ggml's table (GCC fused `1 + a·x·x`).
fn gelu_f32(x: f32) -> f32 {
    const GELU_COEF_A: f32 = 0.044715;
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * fmadd(GELU_COEF_A * x, x, 1.0)).tanh())
}

/// ggml_vec_geglu_f32 with GGML_GELU_FP16: GELU looked up for the f16
/// rounding of x in a table of f16 values, zero below −10, x above 10.
pub(super) fn geglu(gate: &mut [f32], up: &[f32]) {
    static TABLE: OnceLock<Vec<u16>> = OnceLock::new();
    let table = TABLE.get_or_init(|| (0..=u16::MAX).map(|h| f2h(gelu_f32(h2f(h)))).collect());
    for (x, &g) in gate.iter_mut().zip(up) {
        *x = if *x <= -10.0 {
            0.0
        } else if *x >= 10.0 {
            *x * g
        } else {
            h2f(table[f2h(*x) as usize]) * g
        };
    }
}
