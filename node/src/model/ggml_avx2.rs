//! The llama family computed with the arithmetic of ggml's x86 CPU backend as
//! built for AVX2 (llama.cpp commit 0c1e570, the commit of the goldens), so
//! that quantized models give llama.cpp's logits bit for bit.
//!
//! Why it exists: with quantized weights ggml rounds every activation row to
//! 8-bit blocks before each matrix product, and a last-bit difference
//! upstream moves some of those roundings. The result is a fresh draw of
//! quantization noise: llama.cpp's own AVX-512 build differs from its AVX2
//! build by up to 0.26 in first-token logprobs on these models (see
//! docs/architecture.md). Matching llama.cpp's published numbers therefore
//! needs the same roundings in the same order, which is what this file does:
//!
//! - activations quantized as `quantize_row_q8_0`/`_q8_1` (x86): scale
//!   `amax/127` stored as f16, multiplier `127/amax`, round half to even;
//! - block dot products as `ggml_vec_dot_q8_0_q8_0`/`_q4_1_q8_1` and
//!   llamafile's `tinyBLAS_Q0_AVX`: eight lanes of four-element integer sums,
//!   one FMA per lane per block with the f32 product of the two f16 scales,
//!   then `hsum_float_8`; Q4_1's `m·s` terms in one FMA chain, added last;
//! - RMSNorm with f32 squares summed in f64; RoPE with `theta *= theta_scale`
//!   per pair and the FMA contractions GCC made; f16 K/V cache;
//! - `flash_attn_ext_f16_one_chunk`: the query rounded to f16, `vec_dot_f16`'s
//!   four 8-lane accumulators and reduction, online softmax with `expf`, the
//!   value sum kept in f16 and rounded after every step;
//! - `ggml_v_expf`/`ggml_v_silu` (the AVX2 polynomial) for SwiGLU.
//!
//! It is a numerics mode, not the fast path: integer sums are plain Rust, and
//! it supports Q8_0 and Q4_1 weights (SmolLM2's files). It runs prompts
//! shorter than 64 tokens and contexts shorter than 512 exactly as llama.cpp
//! does; beyond those llama.cpp switches to tiled and split-KV attention
//! kernels that this file does not follow.

use half::f16;

use super::llama::{Layer, Llama, Variant};
use super::{
    logits_rows, Dims, KvCache, KvPool, KvType, Logits, Model, ModelError, SeqStep, Weight,
    Workspace,
};
use crate::format::GgufFile;
use crate::tensor::{GgmlType, Simd, ThreadPool};

const QK: usize = 32;

/// Llama-family weights run with ggml's AVX2 arithmetic.
pub struct LlamaGgmlAvx2 {
    inner: Llama,
}

impl LlamaGgmlAvx2 {
    /// Wrap a loaded model; every matrix must be Q8_0 or Q4_1 and the model
    /// plain llama (no qwen2 biases).
    pub fn new(inner: Llama) -> Result<Self, ModelError> {
        let file = inner.file.path().display().to_string();
        if inner.variant != Variant::Llama {
            return Err(ModelError::UnsupportedArchitecture(format!(
                "{} (ggml-avx2 numerics cover llama only)",
                inner.variant.arch()
            )));
        }
        let mut all: Vec<&Weight> = vec![&inner.tok_embd, &inner.output];
        for l in &inner.layers {
            all.extend([&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]);
        }
        for w in all {
            if !matches!(w.dtype, GgmlType::Q8_0 | GgmlType::Q4_1) {
                return Err(ModelError::Metadata {
                    file,
                    key: format!(
                        "{}: type {:?} (ggml-avx2 numerics support Q8_0 and Q4_1)",
                        w.name, w.dtype
                    ),
                });
            }
        }
        Ok(LlamaGgmlAvx2 { inner })
    }

    /// [`Model::forward`] with a trace (see [`Self::forward_traced`]).
    pub fn forward_cache_traced(
        &self,
        pool: &ThreadPool,
        tokens: &[u32],
        cache: &mut KvCache,
        ws: &mut Workspace,
        which: Logits,
        trace: &mut dyn FnMut(&str, &[f32]),
    ) {
        let step = SeqStep {
            tokens,
            pos0: cache.len,
            table: &cache.table,
            logits: which,
        };
        self.forward_traced(pool, &[step], &mut cache.pool, ws, trace);
        cache.len += tokens.len();
    }

