//! The llama family (SmolLM2, TinyLlama, Llama 2/3, Mistral): RMSNorm,
//! grouped-query attention with RoPE on adjacent pairs (the GGUF layout),
//! SwiGLU feed-forward, tied or separate output projection. The same code
//! runs qwen2 (see [`super::qwen2`]): biases on Q/K/V and RoPE on the two
//! halves of each head (NEOX style).

use std::sync::Arc;

use super::block::{run_block, Block, BlockRun, Gate, RopePairs, StepCtx};
use super::ops::{rope_inv_freq, rope_table};
use super::{output_logits, Dims, Loader, Model, ModelError, SeqStep, Weight, Workspace};
use crate::format::GgufFile;
pub use crate::kv::{KvCache, KvPool, KvType};
use crate::tensor::{fine_head, Simd, ThreadPool};

impl Model for Llama {
    fn packed_bytes(&self) -> u64 {
        let ws = self.layers.iter().flat_map(Layer::matrices);
        let ws = ws.chain(std::iter::once(&self.output));
        ws.map(|w| w.packed_bytes() as u64).sum()
    }
    fn architecture(&self) -> &'static str {
        self.variant.arch()
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
        self.run_forward(pool, simd, seqs, kv, ws)
    }
}

/// Which member of the family: the GGUF architecture name and its
/// differences from llama.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// RoPE on adjacent pairs, no attention biases.
    Llama,
    /// Q/K/V biases, RoPE on the halves of each head.
    Qwen2,
}

impl Variant {
    pub fn arch(self) -> &'static str {
        match self {
            Variant::Llama => "llama",
            Variant::Qwen2 => "qwen2",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub rope_base: f64,
    pub rms_eps: f32,
}

/// One block's weights.
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Weight,
    pub wk: Weight,
    pub wv: Weight,
    /// Q, K, V biases (qwen2).
    pub bias: Option<[Vec<f32>; 3]>,
    pub wo: Weight,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Weight,
    pub w_up: Weight,
    pub w_down: Weight,
}

pub struct Llama {
    pub cfg: LlamaConfig,
    variant: Variant,
    file: Arc<GgufFile>,
    tok_embd: Weight,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: Weight,
    /// The head's activations in two 8-bit terms (see `tensor::fine_head`).
    fine_head: bool,
    inv_freq: Vec<f32>,
}

/// The weights as a forward pass reads them: what another arithmetic over
/// the same loaded model (the ggml-avx2 numerics) is given.
pub struct LlamaWeights<'a> {
    pub variant: Variant,
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
            qkv_bias: self.bias.as_ref(),
            qk_norm: None,
            wo: &self.wo,
            post_attn_norm: None,
            ffn_norm: &self.ffn_norm,
            w_gate: &self.w_gate,
            w_up: &self.w_up,
            w_down: &self.w_down,
            post_ffn_norm: None,
        }
    }
}

impl Llama {
    pub fn weights(&self) -> LlamaWeights<'_> {
        LlamaWeights {
            variant: self.variant,
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
        Self::load_variant(file, Variant::Llama)
    }

