//! realizar-node: the inference engine (model formats, quantized kernels,
//! models) and the node process that serves it.

pub mod eval;
pub mod format;
pub mod model;
pub mod sampling;
pub mod server;
pub mod tensor;
pub mod tokenizer;