    /// One forward step, calling `trace(name, rows)` with each intermediate
    /// under llama.cpp's tensor names (`attn_norm-3`, `Qcur-3`, ...), rows
    /// token-major, for comparison with llama.cpp's own tensors.
    pub fn forward_traced(
        &self,
        pool: &ThreadPool,
        seqs: &[SeqStep],
        kv: &mut KvPool,
        ws: &mut Workspace,
        trace: &mut dyn FnMut(&str, &[f32]),
    ) {
        let m = &self.inner;
        let c = &m.cfg;
        let f = &*m.file;
        let (d, hd) = (c.n_embd, c.head_dim);
        let (q_dim, kv_dim) = (c.n_head * hd, c.n_head_kv * hd);
        let t = ws.prepare(seqs, kv.block_size(), d, q_dim, kv_dim, c.n_ff);
        for (i, &tok) in seqs.iter().flat_map(|s| s.tokens).enumerate() {
            let tok = (tok as usize).min(c.n_vocab - 1);
            // Q8_0/Q4_1 dequantization is exact: ggml's get_rows gives the same.
            m.tok_embd.row_into(f, tok, &mut ws.x[i * d..(i + 1) * d]);
        }
        let fma = Simd::detect().is_avx2();
        let mut act = Act::default();
        let rope = RopeCache::new(c.rope_base as f32, hd);
        for (li, layer) in m.layers.iter().enumerate() {
            rms_norm_rows(&ws.x, &layer.attn_norm, c.rms_eps, &mut ws.h);
            trace(&format!("attn_norm-{li}"), &ws.h);
            let lay: &Layer = layer;
            act.quantize(&ws.h, t, d, lay.wq.dtype, fma);
            matmul(pool, f, &lay.wq, &act, t, &mut ws.q, fma);
            act.quantize(&ws.h, t, d, lay.wk.dtype, fma);
            matmul(pool, f, &lay.wk, &act, t, &mut ws.k, fma);
            act.quantize(&ws.h, t, d, lay.wv.dtype, fma);
            matmul(pool, f, &lay.wv, &act, t, &mut ws.v, fma);
            for i in 0..t {
                let p = ws.tok_pos[i] as usize;
                rope.apply(&mut ws.q[i * q_dim..(i + 1) * q_dim], p, hd, fma);
                rope.apply(&mut ws.k[i * kv_dim..(i + 1) * kv_dim], p, hd, fma);
            }
            trace(&format!("Qcur-{li}"), &ws.q);
            trace(&format!("Kcur-{li}"), &ws.k);
            trace(&format!("Vcur-{li}"), &ws.v);
            for i in 0..t {
                let s = &seqs[ws.tok_seq[i] as usize];
                store_f16(
                    kv,
                    s.table,
                    li,
                    ws.tok_pos[i] as usize,
                    &ws.k[i * kv_dim..(i + 1) * kv_dim],
                    &ws.v[i * kv_dim..(i + 1) * kv_dim],
                );
            }
            let att_shape = (c.n_head, c.n_head_kv, hd);
            flash_attn(
                pool,
                kv,
                li,
                seqs,
                &ws.tok_seq,
                &ws.tok_pos,
                &ws.q,
                att_shape,
                &mut ws.att,
                fma,
            );
            trace(&format!("kqv_out-{li}"), &ws.att);
            act.quantize(&ws.att, t, q_dim, lay.wo.dtype, fma);
            matmul(pool, f, &lay.wo, &act, t, &mut ws.o, fma);
            trace(&format!("attn_out-{li}"), &ws.o);
            for (x, &o) in ws.x.iter_mut().zip(&ws.o) {
                *x += o;
            }
            trace(&format!("ffn_inp-{li}"), &ws.x);
            rms_norm_rows(&ws.x, &layer.ffn_norm, c.rms_eps, &mut ws.h);
            trace(&format!("ffn_norm-{li}"), &ws.h);
            act.quantize(&ws.h, t, d, lay.w_gate.dtype, fma);
            matmul(pool, f, &lay.w_gate, &act, t, &mut ws.gate, fma);
            act.quantize(&ws.h, t, d, lay.w_up.dtype, fma);
            matmul(pool, f, &lay.w_up, &act, t, &mut ws.up, fma);
            trace(&format!("ffn_gate-{li}"), &ws.gate);
            trace(&format!("ffn_up-{li}"), &ws.up);
            for (g, &u) in ws.gate.iter_mut().zip(&ws.up) {
                *g = v_silu(*g, fma) * u;
            }
            trace(&format!("ffn_swiglu-{li}"), &ws.gate);
            act.quantize(&ws.gate, t, c.n_ff, lay.w_down.dtype, fma);
            matmul(pool, f, &lay.w_down, &act, t, &mut ws.ffn, fma);
            trace(&format!("ffn_out-{li}"), &ws.ffn);
            for (x, &o) in ws.x.iter_mut().zip(&ws.ffn) {
                *x += o;
            }
            trace(&format!("l_out-{li}"), &ws.x);
        }
        // Rows whose logits were asked for, sequence by sequence.
        let n_out = logits_rows(seqs);
        ws.last.clear();
        let mut first = 0;
        for s in seqs {
            let n = s.tokens.len();
            let rows = match s.logits {
                Logits::All => first..first + n,
                Logits::Last => first + n - 1..first + n,
                Logits::None => first..first,
            };
            ws.last
                .extend_from_slice(&ws.x[rows.start * d..rows.end * d]);
            first += n;
        }
        ws.logits.resize(n_out * c.n_vocab, 0.0);
        if n_out == 0 {
            return;
        }
        let mut normed = vec![0f32; n_out * d];
        rms_norm_rows(&ws.last, &m.out_norm, c.rms_eps, &mut normed);
        trace("result_norm", &normed);
        act.quantize(&normed, n_out, d, m.output.dtype, fma);
        matmul(pool, f, &m.output, &act, n_out, &mut ws.logits, fma);
        trace("result_output", &ws.logits);
    }
}

