//! Tokenizers built from a model's own metadata: byte-level BPE (GGUF
//! `tokenizer.ggml.model = "gpt2"`) with the pre-tokenizer chosen by
//! `tokenizer.ggml.pre`, and SentencePiece-style (`"llama"`: scores, byte
//! fallback, ▁ spaces); control and user-defined tokens recognised in text
//! when asked; streaming decode that never emits a broken UTF-8 sequence.

pub mod bpe;
pub mod chat;
pub mod pretokenize;
pub mod spm;
pub mod vocab;

use std::collections::HashMap;

use crate::format::Metadata;
pub use bpe::Bpe;
pub use chat::{ChatError, ChatMessage, ChatTemplate};
pub use pretokenize::PreTokenizer;
pub use spm::Spm;
pub use vocab::{TokenType, TokenizerError, Vocab};

#[derive(Debug, Clone)]
pub enum Model {
    Bpe(Box<Bpe>),
    Spm(Box<Spm>),
}

/// A tokenizer: vocabulary plus the algorithm that maps text onto it.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    pub vocab: Vocab,
    model: Model,
    /// Control and user-defined tokens by first byte, longest first, for
    /// parsing them out of text.
    specials: HashMap<u8, Vec<u32>>,
}

impl Tokenizer {
    pub fn from_gguf(md: &Metadata) -> Result<Self, TokenizerError> {
        let kind = md
            .get_str("tokenizer.ggml.model")
            .ok_or(TokenizerError::Missing("tokenizer.ggml.model"))?;
        let (vocab, model) = match kind {
            "gpt2" => {
                let vocab = Vocab::from_gguf(md, false)?;
                let bpe = Bpe::from_gguf(md, &vocab)?;
                (vocab, Model::Bpe(Box::new(bpe)))
            }
            "llama" => {
                let vocab = Vocab::from_gguf(md, true)?;
                let spm = Spm::new(
                    &vocab,
                    md.get_bool("tokenizer.ggml.add_space_prefix")
                        .unwrap_or(true),
                );
                (vocab, Model::Spm(Box::new(spm)))
            }
            other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
        };
        let mut specials: HashMap<u8, Vec<u32>> = HashMap::new();
        for id in vocab.special_ids() {
            specials
                .entry(vocab.tokens[id as usize].as_bytes()[0])
                .or_default()
                .push(id);
        }
        Ok(Tokenizer {
            vocab,
            model,
            specials,
        })
    }

    /// Encode `text`. `add_special` adds BOS/EOS as the model's metadata says;
    /// `parse_special` recognises control tokens written in the text
    /// (user-defined tokens are always recognised).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_special && self.vocab.add_bos {
            out.extend(self.vocab.bos);
        }
        let mut rest_start = 0;
        let mut i = 0;
        let bytes = text.as_bytes();
        while i < bytes.len() {
            if !text.is_char_boundary(i) {
                i += 1;
                continue;
            }
            let hit = self
                .specials
                .get(&bytes[i])
                .into_iter()
                .flatten()
                .copied()
                .find(|&id| {
                    let t = &self.vocab.tokens[id as usize];
                    (parse_special || self.vocab.types[id as usize] == TokenType::UserDefined)
                        && bytes[i..].starts_with(t.as_bytes())
                });
            match hit {
                Some(id) => {
                    self.encode_plain(&text[rest_start..i], rest_start == 0, &mut out);
                    out.push(id);
                    i += self.vocab.tokens[id as usize].len();
                    rest_start = i;
                }
                None => i += 1,
            }
        }
        self.encode_plain(&text[rest_start..], rest_start == 0, &mut out);
        if add_special && self.vocab.add_eos {
            out.extend(self.vocab.eos);
        }
        out
    }

    fn encode_plain(&self, text: &str, first: bool, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        match &self.model {
            Model::Bpe(b) => b.encode(text, &self.vocab, out),
            Model::Spm(m) => m.encode(text, first, &self.vocab, out),
        }
    }

    /// The bytes token `id` decodes to; control tokens give their text only
    /// when `render_special`.
    pub fn token_bytes(&self, id: u32, render_special: bool, out: &mut Vec<u8>) {
        let Some(text) = self.vocab.tokens.get(id as usize) else {
            return;
        };
        match self.vocab.types[id as usize] {
            TokenType::Control | TokenType::Unknown | TokenType::Unused if !render_special => {}
            TokenType::Control
            | TokenType::UserDefined
            | TokenType::Unknown
            | TokenType::Unused => out.extend_from_slice(text.as_bytes()),
            ty => match &self.model {
                Model::Bpe(b) => b.token_bytes(text, out),
                Model::Spm(m) => m.token_bytes(text, ty, out),
            },
        }
    }

    /// Decode ids to text (invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[u32], render_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            self.token_bytes(id, render_special, &mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Turns a stream of tokens into text pieces that are always whole UTF-8:
/// bytes of an incomplete sequence wait for the next token.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        tok.token_bytes(id, false, &mut self.pending);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_some() => {
                // A byte that can never become valid: replace it and go on.
                let s = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                return s;
            }
            Err(e) => e.valid_up_to(),
        };
        let out = String::from_utf8(self.pending[..valid].to_vec()).expect("checked valid");
        self.pending.drain(..valid);
        out
    }

    /// Whatever is left at the end of the stream (lossy).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
