//! Re-encode a GGUF model's weights into another type (what
//! `llama-quantize --allow-requantize` does): every 2-D weight is
//! dequantized to f32 and quantized to the target; 1-D tensors (norms,
//! biases) stay F32; metadata is copied with `general.file_type` updated.

use std::io::Write;

use super::gguf::{GgufFile, MetaValue};
use super::gguf_write::{GgufWriter, TensorToWrite};
use crate::tensor::{dequantize_to_vec, quantize_to_vec, GgmlType, KernelError};

/// llama.cpp's `llama_ftype` for a file whose weights are mostly `t`.
pub fn file_type_id(t: GgmlType) -> Option<u32> {
    use GgmlType::*;
    Some(match t {
        F32 => 0,
        F16 => 1,
        Q4_0 => 2,
        Q4_1 => 3,
        Q8_0 => 7,
        Q5_0 => 8,
        Q5_1 => 9,
        Q6_K => 18,
        Q4_K => 15,
        Q5_K => 17,
        BF16 => 32,
        _ => return None,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("cannot quantize to {0}: supported targets are F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K")]
    Target(GgmlType),
    #[error("tensor {name}: {source}")]
    Kernel { name: String, source: KernelError },
    #[error("writing the output: {0}")]
    Io(#[from] std::io::Error),
}

/// Convert `src` into `target` and write the new GGUF image to `out`.
/// `progress(i, n, name)` is called before each tensor.
pub fn convert(
    src: &GgufFile,
    target: GgmlType,
    out: &mut impl Write,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<(), ConvertError> {
    let ftype = file_type_id(target).ok_or(ConvertError::Target(target))?;
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata().iter() {
        w.meta(k, v.clone());
    }
    w.meta("general.file_type", MetaValue::U32(ftype));
    let n = src.tensor_infos().len();
    for (i, t) in src.tensors().enumerate() {
        progress(i, n, t.name);
        let err = |source| ConvertError::Kernel {
            name: t.name.to_owned(),
            source,
        };
        let values = dequantize_to_vec(t.dtype, t.data).map_err(err)?;
        let block = target.layout().map_or(1, |l| l.block_elems) as u64;
        // Vectors stay F32; rows that are not whole blocks of the target fall back to Q8_0, then F32.
        let dtype = if t.dims.len() < 2 {
            GgmlType::F32
        } else if t.dims[0] % block == 0 {
            target
        } else if t.dims[0] % 32 == 0 {
            GgmlType::Q8_0
        } else {
            GgmlType::F32
        };
        let data = quantize_to_vec(dtype, &values).map_err(err)?;
        w.tensor(TensorToWrite {
            name: t.name.to_owned(),
            dims: t.dims.to_vec(),
            dtype,
            data,
        });
    }
    w.write(out)?;
    Ok(())
}
