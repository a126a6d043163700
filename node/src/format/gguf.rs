//! GGUF reader (versions 2 and 3): metadata of every value type, tensor
//! infos, alignment, and zero-copy views of tensor data in a memory map.
//!
//! Every length, count and offset read from the file is checked against the
//! bytes that remain before it is used, so a malformed file gives a typed
//! [`FormatError`] and never a panic or an allocation larger than the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::error::{ErrorKind, FormatError, Result};
use super::storage::Storage;
use crate::tensor::GgmlType;

/// `GGUF` read as a little-endian u32.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: u64 = 4;
/// Deepest nesting of arrays inside arrays that we accept.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// The type tag of a metadata value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// The fewest bytes one value of this type takes in a file.
    fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(MetaArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array: one element type, stored as a typed vector.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<MetaArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl MetaValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::String(_) => ValueType::String,
            MetaValue::Array(_) => ValueType::Array,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F64(_) => ValueType::F64,
        }
    }

    /// Any integer value that is non-negative and fits in u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value that fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// A float or integer value as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl MetaArray {
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::String(v) => v.len(),
            MetaArray::Array(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn element_type(&self) -> ValueType {
        match self {
            MetaArray::U8(_) => ValueType::U8,
            MetaArray::I8(_) => ValueType::I8,
            MetaArray::U16(_) => ValueType::U16,
            MetaArray::I16(_) => ValueType::I16,
            MetaArray::U32(_) => ValueType::U32,
            MetaArray::I32(_) => ValueType::I32,
            MetaArray::F32(_) => ValueType::F32,
            MetaArray::Bool(_) => ValueType::Bool,
            MetaArray::String(_) => ValueType::String,
            MetaArray::Array(_) => ValueType::Array,
            MetaArray::U64(_) => ValueType::U64,
            MetaArray::I64(_) => ValueType::I64,
            MetaArray::F64(_) => ValueType::F64,
        }
    }
}

/// Ordered metadata with lookup by key.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    entries: Vec<(String, MetaValue)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &MetaValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetaValue::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(MetaValue::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(MetaValue::as_bool)
    }

    pub fn get_array(&self, key: &str) -> Option<&MetaArray> {
        self.get(key).and_then(MetaValue::as_array)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    fn insert(&mut self, key: String, value: MetaValue) -> std::result::Result<(), ErrorKind> {
        if self.index.contains_key(&key) {
            return Err(ErrorKind::DuplicateKey(key));
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }
}

/// One tensor's entry in the GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the row length (contiguous).
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
}

/// Everything in a GGUF file except the tensor data.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
}

/// A zero-copy view of one tensor's bytes.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: GgmlType,
    pub dims: &'a [u64],
    pub data: &'a [u8],
}

impl TensorView<'_> {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// An opened GGUF file: the header plus the mapped bytes.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    header: GgufHeader,
    by_name: HashMap<String, usize>,
}

impl GgufFile {
    /// Map and index a GGUF file. Tensor data is not read or copied.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let storage = Storage::map(path)?;
        Self::from_storage(path.to_path_buf(), storage)
    }

    /// Parse a GGUF image held in memory (`name` is used in errors).
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::from_storage(name.into(), Storage::Owned(bytes))
    }

    fn from_storage(path: PathBuf, storage: Storage) -> Result<Self> {
        let header = parse_header(&path, storage.bytes())?;
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            path,
            storage,
            header,
            by_name,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    pub fn version(&self) -> u32 {
        self.header.version
    }

    pub fn file_size(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// The whole mapped file.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// A view of the named tensor's bytes, if present.
    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        self.by_name.get(name).map(|&i| self.view(i))
    }

    /// Views of all tensors in header order.
    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'_>> {
        (0..self.header.tensors.len()).map(|i| self.view(i))
    }

    fn view(&self, i: usize) -> TensorView<'_> {
        let t = &self.header.tensors[i];
        // parse_header checked data_offset + offset + n_bytes <= file length.
        let start = (self.header.data_offset + t.offset) as usize;
        let end = start + t.n_bytes as usize;
        TensorView {
            name: &t.name,
            dtype: t.dtype,
            dims: &t.dims,
            data: &self.storage.bytes()[start..end],
        }
    }
}

/// Bounds-checked little-endian reader. Errors carry the offset where the
/// failed read started; callers attach the field name.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

