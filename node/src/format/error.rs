//! Typed errors for every model-file parser: each names the file, the field
//! and the byte offset where reading went wrong.

use std::fmt;
use std::path::{Path, PathBuf};

/// An error reading a model file.
#[derive(Debug, Clone, PartialEq)]
pub struct FormatError {
    /// The file being read.
    pub file: PathBuf,
    /// The field being read, e.g. `metadata[3].value` or `tensors[12].offset (blk.0.attn_q.weight)`.
    pub field: String,
    /// Byte offset in the file where the field starts (or where the problem was found).
    pub offset: u64,
    /// What went wrong.
    pub kind: ErrorKind,
}

impl FormatError {
    pub fn new(file: &Path, field: impl Into<String>, offset: u64, kind: ErrorKind) -> Self {
        FormatError {
            file: file.to_path_buf(),
            field: field.into(),
            offset,
            kind,
        }
    }

    pub fn io(file: &Path, err: &std::io::Error) -> Self {
        Self::new(file, "file", 0, ErrorKind::Io(err.to_string()))
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (field `{}`, byte offset {})",
            self.file.display(),
            self.kind,
            self.field,
            self.offset
        )
    }
}

impl std::error::Error for FormatError {}

/// What went wrong, independent of where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ErrorKind {
    #[error("I/O error: {0}")]
    Io(String),
    #[error("file ends early: {needed} bytes needed, {available} available")]
    Truncated { needed: u64, available: u64 },
    #[error("bad magic {found:02x?}, expected {expected:?}")]
    BadMagic {
        found: Vec<u8>,
        expected: &'static str,
    },
    #[error("unsupported version {version} (supported: {supported})")]
    UnsupportedVersion {
        version: u32,
        supported: &'static str,
    },
    #[error("big-endian GGUF files are not supported")]
    BigEndian,
    #[error("length {length} runs past the end of the file ({remaining} bytes remain)")]
    LengthBeyondFile { length: u64, remaining: u64 },
    #[error("invalid UTF-8")]
    InvalidUtf8,
    #[error("unknown metadata value type {0}")]
    UnknownValueType(u32),
    #[error("invalid bool byte {0} (must be 0 or 1)")]
    InvalidBool(u8),
    #[error("arrays nested deeper than {max} levels")]
    NestingTooDeep { max: usize },
    #[error("count {count} cannot fit in the file (at most {max})")]
    CountTooLarge { count: u64, max: u64 },
    #[error("duplicate key {0:?}")]
    DuplicateKey(String),
    #[error("alignment {0} is not a power of two between 1 and 2^30")]
    BadAlignment(u64),
    #[error("expected a value of type {expected}, found {found}")]
    WrongValueType {
        expected: &'static str,
        found: &'static str,
    },
    #[error("{n_dims} dimensions (at most {max})")]
    TooManyDims { n_dims: u64, max: u64 },
    #[error("unknown ggml type id {id}")]
    UnknownGgmlType { id: u32 },
    #[error("ggml type id {id} ({name}) is not supported: it was removed from ggml")]
    UnsupportedGgmlType { id: u32, name: &'static str },
    #[error("shape {shape:?} has an element count or byte size that overflows")]
    ShapeOverflow { shape: Vec<u64> },
    #[error("row length {ne0} is not a multiple of the block size {block}")]
    NotWholeBlocks { ne0: u64, block: usize },
    #[error("offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned { offset: u64, alignment: u64 },
    #[error("byte range {start}..{end} is outside the data section of {limit} bytes")]
    OutOfBounds { start: u64, end: u64, limit: u64 },
    #[error("byte range overlaps tensor {other:?}")]
    Overlap { other: String },
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    #[error("header length {length} exceeds the limit of {max} bytes")]
    HeaderTooLarge { length: u64, max: u64 },
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("unexpected structure: {0}")]
    Schema(String),
    #[error("unknown dtype {0:?}")]
    UnknownDtype(String),
    #[error("byte size {found} does not match the shape's {expected}")]
    SizeMismatch { expected: u64, found: u64 },
    #[error("tensor data covers {covered} of {data_len} bytes (gaps or trailing bytes)")]
    IncompleteBuffer { covered: u64, data_len: u64 },
    #[error("missing {0}")]
    Missing(String),
}

/// Result alias for the format readers.
pub type Result<T> = std::result::Result<T, FormatError>;
