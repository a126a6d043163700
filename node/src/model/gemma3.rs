//! Gemma 3: embeddings scaled by √d, RMSNorm before and after both the
//! attention and the feed-forward, per-head RMSNorm of queries and keys,
//! NEOX RoPE with a 10k base on sliding-window layers and the file's base
//! on global ones (every sixth layer is global), GELU-tanh gated
//! feed-forward, tied output.

use std::sync::Arc;

use super::block::{run_block, Block, BlockRun, Gate, RopePairs, StepCtx};
use super::ops::{rope_inv_freq, rope_table};
use super::{output_logits, Dims, Loader, Model, ModelError, SeqStep, Weight, Workspace};
use crate::format::GgufFile;
use crate::kv::KvPool;
use crate::tensor::{fine_head, Simd, ThreadPool};

/// llama.cpp's fixed values for Gemma 3 (not in the GGUF metadata).
const SWA_PATTERN: usize = 6;
pub const SWA_ROPE_BASE: f64 = 10_000.0;

#[derive(Debug, Clone, PartialEq)]
pub struct Gemma3Config {
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub rope_base: f64,
    pub sliding_window: usize,
    pub rms_eps: f32,
}

/// One block's weights.
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Weight,
    pub wk: Weight,
    pub wv: Weight,
    pub q_norm: Vec<f32>,
    pub k_norm: Vec<f32>,
    pub wo: Weight,
    pub post_attn_norm: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Weight,
    pub w_up: Weight,
    pub w_down: Weight,
    pub post_ffn_norm: Vec<f32>,
}

pub struct Gemma3 {
    pub cfg: Gemma3Config,
    file: Arc<GgufFile>,
    tok_embd: Weight,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: Weight,
    /// The head's activations in two 8-bit terms (see `tensor::fine_head`).
    fine_head: bool,
    inv_freq_global: Vec<f32>,
    inv_freq_local: Vec<f32>,
}

/// The weights as a forward pass reads them (see `llama::LlamaWeights`).
pub struct Gemma3Weights<'a> {
    pub file: &'a GgufFile,
    pub tok_embd: &'a Weight,
    pub layers: &'a [Layer],
    pub out_norm: &'a [f32],
    pub output: &'a Weight,
}

impl Layer {
    /// The block's seven matrices (what [`super::pack_weights`] repacks).
    fn matrices(&self) -> [&Weight; 7] {
        [
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.w_gate,
            &self.w_up,
            &self.w_down,
        ]
    }

    fn matrices_mut(&mut self) -> [&mut Weight; 7] {
        let l = self;
        [
            &mut l.wq,
            &mut l.wk,
            &mut l.wv,
            &mut l.wo,
            &mut l.w_gate,
            &mut l.w_up,
            &mut l.w_down,
        ]
    }

    /// The layer as the shared block skeleton runs it.
    pub fn block(&self) -> Block<'_> {
        Block {
            attn_norm: &self.attn_norm,
            wq: &self.wq,
            wk: &self.wk,
            wv: &self.wv,
            qkv_bias: None,
            qk_norm: Some((&self.q_norm, &self.k_norm)),
            wo: &self.wo,
            post_attn_norm: Some(&self.post_attn_norm),
            ffn_norm: &self.ffn_norm,
            w_gate: &self.w_gate,
            w_up: &self.w_up,
            w_down: &self.w_down,
            post_ffn_norm: Some(&self.post_ffn_norm),
        }
    }
}