type Step<T> = std::result::Result<T, (u64, ErrorKind)>;

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64) -> Step<&'a [u8]> {
        if n > self.remaining() {
            return Err((
                self.pos as u64,
                ErrorKind::Truncated {
                    needed: n,
                    available: self.remaining(),
                },
            ));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Step<[u8; N]> {
        let s = self.take(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self) -> Step<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Step<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn string(&mut self) -> Step<String> {
        let at = self.pos as u64;
        let len = self.u64()?;
        if len > self.remaining() {
            return Err((
                at,
                ErrorKind::LengthBeyondFile {
                    length: len,
                    remaining: self.remaining(),
                },
            ));
        }
        let bytes = self.take(len)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err((at, ErrorKind::InvalidUtf8)),
        }
    }

    /// A count of items each at least `min_size` bytes long: must fit in the rest of the file.
    fn count(&mut self, min_size: u64) -> Step<u64> {
        let at = self.pos as u64;
        let n = self.u64()?;
        let max = self.remaining() / min_size.max(1);
        if n > max {
            return Err((at, ErrorKind::CountTooLarge { count: n, max }));
        }
        Ok(n)
    }

    fn value_type(&mut self) -> Step<ValueType> {
        let at = self.pos as u64;
        let id = self.u32()?;
        ValueType::from_id(id).ok_or((at, ErrorKind::UnknownValueType(id)))
    }

    fn bool(&mut self) -> Step<bool> {
        let at = self.pos as u64;
        match self.array::<1>()?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err((at, ErrorKind::InvalidBool(b))),
        }
    }

    fn value(&mut self, ty: ValueType, depth: usize) -> Step<MetaValue> {
        Ok(match ty {
            ValueType::U8 => MetaValue::U8(self.array::<1>()?[0]),
            ValueType::I8 => MetaValue::I8(self.array::<1>()?[0] as i8),
            ValueType::U16 => MetaValue::U16(u16::from_le_bytes(self.array()?)),
            ValueType::I16 => MetaValue::I16(i16::from_le_bytes(self.array()?)),
            ValueType::U32 => MetaValue::U32(self.u32()?),
            ValueType::I32 => MetaValue::I32(i32::from_le_bytes(self.array()?)),
            ValueType::F32 => MetaValue::F32(f32::from_le_bytes(self.array()?)),
            ValueType::Bool => MetaValue::Bool(self.bool()?),
            ValueType::String => MetaValue::String(self.string()?),
            ValueType::Array => MetaValue::Array(self.meta_array(depth + 1)?),
            ValueType::U64 => MetaValue::U64(self.u64()?),
            ValueType::I64 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            ValueType::F64 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
        })
    }

    fn meta_array(&mut self, depth: usize) -> Step<MetaArray> {
        let at = self.pos as u64;
        if depth > MAX_ARRAY_DEPTH {
            return Err((
                at,
                ErrorKind::NestingTooDeep {
                    max: MAX_ARRAY_DEPTH,
                },
            ));
        }
        let ty = self.value_type()?;
        let n = self.count(ty.min_size())? as usize;
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                let bytes = self.take((n * std::mem::size_of::<$t>()) as u64)?;
                MetaArray::$variant(
                    bytes
                        .chunks_exact(std::mem::size_of::<$t>())
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size")))
                        .collect(),
                )
            }};
        }
        Ok(match ty {
            ValueType::U8 => MetaArray::U8(self.take(n as u64)?.to_vec()),
            ValueType::I8 => MetaArray::I8(self.take(n as u64)?.iter().map(|&b| b as i8).collect()),
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::Bool => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.bool()?);
                }
                MetaArray::Bool(v)
            }
            ValueType::String => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.string()?);
                }
                MetaArray::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.meta_array(depth + 1)?);
                }
                MetaArray::Array(v)
            }
        })
    }
}

