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
//! - K-quants as the kernels ggml picks for them: Q8_K activations
//!   (`quantize_row_q8_K_ref`), Q4_K through the repacked `q4_K_8x8` gemv
//!   and gemm (rows in groups of four), Q6_K through `vec_dot_q6_K_q8_K`
//!   below eight rows and the tiled kernel from eight;
//! - GELU from ggml's f16 lookup table (Gemma 3).
//!
//! It is a numerics mode, not the fast path: integer sums are plain Rust.
//! It covers the llama family with Q8_0/Q4_1/Q5_0/Q4_K/Q6_K weights and
//! Gemma 3 (SmolLM2's and Gemma 3 270M's files). It follows llama.cpp
//! exactly for prompts shorter than 64 tokens in contexts shorter than 512;
//! beyond those llama.cpp switches to tiled and split-KV attention kernels
//! that this mode does not follow (it stays close, not identical).

mod block;
mod gemma3;
mod kernels;

pub use gemma3::Gemma3GgmlAvx2;

use block::{run_block, GgmlCtx, GgmlRun};
use kernels::{matmul, rms_norm_rows, supported, Act, Rope};

use super::block::Gate;
use super::llama::{Llama, Variant};
use super::{
    logits_rows, Dims, KvCache, KvPool, Logits, Model, ModelError, SeqStep, Weight, Workspace,
};
use crate::format::GgufFile;
use crate::tensor::{Simd, ThreadPool};

/// Llama-family weights run with ggml's AVX2 arithmetic.
pub struct LlamaGgmlAvx2 {
    inner: Llama,
}

impl LlamaGgmlAvx2 {
    /// Wrap a loaded model; every matrix must be Q8_0 or Q4_1 and the model
    /// plain llama (no qwen2 biases).
    pub fn new(inner: Llama) -> Result<Self, ModelError> {
        let w = inner.weights();
        let file = w.file.path().display().to_string();
        if w.variant != Variant::Llama {
            return Err(ModelError::NoGgmlNumerics(w.variant.arch().to_owned()));
        }
        let mut all: Vec<&Weight> = vec![w.output];
        for l in w.layers {
            all.extend([&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]);
        }
        check_weights(&file, w.tok_embd, &all)?;
        Ok(LlamaGgmlAvx2 { inner })
    }
}

/// A model in ggml-avx2 numerics: its forward step with a trace of every
/// intermediate, for comparison with llama.cpp's own tensors
/// (`examples/ggml_compare.rs`).
pub trait GgmlTraced: Model {
    /// One forward step, calling `trace(name, rows)` with each intermediate
    /// under llama.cpp's tensor names (`attn_norm-3`, `Qcur-3`, ...), rows
    /// token-major.
    fn forward_traced(
        &self,
        pool: &ThreadPool,
        seqs: &[SeqStep],
        kv: &mut KvPool,
        ws: &mut Workspace,
        trace: &mut dyn FnMut(&str, &[f32]),
    );

