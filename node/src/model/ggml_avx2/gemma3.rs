//! Gemma 3 with ggml's AVX2 arithmetic (see the module above): the graph of
//! llama.cpp's `llama_model_gemma3` (src/models/gemma3.cpp) op by op.

use super::block::{run_block, GgmlCtx, GgmlRun};
use super::kernels::{Act, Rope};
use super::{check_weights, GgmlTraced, OutputHead};
use crate::model::block::Gate;
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
        let cx = GgmlCtx {
            pool,
            file: f,
            seqs,
            fma,
            t,
        };
        for (li, layer) in m.layers.iter().enumerate() {
            let sliding = Gemma3::is_sliding(li);
            let run = GgmlRun {
                n_head: c.n_head,
                n_head_kv: c.n_head_kv,
                head_dim: hd,
                n_ff: c.n_ff,
                rms_eps: c.rms_eps,
                rope: if sliding { &rope_local } else { &rope_global },
                window: sliding.then_some(c.sliding_window),
                gate: Gate::GeLU,
                prescale_q: true,
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
