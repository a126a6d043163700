//! Transformer architectures behind one trait. One file per family.

#[cfg(target_arch = "x86_64")]
mod attend_avx512;
pub mod attention;
pub mod block;
pub mod gemma3;
#[cfg(feature = "ggml-avx2")]
pub mod ggml_avx2;
pub mod llama;
pub mod loaded;
pub mod ops;
pub mod qwen2;

pub use crate::kv::{KvCache, KvPool, KvType};
pub use loaded::{LoadError, LoadedModel};

use std::sync::Arc;

use crate::format::{FormatError, GgufFile};
use crate::tensor::{
    dequantize, pack_all, FineScratch, GgmlType, KernelError, Matrix, Packed, Scratch, Simd,
    ThreadPool,
};

/// Which positions' logits a forward call produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    Last,
    All,
    /// No logits (a prefill chunk that does not end the prompt).
    None,
}

/// One sequence's part of a batched forward step: `tokens` at positions
/// `pos0..`, stored through the block table `table` of the pool.
#[derive(Debug, Clone, Copy)]
pub struct SeqStep<'a> {
    pub tokens: &'a [u32],
    pub pos0: usize,
    pub table: &'a [u32],
    pub logits: Logits,
}

/// Buffers reused across forward calls (grown to the largest step seen).
#[derive(Default)]
pub struct Workspace {
    pub(crate) x: Vec<f32>,
    pub(crate) h: Vec<f32>,
    pub(crate) q: Vec<f32>,
    pub(crate) k: Vec<f32>,
    pub(crate) v: Vec<f32>,
    pub(crate) att: Vec<f32>,
    pub(crate) o: Vec<f32>,
    pub(crate) gate: Vec<f32>,
    pub(crate) up: Vec<f32>,
    pub(crate) ffn: Vec<f32>,
    pub(crate) last: Vec<f32>,
    /// Each token's sequence (index into the step) and position.
    pub(crate) tok_seq: Vec<u32>,
    pub(crate) tok_pos: Vec<u32>,
    /// RoPE (sin, cos) per token and frequency (two tables for models with
    /// two RoPE bases).
    pub(crate) rope: Vec<(f32, f32)>,
    pub(crate) rope2: Vec<(f32, f32)>,
    /// Logits of the positions each sequence asked for, sequence by sequence.
    pub logits: Vec<f32>,
    pub(crate) scratch: Scratch,
    pub(crate) fine: FineScratch,
}

impl Workspace {
    /// Size every buffer for a step over `seqs` and record each token's
    /// sequence and position; returns the step's token count. Panics if a
    /// sequence's block table cannot hold its positions, which callers size for.
    pub(crate) fn prepare(
        &mut self,
        seqs: &[SeqStep],
        block_size: usize,
        d: usize,
        q_dim: usize,
        kv_dim: usize,
        n_ff: usize,
    ) -> usize {
        self.tok_seq.clear();
        self.tok_pos.clear();
        for (si, s) in seqs.iter().enumerate() {
            assert!(
                s.pos0 + s.tokens.len() <= s.table.len() * block_size,
                "KV cache overflow: {} + {} > {}",
                s.pos0,
                s.tokens.len(),
                s.table.len() * block_size
            );
            for i in 0..s.tokens.len() {
                self.tok_seq.push(si as u32);
                self.tok_pos.push((s.pos0 + i) as u32);
            }
        }
        let t = self.tok_seq.len();
        for (v, n) in [
            (&mut self.x, t * d),
            (&mut self.h, t * d),
            (&mut self.q, t * q_dim),
            (&mut self.k, t * kv_dim),
            (&mut self.v, t * kv_dim),
            (&mut self.att, t * q_dim),
            (&mut self.o, t * d),
            (&mut self.gate, t * n_ff),
            (&mut self.up, t * n_ff),
            (&mut self.ffn, t * d),
        ] {
            v.resize(n, 0.0);
        }
        t
    }
}

