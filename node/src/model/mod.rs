//! Transformer architectures behind one trait. One file per family.

pub mod attention;
pub mod gemma3;
pub mod kv;
pub mod llama;
pub mod ops;

pub use kv::{KvCache, KvType};

use std::sync::Arc;

use crate::format::{FormatError, GgufFile};
use crate::tensor::{dequantize, GgmlType, KernelError, Matrix, Scratch, Simd, ThreadPool};

/// Which positions' logits a forward call produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    Last,
    All,
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
    /// Logits of the last position (`Logits::Last`) or of every position.
    pub logits: Vec<f32>,
    pub(crate) scratch: Scratch,
}

impl Workspace {
    /// Size every buffer for a step of `t` tokens; returns the start position
    /// (the cache length). Panics if the cache cannot hold the step, which
    /// callers size for.
    pub(crate) fn prepare(
        &mut self,
        cache: &KvCache,
        t: usize,
        d: usize,
        q_dim: usize,
        kv_dim: usize,
        n_ff: usize,
    ) -> usize {
        let pos0 = cache.len;
        assert!(
            pos0 + t <= cache.capacity(),
            "KV cache overflow: {pos0} + {t} > {}",
            cache.capacity()
        );
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
        pos0
    }
}

/// The final norm and the output projection for the positions `which`
/// asks for; leaves the logits in `ws.logits`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn output_logits(
    pool: &ThreadPool,
    simd: Simd,
    file: &GgufFile,
    out_norm: &[f32],
    eps: f32,
    output: &Weight,
    t: usize,
    which: Logits,
    ws: &mut Workspace,
) {
    let d = out_norm.len();
    let (first, n_out) = match which {
        Logits::Last => (t - 1, 1),
        Logits::All => (0, t),
    };
    ws.last.resize(n_out * d, 0.0);
    for k in 0..n_out {
        let i = first + k;
        ops::rms_norm(
            &ws.x[i * d..(i + 1) * d],
            out_norm,
            eps,
            &mut ws.last[k * d..(k + 1) * d],
        );
    }
    ws.logits.resize(n_out * output.rows, 0.0);
    crate::tensor::matmul(
        pool,
        simd,
        &output.matrix(file),
        &ws.last,
        n_out,
        &mut ws.logits,
        &mut ws.scratch,
    )
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
    /// An empty cache for `capacity` positions with elements of `ty`.
    fn new_cache_typed(&self, capacity: usize, ty: KvType) -> KvCache {
        let d = self.dims();
        KvCache::new(d.n_layer, d.kv_dim, capacity, ty)
    }
    /// An empty f32 cache for `capacity` positions.
    fn new_cache(&self, capacity: usize) -> KvCache {
        self.new_cache_typed(capacity, KvType::F32)
    }
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
    );
}

/// Load the model in `file`, choosing the implementation by `general.architecture`.
pub fn load(file: Arc<GgufFile>) -> Result<Box<dyn Model>, ModelError> {
    match file.metadata().architecture().unwrap_or("") {
        "llama" => Ok(Box::new(llama::Llama::load(file)?)),
        "gemma3" => Ok(Box::new(gemma3::Gemma3::load(file)?)),
        other => Err(ModelError::UnsupportedArchitecture(other.to_owned())),
    }
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("architecture {0:?} is not supported (supported: {SUPPORTED})")]
    UnsupportedArchitecture(String),
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

pub const SUPPORTED: &str = "llama (SmolLM2, TinyLlama, Llama 2/3, Mistral), gemma3";

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
}

impl Weight {
    pub fn matrix<'a>(&self, file: &'a GgufFile) -> Matrix<'a> {
        Matrix::new(
            self.dtype,
            self.rows,
            self.cols,
            &file.bytes()[self.offset..self.offset + self.len],
        )
        .expect("shape checked when the model was loaded")
    }

    /// Dequantize row `r` into `out` (embedding lookup).
    pub fn row_into(&self, file: &GgufFile, r: usize, out: &mut [f32]) {
        let row_bytes = self.len / self.rows;
        let start = self.offset + r * row_bytes;
        dequantize(self.dtype, &file.bytes()[start..start + row_bytes], out)
            .expect("row of a checked matrix");
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
