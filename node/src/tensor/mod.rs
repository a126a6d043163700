//! Tensor element types, quantized block formats and kernels.

pub mod dtype;

pub use dtype::{BlockLayout, GgmlType};