/// Rows of `ws.logits` a step over `seqs` produces, in order.
pub fn logits_rows(seqs: &[SeqStep]) -> usize {
    seqs.iter()
        .map(|s| match s.logits {
            Logits::Last => 1,
            Logits::All => s.tokens.len(),
            Logits::None => 0,
        })
        .sum()
}

/// The final norm and the output projection for the positions each
/// sequence asks for; leaves the logits in `ws.logits`, sequence by sequence.
#[allow(clippy::too_many_arguments)]
pub(crate) fn output_logits(
    pool: &ThreadPool,
    simd: Simd,
    file: &GgufFile,
    out_norm: &[f32],
    eps: f32,
    output: &Weight,
    fine: bool,
    seqs: &[SeqStep],
    ws: &mut Workspace,
) {
    let d = out_norm.len();
    let n_out = logits_rows(seqs);
    ws.last.resize(n_out * d, 0.0);
    ws.logits.resize(n_out * output.rows, 0.0);
    if n_out == 0 {
        return;
    }
    let (mut k, mut first) = (0, 0);
    for s in seqs {
        let t = s.tokens.len();
        let rows = match s.logits {
            Logits::Last => t - 1..t,
            Logits::All => 0..t,
            Logits::None => 0..0,
        };
        for r in rows {
            let i = first + r;
            ops::rms_norm(
                &ws.x[i * d..(i + 1) * d],
                out_norm,
                eps,
                &mut ws.last[k * d..(k + 1) * d],
            );
            k += 1;
        }
        first += t;
    }
    let (w, x, y) = (&output.matrix(file), &ws.last, &mut ws.logits);
    if fine {
        // The head decides the ranking, and of a prompt only the last
        // position reaches it.
        crate::tensor::matmul_fine(pool, simd, w, x, n_out, y, &mut ws.scratch, &mut ws.fine)
    } else {
        crate::tensor::matmul(pool, simd, w, x, n_out, y, &mut ws.scratch)
    }
    .expect("shapes checked at load");
}

/// A loaded model of any supported architecture.
/// The sizes every family shares, from which the common trait methods follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub n_layer: usize,
    /// Keys (or values) per position per layer: kv heads × head size.
    pub kv_dim: usize,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
}

pub trait Model: Send + Sync {
    fn architecture(&self) -> &'static str;
    fn dims(&self) -> Dims;
    fn n_vocab(&self) -> usize {
        self.dims().n_vocab
    }
    fn n_ctx_train(&self) -> usize {
        self.dims().n_ctx_train
    }
    /// Heap bytes of the weights repacked at load (beside the mapped file).
    fn packed_bytes(&self) -> u64 {
        0
    }
    /// An empty cache for `capacity` positions with elements of `ty`.
    fn new_cache_typed(&self, capacity: usize, ty: KvType) -> KvCache {
        let d = self.dims();
        KvCache::new(d.n_layer, d.kv_dim, capacity, ty)
    }
    /// A pool of `n_blocks` blocks of `block_size` positions for many sequences.
    fn new_pool(&self, block_size: usize, n_blocks: usize, ty: KvType) -> KvPool {
        let d = self.dims();
        KvPool::new(d.n_layer, d.kv_dim, block_size, n_blocks, ty)
    }
    /// An empty f32 cache for `capacity` positions.
    fn new_cache(&self, capacity: usize) -> KvCache {
        self.new_cache_typed(capacity, KvType::F32)
    }
    /// Run one batched step: every sequence's tokens at its positions,
    /// written to the pool through its block table; the requested logits
    /// are left in `ws.logits`, sequence by sequence.
    fn forward_batch(
        &self,
        pool: &ThreadPool,
        simd: Simd,
        seqs: &[SeqStep],
        kv: &mut KvPool,
        ws: &mut Workspace,
    );
    /// Run `tokens` at positions `cache.len ..`, append them to the cache, and
    /// leave the requested logits in `ws.logits`.
    fn forward(
        &self,
        pool: &ThreadPool,
        simd: Simd,
        tokens: &[u32],
        cache: &mut KvCache,
        ws: &mut Workspace,
        which: Logits,
    ) {
        let step = SeqStep {
            tokens,
            pos0: cache.len,
            table: &cache.table,
            logits: which,
        };
        self.forward_batch(pool, simd, &[step], &mut cache.pool, ws);
        cache.len += tokens.len();
    }
}

