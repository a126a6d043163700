//! The transformer block in ggml's AVX2 arithmetic, for both families: the
//! same [`Block`] description the native path runs, computed op by op as
//! llama.cpp's graphs do (`llm_build_llama`, `llm_build_gemma3`), with a
//! trace of every intermediate under llama.cpp's tensor names.

use super::keep_output_rows;
use super::kernels::{
    geglu, matmul, rms_norm_in_place, rms_norm_rows, store_and_attend, swiglu, Act, Rope,
};
use crate::format::GgufFile;
use crate::model::attention::AttentionShape;
use crate::model::block::{Block, Gate};
use crate::model::{KvPool, SeqStep, Workspace};
use crate::tensor::ThreadPool;

/// How a block runs in this arithmetic.
pub(super) struct GgmlRun<'a> {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub rms_eps: f32,
    pub rope: &'a Rope,
    pub window: Option<usize>,
    pub gate: Gate,
    /// Gemma's graph scales the queries (`ggml_scale`) before attention
    /// rather than inside the softmax; the roundings differ.
    pub prescale_q: bool,
    /// The last block keeps only the rows whose logits are wanted after
    /// its attention (llama.cpp's graph does, and K-quant products depend
    /// on the number of rows).
    pub last: bool,
}

pub(super) struct GgmlCtx<'a> {
    pub pool: &'a ThreadPool,
    pub file: &'a GgufFile,
    pub seqs: &'a [SeqStep<'a>],
    pub fma: bool,
    pub t: usize,
}

impl GgmlCtx<'_> {
    fn project(
        &self,
        act: &mut Act,
        x: &[f32],
        rows: usize,
        cols: usize,
        w: &crate::model::Weight,
        y: &mut [f32],
    ) {
        act.quantize(x, rows, cols, w.dtype);
        matmul(self.pool, self.file, w, act, rows, y, self.fma);
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn run_block(
    cx: &GgmlCtx,
    li: usize,
    b: &Block,
    r: &GgmlRun,
    kv: &mut KvPool,
    ws: &mut Workspace,
    act: &mut Act,
    trace: &mut dyn FnMut(&str, &[f32]),
) {
    let (t, hd) = (cx.t, r.head_dim);
    let d = b.attn_norm.len();
    let (q_dim, kv_dim) = (r.n_head * hd, r.n_head_kv * hd);
    rms_norm_rows(&ws.x[..t * d], b.attn_norm, r.rms_eps, &mut ws.h);
    trace(&format!("attn_norm-{li}"), &ws.h[..t * d]);
    cx.project(act, &ws.h, t, d, b.wq, &mut ws.q);
    cx.project(act, &ws.h, t, d, b.wk, &mut ws.k);
    cx.project(act, &ws.h, t, d, b.wv, &mut ws.v);
    let (q, k) = (&mut ws.q[..t * q_dim], &mut ws.k[..t * kv_dim]);
    if let Some((qn, kn)) = b.qk_norm {
        rms_norm_in_place(q, qn, r.rms_eps);
        trace(&format!("Qcur_normed-{li}"), q);
        rms_norm_in_place(k, kn, r.rms_eps);
        trace(&format!("Kcur_normed-{li}"), k);
    }
    for i in 0..t {
        let p = ws.tok_pos[i] as usize;
        r.rope.apply(&mut q[i * q_dim..(i + 1) * q_dim], p, hd);
        r.rope.apply(&mut k[i * kv_dim..(i + 1) * kv_dim], p, hd);
    }
    trace(&format!("Qcur-{li}"), q);
    trace(&format!("Kcur-{li}"), k);
    trace(&format!("Vcur-{li}"), &ws.v[..t * kv_dim]);
    let scale = 1.0f32 / (hd as f32).sqrt();
    if r.prescale_q {
        q.iter_mut().for_each(|v| *v *= scale);
    }
    let shape = AttentionShape {
        n_head: r.n_head,
        n_head_kv: r.n_head_kv,
        head_dim: hd,
        scale: if r.prescale_q { 1.0 } else { scale },
        window: r.window,
    };
    store_and_attend(cx.pool, kv, li, cx.seqs, ws, &shape, cx.fma);
    trace(&format!("kqv_out-{li}"), &ws.att[..t * q_dim]);
    cx.project(act, &ws.att, t, q_dim, b.wo, &mut ws.o);
    if b.post_attn_norm.is_none() {
        trace(&format!("attn_out-{li}"), &ws.o[..t * d]);
    }
    let tt = if r.last {
        keep_output_rows(cx.seqs, d, &mut ws.x, &mut ws.o, &mut ws.last)
    } else {
        t
    };
    let o = &mut ws.o[..tt * d];
    if let Some(n) = b.post_attn_norm {
        rms_norm_in_place(o, n, r.rms_eps);
        trace(&format!("attn_post_norm-{li}"), o);
    }
    let x = &mut ws.x[..tt * d];
    for (x, &o) in x.iter_mut().zip(o.iter()) {
        *x += o;
    }
    // llama.cpp names this sum `sa_out` in Gemma's graph, `ffn_inp` in llama's.
    let residual = if b.post_attn_norm.is_some() {
        "sa_out"
    } else {
        "ffn_inp"
    };
    trace(&format!("{residual}-{li}"), x);
    rms_norm_rows(x, b.ffn_norm, r.rms_eps, &mut ws.h);
    trace(&format!("ffn_norm-{li}"), &ws.h[..tt * d]);
    cx.project(act, &ws.h, tt, d, b.w_gate, &mut ws.gate);
    cx.project(act, &ws.h, tt, d, b.w_up, &mut ws.up);
    let nf = tt * r.n_ff;
    trace(&format!("ffn_gate-{li}"), &ws.gate[..nf]);
    trace(&format!("ffn_up-{li}"), &ws.up[..nf]);
    let name = match r.gate {
        Gate::SiLU => {
            swiglu(&mut ws.gate[..nf], &ws.up);
            "ffn_swiglu"
        }
        Gate::GeLU => {
            geglu(&mut ws.gate[..nf], &ws.up);
            "ffn_geglu"
        }
    };
    trace(&format!("{name}-{li}"), &ws.gate[..nf]);
    cx.project(act, &ws.gate, tt, r.n_ff, b.w_down, &mut ws.ffn);
    let ffn = &mut ws.ffn[..tt * d];
    trace(&format!("ffn_out-{li}"), ffn);
    if let Some(n) = b.post_ffn_norm {
        rms_norm_in_place(ffn, n, r.rms_eps);
        trace(&format!("ffn_post_norm-{li}"), ffn);
    }
    let x = &mut ws.x[..tt * d];
    for (x, &o) in x.iter_mut().zip(ffn.iter()) {
        *x += o;
    }
    trace(&format!("l_out-{li}"), x);
}
