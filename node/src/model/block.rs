//! The transformer block every family runs: pre-norm, Q/K/V, RoPE and the
//! KV store, attention, output projection, residual; pre-norm, gated
//! feed-forward, residual. What differs by family is data — optional
//! biases and norms, the RoPE pairing, the gate's activation, a window —
//! so llama, qwen2 and Gemma 3 each describe their layers as a [`Block`]
//! and share this one code path.

use super::attention::{attention, AttentionShape};
use super::ops::{add_in_place, geglu, rms_norm, rms_norm_rows, rope_adjacent, rope_neox, swiglu};
use super::{SeqStep, Weight, Workspace};
use crate::format::GgufFile;
use crate::kv::KvPool;
use crate::tensor::{matmul, matmul_gated, matmul_many, Simd, ThreadPool};

/// Which elements of a head RoPE rotates together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopePairs {
    /// Adjacent elements (llama's GGUF layout).
    Adjacent,
    /// Element i with i + head_dim/2 (NEOX: qwen2, Gemma).
    Halves,
}

/// The feed-forward gate's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    SiLU,
    /// GELU, tanh approximation.
    GeLU,
}

/// One block's weights. The optional parts are what some families add.
pub struct Block<'a> {
    pub attn_norm: &'a [f32],
    pub wq: &'a Weight,
    pub wk: &'a Weight,
    pub wv: &'a Weight,
    /// Q, K, V biases (qwen2).
    pub qkv_bias: Option<&'a [Vec<f32>; 3]>,
    /// Per-head RMSNorm of the queries and the keys (Gemma 3).
    pub qk_norm: Option<(&'a [f32], &'a [f32])>,
    pub wo: &'a Weight,
    /// RMSNorm of the attention's output before the residual (Gemma 3).
    pub post_attn_norm: Option<&'a [f32]>,
    pub ffn_norm: &'a [f32],
    pub w_gate: &'a Weight,
    pub w_up: &'a Weight,
    pub w_down: &'a Weight,
    /// RMSNorm of the feed-forward's output before the residual (Gemma 3).
    pub post_ffn_norm: Option<&'a [f32]>,
}

/// How a block runs: the family's and the layer's choices.
#[derive(Debug, Clone, Copy)]
pub struct BlockRun {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub rms_eps: f32,
    pub rope: RopePairs,
    /// Take the RoPE factors from `ws.rope2` instead of `ws.rope` (Gemma's
    /// global layers use another base).
    pub second_rope_table: bool,
    /// Sliding attention window, if the layer has one.
    pub window: Option<usize>,
    pub gate: Gate,
}

/// What one forward step shares across its blocks.
pub struct StepCtx<'a> {
    pub pool: &'a ThreadPool,
    pub simd: Simd,
    pub file: &'a GgufFile,
    pub seqs: &'a [SeqStep<'a>],
    /// Tokens in the step.
    pub t: usize,
}

impl StepCtx<'_> {
    fn matmul(&self, w: &Weight, x: &[f32], y: &mut [f32], s: &mut crate::tensor::Scratch) {
        matmul(self.pool, self.simd, &w.matrix(self.file), x, self.t, y, s)
            .expect("shapes checked at load");
    }
}

/// Run block `li` over the step: `ws.x` holds the step's hidden states
/// (token-major) and is updated in place; the layer's keys and values go
/// into `kv`.
pub fn run_block(
    cx: &StepCtx,
    li: usize,
    b: &Block,
    r: &BlockRun,
    kv: &mut KvPool,
    ws: &mut Workspace,
    tmp: &mut Vec<f32>,
) {
    let (t, f, hd) = (cx.t, cx.file, r.head_dim);
    let d = b.attn_norm.len();
    let (q_dim, kv_dim) = (r.n_head * hd, r.n_head_kv * hd);
    for i in 0..t {
        rms_norm(
            &ws.x[i * d..(i + 1) * d],
            b.attn_norm,
            r.rms_eps,
            &mut ws.h[i * d..(i + 1) * d],
        );
    }
    matmul_many(
        cx.pool,
        cx.simd,
        &[&b.wq.matrix(f), &b.wk.matrix(f), &b.wv.matrix(f)],
        &ws.h,
        t,
        &mut [&mut ws.q, &mut ws.k, &mut ws.v],
        &mut ws.scratch,
    )
    .expect("shapes checked at load");
    if let Some([bq, bk, bv]) = b.qkv_bias {
        for i in 0..t {
            add_in_place(&mut ws.q[i * q_dim..(i + 1) * q_dim], bq);
            add_in_place(&mut ws.k[i * kv_dim..(i + 1) * kv_dim], bk);
            add_in_place(&mut ws.v[i * kv_dim..(i + 1) * kv_dim], bv);
        }
    }
    if let Some((qn, kn)) = b.qk_norm {
        rms_norm_rows(&mut ws.q, qn, r.rms_eps, tmp);
        rms_norm_rows(&mut ws.k, kn, r.rms_eps, tmp);
    }
    let rope = match r.rope {
        RopePairs::Adjacent => rope_adjacent,
        RopePairs::Halves => rope_neox,
    };
    let table = if r.second_rope_table {
        &ws.rope2
    } else {
        &ws.rope
    };
    let np = table.len() / t.max(1);
    for i in 0..t {
        let sc = &table[i * np..(i + 1) * np];
        rope(&mut ws.q[i * q_dim..(i + 1) * q_dim], hd, sc);
        rope(&mut ws.k[i * kv_dim..(i + 1) * kv_dim], hd, sc);
        kv.store(
            cx.seqs[ws.tok_seq[i] as usize].table,
            li,
            ws.tok_pos[i] as usize,
            &ws.k[i * kv_dim..(i + 1) * kv_dim],
            &ws.v[i * kv_dim..(i + 1) * kv_dim],
        );
    }
    let shape = AttentionShape {
        n_head: r.n_head,
        n_head_kv: r.n_head_kv,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        window: r.window,
    };
    attention(
        cx.pool,
        cx.simd,
        kv,
        li,
        cx.seqs,
        &ws.tok_seq,
        &ws.tok_pos,
        &ws.q,
        &shape,
        &mut ws.att,
    );
    cx.matmul(b.wo, &ws.att, &mut ws.o, &mut ws.scratch);
    if let Some(n) = b.post_attn_norm {
        rms_norm_rows(&mut ws.o, n, r.rms_eps, tmp);
    }
    add_in_place(&mut ws.x, &ws.o);
    for i in 0..t {
        rms_norm(
            &ws.x[i * d..(i + 1) * d],
            b.ffn_norm,
            r.rms_eps,
            &mut ws.h[i * d..(i + 1) * d],
        );
    }
    // The activation runs in the product's tasks where it can (matmul_gated).
    let act: &(dyn Fn(&mut [f32], &[f32]) + Sync) = match r.gate {
        Gate::SiLU => &swiglu,
        Gate::GeLU => &geglu,
    };
    matmul_gated(
        cx.pool,
        cx.simd,
        &b.w_gate.matrix(f),
        &b.w_up.matrix(f),
        &ws.h,
        t,
        &mut ws.gate,
        &mut ws.up,
        &mut ws.scratch,
        act,
    )
    .expect("shapes checked at load");
    cx.matmul(b.w_down, &ws.gate, &mut ws.ffn, &mut ws.scratch);
    if let Some(n) = b.post_ffn_norm {
        rms_norm_rows(&mut ws.ffn, n, r.rms_eps, tmp);
    }
    add_in_place(&mut ws.x, &ws.ffn);
}
