//! Opening a model: the one sequence every user of the engine goes through
//! (the node's registry, `realizar run`, `perplexity`, the tests): map the
//! file (or import a Hugging Face directory), read its tokenizer, build the
//! architecture, and keep the chat template the file carries.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{load_with, Logits, Model, ModelError, Numerics, Workspace};
use crate::format::{hf_convert::open_model_file, FormatError, GgufFile};
use crate::tensor::{Simd, ThreadPool};
use crate::tokenizer::{ChatError, ChatTemplate, Tokenizer, TokenizerError};

/// Why a model file could not be opened. Each is the file's fault (a bad
/// request when someone asks for it), never the server's.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("{file}: tokenizer: {source}")]
    Tokenizer {
        file: String,
        source: TokenizerError,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// A model ready to run, with what it needs around it.
pub struct LoadedModel {
    pub path: PathBuf,
    pub file: Arc<GgufFile>,
    pub model: Arc<dyn Model>,
    pub tok: Arc<Tokenizer>,
}

impl LoadedModel {
    /// Open with the engine's own arithmetic.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        Self::open_with(path, Numerics::Native)
    }

    pub fn open_with(path: &Path, numerics: Numerics) -> Result<Self, LoadError> {
        let file = Arc::new(open_model_file(path)?);
        let tok = Tokenizer::from_gguf(file.metadata()).map_err(|source| LoadError::Tokenizer {
            file: path.display().to_string(),
            source,
        })?;
        let model = Arc::from(load_with(file.clone(), numerics)?);
        Ok(LoadedModel {
            path: path.to_path_buf(),
            file,
            model,
            tok: Arc::new(tok),
        })
    }

    /// Bytes of the mapped (or imported) file.
    pub fn file_bytes(&self) -> u64 {
        self.file.bytes().len() as u64
    }

    /// The template the file carries, or the one its special tokens imply.
    pub fn chat_template(&self) -> Result<ChatTemplate, ChatError> {
        ChatTemplate::for_model(
            self.file.metadata().get_str("tokenizer.chat_template"),
            &self.tok,
        )
    }

    /// Run one token through every layer so the weights are paged in before
    /// the first request pays for it; then start moving the packed weights
    /// onto huge pages ([`crate::tensor::collapse_packed`]).
    pub fn warm(&self, threads: usize) {
        let pool = ThreadPool::new(threads);
        let mut cache = self.model.new_cache(1);
        let mut ws = Workspace::default();
        self.model.forward(
            &pool,
            Simd::detect(),
            &[0],
            &mut cache,
            &mut ws,
            Logits::Last,
        );
        crate::tensor::collapse_packed();
    }
}
