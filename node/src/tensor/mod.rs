//! Tensor element types, quantized block formats and kernels.

pub mod dequant;
pub mod dtype;
pub mod quantize;

pub use dequant::{dequantize, dequantize_to_vec, KernelError};
pub use dtype::{BlockLayout, GgmlType};
pub use quantize::{quantize, quantize_to_vec};