    /// [`Model::forward`] with a trace.
    fn forward_cache_traced(
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
}

impl GgmlTraced for LlamaGgmlAvx2 {
    fn forward_traced(
        &self,
        pool: &ThreadPool,
        seqs: &[SeqStep],
        kv: &mut KvPool,
        ws: &mut Workspace,
        trace: &mut dyn FnMut(&str, &[f32]),
    ) {
        let m = self.inner.weights();
        let c = &self.inner.cfg;
        let f = m.file;
        let (d, hd) = (c.n_embd, c.head_dim);
        let (q_dim, kv_dim) = (c.n_head * hd, c.n_head_kv * hd);
        let t = ws.prepare(seqs, kv.block_size(), d, q_dim, kv_dim, c.n_ff);
        for (i, &tok) in seqs.iter().flat_map(|s| s.tokens).enumerate() {
            let tok = (tok as usize).min(c.n_vocab - 1);
            // Q8_0 dequantization is exact: ggml's get_rows gives the same.
            m.tok_embd.row_into(f, tok, &mut ws.x[i * d..(i + 1) * d]);
        }
        let fma = Simd::detect().is_avx2();
        let mut act = Act::default();
        let rope = Rope::new(c.rope_base as f32, hd, false);
        let cx = GgmlCtx {
            pool,
            file: f,
            seqs,
            fma,
            t,
        };
        for (li, layer) in m.layers.iter().enumerate() {
            let run = GgmlRun {
                n_head: c.n_head,
                n_head_kv: c.n_head_kv,
                head_dim: hd,
                n_ff: c.n_ff,
                rms_eps: c.rms_eps,
                rope: &rope,
                window: None,
                gate: Gate::SiLU,
                prescale_q: false,
                last: li + 1 == m.layers.len(),
            };
            run_block(&cx, li, &layer.block(), &run, kv, ws, &mut act, trace);
        }
        let head = OutputHead {
            file: f,
            norm: m.out_norm,
            eps: c.rms_eps,
            output: m.output,
        };
        head.logits(pool, seqs, ws, &mut act, fma, trace);
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

/// The final norm and output projection over the rows whose logits are
/// wanted (at the front of `ws.x` after the last layer).
struct OutputHead<'a> {
    file: &'a GgufFile,
    norm: &'a [f32],
    eps: f32,
    output: &'a Weight,
}

impl OutputHead<'_> {
    fn logits(
        &self,
        pool: &ThreadPool,
        seqs: &[SeqStep],
        ws: &mut Workspace,
        act: &mut Act,
        fma: bool,
        trace: &mut dyn FnMut(&str, &[f32]),
    ) {
        let (d, n_vocab) = (self.norm.len(), self.output.rows);
        let n_out = logits_rows(seqs);
        ws.logits.resize(n_out * n_vocab, 0.0);
        if n_out == 0 {
            return;
        }
        let mut normed = vec![0f32; n_out * d];
        rms_norm_rows(&ws.x[..n_out * d], self.norm, self.eps, &mut normed);
        trace("result_norm", &normed);
        act.quantize(&normed, n_out, d, self.output.dtype);
        matmul(
            pool,
            self.file,
            self.output,
            act,
            n_out,
            &mut ws.logits,
            fma,
        );
        trace("result_output", &ws.logits);
    }
}

/// Every matrix in `all` must be one this mode runs, the embeddings Q8_0
/// (whose dequantization is exact, so get_rows needs no emulation).
fn check_weights(file: &str, embd: &Weight, all: &[&Weight]) -> Result<(), ModelError> {
    if embd.dtype != crate::tensor::GgmlType::Q8_0 {
        return Err(ModelError::GgmlNumerics {
            file: file.to_owned(),
            reason: format!(
                "{}: type {:?} (the embeddings must be Q8_0)",
                embd.name, embd.dtype
            ),
        });
    }
    for w in all {
        supported(w).map_err(|reason| ModelError::GgmlNumerics {
            file: file.to_owned(),
            reason,
        })?;
    }
    Ok(())
}

/// Move the rows (`d` wide) whose logits `seqs` ask for to the front of `x`
/// and `y`, sequence by sequence; returns their number.
fn keep_output_rows(
    seqs: &[SeqStep],
    d: usize,
    x: &mut [f32],
    y: &mut [f32],
    tmp: &mut Vec<f32>,
) -> usize {
    let mut kept = 0;
    for buf in [x, y] {
        tmp.clear();
        let mut first = 0;
        for s in seqs {
            let n = s.tokens.len();
            let rows = match s.logits {
                Logits::All => first..first + n,
                Logits::Last => first + n - 1..first + n,
                Logits::None => first..first,
            };
            tmp.extend_from_slice(&buf[rows.start * d..rows.end * d]);
            first += n;
        }
        buf[..tmp.len()].copy_from_slice(tmp);
        kept = tmp.len() / d;
    }
    kept
}
