//! Model file formats: GGUF, safetensors (single and sharded) and the Hugging
//! Face side files, all read through memory maps without copying tensor data.

pub mod convert;
pub mod error;
pub mod gguf;
pub mod gguf_write;
pub mod hf;
pub mod hf_convert;
pub mod safetensors;
pub mod storage;
pub mod summary;

pub use error::{ErrorKind, FormatError};
pub use gguf::{GgufFile, GgufHeader, MetaArray, MetaValue, Metadata, TensorInfo, TensorView};
pub use gguf_write::{GgufWriter, TensorToWrite};
pub use hf::{HfConfig, HfModelDir, HfTokenizerConfig};
pub use safetensors::{SafetensorsCheckpoint, SafetensorsFile, StDtype};
pub use summary::ModelSummary;
