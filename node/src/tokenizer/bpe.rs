//! Byte-level BPE (GPT-2 style, `tokenizer.ggml.model = "gpt2"`): text is
//! pre-tokenized, each piece's UTF-8 bytes are mapped to printable code
//! points, and adjacent symbols are merged in rank order.

use std::collections::HashMap;

use super::pretokenize::PreTokenizer;
use super::vocab::{TokenizerError, Vocab};
use crate::format::{MetaArray, Metadata};

/// GPT-2's reversible byte → code point map: printable bytes map to
/// themselves, the rest to code points from U+0100 up.
pub fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable =
            (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(next).expect("valid code point");
            next += 1;
            c
        };
    }
    table
}

#[derive(Debug, Clone)]
pub struct Bpe {
    pub pre: PreTokenizer,
    /// (left id, right id) → (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    byte_chars: [char; 256],
    /// Token id of each single byte's symbol.
    byte_ids: [Option<u32>; 256],
    char_to_byte: HashMap<char, u8>,
}

impl Bpe {
    pub fn from_gguf(md: &Metadata, vocab: &Vocab) -> Result<Self, TokenizerError> {
        let pre_name = md.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let pre = PreTokenizer::from_gguf_name(pre_name)
            .ok_or_else(|| TokenizerError::UnsupportedPre(pre_name.to_owned()))?;
        let merges_list = match md.get_array("tokenizer.ggml.merges") {
            Some(MetaArray::String(m)) => m,
            Some(_) => {
                return Err(TokenizerError::Invalid {
                    key: "tokenizer.ggml.merges",
                    why: "not an array of strings".into(),
                })
            }
            None => return Err(TokenizerError::Missing("tokenizer.ggml.merges")),
        };
        let mut merges = HashMap::with_capacity(merges_list.len());
        for (rank, m) in merges_list.iter().enumerate() {
            let Some((l, r)) = m.split_once(' ') else {
                return Err(TokenizerError::Invalid {
                    key: "tokenizer.ggml.merges",
                    why: format!("merge {rank} ({m:?}) is not two symbols"),
                });
            };
            let (Some(&li), Some(&ri)) = (vocab.by_text.get(l), vocab.by_text.get(r)) else {
                continue;
            };
            let Some(&mi) = vocab.by_text.get(&format!("{l}{r}")) else {
                continue;
            };
            merges.entry((li, ri)).or_insert((rank as u32, mi));
        }
        let byte_chars = byte_to_char_table();
        let byte_ids =
            std::array::from_fn(|b| vocab.by_text.get(&byte_chars[b].to_string()).copied());
        let char_to_byte = byte_chars
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        Ok(Bpe {
            pre,
            merges,
            byte_chars,
            byte_ids,
            char_to_byte,
        })
    }

    /// Encode plain text (no special tokens) and append the ids to `out`.
    pub fn encode(&self, text: &str, vocab: &Vocab, out: &mut Vec<u32>) {
        for piece in self.pre.split(text) {
            self.encode_piece(piece, vocab, out);
        }
    }

    fn encode_piece(&self, piece: &str, vocab: &Vocab, out: &mut Vec<u32>) {
        // Whole piece in the vocabulary: done (llama.cpp does the same shortcut).
        let mapped: String = piece.bytes().map(|b| self.byte_chars[b as usize]).collect();
        if let Some(&id) = vocab.by_text.get(&mapped) {
            out.push(id);
            return;
        }
        let mut syms: Vec<u32> = Vec::with_capacity(piece.len());
        for b in piece.bytes() {
            match self.byte_ids[b as usize].or(vocab.unk) {
                Some(id) => syms.push(id),
                None => continue,
            }
        }
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let Some(&(rank, merged)) = self.merges.get(&(syms[i], syms[i + 1])) {
                    if best.is_none_or(|(r, _, _)| rank < r) {
                        best = Some((rank, i, merged));
                    }
                }
            }
            let Some((_, i, merged)) = best else { break };
            syms[i] = merged;
            syms.remove(i + 1);
        }
        out.extend_from_slice(&syms);
    }

    /// The bytes a token stands for.
    pub fn token_bytes(&self, text: &str, out: &mut Vec<u8>) {
        for c in text.chars() {
            match self.char_to_byte.get(&c) {
                Some(&b) => out.push(b),
                None => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
    }
}
