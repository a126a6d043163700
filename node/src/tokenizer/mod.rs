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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

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
    specials: HashMap<u8, Specials>,
    max_token_bytes: usize,
    /// Every id whose generation ends a sequence, found once: a request
    /// that ignores EOS masks them at every step (Gemma's vocabulary has
    /// 262,144 entries to scan).
    end_ids: Vec<u32>,
}

/// The special tokens that start with one byte: by length, longest first,
/// each length a map from the token's text to its ids (ascending). Looking
/// up each length costs a hash, not a comparison per special token: Gemma
/// has thousands of `<...>` tokens, and text full of `<` must stay linear.
type Specials = Vec<(usize, HashMap<Vec<u8>, Vec<u32>>)>;

/// How long an encoding may run: a deadline and a cancellation flag (set
/// when the request that asked for it goes away).
#[derive(Debug, Clone, Default)]
pub struct Budget {
    deadline: Option<Instant>,
    cancelled: Option<Arc<AtomicBool>>,
}

/// An encoding stopped because its budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Interrupted {
    #[error("tokenization ran past its time budget")]
    Deadline,
    #[error("tokenization was cancelled")]
    Cancelled,
}

impl Budget {
    pub fn unlimited() -> Self {
        Budget::default()
    }

    pub fn new(deadline: Option<Instant>, cancelled: Option<Arc<AtomicBool>>) -> Self {
        Budget {
            deadline,
            cancelled,
        }
    }

    pub fn check(&self) -> Result<(), Interrupted> {
        if self
            .cancelled
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Err(Interrupted::Cancelled);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Interrupted::Deadline);
        }
        Ok(())
    }
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
        let mut specials: HashMap<u8, Specials> = HashMap::new();
        // special_ids() is longest first, ids ascending within a length.
        for id in vocab.special_ids() {
            let text = vocab.tokens[id as usize].as_bytes();
            let group = specials.entry(text[0]).or_default();
            if group.last().is_none_or(|(len, _)| *len != text.len()) {
                group.push((text.len(), HashMap::new()));
            }
            let (_, by_text) = group.last_mut().expect("pushed");
            by_text.entry(text.to_vec()).or_default().push(id);
        }
        // Without a token (or an unknown token) for every byte, text can
        // encode to fewer tokens than the bound below says: no bound then.
        let every_byte = vocab.unk.is_some()
            || match &model {
                Model::Bpe(m) => m.covers_all_bytes(),
                Model::Spm(m) => m.covers_all_bytes(),
            };
        let max_token_bytes = (0..vocab.tokens.len() as u32)
            .map(|id| {
                let mut b = Vec::new();
                match &model {
                    Model::Bpe(m) => m.token_bytes(&vocab.tokens[id as usize], &mut b),
                    Model::Spm(m) => {
                        m.token_bytes(&vocab.tokens[id as usize], vocab.types[id as usize], &mut b)
                    }
                }
                b.len().max(vocab.tokens[id as usize].len())
            })
            .max()
            .unwrap_or(1)
            .max(1);
        let max_token_bytes = if every_byte {
            max_token_bytes
        } else {
            usize::MAX
        };
        let end_ids = (0..vocab.tokens.len() as u32)
            .filter(|&id| vocab.is_end_of_generation(id))
            .collect();
        Ok(Tokenizer {
            vocab,
            model,
            specials,
            max_token_bytes,
            end_ids,
        })
    }

    /// The ids whose generation ends a sequence ([`Vocab::is_end_of_generation`]).
    pub fn end_of_generation_ids(&self) -> &[u32] {
        &self.end_ids
    }

    /// Encode `text`. `add_special` adds BOS/EOS as the model's metadata says;
    /// `parse_special` recognises control tokens written in the text
    /// (user-defined tokens are always recognised).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        self.encode_within(text, add_special, parse_special, &Budget::unlimited())
            .expect("an unlimited budget never interrupts")
    }

    /// `encode`, stopping with `Interrupted` once `budget` runs out (its
    /// deadline passes or its request is cancelled).
    pub fn encode_within(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
        budget: &Budget,
    ) -> Result<Vec<u32>, Interrupted> {
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
            let allowed = |id: &u32| {
                parse_special || self.vocab.types[*id as usize] == TokenType::UserDefined
            };
            let hit = self.specials.get(&bytes[i]).and_then(|group| {
                group.iter().find_map(|(len, by_text)| {
                    let ids = by_text.get(bytes.get(i..i + len)?)?;
                    ids.iter().copied().find(allowed)
                })
            });
            match hit {
                Some(id) => {
                    self.encode_plain(&text[rest_start..i], rest_start == 0, budget, &mut out)?;
                    out.push(id);
                    i += self.vocab.tokens[id as usize].len();
                    rest_start = i;
                }
                None => i += 1,
            }
        }
        self.encode_plain(&text[rest_start..], rest_start == 0, budget, &mut out)?;
        if add_special && self.vocab.add_eos {
            out.extend(self.vocab.eos);
        }
        Ok(out)
    }

    fn encode_plain(
        &self,
        text: &str,
        first: bool,
        budget: &Budget,
        out: &mut Vec<u32>,
    ) -> Result<(), Interrupted> {
        if text.is_empty() {
            return Ok(());
        }
        match &self.model {
            Model::Bpe(b) => b.encode(text, &self.vocab, budget, out),
            Model::Spm(m) => m.encode(text, first, &self.vocab, budget, out),
        }
    }

    /// The longest token's length in bytes: a text of `b` bytes has at least
    /// `b / max_token_bytes` tokens, which bounds a prompt before encoding it
    /// (`usize::MAX` when some byte has no token, so nothing is bounded).
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
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
