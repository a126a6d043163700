//! SentencePiece-style tokenizer (`tokenizer.ggml.model = "llama"`): spaces
//! become U+2581, adjacent symbols are merged best-score first into tokens
//! of the vocabulary, and characters with no token fall back to `<0xXX>`
//! byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::vocab::{TokenType, Vocab};
use super::{Budget, Interrupted};

pub const SPACE: char = '\u{2581}';

#[derive(Debug, Clone)]
pub struct Spm {
    add_space_prefix: bool,
    /// Token id of each byte's `<0xXX>` token.
    byte_ids: [Option<u32>; 256],
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Highest score first; on ties the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}

struct Sym {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Spm {
    pub fn new(vocab: &Vocab, add_space_prefix: bool) -> Self {
        let byte_ids = std::array::from_fn(|b| vocab.by_text.get(&format!("<0x{b:02X}>")).copied());
        Spm {
            add_space_prefix,
            byte_ids,
        }
    }

    /// Encode a fragment of plain text. `first` says whether it starts the text
    /// (the space prefix is added only there).
    pub fn encode(
        &self,
        text: &str,
        first: bool,
        vocab: &Vocab,
        budget: &Budget,
        out: &mut Vec<u32>,
    ) -> Result<(), Interrupted> {
        let mut s = String::with_capacity(text.len() + 3);
        if self.add_space_prefix && first {
            s.push(SPACE);
        }
        for c in text.chars() {
            s.push(if c == ' ' { SPACE } else { c });
        }
        let mut syms: Vec<Sym> = Vec::new();
        for (i, (start, c)) in s.char_indices().enumerate() {
            syms.push(Sym {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
            if i > 0 {
                syms[i - 1].next = Some(i);
            }
        }
        let mut heap = BinaryHeap::new();
        let try_add = |heap: &mut BinaryHeap<Bigram>, syms: &[Sym], l: usize, r: usize| {
            let text = &s[syms[l].start..syms[r].start + syms[r].len];
            if let Some(&id) = vocab.by_text.get(text) {
                heap.push(Bigram {
                    score: vocab.scores[id as usize],
                    left: l,
                    right: r,
                    len: text.len(),
                });
            }
        };
        for i in 1..syms.len() {
            try_add(&mut heap, &syms, i - 1, i);
        }
        let mut pops = 0usize;
        while let Some(b) = heap.pop() {
            pops += 1;
            if pops.is_multiple_of(4096) {
                budget.check()?;
            }
            let (l, r) = (b.left, b.right);
            // Stale: one side was merged away or changed size since this pair was queued.
            if syms[l].len == 0
                || syms[r].len == 0
                || syms[l].len + syms[r].len != b.len
                || syms[l].next != Some(r)
            {
                continue;
            }
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if let Some(n) = syms[r].next {
                syms[n].prev = Some(l);
            }
            if let Some(p) = syms[l].prev {
                try_add(&mut heap, &syms, p, l);
            }
            if let Some(n) = syms[l].next {
                try_add(&mut heap, &syms, l, n);
            }
        }
        let mut i = if syms.is_empty() { None } else { Some(0) };
        while let Some(k) = i {
            let piece = &s[syms[k].start..syms[k].start + syms[k].len];
            match vocab.by_text.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for b in piece.bytes() {
                        if let Some(id) = self.byte_ids[b as usize].or(vocab.unk) {
                            out.push(id);
                        }
                    }
                }
            }
            i = syms[k].next;
        }
        Ok(())
    }

    /// Whether every byte has a `<0xXX>` token (no byte is ever dropped).
    pub fn covers_all_bytes(&self) -> bool {
        self.byte_ids.iter().all(Option::is_some)
    }

    /// The bytes a normal or byte token stands for.
    pub fn token_bytes(&self, text: &str, ty: TokenType, out: &mut Vec<u8>) {
        if ty == TokenType::Byte {
            if let Some(b) = text
                .strip_prefix("<0x")
                .and_then(|h| h.strip_suffix('>'))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                return;
            }
        }
        for c in text.chars() {
            if c == SPACE {
                out.push(b' ');
            } else {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}
