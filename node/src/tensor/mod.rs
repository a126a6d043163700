//! Tensor element types, quantized block formats and kernels.

pub mod act;
mod arena;
pub mod dequant;
#[cfg(target_arch = "x86_64")]
mod dot_avx2;
#[cfg(target_arch = "x86_64")]
mod dot_avx512;
pub mod dot_scalar;
pub mod dtype;
mod fine;
#[cfg(target_arch = "x86_64")]
mod gemm_avx512;
pub mod matmul;
pub mod pack;
mod pack_rows;
pub mod pool;
pub mod quantize;

pub use arena::{collapse_now, collapse_packed, pack_all};
pub use dequant::{dequantize, dequantize_to_vec, f32_to_f16_bytes, KernelError};
pub use dtype::{BlockLayout, GgmlType};
pub use fine::{fine_head, matmul_fine, FineScratch};
pub use matmul::{
    has_simd_kernel, kernel, matmul, matmul_gated, matmul_many, matvec, Kernel, Matrix, Scratch,
    Simd,
};
pub use pack::{pack, Packed};
pub use pool::{PoolStats, ThreadPool};
pub use quantize::{quantize, quantize_to_vec};
