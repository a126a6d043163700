//! The qwen2 family (Qwen2, Qwen2.5): the llama block with biases on the
//! query, key and value projections, and RoPE applied to the two halves of
//! each head (llama.cpp's NEOX rope type; its converter leaves qwen2's q/k
//! rows in Hugging Face order, unlike llama's). Everything else (RMSNorm,
//! grouped-query attention, SwiGLU, tied or separate output) is llama's,
//! so the forward pass is [`Llama`]'s with [`Variant::Qwen2`].

use std::sync::Arc;

use super::llama::{Llama, Variant};
use super::ModelError;
use crate::format::GgufFile;

/// Load a `qwen2` GGUF file (or an HF Qwen2 directory read by
/// [`crate::format::hf_convert::import_hf`]).
pub fn load(file: Arc<GgufFile>) -> Result<Llama, ModelError> {
    Llama::load_variant(file, Variant::Qwen2)
}