/// Parse the header of a GGUF image and check every tensor's byte range
/// against the bytes present.
pub fn parse_header(file: &Path, buf: &[u8]) -> Result<GgufHeader> {
    let mut c = Cursor { buf, pos: 0 };
    let fail = |field: String| {
        move |(offset, kind): (u64, ErrorKind)| FormatError::new(file, field, offset, kind)
    };

    let magic = c.array::<4>().map_err(fail("magic".into()))?;
    if magic != GGUF_MAGIC {
        return Err(FormatError::new(
            file,
            "magic",
            0,
            ErrorKind::BadMagic {
                found: magic.to_vec(),
                expected: "GGUF",
            },
        ));
    }
    let version = c.u32().map_err(fail("version".into()))?;
    match version {
        2 | 3 => {}
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(FormatError::new(file, "version", 4, ErrorKind::BigEndian));
        }
        v => {
            return Err(FormatError::new(
                file,
                "version",
                4,
                ErrorKind::UnsupportedVersion {
                    version: v,
                    supported: "2, 3",
                },
            ))
        }
    }
    // A tensor info takes at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes;
    // a metadata entry at least 8 (key length) + 4 (type) + 1 (value).
    let n_tensors = c.count(24).map_err(fail("tensor_count".into()))?;
    let n_kv = c.count(13).map_err(fail("metadata_kv_count".into()))?;

    let mut metadata = Metadata::default();
    for i in 0..n_kv {
        let key_at = c.pos as u64;
        let key = c.string().map_err(fail(format!("metadata[{i}].key")))?;
        let ty = c
            .value_type()
            .map_err(fail(format!("metadata[{i}].type ({key})")))?;
        let value = c
            .value(ty, 0)
            .map_err(fail(format!("metadata[{i}].value ({key})")))?;
        metadata
            .insert(key, value)
            .map_err(|kind| FormatError::new(file, format!("metadata[{i}].key"), key_at, kind))?;
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => {
            let a = v.as_u64().ok_or_else(|| {
                FormatError::new(
                    file,
                    "general.alignment",
                    0,
                    ErrorKind::WrongValueType {
                        expected: "u32",
                        found: v.value_type().name(),
                    },
                )
            })?;
            if a == 0 || !a.is_power_of_two() || a > 1 << 30 {
                return Err(FormatError::new(
                    file,
                    "general.alignment",
                    0,
                    ErrorKind::BadAlignment(a),
                ));
            }
            a
        }
    };

    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut info_offsets = Vec::with_capacity(n_tensors as usize);
    let mut names = HashMap::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let at = c.pos as u64;
        info_offsets.push(at);
        let name = c.string().map_err(fail(format!("tensors[{i}].name")))?;
        let f = |field: &str| format!("tensors[{i}].{field} ({name})");
        let dims_at = c.pos as u64;
        let n_dims = u64::from(c.u32().map_err(fail(f("n_dims")))?);
        if n_dims > MAX_DIMS {
            return Err(FormatError::new(
                file,
                f("n_dims"),
                dims_at,
                ErrorKind::TooManyDims {
                    n_dims,
                    max: MAX_DIMS,
                },
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64().map_err(fail(f("dims")))?);
        }
        let type_at = c.pos as u64;
        let type_id = c.u32().map_err(fail(f("type")))?;
        let dtype = GgmlType::from_id(type_id).ok_or_else(|| {
            FormatError::new(
                file,
                f("type"),
                type_at,
                ErrorKind::UnknownGgmlType { id: type_id },
            )
        })?;
        let layout = dtype.layout().ok_or_else(|| {
            FormatError::new(
                file,
                f("type"),
                type_at,
                ErrorKind::UnsupportedGgmlType {
                    id: type_id,
                    name: dtype.name(),
                },
            )
        })?;
        let offset_at = c.pos as u64;
        let offset = c.u64().map_err(fail(f("offset")))?;

        let overflow = || {
            FormatError::new(
                file,
                f("dims"),
                dims_at,
                ErrorKind::ShapeOverflow {
                    shape: dims.clone(),
                },
            )
        };
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(overflow)?;
        let ne0 = dims.first().copied().unwrap_or(1);
        if ne0 % layout.block_elems as u64 != 0 {
            return Err(FormatError::new(
                file,
                f("dims"),
                dims_at,
                ErrorKind::NotWholeBlocks {
                    ne0,
                    block: layout.block_elems,
                },
            ));
        }
        let n_bytes = dtype.bytes_for(n_elements).ok_or_else(overflow)?;
        if offset % alignment != 0 {
            return Err(FormatError::new(
                file,
                f("offset"),
                offset_at,
                ErrorKind::Misaligned { offset, alignment },
            ));
        }
        if names.insert(name.clone(), i).is_some() {
            return Err(FormatError::new(
                file,
                format!("tensors[{i}].name"),
                at,
                ErrorKind::DuplicateTensor(name),
            ));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            dtype,
            offset,
            n_elements,
            n_bytes,
        });
    }

    let header_end = c.pos as u64;
    let data_offset = header_end.div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    if !tensors.is_empty() && data_offset > file_len {
        // Even zero-sized tensors point into the data section, so it must exist.
        return Err(FormatError::new(
            file,
            "data section",
            header_end,
            ErrorKind::Truncated {
                needed: data_offset - header_end,
                available: file_len - header_end,
            },
        ));
    }
    let data_len = file_len.saturating_sub(data_offset);

    // Byte ranges: inside the data section, and no two overlapping.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| (tensors[i].offset, tensors[i].n_bytes));
    let mut prev: Option<(usize, u64)> = None;
    for &i in &order {
        let t = &tensors[i];
        let end = t.offset.checked_add(t.n_bytes);
        match end {
            Some(end) if end <= data_len => {}
            _ => {
                return Err(FormatError::new(
                    file,
                    format!("tensors[{i}].offset ({})", t.name),
                    info_offsets[i],
                    ErrorKind::OutOfBounds {
                        start: t.offset,
                        end: end.unwrap_or(u64::MAX),
                        limit: data_len,
                    },
                ))
            }
        }
        if t.n_bytes == 0 {
            continue;
        }
        if let Some((p, prev_end)) = prev {
            if t.offset < prev_end {
                return Err(FormatError::new(
                    file,
                    format!("tensors[{i}].offset ({})", t.name),
                    info_offsets[i],
                    ErrorKind::Overlap {
                        other: tensors[p].name.clone(),
                    },
                ));
            }
        }
        prev = Some((i, t.offset + t.n_bytes));
    }

    Ok(GgufHeader {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}
