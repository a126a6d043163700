//! What `realizar inspect` reports about a model file or directory.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::error::Result;
use super::gguf::GgufFile;
use super::hf::HfModelDir;

/// Count and bytes of the tensors of one type.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TypeStat {
    pub count: u64,
    pub bytes: u64,
}

/// One tensor, for `--tensors`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TensorSummary {
    pub name: String,
    #[serde(rename = "type")]
    pub dtype: String,
    pub shape: Vec<u64>,
    pub offset: u64,
    pub bytes: u64,
}

/// A model's vital statistics, from GGUF metadata or HF config files.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub format: String,
    pub path: String,
    pub file_size: u64,
    pub architecture: Option<String>,
    pub name: Option<String>,
    pub block_count: Option<u64>,
    pub embedding_length: Option<u64>,
    pub feed_forward_length: Option<u64>,
    pub head_count: Option<u64>,
    pub head_count_kv: Option<u64>,
    pub context_length: Option<u64>,
    pub vocab_size: Option<u64>,
    pub parameter_count: u64,
    pub tensor_count: u64,
    /// ggml (or safetensors) type name → number of tensors.
    pub tensor_types: BTreeMap<String, u64>,
    /// type name → total bytes of those tensors.
    pub tensor_bytes: BTreeMap<String, u64>,
    pub tokenizer_kind: Option<String>,
    pub tokenizer_pre: Option<String>,
    pub special_tokens: BTreeMap<String, u64>,
    pub chat_template: bool,
    pub gguf_version: Option<u32>,
    pub alignment: Option<u64>,
    pub metadata_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensors: Option<Vec<TensorSummary>>,
}

const SPECIAL_KEYS: [(&str, &str); 8] = [
    ("bos", "tokenizer.ggml.bos_token_id"),
    ("eos", "tokenizer.ggml.eos_token_id"),
    ("unk", "tokenizer.ggml.unknown_token_id"),
    ("pad", "tokenizer.ggml.padding_token_id"),
    ("sep", "tokenizer.ggml.seperator_token_id"),
    ("cls", "tokenizer.ggml.cls_token_id"),
    ("mask", "tokenizer.ggml.mask_token_id"),
    ("eot", "tokenizer.ggml.eot_token_id"),
];

impl ModelSummary {
    /// Summarise a GGUF file, a safetensors file, or a HF model directory.
    pub fn of_path(path: &Path, with_tensors: bool) -> Result<Self> {
        if path.is_dir() || path.extension().is_some_and(|e| e == "safetensors") {
            let dir = if path.is_dir() {
                path
            } else {
                path.parent().unwrap_or(Path::new("."))
            };
            Ok(Self::of_hf(&HfModelDir::open(dir)?, with_tensors))
        } else {
            Ok(Self::of_gguf(&GgufFile::open(path)?, with_tensors))
        }
    }

    pub fn of_gguf(f: &GgufFile, with_tensors: bool) -> Self {
        let md = f.metadata();
        let arch = md.architecture().map(str::to_owned);
        let a = arch.clone().unwrap_or_default();
        let key = |k: &str| md.get_u64(&format!("{a}.{k}"));
        let mut tensor_types = BTreeMap::new();
        let mut tensor_bytes = BTreeMap::new();
        let mut params = 0u64;
        for t in f.tensor_infos() {
            *tensor_types.entry(t.dtype.name().to_owned()).or_insert(0) += 1;
            *tensor_bytes.entry(t.dtype.name().to_owned()).or_insert(0) += t.n_bytes;
            params += t.n_elements;
        }
        let n_tokens = md
            .get_array("tokenizer.ggml.tokens")
            .map(|t| t.len() as u64);
        let special_tokens = SPECIAL_KEYS
            .iter()
            .filter_map(|(name, k)| Some((name.to_string(), md.get_u64(k)?)))
            .collect();
        let tensors = with_tensors.then(|| {
            f.tensor_infos()
                .iter()
                .map(|t| TensorSummary {
                    name: t.name.clone(),
                    dtype: t.dtype.name().to_owned(),
                    shape: t.dims.clone(),
                    offset: f.header().data_offset + t.offset,
                    bytes: t.n_bytes,
                })
                .collect()
        });
        ModelSummary {
            format: "gguf".into(),
            path: f.path().display().to_string(),
            file_size: f.file_size(),
            name: md.get_str("general.name").map(str::to_owned),
            block_count: key("block_count"),
            embedding_length: key("embedding_length"),
            feed_forward_length: key("feed_forward_length"),
            head_count: key("attention.head_count"),
            head_count_kv: key("attention.head_count_kv").or(key("attention.head_count")),
            context_length: key("context_length"),
            vocab_size: key("vocab_size").or(n_tokens),
            parameter_count: params,
            tensor_count: f.tensor_infos().len() as u64,
            tensor_types,
            tensor_bytes,
            tokenizer_kind: md.get_str("tokenizer.ggml.model").map(str::to_owned),
            tokenizer_pre: md.get_str("tokenizer.ggml.pre").map(str::to_owned),
            special_tokens,
            chat_template: md.get_str("tokenizer.chat_template").is_some(),
            gguf_version: Some(f.version()),
            alignment: Some(f.header().alignment),
            metadata_count: md.len() as u64,
            architecture: arch,
            tensors,
        }
    }