    /// Load a file of `variant`'s architecture (its keys are `<arch>.*`).
    pub fn load_variant(file: Arc<GgufFile>, variant: Variant) -> Result<Self, ModelError> {
        let l = Loader { file: &file };
        let arch = file.metadata().architecture().unwrap_or("").to_owned();
        if arch != variant.arch() {
            return Err(ModelError::UnsupportedArchitecture(arch));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let n_embd = l.u64(&key("embedding_length"))? as usize;
        let n_head = l.u64(&key("attention.head_count"))? as usize;
        let n_head_kv = file
            .metadata()
            .get_u64(&key("attention.head_count_kv"))
            .unwrap_or(n_head as u64) as usize;
        let head_dim = file
            .metadata()
            .get_u64(&key("attention.key_length"))
            .map_or(n_embd / n_head.max(1), |v| v as usize);
        let n_vocab = file
            .metadata()
            .get_u64(&key("vocab_size"))
            .or(file
                .metadata()
                .get_array("tokenizer.ggml.tokens")
                .map(|a| a.len() as u64))
            .ok_or_else(|| ModelError::Metadata {
                file: file.path().display().to_string(),
                key: key("vocab_size"),
            })? as usize;
        let cfg = LlamaConfig {
            n_embd,
            n_layer: l.u64(&key("block_count"))? as usize,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: l.u64(&key("feed_forward_length"))? as usize,
            n_vocab,
            n_ctx_train: l.u64(&key("context_length"))? as usize,
            rope_base: l.f64_or(&key("rope.freq_base"), 10000.0),
            rms_eps: l.f64_or(&key("attention.layer_norm_rms_epsilon"), 1e-5) as f32,
        };
        if n_head == 0
            || n_head_kv == 0
            || !n_head.is_multiple_of(n_head_kv)
            || !head_dim.is_multiple_of(2)
        {
            return Err(ModelError::Metadata {
                file: file.path().display().to_string(),
                key: key("attention.head_count_kv"),
            });
        }
        let (q_dim, kv_dim) = (n_head * head_dim, n_head_kv * head_dim);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}");
            layers.push(Layer {
                attn_norm: l.vector(&p("attn_norm.weight"), n_embd)?,
                wq: l.matrix(&p("attn_q.weight"), n_embd, q_dim)?,
                wk: l.matrix(&p("attn_k.weight"), n_embd, kv_dim)?,
                wv: l.matrix(&p("attn_v.weight"), n_embd, kv_dim)?,
                bias: match variant {
                    Variant::Llama => None,
                    Variant::Qwen2 => Some([
                        l.vector(&p("attn_q.bias"), q_dim)?,
                        l.vector(&p("attn_k.bias"), kv_dim)?,
                        l.vector(&p("attn_v.bias"), kv_dim)?,
                    ]),
                },
                wo: l.matrix(&p("attn_output.weight"), q_dim, n_embd)?,
                ffn_norm: l.vector(&p("ffn_norm.weight"), n_embd)?,
                w_gate: l.matrix(&p("ffn_gate.weight"), n_embd, cfg.n_ff)?,
                w_up: l.matrix(&p("ffn_up.weight"), n_embd, cfg.n_ff)?,
                w_down: l.matrix(&p("ffn_down.weight"), cfg.n_ff, n_embd)?,
            });
        }
        let tok_embd = l.matrix("token_embd.weight", n_embd, n_vocab)?;
        let output = if l.has("output.weight") {
            l.matrix("output.weight", n_embd, n_vocab)?
        } else {
            tok_embd.clone()
        };
        let out_norm = l.vector("output_norm.weight", n_embd)?;
        let fine_head = fine_head(
            output.dtype,
            layers.iter().flat_map(Layer::matrices).map(|w| w.dtype),
        );
        let inv_freq = rope_inv_freq(head_dim, cfg.rope_base);
        Ok(Llama {
            cfg,
            variant,
            file: file.clone(),
            tok_embd,
            layers,
            out_norm,
            output,
            fine_head,
            inv_freq,
        })
    }

    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    fn run_forward(
        &self,
        pool: &ThreadPool,
        simd: Simd,
        seqs: &[SeqStep],
        kv: &mut KvPool,
        ws: &mut Workspace,
    ) {
        let c = &self.cfg;
        let (d, q_dim, kv_dim) = (c.n_embd, c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        let t = ws.prepare(seqs, kv.block_size(), d, q_dim, kv_dim, c.n_ff);
        let f = &*self.file;
        for (i, &tok) in seqs.iter().flat_map(|s| s.tokens).enumerate() {
            let tok = (tok as usize).min(c.n_vocab - 1);
            self.tok_embd
                .row_into(f, tok, &mut ws.x[i * d..(i + 1) * d]);
        }
        let np = self.inv_freq.len();
        ws.rope.resize(t * np, (0.0, 0.0));
        for i in 0..t {
            rope_table(
                ws.tok_pos[i] as usize,
                &self.inv_freq,
                &mut ws.rope[i * np..(i + 1) * np],
            );
        }
        let cx = StepCtx {
            pool,
            simd,
            file: f,
            seqs,
            t,
        };
        let run = BlockRun {
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
            rms_eps: c.rms_eps,
            rope: match self.variant {
                Variant::Llama => RopePairs::Adjacent,
                Variant::Qwen2 => RopePairs::Halves,
            },
            second_rope_table: false,
            window: None,
            gate: Gate::SiLU,
        };
        let mut tmp = Vec::new();
        for (li, layer) in self.layers.iter().enumerate() {
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