/// Load the model in `file`, choosing the implementation by `general.architecture`.
pub fn load(file: Arc<GgufFile>) -> Result<Box<dyn Model>, ModelError> {
    match file.metadata().architecture().unwrap_or("") {
        "llama" => Ok(Box::new(llama::Llama::load(file)?.packed())),
        "qwen2" => Ok(Box::new(qwen2::load(file)?.packed())),
        "gemma3" => Ok(Box::new(gemma3::Gemma3::load(file)?.packed())),
        other => Err(ModelError::UnsupportedArchitecture(other.to_owned())),
    }
}

/// Why a model could not be loaded.
/// The arithmetic a model runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Numerics {
    /// realizar's own kernels (the fast path).
    #[default]
    Native,
    /// llama.cpp's x86 AVX2 build reproduced bit for bit (see
    /// [`ggml_avx2`]): slower, for output identical to llama.cpp's.
    GgmlAvx2,
}

impl Numerics {
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "native" => Some(Numerics::Native),
            "ggml-avx2" => Some(Numerics::GgmlAvx2),
            _ => None,
        }
    }
}

/// [`load`] with a choice of arithmetic.
pub fn load_with(file: Arc<GgufFile>, numerics: Numerics) -> Result<Box<dyn Model>, ModelError> {
    match numerics {
        Numerics::Native => load(file),
        #[cfg(not(feature = "ggml-avx2"))]
        Numerics::GgmlAvx2 => Err(ModelError::GgmlNumericsNotBuilt),
        #[cfg(feature = "ggml-avx2")]
        Numerics::GgmlAvx2 => match file.metadata().architecture().unwrap_or("") {
            "llama" => Ok(Box::new(ggml_avx2::LlamaGgmlAvx2::new(
                llama::Llama::load(file)?,
            )?)),
            "gemma3" => Ok(Box::new(ggml_avx2::Gemma3GgmlAvx2::new(
                gemma3::Gemma3::load(file)?,
            )?)),
            other => Err(ModelError::NoGgmlNumerics(other.to_owned())),
        },
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("architecture {0:?} is not supported (supported: {SUPPORTED})")]
    UnsupportedArchitecture(String),
    #[error("architecture {0:?} has no ggml-avx2 numerics (they cover llama and gemma3)")]
    NoGgmlNumerics(String),
    #[error("this build has no ggml-avx2 numerics (cargo feature `ggml-avx2` of realizar-node)")]
    GgmlNumericsNotBuilt,
    #[error("{file}: ggml-avx2 numerics: {reason}")]
    GgmlNumerics { file: String, reason: String },
    #[error("{file}: metadata key `{key}` is missing or invalid")]
    Metadata { file: String, key: String },
    #[error("{file}: tensor `{name}` is missing")]
    MissingTensor { file: String, name: String },
    #[error("{file}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        file: String,
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("{file}: tensor `{name}`: {source}")]
    Kernel {
        file: String,
        name: String,
        source: KernelError,
    },
}

pub const SUPPORTED: &str = "llama (SmolLM2, TinyLlama, Llama 2/3, Mistral), qwen2, gemma3";

/// A weight matrix inside the mapped model file.
#[derive(Debug, Clone)]
pub struct Weight {
    pub name: String,
    pub dtype: GgmlType,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    offset: usize,
    len: usize,
    /// The weights repacked (see [`crate::tensor::pack`]).
    packed: Option<Arc<Packed>>,
}

impl Weight {
    pub fn matrix<'a>(&'a self, file: &'a GgufFile) -> Matrix<'a> {
        Matrix::new(
            self.dtype,
            self.rows,
            self.cols,
            &file.bytes()[self.offset..self.offset + self.len],
        )
        .expect("shape checked when the model was loaded")
        .with_packed(self.packed.as_deref())
    }

    /// Heap bytes of the packed copy, if any.
    pub fn packed_bytes(&self) -> usize {
        self.packed.as_ref().map_or(0, |p| p.size())
    }