    pub fn of_hf(m: &HfModelDir, with_tensors: bool) -> Self {
        let c = &m.config;
        let mut tensor_types = BTreeMap::new();
        let mut tensor_bytes = BTreeMap::new();
        let mut params = 0u64;
        let mut tensors = Vec::new();
        for t in m.weights.tensors() {
            *tensor_types.entry(t.dtype.name().to_owned()).or_insert(0) += 1;
            *tensor_bytes.entry(t.dtype.name().to_owned()).or_insert(0) += t.data.len() as u64;
            params += t.shape.iter().product::<u64>();
            if with_tensors {
                tensors.push(TensorSummary {
                    name: t.name.to_owned(),
                    dtype: t.dtype.name().to_owned(),
                    shape: t.shape.to_vec(),
                    offset: 0,
                    bytes: t.data.len() as u64,
                });
            }
        }
        let mut special_tokens = BTreeMap::new();
        for (name, v) in [
            ("bos", &c.bos_token_id),
            ("eos", &c.eos_token_id),
            ("pad", &c.pad_token_id),
        ] {
            let id = match v {
                Some(serde_json::Value::Number(n)) => n.as_u64(),
                Some(serde_json::Value::Array(a)) => a.first().and_then(|x| x.as_u64()),
                _ => None,
            };
            if let Some(id) = id {
                special_tokens.insert(name.to_string(), id);
            }
        }
        ModelSummary {
            format: "safetensors".into(),
            path: m.dir.display().to_string(),
            file_size: m.weights.total_size(),
            architecture: c.architecture().map(str::to_owned),
            name: m.dir.file_name().map(|n| n.to_string_lossy().into_owned()),
            block_count: c.num_hidden_layers,
            embedding_length: c.hidden_size,
            feed_forward_length: c.intermediate_size,
            head_count: c.num_attention_heads,
            head_count_kv: c.num_key_value_heads.or(c.num_attention_heads),
            context_length: c.max_position_embeddings,
            vocab_size: c.vocab_size.or(m.tokenizer_vocab_len()),
            parameter_count: params,
            tensor_count: m.weights.len() as u64,
            tensor_types,
            tensor_bytes,
            tokenizer_kind: m.tokenizer_kind().map(str::to_owned),
            tokenizer_pre: None,
            special_tokens,
            chat_template: m
                .tokenizer_config
                .as_ref()
                .is_some_and(|t| t.chat_template.is_some()),
            gguf_version: None,
            alignment: None,
            metadata_count: m
                .weights
                .shards()
                .iter()
                .map(|s| s.metadata().len() as u64)
                .sum(),
            tensors: with_tensors.then_some(tensors),
        }
    }

    /// Human-readable report.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let opt = |v: &Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let _ = writeln!(
            s,
            "file:              {} ({} format, {:.1} MiB)",
            self.path,
            self.format,
            self.file_size as f64 / (1 << 20) as f64
        );
        if let Some(v) = self.gguf_version {
            let _ = writeln!(
                s,
                "gguf version:      {v} (alignment {}, {} metadata keys)",
                self.alignment.unwrap_or(0),
                self.metadata_count
            );
        }
        let _ = writeln!(
            s,
            "name:              {}",
            self.name.as_deref().unwrap_or("-")
        );
        let _ = writeln!(
            s,
            "architecture:      {}",
            self.architecture.as_deref().unwrap_or("-")
        );
        let _ = writeln!(s, "blocks:            {}", opt(&self.block_count));
        let _ = writeln!(s, "embedding length:  {}", opt(&self.embedding_length));
        let _ = writeln!(s, "feed-forward:      {}", opt(&self.feed_forward_length));
        let _ = writeln!(
            s,
            "heads / kv heads:  {} / {}",
            opt(&self.head_count),
            opt(&self.head_count_kv)
        );
        let _ = writeln!(s, "context length:    {}", opt(&self.context_length));
        let _ = writeln!(s, "vocab size:        {}", opt(&self.vocab_size));
        let _ = writeln!(
            s,
            "parameters:        {} ({:.1} M)",
            self.parameter_count,
            self.parameter_count as f64 / 1e6
        );
        let _ = writeln!(
            s,
            "tokenizer:         {}{}",
            self.tokenizer_kind.as_deref().unwrap_or("-"),
            self.tokenizer_pre
                .as_deref()
                .map(|p| format!(" (pre: {p})"))
                .unwrap_or_default()
        );
        let specials: Vec<String> = self
            .special_tokens
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(
            s,
            "special tokens:    {}",
            if specials.is_empty() {
                "-".into()
            } else {
                specials.join(" ")
            }
        );
        let _ = writeln!(
            s,
            "chat template:     {}",
            if self.chat_template {
                "present"
            } else {
                "absent"
            }
        );
        let _ = writeln!(s, "tensors:           {}", self.tensor_count);
        for (ty, n) in &self.tensor_types {
            let bytes = self.tensor_bytes.get(ty).copied().unwrap_or(0);
            let _ = writeln!(
                s,
                "  {ty:<8} {n:>5} tensors {:>10.2} MiB",
                bytes as f64 / (1 << 20) as f64
            );
        }
        if let Some(ts) = &self.tensors {
            let _ = writeln!(
                s,
                "\n{:<48} {:<8} {:<24} {:>12} {:>12}",
                "name", "type", "shape", "offset", "bytes"
            );
            for t in ts {
                let shape = format!("{:?}", t.shape);
                let _ = writeln!(
                    s,
                    "{:<48} {:<8} {:<24} {:>12} {:>12}",
                    t.name, t.dtype, shape, t.offset, t.bytes
                );
            }
        }
        s
    }
}
