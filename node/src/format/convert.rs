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

/// What each tensor becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipe {
    /// Every 2-D weight in one type.
    All(GgmlType),
    /// llama.cpp's Q4_K_M mix: Q4_K, with Q6_K for the output projection and
    /// for `attn_v` / `ffn_down` of the layers that get more bits (the first
    /// and last eighth, and every third between).
    Q4KM,
}

impl Recipe {
    pub fn from_name(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("Q4_K_M") {
            return Some(Recipe::Q4KM);
        }
        GgmlType::from_name(s).map(Recipe::All)
    }

    fn file_type(self) -> Result<u32, ConvertError> {
        match self {
            Recipe::All(t) => file_type_id(t).ok_or(ConvertError::Target(t)),
            Recipe::Q4KM => Ok(15), // LLAMA_FTYPE_MOSTLY_Q4_K_M
        }
    }

    /// The type for tensor `name` of a model with `n_layer` layers and tied
    /// (`tied`: no separate output.weight) embeddings.
    fn pick(self, name: &str, n_layer: usize, tied: bool) -> GgmlType {
        let Recipe::Q4KM = self else {
            let Recipe::All(t) = self else { unreachable!() };
            return t;
        };
        let layer = name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse::<usize>().ok());
        let more_bits = |i: usize| {
            let n = n_layer.max(1);
            i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
        };
        if name == "output.weight" || (tied && name == "token_embd.weight") {
            return GgmlType::Q6_K;
        }
        match layer {
            Some(i)
                if (name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight"))
                    && more_bits(i) =>
            {
                GgmlType::Q6_K
            }
            _ => GgmlType::Q4_K,
        }
    }
}

/// llama.cpp's fallback when a row is not whole 256-element super-blocks.
fn fallback(t: GgmlType) -> GgmlType {
    match t {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        _ => GgmlType::Q8_0,
    }
}

/// Convert `src` into `target` and write the new GGUF image to `out`.
/// `progress(i, n, name)` is called before each tensor.
pub fn convert(
    src: &GgufFile,
    target: GgmlType,
    out: &mut impl Write,
    progress: impl FnMut(usize, usize, &str),
) -> Result<(), ConvertError> {
    convert_with(src, Recipe::All(target), out, progress)
}

/// Convert `src` by `recipe`.
pub fn convert_with(
    src: &GgufFile,
    recipe: Recipe,
    out: &mut impl Write,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<(), ConvertError> {
    let ftype = recipe.file_type()?;
    let n_layer = src
        .tensor_infos()
        .iter()
        .filter_map(|t| {
            t.name
                .strip_prefix("blk.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |m| m + 1);
    let tied = src.tensor("output.weight").is_none();
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
        let target = recipe.pick(t.name, n_layer, tied);
        let block = |t: GgmlType| t.layout().map_or(1, |l| l.block_elems) as u64;
        // Vectors stay F32; rows that are not whole blocks of the target fall
        // back (K-quants as llama.cpp does, else Q8_0), then to F32.
        let dtype = if t.dims.len() < 2 {
            GgmlType::F32
        } else if t.dims[0] % block(target) == 0 {
            target
        } else if t.dims[0] % block(fallback(target)) == 0 {
            fallback(target)
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
