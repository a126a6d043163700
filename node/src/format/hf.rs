//! Hugging Face side files of a safetensors model directory: `config.json`
//! (into the model config), `tokenizer.json` and `tokenizer_config.json`
//! (kept for the tokenizer and the chat template).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::{ErrorKind, FormatError, Result};
use super::safetensors::SafetensorsCheckpoint;

/// The fields of `config.json` the engine uses. Nested `text_config`
/// (multimodal checkpoints) is flattened into the top level.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub model_type: Option<String>,
    pub hidden_size: Option<u64>,
    pub intermediate_size: Option<u64>,
    pub num_hidden_layers: Option<u64>,
    pub num_attention_heads: Option<u64>,
    pub num_key_value_heads: Option<u64>,
    pub head_dim: Option<u64>,
    pub vocab_size: Option<u64>,
    pub max_position_embeddings: Option<u64>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_local_base_freq: Option<f64>,
    pub sliding_window: Option<u64>,
    pub tie_word_embeddings: Option<bool>,
    pub torch_dtype: Option<String>,
    pub bos_token_id: Option<serde_json::Value>,
    pub eos_token_id: Option<serde_json::Value>,
    pub pad_token_id: Option<serde_json::Value>,
    pub hidden_act: Option<String>,
    pub attention_bias: Option<bool>,
    pub query_pre_attn_scalar: Option<f64>,
}

impl HfConfig {
    pub fn from_json(file: &Path, text: &str) -> Result<Self> {
        let mut v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            FormatError::new(file, "config", 0, ErrorKind::InvalidJson(e.to_string()))
        })?;
        if let Some(serde_json::Value::Object(inner)) = v.get("text_config").cloned() {
            if let Some(outer) = v.as_object_mut() {
                for (k, val) in inner {
                    outer.entry(k).or_insert(val);
                }
            }
        }
        serde_json::from_value(v)
            .map_err(|e| FormatError::new(file, "config", 0, ErrorKind::Schema(e.to_string())))
    }

    /// The architecture name: `model_type`, else the first of `architectures`.
    pub fn architecture(&self) -> Option<&str> {
        self.model_type
            .as_deref()
            .or(self.architectures.first().map(String::as_str))
    }
}

/// `tokenizer_config.json`, as far as the engine needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HfTokenizerConfig {
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
}

fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

impl HfTokenizerConfig {
    pub fn from_json(file: &Path, text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            FormatError::new(
                file,
                "tokenizer_config",
                0,
                ErrorKind::InvalidJson(e.to_string()),
            )
        })?;
        // chat_template is a string, or a list of {name, template} (the "default" one is used).
        let chat_template = match v.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or(list.first())
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_owned),
            Some(serde_json::Value::Null) | None => None,
            Some(_) => {
                return Err(FormatError::new(
                    file,
                    "chat_template",
                    0,
                    ErrorKind::Schema(
                        "chat_template must be a string or a list of templates".into(),
                    ),
                ))
            }
        };
        Ok(HfTokenizerConfig {
            chat_template,
            bos_token: token_string(v.get("bos_token")),
            eos_token: token_string(v.get("eos_token")),
            add_bos_token: v.get("add_bos_token").and_then(|b| b.as_bool()),
            add_eos_token: v.get("add_eos_token").and_then(|b| b.as_bool()),
        })
    }
}

/// A safetensors model directory: weights plus the HF side files.
#[derive(Debug)]
pub struct HfModelDir {
    pub dir: PathBuf,
    pub weights: SafetensorsCheckpoint,
    pub config: HfConfig,
    /// `tokenizer.json`, parsed, when present.
    pub tokenizer: Option<serde_json::Value>,
    pub tokenizer_config: Option<HfTokenizerConfig>,
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FormatError::io(path, &e)),
    }
}

impl HfModelDir {
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join("config.json");
        let config_text = read_optional(&config_path)?.ok_or_else(|| {
            FormatError::new(
                dir,
                "config.json",
                0,
                ErrorKind::Missing("config.json".into()),
            )
        })?;
        let config = HfConfig::from_json(&config_path, &config_text)?;
        let weights = SafetensorsCheckpoint::open(dir)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = match read_optional(&tok_path)? {
            Some(t) => Some(serde_json::from_str(&t).map_err(|e| {
                FormatError::new(
                    &tok_path,
                    "tokenizer",
                    0,
                    ErrorKind::InvalidJson(e.to_string()),
                )
            })?),
            None => None,
        };
        let tc_path = dir.join("tokenizer_config.json");
        let tokenizer_config = match read_optional(&tc_path)? {
            Some(t) => Some(HfTokenizerConfig::from_json(&tc_path, &t)?),
            None => None,
        };
        Ok(HfModelDir {
            dir: dir.to_path_buf(),
            weights,
            config,
            tokenizer,
            tokenizer_config,
        })
    }

    /// The tokenizer model type in `tokenizer.json` ("BPE", "Unigram", ...).
    pub fn tokenizer_kind(&self) -> Option<&str> {
        self.tokenizer.as_ref()?.get("model")?.get("type")?.as_str()
    }

    /// Number of tokens in `tokenizer.json` (vocab plus added tokens not in it).
    pub fn tokenizer_vocab_len(&self) -> Option<u64> {
        let t = self.tokenizer.as_ref()?;
        let vocab = t.get("model")?.get("vocab")?;
        let n = match vocab {
            serde_json::Value::Object(o) => o.len(),
            serde_json::Value::Array(a) => a.len(),
            _ => return None,
        } as u64;
        let added_max = t
            .get("added_tokens")
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.get("id")?.as_u64())
                    .map(|id| id + 1)
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        Some(n.max(added_max))
    }
}