    /// Dequantize row `r` into `out` (embedding lookup).
    pub fn row_into(&self, file: &GgufFile, r: usize, out: &mut [f32]) {
        let row_bytes = self.len / self.rows;
        let start = self.offset + r * row_bytes;
        dequantize(self.dtype, &file.bytes()[start..start + row_bytes], out)
            .expect("row of a checked matrix");
    }
}

/// Whether the native models repack their block weights: on
/// CPUs with the AVX-512 VNNI kernels that use them, unless
/// `REALIZAR_PACK_WEIGHTS=off` (to compare, or to save the memory).
pub fn packing_enabled() -> bool {
    Simd::detect().is_avx512() && std::env::var("REALIZAR_PACK_WEIGHTS").as_deref() != Ok("off")
}

/// Repack `ws` (the formats that have a packed form) into one mapping
/// across the machine's cores; they all live in `file`.
pub fn pack_weights(file: &GgufFile, ws: Vec<&mut Weight>) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ms: Vec<_> = ws.iter().map(|w| w.matrix(file)).collect();
    let packed = pack_all(&ms, threads);
    drop(ms);
    for (w, p) in ws.into_iter().zip(packed) {
        w.packed = p.map(Arc::new);
    }
}

/// Looks tensors up by name with shape checks, for model constructors.
pub struct Loader<'a> {
    pub file: &'a Arc<GgufFile>,
}

impl Loader<'_> {
    fn file_name(&self) -> String {
        self.file.path().display().to_string()
    }

    pub fn has(&self, name: &str) -> bool {
        self.file.tensor(name).is_some()
    }

    /// A 2-D weight with dims [cols, rows].
    pub fn matrix(&self, name: &str, cols: usize, rows: usize) -> Result<Weight, ModelError> {
        let info = self
            .file
            .tensor_infos()
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| ModelError::MissingTensor {
                file: self.file_name(),
                name: name.to_owned(),
            })?;
        let expected = vec![cols as u64, rows as u64];
        if info.dims != expected {
            return Err(ModelError::Shape {
                file: self.file_name(),
                name: name.to_owned(),
                expected,
                found: info.dims.clone(),
            });
        }
        let offset = (self.file.header().data_offset + info.offset) as usize;
        let w = Weight {
            name: name.to_owned(),
            dtype: info.dtype,
            rows,
            cols,
            offset,
            len: info.n_bytes as usize,
            packed: None,
        };
        // Validate once: block geometry and a kernel for the type.
        Matrix::new(
            w.dtype,
            rows,
            cols,
            &self.file.bytes()[offset..offset + w.len],
        )
        .map_err(|source| ModelError::Kernel {
            file: self.file_name(),
            name: name.to_owned(),
            source,
        })?;
        if crate::tensor::kernel(w.dtype, crate::tensor::Simd::SCALAR).is_none() {
            return Err(ModelError::Kernel {
                file: self.file_name(),
                name: name.to_owned(),
                source: KernelError::Unsupported(w.dtype),
            });
        }
        Ok(w)
    }

    /// A 1-D tensor of `n` values, as f32.
    pub fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
        let t = self
            .file
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor {
                file: self.file_name(),
                name: name.to_owned(),
            })?;
        if t.dims != [n as u64] {
            return Err(ModelError::Shape {
                file: self.file_name(),
                name: name.to_owned(),
                expected: vec![n as u64],
                found: t.dims.to_vec(),
            });
        }
        let mut v = vec![0f32; n];
        dequantize(t.dtype, t.data, &mut v).map_err(|source| ModelError::Kernel {
            file: self.file_name(),
            name: name.to_owned(),
            source,
        })?;
        Ok(v)
    }

    pub fn u64(&self, key: &str) -> Result<u64, ModelError> {
        self.file
            .metadata()
            .get_u64(key)
            .ok_or_else(|| ModelError::Metadata {
                file: self.file_name(),
                key: key.to_owned(),
            })
    }

    pub fn f64_or(&self, key: &str, default: f64) -> f64 {
        self.file.metadata().get_f64(key).unwrap_or(default)
    }
}
