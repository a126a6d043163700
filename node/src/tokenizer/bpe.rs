//! Byte-level BPE (GPT-2 style, `tokenizer.ggml.model = "gpt2"`): text is
//! pre-tokenized, each piece's UTF-8 bytes are mapped to printable code
//! points, and adjacent symbols are merged in rank order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::pretokenize::PreTokenizer;
use super::vocab::{TokenizerError, Vocab};
use super::{Budget, Interrupted};
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
    pub fn encode(
        &self,
        text: &str,
        vocab: &Vocab,
        budget: &Budget,
        out: &mut Vec<u32>,
    ) -> Result<(), Interrupted> {
        for piece in self.pre.split(text) {
            budget.check()?;
            self.encode_piece(piece, vocab, budget, out)?;
        }
        Ok(())
    }

    /// Merge a piece's byte symbols, lowest rank first (leftmost on ties).
    /// The symbols form a linked list and candidate pairs wait in a heap, so
    /// a piece of n bytes costs O(n log n), not the O(n²) of rescanning the
    /// pieces after every merge (one long unbroken word must not stall a node).
    fn encode_piece(
        &self,
        piece: &str,
        vocab: &Vocab,
        budget: &Budget,
        out: &mut Vec<u32>,
    ) -> Result<(), Interrupted> {
        // Whole piece in the vocabulary: done (llama.cpp does the same shortcut).
        let mapped: String = piece.bytes().map(|b| self.byte_chars[b as usize]).collect();
        if let Some(&id) = vocab.by_text.get(&mapped) {
            out.push(id);
            return Ok(());
        }
        let mut ids: Vec<u32> = piece
            .bytes()
            .filter_map(|b| self.byte_ids[b as usize].or(vocab.unk))
            .collect();
        let n = ids.len();
        if n < 2 {
            out.extend_from_slice(&ids);
            return Ok(());
        }
        // Linked list over positions; a merged-away symbol has alive = false.
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        // Min-heap of (rank, left position, left id, right id).
        let mut heap = BinaryHeap::new();
        let pair = |ids: &[u32], l: usize, r: usize| {
            self.merges
                .get(&(ids[l], ids[r]))
                .map(|&(rank, _)| Reverse((rank, l, ids[l], ids[r])))
        };
        heap.extend((0..n - 1).filter_map(|i| pair(&ids, i, i + 1)));
        let mut merges = 0usize;
        while let Some(Reverse((_, l, lid, rid))) = heap.pop() {
            let r = next[l];
            // Stale: the left symbol or its neighbour changed since queued.
            if !alive[l] || r >= n || ids[l] != lid || ids[r] != rid {
                continue;
            }
            merges += 1;
            if merges.is_multiple_of(4096) {
                budget.check()?;
            }
            ids[l] = self.merges[&(lid, rid)].1;
            alive[r] = false;
            next[l] = next[r];
            if next[l] < n {
                prev[next[l]] = l;
            }
            if prev[l] < n {
                heap.extend(pair(&ids, prev[l], l));
            }
            if next[l] < n {
                heap.extend(pair(&ids, l, next[l]));
            }
        }
        out.extend((0..n).filter(|&i| alive[i]).map(|i| ids[i]));
        Ok(())
    }

    /// Whether every byte has a token of its own (no byte is ever dropped).
    pub fn covers_all_bytes(&self) -> bool {
        self.byte_ids.iter().all(Option::is_some)
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
