//! Gemma 3 with ggml's AVX2 arithmetic (see the module above): the graph of
//! llama.cpp's `llama_model_gemma3` (src/models/gemma3.cpp) op by op.

use super::kernels::{
    geglu, matmul, rms_norm_in_place, rms_norm_rows, store_and_attend, Act, Rope,
};
use super::{check_weights, keep_output_rows, GgmlTraced, OutputHead};
use crate::model::attention::AttentionShape;
use crate::model::gemma3::{Gemma3, SWA_ROPE_BASE};
use crate::model::{Dims, KvPool, Model, ModelError, SeqStep, Weight, Workspace};
use crate::tensor::{Simd, ThreadPool};

/// Gemma 3 weights run with ggml's AVX2 arithmetic.
pub struct Gemma3GgmlAvx2 {
    inner: Gemma3,
}

impl Gemma3GgmlAvx2 {
    pub fn new(inner: Gemma3) -> Result<Self, ModelError> {
        let w = inner.weights();
        let file = w.file.path().display().to_string();
        let mut all: Vec<&Weight> = vec![w.output];
        for l in w.layers {
            all.extend([&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]);
        }
        check_weights(&file, w.tok_embd, &all)?;
        Ok(Gemma3GgmlAvx2 { inner })
    }
}

impl GgmlTraced for Gemma3GgmlAvx2 {
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
        // get_rows (Q8_0: exact), then ggml_scale by sqrtf(n_embd).
        let embd_scale = (d as f32).sqrt();
        for (i, &tok) in seqs.iter().flat_map(|s| s.tokens).enumerate() {
            let row = &mut ws.x[i * d..(i + 1) * d];
            m.tok_embd
                .row_into(f, (tok as usize).min(c.n_vocab - 1), row);
            row.iter_mut().for_each(|v| *v *= embd_scale);
        }
        trace("inp_scaled", &ws.x[..t * d]);
        let fma = Simd::detect().is_avx2();
        let mut act = Act::default();
        let rope_local = Rope::new(SWA_ROPE_BASE as f32, hd, true);
        let rope_global = Rope::new(c.rope_base as f32, hd, true);
        // hparams.f_attention_scale for Gemma 3 below 27B: 1/sqrt(head_dim).
        let q_scale = 1.0f32 / (hd as f32).sqrt();
        for (li, layer) in m.layers.iter().enumerate() {
            let sliding = Gemma3::is_sliding(li);
            rms_norm_rows(&ws.x[..t * d], &layer.attn_norm, c.rms_eps, &mut ws.h);
            trace(&format!("attn_norm-{li}"), &ws.h[..t * d]);
            act.quantize(&ws.h, t, d, layer.wq.dtype);
            matmul(pool, f, &layer.wq, &act, t, &mut ws.q, fma);
            act.quantize(&ws.h, t, d, layer.wk.dtype);
            matmul(pool, f, &layer.wk, &act, t, &mut ws.k, fma);
            act.quantize(&ws.h, t, d, layer.wv.dtype);
            matmul(pool, f, &layer.wv, &act, t, &mut ws.v, fma);
            let (q, k) = (&mut ws.q[..t * q_dim], &mut ws.k[..t * kv_dim]);
            rms_norm_in_place(q, &layer.q_norm, c.rms_eps);
            trace(&format!("Qcur_normed-{li}"), q);
            rms_norm_in_place(k, &layer.k_norm, c.rms_eps);
            trace(&format!("Kcur_normed-{li}"), k);
            let rope = if sliding { &rope_local } else { &rope_global };
            for i in 0..t {
                let p = ws.tok_pos[i] as usize;
                rope.apply(&mut q[i * q_dim..(i + 1) * q_dim], p, hd);
                rope.apply(&mut k[i * kv_dim..(i + 1) * kv_dim], p, hd);
            }
            trace(&format!("Qcur-{li}"), q);
            trace(&format!("Kcur-{li}"), k);
            trace(&format!("Vcur-{li}"), &ws.v[..t * kv_dim]);
            q.iter_mut().for_each(|v| *v *= q_scale);
            let shape = AttentionShape {
                n_head: c.n_head,
                n_head_kv: c.n_head_kv,
                head_dim: hd,
                scale: 1.0,
                window: sliding.then_some(c.sliding_window),
            };
            store_and_attend(pool, kv, li, seqs, ws, &shape, fma);
            trace(&format!("kqv_out-{li}"), &ws.att[..t * q_dim]);
            act.quantize(&ws.att, t, q_dim, layer.wo.dtype);
            matmul(pool, f, &layer.wo, &act, t, &mut ws.o, fma);
            let tt = if li + 1 == m.layers.len() {
                keep_output_rows(seqs, d, &mut ws.x, &mut ws.o, &mut ws.last)
            } else {
                t
            };
            let o = &mut ws.o[..tt * d];
            rms_norm_in_place(o, &layer.post_attn_norm, c.rms_eps);
            trace(&format!("attn_post_norm-{li}"), o);
            let x = &mut ws.x[..tt * d];
            for (x, &o) in x.iter_mut().zip(o.iter()) {
                *x += o;
            }
            trace(&format!("sa_out-{li}"), x);
            rms_norm_rows(x, &layer.ffn_norm, c.rms_eps, &mut ws.h);
            trace(&format!("ffn_norm-{li}"), &ws.h[..tt * d]);
            act.quantize(&ws.h, tt, d, layer.w_gate.dtype);
            matmul(pool, f, &layer.w_gate, &act, tt, &mut ws.gate, fma);
            act.quantize(&ws.h, tt, d, layer.w_up.dtype);
            matmul(pool, f, &layer.w_up, &act, tt, &mut ws.up, fma);
            let nf = tt * c.n_ff;
            trace(&format!("ffn_gate-{li}"), &ws.gate[..nf]);
            trace(&format!("ffn_up-{li}"), &ws.up[..nf]);
            geglu(&mut ws.gate[..nf], &ws.up);
            trace(&format!("ffn_geglu-{li}"), &ws.gate[..nf]);
            act.quantize(&ws.gate, tt, c.n_ff, layer.w_down.dtype);
            matmul(pool, f, &layer.w_down, &act, tt, &mut ws.ffn, fma);
            let ffn = &mut ws.ffn[..tt * d];
            trace(&format!("ffn_out-{li}"), ffn);
            rms_norm_in_place(ffn, &layer.post_ffn_norm, c.rms_eps);
            trace(&format!("ffn_post_norm-{li}"), ffn);
            let x = &mut ws.x[..tt * d];
            for (x, &o) in x.iter_mut().zip(ffn.iter()) {
                *x += o;
            }
            trace(&format!("l_out-{li}"), x);
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

impl Model for Gemma3GgmlAvx2 {
    fn architecture(&self) -> &'static str {
        "gemma3"
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
