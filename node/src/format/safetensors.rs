//! safetensors reader: header, dtypes, offset validation, zero-copy views,
//! and sharded checkpoints via `model.safetensors.index.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::error::{ErrorKind, FormatError, Result};
use super::storage::Storage;

/// The safetensors library refuses headers above 100 MB; so do we.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// A safetensors element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum StDtype {
    BOOL,
    U8,
    I8,
    U16,
    I16,
    F16,
    BF16,
    U32,
    I32,
    F32,
    U64,
    I64,
    F64,
    F8_E4M3,
    F8_E5M2,
}

impl StDtype {
    pub fn from_name(s: &str) -> Option<Self> {
        use StDtype::*;
        Some(match s {
            "BOOL" => BOOL,
            "U8" => U8,
            "I8" => I8,
            "U16" => U16,
            "I16" => I16,
            "F16" => F16,
            "BF16" => BF16,
            "U32" => U32,
            "I32" => I32,
            "F32" => F32,
            "U64" => U64,
            "I64" => I64,
            "F64" => F64,
            "F8_E4M3" => F8_E4M3,
            "F8_E5M2" => F8_E5M2,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use StDtype::*;
        match self {
            BOOL => "BOOL",
            U8 => "U8",
            I8 => "I8",
            U16 => "U16",
            I16 => "I16",
            F16 => "F16",
            BF16 => "BF16",
            U32 => "U32",
            I32 => "I32",
            F32 => "F32",
            U64 => "U64",
            I64 => "I64",
            F64 => "F64",
            F8_E4M3 => "F8_E4M3",
            F8_E5M2 => "F8_E5M2",
        }
    }

    pub fn size(self) -> u64 {
        use StDtype::*;
        match self {
            BOOL | U8 | I8 | F8_E4M3 | F8_E5M2 => 1,
            U16 | I16 | F16 | BF16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 => 8,
        }
    }
}

/// One tensor's header entry.
#[derive(Debug, Clone, PartialEq)]
pub struct StTensorInfo {
    pub name: String,
    pub dtype: StDtype,
    /// Row-major (PyTorch) shape: the last dimension is contiguous.
    pub shape: Vec<u64>,
    /// Byte range relative to the start of the data section.
    pub begin: u64,
    pub end: u64,
}

/// A zero-copy view of one tensor.
#[derive(Debug, Clone, Copy)]
pub struct StTensorView<'a> {
    pub name: &'a str,
    pub dtype: StDtype,
    pub shape: &'a [u64],
    pub data: &'a [u8],
}

/// One opened `.safetensors` file.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    storage: Storage,
    data_offset: u64,
    tensors: Vec<StTensorInfo>,
    by_name: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_storage(path.to_path_buf(), Storage::map(path)?)
    }

    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::from_storage(name.into(), Storage::Owned(bytes))
    }

    fn from_storage(path: PathBuf, storage: Storage) -> Result<Self> {
        let (data_offset, tensors, metadata) = parse_header(&path, storage.bytes())?;
        let by_name = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(SafetensorsFile {
            path,
            storage,
            data_offset,
            tensors,
            by_name,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_size(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    pub fn tensor_infos(&self) -> &[StTensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<StTensorView<'_>> {
        self.by_name.get(name).map(|&i| self.view(i))
    }

    pub fn tensors(&self) -> impl Iterator<Item = StTensorView<'_>> {
        (0..self.tensors.len()).map(|i| self.view(i))
    }

    fn view(&self, i: usize) -> StTensorView<'_> {
        let t = &self.tensors[i];
        // parse_header checked begin <= end <= data length.
        let start = (self.data_offset + t.begin) as usize;
        let end = (self.data_offset + t.end) as usize;
        StTensorView {
            name: &t.name,
            dtype: t.dtype,
            shape: &t.shape,
            data: &self.storage.bytes()[start..end],
        }
    }
}

type Parsed = (u64, Vec<StTensorInfo>, BTreeMap<String, String>);

/// Parse and validate a safetensors header against the bytes present.
pub fn parse_header(file: &Path, buf: &[u8]) -> Result<Parsed> {
    let err = |field: &str, offset: u64, kind| FormatError::new(file, field, offset, kind);
    if buf.len() < 8 {
        return Err(err(
            "header_length",
            0,
            ErrorKind::Truncated {
                needed: 8,
                available: buf.len() as u64,
            },
        ));
    }
    let n = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER_LEN {
        return Err(err(
            "header_length",
            0,
            ErrorKind::HeaderTooLarge {
                length: n,
                max: MAX_HEADER_LEN,
            },
        ));
    }
    let remaining = buf.len() as u64 - 8;
    if n > remaining {
        return Err(err(
            "header_length",
            0,
            ErrorKind::LengthBeyondFile {
                length: n,
                remaining,
            },
        ));
    }
    let header = &buf[8..8 + n as usize];
    let text = std::str::from_utf8(header)
        .map_err(|e| err("header", 8 + e.valid_up_to() as u64, ErrorKind::InvalidUtf8))?;
    if !text.starts_with('{') {
        return Err(err(
            "header",
            8,
            ErrorKind::InvalidJson("header does not start with '{'".into()),
        ));
    }
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
        .map_err(|e| err("header", 8, ErrorKind::InvalidJson(e.to_string())))?;

    let data_offset = 8 + n;
    let data_len = buf.len() as u64 - data_offset;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(json.len());
    for (name, entry) in &json {
        if name == "__metadata__" {
            let obj = entry.as_object().ok_or_else(|| {
                err(
                    "__metadata__",
                    8,
                    ErrorKind::Schema("expected an object of strings".into()),
                )
            })?;
            for (k, v) in obj {
                let s = v.as_str().ok_or_else(|| {
                    err(
                        &format!("__metadata__.{k}"),
                        8,
                        ErrorKind::Schema("metadata values must be strings".into()),
                    )
                })?;
                metadata.insert(k.clone(), s.to_owned());
            }
            continue;
        }
        let field = |f: &str| format!("{name}.{f}");
        let obj = entry
            .as_object()
            .ok_or_else(|| err(name, 8, ErrorKind::Schema("expected an object".into())))?;
        let dtype_s = obj.get("dtype").and_then(|v| v.as_str()).ok_or_else(|| {
            err(
                &field("dtype"),
                8,
                ErrorKind::Missing("string `dtype`".into()),
            )
        })?;
        let dtype = StDtype::from_name(dtype_s).ok_or_else(|| {
            err(
                &field("dtype"),
                8,
                ErrorKind::UnknownDtype(dtype_s.to_owned()),
            )
        })?;
        let shape = obj
            .get("shape")
            .and_then(|v| v.as_array())
            .ok_or_else(|| {
                err(
                    &field("shape"),
                    8,
                    ErrorKind::Missing("array `shape`".into()),
                )
            })?
            .iter()
            .map(|d| d.as_u64())
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| {
                err(
                    &field("shape"),
                    8,
                    ErrorKind::Schema("shape must hold non-negative integers".into()),
                )
            })?;
        let offs = obj
            .get("data_offsets")
            .and_then(|v| v.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
            .ok_or_else(|| {
                err(
                    &field("data_offsets"),
                    8,
                    ErrorKind::Missing("`data_offsets` as [begin, end]".into()),
                )
            })?;
        let (begin, end) = offs;
        let n_bytes = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| {
                err(
                    &field("shape"),
                    8,
                    ErrorKind::ShapeOverflow {
                        shape: shape.clone(),
                    },
                )
            })?;
        if begin > end || end > data_len {
            return Err(err(
                &field("data_offsets"),
                data_offset + begin.min(data_len),
                ErrorKind::OutOfBounds {
                    start: begin,
                    end,
                    limit: data_len,
                },
            ));
        }
        if end - begin != n_bytes {
            return Err(err(
                &field("data_offsets"),
                data_offset + begin,
                ErrorKind::SizeMismatch {
                    expected: n_bytes,
                    found: end - begin,
                },
            ));
        }
        tensors.push(StTensorInfo {
            name: name.clone(),
            dtype,
            shape,
            begin,
            end,
        });
    }

    // The data section must be tiled exactly: no overlaps, no gaps, nothing trailing.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| (tensors[i].begin, tensors[i].end));
    let mut covered = 0u64;
    let mut last: Option<usize> = None;
    for &i in &order {
        let t = &tensors[i];
        if t.begin < covered {
            let other = last.map(|l| tensors[l].name.clone()).unwrap_or_default();
            return Err(err(
                &format!("{}.data_offsets", t.name),
                data_offset + t.begin,
                ErrorKind::Overlap { other },
            ));
        }
        if t.begin > covered {
            return Err(err(
                &format!("{}.data_offsets", t.name),
                data_offset + covered,
                ErrorKind::IncompleteBuffer { covered, data_len },
            ));
        }
        covered = t.end;
        if t.end > t.begin {
            last = Some(i);
        }
    }
    if covered != data_len {
        return Err(err(
            "data",
            data_offset + covered,
            ErrorKind::IncompleteBuffer { covered, data_len },
        ));
    }
    Ok((data_offset, tensors, metadata))
}