impl Gemma3 {
    pub fn weights(&self) -> Gemma3Weights<'_> {
        Gemma3Weights {
            file: &self.file,
            tok_embd: &self.tok_embd,
            layers: &self.layers,
            out_norm: &self.out_norm,
            output: &self.output,
        }
    }

    /// The model with its matrices repacked for the AVX-512 VNNI products, where
    /// [`super::packing_enabled`].
    pub fn packed(mut self) -> Self {
        if super::packing_enabled() {
            // The output head too: at decode it is the largest product
            // (Gemma 3's 262k × 640 is 70% of the bytes a token reads).
            let ws = self.layers.iter_mut().flat_map(Layer::matrices_mut);
            let ws = ws.chain(std::iter::once(&mut self.output));
            super::pack_weights(&self.file, ws.collect());
        }
        self
    }

    pub fn load(file: Arc<GgufFile>) -> Result<Self, ModelError> {
        let l = Loader { file: &file };
        let n_embd = l.u64("gemma3.embedding_length")? as usize;
        let n_head = l.u64("gemma3.attention.head_count")? as usize;
        let md = file.metadata();
        let cfg = Gemma3Config {
            n_embd,
            n_layer: l.u64("gemma3.block_count")? as usize,
            n_head,
            n_head_kv: md
                .get_u64("gemma3.attention.head_count_kv")
                .unwrap_or(n_head as u64) as usize,
            head_dim: md
                .get_u64("gemma3.attention.key_length")
                .map_or(n_embd / n_head.max(1), |v| v as usize),
            n_ff: l.u64("gemma3.feed_forward_length")? as usize,
            n_vocab: md
                .get_array("tokenizer.ggml.tokens")
                .map(|a| a.len())
                .unwrap_or(0),
            n_ctx_train: l.u64("gemma3.context_length")? as usize,
            rope_base: l.f64_or("gemma3.rope.freq_base", 1_000_000.0),
            sliding_window: md.get_u64("gemma3.attention.sliding_window").unwrap_or(512) as usize,
            rms_eps: l.f64_or("gemma3.attention.layer_norm_rms_epsilon", 1e-6) as f32,
        };
        if cfg.n_head == 0
            || cfg.n_head_kv == 0
            || !cfg.n_head.is_multiple_of(cfg.n_head_kv)
            || !cfg.head_dim.is_multiple_of(2)
            || cfg.n_vocab == 0
        {
            return Err(ModelError::Metadata {
                file: file.path().display().to_string(),
                key: "gemma3.attention.head_count_kv".into(),
            });
        }
        let (q_dim, kv_dim, hd) = (
            cfg.n_head * cfg.head_dim,
            cfg.n_head_kv * cfg.head_dim,
            cfg.head_dim,
        );
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}");
            layers.push(Layer {
                attn_norm: l.vector(&p("attn_norm.weight"), n_embd)?,
                wq: l.matrix(&p("attn_q.weight"), n_embd, q_dim)?,
                wk: l.matrix(&p("attn_k.weight"), n_embd, kv_dim)?,
                wv: l.matrix(&p("attn_v.weight"), n_embd, kv_dim)?,
                q_norm: l.vector(&p("attn_q_norm.weight"), hd)?,
                k_norm: l.vector(&p("attn_k_norm.weight"), hd)?,
                wo: l.matrix(&p("attn_output.weight"), q_dim, n_embd)?,
                post_attn_norm: l.vector(&p("post_attention_norm.weight"), n_embd)?,
                ffn_norm: l.vector(&p("ffn_norm.weight"), n_embd)?,
                w_gate: l.matrix(&p("ffn_gate.weight"), n_embd, cfg.n_ff)?,
                w_up: l.matrix(&p("ffn_up.weight"), n_embd, cfg.n_ff)?,
                w_down: l.matrix(&p("ffn_down.weight"), cfg.n_ff, n_embd)?,
                post_ffn_norm: l.vector(&p("post_ffw_norm.weight"), n_embd)?,
            });
        }
        let tok_embd = l.matrix("token_embd.weight", n_embd, cfg.n_vocab)?;
        let output = if l.has("output.weight") {
            l.matrix("output.weight", n_embd, cfg.n_vocab)?
        } else {
            tok_embd.clone()
        };
        let out_norm = l.vector("output_norm.weight", n_embd)?;
        let fine_head = fine_head(
            output.dtype,
            layers.iter().flat_map(Layer::matrices).map(|w| w.dtype),
        );
        Ok(Gemma3 {
            inv_freq_global: rope_inv_freq(hd, cfg.rope_base),
            inv_freq_local: rope_inv_freq(hd, SWA_ROPE_BASE),
            cfg,
            file: file.clone(),
            tok_embd,
            layers,
            out_norm,
            output,
            fine_head,
        })
    }

    pub fn is_sliding(layer: usize) -> bool {
        layer % SWA_PATTERN < SWA_PATTERN - 1
    }
}

impl Model for Gemma3 {
    fn packed_bytes(&self) -> u64 {
        let ws = self.layers.iter().flat_map(Layer::matrices);
        let ws = ws.chain(std::iter::once(&self.output));
        ws.map(|w| w.packed_bytes() as u64).sum()
    }
    fn architecture(&self) -> &'static str {
        "gemma3"
    }
    fn dims(&self) -> Dims {
        let c = &self.cfg;
        Dims {
            n_layer: c.n_layer,
            kv_dim: c.n_head_kv * c.head_dim,
            n_vocab: c.n_vocab,
            n_ctx_train: c.n_ctx_train,
        }
    }

    fn forward_batch(
        &self,
        pool: &ThreadPool,
        simd: Simd,
        seqs: &[SeqStep],
        kv: &mut KvPool,
        ws: &mut Workspace,
    ) {
        let c = &self.cfg;
        let (d, q_dim, kv_dim, hd) = (
            c.n_embd,
            c.n_head * c.head_dim,
            c.n_head_kv * c.head_dim,
            c.head_dim,
        );
        let t = ws.prepare(seqs, kv.block_size(), d, q_dim, kv_dim, c.n_ff);
        let f = &*self.file;
        let embd_scale = (d as f32).sqrt();
        for (i, &tok) in seqs.iter().flat_map(|s| s.tokens).enumerate() {
            let row = &mut ws.x[i * d..(i + 1) * d];
            self.tok_embd
                .row_into(f, (tok as usize).min(c.n_vocab - 1), row);
            row.iter_mut().for_each(|v| *v *= embd_scale);
        }
        let mut tmp = Vec::new();
        let np = self.inv_freq_local.len();
        ws.rope.resize(t * np, (0.0, 0.0));
        ws.rope2.resize(t * np, (0.0, 0.0));
        for i in 0..t {
            let pos = ws.tok_pos[i] as usize;
            rope_table(
                pos,
                &self.inv_freq_local,
                &mut ws.rope[i * np..(i + 1) * np],
            );
            rope_table(
                pos,
                &self.inv_freq_global,
                &mut ws.rope2[i * np..(i + 1) * np],
            );
        }
        let cx = StepCtx {
            pool,
            simd,
            file: f,
            seqs,
            t,
        };
        for (li, layer) in self.layers.iter().enumerate() {
            let sliding = Self::is_sliding(li);
            let run = BlockRun {
                n_head: c.n_head,
                n_head_kv: c.n_head_kv,
                head_dim: hd,
                rms_eps: c.rms_eps,
                rope: RopePairs::Halves,
                second_rope_table: !sliding,
                window: sliding.then_some(c.sliding_window),
                gate: Gate::GeLU,
            };
            run_block(&cx, li, &layer.block(), &run, kv, ws, &mut tmp);
        }
        output_logits(
            pool,
            simd,
            f,
            &self.out_norm,
            c.rms_eps,
            &self.output,
            self.fine_head,
            seqs,
            ws,
        );
    }
}
