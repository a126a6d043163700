//! The vocabulary of a model: token texts, types, scores and special ids,
//! read from GGUF metadata.

use std::collections::HashMap;

use crate::format::{MetaArray, Metadata};

/// `tokenizer.ggml.token_type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_i32(v: i32) -> Self {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

/// Why a tokenizer could not be built from a model's metadata.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenizerError {
    #[error("metadata key `{0}` is missing")]
    Missing(&'static str),
    #[error("metadata key `{key}` is invalid: {why}")]
    Invalid { key: &'static str, why: String },
    #[error("tokenizer model {0:?} is not supported (supported: gpt2 byte-level BPE, llama SentencePiece)")]
    UnsupportedModel(String),
    #[error("pre-tokenizer {0:?} is not supported (supported: gpt2, default, smollm, starcoder, llama3/llama-bpe, qwen2, ...)")]
    UnsupportedPre(String),
}

#[derive(Debug, Clone)]
pub struct Vocab {
    pub tokens: Vec<String>,
    pub types: Vec<TokenType>,
    pub scores: Vec<f32>,
    pub by_text: HashMap<String, u32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
}

impl Vocab {
    pub fn from_gguf(md: &Metadata, default_add_bos: bool) -> Result<Self, TokenizerError> {
        let tokens = match md.get_array("tokenizer.ggml.tokens") {
            Some(MetaArray::String(t)) => t.clone(),
            Some(_) => {
                return Err(TokenizerError::Invalid {
                    key: "tokenizer.ggml.tokens",
                    why: "not an array of strings".into(),
                })
            }
            None => return Err(TokenizerError::Missing("tokenizer.ggml.tokens")),
        };
        let n = tokens.len();
        let types = match md.get_array("tokenizer.ggml.token_type") {
            Some(MetaArray::I32(t)) if t.len() == n => {
                t.iter().map(|&v| TokenType::from_i32(v)).collect()
            }
            Some(_) => {
                return Err(TokenizerError::Invalid {
                    key: "tokenizer.ggml.token_type",
                    why: format!("expected {n} i32 values"),
                })
            }
            None => vec![TokenType::Normal; n],
        };
        let scores = match md.get_array("tokenizer.ggml.scores") {
            Some(MetaArray::F32(s)) if s.len() == n => s.clone(),
            Some(_) => {
                return Err(TokenizerError::Invalid {
                    key: "tokenizer.ggml.scores",
                    why: format!("expected {n} f32 values"),
                })
            }
            None => vec![0.0; n],
        };
        let id = |key: &'static str| -> Result<Option<u32>, TokenizerError> {
            match md.get_u64(key) {
                None => Ok(None),
                Some(v) if (v as usize) < n => Ok(Some(v as u32)),
                Some(v) => Err(TokenizerError::Invalid {
                    key,
                    why: format!("token id {v} is outside the vocabulary of {n}"),
                }),
            }
        };
        let by_text = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let eos = id("tokenizer.ggml.eos_token_id")?;
        Ok(Vocab {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos,
            eot: id("tokenizer.ggml.eot_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            add_bos: md
                .get_bool("tokenizer.ggml.add_bos_token")
                .unwrap_or(default_add_bos),
            add_eos: md.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false),
            tokens,
            types,
            scores,
            by_text,
        })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Tokens matched in text when special-token parsing is on, longest first.
    pub fn special_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = (0..self.tokens.len() as u32)
            .filter(|&i| {
                matches!(
                    self.types[i as usize],
                    TokenType::Control | TokenType::UserDefined
                ) && !self.tokens[i as usize].is_empty()
            })
            .collect();
        ids.sort_by_key(|&i| std::cmp::Reverse(self.tokens[i as usize].len()));
        ids
    }

    /// Whether generating `id` ends a sequence (EOS, EOT, or another end-of-generation control token).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        Some(id) == self.eos
            || Some(id) == self.eot
            || (self.types.get(id as usize) == Some(&TokenType::Control)
                && matches!(
                    self.tokens[id as usize].as_str(),
                    "<|im_end|>" | "<|eot_id|>" | "<end_of_turn>" | "<|endoftext|>" | "<|end|>"
                ))
    }
}