/// A checkpoint made of one or more safetensors files.
#[derive(Debug)]
pub struct SafetensorsCheckpoint {
    shards: Vec<SafetensorsFile>,
    by_name: HashMap<String, usize>,
}

/// File name of the shard index written by `transformers`.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

impl SafetensorsCheckpoint {
    /// Open `model.safetensors.index.json` (sharded) or `model.safetensors`
    /// in a directory, or a single `.safetensors` file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_file() {
            return Self::from_shards(vec![SafetensorsFile::open(path)?]);
        }
        let index = path.join(INDEX_FILE);
        if index.is_file() {
            return Self::open_index(&index);
        }
        let single = path.join("model.safetensors");
        if single.is_file() {
            return Self::from_shards(vec![SafetensorsFile::open(&single)?]);
        }
        Err(FormatError::new(
            path,
            "directory",
            0,
            ErrorKind::Missing(format!("{INDEX_FILE} or model.safetensors")),
        ))
    }

    /// Open a sharded checkpoint from its index file.
    pub fn open_index(index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|e| FormatError::io(index, &e))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            FormatError::new(index, "index", 0, ErrorKind::InvalidJson(e.to_string()))
        })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                FormatError::new(
                    index,
                    "weight_map",
                    0,
                    ErrorKind::Missing("object `weight_map`".into()),
                )
            })?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut files: Vec<String> = Vec::new();
        let mut wanted: Vec<(String, String)> = Vec::with_capacity(map.len());
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                FormatError::new(
                    index,
                    format!("weight_map.{tensor}"),
                    0,
                    ErrorKind::Schema("shard name must be a string".into()),
                )
            })?;
            // A shard must be a plain file name beside the index.
            if file.is_empty()
                || file.contains('/')
                || file.contains('\\')
                || file == ".."
                || file == "."
            {
                return Err(FormatError::new(
                    index,
                    format!("weight_map.{tensor}"),
                    0,
                    ErrorKind::Schema(format!("shard {file:?} is not a plain file name")),
                ));
            }
            if !files.iter().any(|f| f == file) {
                files.push(file.to_owned());
            }
            wanted.push((tensor.clone(), file.to_owned()));
        }
        let shards = files
            .iter()
            .map(|f| SafetensorsFile::open(dir.join(f)))
            .collect::<Result<Vec<_>>>()?;
        let ckpt = Self::from_shards(shards)?;
        for (tensor, file) in wanted {
            let found = ckpt.by_name.get(&tensor).map(|&s| {
                ckpt.shards[s].path().file_name().and_then(|n| n.to_str()) == Some(file.as_str())
            });
            if found != Some(true) {
                return Err(FormatError::new(
                    index,
                    format!("weight_map.{tensor}"),
                    0,
                    ErrorKind::Missing(format!("tensor {tensor:?} in shard {file}")),
                ));
            }
        }
        Ok(ckpt)
    }

    fn from_shards(shards: Vec<SafetensorsFile>) -> Result<Self> {
        let mut by_name = HashMap::new();
        for (s, shard) in shards.iter().enumerate() {
            for t in shard.tensor_infos() {
                if by_name.insert(t.name.clone(), s).is_some() {
                    return Err(FormatError::new(
                        shard.path(),
                        t.name.clone(),
                        0,
                        ErrorKind::DuplicateTensor(t.name.clone()),
                    ));
                }
            }
        }
        Ok(SafetensorsCheckpoint { shards, by_name })
    }

    pub fn shards(&self) -> &[SafetensorsFile] {
        &self.shards
    }

    pub fn tensor(&self, name: &str) -> Option<StTensorView<'_>> {
        self.by_name
            .get(name)
            .and_then(|&s| self.shards[s].tensor(name))
    }

    pub fn tensors(&self) -> impl Iterator<Item = StTensorView<'_>> {
        self.shards.iter().flat_map(|s| s.tensors())
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn total_size(&self) -> u64 {
        self.shards.iter().map(|s| s.file_size()).sum()
    }
}

/// Serialize tensors to a safetensors image (used by the export tool and tests).
pub fn write_safetensors(
    tensors: &[(String, StDtype, Vec<u64>, Vec<u8>)],
    metadata: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).expect("string map"),
        );
    }
    let mut offset = 0u64;
    for (name, dtype, shape, data) in tensors {
        let end = offset + data.len() as u64;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut text = serde_json::to_string(&header).expect("json");
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + offset as usize);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    for (_, _, _, data) in tensors {
        out.extend_from_slice(data);
    }
    out
}