impl Model for LlamaGgmlAvx2 {
    fn architecture(&self) -> &'static str {
        self.inner.architecture()
    }
    fn dims(&self) -> Dims {
        self.inner.dims()
    }
    fn forward_batch(
        &self,
        pool: &ThreadPool,
        _simd: Simd,
        seqs: &[SeqStep],
        kv: &mut KvPool,
        ws: &mut Workspace,
    ) {
        self.forward_traced(pool, seqs, kv, ws, &mut |_, _| {})
    }
}

fn h2f(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

fn f2h(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

/// `a·b + c` with one rounding. Inside the `fma` feature wrappers below this
/// is a single instruction; elsewhere libm's exact `fmaf`.
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

/// Activations of a step quantized for the weights' `vec_dot_type`:
/// Q8_0 for Q8_0 weights, Q8_1 (with `s = d·Σq`) for Q4_1.
#[derive(Default)]
struct Act {
    d: Vec<f32>,
    s: Vec<f32>,
    q: Vec<i8>,
    cols: usize,
}

impl Act {
    fn quantize(&mut self, x: &[f32], rows: usize, cols: usize, weight: GgmlType, _fma: bool) {
        let nb = rows * cols / QK;
        self.cols = cols;
        self.d.resize(nb, 0.0);
        self.s.resize(nb, 0.0);
        self.q.resize(rows * cols, 0);
        let with_sum = weight == GgmlType::Q4_1;
        for (b, xs) in x[..rows * cols].chunks_exact(QK).enumerate() {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in self.q[b * QK..(b + 1) * QK].iter_mut().zip(xs) {
                let r = (v * id).round_ties_even() as i32;
                let r = r.clamp(-128, 127);
                sum += r;
                *q = r as i8;
            }
            let dh = f2h(d);
            self.d[b] = h2f(dh);
            if with_sum {
                self.s[b] = h2f(f2h(d * sum as f32));
            }
        }
    }
}

/// One weight row against one quantized activation row.
#[inline(always)]
fn dot_row(dtype: GgmlType, w: &[u8], act: &Act, row: usize) -> f32 {
    let nb = act.cols / QK;
    let b0 = row * nb;
    let mut acc = [0f32; 8];
    match dtype {
        GgmlType::Q8_0 => {
            for (b, blk) in w.chunks_exact(34).enumerate() {
                let d = h2f(le16(blk)) * act.d[b0 + b];
                let qa = &act.q[(b0 + b) * QK..(b0 + b + 1) * QK];
                for (l, a) in acc.iter_mut().enumerate() {
                    let mut s = 0i32;
                    for k in 4 * l..4 * l + 4 {
                        s += blk[2 + k] as i8 as i32 * qa[k] as i32;
                    }
                    *a = fmadd(d, s as f32, *a);
                }
            }
            hsum8(&acc)
        }
        GgmlType::Q4_1 => {
            let mut summs = 0f32;
            for (b, blk) in w.chunks_exact(20).enumerate() {
                let (dw, mw) = (h2f(le16(blk)), h2f(le16(&blk[2..])));
                summs = fmadd(mw, act.s[b0 + b], summs);
                let d = dw * act.d[b0 + b];
                let qa = &act.q[(b0 + b) * QK..(b0 + b + 1) * QK];
                let qs = &blk[4..20];
                for (l, a) in acc.iter_mut().enumerate() {
                    let mut s = 0i32;
                    for k in 4 * l..4 * l + 4 {
                        let nib = if k < 16 { qs[k] & 15 } else { qs[k - 16] >> 4 };
                        s += nib as i32 * qa[k] as i32;
                    }
                    *a = fmadd(d, s as f32, *a);
                }
            }
            hsum8(&acc) + summs
        }
        other => unreachable!("checked in LlamaGgmlAvx2::new: {other:?}"),
    }
}

struct OutPtr(*mut f32);
// SAFETY: each task writes a disjoint set of output elements.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// y[t][r] = W[r] · x[t] for every token row of `act`.
fn matmul(
    pool: &ThreadPool,
    f: &GgufFile,
    w: &Weight,
    act: &Act,
    t: usize,
    y: &mut [f32],
    fma: bool,
) {
    const CHUNK: usize = 64;
    let bytes = &f.bytes()[w.offset..w.offset + w.len];
    let row_bytes = w.len / w.rows;
    let (rows, dtype) = (w.rows, w.dtype);
    assert!(y.len() >= t * rows && act.cols == w.cols);
    let out = OutPtr(y.as_mut_ptr());
    let out = &out;
    pool.run(rows.div_ceil(CHUNK), &|task| {
        for r in task * CHUNK..((task + 1) * CHUNK).min(rows) {
            let wr = &bytes[r * row_bytes..(r + 1) * row_bytes];
            for i in 0..t {
                let v = dot(dtype, wr, act, i, fma);
                // SAFETY: (i, r) is written by this task only; in bounds by the assert.
                unsafe { *out.0.add(i * rows + r) = v };
            }
        }
    });
}

#[inline(always)]
fn dot(dtype: GgmlType, w: &[u8], act: &Act, row: usize, fma: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if fma {
        // SAFETY: `fma` is true only when detect() saw AVX2 and FMA.
        return unsafe { dot_fma(dtype, w, act, row) };
    }
    let _ = fma;
    dot_row(dtype, w, act, row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_fma(dtype: GgmlType, w: &[u8], act: &Act, row: usize) -> f32 {
    dot_row(dtype, w, act, row)
}

/// ggml's rms_norm: f32 squares summed in f64, `x·scale·w` per element.
fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
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

/// RoPE on adjacent pairs as `ggml_compute_forward_rope_flt` computes it.
struct RopeCache {
    theta_scale: f32,
}

impl RopeCache {
    fn new(base: f32, n_dims: usize) -> Self {
        RopeCache {
            theta_scale: base.powf(-2.0f32 / n_dims as f32),
        }
    }

    fn apply(&self, x: &mut [f32], pos: usize, hd: usize, _fma: bool) {
        let mut cs = [(0f32, 0f32); 256];
        let mut theta = pos as f32;
        for e in cs.iter_mut().take(hd / 2) {
            *e = (theta.cos(), theta.sin());
            theta *= self.theta_scale;
        }
        for head in x.chunks_exact_mut(hd) {
            for (i, &(c, s)) in cs[..hd / 2].iter().enumerate() {
                let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = fmadd(x0, c, -(x1 * s));
                head[2 * i + 1] = fmadd(x0, s, x1 * c);
            }
        }
    }
}

/// Keys and values rounded to f16 (llama.cpp's default cache type).
fn store_f16(kv: &mut KvPool, table: &[u32], layer: usize, pos: usize, k: &[f32], v: &[f32]) {
    // Round through f16 so an f32 pool holds the same values an f16 one would.
    let round = |x: &[f32]| -> Vec<f32> { x.iter().map(|&a| h2f(f2h(a))).collect() };
    if kv.kv_type() == KvType::F16 {
        kv.store(table, layer, pos, k, v);
    } else {
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
    for l in 0..8 {
        let a = sum[0][l] + sum[2][l];
        let b = sum[1][l] + sum[3][l];
        s0[l] = a + b;
    }
    let t = [s0[0] + s0[4], s0[1] + s0[5], s0[2] + s0[6], s0[3] + s0[7]];
    let mut r = ((t[0] + t[1]) + (t[2] + t[3])) as f64;
    for e in np..n {
        r += (x[e] * y[e]) as f64;
    }
    r as f32
}

#[allow(clippy::too_many_arguments)]
fn flash_attn(
    pool: &ThreadPool,
    kv: &KvPool,
    layer: usize,
    seqs: &[SeqStep],
    tok_seq: &[u32],
    tok_pos: &[u32],
    q: &[f32],
    (n_head, n_head_kv, hd): (usize, usize, usize),
    out: &mut [f32],
    fma: bool,
) {
    let t = tok_seq.len();
    let q_dim = n_head * hd;
    let o = OutPtr(out.as_mut_ptr());
    let o = &o;
    assert!(out.len() >= t * q_dim && hd <= 256);
    pool.run(t * n_head, &|task| {
        let (i, h) = (task / n_head, task % n_head);
        let dst = &mut [0f32; 256][..hd];
        let job = Head {
            kv,
            layer,
            table: seqs[tok_seq[i] as usize].table,
            pos: tok_pos[i] as usize,
            g: h / (n_head / n_head_kv),
            hd,
            q: &q[i * q_dim + h * hd..i * q_dim + (h + 1) * hd],
        };
        #[cfg(target_arch = "x86_64")]
        if fma {
            // SAFETY: `fma` is true only when detect() saw AVX2 and FMA.
            unsafe { attend_fma(&job, dst) };
        } else {
            attend(&job, dst);
        }
        #[cfg(not(target_arch = "x86_64"))]
        attend(&job, dst);
        // SAFETY: task (i, h) owns this slice of `out`.
        let out = unsafe { std::slice::from_raw_parts_mut(o.0.add(i * q_dim + h * hd), hd) };
        out.copy_from_slice(dst);
    });
}

struct Head<'a> {
    kv: &'a KvPool,
    layer: usize,
    table: &'a [u32],
    pos: usize,
    g: usize,
    hd: usize,
    q: &'a [f32],
}

impl Head<'_> {
    /// Position `pos` of this head's keys or values (`data`) as f16 bits.
    #[inline(always)]
    fn row(&self, data: &[u8], pos: usize, out: &mut [u16]) {
        let (kv, hd) = (self.kv, self.hd);
        let at = kv.at(self.table, self.layer, pos, self.g * hd);
        match kv.kv_type() {
            KvType::F16 => {
                for (o, b) in out.iter_mut().zip(data[at..at + 2 * hd].chunks_exact(2)) {
                    *o = le16(b);
                }
            }
            KvType::F32 => {
                for (o, b) in out.iter_mut().zip(data[at..at + 4 * hd].chunks_exact(4)) {
                    *o = f2h(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_fma(job: &Head, dst: &mut [f32]) {
    attend(job, dst)
}

/// flash_attn_ext_f16_one_chunk for one query row: positions in order,
/// masked ones (after `pos`) skipped.
#[inline(always)]
fn attend(job: &Head, dst: &mut [f32]) {
    let hd = job.hd;
    let scale = 1.0f32 / (hd as f32).sqrt();
    let qh: Vec<f32> = job.q.iter().map(|&v| h2f(f2h(v))).collect();
    let mut vkq = vec![0u16; hd];
    let mut row = vec![0u16; hd];
    let mut rowf = vec![0f32; hd];
    let (mut s_sum, mut m) = (0f32, f32::NEG_INFINITY);
    for ic in 0..=job.pos {
        job.row(&job.kv.k, ic, &mut row);
        for (o, &b) in rowf.iter_mut().zip(&row) {
            *o = h2f(b);
        }
        let mut s = vec_dot_f16(&rowf, &qh);
        s *= scale;
        s += 0.0;
        let (mut ms, mut vs) = (1f32, 1f32);
        if s > m {
            let old = m;
            m = s;
            ms = (old - m).exp();
            for a in vkq.iter_mut() {
                *a = f2h(h2f(*a) * ms);
            }
        } else {
            vs = (s - m).exp();
        }
        job.row(&job.kv.v, ic, &mut row);
        for (a, &b) in vkq.iter_mut().zip(&row) {
            *a = f2h(fmadd(h2f(b), vs, h2f(*a)));
        }
        s_sum = fmadd(s_sum, ms, vs);
    }
    let inv = if s_sum == 0.0 { 0.0 } else { 1.0 / s_sum };
    for (o, &a) in dst.iter_mut().zip(&vkq) {
        *o = h2f(a) * inv;
    }
}

/// ggml_v_expf (AVX2): exp with a degree-5 polynomial after a 2^n split.
#[inline(always)]
fn v_expf(x: f32) -> f32 {
    let c = f32::from_bits;
    let r = c(0x4b40_0000);
    let z = fmadd(x, c(0x3fb8_aa3b), r);
    let n = z - r;
    let b = fmadd(-n, c(0x35bf_be8e), fmadd(-n, c(0x3f31_7200), x));
    let e = z.to_bits().wrapping_shl(23);
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let big = n.abs() > 126.0;
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
    if !big {
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

/// ggml_v_silu: x / (1 + exp(-x)).
#[inline(always)]
fn v_silu(x: f32, _fma: bool) -> f32 {
    x / (1.0 + v_expf(0.0 - x))
}
